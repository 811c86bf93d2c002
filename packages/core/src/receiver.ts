/**
 * The receiver at run time: public UDP ports (one per mapping) whose clients become flows, and the TCP
 * side toward the sender — listening for it (ssh -R, the original's way) or dialing it (ssh -L).
 * Wires a ReceiverMachine to a transport.
 */
import {
  type ClientFlow,
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
import { diffMappings, type MappingKey, refuseMappingSetChange, type RoleReload } from "./reload.js";
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
  /** The --udp mappings as re-read: only the same set at the same addresses (others need a restart). */
  mappings?: ReceiverMapping[];
  clientLimits?: { newFlowsPerSecond: number; amplificationLimit: number };
}

export interface ReceiverHandle {
  readonly machine: ReceiverMachine;
  /** The first mapping's UDP port. */
  readonly udpPort: number;
  /** Every public UDP port, by mapping id on the wire (a range's ports one after the other). */
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
   * Applies a reload: refused (UserError, nothing changed) when it adds, removes or moves a public
   * port; else the certificate, the trust files, the limits. Flows and the connection go on. Returns
   * what was done.
   */
  reload(update: ReceiverReload): Promise<string[]>;
  /** Says goodbye to the sender, closes every port. */
  close(): Promise<void>;
}

/** A receiver mapping as a reload compares it: its name and its configured public address (a range with its last port). */
const publicPortKey = ({ name, udp, ports }: ReceiverMapping): MappingKey => ({
  name,
  where: formatHostPorts(udp.host, udp.port, ports),
});

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
  const ids = new MappingIds(mappings.map((mapping) => mapping.ports ?? 1));
  /** The public sockets, by mapping id on the wire: one per port (a range's ports one after the other). */
  const sockets: UdpSocket[] = [];
  const bound: string[] = [];
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
    const name = mappings[mappingId]?.name;
    return `the public port of mapping ${name ? `"${name}"` : `#${mappingId + 1}`}`;
  };
  /** The kernel's drops at the public ports, by mapping (every client of a port shares its queue). */
  let sampleDriver: MachineDriver<ReceiverMachine> | undefined;
  const sampler = new KernelSampler<number>({
    clock: systemClock,
    read: readUdpSocketStatsAsync,
    report: (mappingId, count) =>
      sampleDriver?.guard(() => machine.flows.droppedOutside("kernel-queue", { mappingId }, count)),
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

  const bindPublic = async (driver: MachineDriver<ReceiverMachine>): Promise<void> => {
    sampleDriver = driver;
    for (const [mappingId, mapping] of mappings.entries()) {
      const host = await bindAddress(resolver, mapping.udp.host, "--udp");
      const count = mapping.ports ?? 1;
      let boundHost = host;
      let firstPort = mapping.udp.port;
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
                driver.guard(() => machine.clientDatagram(address, clientPort, data, now(), mappingId, portOffset)),
              onError: (error) => {
                // A send that failed after send() returned true (node:dgram reports EMSGSIZE later).
                driver.guard(() => machine.flows.droppedOutside("socket-error", { mappingId }));
                rateLimited.log("udp-error", "warn", `UDP socket error: ${messageOf(error)}`);
              },
            });
          });
          sockets.push(socket);
          sampler.watch(socket, mappingId);
          if (portOffset > 0) continue;
          firstPort = socket.port;
          // Every port of a range asks for the same buffer: one warning for the mapping.
          const shortfall = bufferShortfall(
            socket,
            bufferBytes,
            `UDP ${formatHostPorts(boundHost, socket.port, count)}`,
          );
          if (shortfall) logger.log("warn", shortfall);
        } catch (error) {
          const range = count > 1 ? ` (in the range ${formatHostPorts(host, mapping.udp.port, count)})` : "";
          throw new UserError(
            `cannot listen on UDP ${formatHostPort(host, port)}${range}: ${bindFailure(error, port)}`,
          );
        }
      }
      bound.push(`${mapping.name ? `${mapping.name}=` : ""}${formatHostPorts(boundHost, firstPort, count)}`);
    }
  };

  const sendReplies = (): void => {
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
      for (const socket of sockets) socket.close();
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
  return {
    machine,
    udpPort: sockets[0].port,
    udpPorts: sockets.map((socket) => socket.port),
    tcpPort: role.link.tcpPort,
    fatal: role.link.fatal,
    sampleKernelDrops: () => sampler.sample(),
    async reload(update) {
      if (update.mappings) {
        const before = mappings.map(publicPortKey);
        refuseMappingSetChange(
          before,
          diffMappings(before, update.mappings.map(publicPortKey)),
          "moving a public port (--udp)",
        );
      }
      const done = await role.reload(update);
      const clientLimits = update.clientLimits;
      if (clientLimits) role.driver.guard(() => machine.updateClientLimits(clientLimits));
      return done;
    },
    close: () => role.close(),
  };
}
