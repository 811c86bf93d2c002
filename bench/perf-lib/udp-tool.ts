/**
 * Small UDP tools for bench/perf.ts, run as separate Bun processes (so they never share an event loop
 * with the code under test):
 *
 *   bun udp-tool.ts echo  PORT                         echo every datagram back to its source
 *   bun udp-tool.ts blast HOST PORT SIZE SECONDS       send SIZE-byte datagrams as fast as possible
 *   bun udp-tool.ts flows HOST PORT N WINDOW SECONDS   N source ports, one echoed datagram each
 *
 * Every tool prints "ready" on stdout once bound (echo) or one JSON line with its result (blast,
 * flows). The counting sink is udp-sink.mjs (Node: it needs a larger SO_RCVBUF than Bun can set).
 * Only 127.0.0.1 is ever used; every tool is bounded in time by its caller (and flows/blast by their
 * own deadline).
 */

const [mode, ...args] = process.argv.slice(2);

function out(line: string): void {
  process.stdout.write(`${line}\n`);
}

async function echo(port: number): Promise<void> {
  const socket = await Bun.udpSocket({
    hostname: "127.0.0.1",
    port,
    binaryType: "uint8array",
    socket: {
      data(s, data, rport, raddr) {
        s.send(data, rport, raddr);
      },
      error() {},
    },
  });
  const stop = () => {
    socket.close();
    process.exit(0);
  };
  process.on("SIGINT", stop);
  process.on("SIGTERM", stop);
  out("ready");
}

async function blast(host: string, port: number, size: number, seconds: number): Promise<void> {
  let wake: (() => void) | undefined;
  const socket = await Bun.udpSocket({
    hostname: "127.0.0.1",
    port: 0,
    binaryType: "uint8array",
    connect: { hostname: host, port },
    socket: {
      data() {},
      drain() {
        wake?.();
      },
      error() {},
    },
  });
  const payload = new Uint8Array(size).fill(0x5a);
  let sent = 0;
  let refused = 0;
  const start = performance.now();
  const deadline = start + seconds * 1000;
  while (performance.now() < deadline) {
    for (let i = 0; i < 32; i++) {
      let ok = false;
      try {
        ok = socket.send(payload);
      } catch {
        ok = false;
      }
      if (ok) sent++;
      else {
        refused++;
        // Kernel send buffer full: wait for drain (or 5 ms), then carry on.
        await new Promise<void>((resolve) => {
          wake = resolve;
          setTimeout(resolve, 5);
        });
        wake = undefined;
        break;
      }
    }
  }
  const elapsed = (performance.now() - start) / 1000;
  socket.close();
  out(JSON.stringify({ sent, refused, seconds: elapsed, rate: sent / elapsed }));
  process.exit(0);
}

/**
 * Opens N sockets (N distinct source ports = N flows), sends one datagram from each and waits for its
 * echo. At most WINDOW are outstanding at once (a burst of 10,000 would overflow the receiver's socket
 * buffer and only measure drops); an unanswered datagram is re-sent after 1 s. All sockets stay open
 * until the end so that no source port is reused for a second flow.
 */
async function flows(host: string, port: number, n: number, window: number, seconds: number): Promise<void> {
  const start = performance.now();
  const deadline = start + seconds * 1000;
  const sockets: Array<import("bun").udp.ConnectedSocket<"uint8array">> = [];
  const sentAt = new Float64Array(n);
  const done = new Uint8Array(n);
  let answered = 0;
  let outstanding = 0;
  let retries = 0;
  let next = 0;
  let latencySum = 0;
  let lastScan = 0;
  let wake: (() => void) | undefined;

  const payloadFor = (i: number) => {
    const p = new Uint8Array(32);
    new DataView(p.buffer).setUint32(0, i);
    return p;
  };

  const open = async (i: number) => {
    const socket = await Bun.udpSocket({
      hostname: "127.0.0.1",
      port: 0,
      binaryType: "uint8array",
      connect: { hostname: host, port },
      socket: {
        data(_s, data) {
          if (data.length < 4) return;
          const id = new DataView(data.buffer, data.byteOffset, 4).getUint32(0);
          if (id !== i || done[i]) return;
          done[i] = 1;
          answered++;
          outstanding--;
          latencySum += performance.now() - sentAt[i];
          wake?.();
        },
        error() {},
      },
    });
    sockets[i] = socket;
    sentAt[i] = performance.now();
    outstanding++;
    try {
      socket.send(payloadFor(i));
    } catch {}
  };

  while (answered < n && performance.now() < deadline) {
    while (next < n && outstanding < window) await open(next++);
    // Re-send what has waited more than a second (scanned at most every 200 ms).
    const now = performance.now();
    if (now - lastScan > 200) lastScan = now;
    else if (answered < n) {
      await new Promise<void>((resolve) => {
        wake = resolve;
        setTimeout(resolve, 20);
      });
      wake = undefined;
      continue;
    }
    for (let i = 0; i < next; i++) {
      if (!done[i] && now - sentAt[i] > 1000) {
        sentAt[i] = now;
        retries++;
        try {
          sockets[i].send(payloadFor(i));
        } catch {}
      }
    }
    if (answered >= n) break;
    await new Promise<void>((resolve) => {
      wake = resolve;
      setTimeout(resolve, 20);
    });
    wake = undefined;
  }
  const elapsed = (performance.now() - start) / 1000;
  out(
    JSON.stringify({
      n,
      answered,
      retries,
      seconds: elapsed,
      rate: answered / elapsed,
      avgRttMs: answered ? latencySum / answered : undefined,
    }),
  );
  for (const s of sockets) s?.close();
  process.exit(0);
}

const num = (s: string | undefined) => {
  const v = Number(s);
  if (!Number.isFinite(v)) throw new Error(`bad number ${s}`);
  return v;
};

switch (mode) {
  case "echo":
    await echo(num(args[0]));
    break;
  case "blast":
    await blast(args[0], num(args[1]), num(args[2]), num(args[3]));
    break;
  case "flows":
    await flows(args[0], num(args[1]), num(args[2]), num(args[3]), num(args[4]));
    break;
  default:
    process.stderr.write("usage: udp-tool.ts echo|blast|flows ...\n");
    process.exit(2);
}

export {};
