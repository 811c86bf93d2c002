/**
 * PROXY protocol v2 headers, byte for byte against the layout of HAProxy's proxy-protocol.txt §2.2:
 * signature (12) | ver/cmd 0x21 | family/transport | length (2, big endian) | src addr | dst addr |
 * src port | dst port. These vectors were also decoded with the npm parsers proxy-protocol-js 4.0.6
 * and @balena/proxy-protocol-parser 1.0.2 (same addresses, ports, family and DGRAM), once, by hand.
 */
import { describe, expect, test } from "bun:test";
import {
  fromHex,
  MAX_UDP_PAYLOAD,
  PROXY_V2_IPV4_LENGTH,
  PROXY_V2_IPV6_LENGTH,
  proxyV2Header,
  toHex,
  withProxyHeader,
} from "../src/index.ts";

const SIG = "0d0a0d0a000d0a515549540a";

const VECTORS: Array<{ name: string; src: [string, number]; dst: [string, number]; hex: string }> = [
  {
    name: "IPv4 client to an IPv4 target: UDP over IPv4, 12 address bytes",
    src: ["192.0.2.1", 56324],
    dst: ["198.51.100.7", 53],
    hex: `${SIG} 21 12 000c c0000201 c6336407 dc04 0035`,
  },
  {
    name: "IPv6 client to an IPv6 target: UDP over IPv6, 36 address bytes",
    src: ["2001:db8::1", 4433],
    dst: ["2001:db8::53", 53],
    hex: `${SIG} 21 22 0024 20010db8000000000000000000000001 20010db8000000000000000000000053 1151 0035`,
  },
  {
    name: "IPv4 client to an IPv6 target: IPv6 family, client IPv4-mapped",
    src: ["192.0.2.1", 1000],
    dst: ["2001:db8::53", 53],
    hex: `${SIG} 21 22 0024 00000000000000000000ffffc0000201 20010db8000000000000000000000053 03e8 0035`,
  },
  {
    name: "IPv6 client to an IPv4 target: IPv6 family, target IPv4-mapped",
    src: ["::1", 65535],
    dst: ["127.0.0.1", 0],
    hex: `${SIG} 21 22 0024 00000000000000000000000000000001 00000000000000000000ffff7f000001 ffff 0000`,
  },
  {
    name: "IPv4 client seen as ::ffff:a.b.c.d on a dual-stack socket, IPv4 target: plain IPv4",
    src: ["::ffff:192.0.2.1", 40000],
    dst: ["198.51.100.7", 123],
    hex: `${SIG} 21 12 000c c0000201 c6336407 9c40 007b`,
  },
  {
    name: "two IPv4-mapped addresses: plain IPv4",
    src: ["::ffff:127.0.0.1", 1],
    dst: ["::ffff:127.0.0.2", 2],
    hex: `${SIG} 21 12 000c 7f000001 7f000002 0001 0002`,
  },
];

describe("proxyV2Header", () => {
  for (const v of VECTORS) {
    test(v.name, () => {
      const header = proxyV2Header({ address: v.src[0], port: v.src[1] }, { address: v.dst[0], port: v.dst[1] });
      expect(toHex(header)).toBe(toHex(fromHex(v.hex)));
      // The length field is what follows the 16 fixed bytes.
      expect((header[14] << 8) | header[15]).toBe(header.length - 16);
    });
  }

  test("sizes: 28 bytes for IPv4, 52 for IPv6", () => {
    expect(PROXY_V2_IPV4_LENGTH).toBe(28);
    expect(PROXY_V2_IPV6_LENGTH).toBe(52);
  });

  test("an explicit family is honoured (a WireAddress passes straight in)", () => {
    const header = proxyV2Header({ family: 4, address: "10.0.0.1", port: 1 }, { family: 6, address: "::2", port: 2 });
    expect(header[13]).toBe(0x22);
    expect(header.length).toBe(PROXY_V2_IPV6_LENGTH);
  });

  test("text that is no IP literal, or a bad port, throws RangeError", () => {
    expect(() => proxyV2Header({ address: "localhost", port: 1 }, { address: "127.0.0.1", port: 1 })).toThrow(
      RangeError,
    );
    expect(() => proxyV2Header({ address: "127.0.0.1", port: 1 }, { address: "::g", port: 1 })).toThrow(RangeError);
    expect(() => proxyV2Header({ address: "127.0.0.1", port: 65536 }, { address: "127.0.0.1", port: 1 })).toThrow(
      RangeError,
    );
    expect(() => proxyV2Header({ address: "127.0.0.1", port: 1 }, { address: "127.0.0.1", port: -1 })).toThrow(
      RangeError,
    );
  });
});

describe("withProxyHeader", () => {
  const header = proxyV2Header({ address: "127.0.0.1", port: 1 }, { address: "127.0.0.1", port: 2 });

  test("prepends the header to the payload in a new buffer", () => {
    const payload = Uint8Array.of(1, 2, 3);
    const out = withProxyHeader(header, payload);
    expect(out && toHex(out)).toBe(`${toHex(header)}010203`);
    expect(withProxyHeader(header, new Uint8Array(0))?.length).toBe(header.length);
  });

  test("refuses a result larger than one IPv4 UDP datagram (65,507 bytes)", () => {
    expect(withProxyHeader(header, new Uint8Array(MAX_UDP_PAYLOAD - header.length))?.length).toBe(MAX_UDP_PAYLOAD);
    expect(withProxyHeader(header, new Uint8Array(MAX_UDP_PAYLOAD - header.length + 1))).toBeUndefined();
  });
});
