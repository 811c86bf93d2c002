/**
 * What a running role takes from a configuration reload (SIGHUP) without a restart, and the mapping
 * diff that says whether it can. The host parses and checks the whole new configuration first; the
 * role then applies it: the steps that can still fail at run time (binding a receiver's new public
 * ports, serving a new certificate) go first, so a failure leaves everything as it was.
 */
import type { Limits } from "@mcudpt/protocol";
import { UserError } from "./errors.js";
import type { ListenerTlsOptions } from "./tls-peer.js";
import type { PeerAdmission } from "./trust.js";

export interface RoleReload {
  /** The machine's flow limits (idle timeout, max flows, send-queue bounds), per mapping too. */
  limits?: Limits;
  /** Listening side, key mode: the trust files as re-read; sessions of keys they no longer admit end. */
  admission?: PeerAdmission;
  /** Listening side with TLS: the certificate served to connections accepted from now on. */
  tls?: ListenerTlsOptions;
}

/** A mapping as both roles' reloads compare them: its name pairs it, `where` is its address text. */
export interface MappingKey {
  name?: string;
  /** The public address (receiver) or the target (sender), as text. */
  where: string;
}

export interface MappingDiff<M extends MappingKey> {
  added: M[];
  removed: M[];
  /** Same mapping (same name, or same position when unnamed), another address. */
  changed: Array<{ before: M; after: M; index: number }>;
}

/**
 * Old against new mappings, paired as the peers pair them (PROTOCOL.md §8.6): by name when every
 * mapping of both lists is named, else by position.
 */
export function diffMappings<M extends MappingKey>(before: readonly M[], after: readonly M[]): MappingDiff<M> {
  const named = [...before, ...after].every((mapping) => mapping.name);
  const diff: MappingDiff<M> = { added: [], removed: [], changed: [] };
  if (named) {
    diff.removed = before.filter((old) => !after.some((mapping) => mapping.name === old.name));
    diff.added = after.filter((mapping) => !before.some((old) => old.name === mapping.name));
  } else {
    diff.removed = before.slice(after.length);
    diff.added = after.slice(before.length);
  }
  before.forEach((old, index) => {
    const next = named ? after.find((mapping) => mapping.name === old.name) : after[index];
    if (next === undefined) return;
    // By position, a renamed mapping is another mapping: the peer pairs it by that name.
    if (!named && (next.name ?? "") !== (old.name ?? "")) {
      diff.removed.push(old);
      diff.added.push(next);
    } else if (next.where !== old.where) diff.changed.push({ before: old, after: next, index });
  });
  return diff;
}

/** The mapping as a line names it: "dns=:53", "#2 (:53)". */
export function mappingLabel(mapping: MappingKey, index: number): string {
  return mapping.name ? `${mapping.name}=${mapping.where}` : `#${index + 1} (${mapping.where})`;
}

/**
 * Refuses a reload that adds or removes mappings (and, with `fixedAddresses`, one that moves a
 * mapping to another address), saying `why` they are fixed. UserError, one line.
 */
export function refuseMappingSetChange<M extends MappingKey>(
  before: readonly M[],
  diff: MappingDiff<M>,
  fixedAddresses: string | undefined,
  why: string,
): void {
  const parts: string[] = [];
  const at = (mapping: M) => before.indexOf(mapping);
  if (diff.added.length > 0) parts.push(`added ${diff.added.map((m) => mappingLabel(m, before.length)).join(", ")}`);
  if (diff.removed.length > 0) parts.push(`removed ${diff.removed.map((m) => mappingLabel(m, at(m))).join(", ")}`);
  if (parts.length > 0)
    throw new UserError(`adding or removing mappings needs a restart: ${why} (${parts.join("; ")})`);
  if (fixedAddresses !== undefined && diff.changed.length > 0) {
    const moved = diff.changed.map(({ before: old, after: next }) => `${mappingLabel(old, at(old))} → ${next.where}`);
    throw new UserError(`${fixedAddresses} needs a restart (${moved.join(", ")})`);
  }
}
