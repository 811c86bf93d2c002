/**
 * The `from="…"` option of an authorized_keys line, as ssh has it: a comma-separated list of source
 * addresses and CIDR blocks, IPv4 or IPv6, any of them negated with `!`. A source matches when no
 * negated pattern matches it and at least one plain one does. Host names and wildcards are refused
 * (a DNS answer is not an identity), so a typo cannot silently widen the list.
 */
import { parseIPv4, parseIPv6 } from "@mcudpt/protocol";

interface Block {
  bytes: Uint8Array;
  bits: number;
  negated: boolean;
}

/** Parses the list; throws an Error naming the bad pattern. */
export function sourceMatcher(list: string): (address: string) => boolean {
  const blocks = list.split(",").map((raw) => parsePattern(raw.trim()));
  if (blocks.length === 0) throw new Error("an empty from= list");
  return (address) => {
    const bytes = addressBytes(address);
    if (bytes === undefined) return false;
    let allowed = false;
    for (const block of blocks) {
      if (!inBlock(bytes, block)) continue;
      if (block.negated) return false;
      allowed = true;
    }
    return allowed;
  };
}

function parsePattern(text: string): Block {
  const negated = text.startsWith("!");
  const body = negated ? text.slice(1) : text;
  const slash = body.indexOf("/");
  const host = slash < 0 ? body : body.slice(0, slash);
  const bytes = addressBytes(host);
  if (bytes === undefined) {
    throw new Error(`"${text}" is not an IP address or CIDR block (host names and wildcards are not supported)`);
  }
  const max = bytes.length * 8;
  const bits = slash < 0 ? max : Number(body.slice(slash + 1));
  if (!Number.isInteger(bits) || bits < 0 || bits > max || (slash >= 0 && !/^\d+$/.test(body.slice(slash + 1)))) {
    throw new Error(`"${text}": the prefix length must be 0 to ${max}`);
  }
  return { bytes, bits, negated };
}

/** 4 bytes for IPv4 (and IPv4-mapped IPv6, as a dual-stack socket reports IPv4 peers), else 16. */
function addressBytes(text: string): Uint8Array | undefined {
  const v4 = parseIPv4(text);
  if (v4) return v4;
  const v6 = parseIPv6(text);
  if (!v6) return undefined;
  const mapped = v6.subarray(0, 10).every((b) => b === 0) && v6[10] === 0xff && v6[11] === 0xff;
  return mapped ? v6.slice(12) : v6;
}

function inBlock(bytes: Uint8Array, block: Block): boolean {
  if (bytes.length !== block.bytes.length) return false;
  let bits = block.bits;
  for (let i = 0; bits > 0; i++, bits -= 8) {
    const mask = bits >= 8 ? 0xff : (0xff << (8 - bits)) & 0xff;
    if ((bytes[i] & mask) !== (block.bytes[i] & mask)) return false;
  }
  return true;
}
