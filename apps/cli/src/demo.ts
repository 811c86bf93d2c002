/**
 * `mcudpt demo`: the whole tunnel on one machine with no set-up. A UDP echo target, a receiver and a
 * sender on 127.0.0.1, then a crowd of concurrent clients ping-ponging through the tunnel; prints what
 * each saw and exits non-zero if any client got a reply that was not its own.
 */
import { randomBytes } from "node:crypto";
import { startReceiver, startSender, stderrLogger, type Transport, type UdpSocket, waitFor } from "@mcudpt/core";
import { defineCommand } from "citty";
import { count, seconds } from "./options.js";
import { pickTransport, runtimeDescription, type TransportChoice } from "./runtime.js";

const LOOPBACK = "127.0.0.1";

interface ClientResult {
  sent: number;
  received: number;
  /** Own replies that arrived after their 1 s wait (counted as lost, not as foreign). */
  late: number;
  /** Replies carrying another client's bytes: must never happen. */
  foreign: number;
  rtts: number[];
}

export const demoCommand = defineCommand({
  meta: {
    name: "demo",
    description: "Run a UDP echo target, receiver, sender and many clients on loopback, and report",
  },
  args: {
    clients: { type: "string", description: "Concurrent clients (default 40)", valueHint: "N" },
    duration: { type: "string", description: "Seconds of traffic (default 3)", valueHint: "SECONDS" },
    transport: {
      type: "enum",
      options: ["auto", "bun", "node"],
      default: "auto",
      description: "Socket implementation",
    },
    verbose: { type: "boolean", alias: "v", description: "Show the tunnel's own log lines" },
  },
  async run({ args }) {
    const clients = count(args, "clients", 40, 2000);
    const durationMs = seconds(args, "duration", 3000);
    const transport = pickTransport((args.transport as TransportChoice) ?? "auto");
    const ok = await runDemo(transport, clients, durationMs, Boolean(args.verbose));
    process.exit(ok ? 0 : 1);
  },
});

export async function runDemo(
  transport: Transport,
  clientCount: number,
  durationMs: number,
  verbose: boolean,
): Promise<boolean> {
  const print = (line: string) => process.stdout.write(`${line}\n`);
  const level = verbose ? "debug" : "warn";
  print(`mcudpt demo on ${runtimeDescription()}, transport: ${transport.name}`);

  const echo: UdpSocket = await transport.bindUdp({
    host: LOOPBACK,
    port: 0,
    onDatagram: (data, address, port) => echo.send(data, port, address),
    onError: () => {},
  });
  const secret = randomBytes(16).toString("hex");
  const receiver = await startReceiver({
    transport,
    udp: { host: LOOPBACK, port: 0 },
    tcp: { host: LOOPBACK, port: 0 },
    // A short keepalive so that the report has a TCP round-trip figure.
    config: { secret, keepaliveMs: 250 },
    logger: stderrLogger({ name: "receiver", level, timestamps: false }),
  });
  const sender = await startSender({
    transport,
    target: { host: LOOPBACK, port: echo.port },
    tcp: { host: LOOPBACK, port: receiver.tcpPort },
    config: { secret, keepaliveMs: 250 },
    logger: stderrLogger({ name: "sender", level, timestamps: false }),
  });
  print(`  echo target   udp ${LOOPBACK}:${echo.port}`);
  print(`  receiver      udp ${LOOPBACK}:${receiver.udpPort}  tcp ${LOOPBACK}:${receiver.tcpPort}  (shared secret)`);
  print(`  sender        -> receiver tcp ${receiver.tcpPort}, -> target udp ${echo.port}`);
  await waitFor(() => receiver.machine.session.peerConnected && sender.machine.session.peerConnected, 5000);
  if (!receiver.machine.session.peerConnected) {
    print("  the sender did not connect within 5 s");
    await Promise.all([sender.close(), receiver.close()]);
    echo.close();
    return false;
  }

  print(`  ${clientCount} clients ping-ponging for ${durationMs / 1000} s ...`);
  const results = await Promise.all(
    Array.from({ length: clientCount }, (_, i) => runClient(transport, i, receiver.udpPort, durationMs)),
  );
  const peakFlows = receiver.machine.flows.size;
  const senderFlows = sender.machine.flows.size;

  const sent = sum(results.map((r) => r.sent));
  const received = sum(results.map((r) => r.received));
  const foreign = sum(results.map((r) => r.foreign));
  const rtts = results.flatMap((r) => r.rtts).sort((a, b) => a - b);
  const pct = (p: number) =>
    rtts.length ? rtts[Math.min(rtts.length - 1, Math.floor((p / 100) * rtts.length))] : Number.NaN;
  const fmt = (ms: number) => `${(ms * 1000).toFixed(0)} µs`;
  const everyClientServed = results.every((r) => r.received > 0);
  print("");
  print(`  datagrams     sent ${sent}, echoed back ${received}, lost ${sent - received}, someone else's ${foreign}`);
  print(`  flows         receiver ${peakFlows}, sender ${senderFlows} (one per client, each with its own UDP socket)`);
  print(`  round trip    p50 ${fmt(pct(50))}, p99 ${fmt(pct(99))}, max ${fmt(rtts[rtts.length - 1] ?? Number.NaN)}`);
  print(
    `  rtt (tcp)     ${receiver.machine.stats.rttMs === undefined ? "n/a" : fmt(receiver.machine.stats.rttMs)} keepalive`,
  );

  await Promise.all([sender.close(), receiver.close()]);
  echo.close();
  const ok = foreign === 0 && everyClientServed && received > 0;
  print(ok ? "  OK: every client got back exactly its own datagrams" : "  FAILED: see the figures above");
  return ok;
}

/** One client: sends a numbered datagram, waits for its echo (or 1 s), repeats until the deadline. */
async function runClient(transport: Transport, id: number, port: number, durationMs: number): Promise<ClientResult> {
  const result: ClientResult = { sent: 0, received: 0, late: 0, foreign: 0, rtts: [] };
  let waiting: ((data: Uint8Array | undefined) => void) | undefined;
  const socket = await transport.bindUdp({
    host: LOOPBACK,
    port: 0,
    onDatagram: (data) => waiting?.(data.slice()),
    onError: () => {},
  });
  const deadline = performance.now() + durationMs;
  for (let seq = 0; performance.now() < deadline; seq++) {
    const message = new TextEncoder().encode(`client ${id} seq ${seq}`);
    const start = performance.now();
    const reply = new Promise<Uint8Array | undefined>((resolve) => {
      const timer = setTimeout(() => resolve(undefined), 1000);
      waiting = (data) => {
        clearTimeout(timer);
        resolve(data);
      };
    });
    result.sent++;
    socket.send(message, port, LOOPBACK);
    const data = await reply;
    waiting = undefined;
    if (!data) continue;
    const text = new TextDecoder().decode(data);
    if (Buffer.from(data).equals(Buffer.from(message))) {
      result.received++;
      result.rtts.push(performance.now() - start);
    } else if (text.startsWith(`client ${id} seq `)) {
      result.late++;
    } else {
      result.foreign++;
    }
  }
  socket.close();
  return result;
}

function sum(values: number[]): number {
  return values.reduce((a, b) => a + b, 0);
}
