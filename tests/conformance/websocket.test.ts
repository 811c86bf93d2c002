/**
 * The WebSocket carrier and dialing through proxies, for every pairing of listening and dialing
 * transports (Bun↔Node both ways under bun test; Node↔Node under real Node): the byte stream survives
 * every message boundary (one byte per message, many frames in one message, messages split past the
 * send chunk), backpressure holds, tunnels carry fifty clients and every datagram size over ws:// and
 * wss:// (pinned), a re-framing relay in the middle changes nothing, the listener answers anything but
 * its upgrade with 404, and HTTP CONNECT and SOCKS5 proxies (with and without credentials, refusing,
 * rambling) give a connection or one clear line. node:test/node:assert only, so it also runs under Node.
 */
import assert from "node:assert/strict";
import { generateKeyPairSync } from "node:crypto";
import { connect as netConnect, createServer } from "node:net";
import { createServer as createTlsServer } from "node:tls";
import { after, before, describe, it } from "node:test";
import {
  type CarrierOptions,
  createCertificate,
  dialCarrier,
  listenCarrier,
  parseProxyUrl,
  pemFingerprint,
  type TcpConnection,
  type TcpHandlers,
  type TcpServer,
  type Transport,
  WEBSOCKET_SEND_CHUNK,
} from "@mcudpt/core";
import { startConnectProxy, startSocks5Proxy } from "../helpers/fake-proxies.js";
import { memoryTrust, testIdentity } from "../helpers/keys.js";
import { concurrentClientsScenario, datagramSizesScenario, startTunnel } from "../helpers/scenarios.js";
import { pattern, side } from "../helpers/tcp-side.js";
import { availableTransports } from "../helpers/transports.js";
import { eventually, LOOPBACK, memoryLogger, sleep, startEcho } from "../helpers/tunnel.js";

const BOUNDED = { timeout: 60_000 };
const WS: CarrierOptions = { webSocket: { path: "/tunnel" } };
const NO_ENV: CarrierOptions = { ...WS, env: {} };

function selfSigned() {
  const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const cert = createCertificate({
    commonName: "mcudpt receiver",
    publicKey,
    issuerKey: privateKey,
    altNames: ["localhost", "127.0.0.1"],
    notAfter: new Date(Date.now() + 86_400_000),
  });
  const key = privateKey.export({ type: "pkcs8", format: "pem" }) as string;
  return { cert, key, fingerprint: pemFingerprint(cert) };
}

/** A WebSocket carrier listener and one connection to it, both sides recorded ("verify": against pattern()). */
async function carrierPair(listener: Transport, connector: Transport, mode: "keep" | "verify" = "verify") {
  const server = side(mode);
  const client = side(mode);
  let accepted: TcpConnection | undefined;
  const tcp = await listenCarrier(listener, WS).listen({
    host: LOOPBACK,
    port: 0,
    onConnection(connection) {
      accepted = connection;
      return server.handlers;
    },
  });
  const clientConn = await dialCarrier(connector, { host: LOOPBACK, port: tcp.port }, NO_ENV).connect({
    timeoutMs: 5000,
    handlers: client.handlers,
  });
  await eventually(() => accepted !== undefined, "the upgrade to complete");
  return { tcp, server, client, serverConn: accepted as TcpConnection, clientConn };
}

/** Writes `total` pattern bytes, piece i being sizeOf(i) bytes, honouring backpressure. */
async function writeInPieces(
  connection: TcpConnection,
  drains: () => number,
  total: number,
  sizeOf: (i: number) => number,
) {
  const bytes = pattern(total);
  let at = 0;
  for (let i = 0; at < total; i++) {
    const size = Math.min(sizeOf(i), total - at);
    const before = drains();
    const ok = connection.write(bytes.subarray(at, at + size));
    at += size;
    if (!ok) await eventually(() => drains() > before, "a drain after write() returned false", 20_000);
  }
}

/** Sends a raw HTTP request and returns what came back once the listener closed the connection. */
function rawRequest(port: number, request: string | Buffer): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = netConnect({ host: LOOPBACK, port });
    let answer = "";
    socket.on("data", (data) => (answer += data.toString("latin1")));
    socket.on("error", () => {});
    socket.on("close", () => resolve(answer));
    socket.on("connect", () => socket.write(request));
    setTimeout(() => {
      socket.destroy();
      reject(new Error(`the listener did not close the connection; it said ${JSON.stringify(answer)}`));
    }, 15_000).unref();
  });
}

/**
 * A WebSocket relay between sender and receiver that re-frames the stream: toward the receiver every
 * byte is its own message, toward the sender everything one event-loop turn brought is one message
 * (many protocol frames in it). Built from the carriers themselves.
 */
async function reframingRelay(transport: Transport, upstreamPort: number): Promise<TcpServer> {
  return listenCarrier(transport, WS).listen({
    host: LOOPBACK,
    port: 0,
    onConnection(downstream) {
      let upstream: TcpConnection | undefined;
      const early: Uint8Array[] = [];
      let held: Uint8Array[] = [];
      const flushHeld = () => {
        const total = held.reduce((n, c) => n + c.length, 0);
        const joined = new Uint8Array(total);
        let at = 0;
        for (const chunk of held) {
          joined.set(chunk, at);
          at += chunk.length;
        }
        held = [];
        if (total > 0) downstream.write(joined);
      };
      const toUpstream = (data: Uint8Array) => {
        for (let i = 0; i < data.length; i++) upstream?.write(data.slice(i, i + 1));
      };
      void dialCarrier(transport, { host: LOOPBACK, port: upstreamPort }, NO_ENV)
        .connect({
          timeoutMs: 5000,
          handlers: {
            onData(data) {
              if (held.length === 0) setImmediate(flushHeld);
              held.push(data.slice());
            },
            onDrain() {},
            onClose: () => downstream.destroy(),
          },
        })
        .then(
          (connection) => {
            upstream = connection;
            for (const data of early.splice(0)) toUpstream(data);
          },
          () => downstream.destroy(),
        );
      return {
        onData(data) {
          if (upstream) toUpstream(data);
          else early.push(data.slice());
        },
        onDrain() {},
        onClose: () => upstream?.destroy(),
      } satisfies TcpHandlers;
    },
  });
}

const transports = availableTransports();

for (const listener of transports) {
  for (const connector of transports) {
    describe(`WebSocket carrier: ${listener.name} listener, ${connector.name} dialer`, () => {
      let echo: Awaited<ReturnType<typeof startEcho>>;
      before(async () => {
        echo = await startEcho(listener);
      });
      after(() => echo.close());

      it(
        "carries the byte stream across every message boundary: one byte per message, odd sizes, past the send chunk",
        BOUNDED,
        async () => {
          const pair = await carrierPair(listener, connector);
          try {
            // One byte per message, then odd sizes, then writes past the send chunk (several messages each).
            const sizes = [1, 7, 1400, 65_535, 3 * WEBSOCKET_SEND_CHUNK + 17];
            const total = 3000 + 8 * sizes.reduce((a, b) => a + b, 0);
            await writeInPieces(
              pair.clientConn,
              () => pair.client.drains,
              total,
              (i) => (i < 3000 ? 1 : sizes[i % 5]),
            );
            await eventually(() => pair.server.received === total, "every byte", 20_000);
            assert.equal(pair.server.mismatch, -1, "the stream is intact");
          } finally {
            pair.clientConn.destroy();
            pair.tcp.close();
          }
        },
      );

      it("delivers a stream written in one-byte messages intact, and the reverse direction too", BOUNDED, async () => {
        const pair = await carrierPair(listener, connector);
        try {
          const bytes = pattern(5000);
          for (let i = 0; i < bytes.length; i++) pair.clientConn.write(bytes.subarray(i, i + 1));
          pair.serverConn.write(pattern(300_000));
          await eventually(() => pair.server.received === 5000 && pair.client.received === 300_000, "both streams");
          assert.equal(pair.server.mismatch, -1, "client to server intact");
          assert.equal(pair.client.mismatch, -1, "server to client intact");
        } finally {
          pair.clientConn.destroy();
          pair.tcp.close();
        }
      });

      it("holds backpressure: write() returns false while the peer does not read, then onDrain", BOUNDED, async () => {
        const pair = await carrierPair(listener, connector, "keep");
        try {
          const chunk = new Uint8Array(WEBSOCKET_SEND_CHUNK);
          let refused = false;
          for (let i = 0; i < 4096 && !refused; i++) refused = !pair.serverConn.write(chunk);
          assert.ok(refused, "write() returned false at some point");
          await eventually(() => pair.server.drains > 0, "onDrain", 30_000);
        } finally {
          pair.clientConn.destroy();
          pair.tcp.close();
        }
      });

      it("tunnels fifty clients, each getting exactly its own datagrams (ws://)", BOUNDED, async () => {
        const tunnel = await startTunnel(listener, echo.port, {
          senderTransport: connector,
          carrier: { listen: WS, dial: NO_ENV },
        });
        try {
          await concurrentClientsScenario(listener, tunnel);
          assert.ok(tunnel.senderLog.saw(/connected to receiver ws:\/\/127\.0\.0\.1:\d+\/tunnel$/));
        } finally {
          await tunnel.close();
        }
      });

      it(
        "tunnels 0 to 65,507-byte datagrams intact over wss:// with a pinned certificate, -L direction",
        BOUNDED,
        async () => {
          const cert = selfSigned();
          const tunnel = await startTunnel(listener, echo.port, {
            senderTransport: connector,
            direction: "L",
            receiverTls: { cert: cert.cert, key: cert.key },
            senderTls: { fingerprint: cert.fingerprint },
            carrier: { listen: WS, dial: { webSocket: { path: "/tunnel", secure: true }, env: {} } },
          });
          try {
            await datagramSizesScenario(listener, tunnel);
            assert.ok(tunnel.receiverLog.saw(/connected to sender wss:\/\/127\.0\.0\.1:\d+\/tunnel$/));
          } finally {
            await tunnel.close();
          }
        },
      );

      it("refuses an impostor's certificate over wss:// for good", BOUNDED, async () => {
        const cert = selfSigned();
        const tunnel = await startTunnel(listener, echo.port, {
          senderTransport: connector,
          receiverTls: { cert: cert.cert, key: cert.key },
          senderTls: { fingerprint: selfSigned().fingerprint },
          carrier: { listen: WS, dial: { webSocket: { path: "/tunnel", secure: true }, env: {} } },
          waitConnected: false,
        });
        try {
          const reason = await Promise.race([tunnel.sender.fatal, sleep(10_000).then(() => "no refusal")]);
          assert.match(reason, /does not match the pinned/);
        } finally {
          await tunnel.close();
        }
      });

      it(
        "survives a relay that puts every byte in its own message one way and coalesces the other",
        BOUNDED,
        async () => {
          let relay: TcpServer | undefined;
          const tunnel = await startTunnel(listener, echo.port, {
            senderTransport: connector,
            carrier: { listen: WS, dial: NO_ENV },
            viaPort: async (port) => {
              relay = await reframingRelay(connector, port);
              return relay.port;
            },
          });
          try {
            await datagramSizesScenario(listener, tunnel);
          } finally {
            await tunnel.close();
            relay?.close();
          }
        },
      );

      it("answers anything but the upgrade with a plain 404 and closes", BOUNDED, async () => {
        const log = memoryLogger();
        let upgraded = 0;
        const tcp = await listenCarrier(listener, WS, log, 2000).listen({
          host: LOOPBACK,
          port: 0,
          onConnection() {
            upgraded++;
            return { onData() {}, onDrain() {}, onClose() {} };
          },
        });
        try {
          const browser = await rawRequest(tcp.port, "GET / HTTP/1.1\r\nHost: example\r\n\r\n");
          assert.match(browser, /^HTTP\/1\.1 404 Not Found\r\n/);
          const noUpgrade = await rawRequest(tcp.port, "GET /tunnel HTTP/1.1\r\nHost: example\r\n\r\n");
          assert.match(noUpgrade, /^HTTP\/1\.1 404 Not Found\r\n/);
          assert.ok(log.saw(/without a WebSocket upgrade: answered 404/), "the misconfiguration is logged");
          const wrongPath = await rawRequest(
            tcp.port,
            "GET /other HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
          );
          assert.match(wrongPath, /^HTTP\/1\.1 404 Not Found\r\n/);
          const garbage = await rawRequest(
            tcp.port,
            Buffer.from([0x4d, 0x43, 0x55, 0x00, 0xff, 0x0d, 0x0a, 0x0d, 0x0a]),
          );
          assert.doesNotMatch(garbage, /101/);
          // A head that never ends is cut off at 16 KiB, never answered 101.
          const endless = await rawRequest(tcp.port, `GET /tunnel HTTP/1.1\r\nX: ${"a".repeat(20_000)}`);
          assert.doesNotMatch(endless, /101/);
          // And a client that says nothing is dropped after the handshake timeout.
          assert.equal(await rawRequest(tcp.port, ""), "");
          assert.equal(upgraded, 0);
        } finally {
          tcp.close();
        }
      });

      it("sends --ws-host as the Host header and the TLS server name, and the extra headers", BOUNDED, async () => {
        const cert = selfSigned();
        let servername: string | false | undefined;
        let head = "";
        const server = createTlsServer({ cert: cert.cert, key: cert.key }, (socket) => {
          servername = (socket as unknown as { servername?: string | false }).servername;
          socket.on("error", () => {});
          socket.on("data", (data) => {
            head += data.toString("latin1");
            if (head.includes("\r\n\r\n")) socket.end("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n");
          });
        });
        await new Promise<void>((resolve) => server.listen(0, LOOPBACK, resolve));
        const port = (server.address() as { port: number }).port;
        try {
          const carrier = dialCarrier(
            connector,
            { host: LOOPBACK, port },
            {
              webSocket: {
                path: "/edge?token=1",
                secure: true,
                host: "cdn.example:8443",
                headers: [["X-Token", "abc"]],
              },
              env: {},
            },
          );
          assert.equal(carrier.remote, `wss://127.0.0.1:${port}/edge?token=1`);
          await assert.rejects(
            carrier.connect({ timeoutMs: 5000, handlers: side().handlers, tls: {} }),
            /WebSocket upgrade refused: HTTP 403/,
          );
          assert.equal(servername, "cdn.example");
          assert.match(head, /^GET \/edge\?token=1 HTTP\/1\.1\r\n/);
          assert.match(head, /\r\nHost: cdn\.example:8443\r\n/);
          assert.match(head, /\r\nX-Token: abc\r\n/);
        } finally {
          server.close();
        }
      });

      it("a dialer gets one line from a server that does not upgrade", BOUNDED, async () => {
        const server = createServer((socket) => {
          socket.on("error", () => {});
          socket.once("data", () => socket.end("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"));
        });
        await new Promise<void>((resolve) => server.listen(0, LOOPBACK, resolve));
        const port = (server.address() as { port: number }).port;
        try {
          await assert.rejects(
            dialCarrier(connector, { host: LOOPBACK, port }, NO_ENV).connect({
              timeoutMs: 5000,
              handlers: side().handlers,
            }),
            /^Error: WebSocket upgrade refused: HTTP 200$/,
          );
        } finally {
          server.close();
        }
      });
    });
  }
}

for (const transport of transports) {
  describe(`dialing through a proxy: ${transport.name}`, () => {
    let echo: Awaited<ReturnType<typeof startEcho>>;
    before(async () => {
      echo = await startEcho(transport);
    });
    after(() => echo.close());

    const through = (proxyUrl: string, base: CarrierOptions = {}): CarrierOptions => ({
      ...base,
      proxy: parseProxyUrl(proxyUrl, "test"),
    });

    for (const kind of ["plain TCP", "TLS", "ws://", "wss://"] as const) {
      it(
        `${kind} through an HTTP CONNECT proxy with Basic credentials; the proxy resolves the name`,
        BOUNDED,
        async () => {
          const proxy = await startConnectProxy({ credentials: "alice:s3cret" });
          const cert = selfSigned();
          const tls = kind === "TLS" || kind === "wss://";
          const ws = kind.startsWith("ws");
          try {
            const tunnel = await startTunnel(transport, echo.port, {
              receiverTls: tls ? { cert: cert.cert, key: cert.key } : undefined,
              senderTls: tls ? { fingerprint: cert.fingerprint } : undefined,
              carrier: {
                listen: ws ? WS : undefined,
                dial: through(
                  `http://alice:s3cret@127.0.0.1:${proxy.port}`,
                  ws ? { webSocket: { path: "/tunnel", secure: tls } } : {},
                ),
              },
            });
            try {
              await datagramSizesScenario(transport, tunnel);
              assert.equal(proxy.requests.length, 1);
              assert.match(proxy.requests[0], /^127\.0\.0\.1:\d+$/);
              assert.ok(tunnel.senderLog.saw(/through proxy http:\/\/alice:\*\*\*@127\.0\.0\.1:\d+$/));
            } finally {
              await tunnel.close();
            }
          } finally {
            await proxy.close();
          }
        },
      );
    }

    it("a host name goes to the proxy unresolved", BOUNDED, async () => {
      const proxy = await startConnectProxy();
      try {
        const carrier = dialCarrier(
          transport,
          { host: "localhost", port: 9 },
          through(`http://127.0.0.1:${proxy.port}`),
        );
        await assert.rejects(carrier.connect({ timeoutMs: 5000, handlers: side().handlers }));
        assert.deepEqual(proxy.requests, ["localhost:9"]);
      } finally {
        await proxy.close();
      }
    });

    for (const [status, options] of [
      ["407", { credentials: "alice:s3cret" }],
      ["403", { refuse: "403 Forbidden" }],
      ["502", { refuse: "502 Bad Gateway" }],
    ] as const) {
      it(`a proxy that answers ${status} gives one line naming the proxy and the status`, BOUNDED, async () => {
        const proxy = await startConnectProxy(options);
        try {
          const carrier = dialCarrier(
            transport,
            { host: LOOPBACK, port: 9 },
            through(`http://127.0.0.1:${proxy.port}`),
          );
          await assert.rejects(carrier.connect({ timeoutMs: 5000, handlers: side().handlers }), (error: Error) => {
            assert.match(
              error.message,
              new RegExp(
                `^proxy http://127\\.0\\.0\\.1:${proxy.port} refused the tunnel to 127\\.0\\.0\\.1:9: HTTP ${status}`,
              ),
            );
            assert.doesNotMatch(error.message, /\n/);
            return true;
          });
        } finally {
          await proxy.close();
        }
      });
    }

    it("a proxy whose reply head never ends is cut off at 16 KiB", BOUNDED, async () => {
      const proxy = await startConnectProxy({ endlessHead: true });
      try {
        const carrier = dialCarrier(transport, { host: LOOPBACK, port: 9 }, through(`http://127.0.0.1:${proxy.port}`));
        await assert.rejects(carrier.connect({ timeoutMs: 5000, handlers: side().handlers }), /reply head over 16 KiB/);
      } finally {
        await proxy.close();
      }
    });

    it("a proxy that is not listening: the error names it", BOUNDED, async () => {
      const proxy = await startConnectProxy();
      const port = proxy.port;
      await proxy.close();
      const carrier = dialCarrier(transport, { host: LOOPBACK, port: 9 }, through(`http://127.0.0.1:${port}`));
      await assert.rejects(
        carrier.connect({ timeoutMs: 5000, handlers: side().handlers }),
        new RegExp(`^Error: proxy http://127\\.0\\.0\\.1:${port}: .*ECONNREFUSED`),
      );
    });

    for (const credentials of [undefined, "bob:pw"]) {
      it(`SOCKS5 ${credentials ? "with user/password" : "without credentials"}, plain and ws://`, BOUNDED, async () => {
        const proxy = await startSocks5Proxy({ credentials });
        const url = `socks5://${credentials ? `${credentials}@` : ""}127.0.0.1:${proxy.port}`;
        try {
          for (const ws of [false, true]) {
            const tunnel = await startTunnel(transport, echo.port, {
              carrier: { listen: ws ? WS : undefined, dial: through(url, ws ? WS : {}) },
            });
            try {
              await datagramSizesScenario(transport, tunnel);
            } finally {
              await tunnel.close();
            }
          }
          assert.equal(proxy.requests.length, 2);
          if (credentials) {
            const wrong = dialCarrier(
              transport,
              { host: LOOPBACK, port: 9 },
              through(`socks5://bob:nope@127.0.0.1:${proxy.port}`),
            );
            await assert.rejects(
              wrong.connect({ timeoutMs: 5000, handlers: side().handlers }),
              /SOCKS5 credentials refused/,
            );
          }
        } finally {
          await proxy.close();
        }
      });
    }

    it(
      "HTTPS_PROXY applies to a WebSocket carrier unless NO_PROXY exempts the host; never to plain TCP",
      BOUNDED,
      async () => {
        const proxy = await startConnectProxy();
        try {
          const env = { HTTPS_PROXY: `http://127.0.0.1:${proxy.port}` };
          assert.match(dialCarrier(transport, { host: LOOPBACK, port: 1 }, { ...WS, env }).via, /through proxy/);
          assert.equal(dialCarrier(transport, { host: LOOPBACK, port: 1 }, { env }).via, "");
          assert.equal(
            dialCarrier(transport, { host: LOOPBACK, port: 1 }, { ...WS, env: { ...env, NO_PROXY: "127.0.0.0/8" } })
              .via,
            "",
          );
          const tunnel = await startTunnel(transport, echo.port, { carrier: { listen: WS, dial: { ...WS, env } } });
          try {
            await datagramSizesScenario(transport, tunnel);
            assert.equal(proxy.requests.length, 1);
          } finally {
            await tunnel.close();
          }
        } finally {
          await proxy.close();
        }
      },
    );
  });
}

for (const transport of transports) {
  describe(`behind a trusted reverse proxy: ${transport.name}`, () => {
    /** A carrier listener with `trusted` proxies, dialed with `forwardedFor` as X-Forwarded-For. */
    async function attributedTo(trusted: string | undefined, forwardedFor: string) {
      let accepted: TcpConnection | undefined;
      const server = side("keep");
      const tcp = await listenCarrier(transport, { webSocket: { path: "/tunnel", trustedProxies: trusted } }).listen({
        host: LOOPBACK,
        port: 0,
        onConnection(connection) {
          accepted = connection;
          return server.handlers;
        },
      });
      const dialing: CarrierOptions = {
        webSocket: { path: "/tunnel", headers: [["X-Forwarded-For", forwardedFor]] },
        env: {},
      };
      const client = await dialCarrier(transport, { host: LOOPBACK, port: tcp.port }, dialing).connect({
        timeoutMs: 5000,
        handlers: side("keep").handlers,
      });
      try {
        await eventually(() => accepted !== undefined, "the upgrade");
        const connection = accepted as TcpConnection;
        return { address: connection.remoteAddress, port: connection.remotePort, via: connection.via };
      } finally {
        client.destroy();
        tcp.close();
      }
    }

    it(
      "a connection from a trusted proxy is the client its X-Forwarded-For names; otherwise the header is ignored",
      BOUNDED,
      async () => {
        const forwarded = await attributedTo("127.0.0.0/8,::1", "10.9.9.9, 198.51.100.7");
        assert.equal(forwarded.address, "198.51.100.7", "the rightmost untrusted hop, not what the client wrote");
        assert.equal(forwarded.port, 0);
        assert.match(forwarded.via ?? "", /^127\.0\.0\.1:\d+$/);
        const untrusted = await attributedTo("192.0.2.0/24", "198.51.100.7");
        assert.equal(untrusted.address, "127.0.0.1");
        assert.equal(untrusted.via, undefined);
        const off = await attributedTo(undefined, "198.51.100.7");
        assert.equal(off.address, "127.0.0.1");
      },
    );

    it("the admission check and the log line see the forwarded client", BOUNDED, async () => {
      const echo = await startEcho(transport);
      const receiverKey = testIdentity("forwarded-receiver");
      const senderKey = testIdentity("forwarded-sender");
      const sources: Array<string | undefined> = [];
      const trust = memoryTrust(senderKey);
      const tunnel = await startTunnel(transport, echo.port, {
        receiverConfig: { identity: receiverKey },
        senderConfig: { identity: senderKey },
        trust: {
          ...trust,
          check(publicKey, source) {
            sources.push(source);
            return trust.check(publicKey, source);
          },
        },
        carrier: {
          listen: { webSocket: { path: "/t", trustedProxies: "127.0.0.1" } },
          dial: { webSocket: { path: "/t", headers: [["X-Forwarded-For", "198.51.100.7"]] }, env: {} },
        },
      });
      try {
        await eventually(() => tunnel.receiver.machine.session.peerConnected, "the sender admitted");
        assert.deepEqual(sources, ["198.51.100.7"]);
        const log = tunnel.receiverLog;
        assert.ok(log.saw(/198\.51\.100\.7 \(via 127\.0\.0\.1:\d+\)/), log.lines.join("\n"));
      } finally {
        await tunnel.close();
        echo.close();
      }
    });
  });
}
