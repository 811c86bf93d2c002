/**
 * The documented defaults of `--max-flows` (4096 per mapping) and `--handshake-timeout` (10 s), end to
 * end (SECURITY.md): the built CLI's --help and docs/cli.md say so, and a receiver started without the
 * flag drops a silent connection with HANDSHAKE_TIMEOUT after about 10 s — not before 9 s — while the
 * flag moves the deadline. The machine applies maxFlows 4096 as tested in
 * packages/protocol/test/limits-defaults.test.ts (4097 clients through processes would be a load test).
 * Loopback only. Needs `bun run build` first.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { connect } from "node:net";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { CloseCode, type Frame, FrameDecoder, FrameType } from "@mcudpt/protocol";
import {
  CLI,
  eventually,
  freePort,
  has,
  killAll,
  ROOT,
  RUNTIMES,
  type Runtime,
  startCli,
  stopWith,
} from "../helpers/cli-process.js";

const available = RUNTIMES.filter(has);
after(killAll);

/** Connects, sends nothing, and resolves with how long the receiver took to close, and its CLOSE. */
function silentConnection(port: number): Promise<{ ms: number; close: Frame | undefined }> {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const decoder = new FrameDecoder({ preface: true });
    const frames: Frame[] = [];
    const socket = connect({ host: "127.0.0.1", port });
    socket.on("data", (chunk: Buffer) => {
      decoder.push(new Uint8Array(chunk));
      for (let frame = decoder.read(); frame !== undefined; frame = decoder.read()) frames.push(frame);
    });
    socket.on("error", reject);
    socket.on("close", () =>
      resolve({ ms: Date.now() - started, close: frames.find((frame) => frame.type === FrameType.Close) }),
    );
  });
}

describe("documented defaults, through the built CLI", () => {
  for (const runtime of available) {
    it(`${runtime}: --help of receiver and sender gives --max-flows default 4096 and --handshake-timeout default 10`, () => {
      for (const command of ["receiver", "sender"]) {
        const help = spawnSync(runtime, [CLI, command, "--help"], { encoding: "utf8", timeout: 15_000 });
        assert.equal(help.status, 0, help.stderr);
        const line = (flag: string) => help.stdout.split("\n").find((text) => text.includes(flag)) ?? "";
        assert.match(line("--max-flows"), /per --udp mapping.*\(default 4096\)/, `${command}: ${line("--max-flows")}`);
        assert.match(line("--handshake-timeout"), /\(default 10\)/, `${command}: ${line("--handshake-timeout")}`);
      }
    });
  }

  it("docs/cli.md gives the same defaults, for both commands", () => {
    const docs = readFileSync(join(ROOT, "docs", "cli.md"), "utf8").split("\n");
    const rows = (flag: string) => docs.filter((line) => line.startsWith(`| \`${flag}`));
    assert.equal(rows("--max-flows N").length, 2);
    for (const row of rows("--max-flows N")) assert.match(row, /\(default 4096\)/);
    assert.equal(rows("--handshake-timeout SECONDS").length, 2);
    for (const row of rows("--handshake-timeout SECONDS")) assert.match(row, /\(default 10\)/);
  });

  it("a receiver without --handshake-timeout closes a silent connection after 10 s; with --handshake-timeout 2, after 2 s", {
    timeout: 60_000,
  }, async () => {
    const runtimes: Runtime[] = available;
    const started = await Promise.all(
      runtimes.flatMap((runtime) =>
        [undefined, "2"].map(async (flag) => {
          const tcp = await freePort("tcp");
          const receiver = startCli(runtime, [
            "receiver",
            "--secret",
            "defaults",
            "--udp",
            `127.0.0.1:${await freePort("udp")}`,
            "--tcp",
            `127.0.0.1:${tcp}`,
            ...(flag ? ["--handshake-timeout", flag] : []),
          ]);
          await eventually(
            () => receiver.stderr().includes("receiver listening"),
            () => `receiver up\n${receiver.stderr()}`,
          );
          return { runtime, flag, tcp, receiver };
        }),
      ),
    );
    try {
      const results = await Promise.all(started.map(({ tcp }) => silentConnection(tcp)));
      for (const [i, { runtime, flag }] of started.entries()) {
        const { ms, close } = results[i];
        const what = `${runtime}, ${flag ? `--handshake-timeout ${flag}` : "the default"}: closed after ${ms} ms`;
        assert.equal(close?.type === FrameType.Close && close.code, CloseCode.HandshakeTimeout, what);
        // Lower bounds are exact (a deadline never fires early); upper bounds leave a loaded machine room.
        if (flag) assert.ok(ms >= 1_900 && ms < 8_000, what);
        else assert.ok(ms >= 9_900 && ms < 16_000, what);
      }
    } finally {
      for (const { receiver } of started) await stopWith(receiver, "SIGTERM");
    }
  });
});
