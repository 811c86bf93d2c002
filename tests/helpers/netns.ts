/**
 * Network namespaces a test creates for itself (root only), for topologies loopback cannot show:
 * several hosts, routers, the kernel's NAT. Nothing touches the machine's own namespace: veth pairs
 * are created inside the test's namespaces, addresses live there only.
 *
 * Names are `mcudpt-t<pid>-<tag>-<short>`. Clean-up runs on every exit path: `cleanup()` (call it
 * from an after() hook) stops the processes started in them and deletes them; a process exit
 * without it (a failed assertion escaping, the runner's timeout) deletes them synchronously; and
 * namespaces left by a test process that no longer exists (killed with SIGKILL) are deleted by the
 * next test that creates any.
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { has } from "./cli-process.ts";

const PREFIX = "mcudpt-t";

const PACKAGE: Record<string, string> = { ip: "iproute2", nft: "nftables" };

/** Why namespace tests cannot run here (not root, a tool missing, no namespaces), or undefined. */
export function netnsUnavailable(tools: string[] = ["ip"]): string | undefined {
  if (process.platform !== "linux") return "network namespaces are Linux only";
  if (process.getuid?.() !== 0) return "needs root: it creates network namespaces";
  for (const tool of tools) {
    if (!has(tool)) return `needs ${tool} (apt-get install ${PACKAGE[tool] ?? tool})`;
  }
  const probe = `${PREFIX}${process.pid}-probe`;
  const added = spawnSync("ip", ["netns", "add", probe], { encoding: "utf8" });
  if (added.status !== 0) return `cannot create a network namespace: ${oneLine(added.stderr)}`;
  spawnSync("ip", ["netns", "del", probe]);
  return undefined;
}

/** Why `ruleset` does not load into nftables here (say, no jhash support), or undefined. */
export function nftUnavailable(ruleset: string): string | undefined {
  const probe = `${PREFIX}${process.pid}-nftprobe`;
  const added = spawnSync("ip", ["netns", "add", probe], { encoding: "utf8" });
  if (added.status !== 0) return `cannot create a network namespace: ${oneLine(added.stderr)}`;
  try {
    const loaded = spawnSync("ip", ["netns", "exec", probe, "nft", "-f", "-"], { input: ruleset, encoding: "utf8" });
    if (loaded.status !== 0) return `nftables cannot load the rules here: ${oneLine(loaded.stderr)}`;
    return undefined;
  } finally {
    spawnSync("ip", ["netns", "del", probe]);
  }
}

function oneLine(text: string): string {
  return text.trim().replace(/\s*\n\s*/g, " | ");
}

export interface NsProcess {
  child: ChildProcess;
  stdout(): string;
  stderr(): string;
  exited: Promise<number | null>;
}

export class Namespaces {
  private readonly names: string[] = [];
  private readonly processes = new Set<NsProcess>();
  private readonly onExit = () => this.cleanupSync();

  constructor(private readonly tag: string) {
    removeStale();
    process.on("exit", this.onExit);
  }

  /** A new namespace with its loopback up; returns its full name. */
  add(short: string): string {
    const name = `${PREFIX}${process.pid}-${this.tag}-${short}`;
    run("ip", ["netns", "add", name]);
    this.names.push(name);
    run("ip", ["-n", name, "link", "set", "lo", "up"]);
    return name;
  }

  /**
   * A veth pair from `a` (interface `aName`, address `aAddress` as CIDR) to `b`, both ends up. Made
   * inside `a` and its peer moved straight to `b`: never in the machine's own namespace.
   */
  link(a: string, aName: string, aAddress: string, b: string, bName: string, bAddress: string): void {
    run("ip", ["-n", a, "link", "add", aName, "type", "veth", "peer", "name", bName, "netns", b]);
    for (const [ns, dev, address] of [
      [a, aName, aAddress],
      [b, bName, bAddress],
    ]) {
      run("ip", ["-n", ns, "addr", "add", address, "dev", dev]);
      run("ip", ["-n", ns, "link", "set", dev, "up"]);
    }
  }

  /** Runs a command in `ns` to completion; throws with its stderr when it fails. */
  exec(ns: string, command: string, args: string[], input?: string): string {
    return run("ip", ["netns", "exec", ns, command, ...args], input);
  }

  /** Starts a long-running command in `ns` (`ip netns exec` execs it: the child's pid is the command's). */
  spawn(ns: string, command: string, args: string[], env: NodeJS.ProcessEnv = {}): NsProcess {
    const child = spawn("ip", ["netns", "exec", ns, command, ...args], {
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, ...env },
    });
    let stdout = "";
    let stderr = "";
    child.stdout?.on("data", (d) => {
      stdout += d;
    });
    child.stderr?.on("data", (d) => {
      stderr += d;
      if (process.env.MCUDPT_TEST_LOGS) process.stderr.write(`[${ns} ${command} ${child.pid}] ${d}`);
    });
    const running: NsProcess = {
      child,
      stdout: () => stdout,
      stderr: () => stderr,
      exited: new Promise((resolve) => child.on("close", (code) => resolve(code))),
    };
    this.processes.add(running);
    void running.exited.then(() => this.processes.delete(running));
    return running;
  }

  /** Stops what was started in the namespaces (SIGTERM, then SIGKILL after a bounded wait) and deletes them. */
  async cleanup(): Promise<void> {
    const running = [...this.processes];
    for (const p of running) p.child.kill("SIGTERM");
    await Promise.race([
      Promise.all(running.map((p) => p.exited)),
      new Promise((resolve) => setTimeout(resolve, 5_000)),
    ]);
    this.cleanupSync();
  }

  /** SIGKILLs whatever still runs in them, deletes them. Safe to call again. */
  cleanupSync(): void {
    for (const p of this.processes)
      if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill("SIGKILL");
    for (const name of this.names.splice(0)) deleteNamespace(name);
    process.off("exit", this.onExit);
  }
}

function run(command: string, args: string[], input?: string): string {
  const result = spawnSync(command, args, { input, encoding: "utf8", timeout: 30_000 });
  if (result.status !== 0) {
    throw new Error(`${command} ${args.join(" ")} failed (${result.status ?? result.signal}): ${result.stderr.trim()}`);
  }
  return result.stdout;
}

/** Kills the processes left inside a namespace of ours (by pid), then deletes it. */
function deleteNamespace(name: string): void {
  const pids = spawnSync("ip", ["netns", "pids", name], { encoding: "utf8" }).stdout ?? "";
  for (const pid of pids.split(/\s+/).filter(Boolean)) {
    try {
      process.kill(Number(pid), "SIGKILL");
    } catch {
      // already gone
    }
  }
  spawnSync("ip", ["netns", "del", name]);
}

/** Namespaces of test processes that are gone (they were SIGKILLed before their clean-up ran). */
function removeStale(): void {
  const list = spawnSync("ip", ["netns", "list"], { encoding: "utf8" }).stdout ?? "";
  for (const line of list.split("\n")) {
    const name = line.split(" ")[0];
    const pid = new RegExp(`^${PREFIX}(\\d+)-`).exec(name)?.[1];
    if (pid === undefined || Number(pid) === process.pid || alive(Number(pid))) continue;
    deleteNamespace(name);
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}
