#!/usr/bin/env node
/**
 * The npm package's `mcudpt` command. The CLI itself (dist/mcudpt.js) runs on Node and on Bun; this
 * launcher picks the runtime the user asked for:
 * - `npx mcudpt`, a global npm install, `node …`: runs in this Node process (no Bun needed).
 * - `bunx mcudpt`, `bun run` scripts: bunx honours the `#!/usr/bin/env node` line and starts Node, so
 *   when the package manager says it is Bun (npm_config_user_agent "bun/…") the CLI is re-run under
 *   Bun, found next to the bunx that started us. `bunx --bun mcudpt` already runs this file on Bun.
 * MCUDPT_RUNTIME=node keeps Node even under bunx.
 */
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const cli = join(dirname(fileURLToPath(import.meta.url)), "..", "dist", "mcudpt.js");
const onBun = typeof globalThis.Bun !== "undefined";
const askedForBun = /^bun\//.test(process.env.npm_config_user_agent ?? "") && process.env.MCUDPT_RUNTIME !== "node";

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

if (onBun || !askedForBun) {
  await import(cli);
} else {
  const child = spawn(findBun(), [cli, ...process.argv.slice(2)], { stdio: "inherit" });
  // Ctrl-C reaches the child directly (same process group); signals sent to this pid are passed on.
  const forward = (signal) => () => child.kill(signal);
  const handlers = { SIGTERM: forward("SIGTERM"), SIGHUP: forward("SIGHUP"), SIGINT: () => {} };
  if (process.platform !== "win32") handlers.SIGUSR1 = forward("SIGUSR1");
  for (const [signal, handler] of Object.entries(handlers)) process.on(signal, handler);
  child.on("error", async () => {
    // No Bun after all (bunx run from some other install): Node runs it rather than nothing.
    for (const [signal, handler] of Object.entries(handlers)) process.off(signal, handler);
    await import(cli);
  });
  child.on("exit", (code, signal) => {
    if (signal) {
      for (const [name, handler] of Object.entries(handlers)) process.off(name, handler);
      process.kill(process.pid, signal);
    } else {
      process.exit(code ?? 1);
    }
  });
}
