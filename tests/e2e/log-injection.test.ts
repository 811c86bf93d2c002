/**
 * Issue 12 item 1 end to end: anyone who can reach the receiver's TCP port must not be able to forge
 * its log lines. The built CLI receiver (--log-format text, then json; node and bun when both are
 * installed) gets raw connections that speak the preface and then, before any HELLO: a CLOSE whose
 * reason holds a fake stand-alone "accepted" line, ESC/CR, U+2028 and a bidi override; a CLOSE whose
 * reason is not valid UTF-8; a HELLO whose agent is not valid UTF-8. Its stderr, read as raw bytes,
 * must hold no line that starts like the forged one and no raw control byte, and (json) every line
 * must parse. Then the operator prompt (issue 18 item 9): with stdout and stderr on one file, as on a
 * terminal, a log line while `Accept? [yes/no]` is open starts on its own line and the question is
 * re-printed after it. Needs `bun run build` first. Loopback only, ephemeral ports, bounded waits.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { CloseCode, concatBytes, encodeFrame, type Frame, FrameType, PREFACE, peerText, utf8 } from "@mcudpt/protocol";
import {
  CLI,
  type CliProcess,
  eventually,
  freePort,
  has,
  killAll,
  RUNTIMES,
  type Runtime,
  startCli,
  stopWith,
} from "../helpers/cli-process.js";
import { testIdentity } from "../helpers/keys.js";
import { isFrame, type RawPeer, rawConnect, senderAuth, senderHello } from "../helpers/raw-peer.js";

const SECRET = "log-injection-secret";
const FORGED_STAMP = "2026-01-01T00:00:00.000Z";
/** The reproduction, plus CR, a line separator and a bidi override (well within 1024 bytes). */
const REASON =
  `bye\n${FORGED_STAMP} mcudpt receiver: sender 203.0.113.9:4444 accepted …\n` +
  `\x1b[31mred\x1b[0m\rprogress\u2028next\u202eevil\x07\x9b2J`;

const available = RUNTIMES.filter(has);
const TIMEOUT = { timeout: 60_000 };

after(() => killAll());

type CloseFrame = Extract<Frame, { type: typeof FrameType.Close }>;

/** A CLOSE frame with its message bytes as given (here: not valid UTF-8). */
function rawClose(code: number, message: Uint8Array): Uint8Array {
  const body = concatBytes(Uint8Array.of(code >> 8, code & 0xff), message);
  const length = new Uint8Array(4);
  new DataView(length.buffer).setUint32(0, body.length);
  return concatBytes(Uint8Array.of(FrameType.Close), length, body);
}

/** A sender HELLO whose agent (the frame's last bytes) is not valid UTF-8. */
function helloWithInvalidAgent(): Uint8Array {
  const { bytes } = senderHello("ok-agent");
  const copy = Uint8Array.from(bytes);
  copy.set([0xff, 0xfe, 0x0a, 0x1b], copy.length - 4);
  return copy;
}

/** Raw bytes that must never reach stderr: C0 controls but LF, DEL, and UTF-8 for C1, U+2028/9, bidi. */
function rawControls(stderr: Buffer): string[] {
  const found: string[] = [];
  for (let i = 0; i < stderr.length; i++) {
    const b = stderr[i];
    if ((b < 0x20 && b !== 0x0a) || b === 0x7f) found.push(`0x${b.toString(16)} at ${i}`);
    if (b === 0xc2 && stderr[i + 1] >= 0x80 && stderr[i + 1] <= 0x9f) found.push(`C1 at ${i}`);
    if (b === 0xe2 && stderr[i + 1] === 0x80 && stderr[i + 2] >= 0xa8 && stderr[i + 2] <= 0xae)
      found.push(`U+20${stderr[i + 2].toString(16)} at ${i}`);
    if (b === 0xe2 && stderr[i + 1] === 0x81 && stderr[i + 2] >= 0xa6 && stderr[i + 2] <= 0xa9)
      found.push(`isolate at ${i}`);
  }
  return found;
}

const runs: Array<{ format: "text" | "json"; runtime: Runtime }> = [];
for (const format of ["text", "json"] as const) for (const runtime of available) runs.push({ format, runtime });

for (const { format, runtime } of runs) {
  describe(`receiver under ${runtime}, --log-format ${format}: hostile frames before HELLO`, () => {
    let receiver: CliProcess;
    const chunks: Buffer[] = [];
    let forger: RawPeer;
    let badClose: RawPeer;
    let badHello: RawPeer;
    const stderr = () => Buffer.concat(chunks);
    const lines = () => stderr().toString("utf8").split("\n").slice(0, -1);
    const about = (peer: RawPeer) =>
      lines().filter((line) => new RegExp(`:${peer.localPort}(?!\\d)`).test(line) && !/connection from/.test(line));

    before(async () => {
      const udp = await freePort("udp");
      const tcp = await freePort("tcp");
      receiver = startCli(runtime, [
        "receiver",
        "--udp",
        `127.0.0.1:${udp}`,
        "--tcp",
        `127.0.0.1:${tcp}`,
        "--secret",
        SECRET,
        "--log-format",
        format,
        "-v",
      ]);
      receiver.child.stderr?.on("data", (chunk: Buffer) => chunks.push(Buffer.from(chunk)));
      await eventually(
        () => /receiver listening/.test(receiver.stderr()),
        () => `receiver listening\n${receiver.stderr()}`,
      );

      forger = await rawConnect(tcp);
      forger.write(
        concatBytes(PREFACE, encodeFrame({ type: FrameType.Close, code: CloseCode.Normal, message: REASON })),
      );
      await forger.whenClosedWithin(10_000, "the forger's connection closed");
      await eventually(
        () => about(forger).length > 0,
        () => `a line about the forger\n${receiver.stderr()}`,
      );

      badClose = await rawConnect(tcp);
      badClose.write(
        concatBytes(PREFACE, rawClose(CloseCode.Normal, concatBytes(utf8("bye"), Uint8Array.of(0xff, 0x0a, 0x1b)))),
      );
      await badClose.whenClosedWithin(10_000, "the invalid-UTF-8 CLOSE peer closed");
      await eventually(
        () => about(badClose).length > 0,
        () => `a line about the invalid CLOSE\n${receiver.stderr()}`,
      );

      badHello = await rawConnect(tcp);
      badHello.write(helloWithInvalidAgent());
      await badHello.whenClosedWithin(10_000, "the invalid-UTF-8 HELLO peer closed");
      await eventually(
        () => about(badHello).length > 0,
        () => `a line about the invalid HELLO\n${receiver.stderr()}`,
      );
    }, TIMEOUT);

    after(async () => {
      for (const peer of [forger, badClose, badHello]) peer?.destroy();
      if (receiver && !receiver.exit) await stopWith(receiver, "SIGTERM");
    });

    it("writes no line that starts like a forged log line", () => {
      const forged = lines().filter(
        (line) => line.startsWith(FORGED_STAMP) || /^\S+ mcudpt receiver: sender 203\./.test(line),
      );
      assert.deepEqual(forged, [], stderr().toString("utf8"));
      for (const line of lines()) {
        if (format === "json") {
          const record = JSON.parse(line); // every line is one JSON object
          assert.equal(typeof record.msg, "string");
          assert.equal(record.name, "mcudpt receiver");
        } else assert.match(line, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z mcudpt receiver: /, line);
      }
    });

    it("writes no raw ESC, CR, other control bytes, line separators or bidi controls", () => {
      assert.deepEqual(rawControls(stderr()), [], JSON.stringify(stderr().toString("utf8")));
      assert.equal(stderr().toString("utf8"), Buffer.from(stderr().toString("utf8"), "utf8").toString("utf8"));
    });

    it("logs the hostile CLOSE in exactly one line", () => {
      assert.equal(about(forger).length, 1, JSON.stringify(about(forger)));
      assert.match(about(forger)[0], /closed the connection/);
    });

    it("refuses invalid UTF-8 in CLOSE and in HELLO with a protocol error, one clean line each", async () => {
      for (const peer of [badClose, badHello]) {
        const close = (await peer.waitFrame(isFrame(FrameType.Close), "the receiver's CLOSE")) as CloseFrame;
        assert.equal(close.code, CloseCode.ProtocolError);
        assert.equal(about(peer).length, 1, JSON.stringify(about(peer)));
        assert.match(about(peer)[0], /not valid UTF-8/);
      }
    });

    it("keeps running", () => {
      assert.equal(receiver.exit, undefined, receiver.stderr());
    });

    // The protocol quotes the reason with peerText where the message is built (connections.ts); the
    // sinks leave a peerText string unchanged.
    it("shows the peer's reason quoted exactly as peerText makes it", () => {
      const line = about(forger)[0] ?? "";
      const shown = format === "json" ? JSON.parse(line).msg : line;
      assert.ok(shown.includes(peerText(REASON)), `${shown}\nshould include ${peerText(REASON)}`);
    });
  });
}

describe("operator prompt of the built CLI, stdout and stderr on one file (as on a terminal)", () => {
  for (const runtime of available) {
    it(`under ${runtime}: a log line while the question is open is never glued to it`, TIMEOUT, async () => {
      const dir = mkdtempSync(join(tmpdir(), "mcudpt-e2e-prompt-"));
      const output = join(dir, "out.txt");
      const fd = openSync(output, "w");
      const udp = await freePort("udp");
      const tcp = await freePort("tcp");
      // Key mode without --authorized-keys: an unknown sender key is put to the operator on stdin.
      const child = spawn(runtime, [CLI, "receiver", "--udp", `127.0.0.1:${udp}`, "--tcp", `127.0.0.1:${tcp}`], {
        stdio: ["pipe", fd, fd],
        env: { ...process.env, MCUDPT_SECRET: "", MCUDPT_CONFIG_DIR: join(dir, "config") },
      });
      closeSync(fd);
      const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
      const peers: RawPeer[] = [];
      const screen = () => readFileSync(output, "utf8");
      try {
        await eventually(
          () => /receiver listening/.test(screen()),
          () => `receiver listening\n${screen()}`,
        );
        // A sender in key mode with a key nobody knows: HELLO, the receiver's HELLO, AUTH; then it waits.
        const identity = testIdentity("prompt-test");
        const sender = await rawConnect(tcp);
        peers.push(sender);
        const { bytes, hello } = senderHello("prompt-test", identity);
        sender.write(bytes);
        const receiverHello = await sender.waitFrame(isFrame(FrameType.Hello), "the receiver's HELLO");
        sender.write(senderAuth(receiverHello, hello, identity));
        await eventually(
          () => /Accept\? \[yes\/no\] $/.test(screen()),
          () => `the question\n${screen()}`,
        );
        const question = screen().split("\n").pop() as string;
        assert.match(question, /^Sender connection from 127\.0\.0\.1:\d+, key SHA256:\S+\. Accept\? \[yes\/no\] $/);
        // While it is open, a stranger makes the receiver log a line.
        const forger = await rawConnect(tcp);
        peers.push(forger);
        forger.write(
          concatBytes(PREFACE, encodeFrame({ type: FrameType.Close, code: CloseCode.Normal, message: REASON })),
        );
        await eventually(
          () => screen().includes(`:${forger.localPort} closed the connection`),
          () => `the forger's line\n${screen()}`,
        );
        await eventually(
          () => screen().endsWith(question),
          () => `the question re-printed\n${screen()}`,
        );
        child.stdin?.write("yes\n");
        await sender.waitFrame(isFrame(FrameType.Accept), "ACCEPT after the operator's yes");
        await eventually(
          () => /remembered/.test(screen()),
          () => `the key remembered\n${screen()}`,
        );

        const lines = screen().split("\n");
        const glued = lines.filter((line) => line.includes("Accept? [yes/no]") && / mcudpt receiver: /.test(line));
        assert.deepEqual(glued, [], screen());
        const forgerLine = lines.findIndex((line) => line.includes(`:${forger.localPort} closed the connection`));
        assert.match(lines[forgerLine], /^\d{4}-\d\d-\d\dT[\d:.]+Z mcudpt receiver: /);
        assert.equal(lines[forgerLine - 1], question, "the question, ended before the log line");
        assert.equal(lines[forgerLine + 1], `${question}yes`, "re-printed after, then the piped answer");
        assert.deepEqual(rawControls(Buffer.from(screen(), "utf8")), [], screen());
      } finally {
        for (const peer of peers) peer.destroy();
        if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
        await Promise.race([exited, new Promise((r) => setTimeout(r, 10_000))]);
        if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
        rmSync(dir, { recursive: true, force: true });
      }
    });
  }
});
