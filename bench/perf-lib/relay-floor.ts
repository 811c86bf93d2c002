#!/usr/bin/env bun
/**
 * The floor of mcudpt's design on Bun, for latency comparisons: the same six hops (client → receiver
 * UDP → TCP → sender → target UDP, and back) with no protocol at all: one flow, 2-byte length
 * prefixes, no handshake, no timers, no flow table, TCP_NODELAY, one TCP write per datagram.
 * Whatever ping-pong latency this gets is what any UDP-over-one-TCP tunnel of this shape gets here.
 *
 *   bun bench/perf-lib/relay-floor.ts recv UDP_PORT TCP_PORT     (clients send to UDP_PORT)
 *   bun bench/perf-lib/relay-floor.ts send TARGET_PORT TCP_PORT  (forwards to 127.0.0.1:TARGET_PORT)
 *   sockperf pp -i 127.0.0.1 -p UDP_PORT -m 64 -t 3 --full-rtt
 */
const [role, first, second] = process.argv.slice(2);
const HOST = "127.0.0.1";

/** Splits a TCP byte stream into length-prefixed frames (frames may span chunks). */
function framer(onFrame: (frame: Uint8Array) => void): (chunk: Uint8Array) => void {
  let rest: Uint8Array | undefined;
  return (chunk) => {
    let buf = chunk;
    if (rest) {
      buf = new Uint8Array(rest.length + chunk.length);
      buf.set(rest);
      buf.set(chunk, rest.length);
      rest = undefined;
    }
    let at = 0;
    while (buf.length - at >= 2) {
      const n = (buf[at] << 8) | buf[at + 1];
      if (buf.length - at - 2 < n) break;
      onFrame(buf.subarray(at + 2, at + 2 + n));
      at += 2 + n;
    }
    if (at < buf.length) rest = buf.slice(at);
  };
}

function frame(data: Uint8Array): Uint8Array {
  const out = new Uint8Array(data.length + 2);
  out[0] = data.length >> 8;
  out[1] = data.length & 0xff;
  out.set(data, 2);
  return out;
}

if (role === "recv") {
  let tcp: import("bun").Socket | undefined;
  let clientPort = 0;
  let clientAddress = "";
  const udp = await Bun.udpSocket({
    hostname: HOST,
    port: Number(first),
    binaryType: "uint8array",
    socket: {
      data(_socket, data, port, address) {
        clientPort = port;
        clientAddress = address;
        tcp?.write(frame(data));
      },
    },
  });
  const fromSender = framer((payload) => udp.send(payload, clientPort, clientAddress));
  Bun.listen({
    hostname: HOST,
    port: Number(second),
    socket: {
      binaryType: "uint8array",
      open(socket) {
        socket.setNoDelay(true);
        tcp = socket;
      },
      data(_socket, data) {
        fromSender(data);
      },
    },
  });
} else if (role === "send") {
  let tcp: import("bun").Socket | undefined;
  const udp = await Bun.udpSocket({
    hostname: HOST,
    port: 0,
    binaryType: "uint8array",
    connect: { hostname: HOST, port: Number(first) },
    socket: {
      data(_socket, data) {
        tcp?.write(frame(data));
      },
    },
  });
  const fromReceiver = framer((payload) => udp.send(payload));
  tcp = await Bun.connect({
    hostname: HOST,
    port: Number(second),
    socket: {
      binaryType: "uint8array",
      open(socket) {
        socket.setNoDelay(true);
      },
      data(_socket, data) {
        fromReceiver(data);
      },
    },
  });
} else {
  console.error("usage: relay-floor.ts recv UDP_PORT TCP_PORT | send TARGET_PORT TCP_PORT");
  process.exit(2);
}
console.error("ready");
