/** Session lifetime across connections: what survives a lost connection, and what a goodbye ends. */
import { describe, expect, test } from "bun:test";
import { ReceiverMachine, SenderMachine, utf8 } from "../src/index.ts";
import { DIRECTIONS, Net, testCrypto } from "./harness.ts";

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
