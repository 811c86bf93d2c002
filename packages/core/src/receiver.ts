/**
 * The receiver at run time: public UDP ports (one per mapping) whose clients become flows, and the TCP
 * side toward the sender — listening for it (ssh -R, the original's way) or dialing it (ssh -L).
 * Wires a ReceiverMachine to a transport.
 */
import { type ClientFlow, type Output, type ReceiverConfig, ReceiverMachine } from "@mcudpt/protocol";
import { formatHostPort, type HostPort } from "./address.js";
import { nodeCrypto } from "./crypto.js";
import { MachineDriver, now } from "./driver.js";
import { messageOf, UserError } from "./errors.js";
import { fingerprint } from "./keys.js";
import { type Logger, RateLimitedLog } from "./logger.js";
import {
  bindAddress,
  type DialTrust,
  type ListenTrust,
  type PeerLink,
  peerKeyCheck,
  startPeerLink,
  withIPv4Fallback,
} from "./peer-link.js";
import { Resolver } from "./resolve.js";
import type { ReceiverTlsOptions, SenderTlsOptions } from "./tls-peer.js";
import type { Transport, UdpSocket } from "./transport.js";
import { UdpBatcher } from "./udp-batch.js";

export type { OperatorQuestion } from "./peer-link.js";
export { bindAddress };

/** One public UDP port and, optionally, the name that pairs it with the sender's target. */
export interface ReceiverMapping {
  name?: string;
  udp: HostPort;
  idleTimeoutMs?: number;
  maxFlows?: number;
}

export interface ReceiverOptions extends ListenTrust, DialTrust {
  transport: Transport;
  /** Where UDP clients send (one mapping); host "" means all interfaces. Or give `mappings`. */
  udp?: HostPort;
  /** Several public ports over one connection; their order is the mapping id. */
  mappings?: ReceiverMapping[];
  /** The TCP address: where to listen (default), or the sender to dial with `tcpMode: "dial"`. */
  tcp: HostPort;
  /** "listen" (ssh -R: the sender dials in) or "dial" (ssh -L: the receiver dials the sender). */
  tcpMode?: "listen" | "dial";
  config: ReceiverConfig;
  logger: Logger;
  /** TLS: the certificate to serve when listening, or how to check the sender's when dialing. */
  tls?: ReceiverTlsOptions | SenderTlsOptions;
}

export interface ReceiverHandle {
  readonly machine: ReceiverMachine;
  /** The first mapping's UDP port. */
  readonly udpPort: number;
  /** Every mapping's UDP port, by mapping id. */
  readonly udpPorts: number[];
  /** The listening TCP port (0 when dialing). */
  readonly tcpPort: number;
  /** Resolves with the reason when dialing stopped for good; never while listening. */
  readonly fatal: Promise<string>;
  /** Says goodbye to the sender, closes every port. */
  close(): Promise<void>;
}

/**
 * Kernel buffers of the public UDP sockets: every client shares one, and the default (~208 KiB, about
 * 300 small datagrams counting the kernel's per-datagram overhead) overflows in a burst while the
 * process is busy writing to TCP. A limit, not an allocation; the kernel caps it at rmem_max.
 */
const CLIENT_SOCKET_BUFFER = 2 * 1024 * 1024;

export async function startReceiver(options: ReceiverOptions): Promise<ReceiverHandle> {
  const { transport, logger } = options;
  const mappings = receiverMappings(options);
  const dialing = options.tcpMode === "dial";
  const keyCheck = peerKeyCheck(dialing ? options.pins : undefined, logger, "sender");
  const machine = new ReceiverMachine(
    {
      checkPeerKey: keyCheck.check,
      mappings: mappings.map(({ name, idleTimeoutMs, maxFlows }) => ({ name, idleTimeoutMs, maxFlows })),
      ...options.config,
    },
    nodeCrypto,
  );
  const resolver = new Resolver();
  const rateLimited = new RateLimitedLog(logger);
  const sockets: UdpSocket[] = [];
  let link: PeerLink | undefined;

  const onOutput = (output: Output): void => {
    switch (output.kind) {
      case "send-to-client": {
        const flow: ClientFlow = output.flow;
        // The payload is a view into the TCP chunk being decoded: sent before this drain returns.
        replies[flow.mappingId]?.add(output.payload, flow.port, flow.address);
        return;
      }
      case "authorize-peer":
      case "accepted":
        link?.onOutput(output);
        return;
      default:
        return;
    }
  };
  /** Replies to clients produced by one drain go out together, per public port (one sendmmsg on Bun). */
  const replies = mappings.map(() => new UdpBatcher(false));
  const sendReplies = (): void => {
    for (let mappingId = 0; mappingId < replies.length; mappingId++) {
      const batch = replies[mappingId];
      if (batch.size === 0) continue;
      const dropped = batch.flush(sockets[mappingId]);
      if (dropped === 0) continue;
      machine.stats.drops["socket-error"] += dropped;
      const what = dropped === 1 ? "a datagram" : `${dropped} datagrams`;
      rateLimited.log("udp-send", "warn", `could not send ${what} to clients (too large, or socket buffer full)`);
    }
  };
  const driver = new MachineDriver(machine, logger, onOutput, sendReplies);

  const bound: string[] = [];
  try {
    for (const [mappingId, mapping] of mappings.entries()) {
      const host = await bindAddress(resolver, mapping.udp.host, "--udp");
      let boundHost = host;
      try {
        const socket = await withIPv4Fallback(host, (tryHost) => {
          boundHost = tryHost;
          return transport.bindUdp({
            host: tryHost,
            port: mapping.udp.port,
            bufferBytes: CLIENT_SOCKET_BUFFER,
            onDatagram: (data, address, port) =>
              driver.guard(() => machine.clientDatagram(address, port, data, now(), mappingId)),
            onError: (error) => {
              // A send that failed after send() returned true (node:dgram reports EMSGSIZE later).
              machine.stats.drops["socket-error"]++;
              rateLimited.log("udp-error", "warn", `UDP socket error: ${messageOf(error)}`);
            },
          });
        });
        sockets.push(socket);
        bound.push(`${mapping.name ? `${mapping.name}=` : ""}${formatHostPort(boundHost, socket.port)}`);
      } catch (error) {
        throw new UserError(`cannot listen on UDP ${formatHostPort(host, mapping.udp.port)}: ${messageOf(error)}`);
      }
    }
    link = await startPeerLink({
      transport,
      logger,
      driver,
      peerName: "sender",
      mode: dialing ? "dial" : "listen",
      address: options.tcp,
      flag: "--tcp",
      handshakeTimeoutMs: options.config.handshakeTimeoutMs,
      keyCheck,
      ...peerSide(options),
    });
  } catch (error) {
    for (const socket of sockets) socket.close();
    throw error;
  }
  const peerLink = link;
  const tcpText = !dialing
    ? `TCP ${formatHostPort(peerLink.address, peerLink.tcpPort)}`
    : `dialing the sender at ${formatHostPort(options.tcp.host || "127.0.0.1", options.tcp.port)}`;
  logger.log(
    "info",
    `receiver listening: UDP ${bound.join(", ")}, ${tcpText} (transport: ${transport.name}, auth: ${authDescription(options)})`,
  );

  // Datagrams dropped for want of a sender are counted per datagram but reported at most every 30 s.
  let reportedNoSender = 0;
  const report = setInterval(() => {
    const dropped = machine.stats.drops["no-sender"];
    if (dropped > reportedNoSender) {
      logger.log("warn", `dropped ${dropped - reportedNoSender} datagrams from clients: no sender connected`);
      reportedNoSender = dropped;
    }
  }, 30_000);
  report.unref?.();

  let closed: Promise<void> | undefined;
  return {
    machine,
    udpPort: sockets[0].port,
    udpPorts: sockets.map((socket) => socket.port),
    tcpPort: peerLink.tcpPort,
    fatal: peerLink.fatal,
    close() {
      closed ??= (async () => {
        clearInterval(report);
        peerLink.close();
        driver.guard(() => machine.shutdown());
        driver.stop();
        for (const socket of sockets) socket.close();
        await waitFor(() => driver.openConnections === 0, 1000);
        driver.destroyAll();
      })();
      return closed;
    },
  };
}

/** The options that concern the TCP side (trust, pins, TLS, reconnects), whichever way round. */
export function peerSide(options: ListenTrust & DialTrust & { tls?: ReceiverTlsOptions | SenderTlsOptions }) {
  const { trust, askOperator, pins, reconnect, connectTimeoutMs, tls } = options;
  return { trust, askOperator, pins, reconnect, connectTimeoutMs, tls };
}

function receiverMappings(options: ReceiverOptions): ReceiverMapping[] {
  if (options.mappings && options.mappings.length > 0) return options.mappings;
  if (!options.udp) throw new UserError("the receiver needs a UDP address (--udp)");
  return [{ udp: options.udp }];
}

function authDescription(options: ReceiverOptions): string {
  if (options.config.secret) return "shared secret";
  const key = options.config.identity ? `key ${fingerprint(options.config.identity.publicKey)}` : "key";
  if (options.tcpMode === "dial") return `${key}; the sender's key ${options.pins ? "is pinned" : "is not checked"}`;
  return `${key}; senders: ${options.askOperator ? "known keys or the operator's approval" : "known keys only"}`;
}

/** Polls `done` until it holds or `ms` pass (bounded). */
export async function waitFor(done: () => boolean, ms: number): Promise<void> {
  const until = Date.now() + ms;
  while (!done() && Date.now() < until) await new Promise((r) => setTimeout(r, 10));
}
