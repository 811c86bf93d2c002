/**
 * The receiver at run time: public UDP ports (one per mapping) whose clients become flows, and the TCP
 * side toward the sender — listening for it (ssh -R, the original's way) or dialing it (ssh -L).
 * Wires a ReceiverMachine to a transport.
 */
import {
  type ClientFlow,
  type Limits,
  MappingIds,
  type ReceiverConfig,
  ReceiverMachine,
  type ReceiverOutput,
} from "@mcudpt/protocol";
import { formatHostPort, formatHostPorts, type HostPort } from "./address.js";
import { bindAddress, withIPv4Fallback } from "./bind.js";
import { systemClock } from "./clock.js";
import { nodeCrypto } from "./crypto.js";
import { type MachineDriver, now } from "./driver.js";
import { bindFailure, messageOf, UserError } from "./errors.js";
import { kernelDropCountersAvailable, readUdpSocketStatsAsync } from "./kernel-drops.js";
import { bufferShortfall, KernelSampler, kernelDropsWarning, sizeText } from "./kernel-sampler.js";
import { type MappingSlot, planMappingChange } from "./receiver-mappings.js";
import type { RoleReload } from "./reload.js";
import { authDescription, mappingsOf, roleTools, type SideOptions, startRole, waitFor } from "./role.js";
import type { UdpSocket } from "./transport.js";
import { UdpBatcher } from "./udp-batch.js";

export type { OperatorQuestion } from "./peer-link.js";
export { bindAddress, waitFor };

/** One public UDP port (or a range) and, optionally, the name that pairs it with the sender's target. */
export interface ReceiverMapping {
  name?: string;
  udp: HostPort;
  /** A port range: this many consecutive public ports from `udp.port` (default 1), each to the target port at the same offset. */
  ports?: number;
  idleTimeoutMs?: number;
  maxFlows?: number;
  /** Send this mapping's datagrams on two lanes (config.redundant does it for every mapping). */
  redundant?: boolean;
}

export interface ReceiverOptions extends SideOptions {
  /** Where UDP clients send (one mapping); host "" means all interfaces. Or give `mappings`. */
  udp?: HostPort;
  /** Several public ports over one connection; their order is the mapping id. */
  mappings?: ReceiverMapping[];
  /** "listen" (ssh -R, the default: the sender dials in at `tcp`) or "dial" (ssh -L: dial the sender at `tcp`). */
  tcpMode?: "listen" | "dial";
  config: ReceiverConfig;
  /**
   * Kernel buffer size requested for each public UDP socket (--udp-buffer; default 2 MiB): what a
   * burst can queue while the process is busy. The kernel caps it at net.core.rmem_max.
   */
  udpBufferBytes?: number;
}

/** What a running receiver takes from a reload (see RoleReload). */
export interface ReceiverReload extends RoleReload {
  /**
   * The --udp mappings as re-read. In key mode with the receiver listening, named one-port mappings
   * may be added, removed or moved (receiver-mappings.ts); otherwise only the same set at the same
   * addresses. `limits.mappings` is in this list's order.
   */
  mappings?: ReceiverMapping[];
  clientLimits?: { newFlowsPerSecond: number; amplificationLimit: number };
}

export interface ReceiverHandle {
  readonly machine: ReceiverMachine;
  /** The first mapping's UDP port. */
  readonly udpPort: number;
  /**
   * Every public UDP port, by mapping id on the wire (a range's ports one after the other); 0 for
   * the ports of a mapping a reload removed.
   */
  readonly udpPorts: number[];
  /** The listening TCP port (0 when dialing). */
  readonly tcpPort: number;
  /** Resolves with the reason when dialing stopped for good; never while listening. */
  readonly fatal: Promise<string>;
  /**
   * Reads the kernel's drop counters of the public sockets now and reports what is new as drops
   * "kernel-queue" (they are also read every few seconds on a timer, on Linux).
   */
  sampleKernelDrops(): Promise<void>;
  /**
   * Applies a reload: the certificate, the trust files, the mappings added (their ports bound first)
   * and removed (their ports closed), the limits. A refused or failed one (UserError: a change only a
   * restart can make, a port in use, a certificate that does not load) changes nothing. Flows of
   * the mappings it does not touch and the connection go on. Returns what was done.
   */
  reload(update: ReceiverReload): Promise<string[]>;
  /** Says goodbye to the sender, closes every port. */
  close(): Promise<void>;
}

/**
 * Kernel buffers of the public UDP sockets: every client shares one, and the default (~208 KiB, about
 * 300 small datagrams counting the kernel's per-datagram overhead) overflows in a burst while the
 * process is busy writing to TCP. A limit, not an allocation; the kernel caps it at rmem_max.
 */
export const CLIENT_SOCKET_BUFFER = 2 * 1024 * 1024;

export async function startReceiver(options: ReceiverOptions): Promise<ReceiverHandle> {
  const { transport, logger, resolver, rateLimited } = roleTools(options);
  const dialing = options.tcpMode === "dial";
  const mappings = mappingsOf(
    options.mappings,
    options.udp && { udp: options.udp },
    "the receiver needs a UDP address (--udp)",
  );
  /** The mappings at their machine positions: a reload adds some, and marks removed ones (ids stay taken). */
  let slots: MappingSlot[] = mappings.map((mapping) => ({ mapping, removed: false }));
  let ids = new MappingIds(mappings.map((mapping) => mapping.ports ?? 1));
  /** The public sockets, by mapping id on the wire: one per port (a range's ports one after the other). */
  const sockets: Array<UdpSocket | undefined> = [];
  let machine!: ReceiverMachine;
  /**
   * Replies to clients produced by one drain go out together, per public port (one sendmmsg on Bun).
   * A port's batcher is made at its first reply, and only the ports a drain used are flushed: a range
   * of thousands of ports costs nothing per drain for the quiet ones.
   */
  const replies: Array<UdpBatcher<ClientFlow> | undefined> = [];
  const replying: number[] = [];
  const bufferBytes = options.udpBufferBytes ?? CLIENT_SOCKET_BUFFER;
  const mappingText = (mappingId: number) => {
    const name = slots[mappingId]?.mapping.name;
    return `the public port of mapping ${name ? `"${name}"` : `#${mappingId + 1}`}`;
  };
  /** The kernel's drops at the public ports, by mapping (every client of a port shares its queue). */
  let driver: MachineDriver<ReceiverMachine> | undefined;
  const sampler = new KernelSampler<number>({
    clock: systemClock,
    read: readUdpSocketStatsAsync,
    report: (mappingId, count) =>
      driver?.guard(() => machine.flows.droppedOutside("kernel-queue", { mappingId }, count)),
    found: (drops) =>
      rateLimited.log(
        "kernel-queue",
        "warn",
        kernelDropsWarning(
          drops,
          mappingText,
          `raise --udp-buffer (now ${sizeText(bufferBytes)}; try ${sizeText(bufferBytes * 2)}) and, if the kernel caps it, ` +
            `net.core.rmem_max (sysctl -w net.core.rmem_max=${bufferBytes * 2})`,
        ),
      ),
  });

  /**
   * Binds the public port(s) of mapping `mappingId`, its datagrams going to the machine as that
   * mapping's: at start and when a reload adds it. Nothing stays bound if one port fails (UserError).
   * Returns the sockets (by port offset) and the address bound, for the log line.
   */
  const bindMapping = async (mappingId: number, mapping: ReceiverMapping) => {
    const guard = driver as MachineDriver<ReceiverMachine>;
    const host = await bindAddress(resolver, mapping.udp.host, "--udp");
    const count = mapping.ports ?? 1;
    const bound: UdpSocket[] = [];
    let boundHost = host;
    for (let portOffset = 0; portOffset < count; portOffset++) {
      const port = mapping.udp.port + portOffset;
      try {
        const socket = await withIPv4Fallback(host, (tryHost) => {
          boundHost = tryHost;
          return transport.bindUdp({
            host: tryHost,
            port,
            bufferBytes,
            onDatagram: (data, address, clientPort) =>
              guard.guard(() => machine.clientDatagram(address, clientPort, data, now(), mappingId, portOffset)),
            onError: (error) => {
              // A send that failed after send() returned true (node:dgram reports EMSGSIZE later).
              guard.guard(() => machine.flows.droppedOutside("socket-error", { mappingId }));
              rateLimited.log("udp-error", "warn", `UDP socket error: ${messageOf(error)}`);
            },
          });
        });
        bound.push(socket);
      } catch (error) {
        for (const socket of bound) socket.close();
        const range = count > 1 ? ` (in the range ${formatHostPorts(host, mapping.udp.port, count)})` : "";
        throw new UserError(`cannot listen on UDP ${formatHostPort(host, port)}${range}: ${bindFailure(error, port)}`);
      }
    }
    // Every port of a range asks for the same buffer: one warning for the mapping.
    const shortfall = bufferShortfall(bound[0], bufferBytes, `UDP ${formatHostPorts(boundHost, bound[0].port, count)}`);
    if (shortfall) logger.log("warn", shortfall);
    const text = `${mapping.name ? `${mapping.name}=` : ""}${formatHostPorts(boundHost, bound[0].port, count)}`;
    return { sockets: bound, text };
  };

  /** Puts the sockets of mapping `mappingId` at their wire ids, and counts their kernel drops. */
  const install = (mappingId: number, bound: readonly UdpSocket[]) => {
    bound.forEach((socket, offset) => {
      sockets[ids.idOf(mappingId, offset)] = socket;
      sampler.watch(socket, mappingId);
    });
  };

  /** Closes the public port(s) of a mapping a reload removed (after the machine closed its flows). */
  const uninstall = (mappingId: number) => {
    for (let offset = 0; offset < (slots[mappingId].mapping.ports ?? 1); offset++) {
      const at = ids.idOf(mappingId, offset);
      const socket = sockets[at];
      if (socket === undefined) continue;
      sampler.unwatch(socket);
      socket.close();
      sockets[at] = undefined;
      replies[at] = undefined;
    }
  };

  const bound: string[] = [];
  const bindPublic = async (roleDriver: MachineDriver<ReceiverMachine>): Promise<void> => {
    driver = roleDriver;
    for (const [mappingId, mapping] of mappings.entries()) {
      const done = await bindMapping(mappingId, mapping);
      install(mappingId, done.sockets);
      bound.push(done.text);
    }
  };

  const sendReplies = (): void => {
    if (replying.length === 0) return; // the common drain: nothing to send
    try {
      for (const at of replying) {
        const batch = replies[at] as UdpBatcher<ClientFlow>;
        const dropped = batch.flush(sockets[at], (flow, size) => machine.flows.sendFailed(flow, size));
        if (dropped === 0) continue;
        const what = dropped === 1 ? "a datagram" : `${dropped} datagrams`;
        rateLimited.log("udp-send", "warn", `could not send ${what} to clients (too large, or socket buffer full)`);
      }
    } finally {
      replying.length = 0;
    }
  };

  const role = await startRole<ReceiverMachine>({
    side: options,
    dialing,
    peerName: "sender",
    flag: "--tcp",
    handshakeTimeoutMs: options.config.handshakeTimeoutMs,
    mappings,
    mappingNames: () => slots.filter(({ removed }) => !removed).map(({ mapping }) => mapping.name ?? ""),
    machine: (base) => (machine = new ReceiverMachine({ ...base, ...options.config }, nodeCrypto)),
    onOutput: (output: Extract<ReceiverOutput, { kind: "send-to-client" }>) => {
      // The payload is a view into the TCP chunk being decoded: sent before this drain returns.
      const flow = output.flow;
      const at = ids.idOf(flow.mappingId, flow.portOffset);
      let batch = replies[at];
      if (batch === undefined) batch = replies[at] = new UdpBatcher<ClientFlow>(false);
      if (batch.size === 0) replying.push(at);
      batch.add(output.payload, flow.port, flow.address, flow);
    },
    onDrained: sendReplies,
    openLocal: bindPublic,
    closeLocal: () => {
      sampler.close();
      for (const socket of sockets) socket?.close();
    },
  });
  if (kernelDropCountersAvailable()) sampler.start();
  else logger.log("debug", "no /proc/net/udp here: datagrams the kernel drops at the public ports are not counted");
  const tcpText = !dialing
    ? `TCP ${formatHostPort(role.link.address, role.link.tcpPort)}`
    : `dialing the sender at ${formatHostPort(options.tcp.host || "127.0.0.1", options.tcp.port)}`;
  const tls = options.tls ? ", TLS" : "";
  logger.log(
    "info",
    `receiver listening: UDP ${bound.join(", ")}, ${tcpText} (transport: ${transport.name}, auth: ${authDescription(options, options.tcpMode === "dial", "sender")}${tls})`,
  );
  // Senders that serve only some mappings (§18) are what lets the mapping list change while running.
  const mappingsFixed =
    options.config.secret || dialing
      ? `only a receiver that listens in key mode can change them while running (its senders may serve some of its mappings, PROTOCOL.md §18)`
      : undefined;
  return {
    machine,
    get udpPort() {
      return sockets[0]?.port ?? 0;
    },
    get udpPorts() {
      return Array.from({ length: ids.total }, (_, at) => sockets[at]?.port ?? 0);
    },
    tcpPort: role.link.tcpPort,
    fatal: role.link.fatal,
    sampleKernelDrops: () => sampler.sample(),
    async reload(update) {
      const plan = update.mappings ? planMappingChange(slots, update.mappings, mappingsFixed) : undefined;
      // Bound before anything changes: a port in use fails the reload with all as it was.
      const fresh: Array<{ mappingId: number; sockets: UdpSocket[]; text: string }> = [];
      try {
        for (const { mappingId, mapping } of plan?.add ?? [])
          fresh.push({ mappingId, ...(await bindMapping(mappingId, mapping)) });
      } catch (error) {
        for (const socket of fresh.flatMap((done) => done.sockets)) socket.close();
        throw error;
      }
      let applied = false;
      const applyMappings = (): string[] => {
        applied = true;
        if (!plan || (plan.remove.length === 0 && plan.add.length === 0)) return [];
        const given: number[] = [];
        role.driver.guard(() => {
          for (const mappingId of plan.remove) machine.removeMapping(mappingId, now());
          for (const { mapping } of plan.add) {
            const { name, idleTimeoutMs, maxFlows, redundant } = mapping;
            given.push(machine.addMapping({ name, idleTimeoutMs, maxFlows, redundant }, now()));
          }
        });
        // The plan numbers added mappings as the machine does (ids follow names): a bug if not.
        if (plan.add.some(({ mappingId }, i) => given[i] !== mappingId))
          throw new Error(`the machine numbered the added mappings ${given.join(", ")}, the plan otherwise`);
        for (const mappingId of plan.remove) uninstall(mappingId);
        slots = plan.slots;
        ids = new MappingIds(slots.map(({ mapping }) => mapping.ports ?? 1));
        for (const done of fresh) install(done.mappingId, done.sockets);
        const bindings = fresh.map((done) => done.text);
        return [...plan.lines, ...(bindings.length > 0 ? [`listening on UDP ${bindings.join(", ")}`] : [])];
      };
      const limits =
        update.limits && update.mappings && plan && limitsByPosition(update.limits, update.mappings, plan.slots);
      let done: string[];
      try {
        done = await role.reload({ ...update, limits: limits ?? update.limits }, applyMappings);
      } catch (error) {
        if (!applied) for (const socket of fresh.flatMap((added) => added.sockets)) socket.close();
        throw error;
      }
      const clientLimits = update.clientLimits;
      if (clientLimits) role.driver.guard(() => machine.updateClientLimits(clientLimits));
      return done;
    },
    close: () => role.close(),
  };
}

/**
 * A reload's limits are per mapping in the order of its --udp list; the machine takes them by
 * position, removed mappings included (they keep the limits they had).
 */
function limitsByPosition(limits: Limits, listed: readonly ReceiverMapping[], slots: readonly MappingSlot[]): Limits {
  return {
    ...limits,
    mappings: slots.map(({ mapping, removed }, position) => {
      const index = mapping.name ? listed.findIndex((next) => next.name === mapping.name) : position;
      if (removed || index < 0) return { idleTimeoutMs: mapping.idleTimeoutMs, maxFlows: mapping.maxFlows };
      return limits.mappings[index] ?? {};
    }),
  };
}
