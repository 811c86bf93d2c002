/**
 * Several mappings (public UDP port ↔ target) over one connection. Each side lists its mappings in
 * HELLO; the receiver's position is the mapping id FLOW_OPEN carries, and the sender pairs each with
 * one of its targets: by name when both sides name every mapping, by position otherwise. A mismatch
 * is reported at the handshake, by both sides, instead of surfacing later as silent loss.
 *
 * A mapping may be a port range (`:27015-27030`, n ports ↔ n target ports at the same offsets): it
 * takes n consecutive mapping ids on the wire, so FLOW_OPEN's id tells the sender the offset, and
 * both sides must give the paired mappings the same number of ports.
 */
import { utf8 } from "./bytes.js";
import { MAX_MAPPING_NAME, MAX_MAPPING_PORTS, ProtocolError } from "./frames.js";
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
  /** Consecutive ports this mapping covers (a port range; default 1). Flows and limits stay per mapping. */
  ports?: number;
}

/**
 * The receiver's mapping ids: mapping i of n ports takes the n ids after those of the mappings
 * before it. Kept as the first id of each mapping (at most 32 numbers, whatever the port count).
 */
export class MappingIds {
  private readonly first: number[] = [];
  /** Mapping ids in all (the sum of the port counts). */
  readonly total: number;

  constructor(readonly ports: readonly number[]) {
    let next = 0;
    for (const count of ports) {
      this.first.push(next);
      next += count;
    }
    this.total = next;
  }

  /** The id on the wire of port `offset` of mapping `mapping`. */
  idOf(mapping: number, offset: number): number {
    return this.first[mapping] + offset;
  }

  /** The mapping and port offset of a wire id; undefined past the last one. */
  locate(id: number): { mapping: number; offset: number } | undefined {
    if (!(id >= 0 && id < this.total)) return undefined;
    let low = 0;
    let high = this.first.length - 1;
    while (low < high) {
      const middle = (low + high + 1) >> 1;
      if (this.first[middle] <= id) low = middle;
      else high = middle - 1;
    }
    return { mapping: low, offset: id - this.first[low] };
  }
}

/** The port counts a HELLO lists (1 for each plain mapping); throws `bad-mappings` (a writer's refusal). */
export function mappingPortsChecked(count: number, ports: readonly number[] | undefined): readonly number[] {
  if (ports === undefined) return Array.from({ length: count }, () => 1);
  if (ports.length !== count)
    throw new ProtocolError("bad-mappings", `${ports.length} port counts for ${count} mappings`);
  let total = 0;
  for (const n of ports) {
    if (!Number.isInteger(n) || n < 1 || n > MAX_MAPPING_PORTS)
      throw new ProtocolError("bad-mappings", `a mapping of ${n} ports: 1 to ${MAX_MAPPING_PORTS}`);
    total += n;
  }
  if (total > MAX_MAPPING_PORTS)
    throw new ProtocolError("bad-mappings", `mappings of ${total} ports in all, at most ${MAX_MAPPING_PORTS}`);
  return ports;
}

/**
 * Paired mappings must cover as many ports (`pairs` as pairMappings made them; a missing count is
 * 1); throws `mapping-mismatch` naming the first pair that differs.
 */
export function checkPairedPorts(
  pairs: ReadonlyArray<number | undefined>,
  receiver: { names: readonly string[]; ports?: readonly number[] },
  sender: { names: readonly string[]; ports?: readonly number[] },
): void {
  pairs.forEach((senderIndex, receiverIndex) => {
    // A mapping the sender does not serve (partial pairing, §18) has no size to compare.
    if (senderIndex === undefined || senderIndex < 0) return;
    const ours = receiver.ports?.[receiverIndex] ?? 1;
    const theirs = sender.ports?.[senderIndex] ?? 1;
    if (ours === theirs) return;
    const name = receiver.names[receiverIndex];
    const which = name ? peerWord(name) : `#${receiverIndex + 1}`;
    throw new ProtocolError(
      "mapping-mismatch",
      `port ranges differ: mapping ${which} has ${portsText(ours)} on the receiver, ${portsText(theirs)} on the sender; ` +
        "give both sides ranges of the same size",
    );
  });
}

function portsText(count: number): string {
  return count === 1 ? "1 port" : `${count} ports`;
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
  const ports = mappings.map((mapping) => mapping.ports ?? 1);
  try {
    mappingPortsChecked(ports.length, ports);
  } catch (error) {
    throw new RangeError((error as Error).message);
  }
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
