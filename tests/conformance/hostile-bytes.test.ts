/**
 * Hostile bytes on the receiver's TCP port, for every transport: strangers speaking other protocols,
 * garbage, oversized frames, half-finished handshakes, silence; and, from a raw sender, datagrams too
 * large for the client's IPv4. The receiver must close each stranger with one log line naming what it
 * saw, stay up and keep serving its real sender; what it cannot deliver is dropped and counted
 * (PROTOCOL.md §3, §4, §8.4, §12, §13). node:test + node:assert only (runs under bun test and, bundled,
 * under node --test).
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { after, before, describe, it } from "node:test";
import {
  AuthMode,
  CloseCode,
  concatBytes,
  encodeFrame,
  type Frame,
  FrameType,
  maxBodyLength,
  PREFACE,
  Role,
  utf8,
} from "@mcudpt/protocol";
import {
  frameName,
  frames,
  handshakeAsSender,
  isFrame,
  type RawPeer,
  rawConnect,
  senderHello,
} from "../helpers/raw-peer.js";
import {
  type CloseFrame,
  echoed,
  linesAbout,
  receiverOn,
  HOSTILE_SECRET as SECRET,
  senderTo,
  TIMEOUT,
} from "../helpers/security.js";
import { availableTransports } from "../helpers/transports.js";
import { eventually, startClient, startEcho, text } from "../helpers/tunnel.js";

/** HELLO's largest body: a declared length past it is refused on the header alone. */
const HELLO_MAX = maxBodyLength(FrameType.Hello) as number;
/** Short, so the silent connection is closed within the test; long enough for an echo meanwhile. */
const HANDSHAKE_TIMEOUT_MS = 1000;

function header(type: number, length: number): Uint8Array {
  const bytes = new Uint8Array(5);
  bytes[0] = type;
  new DataView(bytes.buffer).setUint32(1, length);
  return bytes;
}

function helloFields(): Extract<Frame, { type: typeof FrameType.Hello }> {
  return {
    type: FrameType.Hello,
    role: Role.Sender,
    auth: AuthMode.Secret,
    capabilities: 1,
    nonce: new Uint8Array(randomBytes(32)),
    publicKey: new Uint8Array(0),
    mappings: [""],
    agent: "hostile-test",
  };
}

function garbage(length: number, first: number): Uint8Array {
  const bytes = new Uint8Array(randomBytes(length));
  bytes[0] = first; // fixed, so the decoder's verdict does not depend on luck
  return bytes;
}

interface Stranger {
  name: string;
  bytes: () => Uint8Array;
  /** What the receiver's log line must say. */
  logged: RegExp;
  /** The CLOSE code it must send before closing. */
  code: number;
}

const strangers: Stranger[] = [
  {
    name: "an HTTP request",
    bytes: () => utf8("GET /tunnel HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n"),
    logged: /HTTP/,
    code: CloseCode.ProtocolError,
  },
  {
    name: "the original Go mcudpt's JSON frames",
    bytes: () => utf8(`{"type":"data","addr":"1.2.3.4:53","data":"${Buffer.from("dns query").toString("base64")}"}\n`),
    logged: /JSON/,
    code: CloseCode.ProtocolError,
  },
  {
    name: "random garbage",
    bytes: () => garbage(512, 0xfe),
    logged: /not the mcudpt preface/,
    code: CloseCode.ProtocolError,
  },
  {
    name: "a valid preface, then a DATA header of 2 GiB",
    bytes: () => concatBytes(PREFACE, header(FrameType.Data, 0x7fff_ffff)),
    logged: /DATA frame of 2147483647 bytes (exceeds|too large)/,
    code: CloseCode.ProtocolError,
  },
  {
    name: "a valid preface, then a HELLO header over its maximum",
    bytes: () => concatBytes(PREFACE, header(FrameType.Hello, HELLO_MAX + 1)),
    logged: new RegExp(`HELLO frame of ${HELLO_MAX + 1} bytes (exceeds|too large)`),
    code: CloseCode.ProtocolError,
  },
  {
    name: "an SSH client banner",
    bytes: () => utf8("SSH-2.0-OpenSSH_9.6p1 Ubuntu-3ubuntu13\r\n"),
    logged: /SSH/,
    code: CloseCode.ProtocolError,
  },
  {
    name: "a TLS ClientHello",
    bytes: () =>
      concatBytes(Uint8Array.of(0x16, 0x03, 0x01, 0x00, 0xf8, 0x01, 0x00, 0x00, 0xf4, 0x03, 0x03), garbage(64, 0x42)),
    logged: /TLS/,
    code: CloseCode.ProtocolError,
  },
  {
    name: "the preface of wire version 2",
    bytes: () => concatBytes(PREFACE.subarray(0, 7), Uint8Array.of(2), garbage(40, 0x01)),
    logged: /wire version 2/,
    code: CloseCode.ProtocolError,
  },
  {
    name: "a valid preface and a HELLO claiming to be a receiver",
    bytes: () => concatBytes(PREFACE, encodeFrame({ ...helloFields(), role: Role.Receiver })),
    logged: /both sides are receivers/,
    code: CloseCode.RoleConflict,
  },
  {
    name: "a valid preface and a HELLO in key mode (the receiver uses a secret)",
    bytes: () =>
      concatBytes(
        PREFACE,
        encodeFrame({ ...helloFields(), auth: AuthMode.Key, publicKey: new Uint8Array(32).fill(7) }),
      ),
    logged: /peer uses keys .*same --secret/,
    code: CloseCode.AuthMismatch,
  },
  {
    name: "a valid preface and HELLO, then DATA instead of AUTH",
    bytes: () =>
      concatBytes(senderHello().bytes, frames({ type: FrameType.Data, flowId: 1, payload: utf8("let me in") })),
    logged: /unexpected DATA during the handshake/,
    code: CloseCode.ProtocolError,
  },
  {
    name: "a valid preface and HELLO, then garbage",
    bytes: () => concatBytes(senderHello().bytes, garbage(256, 0x3f)),
    logged: /unknown frame type 0x3f/,
    code: CloseCode.ProtocolError,
  },
];

for (const transport of availableTransports()) {
  describe(`hostile bytes (${transport.name} transport)`, () => {
    let echo: Awaited<ReturnType<typeof startEcho>>;
    before(async () => {
      echo = await startEcho(transport);
    });
    after(() => echo.close());

    it(
      "closes strangers, garbage, oversized frames and silence with one line each, serving its sender throughout",
      TIMEOUT,
      async () => {
        const { receiver, log: receiverLog } = await receiverOn(transport, {
          config: { secret: SECRET, handshakeTimeoutMs: HANDSHAKE_TIMEOUT_MS },
        });
        const { sender } = await senderTo(transport, echo.port, receiver.tcpPort, {
          secret: SECRET,
          handshakeTimeoutMs: HANDSHAKE_TIMEOUT_MS,
        });
        const client = await startClient(transport, receiver.udpPort);
        const peers: RawPeer[] = [];
        try {
          await eventually(
            () => receiver.machine.session.peerConnected && sender.machine.session.peerConnected,
            "sender accepted",
          );
          await echoed(client, "before");

          // (f) A connection that says nothing, held open: the real sender is served meanwhile.
          const silent = await rawConnect(receiver.tcpPort);
          peers.push(silent);
          await eventually(
            () => receiverLog.saw(new RegExp(`connection from .*:${silent.localPort}(?!\\d)`)),
            "silent peer accepted",
          );
          await echoed(client, "while a silent peer waits");
          // A peer that stops in the middle of its HELLO, also held open.
          const halfway = await rawConnect(receiver.tcpPort);
          peers.push(halfway);
          halfway.write(senderHello().bytes.subarray(0, 30));
          await echoed(client, "while a half-sent HELLO waits");
          // A peer that keeps sending (extension frames, skipped in every state) but never finishes the
          // handshake: activity must not extend its deadline.
          const chatty = await rawConnect(receiver.tcpPort);
          peers.push(chatty);
          chatty.write(senderHello().bytes);
          const extension = frames({ type: "extension", extensionType: 0xa5, body: utf8("still here") });
          const chatter = setInterval(() => chatty.write(extension), 50);
          chatty.socket.once("close", () => clearInterval(chatter));
          assert.equal(silent.closed, false, "the echo came back before the handshake deadline of the silent peer");

          // (a)-(e) One at a time, each checked, with an echo after each.
          for (const stranger of strangers) {
            const peer = await rawConnect(receiver.tcpPort);
            peers.push(peer);
            peer.write(stranger.bytes());
            await peer.whenClosedWithin(5000, `${stranger.name}: closed by the receiver`);
            await eventually(() => linesAbout(receiverLog, peer.localPort).length > 0, `${stranger.name}: a log line`);
            const lines = linesAbout(receiverLog, peer.localPort);
            assert.equal(lines.length, 1, `${stranger.name}: one line, got ${JSON.stringify(lines)}`);
            assert.match(lines[0], /^warn: closing connection with /, stranger.name);
            assert.match(lines[0], stranger.logged, stranger.name);
            // The receiver answered with its own preface and HELLO, then CLOSE(code), then closed.
            assert.equal(peer.decodeError, undefined, `${stranger.name}: the receiver's bytes decode`);
            assert.deepEqual(
              peer.frames.map((f) => f.type),
              [FrameType.Hello, FrameType.Close],
              stranger.name,
            );
            const close = peer.frames[1] as CloseFrame;
            assert.equal(close.code, stranger.code, `${stranger.name}: ${frameName(close)}`);
            await echoed(client, `after ${stranger.name}`);
          }

          // (f) continued: the silent peer is closed at its deadline, with a line saying so.
          await silent.whenClosedWithin(HANDSHAKE_TIMEOUT_MS + 5000, "silent peer closed at the handshake deadline");
          await eventually(
            () => linesAbout(receiverLog, silent.localPort).length > 0,
            "a log line for the silent peer",
          );
          const silentLines = linesAbout(receiverLog, silent.localPort);
          assert.equal(silentLines.length, 1, JSON.stringify(silentLines));
          assert.match(silentLines[0], /no complete handshake within 1 s/);
          assert.match(silentLines[0], /sent nothing/);
          assert.deepEqual(
            silent.frames.map((f) => (f.type === FrameType.Close ? `CLOSE ${f.code}` : frameName(f))),
            ["HELLO", `CLOSE ${CloseCode.HandshakeTimeout}`],
          );
          await chatty.whenClosedWithin(HANDSHAKE_TIMEOUT_MS + 5000, "chatty peer closed at the handshake deadline");
          await eventually(
            () => linesAbout(receiverLog, chatty.localPort).length > 0,
            "a log line for the chatty peer",
          );
          const chattyLines = linesAbout(receiverLog, chatty.localPort);
          assert.equal(chattyLines.length, 1, JSON.stringify(chattyLines));
          assert.match(chattyLines[0], /no complete handshake within 1 s/);
          // (Its CLOSE frame is not checked: the peer's own writes after the close may reset the connection
          // before the frame is read.)
          await halfway.whenClosedWithin(
            HANDSHAKE_TIMEOUT_MS + 5000,
            "half-sent HELLO closed at the handshake deadline",
          );
          await eventually(
            () => linesAbout(receiverLog, halfway.localPort).length > 0,
            "a log line for the half-sent HELLO",
          );
          const halfwayLines = linesAbout(receiverLog, halfway.localPort);
          assert.equal(halfwayLines.length, 1, JSON.stringify(halfwayLines));
          assert.match(halfwayLines[0], /no complete handshake within 1 s \(peer sent part of a preface or frame\)/);
          assert.deepEqual(
            halfway.frames.map((f) => (f.type === FrameType.Close ? `CLOSE ${f.code}` : frameName(f))),
            ["HELLO", `CLOSE ${CloseCode.HandshakeTimeout}`],
          );

          // The receiver is up, still with the same sender (nothing replaced or dropped it).
          assert.equal(receiver.machine.session.peerConnected, true);
          assert.equal(sender.machine.session.peerConnected, true);
          assert.equal(receiver.machine.stats.accepted, 1, "no stranger was accepted, the sender was never replaced");
          assert.equal(receiver.machine.stats.handshakeFailures, strangers.length + 3);
          await echoed(client, "after all of them");
        } finally {
          for (const peer of peers) peer.destroy();
          client.close();
          await sender.close();
          await receiver.close();
        }
      },
    );

    // The wire carries datagrams up to 65 535 bytes, IPv4 UDP at most 65 507: what the receiver cannot
    // deliver is lost, and must be counted like any other send failure (README "Reliability", §8.4).
    it("drops and counts datagrams from the sender too large for the client's IPv4, and keeps the flow", {
      ...TIMEOUT,
    }, async () => {
      const { receiver } = await receiverOn(transport, { config: { secret: SECRET } });
      const client = await startClient(transport, receiver.udpPort);
      const hostile = await rawConnect(receiver.tcpPort);
      try {
        await handshakeAsSender(hostile, SECRET);
        client.send("a question");
        const open = await hostile.waitFrame(isFrame(FrameType.FlowOpen), "FLOW_OPEN for the client");
        const dropped = () => Object.values(receiver.machine.stats.drops).reduce((a, b) => a + b, 0);
        const before = dropped();
        hostile.write(
          frames(
            { type: FrameType.Data, flowId: open.flowId, payload: new Uint8Array(65_535) },
            { type: FrameType.Data, flowId: open.flowId, payload: new Uint8Array(65_508) },
            { type: FrameType.Data, flowId: open.flowId, payload: utf8("fits") },
          ),
        );
        await eventually(() => client.replies.length > 0, "the datagram that fits");
        assert.equal(text(client.replies[0]), "fits");
        await eventually(
          () => dropped() >= before + 2,
          `two drops counted (drops: ${JSON.stringify(receiver.machine.stats.drops)})`,
          3000,
        );
        assert.equal(hostile.closed, false);
        assert.equal(receiver.machine.session.peerConnected, true);
        hostile.write(frames({ type: FrameType.Data, flowId: open.flowId, payload: utf8("still fits") }));
        await eventually(() => client.replies.length > 1, "the flow still works");
        assert.equal(text(client.replies[1]), "still fits");
      } finally {
        hostile.destroy();
        client.close();
        await receiver.close();
      }
    });
  });
}
