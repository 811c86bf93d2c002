import { describe, expect, test } from "bun:test";
import { sourceMatcher } from "../src/source-match.ts";

describe("from= source patterns", () => {
  test("addresses and CIDR blocks, IPv4 and IPv6; IPv4-mapped IPv6 sources count as IPv4", () => {
    const match = sourceMatcher("127.0.0.2,198.51.100.0/24,2001:db8::/32");
    expect(match("127.0.0.2")).toBe(true);
    expect(match("127.0.0.3")).toBe(false);
    expect(match("198.51.100.77")).toBe(true);
    expect(match("198.51.101.1")).toBe(false);
    expect(match("::ffff:198.51.100.7")).toBe(true);
    expect(match("2001:db8:1::5")).toBe(true);
    expect(match("2001:db9::5")).toBe(false);
    expect(match("not an address")).toBe(false);
  });
  test("a negated pattern wins over a plain one; a list of negations alone admits nobody", () => {
    const match = sourceMatcher("10.0.0.0/8,!10.1.2.3");
    expect(match("10.9.9.9")).toBe(true);
    expect(match("10.1.2.3")).toBe(false);
    expect(sourceMatcher("!10.1.2.3")("192.0.2.1")).toBe(false);
  });
  test("odd prefix lengths and /0", () => {
    expect(sourceMatcher("192.0.2.128/25")("192.0.2.200")).toBe(true);
    expect(sourceMatcher("192.0.2.128/25")("192.0.2.100")).toBe(false);
    expect(sourceMatcher("::/0")("2001:db8::1")).toBe(true);
    expect(sourceMatcher("::/0")("192.0.2.1")).toBe(false);
  });
  test("host names, wildcards and bad prefixes are refused with the pattern named", () => {
    expect(() => sourceMatcher("example.com")).toThrow('"example.com" is not an IP address or CIDR block');
    expect(() => sourceMatcher("10.0.0.*")).toThrow("10.0.0.*");
    expect(() => sourceMatcher("10.0.0.0/33")).toThrow("prefix length must be 0 to 32");
    expect(() => sourceMatcher("10.0.0.0/x")).toThrow("prefix length");
  });
});
