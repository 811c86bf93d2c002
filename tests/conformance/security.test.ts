/**
 * Every refusal the tunnel makes, over every transport, with real sockets on 127.0.0.1: unknown and
 * unlisted sender keys, a changed receiver key (pinned in known_receivers or by --receiver-key), a
 * wrong shared secret either way, a replayed handshake, a hostile authenticated sender, a flood of
 * unauthenticated connections, reflection/amplification through unconfirmed clients, and new-flow
 * floods. Also what must NOT be refused: a sender key approved once is admitted again without asking,
 * after the sender restarts and after the receiver restarts. node:test + node:assert only (runs under
 * bun test and, bundled, under node --test). Trust files live in a fresh temp dir per test.
 */
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import {
  filePeerPins,
  fileAdmission,
  fingerprint,
  fixedPeerPin,
  parsePublicKeyLine,
  publicKeyLine,
  type ReceiverHandle,
  type ReceiverOptions,
  type PeerPins,
  type SenderHandle,
  startReceiver,
  startSender,
  type Transport,
  type UdpSocket,
} from "@mcudpt/core";
import {
  CloseCode,
  concatBytes,
  type Frame,
  FrameType,
  PREFACE,
  type ReceiverConfig,
  type SenderConfig,
  utf8,
} from "@mcudpt/protocol";
import { memoryTrust, testIdentity } from "../helpers/keys.js";
import { startProxy } from "../helpers/proxy.js";
import {
  frameName,
  frames,
  handshakeAsReceiver,
  handshakeAsSender,
  handshakePrefix,
  isFrame,
  type RawPeer,
  rawConnect,
  rawListen,
  recordingProxy,
  senderAuth,
  senderHello,
} from "../helpers/raw-peer.js";
import { availableTransports } from "../helpers/transports.js";
import {
  eventually,
  LOOPBACK,
  type MemoryLogger,
  memoryLogger,
  sleep,
  startClient,
  startEcho,
  type TestClient,
  text,
} from "../helpers/tunnel.js";

const TIMEOUT = { timeout: 60_000 };
const RETRY = { initialMs: 50, maxMs: 500 };
/** Long enough to tell "closed at once (Busy)" from "closed at the deadline" by the CLOSE code alone. */
const FLOOD_HANDSHAKE_TIMEOUT_MS = 3000;

function tempDir(): string {
  return mkdtempSync(join(tmpdir(), "mcudpt-security-"));
}

/** Lines of `log` containing every one of `parts` (fingerprints hold + and /: no regexes). */
function linesWith(log: MemoryLogger, ...parts: string[]): string[] {
  return log.lines.filter((line) => parts.every((part) => line.includes(part)));
}

/** The lines about one peer (by its port), leaving out the "connection from" line of its arrival. */
function linesAbout(log: MemoryLogger, port: number): string[] {
  const mentions = new RegExp(`:${port}(?!\\d)`);
  return log.lines.filter((line) => mentions.test(line) && !/^(debug|info): connection from /.test(line));
}

const connectionsSeen = (log: MemoryLogger) => log.lines.filter((line) => /connection from /.test(line)).length;

type CloseFrame = Extract<Frame, { type: typeof FrameType.Close }>;
const closeOf = (peer: RawPeer): CloseFrame | undefined => peer.frames.find(isFrame(FrameType.Close));

interface ReceiverSetup {
  config: ReceiverConfig;
  admission?: ReceiverOptions["admission"];
  askOperator?: ReceiverOptions["askOperator"];
}

async function receiverOn(
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

async function senderTo(
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
function yesOperator(): { asked: string[]; ask: NonNullable<ReceiverOptions["askOperator"]> } {
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
async function victim(transport: Transport): Promise<UdpSocket & { got: string[] }> {
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
async function loudTarget(transport: Transport, count: number, size: number): Promise<UdpSocket> {
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
async function roundTrip(client: TestClient, message: string): Promise<void> {
  assert.equal(text(await client.request(message, 10_000)), message);
}

for (const transport of availableTransports()) {
  describe(`security refusals (${transport.name} transport)`, () => {
    let echo: Awaited<ReturnType<typeof startEcho>>;
    before(async () => {
      echo = await startEcho(transport);
    });
    after(() => echo.close());

    it(
      "asks about a sender key once: the same key is admitted without asking after a reconnect, a sender restart and a receiver restart",
      TIMEOUT,
      async () => {
        const dir = tempDir();
        const knownSenders = join(dir, "known_senders");
        const knownReceivers = join(dir, "known_receivers");
        const receiverKey = testIdentity("receiver");
        const senderKey = testIdentity("sender");
        const operator = yesOperator();
        const setup = (): ReceiverSetup => ({
          config: { identity: receiverKey },
          admission: fileAdmission({ knownSenders }), // re-created: a restarted receiver reads the file afresh
          askOperator: operator.ask,
        });
        let { receiver, log: receiverLog } = await receiverOn(transport, setup());
        const proxy = await startProxy(receiver.tcpPort);
        let run = await senderTo(
          transport,
          echo.port,
          proxy.port,
          { identity: senderKey },
          {
            pins: filePeerPins(knownReceivers),
          },
        );
        const client = await startClient(transport, receiver.udpPort);
        try {
          await eventually(
            () => run.sender.machine.session.peerConnected,
            "first connection accepted after the operator's yes",
          );
          assert.deepEqual(operator.asked, [senderKey.fingerprint], "asked once, about the sender's key");
          const remembered = readFileSync(knownSenders, "utf8").trim().split("\n");
          assert.equal(remembered.length, 1, remembered.join("\n"));
          const parsed = parsePublicKeyLine(remembered[0]);
          assert.ok(parsed, `known_senders holds a public key line: ${remembered[0]}`);
          assert.equal(fingerprint(parsed.publicKey), senderKey.fingerprint);
          assert.equal(linesWith(run.log, "is new: remembered in").length, 1, "the sender pinned the receiver (TOFU)");
          await roundTrip(client, "first");

          // The TCP connection is cut: the sender reconnects (resuming) without a question.
          proxy.cut();
          await eventually(() => !run.sender.machine.session.peerConnected, "the cut is noticed");
          await eventually(() => run.sender.machine.session.peerConnected, "reconnected after the cut");
          await roundTrip(client, "after the cut");

          // A restarted sender process (no session token, fresh pins object over the same file).
          await run.sender.close();
          run = await senderTo(
            transport,
            echo.port,
            receiver.tcpPort,
            { identity: senderKey },
            {
              pins: filePeerPins(knownReceivers),
            },
          );
          await eventually(() => run.sender.machine.session.peerConnected, "the restarted sender is accepted");
          assert.equal(linesWith(receiverLog, senderKey.fingerprint, "known sender").length >= 1, true);
          await roundTrip(client, "after the sender restart");

          // A restarted receiver (same key, same known_senders file, a new trust object).
          await run.sender.close();
          await receiver.close();
          ({ receiver, log: receiverLog } = await receiverOn(transport, setup()));
          run = await senderTo(
            transport,
            echo.port,
            receiver.tcpPort,
            { identity: senderKey },
            {
              pins: filePeerPins(knownReceivers),
            },
          );
          await eventually(() => run.sender.machine.session.peerConnected, "accepted by the restarted receiver");
          const second = await startClient(transport, receiver.udpPort);
          try {
            await roundTrip(second, "after the receiver restart");
          } finally {
            second.close();
          }
          assert.deepEqual(operator.asked, [senderKey.fingerprint], "never asked again");
          assert.equal(readFileSync(knownSenders, "utf8").trim().split("\n").length, 1, "remembered once");
          assert.equal(run.log.lines.filter((line) => line.startsWith("error")).length, 0, run.log.lines.join("\n"));
        } finally {
          client.close();
          await run.sender.close();
          await proxy.close();
          await receiver.close();
          rmSync(dir, { recursive: true, force: true });
        }
      },
    );

    it(
      "with --authorized-keys admits the listed key and refuses any other, naming its fingerprint, without asking",
      TIMEOUT,
      async () => {
        const dir = tempDir();
        const authorizedKeys = join(dir, "authorized_keys");
        const knownSenders = join(dir, "known_senders");
        const listed = testIdentity("listed");
        const stranger = testIdentity("stranger");
        writeFileSync(authorizedKeys, `# senders allowed in\n\n${publicKeyLine(listed.publicKey, "listed@test")}\n`);
        const operator = yesOperator();
        const { receiver, log: receiverLog } = await receiverOn(transport, {
          config: { identity: testIdentity("receiver") },
          admission: fileAdmission({ authorizedKeys, knownSenders }),
          askOperator: operator.ask, // present, yet an allowlist leaves it nothing to decide
        });
        const client = await startClient(transport, receiver.udpPort);
        const target = await startEcho(transport);
        let run = await senderTo(transport, target.port, receiver.tcpPort, { identity: stranger });
        try {
          await eventually(
            () =>
              // The detail (the file) stays in the local log; the peer hears a short reason.
              linesWith(
                receiverLog,
                `refusing sender 127.0.0.1:`,
                `key ${stranger.fingerprint} is not in ${authorizedKeys}`,
              ).length > 0 &&
              linesWith(
                run.log,
                `refused this side: key not accepted ("key ${stranger.fingerprint} is not authorized here")`,
              ).length > 0 &&
              !run.log.lines.some((line) => line.includes(authorizedKeys)),
            "the refusal, naming the stranger's key, logged at both ends",
          );
          for (let i = 0; i < 5; i++) client.send(`while refused ${i}`);
          await eventually(() => receiver.machine.stats.drops["no-sender"] >= 5, "datagrams dropped: no sender");
          assert.equal(receiver.machine.stats.accepted, 0);
          assert.equal(run.sender.machine.session.peerConnected, false);
          assert.equal(target.received, 0, "nothing forwarded for the unlisted key");
          assert.deepEqual(operator.asked, [], "the operator is never asked with an allowlist");
          assert.equal(existsSync(knownSenders), false, "the refused key is not remembered");
          await run.sender.close();

          run = await senderTo(transport, target.port, receiver.tcpPort, { identity: listed });
          await eventually(() => run.sender.machine.session.peerConnected, "the listed key is admitted");
          assert.ok(linesWith(receiverLog, listed.fingerprint, `listed in ${authorizedKeys}`).length > 0);
          await roundTrip(client, "listed sender forwards");
          assert.deepEqual(operator.asked, []);
        } finally {
          client.close();
          target.close();
          await run.sender.close();
          await receiver.close();
          rmSync(dir, { recursive: true, force: true });
        }
      },
    );

    it(
      "refuses a changed receiver key (known_receivers, --receiver-key) once, naming both keys, and stops dialing",
      TIMEOUT,
      async () => {
        const dir = tempDir();
        const pinnedKey = testIdentity("receiver A");
        const actualKey = testIdentity("receiver B");
        const senderKey = testIdentity("sender");
        const { receiver, log: receiverLog } = await receiverOn(transport, {
          config: { identity: actualKey },
          admission: memoryTrust(senderKey),
        });
        const target = await startEcho(transport);
        const client = await startClient(transport, receiver.udpPort);
        const knownReceivers = join(dir, "known_receivers");
        const pinLine = `${LOOPBACK}:${receiver.tcpPort} ${publicKeyLine(pinnedKey.publicKey)}\n`;
        writeFileSync(knownReceivers, pinLine);
        const senders: SenderHandle[] = [];
        try {
          const cases: Array<{ name: string; pins: PeerPins; says: RegExp }> = [
            { name: "known_receivers", pins: filePeerPins(knownReceivers), says: /KEY CHANGED/ },
            { name: "--receiver-key", pins: fixedPeerPin(pinnedKey.fingerprint), says: /--receiver-key/ },
          ];
          for (const { name, pins, says } of cases) {
            const before = connectionsSeen(receiverLog);
            const refusalsBefore = linesWith(receiverLog, "key not accepted", actualKey.fingerprint).length;
            const fatal: string[] = [];
            const run = await senderTo(transport, target.port, receiver.tcpPort, { identity: senderKey }, { pins });
            senders.push(run.sender);
            void run.sender.fatal.then((why) => fatal.push(why));
            await eventually(() => fatal.length > 0, `${name}: the sender gives up (its fatal promise resolves)`);
            const message = fatal[0];
            assert.match(message, says, name);
            assert.ok(message.includes(pinnedKey.fingerprint), `${name}: names the pinned key: ${message}`);
            assert.ok(message.includes(actualKey.fingerprint), `${name}: names the presented key: ${message}`);
            assert.ok(!message.includes("\n"), `${name}: one line`);
            assert.equal(linesWith(run.log, "error:", pinnedKey.fingerprint, actualKey.fingerprint).length, 1, name);
            // The receiver is told why in the CLOSE, and logs it.
            await eventually(
              () => linesWith(receiverLog, "key not accepted", actualKey.fingerprint).length > refusalsBefore,
              `${name}: the receiver logs the sender's reason`,
            );
            await eventually(() => !receiver.machine.session.peerConnected, `${name}: the receiver has no sender`);
            // No reconnection: with a 50 ms retry delay several attempts would have come by now.
            await sleep(1000);
            assert.equal(connectionsSeen(receiverLog) - before, 1, `${name}: one connection, then no more dialing`);
            assert.equal(run.sender.machine.session.peerConnected, false);
            for (let i = 0; i < 3; i++) client.send(`${name} ${i}`);
            await sleep(100);
            assert.equal(target.received, 0, `${name}: nothing forwarded`);
          }
          assert.equal(readFileSync(knownReceivers, "utf8"), pinLine, "the pin is left as it was");

          // Control: the right pin connects and forwards.
          const good = await senderTo(
            transport,
            target.port,
            receiver.tcpPort,
            { identity: senderKey },
            {
              pins: fixedPeerPin(actualKey.fingerprint),
            },
          );
          senders.push(good.sender);
          await eventually(() => good.sender.machine.session.peerConnected, "the correctly pinned sender is accepted");
          await roundTrip(client, "correct pin");
        } finally {
          client.close();
          target.close();
          for (const sender of senders) await sender.close();
          await receiver.close();
          rmSync(dir, { recursive: true, force: true });
        }
      },
    );

    it(
      "refuses a wrong shared secret at the receiver, and an impostor receiver at the sender (secret and key mode)",
      TIMEOUT,
      async () => {
        const target = await startEcho(transport);
        // The receiver refuses a sender with the wrong secret.
        const { receiver, log: receiverLog } = await receiverOn(transport, { config: { secret: "right secret" } });
        const client = await startClient(transport, receiver.udpPort);
        const wrong = await senderTo(transport, target.port, receiver.tcpPort, { secret: "wrong secret" });
        try {
          await eventually(
            () =>
              receiverLog.saw(/closing connection with .*: wrong shared secret/) &&
              wrong.log.saw(/closed the connection: authentication failed/),
            "the wrong secret refused, and the sender told so",
          );
          for (let i = 0; i < 3; i++) client.send(`wrong secret ${i}`);
          await sleep(100);
          assert.equal(receiver.machine.stats.accepted, 0);
          assert.equal(wrong.sender.machine.session.peerConnected, false);
          assert.equal(target.received, 0);
        } finally {
          await wrong.sender.close();
          client.close();
          await receiver.close();
        }

        // The sender refuses receivers that cannot prove themselves, and acts on nothing they send.
        const pinned = testIdentity("the real receiver");
        const impostors: Array<{
          name: string;
          config: SenderConfig;
          prove: Parameters<typeof handshakeAsReceiver>[1];
          announce?: Uint8Array;
          logged: RegExp;
        }> = [
          {
            name: "secret mode, a different secret",
            config: { secret: "right secret" },
            prove: "some other secret",
            logged: /receiver could not prove the shared secret/,
          },
          {
            name: "key mode, the real receiver's public key but another private key",
            config: { identity: testIdentity("sender") },
            prove: testIdentity("impostor"),
            announce: pinned.publicKey,
            logged: /receiver's signature does not match the key it announced/,
          },
        ];
        for (const impostor of impostors) {
          const injected = frames(
            { type: FrameType.FlowOpen, flowId: 1, mappingId: 0, client: { family: 4, address: LOOPBACK, port: 9 } },
            { type: FrameType.Data, flowId: 1, payload: utf8("injected") },
          );
          const listener = await rawListen((peer) => {
            handshakeAsReceiver(peer, impostor.prove, { announce: impostor.announce, after: injected }).catch(() => {});
          });
          const run = await senderTo(transport, target.port, listener.port, impostor.config, {
            pins: fixedPeerPin(fingerprint(pinned.publicKey)),
          });
          try {
            await eventually(() => run.log.saw(impostor.logged), `${impostor.name}: the sender refuses`);
            const peer = listener.peers[0];
            const close = await peer.waitFrame(isFrame(FrameType.Close), `${impostor.name}: CLOSE from the sender`);
            assert.equal(close.code, CloseCode.AuthFailed, `${impostor.name}: ${frameName(close)}`);
            await sleep(200);
            assert.equal(run.sender.machine.session.peerConnected, false, impostor.name);
            assert.equal(run.sender.machine.stats.accepted, 0, impostor.name);
            assert.equal(
              run.sender.machine.stats.flowsOpened,
              0,
              `${impostor.name}: FLOW_OPEN after a bad ACCEPT ignored`,
            );
            assert.equal(run.sender.flowSockets, 0, impostor.name);
            assert.equal(target.received, 0, `${impostor.name}: nothing reached the target`);
          } finally {
            await run.sender.close();
            await listener.close();
          }
        }
        target.close();
      },
    );

    for (const mode of ["secret", "key"] as const) {
      it(`refuses a replayed handshake (${mode} mode): the receiver's nonce is fresh`, TIMEOUT, async () => {
        const senderKey = testIdentity("sender");
        const operator = yesOperator();
        const { receiver, log: receiverLog } = await receiverOn(
          transport,
          mode === "secret"
            ? { config: { secret: "replay secret" } }
            : {
                config: { identity: testIdentity("receiver") },
                admission: memoryTrust(senderKey),
                askOperator: operator.ask,
              },
        );
        const recorder = await recordingProxy(receiver.tcpPort);
        const run = await senderTo(
          transport,
          echo.port,
          recorder.port,
          mode === "secret" ? { secret: "replay secret" } : { identity: senderKey },
        );
        const replays: RawPeer[] = [];
        try {
          await eventually(() => run.sender.machine.session.peerConnected, "the legitimate sender is accepted");
          await run.sender.close(); // gone: a replay cannot be refused merely for "another sender"
          await eventually(() => !receiver.machine.session.peerConnected, "the legitimate sender left");
          const captured = handshakePrefix(recorder.recorded()[0]);
          // Verbatim, all at once (as a recording would be played back), and again paced like a real
          // sender: after the receiver's HELLO.
          for (const paced of [false, true]) {
            const replay = await rawConnect(receiver.tcpPort);
            replays.push(replay);
            if (paced) {
              const helloEnd = PREFACE.length + 5 + new DataView(captured.buffer, PREFACE.length + 1, 4).getUint32(0);
              replay.write(captured.subarray(0, helloEnd));
              await replay.waitFrame(isFrame(FrameType.Hello), "the receiver's HELLO");
              replay.write(captured.subarray(helloEnd));
            } else {
              replay.write(captured);
            }
            const close = await replay.waitFrame(isFrame(FrameType.Close), "CLOSE for the replay");
            assert.equal(close.code, CloseCode.AuthFailed, frameName(close));
            await replay.whenClosedWithin(5000, "the replay's connection closed");
            const lines = linesAbout(receiverLog, replay.localPort);
            assert.equal(lines.length, 1, JSON.stringify(lines));
            assert.match(lines[0], mode === "secret" ? /wrong shared secret/ : /signature does not match/);
          }
          assert.equal(receiver.machine.stats.accepted, 1, "only the original connection was ever accepted");
          assert.equal(receiver.machine.session.peerConnected, false);
          assert.deepEqual(operator.asked, [], "a replay never reaches the operator");
        } finally {
          for (const replay of replays) replay.destroy();
          await run.sender.close();
          await recorder.close();
          await receiver.close();
        }
      });
    }

    it(
      "in key mode with default limits, a hostile sender makes the receiver send nothing to any address that never opened a flow",
      TIMEOUT,
      async () => {
        const senderKey = testIdentity("hostile but trusted");
        const stranger = testIdentity("stranger");
        const questions: string[] = [];
        const { receiver, log: receiverLog } = await receiverOn(transport, {
          config: { identity: testIdentity("receiver") },
          admission: memoryTrust(senderKey),
          // An operator who never answers: a stranger's connection waits in "approval" for as long as needed.
          askOperator: ({ fingerprint: print }, cancelled) =>
            new Promise((resolve) => {
              questions.push(print);
              cancelled.addEventListener("abort", () => resolve(false));
            }),
        });
        const victims = await Promise.all([victim(transport), victim(transport), victim(transport)]);
        const toVictims = (flowId: number, what: string) =>
          victims.map(
            (v) => ({ type: FrameType.Data, flowId, payload: utf8(`${what} -> ${LOOPBACK}:${v.port}`) }) as const,
          );
        const clientA = await startClient(transport, receiver.udpPort);
        const clientB = await startClient(transport, receiver.udpPort);
        const peers: RawPeer[] = [];
        try {
          // Before acceptance. (1) Frames right after the preface, no HELLO.
          const early = await rawConnect(receiver.tcpPort);
          peers.push(early);
          early.write(concatBytes(PREFACE, frames(...toVictims(1, "before HELLO"))));
          await early.whenClosedWithin(5000, "frames before HELLO: closed");
          assert.equal(closeOf(early)?.code, CloseCode.ProtocolError);
          // (2) A valid key-mode HELLO and AUTH from an unknown key; while the operator thinks, DATA and
          // FLOW_CLOSE for flows never opened.
          const waiting = await rawConnect(receiver.tcpPort);
          peers.push(waiting);
          const hello = senderHello("hostile-test", stranger);
          waiting.write(hello.bytes);
          const receiverHello = await waiting.waitFrame(isFrame(FrameType.Hello), "the receiver's HELLO");
          waiting.write(senderAuth(receiverHello, hello.hello, stranger));
          await eventually(() => questions.length === 1, "the operator is asked about the stranger");
          assert.equal(questions[0], stranger.fingerprint);
          waiting.write(
            frames(...toVictims(1, "awaiting approval"), { type: FrameType.FlowClose, flowId: 1, reason: 0 }),
          );
          await waiting.whenClosedWithin(5000, "frames while awaiting approval: closed");
          const waitingClose = closeOf(waiting);
          assert.equal(waitingClose?.code, CloseCode.ProtocolError, waitingClose && frameName(waitingClose));
          assert.match(waitingClose?.message ?? "", /unexpected DATA during the handshake/);
          assert.equal(receiver.machine.stats.accepted, 0);

          // After acceptance: a trusted key, so the receiver acts on what it sends — within limits.
          const hostile = await rawConnect(receiver.tcpPort);
          peers.push(hostile);
          await handshakeAsSender(hostile, senderKey);
          await eventually(() => receiver.machine.session.peerConnected, "the hostile sender is accepted");
          assert.equal(questions.length, 1, "a known key is not asked about");

          // DATA and FLOW_CLOSE for ids never opened, before any client exists.
          let seen = hostile.frames.length;
          const forged = [1, 2, 1000, 0x7fff_ffff, 0xffff_ffff];
          hostile.write(
            frames(
              ...forged.flatMap((id) => toVictims(id, "forged")),
              ...forged.map((flowId) => ({ type: FrameType.FlowClose, flowId, reason: 0 }) as const),
            ),
          );
          await eventually(
            () =>
              forged.every((id) =>
                hostile.frames.slice(seen).some((f) => f.type === FrameType.FlowClose && f.flowId === id),
              ),
            "FLOW_CLOSE(unknown flow) for every forged id",
          );

          // Client A opens a flow; the hostile sender answers it (control: answers do reach their client).
          clientA.send("A asks");
          const openA = await hostile.waitFrame(isFrame(FrameType.FlowOpen), "FLOW_OPEN for A", seen);
          assert.equal(openA.client.port, clientA.socket.port);
          hostile.write(frames({ type: FrameType.Data, flowId: openA.flowId, payload: utf8("to A") }));
          await eventually(() => clientA.replies.length === 1, "A's answer");
          // It closes A's flow, then still sends to it, and to the id a next flow would get (guessing ahead).
          seen = hostile.frames.length;
          hostile.write(
            frames(
              { type: FrameType.FlowClose, flowId: openA.flowId, reason: 0 },
              { type: FrameType.Data, flowId: openA.flowId, payload: utf8("to A after its flow closed") },
              ...toVictims(openA.flowId + 1, "guessed next id"),
            ),
          );
          await eventually(
            () => hostile.frames.slice(seen).filter((f) => f.type === FrameType.FlowClose).length >= 2,
            "FLOW_CLOSE(unknown flow) for the closed and the guessed id",
          );
          // Client B opens the next flow: only B gets what is sent to it.
          seen = hostile.frames.length;
          clientB.send("B asks");
          const openB = await hostile.waitFrame(isFrame(FrameType.FlowOpen), "FLOW_OPEN for B", seen);
          assert.equal(openB.client.port, clientB.socket.port);
          hostile.write(frames({ type: FrameType.Data, flowId: openB.flowId, payload: utf8("to B") }));
          await eventually(() => clientB.replies.length === 1, "B's answer");
          // A again: a new flow, a new id.
          seen = hostile.frames.length;
          clientA.send("A asks again");
          const reopenA = await hostile.waitFrame(isFrame(FrameType.FlowOpen), "a new FLOW_OPEN for A", seen);
          assert.notEqual(reopenA.flowId, openA.flowId);
          hostile.write(frames({ type: FrameType.Data, flowId: reopenA.flowId, payload: utf8("to A again") }));
          await eventually(() => clientA.replies.length === 2, "A's second answer");

          // A FLOW_OPEN from the sender naming a victim is a protocol error; nothing after it is acted on.
          hostile.write(
            frames(
              {
                type: FrameType.FlowOpen,
                flowId: 999,
                mappingId: 0,
                client: { family: 4, address: LOOPBACK, port: victims[0].port },
              },
              ...toVictims(999, "after FLOW_OPEN"),
              { type: FrameType.Data, flowId: openB.flowId, payload: utf8("to B after the error") },
            ),
          );
          await hostile.whenClosedWithin(5000, "closed after FLOW_OPEN from the sender");
          assert.equal(closeOf(hostile)?.code, CloseCode.ProtocolError);

          await sleep(200); // loopback delivery of anything wrongly sent
          for (const v of victims) assert.deepEqual(v.got, [], `victim ${v.port} received datagrams`);
          assert.deepEqual(clientA.replies.map(text), ["to A", "to A again"]);
          assert.deepEqual(clientB.replies.map(text), ["to B"]);
          assert.equal(receiver.machine.stats.udpOut, 3, "three datagrams emitted in all, each to its own client");
          assert.ok(receiverLog.saw(/FLOW_OPEN/), receiverLog.lines.join("\n"));
        } finally {
          for (const peer of peers) peer.destroy();
          clientA.close();
          clientB.close();
          for (const v of victims) v.close();
          await receiver.close();
        }
      },
    );

    for (const flood of [
      { name: "default limits: 4 pending per source", config: {}, pending: 4, says: /from 127\.0\.0\.1 \(4\)/ },
      { name: "16 pending in all", config: { maxPendingPerSource: 64 }, pending: 16, says: /connections \(16\)/ },
    ]) {
      it(`bounds a flood of 40 silent connections (${flood.name}), then serves a real sender`, TIMEOUT, async () => {
        const senderKey = testIdentity("sender");
        const { receiver, log: receiverLog } = await receiverOn(transport, {
          config: {
            identity: testIdentity("receiver"),
            handshakeTimeoutMs: FLOOD_HANDSHAKE_TIMEOUT_MS,
            ...flood.config,
          },
          admission: memoryTrust(senderKey),
        });
        let peers: RawPeer[] = [];
        let run: { sender: SenderHandle; log: MemoryLogger } | undefined;
        try {
          peers = await Promise.all(Array.from({ length: 40 }, () => rawConnect(receiver.tcpPort)));
          const busy = () => peers.filter((peer) => closeOf(peer)?.code === CloseCode.Busy);
          await eventually(
            () => busy().length === 40 - flood.pending && busy().every((peer) => peer.closed),
            `${40 - flood.pending} refused at once with CLOSE(busy) (got ${busy().length})`,
          );
          // The others still wait for their handshake: the refusals came before any deadline.
          const held = peers.filter((peer) => closeOf(peer)?.code !== CloseCode.Busy);
          assert.equal(held.length, flood.pending);
          assert.ok(
            held.every((peer) => closeOf(peer) === undefined),
            "the held ones were not refused",
          );
          await eventually(
            () => receiver.machine.session.connectionCount <= flood.pending,
            `the receiver keeps at most ${flood.pending} (has ${receiver.machine.session.connectionCount})`,
          );
          assert.ok(receiverLog.saw(flood.says), receiverLog.lines.filter((l) => l.startsWith("warn")).join("\n"));
          // The held ones are closed at their deadline.
          await eventually(
            () => held.every((peer) => peer.closed),
            "the held connections time out",
            FLOOD_HANDSHAKE_TIMEOUT_MS + 10_000,
          );
          for (const peer of held) assert.equal(closeOf(peer)?.code, CloseCode.HandshakeTimeout);
          await eventually(() => receiver.machine.session.connectionCount === 0, "no connection left");
          assert.equal(receiver.machine.stats.handshakeFailures, 40);

          run = await senderTo(transport, echo.port, receiver.tcpPort, { identity: senderKey });
          await eventually(
            () => run?.sender.machine.session.peerConnected === true,
            "a real sender is accepted afterwards",
          );
          const client = await startClient(transport, receiver.udpPort);
          try {
            await roundTrip(client, "after the flood");
          } finally {
            client.close();
          }
        } finally {
          for (const peer of peers) peer.destroy();
          await run?.sender.close();
          await receiver.close();
        }
      });
    }

    it(
      "caps replies to an unconfirmed client at 10× its first datagram (default), uncapped once it sends again",
      TIMEOUT,
      async () => {
        const REQUEST = 100;
        const REPLY = 400;
        const REPLIES = 5;
        const senderKey = testIdentity("sender");
        const target = await loudTarget(transport, REPLIES, REPLY);
        const { receiver, log: receiverLog } = await receiverOn(transport, {
          config: { identity: testIdentity("receiver") },
          admission: memoryTrust(senderKey),
        });
        const run = await senderTo(transport, target.port, receiver.tcpPort, { identity: senderKey });
        const client = await startClient(transport, receiver.udpPort);
        const drops = () => receiver.machine.stats.drops.amplification;
        const bytes = () => client.replies.reduce((sum, reply) => sum + reply.length, 0);
        try {
          await eventually(() => run.sender.machine.session.peerConnected, "sender accepted");
          client.send(new Uint8Array(REQUEST).fill(0x71)); // once: a spoofer would not see replies to re-send
          // 5 × 400 B answer 100 B: 1000 B budget lets two through, the other three are dropped.
          await eventually(
            () => client.replies.length + drops() === REPLIES,
            `every reply delivered or dropped (delivered ${client.replies.length}, dropped ${drops()})`,
          );
          assert.ok(bytes() <= 10 * REQUEST, `at most 10 × ${REQUEST} B to an unconfirmed client, got ${bytes()}`);
          assert.equal(client.replies.length, Math.floor((10 * REQUEST) / REPLY));
          assert.equal(drops(), REPLIES - Math.floor((10 * REQUEST) / REPLY));
          assert.ok(receiverLog.saw(/amplification-limit/), receiverLog.lines.join("\n"));

          // A second datagram from the same address and port confirms it: all replies flow.
          const before = client.replies.length;
          client.send(new Uint8Array(REQUEST).fill(0x72));
          await eventually(() => client.replies.length === before + REPLIES, "all replies to the confirmed client");
          assert.equal(drops(), REPLIES - Math.floor((10 * REQUEST) / REPLY), "no more drops");
        } finally {
          client.close();
          await run.sender.close();
          await receiver.close();
          target.close();
        }
      },
    );

    it(
      "drops and counts new flows from one address past its rate, while its established flow keeps working",
      TIMEOUT,
      async () => {
        const RATE = 2; // per second, bursts of 4: a flood of 40 source ports cannot be absorbed by refill
        const FLOOD = 40;
        const senderKey = testIdentity("sender");
        const { receiver, log: receiverLog } = await receiverOn(transport, {
          config: { identity: testIdentity("receiver"), newFlowsPerSecond: RATE },
          admission: memoryTrust(senderKey),
        });
        const run = await senderTo(transport, echo.port, receiver.tcpPort, { identity: senderKey });
        const legit = await startClient(transport, receiver.udpPort);
        const flooders = await Promise.all(
          Array.from({ length: FLOOD }, () => startClient(transport, receiver.udpPort)),
        );
        const stats = receiver.machine.stats;
        try {
          await eventually(() => run.sender.machine.session.peerConnected, "sender accepted");
          await roundTrip(legit, "established");
          assert.equal(stats.flowsOpened, 1);
          for (const [i, flooder] of flooders.entries()) flooder.send(`flood ${i}`);
          await eventually(
            () => stats.flowsOpened - 1 + stats.drops["rate-limited"] === FLOOD,
            `every flood datagram opened a flow or was dropped (opened ${stats.flowsOpened - 1}, dropped ${stats.drops["rate-limited"]})`,
          );
          const opened = stats.flowsOpened - 1;
          assert.ok(opened >= 2 * RATE - 1, `the burst is honoured (${opened} opened)`);
          assert.ok(stats.drops["rate-limited"] > 0 && opened < FLOOD, `excess dropped (${opened} opened)`);
          assert.ok(receiverLog.saw(/new-flow rate limit/), receiverLog.lines.join("\n"));
          await roundTrip(legit, "still served during the flood");
          // Only the flows that opened got answers.
          await eventually(
            () => flooders.filter((f) => f.replies.length > 0).length === opened,
            "each opened flood flow got its echo",
          );
        } finally {
          legit.close();
          for (const flooder of flooders) flooder.close();
          await run.sender.close();
          await receiver.close();
        }
      },
    );
  });
}
