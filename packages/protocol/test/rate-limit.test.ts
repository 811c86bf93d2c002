import { describe, expect, test } from "bun:test";
import { SourceRateLimiter } from "../src/index.ts";

/** How many of `n` attempts from `source` at time `now` are allowed. */
function allowed(limiter: SourceRateLimiter, source: string, now: number, n: number): number {
  let ok = 0;
  for (let i = 0; i < n; i++) if (limiter.allow(source, now)) ok++;
  return ok;
}

describe("SourceRateLimiter", () => {
  test("a new source starts with a full bucket: the burst, then nothing", () => {
    const limiter = new SourceRateLimiter({ perSecond: 10, burst: 20 });
    expect(allowed(limiter, "a", 0, 25)).toBe(20);
    expect(limiter.allow("a", 0)).toBe(false);
  });

  test("refills at perSecond, never beyond the burst", () => {
    const limiter = new SourceRateLimiter({ perSecond: 10, burst: 20 });
    allowed(limiter, "a", 0, 20);
    expect(allowed(limiter, "a", 100, 5)).toBe(1); // 0.1 s x 10/s
    expect(allowed(limiter, "a", 350, 5)).toBe(2); // 0.25 s more: 2.5 tokens
    expect(allowed(limiter, "a", 400, 5)).toBe(1); // the half token left + 0.5
    expect(allowed(limiter, "a", 1_000_000, 100)).toBe(20); // a long quiet spell: the burst only
  });

  test("a refused attempt spends nothing, and sources are independent", () => {
    const limiter = new SourceRateLimiter({ perSecond: 1, burst: 1 });
    expect(limiter.allow("a", 0)).toBe(true);
    // Quarter-second steps: exact in binary floating point (tenths would sum to 0.999…).
    for (let t = 0; t < 1000; t += 250) expect(limiter.allow("a", t)).toBe(false);
    expect(limiter.allow("a", 1000)).toBe(true);
    expect(limiter.allow("b", 1000)).toBe(true);
    expect(limiter.allow("2001:db8::1", 1000)).toBe(true);
  });

  test("fractional rates accumulate", () => {
    const limiter = new SourceRateLimiter({ perSecond: 0.5, burst: 1 });
    expect(limiter.allow("a", 0)).toBe(true);
    expect(limiter.allow("a", 1999)).toBe(false);
    expect(limiter.allow("a", 4000)).toBe(true); // 1999 ms + 2001 ms = one token
  });

  test("memory is bounded: past maxSources the least recently seen source is forgotten", () => {
    const limiter = new SourceRateLimiter({ perSecond: 1, burst: 1, maxSources: 3 });
    for (const s of ["a", "b", "c"]) expect(limiter.allow(s, 0)).toBe(true);
    expect(limiter.size).toBe(3);
    expect(limiter.allow("a", 0)).toBe(false); // "a" is now the most recently seen
    expect(limiter.allow("d", 0)).toBe(true); // forgets "b", the least recently seen
    expect(limiter.size).toBe(3);
    expect(limiter.allow("c", 0)).toBe(false); // remembered
    expect(limiter.allow("a", 0)).toBe(false); // remembered
    expect(limiter.allow("b", 0)).toBe(true); // forgotten: a full bucket again (more lenient, never more state)
    expect(limiter.size).toBe(3);
  });

  test("a flood of distinct sources never holds more than maxSources buckets (default 16,384)", () => {
    const small = new SourceRateLimiter({ perSecond: 100, burst: 200, maxSources: 100 });
    for (let i = 0; i < 10_000; i++) small.allow(`10.0.${i >> 8}.${i & 0xff}`, i);
    expect(small.size).toBe(100);
    const byDefault = new SourceRateLimiter({ perSecond: 100, burst: 200 });
    for (let i = 0; i < 20_000; i++) byDefault.allow(`src-${i}`, 0);
    expect(byDefault.size).toBe(16_384);
  });
});
