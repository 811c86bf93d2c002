/**
 * The files of SECURITY.md "Files", end to end: the built CLI as processes under node and bun, each with
 * its own MCUDPT_CONFIG_DIR, started under a umask of 000 so that a mode comes from the code, not from
 * the umask. `known_senders` (an operator's yes) and `known_receivers` (a key and a TLS certificate
 * pinned on first use) are created 0600; a private key others can read is used with a warning; a TLS
 * certificate pinned on first use that later changes is refused, and the sender exits 1 with one line.
 * Loopback only. Needs `bun run build` first.
 */
import assert from "node:assert/strict";
import { chmodSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { generateKeyPair, writeKeyPair } from "@mcudpt/core";
import {
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

const available = RUNTIMES.filter(has);
const TIMEOUT = { timeout: 60_000 };
const other = (runtime: Runtime): Runtime => available.find((r) => r !== runtime) ?? runtime;

const dirs: string[] = [];
after(() => {
  killAll();
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), "mcudpt-e2e-files-"));
  dirs.push(dir);
  return dir;
}

const modeOf = (path: string) => (statSync(path).mode & 0o777).toString(8).padStart(3, "0");

/** Starts the CLI with umask 000: every file it creates gets exactly the mode the code asks for. */
function startPermissive(...args: Parameters<typeof startCli>): CliProcess {
  const previous = process.umask(0);
  try {
    return startCli(...args);
  } finally {
    process.umask(previous);
  }
}

async function until(running: CliProcess, pattern: RegExp, what: string): Promise<void> {
  await eventually(
    () => pattern.test(running.stderr()),
    () => `${what}\n${running.stderr()}`,
  );
}

describe("trust files and keys on disk, through the built CLI", () => {
  for (const runtime of available) {
    it(
      `${runtime}: known_senders (an operator's yes) and known_receivers (a key pinned on first use) are created 0600`,
      TIMEOUT,
      async () => {
        const receiverDir = tempDir();
        const senderDir = tempDir();
        const echo = await startEcho();
        const ports = { udp: await freePort("udp"), tcp: await freePort("tcp") };
        const receiver = startPermissive(
          runtime,
          ["receiver", "--udp", `127.0.0.1:${ports.udp}`, "--tcp", `127.0.0.1:${ports.tcp}`],
          { MCUDPT_CONFIG_DIR: receiverDir },
          { stdin: "pipe", stdout: true },
        );
        const sender = startPermissive(
          other(runtime),
          ["sender", "--udp", `127.0.0.1:${echo.address().port}`, "--tcp", `127.0.0.1:${ports.tcp}`],
          { MCUDPT_CONFIG_DIR: senderDir },
        );
        try {
          await eventually(
            () => receiver.stdout().includes("Accept? [yes/no]"),
            () => `the question\n${receiver.stderr()}`,
          );
          receiver.child.stdin?.write("yes\n");
          assert.equal(await udpRequest(ports.udp, "pinned both ways"), "pinned both ways");
          const files = {
            "receiver's id_ed25519": join(receiverDir, "id_ed25519"),
            "sender's id_ed25519": join(senderDir, "id_ed25519"),
            known_senders: join(receiverDir, "known_senders"),
            known_receivers: join(senderDir, "known_receivers"),
          };
          for (const [name, path] of Object.entries(files)) assert.equal(modeOf(path), "600", `${name} (${path})`);
          for (const dir of [receiverDir, senderDir]) assert.equal(modeOf(dir), "700", dir);
          assert.match(
            readFileSync(files.known_receivers, "utf8"),
            new RegExp(`^127\\.0\\.0\\.1:${ports.tcp} ssh-ed25519 `),
          );
          // Nothing warned about the keys it made itself.
          assert.doesNotMatch(receiver.stderr() + sender.stderr(), /readable by other users/);
        } finally {
          await stopWith(sender, "SIGTERM");
          await stopWith(receiver, "SIGTERM");
          echo.close();
        }
      },
    );

    it(
      `${runtime}: a --key others can read is used with a warning (receiver and sender); a 0600 one without`,
      TIMEOUT,
      async () => {
        const dir = tempDir();
        for (const mode of [0o644, 0o640, 0o600]) {
          for (const role of ["receiver", "sender"] as const) {
            const path = join(dir, `${role}-${mode.toString(8)}`);
            writeKeyPair(path, generateKeyPair(`${role}@e2e`));
            chmodSync(path, mode);
            const args =
              role === "receiver"
                ? [
                    "receiver",
                    "--key",
                    path,
                    "--udp",
                    `127.0.0.1:${await freePort("udp")}`,
                    "--tcp",
                    `127.0.0.1:${await freePort("tcp")}`,
                  ]
                : ["sender", "--key", path, "--udp", "127.0.0.1:9", "--tcp", `127.0.0.1:${await freePort("tcp")}`];
            const running = startCli(runtime, args);
            try {
              await until(running, role === "receiver" ? /receiver listening/ : /sender forwarding/, `${role} started`);
              const warnings = running.count(/warn: key .* is readable by other users: chmod 600 it/);
              const what = `${role}, key mode ${mode.toString(8)}`;
              assert.equal(warnings, mode === 0o600 ? 0 : 1, `${what}\n${running.stderr()}`);
              if (mode !== 0o600) assert.equal(running.count(new RegExp(`key ${path} is readable`)), 1, what);
              assert.equal(modeOf(path), mode.toString(8), `${what}: the key file is left as it was`);
            } finally {
              await stopWith(running, "SIGTERM");
            }
          }
        }
      },
    );

    it(
      `${runtime} sender: a TLS certificate pinned on first use that later changes is refused (exit 1, one line), at once and after a restart; a pin edited on purpose is followed without one`,
      TIMEOUT,
      async () => {
        const senderDir = tempDir();
        const echo = await startEcho();
        const ports = { udp: await freePort("udp"), tcp: await freePort("tcp") };
        const receiverArgs = [
          "receiver",
          "--tls",
          "--secret",
          "e2e",
          "--udp",
          `127.0.0.1:${ports.udp}`,
          "--tcp",
          `127.0.0.1:${ports.tcp}`,
        ];
        const senderArgs = [
          "sender",
          "--tls",
          "--secret",
          "e2e",
          "--udp",
          `127.0.0.1:${echo.address().port}`,
          "--tcp",
          `127.0.0.1:${ports.tcp}`,
        ];
        // Receivers in turn on the same address, each config dir its own certificate (A, then B, then A).
        const dirA = tempDir();
        const dirB = tempDir();
        let receiver: CliProcess | undefined;
        const swapReceiver = async (dir: string) => {
          if (receiver) await stopWith(receiver, "SIGTERM");
          receiver = startCli(other(runtime), receiverArgs, { MCUDPT_CONFIG_DIR: dir });
          await until(receiver, /receiver listening/, "a receiver");
          const print = /TLS certificate (SHA256:[A-Za-z0-9+/]{43})/.exec(receiver.stderr())?.[1];
          assert.ok(print, receiver.stderr());
          return print;
        };
        const startSender = () => startPermissive(runtime, senderArgs, { MCUDPT_CONFIG_DIR: senderDir });
        const knownReceivers = join(senderDir, "known_receivers");
        const pinLine = (print: string) => `127.0.0.1:${ports.tcp} tls ${print}\n`;
        const senders: CliProcess[] = [];
        /** The sender exits 1 by itself, with one error line: the changed certificate, the file, both prints. */
        const refusedForGood = async (sender: CliProcess, presented: string, pinned: string, what: string) => {
          let timer: ReturnType<typeof setTimeout> | undefined;
          const exit = await Promise.race([
            sender.exited,
            new Promise<"timeout">((resolve) => (timer = setTimeout(() => resolve("timeout"), 20_000))),
          ]);
          clearTimeout(timer);
          assert.deepEqual(exit, { code: 1, signal: null }, `${what}\n${sender.stderr()}`);
          const errors = sender
            .stderr()
            .split("\n")
            .filter((line) => line.includes("error:"));
          assert.equal(errors.length, 1, `${what}\n${sender.stderr()}`);
          assert.match(errors[0], /TLS CERTIFICATE CHANGED/, what);
          assert.ok(errors[0].includes(`${presented}, but ${knownReceivers} line 1 pins ${pinned}`), errors[0]);
          assert.doesNotMatch(sender.stderr(), /\n\s+at /, `${what}: no stack trace`);
          assert.equal(readFileSync(knownReceivers, "utf8"), pinLine(pinned), `${what}: the pin is left as it was`);
        };
        try {
          const first = await swapReceiver(dirA);
          let sender = startSender();
          senders.push(sender);
          await until(sender, /accepted by receiver/, "accepted by receiver A");
          assert.equal(await udpRequest(ports.udp, "certificate A"), "certificate A");
          assert.equal(readFileSync(knownReceivers, "utf8"), pinLine(first), "pinned on first use");
          assert.equal(modeOf(knownReceivers), "600");
          assert.equal(sender.count(/is new: remembered in/), 1, sender.stderr());

          // Another certificate at the same address: the running sender refuses it when it reconnects.
          const second = await swapReceiver(dirB);
          assert.notEqual(second, first);
          await refusedForGood(sender, second, first, "the running sender");
          // And a restarted one, reading the file afresh.
          sender = startSender();
          senders.push(sender);
          await refusedForGood(sender, second, first, "a restarted sender");

          // Replaced on purpose: the operator pins B in the file; later A is back and pinned again, while
          // the sender runs: it follows the file at each connection, no restart.
          writeFileSync(knownReceivers, pinLine(second));
          sender = startSender();
          senders.push(sender);
          await until(sender, /accepted by receiver/, "accepted by receiver B under the edited pin");
          writeFileSync(knownReceivers, pinLine(first));
          await swapReceiver(dirA);
          await eventually(
            () => sender.count(/accepted by receiver/) === 2,
            () => `accepted by receiver A again, under the pin edited while running\n${sender.stderr()}`,
          );
          assert.equal(await udpRequest(ports.udp, "certificate A again"), "certificate A again");
          assert.equal(sender.count(/error:/), 0, sender.stderr());
        } finally {
          for (const sender of senders) if (sender.exit === undefined) await stopWith(sender, "SIGTERM");
          if (receiver) await stopWith(receiver, "SIGTERM");
          echo.close();
        }
      },
    );
  }
});
