/**
 * Key authentication end to end: the built CLI (apps/cli/dist/mcudpt.js) as processes under node and
 * bun (mixed pairs): `mcudpt keygen`, an unattended receiver with --authorized-keys, an operator's "yes"
 * on stdin remembered across a sender restart, a sender refusing a changed receiver key (exit 1), and
 * bad key flags (exit 2, one line). Every process gets its own config dir; loopback only.
 * Needs `bun run build` first.
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { generateKeyPair, writeKeyPair } from "@mcudpt/core";
import {
  CLI,
  eventually,
  freePort,
  has,
  RUNTIMES,
  type Runtime,
  startEcho,
  udpRequest,
} from "../helpers/cli-process.js";

const available = RUNTIMES.filter(has);
/** Receiver runtime, sender runtime: each runtime on each side once. */
const PAIRS: Array<[Runtime, Runtime]> =
  available.length === 2
    ? [
        ["node", "bun"],
        ["bun", "node"],
      ]
    : available.map((r) => [r, r] as [Runtime, Runtime]);
const TIMEOUT = { timeout: 30_000 };

const dirs: string[] = [];
const children = new Set<ChildProcess>();
after(() => {
  for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), "mcudpt-e2e-security-"));
  dirs.push(dir);
  return dir;
}

/** Runs the CLI to completion (bounded), with its own config dir. */
function runCli(runtime: Runtime, args: string[]) {
  const result = spawnSync(runtime, [CLI, ...args], {
    encoding: "utf8",
    timeout: 15_000,
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, MCUDPT_SECRET: "", MCUDPT_CONFIG_DIR: tempDir() },
  });
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}

interface Running {
  child: ChildProcess;
  stdout(): string;
  stderr(): string;
  exited: Promise<number | null>;
}

/** A long-running CLI process with stdin kept open (a receiver's operator answers there). */
function startCli(runtime: Runtime, args: string[]): Running {
  const child = spawn(runtime, [CLI, ...args], {
    stdio: ["pipe", "pipe", "pipe"],
    env: { ...process.env, MCUDPT_SECRET: "", MCUDPT_CONFIG_DIR: tempDir() },
  });
  children.add(child);
  let stdout = "";
  let stderr = "";
  child.stdout?.on("data", (d) => {
    stdout += d;
  });
  child.stderr?.on("data", (d) => {
    stderr += d;
  });
  child.stdin?.on("error", () => {}); // EPIPE once the child is gone
  return {
    child,
    stdout: () => stdout,
    stderr: () => stderr,
    exited: new Promise((resolve) => child.on("exit", (code) => resolve(code))),
  };
}

async function stop(running: Running): Promise<void> {
  if (running.child.exitCode !== null || running.child.signalCode !== null) return;
  running.child.kill("SIGTERM");
  const timeout = new Promise<"timeout">((r) => setTimeout(() => r("timeout"), 5000));
  if ((await Promise.race([running.exited, timeout])) === "timeout") {
    running.child.kill("SIGKILL");
    throw new Error(`did not exit within 5 s of SIGTERM\n${running.stderr()}`);
  }
}

/** Waits (bounded) for the process to exit on its own. */
async function exitCode(running: Running, timeoutMs = 10_000): Promise<number | null> {
  const timeout = new Promise<"timeout">((r) => setTimeout(() => r("timeout"), timeoutMs));
  const code = await Promise.race([running.exited, timeout]);
  if (code === "timeout") throw new Error(`still running after ${timeoutMs} ms\n${running.stderr()}`);
  return code;
}

/** A key pair written as `mcudpt keygen` would; returns its path and fingerprint. */
function makeKey(dir: string, name: string): { path: string; fingerprint: string; publicKeyLine: string } {
  const pair = generateKeyPair(`${name}@e2e`);
  const path = join(dir, name);
  writeKeyPair(path, pair);
  return { path, fingerprint: pair.fingerprint, publicKeyLine: pair.publicKeyLine };
}

const lines = (text: string, part: string) => text.split("\n").filter((line) => line.includes(part));

interface Ports {
  udp: number;
  tcp: number;
}

async function receiverPorts(): Promise<Ports> {
  return { udp: await freePort("udp"), tcp: await freePort("tcp") };
}

async function startReceiverCli(runtime: Runtime, ports: Ports, args: string[]): Promise<Running> {
  const receiver = startCli(runtime, [
    "receiver",
    "--udp",
    `127.0.0.1:${ports.udp}`,
    "--tcp",
    `127.0.0.1:${ports.tcp}`,
    ...args,
  ]);
  await eventually(
    () => receiver.stderr().includes("receiver listening"),
    () => `receiver up\n${receiver.stderr()}`,
  );
  return receiver;
}

function startSenderCli(runtime: Runtime, targetPort: number, ports: Ports, args: string[]): Running {
  return startCli(runtime, ["sender", "--udp", `127.0.0.1:${targetPort}`, "--tcp", `127.0.0.1:${ports.tcp}`, ...args]);
}

describe("key authentication through the built CLI", () => {
  it("is built", () => assert.ok(existsSync(CLI), `${CLI} missing: run bun run build`));

  for (const runtime of available) {
    it(`${runtime}: keygen writes a 0600 key and its .pub, prints the ssh-keygen fingerprint, never overwrites`, () => {
      const dir = tempDir();
      // A missing directory (a service's state directory before its first start) is made, mode 0700.
      const nested = join(dir, "var", "lib", "mcudpt");
      const missing = runCli(runtime, ["keygen", "--out", join(nested, "id_ed25519")]);
      assert.equal(missing.status, 0, missing.stderr);
      assert.match(missing.stdout, new RegExp(`^Created directory ${join(dir, "var")} \\(mode 700\\)\n`));
      assert.equal(statSync(nested).mode & 0o777, 0o700, "new directory mode");
      assert.equal(statSync(join(nested, "id_ed25519")).mode & 0o777, 0o600);
      const out = join(dir, "k");
      const made = runCli(runtime, ["keygen", "--out", out, "--comment", "e2e@test"]);
      assert.equal(made.status, 0, made.stderr);
      assert.equal(statSync(out).mode & 0o777, 0o600, "private key mode");
      const pub = readFileSync(`${out}.pub`, "utf8");
      assert.match(pub, /^ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI[A-Za-z0-9+/]+=* e2e@test\n$/);
      const printed = /Fingerprint: (SHA256:[A-Za-z0-9+/]{43})/.exec(made.stdout)?.[1];
      assert.ok(printed, made.stdout);
      assert.ok(made.stdout.includes(pub.trim()), "prints the public key line for --authorized-keys");
      if (has("ssh-keygen")) {
        const ssh = spawnSync("ssh-keygen", ["-lf", `${out}.pub`], { encoding: "utf8" });
        assert.equal(ssh.status, 0, ssh.stderr);
        assert.equal(ssh.stdout.split(" ")[1], printed, `ssh-keygen says ${ssh.stdout}`);
      }
      const before = readFileSync(out, "utf8");
      const again = runCli(runtime, ["keygen", "--out", out]);
      assert.equal(again.status, 2);
      assert.equal(again.stderr.trim().split("\n").length, 1, again.stderr);
      assert.match(again.stderr, /already exists: not overwriting/);
      assert.equal(readFileSync(out, "utf8"), before, "the key is untouched");
    });
  }

  for (const [rx, tx] of PAIRS) {
    it(`receiver ${rx} admits sender ${tx} proving an OpenSSH key made by ssh-keygen (--key, its .pub listed)`, {
      ...TIMEOUT,
      skip: !has("ssh-keygen") && "no ssh-keygen",
    }, async () => {
      const dir = tempDir();
      const key = join(dir, "id_ed25519");
      const made = spawnSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", "ssh@e2e", "-f", key]);
      assert.equal(made.status, 0, String(made.stderr));
      assert.match(readFileSync(key, "utf8"), /^-----BEGIN OPENSSH PRIVATE KEY-----/);
      const printed = spawnSync("ssh-keygen", ["-lf", `${key}.pub`], { encoding: "utf8" }).stdout.split(" ")[1];
      writeFileSync(join(dir, "authorized_keys"), readFileSync(`${key}.pub`));
      const echo = await startEcho();
      const ports = await receiverPorts();
      const receiver = await startReceiverCli(rx, ports, ["--authorized-keys", join(dir, "authorized_keys")]);
      const sender = startSenderCli(tx, echo.address().port, ports, ["--key", key]);
      try {
        assert.equal(await udpRequest(ports.udp, "openssh key"), "openssh key");
        assert.equal(lines(sender.stderr(), `sender key ${printed} `).length, 1, sender.stderr());
        assert.equal(lines(receiver.stderr(), `${printed}: listed in`).length, 1, receiver.stderr());
      } finally {
        await stop(sender);
        await stop(receiver);
        echo.close();
      }
    });
  }

  for (const runtime of available) {
    it(`${runtime}: a key --key cannot use is one line saying what to do (passphrase, RSA, a .pub)`, {
      ...TIMEOUT,
      skip: !has("ssh-keygen") && "no ssh-keygen",
    }, () => {
      const dir = tempDir();
      const keygen = (name: string, args: string[]) => {
        const made = spawnSync("ssh-keygen", ["-q", ...args, "-C", "", "-f", join(dir, name)]);
        assert.equal(made.status, 0, String(made.stderr));
        return join(dir, name);
      };
      const cases: Array<[string, RegExp]> = [
        [
          keygen("with-passphrase", ["-t", "ed25519", "-N", "secret words"]),
          /protected by a passphrase.*ssh-keygen -p -N ''/,
        ],
        [keygen("rsa", ["-t", "rsa", "-b", "2048", "-N", ""]), /holds a key of type ssh-rsa; mcudpt uses Ed25519 keys/],
        [`${keygen("public", ["-t", "ed25519", "-N", ""])}.pub`, /is a public key: give the private key/],
      ];
      for (const [file, expected] of cases) {
        const result = runCli(runtime, ["sender", "--key", file, "--tcp", "127.0.0.1:1"]);
        assert.equal(result.status, 2, result.stderr);
        assert.equal(result.stderr.trim().split("\n").length, 1, result.stderr);
        assert.match(result.stderr, expected);
        assert.doesNotMatch(result.stderr, /OPENSSL|routines|at \w+ \(/);
      }
    });
  }

  for (const [rx, tx] of PAIRS) {
    it(`receiver ${rx} with --authorized-keys admits sender ${tx} without a prompt`, TIMEOUT, async () => {
      const dir = tempDir();
      const senderKey = makeKey(dir, "sender");
      writeFileSync(join(dir, "authorized_keys"), `${senderKey.publicKeyLine}\n`);
      const echo = await startEcho();
      const ports = await receiverPorts();
      const receiver = await startReceiverCli(rx, ports, ["--authorized-keys", join(dir, "authorized_keys")]);
      const sender = startSenderCli(tx, echo.address().port, ports, ["--key", senderKey.path]);
      try {
        assert.equal(await udpRequest(ports.udp, "allowlisted"), "allowlisted");
        assert.equal(lines(receiver.stderr(), `${senderKey.fingerprint}: listed in`).length, 1, receiver.stderr());
        assert.equal(receiver.stdout(), "", "no question on stdout");
        assert.equal(lines(sender.stderr(), "is new: remembered in").length, 1, "the sender pinned the receiver");
      } finally {
        await stop(sender);
        await stop(receiver);
        echo.close();
      }
    });

    it(
      `receiver ${rx} asks once on stdin; sender ${tx} restarted is accepted without a second prompt`,
      TIMEOUT,
      async () => {
        const dir = tempDir();
        const senderKey = makeKey(dir, "sender");
        const knownSenders = join(dir, "known_senders");
        const knownReceivers = join(dir, "known_receivers");
        const echo = await startEcho();
        const ports = await receiverPorts();
        const receiver = await startReceiverCli(rx, ports, ["--known-senders", knownSenders]);
        const senderArgs = ["--key", senderKey.path, "--known-receivers", knownReceivers];
        let sender = startSenderCli(tx, echo.address().port, ports, senderArgs);
        try {
          await eventually(
            () => receiver.stdout().includes("Accept? [yes/no]"),
            () => `the prompt\n${receiver.stderr()}`,
          );
          assert.ok(
            receiver.stdout().includes(senderKey.fingerprint),
            `the prompt names the key: ${receiver.stdout()}`,
          );
          receiver.child.stdin?.write("yes\n"); // one answer only, and stdin stays open
          assert.equal(await udpRequest(ports.udp, "approved"), "approved");
          assert.ok(readFileSync(knownSenders, "utf8").includes(senderKey.publicKeyLine.split(" ")[1]), "remembered");
          await stop(sender);

          sender = startSenderCli(tx, echo.address().port, ports, senderArgs);
          assert.equal(await udpRequest(ports.udp, "restarted"), "restarted");
          assert.equal(
            receiver.stdout().split("Accept? [yes/no]").length - 1,
            1,
            `one prompt in all: ${receiver.stdout()}`,
          );
          assert.ok(lines(receiver.stderr(), "known sender").length >= 1, receiver.stderr());
          assert.equal(lines(sender.stderr(), "is new").length, 0, "the restarted sender already knew the receiver");
        } finally {
          await stop(sender);
          await stop(receiver);
          echo.close();
        }
      },
    );

    it(
      `sender ${tx} refuses receiver ${rx} whose key is not the pinned one: exit 1, one error line`,
      TIMEOUT,
      async () => {
        const dir = tempDir();
        const senderKey = makeKey(dir, "sender");
        const receiverKey = makeKey(dir, "receiver");
        const otherKey = makeKey(dir, "other");
        writeFileSync(join(dir, "authorized_keys"), `${senderKey.publicKeyLine}\n`);
        const echo = await startEcho();
        const ports = await receiverPorts();
        const knownReceivers = join(dir, "known_receivers");
        const pin = `127.0.0.1:${ports.tcp} ${otherKey.publicKeyLine}\n`;
        writeFileSync(knownReceivers, pin);
        const receiver = await startReceiverCli(rx, ports, [
          "--key",
          receiverKey.path,
          "--authorized-keys",
          join(dir, "authorized_keys"),
        ]);
        try {
          for (const pinArgs of [
            ["--known-receivers", knownReceivers],
            ["--receiver-key", otherKey.fingerprint],
          ]) {
            const sender = startSenderCli(tx, echo.address().port, ports, ["--key", senderKey.path, ...pinArgs]);
            assert.equal(await exitCode(sender), 1, sender.stderr());
            const errors = lines(sender.stderr(), "error:");
            assert.equal(errors.length, 1, sender.stderr());
            assert.ok(errors[0].includes(receiverKey.fingerprint), `names the presented key: ${errors[0]}`);
            assert.ok(errors[0].includes(otherKey.fingerprint), `names the pinned key: ${errors[0]}`);
            assert.ok(!/\n\s+at /.test(sender.stderr()), "no stack trace");
          }
          assert.equal(readFileSync(knownReceivers, "utf8"), pin, "the pin is left as it was");
          // The receiver logs the reason each sender gave in its CLOSE (it arrives around the sender's exit).
          await eventually(
            () => lines(receiver.stderr(), "key not accepted").length === 2,
            () => `the receiver logs both refusals\n${receiver.stderr()}`,
          );
          // The peer is told a short reason; the sender's file and line stay in the sender's log (issue 18.5).
          assert.ok(
            !receiver.stderr().includes(knownReceivers),
            `no local path told to the peer:\n${receiver.stderr()}`,
          );
          assert.ok(!receiver.stderr().includes(dir), `no local path told to the peer:\n${receiver.stderr()}`);
        } finally {
          await stop(receiver);
          echo.close();
        }
      },
    );
  }

  // ssh's from="…" option on an authorized_keys line: the key is admitted from those sources only.
  it(
    'from="…" on an authorized key: admitted from a listed source (IPv4 and IPv6 literals), refused from another',
    TIMEOUT,
    async () => {
      const [rx, tx] = PAIRS[0];
      const dir = tempDir();
      const senderKey = makeKey(dir, "sender");
      const echo = await startEcho();
      const authorized = join(dir, "authorized_keys");
      for (const [from, connectVia, admitted] of [
        ["127.0.0.2", "127.0.0.1", false],
        ["127.0.0.1", "127.0.0.1", true],
        ["::1", "[::1]", true],
        ["127.0.0.0/8,!127.0.0.1", "127.0.0.1", false],
      ] as const) {
        writeFileSync(authorized, `from="${from}" ${senderKey.publicKeyLine}\n`);
        const tcp = await freePort("tcp");
        const receiver = startCli(rx, [
          "receiver",
          "--udp",
          `127.0.0.1:${await freePort("udp")}`,
          "--tcp",
          `[::]:${tcp}`,
          "--authorized-keys",
          authorized,
        ]);
        try {
          await eventually(
            () => receiver.stderr().includes("receiver listening"),
            () => receiver.stderr(),
          );
          const sender = startCli(tx, [
            "sender",
            "--udp",
            `127.0.0.1:${echo.address().port}`,
            "--tcp",
            `${connectVia}:${tcp}`,
            "--key",
            senderKey.path,
          ]);
          try {
            if (admitted) {
              await eventually(
                () => sender.stderr().includes("accepted by receiver"),
                () => `${from} via ${connectVia}\n${sender.stderr()}\n${receiver.stderr()}`,
              );
            } else {
              await eventually(
                () => lines(receiver.stderr(), `key ${senderKey.fingerprint} may not connect from `).length > 0,
                () => `${from} via ${connectVia}: refused\n${receiver.stderr()}`,
              );
              assert.ok(lines(receiver.stderr(), `(from= in ${authorized} line 1)`).length > 0, receiver.stderr());
              assert.ok(!sender.stderr().includes("accepted by receiver"), sender.stderr());
            }
          } finally {
            await stop(sender);
          }
        } finally {
          await stop(receiver);
        }
      }
      echo.close();
    },
  );

  // Issue 11: every refusal names the right side and file, in -L too (a listening sender that admits
  // receivers by its own --authorized-keys).
  for (const [senderRt, receiverRt] of PAIRS) {
    it(
      `-L: a listening sender (${senderRt}) refuses an unlisted receiver (${receiverRt}), naming its own file`,
      TIMEOUT,
      async () => {
        const dir = tempDir();
        const senderKey = makeKey(dir, "sender");
        const stranger = makeKey(dir, "stranger");
        const listed = makeKey(dir, "listed");
        const authorized = join(dir, "authorized_receivers");
        writeFileSync(authorized, `${listed.publicKeyLine}\n`);
        const echo = await startEcho();
        const tcp = await freePort("tcp");
        const udp = await freePort("udp");
        const sender = startCli(senderRt, [
          "sender",
          "--udp",
          `127.0.0.1:${echo.address().port}`,
          "--listen",
          `127.0.0.1:${tcp}`,
          "--key",
          senderKey.path,
          "--authorized-keys",
          authorized,
        ]);
        try {
          await eventually(
            () => sender.stderr().includes("listening for the receiver"),
            () => sender.stderr(),
          );
          const receiver = startCli(receiverRt, [
            "receiver",
            "--udp",
            `127.0.0.1:${udp}`,
            "--connect",
            `127.0.0.1:${tcp}`,
            "--key",
            stranger.path,
          ]);
          try {
            await eventually(
              () => lines(receiver.stderr(), "refused this side").length > 0,
              () => `the receiver hears the refusal\n${receiver.stderr()}\n${sender.stderr()}`,
            );
            const refusal = lines(sender.stderr(), "refusing receiver 127.0.0.1:");
            assert.ok(refusal.length > 0, sender.stderr());
            assert.ok(refusal[0].endsWith(`: key ${stranger.fingerprint} is not in ${authorized}`), refusal[0]);
            assert.ok(
              !sender.stderr().includes("receiver's authorized keys"),
              "no false sentence about the receiver's file",
            );
            const heard = lines(receiver.stderr(), "refused this side")[0];
            assert.ok(
              heard.includes(
                `the sender at 127.0.0.1:${tcp} refused this side: key not accepted ("key ${stranger.fingerprint} is not authorized here")`,
              ),
              heard,
            );
            assert.ok(!receiver.stderr().includes(dir), "the sender's file is not told to the receiver");
            assert.equal(sender.stdout().includes("Accept?"), false, "nobody is asked with an allowlist");
          } finally {
            await stop(receiver);
          }
        } finally {
          await stop(sender);
          echo.close();
        }
      },
    );
  }

  // Issue 17: the dialer checks the acceptor's key at its HELLO, before AUTH, so an impostor's
  // operator is never asked about a dialer that will refuse it anyway.
  for (const [acceptorRt, dialerRt] of PAIRS) {
    for (const direction of ["-R", "-L"] as const) {
      const [acceptorRole, dialerRole] = direction === "-R" ? ["receiver", "sender"] : ["sender", "receiver"];
      it(
        `${direction}: a ${dialerRole} (${dialerRt}) pinned to another key refuses the ${acceptorRole} (${acceptorRt}) at its HELLO: exit 1, nobody asked`,
        TIMEOUT,
        async () => {
          const dir = tempDir();
          const acceptorKey = makeKey(dir, acceptorRole);
          const dialerKey = makeKey(dir, dialerRole);
          const pinned = makeKey(dir, "pinned");
          const echo = await startEcho();
          let received = 0;
          echo.on("message", () => received++);
          const udp = await freePort("udp");
          const tcp = await freePort("tcp");
          const target = `127.0.0.1:${echo.address().port}`;
          // No --authorized-keys and stdin open: an unknown key would be asked about at this terminal.
          const acceptor =
            direction === "-R"
              ? startCli(acceptorRt, [
                  "receiver",
                  "--udp",
                  `127.0.0.1:${udp}`,
                  "--tcp",
                  `127.0.0.1:${tcp}`,
                  "--key",
                  acceptorKey.path,
                ])
              : startCli(acceptorRt, [
                  "sender",
                  "--udp",
                  target,
                  "--listen",
                  `127.0.0.1:${tcp}`,
                  "--key",
                  acceptorKey.path,
                ]);
          try {
            await eventually(
              () => /receiver listening|listening for the receiver/.test(acceptor.stderr()),
              () => `${acceptorRole} up\n${acceptor.stderr()}`,
            );
            const started = Date.now();
            const dialer =
              direction === "-R"
                ? startCli(dialerRt, [
                    "sender",
                    "--udp",
                    target,
                    "--tcp",
                    `127.0.0.1:${tcp}`,
                    "--key",
                    dialerKey.path,
                    "--receiver-key",
                    pinned.fingerprint,
                  ])
                : startCli(dialerRt, [
                    "receiver",
                    "--udp",
                    `127.0.0.1:${udp}`,
                    "--connect",
                    `127.0.0.1:${tcp}`,
                    "--key",
                    dialerKey.path,
                    "--sender-key",
                    pinned.fingerprint,
                  ]);
            assert.equal(await exitCode(dialer), 1, dialer.stderr());
            const tookMs = Date.now() - started;
            const errors = lines(dialer.stderr(), "error:");
            assert.equal(errors.length, 1, dialer.stderr());
            assert.ok(errors[0].includes(acceptorKey.fingerprint) && errors[0].includes(pinned.fingerprint), errors[0]);
            await eventually(
              () =>
                lines(acceptor.stderr(), `the ${dialerRole} at 127.0.0.1:`).some((l) =>
                  l.includes("refused this side"),
                ),
              () => `the ${acceptorRole} logs the peer's refusal as the peer's\n${acceptor.stderr()}`,
            );
            assert.equal(acceptor.stdout().includes("Accept?"), false, `nobody asked: ${acceptor.stdout()}`);
            assert.equal(received, 0, "nothing forwarded");
            console.log(`# ${direction} ${dialerRt} dialer refused the key at HELLO and exited 1 in ${tookMs} ms`);
          } finally {
            await stop(acceptor);
            echo.close();
          }
        },
      );
    }
  }

  it("a changed receiver key is reported in exactly one line", async () => {
    const [rx, tx] = PAIRS[0];
    const dir = tempDir();
    const senderKey = makeKey(dir, "sender");
    const otherKey = makeKey(dir, "other");
    writeFileSync(join(dir, "authorized_keys"), `${senderKey.publicKeyLine}\n`);
    const echo = await startEcho();
    const ports = await receiverPorts();
    const receiver = await startReceiverCli(rx, ports, ["--authorized-keys", join(dir, "authorized_keys")]);
    try {
      const sender = startSenderCli(tx, echo.address().port, ports, [
        "--key",
        senderKey.path,
        "--receiver-key",
        otherKey.fingerprint,
      ]);
      assert.equal(await exitCode(sender), 1);
      assert.equal(lines(sender.stderr(), otherKey.fingerprint).length, 1, sender.stderr());
    } finally {
      await stop(receiver);
      echo.close();
    }
  });

  for (const runtime of available) {
    it(`${runtime}: bad key flags exit 2 with one line and no stack trace`, async () => {
      const dir = tempDir();
      const key = makeKey(dir, "key");
      const garbageKeys = join(dir, "not_keys");
      writeFileSync(garbageKeys, "this is not a public key\n");
      const ports = await receiverPorts();
      const where = ["--udp", `127.0.0.1:${ports.udp}`, "--tcp", `127.0.0.1:${ports.tcp}`];
      const cases: Array<{ args: string[]; says: RegExp }> = [
        {
          args: ["receiver", "--key", key.path, "--secret", "s"],
          says: /--key .*cannot be combined with a shared secret/,
        },
        { args: ["sender", "--receiver-key", "s3cr3t", "--secret", "s"], says: /--receiver-key .*shared secret/ },
        { args: ["sender", "--receiver-key", "garbage"], says: /--receiver-key: "garbage" is not a/ },
        {
          args: ["sender", "--receiver-key", key.fingerprint, "--known-receivers", join(dir, "kr")],
          says: /--receiver-key or --known-receivers, not both/,
        },
        { args: ["receiver", "--authorized-keys", join(dir, "missing")], says: /cannot read .*missing/ },
        { args: ["receiver", "--authorized-keys", garbageKeys], says: /not_keys line 1: not an "ssh-ed25519/ },
        { args: ["receiver", "--key", join(dir, "missing")], says: /cannot read key .*missing/ },
        { args: ["receiver", "--key", `${key.path}.pub`], says: /is a public key: give the private key/ },
        { args: ["receiver", "--new-flow-rate", "-1"], says: /--new-flow-rate: "-1" is not a whole number/ },
        { args: ["receiver", "--amplification-limit", "lots"], says: /--amplification-limit: "lots"/ },
      ];
      for (const { args, says } of cases) {
        const result = runCli(runtime, [...args, ...where]);
        const what = `${args.join(" ")}\n${result.stderr}`;
        assert.equal(result.status, 2, what);
        assert.equal(result.stderr.trim().split("\n").length, 1, what);
        assert.match(result.stderr, /^mcudpt: /, what);
        assert.match(result.stderr, says, what);
        assert.doesNotMatch(result.stderr, /\bat .*:\d+:\d+/, `stack trace: ${what}`);
      }
    });
  }
});
