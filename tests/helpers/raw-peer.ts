/**
 * A raw TCP peer for hostile-input tests: writes whatever bytes a test gives it (garbage, foreign
 * protocols, hand-made frames) and decodes what the other side answers with the protocol's own
 * decoder. It can also complete a correct shared-secret handshake as a sender by speaking the protocol
 * directly (the HMAC transcript of PROTOCOL.md §6.2, as Link.proof computes it), so a test can then
 * send frames no well-behaved sender would. Built on node:net: the same under every transport tested.
 */
import { createHmac, randomBytes } from "node:crypto";
import { connect, type Socket } from "node:net";
import {
  AuthMode,
  Capability,
  concatBytes,
  encodeFrame,
  type Frame,
  FrameDecoder,
  FrameType,
  FrameWriter,
  PREFACE,
  Role,
  utf8,
} from "@mcudpt/protocol";
import { eventually, LOOPBACK } from "./tunnel.js";

export interface RawPeer {
  socket: Socket;
  /** Our local port: the other side's log lines name us by it. */
  localPort: number;
  /** Frames the other side sent, in order (preface checked and skipped). */
  frames: Frame[];
  /** What the decoder made of bytes that were not valid protocol, if anything. */
  decodeError: Error | undefined;
  /** The TCP connection is gone (either side closed it). */
  readonly closed: boolean;
  /** Waits (bounded) until the connection is gone; throws naming `what` otherwise. */
  whenClosedWithin(timeoutMs: number, what: string): Promise<void>;
  write(bytes: Uint8Array | string): void;
  /** Waits (bounded) for the first frame satisfying `match` at or after index `from`. */
  waitFrame<F extends Frame>(
    match: (frame: Frame) => frame is F,
    what: string,
    from?: number,
    timeoutMs?: number,
  ): Promise<F>;
  destroy(): void;
}

export async function rawConnect(port: number): Promise<RawPeer> {
  const socket = connect({ host: LOOPBACK, port });
  await new Promise<void>((resolve, reject) => {
    socket.once("connect", resolve);
    socket.once("error", reject);
  });
  socket.setNoDelay(true);
  const decoder = new FrameDecoder({ preface: true });
  let closed = false;
  socket.once("close", () => (closed = true));
  socket.on("error", () => {}); // a reset is a close like any other here
  const peer: RawPeer = {
    socket,
    localPort: socket.localPort as number,
    frames: [],
    decodeError: undefined,
    get closed() {
      return closed;
    },
    whenClosedWithin: (timeoutMs, what) => eventually(() => closed, what, timeoutMs),
    write(bytes) {
      if (!socket.destroyed) socket.write(typeof bytes === "string" ? bytes : Buffer.from(bytes));
    },
    async waitFrame(match, what, from = 0, timeoutMs = 5000) {
      let found: Frame | undefined;
      await eventually(
        () => {
          found = peer.frames.slice(from).find(match);
          return found !== undefined;
        },
        `${what} (frames so far: ${peer.frames.map(frameName).join(", ") || "none"})`,
        timeoutMs,
      );
      return found as never;
    },
    destroy: () => socket.destroy(),
  };
  socket.on("data", (chunk: Buffer) => {
    if (peer.decodeError) return;
    try {
      decoder.push(new Uint8Array(chunk));
      for (let frame = decoder.read(); frame !== undefined; frame = decoder.read()) peer.frames.push(frame);
    } catch (error) {
      peer.decodeError = error as Error;
    }
  });
  return peer;
}

export function frameName(frame: Frame): string {
  if (frame.type === "extension") return `EXT(0x${frame.extensionType.toString(16)})`;
  switch (frame.type) {
    case FrameType.Close:
      return `CLOSE(${frame.code} ${JSON.stringify(frame.message)})`;
    case FrameType.FlowClose:
      return `FLOW_CLOSE(${frame.flowId}, ${frame.reason})`;
    case FrameType.FlowOpen:
      return `FLOW_OPEN(${frame.flowId})`;
    case FrameType.Data:
      return `DATA(${frame.flowId}, ${frame.payload.length} B)`;
    default:
      return ["", "HELLO", "AUTH", "ACCEPT", "CLOSE", "PING", "PONG"][frame.type] ?? `type ${frame.type}`;
  }
}

export const isFrame =
  <T extends FrameType>(type: T) =>
  (frame: Frame): frame is Extract<Frame, { type: T }> =>
    frame.type === type;

/** The preface followed by a sender's HELLO in secret mode (a fresh nonce), as bytes and as the frame. */
export function senderHello(agent = "hostile-test"): { bytes: Uint8Array; hello: Uint8Array } {
  const hello = encodeFrame({
    type: FrameType.Hello,
    role: Role.Sender,
    auth: AuthMode.Secret,
    capabilities: Capability.Resume,
    nonce: new Uint8Array(randomBytes(32)),
    agent,
  });
  return { bytes: concatBytes(PREFACE, hello), hello };
}

const hmac = (secret: string, data: Uint8Array) => new Uint8Array(createHmac("sha256", secret).update(data).digest());

/**
 * Completes a shared-secret handshake as a sender over `peer` (§5, §6.2), checks the receiver's own
 * proof, and returns the ACCEPT. Throws if the receiver refuses or proves a different secret.
 */
export async function handshakeAsSender(
  peer: RawPeer,
  secret: string,
): Promise<Extract<Frame, { type: typeof FrameType.Accept }>> {
  const { bytes, hello: helloD } = senderHello();
  peer.write(bytes);
  const receiverHello = await peer.waitFrame(isFrame(FrameType.Hello), "the receiver's HELLO");
  const helloA = encodeFrame(receiverHello); // canonical encoding: the bytes it sent
  const token = new Uint8Array(0);
  const macD = hmac(secret, concatBytes(utf8("mcudpt/1 dialer proof"), helloA, helloD, token));
  const writer = new FrameWriter(256);
  writer.auth(macD, token);
  peer.write(writer.take() as Uint8Array);
  const accept = await peer.waitFrame(isFrame(FrameType.Accept), "ACCEPT from the receiver");
  const macA = hmac(
    secret,
    concatBytes(utf8("mcudpt/1 acceptor proof"), helloA, helloD, accept.token, Uint8Array.of(accept.resumed ? 1 : 0)),
  );
  if (Buffer.compare(Buffer.from(macA), Buffer.from(accept.mac)) !== 0)
    throw new Error("the receiver's ACCEPT MAC does not verify");
  return accept;
}

/** Encodes frames back to back, as one write. */
export function frames(...list: Frame[]): Uint8Array {
  const writer = new FrameWriter(1024);
  for (const frame of list) writer.frame(frame);
  return writer.take() ?? new Uint8Array(0);
}
