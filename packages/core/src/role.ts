/**
 * What the receiver and the sender do alike at run time: check the peer's key when dialing, drive the
 * machine, start the TCP side (listen or dial), route the machine's connection outputs to it, and the
 * close sequence. The role brings its machine, its UDP side and its outputs.
 */
import type { ConnectionOutput, MappingConfig, PeerKeyCheck, ReceiverMachine, SenderMachine } from "@mcudpt/protocol";
import type { HostPort } from "./address.js";
import { PeerKeyChecker } from "./dialer.js";
import { UserError } from "./errors.js";
import { fingerprint } from "./keys.js";
import { RateLimitedLog } from "./logger.js";
import { Resolver } from "./resolve.js";
import { MachineDriver, now, type RoleOutput } from "./driver.js";
import type { RoleReload } from "./reload.js";
import type { Logger } from "./logger.js";
import { type DialTrust, type ListenTrust, type PeerLink, startPeerLink } from "./peer-link.js";
import type { CarrierOptions } from "./carrier.js";
import type { DialerTlsOptions, ListenerTlsOptions } from "./tls-peer.js";
import type { Transport } from "./transport.js";

type Machine = ReceiverMachine | SenderMachine;

/** The TCP side of a role's options, whichever way round. */
export interface SideOptions extends ListenTrust, DialTrust {
  transport: Transport;
  logger: Logger;
  /** Where to listen, or the peer to dial. */
  tcp: HostPort;
  /** TLS: the certificate to serve when listening, or how to check the peer's when dialing. */
  tls?: ListenerTlsOptions | DialerTlsOptions;
  /** How connections reach the peer: WebSocket, a proxy (default plain TCP). */
  carrier?: CarrierOptions;
}

export interface RoleSpec<M extends Machine> {
  side: SideOptions;
  dialing: boolean;
  /** What the peer is ("sender" or "receiver"). */
  peerName: string;
  /** The flag naming the TCP address, for error messages. */
  flag: string;
  handshakeTimeoutMs?: number;
  /** The role's mappings (names and per-mapping limits) as the machine takes them. */
  mappings: ReadonlyArray<MappingConfig>;
  /** The mapping names as they are now, when a reload may change them (default: those of `mappings`). */
  mappingNames?: () => readonly string[];
  /** Makes the machine from the part of its config the role runner adds (key check, mappings). */
  machine(base: { checkPeerKey: PeerKeyCheck; mappings: MappingConfig[] }): M;
  /** The role's own outputs (datagrams, flow sockets). */
  onOutput(output: Exclude<RoleOutput<M>, ConnectionOutput>): void;
  /** After each drain: send what was batched. */
  onDrained(): void;
  /** Binds the role's UDP side before the TCP side starts (undone by closeLocal if that fails). */
  openLocal?(driver: MachineDriver<M>): Promise<void>;
  /** Closes the role's UDP side. */
  closeLocal(): void;
}

export interface RunningRole<M extends Machine> {
  readonly machine: M;
  readonly driver: MachineDriver<M>;
  readonly link: PeerLink;
  /**
   * Applies what a reload changed that both roles take (see RoleReload): the certificate first (the
   * step that can fail, leaving all as it was), then the trust files, then the limits. Returns what
   * was done, for the reload's log line. `beforeLimits` runs after the certificate and the trust
   * files were taken (the receiver's mapping changes: the limits must then cover its new mappings).
   */
  reload(update: RoleReload, beforeLimits?: () => string[]): Promise<string[]>;
  /** Says goodbye to the peer, closes every socket. */
  close(): Promise<void>;
}

const CONNECTION_OUTPUTS = new Set(["close-connection", "authorize-peer", "authorization-withdrawn", "accepted"]);

export async function startRole<M extends Machine>(spec: RoleSpec<M>): Promise<RunningRole<M>> {
  const { side } = spec;
  const keyCheck = new PeerKeyChecker(spec.dialing ? side.pins : undefined, side.logger, spec.peerName);
  const mappings = spec.mappings.map(({ name, idleTimeoutMs, maxFlows, ports, redundant }) => ({
    name,
    idleTimeoutMs,
    maxFlows,
    ports,
    redundant,
  }));
  const names = mappings.map(({ name }) => name ?? "");
  const machine = spec.machine({ checkPeerKey: keyCheck.check, mappings });
  let link: PeerLink | undefined;
  const driver = new MachineDriver<M>(
    machine,
    side.logger,
    (output) => {
      if (CONNECTION_OUTPUTS.has(output.kind)) link?.onOutput(output as ConnectionOutput);
      else spec.onOutput(output as Exclude<RoleOutput<M>, ConnectionOutput>);
    },
    () => spec.onDrained(),
  );
  try {
    await spec.openLocal?.(driver);
    link = await startPeerLink({
      transport: side.transport,
      logger: side.logger,
      driver,
      peerName: spec.peerName,
      mode: spec.dialing ? "dial" : "listen",
      address: side.tcp,
      flag: spec.flag,
      handshakeTimeoutMs: spec.handshakeTimeoutMs,
      keyCheck,
      admission: side.admission,
      askOperator: side.askOperator,
      mappingNames: spec.mappingNames ?? (() => names),
      pins: side.pins,
      reconnect: side.reconnect,
      connectTimeoutMs: side.connectTimeoutMs,
      tls: side.tls,
      carrier: side.carrier,
    });
  } catch (error) {
    spec.closeLocal();
    throw error;
  }
  const peerLink = link;
  let closed: Promise<void> | undefined;
  return {
    machine,
    driver,
    link: peerLink,
    async reload(update, beforeLimits) {
      const done = await peerLink.reload({ admission: update.admission, tls: update.tls });
      if (beforeLimits) done.push(...beforeLimits());
      const limits = update.limits;
      if (limits) driver.guard(() => machine.updateLimits(limits, now()));
      return done;
    },
    close() {
      closed ??= (async () => {
        peerLink.close();
        driver.guard(() => machine.shutdown());
        driver.stop();
        spec.closeLocal();
        await waitFor(() => driver.openConnections === 0, 1000);
        driver.destroyAll();
      })();
      return closed;
    },
  };
}

/** Polls `done` until it holds or `ms` pass (bounded). */
export async function waitFor(done: () => boolean, ms: number): Promise<void> {
  const until = Date.now() + ms;
  while (!done() && Date.now() < until) await new Promise((r) => setTimeout(r, 10));
}

/** How this side authenticates and whom it trusts, for the start-up line. */
export function authDescription(
  options: SideOptions & { config: { secret?: unknown; identity?: { publicKey: Uint8Array } } },
  dialing: boolean,
  peerName: string,
): string {
  if (options.config.secret) return "shared secret";
  const key = options.config.identity ? `key ${fingerprint(options.config.identity.publicKey)}` : "key";
  if (dialing) {
    const checked = options.pins ? (options.pins.description ?? "checked") : "not checked";
    return `${key}; the ${peerName}'s key ${checked}`;
  }
  const admitted = options.askOperator ? "known keys or the operator's approval" : "known keys only";
  return `${key}; ${peerName}s: ${admitted}`;
}

/** A role's mappings: the list given, or the one mapping of the single-address option; `missing` if neither. */
export function mappingsOf<M>(mappings: M[] | undefined, single: M | undefined, missing: string): M[] {
  if (mappings && mappings.length > 0) return mappings;
  if (single === undefined) throw new UserError(missing);
  return [single];
}

/** What every role's start needs besides its options: a resolver and a rate-limited log. */
export function roleTools(options: SideOptions) {
  return { ...options, resolver: new Resolver(), rateLimited: new RateLimitedLog(options.logger) };
}
