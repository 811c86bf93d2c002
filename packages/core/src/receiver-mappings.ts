/**
 * What a receiver reload does to its mapping list (issue #16): adds named one-port mappings, removes
 * mappings, and moves one to another public address as a removal then an addition under the same
 * name (PROTOCOL.md §18: senders are told "removed" then "serving"; its flows close, clients open new
 * ones on the new port). Pure: the receiver binds what the plan adds, then applies it.
 *
 * Only with the Senders capability (key mode, the receiver listening): a peer without it must serve
 * every mapping the receiver has, so after a removal its next connection would be refused.
 */
import { MAX_MAPPINGS } from "@mcudpt/protocol";
import { formatHostPorts } from "./address.js";
import { UserError } from "./errors.js";
import { diffMappings, type MappingKey, mappingLabel, refuseMappingSetChange } from "./reload.js";
import type { ReceiverMapping } from "./receiver.js";

/** A mapping at its machine position; a removed one keeps its position (its id stays taken, §18). */
export interface MappingSlot {
  mapping: ReceiverMapping;
  removed: boolean;
}

export interface MappingPlan {
  /** Every position after the change, as the machine will number them. */
  slots: MappingSlot[];
  /** Positions to remove (first), then mappings to add at their positions. */
  remove: number[];
  add: Array<{ mappingId: number; mapping: ReceiverMapping }>;
  /** What the reload's log line says of it. */
  lines: string[];
}

/** A receiver mapping as a reload compares it: its name, and its public address (with a range's ports). */
export function publicPortKey({ name, udp, ports }: ReceiverMapping): MappingKey {
  return { name, where: formatHostPorts(udp.host, udp.port, ports ?? 1) };
}

type Keyed = MappingKey & { mapping: ReceiverMapping; mappingId: number };

/**
 * The change from `slots` to the mappings `next`, or a UserError (one line, nothing changed) saying
 * why it cannot be made while running. `fixed` is set when this receiver cannot change its mappings
 * at all (it says why).
 */
export function planMappingChange(
  slots: readonly MappingSlot[],
  next: readonly ReceiverMapping[],
  fixed: string | undefined,
): MappingPlan {
  const live: Keyed[] = slots.flatMap(({ mapping, removed }, mappingId) =>
    removed ? [] : [{ ...publicPortKey(mapping), mapping, mappingId }],
  );
  const wanted: Keyed[] = next.map((mapping, index) => ({ ...publicPortKey(mapping), mapping, mappingId: index }));
  const diff = diffMappings(live, wanted);
  const plan: MappingPlan = { slots: slots.map((slot) => ({ ...slot })), remove: [], add: [], lines: [] };
  if (diff.added.length + diff.removed.length + diff.changed.length === 0) return plan;
  if (fixed !== undefined) refuseMappingSetChange(live, diff, "moving a public port (--udp)", fixed);
  const unnamed = [...live, ...wanted].find((mapping) => !mapping.name);
  if (unnamed)
    throw new UserError(
      `adding, removing or moving a mapping while running needs every mapping named (senders pair with them by name; ${unnamed.where} is not): restart instead`,
    );
  const gone = [...diff.removed, ...diff.changed.map(({ before }) => before)];
  for (const old of gone) {
    plan.remove.push(old.mappingId);
    plan.slots[old.mappingId].removed = true;
  }
  for (const { mapping } of [...diff.added, ...diff.changed.map(({ after }) => after)]) {
    const text = mappingLabel(publicPortKey(mapping), 0);
    // Its wire ids come after every other port's: a connected sender can number only one (§18).
    if ((mapping.ports ?? 1) > 1) throw new UserError(`a port range cannot be added while running (${text}): restart`);
    // A name that was here before comes back at its position (ids follow names, §18).
    let mappingId = plan.slots.findIndex((slot) => slot.mapping.name === mapping.name);
    if (mappingId >= 0 && (plan.slots[mappingId].mapping.ports ?? 1) > 1)
      throw new UserError(`mapping ${mapping.name} was a port range: ${text} needs a restart`);
    if (mappingId < 0) {
      if (plan.slots.length >= MAX_MAPPINGS)
        throw new UserError(
          `cannot add ${text}: at most ${MAX_MAPPINGS} mappings while running, removed ones included (restart to reuse their places)`,
        );
      mappingId = plan.slots.length;
      plan.slots.push({ mapping, removed: false });
    } else plan.slots[mappingId] = { mapping, removed: false };
    plan.add.push({ mappingId, mapping });
  }
  for (const old of diff.removed) plan.lines.push(`mapping ${old.name} removed (was ${old.where})`);
  for (const { before, after } of diff.changed)
    plan.lines.push(`mapping ${before.name} moved: ${before.where} → ${after.where}`);
  for (const mapping of diff.added) plan.lines.push(`mapping ${mappingLabel(mapping, 0)} added`);
  return plan;
}
