/**
 * Port ranges on every transport (PROTOCOL.md §8.6): a 16-port range carries 16 clients, each to
 * the target port at its own offset (16 real UDP targets), each reply back from the public port the
 * client sent to; a range of another size on the sender is refused at the HELLO by both ends; a
 * range the receiver cannot bind in full is a clear error that leaves nothing bound. node:test only,
 * so it also runs under real Node.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { startReceiver, startSender, type Transport, type UdpSocket } from "@mcudpt/core";
import { bindPortRange, freePortRange, rangeHost } from "../helpers/port-range.js";
import { SECRET } from "../helpers/scenarios.js";
import { availableTransports } from "../helpers/transports.js";
import { eventually, LOOPBACK, memoryLogger, sleep, text } from "../helpers/tunnel.js";

const TIMEOUT = { timeout: 60_000 };
const PORTS = 16;

/** A client that records each reply with the port it came from. */
async function rangeClient(transport: Transport, host: string) {
  const replies: Array<{ data: string; from: number }> = [];
  const socket = await transport.bindUdp({
    host: LOOPBACK,
    port: 0,
    onDatagram: (data, _address, from) => replies.push({ data: text(data), from }),
    onError: () => {},
  });
  return {
    replies,
    send: (data: string, port: number) => void socket.send(new TextEncoder().encode(data), port, host),
    /** Sends until the reply to `data` arrives (the first may be lost while the flow opens), bounded. */
    async request(data: string, port: number): Promise<{ data: string; from: number }> {
      for (let attempt = 0; attempt < 40; attempt++) {
        socket.send(new TextEncoder().encode(data), port, host);
        for (let wait = 0; wait < 25; wait++) {
          const reply = replies.find((r) => r.data.startsWith(`${data}@`));
          if (reply) return reply;
          await sleep(10);
        }
      }
      throw new Error(`no reply to ${data} from port ${port}`);
    },
    close: () => socket.close(),
  };
}

type ReceiverSide = Omit<Parameters<typeof startReceiver>[0], "tcp">;
type SenderSide = Omit<Parameters<typeof startSender>[0], "tcp">;

/** Receiver and sender in `direction`: -R (the receiver listens) or -L (the sender listens). */
async function startPair(direction: "R" | "L", receiverSide: ReceiverSide, senderSide: SenderSide) {
  if (direction === "R") {
    const receiver = await startReceiver({ ...receiverSide, tcp: { host: LOOPBACK, port: 0 } });
    const sender = await startSender({ ...senderSide, tcp: { host: LOOPBACK, port: receiver.tcpPort } });
    return { receiver, sender };
  }
  const sender = await startSender({ ...senderSide, tcpMode: "listen", tcp: { host: LOOPBACK, port: 0 } });
  const receiver = await startReceiver({
    ...receiverSide,
    tcpMode: "dial",
    tcp: { host: LOOPBACK, port: sender.tcpPort },
    reconnect: { initialMs: 50, maxMs: 500 },
  });
  return { receiver, sender };
}

for (const transport of availableTransports()) {
  for (const direction of ["R", "L"] as const) {
    const how = direction === "R" ? "-R" : "-L";
    describe(`port ranges (${transport.name} transport, ${how})`, () => {
      it(
        `a ${PORTS}-port range carries ${PORTS} clients, each to the target port at its offset, replies from its own public port`,
        TIMEOUT,
        async () => {
          const targetHost = rangeHost();
          const publicHost = rangeHost();
          // 16 targets, each answering with its own port: a reply tells which target served it.
          const targets = await bindPortRange(transport, targetHost, PORTS, (i, socket) => (data, address, port) => {
            socket().send(new TextEncoder().encode(`${text(data)}@${targets.base + i}`), port, address);
          });
          const dns = await transport.bindUdp({
            host: LOOPBACK,
            port: 0,
            onDatagram: (data, address, port) => dns.send(new TextEncoder().encode(`${text(data)}@dns`), port, address),
            onError: () => {},
          });
          const base = await freePortRange(transport, publicHost, PORTS);
          const receiverLog = memoryLogger();
          const senderLog = memoryLogger();
          const receiverSide = {
            transport,
            mappings: [
              { name: "game", udp: { host: publicHost, port: base }, ports: PORTS },
              { name: "dns", udp: { host: LOOPBACK, port: 0 } },
            ],
            config: { secret: SECRET },
            logger: receiverLog,
          };
          const senderSide = {
            transport,
            // The other order: paired by name, the range's size checked.
            mappings: [
              { name: "dns", target: { host: LOOPBACK, port: dns.port } },
              { name: "game", target: { host: targetHost, port: targets.base }, ports: PORTS },
            ],
            config: { secret: SECRET },
            logger: senderLog,
            reconnect: { initialMs: 50, maxMs: 500 },
          };
          const { receiver, sender } = await startPair(direction, receiverSide, senderSide);
          const clients: Array<Awaited<ReturnType<typeof rangeClient>>> = [];
          try {
            await eventually(
              () => receiver.machine.session.peerConnected && sender.machine.session.peerConnected,
              "connected",
            );
            assert.equal(receiver.udpPorts.length, PORTS + 1);
            assert.deepEqual(
              receiver.udpPorts.slice(0, PORTS),
              Array.from({ length: PORTS }, (_, i) => base + i),
            );
            assert.ok(
              receiverLog.saw(new RegExp(`game=${publicHost.replace(/\./g, "\\.")}:${base}-${base + PORTS - 1}`)),
            );
            assert.ok(
              senderLog.saw(
                new RegExp(`game=${targetHost.replace(/\./g, "\\.")}:${targets.base}-${targets.base + PORTS - 1}`),
              ),
            );
            for (let i = 0; i < PORTS; i++) clients.push(await rangeClient(transport, publicHost));
            for (let round = 0; round < 3; round++) {
              await Promise.all(
                clients.map(async (client, i) => {
                  const reply = await client.request(`c${i} r${round}`, base + i);
                  assert.equal(
                    reply.data,
                    `c${i} r${round}@${targets.base + i}`,
                    `client ${i} reached target port ${i}`,
                  );
                  assert.equal(reply.from, base + i, `client ${i}'s reply left from its own public port`);
                }),
              );
            }
            // The single port after the range still reaches its own target (its id follows the range's).
            const dnsClient = await rangeClient(transport, LOOPBACK);
            clients.push(dnsClient);
            assert.equal((await dnsClient.request("q", receiver.udpPorts[PORTS])).data, "q@dns");
            // One mapping's counters for the whole range; a flow per client.
            assert.deepEqual(
              receiver.machine.mappingStats.map((m) => [m.name, m.flowsOpened]),
              [
                ["game", PORTS],
                ["dns", 1],
              ],
            );
            assert.equal(receiver.machine.flows.countOf(0), PORTS);
            assert.equal(sender.flowSockets, PORTS + 1);
          } finally {
            for (const client of clients) client.close();
            await sender.close();
            await receiver.close();
            for (const socket of targets.sockets) socket.close();
            dns.close();
          }
        },
      );

      it(
        "a range of another size on the sender: both ends name the sizes at the HELLO, nothing is forwarded",
        TIMEOUT,
        async () => {
          const publicHost = rangeHost();
          const base = await freePortRange(transport, publicHost, PORTS);
          const receiverLog = memoryLogger();
          const senderLog = memoryLogger();
          const receiverSide = {
            transport,
            mappings: [{ name: "game", udp: { host: publicHost, port: base }, ports: PORTS }],
            config: { secret: SECRET },
            logger: receiverLog,
          };
          const senderSide = {
            transport,
            mappings: [{ name: "game", target: { host: LOOPBACK, port: 30_000 }, ports: 8 }],
            config: { secret: SECRET },
            logger: senderLog,
            reconnect: { initialMs: 50, maxMs: 500 },
          };
          const { receiver, sender } = await startPair(direction, receiverSide, senderSide);
          const client = await rangeClient(transport, publicHost);
          try {
            const expected = /port ranges differ: mapping game has 16 ports on the receiver, 8 ports on the sender/;
            await eventually(() => receiverLog.saw(expected) && senderLog.saw(expected), "both ends name the sizes");
            for (let i = 0; i < 5; i++) client.send("nobody home", base + i);
            await sleep(300);
            assert.deepEqual(client.replies, []);
            assert.equal(receiver.machine.flows.size, 0);
            assert.equal(receiver.machine.session.peerConnected, false);
            assert.equal(sender.machine.session.peerConnected, false);
          } finally {
            client.close();
            await sender.close();
            await receiver.close();
          }
        },
      );
    });
  }

  describe(`port ranges (${transport.name} transport): reload`, () => {
    it(
      "a reload that resizes a range is refused by both roles, naming it; the sender's range moved to another start keeps its size",
      TIMEOUT,
      async () => {
        const targetHost = rangeHost();
        const publicHost = rangeHost();
        const targets = await bindPortRange(transport, targetHost, 2 * PORTS, (i, socket) => (data, address, port) => {
          socket().send(new TextEncoder().encode(`${text(data)}@${targets.base + i}`), port, address);
        });
        const base = await freePortRange(transport, publicHost, PORTS);
        const publicRange = { name: "game", udp: { host: publicHost, port: base }, ports: PORTS };
        const targetRange = (offset: number, ports: number) => ({
          name: "game",
          target: { host: targetHost, port: targets.base + offset },
          ports,
        });
        const { receiver, sender } = await startPair(
          "R",
          { transport, mappings: [publicRange], config: { secret: SECRET }, logger: memoryLogger() },
          {
            transport,
            mappings: [targetRange(0, PORTS)],
            config: { secret: SECRET },
            logger: memoryLogger(),
            reconnect: { initialMs: 50, maxMs: 500 },
          },
        );
        const client = await rangeClient(transport, publicHost);
        try {
          assert.equal((await client.request("before", base + 3)).data, `before@${targets.base + 3}`);
          // Fewer public ports (same first port) is another range, not "nothing changed".
          const wasPublic = `${publicHost}:${base}-${base + PORTS - 1}`;
          await assert.rejects(
            receiver.reload({ mappings: [{ ...publicRange, ports: PORTS - 4 }] }),
            (error: Error) => {
              assert.equal(
                error.message,
                `moving a public port (--udp) needs a restart (game=${wasPublic} → ${publicHost}:${base}-${base + PORTS - 5})`,
              );
              return true;
            },
          );
          await assert.rejects(sender.reload({ mappings: [targetRange(0, PORTS - 4)] }), (error: Error) => {
            assert.match(
              error.message,
              /^resizing a port range needs a restart, on both sides \(mapping "game" 16 → 12 ports\)/,
            );
            return true;
          });
          // Refused: the open flow and new ones still go where they went.
          assert.equal((await client.request("after", base + 5)).data, `after@${targets.base + 5}`);
          const moved = await sender.reload({ mappings: [targetRange(PORTS, PORTS)] });
          assert.deepEqual(moved, [
            `mapping "game": new flows go to ${targetHost}:${targets.base + PORTS}-${targets.base + 2 * PORTS - 1} (its 2 open flows stay with ${targetHost}:${targets.base}-${targets.base + PORTS - 1} until they end)`,
          ]);
          const late = await rangeClient(transport, publicHost);
          try {
            assert.equal((await late.request("moved", base + 5)).data, `moved@${targets.base + PORTS + 5}`);
          } finally {
            late.close();
          }
        } finally {
          client.close();
          await sender.close();
          await receiver.close();
          for (const socket of targets.sockets) socket.close();
        }
      },
    );
  });

  describe(`port ranges (${transport.name} transport): binding`, () => {
    it(
      "a range with one port taken: one clear error naming the port and the range, and every port released",
      TIMEOUT,
      async () => {
        const host = rangeHost();
        const base = await freePortRange(transport, host, PORTS);
        const squatter: UdpSocket = await transport.bindUdp({ host, port: base + 5, onDatagram() {}, onError() {} });
        const options = {
          transport,
          mappings: [{ name: "game", udp: { host, port: base }, ports: PORTS }],
          tcp: { host: LOOPBACK, port: 0 },
          config: { secret: SECRET },
          logger: memoryLogger(),
        };
        try {
          // In words, the same on every transport (each runtime phrases EADDRINUSE its own way).
          await assert.rejects(startReceiver(options), (error: Error) => {
            assert.equal(
              error.message,
              `cannot listen on UDP ${host}:${base + 5} (in the range ${host}:${base}-${base + PORTS - 1}): address already in use (EADDRINUSE)`,
            );
            return true;
          });
        } finally {
          squatter.close();
        }
        // Nothing was left bound: the whole range starts now.
        const receiver = await startReceiver(options);
        assert.equal(receiver.udpPorts.length, PORTS);
        await receiver.close();
      },
    );
  });
}
