/**
 * Tunnels, targets and clients on a chosen loopback address (127.0.0.1 or ::1), for the IPv6 and
 * PROXY protocol suites: startTunnel/startClient in the other helpers are IPv4-only. Loopback only,
 * ephemeral ports, bounded waits. node:test/node:assert only, so it also runs under Node.
 */
import {
  type HostPort,
  type ReceiverHandle,
  type SenderHandle,
  type SenderOptions,
  startReceiver,
  startSender,
  type Transport,
  type UdpSocket,
} from "@mcudpt/core";
import { SECRET } from "./scenarios.js";
import { eventually, type MemoryLogger, memoryLogger, sleep } from "./tunnel.js";

export const LOOPBACK6 = "::1";

export interface AddressedTunnel {
  receiver: ReceiverHandle;
  sender: SenderHandle;
  receiverLog: MemoryLogger;
  senderLog: MemoryLogger;
  close(): Promise<void>;
}

/** A receiver listening on `udp`/`tcp` (port 0: ephemeral) and a sender dialling it; waits until connected. */
export async function startAddressedTunnel(
  transport: Transport,
  options: { udp: HostPort; tcp: HostPort; target: HostPort; proxyProtocol?: SenderOptions["proxyProtocol"] },
): Promise<AddressedTunnel> {
  const receiverLog = memoryLogger();
  const senderLog = memoryLogger();
  const receiver = await startReceiver({
    transport,
    udp: options.udp,
    tcp: options.tcp,
    config: { secret: SECRET },
    logger: receiverLog,
  });
  // The sender dials the receiver's TCP address; a wildcard listener is reached on the loopback.
  const tcpHost =
    options.tcp.host === "::" ? LOOPBACK6 : options.tcp.host === "0.0.0.0" ? "127.0.0.1" : options.tcp.host;
  let sender: SenderHandle;
  try {
    sender = await startSender({
      transport,
      target: options.target,
      tcp: { host: tcpHost, port: receiver.tcpPort },
      config: { secret: SECRET },
      logger: senderLog,
      reconnect: { initialMs: 50, maxMs: 500 },
      proxyProtocol: options.proxyProtocol,
    });
  } catch (error) {
    await receiver.close();
    throw error;
  }
  const close = async () => {
    await sender.close();
    await receiver.close();
  };
  try {
    await eventually(
      () => receiver.machine.session.peerConnected && sender.machine.session.peerConnected,
      "sender accepted",
    );
  } catch (error) {
    await close();
    throw error;
  }
  return { receiver, sender, receiverLog, senderLog, close };
}

/** What a target saw of one datagram: its UDP source and its bytes (copied). */
export interface Seen {
  address: string;
  port: number;
  data: Uint8Array;
}

/**
 * A UDP target on `host` that records every datagram and answers with `reply(data)` (undefined:
 * no answer) to the datagram's source.
 */
export async function startTarget(
  transport: Transport,
  host: string,
  reply: (data: Uint8Array) => Uint8Array | undefined = (data) => data,
): Promise<UdpSocket & { seen: Seen[] }> {
  const seen: Seen[] = [];
  const socket: UdpSocket = await transport.bindUdp({
    host,
    port: 0,
    onDatagram: (data, address, port) => {
      const copy = Uint8Array.from(data);
      seen.push({ address, port, data: copy });
      const answer = reply(copy);
      if (answer) socket.send(answer, port, address);
    },
    onError: () => {},
  });
  return Object.assign(socket, { seen }) as UdpSocket & { seen: Seen[] };
}

/** A UDP client bound on `host` talking to `server`:`port`. */
export interface AddressedClient {
  socket: UdpSocket;
  replies: Uint8Array[];
  send(data: Uint8Array): void;
  /** Sends until a reply equal to `data` arrives (re-sending: a flow may lose its first datagram), bounded. */
  request(data: Uint8Array | string, timeoutMs?: number): Promise<Uint8Array>;
  close(): void;
}

export async function startAddressedClient(
  transport: Transport,
  host: string,
  server: HostPort,
): Promise<AddressedClient> {
  const replies: Uint8Array[] = [];
  const socket = await transport.bindUdp({
    host,
    port: 0,
    onDatagram: (data) => replies.push(Uint8Array.from(data)),
    onError: () => {},
  });
  const send = (data: Uint8Array) => void socket.send(data, server.port, server.host);
  return {
    socket,
    replies,
    send,
    async request(data, timeoutMs = 5000) {
      const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data;
      const until = Date.now() + timeoutMs;
      const matches = (reply: Uint8Array) => reply.length === bytes.length && reply.every((b, i) => b === bytes[i]);
      while (Date.now() < until) {
        send(bytes);
        const resendAt = Math.min(Date.now() + 250, until);
        while (Date.now() < resendAt) {
          const found = replies.find(matches);
          if (found) return found;
          await sleep(5);
        }
      }
      throw new Error(`no reply from ${server.host}:${server.port} within ${timeoutMs} ms`);
    },
    close: () => socket.close(),
  };
}

/** True when this host can bind and use the IPv6 loopback (containers often have IPv6 off). */
export async function hasIPv6Loopback(transport: Transport): Promise<boolean> {
  try {
    const socket = await transport.bindUdp({ host: LOOPBACK6, port: 0, onDatagram: () => {}, onError: () => {} });
    socket.close();
    return true;
  } catch {
    return false;
  }
}
