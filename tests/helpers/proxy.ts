/**
 * A fault-injecting TCP proxy for the tests, between sender and receiver, on 127.0.0.1:
 * - "trickle": re-sends every chunk one byte per write, yielding between bytes, so the far side
 *   reads frames in tiny pieces;
 * - "coalesce": holds bytes for a few milliseconds and forwards them as one large chunk;
 * - "delay": forwards each chunk `delayMs` (default 30) after it arrived, in order (a long path);
 * - cut(): resets every proxied connection (a crashed middlebox); cutOne(): only the oldest one still up;
 * - stall: stops forwarding without closing (a silent blackhole), until resumed.
 * Built on node:net so it is the same under every transport being tested.
 */
import { connect, createServer, type Server, type Socket } from "node:net";

export type ProxyMode = "passthrough" | "trickle" | "coalesce" | "delay";

export interface FaultProxy {
  port: number;
  mode: ProxyMode;
  stalled: boolean;
  /** Added latency per direction in "delay" mode (ms). */
  delayMs: number;
  /** Connections accepted so far. */
  accepted: number;
  cut(): void;
  /** Resets the oldest proxied connection still up (both of its sockets); false when there is none. */
  cutOne(): boolean;
  close(): Promise<void>;
}

export async function startProxy(
  targetPort: number,
  mode: ProxyMode = "passthrough",
  /** `localAddress`: the source address of the upstream connections (from= tests); `host`: the target's. */
  options: { delayMs?: number; localAddress?: string; host?: string } = {},
): Promise<FaultProxy> {
  const sockets = new Set<Socket>();
  const pairs: Array<[Socket, Socket]> = [];
  const proxy: FaultProxy = {
    port: 0,
    mode,
    stalled: false,
    delayMs: options.delayMs ?? 30,
    accepted: 0,
    cut() {
      for (const socket of sockets) socket.resetAndDestroy();
      sockets.clear();
    },
    cutOne() {
      const pair = pairs.find(([a, b]) => !a.destroyed && !b.destroyed);
      if (!pair) return false;
      for (const socket of pair) socket.resetAndDestroy();
      return true;
    },
    close() {
      proxy.cut();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };

  const pipe = (from: Socket, to: Socket) => {
    let held: Buffer[] = [];
    let timer: ReturnType<typeof setTimeout> | undefined;
    let trickling: Promise<void> = Promise.resolve();
    // "delay": chunks wait in arrival order; one timer at a time releases those that are due, so a
    // chunk never overtakes an earlier one whatever the timer implementation does with equal deadlines.
    // A close is delayed like the bytes before it (null marks it), so it cannot overtake them.
    const delayed: Array<{ due: number; chunk: Buffer | null }> = [];
    let releaseArmed = false;
    const releaseDue = () => {
      releaseArmed = false;
      while (delayed.length > 0 && delayed[0].due <= Date.now()) {
        const { chunk } = delayed.shift() as { chunk: Buffer | null };
        if (chunk === null) to.destroy();
        else if (!to.destroyed) to.write(chunk);
      }
      if (delayed.length > 0) {
        releaseArmed = true;
        setTimeout(releaseDue, Math.max(1, delayed[0].due - Date.now()));
      }
    };
    from.on("data", (chunk: Buffer) => {
      if (proxy.stalled) return; // dropped: the peer sees silence
      if (proxy.mode === "delay") {
        delayed.push({ due: Date.now() + proxy.delayMs, chunk });
        if (!releaseArmed) {
          releaseArmed = true;
          setTimeout(releaseDue, proxy.delayMs);
        }
      } else if (proxy.mode === "coalesce") {
        held.push(chunk);
        timer ??= setTimeout(() => {
          timer = undefined;
          const all = Buffer.concat(held);
          held = [];
          if (!to.destroyed) to.write(all);
        }, 5);
      } else if (proxy.mode === "trickle") {
        trickling = trickling.then(async () => {
          for (let i = 0; i < chunk.length && !to.destroyed; i++) {
            to.write(chunk.subarray(i, i + 1));
            if (i % 8 === 7) await new Promise((r) => setImmediate(r));
          }
        });
      } else {
        to.write(chunk);
      }
    });
    const closeTo = () => {
      if (delayed.length === 0) return to.destroy();
      delayed.push({ due: Date.now() + proxy.delayMs, chunk: null });
    };
    from.on("close", closeTo);
    from.on("error", closeTo);
  };

  const server: Server = createServer((client) => {
    proxy.accepted++;
    client.setNoDelay(true);
    const upstream = connect({
      host: options.host ?? "127.0.0.1",
      port: targetPort,
      localAddress: options.localAddress,
    });
    upstream.setNoDelay(true);
    sockets.add(client);
    sockets.add(upstream);
    pairs.push([client, upstream]);
    client.on("close", () => sockets.delete(client));
    upstream.on("close", () => sockets.delete(upstream));
    pipe(client, upstream);
    pipe(upstream, client);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  proxy.port = (server.address() as { port: number }).port;
  return proxy;
}
