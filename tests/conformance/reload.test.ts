/**
 * A running tunnel reloaded (the core's handle.reload, what SIGHUP drives): a renewed TLS
 * certificate served to new connections while the established one carries on, a key removed from
 * the authorized keys ending that peer's session, a sender mapping sent to a new target (new flows
 * only), new limits, and reloads that must change nothing (a mapping added or removed). Every
 * pairing of transports under bun test, Node's under real node. node:test/node:assert only.
 */
import assert from "node:assert/strict";
import { generateKeyPairSync } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import {
  certificateFingerprint,
  createCertificate,
  fileAdmission,
  pemFingerprint,
  publicKeyLine,
  type Transport,
  UserError,
} from "@mcudpt/core";
import { DEFAULTS } from "@mcudpt/protocol";
import { startTunnel } from "../helpers/scenarios.js";
import { testIdentity } from "../helpers/keys.js";
import { availableTransports } from "../helpers/transports.js";
import { eventually, LOOPBACK, sleep, startClient, startEcho, text } from "../helpers/tunnel.js";

const BOUNDED = { timeout: 60_000 };

function certificate(name: string) {
  const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const cert = createCertificate({
    commonName: name,
    publicKey,
    issuerKey: privateKey,
    altNames: ["127.0.0.1"],
    notAfter: new Date(Date.now() + 86_400_000),
  });
  return { cert, key: privateKey.export({ type: "pkcs8", format: "pem" }) as string };
}

/** The certificate a new TLS connection to 127.0.0.1:`port` is shown. */
async function servedFingerprint(transport: Transport, port: number): Promise<string> {
  const connection = await transport.connectTcp({
    host: LOOPBACK,
    port,
    timeoutMs: 5000,
    tls: {},
    handlers: { onData() {}, onDrain() {}, onClose() {} },
  });
  const der = connection.peerCertificate;
  connection.destroy();
  assert.ok(der, "a TLS connection has the peer's certificate");
  return certificateFingerprint(der);
}

const limits = (overrides: { idleTimeoutMs?: number; maxFlows?: number } = {}) => ({
  idleTimeoutMs: overrides.idleTimeoutMs ?? DEFAULTS.idleTimeoutMs,
  maxFlows: overrides.maxFlows ?? DEFAULTS.maxFlows,
  maxBufferBytes: DEFAULTS.maxBufferBytes,
  maxDelayMs: 0,
  mappings: [{}],
});

const transports = availableTransports();
const first = certificate("mcudpt receiver");
const renewed = certificate("mcudpt receiver");

for (const listener of transports) {
  for (const connector of transports) {
    describe(`reload: ${listener.name} receiver, ${connector.name} sender`, () => {
      let echo: Awaited<ReturnType<typeof startEcho>>;
      before(async () => {
        echo = await startEcho(listener);
      });
      after(() => echo.close());

      it("a renewed certificate goes to new connections; the running one and its flows carry on", BOUNDED, async () => {
        const tunnel = await startTunnel(listener, echo.port, {
          senderTransport: connector,
          receiverTls: first,
          senderTls: {},
        });
        const client = await startClient(connector, tunnel.receiver.udpPort);
        try {
          assert.equal(text(await client.request("before")), "before");
          assert.equal(await servedFingerprint(connector, tunnel.receiver.tcpPort), pemFingerprint(first.cert));
          const done = await tunnel.receiver.reload({ tls: renewed });
          assert.deepEqual(done, ["new connections get the new certificate"]);
          assert.equal(await servedFingerprint(connector, tunnel.receiver.tcpPort), pemFingerprint(renewed.cert));
          // The same connection, the same flow: every datagram of a burst still comes back.
          const flowId = [...tunnel.receiver.machine.flows.values()][0].id;
          for (let i = 0; i < 50; i++) client.send(`after ${i}`);
          await eventually(() => client.replies.length >= 51, "50 echoes after the reload");
          assert.equal([...tunnel.receiver.machine.flows.values()][0].id, flowId);
          assert.equal(tunnel.sender.reconnects, 0);
        } finally {
          client.close();
          await tunnel.close();
        }
      });

      it(
        "-L over wss://: the listening sender serves the renewed certificate; the receiver's lane carries on",
        BOUNDED,
        async () => {
          const tunnel = await startTunnel(listener, echo.port, {
            senderTransport: connector,
            direction: "L",
            receiverTls: first,
            senderTls: {},
            carrier: {
              listen: { webSocket: { path: "/t" } },
              dial: { webSocket: { path: "/t", secure: true }, env: {} },
            },
          });
          const client = await startClient(listener, tunnel.receiver.udpPort);
          try {
            assert.equal(text(await client.request("before")), "before");
            assert.deepEqual(await tunnel.sender.reload({ tls: renewed }), ["new connections get the new certificate"]);
            assert.equal(await servedFingerprint(listener, tunnel.sender.tcpPort), pemFingerprint(renewed.cert));
            assert.equal(text(await client.request("after")), "after");
            assert.equal(tunnel.receiver.machine.stats.accepted, 1);
          } finally {
            client.close();
            await tunnel.close();
          }
        },
      );

      it("a certificate the runtime refuses changes nothing: the old one is still served", BOUNDED, async () => {
        const tunnel = await startTunnel(listener, echo.port, {
          senderTransport: connector,
          receiverTls: first,
          senderTls: {},
        });
        try {
          const mismatched = { cert: renewed.cert, key: first.key };
          await assert.rejects(tunnel.receiver.reload({ tls: mismatched, limits: limits({ maxFlows: 1 }) }));
          assert.equal(await servedFingerprint(connector, tunnel.receiver.tcpPort), pemFingerprint(first.cert));
          // Nor were the limits that came with it applied.
          const clients = await Promise.all([0, 1].map(() => startClient(connector, tunnel.receiver.udpPort)));
          for (const client of clients) assert.equal(text(await client.request("x")), "x");
          assert.equal(tunnel.receiver.machine.flows.size, 2);
          for (const client of clients) client.close();
        } finally {
          await tunnel.close();
        }
      });

      it(
        "a key removed from --authorized-keys ends its session at once; a key added is admitted",
        BOUNDED,
        async () => {
          const dir = mkdtempSync(join(tmpdir(), "mcudpt-reload-"));
          const authorizedKeys = join(dir, "authorized_keys");
          const knownSenders = join(dir, "known_senders");
          const senderKey = testIdentity("sender");
          writeFileSync(authorizedKeys, `${publicKeyLine(senderKey.publicKey, "sender")}\n`);
          const tunnel = await startTunnel(listener, echo.port, {
            senderTransport: connector,
            receiverConfig: { identity: testIdentity("receiver") },
            senderConfig: { identity: senderKey },
            trust: fileAdmission({ authorizedKeys, knownSenders }),
          });
          const client = await startClient(connector, tunnel.receiver.udpPort);
          try {
            assert.equal(text(await client.request("in")), "in");
            // Unchanged file: the session stays.
            assert.deepEqual(
              await tunnel.receiver.reload({ admission: fileAdmission({ authorizedKeys, knownSenders }) }),
              [],
            );
            assert.equal(tunnel.receiver.machine.session.peerConnected, true);
            writeFileSync(authorizedKeys, "# nobody\n");
            const done = await tunnel.receiver.reload({ admission: fileAdmission({ authorizedKeys, knownSenders }) });
            assert.deepEqual(done, ["1 sender session ended (key no longer admitted)"]);
            assert.equal(tunnel.receiver.machine.session.peerConnected, false);
            assert.equal(tunnel.receiver.machine.flows.size, 0);
            assert.ok(
              tunnel.receiverLog.lines.some((l) =>
                l.includes(`key ${senderKey.fingerprint} is not in ${authorizedKeys}`),
              ),
            );
            await eventually(
              () =>
                tunnel.senderLog.lines.some((l) =>
                  l.includes(`key ${senderKey.fingerprint} is no longer authorized here`),
                ),
              "the sender told why",
            );
            // Its reconnection is refused; put back in the file, it is admitted on the next one.
            await eventually(
              () => tunnel.receiverLog.lines.filter((l) => l.includes("refusing sender")).length > 0,
              "the reconnection refused",
              10_000,
            );
            assert.equal(tunnel.receiver.machine.session.peerConnected, false);
            // Added again, without a reload: the file is read at every handshake.
            writeFileSync(authorizedKeys, `${publicKeyLine(senderKey.publicKey, "sender, again")}\n`);
            await eventually(() => tunnel.receiver.machine.session.peerConnected, "the key admitted again", 10_000);
            assert.equal(text(await client.request("back")), "back");
          } finally {
            client.close();
            await tunnel.close();
            rmSync(dir, { recursive: true, force: true });
          }
        },
      );

      it("a key removed from known_senders (no allowlist) ends its session too", BOUNDED, async () => {
        const dir = mkdtempSync(join(tmpdir(), "mcudpt-reload-"));
        const knownSenders = join(dir, "known_senders");
        const senderKey = testIdentity("sender");
        writeFileSync(knownSenders, `${publicKeyLine(senderKey.publicKey, "approved once")}\n`);
        const tunnel = await startTunnel(listener, echo.port, {
          senderTransport: connector,
          receiverConfig: { identity: testIdentity("receiver") },
          senderConfig: { identity: senderKey },
          trust: fileAdmission({ knownSenders }),
        });
        try {
          writeFileSync(knownSenders, "");
          const done = await tunnel.receiver.reload({ admission: fileAdmission({ knownSenders }) });
          assert.deepEqual(done, ["1 sender session ended (key no longer admitted)"]);
          assert.ok(
            tunnel.receiverLog.lines.some((l) =>
              l.includes(`key ${senderKey.fingerprint} is no longer a known sender`),
            ),
          );
          assert.equal(tunnel.receiver.machine.session.peerConnected, false);
        } finally {
          await tunnel.close();
          rmSync(dir, { recursive: true, force: true });
        }
      });

      it("new limits apply at once: a lowered --max-flows evicts, the flows under it carry on", BOUNDED, async () => {
        const tunnel = await startTunnel(listener, echo.port, { senderTransport: connector });
        const clients = await Promise.all([0, 1, 2].map(() => startClient(connector, tunnel.receiver.udpPort)));
        try {
          for (const [i, client] of clients.entries()) {
            assert.equal(text(await client.request(`c${i}`)), `c${i}`);
            await sleep(2); // distinct activity times: client 0 is the least recently active
          }
          await tunnel.receiver.reload({ limits: limits({ maxFlows: 2 }) });
          await eventually(() => tunnel.sender.machine.flows.size === 2, "the sender told of the eviction");
          assert.equal(tunnel.receiver.machine.flows.size, 2);
          assert.equal(text(await clients[2].request("still")), "still");
        } finally {
          for (const client of clients) client.close();
          await tunnel.close();
        }
      });

      it(
        "a sender mapping's new target: new flows go there, an open flow stays with the old one",
        BOUNDED,
        async () => {
          const other = await startEcho(connector);
          const tunnel = await startTunnel(listener, echo.port, { senderTransport: connector });
          const early = await startClient(connector, tunnel.receiver.udpPort);
          const late = await startClient(connector, tunnel.receiver.udpPort);
          try {
            assert.equal(text(await early.request("one")), "one");
            const atFirst = echo.received;
            const done = await tunnel.sender.reload({ mappings: [{ target: { host: LOOPBACK, port: other.port } }] });
            assert.equal(done.length, 1);
            assert.match(done[0], new RegExp(`new flows go to 127\\.0\\.0\\.1:${other.port} \\(its 1 open flow stays`));
            assert.equal(text(await late.request("two")), "two");
            assert.equal(other.received, 1);
            assert.equal(text(await early.request("three")), "three");
            assert.equal(echo.received, atFirst + 1);
          } finally {
            early.close();
            late.close();
            other.close();
            await tunnel.close();
          }
        },
      );

      it(
        "a sender's --max-flows raised past what its flow-socket buffers allow is refused; lowered, applied",
        BOUNDED,
        async () => {
          const tunnel = await startTunnel(listener, echo.port, { senderTransport: connector });
          try {
            // 4096 flows × 256 KiB (the default buffer) is the 1 GiB bound: 5000 would pass it.
            await assert.rejects(
              tunnel.sender.reload({ limits: limits({ maxFlows: 5000 }) }),
              /--max-flows 5000: 5000 flow sockets of 256 KiB .* raising it that far needs a restart/,
            );
            assert.deepEqual(await tunnel.sender.reload({ limits: limits({ maxFlows: 1 }) }), []);
            const clients = await Promise.all([0, 1].map(() => startClient(connector, tunnel.receiver.udpPort)));
            for (const client of clients) assert.equal(text(await client.request("z")), "z");
            assert.equal(tunnel.sender.machine.flows.size, 1); // the second flow evicted the first
            for (const client of clients) client.close();
          } finally {
            await tunnel.close();
          }
        },
      );

      it("adding or removing a mapping is refused with one line and changes nothing", BOUNDED, async () => {
        const tunnel = await startTunnel(listener, echo.port, { senderTransport: connector });
        try {
          const target = { host: LOOPBACK, port: echo.port };
          await assert.rejects(
            tunnel.sender.reload({ mappings: [{ target }, { target }], limits: limits({ maxFlows: 1 }) }),
            (error: unknown) =>
              error instanceof UserError &&
              /^adding or removing mappings needs a restart \(added #2/.test(error.message),
          );
          const udp = { host: LOOPBACK, port: 0 };
          await assert.rejects(
            tunnel.receiver.reload({ mappings: [{ udp: { host: LOOPBACK, port: 1 } }] }),
            /moving a public port \(--udp\) needs a restart/,
          );
          await assert.rejects(tunnel.receiver.reload({ mappings: [{ udp }, { name: "x", udp }] }), /needs a restart/);
          const clients = await Promise.all([0, 1].map(() => startClient(connector, tunnel.receiver.udpPort)));
          for (const client of clients) assert.equal(text(await client.request("y")), "y");
          assert.equal(tunnel.sender.machine.flows.size, 2); // the limit of 1 was not applied
          for (const client of clients) client.close();
        } finally {
          await tunnel.close();
        }
      });
    });
  }
}
