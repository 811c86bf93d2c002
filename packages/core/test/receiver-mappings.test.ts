/**
 * The receiver's reload plan for its mapping list (receiver-mappings.ts): what it removes and adds,
 * the positions it gives (ids follow names, removed ones stay taken, §18), and every refusal.
 */
import { describe, expect, test } from "bun:test";
import { MAX_MAPPINGS } from "@mcudpt/protocol";
import { UserError } from "../src/errors.ts";
import { type MappingSlot, planMappingChange } from "../src/receiver-mappings.ts";
import type { ReceiverMapping } from "../src/receiver.ts";

const at = (name: string | undefined, port: number, ports?: number): ReceiverMapping => ({
  ...(name === undefined ? {} : { name }),
  udp: { host: "127.0.0.1", port },
  ...(ports === undefined ? {} : { ports }),
});
const live = (...mappings: ReceiverMapping[]): MappingSlot[] =>
  mappings.map((mapping) => ({ mapping, removed: false }));

function refusal(slots: MappingSlot[], next: ReceiverMapping[], fixed?: string): string {
  try {
    planMappingChange(slots, next, fixed);
  } catch (error) {
    expect(error).toBeInstanceOf(UserError);
    return (error as Error).message;
  }
  throw new Error("not refused");
}

describe("planMappingChange", () => {
  test("the same list changes nothing, named or not", () => {
    for (const list of [[at("dns", 53), at("ntp", 123)], [at(undefined, 53)]]) {
      const plan = planMappingChange(live(...list), list, "fixed");
      expect(plan.remove).toEqual([]);
      expect(plan.add).toEqual([]);
      expect(plan.lines).toEqual([]);
    }
  });

  test("removes by position, adds at the next one, and says so", () => {
    const plan = planMappingChange(live(at("dns", 53), at("ntp", 123)), [at("dns", 53), at("wg", 51820)], undefined);
    expect(plan.remove).toEqual([1]);
    expect(plan.add).toEqual([{ mappingId: 2, mapping: at("wg", 51820) }]);
    expect(plan.slots.map((slot) => slot.removed)).toEqual([false, true, false]);
    expect(plan.lines).toEqual(["mapping ntp removed (was 127.0.0.1:123)", "mapping wg=127.0.0.1:51820 added"]);
  });

  test("a removed name comes back at its position; a moved mapping is removed then added there", () => {
    const slots = live(at("dns", 53), at("ntp", 123));
    slots[1].removed = true;
    const plan = planMappingChange(slots, [at("dns", 5353), at("ntp", 1123)], undefined);
    expect(plan.remove).toEqual([0]);
    expect(plan.add).toEqual([
      { mappingId: 1, mapping: at("ntp", 1123) },
      { mappingId: 0, mapping: at("dns", 5353) },
    ]);
    expect(plan.slots).toEqual(live(at("dns", 5353), at("ntp", 1123)));
    expect(plan.lines).toEqual([
      "mapping dns moved: 127.0.0.1:53 → 127.0.0.1:5353",
      "mapping ntp=127.0.0.1:1123 added",
    ]);
  });

  test("does not touch the slots it was given", () => {
    const slots = live(at("dns", 53), at("ntp", 123));
    planMappingChange(slots, [at("dns", 53)], undefined);
    expect(slots[1].removed).toBe(false);
  });

  test("a receiver whose mappings are fixed refuses any change, saying why", () => {
    const slots = live(at(undefined, 53));
    expect(refusal(slots, [at(undefined, 53), at(undefined, 54)], "secret mode")).toBe(
      "adding or removing mappings needs a restart: secret mode (added #2 (127.0.0.1:54))",
    );
    expect(refusal(slots, [at(undefined, 54)], "secret mode")).toBe(
      "moving a public port (--udp) needs a restart (#1 (127.0.0.1:53) → 127.0.0.1:54)",
    );
  });

  test("refuses unnamed mappings, ranges added or moved, a removed range's name, past 32 positions", () => {
    expect(refusal(live(at("dns", 53)), [at("dns", 53), at(undefined, 54)])).toMatch(/needs every mapping named/);
    expect(refusal(live(at("dns", 53)), [at("dns", 53), at("game", 27015, 16)])).toBe(
      "a port range cannot be added while running (game=127.0.0.1:27015-27030): restart",
    );
    expect(refusal(live(at("game", 27015, 16)), [at("game", 27015, 8)])).toMatch(/a port range cannot be added/);
    const gone = live(at("dns", 53), at("game", 27015, 16));
    gone[1].removed = true;
    expect(refusal(gone, [at("dns", 53), at("game", 27015)])).toBe(
      "mapping game was a port range: game=127.0.0.1:27015 needs a restart",
    );
    const full = live(...Array.from({ length: MAX_MAPPINGS }, (_, i) => at(`m${i}`, 1000 + i)));
    full[0].removed = true;
    const next = [...full.slice(1).map((slot) => slot.mapping), at("extra", 999)];
    expect(refusal(full, next)).toMatch(/^cannot add extra=127\.0\.0\.1:999: at most 32 mappings while running/);
    // The removed one's own name still fits: it takes its old place.
    expect(planMappingChange(full, [...next.slice(0, -1), at("m0", 999)], undefined).add[0].mappingId).toBe(0);
  });

  test("a removed range may go", () => {
    const plan = planMappingChange(live(at("dns", 53), at("game", 27015, 16)), [at("dns", 53)], undefined);
    expect(plan.remove).toEqual([1]);
    expect(plan.lines).toEqual(["mapping game removed (was 127.0.0.1:27015-27030)"]);
  });
});
