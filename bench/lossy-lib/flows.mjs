// Concurrent ping-pong flows for bench/lossy.ts (plain Node/Bun, node:dgram only):
//   node flows.mjs HOST PORT FLOWS RATE_PER_FLOW SECONDS
// Each flow is its own UDP socket (own source port: one tunnel flow each) sending a 64-byte datagram
// RATE times a second; the echo target returns it. Prints one JSON line: round trips, lost, the share
// over 50 ms, p50/p99/p99.9 in ms. Bounded by SECONDS (plus 1 s for the last replies).
import dgram from "node:dgram";

const [host, portText, flowsText, rateText, secondsText] = process.argv.slice(2);
const port = Number(portText);
const flows = Number(flowsText);
const rate = Number(rateText);
const seconds = Number(secondsText);
const rtts = [];
let sent = 0;
let duplicates = 0;
const sockets = [];
const pending = [];

for (let f = 0; f < flows; f++) {
  const socket = dgram.createSocket("udp4");
  const outstanding = new Map();
  pending.push(outstanding);
  socket.on("message", (msg) => {
    if (msg.length < 12) return;
    const seq = msg.readUInt32BE(0);
    const at = outstanding.get(seq);
    if (at === undefined) {
      duplicates++;
      return;
    }
    outstanding.delete(seq);
    rtts.push(performance.now() - at);
  });
  socket.on("error", () => {});
  await new Promise((resolve) => socket.bind(0, "127.0.0.1", resolve));
  sockets.push(socket);
}

const start = performance.now();
const interval = 1000 / rate;
let seq = 0;
await new Promise((resolve) => {
  // Spread the flows over the interval so they do not all fire in the same millisecond.
  let tick = 0;
  const step = interval / flows;
  const timer = setInterval(() => {
    const now = performance.now();
    if (now - start >= seconds * 1000) {
      clearInterval(timer);
      resolve();
      return;
    }
    // Catch up to where the schedule says we should be.
    const due = Math.floor((now - start) / step);
    while (tick <= due) {
      const f = tick % flows;
      const s = seq++;
      // A fresh buffer per datagram: node:dgram reads it after send() returns.
      const payload = Buffer.alloc(64, 0x61);
      payload.writeUInt32BE(s, 0);
      pending[f].set(s, performance.now());
      sockets[f].send(payload, port, host);
      sent++;
      tick++;
    }
  }, 1);
});
await new Promise((r) => setTimeout(r, 1000));
for (const socket of sockets) socket.close();
rtts.sort((a, b) => a - b);
const pct = (p) => (rtts.length ? rtts[Math.min(rtts.length - 1, Math.floor((p / 100) * rtts.length))] : null);
const over50 = rtts.filter((r) => r > 50).length;
let lost = 0;
for (const outstanding of pending) lost += outstanding.size;
process.stdout.write(
  `${JSON.stringify({
    sent,
    roundTrips: rtts.length,
    lost,
    duplicates,
    over50Pct: sent ? ((over50 + lost) / sent) * 100 : null,
    p50Ms: pct(50),
    p99Ms: pct(99),
    p999Ms: pct(99.9),
  })}\n`,
);
process.exit(0);
