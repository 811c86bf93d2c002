/**
 * Limits of PROTOCOL.md §5.1, §8 and §13 checked where the other suites leave them implicit: a key-mode
 * connection waiting for the operator holds its pending slot, with no deadline, whichever role accepts;
 * the documented defaults of `maxFlows` (4096 per mapping) and `handshakeTimeoutMs` (10 s) are what a
 * machine configured with nothing does; and the drop-log throttle (one line per kind per 10 s, the
 * first at once) holds for `rate-limited` and `amplification` as it does for `no-sender`. Virtual clock.
 */
import { describe, expect, test } from "bun:test";
import { CloseCode, DEFAULTS, ReceiverMachine, SenderMachine, utf8 } from "../src/index.ts";
import { LOG_INTERVAL_MS } from "../src/outputs.ts";
import { DIRECTIONS, pair, RawPeer, RECEIVER_KEY, rawDialerHandshake, SENDER_KEY, testCrypto } from "./harness.ts";

describe("a connection waiting for the operator holds a pending slot", () => {
  for (const dir of DIRECTIONS) {
    test(`${dir.name}: no deadline while the operator decides, the slot held until the answer`, () => {
      const acceptor =
        dir.acceptor === "receiver"
          ? new ReceiverMachine({ identity: RECEIVER_KEY, maxPendingConnections: 3 }, testCrypto(1))
          : new SenderMachine({ identity: SENDER_KEY, maxPendingConnections: 3 }, testCrypto(2));
      const dialerKey = dir.acceptor === "receiver" ? SENDER_KEY : RECEIVER_KEY;
      const waiting = new RawPeer(acceptor, 1, 0).accepted("203.0.113.1");
      rawDialerHandshake(waiting, { identity: dialerKey });
      expect(acceptor.session.awaitingApproval(1)).toBe(true);
      // Far past the handshake deadline: the question is still open and the connection kept.
      acceptor.tick(10 * DEFAULTS.handshakeTimeoutMs);
      waiting.read();
      expect(waiting.closed()).toBe(false);
      expect(acceptor.session.awaitingApproval(1)).toBe(true);
      // It counts against the total: two more fit (3 in all), the fourth is BUSY.
      const now = 10 * DEFAULTS.handshakeTimeoutMs;
      const others = [2, 3, 4].map((conn) => new RawPeer(acceptor, conn, now).accepted(`198.51.100.${conn}`));
      expect(others.map((peer) => peer.closeCode())).toEqual([undefined, undefined, CloseCode.Busy]);
      // The answer frees the slot: the next one gets in.
      acceptor.session.approve(1, true, now);
      waiting.read();
      expect(acceptor.session.peerConnected).toBe(true);
      expect(new RawPeer(acceptor, 5, now).accepted("198.51.100.5").closeCode()).toBeUndefined();
    });

    test(`${dir.name}: per source too — four from one address, one of them waiting for the operator, and a fifth is BUSY`, () => {
      expect(DEFAULTS.maxPendingPerSource).toBe(4);
      const acceptor =
        dir.acceptor === "receiver"
          ? new ReceiverMachine({ identity: RECEIVER_KEY }, testCrypto(1))
          : new SenderMachine({ identity: SENDER_KEY }, testCrypto(2));
      const dialerKey = dir.acceptor === "receiver" ? SENDER_KEY : RECEIVER_KEY;
      const waiting = new RawPeer(acceptor, 1, 0).accepted("203.0.113.7");
      rawDialerHandshake(waiting, { identity: dialerKey });
      expect(acceptor.session.awaitingApproval(1)).toBe(true);
      // The three silent ones time out; the one waiting for its operator does not.
      const silent = [2, 3, 4].map((conn) => new RawPeer(acceptor, conn, 0).accepted("203.0.113.7"));
      acceptor.tick(DEFAULTS.handshakeTimeoutMs);
      for (const peer of [waiting, ...silent]) peer.read();
      expect(silent.map((peer) => peer.closeCode())).toEqual([
        CloseCode.HandshakeTimeout,
        CloseCode.HandshakeTimeout,
        CloseCode.HandshakeTimeout,
      ]);
      for (const peer of silent) acceptor.session.disconnected(peer.conn, DEFAULTS.handshakeTimeoutMs);
      expect(waiting.closed()).toBe(false);
      const now = DEFAULTS.handshakeTimeoutMs;
      const next = [5, 6, 7, 8].map((conn) => new RawPeer(acceptor, conn, now).accepted("203.0.113.7"));
      expect(next.map((peer) => peer.closeCode())).toEqual([undefined, undefined, undefined, CloseCode.Busy]);
    });
  }
});

describe("documented defaults, as a machine configured with nothing applies them", () => {
  test("maxFlows: 4096 flows per mapping, and the 4097th client evicts the least recently active", () => {
    expect(DEFAULTS.maxFlows).toBe(4096);
    const { net, receiver, sender } = pair();
    // One address per client: the new-flow rate (per source) never gets in the way.
    const address = (i: number) => `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`;
    for (let i = 0; i < 4096; i++) receiver.clientDatagram(address(i), 5000, utf8("q"), net.now);
    net.pump();
    expect([receiver.flows.size, sender.flows.size]).toEqual([4096, 4096]);
    expect(receiver.stats.flowsEvicted).toBe(0);
    receiver.clientDatagram(address(4096), 5000, utf8("one more"), net.now);
    net.pump();
    expect([receiver.flows.size, sender.flows.size]).toEqual([4096, 4096]);
    const closed = net.of(sender, "close-flow-socket").map((o) => o.flowId);
    expect(closed).toEqual([1]); // flow 1, the first client's: the least recently active
    expect(receiver.stats.flowsEvicted).toBe(1);
  });

  for (const dir of DIRECTIONS) {
    test(`${dir.name}: handshakeTimeoutMs 10 s: a silent peer is still there at 9.999 s and closed at 10 s`, () => {
      expect(DEFAULTS.handshakeTimeoutMs).toBe(10_000);
      const acceptor =
        dir.acceptor === "receiver"
          ? new ReceiverMachine({ identity: RECEIVER_KEY }, testCrypto(1))
          : new SenderMachine({ identity: SENDER_KEY }, testCrypto(2));
      const silent = new RawPeer(acceptor, 1, 0).accepted();
      acceptor.tick(9_999);
      silent.read();
      expect(silent.closed()).toBe(false);
      acceptor.tick(10_000);
      silent.read();
      expect(silent.closeCode()).toBe(CloseCode.HandshakeTimeout);
    });
  }
});

describe("the drop-log throttle: the first line at once, then at most one per 10 s per kind", () => {
  test(`rate-limited: one line at once, the rest summed ${LOG_INTERVAL_MS / 1000} s later, never per datagram`, () => {
    expect(LOG_INTERVAL_MS).toBe(10_000);
    const { net, receiver } = pair({ receiver: { newFlowsPerSecond: 1 } }); // burst 2
    const lines = () => net.logs(receiver).filter((line) => line.includes("new-flow rate limit"));
    let port = 1;
    const newFlows = (count: number, at: number) => {
      for (let i = 0; i < count; i++) receiver.clientDatagram("203.0.113.9", port++, utf8("x"), at);
      net.pump();
    };
    newFlows(3, 0); // two fit the burst, the third is dropped: logged at once
    expect(lines()).toEqual([
      "warn: new-flow rate limit reached for some sources (raise --new-flow-rate): dropped 1 datagram(s)",
    ]);
    newFlows(5, 9_999); // within 10 s of that line (two tokens refilled): 3 dropped, counted, not logged
    expect(receiver.stats.drops["rate-limited"]).toBe(4);
    expect(lines().length).toBe(1);
    newFlows(1, 10_000); // 10 s after the first line: this drop brings the sum since (itself included)
    expect(lines()[1]).toBe(
      "warn: new-flow rate limit reached for some sources (raise --new-flow-rate): dropped 4 datagram(s)",
    );
    newFlows(50, 15_000); // a flood within the next 10 s: 48 dropped, no line
    newFlows(50, 19_999);
    expect(lines().length).toBe(2);
    const before = receiver.stats.drops["rate-limited"];
    newFlows(3, 20_000); // the first drop at 20 s logs what was counted since 10 s, itself included
    expect(lines().length).toBe(3);
    expect(lines()[2]).toBe(
      `warn: new-flow rate limit reached for some sources (raise --new-flow-rate): dropped ${before - 5 + 1} datagram(s)`,
    );
    expect(receiver.stats.drops["rate-limited"]).toBeGreaterThan(100);
  });

  test(`amplification: one line at once, the rest summed ${LOG_INTERVAL_MS / 1000} s later, never per datagram`, () => {
    const { net, receiver, sender } = pair();
    const lines = () => net.logs(receiver).filter((line) => line.includes("replies to unconfirmed clients"));
    receiver.clientDatagram("192.0.2.1", 1, new Uint8Array(0), 0); // 28 bytes on the wire: 280 of replies
    net.pump();
    const [flow] = net.of(sender, "open-flow-socket");
    const replies = (count: number, at: number) => {
      for (let i = 0; i < count; i++) sender.targetDatagram(flow.flowId, new Uint8Array(1000), at);
      net.advance(at - net.now);
    };
    replies(1, 0);
    expect(lines()).toEqual([
      "warn: replies to unconfirmed clients exceeded 10× their request (raise --amplification-limit): dropped 1 datagram(s)",
    ]);
    replies(4, 9_999);
    expect(lines().length).toBe(1);
    replies(1, 10_000);
    expect(lines().at(-1)).toBe(
      "warn: replies to unconfirmed clients exceeded 10× their request (raise --amplification-limit): dropped 5 datagram(s)",
    );
    replies(20, 19_000);
    expect(lines().length).toBe(2);
    expect(receiver.stats.drops.amplification).toBe(26);
  });
});
