/**
 * Port ranges and --tcp-buffer through the built CLI: a receiver given `--udp game=HOST:FIRST-LAST`
 * on the command line and a sender given its range in a --config file (TOML) carry each port to the
 * target port at its offset (8 real targets); ranges of different sizes are refused by both
 * processes at the HELLO; `mcudpt check` says one line for each kind of range problem (a range
 * that cannot be bound, an overlap, too many ports, a range that ends below its start) and shows
 * what the kernel grants for --tcp-buffer (Bun) or that it cannot be set (Node). Loopback only:
 * the ranges sit at random bases below the ephemeral ports, retried when taken.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import type { UdpSocket } from "@mcudpt/core";
import { nodeTransport } from "@mcudpt/transport-node";
import {
  CLI,
  eventually,
  freePort,
  has,
  killAll,
  RUNTIMES,
  type Runtime,
  startCli,
  stopWith,
  udpRequest,
} from "../helpers/cli-process.js";
import { bindPortRange, freePortRange } from "../helpers/port-range.js";

const available = RUNTIMES.filter(has);
const TIMEOUT = { timeout: 60_000 };
const PORTS = 8;
const LOOPBACK = "127.0.0.1";
const dirs: string[] = [];

after(() => {
  killAll();
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), "mcudpt-e2e-ranges-"));
  dirs.push(dir);
  return dir;
}

/** PORTS targets on consecutive ports, each answering `payload@its port`. */
async function rangeTargets() {
  const targets = await bindPortRange(nodeTransport, LOOPBACK, PORTS, (i, socket) => (data, address, port) => {
    socket().send(new TextEncoder().encode(`${new TextDecoder().decode(data)}@${targets.base + i}`), port, address);
  });
  return targets;
}

function check(runtime: Runtime, args: string[]) {
  const result = spawnSync(runtime, [CLI, "check", ...args], {
    encoding: "utf8",
    timeout: 30_000,
    env: { ...process.env, MCUDPT_SECRET: "", MCUDPT_CONFIG_DIR: tempDir() },
  });
  return { status: result.status, stdout: result.stdout, lines: result.stderr.split("\n").filter((l) => l !== "") };
}

describe("port ranges through the built CLI", () => {
  const [receiverRuntime, senderRuntime] = available.length > 1 ? ["bun", "node"] : [available[0], available[0]];

  it(
    `${receiverRuntime} receiver --udp game=…:FIRST-LAST, ${senderRuntime} sender with the range in a TOML --config: each port reaches its own target`,
    TIMEOUT,
    async () => {
      const dir = tempDir();
      const targets = await rangeTargets();
      const base = await freePortRange(nodeTransport, LOOPBACK, PORTS);
      const tcpPort = await freePort("tcp");
      writeFileSync(join(dir, "secret"), "range secret\n", { mode: 0o600 });
      const config = join(dir, "sender.toml");
      writeFileSync(
        config,
        [
          `udp = ["game=${LOOPBACK}:${targets.base}-${targets.base + PORTS - 1}"]`,
          `tcp = "${LOOPBACK}:${tcpPort}"`,
          `secret-file = "secret"`,
          `tcp-buffer = "256k"`,
        ].join("\n"),
        { mode: 0o600 },
      );
      const receiver = startCli(receiverRuntime as Runtime, [
        "receiver",
        "--udp",
        `game=${LOOPBACK}:${base}-${base + PORTS - 1}`,
        "--tcp",
        `${LOOPBACK}:${tcpPort}`,
        "--secret-file",
        join(dir, "secret"),
      ]);
      try {
        await eventually(
          () => /receiver listening/.test(receiver.stderr()),
          `receiver listening\n${receiver.stderr()}`,
        );
        assert.match(receiver.stderr(), new RegExp(`UDP game=127\\.0\\.0\\.1:${base}-${base + PORTS - 1}`));
        const sender = startCli(senderRuntime as Runtime, ["sender", "--config", config]);
        try {
          await eventually(() => /accepted by receiver/.test(sender.stderr()), `sender accepted\n${sender.stderr()}`);
          assert.match(sender.stderr(), new RegExp(`game=127\\.0\\.0\\.1:${targets.base}-${targets.base + PORTS - 1}`));
          for (let i = 0; i < PORTS; i++) {
            assert.equal(await udpRequest(base + i, `q${i}`), `q${i}@${targets.base + i}`, `port ${i} of the range`);
          }
          // --tcp-buffer from the config file: granted (Bun) or said to be impossible (Node), once.
          const said =
            senderRuntime === "bun"
              ? /TCP buffers: asked 256 KiB \(--tcp-buffer\), the kernel granted/
              : /--tcp-buffer 256 KiB is not applied: the node transport cannot/;
          assert.equal(sender.count(said), 1, sender.stderr());
        } finally {
          assert.equal((await stopWith(sender, "SIGTERM")).code, 0, "sender exits 0");
        }
      } finally {
        assert.equal((await stopWith(receiver, "SIGTERM")).code, 0, "receiver exits 0");
        for (const socket of targets.sockets) socket.close();
      }
    },
  );

  it(
    "ranges of different sizes: both processes name the mapping and both sizes, nothing is forwarded",
    TIMEOUT,
    async () => {
      const runtime = available[0];
      const base = await freePortRange(nodeTransport, LOOPBACK, PORTS);
      const tcpPort = await freePort("tcp");
      const receiver = startCli(runtime, [
        "receiver",
        "--udp",
        `game=${LOOPBACK}:${base}-${base + PORTS - 1}`,
        "--tcp",
        `${LOOPBACK}:${tcpPort}`,
        "--secret",
        "s",
      ]);
      try {
        await eventually(() => /receiver listening/.test(receiver.stderr()), "receiver listening");
        const sender = startCli(runtime, [
          "sender",
          "--udp",
          `game=${LOOPBACK}:20000-20003`,
          "--tcp",
          `${LOOPBACK}:${tcpPort}`,
          "--secret",
          "s",
        ]);
        try {
          const line = /port ranges differ: mapping game has 8 ports on the receiver, 4 ports on the sender/;
          await eventually(
            () => line.test(sender.stderr()) && line.test(receiver.stderr()),
            `both name the sizes\n${sender.stderr()}\n${receiver.stderr()}`,
          );
          await assert.rejects(udpRequest(base, "nobody home", 600), /no UDP reply/);
        } finally {
          await stopWith(sender, "SIGTERM");
        }
      } finally {
        await stopWith(receiver, "SIGTERM");
      }
    },
  );

  it("bad ranges on the command line: one line and a non-zero exit, before anything is bound", TIMEOUT, () => {
    const runtime = available[0];
    const cases: Array<[string[], RegExp]> = [
      [["--udp", ":27030-27015"], /--udp: the range ":27030-27015" must end above its first port/],
      [["--udp", ":20000-24096"], /--udp: the range ":20000-24096" has 4097 ports; at most 4096/],
      [["--udp", ":0-15"], /--udp: the range ":0-15" starts at port 0; a range needs real ports/],
      [["--udp", "a=:20000-22000", "--udp", "b=:22001-24200"], /the mappings cover 4201 ports in all; at most 4096/],
    ];
    for (const [flags, expected] of cases) {
      const result = spawnSync(runtime, [CLI, "receiver", ...flags, "--secret", "s"], {
        encoding: "utf8",
        timeout: 20_000,
        env: { ...process.env, MCUDPT_SECRET: "", MCUDPT_CONFIG_DIR: tempDir() },
      });
      const lines = result.stderr.split("\n").filter((l) => l !== "");
      assert.notEqual(result.status, 0, flags.join(" "));
      assert.equal(lines.length, 1, result.stderr);
      assert.match(lines[0], expected);
    }
  });
});

describe("mcudpt check and port ranges, --tcp-buffer", () => {
  for (const runtime of available) {
    it(
      `${runtime}: a good range passes; an overlap, a range with a port taken (--bind): one line each, exit 2`,
      TIMEOUT,
      async () => {
        const base = await freePortRange(nodeTransport, LOOPBACK, PORTS);
        const range = `game=${LOOPBACK}:${base}-${base + PORTS - 1}`;
        const tcp = `${LOOPBACK}:${await freePort("tcp")}`;
        const good = check(runtime, ["receiver", "--secret", "s", "--udp", range, "--tcp", tcp, "--bind"]);
        assert.equal(good.status, 0, good.lines.join("\n"));
        assert.match(good.stdout, new RegExp(`UDP game=127\\.0\\.0\\.1:${base}-${base + PORTS - 1};.*ports bindable`));

        const overlap = check(runtime, [
          "receiver",
          "--secret",
          "s",
          "--udp",
          range,
          "--udp",
          `dns=${LOOPBACK}:${base + 3}`,
        ]);
        assert.equal(overlap.status, 2);
        assert.deepEqual(overlap.lines, [
          `mcudpt: --udp dns=${LOOPBACK}:${base + 3} overlaps --udp ${range} (each public port belongs to one mapping)`,
        ]);

        const squatter: UdpSocket = await nodeTransport.bindUdp({
          host: LOOPBACK,
          port: base + 2,
          onDatagram() {},
          onError() {},
        });
        const squatter2: UdpSocket = await nodeTransport.bindUdp({
          host: LOOPBACK,
          port: base + 5,
          onDatagram() {},
          onError() {},
        });
        try {
          const taken = check(runtime, ["receiver", "--secret", "s", "--udp", range, "--tcp", tcp, "--bind"]);
          assert.equal(taken.status, 2);
          assert.equal(taken.lines.length, 1, taken.lines.join("\n"));
          assert.match(
            taken.lines[0],
            new RegExp(
              `^mcudpt: --udp ${range}: cannot listen on UDP 127\\.0\\.0\\.1:${base + 2} \\(and 1 more of its 8 ports\\): `,
            ),
          );
        } finally {
          squatter.close();
          squatter2.close();
        }
      },
    );

    it(
      `${runtime}: --peer-config: ranges of other sizes, or mappings that do not pair, are one line; pairing ones pass`,
      TIMEOUT,
      () => {
        const dir = tempDir();
        const peer = (name: string, udp: string[]) => {
          const path = join(dir, name);
          writeFileSync(path, `udp = [${udp.map((u) => JSON.stringify(u)).join(", ")}]\n`, { mode: 0o600 });
          return path;
        };
        const ours = ["receiver", "--secret", "s", "--udp", "game=:27015-27030", "--udp", "dns=:53"];
        const pairs = check(runtime, [
          ...ours,
          "--peer-config",
          peer("ok.toml", ["dns=10.0.0.5:53", "game=10.0.0.5:37015-37030"]),
        ]);
        assert.equal(pairs.status, 0, pairs.lines.join("\n"));
        assert.match(pairs.stdout, /; mappings pair with .*ok\.toml;/);
        const shorter = peer("short.toml", ["game=10.0.0.5:27015-27018", "dns=10.0.0.5:53"]);
        const sizes = check(runtime, [...ours, "--peer-config", shorter]);
        assert.equal(sizes.status, 2);
        assert.deepEqual(sizes.lines, [
          `mcudpt: --peer-config ${shorter}: port ranges differ: mapping game has 16 ports on the receiver, 4 ports on the sender; give both sides ranges of the same size`,
        ]);
        // From the sender's side, with the receiver's file.
        const receiverFile = peer("receiver.toml", ["game=:27015-27030", "dns=:53"]);
        const fromSender = check(runtime, [
          "sender",
          "--secret",
          "s",
          "--udp",
          "game=10.0.0.5:27015-27022",
          "--peer-config",
          receiverFile,
        ]);
        assert.equal(fromSender.status, 2);
        assert.equal(fromSender.lines.length, 1, fromSender.lines.join("\n"));
        assert.match(fromSender.lines[0], /mappings differ: the receiver has 2 \(game, dns\), the sender 1 \(game\)/);
      },
    );

    it(
      `${runtime}: --tcp-buffer: check shows what the kernel grants, or that this runtime cannot set it`,
      TIMEOUT,
      () => {
        const result = check(runtime, ["sender", "--secret", "s", "--udp", `${LOOPBACK}:53`, "--tcp-buffer", "128k"]);
        assert.equal(result.status, 0, result.lines.join("\n"));
        if (runtime === "bun") {
          assert.match(result.stdout, /TCP buffers 128 KiB asked, granted receive 128 KiB, send 128 KiB/);
          assert.deepEqual(result.lines, []);
        } else {
          assert.match(result.stdout, /TCP buffers not sized \(node transport\)/);
          assert.deepEqual(result.lines, [
            "mcudpt: warning: --tcp-buffer 128 KiB is not applied: the node transport cannot set SO_SNDBUF/SO_RCVBUF on TCP connections (Node's net.Socket has no such option), so the kernel's autotuned sizes apply; run under Bun to set them",
          ]);
        }
        const tooSmall = check(runtime, ["sender", "--secret", "s", "--tcp-buffer", "1k"]);
        assert.equal(tooSmall.status, 2);
        assert.equal(tooSmall.lines.length, 1, tooSmall.lines.join("\n"));
        assert.match(tooSmall.lines[0], /--tcp-buffer: 1k is too small/);
      },
    );
  }
});
