/**
 * The receiver's operator, end to end (SECURITY.md): the built CLI as processes under node and bun,
 * answers written to a pipe (no terminal). A bare `y` or `yes` in any case accepts, `n` or `no`
 * refuses, anything else is asked again — three times at most, then it is a no. Without an operator
 * (stdin /dev/null, as under systemd, or a pipe already closed) an unknown key is refused at once, the
 * refusal naming its fingerprint, and nobody is asked. Loopback only, a config dir per process.
 * Needs `bun run build` first.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
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
const TIMEOUT = { timeout: 90_000 };
const QUESTION = "Accept? [yes/no]";
const AGAIN = "Please type 'yes' or 'no': ";

const dirs: string[] = [];
after(() => {
  killAll();
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), "mcudpt-e2e-operator-"));
  dirs.push(dir);
  return dir;
}

/** A fresh sender key written as `mcudpt keygen` would. */
function senderKey(dir: string, name: string): { path: string; fingerprint: string } {
  const pair = generateKeyPair(`${name}@e2e`);
  const path = join(dir, name);
  writeKeyPair(path, pair);
  return { path, fingerprint: pair.fingerprint };
}

const occurrences = (text: string, part: string) => text.split(part).length - 1;
const linesWith = (text: string, ...parts: string[]) =>
  text.split("\n").filter((line) => parts.every((part) => line.includes(part)));

async function startReceiver(runtime: Runtime, stdin: "pipe" | "ignore" | "closed") {
  const ports = { udp: await freePort("udp"), tcp: await freePort("tcp") };
  const receiver = startCli(
    runtime,
    ["receiver", "--udp", `127.0.0.1:${ports.udp}`, "--tcp", `127.0.0.1:${ports.tcp}`],
    {},
    { stdin, stdout: true },
  );
  await eventually(
    () => receiver.stderr().includes("receiver listening"),
    () => `receiver up\n${receiver.stderr()}`,
  );
  return { receiver, ports };
}

function startSender(runtime: Runtime, key: string, targetPort: number, tcpPort: number): CliProcess {
  return startCli(runtime, [
    "sender",
    "--key",
    key,
    "--udp",
    `127.0.0.1:${targetPort}`,
    "--tcp",
    `127.0.0.1:${tcpPort}`,
  ]);
}

/** The other runtime when there are two, so each side runs on each. */
const other = (runtime: Runtime): Runtime => available.find((r) => r !== runtime) ?? runtime;

describe("the operator's answers and their absence, through the built CLI", () => {
  for (const runtime of available) {
    it(
      `${runtime} receiver, answers on a pipe: y, Y, yes and YES accept; n, N, no and No refuse; three other answers are a no`,
      TIMEOUT,
      async () => {
        const dir = tempDir();
        const echo = await startEcho();
        const { receiver, ports } = await startReceiver(runtime, "pipe");
        const cases: Array<{ answers: string[]; accepted: boolean }> = [
          ...["y", "Y", "yes", "YES"].map((answer) => ({ answers: [answer], accepted: true })),
          ...["n", "N", "no", "No"].map((answer) => ({ answers: [answer], accepted: false })),
          { answers: ["maybe", "Yes please", "nope"], accepted: false },
        ];
        try {
          for (const [i, { answers, accepted }] of cases.entries()) {
            const what = `answers ${JSON.stringify(answers)}`;
            const key = senderKey(dir, `sender-${i}`);
            const sender = startSender(other(runtime), key.path, echo.address().port, ports.tcp);
            try {
              await eventually(
                () => occurrences(receiver.stdout(), QUESTION) === i + 1,
                () => `${what}: the question\n${receiver.stdout()}\n${receiver.stderr()}`,
              );
              assert.ok(receiver.stdout().includes(key.fingerprint), `${what}: the question names the key`);
              for (const [n, answer] of answers.entries()) {
                const asked = occurrences(receiver.stdout(), AGAIN);
                receiver.child.stdin?.write(`${answer}\n`);
                // Each answer that is neither yes nor no is followed by the question again (but the last).
                if (n < answers.length - 1) {
                  await eventually(
                    () => occurrences(receiver.stdout(), AGAIN) === asked + 1,
                    () => `${what}: asked again after ${JSON.stringify(answer)}\n${receiver.stdout()}`,
                  );
                }
              }
              if (accepted) {
                await eventually(
                  () => sender.stderr().includes("accepted by receiver"),
                  () => `${what}: accepted\n${sender.stderr()}`,
                );
                assert.equal(await udpRequest(ports.udp, `after ${answers[0]}`), `after ${answers[0]}`);
              } else {
                await eventually(
                  () => linesWith(sender.stderr(), "refused").length > 0,
                  () => `${what}: refused\n${sender.stderr()}`,
                );
                assert.ok(!sender.stderr().includes("accepted by receiver"), `${what}: never accepted`);
              }
            } finally {
              await stopWith(sender, "SIGTERM");
            }
          }
          // "Three times at most": the last case was asked once and again twice, and the answers echoed.
          const againInAll = occurrences(receiver.stdout(), AGAIN);
          assert.equal(againInAll, 2, receiver.stdout());
          assert.equal(occurrences(receiver.stdout(), QUESTION), cases.length, receiver.stdout());
          assert.ok(!/\n\s+at /.test(receiver.stderr()), "no stack trace");
          assert.equal(receiver.exit, undefined, "the receiver kept running");
        } finally {
          await stopWith(receiver, "SIGTERM");
          echo.close();
        }
      },
    );

    for (const stdin of ["ignore", "closed"] as const) {
      const how = stdin === "ignore" ? "stdin /dev/null" : "stdin a closed pipe";
      it(
        `${runtime} receiver with ${how}: an unknown key is refused at once, naming its fingerprint, nobody asked`,
        TIMEOUT,
        async () => {
          const dir = tempDir();
          const echo = await startEcho();
          const { receiver, ports } = await startReceiver(runtime, stdin);
          const key = senderKey(dir, "unknown");
          const sender = startSender(other(runtime), key.path, echo.address().port, ports.tcp);
          try {
            await eventually(
              () => linesWith(receiver.stderr(), "refusing sender", key.fingerprint).length > 0,
              () => `the refusal\n${receiver.stderr()}`,
            );
            const [refusal] = linesWith(receiver.stderr(), "refusing sender", key.fingerprint);
            assert.match(refusal, /nobody can approve a new key .*\(stdin is closed\)/, refusal);
            await eventually(
              () => linesWith(sender.stderr(), "refused this side", "nobody can approve").length > 0,
              () => `the sender is told why\n${sender.stderr()}`,
            );
            assert.ok(!sender.stderr().includes("accepted by receiver"));
            // /dev/null is never asked; a closed pipe is found closed at the first read: either way no
            // one is waited for, and no answer is ever taken.
            if (stdin === "ignore") assert.equal(receiver.stdout(), "", "no question printed for /dev/null");
            assert.equal(occurrences(receiver.stdout(), AGAIN), 0);
            assert.equal(receiver.exit, undefined, "the receiver keeps running");
          } finally {
            await stopWith(sender, "SIGTERM");
            await stopWith(receiver, "SIGTERM");
            echo.close();
          }
        },
      );
    }
  }
});
