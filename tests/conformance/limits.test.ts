/**
 * Limits on what strangers and spoofed sources can cost or cause, over every transport: floods of
 * unauthenticated connections are bounded (per source and in total) and refused at once with
 * CLOSE(busy), the held ones closed at their deadline, and a real sender is served afterwards; replies
 * to an unconfirmed client are capped at 10× its first datagram (anti-amplification); new flows from
 * one address past its rate are dropped and counted while its established flow keeps working
 * (PROTOCOL.md §8.5, §13). node:test + node:assert only (runs under bun test and, bundled, under
 * node --test).
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import type { SenderHandle } from "@mcudpt/core";
import { CloseCode } from "@mcudpt/protocol";
import { memoryTrust, testIdentity } from "../helpers/keys.js";
import { type RawPeer, rawConnect } from "../helpers/raw-peer.js";
import { closeOf, loudTarget, receiverOn, roundTrip, senderTo, TIMEOUT } from "../helpers/security.js";
import { availableTransports } from "../helpers/transports.js";
import { eventually, type MemoryLogger, startClient, startEcho } from "../helpers/tunnel.js";

/** Long enough to tell "closed at once (Busy)" from "closed at the deadline" by the CLOSE code alone. */
const FLOOD_HANDSHAKE_TIMEOUT_MS = 3000;

for (const transport of availableTransports()) {
  describe(`limits (${transport.name} transport)`, () => {
    let echo: Awaited<ReturnType<typeof startEcho>>;
    before(async () => {
      echo = await startEcho(transport);
    });
    after(() => echo.close());

    for (const flood of [
      { name: "default limits: 4 pending per source", config: {}, pending: 4, says: /from 127\.0\.0\.1 \(4\)/ },
      { name: "16 pending in all", config: { maxPendingPerSource: 64 }, pending: 16, says: /connections \(16\)/ },
    ]) {
      it(`bounds a flood of 40 silent connections (${flood.name}), then serves a real sender`, TIMEOUT, async () => {
        const senderKey = testIdentity("sender");
        const { receiver, log: receiverLog } = await receiverOn(transport, {
          config: {
            identity: testIdentity("receiver"),
            handshakeTimeoutMs: FLOOD_HANDSHAKE_TIMEOUT_MS,
            ...flood.config,
          },
          admission: memoryTrust(senderKey),
        });
        let peers: RawPeer[] = [];
        let run: { sender: SenderHandle; log: MemoryLogger } | undefined;
        try {
          peers = await Promise.all(Array.from({ length: 40 }, () => rawConnect(receiver.tcpPort)));
          const busy = () => peers.filter((peer) => closeOf(peer)?.code === CloseCode.Busy);
          await eventually(
            () => busy().length === 40 - flood.pending && busy().every((peer) => peer.closed),
            `${40 - flood.pending} refused at once with CLOSE(busy) (got ${busy().length})`,
          );
          // The others still wait for their handshake: the refusals came before any deadline.
          const held = peers.filter((peer) => closeOf(peer)?.code !== CloseCode.Busy);
          assert.equal(held.length, flood.pending);
          assert.ok(
            held.every((peer) => closeOf(peer) === undefined),
            "the held ones were not refused",
          );
          await eventually(
            () => receiver.machine.session.connectionCount <= flood.pending,
            `the receiver keeps at most ${flood.pending} (has ${receiver.machine.session.connectionCount})`,
          );
          assert.ok(receiverLog.saw(flood.says), receiverLog.lines.filter((l) => l.startsWith("warn")).join("\n"));
          // The held ones are closed at their deadline.
          await eventually(
            () => held.every((peer) => peer.closed),
            "the held connections time out",
            FLOOD_HANDSHAKE_TIMEOUT_MS + 10_000,
          );
          for (const peer of held) assert.equal(closeOf(peer)?.code, CloseCode.HandshakeTimeout);
          await eventually(() => receiver.machine.session.connectionCount === 0, "no connection left");
          assert.equal(receiver.machine.stats.handshakeFailures, 40);

          run = await senderTo(transport, echo.port, receiver.tcpPort, { identity: senderKey });
          await eventually(
            () => run?.sender.machine.session.peerConnected === true,
            "a real sender is accepted afterwards",
          );
          const client = await startClient(transport, receiver.udpPort);
          try {
            await roundTrip(client, "after the flood");
          } finally {
            client.close();
          }
        } finally {
          for (const peer of peers) peer.destroy();
          await run?.sender.close();
          await receiver.close();
        }
      });
    }

    it(
      "caps replies to an unconfirmed client at 10× its first datagram (default), uncapped once it sends again",
      TIMEOUT,
      async () => {
        const REQUEST = 100;
        const REPLY = 400;
        const REPLIES = 5;
        const senderKey = testIdentity("sender");
        const target = await loudTarget(transport, REPLIES, REPLY);
        const { receiver, log: receiverLog } = await receiverOn(transport, {
          config: { identity: testIdentity("receiver") },
          admission: memoryTrust(senderKey),
        });
        const run = await senderTo(transport, target.port, receiver.tcpPort, { identity: senderKey });
        const client = await startClient(transport, receiver.udpPort);
        const drops = () => receiver.machine.stats.drops.amplification;
        const bytes = () => client.replies.reduce((sum, reply) => sum + reply.length, 0);
        try {
          await eventually(() => run.sender.machine.session.peerConnected, "sender accepted");
          client.send(new Uint8Array(REQUEST).fill(0x71)); // once: a spoofer would not see replies to re-send
          // 5 × 400 B answer 100 B: 1000 B budget lets two through, the other three are dropped.
          await eventually(
            () => client.replies.length + drops() === REPLIES,
            `every reply delivered or dropped (delivered ${client.replies.length}, dropped ${drops()})`,
          );
          assert.ok(bytes() <= 10 * REQUEST, `at most 10 × ${REQUEST} B to an unconfirmed client, got ${bytes()}`);
          assert.equal(client.replies.length, Math.floor((10 * REQUEST) / REPLY));
          assert.equal(drops(), REPLIES - Math.floor((10 * REQUEST) / REPLY));
          assert.ok(receiverLog.saw(/amplification-limit/), receiverLog.lines.join("\n"));

          // A second datagram from the same address and port confirms it: all replies flow.
          const before = client.replies.length;
          client.send(new Uint8Array(REQUEST).fill(0x72));
          await eventually(() => client.replies.length === before + REPLIES, "all replies to the confirmed client");
          assert.equal(drops(), REPLIES - Math.floor((10 * REQUEST) / REPLY), "no more drops");
        } finally {
          client.close();
          await run.sender.close();
          await receiver.close();
          target.close();
        }
      },
    );

    it(
      "drops and counts new flows from one address past its rate, while its established flow keeps working",
      TIMEOUT,
      async () => {
        const RATE = 2; // per second, bursts of 4: a flood of 40 source ports cannot be absorbed by refill
        const FLOOD = 40;
        const senderKey = testIdentity("sender");
        const { receiver, log: receiverLog } = await receiverOn(transport, {
          config: { identity: testIdentity("receiver"), newFlowsPerSecond: RATE },
          admission: memoryTrust(senderKey),
        });
        const run = await senderTo(transport, echo.port, receiver.tcpPort, { identity: senderKey });
        const legit = await startClient(transport, receiver.udpPort);
        const flooders = await Promise.all(
          Array.from({ length: FLOOD }, () => startClient(transport, receiver.udpPort)),
        );
        const stats = receiver.machine.stats;
        try {
          await eventually(() => run.sender.machine.session.peerConnected, "sender accepted");
          await roundTrip(legit, "established");
          assert.equal(stats.flowsOpened, 1);
          for (const [i, flooder] of flooders.entries()) flooder.send(`flood ${i}`);
          await eventually(
            () => stats.flowsOpened - 1 + stats.drops["rate-limited"] === FLOOD,
            `every flood datagram opened a flow or was dropped (opened ${stats.flowsOpened - 1}, dropped ${stats.drops["rate-limited"]})`,
          );
          const opened = stats.flowsOpened - 1;
          assert.ok(opened >= 2 * RATE - 1, `the burst is honoured (${opened} opened)`);
          assert.ok(stats.drops["rate-limited"] > 0 && opened < FLOOD, `excess dropped (${opened} opened)`);
          assert.ok(receiverLog.saw(/new-flow rate limit/), receiverLog.lines.join("\n"));
          await roundTrip(legit, "still served during the flood");
          // Only the flows that opened got answers.
          await eventually(
            () => flooders.filter((f) => f.replies.length > 0).length === opened,
            "each opened flood flow got its echo",
          );
        } finally {
          legit.close();
          for (const flooder of flooders) flooder.close();
          await run.sender.close();
          await receiver.close();
        }
      },
    );
  });
}
