/**
 * The sender's UDP sockets, one per flow, each connected to its mapping's target so the target's
 * replies map back to the flow and the target sees one stable source port per client. Opening one may
 * take a while (a name to resolve, a bind): datagrams wait meanwhile, bounded per flow and in all. A
 * closed flow's socket lingers before its port is released. Out of descriptors, the least recently
 * active flow gives its socket up for the new one. Datagrams of one drain go out together per flow.
 */
import { FlowCloseReason, proxyV2Header, type WireAddress, withProxyHeader } from "@mcudpt/protocol";
import { formatHostPort } from "./address.js";
import type { Clock } from "./clock.js";
import { bufferShortfall, type KernelSampler } from "./kernel-sampler.js";
import type { ResolvedAddress } from "./resolve.js";
import type { Transport, UdpSocket } from "./transport.js";
import { UdpBatcher } from "./udp-batch.js";

/** Datagrams held per flow while its socket opens, and in all (a burst must not lose most of itself). */
export const MAX_PENDING_PER_FLOW = 1024;
export const MAX_PENDING_BYTES = 16 * 1024 * 1024;
/**
 * What one held datagram costs besides its payload (the copy's object and its slot in the list): the
 * budget is in memory, not in payload bytes, or a flood of empty datagrams would be free.
 */
export const PENDING_DATAGRAM_OVERHEAD = 96;
/**
 * How long a closed flow's socket stays bound, discarding what arrives, before its port is released:
 * otherwise the kernel can hand the port straight to the next flow's socket, and the target's late
 * reply to the old client would reach the new one.
 */
export const LINGER_MS = 5_000;

export interface Target {
  host: string;
  port: number;
  /** host:port, for log lines. */
  text: string;
}

/** What the flow sockets tell the machine (each call is one input, made by the caller's guard). */
export interface FlowSocketEvents {
  datagram(flowId: number, data: Uint8Array): void;
  /** A socket error that loses a datagram but keeps the flow (ICMP port unreachable). */
  socketError(flowId: number, error: unknown, target: Target): void;
  /** The flow cannot have a socket (`reason`: a FlowCloseReason); `what` and `error` for the log. */
  failed(flowId: number, reason: number, what: string, error: unknown): void;
  /** Out of descriptors: close the least recently active flow but `flowId`; whether one was. */
  evictForSockets(flowId: number): boolean;
  /** A datagram of `flowId` (of mapping `mappingId`) that was not sent, and why. */
  unsent(
    flow: { id: number; mappingId: number },
    size: number,
    reason: "socket-error" | "too-large" | "backpressure" | "unknown-flow",
  ): void;
  warn(key: string, message: string): void;
}

export interface FlowSocketsOptions {
  transport: Transport;
  resolve(host: string): Promise<ResolvedAddress>;
  targets: readonly Target[];
  /** Prepend a PROXY v2 header (client → target) to each datagram. */
  proxyProtocol?: boolean;
  /** At most this many closed sockets linger at once (the oldest are released first). */
  maxLingering: number;
  clock: Clock;
  events: FlowSocketEvents;
  /** Kernel buffer size requested for each flow's socket (bursts from the target); none: the system default. */
  bufferBytes?: number;
  /** Counts the kernel's drops at each flow's socket: by flow, and by mapping while it lingers. */
  sampler?: KernelSampler<DropSite>;
}

/** Where the kernel's drops at a flow socket are counted (droppedOutside's `where`). */
export interface DropSite {
  flowId?: number;
  mappingId: number;
}

interface FlowSocket {
  readonly id: number;
  readonly mappingId: number;
  /** Port offset in the mapping's target range (0 for a single target port). */
  readonly portOffset: number;
  socket: UdpSocket | undefined;
  /** Datagrams that arrived before the socket was open (copies). */
  pending: Uint8Array[];
  /** Datagrams of the current drain (views into the TCP chunk), sent when it ends. */
  out: UdpBatcher<FlowSocket>;
  closed: boolean;
  /** --proxy-protocol: this flow's PROXY v2 header, made once when its socket opens. */
  header?: Uint8Array;
}

export class FlowSockets {
  private readonly flows = new Map<number, FlowSocket>();
  /** Bytes held in all flows' pending lists. */
  private pendingBytes = 0;
  /** Flows with datagrams in the current drain. */
  private readonly batched: FlowSocket[] = [];
  private readonly lingering: Array<{ socket: UdpSocket; until: number }> = [];
  private lingerTimer: unknown;
  /** The first flow socket's buffer was compared with the request (once: they are all alike). */
  private bufferChecked = false;

  constructor(private readonly options: FlowSocketsOptions) {}

  get size(): number {
    return this.flows.size;
  }

  get lingeringCount(): number {
    return this.lingering.length;
  }

  get pendingTotal(): number {
    return this.pendingBytes;
  }

  /** The machine's open-flow-socket. */
  open(flowId: number, mappingId: number, client: WireAddress, portOffset = 0): void {
    const entry: FlowSocket = {
      id: flowId,
      mappingId,
      portOffset,
      socket: undefined,
      pending: [],
      out: new UdpBatcher<FlowSocket>(true),
      closed: false,
    };
    this.flows.set(flowId, entry);
    void this.connect(entry, client);
  }

  /** The machine's send-to-target: batched until the drain ends, or held while the socket opens. */
  send(flowId: number, payload: Uint8Array): void {
    const entry = this.flows.get(flowId);
    if (entry === undefined)
      return this.options.events.unsent({ id: flowId, mappingId: -1 }, payload.length, "unknown-flow");
    if (entry.socket) {
      // The PROXY v2 header costs one copy per datagram; without it the payload (a view into the
      // TCP chunk) is sent before this drain returns.
      const data = entry.header ? withProxyHeader(entry.header, payload) : payload;
      if (data === undefined) return this.options.events.unsent(entry, payload.length, "too-large");
      if (entry.out.size === 0) this.batched.push(entry);
      entry.out.add(data, undefined, undefined, entry);
    } else if (
      entry.pending.length < MAX_PENDING_PER_FLOW &&
      this.pendingBytes + payload.length + PENDING_DATAGRAM_OVERHEAD <= MAX_PENDING_BYTES
    ) {
      entry.pending.push(payload.slice()); // the payload is a view into the TCP chunk
      this.pendingBytes += payload.length + PENDING_DATAGRAM_OVERHEAD;
    } else {
      this.options.events.unsent(entry, payload.length, "backpressure");
      this.options.events.warn(
        "flow-opening",
        `dropped datagrams for flows whose socket was still opening (a burst over ${MAX_PENDING_PER_FLOW} datagrams or 16 MiB)`,
      );
    }
  }

  /** After each drain: every flow's datagrams of the drain, one batch per flow (one sendmmsg on Bun). */
  flush(): void {
    const batched = this.batched;
    if (batched.length === 0) return;
    // A flow closed later in the same drain still gets its earlier datagrams: its socket lingers.
    try {
      for (const entry of batched) {
        // Sizes here include a PROXY header; the machine counted the payload: count what it counted.
        entry.out.flush(entry.socket, (flow, size) =>
          this.options.events.unsent(flow, size - (flow.header?.length ?? 0), "socket-error"),
        );
      }
    } finally {
      batched.length = 0;
    }
  }

  /** The machine's close-flow-socket: the socket lingers. */
  close(flowId: number): void {
    const entry = this.flows.get(flowId);
    if (!entry) return;
    this.discardPending(entry);
    entry.closed = true;
    this.flows.delete(flowId);
    if (entry.socket) this.linger(entry.socket, entry.mappingId);
  }

  /** Closes every socket now, lingering ones too. */
  closeAll(): void {
    for (const entry of this.flows.values()) {
      entry.closed = true;
      if (entry.socket) this.closeSocket(entry.socket);
    }
    this.flows.clear();
    this.pendingBytes = 0;
    this.releaseLingering();
  }

  private async connect(entry: FlowSocket, client: WireAddress): Promise<void> {
    const { events } = this.options;
    const target = targetAt(this.options.targets[entry.mappingId], entry.portOffset);
    let resolved: ResolvedAddress;
    try {
      resolved = await this.options.resolve(target.host);
    } catch (error) {
      return this.fail(entry, FlowCloseReason.ResolveFailed, `cannot resolve target "${target.host}"`, error);
    }
    let socket: UdpSocket;
    try {
      socket = await this.bind(entry, target, resolved);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException)?.code;
      const outOfDescriptors = code === "EMFILE" || code === "ENFILE";
      if (!outOfDescriptors || entry.closed || !events.evictForSockets(entry.id)) {
        return this.fail(entry, FlowCloseReason.SocketError, `cannot open a UDP socket toward ${target.text}`, error);
      }
      this.releaseLingering(); // lingering sockets are the cheapest descriptors to give back
      try {
        socket = await this.bind(entry, target, resolved);
      } catch (retryError) {
        return this.fail(
          entry,
          FlowCloseReason.SocketError,
          `cannot open a UDP socket toward ${target.text}`,
          retryError,
        );
      }
    }
    if (entry.closed) return this.linger(socket);
    entry.socket = socket;
    this.options.sampler?.watch(socket, { flowId: entry.id, mappingId: entry.mappingId });
    this.checkBuffer(socket, target);
    // Source: the receiver's client; destination: the target address this socket is connected to.
    if (this.options.proxyProtocol)
      entry.header = proxyV2Header(client, { address: resolved.address, port: target.port });
    const pending = entry.pending;
    this.discardPending(entry);
    for (const payload of pending) this.send(entry.id, payload);
    this.flush();
  }

  private bind(entry: FlowSocket, target: Target, resolved: ResolvedAddress): Promise<UdpSocket> {
    const { events } = this.options;
    return this.options.transport.bindUdp({
      host: resolved.family === 6 ? "::" : "0.0.0.0",
      port: 0,
      connect: { host: resolved.address, port: target.port },
      bufferBytes: this.options.bufferBytes,
      // After close the socket lingers: what still arrives belongs to no flow.
      onDatagram: (data) => {
        if (!entry.closed) events.datagram(entry.id, data);
      },
      onError: (error) => {
        if (!entry.closed) events.socketError(entry.id, error, target);
      },
    });
  }

  private fail(entry: FlowSocket, reason: number, what: string, error: unknown): void {
    if (entry.closed) return;
    this.flows.delete(entry.id);
    this.discardPending(entry);
    this.options.events.failed(entry.id, reason, what, error);
  }

  private discardPending(entry: FlowSocket): void {
    for (const payload of entry.pending) this.pendingBytes -= payload.length + PENDING_DATAGRAM_OVERHEAD;
    entry.pending = [];
  }

  private checkBuffer(socket: UdpSocket, target: Target): void {
    const requested = this.options.bufferBytes;
    if (this.bufferChecked || requested === undefined) return;
    this.bufferChecked = true;
    const shortfall = bufferShortfall(socket, requested, `flow sockets toward ${target.text}`);
    if (shortfall) this.options.events.warn("flow-buffer", shortfall);
  }

  /** Closes a socket for good (it is no longer sampled). */
  private closeSocket(socket: UdpSocket): void {
    this.options.sampler?.unwatch(socket);
    socket.close();
  }

  private linger(socket: UdpSocket, mappingId?: number): void {
    // What the kernel still drops there while it lingers is the mapping's (the flow is gone).
    if (mappingId !== undefined) this.options.sampler?.watch(socket, { mappingId });
    this.lingering.push({ socket, until: this.options.clock.now() + LINGER_MS });
    while (this.lingering.length > this.options.maxLingering) this.closeLingering(this.lingering.shift());
    this.scheduleRelease();
  }

  private scheduleRelease(): void {
    if (this.lingerTimer !== undefined || this.lingering.length === 0) return;
    const { clock } = this.options;
    this.lingerTimer = clock.setTimeout(
      () => {
        this.lingerTimer = undefined;
        const now = clock.now();
        while (this.lingering.length > 0 && this.lingering[0].until <= now) this.closeLingering(this.lingering.shift());
        this.scheduleRelease();
      },
      Math.max(0, this.lingering[0].until - clock.now()),
    );
  }

  private releaseLingering(): void {
    if (this.lingerTimer !== undefined) this.options.clock.clearTimeout(this.lingerTimer);
    this.lingerTimer = undefined;
    for (const { socket } of this.lingering.splice(0)) this.closeSocket(socket);
  }

  private closeLingering(lingering: { socket: UdpSocket } | undefined): void {
    if (lingering) this.closeSocket(lingering.socket);
  }
}

/** Port `offset` of a mapping's target range: the target itself at offset 0. */
function targetAt(target: Target, offset: number): Target {
  if (offset === 0) return target;
  const port = target.port + offset;
  return { host: target.host, port, text: formatHostPort(target.host, port) };
}
