/**
 * Tail-loss nudges (PROTOCOL.md §10.1): a PAD frame after the last DATA of a burst, none while traffic
 * flows, none when idle, none when off; a peer skips PAD in every state.
 */
import { describe, expect, test } from "bun:test";
import {
  encodeFrame,
  type Frame,
  FrameType,
  PAD_TYPE,
  type ReceiverConfig,
  ReceiverMachine,
  type SenderConfig,
  SenderMachine,
  utf8,
} from "../src/index.ts";
import { DIRECTIONS, type Direction, Net, RawPeer, rawDialerHandshake, testCrypto } from "./harness.ts";

const SECRET = "nudge-secret";

function setup(direction: Direction, receiver: ReceiverConfig = {}, sender: SenderConfig = {}) {
  const net = new Net();
  const r = net.add(new ReceiverMachine({ secret: SECRET, ...receiver }, testCrypto(1)));
  const s = net.add(new SenderMachine({ secret: SECRET, ...sender }, testCrypto(2)));
  const wire = net.link(direction, r, s, 1);
  return { net, receiver: r, sender: s, wire };
}

const pads = (frames: Frame[]) => frames.filter((f) => f.type === "extension" && f.extensionType === PAD_TYPE);

for (const dir of DIRECTIONS) {
  describe(`tail-loss nudges ${dir.name}`, () => {
    test("one datagram: exactly one 5-byte PAD, 1 ms after it; nothing more while idle", () => {
      const { net, receiver, sender, wire } = setup(dir);
      receiver.clientDatagram("192.0.2.1", 1000, utf8("q"), net.now);
      net.pump();
      expect(pads(wire.sentBy(receiver)).length).toBe(0);
      net.advance(1);
      expect(pads(wire.sentBy(receiver))).toEqual([
        { type: "extension", extensionType: 0x80, body: new Uint8Array(0) },
      ]);
      expect(receiver.laneTotals.nudgesSent).toBe(1);
      // The sender answers: its reply gets its own nudge.
      const flowId = net.of(sender, "open-flow-socket")[0].flowId;
      sender.targetDatagram(flowId, utf8("a"), net.now);
      net.pump();
      net.advance(1);
      expect(pads(wire.sentBy(sender)).length).toBe(1);
      // Idle for two minutes (keepalive pings go both ways): no further nudge on either side.
      net.advance(120_000);
      expect(pads(wire.sentBy(receiver)).length).toBe(1);
      expect(pads(wire.sentBy(sender)).length).toBe(1);
      expect(wire.sentBy(receiver).some((f) => f.type === FrameType.Ping)).toBe(true);
    });

    test("a burst of 100 datagrams in one turn: one nudge", () => {
      const { net, receiver, wire } = setup(dir);
      for (let i = 0; i < 100; i++) receiver.clientDatagram("192.0.2.1", 1000 + (i % 7), utf8(`q${i}`), net.now);
      net.pump();
      net.advance(50);
      expect(pads(wire.sentBy(receiver)).length).toBe(1);
    });

    test("steady traffic every 0.5 ms for 200 ms: no nudge while it flows, one after the last datagram", () => {
      const { net, receiver, wire } = setup(dir);
      for (let i = 0; i < 400; i++) {
        receiver.clientDatagram("192.0.2.1", 1000, utf8(`q${i}`), net.now);
        net.pump();
        net.advance(0.5);
      }
      expect(pads(wire.sentBy(receiver)).length).toBe(0);
      net.advance(10);
      expect(pads(wire.sentBy(receiver)).length).toBe(1);
    });

    test("bursts 5 ms apart: one nudge per burst, never more", () => {
      const { net, receiver, wire } = setup(dir);
      for (let burst = 0; burst < 20; burst++) {
        for (let i = 0; i < 3; i++) receiver.clientDatagram("192.0.2.1", 1000, utf8(`b${burst}.${i}`), net.now);
        net.pump();
        net.advance(5);
      }
      expect(pads(wire.sentBy(receiver)).length).toBe(20);
      expect(receiver.laneTotals.nudgesSent).toBe(20);
    });

    test("nudgeMs 0 (--nudge off): no PAD, and no timer for it", () => {
      const { net, receiver, sender, wire } = setup(dir, { nudgeMs: 0 }, { nudgeMs: 0 });
      receiver.clientDatagram("192.0.2.1", 1000, utf8("q"), net.now);
      net.pump();
      expect(receiver.nextTimeout()).toBeGreaterThan(1000);
      net.advance(100);
      expect(pads(wire.sentBy(receiver)).length + pads(wire.sentBy(sender)).length).toBe(0);
    });

    test("no nudge while the transport is backed up; one once it drains, behind the queued bytes", () => {
      const { net, receiver, wire } = setup(dir);
      const conn = 1;
      receiver.session.setBlocked(conn, true);
      receiver.clientDatagram("192.0.2.1", 1000, utf8("q"), net.now);
      net.pump();
      net.advance(5);
      expect(pads(wire.sentBy(receiver)).length).toBe(0);
      receiver.session.setBlocked(conn, false);
      net.pump();
      net.advance(5);
      expect(pads(wire.sentBy(receiver)).length).toBe(1);
      const frames = wire.sentBy(receiver);
      expect(frames[frames.length - 1]).toEqual({ type: "extension", extensionType: 0x80, body: new Uint8Array(0) });
    });
  });
}

describe("PAD from the peer", () => {
  test("skipped once open, the connection stays up (an earlier version skips it as an unknown extension)", () => {
    const receiver = new ReceiverMachine({ secret: SECRET }, testCrypto(3));
    const raw = new RawPeer(receiver, 1).connect();
    const pad = encodeFrame({ type: "extension", extensionType: PAD_TYPE, body: new Uint8Array(0) });
    rawDialerHandshake(raw, { secret: SECRET });
    expect(receiver.session.peerConnected).toBe(true);
    raw.send(pad, pad, pad);
    expect(raw.closed()).toBe(false);
    expect(receiver.session.peerConnected).toBe(true);
  });
});
