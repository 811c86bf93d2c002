/**
 * End to end: `receiver --tls` and `sender --tls --tls-fingerprint <what the receiver logged>` as
 * processes, Bun and Node in every pairing, with the certificate generated into a temporary
 * MCUDPT_CONFIG_DIR (never the real ~/.config). Needs `bun run build` first.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
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
  startEcho,
  stopWith,
  udpRequest,
} from "../helpers/cli-process.js";

const TIMEOUT = { timeout: 60_000 };
const configDir = mkdtempSync(join(tmpdir(), "mcudpt-e2e-tls-"));
const env = { MCUDPT_CONFIG_DIR: configDir };
after(() => {
  killAll();
  rmSync(configDir, { recursive: true, force: true });
});

const runtimes = RUNTIMES.filter((runtime) => has(runtime));

/** Starts `receiver --tls` and returns it with the fingerprint it logged. */
async function startTlsReceiver(runtime: Runtime, udpPort: number, tcpPort: number) {
  const receiver = startCli(
    runtime,
    ["receiver", "--tls", "--udp", `127.0.0.1:${udpPort}`, "--tcp", `127.0.0.1:${tcpPort}`, "--secret", "e2e"],
    env,
  );
  await eventually(
    () => /receiver listening/.test(receiver.stderr()),
    () => `receiver up:\n${receiver.stderr()}`,
  );
  const fingerprint = /TLS certificate (SHA256:[A-Za-z0-9+/]{43})/.exec(receiver.stderr())?.[1];
  assert.ok(fingerprint, `fingerprint logged:\n${receiver.stderr()}`);
  return { receiver, fingerprint };
}

function startTlsSender(runtime: Runtime, targetPort: number, tcpPort: number, fingerprint: string): CliProcess {
  return startCli(
    runtime,
    [
      "sender",
      "--tls",
      "--tls-fingerprint",
      fingerprint,
      "--udp",
      `127.0.0.1:${targetPort}`,
      "--tcp",
      `127.0.0.1:${tcpPort}`,
      "--secret",
      "e2e",
    ],
    env,
  );
}

describe("mcudpt --tls (built CLI)", () => {
  for (const receiverRuntime of runtimes) {
    for (const senderRuntime of runtimes) {
      it(
        `${receiverRuntime} receiver --tls, ${senderRuntime} sender pinning its logged fingerprint`,
        TIMEOUT,
        async () => {
          const echo = await startEcho();
          const udpPort = await freePort("udp");
          const tcpPort = await freePort("tcp");
          const { receiver, fingerprint } = await startTlsReceiver(receiverRuntime, udpPort, tcpPort);
          const sender = startTlsSender(senderRuntime, echo.address().port, tcpPort, fingerprint);
          try {
            await eventually(
              () => /accepted by receiver/.test(sender.stderr()),
              () => `sender accepted:\n${sender.stderr()}`,
            );
            assert.equal(await udpRequest(udpPort, "through TLS"), "through TLS");
            assert.deepEqual(await stopWith(sender, "SIGTERM"), { code: 0, signal: null });
            assert.deepEqual(await stopWith(receiver, "SIGTERM"), { code: 0, signal: null });
          } finally {
            echo.close();
          }
        },
      );
    }
  }

  it(
    "keeps the generated certificate in MCUDPT_CONFIG_DIR (key 0600) and logs the same fingerprint again",
    TIMEOUT,
    async () => {
      const runtime = runtimes[0];
      const first = await startTlsReceiver(runtime, await freePort("udp"), await freePort("tcp"));
      await stopWith(first.receiver, "SIGTERM");
      assert.equal(statSync(join(configDir, "tls-key.pem")).mode & 0o777, 0o600);
      assert.ok(statSync(join(configDir, "tls-cert.pem")).isFile());
      const second = await startTlsReceiver(runtime, await freePort("udp"), await freePort("tcp"));
      await stopWith(second.receiver, "SIGTERM");
      assert.equal(second.fingerprint, first.fingerprint);
      assert.doesNotMatch(second.receiver.stderr(), /generated a self-signed/);
    },
  );

  for (const senderRuntime of runtimes) {
    it(`${senderRuntime} sender with a wrong fingerprint exits 1 with one line saying why`, TIMEOUT, async () => {
      const tcpPort = await freePort("tcp");
      const { receiver } = await startTlsReceiver(runtimes[0], await freePort("udp"), tcpPort);
      const wrong = "SHA256:aBInr1xIokK+V5je6DBrD43jaZXdxeGMDFxwVyTxt+Y";
      const sender = startTlsSender(senderRuntime, await freePort("udp"), tcpPort, wrong);
      let timer: ReturnType<typeof setTimeout> | undefined;
      const exit = await Promise.race([
        sender.exited,
        new Promise<"timeout">((resolve) => (timer = setTimeout(() => resolve("timeout"), 20_000))),
      ]);
      clearTimeout(timer);
      assert.deepEqual(exit, { code: 1, signal: null }, sender.stderr());
      assert.equal(sender.count(/does not match the pinned SHA256:aBInr1x.* refusing \(possible impostor/), 1);
      assert.doesNotMatch(sender.stderr(), /reconnecting|at .*:\d+:\d+\)/); // no retry, no stack
      await stopWith(receiver, "SIGTERM");
    });
  }

  // Issue 18 item 1: trust on first use needs a writable known_receivers; when it cannot be written
  // the sender must exit 1 with one line (it used to log an "unexpected rejection" and sit idle forever).
  const nobody = ["--reuid=65534", "--regid=65534", "--clear-groups"];
  const asNobody = spawnSync("setpriv", [...nobody, "true"]).status === 0;
  // A checkout below a directory only root may enter (mktemp -d makes one 0700) cannot be run as uid 65534.
  const cliReadable = asNobody && spawnSync("setpriv", [...nobody, "test", "-r", CLI], { cwd: "/" }).status === 0;
  for (const runtime of runtimes) {
    it(`${runtime}: a sender --tls whose config dir cannot be written exits 1 with one line`, {
      ...TIMEOUT,
      skip: !asNobody
        ? "needs root and setpriv (runs the sender as uid 65534)"
        : cliReadable
          ? false
          : `uid 65534 cannot read ${CLI} (the checkout is below a directory only root may enter)`,
    }, async () => {
      const [udpPort, tcpPort] = [await freePort("udp"), await freePort("tcp")];
      const { receiver } = await startTlsReceiver(runtime, udpPort, tcpPort);
      const unwritable = join(configDir, "root-only");
      spawnSync("install", ["-d", "-m", "0700", unwritable]);
      const sender = spawnSync(
        "setpriv",
        [
          "--reuid=65534",
          "--regid=65534",
          "--clear-groups",
          runtime,
          CLI,
          "sender",
          "--tls",
          "--udp",
          "127.0.0.1:9",
          "--tcp",
          `127.0.0.1:${tcpPort}`,
          "--secret",
          "e2e",
        ],
        {
          encoding: "utf8",
          timeout: 20_000,
          cwd: "/", // the test's own directory may be one uid 65534 cannot enter
          env: { ...process.env, HOME: "/", MCUDPT_CONFIG_DIR: join(unwritable, "mcudpt") },
        },
      );
      assert.equal(sender.status, 1, sender.stderr);
      const errors = sender.stderr.split("\n").filter((line) => line.includes("error:"));
      assert.equal(errors.length, 1, sender.stderr);
      assert.match(errors[0], /cannot write .*known_receivers: EACCES/);
      assert.doesNotMatch(sender.stderr, /unexpected|please report|\n\s+at /);
      await stopWith(receiver, "SIGTERM");
    });
  }

  it("refuses inconsistent TLS flags with one line and exit code 2", TIMEOUT, () => {
    const cases: Array<[string[], RegExp]> = [
      [["receiver", "--tls-cert", "c.pem"], /--tls-cert needs --tls/],
      [["receiver", "--tls", "--tls-key", "k.pem"], /give both --tls-cert and --tls-key/],
      [
        ["receiver", "--tls", "--tls-cert", "/nonexistent/c.pem", "--tls-key", join(configDir, "tls-key.pem")],
        /is missing but/,
      ],
      [["sender", "--tls-fingerprint", "SHA256:x"], /--tls-fingerprint needs --tls/],
      [["sender", "--tls-ca", "ca.pem"], /--tls-ca needs --tls/],
      [["sender", "--tls", "--tls-fingerprint", "not-a-fingerprint"], /is not a SHA-256 fingerprint/],
      [["sender", "--tls", "--tls-ca", "/nonexistent/ca.pem"], /--tls-ca: cannot read/],
      [["sender", "--tls", "--tls-ca", CLI], /is not a PEM certificate/],
      [["sender", "--tls", "--tls-ca", CLI, "--tls-fingerprint", "SHA256:x"], /not both/],
    ];
    for (const [args, pattern] of cases) {
      const result = spawnSync(runtimes[0], [CLI, ...args], {
        encoding: "utf8",
        timeout: 15_000,
        env: { ...process.env, ...env },
      });
      assert.equal(result.status, 2, `${args.join(" ")}: ${result.stderr}`);
      assert.match(result.stderr, pattern);
      assert.equal(result.stderr.trim().split("\n").length, 1, result.stderr);
    }
  });
});
