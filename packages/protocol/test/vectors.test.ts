/**
 * The committed test-vectors.json against the codec, both ways. The JSON is the reference: if a codec
 * change alters a byte, these fail (regenerating the file is then a deliberate wire change).
 */
import { describe, expect, test } from "bun:test";
import { createHmac, verify as nodeVerify } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import {
  type CryptoProvider,
  encodeFrame,
  type Frame,
  FrameDecoder,
  FrameType,
  MappingStatus,
  PREFACE,
  ProtocolError,
  ReceiverMachine,
  SenderMachine,
} from "../src/index.ts";
import { testIdentity, verifyEd25519 } from "./harness.ts";
import { bytesOf, bytesToHex, frameFromFields, hexToBytes, normalize, type VectorFile } from "./vector-format.ts";

const root = join(import.meta.dir, "..");
const vectors = JSON.parse(readFileSync(join(root, "test-vectors.json"), "utf8")) as VectorFile;

function decodeAll(bytes: Uint8Array, preface: boolean, pieces: (b: Uint8Array) => Uint8Array[]): Frame[] {
  const decoder = new FrameDecoder({ preface });
  const out: Frame[] = [];
  for (const piece of pieces(bytes)) {
    decoder.push(piece);
    for (let f = decoder.read(); f !== undefined; f = decoder.read()) out.push(f);
  }
  expect(decoder.midFrame).toBe(false);
  return out;
}
const whole = (b: Uint8Array) => [b];
const bytewise = (b: Uint8Array) => Array.from(b, (x) => Uint8Array.of(x));

function errorCode(
  bytes: Uint8Array,
  preface: boolean,
  pieces: (b: Uint8Array) => Uint8Array[],
  handshakeLimit = false,
): string {
  const decoder = new FrameDecoder({ preface, handshakeLimit });
  try {
    for (const piece of pieces(bytes)) {
      decoder.push(piece);
      while (decoder.read() !== undefined);
    }
  } catch (e) {
    if (!(e instanceof ProtocolError)) throw e;
    return e.code;
  }
  return "(no error)";
}

test("file header", () => {
  expect(vectors.format).toBe(1);
  expect(vectors.wireVersion).toBe(1);
  expect(vectors.preface).toBe(bytesToHex(PREFACE));
  expect(vectors.frames.length).toBeGreaterThan(30);
  // Every frame type and every decoder error code has at least one vector.
  const types = new Set(vectors.frames.map((v) => v.fields.type));
  for (const t of Object.keys(vectors.frameTypes)) expect(types.has(t)).toBe(true);
  const codes = new Set(vectors.malformed.map((v) => v.error));
  for (const c of [
    "bad-preface",
    "unsupported-version",
    "unknown-frame-type",
    "frame-too-large",
    "bad-length",
    "bad-field",
    "bad-utf8",
    "bad-flow-id",
  ]) {
    expect(codes.has(c)).toBe(true);
  }
});

describe("frame vectors", () => {
  for (const v of vectors.frames) {
    test(v.name, () => {
      const bytes = bytesOf(v.hex);
      const frame = frameFromFields(v.fields);
      // fields -> hex
      expect(bytesToHex(encodeFrame(frame))).toBe(bytesToHex(bytes));
      // hex -> fields, whole and one byte at a time
      const expected = normalize(frame);
      for (const pieces of [whole, bytewise]) {
        const decoded = decodeAll(bytes, false, pieces);
        expect(decoded.length).toBe(1);
        expect(normalize(decoded[0])).toEqual(expected);
      }
    });
  }

  test("all frames concatenated (after a preface) in one chunk, and one byte at a time", () => {
    const stream = bytesOf([vectors.preface, ...vectors.frames.flatMap((v) => v.hex)]);
    const expected = vectors.frames.map((v) => normalize(frameFromFields(v.fields)));
    expect(decodeAll(stream, true, whole).map(normalize)).toEqual(expected);
    expect(decodeAll(stream, true, bytewise).map(normalize)).toEqual(expected);
  });

  test("each frame inside a chunk shared with other frames, at every position", () => {
    const small = vectors.frames.filter((v) => typeof v.hex === "string");
    for (let i = 0; i < small.length; i++) {
      const before = small[(i + 1) % small.length];
      const after = small[(i + 2) % small.length];
      const chunk = bytesOf([before.hex as string, small[i].hex as string, after.hex as string]);
      const decoded = decodeAll(chunk, false, whole).map(normalize);
      expect(decoded[1]).toEqual(normalize(frameFromFields(small[i].fields)));
      expect(decoded.length).toBe(3);
    }
  });
});

describe("malformed vectors", () => {
  for (const v of vectors.malformed) {
    test(`${v.name} -> ${v.error}`, () => {
      const bytes = bytesOf(v.hex);
      const limit = v.beforeHandshake === true;
      expect(errorCode(bytes, v.preface, whole, limit)).toBe(v.error);
      expect(errorCode(bytes, v.preface, bytewise, limit)).toBe(v.error);
      // Pre-handshake-only refusals are legal once the handshake is done (the header alone says nothing).
      if (limit) expect(errorCode(bytes, v.preface, whole)).toBe("(no error)");
      // After valid frames in the same chunk (and after the preface when one is expected).
      const lead = bytesOf(v.preface ? [] : [vectors.frames[0].hex, vectors.frames[5].hex]);
      const chunk = new Uint8Array(lead.length + bytes.length);
      chunk.set(lead);
      chunk.set(bytes, lead.length);
      const decoder = new FrameDecoder({ preface: v.preface, handshakeLimit: limit });
      decoder.push(chunk);
      let good = 0;
      let code = "(no error)";
      try {
        while (decoder.read() !== undefined) good++;
      } catch (e) {
        code = (e as ProtocolError).code;
      }
      expect(code).toBe(v.error);
      expect(good).toBe(v.preface ? 0 : 2);
    });
  }
});

// ---- handshakes ---------------------------------------------------------------------------------

/** Hands out the given byte strings in order (nonces, then the session token). */
function scriptedCrypto(...chunks: string[]): CryptoProvider {
  const queue = chunks.map(hexToBytes);
  return {
    randomBytes(length) {
      const next = queue.shift();
      if (!next || next.length !== length) throw new Error(`unexpected randomBytes(${length})`);
      return next;
    },
    hmacSha256: (key, data) => new Uint8Array(createHmac("sha256", key).update(data).digest()),
    verifyEd25519,
  };
}

const hs = vectors.handshakes;
const secretVectors = hs.filter((v) => v.mode === "secret");
const keyVectors = hs.filter((v) => v.mode === "key");
const SPKI_PREFIX = "302a300506032b6570032100";

describe("handshake vectors", () => {
  test("both modes, a new session and a resume each", () => {
    expect(secretVectors.map((v) => v.resumed)).toEqual([false, true]);
    expect(keyVectors.map((v) => v.resumed)).toEqual([false, true]);
  });

  for (const v of hs) {
    test(`${v.name}: frames, transcripts and proofs`, () => {
      for (const f of [v.acceptorHello, v.dialerHello, v.authFrame, v.acceptFrame]) {
        expect(bytesToHex(encodeFrame(frameFromFields(f.fields)))).toBe(f.hex as string);
      }
      expect(v.dialerToAcceptor).toBe(vectors.preface + v.dialerHello.hex + v.authFrame.hex);
      expect(v.acceptorToDialer).toBe(vectors.preface + v.acceptorHello.hex + v.acceptFrame.hex);
      const label = (s: string) => bytesToHex(new TextEncoder().encode(s));
      const dialerTranscript =
        label("mcudpt/1 dialer proof") + v.acceptorHello.hex + v.dialerHello.hex + v.offeredToken;
      const acceptorTranscript =
        label("mcudpt/1 acceptor proof") +
        v.acceptorHello.hex +
        v.dialerHello.hex +
        v.sessionToken +
        (v.resumed ? "01" : "00");
      expect(v.dialerTranscript).toBe(dialerTranscript);
      expect(v.acceptorTranscript).toBe(acceptorTranscript);
      expect(v.authFrame.fields.proof).toBe(v.dialerProof);
      expect(v.acceptFrame.fields.proof).toBe(v.acceptorProof);
      if (v.mode === "secret") {
        expect(v.acceptorHello.fields.publicKey).toBe("");
        const mac = (data: string) =>
          createHmac("sha256", hexToBytes(v.secret as string))
            .update(hexToBytes(data))
            .digest("hex");
        expect(v.dialerProof).toBe(mac(dialerTranscript));
        expect(v.acceptorProof).toBe(mac(acceptorTranscript));
        expect(bytesToHex(new TextEncoder().encode(v.secretText as string))).toBe(v.secret as string);
        return;
      }
      // Key mode: the public keys are those of the seeds, announced in HELLO; the proofs are their
      // (deterministic) Ed25519 signatures, and verify with an independent verifier.
      const acceptor = testIdentity(hexToBytes(v.acceptorSeed as string));
      const dialer = testIdentity(hexToBytes(v.dialerSeed as string));
      expect(bytesToHex(acceptor.publicKey)).toBe(v.acceptorPublicKey as string);
      expect(bytesToHex(dialer.publicKey)).toBe(v.dialerPublicKey as string);
      expect(v.acceptorHello.fields.publicKey).toBe(v.acceptorPublicKey);
      expect(v.dialerHello.fields.publicKey).toBe(v.dialerPublicKey);
      expect(bytesToHex(dialer.sign(hexToBytes(dialerTranscript)))).toBe(v.dialerProof);
      expect(bytesToHex(acceptor.sign(hexToBytes(acceptorTranscript)))).toBe(v.acceptorProof);
      const check = (keyHex: string, data: string, signature: string) =>
        nodeVerify(
          null,
          Buffer.from(data, "hex"),
          { key: Buffer.from(SPKI_PREFIX + keyHex, "hex"), format: "der", type: "spki" },
          Buffer.from(signature, "hex"),
        );
      expect(check(v.dialerPublicKey as string, dialerTranscript, v.dialerProof)).toBe(true);
      expect(check(v.acceptorPublicKey as string, acceptorTranscript, v.acceptorProof)).toBe(true);
      // Neither proof passes for the other direction or the other key.
      expect(check(v.acceptorPublicKey as string, dialerTranscript, v.dialerProof)).toBe(false);
      expect(check(v.dialerPublicKey as string, acceptorTranscript, v.dialerProof)).toBe(false);
    });
  }

  /** Runs the handshakes of `pair` (new session, then resume) between two machines, byte for byte. */
  function replay(pair: typeof hs, keyMode: boolean) {
    const [fresh, resume] = pair;
    // maxLanes 1: the vectors' acceptor announces Resume only (one that takes lanes adds the Lanes bit).
    const base = { keepaliveMs: 15_000, maxLanes: 1 };
    const config = keyMode ? base : { secret: fresh.secretText, ...base };
    // Each side's mappings as its HELLO lists them.
    const mappingsOf = (hello: typeof fresh.acceptorHello) =>
      (hello.fields.mappings as string[]).map((name) => (name ? { name } : {}));
    const receiver = new ReceiverMachine(
      {
        ...config,
        agent: "vector-receiver",
        mappings: mappingsOf(fresh.acceptorHello),
        ...(keyMode ? { identity: testIdentity(hexToBytes(fresh.acceptorSeed as string)) } : {}),
      },
      scriptedCrypto(fresh.acceptorNonce, fresh.sessionToken, resume.acceptorNonce),
    );
    const receiverKeys: string[] = [];
    const sender = new SenderMachine(
      {
        ...config,
        agent: "vector-sender",
        mappings: mappingsOf(fresh.dialerHello),
        ...(keyMode ? { identity: testIdentity(hexToBytes(fresh.dialerSeed as string)) } : {}),
        // Called at the acceptor's HELLO (claimed) and again after ACCEPT (proven).
        checkPeerKey: (key, _peer, proven) => {
          receiverKeys.push(`${proven ? "proven" : "claimed"} ${bytesToHex(key)}`);
          return undefined;
        },
      },
      scriptedCrypto(fresh.dialerNonce, resume.dialerNonce),
    );
    for (const [conn, v] of [
      [1, fresh],
      [2, resume],
    ] as const) {
      receiver.session.accept(conn, "sender", 0);
      sender.session.dial(conn, "receiver", 0);
      let toDialer = "";
      let toAcceptor = "";
      const authorize: string[] = [];
      const accepted: boolean[] = [];
      for (let round = 0; round < 4; round++) {
        const a = receiver.session.takeTransmit(conn);
        if (a) {
          toDialer += bytesToHex(a);
          sender.session.receive(conn, a.slice(), 0);
        }
        const d = sender.session.takeTransmit(conn);
        if (d) {
          toAcceptor += bytesToHex(d);
          receiver.session.receive(conn, d.slice(), 0);
        }
        for (let o = receiver.poll(); o; o = receiver.poll()) {
          if (o.kind === "accepted") accepted.push(o.resumed);
          // Key mode, new session: the host admits the key (here at once, as for an authorized key).
          if (o.kind === "authorize-peer") {
            authorize.push(bytesToHex(o.publicKey));
            receiver.session.approve(conn, true, 0);
          }
        }
      }
      // The handshake bytes exactly; in key mode both set Senders, so the receiver follows its ACCEPT
      // with MAPPING_STATE (§18): this sender serves both mappings.
      expect(toDialer.slice(0, v.acceptorToDialer.length)).toBe(v.acceptorToDialer);
      const after = toDialer.slice(v.acceptorToDialer.length);
      if (!keyMode) expect(after).toBe("");
      else {
        const decoder = new FrameDecoder();
        decoder.push(hexToBytes(after));
        expect(normalize(decoder.read() as Frame)).toEqual({
          type: FrameType.MappingState,
          entries: [
            { mappingId: 0, name: "dns", status: MappingStatus.Serving, reason: "" },
            { mappingId: 1, name: "ntp", status: MappingStatus.Serving, reason: "" },
          ],
        });
        expect(decoder.read()).toBeUndefined();
      }
      expect(toAcceptor).toBe(v.dialerToAcceptor);
      expect(sender.session.peerConnected).toBe(true);
      expect(accepted).toEqual([v.resumed]);
      // Only a new key-mode session asks the host; a resume with the same key does not.
      expect(authorize).toEqual(keyMode && !v.resumed ? [v.dialerPublicKey as string] : []);
      receiver.session.disconnected(conn, 1);
      sender.session.disconnected(conn, 1);
    }
    const both = (key: string) => [`claimed ${key}`, `proven ${key}`];
    expect(receiverKeys).toEqual(
      keyMode ? [...both(fresh.acceptorPublicKey as string), ...both(resume.acceptorPublicKey as string)] : [],
    );
  }

  test("the machines produce exactly the secret-mode handshakes (new session, then resume)", () => {
    replay(secretVectors, false);
  });

  test("the machines produce exactly the key-mode handshakes (new session, then resume)", () => {
    replay(keyVectors, true);
  });

  test("PROTOCOL.md's worked examples show the vectors' bytes", () => {
    const doc = readFileSync(join(root, "PROTOCOL.md"), "utf8").replace(/[\s|]+/g, "");
    const v = secretVectors[0];
    const k = keyVectors[0];
    const shown = [
      ...[v.dialerProof, v.acceptorProof, v.acceptorNonce, v.dialerNonce, v.sessionToken],
      ...[k.acceptorSeed, k.acceptorPublicKey, k.dialerSeed, k.dialerPublicKey, k.dialerProof, k.acceptorProof],
    ] as string[];
    // (not toContain: a failure would print the whole document)
    expect(shown.filter((hex) => !doc.includes(hex))).toEqual([]);
  });
});

describe("lane join vectors (PROTOCOL.md §16.1)", () => {
  const joins = vectors.joins ?? [];
  test("a secret-mode and a key-mode join", () => {
    expect(joins.map((j) => j.mode).sort()).toEqual(["key", "secret"]);
  });
  for (const j of joins) {
    test(`${j.name}: transcript, binding, proofs and frames`, () => {
      const session = vectors.handshakes.find((h) => h.name === j.session);
      expect(session).toBeDefined();
      // Bound to the joined session: its token, and its first ACCEPT's proof.
      expect(j.sessionToken).toBe(session?.sessionToken as string);
      expect(j.binding).toBe(session?.acceptorProof as string);
      const label = bytesToHex(new TextEncoder().encode("mcudpt/1 lane join"));
      expect(j.joinTranscript).toBe(
        label +
          bytesToHex(bytesOf(j.acceptorHello.hex)) +
          bytesToHex(bytesOf(j.dialerHello.hex)) +
          j.sessionToken +
          j.binding,
      );
      // Fresh nonces: not the session's own HELLOs.
      expect(j.acceptorHello.hex).not.toBe(session?.acceptorHello.hex);
      expect(j.acceptorHello.fields.capabilities).toBe(3);
      const transcript = hexToBytes(j.joinTranscript);
      const acceptorTranscript = hexToBytes(j.acceptorTranscript);
      if (j.mode === "secret") {
        const mac = (data: Uint8Array) =>
          createHmac("sha256", hexToBytes(j.secret as string))
            .update(data)
            .digest("hex");
        expect(j.joinProof).toBe(mac(transcript));
        expect(j.acceptorProof).toBe(mac(acceptorTranscript));
      } else {
        const dialerKey = session?.dialerPublicKey as string;
        const acceptorKey = session?.acceptorPublicKey as string;
        expect(verifyEd25519(hexToBytes(dialerKey), transcript, hexToBytes(j.joinProof))).toBe(true);
        expect(verifyEd25519(hexToBytes(acceptorKey), acceptorTranscript, hexToBytes(j.acceptorProof))).toBe(true);
        // Another session's binding: the same signature does not cover it.
        const other = hexToBytes(j.joinTranscript.slice(0, -2) + "00");
        expect(verifyEd25519(hexToBytes(dialerKey), other, hexToBytes(j.joinProof))).toBe(false);
      }
      for (const frame of [j.acceptorHello, j.dialerHello, j.joinFrame, j.acceptFrame]) {
        expect(bytesToHex(encodeFrame(frameFromFields(frame.fields)))).toBe(bytesToHex(bytesOf(frame.hex)));
        const decoder = new FrameDecoder();
        decoder.push(bytesOf(frame.hex));
        expect(normalize(decoder.read() as Frame)).toEqual(normalize(frameFromFields(frame.fields)));
      }
    });
  }
});
