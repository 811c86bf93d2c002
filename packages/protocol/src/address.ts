/** IP address text <-> bytes, for the client address carried in FLOW_OPEN. No sockets involved. */
import { ProtocolError, type WireAddress } from "./frames.js";

export function parseIPv4(text: string): Uint8Array | undefined {
  const parts = text.split(".");
  if (parts.length !== 4) return undefined;
  const out = new Uint8Array(4);
  for (let i = 0; i < 4; i++) {
    const p = parts[i];
    if (!/^\d{1,3}$/.test(p)) return undefined;
    const n = Number(p);
    if (n > 255) return undefined;
    out[i] = n;
  }
  return out;
}

export function parseIPv6(text: string): Uint8Array | undefined {
  let s = text;
  const zone = s.indexOf("%");
  if (zone >= 0) s = s.slice(0, zone); // a scope id is local to the host that printed it
  const out = new Uint8Array(16);
  // An embedded IPv4 tail (::ffff:1.2.3.4) fills the last 4 bytes.
  let tail: Uint8Array | undefined;
  const lastColon = s.lastIndexOf(":");
  if (s.indexOf(".", lastColon) >= 0) {
    tail = parseIPv4(s.slice(lastColon + 1));
    if (!tail) return undefined;
    s = s.slice(0, lastColon + 1) + "0:0";
  }
  const halves = s.split("::");
  if (halves.length > 2) return undefined;
  const head = halves[0] === "" ? [] : halves[0].split(":");
  const rest = halves.length === 2 ? (halves[1] === "" ? [] : halves[1].split(":")) : [];
  const groups = head.length + rest.length;
  if (halves.length === 1 ? groups !== 8 : groups > 7) return undefined;
  const write = (list: string[], at: number) => {
    for (let i = 0; i < list.length; i++) {
      if (!/^[0-9a-fA-F]{1,4}$/.test(list[i])) return false;
      const v = parseInt(list[i], 16);
      out[(at + i) * 2] = v >> 8;
      out[(at + i) * 2 + 1] = v & 0xff;
    }
    return true;
  };
  if (!write(head, 0) || !write(rest, 8 - rest.length)) return undefined;
  if (tail) out.set(tail, 12);
  return out;
}

export function formatIPv4(bytes: Uint8Array): string {
  return `${bytes[0]}.${bytes[1]}.${bytes[2]}.${bytes[3]}`;
}

/** RFC 5952 text: lower case, longest run of zero groups (length >= 2) compressed, mapped IPv4 dotted. */
export function formatIPv6(bytes: Uint8Array): string {
  const groups: number[] = [];
  for (let i = 0; i < 8; i++) groups.push((bytes[i * 2] << 8) | bytes[i * 2 + 1]);
  if (groups.slice(0, 5).every((g) => g === 0) && groups[5] === 0xffff) {
    return `::ffff:${formatIPv4(bytes.subarray(12))}`;
  }
  let bestStart = -1;
  let bestLen = 0;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen && j - i >= 2) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (bestStart < 0) return hex.join(":");
  return `${hex.slice(0, bestStart).join(":")}::${hex.slice(bestStart + bestLen).join(":")}`;
}

/** Encodes an address as FLOW_OPEN carries it; throws ProtocolError for text that is no IP literal. */
export function addressBytes(address: WireAddress): Uint8Array {
  const bytes = address.family === 4 ? parseIPv4(address.address) : parseIPv6(address.address);
  if (!bytes) throw new ProtocolError("bad-address", `not an IPv${address.family} address: ${address.address}`);
  return bytes;
}

/** Family of an IP literal, or undefined when the text is not one (a host name, say). */
export function ipFamily(text: string): 4 | 6 | undefined {
  if (parseIPv4(text)) return 4;
  if (text.includes(":") && parseIPv6(text)) return 6;
  return undefined;
}
