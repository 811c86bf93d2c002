import { describe, expect, test } from "bun:test";
import {
  describeStranger,
  encodeFrame,
  type Frame,
  FrameDecoder,
  FrameType,
  FrameWriter,
  MAX_HANDSHAKE_BODY,
  PREFACE,
  ProtocolError,
  utf8,
} from "../src/index.ts";
import { normalize } from "./vector-format.ts";

/** Small deterministic PRNG (mulberry32) so "random" splits are the same on every run. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const sampleFrames: Frame[] = [
  {
    type: FrameType.Hello,
    role: 2,
    auth: 2,
    capabilities: 1,
    nonce: new Uint8Array(32).fill(7),
    publicKey: new Uint8Array(0),
    mappings: [""],
    agent: "test ✓",
  },
  {
    type: FrameType.Hello,
    role: 1,
    auth: 1,
    capabilities: 0,
    nonce: new Uint8Array(32).fill(8),
    publicKey: new Uint8Array(32).fill(9),
    mappings: ["dns", "", "ntp ✓"],
    agent: "",
  },
  { type: FrameType.Auth, proof: new Uint8Array(32).fill(1), token: new Uint8Array(16).fill(2) },
  { type: FrameType.Auth, proof: new Uint8Array(64).fill(4), token: new Uint8Array(0) },
  { type: FrameType.Accept, proof: new Uint8Array(0), token: new Uint8Array(16).fill(3), resumed: true },
  { type: FrameType.Accept, proof: new Uint8Array(64).fill(5), token: new Uint8Array(16).fill(3), resumed: false },
  { type: FrameType.FlowOpen, flowId: 9, mappingId: 3, client: { family: 6, address: "2001:db8::7", port: 5353 } },
  { type: FrameType.Data, flowId: 9, payload: new Uint8Array(0) },
  { type: FrameType.Data, flowId: 9, payload: new Uint8Array(65_535).map((_, i) => i * 7) },
  { type: FrameType.Data, flowId: 10, payload: utf8("hello") },
  { type: "extension", extensionType: 0x99, body: Uint8Array.of(1, 2, 3) },
  { type: FrameType.Ping, payload: new Uint8Array(8).fill(0x55) },
  { type: FrameType.Pong, payload: new Uint8Array(8).fill(0x66) },
  { type: FrameType.FlowClose, flowId: 9, reason: 1 },
  { type: FrameType.Close, code: 0, message: "bye" },
];

function stream(frames: Frame[], preface = true): Uint8Array {
  const w = new FrameWriter(64);
  if (preface) w.preface();
  for (const f of frames) w.frame(f);
  return w.take() as Uint8Array;
}

function decodePieces(pieces: Uint8Array[], preface = true): Frame[] {
  const d = new FrameDecoder({ preface });
  const out: Frame[] = [];
  for (const p of pieces) {
    d.push(p);
    for (let f = d.read(); f !== undefined; f = d.read()) out.push(normalize(f) as unknown as Frame);
  }
  expect(d.midFrame).toBe(false);
  return out;
}

function split(bytes: Uint8Array, next: () => number, maxPiece: number): Uint8Array[] {
  const pieces: Uint8Array[] = [];
  for (let at = 0; at < bytes.length; ) {
    const n = Math.min(bytes.length - at, Math.floor(next() * maxPiece));
    pieces.push(bytes.subarray(at, at + n)); // n may be 0: empty chunks are legal
    at += n;
  }
  return pieces;
}

function thrown(fn: () => void): ProtocolError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(ProtocolError);
    return e as ProtocolError;
  }
  throw new Error("expected a ProtocolError");
}

describe("chunking", () => {
  const bytes = stream(sampleFrames);
  const expected = sampleFrames.map(normalize);

  test("one chunk", () => {
    expect(decodePieces([bytes])).toEqual(expected as never);
  });

  test("one byte at a time", () => {
    expect(decodePieces(Array.from(bytes, (b) => Uint8Array.of(b)))).toEqual(expected as never);
  });

  test("random splits (seeded)", () => {
    const next = rng(42);
    for (const maxPiece of [2, 3, 7, 64, 1000, 70_000]) {
      for (let run = 0; run < 5; run++) expect(decodePieces(split(bytes, next, maxPiece))).toEqual(expected as never);
    }
  });

  test("a frame wholly inside a chunk is a view into it (no copy)", () => {
    const chunk = stream([{ type: FrameType.Data, flowId: 1, payload: utf8("abc") }], false);
    const d = new FrameDecoder();
    d.push(chunk);
    const f = d.read() as Extract<Frame, { type: 0x12 }>;
    expect(f.payload.buffer).toBe(chunk.buffer);
  });

  test("push before the previous chunk was read is a caller bug", () => {
    const d = new FrameDecoder();
    d.push(stream([{ type: FrameType.Ping, payload: new Uint8Array(8) }], false));
    expect(() => d.push(new Uint8Array(1))).toThrow();
  });
});

describe("size limits on the header alone", () => {
  test("an oversized DATA length is refused after its 5 header bytes, nothing buffered", () => {
    const d = new FrameDecoder();
    d.push(Uint8Array.of(0x12, 0x00, 0x01, 0x00, 0x04)); // 65540 > 65539
    expect(thrown(() => d.read()).code).toBe("frame-too-large");
    expect(d.midFrame).toBe(false);
  });

  test("same when the header arrives one byte at a time: throws on the fifth byte", () => {
    const d = new FrameDecoder();
    const header = [0x12, 0xff, 0xff, 0xff, 0xff];
    for (let i = 0; i < 4; i++) {
      d.push(Uint8Array.of(header[i]));
      expect(d.read()).toBeUndefined();
    }
    d.push(Uint8Array.of(header[4]));
    expect(thrown(() => d.read()).code).toBe("frame-too-large");
    expect(d.midFrame).toBe(false);
  });

  test("the largest legal DATA length is accepted and waits for its body", () => {
    const d = new FrameDecoder();
    d.push(Uint8Array.of(0x12, 0x00, 0x01, 0x00, 0x03, 0, 0, 0, 1));
    expect(d.read()).toBeUndefined();
    expect(d.midFrame).toBe(true);
  });

  test("every core type's maximum + 1 is refused", () => {
    const max: Record<number, number> = {
      1: 1257,
      2: 82,
      3: 83,
      4: 1026,
      5: 8,
      6: 8,
      16: 25,
      17: 5,
      18: 65_539,
      128: 65_535,
    };
    for (const [type, limit] of Object.entries(max)) {
      const header = new Uint8Array(5);
      header[0] = Number(type);
      new DataView(header.buffer).setUint32(1, limit + 1);
      const d = new FrameDecoder();
      d.push(header);
      expect(thrown(() => d.read()).code).toBe("frame-too-large");
    }
  });
});

describe("pre-authentication limit", () => {
  function header(type: number, length: number): Uint8Array {
    const h = new Uint8Array(5);
    h[0] = type;
    new DataView(h.buffer).setUint32(1, length);
    return h;
  }

  test("with handshakeLimit, any frame declaring more than 2048 bytes is refused on its header", () => {
    expect(MAX_HANDSHAKE_BODY).toBe(2048);
    for (const [type, length] of [
      [FrameType.Data, 65_000],
      [FrameType.Data, 2049],
      [0x80, 4096],
      [FrameType.Close, 1026], // within CLOSE's own maximum, so fine: the point is the 2048 check
    ]) {
      const d = new FrameDecoder({ handshakeLimit: true });
      d.push(header(type, length));
      if (length > MAX_HANDSHAKE_BODY) {
        const e = thrown(() => d.read());
        expect(e.code).toBe("frame-too-large");
        expect(e.message).toContain("before the handshake completed");
        expect(d.midFrame).toBe(false); // nothing of a body was waited for
      } else {
        expect(d.read()).toBeUndefined();
      }
    }
  });

  test("exactly 2048 is allowed and waits for its body; one byte at a time throws on the fifth byte", () => {
    const d = new FrameDecoder({ preface: true, handshakeLimit: true });
    d.push(PREFACE);
    expect(d.read()).toBeUndefined();
    d.push(header(0x80, 2048));
    expect(d.read()).toBeUndefined();
    expect(d.midFrame).toBe(true);
    const e = new FrameDecoder({ preface: false, handshakeLimit: true });
    const bytes = header(FrameType.Data, 65_000);
    for (let i = 0; i < 4; i++) {
      e.push(bytes.subarray(i, i + 1));
      expect(e.read()).toBeUndefined();
    }
    e.push(bytes.subarray(4));
    expect(thrown(() => e.read()).code).toBe("frame-too-large");
  });

  test("lifting the limit (handshake done) lets the same header through", () => {
    const d = new FrameDecoder({ handshakeLimit: true });
    d.push(stream([{ type: FrameType.Ping, payload: new Uint8Array(8) }], false));
    expect(d.read()?.type).toBe(FrameType.Ping);
    d.handshakeLimit = false;
    const big = stream([{ type: FrameType.Data, flowId: 1, payload: new Uint8Array(65_000) }], false);
    d.push(big);
    const f = d.read() as Extract<Frame, { type: 0x12 }>;
    expect(f.payload.length).toBe(65_000);
  });

  test("without the option (default) there is no such limit", () => {
    const d = new FrameDecoder();
    d.push(header(FrameType.Data, 65_000));
    expect(d.read()).toBeUndefined();
    expect(d.midFrame).toBe(true);
  });
});

describe("preface", () => {
  function prefaceError(text: string | Uint8Array): ProtocolError {
    const d = new FrameDecoder({ preface: true });
    d.push(typeof text === "string" ? utf8(text) : text);
    return thrown(() => d.read());
  }

  test("the real preface then frames", () => {
    const d = new FrameDecoder({ preface: true });
    d.push(PREFACE);
    expect(d.read()).toBeUndefined();
    expect(d.midFrame).toBe(false);
  });

  test("HTTP request", () => {
    const e = prefaceError("GET /metrics HTTP/1.1\r\nHost: tunnel:4000\r\n\r\n");
    expect(e.code).toBe("bad-preface");
    expect(e.message).toContain("HTTP request");
    expect(e.message).toContain("GET /metrics");
  });

  test("the original Go mcudpt's JSON", () => {
    const e = prefaceError('{"type":"hello","id":1}\n');
    expect(e.code).toBe("bad-preface");
    expect(e.message).toContain("original Go mcudpt");
    expect(e.message).toContain('{\\"type\\"');
  });

  test("SSH banner", () => {
    const e = prefaceError("SSH-2.0-OpenSSH_9.6p1 Ubuntu-3ubuntu13\r\n");
    expect(e.code).toBe("bad-preface");
    expect(e.message).toContain("SSH banner");
  });

  test("TLS ClientHello", () => {
    const e = prefaceError(Uint8Array.of(0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03));
    expect(e.code).toBe("bad-preface");
    expect(e.message).toContain("TLS");
    expect(e.message).toContain("0x160301");
  });

  test("wrong wire version", () => {
    const e = prefaceError(Uint8Array.of(...PREFACE.subarray(0, 7), 2, 0x01, 0, 0, 0, 0));
    expect(e.code).toBe("unsupported-version");
    expect(e.message).toContain("wire version 2");
  });

  test("wrong version detected on the 8th byte when fed byte by byte", () => {
    const d = new FrameDecoder({ preface: true });
    for (let i = 0; i < 7; i++) {
      d.push(PREFACE.subarray(i, i + 1));
      expect(d.read()).toBeUndefined();
    }
    expect(d.midFrame).toBe(true);
    d.push(Uint8Array.of(9));
    expect(thrown(() => d.read()).code).toBe("unsupported-version");
  });

  test("fails on the first differing byte without waiting for 8", () => {
    const d = new FrameDecoder({ preface: true });
    d.push(utf8("MCX"));
    expect(thrown(() => d.read()).code).toBe("bad-preface");
  });

  test("describeStranger names other things plainly", () => {
    expect(describeStranger(utf8("HTTP/1.1 200 OK\r\n"))).toContain("HTTP");
    expect(describeStranger(utf8("[1,2]"))).toContain("JSON");
    expect(describeStranger(Uint8Array.of(0, 1, 2))).toContain("0x000102");
    expect(describeStranger(utf8("hello"))).toContain("not the mcudpt preface");
  });
});

test("encodeFrame output decodes back (all sample frames)", () => {
  for (const f of sampleFrames) expect(decodePieces([encodeFrame(f)], false)).toEqual([normalize(f)] as never);
});

describe("writer", () => {
  test("frames written across buffer growth come out intact (tiny chunk size, every type)", () => {
    for (const chunkSize of [1, 7, 16, 64]) {
      const w = new FrameWriter(chunkSize);
      w.preface();
      const taken: Uint8Array[] = [];
      for (let i = 0; i < sampleFrames.length; i++) {
        w.frame(sampleFrames[i]);
        if (i % 3 === 2) taken.push((w.take() as Uint8Array).slice());
      }
      const rest = w.take();
      if (rest) taken.push(rest);
      expect(decodePieces(taken)).toEqual(sampleFrames.map(normalize) as never);
    }
  });

  test("a PING that makes the buffer grow keeps its payload", () => {
    const w = new FrameWriter(16);
    w.data(1, new Uint8Array(5)); // 14 of 16 bytes used: the PING needs a fresh buffer
    w.ping(Uint8Array.of(1, 2, 3, 4, 5, 6, 7, 8));
    w.frame({ type: "extension", extensionType: 0x80, body: Uint8Array.of(9, 9) });
    const frames = decodePieces([w.take() as Uint8Array], false);
    expect(frames[1]).toEqual(
      normalize({ type: FrameType.Ping, payload: Uint8Array.of(1, 2, 3, 4, 5, 6, 7, 8) }) as never,
    );
    expect(frames[2]).toEqual(
      normalize({ type: "extension", extensionType: 0x80, body: Uint8Array.of(9, 9) }) as never,
    );
  });

  test("bytes already taken are never overwritten by later frames", () => {
    const w = new FrameWriter(32);
    w.data(1, utf8("first"));
    const first = w.take() as Uint8Array;
    const copy = first.slice();
    for (let i = 0; i < 50; i++) w.data(2, new Uint8Array(i).fill(0xee));
    expect(first).toEqual(copy);
  });

  test("refuses what it cannot encode", () => {
    const w = new FrameWriter();
    expect(() => w.data(1, new Uint8Array(65_536))).toThrow(ProtocolError);
    expect(() => w.ping(new Uint8Array(7))).toThrow(ProtocolError);
    expect(() => w.extension(0x12, new Uint8Array(1))).toThrow(ProtocolError);
    expect(() => w.flowOpen(1, 0, { family: 4, address: "example.com", port: 1 })).toThrow(ProtocolError);
    expect(() => w.hello(1, 1, 0, new Uint8Array(32), new Uint8Array(31), [""], "")).toThrow(ProtocolError);
    // Mapping lists: 1 to 32 mappings, names of at most 32 UTF-8 bytes.
    const hello = (mappings: string[]) => () => w.hello(1, 1, 0, new Uint8Array(32), new Uint8Array(0), mappings, "");
    expect(hello([])).toThrow(ProtocolError);
    expect(hello(Array(33).fill(""))).toThrow(ProtocolError);
    expect(hello(["🔑".repeat(8) + "x"])).toThrow(ProtocolError); // 33 bytes
    expect(w.length).toBe(0);
    hello(Array(32).fill("🔑".repeat(8)))(); // 32 of 32 bytes: fine
    w.take();
    expect(() => w.auth(new Uint8Array(63), new Uint8Array(0))).toThrow(ProtocolError);
    expect(() => w.accept(new Uint8Array(33), new Uint8Array(16), false)).toThrow(ProtocolError);
    expect(w.length).toBe(0);
  });

  test("over-long agent and CLOSE message are truncated on a character boundary", () => {
    const w = new FrameWriter();
    w.hello(1, 1, 0, new Uint8Array(32), new Uint8Array(32), [""], "é".repeat(40)); // 80 bytes -> 64
    w.close(1, "🔑".repeat(300)); // 1200 bytes -> 1024
    const [hello, close] = decodePieces([w.take() as Uint8Array], false) as unknown as Array<Record<string, string>>;
    expect(hello.agent).toBe("é".repeat(32));
    expect(close.message).toBe("🔑".repeat(256));
  });
});
