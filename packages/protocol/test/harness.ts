/**
 * In-memory test bench for the machines: a deterministic CryptoProvider, a virtual network that pipes
 * takeTransmit() bytes of one machine into receive() of the other with a plain-number clock, and a raw
 * peer for playing a hostile or broken counterpart frame by frame. No sockets, no timers.
 */
import { createHmac, createPrivateKey, createPublicKey, sign, verify } from "node:crypto";
import {
  AuthMode,
  type CommonConfig,
  type CryptoProvider,
  concatBytes,
  encodeFrame,
  type Frame,
  FrameDecoder,
  FrameType,
  type Identity,
  type Output,
  PREFACE,
  type ReceiverConfig,
  ReceiverMachine,
  Role,
  type SenderConfig,
  SenderMachine,
  utf8,
} from "../src/index.ts";

export type Machine = ReceiverMachine | SenderMachine;

/**
 * Which role accepts the TCP connection. "-R" (the original, like ssh -R): the receiver listens and the
 * sender dials in. "-L" (like ssh -L, udp-over-tcp): the sender listens and the receiver dials.
 */
export interface Direction {
  readonly name: string;
  readonly acceptor: "receiver" | "sender";
}
export const DIRECTIONS: readonly Direction[] = [
  { name: "-R (receiver accepts)", acceptor: "receiver" },
  { name: "-L (sender accepts)", acceptor: "sender" },
];
export const R: Direction = DIRECTIONS[0];
export const L: Direction = DIRECTIONS[1];

/** The acceptor and the dialer of a receiver/sender pair in `direction`. */
export function sides<A extends Machine, B extends Machine>(direction: Direction, receiver: A, sender: B) {
  return direction.acceptor === "receiver"
    ? { acceptor: receiver as A | B, dialer: sender as A | B }
    : { acceptor: sender as A | B, dialer: receiver as A | B };
}

/** DER prefixes that turn a raw Ed25519 seed / public key into PKCS#8 / SPKI for node:crypto. */
const PKCS8_PREFIX = Buffer.from("302e020100300506032b657004220420", "hex");
const SPKI_PREFIX = Buffer.from("302a300506032b6570032100", "hex");

export function verifyEd25519(publicKey: Uint8Array, data: Uint8Array, signature: Uint8Array): boolean {
  try {
    const key = createPublicKey({ key: Buffer.concat([SPKI_PREFIX, publicKey]), format: "der", type: "spki" });
    return verify(null, data, key, signature);
  } catch {
    return false; // not a point on the curve, wrong length: not a valid signature either way
  }
}

export interface TestIdentity extends Identity {
  readonly seed: Uint8Array;
}

/**
 * An Ed25519 identity from a fixed 32-byte seed (a number n means 32 bytes of value n). Ed25519
 * signatures are deterministic, so every run signs the same bytes.
 */
export function testIdentity(seed: number | Uint8Array): TestIdentity {
  const raw = typeof seed === "number" ? new Uint8Array(32).fill(seed) : seed;
  const privateKey = createPrivateKey({ key: Buffer.concat([PKCS8_PREFIX, raw]), format: "der", type: "pkcs8" });
  const spki = createPublicKey(privateKey).export({ format: "der", type: "spki" });
  return {
    seed: raw,
    publicKey: new Uint8Array(spki.subarray(SPKI_PREFIX.length)),
    sign: (data) => new Uint8Array(sign(null, data, privateKey)),
  };
}

/** The identities the machine tests give their receivers and senders (key mode). */
export const RECEIVER_KEY = testIdentity(0x52);
export const SENDER_KEY = testIdentity(0x51);

export const framesOfType = <T extends Frame["type"]>(frames: Frame[], type: T) =>
  frames.filter((f): f is Extract<Frame, { type: T }> => f.type === type);
export const closeCodes = (frames: Frame[]) => framesOfType(frames, FrameType.Close).map((f) => f.code);

/** An identity that announces `announced`'s key but signs with `signer`'s: an impostor. */
export function forgedIdentity(announced: Identity, signer: Identity): Identity {
  return { publicKey: announced.publicKey, sign: (data) => signer.sign(data) };
}

const DIALER_LABEL = utf8("mcudpt/1 dialer proof");
const ACCEPTOR_LABEL = utf8("mcudpt/1 acceptor proof");

/** The bytes a proof covers (PROTOCOL.md §6), computed independently of link.ts. */
export function transcript(
  of: "dialer" | "acceptor",
  acceptorHello: Frame,
  dialerHello: Frame,
  token: Uint8Array,
  resumed = false,
): Uint8Array {
  return concatBytes(
    of === "dialer" ? DIALER_LABEL : ACCEPTOR_LABEL,
    encodeFrame(acceptorHello),
    encodeFrame(dialerHello),
    token,
    of === "acceptor" ? Uint8Array.of(resumed ? 1 : 0) : new Uint8Array(0),
  );
}

export function hmac(secret: string | Uint8Array, data: Uint8Array): Uint8Array {
  return new Uint8Array(createHmac("sha256", secret).update(data).digest());
}

/** Random bytes from a seeded generator (mulberry32); HMAC and Ed25519 from node:crypto. */
export function testCrypto(seed: number): CryptoProvider {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  };
  return {
    randomBytes(length) {
      const out = new Uint8Array(length);
      for (let i = 0; i < length; i++) out[i] = next() & 0xff;
      return out;
    },
    hmacSha256: (key, data) => new Uint8Array(createHmac("sha256", key).update(data).digest()),
    verifyEd25519,
  };
}

export interface End {
  machine: Machine;
  conn: number;
}

export class Wire {
  up = true;
  /** Bytes sent by these machines vanish (a host that went away without a FIN: a black hole). */
  readonly drop = new Set<Machine>();
  /** While paused, bytes wait in `queued` until flush(). */
  paused = false;
  readonly queued: Array<{ to: End; bytes: Uint8Array }> = [];
  private readonly taps = new Map<Machine, { decoder: FrameDecoder; frames: Frame[] }>();

  constructor(
    readonly a: End,
    readonly b: End,
  ) {
    for (const end of [a, b]) this.taps.set(end.machine, { decoder: new FrameDecoder({ preface: true }), frames: [] });
  }

  other(m: Machine): End {
    return this.a.machine === m ? this.b : this.a;
  }

  /** Every frame `m` wrote on this wire (decoded by an independent decoder). */
  sentBy(m: Machine): Frame[] {
    return (this.taps.get(m) as { frames: Frame[] }).frames;
  }

  tap(m: Machine, bytes: Uint8Array): void {
    const t = this.taps.get(m);
    if (!t) return;
    t.decoder.push(bytes.slice());
    for (let f = t.decoder.read(); f !== undefined; f = t.decoder.read()) t.frames.push(f);
  }
}

export class Net {
  now = 0;
  readonly wires: Wire[] = [];
  readonly machines: Machine[] = [];
  private readonly log = new Map<Machine, Output[]>();

  add<M extends Machine>(m: M): M {
    this.machines.push(m);
    this.log.set(m, []);
    return m;
  }

  /** All outputs `m` produced so far (transmit and close-connection were already acted on). */
  outputs(m: Machine): Output[] {
    return this.log.get(m) as Output[];
  }

  of<K extends Output["kind"]>(m: Machine, kind: K): Extract<Output, { kind: K }>[] {
    return this.outputs(m).filter((o): o is Extract<Output, { kind: K }> => o.kind === kind);
  }

  logs(m: Machine): string[] {
    return this.of(m, "log").map((o) => `${o.level}: ${o.message}`);
  }

  clear(): void {
    for (const l of this.log.values()) l.length = 0;
  }

  /**
   * Opens a TCP connection: `a` accepted it (conn aConn), `b` dialed it (conn bConn). Either role may
   * be on either side (ssh -R: the receiver accepts; ssh -L: the sender accepts).
   */
  connect(a: Machine, aConn: number, b: Machine, bConn: number): Wire {
    const wire = new Wire({ machine: a, conn: aConn }, { machine: b, conn: bConn });
    this.wires.push(wire);
    a.session.accept(aConn, `peer-of-${aConn}`, this.now);
    b.session.dial(bConn, `peer-of-${bConn}`, this.now);
    this.pump();
    return wire;
  }

  /** Connects a receiver and a sender in `direction`: who accepts is `direction.acceptor`. */
  link(direction: Direction, receiver: ReceiverMachine, sender: SenderMachine, rConn: number, sConn = rConn): Wire {
    return direction.acceptor === "receiver"
      ? this.connect(receiver, rConn, sender, sConn)
      : this.connect(sender, sConn, receiver, rConn);
  }

  wireOf(m: Machine, conn: number): Wire | undefined {
    return this.wires.find(
      (w) => w.up && ((w.a.machine === m && w.a.conn === conn) || (w.b.machine === m && w.b.conn === conn)),
    );
  }

  /**
   * Drains every machine's outputs and delivers bytes until nothing moves. A connection a machine
   * closes is torn down at the end of the round, after both sides' pending bytes were written (so a
   * CLOSE both sides send at once is seen on the wire from both).
   */
  pump(): void {
    for (let rounds = 0; ; rounds++) {
      if (rounds > 10_000) throw new Error("pump does not settle");
      let moved = false;
      const closing = new Set<Wire>();
      for (const m of this.machines) {
        for (let o = m.poll(); o !== undefined; o = m.poll()) {
          moved = true;
          (this.log.get(m) as Output[]).push(o);
          if (o.kind === "transmit") this.send(m, o.conn);
          if (o.kind === "close-connection") {
            this.send(m, o.conn);
            const w = this.wireOf(m, o.conn);
            if (w) closing.add(w);
          }
        }
      }
      for (const w of closing) {
        this.send(w.a.machine, w.a.conn);
        this.send(w.b.machine, w.b.conn);
        this.cut(w, false);
      }
      if (!moved) return;
    }
  }

  private send(m: Machine, conn: number): void {
    const bytes = m.session.takeTransmit(conn);
    const w = this.wireOf(m, conn);
    if (!bytes || !w) return;
    w.tap(m, bytes);
    if (w.drop.has(m)) return;
    const to = w.other(m);
    if (w.paused) w.queued.push({ to, bytes: bytes.slice() });
    else to.machine.session.receive(to.conn, bytes.slice(), this.now);
  }

  /** Delivers what a paused wire holds (at the current time) and resumes it. */
  flush(w: Wire): void {
    w.paused = false;
    for (const { to, bytes } of w.queued.splice(0)) if (w.up) to.machine.session.receive(to.conn, bytes, this.now);
    this.pump();
  }

  /** The TCP connection ends (both hosts notice). */
  cut(w: Wire, pump = true): void {
    if (!w.up) return;
    w.up = false;
    w.a.machine.session.disconnected(w.a.conn, this.now);
    w.b.machine.session.disconnected(w.b.conn, this.now);
    if (pump) this.pump();
  }

  /** Runs every timer due up to now + ms, in order, then sets the clock to now + ms. */
  advance(ms: number): void {
    const target = this.now + ms;
    for (let steps = 0; ; steps++) {
      if (steps > 100_000) throw new Error("advance does not settle");
      let next: number | undefined;
      for (const m of this.machines) {
        const t = m.nextTimeout();
        if (t !== undefined && (next === undefined || t < next)) next = t;
      }
      if (next === undefined || next > target) break;
      this.now = Math.max(this.now, next);
      this.tickAll();
    }
    this.now = target;
    this.tickAll();
  }

  private tickAll(): void {
    for (const m of this.machines) {
      m.tick(this.now);
      const t = m.nextTimeout();
      if (t !== undefined && t <= this.now) throw new Error(`nextTimeout ${t} is not after tick(${this.now})`);
    }
    this.pump();
  }
}

/** A counterpart played by hand: sends chosen bytes, reads and decodes what the machine answers. */
export class RawPeer {
  private readonly decoder = new FrameDecoder({ preface: true });
  readonly received: Frame[] = [];
  readonly outputs: Output[] = [];

  constructor(
    readonly machine: Machine,
    readonly conn: number,
    public now = 0,
  ) {}

  /**
   * The machine takes its role's usual TCP side (a receiver accepts, a sender dials: ssh -R).
   * `source`: the IP address an acceptor counts pending connections by (one per raw peer by default).
   */
  connect(source = `raw-peer-${this.conn}`): this {
    return this.machine instanceof ReceiverMachine ? this.accepted(source) : this.dialed();
  }

  /** The machine accepted this connection (the raw peer dialed it). */
  accepted(source = `raw-peer-${this.conn}`): this {
    this.machine.session.accept(this.conn, "raw-peer", this.now, source);
    this.read();
    return this;
  }

  /** The machine dialed this connection (the raw peer accepted it). */
  dialed(): this {
    this.machine.session.dial(this.conn, "raw-peer", this.now);
    this.read();
    return this;
  }

  send(...items: Array<Frame | Uint8Array>): Frame[] {
    for (const item of items) {
      this.machine.session.receive(this.conn, item instanceof Uint8Array ? item : encodeFrame(item), this.now);
    }
    return this.read();
  }

  preface(): Uint8Array {
    return PREFACE;
  }

  /** Drains the machine's outputs and decodes what it transmitted on this connection. */
  read(): Frame[] {
    for (let o = this.machine.poll(); o !== undefined; o = this.machine.poll()) this.outputs.push(o);
    const fresh: Frame[] = [];
    const bytes = this.machine.session.takeTransmit(this.conn);
    if (bytes) {
      this.decoder.push(bytes.slice());
      for (let f = this.decoder.read(); f !== undefined; f = this.decoder.read()) fresh.push(f);
      this.received.push(...fresh);
    }
    return fresh;
  }

  closed(): boolean {
    return this.outputs.some((o) => o.kind === "close-connection" && o.conn === this.conn);
  }

  closeCode(): number | undefined {
    const close = this.received.find((f) => f.type === 0x04);
    return close && close.type === 0x04 ? close.code : undefined;
  }

  closeMessage(): string | undefined {
    const close = this.received.find((f) => f.type === 0x04);
    return close && close.type === 0x04 ? close.message : undefined;
  }

  /** The machine's HELLO (sent at connect). */
  peerHello(): Extract<Frame, { type: typeof FrameType.Hello }> {
    const hello = this.received.find((f) => f.type === FrameType.Hello);
    if (!hello || hello.type !== FrameType.Hello) throw new Error("the machine sent no HELLO");
    return hello;
  }
}

export interface RawDialerOptions {
  /** Key mode: the key announced in HELLO and (unless `signer`) the one that signs. */
  identity?: Identity;
  signer?: Identity;
  /** Secret mode instead of key mode. */
  secret?: string;
  token?: Uint8Array;
  capabilities?: number;
  nonce?: Uint8Array;
  /** The dialer's mappings in HELLO (default: one unnamed). */
  mappings?: string[];
}

/**
 * Plays the dialer's half of the handshake by hand against a machine that accepted (a sender against a
 * receiver, or a receiver against a sender): preface, HELLO of the other role, then an AUTH whose proof
 * is computed here from the machine's HELLO. Returns what was sent, for replays.
 */
export function rawDialerHandshake(raw: RawPeer, options: RawDialerOptions = {}): { hello: Frame; auth: Frame } {
  const identity = options.secret === undefined ? (options.identity ?? testIdentity(0x51)) : undefined;
  const hello: Frame = {
    type: FrameType.Hello,
    role: raw.machine instanceof ReceiverMachine ? Role.Sender : Role.Receiver,
    auth: identity ? AuthMode.Key : AuthMode.Secret,
    capabilities: options.capabilities ?? 1,
    nonce: options.nonce ?? new Uint8Array(32).fill(0xd5),
    publicKey: identity ? identity.publicKey : new Uint8Array(0),
    mappings: options.mappings ?? [""],
    ...(options.mappingPorts ? { mappingPorts: options.mappingPorts } : {}),
    agent: "raw",
  };
  raw.send(PREFACE, hello);
  const token = options.token ?? new Uint8Array(0);
  const signed = transcript("dialer", raw.peerHello(), hello, token);
  const proof = identity ? (options.signer ?? identity).sign(signed) : hmac(options.secret as string, signed);
  const auth: Frame = { type: FrameType.Auth, proof, token };
  raw.send(auth);
  return { hello, auth };
}

/** The usual case: a raw sender dialing a receiver. */
export const rawSenderHandshake = rawDialerHandshake;

/** A HELLO as a raw peer sends it (one unnamed mapping unless `fields` says otherwise). */
export function rawHello(fields: Partial<HelloFrame> & Pick<HelloFrame, "role" | "auth">): HelloFrame {
  return {
    type: FrameType.Hello,
    capabilities: 0,
    nonce: new Uint8Array(32),
    publicKey: new Uint8Array(0),
    mappings: [""],
    agent: "evil",
    ...fields,
  };
}
export type HelloFrame = Extract<Frame, { type: typeof FrameType.Hello }>;

export interface RawAcceptorOptions {
  /** Key mode: the key announced in HELLO and (unless `signer`) the one that signs. */
  identity?: Identity;
  signer?: Identity;
  /** Secret mode instead of key mode. */
  secret?: string;
  /** The session token ACCEPT carries (default 16 bytes of 0x77), and its resumed flag. */
  token?: Uint8Array;
  resumed?: boolean;
  capabilities?: number;
  nonce?: Uint8Array;
  mappings?: string[];
  /** Ports per mapping (port ranges, §8.6); absent: one each. */
  mappingPorts?: number[];
}

/**
 * Plays the acceptor's half of the handshake by hand against a machine that dialed: preface, HELLO of
 * the other role, then (once the machine's AUTH arrived) an ACCEPT whose proof is computed here.
 */
export function rawAcceptorHandshake(raw: RawPeer, options: RawAcceptorOptions = {}): { hello: Frame; accept: Frame } {
  const identity = options.secret === undefined ? (options.identity ?? testIdentity(0x52)) : undefined;
  const hello: Frame = {
    type: FrameType.Hello,
    role: raw.machine instanceof ReceiverMachine ? Role.Sender : Role.Receiver,
    auth: identity ? AuthMode.Key : AuthMode.Secret,
    capabilities: options.capabilities ?? 1,
    nonce: options.nonce ?? new Uint8Array(32).fill(0xa5),
    publicKey: identity ? identity.publicKey : new Uint8Array(0),
    mappings: options.mappings ?? [""],
    ...(options.mappingPorts ? { mappingPorts: options.mappingPorts } : {}),
    agent: "raw",
  };
  raw.send(PREFACE, hello);
  if (framesOfType(raw.received, FrameType.Auth).length !== 1) throw new Error("the machine sent no AUTH");
  const token = options.token ?? new Uint8Array(16).fill(0x77);
  const resumed = options.resumed ?? false;
  const signed = transcript("acceptor", hello, raw.peerHello(), token, resumed);
  const proof = identity ? (options.signer ?? identity).sign(signed) : hmac(options.secret as string, signed);
  const accept: Frame = { type: FrameType.Accept, proof, token, resumed };
  raw.send(accept);
  return { hello, accept };
}

/**
 * A receiver and a sender on one wire, connected in `direction` (-R by default); key mode unless
 * `secret`. The acceptor's host says yes at once unless `approve: false`. `acceptor`/`dialer` config is
 * merged into whichever role takes that side.
 */
export function pair(
  opts: {
    secret?: string;
    receiver?: ReceiverConfig;
    sender?: SenderConfig;
    acceptor?: CommonConfig;
    dialer?: CommonConfig;
    approve?: boolean;
    direction?: Direction;
  } = {},
) {
  const direction = opts.direction ?? R;
  const byRole = (role: "receiver" | "sender") => (direction.acceptor === role ? opts.acceptor : opts.dialer);
  const net = new Net();
  const receiver = net.add(
    new ReceiverMachine(
      { secret: opts.secret, identity: RECEIVER_KEY, ...byRole("receiver"), ...opts.receiver },
      testCrypto(1),
    ),
  );
  const sender = net.add(
    new SenderMachine(
      { secret: opts.secret, identity: SENDER_KEY, ...byRole("sender"), ...opts.sender },
      testCrypto(2),
    ),
  );
  const wire = net.link(direction, receiver, sender, 1);
  const { acceptor, dialer } = sides(direction, receiver, sender);
  if (opts.approve !== false && acceptor.session.awaitingApproval(1)) {
    acceptor.session.approve(1, true, net.now);
    net.pump();
  }
  return { net, receiver, sender, wire, acceptor, dialer };
}
