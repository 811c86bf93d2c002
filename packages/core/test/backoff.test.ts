/**
 * Backoff (src/backoff.ts): the dialer's retry delays. The jitter source is injected, so every delay
 * is exact: random r gives round(step × (0.5 + r/2)).
 */
import { describe, expect, test } from "bun:test";
import { Backoff } from "../src/backoff.ts";

/** The largest value below 1 Math.random can return: the top of the jitter range. */
const ALMOST_ONE = 1 - Number.EPSILON;

const delays = (backoff: Backoff, count: number) => Array.from({ length: count }, () => backoff.next());

describe("Backoff", () => {
  test("doubles from the initial delay (top of the jitter range: the full step)", () => {
    const backoff = new Backoff({ initialMs: 100, maxMs: 1_000_000, random: () => ALMOST_ONE });
    expect(delays(backoff, 6)).toEqual([100, 200, 400, 800, 1600, 3200]);
  });

  test("the defaults: 250 ms doubling, capped at 30 s", () => {
    const backoff = new Backoff({ random: () => ALMOST_ONE });
    expect(delays(backoff, 9)).toEqual([250, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]);
  });

  test("is capped at maxMs, and stays there", () => {
    const backoff = new Backoff({ initialMs: 100, maxMs: 700, random: () => ALMOST_ONE });
    expect(delays(backoff, 6)).toEqual([100, 200, 400, 700, 700, 700]);
  });

  test("stays at the cap after very many failures", () => {
    const backoff = new Backoff({ initialMs: 250, maxMs: 30_000, random: () => ALMOST_ONE });
    delays(backoff, 5_000);
    expect(backoff.attempts).toBe(5_000);
    expect(backoff.next()).toBe(30_000);
  });

  test("jitter: random 0 gives half the step, random → 1 the whole step, 0.5 three quarters", () => {
    const low = new Backoff({ initialMs: 1000, maxMs: 8000, random: () => 0 });
    expect(delays(low, 5)).toEqual([500, 1000, 2000, 4000, 4000]);
    const high = new Backoff({ initialMs: 1000, maxMs: 8000, random: () => ALMOST_ONE });
    expect(delays(high, 5)).toEqual([1000, 2000, 4000, 8000, 8000]);
    const mid = new Backoff({ initialMs: 1000, maxMs: 8000, random: () => 0.5 });
    expect(delays(mid, 5)).toEqual([750, 1500, 3000, 6000, 6000]);
  });

  test("jitter stays within [step/2, step] for any random value, and is drawn once per delay", () => {
    let calls = 0;
    const values = [0, 0.1, 0.25, 0.5, 0.75, 0.9, ALMOST_ONE];
    const backoff = new Backoff({
      initialMs: 64,
      maxMs: 64 * 2 ** 10,
      random: () => values[calls++ % values.length],
    });
    for (let i = 0; i < 40; i++) {
      const step = Math.min(64 * 2 ** 10, 64 * 2 ** i);
      const delay = backoff.next();
      expect(calls).toBe(i + 1);
      expect(delay).toBeGreaterThanOrEqual(step / 2);
      expect(delay).toBeLessThanOrEqual(step);
      expect(Number.isInteger(delay)).toBe(true);
    }
  });

  test("attempts counts the failures since the last success", () => {
    const backoff = new Backoff({ random: () => 0 });
    expect(backoff.attempts).toBe(0);
    backoff.next();
    backoff.next();
    expect(backoff.attempts).toBe(2);
  });

  test("reset() starts over at the initial delay", () => {
    const backoff = new Backoff({ initialMs: 100, maxMs: 10_000, random: () => ALMOST_ONE });
    delays(backoff, 4);
    backoff.reset();
    expect(backoff.attempts).toBe(0);
    expect(delays(backoff, 2)).toEqual([100, 200]);
  });

  test("slowest() jumps straight to the cap, even from the first attempt", () => {
    const backoff = new Backoff({ initialMs: 250, maxMs: 30_000, random: () => ALMOST_ONE });
    backoff.slowest();
    expect(delays(backoff, 3)).toEqual([30_000, 30_000, 30_000]);
    // Jitter still applies at the cap (a fleet must not retry in lockstep there either).
    const jittered = new Backoff({ initialMs: 250, maxMs: 30_000, random: () => 0 });
    jittered.slowest();
    expect(jittered.next()).toBe(15_000);
  });

  test("slowest() reaches the cap whatever the initial delay (within 2^20 × initial)", () => {
    const backoff = new Backoff({ initialMs: 1, maxMs: 2 ** 20, random: () => ALMOST_ONE });
    backoff.slowest();
    expect(backoff.next()).toBe(2 ** 20);
  });

  test("slowest() never lowers the failure count, and reset() undoes it", () => {
    const backoff = new Backoff({ initialMs: 100, maxMs: 1000, random: () => ALMOST_ONE });
    delays(backoff, 25);
    backoff.slowest();
    expect(backoff.attempts).toBe(25);
    backoff.reset();
    backoff.slowest();
    expect(backoff.next()).toBe(1000);
    backoff.reset();
    expect(backoff.next()).toBe(100);
  });
});
