/**
 * The npm package's launcher (apps/cli/bin/mcudpt.js) as processes. Re-running the CLI on Bun (what
 * `bunx mcudpt` does), it stays until the CLI exits, passes on SIGUSR1, SIGUSR2, SIGINT, SIGHUP (a
 * reload) and SIGTERM sent to its own pid, and exits as the CLI did; when the package runner that started it
 * exits (npm exec's `sh -c`, bunx), the CLI says goodbye and exits rather than running on orphaned.
 * Needs `bun run build` first; loopback only.
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { eventually, freePort, has, ROOT, startEcho, udpRequest } from "../helpers/cli-process.js";
import { killProcs, type Proc, startProc } from "../helpers/ops.js";

const LAUNCHER = join(ROOT, "apps", "cli", "bin", "mcudpt.js");
const SECRET = "launcher-test-secret";
const TIMEOUT = { timeout: 60_000 };
/** What bunx puts in the environment (the launcher then re-runs the CLI on Bun). */
const UNDER_BUNX = { npm_config_user_agent: "bun/1.4.5 npm/? node/v20.0.0 linux x64", npm_execpath: "" };
const UNDER_NPX = { npm_config_user_agent: "npm/11.0.0 node/v20.0.0 linux x64 workspaces/false" };

const scratch = mkdtempSync(join(tmpdir(), "mcudpt-launcher-"));
const spawned = new Set<ChildProcess>();
after(() => {
  killProcs();
  for (const child of spawned) if (child.exitCode === null) child.kill("SIGKILL");
  rmSync(scratch, { recursive: true, force: true });
});

function alive(pid: number): boolean {
  try {
    // A zombie (exited, not yet reaped) is not running.
    return !/^\S+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, "utf8"));
  } catch {
    return false;
  }
}

/** The pids of `pid`'s children (Linux /proc). */
function childrenOf(pid: number): number[] {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

async function receiverPorts() {
  return { udp: await freePort("udp"), tcp: await freePort("tcp") };
}

function receiverArgs(ports: { udp: number; tcp: number }): string[] {
  return ["receiver", "--udp", `127.0.0.1:${ports.udp}`, "--tcp", `127.0.0.1:${ports.tcp}`, "--secret", SECRET];
}

function env(extra: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  return { MCUDPT_CONFIG_DIR: mkdtempSync(join(scratch, "config-")), ...extra };
}

/** The launcher under node, as bunx starts it: it re-runs the CLI on Bun in a child. */
async function launchOnBun(ports: { udp: number; tcp: number }): Promise<{ launcher: Proc; cli: number }> {
  const launcher = startProc("node", [LAUNCHER, ...receiverArgs(ports)], { env: env(UNDER_BUNX) });
  await eventually(
    () => /receiver listening/.test(launcher.stderr()) || launcher.exitCode() !== undefined,
    () => launcher.stderr(),
  );
  assert.match(launcher.stderr(), /transport: bun/, "the CLI runs on Bun");
  const pid = launcher.child.pid as number;
  const [cli] = childrenOf(pid);
  assert.ok(cli, "the CLI is the launcher's child");
  return { launcher, cli };
}

async function exited(proc: Proc): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  if (proc.exitCode() === undefined) await proc.exited;
  return { code: proc.child.exitCode, signal: proc.child.signalCode };
}

/** A sender (the CLI under node, directly) connected to the receiver on `ports`, forwarding to an echo. */
async function connectedSender(ports: { udp: number; tcp: number }) {
  const echo = await startEcho();
  const sender = startProc(
    "node",
    [
      join(ROOT, "apps", "cli", "dist", "mcudpt.js"),
      "sender",
      "--udp",
      `127.0.0.1:${echo.address().port}`,
      "--tcp",
      `127.0.0.1:${ports.tcp}`,
      "--secret",
      SECRET,
    ],
    { env: env({}) },
  );
  await eventually(
    () => /accepted by receiver/.test(sender.stderr()),
    () => sender.stderr(),
  );
  assert.equal(await udpRequest(ports.udp, "through the launcher"), "through the launcher");
  return { sender, echo };
}

describe("the launcher, re-running the CLI on Bun", { skip: !has("bun") && "no bun" }, () => {
  it("passes SIGUSR1 (snapshot) and SIGTERM (goodbye, exit 0) sent to its pid on to the CLI", TIMEOUT, async () => {
    const ports = await receiverPorts();
    const { launcher, cli } = await launchOnBun(ports);
    const { sender, echo } = await connectedSender(ports);
    try {
      launcher.child.kill("SIGUSR1");
      await eventually(
        () => /snapshot: sender connected, 1 flows/.test(launcher.stderr()),
        () => launcher.stderr(),
      );
      assert.ok(alive(launcher.child.pid as number) && alive(cli), "both still running after SIGUSR1");
      assert.doesNotMatch(launcher.stderr(), /Debugger listening|inspector/i, "no Node inspector opened");

      launcher.child.kill("SIGTERM");
      assert.deepEqual(await exited(launcher), { code: 0, signal: null }, launcher.stderr());
      assert.match(launcher.stderr(), /SIGTERM: shutting down/);
      await eventually(
        () => /closed the connection: normal \("receiver shutting down"\)/.test(sender.stderr()),
        () => `the sender hears the receiver's goodbye\n${sender.stderr()}`,
      );
      assert.equal(alive(cli), false, "no orphaned CLI");
    } finally {
      sender.child.kill("SIGTERM");
      echo.close();
    }
  });

  it(
    "passes SIGINT on (not from a terminal) and SIGHUP (the CLI reloads), and exits by the CLI's signal for SIGUSR2",
    TIMEOUT,
    async () => {
      const int = await launchOnBun(await receiverPorts());
      int.launcher.child.kill("SIGINT");
      assert.deepEqual(await exited(int.launcher), { code: 0, signal: null }, int.launcher.stderr());
      assert.match(int.launcher.stderr(), /SIGINT: shutting down/);
      assert.equal(alive(int.cli), false);
      // SIGHUP reaches the CLI, which reloads its configuration and runs on.
      const hup = await launchOnBun(await receiverPorts());
      hup.launcher.child.kill("SIGHUP");
      await eventually(
        () => /reloaded the configuration \(SIGHUP\)/.test(hup.launcher.stderr()),
        () => hup.launcher.stderr(),
      );
      assert.equal(alive(hup.cli), true);
      hup.launcher.child.kill("SIGTERM");
      assert.deepEqual(await exited(hup.launcher), { code: 0, signal: null }, hup.launcher.stderr());
      // The CLI does not catch this one: it dies of it, and the launcher reports the same death.
      const run = await launchOnBun(await receiverPorts());
      run.launcher.child.kill("SIGUSR2");
      assert.deepEqual(await exited(run.launcher), { code: null, signal: "SIGUSR2" }, run.launcher.stderr());
      assert.equal(alive(run.cli), false, "no orphan after SIGUSR2");
    },
  );
});

/**
 * A stand-in package runner: `sh` running the launcher as its child (as npm exec's `sh -c` does),
 * printing the launcher's pid. SIGKILLing the sh is the runner going away without passing anything on.
 */
function underRunner(extraEnv: NodeJS.ProcessEnv, args: string[]) {
  const child = spawn("sh", ["-c", `node "$0" "$@" & echo $!; wait`, LAUNCHER, ...args], {
    env: { ...process.env, MCUDPT_SECRET: "", ...env(extraEnv) },
    stdio: ["ignore", "pipe", "pipe"],
  });
  spawned.add(child);
  let stdout = "";
  let stderr = "";
  child.stdout?.on("data", (d) => (stdout += d));
  child.stderr?.on("data", (d) => (stderr += d));
  // Closed once every process holding the pipes has exited: the launcher and the CLI included.
  const closed = new Promise<void>((resolve) => child.on("close", () => resolve()));
  return { child, stdout: () => stdout, stderr: () => stderr, closed };
}

describe("the launcher when its package runner exits", () => {
  const cases: Array<[string, NodeJS.ProcessEnv, boolean]> = [
    ["npx (the CLI in the launcher's process)", UNDER_NPX, true],
    ["bunx (the CLI in a Bun child)", UNDER_BUNX, has("bun")],
  ];
  for (const [name, runnerEnv, runnable] of cases) {
    it(`${name}: the CLI says goodbye and exits instead of running on orphaned`, {
      ...TIMEOUT,
      skip: !runnable && "no bun",
    }, async () => {
      const ports = await receiverPorts();
      const runner = underRunner(runnerEnv, receiverArgs(ports));
      await eventually(
        () => /receiver listening/.test(runner.stderr()),
        () => runner.stderr(),
      );
      const launcherPid = Number(runner.stdout().trim());
      assert.ok(alive(launcherPid), runner.stdout());
      const { sender, echo } = await connectedSender(ports);
      try {
        runner.child.kill("SIGKILL");
        await Promise.race([
          runner.closed,
          new Promise((_, reject) => setTimeout(() => reject(new Error(`still running:\n${runner.stderr()}`)), 20_000)),
        ]);
        assert.match(runner.stderr(), /the package runner that started it \(pid \d+\) has exited/);
        assert.match(runner.stderr(), /SIGTERM: shutting down/);
        assert.equal(alive(launcherPid), false);
        await eventually(
          () => /closed the connection: normal \("receiver shutting down"\)/.test(sender.stderr()),
          () => `the sender hears the receiver's goodbye\n${sender.stderr()}`,
        );
      } finally {
        sender.child.kill("SIGTERM");
        echo.close();
      }
    });
  }

  it("is not what stops a CLI whose parent is not a package runner", TIMEOUT, async () => {
    const ports = await receiverPorts();
    const runner = underRunner({ npm_config_user_agent: "" }, receiverArgs(ports));
    await eventually(
      () => /receiver listening/.test(runner.stderr()),
      () => runner.stderr(),
    );
    const launcherPid = Number(runner.stdout().trim());
    runner.child.kill("SIGKILL");
    // Handed to init like any `nohup … &`: it goes on serving.
    await eventually(() => runner.child.signalCode !== null, "the sh gone");
    const { sender, echo } = await connectedSender(ports);
    assert.ok(alive(launcherPid));
    process.kill(launcherPid, "SIGTERM");
    await runner.closed;
    assert.doesNotMatch(runner.stderr(), /package runner/);
    sender.child.kill("SIGTERM");
    echo.close();
    assert.ok(!existsSync(`/proc/${launcherPid}/stat`) || !alive(launcherPid));
  });
});
