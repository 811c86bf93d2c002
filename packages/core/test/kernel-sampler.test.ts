/**
 * KernelSampler (src/kernel-sampler.ts) with an injected clock and reader: deltas per socket, first
 * sight, a new socket under an old address, owners changed while watched, no overlapping samples,
 * the interval's growth with sockets and with the read's cost, and the timer cleared on close.
 * bufferShortfall and the warning text too. No sockets, no real time.
 */
import { describe, expect, it } from "bun:test";
import type { Clock } from "../src/clock.js";
import type { UdpSocketStats } from "../src/kernel-drops.js";
import {
  bufferShortfall,
  KERNEL_SAMPLE_MAX_MS,
  KERNEL_SAMPLE_MS,
  KernelSampler,
  kernelDropsWarning,
  sizeText,
} from "../src/kernel-sampler.js";

class FakeClock implements Clock {
  time = 0;
  timers = new Map<number, { at: number; callback: () => void }>();
  private next = 1;
  now = () => this.time;
  setTimeout = (callback: () => void, ms: number) => {
    const id = this.next++;
    this.timers.set(id, { at: this.time + ms, callback });
    return id;
  };
  clearTimeout = (handle: unknown) => {
    this.timers.delete(handle as number);
  };
  /** Runs the timers due by `time + ms`, in order. */
  advance(ms: number): void {
    const until = this.time + ms;
    for (;;) {
      const due = [...this.timers.entries()].filter(([, t]) => t.at <= until).sort((a, b) => a[1].at - b[1].at)[0];
      if (!due) break;
      this.timers.delete(due[0]);
      this.time = due[1].at;
      due[1].callback();
    }
    this.time = until;
  }
  /** The delay of the one pending timer. */
  pending(): number | undefined {
    const [timer] = this.timers.values();
    return timer === undefined ? undefined : timer.at - this.time;
  }
}

const row = (address: string, port: number, drops: number, inode = port): UdpSocketStats => ({
  local: `${address}:${port}`,
  address,
  port,
  drops,
  rxQueue: 0,
  txQueue: 0,
  inode,
  sockets: 1,
});

function table(...rows: UdpSocketStats[]): Map<string, UdpSocketStats> {
  return new Map(rows.map((r) => [r.local, r]));
}

const socket = (port: number, receive?: number) => ({
  address: "127.0.0.1",
  port,
  bufferBytes: receive === undefined ? undefined : { receive, send: receive },
});

const flush = () => new Promise((resolve) => setTimeout(resolve, 0));

describe("KernelSampler", () => {
  it("reports each socket's new drops to its owner, counting from 0 at first sight", async () => {
    const clock = new FakeClock();
    let stats = table(row("127.0.0.1", 1000, 7), row("127.0.0.1", 2000, 0), row("127.0.0.1", 3000, 50));
    const reports: Array<[string, number]> = [];
    const sampler = new KernelSampler<string>({
      clock,
      read: async () => stats,
      report: (owner, count) => reports.push([owner, count]),
    });
    sampler.watch(socket(1000), "a");
    sampler.watch(socket(2000), "b"); // port 3000 is not ours to count
    await sampler.sample();
    expect(reports).toEqual([["a", 7]]);
    stats = table(row("127.0.0.1", 1000, 10), row("127.0.0.1", 2000, 4));
    await sampler.sample();
    expect(reports).toEqual([
      ["a", 7],
      ["a", 3],
      ["b", 4],
    ]);
    await sampler.sample(); // nothing new
    expect(reports.length).toBe(3);
  });

  it("re-baselines another socket under a watched address, follows owner changes, forgets unwatched sockets", async () => {
    const clock = new FakeClock();
    let stats = table(row("127.0.0.1", 1000, 5, 11));
    const reports: Array<[string, number]> = [];
    const sampler = new KernelSampler<string>({
      clock,
      read: async () => stats,
      report: (owner, count) => reports.push([owner, count]),
    });
    const s = socket(1000);
    sampler.watch(s, "flow");
    await sampler.sample();
    sampler.watch(s, "mapping"); // the flow closed, its socket lingers
    stats = table(row("127.0.0.1", 1000, 8, 11));
    await sampler.sample();
    expect(reports).toEqual([
      ["flow", 5],
      ["mapping", 3],
    ]);
    stats = table(row("127.0.0.1", 1000, 100, 12)); // another socket got the port
    await sampler.sample();
    expect(reports.length).toBe(2);
    stats = table(row("127.0.0.1", 1000, 101, 12));
    await sampler.sample();
    expect(reports[2]).toEqual(["mapping", 1]);
    sampler.unwatch(s);
    expect(sampler.watched).toBe(0);
    stats = table(row("127.0.0.1", 1000, 200, 12));
    await sampler.sample();
    expect(reports.length).toBe(3);
  });

  it("never runs two samples at once: an explicit one waits for the one in progress, then reads again", async () => {
    const clock = new FakeClock();
    let inFlight = 0;
    let most = 0;
    let reads = 0;
    const releases: Array<() => void> = [];
    const sampler = new KernelSampler<string>({
      clock,
      read: () => {
        reads++;
        inFlight++;
        most = Math.max(most, inFlight);
        return new Promise((resolve) =>
          releases.push(() => {
            inFlight--;
            resolve(table(row("127.0.0.1", 1000, reads)));
          }),
        );
      },
      report: () => {},
    });
    sampler.watch(socket(1000), "a");
    const first = sampler.sample();
    const second = sampler.sample();
    const third = sampler.sample();
    for (let i = 0; i < 3; i++) {
      await flush();
      expect(releases.length).toBe(i + 1);
      releases[i]();
    }
    await Promise.all([first, second, third]);
    expect(reads).toBe(3);
    expect(most).toBe(1);
    expect(sampler.samples).toBe(3);
  });

  it("samples on its timer every interval, arms the next only after a sample ends, and stops on close", async () => {
    const clock = new FakeClock();
    let reads = 0;
    let release: (() => void) | undefined;
    const sampler = new KernelSampler<string>({
      clock,
      read: () => {
        reads++;
        return new Promise((resolve) => {
          release = () => resolve(new Map());
        });
      },
      report: () => {},
    });
    sampler.watch(socket(1000), "a");
    sampler.start();
    expect(clock.pending()).toBe(KERNEL_SAMPLE_MS);
    clock.advance(KERNEL_SAMPLE_MS);
    await flush();
    expect(reads).toBe(1);
    expect(clock.timers.size).toBe(0); // nothing armed while the read is in progress
    clock.time += 40; // the read took 40 ms
    release?.();
    await flush();
    expect(clock.pending()).toBe(KERNEL_SAMPLE_MS);
    sampler.close();
    expect(clock.timers.size).toBe(0);
    clock.advance(10 * KERNEL_SAMPLE_MS);
    await flush();
    expect(reads).toBe(1);
  });

  it("reports nothing from a sample that ends after close, and skips reading with no sockets", async () => {
    const clock = new FakeClock();
    let reads = 0;
    let release: (() => void) | undefined;
    const reports: number[] = [];
    const sampler = new KernelSampler<string>({
      clock,
      read: () => {
        reads++;
        return new Promise((resolve) => {
          release = () => resolve(table(row("127.0.0.1", 1000, 9)));
        });
      },
      report: (_, count) => reports.push(count),
    });
    await sampler.sample();
    expect(reads).toBe(0);
    sampler.watch(socket(1000), "a");
    const pending = sampler.sample();
    await flush();
    sampler.close();
    release?.();
    await pending;
    expect(reports).toEqual([]);
  });

  it("samples less often above 2,000 sockets and when a read is slow, within the cap", async () => {
    const clock = new FakeClock();
    let readMs = 0;
    const sampler = new KernelSampler<number>({
      clock,
      read: async () => {
        clock.time += readMs;
        return new Map();
      },
      report: () => {},
    });
    for (let port = 1; port <= 2000; port++) sampler.watch(socket(port), port);
    expect(sampler.nextDelay()).toBe(KERNEL_SAMPLE_MS);
    for (let port = 2001; port <= 10_000; port++) sampler.watch(socket(port), port);
    expect(sampler.nextDelay()).toBe(KERNEL_SAMPLE_MS * 5);
    readMs = 175; // what a read costs at 10,000 sockets
    await sampler.sample();
    expect(sampler.nextDelay()).toBe(KERNEL_SAMPLE_MS * 5);
    readMs = 400;
    await sampler.sample();
    expect(sampler.nextDelay()).toBe(40_000);
    readMs = 10_000;
    await sampler.sample();
    expect(sampler.nextDelay()).toBe(KERNEL_SAMPLE_MAX_MS);
  });

  it("hands the sample's drops to `found`, largest first, with the worst socket's buffer", async () => {
    const clock = new FakeClock();
    const found: unknown[] = [];
    const sampler = new KernelSampler<string>({
      clock,
      read: async () => table(row("127.0.0.1", 1000, 3), row("127.0.0.1", 2000, 30)),
      report: () => {},
      found: (drops) => found.push(...drops),
    });
    sampler.watch(socket(1000, 1000), "small");
    sampler.watch(socket(2000, 4 * 1024 * 1024), "big");
    await sampler.sample();
    expect(found).toEqual([
      { owner: "big", local: "127.0.0.1:2000", count: 30, receiveBuffer: 4 * 1024 * 1024 },
      { owner: "small", local: "127.0.0.1:1000", count: 3, receiveBuffer: undefined },
    ]);
    const text = kernelDropsWarning(found as never, (owner) => `owner ${owner}`, "raise --udp-buffer");
    expect(text).toContain("30 datagrams at UDP socket 127.0.0.1:2000 (owner big");
    expect(text).toContain("and 3 datagrams at 1 other socket");
    expect(text).toContain("kernel-queue");
    expect(text).toEndWith("raise --udp-buffer");
  });
});

describe("bufferShortfall", () => {
  const linux = process.platform === "linux";
  it("is silent when the kernel granted the request (Linux reports twice the size), or cannot tell", () => {
    const requested = 2 * 1024 * 1024;
    expect(bufferShortfall(socket(1, linux ? 2 * requested : requested), requested, "x")).toBeUndefined();
    expect(bufferShortfall(socket(1), requested, "x")).toBeUndefined();
  });
  it("names the socket, what it got and the sysctl when capped", () => {
    const requested = 2 * 1024 * 1024;
    const text = bufferShortfall(socket(1, 425_984), requested, "UDP 0.0.0.0:51820");
    expect(text).toContain("UDP 0.0.0.0:51820");
    expect(text).toContain("2 MiB");
    if (linux) {
      expect(text).toContain("208 KiB");
      expect(text).toContain(`sysctl -w net.core.rmem_max=${requested}`);
    }
  });
  it("writes sizes plainly", () => {
    expect(sizeText(2 * 1024 * 1024)).toBe("2 MiB");
    expect(sizeText(256 * 1024)).toBe("256 KiB");
    expect(sizeText(1000)).toBe("1000 bytes");
  });
});
