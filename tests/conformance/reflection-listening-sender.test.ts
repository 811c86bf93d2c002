/**
 * Direction does not widen what a sender can do (PROTOCOL.md §5.1, §13): with ssh -L style the
 * receiver dials a listening sender, and a hostile one — authenticated, speaking the protocol by
 * hand — still makes the receiver send nothing to any address that did not open a flow. Before its
 * ACCEPT nothing it sends is acted on; after it, DATA and FLOW_CLOSE for forged, closed or guessed ids
 * get FLOW_CLOSE(unknown flow), only clients that asked are answered, and a FLOW_OPEN naming a victim
 * is a protocol error. Secret and key mode, every transport; node:test + node:assert only (runs under
 * bun test and, bundled, under node --test). The -R counterpart is reflection.test.ts.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { type ReceiverHandle, startReceiver } from "@mcudpt/core";
import { CloseCode, concatBytes, FrameType, Role, utf8 } from "@mcudpt/protocol";
import { testIdentity } from "../helpers/keys.js";
import { frameName, frames, handshakeAsReceiver, type RawPeer, rawListen, senderHello } from "../helpers/raw-peer.js";
import { closeOf, hostileSenderTries, RETRY, HOSTILE_SECRET as SECRET, TIMEOUT, victim } from "../helpers/security.js";
import { availableTransports } from "../helpers/transports.js";
import { eventually, LOOPBACK, memoryLogger, startClient, text } from "../helpers/tunnel.js";

for (const transport of availableTransports()) {
  describe(`reflection -L: a hostile listening sender (${transport.name} transport)`, () => {
    for (const mode of ["secret", "key"] as const) {
      it(
        `${mode} mode: the dialing receiver acts on nothing before ACCEPT, and after it answers only clients that opened flows`,
        TIMEOUT,
        async () => {
          const hostileKey = testIdentity("hostile listening sender");
          const credentials = mode === "secret" ? SECRET : hostileKey;
          const victims = await Promise.all([victim(transport), victim(transport), victim(transport)]);
          const toVictims = (flowId: number, what: string) =>
            victims.map(
              (v) => ({ type: FrameType.Data, flowId, payload: utf8(`${what} -> ${LOOPBACK}:${v.port}`) }) as const,
            );
          // Connection 1: the hostile sender's HELLO followed at once by DATA (no ACCEPT): refused.
          // Every later connection: a complete handshake, then the test's frames.
          let connections = 0;
          const listener = await rawListen((peer) => {
            connections++;
            if (connections === 1) {
              const hello = senderHello("hostile-l", mode === "key" ? hostileKey : undefined);
              peer.write(concatBytes(hello.bytes, frames(...toVictims(1, "before ACCEPT"))));
            } else {
              handshakeAsReceiver(peer, credentials, { role: Role.Sender }).catch(() => {});
            }
          });
          const log = memoryLogger();
          const receiver: ReceiverHandle = await startReceiver({
            transport,
            udp: { host: LOOPBACK, port: 0 },
            tcp: { host: LOOPBACK, port: listener.port },
            tcpMode: "dial",
            config: mode === "secret" ? { secret: SECRET } : { identity: testIdentity("dialing receiver") },
            logger: log,
            reconnect: RETRY,
          });
          const clientA = await startClient(transport, receiver.udpPort);
          const clientB = await startClient(transport, receiver.udpPort);
          try {
            await eventually(
              () => listener.peers.length >= 1 && listener.peers[0].closed,
              "the first connection closed",
            );
            const early = listener.peers[0];
            assert.equal(closeOf(early)?.code, CloseCode.ProtocolError, early.frames.map(frameName).join(", "));
            await eventually(() => receiver.machine.session.peerConnected, "the receiver accepts the hostile sender");
            const hostile = listener.peers.at(-1) as RawPeer;
            assert.equal(receiver.machine.stats.udpOut, 0, "nothing emitted before acceptance");

            await hostileSenderTries(hostile, clientA, clientB, victims);
            for (const v of victims) assert.deepEqual(v.got, [], `victim ${v.port} received datagrams`);
            assert.deepEqual(clientA.replies.map(text), ["to A", "to A again"]);
            assert.deepEqual(clientB.replies.map(text), ["to B"]);
            assert.equal(receiver.machine.stats.udpOut, 3, "three datagrams emitted in all, each to its own client");
          } finally {
            clientA.close();
            clientB.close();
            for (const v of victims) v.close();
            await receiver.close();
            await listener.close();
          }
        },
      );
    }
  });
}
