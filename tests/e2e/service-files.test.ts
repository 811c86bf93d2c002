/**
 * The service files in contrib/systemd and the Dockerfile, as far as this machine can exercise them
 * (it has systemd-analyze but no systemd as PID 1, and no Docker engine): the units pass
 * `systemd-analyze verify` and an offline security review; the command lines of the units and of the
 * image run with the built CLI (addresses swapped for free loopback ports); the image's user and
 * entrypoint are consistent, and the compiled binary runs as that unprivileged user. And every command
 * of docs/operations.md's "Running as a service" is carried out, on a scratch root per host, with
 * what systemd would do done here: the units' ExecStart run as uid 65534 with HOME=/, the unit's
 * Environment=, its credentials and its state directory (shared secret and keys, with and without TLS).
 */
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import {
  chmodSync,
  chownSync,
  copyFileSync,
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { after, describe, it } from "node:test";
import { CLI, eventually, freePort, has, ROOT, startEcho, udpRequest } from "../helpers/cli-process.js";
import { killProcs, metricsUrl, type Proc, sample, scrape, startProc, stopProc } from "../helpers/ops.js";

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
  // The units' --tls makes a certificate: in a scratch config dir, never the real ~/.config.
  const proc = startProc("node", [CLI, ...args], { env: { MCUDPT_CONFIG_DIR: mkdtempSync(join(scratch, "config-")) } });
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
      // systemctl reload: SIGHUP to the main process, which reloads (tests/e2e/reload.test.ts).
      assert.match(text, /^ExecReload=\/bin\/kill -HUP \$MAINPID$/m);
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

/** The uid and gid systemd's DynamicUser= stands for here (nobody): not root, owns nothing. */
const SERVICE_UID = 65534;
const canRunAsServiceUser = process.getuid?.() === 0 && has("setpriv");
const SERVICE_SECTION = "## Running as a service";

/** The commands of the sh blocks in docs/operations.md's "Running as a service", block by block. */
function documentedBlocks(): string[][] {
  const doc = readFileSync(join(ROOT, "docs", "operations.md"), "utf8");
  const start = doc.indexOf(SERVICE_SECTION);
  assert.ok(start >= 0, `docs/operations.md has a "${SERVICE_SECTION}" section`);
  const end = doc.indexOf("\n## ", start + SERVICE_SECTION.length);
  const section = doc.slice(start, end < 0 ? undefined : end);
  return [...section.matchAll(/```sh\n([\s\S]*?)```/g)].map((block) =>
    block[1]
      .split("\n")
      .map((line) => line.replace(/\s+#\s.*$/, "").trim())
      .filter((line) => line !== "" && !line.startsWith("#")),
  );
}

function chownTree(path: string, uid: number): void {
  chownSync(path, uid, uid);
  if (statSync(path).isDirectory()) for (const name of readdirSync(path)) chownTree(join(path, name), uid);
}

/** A unit file's [Service] settings, each with its values in order. */
function serviceSettings(text: string): Map<string, string[]> {
  const settings = new Map<string, string[]>();
  let inService = false;
  for (const line of text.split("\n")) {
    if (/^\[.*\]$/.test(line)) inService = line === "[Service]";
    const match = inService ? /^([A-Za-z]+)=(.*)$/.exec(line) : null;
    if (match) settings.set(match[1], [...(settings.get(match[1]) ?? []), match[2]]);
  }
  return settings;
}

/** Sets the value after `flag` in a unit's ExecStart line. */
function withFlag(execStart: string, flag: string, value: string): string {
  const words = execStart.split(" ");
  const at = words.indexOf(flag);
  assert.ok(at > 0, `${flag} in ${execStart}`);
  words[at + 1] = value;
  return words.join(" ");
}

/** systemd's variable for the credentials folder, as units spell it. */
// biome-ignore lint/suspicious/noTemplateCurlyInString: systemd's syntax, not a template
const CREDENTIALS_VAR = "${CREDENTIALS_DIRECTORY}";
/** How the units give the shared secret; the recipe for keys replaces or drops it. */
const SECRET_FLAG = `--secret-file ${CREDENTIALS_VAR}/secret`;

/** The receiver's edit for keys: `--authorized-keys /etc/mcudpt/authorized_keys` instead of the secret. */
function allowlisted(execStart: string): string {
  assert.ok(execStart.includes(SECRET_FLAG), execStart);
  return execStart.replace(SECRET_FLAG, "--authorized-keys /etc/mcudpt/authorized_keys");
}

/** The sender's edit for keys: the secret dropped (its key is the default one, in the state directory). */
function keyed(execStart: string): string {
  assert.ok(execStart.includes(` ${SECRET_FLAG}`), execStart);
  return execStart.replace(` ${SECRET_FLAG}`, "");
}

function withoutFlag(execStart: string, flag: string): string {
  const words = execStart.split(" ");
  assert.ok(words.includes(flag), `${flag} in ${execStart}`);
  return words.filter((word) => word !== flag).join(" ");
}

/** The CLI as /usr/local/bin/mcudpt would run it: a copy of dist/ the service user can read, under `runtime`. */
function installableCli(scratchDir: string, runtime: "node" | "bun"): string {
  const dist = join(scratchDir, "opt", "mcudpt-dist");
  if (!existsSync(dist)) {
    mkdirSync(dist, { recursive: true, mode: 0o755 });
    cpSync(dirname(CLI), dist, { recursive: true });
    chmodSync(join(scratchDir, "opt"), 0o755);
    chmodSync(dist, 0o755);
  }
  const wrapper = join(scratchDir, `mcudpt-${runtime}`);
  const runtimePath = execFileSync("sh", ["-c", `command -v ${runtime}`], { encoding: "utf8" }).trim();
  writeFileSync(wrapper, `#!/bin/sh\nexec ${runtimePath} ${join(dist, "mcudpt.js")} "$@"\n`, { mode: 0o755 });
  return wrapper;
}

type Edit = (execStart: string) => string;

/**
 * One machine's root (etc, usr/local/bin, var/lib, run) in a scratch folder, where the documented
 * commands run as root with their absolute paths moved in, and where the units are "started" the way
 * systemd starts them: state directory made and chowned to the service user, credentials copied,
 * Environment= set, ExecStart run as that user with HOME=/ and stdin on /dev/null.
 */
class Host {
  readonly root: string;
  private readonly running = new Map<string, Proc>();
  private readonly journals = new Map<string, string>();
  /** Loopback stand-ins for the addresses the units listen on (":53" → "127.0.0.1:PORT"). */
  readonly listen = new Map<string, string>();

  constructor(
    readonly name: string,
    private readonly cli: string,
  ) {
    this.root = join(scratch, name);
    for (const dir of ["etc/systemd/system", "usr/local/bin", "var/lib", "run/credentials", "home"]) {
      mkdirSync(join(this.root, dir), { recursive: true, mode: 0o755 });
    }
    for (const dir of ["", "etc", "usr", "usr/local", "var", "run"]) chmodSync(join(this.root, dir), 0o755);
  }

  /** `/etc/…`, `/var/lib/…`, `/usr/local/bin/…` in `text`, moved under this host's root. */
  moveIn(text: string): string {
    return text.replace(/(^|[\s'"=:>])(\/(?:etc|var\/lib|usr\/local\/bin)\/)/g, `$1${this.root}$2`);
  }

  at(path: string): string {
    return this.moveIn(path);
  }

  /** A documented shell command (install, umask, keygen), as root, in the operator's folder. */
  shell(command: string, env: NodeJS.ProcessEnv = {}): string {
    const moved = this.moveIn(command).replace("build/bin/mcudpt", this.cli).replaceAll("contrib/", `${ROOT}/contrib/`);
    const result = spawnSync("sh", ["-c", moved], {
      cwd: join(this.root, "home"),
      encoding: "utf8",
      timeout: 30_000,
      env: { ...process.env, ...env, PATH: `${join(this.root, "usr", "local", "bin")}:${process.env.PATH}` },
    });
    assert.equal(result.status, 0, `${this.name}: ${command}\n${result.stdout}${result.stderr}`);
    return result.stdout;
  }

  unitPath(unit: string): string {
    return join(this.root, "etc", "systemd", "system", `${unit}.service`);
  }

  edit(unit: string, edit: Edit): void {
    const text = readFileSync(this.unitPath(unit), "utf8");
    const line = /^ExecStart=(.*)$/m.exec(text);
    assert.ok(line, `${unit} has an ExecStart`);
    writeFileSync(this.unitPath(unit), text.replace(line[0], `ExecStart=${edit(line[1])}`));
  }

  /** What systemd does at `systemctl start`, then ExecStart as the service user. */
  start(unit: string): void {
    assert.ok(!this.running.has(unit), `${unit} already running`);
    const settings = serviceSettings(readFileSync(this.unitPath(unit), "utf8"));
    assert.deepEqual(settings.get("DynamicUser"), ["yes"]);
    const stateRoot = join(this.root, "var", "lib");
    const env: Record<string, string> = { PATH: "/usr/local/bin:/usr/bin:/bin", HOME: "/", LANG: "C.UTF-8" };
    for (const name of settings.get("StateDirectory") ?? []) {
      const dir = join(stateRoot, name);
      mkdirSync(dir, { recursive: true, mode: 0o755 });
      chownTree(dir, SERVICE_UID); // systemd hands the whole tree to the (dynamic) user at each start
      env.STATE_DIRECTORY = dir;
    }
    const credentials = join(this.root, "run", "credentials", `${unit}.service`);
    rmSync(credentials, { recursive: true, force: true });
    mkdirSync(credentials, { mode: 0o500 });
    for (const entry of settings.get("LoadCredential") ?? []) {
      const [id, source] = entry.split(/:(.*)/s);
      // systemd reads it as root, and refuses to start the unit when it is missing.
      assert.ok(existsSync(this.at(source)), `${unit}: LoadCredential=${entry}, but there is no such file`);
      copyFileSync(this.at(source), join(credentials, id));
      chmodSync(join(credentials, id), 0o400);
      chownSync(join(credentials, id), SERVICE_UID, SERVICE_UID);
    }
    chownSync(credentials, SERVICE_UID, SERVICE_UID);
    env.CREDENTIALS_DIRECTORY = credentials;
    for (const entry of settings.get("Environment") ?? []) {
      const [key, value] = entry.split(/=(.*)/s);
      env[key] = value.replaceAll("%S", stateRoot);
    }
    const exec = settings.get("ExecStart")?.[0];
    assert.ok(exec, `${unit}: ExecStart`);
    const words = this.moveIn(exec.replaceAll(CREDENTIALS_VAR, credentials)).split(/\s+/);
    for (let i = 0; i < words.length; i++) {
      if ((words[i] === "--udp" || words[i] === "--tcp") && this.listen.has(words[i + 1])) {
        words[i + 1] = this.listen.get(words[i + 1]) as string;
      } else if (words[i] === "--metrics") {
        words[i + 1] = "127.0.0.1:0";
      }
    }
    const vars = Object.entries(env).map(([key, value]) => `${key}=${value}`);
    const ids = [`--reuid=${SERVICE_UID}`, `--regid=${SERVICE_UID}`, "--clear-groups"];
    const proc = startProc("env", ["-i", ...vars, "setpriv", ...ids, ...words], { cwd: "/" });
    this.running.set(unit, proc);
    if (!this.journals.has(unit)) this.journals.set(unit, "");
  }

  async stop(unit: string): Promise<void> {
    const proc = this.running.get(unit);
    if (!proc) return;
    const code = await stopProc(proc);
    this.journals.set(unit, this.journal(unit));
    this.running.delete(unit);
    assert.equal(code, 0, `${unit} exits 0 on SIGTERM:\n${proc.stderr()}`);
    assert.match(proc.stderr(), /SIGTERM: shutting down/);
  }

  /** Everything the unit wrote to stderr (the journal) since `systemctl start`, restarts included. */
  journal(unit: string): string {
    return (this.journals.get(unit) ?? "") + (this.running.get(unit)?.stderr() ?? "");
  }

  proc(unit: string): Proc {
    const proc = this.running.get(unit);
    assert.ok(proc, `${unit} is running`);
    return proc;
  }

  async waitFor(unit: string, pattern: RegExp): Promise<void> {
    await eventually(
      () => pattern.test(this.journal(unit)) || this.running.get(unit)?.exitCode() !== undefined,
      () => `${this.name} ${unit}: ${pattern}\n${this.journal(unit)}`,
    );
    assert.match(this.journal(unit), pattern, `${unit} exited:\n${this.journal(unit)}`);
  }

  async stopAll(): Promise<void> {
    for (const unit of [...this.running.keys()]) await this.stop(unit);
  }
}

/**
 * Runs one documented block on `host`: shell commands as they are, `systemctl`/`journalctl` as what
 * systemd would do and what the operator would look for, on whichever of `host` and `others` has that
 * unit installed. `edits` answers `systemctl edit --full`.
 */
async function runBlock(
  host: Host,
  commands: string[],
  edits: Record<string, Edit> = {},
  others: Host[] = [],
): Promise<void> {
  for (const command of commands) {
    const unit = /(?:systemctl .* |journalctl -u )(mcudpt-\w+)/.exec(command)?.[1];
    const where = unit === undefined ? host : ([host, ...others].find((h) => existsSync(h.unitPath(unit))) ?? host);
    await runCommand(where, command, edits);
  }
}

async function runCommand(host: Host, command: string, edits: Record<string, Edit>): Promise<void> {
  let match: RegExpExecArray | null;
  if ((match = /^systemctl daemon-reload && systemctl enable --now (\S+)$/.exec(command))) {
    host.start(match[1]);
    await host.waitFor(match[1], /receiver listening|sender forwarding/);
  } else if ((match = /^systemctl edit --full (\S+)$/.exec(command))) {
    const edit = edits[match[1]];
    assert.ok(edit, `the scenario says what "${command}" changes`);
    host.edit(match[1], edit);
  } else if ((match = /^systemctl restart (\S+)$/.exec(command))) {
    await host.stop(match[1]);
    host.start(match[1]);
    await host.waitFor(match[1], /receiver listening|sender forwarding/);
  } else if ((match = /^systemctl kill -s USR1 (\S+)$/.exec(command))) {
    host.proc(match[1]).child.kill("SIGUSR1");
    await host.waitFor(match[1], /"msg":"snapshot"/);
  } else if ((match = /^journalctl -u (\S+) -o cat \| grep -m1 'TLS certificate'$/.exec(command))) {
    await host.waitFor(match[1], /TLS certificate SHA256:/);
  } else if ((match = /^journalctl -u (\S+) -o cat \| jq \.$/.exec(command))) {
    const lines = host.journal(match[1]).trim().split("\n");
    for (const line of lines) assert.doesNotThrow(() => JSON.parse(line), `a JSON log line: ${line}`);
  } else if ((match = /^curl -s 127\.0\.0\.1:9537\/metrics$/.exec(command))) {
    const url = metricsUrl(host.journal("mcudpt-receiver"));
    assert.ok(url, host.journal("mcudpt-receiver"));
    assert.equal(sample(await scrape(url), "mcudpt_peer_connected"), 1);
  } else if (/^(install|\(umask|mcudpt keygen) /.test(command)) {
    host.shell(command, { SECRET: "service-secret" });
  } else {
    assert.fail(`the test does not know how to carry out the documented command: ${command}`);
  }
}

const RECEIVER = "mcudpt-receiver";
const SENDER = "mcudpt-sender";

describe("docs/operations.md 'Running as a service', as the service user", {
  skip: !canRunAsServiceUser && "needs root and setpriv",
}, () => {
  const blocks = canRunAsServiceUser ? documentedBlocks() : [];
  const [receiverInstall, senderInstall, watching, senderKeys, receiverKeys] = blocks;
  let echo: Awaited<ReturnType<typeof startEcho>>;
  const hosts: Host[] = [];
  chmodSync(scratch, 0o755);

  after(async () => {
    for (const host of hosts) await host.stopAll().catch(() => {});
    echo?.close();
  });

  /** A receiver host and a sender host whose units will meet on loopback ports. */
  async function hostPair(tag: string, receiverRuntime: "node" | "bun", senderRuntime: "node" | "bun") {
    echo ??= await startEcho();
    const receiver = new Host(`${tag}-receiver`, installableCli(scratch, receiverRuntime));
    const sender = new Host(`${tag}-sender`, installableCli(scratch, senderRuntime));
    hosts.push(receiver, sender);
    const udp = `127.0.0.1:${await freePort("udp")}`;
    const tcp = `127.0.0.1:${await freePort("tcp")}`;
    receiver.listen.set(":53", udp).set(":5353", tcp);
    /** The operator's edit of the sender unit: its target and the receiver's address. */
    const addresses: Edit = (line) =>
      withFlag(withFlag(line, "--udp", `127.0.0.1:${echo.address().port}`), "--tcp", tcp);
    return { receiver, sender, udp: Number(udp.split(":")[1]), addresses };
  }

  it("documents five blocks, each carried out below, and nothing the test cannot carry out", () => {
    assert.equal(blocks.length, 5, JSON.stringify(blocks));
    const known = /^(install |\(umask |mcudpt keygen |systemctl (daemon-reload|edit|restart|kill)|journalctl |curl )/;
    for (const command of blocks.flat()) assert.match(command, known);
    // The sandbox is the units' own: nothing the recipe asks for is writable outside the state directory.
    for (const name of UNITS) {
      const settings = serviceSettings(unitText(name));
      assert.deepEqual(settings.get("StateDirectory"), ["mcudpt"]);
      assert.deepEqual(settings.get("Environment"), ["MCUDPT_CONFIG_DIR=%S/mcudpt"]);
      assert.deepEqual(settings.get("ProtectSystem"), ["strict"]);
    }
  });

  it("shared secret and TLS, as shipped: tunnel, journal, snapshot, metrics, restarts keep the certificate; then without TLS", {
    timeout: 120_000,
  }, async () => {
    const { receiver, sender, udp, addresses } = await hostPair("secret", "node", "bun");
    await runBlock(receiver, receiverInstall);
    // The secret stays root's: the service user reads only the credential systemd copied.
    assert.equal(statSync(receiver.at("/etc/mcudpt/secret")).mode & 0o777, 0o600);
    await runBlock(sender, senderInstall, { [SENDER]: addresses });
    await sender.waitFor(SENDER, /accepted by receiver/);
    assert.equal(await udpRequest(udp, "through the services"), "through the services");
    const certificate = /TLS certificate (SHA256:[A-Za-z0-9+/]+)/.exec(receiver.journal(RECEIVER))?.[1];
    assert.ok(certificate && existsSync(receiver.at("/var/lib/mcudpt/tls-cert.pem")), receiver.journal(RECEIVER));
    assert.equal(statSync(receiver.at("/var/lib/mcudpt/tls-cert.pem")).uid, SERVICE_UID);
    assert.ok(readFileSync(sender.at("/var/lib/mcudpt/known_receivers"), "utf8").includes(` tls ${certificate}\n`));

    await runBlock(receiver, watching);
    // The receiver's restart said goodbye; the sender came back to the same (still pinned) certificate.
    await sender.waitFor(SENDER, /accepted by receiver[\s\S]*accepted by receiver/);
    assert.equal(await udpRequest(udp, "after a restart"), "after a restart");
    assert.equal([...receiver.journal(RECEIVER).matchAll(/generated a self-signed TLS certificate/g)].length, 1);
    const served = [...receiver.journal(RECEIVER).matchAll(/TLS certificate (SHA256:[A-Za-z0-9+/]+)/g)].map(
      (m) => m[1],
    );
    assert.deepEqual(served, [certificate, certificate], "the same certificate after the restart");
    assert.equal([...sender.journal(SENDER).matchAll(/is new: remembered/g)].length, 1, sender.journal(SENDER));

    // Over a trusted network, --tls dropped from both units.
    receiver.edit(RECEIVER, (line) => withoutFlag(line, "--tls"));
    sender.edit(SENDER, (line) => withoutFlag(line, "--tls"));
    await runCommand(receiver, `systemctl restart ${RECEIVER}`, {});
    await runCommand(sender, `systemctl restart ${SENDER}`, {});
    await sender.waitFor(SENDER, /(accepted by receiver[\s\S]*){3}/);
    assert.equal(await udpRequest(udp, "plaintext"), "plaintext");
    await receiver.stopAll();
    await sender.stopAll();
  });

  it("keys and TLS: keygen into the not-yet-made state directory, authorized_keys the service can read", {
    timeout: 120_000,
  }, async () => {
    const { receiver, sender, udp, addresses } = await hostPair("keys", "bun", "node");
    // The sender host as far as its unit, /etc/mcudpt and the secret (never started), then its key.
    await runBlock(
      sender,
      senderInstall.filter((command) => /^(install|\(umask) /.test(command)),
    );
    assert.ok(!existsSync(sender.at("/var/lib/mcudpt")), "no state directory before the first start");
    await runBlock(sender, senderKeys, { [SENDER]: (line) => keyed(addresses(line)) });
    assert.equal(statSync(sender.at("/var/lib/mcudpt")).mode & 0o777, 0o700);
    const publicLine = readFileSync(sender.at("/var/lib/mcudpt/id_ed25519.pub"), "utf8");
    writeFileSync(join(receiver.root, "home", "sender.pub"), publicLine);

    await runBlock(receiver, receiverInstall);
    await runBlock(receiver, receiverKeys, { [RECEIVER]: allowlisted }, [sender]);
    await sender.waitFor(SENDER, /accepted by receiver/);
    assert.equal(await udpRequest(udp, "keyed"), "keyed");
    await receiver.waitFor(RECEIVER, /listed in/);
    const pins = readFileSync(sender.at("/var/lib/mcudpt/known_receivers"), "utf8");
    assert.match(pins, / ssh-ed25519 AAAA/);
    assert.match(pins, / tls SHA256:/);
    await receiver.stopAll();
    await sender.stopAll();
  });

  it("keys made on the first start, without TLS", { timeout: 120_000 }, async () => {
    const { receiver, sender, udp, addresses } = await hostPair("first-start", "node", "node");
    const withoutTls = (block: string[]) => block.filter((command) => !command.includes("TLS certificate"));
    await runBlock(sender, withoutTls(senderInstall), {
      [SENDER]: (line) => withoutFlag(keyed(addresses(line)), "--tls"),
    });
    await sender.waitFor(SENDER, /created key \S+id_ed25519 \(SHA256:/);
    writeFileSync(
      join(receiver.root, "home", "sender.pub"),
      readFileSync(sender.at("/var/lib/mcudpt/id_ed25519.pub"), "utf8"),
    );
    // The receiver host never runs with the secret: installed, then straight to the allowlist.
    await runBlock(
      receiver,
      withoutTls(receiverInstall).filter((command) => !command.includes("enable --now")),
    );
    await runBlock(receiver, receiverKeys, { [RECEIVER]: (line) => withoutFlag(allowlisted(line), "--tls") }, [sender]);
    await sender.waitFor(SENDER, /accepted by receiver/);
    assert.equal(await udpRequest(udp, "plain keys"), "plain keys");
    assert.doesNotMatch(sender.journal(SENDER) + receiver.journal(RECEIVER), /TLS/);
    await receiver.stopAll();
    await sender.stopAll();
  });
});
