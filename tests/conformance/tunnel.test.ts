/**
 * The tunnel conformance suite: every transport runs the same scenarios over real sockets on
 * 127.0.0.1. Written with node:test and node:assert only, so this file runs under `bun test` (both
 * transports) and, bundled, under real `node --test` (the Node transport on Node itself).
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { type ReceiverHandle, startReceiver, startSender } from "@mcudpt/core";
import { memoryTrust, testIdentity } from "../helpers/keys.js";
import { startProxy } from "../helpers/proxy.js";
import { concurrentClientsScenario, datagramSizesScenario, SECRET, startTunnel } from "../helpers/scenarios.js";
import { availableTransports } from "../helpers/transports.js";
import {
  eventually,
  freeUdpPort,
  LOOPBACK,
  memoryLogger,
  sleep,
  startClient,
  startEcho,
  text,
} from "../helpers/tunnel.js";

for (const transport of availableTransports()) {
  describe(`tunnel over the ${transport.name} transport`, () => {
    let echo: Awaited<ReturnType<typeof startEcho>>;
    before(async () => {
      echo = await startEcho(transport);
    });
    after(() => echo.close());

    it("gives fifty concurrent clients each exactly their own replies", async () => {
      const tunnel = await startTunnel(transport, echo.port);
      try {
        await concurrentClientsScenario(transport, tunnel);
      } finally {
        await tunnel.close();
      }
    });

    it("carries datagrams of 0, 1, 1400 and 65507 bytes intact", async () => {
      const tunnel = await startTunnel(transport, echo.port);
      try {
        await datagramSizesScenario(transport, tunnel);
      } finally {
        await tunnel.close();
      }
    });

    for (const mode of ["trickle", "coalesce"] as const) {
      it(`survives a TCP stream ${mode === "trickle" ? "split into tiny pieces" : "coalesced into large chunks"}`, async () => {
        let proxy: Awaited<ReturnType<typeof startProxy>> | undefined;
        const tunnel = await startTunnel(transport, echo.port, {
          viaPort: async (port) => {
            proxy = await startProxy(port, mode);
            return proxy.port;
          },
        });
        try {
          const clients = await Promise.all(
            Array.from({ length: 5 }, () => startClient(transport, tunnel.receiver.udpPort)),
          );
          for (const [i, client] of clients.entries())
            assert.equal(text(await client.request(`c${i} first`)), `c${i} first`);
          for (let round = 0; round < 10; round++) clients.forEach((c, i) => c.send(`c${i} round ${round}`));
          await eventually(() => clients.every((c) => c.replies.length >= 11), "all replies through the proxy", 10_000);
          clients.forEach((c, i) => {
            for (const reply of c.replies) assert.match(text(reply), new RegExp(`^c${i} `));
          });
          const big = new Uint8Array(20_000).map((_, i) => i & 0xff);
          assert.deepEqual(await clients[0].request(big, 10_000), big);
          for (const client of clients) client.close();
        } finally {
          await tunnel.close();
          await proxy?.close();
        }
      });
    }

    it("refuses a sender with the wrong secret and forwards nothing", async () => {
      const tunnel = await startTunnel(transport, echo.port, {
        senderConfig: { secret: "not-the-secret" },
        waitConnected: false,
      });
      try {
        await eventually(() => tunnel.receiverLog.saw(/wrong shared secret/), "receiver logs the wrong secret");
        await eventually(() => tunnel.senderLog.saw(/authentication failed/), "sender told why");
        assert.equal(tunnel.receiver.machine.session.peerConnected, false);
        const client = await startClient(transport, tunnel.receiver.udpPort);
        client.send("should go nowhere");
        await sleep(200);
        assert.equal(client.replies.length, 0);
        assert.equal(tunnel.receiver.machine.stats.drops["no-sender"] >= 1, true);
        client.close();
      } finally {
        await tunnel.close();
      }
    });

    it("refuses a second sender while the first is connected, and keeps serving the first", async () => {
      const tunnel = await startTunnel(transport, echo.port);
      const secondLog = memoryLogger();
      const second = await startSender({
        transport,
        target: { host: LOOPBACK, port: echo.port },
        tcp: { host: LOOPBACK, port: tunnel.receiver.tcpPort },
        config: { secret: SECRET },
        logger: secondLog,
        reconnect: { initialMs: 50, maxMs: 200 },
      });
      try {
        await eventually(() => secondLog.saw(/busy/), "second sender told the receiver is busy");
        assert.equal(second.machine.session.peerConnected, false);
        assert.ok(tunnel.receiverLog.saw(/is connected \(one sender at a time\)/));
        const client = await startClient(transport, tunnel.receiver.udpPort);
        assert.equal(text(await client.request("still served")), "still served");
        client.close();
      } finally {
        await second.close();
        await tunnel.close();
      }
    });

    it("asks the operator about an unknown sender key: yes forwards (and is remembered), no refuses", async () => {
      const asked: string[] = [];
      const senderKey = testIdentity("sender");
      const trust = memoryTrust();
      const yes = await startTunnel(transport, echo.port, {
        receiverConfig: { identity: testIdentity("receiver") },
        senderConfig: { identity: senderKey },
        trust,
        askOperator: async ({ peer, fingerprint }) => {
          asked.push(`${peer} ${fingerprint}`);
          return true;
        },
      });
      try {
        assert.equal(asked.length, 1);
        assert.match(asked[0], /^127\.0\.0\.1:\d+ SHA256:/);
        assert.ok(asked[0].endsWith(senderKey.fingerprint), "the operator sees the sender's key fingerprint");
        assert.equal(trust.remembered.length, 1, "the yes is remembered");
        const client = await startClient(transport, yes.receiver.udpPort);
        assert.equal(text(await client.request("approved")), "approved");
        client.close();
      } finally {
        await yes.close();
      }
      const no = await startTunnel(transport, echo.port, {
        receiverConfig: { identity: testIdentity("receiver") },
        senderConfig: { identity: testIdentity("sender") },
        trust: memoryTrust(),
        askOperator: async () => false,
        waitConnected: false,
      });
      try {
        await eventually(() => no.senderLog.saw(/refused by operator/), "sender told it was refused");
        assert.equal(no.receiver.machine.session.peerConnected, false);
      } finally {
        await no.close();
      }
    });

    it("keeps running when the target port is closed (ICMP unreachable), and recovers when it opens", async () => {
      const port = await freeUdpPort(transport);
      const tunnel = await startTunnel(transport, port);
      try {
        const client = await startClient(transport, tunnel.receiver.udpPort);
        for (let i = 0; i < 5; i++) {
          client.send(`into the void ${i}`);
          await sleep(20);
        }
        await eventually(
          () => tunnel.sender.machine.stats.drops["socket-error"] > 0,
          "ICMP error counted on the sender",
        );
        assert.equal(tunnel.sender.machine.session.peerConnected, true, "the tunnel survived");
        const late = await startEcho(transport, port);
        try {
          assert.equal(text(await client.request("target is back")), "target is back");
        } finally {
          late.close();
        }
        client.close();
      } finally {
        await tunnel.close();
      }
    });

    it("starts the sender before the receiver and connects once the receiver is up", async () => {
      const senderLog = memoryLogger();
      const probe = await transport.listenTcp({
        host: LOOPBACK,
        port: 0,
        onConnection: () => ({ onData() {}, onDrain() {}, onClose() {} }),
      });
      const tcpPort = probe.port;
      probe.close();
      const sender = await startSender({
        transport,
        target: { host: LOOPBACK, port: echo.port },
        tcp: { host: LOOPBACK, port: tcpPort },
        config: { secret: SECRET },
        logger: senderLog,
        reconnect: { initialMs: 50, maxMs: 200 },
      });
      let receiver: ReceiverHandle | undefined;
      try {
        await eventually(() => senderLog.saw(/cannot connect to receiver/), "sender retries");
        receiver = await startReceiver({
          transport,
          udp: { host: LOOPBACK, port: 0 },
          tcp: { host: LOOPBACK, port: tcpPort },
          config: { secret: SECRET },
          logger: memoryLogger(),
        });
        await eventually(() => sender.machine.session.peerConnected, "sender connected after the receiver came up");
        const client = await startClient(transport, receiver.udpPort);
        assert.equal(text(await client.request("late receiver")), "late receiver");
        client.close();
      } finally {
        await sender.close();
        await receiver?.close();
      }
    });

    it("reconnects after the TCP connection is cut, resuming flows on the same target source port", async () => {
      let proxy: Awaited<ReturnType<typeof startProxy>> | undefined;
      const target = await transport.bindUdp({
        host: LOOPBACK,
        port: 0,
        onDatagram: (data, address, port) =>
          target.send(new TextEncoder().encode(`${text(data)} from ${port}`), port, address),
        onError: () => {},
      });
      const tunnel = await startTunnel(transport, target.port, {
        viaPort: async (port) => {
          proxy = await startProxy(port);
          return proxy.port;
        },
      });
      try {
        const client = await startClient(transport, tunnel.receiver.udpPort);
        const before = text(await client.request("before"));
        proxy?.cut();
        await eventually(() => !tunnel.sender.machine.session.peerConnected, "sender noticed the cut");
        await eventually(
          () => tunnel.sender.machine.session.peerConnected && tunnel.receiver.machine.session.peerConnected,
          "reconnected",
          10_000,
        );
        assert.ok(tunnel.senderLog.saw(/resumed 1 flow/), "flows resumed");
        const afterCut = text(await client.request("after"));
        assert.equal(afterCut.split(" from ")[1], before.split(" from ")[1], "target saw the same source port");
        client.close();
      } finally {
        await tunnel.close();
        await proxy?.close();
        target.close();
      }
    });

    it("closes idle flows on both sides and releases the sender's sockets", async () => {
      const config = { secret: SECRET, idleTimeoutMs: 300 };
      const tunnel = await startTunnel(transport, echo.port, { receiverConfig: config, senderConfig: config });
      try {
        const clients = await Promise.all(
          Array.from({ length: 10 }, () => startClient(transport, tunnel.receiver.udpPort)),
        );
        await Promise.all(clients.map((c, i) => c.request(`idle ${i}`)));
        assert.equal(tunnel.sender.flowSockets, 10);
        await eventually(
          () => tunnel.sender.flowSockets === 0 && tunnel.receiver.machine.flows.size === 0,
          "idle flows closed",
          5000,
        );
        for (const client of clients) client.close();
      } finally {
        await tunnel.close();
      }
    });
  });
}
