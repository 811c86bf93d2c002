/**
 * Counts what the kernel drops at our UDP sockets: every so often (never per datagram) reads the
 * kernel's per-socket drop counters (kernel-drops.ts) for the sockets it watches and reports each
 * socket's increase since the last sample to its owner — the receiver's public port of a mapping, the
 * sender's socket of a flow — as `droppedOutside("kernel-queue", …)`. One unit for both roles; the
 * clock and the reader are injected so its timing and arithmetic are unit-tested without sockets.
 *
 * - Samples never overlap: one runs at a time, the next timer is armed when it ends.
 * - Interval: 5 s; longer with many sockets, because a read of /proc/net/udp* costs quadratic time in
 *   the namespace's UDP sockets (~175 ms at 10,000): above 2,000 watched sockets it grows in
 *   proportion, and it is always at least 100 × the last read's duration (≤ 1 % of the time spent
 *   reading), at most 2 minutes.
 * - A socket is known by its local address (formatHostPort, the reader's key) and by the inode it had
 *   at the first sample: its counter starts at 0 when the socket is created, so everything the first
 *   sample sees is new. A row under the same key with another inode is another socket: re-baselined.
 * - What cannot be seen: without /proc (macOS, Windows, a sandbox), nothing (the reader returns no
 *   rows; kernelDropCountersAvailable() says so up front). Drops at a socket in the last interval
 *   before it is closed (a flow socket's linger ends; shutdown) are not read.
 */
import { formatHostPort } from "./address.js";
import type { Clock } from "./clock.js";
import type { UdpSocketStats } from "./kernel-drops.js";
import type { UdpSocket } from "./transport.js";

/** The default interval between two samples. */
export const KERNEL_SAMPLE_MS = 5_000;
/** Above this many watched sockets the interval grows with their number. */
export const KERNEL_SAMPLE_SOCKETS = 2_000;
/** The longest interval. */
export const KERNEL_SAMPLE_MAX_MS = 120_000;
/** The interval is at least this many times the last read's duration. */
const COST_FACTOR = 100;

export type SocketStatsReader = () => Promise<Map<string, UdpSocketStats>>;

/** The socket a sample watches: its local address, and its buffer sizes for the warning. */
export type WatchedSocket = Pick<UdpSocket, "address" | "port" | "bufferBytes">;

/** One socket's new drops in one sample. */
export interface KernelDrops<W> {
  owner: W;
  /** The socket's local address (formatHostPort). */
  local: string;
  count: number;
  /** The socket's receive buffer as the kernel reports it, when known. */
  receiveBuffer?: number;
}

export interface KernelSamplerOptions<W> {
  clock: Clock;
  /** Normally readUdpSocketStatsAsync. */
  read: SocketStatsReader;
  /** `count` new drops at a socket of `owner` (called once per socket per sample, count > 0). */
  report(owner: W, count: number): void;
  /** After a sample that found drops: all of them, largest first (for one warning line). */
  found?(drops: KernelDrops<W>[]): void;
  /** Base interval (default KERNEL_SAMPLE_MS). */
  intervalMs?: number;
}

interface Entry<W> {
  socket: WatchedSocket;
  owner: W;
  /** Unknown until the first sample that saw the socket. */
  inode: number | undefined;
  /** The counter as last read. */
  drops: number;
}

export class KernelSampler<W> {
  private readonly entries = new Map<string, Entry<W>>();
  private timer: unknown;
  private running: Promise<void> | undefined;
  private closed = false;
  private started = false;
  /** Duration of the last read (ms). */
  private lastReadMs = 0;
  /** Samples that ran (for tests and diagnostics). */
  samples = 0;

  constructor(private readonly options: KernelSamplerOptions<W>) {}

  get watched(): number {
    return this.entries.size;
  }

  /** Starts counting `socket`'s drops for `owner` (also to change the owner of a watched socket). */
  watch(socket: WatchedSocket, owner: W): void {
    const key = formatHostPort(socket.address, socket.port);
    const entry = this.entries.get(key);
    if (entry && entry.socket === socket) entry.owner = owner;
    else this.entries.set(key, { socket, owner, inode: undefined, drops: 0 });
  }

  /** Stops watching `socket` (before or after it is closed). */
  unwatch(socket: WatchedSocket): void {
    const key = formatHostPort(socket.address, socket.port);
    if (this.entries.get(key)?.socket === socket) this.entries.delete(key);
  }

  /** Arms the timer (samples every interval until close()). */
  start(): void {
    if (this.closed || this.started) return;
    this.started = true;
    this.arm();
  }

  /**
   * Samples now: waits for a sample in progress, then runs one (so drops that happened before this
   * call are counted when it resolves). Never rejects.
   */
  sample(): Promise<void> {
    const previous = this.running;
    const next = (previous ?? Promise.resolve()).then(() => this.sampleOnce());
    this.running = next;
    void next.finally(() => {
      if (this.running === next) this.running = undefined;
    });
    return next;
  }

  /** Stops the timer; a sample in progress reports nothing more. */
  close(): void {
    this.closed = true;
    if (this.timer !== undefined) this.options.clock.clearTimeout(this.timer);
    this.timer = undefined;
    this.entries.clear();
  }

  /** How long until the next sample, from the watched sockets and the last read's cost. */
  nextDelay(): number {
    const base = this.options.intervalMs ?? KERNEL_SAMPLE_MS;
    const n = this.entries.size;
    const bySockets = n > KERNEL_SAMPLE_SOCKETS ? (base * n) / KERNEL_SAMPLE_SOCKETS : base;
    return Math.min(KERNEL_SAMPLE_MAX_MS, Math.max(base, bySockets, this.lastReadMs * COST_FACTOR));
  }

  private arm(): void {
    if (this.closed) return;
    const { clock } = this.options;
    this.timer = clock.setTimeout(() => {
      this.timer = undefined;
      void this.sample().then(() => this.arm());
    }, this.nextDelay());
    // A sampler alone must not keep the process running (its sockets do that).
    (this.timer as { unref?: () => void } | undefined)?.unref?.();
  }

  private async sampleOnce(): Promise<void> {
    if (this.closed || this.entries.size === 0) return;
    const { clock } = this.options;
    const begun = clock.now();
    let stats: Map<string, UdpSocketStats>;
    try {
      stats = await this.options.read();
    } catch {
      return; // the real reader never rejects; an injected one might
    }
    this.lastReadMs = Math.max(0, clock.now() - begun);
    this.samples++;
    if (this.closed) return;
    const found: KernelDrops<W>[] = [];
    for (const [key, entry] of this.entries) {
      const row = stats.get(key);
      if (row === undefined) continue; // closed meanwhile, or not visible here
      if (entry.inode !== undefined && entry.inode !== row.inode) {
        // Another socket under the same address: start from its current count.
        entry.inode = row.inode;
        entry.drops = row.drops;
        continue;
      }
      entry.inode = row.inode;
      const count = row.drops - entry.drops;
      entry.drops = row.drops;
      if (count <= 0) continue;
      this.options.report(entry.owner, count);
      found.push({ owner: entry.owner, local: key, count, receiveBuffer: undefined });
    }
    if (found.length === 0 || !this.options.found) return;
    found.sort((a, b) => b.count - a.count);
    // Read only for the warning (a getsockopt): the worst socket's buffer.
    const worst = this.entries.get(found[0].local);
    found[0].receiveBuffer = worst?.socket.bufferBytes?.receive;
    this.options.found(found);
  }
}

/** Linux reports twice the size set (half is the kernel's bookkeeping); elsewhere the size set. */
export const REPORTED_FACTOR = process.platform === "linux" ? 2 : 1;

/**
 * The warning to log when `socket`'s receive buffer is smaller than `requested` bytes (the kernel
 * capped the request at net.core.rmem_max, or the runtime cannot set it); undefined when it got it or
 * it cannot tell. `what` names the socket in the message.
 */
export function bufferShortfall(socket: WatchedSocket, requested: number, what: string): string | undefined {
  const got = socket.bufferBytes?.receive;
  if (got === undefined || got >= requested * REPORTED_FACTOR) return undefined;
  const usable = Math.floor(got / REPORTED_FACTOR);
  const fix =
    process.platform === "linux"
      ? `the kernel caps it at net.core.rmem_max: sysctl -w net.core.rmem_max=${requested} (and in /etc/sysctl.d to keep it)`
      : "the system caps it (on BSD and macOS: kern.ipc.maxsockbuf)";
  return `${what}: asked the kernel for a ${sizeText(requested)} UDP receive buffer, got ${sizeText(usable)}; bursts beyond it are dropped by the kernel (counted as kernel-queue); ${fix}`;
}

/** One warning line for a sample's drops (see KernelSamplerOptions.found). */
export function kernelDropsWarning<W>(drops: KernelDrops<W>[], describe: (owner: W) => string, advice: string): string {
  const [worst, ...others] = drops;
  const plural = (n: number, word: string) => `${n} ${word}${n === 1 ? "" : "s"}`;
  const buffer =
    worst.receiveBuffer === undefined
      ? ""
      : `, receive buffer ${sizeText(Math.floor(worst.receiveBuffer / REPORTED_FACTOR))}`;
  const more =
    others.length === 0
      ? ""
      : ` (and ${plural(
          others.reduce((sum, d) => sum + d.count, 0),
          "datagram",
        )} at ${plural(others.length, "other socket")})`;
  return (
    `the kernel dropped ${plural(worst.count, "datagram")} at UDP socket ${worst.local} (${describe(worst.owner)}${buffer})${more}: ` +
    `its receive queue was full while mcudpt was busy (counted as drops kernel-queue); ${advice}`
  );
}

/** 2097152 → "2 MiB", 262144 → "256 KiB", else bytes. */
export function sizeText(bytes: number): string {
  if (bytes >= 1024 ** 3 && bytes % 1024 ** 3 === 0) return `${bytes / 1024 ** 3} GiB`;
  if (bytes >= 1024 * 1024 && bytes % (1024 * 1024) === 0) return `${bytes / (1024 * 1024)} MiB`;
  if (bytes >= 1024 && bytes % 1024 === 0) return `${bytes / 1024} KiB`;
  return `${bytes} bytes`;
}
