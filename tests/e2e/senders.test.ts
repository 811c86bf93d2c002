/**
 * Several senders on one receiver, the built CLI as processes (PROTOCOL.md §18, README "Several sites
 * on one public host"): two senders with their own keys authorized for the same mapping, the first
 * serving and the second standby; the active sender process is SIGKILLed (or SIGSTOPped: a hung
 * host) while a client sends a steady stream, and the standby takes over. The interruption (longest
 * gap between replies) and the datagrams lost are measured and printed. The receiver's metrics show who serves, by key fingerprint.
 * Each runtime runs both cases. And the operator prompt: a yes for a sender asking for some mappings
 * is remembered for those in known_senders; an unknown key while a sender is connected is refused
 * without a question (node:test + node:assert; loopback only).
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createSocket } from "node:dgram";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { generateKeyPair, writeKeyPair } from "@mcudpt/core";
import {
  CLI,
  type CliProcess,
  eventually,
  freePort,
  has,
  killAll,
  RUNTIMES,
  type Runtime,
  sleep,
  startCli,
  startEcho,
  stopWith,
} from "../helpers/cli-process.js";

const available = RUNTIMES.filter(has);
const dirs: string[] = [];
after(() => {
  killAll();
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

/** A key pair as `mcudpt keygen` writes it. */
function makeKey(dir: string, name: string) {
  const pair = generateKeyPair(name);
  const path = join(dir, name);
  writeKeyPair(path, pair);
  return { path, line: pair.publicKeyLine, fingerprint: pair.fingerprint };
}

/**
 * A client sending datagram `seq` every `intervalMs` to `port` and recording when each reply came
 * back: the replies' gaps and the datagrams never answered are the interruption.
 */
async function steadyClient(port: number, intervalMs: number) {
  const socket = createSocket("udp4");
  await new Promise<void>((resolve) => socket.bind(0, "127.0.0.1", resolve));
  const sentAt = new Map<number, number>();
  const answeredAt = new Map<number, number>();
  socket.on("message", (data) => {
    const seq = Number(data.toString());
    if (!answeredAt.has(seq)) answeredAt.set(seq, performance.now());
  });
  let seq = 0;
  const timer = setInterval(() => {
    sentAt.set(seq, performance.now());
    socket.send(String(seq++), port, "127.0.0.1");
  }, intervalMs);
  return {
    answered: () => answeredAt.size,
    /** Stops sending, waits for stragglers, and sums up what came back around `from`. */
    async finish(from: number) {
      clearInterval(timer);
      await sleep(500);
      socket.close();
      const replies = [...answeredAt.values()].sort((a, b) => a - b);
      let gap = 0;
      for (let i = 1; i < replies.length; i++) {
        if (replies[i] >= from) gap = Math.max(gap, replies[i] - replies[i - 1]);
      }
      const lost = [...sentAt.keys()].filter((n) => !answeredAt.has(n)).length;
      return { sent: sentAt.size, answered: answeredAt.size, lost, gapMs: Math.round(gap) };
    },
  };
}

async function metricsText(port: number): Promise<string> {
  const response = await fetch(`http://127.0.0.1:${port}/metrics`);
  return response.text();
}

describe("several senders, the CLI as processes", () => {
  // SIGKILL: the kernel closes the dead process's connection, the receiver knows at once. SIGSTOP: a
  // host that hangs (no FIN): one keepalive detection (3 × --keepalive 1); after SIGCONT the old
  // sender comes back, resumes its session and waits as standby (no flapping).
  const cases = (available as Runtime[]).flatMap((r) =>
    (["SIGKILL", "SIGSTOP"] as const).map((sig) => [r, sig] as const),
  );
  for (const [runtime, signal] of cases) {
    it(`${runtime}: a standby sender takes over when the active one gets ${signal}; interruption measured`, {
      timeout: 60_000,
    }, async () => {
      const dir = mkdtempSync(join(tmpdir(), "mcudpt-e2e-senders-"));
      dirs.push(dir);
      const a = makeKey(dir, "site-a");
      const b = makeKey(dir, "site-b");
      const authorized = join(dir, "authorized_keys");
      writeFileSync(authorized, `mappings="dns" ${a.line}\nmappings="dns" ${b.line}\n`);
      const echo = await startEcho();
      const [udp, tcp, metrics] = [await freePort("udp"), await freePort("tcp"), await freePort("tcp")];
      const receiver = startCli(runtime, [
        "receiver",
        ...["--udp", `dns=127.0.0.1:${udp}`, "--tcp", `127.0.0.1:${tcp}`],
        ...["--authorized-keys", authorized, "--keepalive", "1", "--metrics", String(metrics)],
      ]);
      const sender = (key: { path: string }): CliProcess =>
        startCli(runtime, [
          "sender",
          ...["--udp", `dns=127.0.0.1:${echo.address().port}`, "--tcp", `127.0.0.1:${tcp}`],
          ...["--key", key.path, "--keepalive", "1"],
        ]);
      try {
        await eventually(
          () => receiver.stderr().includes("receiver listening"),
          () => receiver.stderr(),
        );
        const active = sender(a);
        await eventually(
          () => active.stderr().includes("mapping dns: serving"),
          () => active.stderr(),
        );
        const standby = sender(b);
        await eventually(
          () => standby.stderr().includes("mapping dns: standby"),
          () => standby.stderr(),
        );
        const before = await metricsText(metrics);
        assert.match(
          before,
          new RegExp(`mcudpt_sender_serving\\{sender="${escape(a.fingerprint)}",mapping="dns"\\} 1`),
        );
        assert.match(
          before,
          new RegExp(`mcudpt_sender_serving\\{sender="${escape(b.fingerprint)}",mapping="dns"\\} 0`),
        );

        const client = await steadyClient(udp, 5);
        await eventually(() => client.answered() >= 100, "a steady stream through the active sender");
        const killedAt = performance.now();
        active.child.kill(signal);
        await eventually(
          () => standby.stderr().includes("mapping dns: serving"),
          () => receiver.stderr(),
        );
        const answeredAtTakeover = client.answered();
        await eventually(() => client.answered() >= answeredAtTakeover + 100, "the stream through the standby");
        const result = await client.finish(killedAt);
        console.log(
          `[${runtime}] takeover after ${signal}: longest gap ${result.gapMs} ms, ${result.lost} of ${result.sent} datagrams lost (one every 5 ms)`,
        );
        // Bounded by one keepalive detection (3 s) plus slack for a busy machine; a killed process's
        // connection is closed by its kernel, so the receiver knows at once.
        assert.ok(result.gapMs < (signal === "SIGKILL" ? 3000 : 6000), `gap ${result.gapMs} ms`);
        // What is lost is what was sent during the gap (and what the dead sender held), nothing after.
        assert.ok(result.lost <= result.gapMs / 5 + 20, JSON.stringify(result));
        assert.match(receiver.stderr(), /mapping dns: sender \S+ takes over from \S+ \(1 flow moved\)/);
        const afterKill = await metricsText(metrics);
        assert.match(
          afterKill,
          new RegExp(`mcudpt_sender_serving\\{sender="${escape(b.fingerprint)}",mapping="dns"\\} 1`),
        );
        if (signal === "SIGKILL") {
          assert.match(afterKill, new RegExp(`mcudpt_sender_connected\\{sender="${escape(a.fingerprint)}"\\} 0`));
        } else {
          active.child.kill("SIGCONT");
          await eventually(
            () => active.stderr().includes("mapping dns: standby"),
            () => active.stderr(),
          );
          const back = await metricsText(metrics);
          assert.match(
            back,
            new RegExp(`mcudpt_sender_serving\\{sender="${escape(a.fingerprint)}",mapping="dns"\\} 0`),
          );
          assert.match(
            back,
            new RegExp(`mcudpt_sender_serving\\{sender="${escape(b.fingerprint)}",mapping="dns"\\} 1`),
          );
          await stopWith(active, "SIGTERM");
        }
        await stopWith(standby, "SIGTERM");
      } finally {
        echo.close();
        await stopWith(receiver, "SIGTERM");
      }
    });
  }
});

function escape(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&");
}

describe("the operator prompt with several mappings, the CLI as processes", () => {
  for (const runtime of available as Runtime[]) {
    it(`${runtime}: a yes for a sender asking for some mappings is remembered for those; an unknown key meanwhile is refused unasked`, {
      timeout: 60_000,
    }, async () => {
      const dir = mkdtempSync(join(tmpdir(), "mcudpt-e2e-senders-"));
      dirs.push(dir);
      const first = makeKey(dir, "first");
      const second = makeKey(dir, "second");
      const echo = await startEcho();
      const [dns, ntp, tcp] = [await freePort("udp"), await freePort("udp"), await freePort("tcp")];
      // stdin kept open: the operator answers there; the question goes to stdout.
      const receiver = spawn(
        runtime,
        [
          CLI,
          "receiver",
          "--udp",
          `dns=127.0.0.1:${dns}`,
          "--udp",
          `ntp=127.0.0.1:${ntp}`,
          "--tcp",
          `127.0.0.1:${tcp}`,
        ],
        {
          stdio: ["pipe", "pipe", "pipe"],
          env: { ...process.env, MCUDPT_SECRET: "", MCUDPT_CONFIG_DIR: dir },
        },
      );
      let stdout = "";
      let stderr = "";
      receiver.stdout?.on("data", (d) => (stdout += d));
      receiver.stderr?.on("data", (d) => (stderr += d));
      receiver.stdin?.on("error", () => {});
      const sender = (key: { path: string }, mapping: string): CliProcess =>
        startCli(runtime, [
          "sender",
          ...["--udp", `${mapping}=127.0.0.1:${echo.address().port}`, "--tcp", `127.0.0.1:${tcp}`, "--key", key.path],
        ]);
      try {
        await eventually(
          () => stderr.includes("receiver listening"),
          () => stderr,
        );
        const asking = sender(first, "dns");
        await eventually(
          () => stdout.includes("Accept? [yes/no]"),
          () => `the prompt\n${stderr}`,
        );
        assert.match(
          stdout,
          new RegExp(`key ${escape(first.fingerprint)}, for mappings dns\\. Accept\\? \\[yes/no\\]`),
        );
        receiver.stdin?.write("yes\n");
        await eventually(
          () => asking.stderr().includes("mapping dns: serving"),
          () => asking.stderr(),
        );
        await eventually(
          () => stderr.includes("remembered for mappings dns"),
          () => stderr,
        );
        const line = readFileSync(join(dir, "known_senders"), "utf8").trim();
        assert.match(line, new RegExp(`^mappings="dns" ${escape(first.line.split(" ").slice(0, 2).join(" "))} `));

        const stranger = sender(second, "ntp");
        await eventually(
          () => stderr.includes("only one verification is required"),
          () => stderr,
        );
        assert.equal(stdout.split("Accept? [yes/no]").length - 1, 1, `one question in all: ${stdout}`);
        assert.ok(!stranger.stderr().includes("accepted by receiver"), stranger.stderr());
        await stopWith(stranger, "SIGTERM").catch(() => undefined);
        await stopWith(asking, "SIGTERM");
      } finally {
        echo.close();
        receiver.kill("SIGTERM");
        await new Promise((resolve) => receiver.once("exit", resolve));
      }
    });
  }
});
