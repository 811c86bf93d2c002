#!/usr/bin/env bun
/**
 * mcudpt on a lossy link, with real kernel TCP loss (not a simulation). Root only.
 *
 *   bun bench/lossy.ts                      every configuration, loss level, workload and runtime
 *   --loss=0,0.5,1,2                        share of the tunnel's TCP packets dropped, in % (default 0,0.5,1,2)
 *   --configs=direct,nudge-off,default,lanes4,redundant   (default: all)
 *   --runtimes=bun,node                     runtime of both tunnel ends (default: both)
 *   --workloads=pp,dns,flows                sockperf ping-pong, dnsperf -c 10, 40 concurrent flows (default: all)
 *   --seconds=N                             length of each measurement (default 10)
 *   --trials=N                              repeat every measurement N times, interleaved; the median trial
 *                                           (by p99, share over 50 ms, or q/s) is reported (default 1)
 *   --build                                 rebuild the CLI first (otherwise only when apps/cli/dist is missing)
 *   --no-wait-quiet                         do not wait for other processes to leave the CPUs idle
 *   --out=NAME                              results in bench/results/NAME.{json,md} (default lossy)
 *
 * It creates its own network namespace (loopback only inside it), runs the targets (sockperf server,
 * dnsmasq, a UDP echo), the tunnel and the clients inside it, and drops the given share of the
 * tunnel's TCP packets, both directions, at random with nft (`numgen random`) on the input hook: the
 * sending TCP believes the segment left, as on a real lossy path. Counters on the output hook give
 * the packets and bytes on the carrier (retransmissions included) per datagram carried.
 *
 * Every process runs under `timeout -s KILL` and is killed by pid on exit; the namespace is deleted on
 * every exit path (normal end, error, SIGINT/SIGTERM, the watchdog).
 */
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import os from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import {
  dnsmasqArgs,
  killAll,
  type Proc,
  run,
  sleep,
  start,
  stderrOf,
  stdoutOf,
  stop,
  waitFor,
  dnsperfSummary,
  num,
} from "./perf-lib/proc.js";

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = resolve(HERE, "..");
const RESULTS = join(ROOT, "bench", "results");
const DIST = join(ROOT, "apps", "cli", "dist", "mcudpt.js");
const UDP_TOOL = join(HERE, "perf-lib", "udp-tool.ts");
const FLOWS_TOOL = join(HERE, "lossy-lib", "flows.mjs");
const SECRET = "lossy-secret";

const argv = process.argv.slice(2);
const opt = (name: string): string | undefined => argv.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3);
const list = (name: string, fallback: string[]): string[] => opt(name)?.split(",").filter(Boolean) ?? fallback;
const LOSSES = list("loss", ["0", "0.5", "1", "2"]).map(Number);
const RUNTIMES = list("runtimes", ["bun", "node"]) as Runtime[];
const WORKLOADS = list("workloads", ["pp", "dns", "flows"]);
const SECONDS = Number(opt("seconds") ?? 10);
const TRIALS = Number(opt("trials") ?? 1);
const WAIT_QUIET = !argv.includes("--no-wait-quiet");
const OUT = opt("out") ?? "lossy";
const NS = `mcudpt-lossy-${process.pid}`;

type Runtime = "bun" | "node";
interface Config {
  id: string;
  label: string;
  /** CLI flags for the dialing side (the sender) and the listening side (the receiver). */
  sender?: string[];
  receiver?: string[];
  /** TCP connections the sender opens (lanes), to wait for before measuring. */
  lanes?: number;
}
const ALL_CONFIGS: Config[] = [
  { id: "direct", label: "direct UDP" },
  { id: "nudge-off", label: "tunnel, --nudge off", sender: ["--nudge", "off"], receiver: ["--nudge", "off"] },
  { id: "default", label: "tunnel (default)", sender: [], receiver: [] },
  { id: "lanes4", label: "--lanes 4", sender: ["--lanes", "4"], receiver: [], lanes: 4 },
  {
    id: "redundant",
    label: "--lanes 2 --redundant",
    sender: ["--lanes", "2", "--redundant"],
    receiver: [],
    lanes: 2,
  },
];
const CONFIGS = ALL_CONFIGS.filter((c) =>
  list(
    "configs",
    ALL_CONFIGS.map((x) => x.id),
  ).includes(c.id),
);

type Metrics = Record<string, number | undefined>;
interface Result {
  trial: number;
  config: string;
  runtime: Runtime | "-";
  lossPct: number;
  workload: string;
  metrics: Metrics;
  busy: number;
  error?: string;
}

function log(line: string): void {
  process.stderr.write(`[lossy] ${line}\n`);
}

// ---------------------------------------------------------------------------------------------
// The namespace and the loss

function sh(cmd: string, args: string[], input?: string): { ok: boolean; out: string } {
  const r = spawnSync(cmd, args, { encoding: "utf8", input, timeout: 20_000 });
  return { ok: r.status === 0, out: `${r.stdout ?? ""}${r.stderr ?? ""}` };
}

let nsCreated = false;
function cleanup(): void {
  killAll();
  if (nsCreated) {
    // Processes still inside would keep it alive; they were killed above.
    sh("ip", ["netns", "delete", NS]);
    nsCreated = false;
  }
}

function createNamespace(): void {
  const made = sh("ip", ["netns", "add", NS]);
  if (!made.ok) throw new Error(`ip netns add ${NS}: ${made.out.trim()}`);
  nsCreated = true;
  const up = sh("ip", ["-n", NS, "link", "set", "lo", "up"]);
  if (!up.ok) throw new Error(`lo up: ${up.out.trim()}`);
}

/** Drops `lossPct` % of the TCP packets to or from `port`, both directions; counts what is sent. */
function setLoss(port: number, lossPct: number): void {
  const perTenThousand = Math.round(lossPct * 100);
  const rules = `
table inet lossy
delete table inet lossy
table inet lossy {
  counter toListener {}
  counter fromListener {}
  chain out {
    type filter hook output priority 0; policy accept;
    tcp dport ${port} counter name toListener
    tcp sport ${port} counter name fromListener
  }
  chain in {
    type filter hook input priority 0; policy accept;
    ${perTenThousand > 0 ? `tcp dport ${port} numgen random mod 10000 < ${perTenThousand} drop` : ""}
    ${perTenThousand > 0 ? `tcp sport ${port} numgen random mod 10000 < ${perTenThousand} drop` : ""}
  }
}
`;
  const r = sh("ip", ["netns", "exec", NS, "nft", "-f", "-"], rules);
  if (!r.ok) throw new Error(`nft: ${r.out.trim()}`);
}

function resetCounters(): void {
  sh("ip", ["netns", "exec", NS, "nft", "reset", "counters", "table", "inet", "lossy"]);
  sh("ip", ["netns", "exec", NS, "nstat", "-n"]); // resets nstat's history: the next reading is a delta
}

/** The namespace's TCP recovery counters since resetCounters(): how the kernel repaired the losses. */
const TCP_COUNTERS = {
  TcpRetransSegs: "retransmits",
  TcpExtTCPTimeouts: "rtoTimeouts",
  TcpExtTCPLossProbes: "lossProbes",
  TcpExtTCPSackRecovery: "sackRecoveries",
  TcpExtTCPLostRetransmit: "lostRetransmits",
} as const;

function readTcpCounters(): Metrics {
  const r = sh("ip", ["netns", "exec", NS, "nstat", "-z", "-j"]);
  const metrics: Metrics = {};
  try {
    const all = JSON.parse(r.out).kernel ?? {};
    for (const [key, name] of Object.entries(TCP_COUNTERS)) metrics[name] = all[key] ?? 0;
  } catch {}
  return metrics;
}

function readCounters(): { packets: number; bytes: number } {
  const r = sh("ip", ["netns", "exec", NS, "nft", "-j", "list", "counters", "table", "inet", "lossy"]);
  let packets = 0;
  let bytes = 0;
  try {
    for (const item of JSON.parse(r.out).nftables ?? []) {
      if (item.counter) {
        packets += item.counter.packets;
        bytes += item.counter.bytes;
      }
    }
  } catch {}
  return { packets, bytes };
}

/** `cmd args` inside the namespace, bounded. */
function nsStart(dir: string, name: string, cmd: string, args: string[], cap: number): Promise<Proc> {
  return start(dir, name, "ip", ["netns", "exec", NS, cmd, ...args], cap);
}

// ---------------------------------------------------------------------------------------------
// Quiet CPUs

function cpuSample(): { idle: number; total: number } {
  const line = spawnSync("head", ["-1", "/proc/stat"], { encoding: "utf8" }).stdout.trim().split(/\s+/);
  const f = line.slice(1).map(Number);
  return { idle: f[3] + (f[4] ?? 0), total: f.reduce((a, b) => a + b, 0) };
}

async function busyFraction(ms = 500): Promise<number> {
  const a = cpuSample();
  await sleep(ms);
  const b = cpuSample();
  return b.total === a.total ? 0 : 1 - (b.idle - a.idle) / (b.total - a.total);
}

async function waitQuiet(maxSeconds: number): Promise<number> {
  let busy = await busyFraction();
  if (!WAIT_QUIET) return busy;
  const until = Date.now() + maxSeconds * 1000;
  while (busy > 0.15 && Date.now() < until) busy = await busyFraction(1000);
  return busy;
}

// ---------------------------------------------------------------------------------------------
// Targets, tunnels, workloads

let portBase = 20_000;
const ports = () => {
  portBase += 10;
  return { tcp: portBase, udp: portBase + 1, target: portBase + 2 };
};

type TargetKind = "sockperf" | "dns" | "echo";

async function startTarget(dir: string, kind: TargetKind, port: number, cap: number): Promise<Proc> {
  if (kind === "sockperf") {
    const proc = await nsStart(
      dir,
      "sockperf-sr",
      "sockperf",
      ["sr", "-i", "127.0.0.1", "-p", String(port), "--buffer-size", String(4 * 1024 * 1024)],
      cap,
    );
    await sleep(300);
    return proc;
  }
  if (kind === "echo") {
    const proc = await nsStart(dir, "udp-echo", "bun", [UDP_TOOL, "echo", String(port)], cap);
    await waitFor(proc, () => stdoutOf(proc).includes("ready"), 10_000, "echo ready");
    return proc;
  }
  const proc = await nsStart(dir, "dnsmasq", "dnsmasq", dnsmasqArgs(port), cap);
  await waitFor(
    proc,
    () =>
      sh("ip", [
        "netns",
        "exec",
        NS,
        "dig",
        "@127.0.0.1",
        "-p",
        String(port),
        "perf.mcudpt.test",
        "+short",
        "+time=1",
        "+tries=1",
      ]).out.trim() === "192.0.2.53",
    10_000,
    "dnsmasq answering",
  );
  return proc;
}

interface Tunnel {
  receiver: Proc;
  sender: Proc;
}

async function startTunnel(
  dir: string,
  config: Config,
  runtime: Runtime,
  p: { tcp: number; udp: number; target: number },
  cap: number,
): Promise<Tunnel> {
  const common = ["--secret", SECRET, "--transport", runtime, "--max-flows", "20000"];
  const receiver = await nsStart(
    dir,
    `receiver-${runtime}`,
    runtime,
    [
      DIST,
      "receiver",
      "--udp",
      `127.0.0.1:${p.udp}`,
      "--tcp",
      `127.0.0.1:${p.tcp}`,
      "--new-flow-rate",
      "0",
      ...common,
      ...(config.receiver ?? []),
    ],
    cap,
  );
  await waitFor(receiver, () => /listening/.test(stderrOf(receiver)), 15_000, "receiver listening");
  const sender = await nsStart(
    dir,
    `sender-${runtime}`,
    runtime,
    [
      DIST,
      "sender",
      "--udp",
      `127.0.0.1:${p.target}`,
      "--tcp",
      `127.0.0.1:${p.tcp}`,
      ...common,
      ...(config.sender ?? []),
    ],
    cap,
  );
  const lanes = config.lanes ?? 1;
  await waitFor(
    sender,
    () => (stderrOf(receiver).match(/ accepted/g) ?? []).length >= lanes,
    15_000,
    `${lanes} connection(s) accepted`,
  );
  await sleep(200);
  return { receiver, sender };
}

async function pingPong(dir: string, port: number): Promise<Metrics> {
  const r = await run(
    dir,
    "sockperf-pp",
    "ip",
    [
      "netns",
      "exec",
      NS,
      "sockperf",
      "ping-pong",
      "-i",
      "127.0.0.1",
      "-p",
      String(port),
      "-m",
      "64",
      "--mps",
      "2000",
      "-t",
      String(SECONDS),
      "--full-rtt",
    ],
    SECONDS + 30,
  );
  const text = r.out + r.err;
  const m = /\[Valid Duration\] RunTime=([\d.]+) sec; SentMessages=(\d+); ReceivedMessages=(\d+)/.exec(text);
  if (!m) throw new Error(`sockperf output not understood: ${text.slice(-400)}`);
  const us = (p: string) => num(new RegExp(`percentile ${p} =\\s+([\\d.]+)`), text);
  return {
    p50Ms: (us("50\\.000") ?? Number.NaN) / 1000,
    p99Ms: (us("99\\.000") ?? Number.NaN) / 1000,
    p999Ms: (us("99\\.900") ?? Number.NaN) / 1000,
    maxMs: (num(/<MAX> observation =\s+([\d.]+)/, text) ?? Number.NaN) / 1000,
    roundTrips: Number(m[3]),
    dropped: num(/# dropped messages = (\d+)/, text),
    duplicated: num(/# duplicated messages = (\d+)/, text),
    outOfOrder: num(/# out-of-order messages = (\d+)/, text),
  };
}

async function dnsperf(dir: string, port: number): Promise<Metrics> {
  const queries = join(dir, "queries.txt");
  if (!existsSync(queries)) {
    writeFileSync(queries, Array.from({ length: 1000 }, (_, i) => `q${i}.mcudpt.test A`).join("\n") + "\n");
  }
  const r = await run(
    dir,
    "dnsperf",
    "ip",
    [
      "netns",
      "exec",
      NS,
      "dnsperf",
      "-s",
      "127.0.0.1",
      "-p",
      String(port),
      "-d",
      queries,
      "-c",
      "10",
      "-l",
      String(SECONDS),
      "-t",
      "2",
    ],
    SECONDS + 30,
  );
  const { qps, latencyMs, lossPct, completed } = dnsperfSummary(r.out + r.err);
  return { qps, latencyMs, lossPct, roundTrips: completed };
}

async function flows(dir: string, port: number): Promise<Metrics> {
  const r = await run(
    dir,
    "flows",
    "ip",
    ["netns", "exec", NS, "node", FLOWS_TOOL, "127.0.0.1", String(port), "40", "50", String(SECONDS)],
    SECONDS + 30,
  );
  const line = r.out.trim().split("\n").pop() ?? "";
  try {
    const j = JSON.parse(line);
    return {
      p50Ms: j.p50Ms,
      p99Ms: j.p99Ms,
      p999Ms: j.p999Ms,
      over50Pct: j.over50Pct,
      lost: j.lost,
      duplicated: j.duplicates,
      roundTrips: j.roundTrips,
    };
  } catch {
    throw new Error(`flows output not understood: ${(r.out + r.err).slice(-400)}`);
  }
}

const TARGET_OF: Record<string, TargetKind> = { pp: "sockperf", dns: "dns", flows: "echo" };

async function measure(dir: string, config: Config, runtime: Runtime | "-", lossPct: number, workload: string) {
  const p = ports();
  const cap = SECONDS + 90;
  setLoss(p.tcp, lossPct);
  const target = await startTarget(dir, TARGET_OF[workload], p.target, cap);
  let tunnel: Tunnel | undefined;
  try {
    if (config.sender) tunnel = await startTunnel(dir, config, runtime as Runtime, p, cap);
    const port = tunnel ? p.udp : p.target;
    resetCounters();
    const metrics =
      workload === "pp"
        ? await pingPong(dir, port)
        : workload === "dns"
          ? await dnsperf(dir, port)
          : await flows(dir, port);
    // A target that died or stopped answering (ICMP unreachable toward it) spoils the measurement.
    if (target.done) throw new Error("the target exited during the measurement");
    if (tunnel && /target .*ECONNREFUSED/.test(stderrOf(tunnel.sender))) {
      throw new Error("the target stopped answering during the measurement (ICMP port unreachable)");
    }
    if (tunnel) {
      Object.assign(metrics, readTcpCounters());
      const carrier = readCounters();
      const datagrams = 2 * (metrics.roundTrips ?? 0); // a request and its reply
      if (datagrams > 0) {
        metrics.carrierPacketsPerDatagram = carrier.packets / datagrams;
        metrics.carrierBytesPerDatagram = carrier.bytes / datagrams;
      }
    }
    return metrics;
  } finally {
    if (tunnel) {
      await stop(tunnel.sender, "SIGINT", 3000);
      await stop(tunnel.receiver, "SIGINT", 3000);
    }
    await stop(target, workload === "dns" ? "SIGTERM" : "SIGINT", 3000);
  }
}

// ---------------------------------------------------------------------------------------------
// Report

const fmt = (v: number | undefined, digits = 2) =>
  v === undefined || Number.isNaN(v) ? "–" : v >= 100 ? v.toFixed(0) : v.toFixed(digits);

function report(results: Result[], meta: Record<string, unknown>): string {
  const lines: string[] = [];
  /** The median trial by the workload's primary figure (errors last). */
  const find = (c: string, rt: string, loss: number, w: string) => {
    const all = results.filter((r) => r.config === c && r.runtime === rt && r.lossPct === loss && r.workload === w);
    const key = (r: Result) =>
      r.error
        ? Number.POSITIVE_INFINITY
        : w === "dns"
          ? -(r.metrics.qps ?? 0)
          : w === "flows"
            ? (r.metrics.over50Pct ?? 0) * 1e6 + (r.metrics.p99Ms ?? 0)
            : (r.metrics.p99Ms ?? 0);
    all.sort((a, b) => key(a) - key(b));
    return all[Math.floor((all.length - 1) / 2)];
  };
  const rows: Array<[Config, Runtime | "-"]> = [];
  for (const config of CONFIGS) {
    if (!config.sender) rows.push([config, "-"]);
    else for (const rt of RUNTIMES) rows.push([config, rt]);
  }
  lines.push(
    `bench/lossy.ts, ${meta.date}, ${meta.nproc} CPUs, Bun ${meta.bun}, Node ${meta.node}, ${SECONDS} s per measurement, ${TRIALS} trial(s) each (median shown), kernel ${meta.kernel}.`,
    "Ratios (×) are to the same configuration at 0 % loss. Carrier: TCP packets / bytes on the tunnel's connections per datagram carried (0 % loss run).",
    "",
  );
  if (WORKLOADS.includes("pp")) {
    lines.push(
      "**sockperf ping-pong, 64 B, 2,000 msg/s, one flow** — p50 / p99 / p99.9 in ms (p99 ×, p99.9 × to 0 %); dup/ooo = duplicated/out-of-order messages reported by sockperf",
      "",
      `| configuration | runtime | ${LOSSES.map((l) => `${l} % loss`).join(" | ")} | dup/ooo | carrier pkts, bytes / datagram |`,
      `| --- | --- | ${LOSSES.map(() => "---").join(" | ")} | --- | --- |`,
    );
    for (const [config, rt] of rows) {
      const base = find(config.id, rt, 0, "pp")?.metrics;
      const cells = LOSSES.map((loss) => {
        const r = find(config.id, rt, loss, "pp");
        if (!r) return "";
        if (r.error) return "error";
        const m = r.metrics;
        const ratios =
          loss === 0 || !base
            ? ""
            : ` (${fmt((m.p99Ms ?? 0) / (base.p99Ms ?? 1), 1)}×, ${fmt((m.p999Ms ?? 0) / (base.p999Ms ?? 1), 1)}×)`;
        return `${fmt(m.p50Ms)} / ${fmt(m.p99Ms)} / ${fmt(m.p999Ms)}${ratios}`;
      });
      const dup = LOSSES.map((loss) => find(config.id, rt, loss, "pp")?.metrics)
        .filter(Boolean)
        .reduce((s, m) => s + (m?.duplicated ?? 0), 0);
      const ooo = LOSSES.map((loss) => find(config.id, rt, loss, "pp")?.metrics)
        .filter(Boolean)
        .reduce((s, m) => s + (m?.outOfOrder ?? 0), 0);
      const carrier = base?.carrierPacketsPerDatagram
        ? `${fmt(base.carrierPacketsPerDatagram)}, ${fmt(base.carrierBytesPerDatagram, 0)}`
        : "–";
      lines.push(`| ${config.label} | ${rt} | ${cells.join(" | ")} | ${dup}/${ooo} | ${carrier} |`);
    }
    lines.push("");
  }
  if (WORKLOADS.includes("dns")) {
    lines.push(
      "**dnsperf -c 10 against dnsmasq** — q/s (× to 0 %)",
      "",
      `| configuration | runtime | ${LOSSES.map((l) => `${l} % loss`).join(" | ")} |`,
      `| --- | --- | ${LOSSES.map(() => "---").join(" | ")} |`,
    );
    for (const [config, rt] of rows) {
      const base = find(config.id, rt, 0, "dns")?.metrics;
      const cells = LOSSES.map((loss) => {
        const r = find(config.id, rt, loss, "dns");
        if (!r) return "";
        if (r.error) return "error";
        const ratio = loss === 0 || !base ? "" : ` (${fmt((r.metrics.qps ?? 0) / (base.qps ?? 1))}×)`;
        return `${fmt(r.metrics.qps, 0)}${ratio}`;
      });
      lines.push(`| ${config.label} | ${rt} | ${cells.join(" | ")} |`);
    }
    lines.push("");
  }
  if (WORKLOADS.includes("flows")) {
    lines.push(
      "**40 concurrent ping-pong flows × 50/s, 64 B** — p99 ms / share of round trips over 50 ms (lost ones included)",
      "",
      `| configuration | runtime | ${LOSSES.map((l) => `${l} % loss`).join(" | ")} |`,
      `| --- | --- | ${LOSSES.map(() => "---").join(" | ")} |`,
    );
    for (const [config, rt] of rows) {
      const cells = LOSSES.map((loss) => {
        const r = find(config.id, rt, loss, "flows");
        if (!r) return "";
        if (r.error) return "error";
        return `${fmt(r.metrics.p99Ms)} / ${fmt(r.metrics.over50Pct, 2)} %`;
      });
      lines.push(`| ${config.label} | ${rt} | ${cells.join(" | ")} |`);
    }
    lines.push("");
  }
  const busy = results.map((r) => r.busy);
  lines.push(
    `CPU busy before measurements (other processes): median ${Math.round(median(busy) * 100)} %, max ${Math.round(Math.max(0, ...busy) * 100)} %.`,
  );
  const errors = results.filter((r) => r.error);
  for (const e of errors) lines.push(`- error: ${e.config} ${e.runtime} ${e.lossPct} % ${e.workload}: ${e.error}`);
  return lines.join("\n");
}

function median(values: number[]): number {
  if (values.length === 0) return 0;
  const s = [...values].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

// ---------------------------------------------------------------------------------------------

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error("bench/lossy.ts needs root (network namespace, nft)");
  for (const tool of ["ip", "nft", "sockperf", "dnsperf", "dnsmasq", "dig"]) {
    if (spawnSync("sh", ["-c", `command -v ${tool}`]).status !== 0) {
      log(`installing missing tools with apt-get (${tool} not found)`);
      sh("apt-get", [
        "install",
        "-y",
        "-qq",
        "sockperf",
        "dnsperf",
        "dnsmasq-base",
        "dnsutils",
        "nftables",
        "iproute2",
      ]);
      break;
    }
  }
  if (argv.includes("--build") || !existsSync(DIST)) {
    log("building the CLI");
    const b = spawnSync("bun", ["run", "build"], { cwd: ROOT, stdio: "inherit" });
    if (b.status !== 0) throw new Error("build failed");
  }
  mkdirSync(RESULTS, { recursive: true });
  const dir = mkdtempSync(join(os.tmpdir(), "mcudpt-lossy-"));
  log(`run directory ${dir}, namespace ${NS}`);
  createNamespace();
  const results: Result[] = [];
  const total =
    TRIALS * LOSSES.length * WORKLOADS.length * CONFIGS.reduce((n, c) => n + (c.sender ? RUNTIMES.length : 1), 0);
  let done = 0;
  for (let trial = 1; trial <= TRIALS; trial++)
    for (const lossPct of LOSSES) {
      for (const workload of WORKLOADS) {
        for (const config of CONFIGS) {
          for (const runtime of config.sender ? RUNTIMES : (["-"] as const)) {
            const busy = await waitQuiet(20);
            done++;
            const what = `${config.id} ${runtime} ${lossPct} % ${workload} (trial ${trial})`;
            try {
              const metrics = await measure(dir, config, runtime, lossPct, workload);
              results.push({ trial, config: config.id, runtime, lossPct, workload, metrics, busy });
              log(`[${done}/${total}] ${what}: ${JSON.stringify(metrics)}`);
            } catch (error) {
              const message = (error as Error)?.message ?? String(error);
              results.push({ trial, config: config.id, runtime, lossPct, workload, metrics: {}, busy, error: message });
              log(`[${done}/${total}] ${what}: ERROR ${message}`);
            }
          }
        }
      }
    }
  const meta = {
    date: new Date().toISOString(),
    nproc: os.cpus().length,
    bun: typeof Bun !== "undefined" ? Bun.version : "",
    node: sh("node", ["--version"]).out.trim(),
    kernel: os.release(),
    seconds: SECONDS,
  };
  const md = report(results, meta);
  writeFileSync(join(RESULTS, `${OUT}.json`), `${JSON.stringify({ ...meta, results }, null, 2)}\n`);
  writeFileSync(join(RESULTS, `${OUT}.md`), `${md}\n`);
  process.stdout.write(`${md}\n`);
}

const watchdog = setTimeout(
  () => {
    log("watchdog: giving up");
    cleanup();
    process.exit(2);
  },
  (TRIALS * LOSSES.length * WORKLOADS.length * 10 * (SECONDS + 40) + 300) * 1000,
);
watchdog.unref?.();
for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
  process.on(sig, () => {
    log(`${sig}: cleaning up`);
    cleanup();
    process.exit(130);
  });
}
process.on("exit", cleanup);
main().then(
  () => {
    cleanup();
    process.exit(0);
  },
  (error) => {
    log(`failed: ${(error as Error)?.stack ?? error}`);
    cleanup();
    process.exit(1);
  },
);
