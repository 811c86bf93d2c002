/**
 * The sender at run time: dials the receiver (and keeps dialing, with capped exponential backoff and
 * jitter), and gives every flow its own UDP socket connected to the target, so the target's replies
 * map back to the flow and the target sees one stable source port per client.
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
import { messageOf } from "./errors.js";
import { fingerprint } from "./keys.js";
import { type Logger, RateLimitedLog } from "./logger.js";
import { waitFor } from "./receiver.js";
import { Resolver } from "./resolve.js";
import { type SenderTlsOptions, SenderTlsPolicy } from "./tls-peer.js";
import type { TcpConnection, Transport, UdpSocket } from "./transport.js";
import type { ReceiverPins } from "./trust.js";

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
  /** Key mode: the receiver keys this sender trusts (pinned, or remembered on first use). */
  pins?: ReceiverPins;
  /** Speak TLS to the receiver and check its certificate (see SenderTlsOptions). */
  tls?: SenderTlsOptions;
  /** Prepend a PROXY protocol v2 header (client → target) to every datagram sent to the target. */
  proxyProtocol?: boolean;
}

export interface SenderHandle {
  readonly machine: SenderMachine;
  /** Open flow sockets (for tests and status). */
  readonly flowSockets: number;
  /** Resolves with the reason when the sender gave up for good (a refused certificate); else never. */
  readonly fatal: Promise<string>;
  /** TCP connections to the receiver made after the first one (for metrics). */
  readonly reconnects: number;
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
  pending: Uint8Array[];
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
  /** Set when the receiver's key was refused: the next retry gives up instead. */
  let keyRefused: string | undefined;
  const checkReceiverKey = (publicKey: Uint8Array, peer: string): string | undefined => {
    if (!options.pins) return undefined;
    let verdict: ReturnType<ReceiverPins["check"]>;
    try {
      verdict = options.pins.check(peer, publicKey);
    } catch (error) {
      keyRefused = messageOf(error);
      return keyRefused;
    }
    if (verdict.verdict === "changed") {
      keyRefused = verdict.reason;
      return verdict.reason;
    }
    if (verdict.verdict === "added")
      logger.log("info", `receiver ${peer} key ${fingerprint(publicKey)} is new: remembered in ${verdict.path}`);
    return undefined;
  };
  const machine = new SenderMachine({ checkReceiverKey, ...options.config }, nodeCrypto);
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
  let connections = 0;
  let stopping = false;
  let retryTimer: ReturnType<typeof setTimeout> | undefined;
  let current: TcpConnection | undefined;
  const tls = options.tls && new SenderTlsPolicy(options.tls, receiverHost);
  let giveUp!: (why: string) => void;
  const fatal = new Promise<string>((resolve) => {
    giveUp = (why) => {
      stopping = true; // no more reconnects: the next one would meet the same certificate or key
      logger.log("error", why);
      resolve(why);
    };
  });

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

  /** One allocation per datagram at most (the header copy); too large with the header: dropped. */
  const sendToTarget = (socket: UdpSocket, header: Uint8Array | undefined, payload: Uint8Array): void => {
    const data = header ? withProxyHeader(header, payload) : payload;
    if (data === undefined) machine.stats.drops["too-large"]++;
    else if (!socket.send(data)) machine.stats.drops["socket-error"]++;
  };

  const openFlowSocket = async (flowId: number, client: WireAddress): Promise<void> => {
    const entry: FlowSocket = { socket: undefined, pending: [], closed: false };
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
        return failFlow(
          flowId,
          entry,
          FlowCloseReason.SocketError,
          `cannot open a UDP socket toward ${targetText}`,
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
        socket = await bindFlowSocket(flowId, entry, resolved.address, resolved.family);
      } catch (retryError) {
        return failFlow(
          flowId,
          entry,
          FlowCloseReason.SocketError,
          `cannot open a UDP socket toward ${targetText}`,
          retryError,
        );
      }
    }
    if (entry.closed) return lingering.add(socket);
    entry.socket = socket;
    // Source: the receiver's client; destination: the target address this socket is connected to.
    if (options.proxyProtocol)
      entry.header = proxyV2Header(client, { address: resolved.address, port: options.target.port });
    for (const payload of entry.pending) sendToTarget(socket, entry.header, payload);
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
        if (entry?.socket) sendToTarget(entry.socket, entry.header, output.payload);
        else if (entry && entry.pending.length < MAX_PENDING_PER_FLOW) {
          entry.pending.push(output.payload.slice()); // the payload is a view into the TCP chunk
        } else {
          machine.stats.drops["socket-error"]++;
        }
        return;
      }
      case "open-flow-socket":
        void openFlowSocket(output.flowId, output.client);
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
  const driver = new MachineDriver(machine, logger, onOutput);

  const scheduleRetry = (why: string): void => {
    if (stopping || retryTimer) return;
    if (keyRefused) return giveUp(keyRefused);
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
        tls: tls?.connectOptions,
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
      const refused = tls?.refusal(error, receiverText);
      if (refused) return giveUp(refused);
      return scheduleRetry(`cannot connect to receiver ${receiverText}: ${messageOf(error)}`);
    }
    const refused = tls && (await tls.check(connection, receiverText));
    if (refused) giveUp(refused);
    if (stopping) return connection.destroy();
    current = connection;
    connections++;
    driver.bind(conn, connection);
    logger.log("info", `connected to receiver ${receiverText}`);
    driver.guard(() => machine.connect(conn, receiverText, now()));
    const replay = early;
    early = undefined;
    for (const data of replay) handlers.onData(data);
  };

  logger.log(
    "info",
    `sender forwarding to ${targetText} through receiver ${receiverText} (transport: ${transport.name})`,
  );
  void dial();

  let closed: Promise<void> | undefined;
  return {
    machine,
    fatal,
    get flowSockets() {
      return flowSockets.size;
    },
    get reconnects() {
      return Math.max(0, connections - 1);
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
