/**
 * A raw TCP peer for hostile-input tests: writes whatever bytes a test gives it (garbage, foreign
 * protocols, hand-made frames) and decodes what the other side answers with the protocol's own
 * decoder. It can also complete a correct shared-secret handshake as a sender by speaking the protocol
 * directly (the HMAC transcript of PROTOCOL.md §6.2, as Link.proof computes it), so a test can then
 * send frames no well-behaved sender would; likewise in key mode (an Ed25519 signature over the same
 * transcript). The other way round, rawListen() and handshakeAsReceiver() make an impostor receiver, and
 * recordingProxy() captures a real sender's bytes for replay. Built on node:net: the same under every
 * transport tested.
 */
import { createHmac, randomBytes } from "node:crypto";
import { connect, createServer, type Server, type Socket } from "node:net";
import { verifyEd25519 } from "@mcudpt/core";
import {
  AuthMode,
  Capability,
  concatBytes,
  encodeFrame,
  type Frame,
  FrameDecoder,
  FrameType,
  FrameWriter,
  HEADER_SIZE,
  type Identity,
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
  return wrapSocket(socket);
}

/** A connected socket as a RawPeer (either end: both sides of the protocol start with the preface). */
function wrapSocket(socket: Socket): RawPeer {
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

export interface RawListener {
  port: number;
  /** Every connection accepted so far, in order. */
  peers: RawPeer[];
  close(): Promise<void>;
}

/** A TCP server on loopback whose connections are RawPeers (an impostor receiver, for instance). */
export async function rawListen(onPeer: (peer: RawPeer) => void = () => {}): Promise<RawListener> {
  const listener: RawListener = {
    port: 0,
    peers: [],
    close: () => {
      for (const peer of listener.peers) peer.destroy();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
  const server: Server = createServer((socket) => {
    const peer = wrapSocket(socket);
    listener.peers.push(peer);
    onPeer(peer);
  });
  await new Promise<void>((resolve) => server.listen(0, LOOPBACK, resolve));
  listener.port = (server.address() as { port: number }).port;
  return listener;
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

type HelloFrame = Extract<Frame, { type: typeof FrameType.Hello }>;
type AcceptFrame = Extract<Frame, { type: typeof FrameType.Accept }>;

/** How a raw peer proves itself: a shared secret (HMAC), or an Ed25519 key (signature). */
export type RawCredentials = string | Identity;

/**
 * The preface followed by a sender's HELLO (a fresh nonce), as bytes and as the encoded frame: in secret
 * mode, or in key mode announcing `identity`'s public key.
 */
export function senderHello(
  agent = "hostile-test",
  identity?: Identity,
  hello: HelloOptions = {},
): { bytes: Uint8Array; hello: Uint8Array } {
  const encoded = encodeFrame({
    type: FrameType.Hello,
    role: hello.role ?? Role.Sender,
    auth: identity ? AuthMode.Key : AuthMode.Secret,
    capabilities: hello.capabilities ?? Capability.Resume,
    nonce: new Uint8Array(randomBytes(32)),
    publicKey: identity ? identity.publicKey : new Uint8Array(0),
    mappings: hello.mappings ?? [""],
    agent,
  });
  return { bytes: concatBytes(PREFACE, encoded), hello: encoded };
}

/** What a raw sender's HELLO announces besides its key: capabilities (Resume) and mappings (one unnamed). */
export interface HelloOptions {
  /** Receiver: dial a listening sender as a receiver (ssh -L; the wire is the same, §5.1). */
  role?: Role;
  capabilities?: number;
  mappings?: string[];
}

const hmac = (secret: string, data: Uint8Array) => new Uint8Array(createHmac("sha256", secret).update(data).digest());

/** PROTOCOL.md §6: what each side's proof covers (as Link.transcript builds it). */
function transcript(
  of: "dialer" | "acceptor",
  acceptorHello: Uint8Array,
  dialerHello: Uint8Array,
  token: Uint8Array,
  resumed: boolean,
): Uint8Array {
  return concatBytes(
    utf8(`mcudpt/1 ${of} proof`),
    acceptorHello,
    dialerHello,
    token,
    of === "acceptor" ? Uint8Array.of(resumed ? 1 : 0) : new Uint8Array(0),
  );
}

const prove = (credentials: RawCredentials, data: Uint8Array) =>
  typeof credentials === "string" ? hmac(credentials, data) : credentials.sign(data);

/**
 * The AUTH frame (encoded) a sender whose HELLO was `helloD` sends in answer to `receiverHello`: an HMAC
 * with the secret, or a signature with the key. `token` is the session token offered (empty: none).
 */
export function senderAuth(
  receiverHello: HelloFrame,
  helloD: Uint8Array,
  credentials: RawCredentials,
  token = new Uint8Array(0),
): Uint8Array {
  const proof = prove(credentials, transcript("dialer", encodeFrame(receiverHello), helloD, token, false));
  const writer = new FrameWriter(256);
  writer.auth(proof, token);
  return writer.take() as Uint8Array;
}

/**
 * Completes a handshake as a sender over `peer` (§5, §6) — shared secret, or key mode with `credentials`
 * as the sender's identity — checks the receiver's own proof, and returns the ACCEPT. Throws if the
 * receiver refuses or proves a different secret or key. With `hello.role` Receiver it dials a listening
 * sender as a receiver instead (ssh -L; the wire is the same, §5.1).
 */
export async function handshakeAsSender(
  peer: RawPeer,
  credentials: RawCredentials,
  hello: HelloOptions = {},
): Promise<AcceptFrame> {
  const { bytes, hello: helloD } = senderHello(
    "hostile-test",
    typeof credentials === "string" ? undefined : credentials,
    hello,
  );
  peer.write(bytes);
  const receiverHello = await peer.waitFrame(isFrame(FrameType.Hello), "the acceptor's HELLO");
  peer.write(senderAuth(receiverHello, helloD, credentials));
  const accept = await peer.waitFrame(isFrame(FrameType.Accept), "ACCEPT from the receiver");
  const acceptorProof = transcript("acceptor", encodeFrame(receiverHello), helloD, accept.token, accept.resumed);
  const valid =
    typeof credentials === "string"
      ? Buffer.compare(Buffer.from(hmac(credentials, acceptorProof)), Buffer.from(accept.proof)) === 0
      : verifyEd25519(receiverHello.publicKey, acceptorProof, accept.proof);
  if (!valid) throw new Error("the receiver's ACCEPT proof does not verify");
  return accept;
}

/**
 * Plays the receiver's part of the handshake on an accepted `peer` (an impostor): sends the preface and
 * a receiver HELLO (in key mode announcing `announce`, by default the signing key's own), waits for the
 * sender's HELLO and AUTH, then answers ACCEPT with a proof made with `credentials` — the right ones or
 * not, that is the test's choice — followed by `after` in the same write. Does not check the sender.
 * With `role` Sender it plays a listening sender that a receiver dialed instead (ssh -L, §5.1).
 */
export async function handshakeAsReceiver(
  peer: RawPeer,
  credentials: RawCredentials,
  options: { announce?: Uint8Array; after?: Uint8Array; role?: Role } = {},
): Promise<void> {
  const keyMode = typeof credentials !== "string";
  const helloA = encodeFrame({
    type: FrameType.Hello,
    role: options.role ?? Role.Receiver,
    auth: keyMode ? AuthMode.Key : AuthMode.Secret,
    capabilities: Capability.Resume,
    nonce: new Uint8Array(randomBytes(32)),
    publicKey: keyMode ? (options.announce ?? credentials.publicKey) : new Uint8Array(0),
    mappings: [""],
    agent: "impostor-test",
  });
  peer.write(concatBytes(PREFACE, helloA));
  const senderHelloFrame = await peer.waitFrame(isFrame(FrameType.Hello), "the dialer's HELLO");
  await peer.waitFrame(isFrame(FrameType.Auth), "the dialer's AUTH");
  const token = new Uint8Array(randomBytes(16));
  const proof = prove(credentials, transcript("acceptor", helloA, encodeFrame(senderHelloFrame), token, false));
  const writer = new FrameWriter(256);
  writer.accept(proof, token, false);
  peer.write(concatBytes(writer.take() as Uint8Array, options.after ?? new Uint8Array(0)));
}

/**
 * The leading preface, HELLO and AUTH of bytes a sender wrote (what a replay attacker would capture):
 * frame boundaries come from the headers (type u8, length u32). Throws if the bytes stop short.
 */
export function handshakePrefix(bytes: Uint8Array): Uint8Array {
  let end = PREFACE.length;
  for (const expected of [FrameType.Hello, FrameType.Auth]) {
    if (bytes.length < end + HEADER_SIZE || bytes[end] !== expected)
      throw new Error(`no ${expected === FrameType.Hello ? "HELLO" : "AUTH"} at byte ${end} of the recording`);
    end += HEADER_SIZE + new DataView(bytes.buffer, bytes.byteOffset + end + 1, 4).getUint32(0);
  }
  if (bytes.length < end) throw new Error("the recording stops inside AUTH");
  return bytes.slice(0, end);
}

export interface RecordingProxy {
  port: number;
  /** Per accepted connection, in order: every byte the client (the sender) wrote so far. */
  recorded(): Uint8Array[];
  close(): Promise<void>;
}

/** A passthrough TCP proxy on loopback that records what each client sends toward `targetPort`. */
export async function recordingProxy(targetPort: number): Promise<RecordingProxy> {
  const chunks: Buffer[][] = [];
  const sockets = new Set<Socket>();
  const server: Server = createServer((client) => {
    const recording: Buffer[] = [];
    chunks.push(recording);
    const upstream = connect({ host: LOOPBACK, port: targetPort });
    for (const socket of [client, upstream]) {
      socket.setNoDelay(true);
      sockets.add(socket);
      socket.on("error", () => {});
      socket.on("close", () => sockets.delete(socket));
    }
    client.on("data", (chunk: Buffer) => {
      recording.push(Buffer.from(chunk));
      upstream.write(chunk);
    });
    upstream.on("data", (chunk: Buffer) => client.write(chunk));
    client.on("close", () => upstream.destroy());
    upstream.on("close", () => client.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, LOOPBACK, resolve));
  return {
    port: (server.address() as { port: number }).port,
    recorded: () => chunks.map((list) => new Uint8Array(Buffer.concat(list))),
    close: () => {
      for (const socket of sockets) socket.destroy();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}

/** Encodes frames back to back, as one write. */
export function frames(...list: Frame[]): Uint8Array {
  const writer = new FrameWriter(1024);
  for (const frame of list) writer.frame(frame);
  return writer.take() ?? new Uint8Array(0);
}
