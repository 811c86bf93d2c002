/**
 * Several mappings (public UDP port ↔ target) over one connection. Each side lists its mappings in
 * HELLO; the receiver's position is the mapping id FLOW_OPEN carries, and the sender pairs each with
 * one of its targets: by name when both sides name every mapping, by position otherwise. A mismatch
 * is reported at the handshake, by both sides, instead of surfacing later as silent loss.
 */
import { utf8 } from "./bytes.js";
import { MAX_MAPPING_NAME, ProtocolError } from "./frames.js";
import { peerWord } from "./text.js";

export interface MappingConfig {
  /** Pairs this mapping with the peer's of the same name; "" or absent pairs by position. */
  name?: string;
  /** Idle timeout for this mapping's flows (default: the endpoint's). */
  idleTimeoutMs?: number;
  /** Flow limit for this mapping (default: the endpoint's). */
  maxFlows?: number;
  /** Send this mapping's datagrams on two lanes (§17), as `redundant` does for every mapping. */
  redundant?: boolean;
}

/** For each receiver mapping id, the sender's mapping index; throws `mapping-mismatch`. */
export function pairMappings(receiver: readonly string[], sender: readonly string[]): number[] {
  const allNamed = [...receiver, ...sender].every((name) => name !== "");
  if (allNamed) {
    const pairs = receiver.map((name) => sender.indexOf(name));
    // Injective too: a peer's HELLO may repeat a name (its own config check is not ours to trust).
    if (pairs.every((index) => index >= 0) && receiver.length === sender.length && new Set(pairs).size === pairs.length)
      return pairs;
  } else if (
    receiver.length === sender.length &&
    receiver.every((name, i) => name === "" || sender[i] === "" || name === sender[i]) &&
    // By position, a name both sides use must still sit at the same position on both.
    receiver.every((name, i) => name === "" || !sender.includes(name) || sender[i] === name)
  ) {
    return receiver.map((_, i) => i);
  }
  throw new ProtocolError(
    "mapping-mismatch",
    `mappings differ: the receiver has ${describe(receiver)}, the sender ${describe(sender)}; ` +
      "give both sides the same --udp mappings (same names, or the same number in the same order)",
  );
}

/**
 * Partial pairing (§18, both HELLOs set Senders): a sender serves a subset of the receiver's mappings.
 * When every mapping on both sides is named, each receiver mapping pairs with the sender's of the same
 * name, or with none (undefined); at least one must pair, and no name may repeat. A side with an
 * unnamed mapping pairs as before (pairMappings): there is no name to pick a subset by.
 */
export function pairPartially(receiver: readonly string[], sender: readonly string[]): Array<number | undefined> {
  const allNamed = [...receiver, ...sender].every((name) => name !== "");
  if (!allNamed) return pairMappings(receiver, sender);
  const pairs = receiver.map((name) => {
    const index = sender.indexOf(name);
    return index < 0 ? undefined : index;
  });
  const paired = pairs.filter((index) => index !== undefined);
  if (paired.length > 0 && new Set(sender).size === sender.length && new Set(receiver).size === receiver.length)
    return pairs;
  throw new ProtocolError(
    "mapping-mismatch",
    `mappings differ: none in common: the receiver has ${describe(receiver)}, the sender ${describe(sender)}; ` +
      "a sender serves some of the receiver's mappings, named the same on both sides",
  );
}

/** The sender's mapping names the receiver does not have (partial pairing): served by nobody. */
export function unpairedNames(sender: readonly string[], pairs: ReadonlyArray<number | undefined>): string[] {
  return sender.filter((_, index) => !pairs.includes(index));
}

function describe(names: readonly string[]): string {
  // The peer's names are its own words: quoted and escaped (they end up in log lines and CLOSE).
  const list = names.map((name, i) => (name ? peerWord(name) : `#${i + 1}`)).join(", ");
  return `${names.length} (${list})`;
}

/** Checks one side's own list: 1 to `max` mappings, names unique. Throws RangeError (a config bug). */
export function checkMappings(mappings: readonly MappingConfig[], max: number): void {
  if (mappings.length === 0 || mappings.length > max)
    throw new RangeError(`1 to ${max} mappings, not ${mappings.length}`);
  const seen = new Set<string>();
  for (const { name, idleTimeoutMs, maxFlows } of mappings) {
    if (idleTimeoutMs !== undefined && !(idleTimeoutMs > 0)) {
      throw new RangeError(`mapping ${name ?? ""} idleTimeoutMs must be a positive number, got ${idleTimeoutMs}`);
    }
    if (maxFlows !== undefined && !(maxFlows >= 1)) {
      throw new RangeError(`mapping ${name ?? ""} maxFlows must be at least 1, got ${maxFlows}`);
    }
    if (!name) continue;
    if (seen.has(name)) throw new RangeError(`mapping name "${name}" is used twice`);
    if (utf8(name).length > MAX_MAPPING_NAME)
      throw new RangeError(`mapping name "${name}" is over ${MAX_MAPPING_NAME} bytes`);
    seen.add(name);
  }
}
