/**
 * Setup shared by the conformance files named by security guarantee (tests/conformance/admission,
 * reflection, limits and hostile-bytes): a receiver and a sender on loopback with an in-memory log, an
 * operator who says yes, UDP victims and amplifiers, log-line filters and bounded echo checks.
 * node:assert only (no node:test), so it runs under bun test and, bundled, under node --test.
 */
import assert from "node:assert/strict";
import {
  type PeerPins,
  type ReceiverHandle,
  type ReceiverOptions,
  type SenderHandle,
  startReceiver,
  startSender,
  type Transport,
  type UdpSocket,
} from "@mcudpt/core";
import { CloseCode, type Frame, FrameType, type ReceiverConfig, type SenderConfig, utf8 } from "@mcudpt/protocol";
import { frames, isFrame, type RawPeer } from "./raw-peer.js";
import { scratchDir } from "./scratch.js";
import { eventually, LOOPBACK, type MemoryLogger, memoryLogger, sleep, type TestClient, text } from "./tunnel.js";

export const TIMEOUT = { timeout: 60_000 };
export const RETRY = { initialMs: 50, maxMs: 500 };
/** The shared secret of the secret-mode tests with raw (hostile) peers. */
export const HOSTILE_SECRET = "hostile-secret";

/** A fresh directory for trust files (known_senders, known_receivers, authorized_keys). */
export function tempDir(): string {
  return scratchDir("mcudpt-security-");
}

/** Lines of `log` containing every one of `parts` (fingerprints hold + and /: no regexes). */
export function linesWith(log: MemoryLogger, ...parts: string[]): string[] {
  return log.lines.filter((line) => parts.every((part) => line.includes(part)));
}

/** The lines about one peer (by its port), leaving out the "connection from" line of its arrival. */
export function linesAbout(log: MemoryLogger, port: number): string[] {
  const mentions = new RegExp(`:${port}(?!\\d)`);
  return log.lines.filter((line) => mentions.test(line) && !/^(debug|info): connection from /.test(line));
}

/** How many TCP connections the log says arrived. */
export const connectionsSeen = (log: MemoryLogger) => log.lines.filter((line) => /connection from /.test(line)).length;

export type CloseFrame = Extract<Frame, { type: typeof FrameType.Close }>;
/** The CLOSE a raw peer received, if any. */
export const closeOf = (peer: RawPeer): CloseFrame | undefined => peer.frames.find(isFrame(FrameType.Close));

export interface ReceiverSetup {
  config: ReceiverConfig;
  admission?: ReceiverOptions["admission"];
  askOperator?: ReceiverOptions["askOperator"];
}

/** A receiver on loopback (TCP and UDP on ephemeral ports) logging to memory. */
export async function receiverOn(
  transport: Transport,
  setup: ReceiverSetup,
): Promise<{ receiver: ReceiverHandle; log: MemoryLogger }> {
  const log = memoryLogger();
  const receiver = await startReceiver({
    transport,
    udp: { host: LOOPBACK, port: 0 },
    tcp: { host: LOOPBACK, port: 0 },
    logger: log,
    ...setup,
  });
  return { receiver, log };
}

/** A sender dialing `receiverPort` on loopback, forwarding to `targetPort`, retrying fast, logging to memory. */
export async function senderTo(
  transport: Transport,
  targetPort: number,
  receiverPort: number,
  config: SenderConfig,
  extra: { pins?: PeerPins } = {},
): Promise<{ sender: SenderHandle; log: MemoryLogger }> {
  const log = memoryLogger();
  const sender = await startSender({
    transport,
    target: { host: LOOPBACK, port: targetPort },
    tcp: { host: LOOPBACK, port: receiverPort },
    config,
    logger: log,
    reconnect: RETRY,
    ...extra,
  });
  return { sender, log };
}

/** An operator who says yes and keeps a record of every question. */
export function yesOperator(): { asked: string[]; ask: NonNullable<ReceiverOptions["askOperator"]> } {
  const asked: string[] = [];
  return {
    asked,
    ask: async ({ fingerprint: print }) => {
      asked.push(print);
      return true;
    },
  };
}

/** A UDP socket that never sends: anything it receives was reflected to it. */
export async function victim(transport: Transport): Promise<UdpSocket & { got: string[] }> {
  const got: string[] = [];
  const socket = await transport.bindUdp({
    host: LOOPBACK,
    port: 0,
    onDatagram: (data) => got.push(text(data)),
    onError: () => {},
  });
  return Object.assign(socket, { got });
}

/** A target that answers every datagram with `count` replies of `size` bytes each (an amplifier). */
export async function loudTarget(transport: Transport, count: number, size: number): Promise<UdpSocket> {
  const socket: UdpSocket = await transport.bindUdp({
    host: LOOPBACK,
    port: 0,
    onDatagram: (_data, address, port) => {
      for (let i = 0; i < count; i++) socket.send(new Uint8Array(size).fill(0x41 + i), port, address);
    },
    onError: () => {},
  });
  return socket;
}

/** Sends `message` until its echo arrives (bounded); fails the test otherwise. */
export async function roundTrip(client: TestClient, message: string): Promise<void> {
  assert.equal(text(await client.request(message, 10_000)), message);
}

/**
 * Sends `message` (again every 250 ms while unanswered) until its own echo comes back. A late echo of
 * an earlier message (re-sent on a slow machine) is skipped rather than taken for this one. Bounded.
 */
export async function echoed(client: TestClient, message: string, timeoutMs = 10_000): Promise<void> {
  const from = client.replies.length;
  const until = Date.now() + timeoutMs;
  while (Date.now() < until) {
    client.send(message);
    const resendAt = Date.now() + 250;
    while (Date.now() < resendAt) {
      if (client.replies.slice(from).some((reply) => text(reply) === message)) return;
      await sleep(5);
    }
  }
  throw new Error(`no echo of ${JSON.stringify(message)} within ${timeoutMs} ms`);
}

/**
 * What an accepted hostile sender (`hostile`, a raw peer past its handshake) tries, whichever side
 * dialed, and what must come of it (PROTOCOL.md §8.3, §13): DATA and FLOW_CLOSE for ids never opened,
 * for a closed flow and for the id a next flow would get (payloads naming the victims) are answered
 * FLOW_CLOSE; A, then B, then A again each open a flow and get exactly their own answer; a FLOW_OPEN
 * naming a victim ends the connection (CLOSE(1)), nothing after it acted on. The caller then checks
 * that the victims got nothing and that A got ["to A", "to A again"] and B ["to B"].
 */
export async function hostileSenderTries(
  hostile: RawPeer,
  clientA: TestClient,
  clientB: TestClient,
  victims: UdpSocket[],
): Promise<void> {
  const toVictims = (flowId: number, what: string) =>
    victims.map((v) => ({ type: FrameType.Data, flowId, payload: utf8(`${what} -> ${LOOPBACK}:${v.port}`) }) as const);
  const flowClosesSince = (from: number) => hostile.frames.slice(from).filter(isFrame(FrameType.FlowClose));

  // DATA and FLOW_CLOSE for ids never opened, before any client exists.
  let seen = hostile.frames.length;
  const forged = [1, 2, 1000, 0x7fff_ffff, 0xffff_ffff];
  hostile.write(
    frames(
      ...forged.flatMap((id) => toVictims(id, "forged")),
      ...forged.map((flowId) => ({ type: FrameType.FlowClose, flowId, reason: 0 }) as const),
    ),
  );
  await eventually(
    () => forged.every((id) => flowClosesSince(seen).some((f) => f.flowId === id)),
    "FLOW_CLOSE(unknown flow) for every forged id",
  );

  // Client A opens a flow; the hostile sender answers it (control: answers do reach their client).
  clientA.send("A asks");
  const openA = await hostile.waitFrame(isFrame(FrameType.FlowOpen), "FLOW_OPEN for A", seen);
  assert.equal(openA.client.port, clientA.socket.port);
  hostile.write(frames({ type: FrameType.Data, flowId: openA.flowId, payload: utf8("to A") }));
  await eventually(() => clientA.replies.length === 1, "A's answer");
  // It closes A's flow, then still sends to it, and to the id a next flow would get (guessing ahead).
  seen = hostile.frames.length;
  hostile.write(
    frames(
      { type: FrameType.FlowClose, flowId: openA.flowId, reason: 0 },
      { type: FrameType.Data, flowId: openA.flowId, payload: utf8("to A after its flow closed") },
      ...toVictims(openA.flowId + 1, "guessed next id"),
    ),
  );
  await eventually(
    () => flowClosesSince(seen).length >= 2,
    "FLOW_CLOSE(unknown flow) for the closed and the guessed id",
  );
  // Client B opens the next flow: only B gets what is sent to it.
  seen = hostile.frames.length;
  clientB.send("B asks");
  const openB = await hostile.waitFrame(isFrame(FrameType.FlowOpen), "FLOW_OPEN for B", seen);
  assert.equal(openB.client.port, clientB.socket.port);
  hostile.write(frames({ type: FrameType.Data, flowId: openB.flowId, payload: utf8("to B") }));
  await eventually(() => clientB.replies.length === 1, "B's answer");
  // A again: a new flow, a new id.
  seen = hostile.frames.length;
  clientA.send("A asks again");
  const reopenA = await hostile.waitFrame(isFrame(FrameType.FlowOpen), "a new FLOW_OPEN for A", seen);
  assert.notEqual(reopenA.flowId, openA.flowId);
  hostile.write(frames({ type: FrameType.Data, flowId: reopenA.flowId, payload: utf8("to A again") }));
  await eventually(() => clientA.replies.length === 2, "A's second answer");

  // A FLOW_OPEN from the sender naming a victim is a protocol error; nothing after it is acted on.
  hostile.write(
    frames(
      {
        type: FrameType.FlowOpen,
        flowId: 999,
        mappingId: 0,
        client: { family: 4, address: LOOPBACK, port: victims[0].port },
      },
      ...toVictims(999, "after FLOW_OPEN"),
      { type: FrameType.Data, flowId: openB.flowId, payload: utf8("to B after the error") },
    ),
  );
  await hostile.whenClosedWithin(5000, "closed after FLOW_OPEN from the sender");
  assert.equal(closeOf(hostile)?.code, CloseCode.ProtocolError);
  await sleep(200); // loopback delivery of anything wrongly sent
}
