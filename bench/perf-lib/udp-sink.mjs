// Counting UDP sink for node (bench/perf.ts): like `udp-tool.ts sink`, but with a 4 MB receive buffer
// (SO_RCVBUF), which Bun.udpSocket cannot set. Usage: node udp-sink.mjs PORT. Prints "ready", then one
// JSON line on SIGINT/SIGTERM: { count, bytes, seconds (first to last datagram), rate }.
import dgram from "node:dgram";

const port = Number(process.argv[2]);
const socket = dgram.createSocket({ type: "udp4", recvBufferSize: 4 * 1024 * 1024 });
let count = 0;
let bytes = 0;
let first = 0;
let last = 0;
socket.on("message", (data) => {
  const t = performance.now();
  if (count === 0) first = t;
  last = t;
  count++;
  bytes += data.length;
});
socket.on("error", () => {});
socket.bind(port, "127.0.0.1", () => process.stdout.write("ready\n"));
const report = () => {
  const seconds = (last - first) / 1000;
  process.stdout.write(`${JSON.stringify({ count, bytes, seconds, rate: seconds > 0 ? (count - 1) / seconds : 0 })}\n`);
  process.exit(0);
};
process.on("SIGINT", report);
process.on("SIGTERM", report);
