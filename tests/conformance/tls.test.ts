/**
 * The tunnel over TLS, for every pairing of listener and connector transports (Bun↔Node both ways
 * under bun test; Node↔Node under real node): traffic, fingerprint pinning, CA verification, and
 * clean failures against a plaintext peer. node:test/node:assert only, so it also runs under Node.
 */
import assert from "node:assert/strict";
import { createPrivateKey, generateKeyPairSync } from "node:crypto";
import { connect } from "node:net";
import { after, before, describe, it } from "node:test";
import { createCertificate, pemFingerprint, type Transport } from "@mcudpt/core";
import { concurrentClientsScenario, datagramSizesScenario, startTunnel, type Tunnel } from "../helpers/scenarios.js";
import { concat, pattern, tcpPair } from "../helpers/tcp-side.js";
import { availableTransports } from "../helpers/transports.js";
import { eventually, LOOPBACK, sleep, startClient, startEcho, text } from "../helpers/tunnel.js";

const YEAR_MS = 365 * 24 * 60 * 60 * 1000;
const utf8 = (value: string) => new TextEncoder().encode(value);
const BOUNDED = { timeout: 60_000 };
/** The hint both ends of a TLS/plaintext mismatch log, whichever of them dials. */
const ONE_SIDE_ONLY = /TLS (handshake failed|alert|handshake \().*is TLS enabled on one side only\?/;

interface Identity {
  cert: string;
  key: string;
  fingerprint: string;
}

/** A certificate for 127.0.0.1, self-signed or signed by `ca`. */
function identity(name: string, options: { ca?: Identity; isCa?: boolean } = {}): Identity {
  const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const cert = createCertificate({
    commonName: options.isCa ? "mcudpt test CA" : name,
    publicKey,
    issuerKey: options.ca ? createPrivateKey(options.ca.key) : privateKey,
    issuerName: options.ca ? "mcudpt test CA" : undefined,
    altNames: options.isCa ? undefined : ["localhost", "127.0.0.1"],
    ca: options.isCa,
    notAfter: new Date(Date.now() + YEAR_MS),
  });
  const key = privateKey.export({ type: "pkcs8", format: "pem" }) as string;
  return { cert, key, fingerprint: pemFingerprint(cert) };
}

/** Receiver on `listener`, sender on `connector`, both on loopback; the caller closes it. */
function tlsTunnel(
  listener: Transport,
  connector: Transport,
  targetPort: number,
  options: Parameters<typeof startTunnel>[2],
) {
  return startTunnel(listener, targetPort, { senderTransport: connector, ...options });
}

/** Waits for the sender's permanent refusal and checks that it stays down (no reconnect attempts). */
async function expectRefusedForGood(tunnel: Tunnel, pattern: RegExp): Promise<void> {
  const reason = await Promise.race([tunnel.sender.fatal, sleep(10_000).then(() => "no refusal within 10 s")]);
  assert.match(reason, pattern);
  assert.ok(tunnel.senderLog.saw(pattern), "the refusal is logged");
  const lines = tunnel.senderLog.lines.length;
  await sleep(700); // several reconnect periods (50–500 ms) of the test tunnels
  assert.equal(tunnel.sender.machine.session.peerConnected, false);
  assert.equal(tunnel.receiver.machine.session.peerConnected, false);
  assert.ok(!tunnel.senderLog.lines.slice(lines).some((line) => /reconnecting|connected to receiver/.test(line)));
}

const transports = availableTransports();
const receiverCert = identity("mcudpt receiver");
const impostorCert = identity("mcudpt receiver");
const ca = identity("", { isCa: true });
const otherCa = identity("", { isCa: true });
const caSigned = identity("receiver.test", { ca });

for (const listener of transports) {
  for (const connector of transports) {
    describe(`TLS: ${listener.name} receiver, ${connector.name} sender`, () => {
      let echo: Awaited<ReturnType<typeof startEcho>>;
      before(async () => {
        echo = await startEcho(listener);
      });
      after(() => echo.close());

      it(
        "keeps the transport contract: data both ways, the peer's certificate, one close per side",
        BOUNDED,
        async () => {
          const pair = await tcpPair(listener, LOOPBACK, "keep", {
            connector,
            tls: { server: receiverCert, client: {} },
          });
          try {
            assert.equal(pair.clientConn.remoteAddress, LOOPBACK);
            assert.equal(pair.clientConn.remotePort, pair.listener.port);
            assert.equal(pemFingerprint(derToPem(pair.clientConn.peerCertificate)), receiverCert.fingerprint);
            assert.equal(pair.serverConn.write(utf8("greeting")), true);
            assert.equal(pair.clientConn.write(utf8("hello")), true);
            await eventually(() => pair.server.received === 5 && pair.client.received === 8, "bytes both ways");
            assert.deepEqual(concat(pair.server.chunks), utf8("hello"));
            assert.deepEqual(concat(pair.client.chunks), utf8("greeting"));
            pair.serverConn.end();
            await eventually(
              () => pair.server.closes.length > 0 && pair.client.closes.length > 0,
              "both sides to close",
            );
            await sleep(50); // room for a duplicate onClose to show up
            assert.deepEqual(pair.server.closes, [undefined]);
            assert.deepEqual(pair.client.closes, [undefined]);
          } finally {
            pair.listener.close();
          }
        },
      );

      it(
        "delivers 32 MiB in order with backpressure and one onDrain, and end() flushes the queue",
        BOUNDED,
        async () => {
          const MiB = 1024 * 1024;
          const pair = await tcpPair(listener, LOOPBACK, "verify", {
            connector,
            tls: { server: receiverCert, client: {} },
          });
          try {
            assert.equal(pair.clientConn.write(pattern(32 * MiB)), false);
            await eventually(
              () => pair.server.received >= 32 * MiB && pair.client.drains > 0,
              "32 MiB and onDrain",
              30_000,
            );
            assert.equal(pair.server.mismatch, -1, `byte ${pair.server.mismatch} out of order or corrupted`);
            assert.equal(pair.client.drains, 1);
            // Queued when end() is called: still delivered before the close.
            assert.equal(pair.clientConn.write(pattern(8 * MiB, 32 * MiB)), false);
            pair.clientConn.end();
            await eventually(
              () => pair.server.closes.length > 0 && pair.client.closes.length > 0,
              "both closed",
              30_000,
            );
            assert.equal(pair.server.received, 40 * MiB);
            assert.equal(pair.server.mismatch, -1);
          } finally {
            pair.listener.close();
          }
        },
      );

      it(
        "-L (the sender listens with the certificate, the receiver dials and pins it): fifty clients",
        BOUNDED,
        async () => {
          // In -L the listener transport runs the sender (TCP server), the connector the receiver.
          const tunnel = await startTunnel(connector, echo.port, {
            senderTransport: listener,
            direction: "L",
            receiverTls: receiverCert,
            senderTls: { fingerprint: receiverCert.fingerprint },
          });
          try {
            await concurrentClientsScenario(connector, tunnel);
          } finally {
            await tunnel.close();
          }
        },
      );

      it(
        "carries fifty concurrent clients and datagrams up to 65,507 bytes with a pinned certificate",
        BOUNDED,
        async () => {
          const tunnel = await tlsTunnel(listener, connector, echo.port, {
            receiverTls: receiverCert,
            senderTls: { fingerprint: receiverCert.fingerprint },
          });
          try {
            await concurrentClientsScenario(listener, tunnel);
            await datagramSizesScenario(listener, tunnel);
          } finally {
            await tunnel.close();
          }
        },
      );

      it("refuses, for good, a receiver whose certificate does not match the pin", BOUNDED, async () => {
        const tunnel = await tlsTunnel(listener, connector, echo.port, {
          receiverTls: impostorCert,
          senderTls: { fingerprint: receiverCert.fingerprint },
          waitConnected: false,
        });
        try {
          await expectRefusedForGood(
            tunnel,
            new RegExp(
              `certificate ${escapeRegExp(impostorCert.fingerprint)} does not match the pinned ${escapeRegExp(receiverCert.fingerprint)}`,
            ),
          );
        } finally {
          await tunnel.close();
        }
      });

      it("trusts on first use through the hook, and refuses what the hook refuses", BOUNDED, async () => {
        const seen: string[] = [];
        const yes = await tlsTunnel(listener, connector, echo.port, {
          receiverTls: receiverCert,
          senderTls: { onNewCertificate: (fingerprint) => seen.push(fingerprint) > 0 },
        });
        try {
          assert.deepEqual(seen, [receiverCert.fingerprint]);
          const client = await startClient(listener, yes.receiver.udpPort);
          assert.equal(text(await client.request("first use")), "first use");
          client.close();
        } finally {
          await yes.close();
        }
        const no = await tlsTunnel(listener, connector, echo.port, {
          receiverTls: receiverCert,
          senderTls: { onNewCertificate: async () => false },
          waitConnected: false,
        });
        try {
          await expectRefusedForGood(no, /was not accepted/);
        } finally {
          await no.close();
        }
      });

      it(
        "verifies a CA-signed certificate with the right CA, and refuses it for good with another",
        BOUNDED,
        async () => {
          const good = await tlsTunnel(listener, connector, echo.port, {
            receiverTls: caSigned,
            senderTls: { ca: ca.cert },
          });
          try {
            const client = await startClient(listener, good.receiver.udpPort);
            assert.equal(text(await client.request("signed")), "signed");
            client.close();
          } finally {
            await good.close();
          }
          const bad = await tlsTunnel(listener, connector, echo.port, {
            receiverTls: caSigned,
            senderTls: { ca: otherCa.cert },
            waitConnected: false,
          });
          try {
            await expectRefusedForGood(bad, /TLS certificate refused/);
          } finally {
            await bad.close();
          }
        },
      );

      it("fails cleanly between a plaintext sender and a TLS receiver, and the other way round", BOUNDED, async () => {
        const plainSender = await tlsTunnel(listener, connector, echo.port, {
          receiverTls: receiverCert,
          waitConnected: false,
        });
        try {
          await eventually(
            () => plainSender.receiverLog.saw(/TLS handshake failed/),
            "receiver logs the failed handshake",
            10_000,
          );
          // Both ends say what is wrong, the plaintext dialing side too (it sees the TLS alert).
          await eventually(
            () => plainSender.senderLog.saw(ONE_SIDE_ONLY),
            "the plaintext sender names TLS on one side only",
            10_000,
          );
          assert.ok(plainSender.receiverLog.saw(ONE_SIDE_ONLY), plainSender.receiverLog.lines.join("\n"));
          await eventually(() => plainSender.senderLog.saw(/reconnecting/), "sender keeps retrying", 10_000);
          assert.equal(plainSender.receiver.machine.session.peerConnected, false);
        } finally {
          await plainSender.close();
        }
        const plainReceiver = await tlsTunnel(listener, connector, echo.port, {
          senderTls: { fingerprint: receiverCert.fingerprint },
          waitConnected: false,
        });
        try {
          await eventually(
            () => plainReceiver.senderLog.saw(/TLS handshake failed/),
            "sender logs the failed handshake",
            10_000,
          );
          assert.ok(plainReceiver.senderLog.saw(ONE_SIDE_ONLY), plainReceiver.senderLog.lines.join("\n"));
          assert.ok(!plainReceiver.senderLog.saw(/\n|SSL routines/), "one line, OpenSSL's reason only");
          await eventually(
            () => plainReceiver.receiverLog.saw(ONE_SIDE_ONLY),
            "the plaintext receiver names TLS on one side only",
            10_000,
          );
          await eventually(() => plainReceiver.senderLog.saw(/reconnecting/), "sender keeps retrying", 10_000);
          assert.equal(plainReceiver.receiver.machine.session.peerConnected, false);
        } finally {
          await plainReceiver.close();
        }
      });
    });
  }
}

for (const transport of transports) {
  describe(`TLS listener on the ${transport.name} transport`, () => {
    it("hands the connector the certificate only after the handshake, and drops a silent client", BOUNDED, async () => {
      const failures: string[] = [];
      const accepted: number[] = [];
      const server = await transport.listenTcp({
        host: LOOPBACK,
        port: 0,
        tls: { ...receiverCert, handshakeTimeoutMs: 500, onHandshakeError: (error) => failures.push(error.message) },
        onConnection: (connection) => {
          accepted.push(connection.remotePort);
          return { onData: () => {}, onDrain: () => {}, onClose: () => {} };
        },
      });
      try {
        const connection = await transport.connectTcp({
          host: LOOPBACK,
          port: server.port,
          timeoutMs: 10_000,
          tls: {},
          handlers: { onData: () => {}, onDrain: () => {}, onClose: () => {} },
        });
        assert.equal(pemFingerprint(derToPem(connection.peerCertificate)), receiverCert.fingerprint);
        await eventually(() => accepted.length === 1, "the TLS connection accepted");
        connection.destroy();
        // A plaintext client that never speaks: dropped by the handshake timeout (Bun: 4 s tick).
        const silent = connect({ host: LOOPBACK, port: server.port });
        silent.on("error", () => {});
        let closed = false;
        silent.on("close", () => (closed = true));
        await eventually(() => closed, "the silent client dropped", 15_000);
        assert.equal(accepted.length, 1, "never reported as a connection");
        await eventually(() => failures.length === 1, "the timeout reported");
        assert.match(failures[0], /TLS handshake failed/);
      } finally {
        server.close();
      }
    });
  });
}

function derToPem(der: Uint8Array | undefined): string {
  assert.ok(der, "peerCertificate is set");
  return `-----BEGIN CERTIFICATE-----\n${Buffer.from(der).toString("base64")}\n-----END CERTIFICATE-----\n`;
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&");
}
