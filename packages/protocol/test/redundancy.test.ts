/**
 * Redundancy (PROTOCOL.md §17): every datagram on two lanes as SDATA with a per-flow sequence number,
 * the first copy delivered, duplicates and copies behind the window dropped; sequence wrap-around; a
 * lane lost with datagrams in flight loses none of them; per-mapping redundancy and mirroring; and
 * --max-delay (§10): DATA that waited too long in a backed-up queue is dropped, not delivered late.
 */
import { describe, expect, test } from "bun:test";
import { DUPLICATE_WINDOW, DuplicateWindow } from "../src/dedupe.ts";
import {
  FrameType,
  type ReceiverConfig,
  ReceiverMachine,
  type SenderConfig,
  SenderMachine,
  utf8,
} from "../src/index.ts";
import { DIRECTIONS, type Direction, framesOfType, Net, R, sides, testCrypto, type Wire } from "./harness.ts";

const SECRET = "redundancy-secret";

describe("duplicate window", () => {
  test("first copies are new, second copies duplicates, far older ones late", () => {
    const w = new DuplicateWindow();
    expect([w.check(10), w.check(10), w.check(12), w.check(11), w.check(11), w.check(12)]).toEqual([
      "new",
      "duplicate",
      "new",
      "new",
      "duplicate",
      "duplicate",
    ]);
    expect(w.check(12 + DUPLICATE_WINDOW)).toBe("new");
    expect(w.check(12)).toBe("late"); // exactly the window behind: its twin is forgotten
    expect(w.check(13)).toBe("new");
    expect(w.check(13)).toBe("duplicate");
  });

  test("sequence numbers wrap: 0xfffffffe, 0xffffffff, 0, 1 are in order; their copies are duplicates", () => {
    const w = new DuplicateWindow();
    const seqs = [0xfffffffe, 0xffffffff, 0, 1, 2];
    expect(seqs.map((s) => w.check(s))).toEqual(["new", "new", "new", "new", "new"]);
    expect(seqs.map((s) => w.check(s))).toEqual(Array(5).fill("duplicate"));
    expect(w.check(0xfffffffd)).toBe("new"); // a late first copy inside the window, across the wrap
    expect(w.check(0xfffffffd)).toBe("duplicate");
  });

  test("every offset of a random walk is judged like a set would (inside the window)", () => {
    const w = new DuplicateWindow();
    const seen = new Set<number>();
    let top = 0xffffff00;
    let state = 7;
    const rand = () => {
      state = (state * 1103515245 + 12345) & 0x7fffffff;
      return state;
    };
    for (let i = 0; i < 20_000; i++) {
      const step = (rand() % 40) - 8; // mostly forward, sometimes back
      const seq = (top + step) >>> 0;
      const verdict = w.check(seq);
      const behind = (top - seq) >>> 0;
      if ((seq - top) >>> 0 < 0x80000000 && seq !== top) top = seq;
      if (behind < DUPLICATE_WINDOW || verdict !== "late") {
        expect(verdict).toBe(seen.has(seq) ? "duplicate" : "new");
        seen.add(seq);
      }
    }
  });
});

function setup(
  dir: Direction,
  opts: { dialer?: ReceiverConfig & SenderConfig; acceptor?: ReceiverConfig & SenderConfig; lanes?: number } = {},
) {
  const dialer = { lanes: opts.lanes ?? 2, redundant: true, ...opts.dialer };
  const acceptor = opts.acceptor ?? {};
  const net = new Net();
  const receiver = net.add(
    new ReceiverMachine({ secret: SECRET, ...(dir.acceptor === "receiver" ? acceptor : dialer) }, testCrypto(1)),
  );
  const sender = net.add(
    new SenderMachine({ secret: SECRET, ...(dir.acceptor === "sender" ? acceptor : dialer) }, testCrypto(2)),
  );
  const wires: Wire[] = [];
  for (let conn = 1; conn <= (opts.lanes ?? 2); conn++) wires.push(net.link(dir, receiver, sender, conn));
  return { net, receiver, sender, wires, ...sides(dir, receiver, sender) };
}

const sdataOn = (w: Wire, m: ReceiverMachine | SenderMachine) => framesOfType(w.sentBy(m), FrameType.Sdata);

for (const dir of DIRECTIONS) {
  describe(`redundancy ${dir.name}`, () => {
    test("both directions: every datagram on both lanes with one number, delivered exactly once", () => {
      const { net, receiver, sender, wires } = setup(dir);
      for (let i = 0; i < 20; i++) receiver.clientDatagram("192.0.2.1", 5000 + (i % 4), utf8(`q${i}`), net.now);
      net.pump();
      const sockets = net.of(sender, "open-flow-socket");
      expect(sockets.length).toBe(4);
      for (const o of sockets) for (let i = 0; i < 5; i++) sender.targetDatagram(o.flowId, utf8(`a${i}`), net.now);
      net.pump();
      for (const m of [receiver, sender]) {
        const [a, b] = wires.map((w) => sdataOn(w, m).map((f) => `${f.flowId}/${f.seq}`));
        expect(a.length).toBe(20);
        expect(b).toEqual(a);
        expect(framesOfType(wires[0].sentBy(m), FrameType.Data).length).toBe(0);
      }
      expect(net.of(sender, "send-to-target").length).toBe(20);
      expect(net.of(receiver, "send-to-client").length).toBe(20);
      expect(sender.laneTotals.duplicatesSuppressed).toBe(20);
      expect(receiver.laneTotals.duplicatesSuppressed).toBe(20);
      expect(receiver.laneTotals.redundantCopies).toBe(20);
    });

    test("sequence wrap-around on a live flow: numbers wrap, nothing is delivered twice or lost", () => {
      const { net, receiver, sender, wires } = setup(dir);
      receiver.clientDatagram("192.0.2.1", 6000, utf8("open"), net.now);
      net.pump();
      const flowId = net.of(sender, "open-flow-socket")[0].flowId;
      const flow = sender.flows.get(flowId) as { txSeq?: number };
      flow.txSeq = 0xfffffffc;
      for (let i = 0; i < 8; i++) sender.targetDatagram(flowId, utf8(`w${i}`), net.now);
      net.pump();
      const seqs = sdataOn(wires[0], sender).map((f) => f.seq);
      expect(seqs).toEqual([0xfffffffd, 0xfffffffe, 0xffffffff, 0, 1, 2, 3, 4]);
      const delivered = net.of(receiver, "send-to-client").map((o) => new TextDecoder().decode(o.payload));
      expect(delivered).toEqual(["w0", "w1", "w2", "w3", "w4", "w5", "w6", "w7"]);
      expect(receiver.laneTotals.duplicatesSuppressed).toBe(8);
    });

    test("a lane lost with datagrams in flight: their copies on the other lane arrive, none twice", () => {
      const { net, receiver, sender, wires } = setup(dir);
      receiver.clientDatagram("192.0.2.1", 7000, utf8("open"), net.now);
      net.pump();
      wires[0].paused = true;
      for (let i = 0; i < 10; i++) receiver.clientDatagram("192.0.2.1", 7000, utf8(`x${i}`), net.now);
      net.pump();
      net.cut(wires[0]); // what it held never arrives
      expect(net.of(sender, "send-to-target").length).toBe(11);
      for (let i = 0; i < 5; i++) receiver.clientDatagram("192.0.2.1", 7000, utf8(`y${i}`), net.now);
      net.pump();
      expect(net.of(sender, "send-to-target").length).toBe(16);
    });

    test("copies behind the window are dropped, never delivered", () => {
      const { net, receiver, sender, wires } = setup(dir);
      receiver.clientDatagram("192.0.2.1", 8000, utf8("open"), net.now);
      net.pump();
      wires[1].paused = true;
      const n = DUPLICATE_WINDOW + 100;
      for (let i = 0; i < n; i++) receiver.clientDatagram("192.0.2.1", 8000, utf8(`z${i}`), net.now);
      net.pump();
      net.flush(wires[1]);
      expect(net.of(sender, "send-to-target").length).toBe(n + 1);
      expect(sender.laneTotals.lateCopies + sender.laneTotals.duplicatesSuppressed).toBe(n + 1);
      expect(sender.laneTotals.lateCopies).toBeGreaterThan(0);
    });
  });
}

describe("who sends twice", () => {
  test("the dialer's --redundant asks the acceptor (HELLO Redundant): replies are sent twice too", () => {
    const { net, receiver, sender, wires } = setup(R);
    receiver.clientDatagram("192.0.2.1", 9000, utf8("q"), net.now);
    net.pump();
    sender.targetDatagram(net.of(sender, "open-flow-socket")[0].flowId, utf8("a"), net.now);
    net.pump();
    expect(wires.map((w) => sdataOn(w, receiver).length)).toEqual([1, 1]);
    expect(wires.map((w) => sdataOn(w, sender).length)).toEqual([1, 1]);
  });

  test("per mapping, on one side only: only that mapping is sent twice, and its flows are answered in kind", () => {
    const { net, receiver, sender, wires } = setup(R, {
      dialer: { redundant: false, mappings: [{ name: "game" }, { name: "bulk" }] },
      acceptor: { mappings: [{ name: "game", redundant: true }, { name: "bulk" }] },
    });
    receiver.clientDatagram("192.0.2.1", 9100, utf8("g"), net.now, 0);
    receiver.clientDatagram("192.0.2.1", 9101, utf8("b"), net.now, 1);
    net.pump();
    const sockets = net.of(sender, "open-flow-socket");
    for (const o of sockets) sender.targetDatagram(o.flowId, utf8("r"), net.now);
    net.pump();
    const sdata = (m: ReceiverMachine | SenderMachine) => wires.flatMap((w) => sdataOn(w, m));
    const gameFlow = sockets.find((o) => o.mappingId === 0)?.flowId;
    expect(sdata(receiver).map((f) => f.flowId)).toEqual([gameFlow, gameFlow]);
    expect(sdata(sender).map((f) => f.flowId)).toEqual([gameFlow, gameFlow]);
    const data = wires.flatMap((w) => framesOfType(w.sentBy(receiver), FrameType.Data));
    expect(data.length).toBe(1); // the bulk flow: once
    expect(net.of(receiver, "send-to-client").length).toBe(2);
  });

  test("redundantMaxBytes: larger datagrams go once", () => {
    const { net, receiver, wires } = setup(R, { acceptor: { redundantMaxBytes: 100 } });
    receiver.clientDatagram("192.0.2.1", 9200, new Uint8Array(100), net.now);
    receiver.clientDatagram("192.0.2.1", 9200, new Uint8Array(101), net.now);
    net.pump();
    expect(wires.flatMap((w) => sdataOn(w, receiver)).length).toBe(2);
    expect(wires.flatMap((w) => framesOfType(w.sentBy(receiver), FrameType.Data)).length).toBe(1);
  });

  test("one lane only: plain DATA, nothing to duplicate", () => {
    const { net, receiver, wires } = setup(R, { lanes: 1, dialer: { lanes: 1 } });
    receiver.clientDatagram("192.0.2.1", 9300, utf8("q"), net.now);
    net.pump();
    expect(sdataOn(wires[0], receiver).length).toBe(0);
    expect(framesOfType(wires[0].sentBy(receiver), FrameType.Data).length).toBe(1);
  });
});

describe("--max-delay", () => {
  for (const dir of DIRECTIONS) {
    test(`${dir.name}: DATA queued longer than maxDelayMs while backed up is dropped (stale); newer DATA and control frames stay`, () => {
      const net = new Net();
      const receiver = net.add(new ReceiverMachine({ secret: SECRET, maxDelayMs: 250 }, testCrypto(1)));
      const sender = net.add(new SenderMachine({ secret: SECRET, maxDelayMs: 250 }, testCrypto(2)));
      const wire = net.link(dir, receiver, sender, 1);
      receiver.clientDatagram("192.0.2.1", 9400, utf8("first"), net.now);
      net.pump();
      receiver.session.setBlocked(1, true);
      for (let i = 0; i < 5; i++) receiver.clientDatagram("192.0.2.1", 9400, utf8(`old${i}`), net.now);
      receiver.clientDatagram("192.0.2.9", 9401, utf8("new-flow-old"), net.now);
      net.advance(200);
      receiver.clientDatagram("192.0.2.1", 9400, utf8("young"), net.now);
      net.advance(60);
      expect(receiver.stats.drops.stale).toBe(6);
      receiver.session.setBlocked(1, false);
      net.pump();
      const delivered = net.of(sender, "send-to-target").map((o) => new TextDecoder().decode(o.payload));
      expect(delivered).toEqual(["first", "young"]);
      // The second client's FLOW_OPEN went out all the same (flow state stays consistent).
      expect(framesOfType(wire.sentBy(receiver), FrameType.FlowOpen).length).toBe(2);
      expect(sender.flows.size).toBe(2);
    });
  }

  test("off by default: nothing waits long enough to be dropped", () => {
    const net = new Net();
    const receiver = net.add(new ReceiverMachine({ secret: SECRET }, testCrypto(1)));
    const sender = net.add(new SenderMachine({ secret: SECRET }, testCrypto(2)));
    net.link(R, receiver, sender, 1);
    receiver.session.setBlocked(1, true);
    receiver.clientDatagram("192.0.2.1", 9500, utf8("patient"), net.now);
    net.advance(10_000);
    receiver.session.setBlocked(1, false);
    net.pump();
    expect(receiver.stats.drops.stale).toBe(0);
    expect(net.of(sender, "send-to-target").length).toBe(1);
  });
});
