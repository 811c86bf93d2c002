/**
 * PROXY protocol version 2 header (HAProxy's doc/proxy-protocol.txt, section 2.2) for UDP: prepended
 * to a datagram so a target that expects it sees the real client instead of the sender's socket.
 * Binary form only, command PROXY, no TLVs. Pure: no sockets, no runtime imports.
 *
 * Families: the spec has one family byte for both addresses ("the destination ... matches the same
 * family"), so two IPv4 addresses give AF_INET; any IPv6 one gives AF_INET6 with the IPv4 address in
 * its IPv4-mapped form (::ffff:a.b.c.d), as HAProxy does. An IPv4-mapped address next to an IPv4 one
 * (an IPv4 client seen through a dual-stack socket) counts as IPv4: the target sees a plain IPv4 client.
 */
import { parseIPv4, parseIPv6 } from "./address.js";
import type { WireAddress } from "./frames.js";

/** The 12-byte signature that opens every v2 header. */
export const PROXY_V2_SIGNATURE = Uint8Array.of(0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a);
/** Version 2 (high nibble), command PROXY (low nibble). */
const VERSION_PROXY = 0x21;
/** Family (high nibble) and transport DGRAM (low nibble). */
const UDP_OVER_IPV4 = 0x12;
const UDP_OVER_IPV6 = 0x22;
/** Header sizes: 16 fixed bytes + 2 addresses + 2 ports. */
export const PROXY_V2_IPV4_LENGTH = 16 + 4 + 4 + 2 + 2;
export const PROXY_V2_IPV6_LENGTH = 16 + 16 + 16 + 2 + 2;

/** An endpoint as text: `family` is optional (taken from the text when absent). */
export type ProxyEndpoint = Pick<WireAddress, "address" | "port"> & { family?: 4 | 6 };

/**
 * The v2 header saying a datagram came from `source` (the client) to `destination` (the target).
 * Throws RangeError for text that is no IP literal or a port outside 0..65535: the caller passes
 * addresses it already holds as literals, so that is a bug, not bad input.
 */
export function proxyV2Header(source: ProxyEndpoint, destination: ProxyEndpoint): Uint8Array {
  const src = ipBytes(source);
  const dst = ipBytes(destination);
  const v4Src = src.length === 4 ? src : unmapped(src);
  const v4Dst = dst.length === 4 ? dst : unmapped(dst);
  const ipv4 = v4Src !== undefined && v4Dst !== undefined;
  const header = new Uint8Array(ipv4 ? PROXY_V2_IPV4_LENGTH : PROXY_V2_IPV6_LENGTH);
  header.set(PROXY_V2_SIGNATURE, 0);
  header[12] = VERSION_PROXY;
  header[13] = ipv4 ? UDP_OVER_IPV4 : UDP_OVER_IPV6;
  const addressLength = header.length - 16;
  header[14] = addressLength >> 8;
  header[15] = addressLength & 0xff;
  const size = ipv4 ? 4 : 16;
  header.set(ipv4 ? (v4Src as Uint8Array) : mapped(src), 16);
  header.set(ipv4 ? (v4Dst as Uint8Array) : mapped(dst), 16 + size);
  const ports = 16 + 2 * size;
  writePort(header, ports, source.port);
  writePort(header, ports + 2, destination.port);
  return header;
}

/**
 * `payload` with `header` in front, in one new buffer; undefined when the result would not fit in
 * one UDP datagram over IPv4 (65,507 bytes), which the caller drops.
 */
export function withProxyHeader(header: Uint8Array, payload: Uint8Array): Uint8Array | undefined {
  if (header.length + payload.length > MAX_UDP_PAYLOAD) return undefined;
  const out = new Uint8Array(header.length + payload.length);
  out.set(header, 0);
  out.set(payload, header.length);
  return out;
}

/** Largest UDP payload over IPv4 (65,535 − 8 UDP − 20 IP). */
export const MAX_UDP_PAYLOAD = 65_507;

function ipBytes(endpoint: ProxyEndpoint): Uint8Array {
  const family = endpoint.family ?? (endpoint.address.includes(":") ? 6 : 4);
  const bytes = family === 4 ? parseIPv4(endpoint.address) : parseIPv6(endpoint.address);
  if (!bytes) throw new RangeError(`PROXY header: not an IPv${family} address: ${endpoint.address}`);
  return bytes;
}

function unmapped(ipv6: Uint8Array): Uint8Array | undefined {
  for (let i = 0; i < 10; i++) if (ipv6[i] !== 0) return undefined;
  if (ipv6[10] !== 0xff || ipv6[11] !== 0xff) return undefined;
  return ipv6.subarray(12);
}

function mapped(ip: Uint8Array): Uint8Array {
  if (ip.length === 16) return ip;
  const out = new Uint8Array(16);
  out[10] = 0xff;
  out[11] = 0xff;
  out.set(ip, 12);
  return out;
}

function writePort(out: Uint8Array, at: number, port: number): void {
  if (!Number.isInteger(port) || port < 0 || port > 0xffff) throw new RangeError(`PROXY header: bad port ${port}`);
  out[at] = port >> 8;
  out[at + 1] = port & 0xff;
}
