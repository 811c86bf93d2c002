/**
 * No reflection: the receiver sends no byte to an address that did not open a flow, whatever an
 * authenticated but hostile sender writes — DATA and FLOW_CLOSE for forged, closed or guessed flow
 * ids, FLOW_OPEN naming a victim, DATA for flow 0 — in key mode with default limits and in secret
 * mode, over every transport (PROTOCOL.md §5, §8.3, §12, §13). Before acceptance nothing is acted on at
 * all. node:test + node:assert only (runs under bun test and, bundled, under node --test).
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import type { SenderHandle } from "@mcudpt/core";
import { CloseCode, concatBytes, FlowCloseReason, FrameType, PREFACE, utf8 } from "@mcudpt/protocol";
import { memoryTrust, testIdentity } from "../helpers/keys.js";
import {
  frameName,
  frames,
  handshakeAsSender,
  isFrame,
  type RawPeer,
  rawConnect,
  senderAuth,
  senderHello,
} from "../helpers/raw-peer.js";
import {
  closeOf,
  echoed,
  hostileSenderTries,
  receiverOn,
  HOSTILE_SECRET as SECRET,
  senderTo,
  TIMEOUT,
  victim,
} from "../helpers/security.js";
import { availableTransports } from "../helpers/transports.js";
import { eventually, LOOPBACK, sleep, startClient, startEcho, text } from "../helpers/tunnel.js";

/** Short, so a half-done handshake cannot linger past the test. */
const HANDSHAKE_TIMEOUT_MS = 1000;

for (const transport of availableTransports()) {
  describe(`reflection (${transport.name} transport)`, () => {
    let echo: Awaited<ReturnType<typeof startEcho>>;
    before(async () => {
      echo = await startEcho(transport);
    });
    after(() => echo.close());

    it(
      "in key mode with default limits, a hostile sender makes the receiver send nothing to any address that never opened a flow",
      TIMEOUT,
      async () => {
        const senderKey = testIdentity("hostile but trusted");
        const stranger = testIdentity("stranger");
        const questions: string[] = [];
        const { receiver, log: receiverLog } = await receiverOn(transport, {
          config: { identity: testIdentity("receiver") },
          admission: memoryTrust(senderKey),
          // An operator who never answers: a stranger's connection waits in "approval" for as long as needed.
          askOperator: ({ fingerprint: print }, cancelled) =>
            new Promise((resolve) => {
              questions.push(print);
              cancelled.addEventListener("abort", () => resolve(false));
            }),
        });
        const victims = await Promise.all([victim(transport), victim(transport), victim(transport)]);
        const toVictims = (flowId: number, what: string) =>
          victims.map(
            (v) => ({ type: FrameType.Data, flowId, payload: utf8(`${what} -> ${LOOPBACK}:${v.port}`) }) as const,
          );
        const clientA = await startClient(transport, receiver.udpPort);
        const clientB = await startClient(transport, receiver.udpPort);
        const peers: RawPeer[] = [];
        try {
          // Before acceptance. (1) Frames right after the preface, no HELLO.
          const early = await rawConnect(receiver.tcpPort);
          peers.push(early);
          early.write(concatBytes(PREFACE, frames(...toVictims(1, "before HELLO"))));
          await early.whenClosedWithin(5000, "frames before HELLO: closed");
          assert.equal(closeOf(early)?.code, CloseCode.ProtocolError);
          // (2) A valid key-mode HELLO and AUTH from an unknown key; while the operator thinks, DATA and
          // FLOW_CLOSE for flows never opened.
          const waiting = await rawConnect(receiver.tcpPort);
          peers.push(waiting);
          const hello = senderHello("hostile-test", stranger);
          waiting.write(hello.bytes);
          const receiverHello = await waiting.waitFrame(isFrame(FrameType.Hello), "the receiver's HELLO");
          waiting.write(senderAuth(receiverHello, hello.hello, stranger));
          await eventually(() => questions.length === 1, "the operator is asked about the stranger");
          assert.equal(questions[0], stranger.fingerprint);
          waiting.write(
            frames(...toVictims(1, "awaiting approval"), { type: FrameType.FlowClose, flowId: 1, reason: 0 }),
          );
          await waiting.whenClosedWithin(5000, "frames while awaiting approval: closed");
          const waitingClose = closeOf(waiting);
          assert.equal(waitingClose?.code, CloseCode.ProtocolError, waitingClose && frameName(waitingClose));
          assert.match(waitingClose?.message ?? "", /unexpected DATA during the handshake/);
          assert.equal(receiver.machine.stats.accepted, 0);

          // After acceptance: a trusted key, so the receiver acts on what it sends — within limits.
          const hostile = await rawConnect(receiver.tcpPort);
          peers.push(hostile);
          await handshakeAsSender(hostile, senderKey);
          await eventually(() => receiver.machine.session.peerConnected, "the hostile sender is accepted");
          assert.equal(questions.length, 1, "a known key is not asked about");

          await hostileSenderTries(hostile, clientA, clientB, victims);
          for (const v of victims) assert.deepEqual(v.got, [], `victim ${v.port} received datagrams`);
          assert.deepEqual(clientA.replies.map(text), ["to A", "to A again"]);
          assert.deepEqual(clientB.replies.map(text), ["to B"]);
          assert.equal(receiver.machine.stats.udpOut, 3, "three datagrams emitted in all, each to its own client");
          assert.ok(receiverLog.saw(/FLOW_OPEN/), receiverLog.lines.join("\n"));
        } finally {
          for (const peer of peers) peer.destroy();
          clientA.close();
          clientB.close();
          for (const v of victims) v.close();
          await receiver.close();
        }
      },
    );

    it("gives an authenticated hostile sender no way to emit datagrams to addresses it chooses", TIMEOUT, async () => {
      const { receiver, log: receiverLog } = await receiverOn(transport, {
        config: { secret: SECRET, handshakeTimeoutMs: HANDSHAKE_TIMEOUT_MS },
      });
      const victims = await Promise.all([victim(transport), victim(transport), victim(transport)]);
      const client = await startClient(transport, receiver.udpPort);
      const hostile = await rawConnect(receiver.tcpPort);
      let sender: SenderHandle | undefined;
      try {
        const accept = await handshakeAsSender(hostile, SECRET);
        assert.equal(accept.resumed, false);
        await eventually(() => receiver.machine.session.peerConnected, "the hostile sender is accepted");

        // Control: a real client opens flow 1; answering it through the tunnel does reach that client,
        // so the victims' silence below is meaningful.
        client.send("a real question");
        const open = await hostile.waitFrame(isFrame(FrameType.FlowOpen), "FLOW_OPEN for the client");
        assert.equal(open.client.port, client.socket.port);
        hostile.write(frames({ type: FrameType.Data, flowId: open.flowId, payload: utf8("a real answer") }));
        await eventually(() => client.replies.length === 1, "the client's own answer");
        assert.equal(text(client.replies[0]), "a real answer");

        // DATA for flow ids never opened, with payloads naming the victims (the original's JSON form).
        const unknownIds = [open.flowId + 1, open.flowId + 1000, 0x7fff_ffff, 0xffff_ffff];
        const dropsBefore = receiver.machine.stats.drops["unknown-flow"];
        const seen = hostile.frames.length;
        hostile.write(
          frames(
            ...unknownIds.flatMap((flowId) =>
              victims.map((victim) => ({
                type: FrameType.Data,
                flowId,
                payload: utf8(
                  JSON.stringify({ type: "data", addr: `${LOOPBACK}:${victim.port}`, data: "cmVmbGVjdA==" }),
                ),
              })),
            ),
          ),
        );
        // Each is answered FLOW_CLOSE(id, unknown flow) and the connection stays up (§8.3).
        await eventually(
          () =>
            unknownIds.every((id) =>
              hostile.frames.slice(seen).some((f) => f.type === FrameType.FlowClose && f.flowId === id),
            ),
          `FLOW_CLOSE for every unknown id (got ${hostile.frames.slice(seen).map(frameName).join(", ")})`,
        );
        for (const frame of hostile.frames.slice(seen)) {
          if (frame.type === FrameType.FlowClose)
            assert.equal(frame.reason, FlowCloseReason.UnknownFlow, frameName(frame));
        }
        assert.equal(receiver.machine.stats.drops["unknown-flow"] - dropsBefore, unknownIds.length * victims.length);
        assert.equal(hostile.closed, false, "DATA for an unknown flow is not an error");
        assert.equal(receiver.machine.session.peerConnected, true);
        const pingAt = hostile.frames.length;
        const ping = Uint8Array.of(1, 2, 3, 4, 5, 6, 7, 8);
        hostile.write(frames({ type: FrameType.Ping, payload: ping }));
        const pong = await hostile.waitFrame(isFrame(FrameType.Pong), "PONG: the connection is still up", pingAt);
        assert.deepEqual([...pong.payload], [...ping]);

        // FLOW_OPEN from a sender, naming a victim, and DATA for it in the same write: CLOSE(1) (§5, §13).
        const closeAt = hostile.frames.length;
        hostile.write(
          frames(
            {
              type: FrameType.FlowOpen,
              flowId: 77,
              mappingId: 0,
              client: { family: 4, address: LOOPBACK, port: victims[0].port },
            },
            { type: FrameType.Data, flowId: 77, payload: utf8("reflected") },
            // After the error nothing is acted on, not even DATA for a real flow.
            { type: FrameType.Data, flowId: open.flowId, payload: utf8("after the error") },
          ),
        );
        const close = await hostile.waitFrame(isFrame(FrameType.Close), "CLOSE after FLOW_OPEN", closeAt);
        assert.equal(close.code, CloseCode.ProtocolError, frameName(close));
        assert.match(close.message, /FLOW_OPEN/);
        await hostile.whenClosedWithin(5000, "the receiver closes the hostile connection");
        assert.ok(receiverLog.saw(/closing connection with .*FLOW_OPEN/), receiverLog.lines.join("\n"));

        // Everything the receiver did with those frames is done; give loopback delivery a moment.
        await sleep(200);
        for (const victim of victims) assert.deepEqual(victim.got, [], `victim ${victim.port} received datagrams`);
        assert.equal(client.replies.length, 1, "the real client got only its own answer");
        assert.equal(receiver.machine.stats.udpOut, 1, "one datagram emitted in all: the real answer");

        // DATA naming flow 0 (never assigned) is malformed: CLOSE(1), and nothing emitted (§4, §12).
        const again = await rawConnect(receiver.tcpPort);
        try {
          await handshakeAsSender(again, SECRET);
          const at = again.frames.length;
          again.write(concatBytes(Uint8Array.of(FrameType.Data, 0, 0, 0, 8, 0, 0, 0, 0), utf8("zero")));
          const zeroClose = await again.waitFrame(isFrame(FrameType.Close), "CLOSE after DATA for flow 0", at);
          assert.equal(zeroClose.code, CloseCode.ProtocolError, frameName(zeroClose));
          assert.match(zeroClose.message, /flow 0/);
          await again.whenClosedWithin(5000, "the receiver closes the connection after DATA for flow 0");
        } finally {
          again.destroy();
        }

        // The receiver is still fit for a real sender.
        ({ sender } = await senderTo(transport, echo.port, receiver.tcpPort, { secret: SECRET }));
        await eventually(() => sender?.machine.session.peerConnected === true, "a real sender accepted afterwards");
        await echoed(client, "served again");
        for (const victim of victims) assert.deepEqual(victim.got, []);
      } finally {
        hostile.destroy();
        client.close();
        for (const victim of victims) victim.close();
        await sender?.close();
        await receiver.close();
      }
    });
  });
}
