/**
 * The sender at run time: dials the receiver (and keeps dialing, with capped exponential backoff and
 * jitter), and gives every flow its own UDP socket connected to the target, so the target's replies
 * map back to the flow and the target sees one stable source port per client.
 */
import { DEFAULTS, FlowCloseReason, type Output, SenderMachine, type SenderConfig } from "@mcudpt/protocol";
import { formatHostPort, type HostPort } from "./address.js";
import { nodeCrypto } from "./crypto.js";
import { MachineDriver, now } from "./driver.js";
import { messageOf } from "./errors.js";
import { type Logger, RateLimitedLog } from "./logger.js";
import { waitFor } from "./receiver.js";
import { Resolver } from "./resolve.js";
import type { TcpConnection, Transport, UdpSocket } from "./transport.js";
import { UdpBatcher } from "./udp-batch.js";

export interface SenderOptions {
  transport: Transport;
  /** The UDP service the flows are forwarded to; host "" means this machine. */
  target: HostPort;
  /** The receiver's TCP address; host "" means this machine. */
  receiver: HostPort;
  config: SenderConfig;
  logger: Logger;
  /** First retry delay and its cap (ms); each failure doubles the delay, with jitter. */
  reconnect?: { initialMs?: number; maxMs?: number };
  connectTimeoutMs?: number;
}

export interface SenderHandle {
  readonly machine: SenderMachine;
  /** Open flow sockets (for tests and status). */
  readonly flowSockets: number;
  close(): Promise<void>;
}

/** Datagrams held per flow while its socket is being opened; more are dropped (UDP semantics). */
const MAX_PENDING_PER_FLOW = 64;

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
    this.timer = setTimeout(() => {
      this.timer = undefined;
      const now = Date.now();
      while (this.queue.length > 0 && this.queue[0].until <= now) this.queue.shift()?.socket.close();
      this.schedule();
    }, Math.max(0, this.queue[0].until - Date.now()));
  }

  closeAll(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    for (const { socket } of this.queue.splice(0)) socket.close();
  }
}

export async function startSender(options: SenderOptions): Promise<SenderHandle> {
  const { transport, logger } = options;
  const machine = new SenderMachine(options.config, nodeCrypto);
  const resolver = new Resolver();
  const rateLimited = new RateLimitedLog(logger);
  const flowSockets = new Map<number, FlowSocket>();
  const lingering = new Lingering(Math.max(MIN_LINGERING, options.config.maxFlows ?? DEFAULTS.maxFlows));
  const targetHost = options.target.host === "" ? "127.0.0.1" : options.target.host;
  const receiverHost = options.receiver.host === "" ? "127.0.0.1" : options.receiver.host;
  const targetText = formatHostPort(targetHost, options.target.port);
  const receiverText = formatHostPort(receiverHost, options.receiver.port);
  const initialDelay = options.reconnect?.initialMs ?? 250;
  const maxDelay = options.reconnect?.maxMs ?? 30_000;
  let failures = 0;
  let stopping = false;
  let retryTimer: ReturnType<typeof setTimeout> | undefined;
  let current: TcpConnection | undefined;

  const bindFlowSocket = (flowId: number, entry: FlowSocket, address: string, family: 4 | 6): Promise<UdpSocket> =>
    transport.bindUdp({
      host: family === 6 ? "::" : "0.0.0.0",
      port: 0,
      connect: { host: address, port: options.target.port },
      // After close the socket lingers (see LINGER_MS): what still arrives belongs to no flow.
      onDatagram: (data) => {
        if (!entry.closed) driver.guard(() => machine.targetDatagram(flowId, data, now()));
      },
      onError: (error) => {
        if (entry.closed) return;
        // ICMP port unreachable and friends: the target may come back; keep the flow.
        driver.guard(() => machine.flowSocketError(flowId, false));
        rateLimited.log("target-error", "warn", `target ${targetText}: ${messageOf(error)}`);
      },
    });

  const openFlowSocket = async (flowId: number): Promise<void> => {
    const entry: FlowSocket = { socket: undefined, pending: [], out: new UdpBatcher(true), closed: false };
    flowSockets.set(flowId, entry);
    let resolved: { address: string; family: 4 | 6 };
    try {
      resolved = await resolver.resolve(targetHost);
    } catch (error) {
      return failFlow(flowId, entry, FlowCloseReason.ResolveFailed, `cannot resolve target "${targetHost}"`, error);
    }
    let socket: UdpSocket;
    try {
      socket = await bindFlowSocket(flowId, entry, resolved.address, resolved.family);
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
        return failFlow(flowId, entry, FlowCloseReason.SocketError, `cannot open a UDP socket toward ${targetText}`, error);
      }
      rateLimited.log("emfile", "warn", `out of file descriptors (${code}): evicting flows to make room; lower --max-flows or raise ulimit -n`);
      lingering.closeAll(); // lingering sockets are the cheapest descriptors to give back
      try {
        socket = await bindFlowSocket(flowId, entry, resolved.address, resolved.family);
      } catch (retryError) {
        return failFlow(flowId, entry, FlowCloseReason.SocketError, `cannot open a UDP socket toward ${targetText}`, retryError);
      }
    }
    if (entry.closed) return lingering.add(socket);
    entry.socket = socket;
    for (const payload of entry.pending) if (!socket.send(payload)) machine.stats.drops["socket-error"]++;
    entry.pending = [];
  };

  const failFlow = (flowId: number, entry: FlowSocket, reason: number, what: string, error: unknown): void => {
    if (entry.closed) return;
    flowSockets.delete(flowId);
    rateLimited.log(`flow-open-${reason}`, "warn", `${what}: ${messageOf(error)}`);
    driver.guard(() => machine.flowSocketError(flowId, true, reason));
  };

  const onOutput = (output: Output): void => {
    switch (output.kind) {
      case "send-to-target": {
        const entry = flowSockets.get(output.flowId);
        if (entry?.socket) {
          if (entry.out.size === 0) batched.push(entry);
          entry.out.add(output.payload);
        } else if (entry && entry.pending.length < MAX_PENDING_PER_FLOW) {
          entry.pending.push(output.payload.slice()); // the payload is a view into the TCP chunk
        } else {
          machine.stats.drops["socket-error"]++;
        }
        return;
      }
      case "open-flow-socket":
        void openFlowSocket(output.flowId);
        return;
      case "close-flow-socket": {
        const entry = flowSockets.get(output.flowId);
        if (!entry) return;
        entry.closed = true;
        if (entry.socket) lingering.add(entry.socket);
        flowSockets.delete(output.flowId);
        return;
      }
      case "accepted":
        failures = 0;
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

  const scheduleRetry = (why: string): void => {
    if (stopping || retryTimer) return;
    const base = Math.min(maxDelay, initialDelay * 2 ** Math.min(failures, 20));
    const delay = Math.round(base * (0.5 + Math.random() * 0.5));
    failures++;
    logger.log(failures > 1 ? "warn" : "info", `${why}; reconnecting in ${(delay / 1000).toFixed(1)} s`);
    retryTimer = setTimeout(() => {
      retryTimer = undefined;
      void dial();
    }, delay);
  };

  const dial = async (): Promise<void> => {
    if (stopping) return;
    let address: string;
    try {
      address = (await resolver.resolve(receiverHost)).address;
    } catch (error) {
      return scheduleRetry(`cannot resolve receiver "${receiverHost}": ${messageOf(error)}`);
    }
    const conn = driver.reserveId();
    const handlers = driver.handlersFor(conn);
    // Bytes that arrive before the machine knows the connection are replayed once it does.
    let early: Uint8Array[] | undefined = [];
    let connection: TcpConnection;
    try {
      connection = await transport.connectTcp({
        host: address,
        port: options.receiver.port,
        timeoutMs: options.connectTimeoutMs ?? 10_000,
        handlers: {
          onData: (data) => (early ? early.push(data.slice()) : handlers.onData(data)),
          onDrain: handlers.onDrain,
          onClose: (error) => {
            handlers.onClose(error);
            if (current === connection) current = undefined;
            scheduleRetry(`connection to receiver ${receiverText} closed${error ? `: ${messageOf(error)}` : ""}`);
          },
        },
      });
    } catch (error) {
      return scheduleRetry(`cannot connect to receiver ${receiverText}: ${messageOf(error)}`);
    }
    if (stopping) return connection.destroy();
    current = connection;
    driver.bind(conn, connection);
    logger.log("info", `connected to receiver ${receiverText}`);
    driver.guard(() => machine.connect(conn, receiverText, now()));
    const replay = early;
    early = undefined;
    for (const data of replay) handlers.onData(data);
  };

  logger.log("info", `sender forwarding to ${targetText} through receiver ${receiverText} (transport: ${transport.name})`);
  void dial();

  let closed: Promise<void> | undefined;
  return {
    machine,
    get flowSockets() {
      return flowSockets.size;
    },
    close() {
      closed ??= (async () => {
        stopping = true;
        if (retryTimer) clearTimeout(retryTimer);
        driver.guard(() => machine.shutdown());
        driver.stop();
        for (const entry of flowSockets.values()) {
          entry.closed = true;
          entry.socket?.close();
        }
        flowSockets.clear();
        lingering.closeAll();
        await waitFor(() => driver.openConnections === 0, 1000);
        driver.destroyAll();
        current = undefined;
      })();
      return closed;
    },
  };
}
