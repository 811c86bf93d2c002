/**
 * What a running machine takes from a configuration reload: new flow limits (updateLimits), new
 * client limits on the receiver (updateClientLimits), and the end of a session whose key the host
 * no longer admits (withdrawPeers). Driven by the in-memory bench: no sockets, a number for a clock.
 */
import { describe, expect, test } from "bun:test";
import { CloseCode, DEFAULTS, FlowCloseReason, FrameType, type Limits } from "../src/index.ts";
import { closeCodes, DIRECTIONS, framesOfType, pair, RECEIVER_KEY, SENDER_KEY } from "./harness.ts";

const limits = (overrides: Partial<Limits> = {}): Limits => ({
  idleTimeoutMs: DEFAULTS.idleTimeoutMs,
  maxFlows: DEFAULTS.maxFlows,
  maxBufferBytes: DEFAULTS.maxBufferBytes,
  maxDelayMs: 0,
  mappings: [{}],
  ...overrides,
});

const hex = (bytes: Uint8Array) => Buffer.from(bytes).toString("hex");

describe("updateLimits", () => {
  test("a lowered --max-flows evicts the least recently active flows at once, on both sides", () => {
    const { net, receiver, sender, wire } = pair({ secret: "s" });
    for (let port = 1; port <= 5; port++) {
      net.now += 1;
      receiver.clientDatagram("192.0.2.1", port, new Uint8Array([port]), net.now);
    }
    net.pump();
    expect(receiver.flows.size).toBe(5);
    expect(sender.flows.size).toBe(5);
    receiver.updateLimits(limits({ maxFlows: 2 }), net.now);
    net.pump();
    expect(receiver.flows.size).toBe(2);
    expect(sender.flows.size).toBe(2);
    // The oldest three went, told to the sender as evicted; the two newest stay.
    const closes = framesOfType(wire.sentBy(receiver), FrameType.FlowClose);
    expect(closes.map((f) => [f.flowId, f.reason])).toEqual([
      [1, FlowCloseReason.Evicted],
      [2, FlowCloseReason.Evicted],
      [3, FlowCloseReason.Evicted],
    ]);
    expect([...receiver.flows.values()].map((flow) => flow.port)).toEqual([4, 5]);
    // And a new client past the new limit evicts, as at start-up.
    receiver.clientDatagram("192.0.2.1", 6, new Uint8Array([6]), net.now);
    net.pump();
    expect([...receiver.flows.values()].map((flow) => flow.port)).toEqual([5, 6]);
  });

  test("a shorter idle timeout closes the flows it makes idle at the next tick; a per-mapping one wins", () => {
    const { net, receiver, sender } = pair({ secret: "s" });
    receiver.clientDatagram("192.0.2.1", 1, new Uint8Array([1]), net.now);
    net.pump();
    net.advance(10_000);
    expect(receiver.flows.size).toBe(1);
    receiver.updateLimits(limits({ idleTimeoutMs: 5_000 }), net.now);
    expect(receiver.nextTimeout()).toBeLessThanOrEqual(net.now);
    net.advance(1);
    expect(receiver.flows.size).toBe(0);
    expect(sender.flows.size).toBe(0);
    // The mapping's own timeout takes precedence over the side's.
    receiver.updateLimits(limits({ idleTimeoutMs: 5_000, mappings: [{ idleTimeoutMs: 60_000 }] }), net.now);
    receiver.clientDatagram("192.0.2.1", 2, new Uint8Array([1]), net.now);
    net.pump();
    net.advance(30_000);
    expect(receiver.flows.size).toBe(1);
  });

  test("a bad value changes nothing (RangeError); limits for another number of mappings are refused", () => {
    const { net, receiver } = pair({ secret: "s" });
    receiver.clientDatagram("192.0.2.1", 1, new Uint8Array([1]), net.now);
    receiver.clientDatagram("192.0.2.1", 2, new Uint8Array([1]), net.now);
    net.pump();
    expect(() => receiver.updateLimits(limits({ maxFlows: 1, idleTimeoutMs: 0 }), net.now)).toThrow(RangeError);
    expect(() => receiver.updateLimits(limits({ maxFlows: 1, mappings: [{}, {}] }), net.now)).toThrow(RangeError);
    expect(() => receiver.updateLimits(limits({ maxFlows: 1, mappings: [{ maxFlows: 0 }] }), net.now)).toThrow(
      RangeError,
    );
    expect(receiver.flows.size).toBe(2);
    receiver.clientDatagram("192.0.2.1", 3, new Uint8Array([1]), net.now);
    net.pump();
    expect(receiver.flows.size).toBe(3); // still the old limit (4096): nothing was applied
  });
});

describe("updateClientLimits", () => {
  test("a new-flow rate lowered to 1/s: the next source's burst is 2 flows; 0 lifts the limit", () => {
    const { net, receiver } = pair({ secret: "s" });
    receiver.updateClientLimits({ newFlowsPerSecond: 1, amplificationLimit: 10 });
    for (let port = 1; port <= 5; port++) receiver.clientDatagram("192.0.2.9", port, new Uint8Array([1]), net.now);
    net.pump();
    expect(receiver.flows.size).toBe(2);
    expect(receiver.stats.drops["rate-limited"]).toBe(3);
    receiver.updateClientLimits({ newFlowsPerSecond: 0, amplificationLimit: 10 });
    for (let port = 6; port <= 10; port++) receiver.clientDatagram("192.0.2.9", port, new Uint8Array([1]), net.now);
    net.pump();
    expect(receiver.flows.size).toBe(7);
  });

  test("a new amplification limit applies to flows opened after it", () => {
    const { net, receiver, sender } = pair({ secret: "s" });
    const replies = (flowId: number, count: number) => {
      for (let i = 0; i < count; i++) sender.targetDatagram(flowId, new Uint8Array(1), net.now);
      net.pump();
    };
    receiver.clientDatagram("192.0.2.1", 1, new Uint8Array(1), net.now);
    net.pump();
    receiver.updateClientLimits({ newFlowsPerSecond: 1000, amplificationLimit: 2 });
    receiver.clientDatagram("192.0.2.1", 2, new Uint8Array(1), net.now);
    net.pump();
    replies(1, 5);
    replies(2, 5);
    const sent = (port: number) => net.of(receiver, "send-to-client").filter((o) => o.flow.port === port).length;
    expect(sent(1)).toBe(5); // opened under the old cap of 10
    expect(sent(2)).toBe(2); // the new cap
  });
});

for (const dir of DIRECTIONS) {
  describe(`withdrawPeers ${dir.name}`, () => {
    test("a key no longer admitted: CLOSE(11) with the reason, flows dropped, no resume", () => {
      const { net, receiver, sender, acceptor, dialer, wire } = pair({ direction: dir });
      receiver.clientDatagram("192.0.2.1", 1, new Uint8Array([1]), net.now);
      net.pump();
      expect(sender.flows.size).toBe(1);
      const seen: Array<[string, string]> = [];
      // Still admitted: nothing happens.
      expect(acceptor.withdrawPeers(() => undefined)).toBe(0);
      const ended = acceptor.withdrawPeers((key, source) => {
        seen.push([hex(key), source]);
        return "key no longer authorized";
      });
      net.pump();
      expect(ended).toBe(1);
      expect(seen).toEqual([[hex((dialer === sender ? SENDER_KEY : RECEIVER_KEY).publicKey), "peer-of-1"]]);
      expect(closeCodes(wire.sentBy(acceptor))).toEqual([CloseCode.KeyRejected]);
      const close = framesOfType(wire.sentBy(acceptor), FrameType.Close)[0];
      expect(close.message).toBe("key no longer authorized");
      expect(acceptor.flows.size).toBe(0);
      expect(acceptor.session.peerConnected).toBe(false);
      // Nothing left to resume: the same dialer reconnecting is a new peer, asked about again.
      net.link(dir, receiver, sender, 2);
      expect(acceptor.session.awaitingApproval(2)).toBe(true);
    });

    test("the dialer withdraws nobody; nor does a side in secret mode", () => {
      const keyed = pair({ direction: dir });
      expect(keyed.dialer.withdrawPeers(() => "x")).toBe(0);
      expect(keyed.dialer.session.peerConnected).toBe(true);
      const secret = pair({ direction: dir, secret: "s" });
      expect(secret.acceptor.withdrawPeers(() => "x")).toBe(0);
      expect(secret.acceptor.session.peerConnected).toBe(true);
    });
  });
}
