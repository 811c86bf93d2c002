/**
 * A tunnel on loopback (receiver + sender, each on its own transport) and the traffic scenarios that
 * several suites run through it (plain TCP, TLS). node:test/node:assert only, so it also runs under Node.
 */
import assert from "node:assert/strict";
import {
  type CarrierOptions,
  type ReceiverHandle,
  type ReceiverMapping,
  type ReceiverOptions,
  type ListenerTlsOptions,
  type SenderHandle,
  type SenderMapping,
  type DialerTlsOptions,
  startReceiver,
  startSender,
  type Transport,
} from "@mcudpt/core";
import type { ReceiverConfig, SenderConfig } from "@mcudpt/protocol";
import { eventually, LOOPBACK, type MemoryLogger, memoryLogger, sleep, startClient, text } from "./tunnel.js";

export const SECRET = "conformance-secret";

export interface Tunnel {
  receiver: ReceiverHandle;
  sender: SenderHandle;
  receiverLog: MemoryLogger;
  senderLog: MemoryLogger;
  close(): Promise<void>;
}

/** Receiver and sender on loopback, optionally with a proxy between them; waits until connected. */
export async function startTunnel(
  transport: Transport,
  targetPort: number,
  options: {
    /** The sender's transport, when it differs from the receiver's. */
    senderTransport?: Transport;
    receiverConfig?: ReceiverConfig;
    senderConfig?: SenderConfig;
    receiverTls?: ListenerTlsOptions;
    senderTls?: DialerTlsOptions;
    viaPort?: (receiverTcpPort: number) => Promise<number>;
    trust?: ReceiverOptions["admission"];
    askOperator?: ReceiverOptions["askOperator"];
    waitConnected?: boolean;
    /**
     * "R" (default, ssh -R as the original): the receiver listens for TCP and the sender dials. "L"
     * (ssh -L, udp-over-tcp style): the sender listens and the receiver dials. `trust`/`askOperator`
     * and `receiverTls` go to the listening side, `senderTls` to the dialing side.
     */
    direction?: "R" | "L";
    /** Carriers (WebSocket, a proxy) of the listening and the dialing side; default plain TCP. */
    carrier?: { listen?: CarrierOptions; dial?: CarrierOptions };
    /** Several mappings instead of one public port to `targetPort`. */
    mappings?: { receiver: ReceiverMapping[]; sender: SenderMapping[] };
  } = {},
): Promise<Tunnel> {
  const receiverLog = memoryLogger();
  const senderLog = memoryLogger();
  const receiverSide = {
    transport,
    udp: { host: LOOPBACK, port: 0 },
    mappings: options.mappings?.receiver,
    config: options.receiverConfig ?? { secret: SECRET },
    logger: receiverLog,
  };
  const senderSide = {
    transport: options.senderTransport ?? transport,
    target: { host: LOOPBACK, port: targetPort },
    mappings: options.mappings?.sender,
    config: options.senderConfig ?? { secret: SECRET },
    logger: senderLog,
  };
  let receiver: ReceiverHandle;
  let sender: SenderHandle;
  if (options.direction === "L") {
    // ssh -L: the sender listens, the receiver dials it (and keeps redialing, like a sender would).
    sender = await startSender({
      ...senderSide,
      tcp: { host: LOOPBACK, port: 0 },
      tcpMode: "listen",
      admission: options.trust,
      askOperator: options.askOperator,
      tls: options.receiverTls,
      carrier: options.carrier?.listen,
    });
    const tcpPort = options.viaPort ? await options.viaPort(sender.tcpPort) : sender.tcpPort;
    receiver = await startReceiver({
      ...receiverSide,
      tcp: { host: LOOPBACK, port: tcpPort },
      tcpMode: "dial",
      reconnect: { initialMs: 50, maxMs: 500 },
      tls: options.senderTls,
      carrier: options.carrier?.dial,
    });
  } else {
    receiver = await startReceiver({
      ...receiverSide,
      tcp: { host: LOOPBACK, port: 0 },
      admission: options.trust,
      askOperator: options.askOperator,
      tls: options.receiverTls,
      carrier: options.carrier?.listen,
    });
    const tcpPort = options.viaPort ? await options.viaPort(receiver.tcpPort) : receiver.tcpPort;
    sender = await startSender({
      ...senderSide,
      tcp: { host: LOOPBACK, port: tcpPort },
      reconnect: { initialMs: 50, maxMs: 500 },
      tls: options.senderTls,
      carrier: options.carrier?.dial,
    });
  }
  if (options.waitConnected !== false) {
    await eventually(
      () => receiver.machine.session.peerConnected && sender.machine.session.peerConnected,
      "sender accepted",
    );
  }
  return {
    receiver,
    sender,
    receiverLog,
    senderLog,
    close: async () => {
      await sender.close();
      await receiver.close();
    },
  };
}

/**
 * Fifty clients at once through an echo target: each must get exactly its own replies, paced and in
 * an unpaced burst, with one flow (and one sender socket) per client.
 */
export async function concurrentClientsScenario(transport: Transport, tunnel: Tunnel): Promise<void> {
  const clients = await Promise.all(Array.from({ length: 50 }, () => startClient(transport, tunnel.receiver.udpPort)));
  try {
    // First datagram per client opens its flow; then ten request/reply rounds each, all clients at
    // once (a lost datagram is re-sent: loopback UDP may drop under a burst, the tunnel must not mix).
    await Promise.all(clients.map((client, i) => client.request(`client ${i} hello`)));
    await Promise.all(
      clients.map(async (client, i) => {
        for (let round = 0; round < 10; round++) {
          const reply = text(await client.request(`client ${i} round ${round}`));
          assert.match(reply, new RegExp(`^client ${i} round `), `client ${i} got ${reply}`);
        }
      }),
    );
    // And an unpaced burst: whatever arrives must be the client's own.
    for (let burst = 0; burst < 5; burst++)
      for (const [i, client] of clients.entries()) client.send(`client ${i} burst ${burst}`);
    await sleep(300);
    clients.forEach((client, i) => {
      assert.ok(client.replies.length >= 11);
      for (const reply of client.replies)
        assert.match(text(reply), new RegExp(`^client ${i} `), `client ${i} got ${text(reply)}`);
    });
    assert.equal(tunnel.receiver.machine.flows.size, 50);
    assert.equal(tunnel.sender.machine.flows.size, 50);
    assert.equal(tunnel.sender.flowSockets, 50, "one UDP socket per flow on the sender");
  } finally {
    for (const client of clients) client.close();
  }
}

/** Datagrams of 0, 1, 1400 and 65,507 bytes (the IPv4 maximum) come back intact through an echo target. */
export async function datagramSizesScenario(transport: Transport, tunnel: Tunnel): Promise<void> {
  const client = await startClient(transport, tunnel.receiver.udpPort);
  try {
    for (const size of [1, 0, 1400, 65_507]) {
      const payload = new Uint8Array(size).map((_, i) => (i * 31 + size) & 0xff);
      const reply = await client.request(payload);
      assert.equal(reply.length, size);
      assert.deepEqual(reply, payload);
    }
  } finally {
    client.close();
  }
}
