/**
 * --udp-buffer and the kernel-queue figures in the operations output, without processes: the flag's
 * parsing, the sender's per-flow cap (max-flows × size within 1 GiB), and the per-mapping drops in
 * the metrics registry.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { FLOW_BUFFERS_TOTAL, FLOW_SOCKET_BUFFER, flowSocketBuffer, UserError } from "@mcudpt/core";
import { type Stats, zeroDrops } from "@mcudpt/protocol";
import type { Observed } from "../../apps/cli/src/ops/observe.ts";
import { udpBufferOption } from "../../apps/cli/src/ops/udp-buffer.ts";

describe("--udp-buffer", () => {
  it("takes a size (64k to 1g), absent means the role's default", () => {
    assert.equal(udpBufferOption({}), undefined);
    assert.equal(udpBufferOption({ "udp-buffer": "4m" }), 4 * 1024 * 1024);
    assert.equal(udpBufferOption({ "udp-buffer": "262144" }), 262_144);
    assert.throws(() => udpBufferOption({ "udp-buffer": "1k" }), UserError);
    assert.throws(() => udpBufferOption({ "udp-buffer": "2g" }), UserError);
    assert.throws(() => udpBufferOption({ "udp-buffer": "lots" }), /--udp-buffer/);
  });

  it("is capped per flow socket so that max-flows × size stays within 1 GiB", () => {
    assert.deepEqual(flowSocketBuffer(undefined, 4096), { bytes: FLOW_SOCKET_BUFFER, capped: false });
    assert.equal(4096 * FLOW_SOCKET_BUFFER, FLOW_BUFFERS_TOTAL);
    assert.deepEqual(flowSocketBuffer(undefined, 8192), { bytes: 128 * 1024, capped: true });
    assert.deepEqual(flowSocketBuffer(1024 * 1024, 4096), { bytes: 256 * 1024, capped: true });
    assert.deepEqual(flowSocketBuffer(1024 * 1024, 100), { bytes: 1024 * 1024, capped: false });
    // Capped below 128 KiB a flow socket keeps the system default rather than a smaller buffer.
    assert.deepEqual(flowSocketBuffer(undefined, 20_000), { bytes: undefined, capped: true });
  });
});

describe("metrics", () => {
  it("shows kernel-queue drops in the totals and per mapping", async () => {
    const drops = { ...zeroDrops(), "kernel-queue": 5 };
    const stats: Stats = {
      udpIn: 10,
      udpInBytes: 1000,
      udpOut: 0,
      udpOutBytes: 0,
      flowsOpened: 1,
      flowsClosed: 0,
      flowsEvicted: 0,
      accepted: 1,
      handshakeFailures: 0,
      drops,
      dropsWithoutMapping: zeroDrops(),
      rttMs: undefined,
    };
    const mapping = (name: string, d: typeof drops) => ({
      name,
      label: name,
      flows: 0,
      flowsOpened: 0,
      udpIn: 0,
      udpInBytes: 0,
      udpOut: 0,
      udpOutBytes: 0,
      drops: d,
    });
    const observed: Observed = {
      role: "receiver",
      transport: "node",
      stats,
      peerConnected: () => true,
      flowCount: () => 0,
      reconnects: () => 0,
      flows: () => [],
      mappings: () => [mapping("dns", zeroDrops()), mapping("wg", drops)],
    };
    const { metricsRegistry } = await import("../../apps/cli/src/ops/metrics.ts");
    const text = await metricsRegistry(observed, { version: "test" }).metrics();
    assert.match(text, /^mcudpt_drops_total\{reason="kernel-queue"\} 5$/m);
    assert.match(text, /^mcudpt_mapping_drops_total\{mapping="wg",reason="kernel-queue"\} 5$/m);
    assert.match(text, /^mcudpt_mapping_drops_total\{mapping="dns",reason="kernel-queue"\} 0$/m);
  });
});
