#!/usr/bin/env bun
/**
 * Soak / flood of the REAL CLI processes on 127.0.0.1, bounded in time, stopping by itself.
 *
 *   bun bench/soak.ts [--minutes N] [--quick] [--runtime node|bun|both] [--cli PATH]
 *                     [--clients N] [--flood-sockets N] [--flood-datagrams N]
 *
 * Per runtime (`--minutes` is the wall time of ONE runtime's run, default 2; `--quick` is ~30 s;
 * `--runtime both` runs node then bun, so it takes twice as long; the default runtime is node):
 *
 *   UDP echo target ◀── sender (CLI) ══ TCP fault proxy ══ receiver (CLI) ◀── steady clients + flood
 *
 * - the receiver and the sender are `node|bun apps/cli/dist/mcudpt.js receiver|sender` with --secret,
 *   --idle-timeout 5, --keepalive 2, --max-flows 2000, --max-buffer 1m (so eviction and the buffer
 *   bound are both exercised);
 * - steady: 50 clients each send a numbered datagram every 20 ms and check each echo is their own;
 * - flood: bursts from 5,000 fresh source ports (8 datagrams each, as fast as the bench can send),
 *   one of them while the TCP connection is blackholed;
 * - faults: the proxy resets the connection every 20 s (8 s with --quick) and, once a minute, stops
 *   reading a live connection without closing it (a blackhole longer than 3 keepalive intervals);
 * - both processes are sampled every second: VmRSS and open fds (split into TCP/UDP sockets via
 *   /proc/net/{tcp,udp}{,6});
 * - after the load, the bench waits for flows to idle out and checks the fds went back to baseline.
 *
 * Prints a markdown table and writes bench/results/soak-<runtime>.json (+ the two processes' logs).
 * Exits 1 if any client got someone else's reply or a process died; 3 if the run could not be set
 * up or overran its hard deadline. Every socket and child is closed/killed before exit.
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { createSocket, type Socket as DgramSocket } from "node:dgram";
import { existsSync, mkdirSync, readdirSync, readFileSync, readlinkSync, statSync, writeFileSync } from "node:fs";
import { connect, createServer, type Server, type Socket } from "node:net";
import os from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

type Runtime = "node" | "bun";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const HOST = "127.0.0.1";

// ---------------------------------------------------------------------------------------------------
// Options

interface Options {
  minutes: number;
  quick: boolean;
  runtimes: Runtime[];
  cli: string;
  out: string;
  clients: number;
  intervalMs: number;
  floodSockets: number;
  floodDatagrams: number;
  floodPayload: number;
  idleTimeoutS: number;
  keepaliveS: number;
  maxFlows: number;
  maxBuffer: string;
}

const USAGE = `usage: bun bench/soak.ts [--minutes N] [--quick] [--runtime node|bun|both] [--cli PATH]
                         [--clients N] [--flood-sockets N] [--flood-datagrams N] [--out DIR]`;

function parseOptions(argv: string[]): Options {
  const o: Options = {
    minutes: 2,
    quick: false,
    runtimes: ["node"],
    cli: join(ROOT, "apps", "cli", "dist", "mcudpt.js"),
    out: join(ROOT, "bench", "results"),
    clients: 50,
    intervalMs: 20,
    floodSockets: 5000,
    floodDatagrams: 8,
    floodPayload: 100,
    idleTimeoutS: 5,
    keepaliveS: 2,
    maxFlows: 2000,
    maxBuffer: "1m",
  };
  const num = (flag: string, v: string | undefined, min: number, max: number): number => {
    const n = Number(v);
    if (v === undefined || !Number.isFinite(n) || n < min || n > max)
      fail(`${flag}: expected a number from ${min} to ${max}\n${USAGE}`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const v = argv[i + 1];
    switch (a) {
      case "--minutes":
        o.minutes = num(a, v, 0.5, 60);
        i++;
        break;
      case "--quick":
        o.quick = true;
        o.minutes = 0.5;
        break;
      case "--runtime":
        if (v !== "node" && v !== "bun" && v !== "both") fail(`--runtime: expected node, bun or both\n${USAGE}`);
        o.runtimes = v === "both" ? ["node", "bun"] : [v];
        i++;
        break;
      case "--cli":
        if (!v) fail(`--cli needs a path\n${USAGE}`);
        o.cli = resolve(v);
        i++;
        break;
      case "--out":
        if (!v) fail(`--out needs a directory\n${USAGE}`);
        o.out = resolve(v);
        i++;
        break;
      case "--clients":
        o.clients = Math.round(num(a, v, 1, 500));
        i++;
        break;
      case "--flood-sockets":
        o.floodSockets = Math.round(num(a, v, 0, 15_000));
        i++;
        break;
      case "--flood-datagrams":
        o.floodDatagrams = Math.round(num(a, v, 1, 100));
        i++;
        break;
      case "-h":
      case "--help":
        process.stdout.write(`${USAGE}\n`);
        process.exit(0);
        break;
      default:
        fail(`unknown argument "${a}"\n${USAGE}`);
    }
  }
  return o;
}

function fail(message: string): never {
  process.stderr.write(`soak: ${message}\n`);
  process.exit(3);
}

// ---------------------------------------------------------------------------------------------------
// Small utilities

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const immediate = () => new Promise<void>((r) => setImmediate(r));

async function until(cond: () => boolean, ms: number, step = 25): Promise<boolean> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) return false;
    await sleep(step);
  }
  return true;
}

async function freePort(kind: "udp" | "tcp"): Promise<number> {
  if (kind === "tcp") {
    const server = createServer();
    await new Promise<void>((r) => server.listen(0, HOST, r));
    const port = (server.address() as { port: number }).port;
    await new Promise((r) => server.close(r));
    return port;
  }
  const socket = createSocket("udp4");
  await new Promise<void>((r) => socket.bind(0, HOST, r));
  const port = socket.address().port;
  socket.close();
  return port;
}

function bindUdp(onMessage: (msg: Buffer, port: number) => void): Promise<DgramSocket> {
  const socket = createSocket("udp4");
  socket.on("message", (msg, rinfo) => onMessage(msg, rinfo.port));
  socket.on("error", () => {}); // ICMP unreachable etc.: counted by loss, never fatal
  return new Promise((resolve, reject) => {
    socket.once("error", reject);
    socket.bind(0, HOST, () => {
      socket.off("error", reject);
      resolve(socket);
    });
  });
}

function percentile(sorted: number[], p: number): number | null {
  if (sorted.length === 0) return null;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

function version(cmd: string): string {
  try {
    return execFileSync(cmd, ["--version"], { encoding: "utf8", timeout: 10_000 }).trim();
  } catch {
    return "unknown";
  }
}

// ---------------------------------------------------------------------------------------------------
// Child processes (every one is tracked and killed on the way out)

const children = new Set<ChildProcess>();

function killAll(): void {
  for (const child of children) {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  }
  children.clear();
}
process.on("exit", killAll);
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.on(signal, () => {
    killAll();
    process.exit(130);
  });
}

interface Cli {
  role: "receiver" | "sender";
  child: ChildProcess;
  pid: number;
  lines: string[];
  droppedLines: number;
  exit: { code: number | null; signal: string | null; at: number } | undefined;
  exited: Promise<void>;
  stopping: boolean;
}

const MAX_LOG_LINES = 50_000;

function spawnCli(runtime: Runtime, cli: string, role: "receiver" | "sender", args: string[]): Cli {
  const child = spawn(runtime, [cli, role, ...args], {
    stdio: ["ignore", "ignore", "pipe"],
    env: { ...process.env, MCUDPT_SECRET: "" },
  });
  children.add(child);
  const proc: Cli = {
    role,
    child,
    pid: child.pid ?? -1,
    lines: [],
    droppedLines: 0,
    exit: undefined,
    exited: Promise.resolve(),
    stopping: false,
  };
  let partial = "";
  child.stderr?.setEncoding("utf8");
  child.stderr?.on("data", (chunk: string) => {
    const parts = (partial + chunk).split("\n");
    partial = parts.pop() ?? "";
    for (const line of parts) {
      if (proc.lines.length < MAX_LOG_LINES) proc.lines.push(line);
      else proc.droppedLines++;
    }
  });
  proc.exited = new Promise((r) =>
    child.on("exit", (code, signal) => {
      if (partial) proc.lines.push(partial);
      proc.exit = { code, signal, at: Date.now() };
      children.delete(child);
      r();
    }),
  );
  return proc;
}

async function stopCli(
  proc: Cli,
): Promise<{ code: number | null; signal: string | null; cleanWithinMs: number | null }> {
  if (proc.exit) return { code: proc.exit.code, signal: proc.exit.signal, cleanWithinMs: null };
  proc.stopping = true;
  const start = Date.now();
  proc.child.kill("SIGTERM");
  const ok = await Promise.race([proc.exited.then(() => true), sleep(5000).then(() => false)]);
  if (!ok) {
    proc.child.kill("SIGKILL");
    await Promise.race([proc.exited, sleep(2000)]);
    return { code: null, signal: "SIGKILL (did not exit within 5 s of SIGTERM)", cleanWithinMs: null };
  }
  const exit = proc.exit as Cli["exit"];
  return { code: exit?.code ?? null, signal: exit?.signal ?? null, cleanWithinMs: Date.now() - start };
}

// ---------------------------------------------------------------------------------------------------
// /proc sampling: VmRSS, fds, and which fds are TCP / UDP sockets

interface ProcSample {
  rssKb: number;
  fds: number;
  tcp: number;
  udp: number;
  /** Sum of the kernel drop counters of the process's open UDP sockets. */
  udpDrops: number;
}

/**
 * Socket inodes listed in /proc/net/{tcp,udp}{,6}. For UDP, also each socket's kernel drop counter
 * (datagrams lost because its receive buffer was full), by inode and, for 127.0.0.1, by local port.
 */
function socketInodes(
  files: string[],
  drops?: { byInode: Map<string, number>; byLoopbackPort: Map<number, number> },
): Set<string> {
  const inodes = new Set<string>();
  for (const file of files) {
    let text: string;
    try {
      text = readFileSync(file, "utf8");
    } catch {
      continue;
    }
    const lines = text.split("\n");
    for (let i = 1; i < lines.length; i++) {
      const cols = lines[i].trim().split(/\s+/);
      if (cols.length <= 9) continue;
      inodes.add(cols[9]);
      // "sl local_address rem_address st tx:rx tr:tm retrnsmt uid timeout inode ref pointer drops"
      if (drops && cols.length > 12) {
        const count = Number(cols[12]);
        drops.byInode.set(cols[9], count);
        const [address, port] = cols[1].split(":");
        if (address === "0100007F") drops.byLoopbackPort.set(Number.parseInt(port, 16), count);
      }
    }
  }
  return inodes;
}

function sampleProc(
  pid: number,
  tcpInodes: Set<string>,
  udpInodes: Set<string>,
  udpDrops?: Map<string, number>,
): ProcSample | undefined {
  try {
    const status = readFileSync(`/proc/${pid}/status`, "utf8");
    const rss = /VmRSS:\s+(\d+)\s+kB/.exec(status);
    const fdDir = `/proc/${pid}/fd`;
    const fds = readdirSync(fdDir);
    let tcp = 0;
    let udp = 0;
    let drops = 0;
    for (const fd of fds) {
      let target: string;
      try {
        target = readlinkSync(`${fdDir}/${fd}`);
      } catch {
        continue; // closed between readdir and readlink
      }
      const m = /^socket:\[(\d+)\]$/.exec(target);
      if (!m) continue;
      if (tcpInodes.has(m[1])) tcp++;
      else if (udpInodes.has(m[1])) {
        udp++;
        drops += udpDrops?.get(m[1]) ?? 0;
      }
    }
    return { rssKb: rss ? Number(rss[1]) : 0, fds: fds.length, tcp, udp, udpDrops: drops };
  } catch {
    return undefined; // the process is gone
  }
}

// ---------------------------------------------------------------------------------------------------
// UDP echo target: a separate `node` process (its own event loop, so the bench's flood loop cannot
// starve it) with a 4 MiB receive buffer (capped by net.core.rmem_max). It prints its port, and its
// count when it gets SIGTERM.

const ECHO_SCRIPT = `
const dgram = require("node:dgram");
const s = dgram.createSocket({ type: "udp4", recvBufferSize: 4 * 1024 * 1024 });
let n = 0;
s.on("message", (m, r) => { n++; s.send(m, r.port, r.address); });
s.on("error", () => {});
s.bind(0, "127.0.0.1", () => process.stdout.write("port " + s.address().port + "\\n"));
process.on("SIGTERM", () => { process.stdout.write("echoed " + n + "\\n"); process.exit(0); });
setTimeout(() => process.exit(4), Number(process.argv[1]) * 1000).unref();
`;

interface Echo {
  port: number;
  pid: number;
  /** Resolves to the number of datagrams echoed. */
  stop(): Promise<number>;
}

async function startEcho(maxSeconds: number): Promise<Echo> {
  const child = spawn("node", ["-e", ECHO_SCRIPT, String(maxSeconds)], { stdio: ["ignore", "pipe", "inherit"] });
  children.add(child);
  let out = "";
  child.stdout?.setEncoding("utf8");
  child.stdout?.on("data", (d: string) => {
    out += d;
  });
  const exited = new Promise<void>((r) => child.on("exit", () => r()));
  exited.then(() => children.delete(child));
  if (!(await until(() => /port \d+/.test(out), 10_000))) throw new Error("echo target did not start");
  return {
    port: Number(/port (\d+)/.exec(out)?.[1]),
    pid: child.pid ?? -1,
    async stop() {
      child.kill("SIGTERM");
      await Promise.race([exited, sleep(3000)]);
      if (child.exitCode === null) child.kill("SIGKILL");
      return Number(/echoed (\d+)/.exec(out)?.[1] ?? -1);
    },
  };
}

// ---------------------------------------------------------------------------------------------------
// A tiny TCP fault proxy (node:net): cut() resets the live connections; blackhole() stops reading a
// live connection in both directions without closing it (the peer's kernel buffers fill, nothing is
// delivered), as a vanished host or a wedged middlebox would, and resets it after `holdMs`.

interface Pair {
  client: Socket;
  upstream: Socket;
  blackholed: boolean;
}

class FaultProxy {
  port = 0;
  accepted = 0;
  private readonly pairs = new Set<Pair>();
  private readonly timers = new Set<ReturnType<typeof setTimeout>>();
  private server!: Server;

  static async start(targetPort: number): Promise<FaultProxy> {
    const proxy = new FaultProxy();
    proxy.server = createServer((client) => proxy.accept(client, targetPort));
    await new Promise<void>((r) => proxy.server.listen(0, HOST, r));
    proxy.port = (proxy.server.address() as { port: number }).port;
    return proxy;
  }

  private accept(client: Socket, targetPort: number): void {
    this.accepted++;
    const upstream = connect({ host: HOST, port: targetPort });
    client.setNoDelay(true);
    upstream.setNoDelay(true);
    const pair: Pair = { client, upstream, blackholed: false };
    this.pairs.add(pair);
    const forward = (from: Socket, to: Socket) => {
      from.on("data", (chunk: Buffer) => {
        if (pair.blackholed) return;
        if (!to.write(chunk)) {
          from.pause();
          to.once("drain", () => {
            if (!pair.blackholed) from.resume();
          });
        }
      });
      from.on("end", () => to.end());
      from.on("error", () => {});
      from.on("close", (hadError) => {
        if (hadError) to.resetAndDestroy();
        else to.end();
        if (client.destroyed && upstream.destroyed) this.pairs.delete(pair);
      });
    };
    forward(client, upstream);
    forward(upstream, client);
  }

  /** Resets every live (not blackholed) connection; returns how many pairs were cut. */
  cut(): number {
    let n = 0;
    for (const pair of this.pairs) {
      if (pair.blackholed) continue;
      pair.client.resetAndDestroy();
      pair.upstream.resetAndDestroy();
      this.pairs.delete(pair);
      n++;
    }
    return n;
  }

  /** Stops reading the live connections (both ways), then resets them after holdMs. */
  blackhole(holdMs: number): number {
    let n = 0;
    for (const pair of this.pairs) {
      if (pair.blackholed) continue;
      pair.blackholed = true;
      pair.client.pause();
      pair.upstream.pause();
      n++;
      const timer = setTimeout(() => {
        this.timers.delete(timer);
        pair.client.resetAndDestroy();
        pair.upstream.resetAndDestroy();
        this.pairs.delete(pair);
      }, holdMs);
      this.timers.add(timer);
    }
    return n;
  }

  close(): Promise<void> {
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
    for (const pair of this.pairs) {
      pair.client.resetAndDestroy();
      pair.upstream.resetAndDestroy();
    }
    this.pairs.clear();
    return new Promise((r) => this.server.close(() => r()));
  }
}

// ---------------------------------------------------------------------------------------------------
// Workload. Every payload names the local port it was sent from: a reply carrying another port is
// someone else's ("foreign"), whatever else it says.

interface Counters {
  foreign: number;
  foreignSamples: string[];
}

function noteForeign(counters: Counters, text: string): void {
  counters.foreign++;
  if (counters.foreignSamples.length < 10) counters.foreignSamples.push(text.slice(0, 80));
}

class SteadyClient {
  socket!: DgramSocket;
  port = 0;
  seq = 0;
  sent = 0;
  echoed = 0;
  duplicates = 0;
  sendErrors = 0;
  /** seq -> send time (ms since load start); removed when echoed. */
  readonly pending = new Map<number, number>();
  private timer: ReturnType<typeof setInterval> | undefined;

  constructor(
    readonly id: number,
    private readonly target: number,
    private readonly counters: Counters,
    private readonly rtts: number[],
    private readonly clock: () => number,
  ) {}

  async open(): Promise<void> {
    this.socket = await bindUdp((msg, fromPort) => this.onReply(msg, fromPort));
    this.port = this.socket.address().port;
  }

  start(intervalMs: number, offsetMs: number): void {
    setTimeout(() => {
      if (this.stopped) return;
      this.timer = setInterval(() => this.send(), intervalMs);
    }, offsetMs);
  }

  private stopped = false;
  stop(): void {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
  }

  private send(): void {
    const seq = ++this.seq;
    const payload = Buffer.from(`S|${this.port}|${this.id}|${seq}|`.padEnd(64, "."));
    this.pending.set(seq, this.clock());
    this.sent++;
    this.socket.send(payload, this.target, HOST, (error) => {
      if (error) this.sendErrors++;
    });
  }

  private onReply(msg: Buffer, fromPort: number): void {
    const text = msg.toString("latin1");
    const parts = text.split("|");
    if (
      fromPort !== this.target ||
      parts[0] !== "S" ||
      Number(parts[1]) !== this.port ||
      Number(parts[2]) !== this.id
    ) {
      noteForeign(this.counters, `steady client ${this.id} (port ${this.port}) got: ${text}`);
      return;
    }
    const seq = Number(parts[3]);
    const sentAt = this.pending.get(seq);
    if (sentAt === undefined) {
      if (seq >= 1 && seq <= this.seq) this.duplicates++;
      else noteForeign(this.counters, `steady client ${this.id}: seq ${seq} never sent`);
      return;
    }
    this.pending.delete(seq);
    this.echoed++;
    this.rtts.push(this.clock() - sentAt);
  }

  close(): void {
    this.stop();
    this.socket.close();
  }
}

interface FloodResult {
  index: number;
  atS: number;
  during: string;
  sockets: number;
  sent: number;
  sendErrors: number;
  echoed: number;
  bindMs: number;
  sendMs: number;
}

async function flood(
  index: number,
  atS: number,
  during: string,
  target: number,
  opts: Options,
  counters: Counters,
): Promise<FloodResult> {
  const result: FloodResult = {
    index,
    atS,
    during,
    sockets: 0,
    sent: 0,
    sendErrors: 0,
    echoed: 0,
    bindMs: 0,
    sendMs: 0,
  };
  const sockets: DgramSocket[] = [];
  const t0 = Date.now();
  try {
    for (let i = 0; i < opts.floodSockets; i += 250) {
      const batch: Promise<DgramSocket>[] = [];
      for (let j = i; j < Math.min(opts.floodSockets, i + 250); j++) {
        const n = j;
        let port = 0;
        batch.push(
          bindUdp((msg, fromPort) => {
            const text = msg.toString("latin1");
            const parts = text.split("|");
            if (fromPort !== target || parts[0] !== "F" || Number(parts[1]) !== port) {
              noteForeign(counters, `flood ${index} socket ${n} (port ${port}) got: ${text}`);
              return;
            }
            result.echoed++;
          }).then((s) => {
            port = s.address().port;
            return s;
          }),
        );
      }
      sockets.push(...(await Promise.all(batch)));
    }
    result.sockets = sockets.length;
    result.bindMs = Date.now() - t0;
    const t1 = Date.now();
    const onSent = (error: Error | null) => {
      if (error) result.sendErrors++;
    };
    let sinceYield = 0;
    for (let k = 0; k < opts.floodDatagrams; k++) {
      for (let i = 0; i < sockets.length; i++) {
        const s = sockets[i];
        const payload = Buffer.from(`F|${s.address().port}|${index}|${i}|${k}|`.padEnd(opts.floodPayload, "#"));
        s.send(payload, target, HOST, onSent);
        result.sent++;
        if (++sinceYield === 250) {
          sinceYield = 0;
          await immediate(); // let replies and the steady clients' timers run
        }
      }
    }
    result.sendMs = Date.now() - t1;
    await sleep(2000); // collect the echoes
  } finally {
    for (const s of sockets) s.close();
  }
  return result;
}

// ---------------------------------------------------------------------------------------------------
// One run

interface Window {
  kind: "cut" | "blackhole" | "flood";
  fromS: number;
  toS: number;
}

interface Plan {
  totalS: number;
  loadS: number;
  drainS: number;
  cuts: number[];
  blackholes: number[];
  blackholeHoldS: number;
  floods: Array<{ atS: number; during: string }>;
}

function makePlan(opts: Options): Plan {
  const totalS = Math.round(opts.minutes * 60);
  const drainS = opts.quick || totalS <= 45 ? 12 : 25;
  const loadS = totalS - drainS;
  const cutEvery = opts.quick || loadS < 40 ? 8 : 20;
  const cuts: number[] = [];
  for (let t = cutEvery; t <= loadS - 4; t += cutEvery) cuts.push(t);
  const blackholes: number[] = [];
  // Held well past the keepalive verdict (3 intervals), so a side that keeps a dead connection open
  // shows up in the samples as an extra TCP socket until the proxy finally resets it.
  const blackholeHoldS = 3 * opts.keepaliveS + 20;
  if (!opts.quick) for (let t = 50; t + 3 * opts.keepaliveS + 4 <= loadS; t += 60) blackholes.push(t);
  const floods: Array<{ atS: number; during: string }> = [];
  if (opts.floodSockets > 0) {
    if (opts.quick || loadS < 40) floods.push({ atS: 3, during: "normal operation" });
    else {
      for (let t = 10; t + 6 <= loadS; t += 30)
        floods.push({ atS: t, during: cuts.includes(t) ? "a connection cut" : "normal operation" });
      for (const b of blackholes) floods.push({ atS: b + 1, during: "a blackholed connection" });
      floods.sort((a, b) => a.atS - b.atS);
    }
  }
  return { totalS, loadS, drainS, cuts, blackholes, blackholeHoldS, floods };
}

interface SideReport {
  pid: number;
  start: ProcSample | undefined;
  peak: { rssKb: number; fds: number; tcp: number; udp: number };
  end: ProcSample | undefined;
  fdsBackToBaseline: boolean;
  /** Samples (≈ seconds) with more TCP sockets than at the start: a connection kept after it died. */
  samplesWithExtraTcp: number;
  died: boolean;
  exit: { code: number | null; signal: string | null; cleanWithinMs: number | null };
  warnLines: number;
  errorLines: number;
  sampleWarnings: string[];
  errors: string[];
}

interface RunReport {
  runtime: Runtime;
  runtimeVersion: string;
  transport: string;
  date: string;
  command: string;
  plan: Plan;
  config: Record<string, unknown>;
  steady: {
    clients: number;
    sent: number;
    echoed: number;
    lost: number;
    lossPct: number;
    duplicates: number;
    sendErrors: number;
    lostBy: Record<string, number>;
    rttMs: { p50: number | null; p99: number | null; max: number | null };
  };
  flood: { bursts: FloodResult[]; sent: number; echoed: number; sendErrors: number };
  foreign: number;
  foreignSamples: string[];
  /** Datagrams the kernel dropped because a socket's receive buffer was full (/proc/net/udp). */
  kernelDrops: { receiverUdp: number; echoTarget: number; steadyClients: number };
  /** Datagrams the echo target received (= echoed). */
  echoTargetReceived: number;
  faults: { cuts: number; blackholes: number; proxyConnectionsAccepted: number };
  reconnects: {
    senderConnects: number;
    reconnects: number;
    resumed: number;
    notResumed: number;
    keepaliveTimeouts: { receiver: number; sender: number };
    takeovers: number;
    evictionLines: number;
  };
  receiver: SideReport;
  sender: SideReport;
  /** Fault and flood windows, seconds since the load started (loss inside one is attributed to it). */
  events: Window[];
  /** `load1`: the machine's 1-minute load average (other work on the machine skews the figures). */
  samples: Array<{ t: number; load1: number; receiver?: ProcSample; sender?: ProcSample }>;
  verdict: { ok: boolean; problems: string[]; notes: string[] };
}

async function runOnce(runtime: Runtime, opts: Options): Promise<RunReport> {
  const plan = makePlan(opts);
  const hardDeadline = setTimeout(
    () => {
      process.stderr.write(`soak: ${runtime} run overran its hard deadline; killing everything\n`);
      killAll();
      process.exit(3);
    },
    (plan.totalS + 90) * 1000,
  );
  hardDeadline.unref?.();
  const secret = createHash("sha256")
    .update(String(Math.random()) + Date.now())
    .digest("hex")
    .slice(0, 32);
  const common = [
    "--secret",
    secret,
    "--idle-timeout",
    String(opts.idleTimeoutS),
    "--keepalive",
    String(opts.keepaliveS),
    "--max-flows",
    String(opts.maxFlows),
    "--max-buffer",
    opts.maxBuffer,
  ];
  const cliSha256 = createHash("sha256").update(readFileSync(opts.cli)).digest("hex");
  const cliMtime = statSync(opts.cli).mtime.toISOString();
  const counters: Counters = { foreign: 0, foreignSamples: [] };
  const echo = await startEcho(plan.totalS + 60);
  let receiver: Cli | undefined;
  let udpPort = 0;
  for (let attempt = 0; attempt < 3 && !receiver; attempt++) {
    udpPort = await freePort("udp");
    const tcpPort = await freePort("tcp");
    const r = spawnCli(runtime, opts.cli, "receiver", [
      "--udp",
      `${HOST}:${udpPort}`,
      "--tcp",
      `${HOST}:${tcpPort}`,
      // The flood and the steady clients all come from 127.0.0.1: with the per-source new-flow limit
      // on, the flood would starve the steady clients' new flows and the soak would measure the limit.
      "--new-flow-rate",
      "0",
      ...common,
    ]);
    await until(() => r.exit !== undefined || r.lines.some((l) => /receiver listening/.test(l)), 15_000);
    if (r.lines.some((l) => /receiver listening/.test(l)) && !r.exit) {
      receiver = r;
      (receiver as Cli & { tcpPort: number }).tcpPort = tcpPort;
    } else {
      await stopCli(r);
      if (attempt === 2) throw new Error(`receiver did not start:\n${r.lines.join("\n")}`);
    }
  }
  if (!receiver) throw new Error("receiver did not start");
  const proxy = await FaultProxy.start((receiver as Cli & { tcpPort: number }).tcpPort);
  const sender = spawnCli(runtime, opts.cli, "sender", [
    "--udp",
    `${HOST}:${echo.port}`,
    "--tcp",
    `${HOST}:${proxy.port}`,
    ...common,
  ]);
  if (
    !(await until(
      () => sender.lines.some((l) => /accepted by receiver/.test(l)) || sender.exit !== undefined,
      15_000,
    )) ||
    sender.exit
  ) {
    await stopCli(sender);
    await stopCli(receiver);
    throw new Error(`sender was not accepted:\n${sender.lines.join("\n")}\n${receiver.lines.join("\n")}`);
  }
  const transport = /transport: (\w+)/.exec(receiver.lines.join("\n"))?.[1] ?? "unknown";

  // Sampling, every second, from the moment both are up. `t` is seconds since the load started (the
  // plan's clock; the baseline sample is negative).
  const samples: RunReport["samples"] = [];
  // Kernel drops (receive buffer full) on the receiver's public socket, the echo target's, and the
  // steady clients' (the last two would be the bench's fault, not the tunnel's).
  const kernelDrops = { receiverUdp: 0, echoTarget: 0, steadyClients: 0 };
  let steadyPorts: number[] = [];
  const takeSample = () => {
    const tcpInodes = socketInodes(["/proc/net/tcp", "/proc/net/tcp6"]);
    const drops = { byInode: new Map<string, number>(), byLoopbackPort: new Map<number, number>() };
    const udpInodes = socketInodes(["/proc/net/udp", "/proc/net/udp6"], drops);
    const echoSample = sampleProc(echo.pid, tcpInodes, udpInodes, drops.byInode);
    if (echoSample) kernelDrops.echoTarget = Math.max(kernelDrops.echoTarget, echoSample.udpDrops);
    if (steadyPorts.length) {
      kernelDrops.steadyClients = Math.max(
        kernelDrops.steadyClients,
        steadyPorts.reduce((n, p) => n + (drops.byLoopbackPort.get(p) ?? 0), 0),
      );
    }
    const s = {
      t: Date.now(), // made relative to the load start below
      load1: Math.round(os.loadavg()[0] * 100) / 100,
      receiver: sampleProc(receiver.pid, tcpInodes, udpInodes, drops.byInode),
      sender: sampleProc(sender.pid, tcpInodes, udpInodes, drops.byInode),
    };
    if (s.receiver) kernelDrops.receiverUdp = Math.max(kernelDrops.receiverUdp, s.receiver.udpDrops);
    samples.push(s);
    return s;
  };
  await sleep(1500);
  const baseline = takeSample();
  const sampler = setInterval(takeSample, 1000);

  // Load phase.
  const loadStart = Date.now();
  const clock = () => (Date.now() - loadStart) / 1000;
  const rtts: number[] = [];
  const clients: SteadyClient[] = [];
  for (let i = 0; i < opts.clients; i++) {
    const c = new SteadyClient(i, udpPort, counters, rtts, () => Date.now() - loadStart);
    await c.open();
    clients.push(c);
  }
  steadyPorts = clients.map((c) => c.port);
  for (const [i, c] of clients.entries()) c.start(opts.intervalMs, (i * opts.intervalMs) / opts.clients);

  const windows: Window[] = [];
  const timers: ReturnType<typeof setTimeout>[] = [];
  const floodRuns: Promise<FloodResult>[] = [];
  let cutsDone = 0;
  let blackholesDone = 0;
  const at = (s: number, fn: () => void) => timers.push(setTimeout(fn, s * 1000));
  for (const s of plan.cuts) {
    at(s, () => {
      if (proxy.cut() > 0) cutsDone++;
      windows.push({ kind: "cut", fromS: clock(), toS: clock() + 3 });
    });
  }
  for (const s of plan.blackholes) {
    at(s, () => {
      if (proxy.blackhole(plan.blackholeHoldS * 1000) > 0) blackholesDone++;
      // Nothing gets through until a keepalive verdict (3 intervals) and the reconnect after it.
      windows.push({ kind: "blackhole", fromS: clock(), toS: clock() + 3 * opts.keepaliveS + 3 });
    });
  }
  plan.floods.forEach((f, i) => {
    at(f.atS, () => {
      const from = clock();
      const run = flood(i + 1, f.atS, f.during, udpPort, opts, counters);
      floodRuns.push(run);
      run.then(
        () => windows.push({ kind: "flood", fromS: from, toS: clock() }),
        () => windows.push({ kind: "flood", fromS: from, toS: clock() }),
      );
    });
  });
  let died: Cli | undefined;
  await until(
    () => {
      if (receiver.exit && !receiver.stopping) died = receiver;
      if (sender.exit && !sender.stopping) died = sender;
      return died !== undefined || Date.now() - loadStart >= plan.loadS * 1000;
    },
    plan.loadS * 1000 + 1000,
    100,
  );
  for (const t of timers) clearTimeout(t);
  for (const c of clients) c.stop();
  const bursts = await Promise.all(floodRuns);
  await sleep(1500); // last echoes
  takeSample();
  for (const c of clients) c.close();
  steadyPorts = [];

  // Drain: flows idle out after --idle-timeout; wait for the fds to come back (bounded).
  const drainEnd = loadStart + (plan.loadS + plan.drainS) * 1000;
  await until(
    () => {
      const last = samples[samples.length - 1];
      if (receiver.exit || sender.exit) return true;
      const back =
        Date.now() - loadStart > (plan.loadS + opts.idleTimeoutS + 2) * 1000 &&
        last.receiver !== undefined &&
        last.sender !== undefined &&
        baseline.receiver !== undefined &&
        baseline.sender !== undefined &&
        last.receiver.fds <= baseline.receiver.fds &&
        last.sender.fds <= baseline.sender.fds;
      return back || Date.now() >= drainEnd;
    },
    plan.drainS * 1000 + 2000,
    250,
  );
  await sleep(1000);
  clearInterval(sampler);
  const end = takeSample();
  for (const sample of samples) sample.t = Math.round((sample.t - loadStart) / 100) / 10;
  if (!died) {
    if (receiver.exit) died = receiver;
    else if (sender.exit) died = sender;
  }
  const receiverDied = receiver.exit !== undefined;
  const senderDied = sender.exit !== undefined;

  // Shut down: sender first (goodbye), then the receiver.
  const senderExit = await stopCli(sender);
  const receiverExit = await stopCli(receiver);
  await proxy.close();
  const echoTargetReceived = await echo.stop();
  clearTimeout(hardDeadline);

  // Steady-client accounting: each datagram still pending was lost; attribute it to a fault window.
  const lostBy: Record<string, number> = { cut: 0, blackhole: 0, flood: 0, "no fault": 0 };
  let lostTimes: number[] = [];
  for (const c of clients) for (const sentAt of c.pending.values()) lostTimes.push(sentAt / 1000);
  lostTimes = lostTimes.sort((a, b) => a - b);
  for (const t of lostTimes) {
    const w = windows.find((x) => t >= x.fromS - 0.1 && t <= x.toS);
    lostBy[w ? w.kind : "no fault"]++;
  }
  const sent = clients.reduce((n, c) => n + c.sent, 0);
  const echoed = clients.reduce((n, c) => n + c.echoed, 0);
  rtts.sort((a, b) => a - b);

  const side = (
    proc: Cli,
    key: "receiver" | "sender",
    exit: Awaited<ReturnType<typeof stopCli>>,
    procDied: boolean,
  ): SideReport => {
    const series = samples.map((s) => s[key]).filter((s): s is ProcSample => s !== undefined);
    const start = baseline[key];
    const last = end[key];
    const warn = proc.lines.filter((l) => / warn: /.test(l));
    const errors = proc.lines.filter((l) => / error: |unexpected error|internal error/.test(l));
    const uniq = new Map<string, string>();
    for (const l of warn) {
      const key = l.replace(/^\S+ /, "").replace(/\d+/g, "N");
      if (!uniq.has(key)) uniq.set(key, l);
    }
    return {
      pid: proc.pid,
      start,
      peak: {
        rssKb: Math.max(0, ...series.map((s) => s.rssKb)),
        fds: Math.max(0, ...series.map((s) => s.fds)),
        tcp: Math.max(0, ...series.map((s) => s.tcp)),
        udp: Math.max(0, ...series.map((s) => s.udp)),
      },
      end: last,
      fdsBackToBaseline: start !== undefined && last !== undefined && last.fds <= start.fds,
      samplesWithExtraTcp: start ? series.filter((x) => x.tcp > start.tcp).length : 0,
      died: procDied,
      exit,
      warnLines: warn.length,
      errorLines: errors.length,
      sampleWarnings: [...uniq.values()].slice(0, 30),
      errors: errors.slice(0, 20),
    };
  };
  const rSide = side(receiver, "receiver", receiverExit, receiverDied);
  const sSide = side(sender, "sender", senderExit, senderDied);

  const count = (proc: Cli, re: RegExp) => proc.lines.filter((l) => re.test(l)).length;
  const senderConnects = count(sender, /connected to receiver/);
  const resumed = count(sender, /accepted by receiver .*\(resumed \d+ flows\)/);
  const acceptedAll = count(sender, /accepted by receiver/);

  const problems: string[] = [];
  const notes: string[] = [];
  if (counters.foreign > 0) problems.push(`${counters.foreign} foreign replies (someone else's datagram)`);
  if (died) problems.push(`the ${died.role} died during the run: exit ${JSON.stringify(died.exit)}`);
  for (const [name, s] of [
    ["receiver", rSide],
    ["sender", sSide],
  ] as const) {
    if (!s.fdsBackToBaseline)
      notes.push(`${name} fds did not return to baseline: ${s.start?.fds} at start, ${s.end?.fds} at the end`);
    if (s.errorLines > 0) notes.push(`${name} logged ${s.errorLines} error line(s)`);
    if (!s.died && s.exit.code !== 0) notes.push(`${name} did not exit 0 on SIGTERM: ${JSON.stringify(s.exit)}`);
  }
  if (lostBy["no fault"] > 0) notes.push(`${lostBy["no fault"]} steady datagrams lost outside any fault window`);

  const report: RunReport = {
    runtime,
    runtimeVersion: version(runtime),
    transport,
    date: new Date().toISOString(),
    command: `bun bench/soak.ts ${process.argv.slice(2).join(" ")}`.trim(),
    plan,
    config: {
      cli: opts.cli,
      cliSha256,
      cliMtime,
      flags: common.map((f) => (f === secret ? "<random>" : f)),
      clients: opts.clients,
      intervalMs: opts.intervalMs,
      floodSockets: opts.floodSockets,
      floodDatagramsPerSocket: opts.floodDatagrams,
      floodPayloadBytes: opts.floodPayload,
      benchRuntime: `bun ${process.versions.bun ?? "?"}`,
      machine: {
        nproc: os.cpus().length,
        memTotalMiB: Math.round(os.totalmem() / 2 ** 20),
        cpu: os.cpus()[0]?.model ?? "unknown",
        kernel: os.release(),
        nodeVersion: version("node"),
        bunVersion: version("bun"),
      },
      gitHead: gitHead(),
    },
    steady: {
      clients: clients.length,
      sent,
      echoed,
      lost: sent - echoed,
      lossPct: sent ? Math.round(((sent - echoed) / sent) * 10_000) / 100 : 0,
      duplicates: clients.reduce((n, c) => n + c.duplicates, 0),
      sendErrors: clients.reduce((n, c) => n + c.sendErrors, 0),
      lostBy,
      rttMs: { p50: percentile(rtts, 50), p99: percentile(rtts, 99), max: rtts.length ? rtts[rtts.length - 1] : null },
    },
    flood: {
      bursts,
      sent: bursts.reduce((n, b) => n + b.sent, 0),
      echoed: bursts.reduce((n, b) => n + b.echoed, 0),
      sendErrors: bursts.reduce((n, b) => n + b.sendErrors, 0),
    },
    foreign: counters.foreign,
    foreignSamples: counters.foreignSamples,
    kernelDrops,
    echoTargetReceived,
    faults: { cuts: cutsDone, blackholes: blackholesDone, proxyConnectionsAccepted: proxy.accepted },
    reconnects: {
      senderConnects,
      reconnects: Math.max(0, senderConnects - 1),
      resumed,
      notResumed: Math.max(0, acceptedAll - 1 - resumed),
      keepaliveTimeouts: {
        receiver: count(receiver, /nothing received for/),
        sender: count(sender, /nothing received for/),
      },
      takeovers: count(receiver, /takes over from/),
      evictionLines: count(receiver, /flow limit/) + count(sender, /flow limit/),
    },
    receiver: rSide,
    sender: sSide,
    events: windows.map((w) => ({
      kind: w.kind,
      fromS: Math.round(w.fromS * 10) / 10,
      toS: Math.round(w.toS * 10) / 10,
    })),
    samples,
    verdict: { ok: problems.length === 0, problems, notes },
  };
  mkdirSync(opts.out, { recursive: true });
  writeFileSync(join(opts.out, `soak-${runtime}.json`), `${JSON.stringify(report, null, 1)}\n`);
  writeFileSync(join(opts.out, `soak-${runtime}-receiver.log`), `${receiver.lines.join("\n")}\n`);
  writeFileSync(join(opts.out, `soak-${runtime}-sender.log`), `${sender.lines.join("\n")}\n`);
  return report;
}

function gitHead(): string {
  try {
    const head = execFileSync("git", ["-C", ROOT, "rev-parse", "--short", "HEAD"], {
      encoding: "utf8",
      timeout: 5000,
    }).trim();
    const dirty = execFileSync("git", ["-C", ROOT, "status", "--porcelain", "--", "packages", "apps"], {
      encoding: "utf8",
      timeout: 5000,
    }).trim();
    return dirty ? `${head} (+ uncommitted changes under packages/ or apps/)` : head;
  } catch {
    return "unknown";
  }
}

// ---------------------------------------------------------------------------------------------------
// Report

const mib = (kb: number | undefined) => (kb === undefined ? "-" : `${(kb / 1024).toFixed(1)} MiB`);
const n = (x: number) => x.toLocaleString("en-US");

function table(reports: RunReport[]): string {
  const head = `| | ${reports.map((r) => `${r.runtime} (${r.runtimeVersion}, transport ${r.transport})`).join(" | ")} |`;
  const sep = `|---|${reports.map(() => "---").join("|")}|`;
  const row = (label: string, f: (r: RunReport) => string) => `| ${label} | ${reports.map(f).join(" | ")} |`;
  const proc = (k: "receiver" | "sender") => [
    row(
      `${k} RSS start / peak / end`,
      (r) => `${mib(r[k].start?.rssKb)} / ${mib(r[k].peak.rssKb)} / ${mib(r[k].end?.rssKb)}`,
    ),
    row(`${k} fds start / peak / end`, (r) => `${r[k].start?.fds ?? "-"} / ${r[k].peak.fds} / ${r[k].end?.fds ?? "-"}`),
    row(`${k} TCP / UDP sockets peak`, (r) => `${r[k].peak.tcp} / ${r[k].peak.udp}`),
    row(`${k} samples with an extra TCP socket`, (r) => String(r[k].samplesWithExtraTcp)),
    row(`${k} fds back to baseline`, (r) => (r[k].fdsBackToBaseline ? "yes" : "**no**")),
    row(`${k} died / SIGTERM exit`, (r) => `${r[k].died ? "**DIED**" : "no"} / ${r[k].exit.code ?? r[k].exit.signal}`),
    row(`${k} warn / error log lines`, (r) => `${r[k].warnLines} / ${r[k].errorLines}`),
  ];
  return [
    head,
    sep,
    row("duration (load + drain)", (r) => `${r.plan.loadS} s + ${r.plan.drainS} s`),
    row("steady clients × interval", (r) => `${r.steady.clients} × ${r.config.intervalMs} ms`),
    row(
      "steady sent / echoed / lost",
      (r) => `${n(r.steady.sent)} / ${n(r.steady.echoed)} / ${n(r.steady.lost)} (${r.steady.lossPct}%)`,
    ),
    row("lost during cut / blackhole / flood / no fault", (r) =>
      ["cut", "blackhole", "flood", "no fault"].map((k) => n(r.steady.lostBy[k] ?? 0)).join(" / "),
    ),
    row(
      "steady RTT p50 / p99 / max",
      (r) => `${r.steady.rttMs.p50 ?? "-"} / ${r.steady.rttMs.p99 ?? "-"} / ${r.steady.rttMs.max ?? "-"} ms`,
    ),
    row("duplicates", (r) => n(r.steady.duplicates)),
    row("flood bursts × sockets", (r) => `${r.flood.bursts.length} × ${n(r.config.floodSockets as number)}`),
    row("flood datagrams sent / echoed", (r) => `${n(r.flood.sent)} / ${n(r.flood.echoed)}`),
    row("echo target received", (r) => n(r.echoTargetReceived)),
    row("machine load (1-min average) max", (r) => String(Math.max(...r.samples.map((x) => x.load1)))),
    row(
      "kernel UDP drops: receiver port / echo target / steady clients",
      (r) => `${n(r.kernelDrops.receiverUdp)} / ${n(r.kernelDrops.echoTarget)} / ${n(r.kernelDrops.steadyClients)}`,
    ),
    row("**foreign replies**", (r) => `**${r.foreign}**`),
    row("cuts / blackholes injected", (r) => `${r.faults.cuts} / ${r.faults.blackholes}`),
    row(
      "sender reconnects (resumed / new session)",
      (r) => `${r.reconnects.reconnects} (${r.reconnects.resumed} / ${r.reconnects.notResumed})`,
    ),
    row(
      "keepalive verdicts receiver / sender",
      (r) => `${r.reconnects.keepaliveTimeouts.receiver} / ${r.reconnects.keepaliveTimeouts.sender}`,
    ),
    row("eviction warnings (rate-limited lines)", (r) => n(r.reconnects.evictionLines)),
    ...proc("receiver"),
    ...proc("sender"),
    row("verdict", (r) => (r.verdict.ok ? "ok" : `**FAIL**: ${r.verdict.problems.join("; ")}`)),
  ].join("\n");
}

// ---------------------------------------------------------------------------------------------------

async function main(): Promise<number> {
  const opts = parseOptions(process.argv.slice(2));
  if (process.platform !== "linux" || !existsSync("/proc/self/status")) fail("needs Linux /proc");
  if (!existsSync(opts.cli)) fail(`${opts.cli} is missing: run \`bun run build\` first (or pass --cli PATH)`);
  const reports: RunReport[] = [];
  for (const runtime of opts.runtimes) {
    const plan = makePlan(opts);
    process.stderr.write(
      `soak: ${runtime}: ${plan.totalS} s (load ${plan.loadS} s: cuts at ${plan.cuts.join(",") || "-"} s, blackholes at ${
        plan.blackholes.join(",") || "-"
      } s, floods at ${plan.floods.map((f) => f.atS).join(",") || "-"} s; drain ${plan.drainS} s)\n`,
    );
    try {
      const report = await runOnce(runtime, opts);
      reports.push(report);
      process.stderr.write(
        `soak: ${runtime}: done, ${report.verdict.ok ? "ok" : `FAIL: ${report.verdict.problems.join("; ")}`}\n`,
      );
    } catch (error) {
      killAll();
      process.stderr.write(`soak: ${runtime}: could not run: ${(error as Error)?.stack ?? error}\n`);
      return 3;
    }
  }
  process.stdout.write(`\n${table(reports)}\n\n`);
  for (const r of reports) {
    for (const note of [...r.verdict.problems, ...r.verdict.notes]) process.stdout.write(`- ${r.runtime}: ${note}\n`);
    if (r.foreignSamples.length)
      process.stdout.write(`- ${r.runtime}: foreign samples: ${JSON.stringify(r.foreignSamples)}\n`);
    process.stdout.write(`- ${r.runtime}: JSON in ${join(opts.out, `soak-${r.runtime}.json`)}\n`);
  }
  return reports.every((r) => r.verdict.ok) ? 0 : 1;
}

main().then(
  (code) => {
    killAll();
    process.exit(code);
  },
  (error) => {
    process.stderr.write(`soak: ${(error as Error)?.stack ?? error}\n`);
    killAll();
    process.exit(3);
  },
);
