/**
 * Writes packages/protocol/test-vectors.json.   Run: bun packages/protocol/scripts/generate-vectors.ts
 *
 * The hex is laid out by hand here (field by field, as PROTOCOL.md describes it), not produced by the
 * codec; the codec's encoder is only used as a cross-check, and the script refuses to write a file the
 * codec disagrees with. The committed JSON is the reference: test/vectors.test.ts checks the codec
 * against it both ways, so a codec change that alters a byte fails the tests.
 */
import { createHmac, createPrivateKey, createPublicKey, sign } from "node:crypto";
import { writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { encodeFrame, FrameDecoder, ProtocolError } from "../src/index.ts";
import {
  bytesOf,
  bytesToHex,
  type FrameVector,
  frameFromFields,
  type HandshakeVector,
  type HexSpec,
  type MalformedVector,
  type JoinVector,
  type VectorFile,
} from "../test/vector-format.ts";

const h8 = (n: number) => n.toString(16).padStart(2, "0");
const h16 = (n: number) => n.toString(16).padStart(4, "0");
const h32 = (n: number) => (n >>> 0).toString(16).padStart(8, "0");
const utf8Hex = (s: string) => bytesToHex(new TextEncoder().encode(s));
const seq = (from: number, n: number) => Array.from({ length: n }, (_, i) => h8((from + i) & 0xff)).join("");
const frameHex = (type: number, body: string) => h8(type) + h32(body.length / 2) + body;

const PREFACE = "4d435544505400" + "01"; // "MCUDPT" 00 01

// ---- hand layouts, one per frame type ---------------------------------------------------------
const lengthPrefixed = (hex: string) => h8(hex.length / 2) + hex;
/**
 * The mapping list: count, then each name length-prefixed; a port range (ports > 1) sets the length
 * byte's high bit and follows its name with the u16 port count.
 */
const mappingList = (names: string[], ports?: number[]) =>
  h8(names.length) +
  names
    .map((n, i) => {
      const name = utf8Hex(n);
      const count = ports?.[i] ?? 1;
      return count > 1 ? h8(0x80 | (name.length / 2)) + name + h16(count) : lengthPrefixed(name);
    })
    .join("");
const hello = (
  role: number,
  auth: number,
  caps: number,
  nonce: string,
  publicKey: string,
  mappings: string[],
  agent: string,
  ports?: number[],
) =>
  frameHex(
    0x01,
    h8(role) +
      h8(auth) +
      h32(caps) +
      nonce +
      lengthPrefixed(publicKey) +
      mappingList(mappings, ports) +
      lengthPrefixed(utf8Hex(agent)),
  );
const proofToken = (proof: string, token: string) => lengthPrefixed(proof) + lengthPrefixed(token);
const auth = (proof: string, token: string) => frameHex(0x02, proofToken(proof, token));
const accept = (proof: string, token: string, resumed: boolean) =>
  frameHex(0x03, proofToken(proof, token) + h8(resumed ? 1 : 0));
const close = (code: number, message: string) => frameHex(0x04, h16(code) + utf8Hex(message));
const ping = (payload: string) => frameHex(0x05, payload);
const pong = (payload: string) => frameHex(0x06, payload);
/** `addr` is the address bytes in hex, written independently of the address text in the fields. */
const flowOpen = (flowId: number, mappingId: number, family: number, port: number, addr: string) =>
  frameHex(0x10, h32(flowId) + h16(mappingId) + h8(family) + h16(port) + addr);
const flowClose = (flowId: number, reason: number) => frameHex(0x11, h32(flowId) + h8(reason));
const data = (flowId: number, payload: string) => frameHex(0x12, h32(flowId) + payload);
const extension = (type: number, body: string) => frameHex(type, body);

const frames: FrameVector[] = [];
const add = (name: string, fields: Record<string, unknown>, hex: HexSpec, description?: string) =>
  frames.push({ name, ...(description ? { description } : {}), fields, hex });

// Ed25519 from a raw 32-byte seed: node:crypto takes it as PKCS#8 (this DER prefix, then the seed).
const PKCS8_PREFIX = "302e020100300506032b657004220420";
const privateKeyOf = (seedHex: string) =>
  createPrivateKey({ key: Buffer.from(PKCS8_PREFIX + seedHex, "hex"), format: "der", type: "pkcs8" });
/** The raw public key: the last 32 bytes of the SPKI encoding. */
const publicKeyOf = (seedHex: string) =>
  bytesToHex(createPublicKey(privateKeyOf(seedHex)).export({ format: "der", type: "spki" }).subarray(12));
const ed25519 = (seedHex: string, dataHex: string) =>
  bytesToHex(sign(null, Buffer.from(dataHex, "hex"), privateKeyOf(seedHex)));

const NONCE_A = seq(0xa0, 32);
const NONCE_D = seq(0xd0, 32);
const MAC = seq(0x00, 32);
const SIGNATURE = seq(0x80, 64);
const KEY = publicKeyOf(seq(0x01, 32));
const TOKEN = seq(0x70, 16);
const PAYLOAD8 = "0000017f2a1b3c4d";

add(
  "hello-receiver-secret",
  {
    type: "HELLO",
    role: 1,
    auth: 2,
    capabilities: 1,
    nonce: NONCE_A,
    publicKey: "",
    mappings: [""],
    agent: "mcudpt-ts",
  },
  hello(1, 2, 1, NONCE_A, "", [""], "mcudpt-ts"),
  "receiver, shared-secret mode (no public key), resume capability, one unnamed mapping (the default)",
);
add(
  "hello-sender-key-empty-agent",
  { type: "HELLO", role: 2, auth: 1, capabilities: 0, nonce: NONCE_D, publicKey: KEY, mappings: [""], agent: "" },
  hello(2, 1, 0, NONCE_D, KEY, [""], ""),
  "sender, key mode with its Ed25519 public key (of the seed 01 02 … 20), no capabilities, empty agent",
);
add(
  "hello-unknown-capabilities",
  {
    type: "HELLO",
    role: 2,
    auth: 2,
    capabilities: 0xffffffff,
    nonce: NONCE_D,
    publicKey: "",
    mappings: [""],
    agent: "x",
  },
  hello(2, 2, 0xffffffff, NONCE_D, "", [""], "x"),
  "capability bits this version does not know are carried (and ignored)",
);
const agent64 = "a".repeat(60) + "🔑"; // 60 + 4 = 64 bytes
add(
  "hello-max-agent",
  { type: "HELLO", role: 1, auth: 1, capabilities: 1, nonce: NONCE_A, publicKey: KEY, mappings: [""], agent: agent64 },
  hello(1, 1, 1, NONCE_A, KEY, [""], agent64),
  "key mode with an agent of exactly 64 UTF-8 bytes, ending in a 4-byte character",
);
add(
  "hello-agent-with-bom",
  {
    type: "HELLO",
    role: 2,
    auth: 2,
    capabilities: 1,
    nonce: NONCE_D,
    publicKey: "",
    mappings: [""],
    agent: "\ufeffmcudpt-go/2.0 (linux)",
  },
  hello(2, 2, 1, NONCE_D, "", [""], "\ufeffmcudpt-go/2.0 (linux)"),
  "a leading U+FEFF is part of the agent text, never stripped",
);

add(
  "hello-two-named-mappings",
  {
    type: "HELLO",
    role: 1,
    auth: 2,
    capabilities: 1,
    nonce: NONCE_A,
    publicKey: "",
    mappings: ["dns", "ntp"],
    agent: "mcudpt-ts",
  },
  hello(1, 2, 1, NONCE_A, "", ["dns", "ntp"], "mcudpt-ts"),
  "two named mappings: the receiver's mapping ids 0 (dns) and 1 (ntp); a sender pairs its own by name",
);
add(
  "hello-mixed-mappings",
  {
    type: "HELLO",
    role: 2,
    auth: 2,
    capabilities: 1,
    nonce: NONCE_D,
    publicKey: "",
    mappings: ["", "web", ""],
    agent: "",
  },
  hello(2, 2, 1, NONCE_D, "", ["", "web", ""], ""),
  "three mappings, only the second named: pairing is by position (§8.6)",
);
const utf8Names = ["dns-résolveur", "时间", "🔑", "\ufeffbom"];
add(
  "hello-utf8-mapping-names",
  { type: "HELLO", role: 2, auth: 2, capabilities: 1, nonce: NONCE_D, publicKey: "", mappings: utf8Names, agent: "x" },
  hello(2, 2, 1, NONCE_D, "", utf8Names, "x"),
  "mapping names are UTF-8 (2-, 3- and 4-byte characters; a leading U+FEFF is kept), compared byte for byte",
);
/** 32 names of exactly 32 UTF-8 bytes each ("m00…" padded, the last one ending in a 4-byte character). */
const names32 = Array.from({ length: 32 }, (_, i) =>
  i === 31 ? "m31" + "-".repeat(25) + "🔑" : `m${String(i).padStart(2, "0")}` + "-".repeat(29),
);
add(
  "hello-max-mappings",
  {
    type: "HELLO",
    role: 1,
    auth: 1,
    capabilities: 1,
    nonce: NONCE_A,
    publicKey: KEY,
    mappings: names32,
    agent: agent64,
  },
  hello(1, 1, 1, NONCE_A, KEY, names32, agent64),
  "key mode, 32 mappings with 32-byte names and a 64-byte agent: the largest HELLO without port ranges (body 1193)",
);
add(
  "hello-port-range",
  {
    type: "HELLO",
    role: 1,
    auth: 2,
    capabilities: 1,
    nonce: NONCE_A,
    publicKey: "",
    mappings: ["game", "dns"],
    mappingPorts: [16, 1],
    agent: "",
  },
  hello(1, 2, 1, NONCE_A, "", ["game", "dns"], "", [16, 1]),
  "a 16-port range named game (length byte 0x84, then the u16 count 16: mapping ids 0 to 15) and a single port dns (id 16) (§8.6)",
);
add(
  "hello-unnamed-range-4096",
  {
    type: "HELLO",
    role: 2,
    auth: 2,
    capabilities: 0,
    nonce: NONCE_D,
    publicKey: "",
    mappings: [""],
    mappingPorts: [4096],
    agent: "",
  },
  hello(2, 2, 0, NONCE_D, "", [""], "", [4096]),
  "one unnamed range of 4096 ports, the most one side may have (length byte 0x80: an empty name, then 1000)",
);
const ranges32 = names32.map(() => 128);
add(
  "hello-max-ranges",
  {
    type: "HELLO",
    role: 1,
    auth: 1,
    capabilities: 1,
    nonce: NONCE_A,
    publicKey: KEY,
    mappings: names32,
    mappingPorts: ranges32,
    agent: agent64,
  },
  hello(1, 1, 1, NONCE_A, KEY, names32, agent64, ranges32),
  "key mode, 32 ranges of 128 ports (4096 in all) with 32-byte names and a 64-byte agent: the largest HELLO (body 1257)",
);

add(
  "auth-empty",
  { type: "AUTH", proof: "", token: "" },
  auth("", ""),
  "legal encoding (no proof: the acceptor refuses it with CLOSE 2)",
);
add("auth-secret", { type: "AUTH", proof: MAC, token: "" }, auth(MAC, ""), "secret mode (HMAC), fresh session");
add(
  "auth-secret-resume",
  { type: "AUTH", proof: MAC, token: TOKEN },
  auth(MAC, TOKEN),
  "secret mode, offering a session token",
);
add(
  "auth-key",
  { type: "AUTH", proof: SIGNATURE, token: "" },
  auth(SIGNATURE, ""),
  "key mode (Ed25519 signature), fresh session",
);
add(
  "auth-key-resume",
  { type: "AUTH", proof: SIGNATURE, token: TOKEN },
  auth(SIGNATURE, TOKEN),
  "key mode, offering a session token: the largest AUTH (body 82)",
);

add("accept-secret-new", { type: "ACCEPT", proof: MAC, token: TOKEN, resumed: false }, accept(MAC, TOKEN, false));
add(
  "accept-key-resumed",
  { type: "ACCEPT", proof: SIGNATURE, token: TOKEN, resumed: true },
  accept(SIGNATURE, TOKEN, true),
  "key mode, session resumed: the largest ACCEPT (body 83)",
);
add(
  "accept-empty",
  { type: "ACCEPT", proof: "", token: "", resumed: false },
  accept("", "", false),
  "legal encoding (no proof, no token: the dialer refuses it with CLOSE 2)",
);

add("close-normal-empty", { type: "CLOSE", code: 0, message: "" }, close(0, ""));
const utf8Message = "mot de passe erroné — 🔑 ключ";
add(
  "close-utf8-message",
  { type: "CLOSE", code: 2, message: utf8Message },
  close(2, utf8Message),
  "authentication failed, UTF-8 message",
);
add(
  "close-key-rejected",
  { type: "CLOSE", code: 11, message: "sender key SHA256:abc is not in authorized_keys" },
  close(11, "sender key SHA256:abc is not in authorized_keys"),
  "key not accepted (code 11), with the reason for the peer's operator",
);
add(
  "close-unknown-code",
  { type: "CLOSE", code: 0xffff, message: "future" },
  close(0xffff, "future"),
  "codes this version does not know are still decoded",
);
const longMessage = "é".repeat(512); // 1024 bytes
add(
  "close-max-message",
  { type: "CLOSE", code: 1, message: longMessage },
  close(1, longMessage),
  "message of exactly 1024 bytes",
);

add("ping", { type: "PING", payload: PAYLOAD8 }, ping(PAYLOAD8));
add("pong", { type: "PONG", payload: PAYLOAD8 }, pong(PAYLOAD8));
add(
  "ping-float64-timestamp",
  { type: "PING", payload: "4271d0f1a4c00000" },
  ping("4271d0f1a4c00000"),
  "the TypeScript implementation puts its clock (ms, float64 BE) here; the content is opaque to the peer",
);

add(
  "flow-open-ipv4",
  { type: "FLOW_OPEN", flowId: 1, mappingId: 0, client: { family: 4, address: "192.0.2.1", port: 53 } },
  flowOpen(1, 0, 4, 53, "c0000201"),
);
add(
  "flow-open-ipv4-max",
  {
    type: "FLOW_OPEN",
    flowId: 0xffffffff,
    mappingId: 0xffff,
    client: { family: 4, address: "255.255.255.255", port: 65535 },
  },
  flowOpen(0xffffffff, 0xffff, 4, 65535, "ffffffff"),
);
add(
  "flow-open-ipv6",
  { type: "FLOW_OPEN", flowId: 2, mappingId: 7, client: { family: 6, address: "2001:db8::1", port: 40000 } },
  flowOpen(2, 7, 6, 40000, "20010db8000000000000000000000001"),
);
add(
  "flow-open-ipv6-full",
  { type: "FLOW_OPEN", flowId: 3, mappingId: 1, client: { family: 6, address: "fe80:1:2:3:4:5:6:7", port: 1 } },
  flowOpen(3, 1, 6, 1, "fe800001000200030004000500060007"),
);
add(
  "flow-open-ipv6-mapped-ipv4",
  { type: "FLOW_OPEN", flowId: 4, mappingId: 0, client: { family: 6, address: "::ffff:198.51.100.7", port: 123 } },
  flowOpen(4, 0, 6, 123, "00000000000000000000ffffc6336407"),
  "IPv4-mapped IPv6 (dual-stack socket) stays family 6",
);
add(
  "flow-open-ipv6-zero-port",
  { type: "FLOW_OPEN", flowId: 5, mappingId: 0, client: { family: 6, address: "::", port: 0 } },
  flowOpen(5, 0, 6, 0, "00000000000000000000000000000000"),
);

const reasons = [
  "closed",
  "idle",
  "evicted",
  "socket-error",
  "target-unreachable",
  "unknown-flow",
  "resolve-failed",
  "unknown-mapping",
];
for (const [i, r] of reasons.entries()) {
  add(`flow-close-${r}`, { type: "FLOW_CLOSE", flowId: 1 + i, reason: i }, flowClose(1 + i, i));
}
add(
  "flow-close-unknown-reason",
  { type: "FLOW_CLOSE", flowId: 0x01020304, reason: 200 },
  flowClose(0x01020304, 200),
  "reasons this version does not know are still decoded",
);

add("data-empty", { type: "DATA", flowId: 1, payload: "" }, data(1, ""), "an empty datagram is a datagram");
add("data-small", { type: "DATA", flowId: 7, payload: "68656c6c6f0a" }, data(7, "68656c6c6f0a"));
add("data-max-flow-id", { type: "DATA", flowId: 0xffffffff, payload: "00ff" }, data(0xffffffff, "00ff"));
add(
  "data-65535",
  { type: "DATA", flowId: 1, payload: { repeat: 0xab, length: 65535 } },
  [h8(0x12) + h32(4 + 65535) + h32(1), { repeat: 0xab, length: 65535 }],
  "largest datagram: body length 65539",
);

add(
  "extension-empty",
  { type: "EXTENSION", extensionType: 0x80, body: "" },
  extension(0x80, ""),
  "skipped by a peer that does not know it",
);
add(
  "pad-nudge",
  { type: "EXTENSION", extensionType: 0x80, body: "" },
  extension(0x80, ""),
  "PAD (extension 0x80, empty): the tail-loss nudge, sent 1 ms after the last DATA of a burst; every peer skips it (§10.1)",
);
add("extension-ff", { type: "EXTENSION", extensionType: 0xff, body: "0102030405" }, extension(0xff, "0102030405"));
add(
  "extension-max",
  { type: "EXTENSION", extensionType: 0xc3, body: { repeat: 0x00, length: 65535 } },
  [h8(0xc3) + h32(65535), { repeat: 0x00, length: 65535 }],
  "largest extension body",
);

// ---- malformed input --------------------------------------------------------------------------
const malformed: MalformedVector[] = [];
const bad = (
  name: string,
  description: string,
  preface: boolean,
  hex: HexSpec,
  error: string,
  beforeHandshake = false,
) => malformed.push({ name, description, preface, ...(beforeHandshake ? { beforeHandshake } : {}), hex, error });
const ascii = (s: string) => utf8Hex(s);
/** A mapping list of one unnamed mapping: count 1, name length 0. */
const ONE_MAPPING = "01" + "00";
/** HELLO body up to and including the (empty) public key, secret mode, sender. */
const HELLO_HEAD = "0202" + "00000001" + NONCE_D + "00";

bad(
  "preface-http",
  "an HTTP request instead of the preface",
  true,
  ascii("GET / HTTP/1.1\r\nHost: example\r\n\r\n"),
  "bad-preface",
);
bad(
  "preface-go-json",
  "the original Go mcudpt's JSON frames",
  true,
  ascii('{"type":"hello","version":1}\n'),
  "bad-preface",
);
bad("preface-ssh", "an SSH banner", true, ascii("SSH-2.0-OpenSSH_9.6\r\n"), "bad-preface");
bad(
  "preface-tls",
  "a TLS ClientHello (TLS on one side only)",
  true,
  "160301020001" + "0001fc0303" + seq(0, 16),
  "bad-preface",
);
bad("preface-typo", "differs in the 6th byte", true, ascii("MCUDPX") + "0001", "bad-preface");
bad("preface-no-zero", "7th byte must be 0x00", true, ascii("MCUDPT1") + "01", "bad-preface");
bad("preface-first-byte", "fails on the first byte, nothing more needed", true, "00", "bad-preface");
bad("preface-version-2", "a future wire version", true, PREFACE.slice(0, 14) + "02", "unsupported-version");
bad("preface-version-0", "wire version 0", true, PREFACE.slice(0, 14) + "00", "unsupported-version");

bad(
  "type-0x00",
  "type 0 is not assigned (header only: rejected before any body)",
  false,
  "0000000000",
  "unknown-frame-type",
);
bad("type-0x07", "unassigned core type", false, "0700000000", "unknown-frame-type");
bad("type-0x13", "unassigned core type", false, "1300000004", "unknown-frame-type");
bad("type-0x7f", "last core type, unassigned", false, "7f00000000", "unknown-frame-type");

bad(
  "too-large-data",
  "DATA body of 65540 (max 65539): header only, nothing buffered",
  false,
  "1200010004",
  "frame-too-large",
);
bad("too-large-length-max", "length 0xffffffff", false, "12ffffffff", "frame-too-large");
bad("too-large-hello", "HELLO body of 1258 (max 1257)", false, "01000004ea", "frame-too-large");
bad("too-large-auth", "AUTH body of 83 (max 82)", false, "0200000053", "frame-too-large");
bad("too-large-accept", "ACCEPT body of 84 (max 83)", false, "0300000054", "frame-too-large");
bad("too-large-close", "CLOSE body of 1027 (max 1026)", false, "0400000403", "frame-too-large");
bad("too-large-ping", "PING body of 9 (max 8)", false, "0500000009", "frame-too-large");
bad("too-large-pong", "PONG body of 9", false, "0600000009", "frame-too-large");
bad("too-large-flow-open", "FLOW_OPEN body of 26 (max 25)", false, "100000001a", "frame-too-large");
bad("too-large-flow-close", "FLOW_CLOSE body of 6 (max 5)", false, "1100000006", "frame-too-large");
bad("too-large-extension", "extension body of 65536 (max 65535)", false, "8000010000", "frame-too-large");
bad(
  "pre-auth-data-65000",
  "before the handshake completes: a DATA header declaring 65000 bytes (legal later) is refused on the header alone",
  false,
  "120000fde8",
  "frame-too-large",
  true,
);
bad(
  "pre-auth-data-2049",
  "before the handshake completes: one byte over the 2048-byte limit",
  false,
  "1200000801",
  "frame-too-large",
  true,
);
bad(
  "pre-auth-extension-4096",
  "before the handshake completes: an extension of 4096 bytes",
  false,
  "8000001000",
  "frame-too-large",
  true,
);

bad("short-data", "DATA body of 3 bytes: no room for the flow id", false, frameHex(0x12, "000001"), "bad-length");
bad("short-data-empty", "DATA with an empty body", false, frameHex(0x12, ""), "bad-length");
bad("short-ping", "PING body of 7", false, frameHex(0x05, seq(1, 7)), "bad-length");
bad("empty-pong", "PONG body of 0", false, frameHex(0x06, ""), "bad-length");
bad(
  "short-hello",
  "HELLO body of 39: ends after the key length (at least 42: mapping count, one name length, agent length)",
  false,
  frameHex(0x01, "0202" + "00000000" + NONCE_D + "00"),
  "bad-length",
);
bad(
  "hello-key-truncated",
  "public key length 32, 10 bytes follow",
  false,
  frameHex(0x01, "0201" + "00000000" + NONCE_D + "20" + KEY.slice(0, 20)),
  "bad-length",
);
bad(
  "hello-agent-length-over",
  "agent length says 5, 4 bytes follow",
  false,
  frameHex(0x01, "0202" + "00000001" + NONCE_D + "00" + ONE_MAPPING + "05" + ascii("abcd")),
  "bad-length",
);
bad(
  "hello-agent-length-under",
  "agent length says 3, 4 bytes follow",
  false,
  frameHex(0x01, "0202" + "00000001" + NONCE_D + "00" + ONE_MAPPING + "03" + ascii("abcd")),
  "bad-length",
);
bad(
  "hello-ends-before-mappings",
  "HELLO ends right after a 32-byte public key: no mapping count",
  false,
  frameHex(0x01, "0201" + "00000000" + NONCE_D + "20" + KEY),
  "bad-length",
);
bad(
  "hello-mappings-truncated",
  "mapping count 2, but the body ends after the first name",
  false,
  frameHex(0x01, HELLO_HEAD + "02" + "03" + ascii("dns")),
  "bad-length",
);
bad(
  "hello-mapping-name-truncated",
  "mapping name length 5, 3 bytes follow",
  false,
  frameHex(0x01, HELLO_HEAD + "01" + "05" + ascii("ntp")),
  "bad-length",
);
bad(
  "hello-no-agent-length",
  "the mapping list is complete but the agent length is missing",
  false,
  frameHex(0x01, HELLO_HEAD + "01" + "03" + ascii("ntp")),
  "bad-length",
);
bad("empty-auth", "AUTH with an empty body", false, frameHex(0x02, ""), "bad-length");
bad("auth-no-token-length", "AUTH body ends after the HMAC", false, frameHex(0x02, "20" + MAC), "bad-length");
bad(
  "auth-truncated-signature",
  "proof length 64, 63 bytes follow",
  false,
  frameHex(0x02, "40" + SIGNATURE.slice(0, 126)),
  "bad-length",
);
bad(
  "auth-truncated-token",
  "token length 16, 15 bytes follow",
  false,
  frameHex(0x02, "00" + "10" + seq(0x70, 15)),
  "bad-length",
);
bad("auth-trailing-byte", "one byte after the token", false, frameHex(0x02, "0000" + "00"), "bad-length");
bad("accept-no-flag", "ACCEPT without the resumed byte", false, frameHex(0x03, "00" + "10" + TOKEN), "bad-length");
bad(
  "accept-trailing-byte",
  "ACCEPT with a byte after the resumed flag",
  false,
  frameHex(0x03, "0000" + "00" + "00"),
  "bad-length",
);
bad("short-close", "CLOSE body of 1 byte", false, frameHex(0x04, "00"), "bad-length");
bad("short-flow-open", "FLOW_OPEN body of 6 bytes (no family)", false, frameHex(0x10, "000000010000"), "bad-length");
bad(
  "flow-open-ipv4-with-16-bytes",
  "family 4 but an IPv6-sized address",
  false,
  frameHex(0x10, "00000001" + "0000" + "04" + "0035" + seq(0, 16)),
  "bad-length",
);
bad(
  "flow-open-ipv6-with-4-bytes",
  "family 6 but an IPv4-sized address",
  false,
  frameHex(0x10, "00000001" + "0000" + "06" + "0035" + "c0000201"),
  "bad-length",
);
bad("short-flow-close", "FLOW_CLOSE body of 4", false, frameHex(0x11, "00000001"), "bad-length");

bad(
  "hello-role-0",
  "role 0",
  false,
  frameHex(0x01, "0002" + "00000000" + NONCE_D + "00" + ONE_MAPPING + "00"),
  "bad-field",
);
bad(
  "hello-role-3",
  "role 3",
  false,
  frameHex(0x01, "0302" + "00000000" + NONCE_D + "00" + ONE_MAPPING + "00"),
  "bad-field",
);
bad(
  "hello-auth-0",
  "auth mode 0",
  false,
  frameHex(0x01, "0200" + "00000000" + NONCE_D + "00" + ONE_MAPPING + "00"),
  "bad-field",
);
bad(
  "hello-auth-3",
  "auth mode 3",
  false,
  frameHex(0x01, "0203" + "00000000" + NONCE_D + "00" + ONE_MAPPING + "00"),
  "bad-field",
);
bad(
  "hello-key-length-31",
  "public key length 31 (must be 0 or 32)",
  false,
  frameHex(0x01, "0201" + "00000000" + NONCE_D + "1f" + KEY.slice(0, 62) + ONE_MAPPING + "00"),
  "bad-field",
);
bad(
  "hello-key-length-33",
  "public key length 33 (must be 0 or 32)",
  false,
  frameHex(0x01, "0201" + "00000000" + NONCE_D + "21" + KEY + "00" + ONE_MAPPING + "00"),
  "bad-field",
);
bad(
  "hello-no-mappings",
  "mapping count 0 (must be 1 to 32)",
  false,
  frameHex(0x01, HELLO_HEAD + "00" + "00"),
  "bad-field",
);
bad(
  "hello-33-mappings",
  "mapping count 33 (must be 1 to 32), followed by 33 empty names",
  false,
  frameHex(0x01, HELLO_HEAD + "21" + "00".repeat(33) + "00"),
  "bad-field",
);
bad(
  "hello-mapping-name-33-bytes",
  "a mapping name of 33 bytes (at most 32)",
  false,
  frameHex(0x01, HELLO_HEAD + "01" + "21" + ascii("n".repeat(33)) + "00"),
  "bad-field",
);
bad(
  "hello-range-1-port",
  "a port range of 1 port (a range has 2 to 4096; one port is a plain entry)",
  false,
  frameHex(0x01, HELLO_HEAD + "01" + "84" + ascii("game") + "0001" + "00"),
  "bad-field",
);
bad(
  "hello-range-0-ports",
  "a port range of 0 ports",
  false,
  frameHex(0x01, HELLO_HEAD + "01" + "80" + "0000" + "00"),
  "bad-field",
);
bad(
  "hello-range-4097-ports",
  "a port range of 4097 ports (at most 4096)",
  false,
  frameHex(0x01, HELLO_HEAD + "01" + "84" + ascii("game") + "1001" + "00"),
  "bad-field",
);
bad(
  "hello-ranges-over-4096-ports",
  "two ranges of 4000 and 97 ports: 4097 ports in all (at most 4096)",
  false,
  frameHex(0x01, HELLO_HEAD + "02" + "81" + ascii("a") + "0fa0" + "81" + ascii("b") + "0061" + "00"),
  "bad-field",
);
bad(
  "hello-range-name-33-bytes",
  "a range entry whose name is 33 bytes (length byte 0xa1)",
  false,
  frameHex(0x01, HELLO_HEAD + "01" + "a1" + ascii("n".repeat(33)) + "0010" + "00"),
  "bad-field",
);
bad(
  "hello-range-count-truncated",
  "a range entry whose port count is cut after one byte (the body ends there)",
  false,
  frameHex(0x01, HELLO_HEAD + "01" + "84" + ascii("game") + "00"),
  "bad-length",
);
bad(
  "auth-proof-16",
  "proof length 16 (must be 0, 32 or 64)",
  false,
  frameHex(0x02, "10" + seq(0, 16) + "00"),
  "bad-field",
);
bad(
  "auth-proof-63",
  "proof length 63 (must be 0, 32 or 64)",
  false,
  frameHex(0x02, "3f" + seq(0, 63) + "00"),
  "bad-field",
);
bad("auth-token-8", "token length 8 (must be 0 or 16)", false, frameHex(0x02, "00" + "08" + seq(0, 8)), "bad-field");
bad("accept-proof-1", "proof length 1", false, frameHex(0x03, "01" + "00" + "00" + "00"), "bad-field");
bad("accept-proof-65", "proof length 65", false, frameHex(0x03, "41" + seq(0, 65) + "00" + "00"), "bad-field");
bad("accept-resumed-2", "resumed flag 2", false, frameHex(0x03, "00" + "00" + "02"), "bad-field");
bad(
  "flow-open-family-5",
  "address family 5",
  false,
  frameHex(0x10, "00000001" + "0000" + "05" + "0035" + "c0000201"),
  "bad-field",
);
bad(
  "flow-open-family-0",
  "address family 0",
  false,
  frameHex(0x10, "00000001" + "0000" + "00" + "0035" + "c0000201"),
  "bad-field",
);

bad(
  "hello-agent-invalid-utf8",
  "agent byte 0xff",
  false,
  frameHex(0x01, "0202" + "00000000" + NONCE_D + "00" + ONE_MAPPING + "02" + "41ff"),
  "bad-utf8",
);
bad(
  "hello-agent-truncated-utf8",
  "agent ends inside a 2-byte sequence",
  false,
  frameHex(0x01, "0202" + "00000000" + NONCE_D + "00" + ONE_MAPPING + "01" + "c3"),
  "bad-utf8",
);
bad(
  "hello-mapping-name-invalid-utf8",
  "mapping name byte 0xff",
  false,
  frameHex(0x01, HELLO_HEAD + "01" + "02" + "41ff" + "00"),
  "bad-utf8",
);
bad(
  "hello-mapping-name-surrogate",
  "mapping name is a UTF-8-encoded surrogate (ed a0 80), in the second of two mappings",
  false,
  frameHex(0x01, HELLO_HEAD + "02" + "01" + ascii("a") + "03" + "eda080" + "00"),
  "bad-utf8",
);
bad("close-overlong-utf8", "overlong encoding of NUL (c0 80)", false, frameHex(0x04, "0001" + "c080"), "bad-utf8");
bad("close-surrogate-utf8", "UTF-8-encoded surrogate (ed a0 80)", false, frameHex(0x04, "0001" + "eda080"), "bad-utf8");

bad("data-flow-0", "DATA for flow 0", false, frameHex(0x12, "00000000" + "41"), "bad-flow-id");
bad("flow-open-flow-0", "FLOW_OPEN of flow 0", false, flowOpen(0, 0, 4, 53, "c0000201"), "bad-flow-id");
bad("flow-close-flow-0", "FLOW_CLOSE of flow 0", false, flowClose(0, 0), "bad-flow-id");

// ---- handshakes -------------------------------------------------------------------------------
const SECRET_TEXT = "correct horse battery staple";
const SECRET = utf8Hex(SECRET_TEXT);
const DIALER_LABEL = utf8Hex("mcudpt/1 dialer proof");
const ACCEPTOR_LABEL = utf8Hex("mcudpt/1 acceptor proof");
const hmac = (keyHex: string, dataHex: string) =>
  createHmac("sha256", Buffer.from(keyHex, "hex")).update(Buffer.from(dataHex, "hex")).digest("hex");
/** Fixed Ed25519 seeds (private keys) of the key-mode vectors; the public keys follow from them. */
const ACCEPTOR_SEED = seq(0x01, 32);
const DIALER_SEED = seq(0x41, 32);

interface Session {
  acceptorNonce: string;
  dialerNonce: string;
  offeredToken: string;
  sessionToken: string;
  resumed: boolean;
}

function handshake(name: string, description: string, mode: "secret" | "key", s: Session): HandshakeVector {
  const authMode = mode === "key" ? 1 : 2;
  const acceptorKey = mode === "key" ? publicKeyOf(ACCEPTOR_SEED) : "";
  const dialerKey = mode === "key" ? publicKeyOf(DIALER_SEED) : "";
  // Secret mode: one unnamed mapping each (the default). Key mode: two named mappings, listed in a
  // different order by each side (they pair by name).
  const acceptorMappings = mode === "key" ? ["dns", "ntp"] : [""];
  const dialerMappings = mode === "key" ? ["ntp", "dns"] : [""];
  // Key mode: Resume and Senders (§18: a receiver that accepts several senders, a sender that can
  // serve a subset); a shared secret does not tell senders apart, so Resume alone.
  const caps = mode === "key" ? 0x11 : 1;
  const helloFields = (role: number, nonce: string, publicKey: string, mappings: string[], agent: string) => ({
    type: "HELLO",
    role,
    auth: authMode,
    capabilities: caps,
    nonce,
    publicKey,
    mappings,
    agent,
  });
  const aHello = hello(1, authMode, caps, s.acceptorNonce, acceptorKey, acceptorMappings, "vector-receiver");
  const dHello = hello(2, authMode, caps, s.dialerNonce, dialerKey, dialerMappings, "vector-sender");
  const dialerTranscript = DIALER_LABEL + aHello + dHello + s.offeredToken;
  const acceptorTranscript = ACCEPTOR_LABEL + aHello + dHello + s.sessionToken + h8(s.resumed ? 1 : 0);
  const dialerProof = mode === "key" ? ed25519(DIALER_SEED, dialerTranscript) : hmac(SECRET, dialerTranscript);
  const acceptorProof = mode === "key" ? ed25519(ACCEPTOR_SEED, acceptorTranscript) : hmac(SECRET, acceptorTranscript);
  const authHex = auth(dialerProof, s.offeredToken);
  const acceptHex = accept(acceptorProof, s.sessionToken, s.resumed);
  return {
    name,
    description,
    mode,
    ...(mode === "secret"
      ? { secret: SECRET, secretText: SECRET_TEXT }
      : {
          acceptorSeed: ACCEPTOR_SEED,
          acceptorPublicKey: acceptorKey,
          dialerSeed: DIALER_SEED,
          dialerPublicKey: dialerKey,
        }),
    acceptorNonce: s.acceptorNonce,
    dialerNonce: s.dialerNonce,
    acceptorHello: {
      name: "acceptor-hello",
      fields: helloFields(1, s.acceptorNonce, acceptorKey, acceptorMappings, "vector-receiver"),
      hex: aHello,
    },
    dialerHello: {
      name: "dialer-hello",
      fields: helloFields(2, s.dialerNonce, dialerKey, dialerMappings, "vector-sender"),
      hex: dHello,
    },
    offeredToken: s.offeredToken,
    sessionToken: s.sessionToken,
    resumed: s.resumed,
    dialerTranscript,
    dialerProof,
    acceptorTranscript,
    acceptorProof,
    authFrame: { name: "auth", fields: { type: "AUTH", proof: dialerProof, token: s.offeredToken }, hex: authHex },
    acceptFrame: {
      name: "accept",
      fields: { type: "ACCEPT", proof: acceptorProof, token: s.sessionToken, resumed: s.resumed },
      hex: acceptHex,
    },
    dialerToAcceptor: PREFACE + dHello + authHex,
    acceptorToDialer: PREFACE + aHello + acceptHex,
  };
}

const handshakes: HandshakeVector[] = [
  handshake("secret-new-session", "shared secret, no session to resume: the receiver issues a fresh token", "secret", {
    acceptorNonce: seq(0xa0, 32),
    dialerNonce: seq(0xd0, 32),
    offeredToken: "",
    sessionToken: seq(0x70, 16),
    resumed: false,
  }),
  handshake(
    "secret-resume",
    "shared secret, the sender reconnects offering the token from secret-new-session; flows are kept",
    "secret",
    {
      acceptorNonce: seq(0x20, 32),
      dialerNonce: seq(0x40, 32),
      offeredToken: seq(0x70, 16),
      sessionToken: seq(0x70, 16),
      resumed: true,
    },
  ),
  handshake(
    "key-new-session",
    "keys: each side signs the transcript with its Ed25519 key; ACCEPT is sent once the receiver admits the sender's key (known, or its operator says yes). Two named mappings, listed in a different order by each side",
    "key",
    {
      acceptorNonce: seq(0x80, 32),
      dialerNonce: seq(0xc0, 32),
      offeredToken: "",
      sessionToken: seq(0x60, 16),
      resumed: false,
    },
  ),
  handshake(
    "key-resume",
    "keys: the same sender key reconnects offering the token from key-new-session; resumed without asking anyone",
    "key",
    {
      acceptorNonce: seq(0x10, 32),
      dialerNonce: seq(0x30, 32),
      offeredToken: seq(0x60, 16),
      sessionToken: seq(0x60, 16),
      resumed: true,
    },
  ),
];

// ---- lanes: a connection joining an open session (§16.1) ---------------------------------------
const JOIN_LABEL = utf8Hex("mcudpt/1 lane join");
const joinFrameHex = (proof: string, token: string) => frameHex(0x08, proofToken(proof, token));

function laneJoin(
  name: string,
  description: string,
  of: HandshakeVector,
  acceptorNonce: string,
  dialerNonce: string,
): JoinVector {
  const key = of.mode === "key";
  const authMode = key ? 1 : 2;
  const acceptorKey = key ? publicKeyOf(ACCEPTOR_SEED) : "";
  const dialerKey = key ? publicKeyOf(DIALER_SEED) : "";
  const acceptorMappings = of.acceptorHello.fields.mappings as string[];
  const dialerMappings = of.dialerHello.fields.mappings as string[];
  const caps = 3; // Resume | Lanes
  const aHello = hello(1, authMode, caps, acceptorNonce, acceptorKey, acceptorMappings, "vector-receiver");
  const dHello = hello(2, authMode, caps, dialerNonce, dialerKey, dialerMappings, "vector-sender");
  const helloFields = (role: number, nonce: string, publicKey: string, mappings: string[], agent: string) => ({
    type: "HELLO",
    role,
    auth: authMode,
    capabilities: caps,
    nonce,
    publicKey,
    mappings,
    agent,
  });
  const token = of.sessionToken;
  const binding = of.acceptorProof;
  const joinTranscript = JOIN_LABEL + aHello + dHello + token + binding;
  const joinProof = key ? ed25519(DIALER_SEED, joinTranscript) : hmac(SECRET, joinTranscript);
  const acceptorTranscript = ACCEPTOR_LABEL + aHello + dHello + token + "01";
  const acceptorProof = key ? ed25519(ACCEPTOR_SEED, acceptorTranscript) : hmac(SECRET, acceptorTranscript);
  return {
    name,
    description,
    mode: of.mode,
    ...(key ? { dialerSeed: DIALER_SEED, acceptorSeed: ACCEPTOR_SEED } : { secret: SECRET }),
    session: of.name,
    sessionToken: token,
    binding,
    acceptorHello: {
      name: "acceptor-hello",
      fields: helloFields(1, acceptorNonce, acceptorKey, acceptorMappings, "vector-receiver"),
      hex: aHello,
    },
    dialerHello: {
      name: "dialer-hello",
      fields: helloFields(2, dialerNonce, dialerKey, dialerMappings, "vector-sender"),
      hex: dHello,
    },
    joinTranscript,
    joinProof,
    joinFrame: { name: "join", fields: { type: "JOIN", proof: joinProof, token }, hex: joinFrameHex(joinProof, token) },
    acceptorTranscript,
    acceptorProof,
    acceptFrame: {
      name: "accept",
      fields: { type: "ACCEPT", proof: acceptorProof, token, resumed: true },
      hex: accept(acceptorProof, token, true),
    },
  };
}

const joins: JoinVector[] = [
  laneJoin(
    "secret-join",
    "a second lane joins the session of secret-new-session: JOIN's HMAC covers this connection's HELLOs, the token and that session's binding (its first ACCEPT proof)",
    handshakes[0],
    seq(0xb0, 32),
    seq(0xe0, 32),
  ),
  laneJoin(
    "key-join",
    "a second lane joins the session of key-new-session, signed by the key the session was admitted with",
    handshakes[2],
    seq(0x90, 32),
    seq(0x50, 32),
  ),
];
add(
  "join-secret",
  joins[0].joinFrame.fields,
  joins[0].joinFrame.hex,
  "JOIN (0x08): a lane joining a session, secret mode",
);
add(
  "join-key",
  joins[1].joinFrame.fields,
  joins[1].joinFrame.hex,
  "JOIN with an Ed25519 signature: the largest JOIN (body 82)",
);
bad("too-large-join", "JOIN body of 83 (max 82)", false, "0800000053", "frame-too-large");
bad("join-no-token-length", "JOIN body ends after the HMAC", false, frameHex(0x08, "20" + MAC), "bad-length");

// ---- redundancy: sequenced DATA (§17) -----------------------------------------------------------
const sdata = (flowId: number, seq: number, payload: string) => frameHex(0x14, h32(flowId) + h32(seq) + payload);
add(
  "sdata-small",
  { type: "SDATA", flowId: 7, seq: 41, payload: "68656c6c6f0a" },
  sdata(7, 41, "68656c6c6f0a"),
  "SDATA (0x14): flow 7, sequence number 41, one datagram; sent on two lanes, the first copy delivered",
);
add(
  "sdata-wrap",
  { type: "SDATA", flowId: 7, seq: 0xffffffff, payload: "" },
  sdata(7, 0xffffffff, ""),
  "the last sequence number before the wrap (the next is 0), an empty datagram",
);
add(
  "sdata-65535",
  { type: "SDATA", flowId: 1, seq: 0, payload: { repeat: 0xcd, length: 65535 } },
  [h8(0x14) + h32(8 + 65535) + h32(1) + h32(0), { repeat: 0xcd, length: 65535 }],
  "largest datagram: body length 65543",
);
bad("too-large-sdata", "SDATA body of 65544 (max 65543)", false, "1400010008", "frame-too-large");
bad(
  "sdata-short",
  "SDATA body of 7 bytes: no room for the sequence number",
  false,
  frameHex(0x14, "00000001000000"),
  "bad-length",
);
bad("sdata-flow-zero", "SDATA for flow id 0", false, sdata(0, 1, "00"), "bad-flow-id");

// ---- several senders: MAPPING_STATE (§18) ------------------------------------------------------
type StateEntry = { mappingId: number; name: string; status: number; reason: string };
const stateEntry = (e: StateEntry) =>
  h16(e.mappingId) + h8(e.status) + lengthPrefixed(utf8Hex(e.name)) + lengthPrefixed(utf8Hex(e.reason));
const mappingState = (entries: StateEntry[]) => frameHex(0x15, h8(entries.length) + entries.map(stateEntry).join(""));
const afterAccept: StateEntry[] = [
  { mappingId: 0, name: "dns", status: 0, reason: "" },
  { mappingId: 1, name: "ntp", status: 1, reason: "" },
  { mappingId: 2, name: "wg", status: 2, reason: "key SHA256:x may not serve it" },
];
add(
  "mapping-state-after-accept",
  { type: "MAPPING_STATE", entries: afterAccept },
  mappingState(afterAccept),
  "MAPPING_STATE (0x15) after ACCEPT: this sender serves dns, is standby for ntp, is refused wg (its key's mappings= does not list it)",
);
const takeover: StateEntry[] = [{ mappingId: 1, name: "ntp", status: 0, reason: "" }];
add(
  "mapping-state-takeover",
  { type: "MAPPING_STATE", entries: takeover },
  mappingState(takeover),
  "the sender that served ntp is gone: this standby serves it now (the receiver's flows of ntp follow with FLOW_OPEN)",
);
const removed: StateEntry[] = [{ mappingId: 300, name: "", status: 3, reason: "removed by the operator" }];
add(
  "mapping-state-removed",
  { type: "MAPPING_STATE", entries: removed },
  mappingState(removed),
  "an unnamed mapping with a two-byte id removed from the running receiver: its flows are closed on both sides",
);
bad("mapping-state-empty", "MAPPING_STATE with no body", false, frameHex(0x15, ""), "bad-length");
bad("mapping-state-no-entries", "MAPPING_STATE announcing 0 entries", false, frameHex(0x15, "00"), "bad-field");
bad("mapping-state-too-many", "MAPPING_STATE announcing 33 entries", false, frameHex(0x15, "21"), "bad-field");
bad(
  "mapping-state-bad-status",
  "MAPPING_STATE entry with state 4 (only 0 to 3 are defined)",
  false,
  frameHex(0x15, "01" + "0000" + "04" + "00" + "00"),
  "bad-field",
);
bad(
  "mapping-state-long-name",
  "MAPPING_STATE entry whose name claims 33 bytes",
  false,
  frameHex(0x15, "01" + "0000" + "00" + "21" + "61".repeat(33) + "00"),
  "bad-field",
);
bad(
  "mapping-state-truncated",
  "MAPPING_STATE whose reason runs past the body",
  false,
  frameHex(0x15, "01" + "0000" + "02" + "00" + "05" + "6e6f"),
  "bad-length",
);
bad(
  "mapping-state-trailing",
  "MAPPING_STATE with a byte after its last entry",
  false,
  frameHex(0x15, "01" + "0000" + "00" + "00" + "00" + "ff"),
  "bad-length",
);
bad(
  "mapping-state-bad-utf8",
  "MAPPING_STATE reason that is not UTF-8",
  false,
  frameHex(0x15, "01" + "0000" + "02" + "00" + "01" + "ff"),
  "bad-utf8",
);
bad("too-large-mapping-state", "MAPPING_STATE body of 9346 (max 9345)", false, "1500002482", "frame-too-large");

// ---- cross-check with the codec, then write ---------------------------------------------------
const file: VectorFile = {
  format: 1,
  wireVersion: 1,
  preface: PREFACE,
  frameTypes: {
    HELLO: 1,
    AUTH: 2,
    ACCEPT: 3,
    CLOSE: 4,
    PING: 5,
    PONG: 6,
    JOIN: 8,
    FLOW_OPEN: 16,
    FLOW_CLOSE: 17,
    DATA: 18,
    SDATA: 20,
    MAPPING_STATE: 21,
    EXTENSION: 128,
  },
  frames,
  malformed,
  handshakes,
  joins,
};

const problems: string[] = [];
const allFrames = [
  ...frames,
  ...handshakes.flatMap((h) => [h.acceptorHello, h.dialerHello, h.authFrame, h.acceptFrame]),
  ...joins.flatMap((j) => [j.acceptorHello, j.dialerHello, j.joinFrame, j.acceptFrame]),
];
for (const v of allFrames) {
  const encoded = bytesToHex(encodeFrame(frameFromFields(v.fields)));
  if (encoded !== bytesToHex(bytesOf(v.hex))) problems.push(`${v.name}: codec encodes ${encoded.slice(0, 80)}…`);
}
for (const v of malformed) {
  const decoder = new FrameDecoder({ preface: v.preface, handshakeLimit: v.beforeHandshake === true });
  decoder.push(bytesOf(v.hex));
  let code = "(no error)";
  try {
    while (decoder.read() !== undefined);
  } catch (e) {
    code = e instanceof ProtocolError ? e.code : String(e);
  }
  if (code !== v.error) problems.push(`${v.name}: decoder says ${code}, vector says ${v.error}`);
}
if (problems.length > 0) {
  console.error(`codec and hand layout disagree:\n${problems.join("\n")}`);
  process.exit(1);
}

const out = join(dirname(fileURLToPath(import.meta.url)), "..", "test-vectors.json");
const json = JSON.stringify(
  {
    $comment:
      "mcudpt wire protocol test vectors. Format: PROTOCOL.md, section 'Test vectors'. Generated by scripts/generate-vectors.ts.",
    ...file,
  },
  null,
  2,
);
writeFileSync(out, json + "\n");
console.log(
  `wrote ${out}: ${frames.length} frames, ${malformed.length} malformed inputs, ${handshakes.length} handshakes`,
);
