/**
 * The machine owns every counter: whatever the reason a datagram is dropped (inside the machine, or
 * reported by the host), its flow, its mapping and the totals hear of it together, so the per-mapping
 * figures always sum to the totals (drops that name no mapping are kept apart).
 */
import { describe, expect, test } from "bun:test";
import {
  DROP_REASONS,
  ReceiverMachine,
  type SenderMachine,
  type Stats,
  type MappingStats,
  utf8,
} from "../src/index.ts";
import { L, Net, R, RECEIVER_KEY, SENDER_KEY, testCrypto } from "./harness.ts";
import { SenderMachine as Sender } from "../src/index.ts";

function sums(stats: Stats, mappings: readonly MappingStats[]) {
  for (const reason of DROP_REASONS) {
    const perMapping = mappings.reduce((sum, m) => sum + m.drops[reason], 0);
    expect({ reason, total: stats.drops[reason] }).toEqual({
      reason,
      total: perMapping + stats.dropsWithoutMapping[reason],
    });
  }
  const add = (key: "udpIn" | "udpInBytes" | "udpOut" | "udpOutBytes" | "flowsOpened") =>
    mappings.reduce((sum, m) => sum + m[key], 0);
  expect([add("udpIn"), add("udpInBytes"), add("udpOut"), add("udpOutBytes"), add("flowsOpened")]).toEqual([
    stats.udpIn,
    stats.udpInBytes,
    stats.udpOut,
    stats.udpOutBytes,
    stats.flowsOpened,
  ]);
}

for (const dir of [R, L]) {
  describe(`counters agree after drops of every kind ${dir.name}`, () => {
    test("each drop reason is driven at least once; per-mapping drops and traffic sum to the totals", () => {
      const net = new Net();
      const mappings = [{ name: "dns" }, { name: "ntp" }];
      const receiver = net.add(
        new ReceiverMachine(
          { identity: RECEIVER_KEY, mappings, newFlowsPerSecond: 1, maxBufferBytes: 4096 },
          testCrypto(1),
        ),
      );
      const sender: SenderMachine = net.add(
        new Sender({ identity: SENDER_KEY, mappings, maxBufferBytes: 4096 }, testCrypto(2)),
      );
      // no-sender: nobody connected yet.
      receiver.clientDatagram("192.0.2.1", 1, utf8("early"), net.now, 1);
      const wire = net.link(dir, receiver, sender, 1);
      const acceptor = dir.acceptor === "receiver" ? receiver : sender;
      acceptor.session.approve(1, true, net.now);
      net.pump();
      expect(receiver.session.peerConnected).toBe(true);
      // rate-limited: one new flow per second per source (burst 2), a third is dropped.
      for (const port of [1, 2, 3]) receiver.clientDatagram("192.0.2.1", port, utf8("q"), net.now, 0);
      // too-large
      receiver.clientDatagram("192.0.2.2", 7, new Uint8Array(70_000), net.now, 1);
      // a confirmed flow on mapping 1, and an unconfirmed one on mapping 0 for amplification
      receiver.clientDatagram("192.0.2.3", 9, utf8("a"), net.now + 1000, 1);
      receiver.clientDatagram("192.0.2.3", 9, utf8("b"), net.now + 1000, 1);
      net.pump();
      const opened = net.of(sender, "open-flow-socket");
      const unconfirmed = opened.find((o) => o.client.port === 1);
      const confirmed = opened.find((o) => o.client.port === 9);
      if (!unconfirmed || !confirmed) throw new Error("flows not opened");
      // amplification: 1 byte in allows 290 wire bytes out
      sender.targetDatagram(unconfirmed.flowId, new Uint8Array(1000), net.now);
      // unknown-flow: at the sender (a target datagram for no flow) and at the receiver (DATA for a closed flow)
      sender.targetDatagram(999_999, utf8("stray"), net.now);
      net.pump();
      // socket-error: reported by the host, on both sides
      sender.flowSocketError(confirmed.flowId, false);
      receiver.flows.droppedOutside("socket-error", { mappingId: 0 });
      const replies = net.of(receiver, "send-to-client");
      sender.targetDatagram(confirmed.flowId, utf8("reply"), net.now);
      net.pump();
      const reply = net.of(receiver, "send-to-client").at(-1);
      if (!reply || reply === replies.at(-1)) throw new Error("no reply");
      receiver.flows.sendFailed(reply.flow, reply.payload.length);
      // kernel-queue: the host read the kernel's counters
      receiver.flows.droppedOutside("kernel-queue", { mappingId: 1 }, 5);
      sender.flows.droppedOutside("kernel-queue", { flowId: confirmed.flowId }, 3);
      // backpressure: the connection is blocked and its buffer bound (4 KiB) is reached
      const receiverConn = 1;
      receiver.session.setBlocked(receiverConn, true);
      for (let i = 0; i < 20; i++) receiver.clientDatagram("192.0.2.3", 9, new Uint8Array(500), net.now, 1);
      sender.session.setBlocked(1, true);
      for (let i = 0; i < 20; i++) sender.targetDatagram(confirmed.flowId, new Uint8Array(500), net.now);
      receiver.session.setBlocked(receiverConn, false);
      sender.session.setBlocked(1, false);
      net.pump();
      // not-connected: the connection is gone, the target still answers
      net.cut(wire);
      sender.targetDatagram(confirmed.flowId, utf8("late"), net.now);

      const rd = receiver.stats.drops;
      const sd = sender.stats.drops;
      expect(rd["no-sender"]).toBe(1);
      expect(rd["rate-limited"]).toBe(1);
      expect(rd["too-large"]).toBe(1);
      expect(rd.amplification).toBe(1);
      expect(rd["socket-error"]).toBe(2);
      expect(rd["kernel-queue"]).toBe(5);
      expect(rd.backpressure).toBeGreaterThan(0);
      expect(sd["unknown-flow"]).toBe(1);
      expect(sd["socket-error"]).toBe(1);
      expect(sd["kernel-queue"]).toBe(3);
      expect(sd.backpressure).toBeGreaterThan(0);
      expect(sd["not-connected"]).toBe(1);
      sums(receiver.stats, receiver.mappingStats);
      sums(sender.stats, sender.mappingStats);
      // A failed send is taken back from "out": the mapping's udpOut is what really left.
      const confirmedFlow = [...sender.flows.values()].find((f) => f.id === confirmed.flowId);
      expect(confirmedFlow?.dropped).toBeGreaterThanOrEqual(1 + 3 + 1);
    });
  });
}

describe("drop warnings", () => {
  test("the first no-sender drop of a quiet period is logged at once, the rest summed at most every 10 s", () => {
    const net = new Net();
    const receiver = net.add(new ReceiverMachine({ identity: RECEIVER_KEY }, testCrypto(3)));
    const warnings = () => net.logs(receiver).filter((line) => line.includes("no sender connected"));
    receiver.clientDatagram("192.0.2.1", 1, utf8("a"), 0);
    net.pump();
    expect(warnings()).toEqual(["warn: dropped 1 datagram(s) from clients: no sender connected"]);
    for (let i = 0; i < 5; i++) receiver.clientDatagram("192.0.2.1", 1, utf8("b"), 1_000 + i);
    net.pump();
    expect(warnings().length).toBe(1); // within 10 s: counted, not logged
    receiver.clientDatagram("192.0.2.1", 1, utf8("c"), 10_000);
    net.pump();
    expect(warnings().at(-1)).toBe("warn: dropped 6 datagram(s) from clients: no sender connected");
    expect(receiver.stats.drops["no-sender"]).toBe(7);
  });
});
