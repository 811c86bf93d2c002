/**
 * End to end: the built CLI (apps/cli/dist/mcudpt.js) run as a user would, under node and under bun,
 * including mixed pairs and the original mcudpt's flags, and `dig` through the tunnel to a real DNS
 * server (dnsmasq) when the machine has them. Needs `bun run build` first (the test script does it).
 */
import assert from "node:assert/strict";
import { type ChildProcess, execFileSync, spawn, spawnSync } from "node:child_process";
import { createSocket } from "node:dgram";
import { chmodSync, existsSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { after, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { scratchDir } from "../helpers/scratch.ts";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const CLI = join(ROOT, "apps", "cli", "dist", "mcudpt.js");
const RUNTIMES = ["node", "bun"] as const;
type Runtime = (typeof RUNTIMES)[number];

const children = new Set<ChildProcess>();
after(() => {
  for (const child of children) child.kill("SIGKILL");
});

function has(command: string): boolean {
  return spawnSync("sh", ["-c", `command -v ${command}`]).status === 0;
}

/** Runs the CLI to completion (bounded) and returns its exit code and output. */
function runCli(runtime: Runtime, args: string[], timeoutMs = 15_000) {
  const result = spawnSync(runtime, [CLI, ...args], {
    encoding: "utf8",
    timeout: timeoutMs,
    stdio: ["ignore", "pipe", "pipe"],
  });
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}

interface Running {
  child: ChildProcess;
  stderr: () => string;
  stdout: () => string;
  exited: Promise<number | null>;
}

function startCli(runtime: Runtime, args: string[], stdin?: string): Running {
  const child = spawn(runtime, [CLI, ...args], {
    stdio: ["pipe", "pipe", "pipe"],
    env: { ...process.env, MCUDPT_SECRET: "", MCUDPT_CONFIG_DIR: scratchDir("mcudpt-e2e-") },
  });
  children.add(child);
  let stderr = "";
  let stdout = "";
  child.stderr?.on("data", (d) => {
    stderr += d;
  });
  child.stdout?.on("data", (d) => {
    stdout += d;
  });
  if (stdin !== undefined) child.stdin?.write(stdin);
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  return { child, stderr: () => stderr, stdout: () => stdout, exited };
}

async function eventually(condition: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > until) throw new Error(`timed out waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function freePort(kind: "udp" | "tcp"): Promise<number> {
  if (kind === "tcp") {
    const server = createServer();
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const port = (server.address() as { port: number }).port;
    await new Promise((r) => server.close(r));
    return port;
  }
  const socket = createSocket("udp4");
  await new Promise<void>((r) => socket.bind(0, "127.0.0.1", r));
  const port = socket.address().port;
  socket.close();
  return port;
}

/** A UDP echo target on loopback. */
async function startEcho() {
  const socket = createSocket("udp4");
  socket.on("message", (msg, rinfo) => socket.send(msg, rinfo.port, rinfo.address));
  await new Promise<void>((r) => socket.bind(0, "127.0.0.1", r));
  return socket;
}

/** Sends `message` to 127.0.0.1:port until the reply comes (bounded). */
async function udpRequest(port: number, message: string, timeoutMs = 10_000): Promise<string> {
  const socket = createSocket("udp4");
  await new Promise<void>((r) => socket.bind(0, "127.0.0.1", r));
  try {
    return await new Promise<string>((resolve, reject) => {
      const timer = setInterval(() => socket.send(message, port, "127.0.0.1"), 200);
      const deadline = setTimeout(() => {
        clearInterval(timer);
        reject(new Error(`no UDP reply on port ${port}`));
      }, timeoutMs);
      socket.on("message", (msg) => {
        clearInterval(timer);
        clearTimeout(deadline);
        resolve(msg.toString());
      });
      socket.send(message, port, "127.0.0.1");
    });
  } finally {
    socket.close();
  }
}

async function stop(running: Running): Promise<number | null> {
  running.child.kill("SIGTERM");
  const timeout = new Promise<"timeout">((r) => setTimeout(() => r("timeout"), 5000));
  const code = await Promise.race([running.exited, timeout]);
  if (code === "timeout") {
    running.child.kill("SIGKILL");
    throw new Error("did not exit within 5 s of SIGTERM");
  }
  children.delete(running.child);
  return code;
}

const available = RUNTIMES.filter(has);

describe("the built CLI", () => {
  it("is built", () => assert.ok(existsSync(CLI), `${CLI} missing: run bun run build`));

  for (const runtime of available) {
    it(`${runtime}: --version and --help`, () => {
      const version = runCli(runtime, ["--version"]);
      assert.equal(version.status, 0);
      assert.match(version.stdout.trim(), /^\d+\.\d+\.\d+/);
      const help = runCli(runtime, ["--help"]);
      assert.equal(help.status, 0);
      assert.match(help.stdout, /mcudpt receiver/);
      assert.match(help.stdout, /-mode receiver/);
      const receiverHelp = runCli(runtime, ["receiver", "--help"]);
      assert.equal(receiverHelp.status, 0);
      assert.match(receiverHelp.stdout, /--idle-timeout/);
    });

    it(`${runtime}: bad command lines end with one clear line and a non-zero exit`, async () => {
      const blankSecret = join(scratchDir("mcudpt-e2e-"), "secret");
      writeFileSync(blankSecret, "\n  \n", { mode: 0o600 });
      const busy = createSocket("udp4");
      await new Promise<void>((r) => busy.bind(0, "127.0.0.1", r));
      const busyPort = busy.address().port;
      try {
        const cases: Array<[string[], RegExp]> = [
          [["receiver", "--udp", "host:notaport"], /notaport/],
          [["receiver", "--udp", ":70000"], /70000/],
          [["receiver", "--bogus"], /unknown flag "--bogus"/],
          [["-mode", "bogus"], /unknown mode "bogus"/],
          [["bogus"], /unknown command "bogus"/],
          [["receiver", "--idle-timeout", "soon"], /--idle-timeout: "soon"/],
          [
            [
              "receiver",
              "--udp",
              `127.0.0.1:${busyPort}`,
              "--tcp",
              `127.0.0.1:${await freePort("tcp")}`,
              "--secret",
              "s",
            ],
            new RegExp(`UDP 127\\.0\\.0\\.1:${busyPort}`),
          ],
          [["sender", "--transport", "carrier-pigeon"], /carrier-pigeon/],
          [["receiver", "--udp", "21243"], /--udp: "21243" is a port alone; write ":21243" \(or HOST:21243\)/],
          [["receiver", "--proxy-protocol"], /--proxy-protocol is a sender setting: the receiver does not take it/],
          [["sender", "--new-flow-rate=5"], /--new-flow-rate is a receiver setting: the sender does not take it/],
          [["receiver", "--secret-file", blankSecret], /holds no secret \(only blank lines\)/],
          [
            ["sender", "--secret", "s", "--lanes", "2", "--udp", "dns=:53", "--redundant-mappings", "game"],
            /--redundant-mappings: this side has no mapping "game" \(its mappings: dns\)/,
          ],
          [
            ["sender", "--secret", "s", "--udp", "game=:27015", "--redundant-mappings", "game"],
            /--redundant-mappings sends those datagrams on two lanes: give --lanes 2 or more/,
          ],
          [["sender", "--secret", "s", "--redundant-max-bytes", "512"], /limits --redundant or --redundant-mappings/],
          [
            ["receiver", "--secret", "s", "--ws-trusted-proxy", "127.0.0.1"],
            /--ws-trusted-proxy needs a ws:\/\/ or wss:\/\/ address/,
          ],
          [
            ["receiver", "--secret", "s", "--tcp", "ws://127.0.0.1:9/t", "--ws-trusted-proxy", "nginx.lan"],
            /--ws-trusted-proxy: "nginx\.lan" is not an IP address or CIDR block/,
          ],
          [
            ["sender", "--secret", "s", "--tcp", "ws://127.0.0.1:9/t", "--ws-trusted-proxy", "127.0.0.1"],
            /--ws-trusted-proxy is for the listening side/,
          ],
          [
            ["sender", "--secret", "s", "--lanes", "2", "--redundant", "--redundant-max-bytes", "70000"],
            /--redundant-max-bytes: "70000" is not a datagram size/,
          ],
        ];
        for (const [args, pattern] of cases) {
          const result = runCli(runtime, args);
          assert.notEqual(result.status, 0, `${args.join(" ")} should fail`);
          const lines = result.stderr.trim().split("\n");
          assert.equal(lines.length, 1, `one line for ${args.join(" ")}, got:\n${result.stderr}`);
          assert.match(lines[0], pattern);
          assert.doesNotMatch(result.stderr, /\n\s+at /, "no stack trace");
        }
      } finally {
        busy.close();
      }
    });

    it(`${runtime}: no command, only -v: the notice that it runs as a receiver on :1937, then the flags' verdict`, () => {
      // --verbose alone would listen on :1937; a missing --secret-file stops it right after the notice.
      const result = runCli(runtime, ["--verbose", "--secret-file", join(tmpdir(), "mcudpt-no-such-file")]);
      assert.equal(result.status, 2);
      const lines = result.stderr.trim().split("\n");
      assert.equal(lines[0], "mcudpt: no command given: running as receiver on :1937 (see mcudpt --help)");
      assert.match(lines[1], /--secret-file: cannot read/);
      // The original's command line says what it means: no notice.
      const original = runCli(runtime, ["-udp", "21243", "-tcp", ":1"]);
      assert.doesNotMatch(original.stderr, /no command given/);
    });

    it(`${runtime}: a --secret-file others can read is used (first non-blank line) with a warning`, async () => {
      const dir = scratchDir("mcudpt-e2e-");
      const file = join(dir, "secret");
      writeFileSync(file, "\nshared-by-file\n", { mode: 0o644 });
      chmodSync(file, 0o644);
      const echo = await startEcho();
      const udp = await freePort("udp");
      const tcp = await freePort("tcp");
      const receiver = startCli(runtime, [
        "receiver",
        "--udp",
        `127.0.0.1:${udp}`,
        "--tcp",
        `127.0.0.1:${tcp}`,
        "--secret-file",
        file,
      ]);
      const sender = startCli(runtime, [
        "sender",
        "--udp",
        `127.0.0.1:${echo.address().port}`,
        "--tcp",
        `127.0.0.1:${tcp}`,
        "--secret",
        "shared-by-file",
      ]);
      try {
        assert.equal(await udpRequest(udp, "from the second line"), "from the second line");
        assert.match(
          receiver.stderr(),
          new RegExp(`warn: --secret-file ${file} can be read by other users: chmod 600`),
        );
        chmodSync(file, 0o600);
        const quiet = startCli(runtime, [
          "receiver",
          "--udp",
          `127.0.0.1:${await freePort("udp")}`,
          "--tcp",
          `127.0.0.1:${await freePort("tcp")}`,
          "--secret-file",
          file,
        ]);
        await eventually(() => /receiver listening/.test(quiet.stderr()), "the second receiver listening");
        assert.doesNotMatch(quiet.stderr(), /can be read by other users/);
        await stop(quiet);
      } finally {
        sender.child.kill("SIGTERM");
        receiver.child.kill("SIGTERM");
        await Promise.all([sender.exited, receiver.exited]);
        echo.close();
      }
    });

    it(`${runtime}: demo runs clients through the tunnel and reports OK`, () => {
      const result = runCli(runtime, ["demo", "--clients", "20", "--duration", "1"], 30_000);
      assert.equal(result.status, 0, result.stdout + result.stderr);
      assert.match(result.stdout, /OK: every client got back exactly its own datagrams/);
      assert.match(result.stdout, new RegExp(`transport: ${runtime}`));
    });
  }

  for (const receiverRuntime of available) {
    for (const senderRuntime of available) {
      it(`original flags: ${receiverRuntime} receiver (operator says yes) <-> ${senderRuntime} sender`, async () => {
        const echo = await startEcho();
        const udpPort = await freePort("udp");
        const tcpPort = await freePort("tcp");
        const receiver = startCli(
          receiverRuntime,
          ["-mode", "receiver", "-udp", `127.0.0.1:${udpPort}`, "-tcp", `127.0.0.1:${tcpPort}`],
          "yes\n",
        );
        try {
          await eventually(() => /receiver listening/.test(receiver.stderr()), "receiver listening");
          const sender = startCli(senderRuntime, [
            "-mode",
            "sender",
            "-udp",
            `127.0.0.1:${echo.address().port}`,
            "-tcp",
            `127.0.0.1:${tcpPort}`,
          ]);
          try {
            await eventually(
              () => /accepted by receiver/.test(sender.stderr()),
              `sender accepted\n${sender.stderr()}\n${receiver.stderr()}`,
            );
            assert.match(
              receiver.stdout(),
              /Sender connection from 127\.0\.0\.1:\d+, key SHA256:[A-Za-z0-9+/]{43}\. Accept\? \[yes\/no\]/,
            );
            assert.equal(await udpRequest(udpPort, "hello through the tunnel"), "hello through the tunnel");
          } finally {
            assert.equal(await stop(sender), 0, "sender exits 0 on SIGTERM");
          }
        } finally {
          assert.equal(await stop(receiver), 0, "receiver exits 0 on SIGTERM");
          echo.close();
        }
      });
    }
  }

  const canDig = has("dnsmasq") && has("dig");
  it("dig through the tunnel gets dnsmasq's answers, for every runtime pairing", {
    skip: canDig ? false : "dnsmasq or dig not installed",
  }, async () => {
    const dnsPort = await freePort("udp");
    const dnsmasq = spawn(
      "dnsmasq",
      [
        "-k",
        "--conf-file=/dev/null",
        `--port=${dnsPort}`,
        "--listen-address=127.0.0.1",
        "--bind-interfaces",
        "--no-resolv",
        "--no-hosts",
        "--address=/mcudpt.test/192.0.2.53",
        "--pid-file=",
        "--user=root",
      ],
      { stdio: "ignore" },
    );
    children.add(dnsmasq);
    try {
      await eventually(() => {
        const out = spawnSync(
          "dig",
          ["@127.0.0.1", "-p", String(dnsPort), "mcudpt.test", "+short", "+time=1", "+tries=1"],
          { encoding: "utf8" },
        );
        return out.stdout.trim() === "192.0.2.53";
      }, "dnsmasq answering directly");
      for (const receiverRuntime of available) {
        for (const senderRuntime of available) {
          const udpPort = await freePort("udp");
          const tcpPort = await freePort("tcp");
          const receiver = startCli(receiverRuntime, [
            "receiver",
            "--udp",
            `127.0.0.1:${udpPort}`,
            "--tcp",
            `127.0.0.1:${tcpPort}`,
            "--secret",
            "dns",
          ]);
          const sender = startCli(senderRuntime, [
            "sender",
            "--udp",
            `127.0.0.1:${dnsPort}`,
            "--tcp",
            `127.0.0.1:${tcpPort}`,
            "--secret",
            "dns",
          ]);
          try {
            await eventually(() => /accepted by receiver/.test(sender.stderr()), "sender accepted");
            const answer = execFileSync(
              "dig",
              ["@127.0.0.1", "-p", String(udpPort), "mcudpt.test", "+short", "+time=2", "+tries=3"],
              { encoding: "utf8" },
            );
            assert.equal(answer.trim(), "192.0.2.53", `${receiverRuntime} receiver, ${senderRuntime} sender`);
          } finally {
            await stop(sender);
            await stop(receiver);
          }
        }
      }
    } finally {
      dnsmasq.kill("SIGKILL");
      children.delete(dnsmasq);
    }
  });
});
