/**
 * A running tunnel reloaded (the core's handle.reload, what SIGHUP drives): a renewed TLS
 * certificate served to new connections while the established one carries on, a key removed from
 * the authorized keys ending that peer's session, a sender mapping sent to a new target (new flows
 * only), new limits, a key-mode receiver's mappings added (port bound, served), removed (flows
 * closed, senders told, port closed), moved and brought back while an untouched mapping's flow goes
 * on, and reloads that must change nothing (a port in use, a sender's or a secret-mode receiver's
 * mapping set changed). Every pairing of transports under bun test, Node's under real node.
 * node:test/node:assert only.
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
import { eventually, freeUdpPort, LOOPBACK, sleep, startClient, startEcho, text } from "../helpers/tunnel.js";

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

      it(
        "key mode: a reload adds a mapping, removes one, moves one and brings one back; the untouched flow goes on",
        BOUNDED,
        async () => {
          const dir = mkdtempSync(join(tmpdir(), "mcudpt-reload-"));
          const authorizedKeys = join(dir, "authorized_keys");
          const senderKey = testIdentity("sender");
          writeFileSync(authorizedKeys, `${publicKeyLine(senderKey.publicKey, "sender")}\n`);
          const [goneEcho, freshEcho] = await Promise.all([startEcho(connector), startEcho(connector)]);
          const any = { host: LOOPBACK, port: 0 };
          const keep = { name: "keep", udp: any };
          const gone = { name: "gone", udp: any };
          const fresh = { name: "fresh", udp: any };
          const targetAt = (port: number) => ({ host: LOOPBACK, port });
          const tunnel = await startTunnel(listener, echo.port, {
            senderTransport: connector,
            receiverConfig: { identity: testIdentity("receiver") },
            senderConfig: { identity: senderKey },
            trust: fileAdmission({ authorizedKeys, knownSenders: join(dir, "known_senders") }),
            mappings: {
              receiver: [keep, gone],
              // The sender has the target of the mapping the receiver adds: served by nobody until then.
              sender: [
                { name: "keep", target: targetAt(echo.port) },
                { name: "gone", target: targetAt(goneEcho.port) },
                { name: "fresh", target: targetAt(freshEcho.port) },
              ],
            },
          });
          const { receiver, sender } = tunnel;
          const [keepPort, gonePort] = receiver.udpPorts;
          const kept = await startClient(connector, keepPort);
          const leaving = await startClient(connector, gonePort);
          const clients = [kept, leaving];
          try {
            assert.equal(text(await kept.request("k")), "k");
            assert.equal(text(await leaving.request("g")), "g");
            const keptFlow = [...receiver.machine.flows.values()].find((flow) => flow.mappingId === 0)?.id;
            // Datagrams in flight on the untouched mapping while the reload runs: every one comes back.
            for (let i = 0; i < 50; i++) kept.send(`during ${i}`);
            const done = await receiver.reload({ mappings: [keep, fresh] });
            const freshPort = receiver.udpPorts[2];
            assert.deepEqual(done, [
              "mapping gone removed (was 127.0.0.1:0)",
              "mapping fresh=127.0.0.1:0 added",
              `listening on UDP fresh=127.0.0.1:${freshPort}`,
            ]);
            assert.deepEqual(receiver.udpPorts, [keepPort, 0, freshPort]);
            assert.ok(freshPort > 0);
            // The removed mapping: its flow closed on both sides, the sender told, its port closed.
            assert.equal(receiver.machine.flows.countOf(1), 0);
            await eventually(() => sender.machine.servingState[1] === "removed", "the sender told it was removed");
            assert.equal([...sender.machine.flows.values()].filter((flow) => flow.mappingId === 1).length, 0);
            await assert.rejects(leaving.request("anyone?", 1000), /no reply/);
            assert.equal(goneEcho.received, 1);
            // The added one: served by the sender that had its target.
            await eventually(() => sender.machine.servingState[2] === "serving", "the sender serves the new mapping");
            const newcomer = await startClient(connector, freshPort);
            clients.push(newcomer);
            assert.equal(text(await newcomer.request("new")), "new");
            assert.equal(freshEcho.received, 1);
            // The untouched one: the same flow, nothing lost, the same connection.
            assert.equal(text(await kept.request("after")), "after");
            const during = () => kept.replies.filter((reply) => text(reply).startsWith("during ")).length;
            await eventually(() => during() >= 50, "the 50 sent during the reload echoed");
            assert.equal(during(), 50);
            assert.equal([...receiver.machine.flows.values()].find((flow) => flow.mappingId === 0)?.id, keptFlow);
            assert.equal(sender.reconnects, 0);

            // Moved (a removal then an addition, same name: same id) and brought back (its old id).
            const movedTo = await freeUdpPort(listener);
            const back = await receiver.reload({ mappings: [keep, gone, { name: "fresh", udp: targetAt(movedTo) }] });
            assert.deepEqual(back, [
              `mapping fresh moved: 127.0.0.1:0 → 127.0.0.1:${movedTo}`,
              "mapping gone=127.0.0.1:0 added",
              `listening on UDP gone=127.0.0.1:${receiver.udpPorts[1]}, fresh=127.0.0.1:${movedTo}`,
            ]);
            assert.equal(receiver.udpPorts[0], keepPort);
            assert.equal(receiver.udpPorts[2], movedTo);
            await assert.rejects(newcomer.request("old port?", 1000), /no reply/);
            await eventually(
              () => sender.machine.servingState[1] === "serving" && sender.machine.servingState[2] === "serving",
              "the sender serves both again",
            );
            const [returning, moved] = await Promise.all([
              startClient(connector, receiver.udpPorts[1]),
              startClient(connector, movedTo),
            ]);
            clients.push(returning, moved);
            assert.equal(text(await returning.request("again")), "again");
            assert.equal(text(await moved.request("moved")), "moved");
            assert.equal(goneEcho.received, 2);
            assert.equal(freshEcho.received, 2);
            assert.equal(receiver.machine.mappingStats.length, 3);
            assert.equal([...receiver.machine.flows.values()].find((flow) => flow.mappingId === 0)?.id, keptFlow);

            // Refused, nothing changed: a port in use, a range, an unnamed mapping.
            const holder = await startEcho(listener);
            const busy = { name: "busy", udp: targetAt(holder.port) };
            await assert.rejects(
              receiver.reload({ mappings: [keep, busy], limits: { ...limits({ maxFlows: 1 }), mappings: [{}, {}] } }),
              (error: unknown) =>
                error instanceof UserError &&
                error.message.startsWith(`cannot listen on UDP 127.0.0.1:${holder.port}:`),
            );
            holder.close();
            await assert.rejects(
              receiver.reload({ mappings: [keep, gone, fresh, { name: "game", udp: any, ports: 4 }] }),
              /a port range cannot be added while running \(game=127\.0\.0\.1:0-3\): restart$/,
            );
            await assert.rejects(receiver.reload({ mappings: [keep, { udp: any }] }), /needs every mapping named/);
            assert.equal(receiver.udpPorts.length, 3);
            assert.equal(receiver.udpPorts[2], movedTo);
            assert.equal(text(await moved.request("still")), "still");
            assert.equal(receiver.machine.flows.size, 3); // the limit of 1 that came with it was not applied
          } finally {
            for (const client of clients) client.close();
            await tunnel.close();
            goneEcho.close();
            freshEcho.close();
            rmSync(dir, { recursive: true, force: true });
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
              /^adding or removing mappings needs a restart: the sender's mappings went to the receiver in its HELLO \(added #2/.test(
                error.message,
              ),
          );
          const udp = { host: LOOPBACK, port: 0 };
          await assert.rejects(
            tunnel.receiver.reload({ mappings: [{ udp: { host: LOOPBACK, port: 1 } }] }),
            /moving a public port \(--udp\) needs a restart/,
          );
          // Secret mode: its sender serves every mapping (PROTOCOL.md §18), so the set is fixed.
          await assert.rejects(
            tunnel.receiver.reload({ mappings: [{ udp }, { name: "x", udp }] }),
            /adding or removing mappings needs a restart: only a receiver that listens in key mode can change them/,
          );
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
