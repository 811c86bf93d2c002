/**
 * What users install: the packed tarballs (scripts/pack.ts, from the one build the test script made)
 * installed with npm into an empty folder, offline. Plain Node imports every library without .ts
 * sources, `npx mcudpt demo` runs with no Bun on PATH, `bunx mcudpt demo` runs on Bun with the Bun
 * transport. The standalone binary (`bun build --compile` of the same bundle) carries fifty clients
 * through receiver and sender processes, and its metrics endpoint counts while traffic flows.
 */
import assert from "node:assert/strict";
import { execFileSync, spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { after, before, describe, it } from "node:test";
import { nodeTransport } from "@mcudpt/transport-node";
import { pack, packDependencies } from "../../scripts/pack.ts";
import { CLI, eventually, freePort, has, ROOT, sleep, startEcho } from "../helpers/cli-process.js";
import { killProcs, metricsUrl, type Proc, sample, scrape, startProc, stopProc } from "../helpers/ops.js";
import { startClient, text } from "../helpers/tunnel.js";

const TIMEOUT = { timeout: 60_000 };
const BINARY = join(ROOT, "build", "bin", "mcudpt");
const LIBRARIES = ["@mcudpt/protocol", "@mcudpt/core", "@mcudpt/transport-node", "@mcudpt/transport-bun"];

let folder: string;
after(() => {
  killProcs();
  if (folder) rmSync(folder, { recursive: true, force: true });
});

/** Runs a command to completion (bounded), returning status and output. */
function run(command: string, args: string[], options: { cwd?: string; env?: NodeJS.ProcessEnv } = {}) {
  const result = spawnSync(command, args, { encoding: "utf8", timeout: 30_000, ...options });
  return { status: result.status, out: `${result.stdout}${result.stderr}` };
}

describe("packed tarballs in an empty folder", () => {
  before(() => {
    assert.ok(existsSync(CLI), "needs `bun run build` first");
    // The libraries' registry dependencies (websocket-driver…) come packed from node_modules.
    const tarballs = [...pack(), ...packDependencies()];
    folder = mkdtempSync(join(tmpdir(), "mcudpt-install-"));
    writeFileSync(join(folder, "package.json"), '{ "private": true }\n');
    // --offline: every dependency is one of the tarballs (the CLI bundles its own).
    execFileSync("npm", ["install", "--offline", "--no-audit", "--no-fund", "--ignore-scripts", ...tarballs], {
      cwd: folder,
      stdio: ["ignore", "ignore", "pipe"],
    });
  }, TIMEOUT);

  it("ships no TypeScript sources, no workspace: ranges, and .d.ts next to the ESM", TIMEOUT, () => {
    for (const name of [...LIBRARIES, "mcudpt"]) {
      const dir = join(folder, "node_modules", name);
      const manifest = JSON.parse(readFileSync(join(dir, "package.json"), "utf8"));
      assert.doesNotMatch(JSON.stringify(manifest), /workspace:|\.\/src\//, `${name} manifest`);
      assert.ok(!existsSync(join(dir, "src")), `${name} ships src/`);
      if (name !== "mcudpt") {
        assert.ok(existsSync(join(dir, manifest.exports["."].types)), `${name} types`);
        assert.ok(existsSync(join(dir, manifest.exports["."].import)), `${name} import`);
      }
    }
    assert.deepEqual(
      JSON.parse(readFileSync(join(folder, "node_modules", "mcudpt", "package.json"), "utf8")).dependencies,
      undefined,
    );
  });

  it("plain Node imports every library", TIMEOUT, () => {
    const script = `for (const name of ${JSON.stringify(LIBRARIES)}) { const m = await import(name); if (!Object.keys(m).length) throw new Error(name); }`;
    const result = run("node", ["--input-type=module", "-e", script], { cwd: folder });
    assert.equal(result.status, 0, result.out);
  });

  it("`npx mcudpt demo` runs under Node on a PATH without Bun", TIMEOUT, () => {
    // A PATH of node, npm, npx and sh only: what a machine without Bun has.
    const bin = join(folder, "no-bun-bin");
    mkdirSync(bin);
    for (const tool of ["node", "npm", "npx", "sh"]) {
      const found = execFileSync("sh", ["-c", `command -v ${tool}`], { encoding: "utf8" }).trim();
      symlinkSync(found, join(bin, tool));
    }
    const env = { PATH: bin, HOME: process.env.HOME ?? folder, npm_config_cache: join(folder, ".npm") };
    assert.notEqual(run("sh", ["-c", "command -v bun"], { env }).status, 0, "bun must not be on this PATH");
    const result = run("npx", ["--offline", "mcudpt", "demo", "--clients", "5", "--duration", "0.5"], {
      cwd: folder,
      env,
    });
    assert.equal(result.status, 0, result.out);
    assert.match(result.out, /demo on Node\.js .*transport: node/);
  });

  it("`bunx mcudpt demo` runs on Bun with the Bun transport", { ...TIMEOUT, skip: !has("bunx") && "no bunx" }, () => {
    const result = run("bunx", ["mcudpt", "demo", "--clients", "5", "--duration", "0.5"], { cwd: folder });
    assert.equal(result.status, 0, result.out);
    assert.match(result.out, /demo on Bun .*transport: bun/);
    // And MCUDPT_RUNTIME=node keeps Node under bunx.
    const forced = run("bunx", ["mcudpt", "demo", "--clients", "2", "--duration", "0.2"], {
      cwd: folder,
      env: { ...process.env, MCUDPT_RUNTIME: "node" },
    });
    assert.match(forced.out, /transport: node/);
  });

  it(
    "`npx mcudpt receiver`: SIGTERM to npx ends the CLI with a goodbye; nothing is left running",
    TIMEOUT,
    async () => {
      const run = await receiverThroughRunner("npx", ["--offline", "mcudpt"], folder);
      try {
        // npm passes SIGTERM to its `sh -c`, which dies of it without passing it on: the launcher sees
        // the runner gone and stops the CLI as SIGTERM does.
        run.runner.kill("SIGTERM");
        await run.allGone();
        assert.match(run.stderr(), /SIGTERM: shutting down/);
        await eventually(
          () => /closed the connection: normal \("receiver shutting down"\)/.test(run.sender.stderr()),
          () => run.sender.stderr(),
        );
      } finally {
        await run.close();
      }
    },
  );

  it("`bunx mcudpt receiver`: SIGTERM passes through; SIGUSR1, which kills bunx, leaves no orphan", {
    ...TIMEOUT,
    skip: !has("bunx") && "no bunx",
  }, async () => {
    for (const signal of ["SIGTERM", "SIGUSR1"] as const) {
      const run = await receiverThroughRunner("bunx", ["mcudpt"], folder);
      try {
        run.runner.kill(signal);
        await run.allGone();
        assert.match(run.stderr(), /SIGTERM: shutting down/, `after ${signal} to bunx`);
        await eventually(
          () => /closed the connection: normal \("receiver shutting down"\)/.test(run.sender.stderr()),
          () => run.sender.stderr(),
        );
      } finally {
        await run.close();
      }
    }
  });
});

/**
 * A package runner (`npx`, `bunx`) running `mcudpt receiver` with a sender connected to it; `closed`
 * settles once every process holding its output pipes has exited, the CLI included.
 */
async function receiverThroughRunner(command: string, args: string[], cwd: string) {
  const echo = await startEcho();
  const udp = await freePort("udp");
  const tcp = await freePort("tcp");
  const secret = "runner-secret";
  const runner = spawn(
    command,
    [...args, "receiver", "--udp", `127.0.0.1:${udp}`, "--tcp", `127.0.0.1:${tcp}`, "--secret", secret],
    { cwd, stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, MCUDPT_SECRET: "" } },
  );
  let stderr = "";
  runner.stderr?.on("data", (d) => (stderr += d));
  runner.stdout?.on("data", () => {});
  const closed = new Promise<void>((resolve) => runner.on("close", () => resolve()));
  await eventually(
    () => /receiver listening/.test(stderr),
    () => stderr,
    30_000,
  );
  const sender = startProc("node", [
    CLI,
    "sender",
    "--udp",
    `127.0.0.1:${echo.address().port}`,
    "--tcp",
    `127.0.0.1:${tcp}`,
    "--secret",
    secret,
  ]);
  await eventually(
    () => /accepted by receiver/.test(sender.stderr()),
    () => sender.stderr(),
  );
  return {
    runner,
    stderr: () => stderr,
    sender,
    /** Waits (bounded) until no process of the runner's tree is left; throws if one is. */
    async allGone(): Promise<void> {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const late = new Promise<"late">((resolve) => (timer = setTimeout(() => resolve("late"), 20_000)));
      const result = await Promise.race([closed, late]);
      clearTimeout(timer);
      assert.notEqual(result, "late", `a process of ${command} is still running:\n${stderr}`);
    },
    async close(): Promise<void> {
      await stopProc(sender);
      echo.close();
    },
  };
}

describe("the standalone binary (bun build --compile)", () => {
  before(() => {
    mkdirSync(dirname(BINARY), { recursive: true });
    execFileSync("bun", ["build", "--compile", CLI, "--outfile", BINARY], { stdio: ["ignore", "ignore", "pipe"] });
  });

  it(
    "carries fifty concurrent clients, each getting only its own replies; metrics move with the traffic",
    TIMEOUT,
    async () => {
      const echo = await startEcho();
      const udp = await freePort("udp");
      const tcp = await freePort("tcp");
      const common = ["--secret", "compiled-secret", "--metrics", "127.0.0.1:0"];
      const receiver: Proc = startProc(BINARY, [
        "receiver",
        "--udp",
        `127.0.0.1:${udp}`,
        "--tcp",
        `127.0.0.1:${tcp}`,
        ...common,
      ]);
      const sender: Proc = startProc(BINARY, [
        "sender",
        "--udp",
        `127.0.0.1:${echo.address().port}`,
        "--tcp",
        `127.0.0.1:${tcp}`,
        ...common,
      ]);
      const clients: Awaited<ReturnType<typeof startClient>>[] = [];
      try {
        await eventually(
          () => /accepted by receiver/.test(sender.stderr()),
          () => `sender accepted\n${sender.stderr()}\n${receiver.stderr()}`,
        );
        assert.match(receiver.stderr(), /transport: bun/);
        const receiverMetrics = metricsUrl(receiver.stderr());
        const senderMetrics = metricsUrl(sender.stderr());
        assert.ok(receiverMetrics && senderMetrics, receiver.stderr());

        for (let i = 0; i < 50; i++) clients.push(await startClient(nodeTransport, udp));
        await Promise.all(clients.map((client, i) => client.request(`client ${i} hello`)));
        await Promise.all(
          clients.map(async (client, i) => {
            for (let round = 0; round < 10; round++) {
              const reply = text(await client.request(`client ${i} round ${round}`));
              assert.match(reply, new RegExp(`^client ${i} round `), `client ${i} got ${reply}`);
            }
          }),
        );
        for (let burst = 0; burst < 5; burst++) {
          for (const [i, client] of clients.entries()) client.send(`client ${i} burst ${burst}`);
        }
        await sleep(300);
        clients.forEach((client, i) => {
          for (const reply of client.replies)
            assert.match(text(reply), new RegExp(`^client ${i} `), `client ${i} got ${text(reply)}`);
        });

        // Counters move while traffic flows: two scrapes around a stream of datagrams.
        const first = await scrape(receiverMetrics);
        assert.equal(sample(first, "mcudpt_flows"), 50);
        assert.equal(sample(first, "mcudpt_peer_connected"), 1);
        const streaming = setInterval(() => clients[0].send("client 0 stream"), 5);
        await sleep(400);
        const second = await scrape(receiverMetrics);
        const senderText = await scrape(senderMetrics);
        clearInterval(streaming);
        const inBefore = sample(first, "mcudpt_datagrams_total", 'direction="in"') ?? 0;
        const inAfter = sample(second, "mcudpt_datagrams_total", 'direction="in"') ?? 0;
        assert.ok(inAfter > inBefore, `datagrams in: ${inBefore} then ${inAfter}`);
        assert.ok(
          (sample(second, "mcudpt_bytes_total", 'direction="out"') ?? 0) >
            (sample(first, "mcudpt_bytes_total", 'direction="out"') ?? 0),
        );
        assert.equal(sample(senderText, "mcudpt_flows"), 50);
        assert.ok((sample(senderText, "mcudpt_datagrams_total", 'direction="out"') ?? 0) >= 550);
        assert.equal(await stopProc(sender), 0);
        assert.equal(await stopProc(receiver), 0);
      } finally {
        for (const client of clients) client.close();
        echo.close();
      }
    },
  );
});
