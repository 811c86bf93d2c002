#!/usr/bin/env node
/**
 * The npm package's `mcudpt` command. The CLI itself (dist/mcudpt.js) runs on Node and on Bun; this
 * launcher picks the runtime the user asked for:
 * - `npx mcudpt`, a global npm install, `node …`: runs in this Node process (no Bun needed).
 * - `bunx mcudpt`, `bun run` scripts: bunx honours the `#!/usr/bin/env node` line and starts Node, so
 *   when the package manager says it is Bun (npm_config_user_agent "bun/…") the CLI is re-run under
 *   Bun, found next to the bunx that started us. `bunx --bun mcudpt` already runs this file on Bun.
 * MCUDPT_RUNTIME=node keeps Node even under bunx.
 *
 * Signals. When the CLI runs in a child, this process stays until the child exits and then exits the
 * same way (its code, or its signal): SIGINT, SIGTERM, SIGHUP, SIGUSR1 and SIGUSR2 sent to this pid are
 * passed on, except a SIGINT that the terminal sent (Ctrl-C reaches the whole foreground process group,
 * the child included: passing it on too would be a second Ctrl-C, which means "exit at once").
 * Package runners stand between the user and this process and do not all pass signals on (npm exec
 * runs us under `sh -c`, which passes none; bunx dies of SIGUSR1): when the runner that started us
 * exits, the CLI is stopped as SIGTERM stops it (goodbye to the peer) rather than left running
 * orphaned. Services should run the binary or `node …/dist/mcudpt.js` directly (docs/operations.md).
 */
import { spawn } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { constants } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const cli = join(dirname(fileURLToPath(import.meta.url)), "..", "dist", "mcudpt.js");
const onBun = typeof globalThis.Bun !== "undefined";
const askedForBun = /^bun\//.test(process.env.npm_config_user_agent ?? "") && process.env.MCUDPT_RUNTIME !== "node";
const FORWARDED =
  process.platform === "win32" ? ["SIGINT", "SIGTERM"] : ["SIGINT", "SIGTERM", "SIGHUP", "SIGUSR1", "SIGUSR2"];
/** How often to look whether the package runner that started us is still there. */
const RUNNER_CHECK_MS = 1000;

/** The bun executable beside the bunx/bun that ran us, else the one on PATH. */
function findBun() {
  const execPath = process.env.npm_execpath;
  if (execPath) {
    for (const name of ["bun", "bun.exe"]) {
      const candidate = join(dirname(execPath), name);
      if (existsSync(candidate)) return candidate;
    }
  }
  return "bun";
}

/**
 * Whether this process is in its terminal's foreground process group, where a Ctrl-C reaches every
 * process at once (Linux: fields pgrp and tpgid of /proc/self/stat). Elsewhere: whether stdin is a
 * terminal, the best guess without /proc.
 */
function inForegroundGroup() {
  try {
    const stat = readFileSync("/proc/self/stat", "utf8");
    // After "pid (comm) ": state ppid pgrp session tty_nr tpgid …; comm may hold spaces and parentheses.
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return Number(fields[5]) > 0 && fields[5] === fields[2];
  } catch {
    return process.stdin.isTTY === true;
  }
}

/**
 * Started by a package runner (npx/npm exec, bunx, `npm run`, `bun run`: they set
 * npm_config_user_agent): calls `gone` once the process that started us has exited, which a
 * changed parent pid shows (we were handed to init or a subreaper). Never keeps the event loop alive.
 */
function watchRunner(gone) {
  if (!process.env.npm_config_user_agent) return;
  const parent = process.ppid;
  const timer = setInterval(() => {
    if (process.ppid === parent) return;
    clearInterval(timer);
    gone(parent);
  }, RUNNER_CHECK_MS);
  timer.unref();
}

function runnerGoneLine(pid) {
  return `mcudpt: the package runner that started it (pid ${pid}) has exited: stopping as for SIGTERM\n`;
}

/** Exits as the child did: with its code, or by the same signal (as a shell reports `kill -TERM`). */
function exitLike(code, signal, handlers) {
  if (!signal) process.exit(code ?? 1);
  for (const [name, handler] of Object.entries(handlers)) process.off(name, handler);
  // Node opens its inspector on SIGUSR1 instead of dying: report that one as a shell would.
  if (signal !== "SIGUSR1") process.kill(process.pid, signal);
  process.exit(128 + (constants.signals[signal] ?? 0));
}

if (onBun || !askedForBun) {
  watchRunner((pid) => {
    process.stderr.write(runnerGoneLine(pid));
    process.kill(process.pid, "SIGTERM");
  });
  await import(cli);
} else {
  const child = spawn(findBun(), [cli, ...process.argv.slice(2)], { stdio: "inherit" });
  const handlers = {};
  for (const signal of FORWARDED) {
    handlers[signal] = () => {
      if (signal === "SIGINT" && inForegroundGroup()) return; // the terminal's Ctrl-C: the child has it too
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    };
    process.on(signal, handlers[signal]);
  }
  watchRunner((pid) => {
    process.stderr.write(runnerGoneLine(pid));
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
  });
  child.on("error", async () => {
    // No Bun after all (bunx run from some other install): Node runs it rather than nothing.
    for (const [signal, handler] of Object.entries(handlers)) process.off(signal, handler);
    await import(cli);
  });
  child.on("exit", (code, signal) => exitLike(code, signal, handlers));
}
