/**
 * readUdpSocketStats / readUdpSocketStatsAsync (src/kernel-drops.ts) against real sockets: a burst
 * overflows a receive buffer on purpose and the kernel's drop counter must show it on that socket's
 * row. The burst is sent synchronously from this process, so the receiving socket cannot read
 * meanwhile (its event loop is this one): what does not fit in its buffer is dropped by the kernel.
 */
import { afterEach, describe, expect, it } from "bun:test";
import dgram from "node:dgram";
import { existsSync } from "node:fs";
import { formatHostPort } from "../src/address.js";
import { parseUdpTable, readUdpSocketStats, readUdpSocketStatsAsync } from "../src/kernel-drops.js";

const linux = existsSync("/proc/self/net/udp");
const BURST = 5_000;
const payload = new Uint8Array(100);

const closers: Array<() => void> = [];
afterEach(() => {
  for (const close of closers.splice(0)) close();
});

async function bunSocket(hostname = "127.0.0.1") {
  const socket = await Bun.udpSocket({ hostname, port: 0, socket: { data() {} } });
  closers.push(() => socket.close());
  return socket;
}

async function dgramSocket(type: "udp4" | "udp6" = "udp4", address = "127.0.0.1") {
  const socket = dgram.createSocket({ type, ipv6Only: false });
  socket.on("message", () => {});
  await new Promise<void>((resolve, reject) => {
    socket.once("error", reject);
    socket.bind(0, address, () => resolve());
  });
  closers.push(() => socket.close());
  return socket;
}

/** BURST datagrams to 127.0.0.1:port in one synchronous go (loopback delivers inside the call). */
async function burst(port: number, host = "127.0.0.1"): Promise<void> {
  const sender = await bunSocket();
  const batch: Array<Uint8Array | number | string> = [];
  for (let i = 0; i < BURST; i++) batch.push(payload, port, host);
  for (let from = 0; from < batch.length; ) {
    const sent = sender.sendMany(batch.slice(from) as never);
    from += Math.max(sent, 1) * 3;
  }
}

describe.skipIf(!linux)("kernel UDP drop counters (Linux /proc)", () => {
  it("shows the drops of an overflowed Bun.udpSocket on its own row, and none on an idle one", async () => {
    const victim = await bunSocket();
    const idle = await bunSocket();
    const before = readUdpSocketStats();
    const key = formatHostPort(victim.address.address, victim.port);
    expect(before.get(key)?.drops).toBe(0);
    await burst(victim.port);
    const after = readUdpSocketStats(); // before this test yields: nothing read the queue yet
    const row = after.get(key);
    expect(row).toBeDefined();
    expect(row?.drops).toBeGreaterThan(0);
    expect(row?.drops).toBeLessThan(BURST);
    expect(row?.rxQueue).toBeGreaterThan(0);
    expect(row).toMatchObject({ address: "127.0.0.1", port: victim.port, sockets: 1, remote: undefined });
    expect(after.get(formatHostPort(idle.address.address, idle.port))?.drops).toBe(0);
  });

  it("shows the drops of an overflowed node:dgram socket, also read asynchronously", async () => {
    const victim = await dgramSocket();
    const { address, port } = victim.address();
    await burst(port);
    const sync = readUdpSocketStats().get(formatHostPort(address, port));
    expect(sync?.drops).toBeGreaterThan(0);
    const later = (await readUdpSocketStatsAsync()).get(formatHostPort(address, port));
    // The socket may have read its queue meanwhile; drops only ever grow.
    expect(later?.drops).toBeGreaterThanOrEqual(sync?.drops ?? Number.NaN);
  });

  it("finds an IPv4 burst to a dual-stack socket bound on :: in the udp6 table", async () => {
    let victim: Awaited<ReturnType<typeof dgramSocket>>;
    try {
      victim = await dgramSocket("udp6", "::");
    } catch {
      return; // no IPv6 on this host
    }
    const { address, port } = victim.address();
    expect(address).toBe("::");
    await burst(port);
    const row = readUdpSocketStats().get(`[::]:${port}`);
    expect(row?.drops).toBeGreaterThan(0);
  });

  it("lists only this process's sockets, follows closes and descriptor reuse, sees connected peers", async () => {
    const sockets = [];
    for (let i = 0; i < 200; i++) sockets.push(await bunSocket());
    let stats = readUdpSocketStats();
    for (const s of sockets) expect(stats.has(formatHostPort(s.address.address, s.port))).toBe(true);
    // Close half, open as many again (their descriptors are reused): the cache must follow. A new
    // socket may get a closed one's port, so closed ones are recognised by inode.
    const gone = sockets.splice(0, 100);
    const goneInodes = new Set(gone.map((s) => stats.get(formatHostPort(s.address.address, s.port))?.inode));
    expect(goneInodes.size).toBe(100);
    for (const s of gone) s.close();
    for (let i = 0; i < 100; i++) sockets.push(await bunSocket());
    stats = readUdpSocketStats();
    for (const s of sockets) expect(stats.has(formatHostPort(s.address.address, s.port))).toBe(true);
    for (const row of stats.values()) expect(goneInodes.has(row.inode)).toBe(false);
    // A connected socket bound on the wildcard shows the source address the kernel chose.
    const peer = await bunSocket();
    const connected = await Bun.udpSocket({
      hostname: "0.0.0.0",
      port: 0,
      connect: { hostname: "127.0.0.1", port: peer.port },
    });
    closers.push(() => connected.close());
    const row = readUdpSocketStats().get(`127.0.0.1:${connected.port}`);
    expect(row?.remote).toBe(`127.0.0.1:${peer.port}`);
    // Another process's socket is not ours.
    const child = Bun.spawn(
      [
        "bun",
        "-e",
        "const s = await Bun.udpSocket({ hostname: '127.0.0.1', port: 0 }); console.log(s.port); await Bun.sleep(10000)",
      ],
      { stdout: "pipe" },
    );
    closers.push(() => child.kill());
    const reader = child.stdout.getReader();
    const childPort = Number(new TextDecoder().decode((await reader.read()).value).trim());
    expect(childPort).toBeGreaterThan(0);
    expect(readUdpSocketStats().has(`127.0.0.1:${childPort}`)).toBe(false);
  });
});

describe("parseUdpTable", () => {
  const header =
    "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n";
  it.skipIf(new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1)(
    "decodes addresses, queues and drops (little-endian host)",
    () => {
      const v4 =
        header +
        " 1234: 0100007F:1F90 00000000:0000 07 00000000:00000A00 00:00000000 00000000  1000        0 4242 2 0000000000000000 17\n" +
        " 1235: 00000000:0035 0100007F:04D2 01 00000100:00000000 00:00000000 00000000  1000        0 4343 2 0000000000000000 0\n";
      const rows = parseUdpTable(v4);
      expect(rows.get(4242)).toEqual({
        address: "127.0.0.1",
        port: 8080,
        remote: undefined,
        txQueue: 0,
        rxQueue: 2560,
        inode: 4242,
        drops: 17,
      });
      expect(rows.get(4343)).toMatchObject({ address: "0.0.0.0", port: 53, remote: "127.0.0.1:1234", txQueue: 256 });
      const v6 =
        header +
        "  1: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000  0 0 1 2 0 3\n" +
        "  2: 00000000000000000000000001000000:1F91 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000  0 0 2 2 0 0\n" +
        "  3: 0000000000000000FFFF00000100007F:1F92 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000  0 0 3 2 0 0\n" +
        "  4: 000080FE00000000FF0000000200005E:1F93 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000  0 0 4 2 0 0\n" +
        "  5: B80D0120000000000000000001000000:1F94 B80D0120010000000000000002000000:0035 01 00000000:00000000 00:00000000 00000000  0 0 5 2 0 0\n";
      const six = parseUdpTable(v6);
      expect([1, 2, 3, 4, 5].map((inode) => six.get(inode)?.address)).toEqual([
        "::",
        "::1",
        "::ffff:127.0.0.1",
        "fe80::ff:5e00:2",
        "2001:db8::1",
      ]);
      expect(six.get(1)?.drops).toBe(3);
      expect(six.get(5)?.remote).toBe("[2001:db8:0:1::2]:53");
    },
  );
});
