/**
 * forwardedClient: whom a connection from a reverse proxy stands for. The header is read from the
 * right, each trusted proxy vouching for the hop before it only, so a client cannot put words in a
 * trusted proxy's mouth by sending its own X-Forwarded-For.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { forwardedClient } from "../src/forwarded.ts";
import { sourceMatcher } from "../src/source-match.ts";

const LOCAL = sourceMatcher("127.0.0.0/8,::1");

describe("forwardedClient", () => {
  it("takes the client a trusted proxy appended (nginx: $proxy_add_x_forwarded_for)", () => {
    assert.equal(forwardedClient("127.0.0.1", { "x-forwarded-for": "198.51.100.7" }, LOCAL), "198.51.100.7");
    assert.equal(forwardedClient("::1", { "x-forwarded-for": "2001:db8::5" }, LOCAL), "2001:db8::5");
  });

  it("ignores the header on a connection that does not come from a trusted proxy", () => {
    assert.equal(forwardedClient("203.0.113.9", { "x-forwarded-for": "198.51.100.7" }, LOCAL), "203.0.113.9");
  });

  it("reads from the right: what the client itself sent further left is not believed", () => {
    // The client (198.51.100.7) sent "X-Forwarded-For: 10.9.9.9"; nginx appended its address.
    const headers = { "x-forwarded-for": "10.9.9.9, 198.51.100.7" };
    assert.equal(forwardedClient("127.0.0.1", headers, LOCAL), "198.51.100.7");
    // Two trusted proxies in a row: each vouches for the hop before it.
    assert.equal(
      forwardedClient("127.0.0.1", { "x-forwarded-for": "10.9.9.9, 198.51.100.7, 127.0.0.5" }, LOCAL),
      "198.51.100.7",
    );
  });

  it("stops at an entry that is no IP address, and never reads past it", () => {
    assert.equal(forwardedClient("127.0.0.1", { "x-forwarded-for": "198.51.100.7, unknown" }, LOCAL), "127.0.0.1");
    assert.equal(
      forwardedClient("127.0.0.1", { "x-forwarded-for": "198.51.100.7, 127.0.0.5, garbage" }, LOCAL),
      "127.0.0.1",
    );
    assert.equal(forwardedClient("127.0.0.1", { "x-forwarded-for": "fe80::1%\u001b[31m" }, LOCAL), "127.0.0.1");
    assert.equal(forwardedClient("127.0.0.1", { "x-forwarded-for": "" }, LOCAL), "127.0.0.1");
    assert.equal(forwardedClient("127.0.0.1", {}, LOCAL), "127.0.0.1");
  });

  it("understands RFC 7239 Forwarded, quoted, bracketed, with ports, and prefers it", () => {
    const headers = {
      forwarded: 'for=10.9.9.9, for="[2001:db8::7]:4711";proto=https',
      "x-forwarded-for": "192.0.2.1",
    };
    assert.equal(forwardedClient("127.0.0.1", headers, LOCAL), "2001:db8::7");
    assert.equal(
      forwardedClient("127.0.0.1", { forwarded: "for=198.51.100.7:5000;by=127.0.0.1" }, LOCAL),
      "198.51.100.7",
    );
    assert.equal(forwardedClient("127.0.0.1", { forwarded: "proto=https" }, LOCAL), "127.0.0.1");
    assert.equal(forwardedClient("127.0.0.1", { forwarded: 'for="_hidden"' }, LOCAL), "127.0.0.1");
  });

  it("reads at most 32 hops of a long header", () => {
    const hops = Array.from({ length: 100 }, () => "127.0.0.5");
    hops[0] = "198.51.100.7";
    assert.equal(forwardedClient("127.0.0.1", { "x-forwarded-for": hops.join(",") }, LOCAL), "127.0.0.5");
  });
});
