/**
 * Beyond the original: both TCP directions (ssh -R as the original, ssh -L as udp-over-tcp) and several
 * mappings on one connection, on every transport. node:test only, so it also runs under real Node.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { startReceiver, startSender, type Transport, type UdpSocket } from "@mcudpt/core";
import { memoryTrust, testIdentity } from "../helpers/keys.js";
import { startProxy } from "../helpers/proxy.js";
import { concurrentClientsScenario, datagramSizesScenario, SECRET, startTunnel } from "../helpers/scenarios.js";
import { availableTransports } from "../helpers/transports.js";
import { eventually, LOOPBACK, memoryLogger, sleep, startClient, startEcho, text } from "../helpers/tunnel.js";

const TIMEOUT = { timeout: 60_000 };

/** A UDP target that appends its own name to every echo, so a reply tells which target answered. */
async function namedEcho(transport: Transport, name: string): Promise<UdpSocket> {
  const socket: UdpSocket = await transport.bindUdp({
    host: LOOPBACK,
    port: 0,
    onDatagram: (data, address, port) => {
      socket.send(new TextEncoder().encode(`${text(data)}@${name}`), port, address);
    },
    onError: () => {},
  });
  return socket;
}

for (const transport of availableTransports()) {
  describe(`directions and mappings (${transport.name} transport)`, () => {
    let echo: Awaited<ReturnType<typeof startEcho>>;
    before(async () => {
      echo = await startEcho(transport);
    });
    after(() => echo.close());

    for (const direction of ["R", "L"] as const) {
      const how = direction === "R" ? "-R (receiver listens, sender dials)" : "-L (sender listens, receiver dials)";

      it(`${how}: fifty concurrent clients each get exactly their own replies`, TIMEOUT, async () => {
        const tunnel = await startTunnel(transport, echo.port, { direction });
        try {
          await concurrentClientsScenario(transport, tunnel);
        } finally {
          await tunnel.close();
        }
      });

      it(`${how}: datagrams of 0 to 65,507 bytes arrive intact`, TIMEOUT, async () => {
        const tunnel = await startTunnel(transport, echo.port, { direction });
        try {
          await datagramSizesScenario(transport, tunnel);
        } finally {
          await tunnel.close();
        }
      });

      it(
        `${how}: key mode — the listening side asks about the dialer's key once, a cut connection resumes`,
        TIMEOUT,
        async () => {
          const asked: string[] = [];
          let proxy: Awaited<ReturnType<typeof startProxy>> | undefined;
          const tunnel = await startTunnel(transport, echo.port, {
            direction,
            receiverConfig: { identity: testIdentity("receiver") },
            senderConfig: { identity: testIdentity("sender") },
            trust: memoryTrust(),
            askOperator: async ({ fingerprint }) => {
              asked.push(fingerprint);
              return true;
            },
            viaPort: async (port) => {
              proxy = await startProxy(port);
              return proxy.port;
            },
          });
          try {
            const client = await startClient(transport, tunnel.receiver.udpPort);
            assert.equal(text(await client.request("before")), "before");
            proxy?.cut();
            await eventually(
              () => !tunnel.receiver.machine.session.peerConnected || !tunnel.sender.machine.session.peerConnected,
              "cut noticed",
            );
            await eventually(
              () => tunnel.receiver.machine.session.peerConnected && tunnel.sender.machine.session.peerConnected,
              "reconnected",
            );
            assert.equal(text(await client.request("after")), "after");
            assert.equal(asked.length, 1, "the remembered key is not asked about again");
            assert.equal(tunnel.receiver.machine.flows.size, 1, "the flow resumed");
            client.close();
          } finally {
            await tunnel.close();
            await proxy?.close();
          }
        },
      );
    }

    it("two named mappings over one connection, listed in different orders: no cross-talk", TIMEOUT, async () => {
      const dns = await namedEcho(transport, "dns");
      const ntp = await namedEcho(transport, "ntp");
      const receiverLog = memoryLogger();
      const senderLog = memoryLogger();
      const receiver = await startReceiver({
        transport,
        mappings: [
          { name: "dns", udp: { host: LOOPBACK, port: 0 } },
          { name: "ntp", udp: { host: LOOPBACK, port: 0 }, idleTimeoutMs: 60_000 },
        ],
        tcp: { host: LOOPBACK, port: 0 },
        config: { secret: SECRET },
        logger: receiverLog,
      });
      const sender = await startSender({
        transport,
        mappings: [
          { name: "ntp", target: { host: LOOPBACK, port: ntp.port } },
          { name: "dns", target: { host: LOOPBACK, port: dns.port } },
        ],
        tcp: { host: LOOPBACK, port: receiver.tcpPort },
        config: { secret: SECRET },
        logger: senderLog,
        reconnect: { initialMs: 50, maxMs: 500 },
      });
      try {
        await eventually(
          () => receiver.machine.session.peerConnected && sender.machine.session.peerConnected,
          "connected",
        );
        const [dnsPort, ntpPort] = receiver.udpPorts;
        const clients = await Promise.all(
          Array.from({ length: 40 }, (_, i) => startClient(transport, i % 2 === 0 ? dnsPort : ntpPort)),
        );
        await Promise.all(
          clients.map(async (client, i) => {
            const service = i % 2 === 0 ? "dns" : "ntp";
            for (let round = 0; round < 5; round++) {
              assert.equal(text(await client.request(`c${i} r${round}`)), `c${i} r${round}@${service}`);
            }
          }),
        );
        // One more client, on the dns port.
        const extra = await startClient(transport, dnsPort);
        assert.equal(text(await extra.request("q")), "q@dns");
        assert.equal(receiver.machine.flows.countOf(0), 21);
        assert.equal(receiver.machine.flows.countOf(1), 20);
        assert.equal(sender.machine.flows.size, 41);
        // Counters per mapping, each side in its own order (the sender lists ntp first).
        assert.deepEqual(
          receiver.machine.mappingStats.map((m) => [m.name, m.flowsOpened]),
          [
            ["dns", 21],
            ["ntp", 20],
          ],
        );
        for (const m of receiver.machine.mappingStats) assert.ok(m.udpOut >= 100, `${m.name}: replies counted`);
        assert.deepEqual(
          sender.machine.mappingStats.map((m) => [m.name, m.flowsOpened]),
          [
            ["ntp", 20],
            ["dns", 21],
          ],
        );
        assert.ok(receiver.machine.mappingStats[1].udpIn >= 100, "ntp's clients sent at least their 100 requests");
        for (const client of [...clients, extra]) client.close();
      } finally {
        await sender.close();
        await receiver.close();
        dns.close();
        ntp.close();
      }
    });

    it(
      "mappings that do not pair up are reported at the handshake by both sides, and nothing is forwarded",
      TIMEOUT,
      async () => {
        const receiverLog = memoryLogger();
        const senderLog = memoryLogger();
        const receiver = await startReceiver({
          transport,
          mappings: [
            { name: "dns", udp: { host: LOOPBACK, port: 0 } },
            { name: "ntp", udp: { host: LOOPBACK, port: 0 } },
          ],
          tcp: { host: LOOPBACK, port: 0 },
          config: { secret: SECRET },
          logger: receiverLog,
        });
        const sender = await startSender({
          transport,
          mappings: [{ name: "dns", target: { host: LOOPBACK, port: echo.port } }],
          tcp: { host: LOOPBACK, port: receiver.tcpPort },
          config: { secret: SECRET },
          logger: senderLog,
          reconnect: { initialMs: 50, maxMs: 500 },
        });
        try {
          await eventually(
            () => receiverLog.saw(/mappings differ/) && senderLog.saw(/mappings differ/),
            "both sides name the mismatch",
          );
          const line = senderLog.lines.find((l) => /mappings differ/.test(l)) ?? "";
          assert.match(line, /receiver has 2 \(dns, ntp\)/);
          assert.match(line, /sender 1 \(dns\)/);
          const client = await startClient(transport, receiver.udpPort);
          client.send("nobody home");
          await sleep(200);
          assert.equal(client.replies.length, 0);
          assert.equal(receiver.machine.session.peerConnected, false);
          client.close();
        } finally {
          await sender.close();
          await receiver.close();
        }
      },
    );
  });
}
