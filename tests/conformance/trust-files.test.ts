/**
 * The trust files are read at every handshake (SECURITY.md): editing `authorized_keys`,
 * `known_senders` or `known_receivers` takes effect at the next connection, with the same receiver and
 * the same sender running throughout — the same admission and pin objects a CLI process builds once at
 * start. Keys added are admitted, keys removed refused, a pin edited to another key refuses the
 * receiver that was trusted a moment before. Every transport; node:test + node:assert only (runs under
 * bun test and, bundled, under node --test). Files in a fresh temp dir per test.
 */
import assert from "node:assert/strict";
import { rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileAdmission, filePeerPins, type LoadedIdentity, publicKeyLine } from "@mcudpt/core";
import { testIdentity } from "../helpers/keys.js";
import { startProxy } from "../helpers/proxy.js";
import { echoed, linesWith, receiverOn, senderTo, TIMEOUT, tempDir } from "../helpers/security.js";
import { availableTransports } from "../helpers/transports.js";
import { eventually, LOOPBACK, startClient, startEcho } from "../helpers/tunnel.js";

const keyLines = (...keys: LoadedIdentity[]) => keys.map((key) => `${publicKeyLine(key.publicKey, "e2e")}\n`).join("");

for (const transport of availableTransports()) {
  describe(`trust files are re-read at every handshake (${transport.name} transport)`, () => {
    let echo: Awaited<ReturnType<typeof startEcho>>;
    before(async () => {
      echo = await startEcho(transport);
    });
    after(() => echo.close());

    for (const file of ["authorized_keys", "known_senders"] as const) {
      it(
        `${file} edited while the receiver runs: a key added is admitted at once, a key removed is refused`,
        TIMEOUT,
        async () => {
          const dir = tempDir();
          const path = join(dir, file);
          const other = testIdentity("listed from the start");
          const senderKey = testIdentity("added later");
          writeFileSync(path, keyLines(other));
          const { receiver, log: receiverLog } = await receiverOn(transport, {
            config: { identity: testIdentity("receiver") },
            // No operator: an unknown key is refused at once, so only the file decides.
            admission:
              file === "authorized_keys"
                ? fileAdmission({ authorizedKeys: path, knownSenders: join(dir, "known_senders") })
                : fileAdmission({ knownSenders: path }),
          });
          const client = await startClient(transport, receiver.udpPort);
          const attempt = async (expect: "admitted" | "refused", step: string) => {
            const run = await senderTo(transport, echo.port, receiver.tcpPort, { identity: senderKey });
            try {
              if (expect === "admitted") {
                await eventually(() => run.sender.machine.session.peerConnected, `${step}: admitted`);
                await echoed(client, step);
              } else {
                await eventually(
                  () => linesWith(receiverLog, "refusing sender", senderKey.fingerprint).length > refusals,
                  `${step}: refused`,
                );
                refusals = linesWith(receiverLog, "refusing sender", senderKey.fingerprint).length;
                assert.equal(run.sender.machine.stats.accepted, 0, step);
              }
            } finally {
              await run.sender.close();
              await eventually(() => !receiver.machine.session.peerConnected, `${step}: the sender left`);
            }
          };
          let refusals = 0;
          try {
            await attempt("refused", "not in the file");
            writeFileSync(path, keyLines(other, senderKey));
            await attempt("admitted", "added to the file");
            writeFileSync(path, keyLines(other));
            await attempt("refused", "removed from the file");
            assert.equal(receiver.machine.stats.accepted, 1, "admitted exactly once, while listed");
          } finally {
            client.close();
            await receiver.close();
            rmSync(dir, { recursive: true, force: true });
          }
        },
      );
    }

    it(
      "known_receivers edited while the sender runs: its next connection is refused for the changed pin, and it stops",
      TIMEOUT,
      async () => {
        const dir = tempDir();
        const knownReceivers = join(dir, "known_receivers");
        const receiverKey = testIdentity("receiver");
        const senderKey = testIdentity("sender");
        const impostorKey = testIdentity("someone else");
        const { receiver } = await receiverOn(transport, {
          config: { identity: receiverKey },
          admission: fileAdmission({ knownSenders: join(dir, "known_senders") }),
          askOperator: async () => true,
        });
        const proxy = await startProxy(receiver.tcpPort);
        const pinLine = (key: LoadedIdentity) => `${LOOPBACK}:${proxy.port} ${publicKeyLine(key.publicKey)}\n`;
        writeFileSync(knownReceivers, pinLine(receiverKey));
        const run = await senderTo(
          transport,
          echo.port,
          proxy.port,
          { identity: senderKey },
          { pins: filePeerPins(knownReceivers) },
        );
        const fatal: string[] = [];
        void run.sender.fatal.then((why) => fatal.push(why));
        try {
          await eventually(() => run.sender.machine.session.peerConnected, "connected under the right pin");
          // The pin now names another key: the next handshake (after a cut) must read it.
          writeFileSync(knownReceivers, pinLine(impostorKey));
          proxy.cut();
          await eventually(() => fatal.length > 0, "the sender refuses the receiver it trusted before, and gives up");
          assert.match(fatal[0], /KEY CHANGED/);
          assert.ok(fatal[0].includes(receiverKey.fingerprint) && fatal[0].includes(impostorKey.fingerprint), fatal[0]);
          assert.equal(run.sender.machine.session.peerConnected, false);
          assert.equal(proxy.accepted, 2, "one reconnection, refused, then no more dialing");
        } finally {
          await run.sender.close();
          await proxy.close();
          await receiver.close();
          rmSync(dir, { recursive: true, force: true });
        }
      },
    );
  });
}
