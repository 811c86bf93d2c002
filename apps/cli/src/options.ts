/**
 * Flag definitions shared by the commands, and their conversion into validated run options.
 * Every bad value becomes a UserError naming the flag and the value: one line, no stack.
 */
import { readFileSync } from "node:fs";
import {
  fileFailure,
  formatHostPorts,
  type HostPort,
  isKeyFileExposed,
  parseHostPort,
  parseHostPortRange,
  UserError,
} from "@mcudpt/core";
import {
  DEFAULTS,
  type LogLevel,
  MAX_DATAGRAM,
  MAX_MAPPING_NAME,
  MAX_MAPPING_PORTS,
  MAX_MAPPINGS,
} from "@mcudpt/protocol";
import type { ArgsDef } from "citty";
import type { TransportChoice } from "./runtime.js";

/** The original mcudpt's default for both -udp and -tcp. */
export const ORIGINAL_DEFAULT_ADDRESS = ":1937";

export const commonArgs = {
  secret: {
    type: "string",
    description: "Shared secret proven by HMAC challenge-response, instead of keys (default: $MCUDPT_SECRET)",
    valueHint: "S",
  },
  "secret-file": {
    type: "string",
    description:
      "Read the shared secret from a file (its first non-blank line), keeping it out of `ps`; warns unless only its owner can read it",
    valueHint: "FILE",
  },
  "idle-timeout": {
    type: "string",
    description: `Close a flow after this many seconds without traffic either way (default ${DEFAULTS.idleTimeoutMs / 1000})`,
    valueHint: "SECONDS",
  },
  "max-flows": {
    type: "string",
    description: `Most concurrent flows per --udp mapping (not in total); past it that mapping's least recently active flow is evicted (default ${DEFAULTS.maxFlows})`,
    valueHint: "N",
  },
  keepalive: {
    type: "string",
    description: `Ping interval; a peer silent for 3 intervals is dead (default ${DEFAULTS.keepaliveMs / 1000})`,
    valueHint: "SECONDS",
  },
  "handshake-timeout": {
    type: "string",
    description: `Deadline for a connection to complete the handshake (default ${DEFAULTS.handshakeTimeoutMs / 1000})`,
    valueHint: "SECONDS",
  },
  "max-buffer": {
    type: "string",
    description: "Bytes held for a slow TCP connection before datagrams are dropped, e.g. 4m, 512k (default 4m)",
    valueHint: "BYTES",
  },
  nudge: {
    type: "string",
    description: `Tail-loss nudge: a 5-byte frame ${DEFAULTS.nudgeMs} ms after the last datagram of a burst, so a lost last TCP segment is repaired at once instead of after TCP's 200 ms timeout; "off" for links billed per packet, or a delay like 2ms (default on)`,
    valueHint: "on|off|MS",
  },
  lanes: {
    type: "string",
    description: `Dialing side: keep N TCP connections (lanes) to the peer in one session; flows are spread over them, and a lane that dies moves its flows to the others (default ${DEFAULTS.lanes})`,
    valueHint: "N",
  },
  "max-lanes": {
    type: "string",
    description: `Listening side: most lanes one session may hold (default ${DEFAULTS.maxLanes}; 1 takes no lanes)`,
    valueHint: "N",
  },
  redundant: {
    type: "boolean",
    description:
      "Send every datagram on two lanes (needs --lanes 2 or more on the dialing side); the first copy to arrive wins, duplicates are dropped. Given on the dialing side, the peer answers the same way",
  },
  "redundant-mappings": {
    type: "string",
    description:
      "Send only these mappings' datagrams on two lanes, e.g. game,voip (names, or #1, #2… by position; needs --lanes 2 or more on the dialing side). The peer answers those flows the same way",
    valueHint: "NAMES",
  },
  "redundant-max-bytes": {
    type: "string",
    description:
      "With --redundant or --redundant-mappings: send twice only datagrams up to this size (game and voice packets, not bulk transfers), e.g. 512 (default: every size)",
    valueHint: "BYTES",
  },
  "max-delay": {
    type: "string",
    description:
      "Drop a datagram that waited longer than this in a send queue (the TCP side backed up) instead of delivering it late, e.g. 250ms (default off)",
    valueHint: "DURATION",
  },
  transport: {
    type: "enum",
    options: ["auto", "bun", "node"],
    default: "auto",
    description: "Socket implementation: auto picks Bun's when running on Bun, Node's otherwise",
  },
  verbose: {
    type: "boolean",
    alias: "v",
    description:
      "Debug lines too: the runtime, each incoming TCP connection, every flow opened and closed (with the reason)",
  },
  quiet: { type: "boolean", alias: "q", description: "Log only warnings and errors" },
} satisfies ArgsDef;

export interface CommonOptions {
  secret: string | undefined;
  idleTimeoutMs: number;
  maxFlows: number;
  keepaliveMs: number;
  handshakeTimeoutMs: number;
  maxBufferBytes: number;
  nudgeMs: number;
  redundant: boolean;
  /** Send twice only datagrams up to this many bytes (undefined: every size). */
  redundantMaxBytes: number | undefined;
  maxDelayMs: number;
  transport: TransportChoice;
  logLevel: LogLevel;
  /** Said once at start-up, through the logger (a --secret-file others can read). */
  warnings: string[];
}

export type RawArgs = Record<string, unknown>;

export function stringArg(args: RawArgs, name: string): string | undefined {
  const value = args[name];
  if (value === undefined) return undefined;
  if (Array.isArray(value)) throw new UserError(`--${name} given more than once`);
  if (typeof value !== "string" || value === "") throw new UserError(`--${name} needs a value`);
  return value;
}

export function seconds(args: RawArgs, name: string, fallbackMs: number, minSeconds = 0.001): number {
  const text = stringArg(args, name);
  if (text === undefined) return fallbackMs;
  const value = Number(text);
  if (!/^\d+(\.\d+)?$/.test(text.trim()) || !(value > 0)) {
    throw new UserError(`--${name}: "${text}" is not a positive number of seconds (write it plainly, like 30 or 0.5)`);
  }
  if (value > 86_400 * 365) throw new UserError(`--${name}: ${text} s is more than a year`);
  if (value < minSeconds) throw new UserError(`--${name}: ${text} s is too short (at least ${minSeconds} s)`);
  return value * 1000;
}

export function count(args: RawArgs, name: string, fallback: number, max = 10_000_000): number {
  const text = stringArg(args, name);
  if (text === undefined) return fallback;
  if (!/^\d+$/.test(text.trim()) || Number(text) < 1 || Number(text) > max) {
    throw new UserError(`--${name}: "${text}" is not a whole number from 1 to ${max}`);
  }
  return Number(text);
}

/** A whole number from 0 (meaning "off") to `max`. */
export function limit(args: RawArgs, name: string, fallback: number, max = 1_000_000): number {
  const text = stringArg(args, name);
  if (text === undefined) return fallback;
  if (!/^\d+$/.test(text.trim()) || Number(text) > max) {
    throw new UserError(`--${name}: "${text}" is not a whole number from 0 (off) to ${max}`);
  }
  return Number(text);
}

export function byteSize(args: RawArgs, name: string, fallback: number): number {
  const text = stringArg(args, name);
  if (text === undefined) return fallback;
  const match = /^(\d+)\s*([kmg]?)i?b?$/i.exec(text.trim());
  if (!match) throw new UserError(`--${name}: "${text}" is not a size (e.g. 65536, 512k, 4m)`);
  const unit = { "": 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 }[match[2].toLowerCase() as "" | "k" | "m" | "g"];
  const value = Number(match[1]) * unit;
  if (value < 65_536 + 9)
    throw new UserError(`--${name}: ${text} is too small; it must hold at least one full datagram (64k)`);
  if (value > 1024 ** 3) throw new UserError(`--${name}: ${text} is more than 1g`);
  return value;
}

export function address(args: RawArgs, name: "udp" | "tcp"): HostPort {
  return parseHostPort(stringArg(args, name) ?? ORIGINAL_DEFAULT_ADDRESS, `--${name}`);
}

export function optionalAddress(args: RawArgs, name: string): HostPort | undefined {
  const text = stringArg(args, name);
  return text === undefined ? undefined : parseHostPort(text, `--${name}`);
}

/** Flags that may be given more than once (each --udp is one mapping). */
export const REPEATABLE = new Set(["udp", "ws-header"]);

/** Every value of a repeatable flag, in order (citty keeps only the last). */
export function repeated(rawArgs: readonly string[], name: string): string[] {
  const values: string[] = [];
  for (let i = 0; i < rawArgs.length; i++) {
    const arg = rawArgs[i];
    if (arg === `--${name}`) {
      const value = rawArgs[i + 1];
      if (value === undefined || value === "") throw new UserError(`--${name} needs a value`);
      values.push(value);
      i++;
    } else if (arg.startsWith(`--${name}=`)) {
      values.push(arg.slice(name.length + 3));
    }
  }
  return values;
}

/** The CLI's names are a safe subset of what the protocol carries (MAX_MAPPING_NAME bytes of UTF-8). */
const MAPPING_NAME = new RegExp(`^[A-Za-z][A-Za-z0-9_.-]{0,${MAX_MAPPING_NAME - 1}}$`);

/** One --udp mapping: its name, its address, and how many ports from it (a port range; 1 for one port). */
export interface MappingArg {
  name?: string;
  address: HostPort;
  ports: number;
}

/**
 * The --udp mappings: `[NAME=][HOST]:PORT` or `[NAME=][HOST]:FIRST-LAST` (a port range), one per
 * --udp (default :1937, the original's). Names pair the receiver's public ports with the sender's
 * targets; without names they pair by order. All of them cover at most MAX_MAPPING_PORTS ports.
 */
export function mappingsArg(rawArgs: readonly string[], role: "receiver" | "sender"): MappingArg[] {
  const texts = repeated(rawArgs, "udp");
  if (texts.length === 0) texts.push(ORIGINAL_DEFAULT_ADDRESS);
  if (texts.length > MAX_MAPPINGS) throw new UserError(`at most ${MAX_MAPPINGS} --udp mappings, not ${texts.length}`);
  const names = new Set<string>();
  const taken: MappingArg[] = [];
  let total = 0;
  return texts.map((text) => {
    const eq = text.indexOf("=");
    const name = eq > 0 ? text.slice(0, eq) : undefined;
    if (name !== undefined) {
      if (!MAPPING_NAME.test(name)) {
        throw new UserError(
          `--udp ${text}: mapping name "${name}" must be a letter then up to ${MAX_MAPPING_NAME - 1} letters, digits, "_", "." or "-"`,
        );
      }
      if (names.has(name)) throw new UserError(`--udp: mapping name "${name}" given twice`);
      names.add(name);
    }
    if (eq === 0) throw new UserError(`--udp ${text}: the mapping name before "=" is empty`);
    const { ports, ...hostPort } = parseHostPortRange(eq > 0 ? text.slice(eq + 1) : text, `--udp`);
    const mapping = { name, address: hostPort, ports };
    const other = role === "receiver" ? taken.find((before) => overlap(before, mapping)) : undefined;
    if (other) {
      const again = other.ports === 1 && ports === 1;
      throw new UserError(
        again
          ? `--udp: ${text} given twice (each public port is one mapping)`
          : `--udp ${text} overlaps --udp ${mappingLabel(other)} (each public port belongs to one mapping)`,
      );
    }
    taken.push(mapping);
    total += ports;
    if (total > MAX_MAPPING_PORTS)
      throw new UserError(`--udp ${text}: the mappings cover ${total} ports in all; at most ${MAX_MAPPING_PORTS}`);
    if (role === "sender" && hostPort.port === 0) throw new UserError(`--udp ${text}: the target needs a port`);
    return mapping;
  });
}

/** "game=:27015-27030", as a --udp value. */
export function mappingLabel(mapping: MappingArg): string {
  const { host, port } = mapping.address;
  return `${mapping.name ? `${mapping.name}=` : ""}${formatHostPorts(host, port, mapping.ports)}`;
}

/** Two public ports or ranges on the same host text that share a port. */
function overlap(a: MappingArg, b: MappingArg): boolean {
  if (a.address.host !== b.address.host) return false;
  return a.address.port < b.address.port + b.ports && b.address.port < a.address.port + a.ports;
}

function readSecret(args: RawArgs): string | undefined {
  const inline = stringArg(args, "secret");
  const file = stringArg(args, "secret-file");
  if (inline !== undefined && file !== undefined) throw new UserError("give --secret or --secret-file, not both");
  if (file === undefined) return inline ?? (process.env.MCUDPT_SECRET || undefined);
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (error) {
    throw new UserError(`--secret-file: cannot read ${file}: ${fileFailure(error)}`);
  }
  // The first line that is not blank (a leading empty line is a slip, not an empty secret).
  const secret = text.split(/\r?\n/).find((line) => line.trim() !== "");
  if (secret === undefined) {
    throw new UserError(`--secret-file: ${file} holds no secret (${text === "" ? "it is empty" : "only blank lines"})`);
  }
  return secret;
}

/** The warning for a --secret-file other users can read (as ssh warns about key files), or none. */
function secretFileWarnings(args: RawArgs): string[] {
  const file = stringArg(args, "secret-file");
  if (file === undefined || !isKeyFileExposed(file)) return [];
  return [`--secret-file ${file} can be read by other users: chmod 600 ${file}`];
}

/** `--nudge on|off|MS` (a delay in milliseconds, "ms" optional, from 0.1 to 1000). */
function nudgeArg(args: RawArgs): number {
  const text = stringArg(args, "nudge");
  if (text === undefined || text === "on") return DEFAULTS.nudgeMs;
  if (text === "off") return 0;
  const match = /^(\d+(?:\.\d+)?)\s*(ms)?$/.exec(text.trim());
  const value = match ? Number(match[1]) : Number.NaN;
  if (!(value >= 0.1 && value <= 1000)) {
    throw new UserError(`--nudge: "${text}" is not on, off or a delay from 0.1ms to 1000ms`);
  }
  return value;
}

/** A duration in milliseconds written as 250ms, 0.5s or a plain number of milliseconds; "off" is 0. */
export function millis(args: RawArgs, name: string, max = 3_600_000): number {
  const text = stringArg(args, name);
  if (text === undefined || text === "off") return 0;
  const match = /^(\d+(?:\.\d+)?)\s*(ms|s)?$/.exec(text.trim());
  const value = match ? Number(match[1]) * (match[2] === "s" ? 1000 : 1) : Number.NaN;
  if (!(value > 0 && value <= max)) {
    throw new UserError(`--${name}: "${text}" is not off or a duration like 250ms or 1s (at most ${max / 1000} s)`);
  }
  return value;
}

/** `--lanes` belongs to the dialing side, `--max-lanes` to the listening one. */
export function laneOptions(args: RawArgs, dialing: boolean): { lanes?: number; maxLanes?: number } {
  if (dialing && args["max-lanes"] !== undefined) {
    throw new UserError("--max-lanes is for the listening side; this side dials (it opens --lanes)");
  }
  if (!dialing && args.lanes !== undefined) {
    throw new UserError("--lanes is for the dialing side; this side listens (it takes up to --max-lanes)");
  }
  if (!dialing) return { maxLanes: count(args, "max-lanes", DEFAULTS.maxLanes, 64) };
  const lanes = count(args, "lanes", DEFAULTS.lanes, 64);
  if (args.redundant === true && lanes < 2) {
    throw new UserError("--redundant sends every datagram on two lanes: give --lanes 2 or more");
  }
  if (args["redundant-mappings"] !== undefined && lanes < 2) {
    throw new UserError("--redundant-mappings sends those datagrams on two lanes: give --lanes 2 or more");
  }
  return { lanes };
}

export function commonOptions(args: RawArgs): CommonOptions {
  const secret = readSecret(args);
  const warnings = secretFileWarnings(args);
  if (args.verbose && args.quiet) throw new UserError("--verbose and --quiet contradict each other");
  return {
    secret,
    idleTimeoutMs: seconds(args, "idle-timeout", DEFAULTS.idleTimeoutMs),
    maxFlows: count(args, "max-flows", DEFAULTS.maxFlows),
    keepaliveMs: seconds(args, "keepalive", DEFAULTS.keepaliveMs, 1),
    handshakeTimeoutMs: seconds(args, "handshake-timeout", DEFAULTS.handshakeTimeoutMs),
    maxBufferBytes: byteSize(args, "max-buffer", DEFAULTS.maxBufferBytes),
    nudgeMs: nudgeArg(args),
    redundant: args.redundant === true,
    redundantMaxBytes: redundantMaxBytes(args),
    maxDelayMs: millis(args, "max-delay"),
    transport: (args.transport as TransportChoice | undefined) ?? "auto",
    logLevel: args.verbose ? "debug" : args.quiet ? "warn" : "info",
    warnings,
  };
}

function redundantMaxBytes(args: RawArgs): number | undefined {
  const text = stringArg(args, "redundant-max-bytes");
  if (text === undefined) return undefined;
  if (args.redundant !== true && args["redundant-mappings"] === undefined) {
    throw new UserError("--redundant-max-bytes limits --redundant or --redundant-mappings: give one of them");
  }
  if (!/^\d+$/.test(text.trim()) || Number(text) > MAX_DATAGRAM) {
    throw new UserError(`--redundant-max-bytes: "${text}" is not a datagram size from 0 to ${MAX_DATAGRAM} bytes`);
  }
  return Number(text);
}

/**
 * `--redundant-mappings game,voip`: marks those of `mappings` (by name, or #N by position) to be sent on
 * two lanes. A name this side does not have is a one-line error listing the ones it has.
 */
export function withRedundancy<M extends { name?: string }>(
  args: RawArgs,
  mappings: M[],
): Array<M & { redundant?: boolean }> {
  const text = stringArg(args, "redundant-mappings");
  if (text === undefined) return mappings;
  if (args.redundant === true) {
    throw new UserError("--redundant already sends every mapping twice: drop --redundant-mappings, or --redundant");
  }
  const labels = mappings.map((mapping, i) => mapping.name ?? `#${i + 1}`);
  const chosen = new Set<number>();
  for (const word of text.split(",").map((part) => part.trim())) {
    const index = labels.findIndex((label, i) => label === word || word === `#${i + 1}`);
    if (index < 0) {
      throw new UserError(
        `--redundant-mappings: this side has no mapping "${word}" (its mappings: ${labels.join(", ")})`,
      );
    }
    chosen.add(index);
  }
  return mappings.map((mapping, i) => (chosen.has(i) ? { ...mapping, redundant: true } : mapping));
}
