/**
 * Child processes for bench/perf.ts: every one runs under `timeout -s KILL` (so nothing outlives a
 * crashed benchmark for long), logs to files in the run directory, and is tracked so that exit, a
 * signal or the watchdog kills whatever is left, by pid.
 */
import { spawn, spawnSync } from "node:child_process";
import dgram from "node:dgram";
import { closeSync, existsSync, openSync, readdirSync, readFileSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";

export interface Proc {
  name: string;
  /** pid of the `timeout` wrapper. */
  wrapperPid: number;
  /** pid of the program itself (child of the wrapper): signals and /proc readings go here. */
  pid: number;
  stdoutPath: string;
  stderrPath: string;
  exited: Promise<number | null>;
  done: boolean;
}

const live = new Set<Proc>();
let counter = 0;

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export function has(cmd: string): boolean {
  return spawnSync("sh", ["-c", `command -v ${cmd}`], { stdio: "ignore" }).status === 0;
}

/** Starts `cmd args` under `timeout`, bounded by `capSeconds`. */
export async function start(
  dir: string,
  name: string,
  cmd: string,
  args: string[],
  capSeconds: number,
  env?: Record<string, string>,
): Promise<Proc> {
  const id = `${String(++counter).padStart(3, "0")}-${name}`;
  const stdoutPath = join(dir, `${id}.out`);
  const stderrPath = join(dir, `${id}.err`);
  const out = openSync(stdoutPath, "w");
  const err = openSync(stderrPath, "w");
  const child = spawn("timeout", ["-s", "KILL", String(Math.ceil(capSeconds)), cmd, ...args], {
    stdio: ["ignore", out, err],
    env: { ...process.env, ...env },
  });
  closeSync(out);
  closeSync(err);
  const wrapperPid = child.pid as number;
  const proc: Proc = {
    name,
    wrapperPid,
    pid: wrapperPid,
    stdoutPath,
    stderrPath,
    done: false,
    exited: new Promise((resolve) => child.once("exit", (code) => resolve(code))),
  };
  proc.exited.then(() => {
    proc.done = true;
    live.delete(proc);
  });
  live.add(proc);
  // The wrapper forks the program at once; find its pid.
  for (let i = 0; i < 200 && !proc.done; i++) {
    const kids = readChildren(wrapperPid);
    if (kids.length > 0) {
      proc.pid = kids[0];
      break;
    }
    await sleep(5);
  }
  return proc;
}

function readChildren(pid: number): number[] {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

export function stdoutOf(proc: Proc): string {
  return existsSync(proc.stdoutPath) ? readFileSync(proc.stdoutPath, "utf8") : "";
}

export function stderrOf(proc: Proc): string {
  return existsSync(proc.stderrPath) ? readFileSync(proc.stderrPath, "utf8") : "";
}

/** Polls until `test` holds, the process exits or `ms` pass. */
export async function waitFor(proc: Proc, test: () => boolean, ms: number, what: string): Promise<void> {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    if (test()) return;
    if (proc.done)
      throw new Error(`${proc.name} exited while waiting for ${what}: ${tail(stderrOf(proc))}${tail(stdoutOf(proc))}`);
    await sleep(10);
  }
  throw new Error(`timed out after ${ms} ms waiting for ${what} (${proc.name}): ${tail(stderrOf(proc))}`);
}

function tail(text: string): string {
  return text.trim().split("\n").slice(-5).join(" | ");
}

function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {}
}

/** Sends `sig` to the program, waits up to `graceMs` for it to exit, then SIGKILLs program and wrapper. */
export async function stop(proc: Proc, sig: NodeJS.Signals = "SIGINT", graceMs = 3000): Promise<number | null> {
  if (!proc.done) {
    signal(proc.pid, sig);
    const timer = sleep(graceMs).then(() => "timeout" as const);
    if ((await Promise.race([proc.exited, timer])) === "timeout") {
      // Kill the program and let the wrapper reap it (no zombie left to init); then the wrapper.
      signal(proc.pid, "SIGKILL");
      if ((await Promise.race([proc.exited, sleep(1000).then(() => "timeout" as const)])) === "timeout") {
        signal(proc.wrapperPid, "SIGKILL");
      }
    }
  }
  return proc.exited;
}

/** Kills everything still running (exit, signals, watchdog). Synchronous. */
export function killAll(): void {
  for (const proc of live) {
    signal(proc.pid, "SIGKILL");
    signal(proc.wrapperPid, "SIGKILL");
  }
  live.clear();
}

/** Runs a command to completion (bounded), returning its stdout+stderr. */
export async function run(
  dir: string,
  name: string,
  cmd: string,
  args: string[],
  capSeconds: number,
): Promise<{ code: number | null; out: string; err: string }> {
  const proc = await start(dir, name, cmd, args, capSeconds);
  const code = await proc.exited;
  return { code, out: stdoutOf(proc), err: stderrOf(proc) };
}

/** Resident set size in bytes, from /proc/PID/status. */
export function rssBytes(pid: number): number | undefined {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return m ? Number(m[1]) * 1024 : undefined;
  } catch {
    return undefined;
  }
}

/** CPU seconds (user + system) consumed so far, from /proc/PID/stat. */
export function cpuSeconds(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(fields[11]) + Number(fields[12])) / 100; // utime, stime in clock ticks (USER_HZ 100)
  } catch {
    return undefined;
  }
}

/** A port free on 127.0.0.1 for `kind` at the time of asking. */
export async function freePort(kind: "udp" | "tcp" | "both"): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const port = kind === "tcp" ? await tcpPort(0) : await udpPort(0);
    if (kind !== "both") return port;
    if ((await tcpPort(port).catch(() => 0)) === port) return port;
  }
  throw new Error("no free port");
}

function udpPort(port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = dgram.createSocket("udp4");
    s.once("error", reject);
    s.bind(port, "127.0.0.1", () => {
      const p = s.address().port;
      s.close(() => resolve(p));
    });
  });
}

function tcpPort(port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(port, "127.0.0.1", () => {
      const p = (s.address() as { port: number }).port;
      s.close(() => resolve(p));
    });
  });
}

/** CPU ticks (USER_HZ) used so far by every process that is not `root` or one of its descendants. */
export function othersTicks(root = process.pid): Map<number, number> {
  const stats: Array<{ pid: number; ppid: number; ticks: number }> = [];
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, "utf8");
      const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      // utime + stime, plus cutime + cstime: short-lived children that exit meanwhile count for their parent.
      stats.push({
        pid: Number(name),
        ppid: Number(f[1]),
        ticks: Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14]),
      });
    } catch {}
  }
  const children = new Map<number, number[]>();
  for (const s of stats) children.set(s.ppid, [...(children.get(s.ppid) ?? []), s.pid]);
  const mine = new Set<number>([root]);
  const stack = [root];
  while (stack.length > 0) {
    for (const c of children.get(stack.pop() as number) ?? []) {
      if (!mine.has(c)) {
        mine.add(c);
        stack.push(c);
      }
    }
  }
  const out = new Map<number, number>();
  for (const s of stats) if (!mine.has(s.pid) && s.pid !== 1) out.set(s.pid, s.ticks);
  return out;
}

/**
 * Share of the machine (0..1 of all CPUs) used by other processes between two othersTicks() snapshots.
 * Processes that started and ended in between are missed; ones that started are counted in full.
 */
export function othersShare(
  before: Map<number, number>,
  after: Map<number, number>,
  seconds: number,
  cpus: number,
): number {
  let ticks = 0;
  for (const [pid, t] of after) ticks += t - (before.get(pid) ?? 0);
  return Math.max(0, ticks / 100 / seconds / cpus);
}

/**
 * Arguments for a dnsmasq that answers one local name (mcudpt.test → 192.0.2.53) from memory on
 * 127.0.0.1:`port`, in the foreground, with no upstream: the DNS target every bench uses.
 */
export function dnsmasqArgs(port: number): string[] {
  return [
    "-k",
    "--conf-file=/dev/null",
    `--port=${port}`,
    "--listen-address=127.0.0.1",
    "--bind-interfaces",
    "--no-resolv",
    "--no-hosts",
    "--address=/mcudpt.test/192.0.2.53",
    "--pid-file=",
    "--user=root",
    "--cache-size=1000",
  ];
}

/**
 * Runs `cleanup` on every exit path of a bench (normal exit, SIGINT/SIGTERM/SIGHUP with exit 130, and
 * a watchdog after `watchdogMs` with exit `watchdogCode`). Returns the watchdog, to clear on success.
 */
export function cleanupOnExit(
  cleanup: () => void,
  watchdogMs: number,
  onWatchdog: () => void,
  watchdogCode = 3,
): ReturnType<typeof setTimeout> {
  const watchdog = setTimeout(() => {
    onWatchdog();
    cleanup();
    process.exit(watchdogCode);
  }, watchdogMs);
  watchdog.unref?.();
  for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
    process.on(sig, () => {
      cleanup();
      process.exit(130);
    });
  }
  process.on("exit", () => cleanup());
  return watchdog;
}

/** The first group of `re` in `text` as a number, or undefined when it does not match. */
export const num = (re: RegExp, text: string): number | undefined => {
  const m = re.exec(text);
  return m ? Number(m[1]) : undefined;
};

/** What every bench reads of a dnsperf run's summary; throws when the output is not one. */
export function dnsperfSummary(text: string): {
  qps: number;
  latencyMs: number;
  lossPct: number | undefined;
  sent: number | undefined;
  completed: number | undefined;
} {
  const qps = num(/Queries per second:\s+([\d.]+)/, text);
  if (qps === undefined) throw new Error(`dnsperf output not understood: ${text.slice(-400)}`);
  return {
    qps,
    latencyMs: (num(/Average Latency \(s\):\s+([\d.]+)/, text) ?? Number.NaN) * 1000,
    lossPct: num(/Queries lost:\s+\d+ \(([\d.]+)%\)/, text),
    sent: num(/Queries sent:\s+(\d+)/, text),
    completed: num(/Queries completed:\s+(\d+)/, text),
  };
}
