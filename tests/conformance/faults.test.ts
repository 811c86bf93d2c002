/**
 * Network faults between sender and receiver, for every transport, through the fault proxy: added
 * latency, a silent blackhole (dead peer detection by keepalive, PROTOCOL.md §9, then resumption, §7),
 * and repeated resets while a client keeps sending (the receiver keeps its UDP port; losses during the
 * outages are counted). node:test + node:assert only (runs under bun test and, bundled, node --test).
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import {
  type ReceiverHandle,
  type SenderHandle,
  startReceiver,
  startSender,
  type Transport,
  type UdpSocket,
} from "@mcudpt/core";
import type { ReceiverConfig, SenderConfig } from "@mcudpt/protocol";
import { type FaultProxy, type ProxyMode, startProxy } from "../helpers/proxy.js";
import { availableTransports } from "../helpers/transports.js";
import {
  eventually,
  LOOPBACK,
  type MemoryLogger,
  memoryLogger,
  sleep,
  startClient,
  startEcho,
  text,
} from "../helpers/tunnel.js";

const SECRET = "faults-secret";
const TIMEOUT = { timeout: 60_000 };

interface ProxiedTunnel {
  receiver: ReceiverHandle;
  sender: SenderHandle;
  proxy: FaultProxy;
  receiverLog: MemoryLogger;
  senderLog: MemoryLogger;
  close(): Promise<void>;
}

/** Receiver, fault proxy, sender (dialing the proxy), on loopback; waits until the sender is accepted. */
async function startProxiedTunnel(
  transport: Transport,
  targetPort: number,
  mode: ProxyMode,
  options: { config?: ReceiverConfig & SenderConfig; reconnect?: { initialMs: number; maxMs: number } } = {},
): Promise<ProxiedTunnel> {
  const config = { secret: SECRET, ...options.config };
  const receiverLog = memoryLogger();
  const senderLog = memoryLogger();
  const receiver = await startReceiver({
    transport,
    udp: { host: LOOPBACK, port: 0 },
    tcp: { host: LOOPBACK, port: 0 },
    config,
    logger: receiverLog,
  });
  const proxy = await startProxy(receiver.tcpPort, mode);
  const sender = await startSender({
    transport,
    target: { host: LOOPBACK, port: targetPort },
    tcp: { host: LOOPBACK, port: proxy.port },
    config,
    logger: senderLog,
    reconnect: options.reconnect ?? { initialMs: 50, maxMs: 500 },
  });
  const tunnel: ProxiedTunnel = {
    receiver,
    sender,
    proxy,
    receiverLog,
    senderLog,
    close: async () => {
      await sender.close();
      await receiver.close();
      await proxy.close();
    },
  };
  try {
    await eventually(
      () => receiver.machine.session.peerConnected && sender.machine.session.peerConnected,
      "sender accepted through the proxy",
      10_000,
    );
  } catch (error) {
    await tunnel.close();
    throw error;
  }
  return tunnel;
}

/** A UDP target that answers "<datagram> from <source port>": shows which flow socket the target saw. */
async function startPortEcho(transport: Transport): Promise<UdpSocket> {
  const target: UdpSocket = await transport.bindUdp({
    host: LOOPBACK,
    port: 0,
    onDatagram: (data, address, port) =>
      target.send(new TextEncoder().encode(`${text(data)} from ${port}`), port, address),
    onError: () => {},
  });
  return target;
}

const count = (log: MemoryLogger, pattern: RegExp) => log.lines.filter((line) => pattern.test(line)).length;

for (const transport of availableTransports()) {
  describe(`faults between sender and receiver (${transport.name} transport)`, () => {
    let echo: Awaited<ReturnType<typeof startEcho>>;
    let portEcho: UdpSocket;
    before(async () => {
      echo = await startEcho(transport);
      portEcho = await startPortEcho(transport);
    });
    after(() => {
      echo.close();
      portEcho.close();
    });

    it("carries traffic with 30 ms added each way, every client getting only its own replies", TIMEOUT, async () => {
      const tunnel = await startProxiedTunnel(transport, echo.port, "delay", { config: { keepaliveMs: 500 } });
      try {
        assert.equal(tunnel.proxy.delayMs, 30);
        const clients = await Promise.all(
          Array.from({ length: 30 }, () => startClient(transport, tunnel.receiver.udpPort)),
        );
        await Promise.all(clients.map((client, i) => client.request(`client ${i} hello`, 10_000)));
        await Promise.all(
          clients.map(async (client, i) => {
            for (let round = 0; round < 5; round++) {
              const reply = text(await client.request(`client ${i} round ${round}`, 10_000));
              assert.match(reply, new RegExp(`^client ${i} `), `client ${i} got ${reply}`);
            }
          }),
        );
        // An unpaced burst through the slow path: whatever arrives must be the client's own.
        const before = clients.map((c) => c.replies.length);
        for (let burst = 0; burst < 5; burst++) {
          for (const [i, client] of clients.entries()) client.send(`client ${i} burst ${burst}`);
        }
        await eventually(() => clients.every((c, i) => c.replies.length > before[i]), "burst replies", 10_000);
        for (const [i, client] of clients.entries()) {
          for (const reply of client.replies)
            assert.match(text(reply), new RegExp(`^client ${i} `), `client ${i} got ${text(reply)}`);
        }
        assert.equal(tunnel.receiver.machine.flows.size, 30);
        assert.equal(tunnel.sender.flowSockets, 30);
        // The delay is real: a keepalive round trip crosses the proxy twice (at least 2 x 30 ms).
        await eventually(
          () => tunnel.receiver.machine.stats.rttMs !== undefined,
          "a keepalive round trip measured",
          10_000,
        );
        assert.ok(
          (tunnel.receiver.machine.stats.rttMs as number) >= 50,
          `RTT ${tunnel.receiver.machine.stats.rttMs} ms`,
        );
        for (const client of clients) client.close();
      } finally {
        await tunnel.close();
      }
    });

    it(
      "detects a silent blackhole by keepalive on both sides, then reconnects by itself and resumes flows",
      TIMEOUT,
      async () => {
        const config = { keepaliveMs: 200, handshakeTimeoutMs: 1000 };
        const tunnel = await startProxiedTunnel(transport, portEcho.port, "passthrough", { config });
        const { receiver, sender, proxy, receiverLog, senderLog } = tunnel;
        try {
          const client = await startClient(transport, receiver.udpPort);
          const before = text(await client.request("before"));
          const sourcePort = before.split(" from ")[1];
          const acceptedBefore = proxy.accepted;
          const dropsBefore = receiver.machine.stats.drops["no-sender"];

          proxy.stalled = true; // bytes vanish, the TCP connection stays open
          await eventually(
            () => !receiver.machine.session.peerConnected && !sender.machine.session.peerConnected,
            "both sides declare the connection dead",
            10_000,
          );
          // The first side to notice says why; the proxy then carries its close to the other, which may
          // see the connection lost before its own keepalive fires.
          const keepaliveTimeout = /closing connection with .*: nothing received for \d+ s/;
          assert.ok(
            receiverLog.saw(keepaliveTimeout) || senderLog.saw(keepaliveTimeout),
            "a keepalive timeout is logged",
          );
          assert.ok(
            receiverLog.saw(keepaliveTimeout) || receiverLog.saw(/connection (to|from) .* lost/),
            receiverLog.lines.join("\n"),
          );
          assert.ok(
            senderLog.saw(keepaliveTimeout) || senderLog.saw(/connection (to|from) .* lost/),
            senderLog.lines.join("\n"),
          );
          assert.equal(receiver.machine.flows.size, 1, "the receiver keeps the flow for the grace period");
          assert.equal(sender.flowSockets, 1, "the sender keeps the flow socket for the grace period");

          // While the path is dead, client datagrams are dropped and counted, not queued.
          client.send("into the blackhole");
          await eventually(() => receiver.machine.stats.drops["no-sender"] > dropsBefore, "no-sender drop counted");
          // The sender keeps trying on its own (each attempt stalls and fails its handshake).
          await eventually(() => proxy.accepted > acceptedBefore, "the sender dials again", 10_000);

          proxy.stalled = false;
          await eventually(
            () => receiver.machine.session.peerConnected && sender.machine.session.peerConnected,
            "reconnected once the path is back",
            20_000,
          );
          assert.ok(proxy.accepted > acceptedBefore, "through a new proxied connection");
          assert.ok(senderLog.saw(/accepted by receiver .*\(resumed 1 flow\)/), senderLog.lines.join("\n"));
          const after = text(await client.request("after"));
          assert.equal(after.split(" from ")[1], sourcePort, "the flow resumed on the same target source port");
          client.close();
        } finally {
          await tunnel.close();
        }
      },
    );

    it(
      "recovers from three cuts in a row while a client keeps sending, on the same UDP port, counting the losses",
      TIMEOUT,
      async () => {
        // A first retry after 100-200 ms: each outage lasts long enough for the client to hit it.
        const tunnel = await startProxiedTunnel(transport, portEcho.port, "passthrough", {
          reconnect: { initialMs: 200, maxMs: 1000 },
        });
        const { receiver, sender, proxy, senderLog } = tunnel;
        const udpPort = receiver.udpPort;
        const chatter = await startClient(transport, udpPort);
        let seq = 0;
        let sending = true;
        const loop = (async () => {
          while (sending) {
            chatter.send(`chatter ${seq++}`);
            await sleep(5);
          }
        })();
        try {
          await eventually(() => chatter.replies.length > 0, "the chatter is answered");
          const sourcePort = text(chatter.replies[0]).split(" from ")[1];
          for (let cut = 1; cut <= 3; cut++) {
            const accepted = receiver.machine.stats.accepted;
            const drops = receiver.machine.stats.drops["no-sender"];
            const connections = proxy.accepted;
            proxy.cut();
            await eventually(
              () =>
                receiver.machine.stats.accepted === accepted + 1 &&
                receiver.machine.session.peerConnected &&
                sender.machine.session.peerConnected,
              `reconnected after cut ${cut}`,
              15_000,
            );
            assert.equal(proxy.accepted, connections + 1, `one new connection after cut ${cut}`);
            assert.ok(
              receiver.machine.stats.drops["no-sender"] > drops,
              `datagrams sent during outage ${cut} counted as no-sender drops`,
            );
            const replies = chatter.replies.length;
            await eventually(() => chatter.replies.length > replies, `the chatter is answered again after cut ${cut}`);
            assert.equal(receiver.udpPort, udpPort);
            assert.equal(receiver.machine.flows.size, 1, "the chatter's flow survived");
          }
          assert.equal(count(senderLog, /accepted by receiver .*\(resumed 1 flow\)/), 3, senderLog.lines.join("\n"));
          sending = false;
          await loop;
          for (const reply of chatter.replies) {
            assert.match(text(reply), /^chatter \d+ from \d+$/);
            assert.equal(text(reply).split(" from ")[1], sourcePort, "one flow socket toward the target throughout");
          }
          // The original port still answers a newcomer.
          const newcomer = await startClient(transport, udpPort);
          assert.match(text(await newcomer.request("newcomer")), /^newcomer from \d+$/);
          newcomer.close();
        } finally {
          sending = false;
          await loop;
          chatter.close();
          await tunnel.close();
        }
      },
    );

    // An IPv6 client may send up to 65 527 bytes; toward an IPv4 target the sender can send at most
    // 65 507. The datagram is lost (EMSGSIZE), and a loss is one drop: stats.drops must say how many
    // datagrams were lost, not how many times the runtime reported it (README "Reliability", §8.4).
    it("counts a datagram too large for the IPv4 target as one drop, and keeps the flow", TIMEOUT, async () => {
      const v6Receiver = await startReceiver({
        transport,
        udp: { host: "::1", port: 0 },
        tcp: { host: LOOPBACK, port: 0 },
        config: { secret: SECRET },
        logger: memoryLogger(),
      });
      const senderLog = memoryLogger();
      const sender = await startSender({
        transport,
        target: { host: LOOPBACK, port: echo.port },
        tcp: { host: LOOPBACK, port: v6Receiver.tcpPort },
        config: { secret: SECRET },
        logger: senderLog,
        reconnect: { initialMs: 50, maxMs: 500 },
      });
      const replies: string[] = [];
      const client = await transport.bindUdp({
        host: "::1",
        port: 0,
        onDatagram: (data) => replies.push(text(data)),
        onError: () => {},
      });
      try {
        await eventually(
          () => sender.machine.session.peerConnected && v6Receiver.machine.session.peerConnected,
          "sender accepted",
        );
        const send = (data: Uint8Array | string) =>
          client.send(typeof data === "string" ? new TextEncoder().encode(data) : data, v6Receiver.udpPort, "::1");
        /** Sends `message` every 200 ms until its own echo arrives (a late echo of another is skipped). */
        const request = async (message: string) => {
          const from = replies.length;
          const answered = () => replies.slice(from).includes(message);
          for (let i = 0; i < 50 && !answered(); i++) {
            send(message);
            await eventually(answered, "a reply", 200).catch(() => {});
          }
          assert.ok(answered(), `no echo of ${message}`);
        };
        await request("opener"); // the flow and its socket first
        const drops = () => sender.machine.stats.drops["socket-error"] + sender.machine.stats.drops["too-large"];
        const before = drops();
        send(new Uint8Array(65_527));
        send(new Uint8Array(65_508));
        // A send that failed is taken back from udpOut (the machine counts what left): wait for the drops.
        await eventually(
          () => drops() >= before + 2,
          `both counted (drops ${JSON.stringify(sender.machine.stats.drops)})`,
        );
        await sleep(300); // late duplicate reports of the same errors, if any
        assert.equal(
          drops() - before,
          2,
          `two lost datagrams, two drops: ${JSON.stringify(sender.machine.stats.drops)}`,
        );
        assert.equal(sender.machine.session.peerConnected, true);
        await request("after"); // the flow still works
      } finally {
        client.close();
        await sender.close();
        await v6Receiver.close();
      }
    });
  });
}
