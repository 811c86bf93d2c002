/**
 * --proxy-protocol (sender): every datagram reaching the target starts with a PROXY protocol v2 header
 * naming the real client. The target here parses the header the way a PROXY-aware service would
 * (independently of the encoder), checks it names the client, strips it and echoes the payload.
 * Every transport, real sockets on 127.0.0.1 (and ::1 when the host has it).
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { formatIPv4, formatIPv6 } from "@mcudpt/protocol";
import {
  hasIPv6Loopback,
  LOOPBACK6,
  type Seen,
  startAddressedClient,
  startAddressedTunnel,
  startTarget,
} from "../helpers/addressed.js";
import { availableTransports } from "../helpers/transports.js";
import { eventually, LOOPBACK, text } from "../helpers/tunnel.js";

const SIGNATURE = [0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a];

interface ProxyInfo {
  family: "INET" | "INET6";
  source: string;
  sourcePort: number;
  destination: string;
  destinationPort: number;
  payload: Uint8Array;
}

/** Parses a PROXY v2 datagram (command PROXY, UDP over IPv4/IPv6); undefined when it is not one. */
function parseProxyV2(data: Uint8Array): ProxyInfo | undefined {
  if (data.length < 16 || SIGNATURE.some((b, i) => data[i] !== b)) return undefined;
  if (data[12] !== 0x21) return undefined;
  const length = (data[14] << 8) | data[15];
  if (data.length < 16 + length) return undefined;
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  if (data[13] === 0x12 && length >= 12) {
    return {
      family: "INET",
      source: formatIPv4(data.subarray(16, 20)),
      destination: formatIPv4(data.subarray(20, 24)),
      sourcePort: view.getUint16(24),
      destinationPort: view.getUint16(26),
      payload: data.subarray(16 + length),
    };
  }
  if (data[13] === 0x22 && length >= 36) {
    return {
      family: "INET6",
      source: formatIPv6(data.subarray(16, 32)),
      destination: formatIPv6(data.subarray(32, 48)),
      sourcePort: view.getUint16(48),
      destinationPort: view.getUint16(50),
      payload: data.subarray(16 + length),
    };
  }
  return undefined;
}

/** A PROXY-aware echo target: strips the header and echoes the payload; drops what has none. */
const proxyEcho = (data: Uint8Array) => parseProxyV2(data)?.payload;

function headersFrom(seen: Seen[]): ProxyInfo[] {
  return seen.map((s) => {
    const info = parseProxyV2(s.data);
    assert.ok(info, "every datagram at the target carries a PROXY v2 header");
    return info;
  });
}

for (const transport of availableTransports()) {
  describe(`--proxy-protocol over the ${transport.name} transport`, () => {
    it("tells the target each client's real address and port, and the payload arrives intact after it", async () => {
      const target = await startTarget(transport, LOOPBACK, proxyEcho);
      const tunnel = await startAddressedTunnel(transport, {
        udp: { host: LOOPBACK, port: 0 },
        tcp: { host: LOOPBACK, port: 0 },
        target: { host: LOOPBACK, port: target.port },
        proxyProtocol: true,
      });
      const server = { host: LOOPBACK, port: tunnel.receiver.udpPort };
      const clients = await Promise.all(
        Array.from({ length: 3 }, () => startAddressedClient(transport, LOOPBACK, server)),
      );
      try {
        for (const [i, client] of clients.entries()) {
          assert.equal(text(await client.request(`client ${i} says hi`)), `client ${i} says hi`);
          assert.equal(text(await client.request(`client ${i} again`)), `client ${i} again`);
        }
        const headers = headersFrom(target.seen);
        for (const [i, client] of clients.entries()) {
          const mine = headers.filter((h) => text(h.payload).startsWith(`client ${i} `));
          assert.ok(mine.length >= 2);
          for (const h of mine) {
            assert.equal(h.family, "INET");
            assert.equal(`${h.source}:${h.sourcePort}`, `${LOOPBACK}:${client.socket.port}`, "the real client");
            assert.equal(`${h.destination}:${h.destinationPort}`, `${LOOPBACK}:${target.port}`, "the target");
          }
        }
        // The UDP source the target sees is the sender's flow socket, one per client: not the client.
        const sources = new Set(target.seen.map((s) => s.port));
        assert.equal(sources.size, clients.length);
        for (const client of clients) assert.ok(!sources.has(client.socket.port));
      } finally {
        for (const client of clients) client.close();
        await tunnel.close();
        target.close();
      }
    });

    it("drops (and counts) a datagram that would exceed 65,507 bytes with the header", async () => {
      const target = await startTarget(transport, LOOPBACK, proxyEcho);
      const tunnel = await startAddressedTunnel(transport, {
        udp: { host: LOOPBACK, port: 0 },
        tcp: { host: LOOPBACK, port: 0 },
        target: { host: LOOPBACK, port: target.port },
        proxyProtocol: true,
      });
      const client = await startAddressedClient(transport, LOOPBACK, { host: LOOPBACK, port: tunnel.receiver.udpPort });
      try {
        assert.equal(text(await client.request("open the flow")), "open the flow");
        const fits = new Uint8Array(65_507 - 28).fill(7);
        assert.equal((await client.request(fits, 10_000)).length, fits.length, "65,479 bytes + 28 still fit");
        client.send(new Uint8Array(65_507).fill(9));
        await eventually(() => tunnel.sender.machine.stats.drops["too-large"] >= 1, "drop counted as too-large");
        assert.ok(target.seen.every((s) => s.data.length <= 65_507));
        assert.equal(text(await client.request("still fine")), "still fine", "the flow goes on");
      } finally {
        client.close();
        await tunnel.close();
        target.close();
      }
    });

    it("names an IPv6 client and target with an INET6 header", async (t) => {
      if (!(await hasIPv6Loopback(transport))) return t.skip("no IPv6 loopback on this host");
      const target = await startTarget(transport, LOOPBACK6, proxyEcho);
      const tunnel = await startAddressedTunnel(transport, {
        udp: { host: LOOPBACK6, port: 0 },
        tcp: { host: LOOPBACK6, port: 0 },
        target: { host: LOOPBACK6, port: target.port },
        proxyProtocol: true,
      });
      const client = await startAddressedClient(transport, LOOPBACK6, {
        host: LOOPBACK6,
        port: tunnel.receiver.udpPort,
      });
      try {
        assert.equal(text(await client.request("v6 hello")), "v6 hello");
        const [h] = headersFrom(target.seen);
        assert.equal(h.family, "INET6");
        assert.equal(`[${h.source}]:${h.sourcePort}`, `[::1]:${client.socket.port}`);
        assert.equal(`[${h.destination}]:${h.destinationPort}`, `[::1]:${target.port}`);
      } finally {
        client.close();
        await tunnel.close();
        target.close();
      }
    });

    it("prepends nothing without the option", async () => {
      const target = await startTarget(transport, LOOPBACK);
      const tunnel = await startAddressedTunnel(transport, {
        udp: { host: LOOPBACK, port: 0 },
        tcp: { host: LOOPBACK, port: 0 },
        target: { host: LOOPBACK, port: target.port },
      });
      const client = await startAddressedClient(transport, LOOPBACK, { host: LOOPBACK, port: tunnel.receiver.udpPort });
      try {
        assert.equal(text(await client.request("plain")), "plain");
        assert.ok(target.seen.length >= 1);
        for (const s of target.seen) assert.equal(text(s.data), "plain", "the payload as sent, nothing before it");
      } finally {
        client.close();
        await tunnel.close();
        target.close();
      }
    });
  });
}
