/** Session lifetime across connections: what survives a lost connection, and what a goodbye ends. */
import { describe, expect, test } from "bun:test";
import { ReceiverMachine, SenderMachine, utf8 } from "../src/index.ts";
import { DIRECTIONS, Net, R, RECEIVER_KEY, SENDER_KEY, testCrypto } from "./harness.ts";

for (const dir of DIRECTIONS) {
  describe(`a deliberate goodbye ${dir.name}`, () => {
    test("the peer's CLOSE(normal) ends the session at once: no flows kept for a resume nobody will make", () => {
      const net = new Net();
      const receiver = net.add(new ReceiverMachine({ secret: "s" }, testCrypto(1)));
      const sender = net.add(new SenderMachine({ secret: "s" }, testCrypto(2)));
      net.link(dir, receiver, sender, 1);
      receiver.clientDatagram("192.0.2.1", 1, utf8("q"), net.now);
      net.pump();
      expect([receiver.flows.size, sender.flows.size]).toEqual([1, 1]);
      sender.shutdown();
      net.pump();
      expect([receiver.flows.size, sender.flows.size]).toEqual([0, 0]);
      expect(net.logs(receiver)).toContain("info: the sender said goodbye: closing 1 flow");
      expect(receiver.nextTimeout()).toBeUndefined(); // no resume grace left to wait for
    });

    test("a connection lost without a goodbye keeps the flows for the resume grace period", () => {
      const net = new Net();
      const receiver = net.add(new ReceiverMachine({ secret: "s" }, testCrypto(1)));
      const sender = net.add(new SenderMachine({ secret: "s" }, testCrypto(2)));
      const wire = net.link(dir, receiver, sender, 1);
      receiver.clientDatagram("192.0.2.1", 1, utf8("q"), net.now);
      net.pump();
      net.cut(wire);
      expect([receiver.flows.size, sender.flows.size]).toEqual([1, 1]);
    });
  });
}

describe("phase, for status displays", () => {
  test("a key-mode dialer waiting for the acceptor's operator says so; open; down with no stale RTT", () => {
    const net = new Net();
    const receiver = net.add(new ReceiverMachine({ identity: RECEIVER_KEY }, testCrypto(1)));
    const sender = net.add(new SenderMachine({ identity: SENDER_KEY }, testCrypto(2)));
    expect(sender.session.phase).toBe("down");
    const wire = net.link(R, receiver, sender, 1);
    expect(receiver.session.awaitingApproval(1)).toBe(true);
    expect(sender.session.phase).toBe("waiting");
    expect(receiver.session.phase).toBe("connecting");
    receiver.session.approve(1, true, net.now);
    net.pump();
    expect([sender.session.phase, receiver.session.phase]).toEqual(["open", "open"]);
    net.advance(15_000); // a keepalive round trip gives an RTT
    expect(sender.stats.rttMs).toBeDefined();
    net.cut(wire);
    expect(sender.session.phase).toBe("down");
    expect(sender.stats.rttMs).toBeUndefined();
  });
});
