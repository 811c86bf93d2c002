/**
 * Behind a reverse proxy (nginx, HAProxy, a CDN) every WebSocket carrier connection comes from the
 * proxy's address, so the pre-authentication limit per source address and `from="…"` on
 * authorized_keys lines would see one peer for all. `--ws-trusted-proxy` names the proxies whose word
 * is taken: a connection from one of them is attributed to the client its `Forwarded` (RFC 7239) or
 * `X-Forwarded-For` header names.
 *
 * Those headers are a list that every proxy on the way appends to, and anybody may send a list that
 * already holds lies. So the list is read from the right: each trusted proxy vouches only for the
 * hop before it, and the first address that is not a trusted proxy is the client. An entry that is
 * not an IP address ("unknown", an obfuscated name, garbage) stops the walk: the last hop that can
 * be vouched for is used, never something further left.
 */
import { ipFamily } from "@mcudpt/protocol";

/** At most this many hops are read (a header is at most a few kilobytes, but a walk is bounded). */
const MAX_HOPS = 32;

/**
 * The client address a connection from `direct` stands for, given its request headers (lower-case
 * names, as the WebSocket server reports them). `direct` itself when it is not a trusted proxy or
 * the headers name nobody it can vouch for.
 */
export function forwardedClient(
  direct: string,
  headers: Readonly<Record<string, string | undefined>>,
  trusted: (address: string) => boolean,
): string {
  if (!trusted(direct)) return direct;
  const hops = headers.forwarded !== undefined ? forwardedFor(headers.forwarded) : xForwardedFor(headers);
  let client = direct;
  for (let i = hops.length - 1; i >= 0 && i >= hops.length - MAX_HOPS; i--) {
    const hop = literal(hops[i]);
    if (hop === undefined) break;
    client = hop;
    if (!trusted(hop)) break;
  }
  return client;
}

function xForwardedFor(headers: Readonly<Record<string, string | undefined>>): string[] {
  const value = headers["x-forwarded-for"];
  return value === undefined ? [] : value.split(",").map((part) => part.trim());
}

/** The `for=` values of a Forwarded header, in order: `for=192.0.2.1;proto=https, for="[2001:db8::1]:4711"`. */
function forwardedFor(value: string): string[] {
  const hops: string[] = [];
  for (const element of value.split(",")) {
    const pair = element
      .split(";")
      .map((part) => part.trim())
      .find((part) => part.toLowerCase().startsWith("for="));
    // An element without for= still stands for a hop, one that names nobody.
    hops.push(pair === undefined ? "" : pair.slice(4).replace(/^"(.*)"$/, "$1"));
  }
  return hops;
}

/** An IP literal from a hop: "192.0.2.1", "192.0.2.1:4711", "[2001:db8::1]", "[2001:db8::1]:4711", "2001:db8::1". */
function literal(hop: string): string | undefined {
  let text = hop;
  const bracketed = /^\[([^\]]+)\](?::\d{1,5})?$/.exec(text);
  if (bracketed) text = bracketed[1];
  else if (/^[\d.]+:\d{1,5}$/.test(text)) text = text.slice(0, text.lastIndexOf(":"));
  // A zone id (fe80::1%eth0) means nothing on another host, and would carry the sender's text.
  if (text.includes("%")) return undefined;
  return ipFamily(text) === undefined ? undefined : text;
}
