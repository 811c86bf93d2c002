/**
 * End to end, as processes: the built CLI (apps/cli/dist/mcudpt.js) under node and under bun, with a
 * shared secret. File descriptors return to their baseline once idle flows close; a SIGKILLed sender
 * is replaced; a receiver restarted on the same ports is found again by the running sender; SIGINT and
 * SIGTERM say goodbye to the peer and exit 0. Needs `bun run build` first.
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { connect } from "node:net";
import { after, describe, it } from "node:test";
import {
  CLI,
  type CliProcess,
  eventually,
  fdCount,
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

const SECRET = "process-test-secret";
const TIMEOUT = { timeout: 60_000 };

after(killAll);

const available = RUNTIMES.filter(has);

interface Ports {
  udp: number;
  tcp: number;
}

async function freePorts(): Promise<Ports> {
  return { udp: await freePort("udp"), tcp: await freePort("tcp") };
}

async function startReceiver(runtime: Runtime, ports: Ports, extra: string[] = []): Promise<CliProcess> {
  const receiver = startCli(runtime, [
    "receiver",
    "--udp",
    `127.0.0.1:${ports.udp}`,
    "--tcp",
    `127.0.0.1:${ports.tcp}`,
    "--secret",
    SECRET,
    ...extra,
  ]);
  await eventually(
    () => /receiver listening/.test(receiver.stderr()) || receiver.exit !== undefined,
    () => `receiver listening\n${receiver.stderr()}`,
  );
  assert.equal(receiver.exit, undefined, `receiver exited at start:\n${receiver.stderr()}`);
  assert.match(receiver.stderr(), new RegExp(`transport: ${runtime}`));
  return receiver;
}

function startSender(runtime: Runtime, targetPort: number, ports: Ports, extra: string[] = []): CliProcess {
  return startCli(runtime, [
    "sender",
    "--udp",
    `127.0.0.1:${targetPort}`,
    "--tcp",
    `127.0.0.1:${ports.tcp}`,
    "--secret",
    SECRET,
    ...extra,
  ]);
}

/** Waits until `sender` has been accepted `times` times in all. */
async function accepted(sender: CliProcess, receiver: CliProcess, times = 1, timeoutMs = 10_000): Promise<void> {
  await eventually(
    () => sender.count(/accepted by receiver/) >= times,
    () => `sender accepted (${times})\n--- sender:\n${sender.stderr()}\n--- receiver:\n${receiver.stderr()}`,
    timeoutMs,
  );
}

describe("the CLI as long-running processes", () => {
  it("is built", () => assert.ok(existsSync(CLI), `${CLI} missing: run bun run build`));

  for (const runtime of available) {
    it(
      `${runtime}: file descriptors return to baseline after 300 one-shot clients idle out (--idle-timeout 2)`,
      TIMEOUT,
      async () => {
        const echo = await startEcho();
        const ports = await freePorts();
        const receiver = await startReceiver(runtime, ports, ["--idle-timeout", "2"]);
        const sender = startSender(runtime, echo.address().port, ports, ["--idle-timeout", "2"]);
        try {
          await accepted(sender, receiver);
          const baseline = { sender: fdCount(sender.pid), receiver: fdCount(receiver.pid) };
          let peak = baseline.sender;
          // 300 one-shot clients (each its own source port, so its own flow), 50 at a time.
          for (let batch = 0; batch < 6; batch++) {
            const replies = await Promise.all(
              Array.from({ length: 50 }, (_, i) => udpRequest(ports.udp, `one-shot ${batch * 50 + i}`, 10_000, 300)),
            );
            for (const [i, reply] of replies.entries()) assert.equal(reply, `one-shot ${batch * 50 + i}`);
            peak = Math.max(peak, fdCount(sender.pid));
          }
          // The measurement sees flow sockets (one per flow on the sender), so a leak could not hide.
          assert.ok(peak >= baseline.sender + 25, `sender fds: baseline ${baseline.sender}, peak ${peak}`);
          // Idle flows close after ~2 s on both sides; the sender then keeps each closed socket a few
          // seconds more (lingering against port-reuse cross-talk, 5 s today), then must release it.
          await eventually(
            () => fdCount(sender.pid) <= baseline.sender && fdCount(receiver.pid) <= baseline.receiver,
            () =>
              `fds back to baseline: sender ${fdCount(sender.pid)} (baseline ${baseline.sender}), ` +
              `receiver ${fdCount(receiver.pid)} (baseline ${baseline.receiver})`,
            30_000,
          );
          // And the tunnel still works afterwards.
          assert.equal(await udpRequest(ports.udp, "still there"), "still there");
        } finally {
          await stopWith(sender, "SIGTERM");
          await stopWith(receiver, "SIGTERM");
          echo.close();
        }
      },
    );

    it(
      `${runtime}: a SIGKILLed sender is replaced by a new one, which the receiver accepts by itself`,
      TIMEOUT,
      async () => {
        const echo = await startEcho();
        const ports = await freePorts();
        const receiver = await startReceiver(runtime, ports);
        const first = startSender(runtime, echo.address().port, ports);
        let second: CliProcess | undefined;
        try {
          await accepted(first, receiver);
          assert.equal(await udpRequest(ports.udp, "to the first sender"), "to the first sender");
          first.child.kill("SIGKILL");
          const exit = await first.exited;
          assert.equal(exit.signal, "SIGKILL");
          await eventually(
            () => /connection from .* lost/.test(receiver.stderr()),
            () => `receiver notices\n${receiver.stderr()}`,
          );

          second = startSender(runtime, echo.address().port, ports);
          await accepted(second, receiver);
          assert.equal(receiver.count(/sender .* accepted/), 2, receiver.stderr());
          assert.equal(await udpRequest(ports.udp, "to the second sender"), "to the second sender");
          assert.doesNotMatch(receiver.stderr(), /busy|error/i);
        } finally {
          if (second) await stopWith(second, "SIGTERM");
          await stopWith(receiver, "SIGTERM");
          echo.close();
        }
      },
    );

    it(`${runtime}: a receiver restarted on the same ports is found again by the running sender`, TIMEOUT, async () => {
      const echo = await startEcho();
      const ports = await freePorts();
      const first = await startReceiver(runtime, ports);
      const sender = startSender(runtime, echo.address().port, ports);
      let second: CliProcess | undefined;
      try {
        await accepted(sender, first);
        assert.equal(await udpRequest(ports.udp, "through the first receiver"), "through the first receiver");
        first.child.kill("SIGKILL");
        assert.equal((await first.exited).signal, "SIGKILL");
        await eventually(
          () => /reconnecting in/.test(sender.stderr()),
          () => `sender notices\n${sender.stderr()}`,
        );

        second = await startReceiver(runtime, ports);
        // The sender's early retries are fast (250 ms, doubling): well within this bound.
        await accepted(sender, second, 2, 20_000);
        assert.equal(await udpRequest(ports.udp, "through the second receiver"), "through the second receiver");
        assert.equal(sender.exit, undefined, "the sender kept running throughout");
      } finally {
        await stopWith(sender, "SIGTERM");
        if (second) await stopWith(second, "SIGTERM");
        echo.close();
      }
    });

    for (const [senderSignal, receiverSignal] of [
      ["SIGINT", "SIGTERM"],
      ["SIGTERM", "SIGINT"],
    ] as const) {
      it(
        `${runtime}: ${senderSignal} to the sender and ${receiverSignal} to the receiver say goodbye and exit 0`,
        TIMEOUT,
        async () => {
          const echo = await startEcho();
          const ports = await freePorts();
          const receiver = await startReceiver(runtime, ports);
          const first = startSender(runtime, echo.address().port, ports);
          let second: CliProcess | undefined;
          try {
            await accepted(first, receiver);
            assert.equal(await udpRequest(ports.udp, "hello"), "hello");

            // The sender leaves: exit 0, and the receiver hears its goodbye (CLOSE normal), not a lost connection.
            assert.deepEqual(await stopWith(first, senderSignal), { code: 0, signal: null }, first.stderr());
            assert.match(first.stderr(), new RegExp(`${senderSignal}: shutting down`));
            await eventually(
              () => /closed the connection: normal \("sender shutting down"\)/.test(receiver.stderr()),
              () => `receiver logs the sender's goodbye\n${receiver.stderr()}`,
            );
            assert.doesNotMatch(receiver.stderr(), /connection from .* lost/);

            // The receiver leaves: exit 0, and a connected sender hears its goodbye.
            second = startSender(runtime, echo.address().port, ports);
            await accepted(second, receiver);
            assert.deepEqual(await stopWith(receiver, receiverSignal), { code: 0, signal: null }, receiver.stderr());
            assert.match(receiver.stderr(), new RegExp(`${receiverSignal}: shutting down`));
            const sender = second;
            await eventually(
              () => /closed the connection: normal \("receiver shutting down"\)/.test(sender.stderr()),
              () => `sender logs the receiver's goodbye\n${sender.stderr()}`,
            );
            // A sender left without a receiver (retrying) still exits 0 on a signal.
            assert.deepEqual(await stopWith(second, senderSignal), { code: 0, signal: null }, second.stderr());
          } finally {
            killAll();
            echo.close();
          }
        },
      );
    }

    // A log reader that goes away (`mcudpt ... 2>&1 | logger` restarted, a closed terminal) leaves
    // stderr a broken pipe. The process must still shut down on a signal instead of looping on the error.
    it(`${runtime}: SIGTERM still exits 0 once nobody reads stderr any more (broken pipe)`, TIMEOUT, async () => {
      const echo = await startEcho();
      const ports = await freePorts();
      const receiver = await startReceiver(runtime, ports);
      const sender = startSender(runtime, echo.address().port, ports);
      try {
        await accepted(sender, receiver);
        assert.equal(await udpRequest(ports.udp, "before the reader leaves"), "before the reader leaves");
        receiver.child.stderr?.destroy();
        sender.child.stderr?.destroy();
        // The tunnel keeps working without its log reader, also once the receiver has logged lines
        // (a stranger on its TCP port: "connection from ...", "closing connection ...").
        const stranger = connect({ host: "127.0.0.1", port: ports.tcp });
        stranger.on("error", () => {});
        stranger.resume(); // read its answer, so that its close is seen
        stranger.end("GET / HTTP/1.0\r\n\r\n");
        let strangerClosed = false;
        stranger.once("close", () => (strangerClosed = true));
        try {
          await eventually(() => strangerClosed, "the receiver closes the HTTP stranger");
        } finally {
          stranger.destroy();
        }
        assert.equal(await udpRequest(ports.udp, "after the reader left"), "after the reader left");
        // ...and both still stop on SIGTERM (the sender's goodbye log line is its first write into the broken pipe).
        assert.deepEqual(await stopWith(sender, "SIGTERM"), { code: 0, signal: null });
        assert.deepEqual(await stopWith(receiver, "SIGTERM"), { code: 0, signal: null });
      } finally {
        killAll();
        echo.close();
      }
    });
  }
});
