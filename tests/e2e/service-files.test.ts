/**
 * The service files in contrib/systemd and the Dockerfile, as far as this machine can exercise them
 * (it has systemd-analyze but no systemd as PID 1, and no Docker engine): the units pass
 * `systemd-analyze verify` and an offline security review; the command lines of the units and of the
 * image run with the built CLI (addresses swapped for free loopback ports); the image's user and
 * entrypoint are consistent, and the compiled binary runs as that unprivileged user.
 */
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import {
  chmodSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { after, describe, it } from "node:test";
import { CLI, eventually, freePort, has, ROOT } from "../helpers/cli-process.js";
import { killProcs, startProc, stopProc } from "../helpers/ops.js";

const TIMEOUT = { timeout: 60_000 };
const UNITS = ["mcudpt-receiver.service", "mcudpt-sender.service"];
const scratch = mkdtempSync(join(tmpdir(), "mcudpt-service-"));
after(() => {
  killProcs();
  rmSync(scratch, { recursive: true, force: true });
});

function unitText(name: string): string {
  return readFileSync(join(ROOT, "contrib", "systemd", name), "utf8");
}

/** A unit's or image's mcudpt arguments with listen/target addresses moved to free loopback ports. */
async function localArgs(args: string[], secretFile: string): Promise<string[]> {
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    if (arg === "--udp" || arg === "--tcp") {
      out.push(arg, `127.0.0.1:${await freePort(arg === "--udp" ? "udp" : "tcp")}`);
      i++;
    } else if (arg === "--metrics") {
      out.push(arg, "127.0.0.1:0");
      i++;
    } else if (arg === "--secret-file") {
      out.push(arg, secretFile);
      i++;
    } else {
      out.push(arg);
    }
  }
  return out;
}

/** Runs the CLI with `args` until it logs `ready`, then SIGTERM: the flags were all accepted. */
async function runsWith(args: string[], ready: RegExp): Promise<void> {
  const proc = startProc("node", [CLI, ...args]);
  await eventually(
    () => ready.test(proc.stderr()) || proc.exitCode() !== undefined,
    () => proc.stderr(),
  );
  assert.equal(proc.exitCode(), undefined, `exited at start: ${proc.stderr()}`);
  assert.equal(await stopProc(proc), 0);
}

describe("systemd units", () => {
  const secret = join(scratch, "secret");
  writeFileSync(secret, "service-test-secret\n");

  it("pass systemd-analyze verify and an offline security review", {
    ...TIMEOUT,
    skip: !has("systemd-analyze") && "no systemd-analyze",
  }, () => {
    // verify wants ExecStart's binary to exist: point it at a stand-in.
    const binary = join(scratch, "mcudpt");
    writeFileSync(binary, "#!/bin/sh\n");
    chmodSync(binary, 0o755);
    for (const name of UNITS) {
      const unit = join(scratch, name);
      writeFileSync(unit, unitText(name).replaceAll("/usr/local/bin/mcudpt", binary));
      const verify = spawnSync("systemd-analyze", ["verify", unit], { encoding: "utf8" });
      assert.equal(verify.status, 0, `${name}: ${verify.stderr}`);
      assert.equal(verify.stderr.trim(), "", `${name} warnings: ${verify.stderr}`);
      // Exposure 0-10 (shown as x.y): at most 3.0, i.e. "OK" or better.
      const security = spawnSync("systemd-analyze", ["security", "--offline=yes", "--threshold=30", unit], {
        encoding: "utf8",
      });
      assert.equal(security.status, 0, `${name}: ${security.stdout.split("\n").slice(-3).join("\n")}`);
      const text = unitText(name);
      assert.match(text, /^Restart=always$/m);
      assert.match(text, /^DynamicUser=yes$/m);
      assert.match(text, /^NoNewPrivileges=yes$/m);
    }
  });

  for (const name of UNITS) {
    it(`${name}: its ExecStart flags run with the built CLI`, TIMEOUT, async () => {
      const exec = /^ExecStart=\S+ (.*)$/m.exec(unitText(name));
      assert.ok(exec);
      const args = exec[1].replace(/\$\{CREDENTIALS_DIRECTORY\}\/secret/, "SECRET").split(/\s+/);
      const local = await localArgs(args, secret);
      await runsWith(local, args[0] === "receiver" ? /receiver listening/ : /sender forwarding/);
    });
  }
});

describe("Dockerfile", () => {
  const dockerfile = readFileSync(join(ROOT, "Dockerfile"), "utf8");
  const finalStage = dockerfile.slice(dockerfile.lastIndexOf("\nFROM "));

  it("builds with the project's own commands and runs the binary it copies, as a non-root user", () => {
    const scripts = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")).scripts;
    assert.match(dockerfile, /RUN bun install --frozen-lockfile && bun run compile/);
    assert.ok(scripts.compile?.includes("--outfile build/bin/mcudpt"), scripts.compile);
    assert.match(finalStage, /COPY --from=build \/src\/build\/bin\/mcudpt \/usr\/local\/bin\/mcudpt/);
    assert.match(finalStage, /ENTRYPOINT \["\/usr\/local\/bin\/mcudpt"\]/);
    const user = /^USER (\d+):(\d+)$/m.exec(finalStage);
    assert.ok(user && Number(user[1]) !== 0 && Number(user[2]) !== 0, "numeric non-root USER");
    assert.doesNotMatch(dockerfile, /:latest\b/);
  });

  it("its CMD runs with the built CLI", TIMEOUT, async () => {
    const cmd = JSON.parse(/^CMD (\[.*\])$/m.exec(finalStage)?.[1] ?? "[]") as string[];
    assert.equal(cmd[0], "receiver");
    await runsWith([...(await localArgs(cmd, "")), "--secret", "x"], /receiver listening/);
  });

  const canDropPrivileges = process.getuid?.() === 0 && has("setpriv") && has("bun");
  it("the compiled binary works as uid 65532 (the image's user)", {
    ...TIMEOUT,
    skip: !canDropPrivileges && "needs root, setpriv and bun",
  }, () => {
    // A copy outside the work tree, where the unprivileged user can reach it.
    const built = join(ROOT, "build", "bin", "mcudpt");
    if (!existsSync(built)) {
      mkdirSync(dirname(built), { recursive: true });
      execFileSync("bun", ["build", "--compile", CLI, "--outfile", built], { stdio: "ignore" });
    }
    const binary = join(scratch, "mcudpt-bin");
    copyFileSync(built, binary);
    chmodSync(binary, 0o755);
    chmodSync(scratch, 0o755);
    const result = spawnSync(
      "setpriv",
      ["--reuid=65532", "--regid=65532", "--clear-groups", binary, "demo", "--clients", "5", "--duration", "0.5"],
      { encoding: "utf8", timeout: 30_000, cwd: "/" },
    );
    assert.equal(result.status, 0, `${result.stdout}${result.stderr}`);
    assert.match(result.stdout, /transport: bun/);
  });
});
