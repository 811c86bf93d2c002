/**
 * A hostile receiver — authenticated, speaking the protocol by hand — cannot make the sender write
 * anywhere but its configured target, whichever side dialed: FLOW_OPEN naming victims as clients,
 * mapping ids past the list, DATA for flows never opened (payloads naming victims), FLOW_CLOSE games
 * all end at the target or nowhere. And a flow socket accepts only its target's replies: datagrams a
 * stranger sends to it (another port on 127.0.0.1, or 127.0.0.2) never enter the tunnel (PROTOCOL.md
 * §8.2, §8.3, §13; SECURITY.md). Real sockets on every transport; node:test + node:assert only (runs
 * under bun test and, bundled, under node --test).
 */
import assert from "node:assert/strict";
import { createSocket, type Socket as DgramSocket } from "node:dgram";
import { describe, it } from "node:test";
import { type SenderHandle, startSender, type Transport, type UdpSocket } from "@mcudpt/core";
import { FlowCloseReason, type Frame, FrameType, Role, utf8 } from "@mcudpt/protocol";
import {
  frameName,
  frames,
  handshakeAsReceiver,
  handshakeAsSender,
  isFrame,
  type RawPeer,
  rawConnect,
  rawListen,
} from "../helpers/raw-peer.js";
import { RETRY, HOSTILE_SECRET as SECRET, TIMEOUT, victim } from "../helpers/security.js";
import { availableTransports } from "../helpers/transports.js";
import { eventually, LOOPBACK, memoryLogger, sleep, text } from "../helpers/tunnel.js";

/** The sender's target: echoes each datagram prefixed "echo:", and records who sent it (the flow sockets). */
async function recordingTarget(
  transport: Transport,
): Promise<UdpSocket & { got: Array<{ data: string; port: number }> }> {
  const got: Array<{ data: string; port: number }> = [];
  const socket: UdpSocket = await transport.bindUdp({
    host: LOOPBACK,
    port: 0,
    onDatagram: (data, address, port) => {
      got.push({ data: text(data), port });
      socket.send(utf8(`echo:${text(data)}`), port, address);
    },
    onError: () => {},
  });
  return Object.assign(socket, { got });
}

/** A UDP socket of node:dgram bound to `host` (127.0.0.2 is loopback too), for a stranger's datagrams. */
async function stranger(host: string): Promise<DgramSocket> {
  const socket = createSocket("udp4");
  await new Promise<void>((resolve, reject) => {
    socket.once("error", reject);
    socket.bind(0, host, () => resolve());
  });
  return socket;
}

type DataFrame = Extract<Frame, { type: typeof FrameType.Data }>;
const dataOf = (peer: RawPeer, flowId: number) =>
  peer.frames
    .filter((f): f is DataFrame => f.type === FrameType.Data && f.flowId === flowId)
    .map((f) => text(f.payload));

const DIRECTIONS = [
  { name: "-R (the sender dials the hostile receiver)", senderListens: false },
  { name: "-L (the hostile receiver dials the listening sender)", senderListens: true },
] as const;

for (const transport of availableTransports()) {
  describe(`a hostile receiver (${transport.name} transport)`, () => {
    for (const direction of DIRECTIONS) {
      it(
        `${direction.name}: the sender writes only to its target, and its flow sockets take only the target's replies`,
        TIMEOUT,
        async () => {
          const target = await recordingTarget(transport);
          const victims = await Promise.all([victim(transport), victim(transport)]);
          const strangers = await Promise.all([stranger("127.0.0.1"), stranger("127.0.0.2")]);
          const log = memoryLogger();
          let hostile: RawPeer | undefined;
          const listener = direction.senderListens ? undefined : await rawListen();
          const sender: SenderHandle = await startSender({
            transport,
            target: { host: LOOPBACK, port: target.port },
            tcp: { host: LOOPBACK, port: listener?.port ?? 0 },
            tcpMode: direction.senderListens ? "listen" : "dial",
            config: { secret: SECRET },
            logger: log,
            reconnect: RETRY,
          });
          try {
            if (listener) {
              await eventually(() => listener.peers.length > 0, "the sender dials the hostile receiver");
              hostile = listener.peers[0];
              await handshakeAsReceiver(hostile, SECRET);
            } else {
              hostile = await rawConnect(sender.tcpPort);
              await handshakeAsSender(hostile, SECRET, { role: Role.Receiver });
            }
            const peer = hostile;
            await eventually(() => sender.machine.session.peerConnected, "the hostile receiver is accepted");
            const naming = (where: UdpSocket) => `${LOOPBACK}:${where.port}`;

            // FLOW_OPEN naming a victim as the client, then DATA: the datagram goes to the target, never
            // to the "client" (the client address is information only, §8.2).
            peer.write(
              frames(
                {
                  type: FrameType.FlowOpen,
                  flowId: 1,
                  mappingId: 0,
                  client: { family: 4, address: LOOPBACK, port: victims[0].port },
                },
                { type: FrameType.Data, flowId: 1, payload: utf8(`for ${naming(victims[0])}`) },
                {
                  type: FrameType.FlowOpen,
                  flowId: 2,
                  mappingId: 0,
                  client: { family: 6, address: "::1", port: victims[1].port },
                },
                { type: FrameType.Data, flowId: 2, payload: utf8(`for [::1]:${victims[1].port}`) },
              ),
            );
            await eventually(() => target.got.length === 2, "both datagrams at the target");
            await eventually(
              () => dataOf(peer, 1).length === 1 && dataOf(peer, 2).length === 1,
              "the target's replies",
            );
            assert.deepEqual(dataOf(peer, 1), [`echo:for ${naming(victims[0])}`]);

            // A mapping id past the sender's list (it has one): refused, no socket opened, nothing sent.
            let seen = peer.frames.length;
            peer.write(
              frames(
                {
                  type: FrameType.FlowOpen,
                  flowId: 3,
                  mappingId: 1,
                  client: { family: 4, address: LOOPBACK, port: victims[0].port },
                },
                { type: FrameType.Data, flowId: 3, payload: utf8("through a mapping that does not exist") },
                {
                  type: FrameType.FlowOpen,
                  flowId: 4,
                  mappingId: 0xffff,
                  client: { family: 4, address: LOOPBACK, port: victims[1].port },
                },
              ),
            );
            const refused = await peer.waitFrame(
              (f): f is Extract<Frame, { type: typeof FrameType.FlowClose }> =>
                f.type === FrameType.FlowClose && f.flowId === 4,
              "FLOW_CLOSE(4, unknown mapping)",
              seen,
            );
            assert.equal(refused.reason, FlowCloseReason.UnknownMapping, frameName(refused));
            const closes3 = peer.frames.slice(seen).filter((f) => f.type === FrameType.FlowClose && f.flowId === 3);
            assert.ok(closes3.length >= 1, "flow 3 is refused too");
            assert.equal(sender.flowSockets, 2, "no socket for a mapping that does not exist");

            // DATA for flows never opened, and for flow 1 after its FLOW_CLOSE, with payloads naming the
            // victims: answered FLOW_CLOSE(unknown flow), never sent anywhere.
            seen = peer.frames.length;
            const unknown = [5, 1000, 0xffff_ffff];
            peer.write(
              frames(
                { type: FrameType.FlowClose, flowId: 1, reason: 0 },
                { type: FrameType.Data, flowId: 1, payload: utf8(`after close, for ${naming(victims[0])}`) },
                ...unknown.flatMap((flowId) =>
                  victims.map(
                    (v) =>
                      ({
                        type: FrameType.Data,
                        flowId,
                        payload: utf8(JSON.stringify({ type: "data", addr: naming(v), data: "cmVmbGVjdA==" })),
                      }) as const,
                  ),
                ),
              ),
            );
            await eventually(
              () =>
                [1, ...unknown].every((id) =>
                  peer.frames
                    .slice(seen)
                    .some(
                      (f) =>
                        f.type === FrameType.FlowClose && f.flowId === id && f.reason === FlowCloseReason.UnknownFlow,
                    ),
                ),
              "FLOW_CLOSE(unknown flow) for the closed and the never-opened ids",
            );
            assert.equal(peer.closed, false, "DATA for an unknown flow is not an error");

            // A stranger's datagrams to flow 2's socket — from another port on 127.0.0.1 and from
            // 127.0.0.2 — do not enter the tunnel; the target's own replies on it still do (control).
            const flowSocketPort = target.got[1].port;
            const sent = 20;
            for (const s of strangers) {
              for (let i = 0; i < sent; i++) s.send(`stranger ${s.address().address} #${i}`, flowSocketPort, LOOPBACK);
            }
            await sleep(100);
            target.send(utf8("the target's own reply"), flowSocketPort, LOOPBACK);
            await eventually(() => dataOf(peer, 2).includes("the target's own reply"), "the target's reply on flow 2");
            await sleep(100); // anything queued behind it
            const fromStrangers = peer.frames.filter(
              (f) => f.type === FrameType.Data && text(f.payload).startsWith("stranger"),
            );
            assert.equal(
              fromStrangers.length,
              0,
              `${fromStrangers.length} of ${2 * sent} stranger datagrams were forwarded`,
            );
            assert.deepEqual(dataOf(peer, 2), [`echo:for [::1]:${victims[1].port}`, "the target's own reply"]);

            // A frame no receiver may send once open (AUTH) ends the connection.
            seen = peer.frames.length;
            peer.write(frames({ type: FrameType.Auth, proof: new Uint8Array(32), token: new Uint8Array(0) }));
            const close = await peer.waitFrame(isFrame(FrameType.Close), "CLOSE after AUTH once open", seen);
            assert.equal(close.code, 1, frameName(close));

            await sleep(100);
            for (const v of victims) assert.deepEqual(v.got, [], `victim ${v.port} received datagrams`);
            assert.deepEqual(
              target.got.map((g) => g.data),
              [`for ${naming(victims[0])}`, `for [::1]:${victims[1].port}`],
              "the target got exactly the two datagrams of real flows",
            );
            assert.equal(sender.machine.stats.udpOut, 2, "two datagrams emitted in all, both to the target");
          } finally {
            hostile?.destroy();
            await sender.close();
            await listener?.close();
            target.close();
            for (const v of victims) v.close();
            for (const s of strangers) s.close();
          }
        },
      );
    }
  });
}
