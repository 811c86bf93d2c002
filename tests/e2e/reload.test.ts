/**
 * End to end: SIGHUP reloads of the built CLI, under Node and under Bun (each picks its own
 * transport). A receiver and a sender run from --config files with three mappings, `game` carrying
 * a steady load of 20 clients, `dns` and `old`; mid-load the receiver's certificate is renewed, its
 * --authorized-keys file replaced by one with a second sender's key, its --idle-timeout changed, a
 * mapping `ntp` added (the sender had its target) and `old` removed, and the sender's `dns` target
 * moved: not one datagram of `game` may be lost. Then a key removed
 * ends its session, and broken reloads (bad config, bad key line, unreadable certificate) change
 * nothing, say why in one line and are counted. Needs `bun run build` first. Loopback only.
 */
import assert from "node:assert/strict";
import { generateKeyPairSync } from "node:crypto";
import { createSocket, type Socket } from "node:dgram";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connect } from "node:tls";
import { after, describe, it } from "node:test";
import { certificateFingerprint, createCertificate, generateKeyPair, pemFingerprint, writeKeyPair } from "@mcudpt/core";
import {
  type CliProcess,
  eventually,
  freePort,
  has,
  killAll,
  RUNTIMES,
  type Runtime,
  sleep,
  startCli,
  startEcho,
  stopWith,
  udpRequest,
} from "../helpers/cli-process.js";
import { metricsUrl, sample, scrape } from "../helpers/ops.js";

const TIMEOUT = { timeout: 90_000 };
const runtimes = RUNTIMES.filter((runtime) => has(runtime));
const dirs: string[] = [];
after(() => {
  killAll();
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

function workDir(): string {
  const dir = mkdtempSync(join(tmpdir(), "mcudpt-e2e-reload-"));
  dirs.push(dir);
  return dir;
}

/** A key pair as `mcudpt keygen` writes it. */
function makeKey(dir: string, name: string) {
  const pair = generateKeyPair(`${name}@e2e`);
  const path = join(dir, name);
  writeKeyPair(path, pair);
  return { path, fingerprint: pair.fingerprint, line: pair.publicKeyLine };
}

/** A self-signed certificate for 127.0.0.1, written to `dir`/cert.pem and key.pem (replacing any). */
function writeCertificate(dir: string): string {
  const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const cert = createCertificate({
    commonName: "mcudpt e2e",
    publicKey,
    issuerKey: privateKey,
    altNames: ["127.0.0.1"],
    notAfter: new Date(Date.now() + 86_400_000),
  });
  writeFileSync(join(dir, "cert.pem"), cert);
  writeFileSync(join(dir, "key.pem"), privateKey.export({ type: "pkcs8", format: "pem" }) as string, { mode: 0o600 });
  return pemFingerprint(cert);
}

/** The certificate a new TLS connection to 127.0.0.1:`port` is shown. */
function servedFingerprint(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: "127.0.0.1", port, rejectUnauthorized: false }, () => {
      const der = socket.getPeerCertificate().raw;
      socket.destroy();
      resolve(certificateFingerprint(new Uint8Array(der)));
    });
    socket.on("error", reject);
  });
}

/** A TOML config file: `settings` as key = value lines (strings quoted, lists of strings). */
function writeConfig(path: string, settings: Record<string, string | number | boolean | string[]>): void {
  const value = (v: string | number | boolean | string[]): string =>
    Array.isArray(v)
      ? `[${v.map((s) => JSON.stringify(s)).join(", ")}]`
      : typeof v === "string"
        ? JSON.stringify(v)
        : String(v);
  writeFileSync(
    path,
    Object.entries(settings)
      .map(([k, v]) => `${k} = ${value(v)}\n`)
      .join(""),
    { mode: 0o600 },
  );
}

/** `mcudpt sender` toward the receiver at 127.0.0.1:`tcp`, forwarding to `target`, with `flags`. */
function startSender(runtime: Runtime, target: Socket, tcp: number, flags: string[]): CliProcess {
  const to = `127.0.0.1:${target.address().port}`;
  return startCli(runtime, ["sender", "--udp", to, "--tcp", `127.0.0.1:${tcp}`, ...flags]);
}

/** Waits for the `n`th line matching `pattern` in a process's stderr. */
function logged(process: CliProcess, pattern: RegExp, n = 1, timeoutMs = 15_000): Promise<void> {
  return eventually(
    () => process.count(pattern) >= n,
    () => `${n} line(s) matching ${pattern}:\n${process.stderr()}`,
    timeoutMs,
  );
}

/** UDP clients sending numbered datagrams at a steady pace, each counting the echoes it gets back. */
class Load {
  readonly clients: Array<{ socket: Socket; sent: number; echoed: Set<number> }> = [];
  private timer: ReturnType<typeof setInterval> | undefined;

  static async start(port: number, count: number): Promise<Load> {
    const load = new Load();
    for (let i = 0; i < count; i++) {
      const socket = createSocket("udp4");
      const client = { socket, sent: 0, echoed: new Set<number>() };
      socket.on("message", (message) => {
        const [who, seq] = message.toString().split(":");
        if (who === `c${i}`) client.echoed.add(Number(seq));
      });
      await new Promise<void>((resolve) => socket.bind(0, "127.0.0.1", resolve));
      load.clients.push(client);
    }
    // Each client's flow is open before counting starts (its first datagram may wait for the flow).
    for (const [i, client] of load.clients.entries()) {
      const until = Date.now() + 10_000;
      while (!client.echoed.has(-1) && Date.now() < until) {
        client.socket.send(`c${i}:-1`, port, "127.0.0.1");
        await sleep(50);
      }
      assert.ok(client.echoed.has(-1), `client ${i} got its flow`);
    }
    load.timer = setInterval(() => {
      for (const [i, client] of load.clients.entries()) client.socket.send(`c${i}:${client.sent++}`, port, "127.0.0.1");
    }, 10);
    return load;
  }

  /** Stops sending, waits (bounded) for the echoes in flight; returns the totals. */
  async stop(): Promise<{ sent: number; echoed: number; lost: number }> {
    clearInterval(this.timer);
    const echoed = () => this.clients.reduce((sum, c) => sum + [...c.echoed].filter((s) => s >= 0).length, 0);
    const sent = this.clients.reduce((sum, c) => sum + c.sent, 0);
    const until = Date.now() + 5_000;
    while (echoed() < sent && Date.now() < until) await sleep(20);
    for (const client of this.clients) client.socket.close();
    return { sent, echoed: echoed(), lost: sent - echoed() };
  }
}

for (const runtime of runtimes) {
  describe(`reload (SIGHUP), ${runtime}`, () => {
    it(
      "under a 20-client load: renewed certificate, added key, new limit, mapping added and removed, moved target; 0 lost on game",
      TIMEOUT,
      async () => {
        const dir = workDir();
        makeKey(dir, "receiver"); // named by the config file ("key = receiver")
        const senderA = makeKey(dir, "sender-a");
        const senderB = makeKey(dir, "sender-b");
        writeFileSync(join(dir, "keys-a"), `${senderA.line}\n`);
        writeFileSync(join(dir, "keys-ab"), `${senderA.line}\n${senderB.line}\n`);
        const firstCert = writeCertificate(dir);
        const [game, dns, old, ntp] = [
          await freePort("udp"),
          await freePort("udp"),
          await freePort("udp"),
          await freePort("udp"),
        ];
        const tcp = await freePort("tcp");
        const [gameTarget, dnsTarget, dnsMoved] = [await startEcho(), await startEcho(), await startEcho()];
        const [oldTarget, ntpTarget] = [await startEcho(), await startEcho()];
        let movedHits = 0;
        let dnsHits = 0;
        let ntpHits = 0;
        dnsMoved.on("message", () => movedHits++);
        dnsTarget.on("message", () => dnsHits++);
        ntpTarget.on("message", () => ntpHits++);
        const receiverConfig = join(dir, "receiver.toml");
        const receiverSettings = {
          udp: [`game=127.0.0.1:${game}`, `dns=127.0.0.1:${dns}`, `old=127.0.0.1:${old}`],
          tcp: `127.0.0.1:${tcp}`,
          key: "receiver",
          "authorized-keys": "keys-a",
          tls: true,
          "tls-cert": "cert.pem",
          "tls-key": "key.pem",
          "idle-timeout": 60,
          metrics: "127.0.0.1:0",
        };
        writeConfig(receiverConfig, receiverSettings);
        const senderConfig = join(dir, "sender.toml");
        const target = (port: number) => `127.0.0.1:${port}`;
        // The sender has ntp's target from the start: served by nobody until the receiver adds ntp.
        const others = [`old=${target(oldTarget.address().port)}`, `ntp=${target(ntpTarget.address().port)}`];
        const senderSettings = {
          udp: [`game=${target(gameTarget.address().port)}`, `dns=${target(dnsTarget.address().port)}`, ...others],
          tcp: `127.0.0.1:${tcp}`,
          key: "sender-a",
          tls: true,
        };
        writeConfig(senderConfig, senderSettings);
        const receiver = startCli(runtime, ["receiver", "--config", receiverConfig]);
        await logged(receiver, /receiver listening/);
        const sender = startCli(runtime, ["sender", "--config", senderConfig]);
        await logged(receiver, /sender .* accepted/);
        assert.equal(await udpRequest(dns, "dns-before"), "dns-before");
        assert.equal(await udpRequest(old, "old-before"), "old-before");
        await assert.rejects(udpRequest(ntp, "not yet", 500), /no UDP reply/);

        const load = await Load.start(game, 20);
        await sleep(1000);
        // Mid-load: a renewed certificate (same files), a new authorized-keys file, a new idle timeout,
        // ntp added and old removed.
        const renewedCert = writeCertificate(dir);
        const reloaded = {
          ...receiverSettings,
          udp: [`game=127.0.0.1:${game}`, `dns=127.0.0.1:${dns}`, `ntp=127.0.0.1:${ntp}`],
          "authorized-keys": "keys-ab",
          "idle-timeout": 45,
        };
        writeConfig(receiverConfig, reloaded);
        receiver.child.kill("SIGHUP");
        // And the sender's dns mapping to another target.
        writeConfig(senderConfig, {
          ...senderSettings,
          udp: [`game=${target(gameTarget.address().port)}`, `dns=${target(dnsMoved.address().port)}`, ...others],
        });
        sender.child.kill("SIGHUP");
        await logged(receiver, /reloaded the configuration \(SIGHUP\)/);
        await logged(sender, /reloaded the configuration \(SIGHUP\)/);
        await sleep(1000);
        const totals = await load.stop();
        console.log(
          `reload e2e (${runtime}): game mapping ${totals.sent} datagrams sent by 20 clients, ${totals.echoed} echoed, ${totals.lost} lost`,
        );
        assert.ok(totals.sent >= 20 * 50, `a steady load (${totals.sent} datagrams)`);
        assert.equal(totals.lost, 0, "no datagram of the untouched mapping lost across the reloads");

        const receiverLine =
          receiver
            .stderr()
            .split("\n")
            .find((l) => l.includes("reloaded the configuration")) ?? "";
        assert.match(receiverLine, /--idle-timeout 60 → 45/);
        assert.match(receiverLine, /--authorized-keys .*keys-a → .*keys-ab/);
        assert.ok(receiverLine.includes(`TLS certificate ${renewedCert} (was ${firstCert})`), receiverLine);
        assert.ok(
          receiverLine.includes(
            `mapping old removed (was 127.0.0.1:${old}); mapping ntp=127.0.0.1:${ntp} added; listening on UDP ntp=127.0.0.1:${ntp}`,
          ),
          receiverLine,
        );
        // The removed mapping: its flow closed, the sender told, its port closed (nothing answers).
        await logged(receiver, /mapping old removed: closing its flow/);
        await logged(sender, /mapping old: removed by the receiver: "removed from the receiver.s configuration"/);
        await assert.rejects(udpRequest(old, "old-after", 1500), /no UDP reply/);
        // The added one: a client gets through to its target.
        assert.equal(await udpRequest(ntp, "ntp-after"), "ntp-after");
        assert.ok(ntpHits >= 1, `ntp target reached ${ntpHits} time(s)`);
        const rows = await scrape(metricsUrl(receiver.stderr()) as string);
        assert.ok((sample(rows, "mcudpt_mapping_datagrams_total", 'mapping="ntp",direction="in"') ?? 0) >= 1);
        // A removed mapping is gone from the metrics (and the status), as if never configured.
        assert.equal(sample(rows, "mcudpt_mapping_flows", 'mapping="old"'), undefined);
        // A new connection sees the renewed certificate; the sender's connection was never replaced.
        assert.equal(await servedFingerprint(tcp), renewedCert);
        assert.equal(receiver.count(/sender .* accepted/), 1);
        // The sender's dns: a new flow goes to the new target; the flow opened before stays with the old.
        const senderLine =
          sender
            .stderr()
            .split("\n")
            .find((l) => l.includes("reloaded the configuration")) ?? "";
        assert.match(
          senderLine,
          new RegExp(`mapping "dns": new flows go to 127\\.0\\.0\\.1:${dnsMoved.address().port}`),
        );
        assert.equal(await udpRequest(dns, "dns-after"), "dns-after");
        assert.equal(movedHits >= 1 && dnsHits >= 1, true, `old target ${dnsHits}, new target ${movedHits}`);
        // The added key is admitted: a second sender for the same mappings, which waits as standby (§18).
        const other = startCli(runtime, [
          "sender",
          "--udp",
          `game=${target(gameTarget.address().port)}`,
          "--udp",
          `dns=${target(dnsMoved.address().port)}`,
          "--tcp",
          `127.0.0.1:${tcp}`,
          "--key",
          senderB.path,
          "--tls",
        ]);
        await logged(receiver, new RegExp(`key ${regexQuote(senderB.fingerprint)}: listed in .*keys-ab`));
        await logged(receiver, /sender \S+ accepted/, 2);
        assert.doesNotMatch(receiver.stderr(), /refusing sender/);
        await stopWith(other, "SIGTERM");
        const metrics = await scrape(metricsUrl(receiver.stderr()) as string);
        assert.equal(sample(metrics, "mcudpt_config_reloads_total", 'result="ok"'), 1);
        assert.equal(sample(metrics, "mcudpt_config_reloads_total", 'result="failed"'), 0);
        // A mapping on a port in use: the reload fails in one line and changes nothing (dns is kept).
        const busy = `busy=127.0.0.1:${oldTarget.address().port}`;
        writeConfig(receiverConfig, { ...reloaded, udp: [`game=127.0.0.1:${game}`, `ntp=127.0.0.1:${ntp}`, busy] });
        receiver.child.kill("SIGHUP");
        await logged(
          receiver,
          new RegExp(
            `reload \\(SIGHUP\\) failed, the running configuration is kept: cannot listen on UDP 127\\.0\\.0\\.1:${oldTarget.address().port}: `,
          ),
        );
        assert.equal(await udpRequest(dns, "dns-kept"), "dns-kept");
        assert.equal(await udpRequest(ntp, "ntp-kept"), "ntp-kept");
        assert.equal((await stopWith(sender, "SIGTERM")).code, 0);
        assert.equal((await stopWith(receiver, "SIGTERM")).code, 0);
        for (const process of [receiver, sender]) assert.doesNotMatch(process.stderr(), /internal error|unexpected/);
        for (const socket of [gameTarget, dnsTarget, dnsMoved, oldTarget, ntpTarget]) socket.close();
      },
    );

    it(
      "a key removed ends its session; broken reloads keep the configuration, log one line, count",
      TIMEOUT,
      async () => {
        const dir = workDir();
        const receiverKey = makeKey(dir, "receiver");
        const senderA = makeKey(dir, "sender-a");
        writeFileSync(join(dir, "keys"), `${senderA.line}\n`);
        const firstCert = writeCertificate(dir);
        const [udp, tcp] = [await freePort("udp"), await freePort("tcp")];
        const echo = await startEcho();
        const config = join(dir, "receiver.toml");
        const settings = {
          udp: `127.0.0.1:${udp}`,
          tcp: `127.0.0.1:${tcp}`,
          key: receiverKey.path,
          "authorized-keys": "keys",
          tls: true,
          "tls-cert": "cert.pem",
          "tls-key": "key.pem",
          metrics: "127.0.0.1:0",
        };
        writeConfig(config, settings);
        const receiver = startCli(runtime, ["receiver", "--config", config]);
        await logged(receiver, /receiver listening/);
        const sender = startSender(runtime, echo, tcp, ["--key", senderA.path, "--tls"]);
        await logged(receiver, /sender .* accepted/);
        assert.equal(await udpRequest(udp, "one"), "one");

        const failures = /reload \(SIGHUP\) failed, the running configuration is kept: /;
        const broken: Array<[string, () => void, RegExp]> = [
          ["a config file that is not TOML", () => writeFileSync(config, "udp = [\n"), /invalid TOML/],
          [
            "a bad key line",
            () => {
              writeConfig(config, settings);
              writeFileSync(join(dir, "keys"), `${senderA.line}\nssh-ed25519 not-a-key\n`);
            },
            /keys line 2: not an "ssh-ed25519 AAAA… comment" public key line/,
          ],
          [
            "an unreadable certificate",
            () => {
              writeFileSync(join(dir, "keys"), `${senderA.line}\n`);
              writeFileSync(join(dir, "cert.pem"), "-----BEGIN CERTIFICATE-----\ngarbage\n");
            },
            /cert\.pem is not a PEM certificate/,
          ],
          [
            "a certificate file that is gone",
            () => writeConfig(config, { ...settings, "tls-cert": "missing.pem" }),
            /missing\.pem/,
          ],
        ];
        for (const [n, [what, breakIt, why]] of broken.entries()) {
          breakIt();
          receiver.child.kill("SIGHUP");
          await logged(receiver, failures, n + 1);
          const lines = receiver
            .stderr()
            .split("\n")
            .filter((l) => failures.test(l));
          assert.equal(lines.length, n + 1, `one line for ${what}`);
          assert.match(lines[n], why, what);
          // Kept: the same connection carries traffic, the same certificate is served.
          assert.equal(await udpRequest(udp, `still ${n}`), `still ${n}`);
          assert.equal(await servedFingerprint(tcp), firstCert);
        }
        const failed = await scrape(metricsUrl(receiver.stderr()) as string);
        assert.equal(sample(failed, "mcudpt_config_reloads_total", 'result="failed"'), broken.length);
        assert.equal(sample(failed, "mcudpt_config_last_reload_successful"), 0);

        // Repaired, without sender-a's key: its session ends at once, with a reason.
        writeCertificate(dir);
        writeConfig(config, settings);
        writeFileSync(join(dir, "keys"), "# nobody yet\n");
        receiver.child.kill("SIGHUP");
        await logged(receiver, /reloaded the configuration \(SIGHUP\): .*1 sender session ended/);
        await logged(
          receiver,
          new RegExp(`ending the sender's session .*key ${regexQuote(senderA.fingerprint)} is not in`),
        );
        await logged(sender, new RegExp(`key ${regexQuote(senderA.fingerprint)} is no longer authorized here`));
        const ok = await scrape(metricsUrl(receiver.stderr()) as string);
        assert.equal(sample(ok, "mcudpt_config_reloads_total", 'result="ok"'), 1);
        assert.equal(sample(ok, "mcudpt_config_last_reload_successful"), 1);
        assert.equal(sample(ok, "mcudpt_peer_connected"), 0);
        assert.equal((await stopWith(sender, "SIGTERM")).code, 0);
        assert.equal((await stopWith(receiver, "SIGTERM")).code, 0);
        echo.close();
      },
    );

    it("refuses what needs a restart, naming it; the command line still wins; --verbose applies", TIMEOUT, async () => {
      const dir = workDir();
      const [udp, extra, tcp] = [await freePort("udp"), await freePort("udp"), await freePort("tcp")];
      const echo = await startEcho();
      const config = join(dir, "receiver.toml");
      const settings = { udp: `127.0.0.1:${udp}`, tcp: `127.0.0.1:${tcp}`, secret: "e2e", "idle-timeout": 60 };
      writeConfig(config, settings);
      // --max-flows typed: the file's value never applies, at start or at a reload.
      const receiver = startCli(runtime, ["receiver", "--config", config, "--max-flows", "100"]);
      await logged(receiver, /receiver listening/);
      const sender = startSender(runtime, echo, tcp, ["--secret", "e2e"]);
      await logged(receiver, /sender .* accepted/);
      const failures = /reload \(SIGHUP\) failed, the running configuration is kept: (.*)$/;
      const refused: Array<[Record<string, string | number | boolean | string[]>, RegExp]> = [
        [{ keepalive: 5 }, /^--keepalive changed: that needs a restart$/],
        [{ "log-format": "json" }, /^--log-format changed: that needs a restart$/],
        [{ secret: "other", keepalive: 5 }, /^--secret and --keepalive changed: those need a restart$/],
        [
          { udp: [`127.0.0.1:${udp}`, `127.0.0.1:${extra}`] },
          // A shared secret: its sender must serve every mapping (PROTOCOL.md §18).
          new RegExp(
            `^adding or removing mappings needs a restart: only a receiver that listens in key mode can change them .*\\(added #2 \\(127\\.0\\.0\\.1:${extra}\\)\\)$`,
          ),
        ],
        [{ udp: `127.0.0.1:${extra}` }, /^moving a public port \(--udp\) needs a restart/],
        // One port made a range from the same first port: another mapping, not "nothing changed".
        [
          { udp: `127.0.0.1:${udp}-${udp + 1}` },
          new RegExp(
            `^moving a public port \\(--udp\\) needs a restart \\(#1 \\(127\\.0\\.0\\.1:${udp}\\) → 127\\.0\\.0\\.1:${udp}-${udp + 1}\\)$`,
          ),
        ],
      ];
      for (const [n, [change, why]] of refused.entries()) {
        writeConfig(config, { ...settings, ...change });
        receiver.child.kill("SIGHUP");
        await logged(receiver, failures, n + 1);
        const line = receiver
          .stderr()
          .split("\n")
          .filter((l) => failures.test(l))[n];
        assert.match(failures.exec(line)?.[1] ?? "", why, line);
      }
      assert.equal(await udpRequest(udp, "kept"), "kept");
      // Allowed: a new idle timeout and --verbose; the file's max-flows loses to the typed one.
      writeConfig(config, { ...settings, "idle-timeout": 30, "max-flows": 5, verbose: true });
      receiver.child.kill("SIGHUP");
      await logged(receiver, /reloaded the configuration \(SIGHUP\): --idle-timeout 60 → 30; --verbose off → on$/);
      await udpRequest(udp, "debug now");
      await logged(receiver, /flow \d+ opened for client/);
      assert.equal((await stopWith(sender, "SIGTERM")).code, 0);
      assert.equal((await stopWith(receiver, "SIGTERM")).code, 0);
      echo.close();
    });
  });
}

function regexQuote(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&");
}
