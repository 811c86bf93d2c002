/**
 * Dialing through a proxy: `--proxy http://[user:pass@]HOST:PORT` (HTTP CONNECT, Basic auth) or
 * `socks5://[user:pass@]HOST:PORT`, or the environment's HTTPS_PROXY/ALL_PROXY unless NO_PROXY
 * exempts the peer. The handshakes are sans-I/O (transport.ts's TunnelHandshake): the transport
 * connects to the proxy and moves the bytes; TLS, if any, starts after the tunnel stands.
 *
 * A proxy's reply is hostile input: at most PROXY_REPLY_LIMIT bytes are read before it must have
 * said yes, and what it says goes into error messages only as short printable text.
 */
import { isIP } from "node:net";
import { formatHostPort, type HostPort } from "./address.js";
import { UserError } from "./errors.js";
import type { TunnelHandshake } from "./transport.js";

/** The most bytes read from a proxy before its reply must be complete. */
export const PROXY_REPLY_LIMIT = 16 * 1024;

export interface ProxySpec {
  scheme: "http" | "socks5";
  host: string;
  port: number;
  username?: string;
  password?: string;
  /** For log lines: the URL without the password. */
  text: string;
}

const DEFAULT_PORT = { http: 8080, socks5: 1080 } as const;

/** Parses a proxy URL; `source` names where it came from (a flag, an environment variable). */
export function parseProxyUrl(text: string, source: string): ProxySpec {
  let url: URL;
  try {
    url = new URL(text.includes("://") ? text : `http://${text}`);
  } catch {
    throw new UserError(`${source}: "${text}" is not a proxy URL (http://[user:pass@]HOST:PORT or socks5://…)`);
  }
  const scheme =
    url.protocol === "http:"
      ? "http"
      : url.protocol === "socks5:" || url.protocol === "socks5h:"
        ? "socks5"
        : undefined;
  if (!scheme) {
    throw new UserError(
      `${source}: proxy scheme "${url.protocol.replace(/:$/, "")}" is not supported (http:// for HTTP CONNECT, or socks5://)`,
    );
  }
  if (url.pathname !== "/" && url.pathname !== "")
    throw new UserError(`${source}: a proxy URL has no path ("${text}")`);
  const host = url.hostname.replace(/^\[(.*)\]$/, "$1");
  if (host === "") throw new UserError(`${source}: "${text}" names no proxy host`);
  const port = url.port === "" ? DEFAULT_PORT[scheme] : Number(url.port);
  const username = url.username === "" ? undefined : decodeURIComponent(url.username);
  const password = url.password === "" ? undefined : decodeURIComponent(url.password);
  if (scheme === "socks5" && ((username?.length ?? 0) > 255 || (password?.length ?? 0) > 255)) {
    throw new UserError(`${source}: SOCKS5 user names and passwords are at most 255 bytes`);
  }
  const user = username === undefined ? "" : `${encodeURIComponent(username)}${password === undefined ? "" : ":***"}@`;
  return { scheme, host, port, username, password, text: `${scheme}://${user}${formatHostPort(host, port)}` };
}

/**
 * The proxy the environment names for dialing `target`, as curl reads it: https_proxy, HTTPS_PROXY,
 * all_proxy, ALL_PROXY (the lower-case spelling first), unless no_proxy/NO_PROXY lists the host.
 */
export function proxyFromEnvironment(target: HostPort, env: NodeJS.ProcessEnv = process.env): ProxySpec | undefined {
  for (const name of ["https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"]) {
    const value = env[name]?.trim();
    if (!value) continue;
    if (bypassesProxy(target, env.no_proxy || env.NO_PROXY || "")) return undefined;
    return parseProxyUrl(value, `the environment's ${name}`);
  }
  return undefined;
}

/**
 * Whether a NO_PROXY list exempts `target`: "*" exempts everything; "example.com" or ".example.com"
 * that domain and its subdomains; an IP literal that address, a CIDR (10.0.0.0/8, fd00::/8) its range;
 * an entry with ":PORT" only that port.
 */
export function bypassesProxy(target: HostPort, list: string): boolean {
  const host = target.host
    .toLowerCase()
    .replace(/^\[(.*)\]$/, "$1")
    .replace(/\.$/, "");
  for (const raw of list.split(/[\s,]+/)) {
    let entry = raw.trim().toLowerCase();
    if (entry === "") continue;
    if (entry === "*") return true;
    let port: number | undefined;
    const bracketed = /^\[([^\]]+)\](?::(\d+))?$/.exec(entry);
    if (bracketed) {
      entry = bracketed[1];
      port = bracketed[2] === undefined ? undefined : Number(bracketed[2]);
    } else if (/^[^:]+:\d+$/.test(entry)) {
      const colon = entry.lastIndexOf(":");
      port = Number(entry.slice(colon + 1));
      entry = entry.slice(0, colon);
    }
    if (port !== undefined && port !== target.port) continue;
    if (entry.includes("/")) {
      if (inCidr(host, entry)) return true;
      continue;
    }
    if (isIP(entry) !== 0 || isIP(host) !== 0) {
      if (entry === host) return true;
      continue;
    }
    const domain = entry.replace(/^\*?\./, "").replace(/\.$/, "");
    if (host === domain || host.endsWith(`.${domain}`)) return true;
  }
  return false;
}

function inCidr(host: string, cidr: string): boolean {
  const [base, bitsText] = cidr.split("/");
  const family = isIP(base);
  if (family === 0 || isIP(host) !== family || !/^\d+$/.test(bitsText)) return false;
  const a = ipBytes(host);
  const b = ipBytes(base);
  const bits = Math.min(Number(bitsText), a.length * 8);
  for (let i = 0; i < bits; i++) {
    const mask = 0x80 >> (i % 8);
    if ((a[i >> 3] & mask) !== (b[i >> 3] & mask)) return false;
  }
  return true;
}

function ipBytes(ip: string): number[] {
  if (isIP(ip) === 4) return ip.split(".").map(Number);
  const [head, tail] = ip.includes("::") ? ip.split("::") : [ip, undefined];
  const parse = (part: string | undefined) => (part ? part.split(":") : []);
  let groups = parse(head);
  let rest = parse(tail);
  // An embedded IPv4 tail (::ffff:1.2.3.4) is two groups.
  const last = (tail === undefined ? groups : rest).at(-1);
  if (last?.includes(".")) {
    const v4 = last.split(".").map(Number);
    const pair = [((v4[0] << 8) | v4[1]).toString(16), ((v4[2] << 8) | v4[3]).toString(16)];
    if (tail === undefined) groups = [...groups.slice(0, -1), ...pair];
    else rest = [...rest.slice(0, -1), ...pair];
  }
  const zeros = tail === undefined ? [] : new Array(8 - groups.length - rest.length).fill("0");
  return [...groups, ...zeros, ...rest].flatMap((group) => {
    const value = Number.parseInt(group || "0", 16);
    return [value >> 8, value & 0xff];
  });
}

/** Short printable text from a peer's bytes, for an error message: never a control character. */
export function peerText(bytes: Uint8Array | string, max = 80): string {
  const text = typeof bytes === "string" ? bytes : new TextDecoder("utf-8", { fatal: false }).decode(bytes);
  const clean = text.replace(/[^\x20-\x7e]/g, "?");
  return clean.length > max ? `${clean.slice(0, max)}…` : clean;
}

/** The tunnel handshake for `proxy` toward `target` (a host name is resolved by the proxy, not here). */
export function proxyHandshake(proxy: ProxySpec, target: HostPort): TunnelHandshake & { readonly done: boolean } {
  return proxy.scheme === "http" ? httpConnect(proxy, target) : socks5(proxy, target);
}

const encoder = new TextEncoder();

/** HTTP CONNECT: one request, one reply head; 2xx means the tunnel stands. */
function httpConnect(proxy: ProxySpec, target: HostPort): TunnelHandshake & { readonly done: boolean } {
  const authority = formatHostPort(target.host, target.port);
  const lines = [`CONNECT ${authority} HTTP/1.1`, `Host: ${authority}`, "User-Agent: mcudpt"];
  if (proxy.username !== undefined) {
    const credentials = Buffer.from(`${proxy.username}:${proxy.password ?? ""}`, "utf8").toString("base64");
    lines.push(`Proxy-Authorization: Basic ${credentials}`);
  }
  const request = encoder.encode(`${lines.join("\r\n")}\r\n\r\n`);
  let head = new Uint8Array(0);
  let done = false;
  return {
    request,
    get done() {
      return done;
    },
    receive(data) {
      const joined = new Uint8Array(head.length + data.length);
      joined.set(head);
      joined.set(data, head.length);
      const end = indexOfHeadEnd(joined, Math.max(0, head.length - 3));
      if (end < 0) {
        if (joined.length > PROXY_REPLY_LIMIT) {
          throw new Error(`proxy ${proxy.text} sent a reply head over ${PROXY_REPLY_LIMIT / 1024} KiB`);
        }
        if (joined.length >= 5 && !startsWith(joined, "HTTP/")) throw notHttp(proxy, joined);
        head = joined;
        return undefined;
      }
      if (end > PROXY_REPLY_LIMIT) {
        throw new Error(`proxy ${proxy.text} sent a reply head over ${PROXY_REPLY_LIMIT / 1024} KiB`);
      }
      const statusLine = new TextDecoder("latin1").decode(joined.subarray(0, joined.indexOf(13)));
      const match = /^HTTP\/1\.[01] (\d{3})(?: (.*))?$/.exec(statusLine);
      if (!match) throw notHttp(proxy, joined);
      const status = Number(match[1]);
      if (status < 200 || status > 299) {
        const reason = match[2] ? ` ${peerText(match[2], 60)}` : "";
        const hint =
          status === 407 || status === 401
            ? proxy.username === undefined
              ? " (it wants credentials: http://USER:PASS@HOST:PORT)"
              : " (it refused the credentials)"
            : "";
        throw new Error(`proxy ${proxy.text} refused the tunnel to ${authority}: HTTP ${status}${reason}${hint}`);
      }
      done = true;
      return joined.slice(end);
    },
  };
}

function notHttp(proxy: ProxySpec, bytes: Uint8Array): Error {
  return new Error(
    `proxy ${proxy.text} did not answer as an HTTP proxy (its reply began "${peerText(bytes.subarray(0, 40))}")`,
  );
}

function startsWith(bytes: Uint8Array, text: string): boolean {
  for (let i = 0; i < text.length; i++) if (bytes[i] !== text.charCodeAt(i)) return false;
  return true;
}

/** The index just past the first CRLF CRLF at or after `from`, or -1. */
export function indexOfHeadEnd(bytes: Uint8Array, from = 0): number {
  for (let i = from; i + 3 < bytes.length; i++) {
    if (bytes[i] === 13 && bytes[i + 1] === 10 && bytes[i + 2] === 13 && bytes[i + 3] === 10) return i + 4;
  }
  return -1;
}

const SOCKS_REPLIES: Record<number, string> = {
  1: "general failure",
  2: "not allowed by its rules",
  3: "network unreachable",
  4: "host unreachable",
  5: "connection refused",
  6: "TTL expired",
  7: "command not supported",
  8: "address type not supported",
};

/**
 * SOCKS5 (RFC 1928, user/password RFC 1929), sent in one go: greeting offering the one method this
 * side will use, the credentials when it has them, the CONNECT (a host name goes to the proxy to
 * resolve). The replies are read in order.
 */
function socks5(proxy: ProxySpec, target: HostPort): TunnelHandshake & { readonly done: boolean } {
  const withAuth = proxy.username !== undefined;
  const parts: number[] = [5, 1, withAuth ? 2 : 0];
  if (withAuth) {
    const user = encoder.encode(proxy.username ?? "");
    const pass = encoder.encode(proxy.password ?? "");
    parts.push(1, user.length, ...user, pass.length, ...pass);
  }
  const family = isIP(target.host);
  parts.push(5, 1, 0);
  if (family === 4) parts.push(1, ...target.host.split(".").map(Number));
  else if (family === 6) parts.push(4, ...ipBytes(target.host));
  else {
    const name = encoder.encode(target.host);
    if (name.length > 255) throw new UserError(`a host name over 255 bytes cannot go through SOCKS5: ${target.host}`);
    parts.push(3, name.length, ...name);
  }
  parts.push(target.port >> 8, target.port & 0xff);
  const authority = formatHostPort(target.host, target.port);
  let buffer = new Uint8Array(0);
  let stage: "method" | "auth" | "connect" = "method";
  let done = false;
  const fail = (why: string) => new Error(`proxy ${proxy.text} refused the tunnel to ${authority}: ${why}`);
  return {
    request: Uint8Array.from(parts),
    get done() {
      return done;
    },
    receive(data) {
      const joined = new Uint8Array(buffer.length + data.length);
      joined.set(buffer);
      joined.set(data, buffer.length);
      buffer = joined;
      for (;;) {
        if (stage === "method") {
          if (buffer.length < 2) return undefined;
          if (buffer[0] !== 5) throw new Error(`proxy ${proxy.text} did not answer as a SOCKS5 proxy`);
          if (buffer[1] === 0xff) {
            throw fail(
              withAuth
                ? "SOCKS5 user/password not accepted"
                : "SOCKS5 wants credentials (socks5://USER:PASS@HOST:PORT)",
            );
          }
          if (buffer[1] !== (withAuth ? 2 : 0)) throw fail(`SOCKS5 method ${buffer[1]} not offered`);
          buffer = buffer.subarray(2);
          stage = withAuth ? "auth" : "connect";
        } else if (stage === "auth") {
          if (buffer.length < 2) return undefined;
          if (buffer[1] !== 0) throw fail("SOCKS5 credentials refused");
          buffer = buffer.subarray(2);
          stage = "connect";
        } else {
          if (buffer.length < 5) return undefined;
          if (buffer[0] !== 5) throw new Error(`proxy ${proxy.text} did not answer as a SOCKS5 proxy`);
          if (buffer[1] !== 0) throw fail(`SOCKS5 ${SOCKS_REPLIES[buffer[1]] ?? `reply ${buffer[1]}`}`);
          const type = buffer[3];
          const addressLength = type === 1 ? 4 : type === 4 ? 16 : type === 3 ? 1 + buffer[4] : -1;
          if (addressLength < 0) throw new Error(`proxy ${proxy.text} sent a malformed SOCKS5 reply`);
          const length = 4 + addressLength + 2;
          if (buffer.length < length) return undefined;
          done = true;
          return buffer.slice(length);
        }
      }
    },
  };
}
