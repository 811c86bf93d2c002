/**
 * The built CLI as child processes, for the end-to-end suites: spawn under node or bun (the child's
 * pid is the runtime process itself), capture stderr, stop with a signal and a bounded wait, count
 * open file descriptors, plus loopback UDP helpers on node:dgram. Loopback only, ephemeral ports.
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { createSocket, type Socket as UdpSocket } from "node:dgram";
import { readdirSync, readFileSync } from "node:fs";
import { createServer } from "node:net";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { scratchDir } from "./scratch.ts";

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
export const CLI = join(ROOT, "apps", "cli", "dist", "mcudpt.js");
export const RUNTIMES = ["node", "bun"] as const;
export type Runtime = (typeof RUNTIMES)[number];

export function has(command: string): boolean {
  return spawnSync("sh", ["-c", `command -v ${command}`]).status === 0;
}

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface CliProcess {
  child: ChildProcess;
  pid: number;
  stderr: () => string;
  /** What it wrote to stdout (the operator's questions), when started with `stdout: true`. */
  stdout: () => string;
  /** Lines of stderr matching `pattern`. */
  count(pattern: RegExp): number;
  exited: Promise<Exit>;
  /** Set once the process has exited. */
  exit: Exit | undefined;
}

const children = new Set<ChildProcess>();

/** SIGKILLs every child still running (call from an after() hook). */
export function killAll(): void {
  for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  children.clear();
}

/**
 * `io.stdin`: "ignore" (/dev/null, the default), "pipe" (answers written by the test; `child.stdin`),
 * or "closed" (a pipe closed at once: end of file before any question). `io.stdout`: capture stdout.
 */
export function startCli(
  runtime: Runtime,
  args: string[],
  env: NodeJS.ProcessEnv = {},
  io: { stdin?: "ignore" | "pipe" | "closed"; stdout?: boolean } = {},
): CliProcess {
  const child = spawn(runtime, [CLI, ...args], {
    stdio: [io.stdin === undefined || io.stdin === "ignore" ? "ignore" : "pipe", io.stdout ? "pipe" : "ignore", "pipe"],
    // A fresh config dir per process unless given: keys and trust files never touch the real ~/.config.
    env: { ...process.env, MCUDPT_SECRET: "", MCUDPT_CONFIG_DIR: scratchDir("mcudpt-e2e-"), ...env },
  });
  children.add(child);
  child.stdin?.on("error", () => {}); // EPIPE once the child is gone
  if (io.stdin === "closed") child.stdin?.end();
  let stdout = "";
  child.stdout?.on("data", (d) => {
    stdout += d;
  });
  let stderr = "";
  child.stderr?.on("data", (d) => {
    stderr += d;
    if (process.env.MCUDPT_TEST_LOGS) process.stderr.write(`[${runtime} ${child.pid}] ${d}`);
  });
  const running: CliProcess = {
    child,
    pid: child.pid as number,
    stderr: () => stderr,
    stdout: () => stdout,
    count: (pattern) => stderr.split("\n").filter((line) => pattern.test(line)).length,
    exited: new Promise<Exit>((resolve) =>
      child.on("exit", (code, signal) => {
        children.delete(child);
        running.exit = { code, signal };
        resolve(running.exit);
      }),
    ),
    exit: undefined,
  };
  return running;
}

/** Sends `signal` and waits (bounded) for the exit; SIGKILLs and throws if it does not come. */
export async function stopWith(running: CliProcess, signal: NodeJS.Signals, timeoutMs = 10_000): Promise<Exit> {
  running.child.kill(signal);
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<"timeout">((r) => (timer = setTimeout(() => r("timeout"), timeoutMs)));
  const result = await Promise.race([running.exited, timeout]);
  clearTimeout(timer);
  if (result === "timeout") {
    running.child.kill("SIGKILL");
    throw new Error(`pid ${running.pid} did not exit within ${timeoutMs} ms of ${signal}\n${running.stderr()}`);
  }
  return result;
}

export async function eventually(
  condition: () => boolean,
  what: string | (() => string),
  timeoutMs = 10_000,
): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > until)
      throw new Error(`timed out after ${timeoutMs} ms waiting for: ${typeof what === "string" ? what : what()}`);
    await sleep(20);
  }
}

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Open file descriptors of a process (Linux /proc). */
export function fdCount(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

/**
 * A port that is free on 127.0.0.1 for `kind`, chosen below the kernel's ephemeral range: a port
 * released here and bound by a child process a moment later cannot be taken meanwhile by some other
 * program's ephemeral socket (a busy machine opens thousands). Falls back to an ephemeral port.
 */
export async function freePort(kind: "udp" | "tcp"): Promise<number> {
  const low = ephemeralLow();
  const from = Math.max(10_000, low - 12_000);
  for (let attempt = 0; attempt < 50; attempt++) {
    const port = from + Math.floor(Math.random() * (low - from));
    if (await canBind(kind, port)) return port;
  }
  return bindAndRelease(kind, 0);
}

function ephemeralLow(): number {
  try {
    const low = Number(readFileSync("/proc/sys/net/ipv4/ip_local_port_range", "utf8").trim().split(/\s+/)[0]);
    return Number.isInteger(low) && low > 12_000 ? low : 32_768;
  } catch {
    return 32_768;
  }
}

async function canBind(kind: "udp" | "tcp", port: number): Promise<boolean> {
  try {
    await bindAndRelease(kind, port);
    return true;
  } catch {
    return false;
  }
}

async function bindAndRelease(kind: "udp" | "tcp", port: number): Promise<number> {
  if (kind === "tcp") {
    const server = createServer();
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(port, "127.0.0.1", resolve);
    });
    const bound = (server.address() as { port: number }).port;
    await new Promise((r) => server.close(r));
    return bound;
  }
  const socket = createSocket("udp4");
  try {
    await new Promise<void>((resolve, reject) => {
      socket.once("error", reject);
      socket.bind(port, "127.0.0.1", resolve);
    });
    return socket.address().port;
  } finally {
    try {
      socket.close();
    } catch {
      // never bound: nothing to close
    }
  }
}

/** A UDP echo target on loopback. */
export async function startEcho(): Promise<UdpSocket> {
  const socket = createSocket("udp4");
  socket.on("message", (msg, rinfo) => socket.send(msg, rinfo.port, rinfo.address));
  await new Promise<void>((r) => socket.bind(0, "127.0.0.1", r));
  return socket;
}

/**
 * A one-shot client: a fresh socket sends `message` to 127.0.0.1:port (again every `resendMs` while
 * no reply came: UDP may lose one while a flow opens), returns the first reply, closes. Bounded.
 */
export async function udpRequest(port: number, message: string, timeoutMs = 10_000, resendMs = 200): Promise<string> {
  const socket = createSocket("udp4");
  await new Promise<void>((r) => socket.bind(0, "127.0.0.1", r));
  let resend: ReturnType<typeof setInterval> | undefined;
  let deadline: ReturnType<typeof setTimeout> | undefined;
  try {
    return await new Promise<string>((resolve, reject) => {
      resend = setInterval(() => socket.send(message, port, "127.0.0.1"), resendMs);
      deadline = setTimeout(
        () => reject(new Error(`no UDP reply to "${message}" on port ${port} within ${timeoutMs} ms`)),
        timeoutMs,
      );
      socket.on("message", (msg) => resolve(msg.toString()));
      socket.send(message, port, "127.0.0.1");
    });
  } finally {
    clearInterval(resend);
    clearTimeout(deadline);
    socket.close();
  }
}
