/**
 * Admission: who is let in, over every transport, with real sockets on 127.0.0.1. A sender key is asked
 * about once and then known (after a reconnect, a sender restart and a receiver restart); an
 * --authorized-keys list admits only its keys and asks nobody; a changed receiver key (known_receivers
 * or --receiver-key) is refused once and the sender stops dialing; a wrong shared secret is refused
 * either way, as is an impostor receiver; a replayed handshake is refused (PROTOCOL.md §6, §7, §13).
 * node:test + node:assert only (runs under bun test and, bundled, under node --test). Trust files live
 * in a fresh temp dir per test.
 */
import assert from "node:assert/strict";
import { existsSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import {
  fileAdmission,
  filePeerPins,
  fingerprint,
  fixedPeerPin,
  type PeerPins,
  parsePublicKeyLine,
  publicKeyLine,
  type SenderHandle,
} from "@mcudpt/core";
import { CloseCode, FrameType, PREFACE, type SenderConfig, utf8 } from "@mcudpt/protocol";
import { memoryTrust, testIdentity } from "../helpers/keys.js";
import { startProxy } from "../helpers/proxy.js";
import {
  frameName,
  frames,
  handshakeAsReceiver,
  handshakePrefix,
  isFrame,
  type RawPeer,
  rawConnect,
  rawListen,
  recordingProxy,
} from "../helpers/raw-peer.js";
import {
  connectionsSeen,
  linesAbout,
  linesWith,
  type ReceiverSetup,
  receiverOn,
  roundTrip,
  senderTo,
  TIMEOUT,
  tempDir,
  yesOperator,
} from "../helpers/security.js";
import { availableTransports } from "../helpers/transports.js";
import { eventually, LOOPBACK, sleep, startClient, startEcho } from "../helpers/tunnel.js";

for (const transport of availableTransports()) {
  describe(`admission (${transport.name} transport)`, () => {
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
  });
}
