/**
 * The committed test-vectors.json against the codec, both ways. The JSON is the reference: if a codec
 * change alters a byte, these fail (regenerating the file is then a deliberate wire change).
 */
import { describe, expect, test } from "bun:test";
import { createHmac } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import {
  type CryptoProvider,
  encodeFrame,
  type Frame,
  FrameDecoder,
  PREFACE,
  ProtocolError,
  ReceiverMachine,
  SenderMachine,
} from "../src/index.ts";
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

function errorCode(bytes: Uint8Array, preface: boolean, pieces: (b: Uint8Array) => Uint8Array[]): string {
  const decoder = new FrameDecoder({ preface });
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
      expect(errorCode(bytes, v.preface, whole)).toBe(v.error);
      expect(errorCode(bytes, v.preface, bytewise)).toBe(v.error);
      // After valid frames in the same chunk (and after the preface when one is expected).
      const lead = bytesOf(v.preface ? [] : [vectors.frames[0].hex, vectors.frames[5].hex]);
      const chunk = new Uint8Array(lead.length + bytes.length);
      chunk.set(lead);
      chunk.set(bytes, lead.length);
      const decoder = new FrameDecoder({ preface: v.preface });
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
  };
}

const hs = vectors.handshakes;

describe("handshake vectors", () => {
  for (const v of hs) {
    test(`${v.name}: frames and MACs`, () => {
      for (const f of [v.acceptorHello, v.dialerHello, v.authFrame, v.acceptFrame]) {
        expect(bytesToHex(encodeFrame(frameFromFields(f.fields)))).toBe(f.hex as string);
      }
      expect(v.dialerToAcceptor).toBe(vectors.preface + v.dialerHello.hex + v.authFrame.hex);
      expect(v.acceptorToDialer).toBe(vectors.preface + v.acceptorHello.hex + v.acceptFrame.hex);
      if (v.mode !== "secret") {
        expect(v.dialerMac).toBe("");
        expect(v.acceptorMac).toBe("");
        return;
      }
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
      const mac = (data: string) =>
        createHmac("sha256", hexToBytes(v.secret as string))
          .update(hexToBytes(data))
          .digest("hex");
      expect(v.dialerMac).toBe(mac(dialerTranscript));
      expect(v.acceptorMac).toBe(mac(acceptorTranscript));
      expect(bytesToHex(new TextEncoder().encode(v.secretText))).toBe(v.secret as string);
    });
  }

  test("the machines produce exactly these handshakes (new session, then resume)", () => {
    const [fresh, resume] = hs;
    const config = { secret: fresh.secretText, keepaliveMs: 15_000 };
    const receiver = new ReceiverMachine(
      { ...config, agent: "vector-receiver" },
      scriptedCrypto(fresh.acceptorNonce, fresh.sessionToken, resume.acceptorNonce),
    );
    const sender = new SenderMachine(
      { ...config, agent: "vector-sender" },
      scriptedCrypto(fresh.dialerNonce, resume.dialerNonce),
    );
    for (const [conn, v] of [
      [1, fresh],
      [2, resume],
    ] as const) {
      receiver.connect(conn, "sender", 0);
      sender.connect(conn, "receiver", 0);
      let toDialer = "";
      let toAcceptor = "";
      for (let round = 0; round < 4; round++) {
        const a = receiver.takeTransmit(conn);
        if (a) {
          toDialer += bytesToHex(a);
          sender.receive(conn, a.slice(), 0);
        }
        const d = sender.takeTransmit(conn);
        if (d) {
          toAcceptor += bytesToHex(d);
          receiver.receive(conn, d.slice(), 0);
        }
      }
      expect(toDialer).toBe(v.acceptorToDialer);
      expect(toAcceptor).toBe(v.dialerToAcceptor);
      expect(sender.connected).toBe(true);
      const accepted: boolean[] = [];
      for (let o = receiver.poll(); o; o = receiver.poll()) if (o.kind === "accepted") accepted.push(o.resumed);
      expect(accepted).toEqual([v.resumed]);
      receiver.disconnected(conn, 1);
      sender.disconnected(conn, 1);
    }
  });

  test("approval handshake from the machines", () => {
    const v = hs[2];
    const receiver = new ReceiverMachine({ agent: "vector-receiver" }, scriptedCrypto(v.acceptorNonce, v.sessionToken));
    const sender = new SenderMachine({ agent: "vector-sender" }, scriptedCrypto(v.dialerNonce));
    receiver.connect(1, "sender", 0);
    sender.connect(1, "receiver", 0);
    let toDialer = "";
    let toAcceptor = "";
    const exchange = () => {
      const a = receiver.takeTransmit(1);
      if (a) {
        toDialer += bytesToHex(a);
        sender.receive(1, a.slice(), 0);
      }
      const d = sender.takeTransmit(1);
      if (d) {
        toAcceptor += bytesToHex(d);
        receiver.receive(1, d.slice(), 0);
      }
    };
    exchange();
    exchange();
    let asked = false;
    for (let o = receiver.poll(); o; o = receiver.poll()) if (o.kind === "ask-operator") asked = true;
    expect(asked).toBe(true);
    receiver.approve(1, true, 5);
    exchange();
    expect(toDialer).toBe(v.acceptorToDialer);
    expect(toAcceptor).toBe(v.dialerToAcceptor);
    expect(sender.connected).toBe(true);
  });

  test("PROTOCOL.md's worked example shows the vector's bytes", () => {
    const doc = readFileSync(join(root, "PROTOCOL.md"), "utf8").replace(/[\s|]+/g, "");
    const v = hs[0];
    for (const hex of [v.dialerMac, v.acceptorMac, v.acceptorNonce, v.dialerNonce, v.sessionToken])
      expect(doc).toContain(hex);
  });
});
