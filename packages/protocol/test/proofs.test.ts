/**
 * What the proofs of PROTOCOL.md §6 promise beyond "a wrong proof fails" (§13): a MAC is compared in
 * constant time (every byte is read, wherever the first difference is), and a proof cannot be
 * reflected — a side's own proof, played back to it as the peer's, does not verify (the labels and
 * the ACCEPT's resumed byte keep the two transcripts apart). Both TCP directions, both modes.
 */
import { describe, expect, test } from "bun:test";
import {
  AuthMode,
  bytesEqual,
  CloseCode,
  type CryptoProvider,
  type Frame,
  FrameType,
  PREFACE,
  ReceiverMachine,
  Role,
  SenderMachine,
} from "../src/index.ts";
import {
  DIRECTIONS,
  type Direction,
  framesOfType,
  hmac,
  pair,
  RawPeer,
  RECEIVER_KEY,
  rawDialerHandshake,
  rawHello,
  SENDER_KEY,
  testCrypto,
  transcript,
} from "./harness.ts";

const SECRET = "reflection secret";

/** `bytes` behind a proxy that counts reads of its elements (`bytes[i]`), for comparisons that must read all. */
function counted(bytes: Uint8Array): { bytes: Uint8Array; reads: () => number } {
  let reads = 0;
  const proxy = new Proxy(bytes, {
    get(target, property) {
      if (typeof property === "string" && /^\d+$/.test(property)) reads++;
      const value = Reflect.get(target, property, target);
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
  return { bytes: proxy, reads: () => reads };
}

describe("constant-time comparison", () => {
  test("bytesEqual reads every byte of both inputs, wherever the first difference is", () => {
    const reference = new Uint8Array(32).map((_, i) => i * 7);
    for (const differAt of [0, 1, 16, 31, -1]) {
      const other = reference.slice();
      if (differAt >= 0) other[differAt] ^= 0x80;
      const a = counted(reference);
      const b = counted(other);
      expect(bytesEqual(a.bytes, b.bytes)).toBe(differAt < 0);
      expect({ differAt, reads: [a.reads(), b.reads()] }).toEqual({ differAt, reads: [32, 32] });
    }
    // Lengths are not secret: a length mismatch may (and does) answer at once.
    expect(bytesEqual(new Uint8Array(32), new Uint8Array(31))).toBe(false);
  });

  for (const dir of DIRECTIONS) {
    test(`${dir.name}: the acceptor checks an AUTH MAC by reading all 32 bytes of it, even when byte 0 is wrong`, () => {
      // Every MAC the acceptor computes is handed out counted; the one it checks the AUTH against is
      // the last one computed before its CLOSE.
      const macs: Array<ReturnType<typeof counted>> = [];
      const base = testCrypto(1);
      const crypto: CryptoProvider = {
        ...base,
        hmacSha256: (key, data) => {
          const mac = counted(base.hmacSha256(key, data));
          macs.push(mac);
          return mac.bytes;
        },
      };
      for (const wrongByte of [0, 31]) {
        macs.length = 0;
        const acceptor =
          dir.acceptor === "receiver"
            ? new ReceiverMachine({ secret: SECRET }, crypto)
            : new SenderMachine({ secret: SECRET }, crypto);
        const raw = new RawPeer(acceptor, 1).accepted();
        const hello = rawHello({
          role: dir.acceptor === "receiver" ? Role.Sender : Role.Receiver,
          auth: AuthMode.Secret,
          capabilities: 1,
        });
        raw.send(PREFACE, hello);
        const proof = hmac(SECRET, transcript("dialer", raw.peerHello(), hello, new Uint8Array(0)));
        proof[wrongByte] ^= 0x01;
        raw.send({ type: FrameType.Auth, proof, token: new Uint8Array(0) });
        expect(raw.closeCode()).toBe(CloseCode.AuthFailed);
        expect(macs.length).toBe(1);
        expect({ wrongByte, reads: macs[0].reads() }).toEqual({ wrongByte, reads: 32 });
      }
    });
  }
});

type AuthFrame = Extract<Frame, { type: typeof FrameType.Auth }>;

/** The frames a dialer machine sent a raw acceptor so far (its HELLO, then its AUTH). */
function dialerFrames(raw: RawPeer): { hello: Frame; auth: AuthFrame } {
  const auth = framesOfType(raw.received, FrameType.Auth)[0];
  if (!auth) throw new Error("the dialer sent no AUTH");
  return { hello: raw.peerHello(), auth };
}

const roleOf = (dir: Direction, side: "acceptor" | "dialer") =>
  (dir.acceptor === "receiver") === (side === "acceptor") ? Role.Receiver : Role.Sender;

for (const dir of DIRECTIONS) {
  for (const mode of ["secret", "key"] as const) {
    const secret = mode === "secret" ? SECRET : undefined;
    describe(`no reflection of a proof ${dir.name}, ${mode} mode`, () => {
      test("the dialer's own AUTH proof returned to it as the ACCEPT proof fails: CLOSE(AUTH_FAILED), nothing opened", () => {
        // A dialer with a session (so its AUTH offers the token: the reflected ACCEPT can name it back,
        // resumed, as a real resumption would), then a man in the middle answering its next connection.
        const { net, wire, dialer: resuming } = pair({ secret, direction: dir });
        net.cut(wire);
        const fresh =
          dir.acceptor === "receiver"
            ? new SenderMachine({ secret, identity: SENDER_KEY }, testCrypto(7))
            : new ReceiverMachine({ secret, identity: RECEIVER_KEY }, testCrypto(7));
        for (const [offered, dialer] of [
          ["the session token", resuming],
          ["no token", fresh],
        ] as const) {
          const impostor = new RawPeer(dialer, 2, net.now).dialed();
          // In key mode the impostor announces the dialer's own key: its own signature is then "valid"
          // for that key, and only the transcript it covers tells it apart. Unpinned, the dialer takes
          // any key at HELLO (trust on first use), so nothing else stops it.
          const hello = rawHello({
            role: roleOf(dir, "acceptor"),
            auth: secret ? AuthMode.Secret : AuthMode.Key,
            capabilities: 1,
            nonce: new Uint8Array(32).fill(0x3c),
            publicKey: secret ? new Uint8Array(0) : (dir.acceptor === "receiver" ? SENDER_KEY : RECEIVER_KEY).publicKey,
          });
          impostor.send(PREFACE, hello);
          const { auth } = dialerFrames(impostor);
          const reflected: Frame = {
            type: FrameType.Accept,
            proof: auth.proof,
            token: auth.token,
            resumed: auth.token.length > 0,
          };
          impostor.send(reflected);
          expect({ offered, close: impostor.closeCode() }).toEqual({ offered, close: CloseCode.AuthFailed });
          expect(impostor.outputs.some((o) => o.kind === "accepted")).toBe(false);
          expect(dialer.session.peerConnected).toBe(false);
          expect(auth.token.length).toBe(offered === "no token" ? 0 : 16);
        }
      });

      test("an AUTH proof made over the acceptor's transcript (its label, its resumed byte) fails: CLOSE(AUTH_FAILED)", () => {
        const acceptor =
          dir.acceptor === "receiver"
            ? new ReceiverMachine({ secret, identity: RECEIVER_KEY }, testCrypto(1))
            : new SenderMachine({ secret, identity: SENDER_KEY }, testCrypto(2));
        const dialerKey = dir.acceptor === "receiver" ? SENDER_KEY : RECEIVER_KEY;
        for (const token of [new Uint8Array(0), new Uint8Array(16).fill(0x42)]) {
          const raw = new RawPeer(acceptor, token.length + 1).accepted(`192.0.2.${token.length + 1}`);
          const hello = rawHello({
            role: roleOf(dir, "dialer"),
            auth: secret ? AuthMode.Secret : AuthMode.Key,
            capabilities: 1,
            publicKey: secret ? new Uint8Array(0) : dialerKey.publicKey,
          });
          raw.send(PREFACE, hello);
          // What the acceptor itself would prove for this very transcript, had it accepted with this token.
          const asAcceptor = transcript("acceptor", raw.peerHello(), hello, token, false);
          const proof = secret ? hmac(secret, asAcceptor) : dialerKey.sign(asAcceptor);
          raw.send({ type: FrameType.Auth, proof, token });
          expect({ token: token.length, close: raw.closeCode() }).toEqual({
            token: token.length,
            close: CloseCode.AuthFailed,
          });
          expect(raw.outputs.some((o) => o.kind === "accepted" || o.kind === "authorize-peer")).toBe(false);
        }
        expect(acceptor.session.peerConnected).toBe(false);
        // Control: the dialer's own label verifies on the same kind of connection.
        const good = new RawPeer(acceptor, 9).accepted("192.0.2.9");
        rawDialerHandshake(good, secret ? { secret } : { identity: dialerKey });
        if (!secret) acceptor.session.approve(9, true, 0);
        good.read();
        expect(good.closeCode()).toBeUndefined();
        expect(acceptor.session.peerConnected).toBe(true);
      });
    });
  }
}
