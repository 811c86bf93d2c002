/**
 * The sender at run time: gives every flow its own UDP socket connected to the target of the flow's
 * mapping, so the target's replies map back to the flow and the target sees one stable source port per
 * client. Its TCP side dials the receiver (ssh -R, the default; it keeps dialing, with capped
 * exponential backoff and jitter) or listens for it (ssh -L).
 */
import {
  DEFAULTS,
  FlowCloseReason,
  type Output,
  proxyV2Header,
  type SenderConfig,
  SenderMachine,
  type WireAddress,
  withProxyHeader,
} from "@mcudpt/protocol";
import { formatHostPort, type HostPort } from "./address.js";
import { nodeCrypto } from "./crypto.js";
import { MachineDriver, now } from "./driver.js";
import { messageOf, UserError } from "./errors.js";
import { fingerprint } from "./keys.js";
import { type Logger, RateLimitedLog } from "./logger.js";
import { type DialTrust, type ListenTrust, type PeerLink, peerKeyCheck, startPeerLink } from "./peer-link.js";
import { peerSide, waitFor } from "./receiver.js";
import { Resolver } from "./resolve.js";
import type { ReceiverTlsOptions, SenderTlsOptions } from "./tls-peer.js";
import type { Transport, UdpSocket } from "./transport.js";
import { UdpBatcher } from "./udp-batch.js";

/** One target and, optionally, the name that pairs it with the receiver's public port. */
export interface SenderMapping {
  name?: string;
  target: HostPort;
  idleTimeoutMs?: number;
  maxFlows?: number;
}

export interface SenderOptions extends DialTrust, ListenTrust {
  transport: Transport;
  /** The UDP service the flows are forwarded to (one mapping); host "" means this machine. Or `mappings`. */
  target?: HostPort;
  /** Several targets over one connection, paired with the receiver's mappings by name or order. */
  mappings?: SenderMapping[];
  /** The receiver's TCP address (default), or where to listen for it with `tcpMode: "listen"`. */
  receiver: HostPort;
  /** "dial" (ssh -R: the sender dials the receiver) or "listen" (ssh -L: the receiver dials in). */
  tcpMode?: "dial" | "listen";
  config: SenderConfig;
  logger: Logger;
  /** TLS: how to check the receiver's certificate when dialing, or the certificate to serve when listening. */
  tls?: SenderTlsOptions | ReceiverTlsOptions;
  /** Prepend a PROXY protocol v2 header (client → target) to every datagram sent to the target. */
  proxyProtocol?: boolean;
}

export interface SenderHandle {
  readonly machine: SenderMachine;
  /** Open flow sockets (for tests and status). */
  readonly flowSockets: number;
  /** Resolves with the reason when the sender gave up for good (a refused key or certificate); else never. */
  readonly fatal: Promise<string>;
  /** TCP connections to the receiver made after the first one (for metrics). */
  readonly reconnects: number;
  /** The listening TCP port (0 when dialing). */
  readonly tcpPort: number;
  close(): Promise<void>;
}

/**
 * Datagrams held while a flow's socket is being opened (a name to resolve, a bind to wait for): a
 * client that bursts its first hundreds of datagrams must not lose most of them. Bounded per flow and
 * in all, so a flood of new flows cannot hoard memory; past the bounds, datagrams are dropped (UDP
 * semantics), counted as backpressure and logged.
 */
const MAX_PENDING_PER_FLOW = 1024;
const MAX_PENDING_BYTES = 16 * 1024 * 1024;

/**
 * A closed flow's socket stays bound this long, discarding what arrives, before its port is released:
 * otherwise the kernel can hand the port straight to the next flow's socket, and the target's late
 * reply to the old client would reach the new one. Bounded in number so it cannot exhaust descriptors.
 */
const LINGER_MS = 5_000;
/** At least this many may linger (and at least --max-flows); on EMFILE they are released first. */
const MIN_LINGERING = 1024;

interface FlowSocket {
  socket: UdpSocket | undefined;
  /** Datagrams that arrived before the socket was open (copies). */
  pending: Uint8Array[];
  /** Datagrams of the current drain, sent when it ends (views into the TCP chunk). */
  out: UdpBatcher;
  closed: boolean;
  /** --proxy-protocol: this flow's PROXY v2 header, made once when its socket opens. */
  header?: Uint8Array;
}

/** Closed flow sockets waiting out LINGER_MS, oldest first. */
class Lingering {
  private readonly queue: Array<{ socket: UdpSocket; until: number }> = [];
  private timer: ReturnType<typeof setTimeout> | undefined;

  constructor(private readonly max: number) {}

  add(socket: UdpSocket): void {
    this.queue.push({ socket, until: Date.now() + LINGER_MS });
    while (this.queue.length > this.max) this.queue.shift()?.socket.close();
    this.schedule();
  }

  private schedule(): void {
    if (this.timer || this.queue.length === 0) return;
    this.timer = setTimeout(
      () => {
        this.timer = undefined;
        const now = Date.now();
        while (this.queue.length > 0 && this.queue[0].until <= now) this.queue.shift()?.socket.close();
        this.schedule();
      },
      Math.max(0, this.queue[0].until - Date.now()),
    );
  }

  closeAll(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    for (const { socket } of this.queue.splice(0)) socket.close();
  }
}

export async function startSender(options: SenderOptions): Promise<SenderHandle> {
  const { transport, logger } = options;
  const mappings = senderMappings(options);
  const listening = options.tcpMode === "listen";
  const keyCheck = peerKeyCheck(listening ? undefined : options.pins, logger, "receiver");
  const machine = new SenderMachine(
    {
      checkPeerKey: keyCheck.check,
      mappings: mappings.map(({ name, idleTimeoutMs, maxFlows }) => ({ name, idleTimeoutMs, maxFlows })),
      ...options.config,
    },
    nodeCrypto,
  );
  const resolver = new Resolver();
  const rateLimited = new RateLimitedLog(logger);
  const flowSockets = new Map<number, FlowSocket>();
  const lingering = new Lingering(Math.max(MIN_LINGERING, options.config.maxFlows ?? DEFAULTS.maxFlows));
  /** Bytes held in all flows' `pending` lists (see MAX_PENDING_BYTES). */
  let pendingBytes = 0;
  const discardPending = (entry: FlowSocket): void => {
    for (const payload of entry.pending) pendingBytes -= payload.length;
    entry.pending = [];
  };
  const targets = mappings.map(({ target }) => {
    const host = target.host === "" ? "127.0.0.1" : target.host;
    return { host, port: target.port, text: formatHostPort(host, target.port) };
  });
  const remoteText = formatHostPort(options.receiver.host || "127.0.0.1", options.receiver.port);
  let link: PeerLink | undefined;

  const bindFlowSocket = (
    flowId: number,
    entry: FlowSocket,
    target: (typeof targets)[number],
    address: string,
    family: 4 | 6,
  ): Promise<UdpSocket> =>
    transport.bindUdp({
      host: family === 6 ? "::" : "0.0.0.0",
      port: 0,
      connect: { host: address, port: target.port },
      // After close the socket lingers (see LINGER_MS): what still arrives belongs to no flow.
      onDatagram: (data) => {
        if (!entry.closed) driver.guard(() => machine.targetDatagram(flowId, data, now()));
      },
      onError: (error) => {
        if (entry.closed) return;
        // ICMP port unreachable and friends: the target may come back; keep the flow.
        driver.guard(() => machine.flowSocketError(flowId, false));
        rateLimited.log("target-error", "warn", `target ${target.text}: ${messageOf(error)}`);
      },
    });

  /** One allocation per datagram at most (the header copy); too large with the header: dropped. */
  const sendToTarget = (socket: UdpSocket, header: Uint8Array | undefined, payload: Uint8Array): void => {
    const data = header ? withProxyHeader(header, payload) : payload;
    if (data === undefined) machine.stats.drops["too-large"]++;
    else if (!socket.send(data)) machine.stats.drops["socket-error"]++;
  };

  const openFlowSocket = async (flowId: number, mappingId: number, client: WireAddress): Promise<void> => {
    const entry: FlowSocket = { socket: undefined, pending: [], out: new UdpBatcher(true), closed: false };
    flowSockets.set(flowId, entry);
    const target = targets[mappingId];
    let resolved: { address: string; family: 4 | 6 };
    try {
      resolved = await resolver.resolve(target.host);
    } catch (error) {
      return failFlow(flowId, entry, FlowCloseReason.ResolveFailed, `cannot resolve target "${target.host}"`, error);
    }
    let socket: UdpSocket;
    try {
      socket = await bindFlowSocket(flowId, entry, target, resolved.address, resolved.family);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException)?.code;
      // Out of descriptors: give up the least recently active flow's socket for this newer one.
      let evicted = false;
      if ((code === "EMFILE" || code === "ENFILE") && !entry.closed) {
        driver.guard(() => {
          evicted = machine.evictLeastRecent(now(), flowId);
        });
      }
      if (!evicted) {
        return failFlow(
          flowId,
          entry,
          FlowCloseReason.SocketError,
          `cannot open a UDP socket toward ${target.text}`,
          error,
        );
      }
      rateLimited.log(
        "emfile",
        "warn",
        `out of file descriptors (${code}): evicting flows to make room; lower --max-flows or raise ulimit -n`,
      );
      lingering.closeAll(); // lingering sockets are the cheapest descriptors to give back
      try {
        socket = await bindFlowSocket(flowId, entry, target, resolved.address, resolved.family);
      } catch (retryError) {
        return failFlow(
          flowId,
          entry,
          FlowCloseReason.SocketError,
          `cannot open a UDP socket toward ${target.text}`,
          retryError,
        );
      }
    }
    if (entry.closed) return lingering.add(socket);
    entry.socket = socket;
    // Source: the receiver's client; destination: the target address this socket is connected to.
    if (options.proxyProtocol) entry.header = proxyV2Header(client, { address: resolved.address, port: target.port });
    for (const payload of entry.pending) {
      pendingBytes -= payload.length;
      sendToTarget(socket, entry.header, payload);
    }
    entry.pending = [];
  };

  const failFlow = (flowId: number, entry: FlowSocket, reason: number, what: string, error: unknown): void => {
    if (entry.closed) return;
    flowSockets.delete(flowId);
    discardPending(entry);
    rateLimited.log(`flow-open-${reason}`, "warn", `${what}: ${messageOf(error)}`);
    driver.guard(() => machine.flowSocketError(flowId, true, reason));
  };

  const onOutput = (output: Output): void => {
    switch (output.kind) {
      case "send-to-target": {
        const entry = flowSockets.get(output.flowId);
        if (entry?.socket) {
          // The PROXY v2 header costs one copy per datagram; without it the payload (a view into
          // the TCP chunk) is sent before this drain returns.
          const data = entry.header ? withProxyHeader(entry.header, output.payload) : output.payload;
          if (data === undefined) {
            machine.stats.drops["too-large"]++;
            return;
          }
          if (entry.out.size === 0) batched.push(entry);
          entry.out.add(data);
        } else if (
          entry &&
          entry.pending.length < MAX_PENDING_PER_FLOW &&
          pendingBytes + output.payload.length <= MAX_PENDING_BYTES
        ) {
          entry.pending.push(output.payload.slice()); // the payload is a view into the TCP chunk
          pendingBytes += output.payload.length;
        } else if (entry) {
          machine.stats.drops.backpressure++;
          rateLimited.log(
            "flow-opening",
            "warn",
            "dropped datagrams for flows whose socket was still opening (a burst over 1,024 datagrams or 16 MiB)",
          );
        } else {
          machine.stats.drops["unknown-flow"]++;
        }
        return;
      }
      case "open-flow-socket":
        void openFlowSocket(output.flowId, output.mappingId, output.client);
        return;
      case "authorize-peer":
        link?.onOutput(output);
        return;
      case "close-flow-socket": {
        const entry = flowSockets.get(output.flowId);
        if (!entry) return;
        discardPending(entry);
        entry.closed = true;
        if (entry.socket) lingering.add(entry.socket);
        flowSockets.delete(output.flowId);
        return;
      }
      case "accepted":
        link?.onOutput(output);
        return;
      default:
        return;
    }
  };
  /** Flows with datagrams from the current drain: each flow's go out together (one sendmmsg on Bun). */
  const batched: FlowSocket[] = [];
  const sendBatched = (): void => {
    if (batched.length === 0) return;
    // A flow closed later in the same drain still gets its earlier datagrams: its socket lingers.
    try {
      for (const entry of batched) machine.stats.drops["socket-error"] += entry.out.flush(entry.socket);
    } finally {
      batched.length = 0;
    }
  };
  const driver = new MachineDriver(machine, logger, onOutput, sendBatched);

  const targetList = mappings
    .map((mapping, i) => `${mapping.name ? `${mapping.name}=` : ""}${targets[i].text}`)
    .join(", ");
  if (!listening) {
    logger.log(
      "info",
      `sender forwarding to ${targetList} through receiver ${remoteText} (transport: ${transport.name})`,
    );
  }
  const peerLink = await startPeerLink({
    transport,
    logger,
    driver,
    peerName: "receiver",
    mode: listening ? "listen" : "dial",
    address: options.receiver,
    flag: "--listen",
    handshakeTimeoutMs: options.config.handshakeTimeoutMs,
    keyCheck,
    ...peerSide(options),
  });
  link = peerLink;
  if (listening) {
    logger.log(
      "info",
      `sender forwarding to ${targetList}, listening for the receiver on TCP ${formatHostPort(peerLink.address, peerLink.tcpPort)} ` +
        `(transport: ${transport.name}${options.config.identity ? `, key ${fingerprint(options.config.identity.publicKey)}` : ""})`,
    );
  }

  let closed: Promise<void> | undefined;
  return {
    machine,
    fatal: peerLink.fatal,
    tcpPort: peerLink.tcpPort,
    get flowSockets() {
      return flowSockets.size;
    },
    get reconnects() {
      return peerLink.reconnects;
    },
    close() {
      closed ??= (async () => {
        peerLink.close();
        driver.guard(() => machine.shutdown());
        driver.stop();
        for (const entry of flowSockets.values()) {
          entry.closed = true;
          entry.socket?.close();
        }
        flowSockets.clear();
        pendingBytes = 0;
        lingering.closeAll();
        await waitFor(() => driver.openConnections === 0, 1000);
        driver.destroyAll();
      })();
      return closed;
    },
  };
}

function senderMappings(options: SenderOptions): SenderMapping[] {
  if (options.mappings && options.mappings.length > 0) return options.mappings;
  if (!options.target) throw new UserError("the sender needs a target UDP address (--udp)");
  return [{ target: options.target }];
}
