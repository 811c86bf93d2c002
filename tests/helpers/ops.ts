/**
 * Helpers for the operations suites: any command as a child process (the compiled binary, npx, a
 * pty wrapper), scraping a metrics endpoint (with curl when the machine has it, as an operator
 * would), and reading a sample out of Prometheus text. Loopback only.
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { has } from "./cli-process.js";

export interface Proc {
  child: ChildProcess;
  stdout: () => string;
  stderr: () => string;
  exited: Promise<number | null>;
  exitCode: () => number | null | undefined;
}

const running = new Set<ChildProcess>();

export function killProcs(): void {
  for (const child of running) if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  running.clear();
}

export function startProc(
  command: string,
  args: string[],
  options: { env?: NodeJS.ProcessEnv; cwd?: string } = {},
): Proc {
  const child = spawn(command, args, {
    cwd: options.cwd,
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, MCUDPT_SECRET: "", ...options.env },
  });
  running.add(child);
  let stdout = "";
  let stderr = "";
  let code: number | null | undefined;
  child.stdout?.on("data", (d) => (stdout += d));
  child.stderr?.on("data", (d) => (stderr += d));
  const exited = new Promise<number | null>((resolve) =>
    child.on("exit", (exitCode) => {
      running.delete(child);
      code = exitCode;
      resolve(exitCode);
    }),
  );
  return { child, stdout: () => stdout, stderr: () => stderr, exited, exitCode: () => code };
}

/** Waits (bounded) for exit after `signal`; SIGKILLs and throws when it does not come. */
export async function stopProc(
  proc: Proc,
  signal: NodeJS.Signals = "SIGTERM",
  timeoutMs = 10_000,
): Promise<number | null> {
  proc.child.kill(signal);
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<"timeout">((r) => (timer = setTimeout(() => r("timeout"), timeoutMs)));
  const result = await Promise.race([proc.exited, timeout]);
  clearTimeout(timer);
  if (result === "timeout") {
    proc.child.kill("SIGKILL");
    throw new Error(`did not exit within ${timeoutMs} ms of ${signal}\n${proc.stderr()}`);
  }
  return result;
}

/** GET `url` with curl (what an operator runs) or fetch when curl is missing. */
export async function scrape(url: string): Promise<string> {
  if (has("curl")) {
    const result = spawnSync("curl", ["-fsS", "--max-time", "5", url], { encoding: "utf8" });
    if (result.status !== 0) throw new Error(`curl ${url} failed: ${result.stderr}`);
    return result.stdout;
  }
  const response = await fetch(url, { signal: AbortSignal.timeout(5000) });
  if (!response.ok) throw new Error(`GET ${url}: ${response.status}`);
  return response.text();
}

/** The value of sample `name{labels}` in Prometheus text, or undefined. */
export function sample(text: string, name: string, labels = ""): number | undefined {
  const wanted = labels ? `${name}{${labels}}` : name;
  for (const line of text.split("\n")) {
    if (line.startsWith("#")) continue;
    const space = line.lastIndexOf(" ");
    if (line.slice(0, space) === wanted) return Number(line.slice(space + 1));
  }
  return undefined;
}

/** The metrics URL a process logged at start ("metrics at http://…/metrics"). */
export function metricsUrl(log: string): string | undefined {
  return /metrics at (http:\/\/[^\s"]+)/.exec(log)?.[1];
}
