/**
 * The sender at run time: gives every flow its own UDP socket connected to the target of the flow's
 * mapping (see FlowSockets). Its TCP side dials the receiver (ssh -R, the default; it keeps dialing,
 * with capped exponential backoff and jitter) or listens for it (ssh -L).
 */
import { DEFAULTS, type Limits, type SenderConfig, SenderMachine, type SenderOutput } from "@mcudpt/protocol";
import { formatHostPort, formatHostPorts, type HostPort } from "./address.js";
import { systemClock } from "./clock.js";
import { nodeCrypto } from "./crypto.js";
import { type MachineDriver, now } from "./driver.js";
import { messageOf, UserError } from "./errors.js";
import { type DropSite, FlowSockets, type Target } from "./flow-sockets.js";
import { kernelDropCountersAvailable, readUdpSocketStatsAsync } from "./kernel-drops.js";
import { KernelSampler, kernelDropsWarning, sizeText } from "./kernel-sampler.js";
import { diffMappings, type MappingKey, refuseMappingSetChange, type RoleReload } from "./reload.js";
import { authDescription, mappingsOf, roleTools, type SideOptions, startRole } from "./role.js";

/** One target and, optionally, the name that pairs it with the receiver's public port. */
export interface SenderMapping {
  name?: string;
  target: HostPort;
  /** A port range: this many consecutive target ports from `target.port` (default 1); the receiver's range must be as long. */
  ports?: number;
  idleTimeoutMs?: number;
  maxFlows?: number;
  /** Send this mapping's datagrams on two lanes (config.redundant does it for every mapping). */
  redundant?: boolean;
}

export interface SenderOptions extends SideOptions {
  /** The UDP service the flows are forwarded to (one mapping); host "" means this machine. Or `mappings`. */
  target?: HostPort;
  /** Several targets over one connection, paired with the receiver's mappings by name or order. */
  mappings?: SenderMapping[];
  /** "dial" (ssh -R, the default: dial the receiver at `tcp`) or "listen" (ssh -L: the receiver dials in at `tcp`). */
  tcpMode?: "dial" | "listen";
  config: SenderConfig;
  /** Prepend a PROXY protocol v2 header (client → target) to every datagram sent to the target. */
  proxyProtocol?: boolean;
  /**
   * Kernel buffer size requested for each flow's UDP socket (--udp-buffer; default 256 KiB), for
   * bursts from the target. Capped so that (max-flows × mappings) × size stays within FLOW_BUFFERS_TOTAL.
   */
  udpBufferBytes?: number;
}

/** What a running sender takes from a reload (see RoleReload). */
export interface SenderReload extends RoleReload {
  /**
   * The --udp mappings as re-read: the same set (the receiver paired it at the handshake, from this
   * side's HELLO: another set needs a restart), each perhaps with another target. New flows of a mapping go to its new target; its open flows keep their socket to the old
   * one until they end (idle, evicted, closed), so a conversation in progress is not cut in two.
   */
  mappings?: SenderMapping[];
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
  /** The kernel buffer each flow socket asks for (undefined: the system default). */
  readonly udpBufferBytes: number | undefined;
  /**
   * Reads the kernel's drop counters of the flow sockets now and reports what is new as drops
   * "kernel-queue" (they are also read every few seconds on a timer, on Linux).
   */
  sampleKernelDrops(): Promise<void>;
  /** Applies a reload (see SenderReload); UserError, nothing changed, for a mapping added or removed. */
  reload(update: SenderReload): Promise<string[]>;
  close(): Promise<void>;
}

/**
 * A raised --max-flows whose flow sockets, each with the buffer chosen at start, could hold more than
 * FLOW_BUFFERS_TOTAL in kernel buffers: refused (the buffer size is fixed for the process's life).
 */
function refuseOverBuffered(limits: Limits, bufferBytes: number | undefined): void {
  const flows = limits.mappings.reduce((total, mapping) => total + (mapping.maxFlows ?? limits.maxFlows), 0);
  if (bufferBytes === undefined || flows * bufferBytes <= FLOW_BUFFERS_TOTAL) return;
  throw new UserError(
    `--max-flows ${limits.maxFlows}: ${flows} flow sockets of ${sizeText(bufferBytes)} (--udp-buffer, set at start) would hold over ${sizeText(FLOW_BUFFERS_TOTAL)} of kernel buffers; raising it that far needs a restart`,
  );
}

/** A sender target as configured ("" is this machine), and as a reload compares it. */
function targetOf({ target }: SenderMapping): Target {
  const host = target.host === "" ? "127.0.0.1" : target.host;
  return { host, port: target.port, text: formatHostPort(host, target.port) };
}

/** At least this many closed flow sockets may linger (and at least --max-flows); on EMFILE they go first. */
const MIN_LINGERING = 1024;

/** What each flow socket asks the kernel for by default: a burst of ~200 small datagrams, or 4 of 64 KiB. */
export const FLOW_SOCKET_BUFFER = 256 * 1024;
/** max-flows × the flow sockets' buffer stays within this (a limit, not an allocation: it is what full queues could hold). */
export const FLOW_BUFFERS_TOTAL = 1024 * 1024 * 1024;
/** Capped below this, a flow socket keeps the system default instead (usually 208 KiB). */
export const MIN_FLOW_SOCKET_BUFFER = 128 * 1024;

/**
 * The buffer each flow socket asks for: `requested` (default FLOW_SOCKET_BUFFER), capped at
 * FLOW_BUFFERS_TOTAL / maxFlows (the flows of every mapping together); undefined (the system
 * default) when that cap is below MIN_FLOW_SOCKET_BUFFER.
 */
export function flowSocketBuffer(
  requested: number | undefined,
  maxFlows: number,
): { bytes: number | undefined; capped: boolean } {
  const want = requested ?? FLOW_SOCKET_BUFFER;
  const cap = Math.floor(FLOW_BUFFERS_TOTAL / Math.max(1, maxFlows));
  if (want <= cap) return { bytes: want, capped: false };
  return { bytes: cap >= MIN_FLOW_SOCKET_BUFFER ? cap : undefined, capped: true };
}

export async function startSender(options: SenderOptions): Promise<SenderHandle> {
  const { transport, logger, resolver, rateLimited } = roleTools(options);
  const listening = options.tcpMode === "listen";
  const mappings = mappingsOf(
    options.mappings,
    options.target && { target: options.target },
    "the sender needs a target UDP address (--udp)",
  );
  // Replaced in place by a reload: FlowSockets reads a mapping's target when it opens a flow's socket.
  const targets: Target[] = mappings.map(targetOf);
  let configured = mappings;
  // A range's size is part of what a reload compares: the receiver paired it at the handshake.
  const keyOf = (mapping: SenderMapping, index: number): MappingKey & { index: number; ports: number } => ({
    name: mapping.name,
    where: formatHostPorts(targetOf(mapping).host, mapping.target.port, mapping.ports),
    index,
    ports: mapping.ports ?? 1,
  });
  let machine!: SenderMachine;
  let driver!: MachineDriver<SenderMachine>;
  // --max-flows bounds each mapping's flows: all of them together may hold a socket each.
  const maxFlows = mappings.reduce(
    (total, mapping) => total + (mapping.maxFlows ?? options.config.maxFlows ?? DEFAULTS.maxFlows),
    0,
  );
  const buffer = flowSocketBuffer(options.udpBufferBytes, maxFlows);
  if (buffer.capped) {
    const asked = sizeText(options.udpBufferBytes ?? FLOW_SOCKET_BUFFER);
    const got = buffer.bytes === undefined ? "keep the system default" : `ask for ${sizeText(buffer.bytes)}`;
    logger.log(
      options.udpBufferBytes === undefined ? "debug" : "warn",
      `--udp-buffer ${asked} × ${maxFlows} flows at most (--max-flows × mappings) is over ${sizeText(FLOW_BUFFERS_TOTAL)} of kernel buffers: flow sockets ${got}`,
    );
  }
  const mappingLabel = (mappingId: number) => {
    const name = mappings[mappingId]?.name;
    return name ? `"${name}"` : `#${mappingId + 1}`;
  };
  const sampler = new KernelSampler<DropSite>({
    clock: systemClock,
    read: readUdpSocketStatsAsync,
    report: (site, count) => driver?.guard(() => machine.flows.droppedOutside("kernel-queue", site, count)),
    found: (drops) =>
      rateLimited.log(
        "kernel-queue",
        "warn",
        kernelDropsWarning(
          drops,
          (site) =>
            site.flowId === undefined
              ? `a closed flow's socket, mapping ${mappingLabel(site.mappingId)}`
              : `flow ${site.flowId}'s socket toward ${targets[site.mappingId]?.text ?? "its target"}`,
          buffer.bytes === undefined
            ? `flow sockets keep the system default buffer (net.core.rmem_default): lower --max-flows so that --udp-buffer fits in ${sizeText(FLOW_BUFFERS_TOTAL)}, or raise net.core.rmem_default`
            : `raise --udp-buffer (now ${sizeText(buffer.bytes)} per flow socket, at most ${sizeText(FLOW_BUFFERS_TOTAL)} / --max-flows) and, if the kernel caps it, ` +
                `net.core.rmem_max (sysctl -w net.core.rmem_max=${buffer.bytes * 2})`,
        ),
      ),
  });
  const sockets = new FlowSockets({
    transport,
    resolve: (host) => resolver.resolve(host),
    targets,
    proxyProtocol: options.proxyProtocol,
    maxLingering: Math.max(MIN_LINGERING, options.config.maxFlows ?? DEFAULTS.maxFlows),
    clock: systemClock,
    bufferBytes: buffer.bytes,
    sampler,
    events: {
      datagram: (flowId, data) => driver.guard(() => machine.targetDatagram(flowId, data, now())),
      socketError: (flowId, error, target) => {
        // ICMP port unreachable and friends: the target may come back; keep the flow.
        driver.guard(() => machine.flowSocketError(flowId, false));
        rateLimited.log("target-error", "warn", `target ${target.text}: ${messageOf(error)}`);
      },
      failed: (flowId, reason, what, error) => {
        rateLimited.log(`flow-open-${reason}`, "warn", `${what}: ${messageOf(error)}`);
        driver.guard(() => machine.flowSocketError(flowId, true, reason));
      },
      evictForSockets: (flowId) => {
        let evicted = false;
        driver.guard(() => {
          evicted = machine.evictForSockets(now(), flowId);
        });
        return evicted;
      },
      unsent: (flow, size, reason) => machine.flows.sendFailed(flow, size, reason),
      warn: (key, message) => rateLimited.log(key, "warn", message),
    },
  });

  const targetList = mappings
    .map(
      (mapping, i) =>
        `${mapping.name ? `${mapping.name}=` : ""}${formatHostPorts(targets[i].host, targets[i].port, mapping.ports)}`,
    )
    .join(", ");
  const auth = `auth: ${authDescription(options, options.tcpMode !== "listen", "receiver")}${options.tls ? ", TLS" : ""}`;
  if (!listening) {
    const remote = formatHostPort(options.tcp.host || "127.0.0.1", options.tcp.port);
    logger.log(
      "info",
      `sender forwarding to ${targetList} through receiver ${remote} (transport: ${transport.name}, ${auth})`,
    );
  }
  const role = await startRole<SenderMachine>({
    side: options,
    dialing: !listening,
    peerName: "receiver",
    flag: "--listen",
    handshakeTimeoutMs: options.config.handshakeTimeoutMs,
    mappings,
    machine: (base) => (machine = new SenderMachine({ ...base, ...options.config }, nodeCrypto)),
    onOutput: (output: Exclude<SenderOutput, { kind: "transmit" | "log" } | { conn: number }>) => {
      if (output.kind === "send-to-target") sockets.send(output.flowId, output.payload);
      else if (output.kind === "open-flow-socket")
        sockets.open(output.flowId, output.mappingId, output.client, output.portOffset);
      else sockets.close(output.flowId);
    },
    onDrained: () => sockets.flush(),
    closeLocal: () => {
      sampler.close();
      sockets.closeAll();
    },
  });
  driver = role.driver;
  if (kernelDropCountersAvailable()) sampler.start();
  else logger.log("debug", "no /proc/net/udp here: datagrams the kernel drops at flow sockets are not counted");
  if (listening) {
    const address = formatHostPort(role.link.address, role.link.tcpPort);
    logger.log(
      "info",
      `sender forwarding to ${targetList}, listening for the receiver on TCP ${address} (transport: ${transport.name}, ${auth})`,
    );
  }
  return {
    machine,
    fatal: role.link.fatal,
    tcpPort: role.link.tcpPort,
    get flowSockets() {
      return sockets.size;
    },
    get reconnects() {
      return role.link.reconnects;
    },
    udpBufferBytes: buffer.bytes,
    sampleKernelDrops: () => sampler.sample(),
    async reload(update) {
      const next = update.mappings;
      const before = configured.map(keyOf);
      const diff = next ? diffMappings(before, next.map(keyOf)) : undefined;
      // The receiver paired this list at the handshake (HELLO); only a new connection could change it.
      if (diff)
        refuseMappingSetChange(before, diff, undefined, "the sender's mappings went to the receiver in its HELLO");
      const resized = diff?.changed.filter((change) => change.before.ports !== change.after.ports) ?? [];
      if (resized.length > 0) {
        const sizes = resized.map(
          ({ before: old, after }) => `mapping ${mappingLabel(old.index)} ${old.ports} → ${after.ports} ports`,
        );
        throw new UserError(
          `resizing a port range needs a restart, on both sides (${sizes.join(", ")}): the receiver's range has as many ports as this one had`,
        );
      }
      if (update.limits) refuseOverBuffered(update.limits, buffer.bytes);
      const done = await role.reload(update);
      for (const { before: old, after } of diff?.changed ?? []) {
        const mappingId = old.index;
        targets[mappingId] = targetOf((next as SenderMapping[])[after.index]);
        let open = 0;
        for (const flow of machine.flows.values()) if (flow.mappingId === mappingId) open++;
        const stay =
          open === 0
            ? ""
            : ` (its ${open === 1 ? "1 open flow stays" : `${open} open flows stay`} with ${old.where} until ${open === 1 ? "it ends" : "they end"})`;
        done.push(`mapping ${mappingLabel(mappingId)}: new flows go to ${after.where}${stay}`);
      }
      if (next && diff)
        configured = configured.map((mapping, i) => {
          const moved = diff.changed.find((change) => change.before.index === i);
          return moved ? next[moved.after.index] : mapping;
        });
      return done;
    },
    close: () => role.close(),
  };
}
