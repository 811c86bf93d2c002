/**
 * Setup shared by the conformance files named by security guarantee (tests/conformance/admission,
 * reflection, limits and hostile-bytes): a receiver and a sender on loopback with an in-memory log, an
 * operator who says yes, UDP victims and amplifiers, log-line filters and bounded echo checks.
 * node:assert only (no node:test), so it runs under bun test and, bundled, under node --test.
 */
import assert from "node:assert/strict";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
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
import { type Frame, FrameType, type ReceiverConfig, type SenderConfig } from "@mcudpt/protocol";
import { isFrame, type RawPeer } from "./raw-peer.js";
import { LOOPBACK, type MemoryLogger, memoryLogger, sleep, type TestClient, text } from "./tunnel.js";

export const TIMEOUT = { timeout: 60_000 };
export const RETRY = { initialMs: 50, maxMs: 500 };
/** The shared secret of the secret-mode tests with raw (hostile) peers. */
export const HOSTILE_SECRET = "hostile-secret";

/** A fresh directory for trust files (known_senders, known_receivers, authorized_keys). */
export function tempDir(): string {
  return mkdtempSync(join(tmpdir(), "mcudpt-security-"));
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
