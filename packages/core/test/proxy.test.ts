/**
 * proxy.ts without sockets: proxy URLs, the environment and NO_PROXY, and the HTTP CONNECT and SOCKS5
 * handshakes fed their replies in every split (one byte at a time, all at once, with the peer's
 * first bytes behind), refusals and hostile replies as one short printable line.
 */
import { describe, expect, test } from "bun:test";
import { bypassesProxy, PROXY_REPLY_LIMIT, parseProxyUrl, proxyFromEnvironment, proxyHandshake } from "../src/proxy.js";

const bytes = (text: string) => new TextEncoder().encode(text);
const text = (data: Uint8Array) => new TextDecoder().decode(data);

/**
 * Feeds `reply` in pieces of `step` bytes as a transport does (until the tunnel stands); returns the
 * peer's bytes: what the handshake gave back, then the pieces it was not fed.
 */
function feed(handshake: ReturnType<typeof proxyHandshake>, reply: Uint8Array, step: number): Uint8Array | undefined {
  for (let at = 0; at < reply.length; at += step) {
    const rest = handshake.receive(reply.subarray(at, at + step));
    if (rest !== undefined) return Uint8Array.from([...rest, ...reply.subarray(at + step)]);
  }
  return undefined;
}

describe("parseProxyUrl", () => {
  test("http and socks5, credentials decoded, the password never in the text", () => {
    const proxy = parseProxyUrl("http://al%40ice:p%3Ass@proxy.corp:3128", "--proxy");
    expect(proxy).toMatchObject({
      scheme: "http",
      host: "proxy.corp",
      port: 3128,
      username: "al@ice",
      password: "p:ss",
    });
    expect(proxy.text).toBe("http://al%40ice:***@proxy.corp:3128");
    expect(parseProxyUrl("socks5://[::1]:1080", "x")).toMatchObject({ scheme: "socks5", host: "::1", port: 1080 });
    expect(parseProxyUrl("proxy.corp:8080", "x")).toMatchObject({ scheme: "http", port: 8080 });
    expect(parseProxyUrl("http://proxy.corp", "x").port).toBe(8080);
  });
  test("one line for what it cannot use", () => {
    expect(() => parseProxyUrl("https://p:1", "--proxy")).toThrow(/--proxy: proxy scheme "https" is not supported/);
    expect(() => parseProxyUrl("http://p:1/path", "--proxy")).toThrow(/has no path/);
    expect(() => parseProxyUrl("http://", "HTTPS_PROXY")).toThrow(/HTTPS_PROXY/);
  });
});

describe("the environment", () => {
  const target = { host: "tunnel.example.com", port: 443 };
  test("https_proxy before HTTPS_PROXY before ALL_PROXY; empty values skipped", () => {
    expect(proxyFromEnvironment(target, { https_proxy: "http://a:1", HTTPS_PROXY: "http://b:1" })?.host).toBe("a");
    expect(proxyFromEnvironment(target, { https_proxy: "", HTTPS_PROXY: "http://b:1" })?.host).toBe("b");
    expect(proxyFromEnvironment(target, { ALL_PROXY: "socks5://c:1" })?.scheme).toBe("socks5");
    expect(proxyFromEnvironment(target, {})).toBeUndefined();
  });
  test("NO_PROXY entries", () => {
    const cases: Array<[string, string, number, boolean]> = [
      ["*", "anything", 1, true],
      ["example.com", "tunnel.example.com", 443, true],
      [".example.com", "example.com", 443, true],
      ["example.com", "badexample.com", 443, false],
      ["example.com:443", "tunnel.example.com", 443, true],
      ["example.com:80", "tunnel.example.com", 443, false],
      ["10.0.0.0/8", "10.1.2.3", 1, true],
      ["10.0.0.0/8", "11.0.0.1", 1, false],
      ["fd00::/8", "fd12::1", 1, true],
      ["::1", "::1", 1, true],
      ["[::1]:5", "::1", 5, true],
      ["127.0.0.1", "localhost", 1, false],
      ["a.test, ,b.test", "x.b.test", 1, true],
    ];
    for (const [list, host, port, expected] of cases)
      expect([list, host, bypassesProxy({ host, port }, list)]).toEqual([list, host, expected]);
    expect(
      proxyFromEnvironment(target, { HTTPS_PROXY: "http://p:1", no_proxy: "", NO_PROXY: "example.com" }),
    ).toBeUndefined();
  });
});

describe("HTTP CONNECT", () => {
  const proxy = parseProxyUrl("http://alice:s3cret@proxy:3128", "x");
  test("the request names the target as given, with Basic credentials", () => {
    const request = text(proxyHandshake(proxy, { host: "tunnel.example.com", port: 443 }).request);
    expect(request).toStartWith("CONNECT tunnel.example.com:443 HTTP/1.1\r\nHost: tunnel.example.com:443\r\n");
    expect(request).toContain(`Proxy-Authorization: Basic ${btoa("alice:s3cret")}\r\n`);
    expect(request).toEndWith("\r\n\r\n");
    expect(text(proxyHandshake(proxy, { host: "::1", port: 9 }).request)).toStartWith("CONNECT [::1]:9 HTTP/1.1");
  });
  test("a 200 in any split; the peer's bytes behind it come back", () => {
    const reply = bytes("HTTP/1.1 200 Connection established\r\nVia: x\r\n\r\nPEER");
    for (const step of [1, 2, 3, 7, reply.length]) {
      const handshake = proxyHandshake(proxy, { host: "t", port: 1 });
      expect(text(feed(handshake, reply, step) ?? bytes("?"))).toBe("PEER");
      expect(handshake.done).toBe(true);
    }
  });
  test("refusals: the status and a short printable reason, one line", () => {
    const refuse = (reply: string) => () => proxyHandshake(proxy, { host: "t", port: 1 }).receive(bytes(reply));
    expect(refuse("HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")).toThrow(
      "proxy http://alice:***@proxy:3128 refused the tunnel to t:1: HTTP 407 Proxy Authentication Required (it refused the credentials)",
    );
    expect(refuse("HTTP/1.0 403 \u001b[31mno\r\n\r\n")).toThrow(/HTTP 403 \?\[31mno$/);
    expect(refuse("SSH-2.0-OpenSSH\r\n\r\n")).toThrow(
      /did not answer as an HTTP proxy \(its reply began "SSH-2\.0-OpenSSH\?\?\?\?"\)/,
    );
    const anonymous = parseProxyUrl("http://proxy:3128", "x");
    expect(() => proxyHandshake(anonymous, { host: "t", port: 1 }).receive(bytes("HTTP/1.1 407 x\r\n\r\n"))).toThrow(
      /it wants credentials/,
    );
  });
  test("a head over the limit is refused before more is kept", () => {
    const handshake = proxyHandshake(proxy, { host: "t", port: 1 });
    handshake.receive(bytes("HTTP/1.1 200 OK\r\n"));
    expect(() => {
      for (let i = 0; i < 100; i++) handshake.receive(bytes(`X: ${"a".repeat(PROXY_REPLY_LIMIT / 50)}\r\n`));
    }).toThrow(/reply head over 16 KiB/);
  });
});

describe("SOCKS5", () => {
  test("greeting, credentials and CONNECT in one go; replies in any split", () => {
    const proxy = parseProxyUrl("socks5://bob:pw@p:1080", "x");
    const handshake = proxyHandshake(proxy, { host: "tunnel.example.com", port: 443 });
    expect([...handshake.request.subarray(0, 3)]).toEqual([5, 1, 2]);
    expect([...handshake.request.subarray(3, 5)]).toEqual([1, 3]);
    const reply = Uint8Array.from([5, 2, 1, 0, 5, 0, 0, 3, 4, 104, 111, 115, 116, 1, 187, 80, 69]);
    for (const step of [1, 4, reply.length]) {
      const fresh = proxyHandshake(proxy, { host: "tunnel.example.com", port: 443 });
      expect(text(feed(fresh, reply, step) ?? bytes("?"))).toBe("PE");
    }
  });
  test("refusals", () => {
    const anonymous = parseProxyUrl("socks5://p:1080", "x");
    expect(() => proxyHandshake(anonymous, { host: "1.2.3.4", port: 1 }).receive(Uint8Array.from([5, 0xff]))).toThrow(
      /SOCKS5 wants credentials/,
    );
    expect(() =>
      proxyHandshake(anonymous, { host: "1.2.3.4", port: 1 }).receive(
        Uint8Array.from([5, 0, 5, 5, 0, 1, 0, 0, 0, 0, 0, 0]),
      ),
    ).toThrow(/refused the tunnel to 1\.2\.3\.4:1: SOCKS5 connection refused/);
  });
});
