/** What both machines are configured with, and its defaults. */
import { utf8 } from "./bytes.js";
import { MAX_MAPPINGS } from "./frames.js";
import type { Credentials, Identity } from "./link.js";
import { checkMappings, type MappingConfig, MappingIds } from "./mappings.js";

/**
 * The dialer's check of the acceptor's key (key mode). Called twice: at the acceptor's HELLO
 * (`proven` false: the key is only claimed, so refuse a key that contradicts a pin, but remember
 * nothing), and once ACCEPT's signature proved it (`proven` true: a new key may now be remembered).
 * Returns undefined to go on, or a short reason told to the peer in CLOSE; the host logs the details
 * (which may name local files the peer must not learn) itself.
 */
export type PeerKeyCheck = (publicKey: Uint8Array, peer: string, proven: boolean) => string | undefined;

export interface CommonConfig {
  /** Shared secret (secret mode). Without one, key mode: `identity` is required. */
  secret?: Uint8Array | string;
  /** This side's Ed25519 key (key mode). */
  identity?: Identity;
  idleTimeoutMs?: number;
  maxFlows?: number;
  keepaliveMs?: number;
  handshakeTimeoutMs?: number;
  /** Bound on bytes held for a connection whose transport is not draining; DATA past it is dropped. */
  maxBufferBytes?: number;
  /** How long flows are kept after the connection drops, waiting for the same peer to resume. */
  resumeGraceMs?: number;
  /** Free text identifying the software in HELLO. */
  agent?: string;
  /** This side's mappings, in order (default: one unnamed mapping). */
  mappings?: readonly MappingConfig[];
  /** When this side accepts TCP: unauthenticated connections allowed at once, in all and per source. */
  maxPendingConnections?: number;
  maxPendingPerSource?: number;
  /** When this side dials, in key mode: see PeerKeyCheck. Without it any key that proves itself is accepted. */
  checkPeerKey?: PeerKeyCheck;
  /**
   * Tail-loss nudge (PROTOCOL.md §10.1): this long after the last DATA written on a connection, if
   * nothing else followed, a 5-byte PAD frame is sent so that a lost last segment is repaired by the
   * kernel's fast recovery instead of its retransmission timeout (≥ 200 ms). 0 turns nudges off.
   */
  nudgeMs?: number;
  /** When this side dials: TCP connections (lanes) to keep to the peer, all in one session (default 1). */
  lanes?: number;
  /** When this side accepts: most lanes one session may hold (default 8); 1 refuses every JOIN. */
  maxLanes?: number;
  /**
   * Redundancy (§17): send every datagram of every mapping on two lanes (with a sequence number; the
   * peer delivers the first copy), and ask the peer to do the same. Per mapping: MappingConfig.redundant.
   */
  redundant?: boolean;
  /** Only datagrams up to this size are sent twice (default: all). */
  redundantMaxBytes?: number;
  /** A datagram that waited longer than this in a connection's send queue is dropped (`stale`); 0: off. */
  maxDelayMs?: number;
}

export const DEFAULTS = {
  idleTimeoutMs: 60_000,
  maxFlows: 4096,
  keepaliveMs: 15_000,
  handshakeTimeoutMs: 10_000,
  maxBufferBytes: 4 * 1024 * 1024,
  resumeGraceMs: 30_000,
  agent: "mcudpt-ts",
  maxPendingConnections: 16,
  maxPendingPerSource: 4,
  nudgeMs: 1,
  lanes: 1,
  maxLanes: 8,
  redundantMaxBytes: 65_535,
  maxDelayMs: 0,
} as const;

/** A CommonConfig checked and with its defaults filled in. */
export interface Settings {
  readonly credentials: Credentials;
  readonly secretMode: boolean;
  readonly idleTimeoutMs: number;
  readonly maxFlows: number;
  readonly keepaliveMs: number;
  readonly handshakeTimeoutMs: number;
  readonly maxBufferBytes: number;
  readonly resumeGraceMs: number;
  readonly agent: string;
  readonly mappings: readonly MappingConfig[];
  readonly mappingNames: readonly string[];
  /** Ports of each mapping, as HELLO lists them: undefined when every mapping is one port. */
  readonly mappingPorts: readonly number[] | undefined;
  /** This side's mapping ids as a receiver numbers them (one per port). */
  readonly mappingIds: MappingIds;
  readonly maxPending: number;
  readonly maxPendingPerSource: number;
  readonly checkPeerKey: PeerKeyCheck | undefined;
  readonly nudgeMs: number;
  readonly lanes: number;
  readonly maxLanes: number;
  readonly redundant: boolean;
  readonly redundantMaxBytes: number;
  readonly maxDelayMs: number;
}

/** Checks `config` (RangeError on a bad value: a bug of the host, not a peer's doing). */
export function settingsOf(config: CommonConfig): Settings {
  const secret = typeof config.secret === "string" ? utf8(config.secret) : config.secret;
  let credentials: Credentials;
  if (secret && secret.length > 0) credentials = { secret };
  else if (config.identity) credentials = { identity: config.identity };
  else throw new RangeError("either a secret or an identity (key) is required");
  const mappings = config.mappings ?? [{}];
  checkMappings(mappings, MAX_MAPPINGS);
  return {
    credentials,
    secretMode: "secret" in credentials,
    idleTimeoutMs: positive("idleTimeoutMs", config.idleTimeoutMs ?? DEFAULTS.idleTimeoutMs),
    maxFlows: positive("maxFlows", config.maxFlows ?? DEFAULTS.maxFlows),
    keepaliveMs: positive("keepaliveMs", config.keepaliveMs ?? DEFAULTS.keepaliveMs),
    handshakeTimeoutMs: positive("handshakeTimeoutMs", config.handshakeTimeoutMs ?? DEFAULTS.handshakeTimeoutMs),
    maxBufferBytes: positive("maxBufferBytes", config.maxBufferBytes ?? DEFAULTS.maxBufferBytes),
    resumeGraceMs: Math.max(0, config.resumeGraceMs ?? DEFAULTS.resumeGraceMs),
    agent: config.agent ?? DEFAULTS.agent,
    // Copies: a receiver may add mappings while it runs (addMappingTo), never to the caller's list.
    mappings: [...mappings],
    mappingNames: mappings.map((mapping) => mapping.name ?? ""),
    mappingPorts: mappings.some((mapping) => (mapping.ports ?? 1) > 1)
      ? mappings.map((mapping) => mapping.ports ?? 1)
      : undefined,
    mappingIds: new MappingIds(mappings.map((mapping) => mapping.ports ?? 1)),
    maxPending: config.maxPendingConnections ?? DEFAULTS.maxPendingConnections,
    maxPendingPerSource: config.maxPendingPerSource ?? DEFAULTS.maxPendingPerSource,
    checkPeerKey: config.checkPeerKey,
    nudgeMs: nonNegative("nudgeMs", config.nudgeMs ?? DEFAULTS.nudgeMs),
    lanes: whole("lanes", config.lanes ?? DEFAULTS.lanes),
    maxLanes: whole("maxLanes", config.maxLanes ?? DEFAULTS.maxLanes),
    redundant: config.redundant === true,
    redundantMaxBytes: nonNegative("redundantMaxBytes", config.redundantMaxBytes ?? DEFAULTS.redundantMaxBytes),
    maxDelayMs: nonNegative("maxDelayMs", config.maxDelayMs ?? DEFAULTS.maxDelayMs),
  };
}

/**
 * What a running machine takes without a restart (a configuration reload): the flow limits, each
 * mapping's own too, and the send queue's bounds. Everything else (credentials, mappings, keepalive,
 * lanes) is part of what the peer was told or agreed to, and needs a new machine.
 */
export interface Limits {
  idleTimeoutMs: number;
  maxFlows: number;
  maxBufferBytes: number;
  maxDelayMs: number;
  /** Per mapping, in this side's order: the same count as the machine's mappings. */
  mappings: ReadonlyArray<{ idleTimeoutMs?: number; maxFlows?: number }>;
}

/**
 * Applies `limits` to `settings` in place: the session, its connections and the flows all read the
 * one Settings object, so each sees the new value at its next decision. Checked first, as
 * settingsOf checks (RangeError, nothing changed).
 */
export function applyLimits(settings: Settings, limits: Limits): void {
  if (limits.mappings.length !== settings.mappings.length)
    throw new RangeError(`limits for ${limits.mappings.length} mappings, the machine has ${settings.mappings.length}`);
  const mappings = settings.mappings.map((mapping, i) => ({
    ...mapping,
    idleTimeoutMs: limits.mappings[i].idleTimeoutMs,
    maxFlows: limits.mappings[i].maxFlows,
  }));
  checkMappings(mappings, MAX_MAPPINGS);
  const checked = {
    idleTimeoutMs: positive("idleTimeoutMs", limits.idleTimeoutMs),
    maxFlows: positive("maxFlows", limits.maxFlows),
    maxBufferBytes: positive("maxBufferBytes", limits.maxBufferBytes),
    maxDelayMs: nonNegative("maxDelayMs", limits.maxDelayMs),
    mappings,
  };
  Object.assign(settings as { -readonly [K in keyof Settings]: Settings[K] }, checked);
}

/**
 * Appends a mapping added while running (its id is the next position). The one place the lists grow:
 * everything else reads them (new connections' HELLOs list the mapping from then on).
 */
export function addMappingTo(settings: Settings, mapping: MappingConfig): number {
  const all = [...settings.mappings, mapping];
  checkMappings(all, MAX_MAPPINGS);
  (settings.mappings as MappingConfig[]).push(mapping);
  (settings.mappingNames as string[]).push(mapping.name ?? "");
  // The wire ids: one per port, the new mapping's after all the others (so no existing id moves).
  const ports = all.map((entry) => entry.ports ?? 1);
  const grown = settings as { mappingPorts: readonly number[] | undefined; mappingIds: MappingIds };
  if (settings.mappingPorts !== undefined) grown.mappingPorts = ports;
  grown.mappingIds = new MappingIds(ports);
  return all.length - 1;
}

function whole(name: string, value: number): number {
  if (!Number.isInteger(value) || value < 1 || value > 64)
    throw new RangeError(`${name} must be 1 to 64, got ${value}`);
  return value;
}

function nonNegative(name: string, value: number): number {
  if (!Number.isFinite(value) || value < 0) throw new RangeError(`${name} must be 0 or more, got ${value}`);
  return value;
}

function positive(name: string, value: number): number {
  if (!Number.isFinite(value) || value <= 0) throw new RangeError(`${name} must be a positive number, got ${value}`);
  return value;
}
