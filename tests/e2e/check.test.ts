/**
 * `mcudpt check` on the built CLI, under node and bun: a good receiver and sender configuration
 * pass with a one-line summary (and --bind binds their ports), a check creates no key nor
 * certificate, and each kind of problem is one line on stderr with exit 2: a bad address, an
 * unreadable file, a bad key file, a bad certificate, a bad authorized_keys line, a mapping name
 * given twice, too many mappings, a port in use (with --bind), an unknown config key; several
 * problems at once are several lines. Files live in temp dirs, MCUDPT_CONFIG_DIR too; ports are
 * ephemeral ones on 127.0.0.1.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { createSocket, type Socket } from "node:dgram";
import { chmodSync, readdirSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:net";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { generateKeyPair, loadOrCreateCertificate, silentLogger } from "@mcudpt/core";
import { CLI, freePort, RUNTIMES, type Runtime } from "../helpers/cli-process.ts";
import { scratchDir } from "../helpers/scratch.ts";

const dir = scratchDir("mcudpt-check-");
let files = 0;

/** A file in the temp dir (mode 600: nothing here should draw the "others can read it" warning). */
function file(name: string, text: string): string {
  const path = join(dir, `${files++}-${name}`);
  writeFileSync(path, text);
  chmodSync(path, 0o600);
  return path;
}

const receiverKey = generateKeyPair("receiver@check");
const senderKey = generateKeyPair("sender@check");
const RECEIVER_KEY = file("receiver_key", receiverKey.privateKeyPem);
const SENDER_KEY = file("sender_key", senderKey.privateKeyPem);
const AUTHORIZED = file("authorized_senders", `# the senders\n${senderKey.publicKeyLine}\n`);
const certDir = scratchDir("mcudpt-check-tls-");
const CERT = join(certDir, "cert.pem");
const CERT_KEY = join(certDir, "key.pem");
loadOrCreateCertificate(CERT, CERT_KEY, silentLogger);
const NOT_PEM = file("garbage.pem", "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n");

interface Result {
  status: number | null;
  stdout: string;
  /** stderr's lines, without the trailing empty one. */
  lines: string[];
  configDir: string;
}

function check(runtime: Runtime, args: string[]): Result {
  const configDir = scratchDir("mcudpt-check-home-");
  const result = spawnSync(runtime, [CLI, "check", ...args], {
    encoding: "utf8",
    timeout: 30_000,
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, MCUDPT_SECRET: "", MCUDPT_CONFIG_DIR: configDir },
  });
  const lines = result.stderr.split("\n").filter((line) => line !== "");
  return { status: result.status, stdout: result.stdout, lines, configDir };
}

/** Exit 2, nothing on stdout, and exactly `patterns.length` lines on stderr, each matching its pattern. */
function refused(result: Result, ...patterns: RegExp[]): void {
  const got = `stderr:\n${result.lines.join("\n")}`;
  assert.equal(result.status, 2, got);
  assert.equal(result.stdout, "", "no summary");
  assert.equal(result.lines.length, patterns.length, got);
  for (const [index, pattern] of patterns.entries()) {
    assert.match(result.lines[index], /^mcudpt: /, got);
    assert.match(result.lines[index], pattern, got);
    assert.doesNotMatch(result.lines[index], /^\s+at |Error: /, "no stack trace");
  }
}

function toml(settings: Record<string, string | number | boolean | string[]>): string {
  return Object.entries(settings)
    .map(([key, value]) => `${key} = ${JSON.stringify(value)}`)
    .join("\n");
}

const held: Array<Socket | Server> = [];
after(() => {
  for (const socket of held) {
    try {
      socket.close();
    } catch {
      // closed by its test
    }
  }
});

for (const runtime of RUNTIMES) {
  describe(`mcudpt check (${runtime})`, () => {
    it("passes a good receiver configuration (TOML) with a one-line summary, its ports bound with --bind", async () => {
      const [dns, ntp, tcp, metrics] = [
        await freePort("udp"),
        await freePort("udp"),
        await freePort("tcp"),
        await freePort("tcp"),
      ];
      const config = file(
        "receiver.toml",
        toml({
          udp: [`dns=127.0.0.1:${dns}`, `ntp=127.0.0.1:${ntp}`],
          tcp: `127.0.0.1:${tcp}`,
          key: RECEIVER_KEY,
          "authorized-keys": AUTHORIZED,
          tls: true,
          "tls-cert": CERT,
          "tls-key": CERT_KEY,
          "idle-timeout": 120,
          metrics: `127.0.0.1:${metrics}`,
        }),
      );
      const result = check(runtime, ["receiver", "--config", config, "--bind"]);
      assert.equal(result.status, 0, result.lines.join("\n"));
      assert.deepEqual(result.lines, [], "no warnings");
      const lines = result.stdout.split("\n").filter(Boolean);
      assert.equal(lines.length, 1, result.stdout);
      assert.match(
        lines[0],
        new RegExp(
          `^receiver settings OK; UDP dns=127\\.0\\.0\\.1:${dns}, ntp=127\\.0\\.0\\.1:${ntp}; TCP listen 127\\.0\\.0\\.1:${tcp}; ` +
            "key SHA256:\\S+ \\(.*receiver_key\\), senders: only those in .*authorized_senders; TLS certificate SHA256:\\S+; .*ports bindable$",
        ),
      );
      // Released: the receiver itself can bind them now.
      for (const port of [dns, ntp]) await holdUdp(port).then((socket) => socket.close());
    });

    it("passes a good sender configuration (JSON), dialing, with a pinned receiver key and a CA", () => {
      const config = file(
        "sender.json",
        JSON.stringify({
          udp: ["dns=127.0.0.1:53", "ntp=127.0.0.1:123"],
          tcp: "127.0.0.1:5353",
          key: SENDER_KEY,
          "receiver-key": generateKeyPair("x").fingerprint,
          tls: true,
          "tls-ca": CERT,
          "proxy-protocol": true,
        }),
      );
      const result = check(runtime, ["sender", "--config", config]);
      assert.equal(result.status, 0, result.lines.join("\n"));
      assert.deepEqual(result.lines, []);
      assert.match(
        result.stdout,
        /^sender settings OK; targets dns=127\.0\.0\.1:53, ntp=127\.0\.0\.1:123; dials the receiver at 127\.0\.0\.1:5353; key SHA256:\S+ \(.*sender_key\), receiver key pinned; TLS; ports not tried \(--bind tries them\)\n$/,
      );
    });

    it("names the carrier, the proxy, the lanes and the redundancy in its summary", () => {
      const sender = check(runtime, [
        "sender",
        "--udp",
        "game=127.0.0.1:27015",
        "--udp",
        "voip=127.0.0.1:5060",
        "--tcp",
        "ws://127.0.0.1:8080/tunnel",
        "--secret",
        "s",
        "--lanes",
        "2",
        "--redundant-mappings",
        "voip",
        "--proxy",
        "http://user:hunter2@127.0.0.1:3128",
      ]);
      assert.equal(sender.status, 0, sender.lines.join("\n"));
      assert.match(
        sender.stdout,
        /; shared secret; WebSocket ws path \/tunnel; through the proxy http:\/\/user:\*\*\*@127\.0\.0\.1:3128; 2 lanes; voip on two lanes; ports not tried/,
      );
      assert.doesNotMatch(sender.stdout, /hunter2/, "the proxy's password is not printed");
      const receiver = check(runtime, [
        "receiver",
        "--udp",
        "127.0.0.1:5300",
        "--tcp",
        "ws://127.0.0.1:8080/t",
        "--secret",
        "s",
        "--ws-trusted-proxy",
        "127.0.0.1,10.0.0.0/8",
        "--max-lanes",
        "4",
      ]);
      assert.equal(receiver.status, 0, receiver.lines.join("\n"));
      assert.match(
        receiver.stdout,
        /; WebSocket ws path \/t; client addresses from X-Forwarded-For\/Forwarded of 127\.0\.0\.1,10\.0\.0\.0\/8; up to 4 lanes per session; /,
      );
      const everything = check(runtime, [
        "sender",
        "--udp",
        "127.0.0.1:53",
        "--secret",
        "s",
        "--lanes",
        "3",
        "--redundant",
      ]);
      assert.equal(everything.status, 0, everything.lines.join("\n"));
      assert.match(everything.stdout, /; shared secret; 3 lanes; every datagram on two lanes; /);
    });

    it("creates nothing where a start would create the key and the TLS certificate: it says so", () => {
      const result = check(runtime, ["receiver", "--udp", "127.0.0.1:5300", "--tls"]);
      assert.equal(result.status, 0, result.lines.join("\n"));
      assert.match(result.stdout, /key \S+id_ed25519 \(none yet: a start creates it\)/);
      assert.match(result.stdout, /TLS \(no certificate yet: a start generates a self-signed one in \S+tls-cert\.pem/);
      assert.deepEqual(readdirSync(result.configDir), [], "the config dir stays empty");
    });

    it("a bad address", () => {
      refused(
        check(runtime, ["receiver", "--config", file("addr.toml", toml({ udp: "dns=nonsense" }))]),
        /^mcudpt: --udp: "nonsense" has no port; write HOST:PORT or :PORT \(set in config file .*addr\.toml\)$/,
      );
      refused(check(runtime, ["sender", "--tcp", "[::1:5353"]), /^mcudpt: --tcp: "\[::1:5353" is not \[IPv6\]:PORT$/);
    });

    it("lanes and redundancy as a start reads them: the side, --lanes 2, the mapping names", () => {
      const sender = ["sender", "--secret", "x", "--udp", "game=127.0.0.1:27015-27030", "--udp", "dns=127.0.0.1:53"];
      refused(
        check(runtime, [...sender, "--lanes", "2", "--redundant-mappings", "game,voip"]),
        /^mcudpt: --redundant-mappings: this side has no mapping "voip" \(its mappings: game, dns\)$/,
      );
      refused(
        check(runtime, [...sender, "--redundant"]),
        /^mcudpt: --redundant sends every datagram on two lanes: give --lanes 2 or more$/,
      );
      refused(
        check(runtime, ["receiver", "--secret", "x", "--lanes", "2"]),
        /^mcudpt: --lanes is for the dialing side; this side listens/,
      );
      const good = check(runtime, [
        ...sender,
        "--lanes",
        "2",
        "--redundant-mappings",
        "game",
        "--redundant-max-bytes",
        "512",
      ]);
      assert.equal(good.status, 0, good.lines.join("\n"));
      assert.match(good.stdout, /^sender settings OK; /);
    });

    it("the WebSocket carrier: wss:// stands for --tls; the carrier flags are checked like a start checks them", () => {
      const good = check(runtime, [
        "sender",
        "--tcp",
        "wss://tunnel.example.com/mcudpt",
        "--tls-fingerprint",
        "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU",
        "--ws-header",
        "Authorization: Bearer x",
        "--proxy",
        "http://alice:pw@proxy.corp:3128",
        "--secret",
        "s",
      ]);
      assert.equal(good.status, 0, good.lines.join("\n"));
      refused(
        check(runtime, ["receiver", "--tcp", "ws://127.0.0.1:1/mcudpt", "--proxy", "http://p:1", "--secret", "s"]),
        /^mcudpt: --proxy is for the dialing side: this end listens for the sender$/,
      );
      refused(
        check(runtime, ["sender", "--tcp", "ws://h/x", "--tls", "--secret", "s"]),
        /^mcudpt: --tls with a ws:\/\/ address: write wss:\/\/ for WebSocket over TLS$/,
      );
    });

    it("an unreadable file", () => {
      const missing = join(dir, "no-such-file");
      refused(
        check(runtime, ["receiver", "--config", file("unreadable.toml", toml({ "authorized-keys": missing }))]),
        /^mcudpt: --authorized-keys: cannot read \S+no-such-file: no such file \(ENOENT\) \(set in config file \S+unreadable\.toml\)$/,
      );
      refused(
        check(runtime, ["sender", "--secret-file", missing]),
        /^mcudpt: --secret-file: cannot read \S+no-such-file: no such file \(ENOENT\)$/,
      );
      refused(check(runtime, ["receiver", "--config", missing]), /^mcudpt: --config: cannot read \S+no-such-file/);
    });

    it("a bad key file", () => {
      const bad = file("bad_key", "this is not a key\n");
      refused(check(runtime, ["sender", "--key", bad]), /^mcudpt: \S+bad_key is not a private key mcudpt can read/);
      const pub = file("key.pub", `${senderKey.publicKeyLine}\n`);
      refused(check(runtime, ["sender", "--key", pub]), /^mcudpt: \S+key\.pub is a public key: give the private key/);
    });

    it("a bad certificate", () => {
      refused(
        check(runtime, ["receiver", "--tls", "--tls-cert", NOT_PEM, "--tls-key", CERT_KEY]),
        /^mcudpt: TLS: \S+garbage\.pem is not a PEM certificate/,
      );
      refused(
        check(runtime, ["sender", "--tls", "--tls-ca", NOT_PEM]),
        /^mcudpt: --tls-ca: \S+garbage\.pem is not a PEM certificate$/,
      );
    });

    it("a bad authorized_keys line", () => {
      const keys = file("authorized_bad", `${senderKey.publicKeyLine}\nssh-rsa AAAAB3NzaC1yc2E= old key\n`);
      refused(
        check(runtime, ["receiver", "--authorized-keys", keys]),
        /^mcudpt: \S+authorized_bad line 2: not an "ssh-ed25519 AAAA… comment" public key line$/,
      );
    });

    it("a mapping name given twice", () => {
      refused(
        check(runtime, [
          "receiver",
          "--config",
          file("dup.toml", toml({ udp: ["dns=:5301", "ntp=:5302", "dns=:5303"] })),
        ]),
        /^mcudpt: --udp: mapping name "dns" given twice \(set in config file \S+dup\.toml\)$/,
      );
      refused(
        check(runtime, ["sender", "--udp", "a=127.0.0.1:1", "--udp", "a=127.0.0.1:2"]),
        /^mcudpt: --udp: mapping name "a" given twice$/,
      );
    });

    it("too many mappings", () => {
      const udp = Array.from({ length: 33 }, (_, i) => `m${i}=127.0.0.1:${6000 + i}`);
      refused(
        check(runtime, ["receiver", "--config", file("many.toml", toml({ udp }))]),
        /^mcudpt: at most 32 --udp mappings, not 33$/,
      );
    });

    it("a port in use, with --bind (and without --bind, not tried)", async () => {
      const udp = await holdUdp(0);
      const tcp = await holdTcp();
      const args = ["receiver", "--udp", `dns=127.0.0.1:${udp.address().port}`, "--tcp", `127.0.0.1:${portOf(tcp)}`];
      refused(
        check(runtime, [...args, "--bind"]),
        new RegExp(
          `^mcudpt: --udp dns=127\\.0\\.0\\.1:${udp.address().port}: cannot listen on UDP 127\\.0\\.0\\.1:\\d+: address already in use \\(EADDRINUSE\\)$`,
        ),
        new RegExp(
          `^mcudpt: --tcp 127\\.0\\.0\\.1:${portOf(tcp)}: cannot listen on TCP 127\\.0\\.0\\.1:\\d+: address already in use \\(EADDRINUSE\\)$`,
        ),
      );
      const unbound = check(runtime, args);
      assert.equal(unbound.status, 0, unbound.lines.join("\n"));
      assert.match(unbound.stdout, /ports not tried \(--bind tries them\)$/m);
    });

    it("an unknown key in the config file", () => {
      refused(
        check(runtime, ["sender", "--config", file("unknown.toml", 'colour = "blue"\ntcp = "127.0.0.1:5353"')]),
        /^mcudpt: config file \S+unknown\.toml: "colour" is not a setting \(keys are the long flag names, as in --help\)$/,
      );
    });

    it("several problems at once: one line each, the good settings still checked", () => {
      const config = file(
        "several.toml",
        toml({
          colour: "blue",
          "max-flow": 10,
          udp: ["dns=:5301", "dns=:5302", "ntp=nonsense"],
          "idle-timeout": "soon",
          "authorized-keys": join(dir, "missing_authorized_keys"),
          key: file("several_bad_key", "garbage\n"),
          "log-format": "json",
        }),
      );
      refused(
        check(runtime, ["receiver", "--config", config, "--keepalive", "0"]),
        /config file \S+several\.toml: "colour" is not a setting/,
        /config file \S+several\.toml: "max-flow" is not a setting/,
        /^mcudpt: --idle-timeout: "soon" is not a positive number of seconds .*\(set in config file \S+several\.toml\)$/,
        /^mcudpt: --keepalive: "0" is not a positive number of seconds/,
        /^mcudpt: --udp: mapping name "dns" given twice/,
        /^mcudpt: --udp: "nonsense" has no port/,
        /^mcudpt: --authorized-keys: cannot read \S+missing_authorized_keys: no such file \(ENOENT\)/,
        /^mcudpt: \S+several_bad_key is not a private key mcudpt can read/,
      );
    });

    it("warnings a start would log go to stderr, and still exit 0 with the summary", () => {
      const result = check(runtime, ["receiver", "--udp", "127.0.0.1:5300", "--idle-timeout", "10", "--secret", "s"]);
      assert.equal(result.status, 0, result.lines.join("\n"));
      assert.equal(result.lines.length, 1, result.lines.join("\n"));
      assert.match(result.lines[0], /^mcudpt: warning: --idle-timeout 10 s is shorter than 3 × --keepalive/);
      assert.match(result.stdout, /^receiver settings OK; UDP 127\.0\.0\.1:5300; TCP listen :1937; shared secret; /);
    });

    it("--log-format json on the command line: the problems and the summary are JSON lines", () => {
      const bad = check(runtime, ["sender", "--log-format", "json", "--udp", "x", "--keepalive", "no"]);
      assert.equal(bad.status, 2);
      const records = bad.lines.map((line) => JSON.parse(line));
      assert.deepEqual(
        records.map((r) => [r.level, r.msg.split(":")[0]]),
        [
          ["error", "--keepalive"],
          ["error", "--udp"],
        ],
      );
      const good = check(runtime, ["sender", "--log-format=json", "--secret", "s"]);
      assert.equal(good.status, 0);
      assert.match(JSON.parse(good.stdout).msg, /^sender settings OK; /);
    });

    it("a role it does not know, and a flag of the other role, are one line (exit 2)", () => {
      refused(check(runtime, ["client"]), /^mcudpt: check: "client" is not a role/);
      refused(check(runtime, ["receiver", "--listen", ":1"]), /^mcudpt: --listen is a sender setting/);
    });
  });
}

function holdUdp(port: number): Promise<Socket> {
  const socket = createSocket("udp4");
  return new Promise((resolve, reject) => {
    socket.once("error", reject);
    socket.bind(port, "127.0.0.1", () => {
      held.push(socket);
      resolve(socket);
    });
  });
}

function holdTcp(): Promise<Server> {
  const server = createServer();
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      held.push(server);
      resolve(server);
    });
  });
}

function portOf(server: Server): number {
  return (server.address() as { port: number }).port;
}
