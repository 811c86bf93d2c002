/**
 * IPv6 end to end, every transport: a receiver listening on [::1] (UDP and TCP) with a sender dialling
 * it over IPv6; an IPv4 client through a dual-stack receiver (UDP bound to ::) to an IPv6 target; an
 * IPv6 client to an IPv4 target. Loopback addresses only (127.0.0.1, ::1). Skipped, with the reason,
 * on a host without an IPv6 loopback.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { Transport } from "@mcudpt/core";
import {
  type AddressedTunnel,
  hasIPv6Loopback,
  LOOPBACK6,
  startAddressedClient,
  startAddressedTunnel,
  startTarget,
} from "../helpers/addressed.js";
import { availableTransports } from "../helpers/transports.js";
import { LOOPBACK, text } from "../helpers/tunnel.js";

const NO_IPV6 = "no IPv6 loopback (::1) on this host";

/** Runs `body` with a target on `targetHost` and a tunnel whose receiver listens on `udpHost`/`tcpHost`. */
async function withTunnel(
  transport: Transport,
  hosts: { udp: string; tcp: string; target: string },
  body: (tunnel: AddressedTunnel, target: Awaited<ReturnType<typeof startTarget>>) => Promise<void>,
): Promise<void> {
  const target = await startTarget(transport, hosts.target);
  try {
    const tunnel = await startAddressedTunnel(transport, {
      udp: { host: hosts.udp, port: 0 },
      tcp: { host: hosts.tcp, port: 0 },
      target: { host: hosts.target, port: target.port },
    });
    try {
      await body(tunnel, target);
    } finally {
      await tunnel.close();
    }
  } finally {
    target.close();
  }
}

for (const transport of availableTransports()) {
  describe(`IPv6 over the ${transport.name} transport`, () => {
    it("receiver on [::1] (UDP and TCP): IPv6 clients reach an IPv6 target, each its own replies", async (t) => {
      if (!(await hasIPv6Loopback(transport))) return t.skip(NO_IPV6);
      await withTunnel(transport, { udp: LOOPBACK6, tcp: LOOPBACK6, target: LOOPBACK6 }, async (tunnel, target) => {
        assert.match(tunnel.receiverLog.lines.join("\n"), /\[::1\]/, "the receiver reports its [::1] address");
        const server = { host: LOOPBACK6, port: tunnel.receiver.udpPort };
        const clients = await Promise.all(
          Array.from({ length: 3 }, () => startAddressedClient(transport, LOOPBACK6, server)),
        );
        try {
          for (let round = 0; round < 3; round++) {
            await Promise.all(
              clients.map(async (client, i) =>
                assert.equal(text(await client.request(`v6 ${i} ${round}`)), `v6 ${i} ${round}`),
              ),
            );
          }
          clients.forEach((client, i) => {
            for (const reply of client.replies) assert.match(text(reply), new RegExp(`^v6 ${i} `));
          });
          assert.equal(tunnel.sender.machine.flows.size, 3);
          assert.ok(
            target.seen.every((s) => s.address === LOOPBACK6),
            "the target is reached over IPv6",
          );
        } finally {
          for (const client of clients) client.close();
        }
      });
    });

    it("IPv4 client through a dual-stack receiver (UDP on ::) to an IPv6 target", async (t) => {
      if (!(await hasIPv6Loopback(transport))) return t.skip(NO_IPV6);
      await withTunnel(transport, { udp: "::", tcp: LOOPBACK6, target: LOOPBACK6 }, async (tunnel, target) => {
        const client = await startAddressedClient(transport, LOOPBACK, {
          host: LOOPBACK,
          port: tunnel.receiver.udpPort,
        });
        try {
          assert.equal(text(await client.request("v4 in, v6 out")), "v4 in, v6 out");
          const flows = [...tunnel.sender.machine.flows.values()];
          assert.equal(flows.length, 1);
          // A dual-stack socket sees the IPv4 client in its IPv4-mapped form; the tunnel carries it as such.
          assert.equal(`${flows[0].client.address}:${flows[0].client.port}`, `::ffff:127.0.0.1:${client.socket.port}`);
          assert.ok(target.seen.every((s) => s.address === LOOPBACK6));
        } finally {
          client.close();
        }
      });
    });

    it("IPv6 client through a receiver on [::1] to an IPv4 target", async (t) => {
      if (!(await hasIPv6Loopback(transport))) return t.skip(NO_IPV6);
      await withTunnel(transport, { udp: LOOPBACK6, tcp: LOOPBACK6, target: LOOPBACK }, async (tunnel, target) => {
        const client = await startAddressedClient(transport, LOOPBACK6, {
          host: LOOPBACK6,
          port: tunnel.receiver.udpPort,
        });
        try {
          assert.equal(text(await client.request("v6 in, v4 out")), "v6 in, v4 out");
          const big = new Uint8Array(60_000).map((_, i) => i & 0xff);
          assert.deepEqual(await client.request(big, 10_000), big, "a large datagram too");
          const [flow] = tunnel.sender.machine.flows.values();
          assert.equal(`[${flow.client.address}]:${flow.client.port}`, `[::1]:${client.socket.port}`);
          assert.ok(
            target.seen.every((s) => s.address === LOOPBACK),
            "the target is reached over IPv4",
          );
        } finally {
          client.close();
        }
      });
    });
  });
}
