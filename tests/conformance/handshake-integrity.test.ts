/**
 * What a party on the path can and cannot do to a handshake, over every transport, with a real receiver
 * and sender on loopback and a relay between them (PROTOCOL.md §6, §13):
 * - it never sees the shared secret: every byte both ways (handshake, traffic, a resumption) is free of
 *   the secret in UTF-8, hex and base64;
 * - it cannot alter a HELLO unnoticed: capabilities, mappings, nonce, agent or key changed in either
 *   side's HELLO (re-framed, so the frame is well-formed) make the dialer's proof fail at the acceptor
 *   (CLOSE(AUTH_FAILED)), and a changed auth mode is refused as a mismatch before any proof; nothing is
 *   ever accepted or forwarded.
 * node:test + node:assert only (runs under bun test and, bundled, under node --test).
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { AuthMode, CloseCode, type Frame, FrameType, PREFACE } from "@mcudpt/protocol";
import { memoryTrust, testIdentity } from "../helpers/keys.js";
import { framesIn, type HelloRewrite, pathRelay } from "../helpers/path-relay.js";
import { frameName } from "../helpers/raw-peer.js";
import { echoed, receiverOn, senderTo, TIMEOUT, yesOperator } from "../helpers/security.js";
import { availableTransports } from "../helpers/transports.js";
import { eventually, sleep, startClient, startEcho } from "../helpers/tunnel.js";

/** A secret whose encodings are all long and distinctive (no match by chance in 64 random bytes). */
const SECRET = "path-relay secret: correct horse battery staple";

/** Every form of the secret a careless implementation might put on the wire. */
function secretForms(secret: string): Array<{ name: string; bytes: Buffer }> {
  const raw = Buffer.from(secret, "utf8");
  const forms = [
    { name: "UTF-8", bytes: raw },
    { name: "UTF-16LE", bytes: Buffer.from(secret, "utf16le") },
    { name: "hex", bytes: Buffer.from(raw.toString("hex")) },
    { name: "HEX", bytes: Buffer.from(raw.toString("hex").toUpperCase()) },
    { name: "base64", bytes: Buffer.from(raw.toString("base64")) },
    { name: "base64url", bytes: Buffer.from(raw.toString("base64url")) },
  ];
  // A base64 text embedded at another offset encodes the bytes differently: check all three alignments
  // (their stable middle parts), and an 8-byte prefix of the raw secret, to catch a truncated copy.
  for (const skip of [1, 2]) {
    const shifted = Buffer.from(raw.subarray(skip)).toString("base64");
    forms.push({ name: `base64 from byte ${skip}`, bytes: Buffer.from(shifted.slice(4, -4)) });
  }
  forms.push({ name: "its first 8 bytes", bytes: raw.subarray(0, 8) });
  return forms;
}

const flipFirst = (bytes: Uint8Array) => {
  const copy = bytes.slice();
  copy[0] ^= 0x01;
  return copy;
};

/** Changes a man in the middle could make to a HELLO and re-frame: each must break the dialer's proof. */
const ALTERATIONS: Array<{ name: string; change: HelloRewrite; modes?: Array<"secret" | "key"> }> = [
  { name: "capabilities: Resume cleared", change: (h) => ({ ...h, capabilities: h.capabilities & ~1 }) },
  {
    name: "capabilities: a reserved bit set",
    change: (h) => ({ ...h, capabilities: (h.capabilities | 0x8000_0000) >>> 0 }),
  },
  // Still pairs (by position: only one side names it), so only the proof can tell.
  { name: "mappings: the unnamed mapping named", change: (h) => ({ ...h, mappings: h.mappings.map(() => "dns") }) },
  { name: "nonce: one bit flipped", change: (h) => ({ ...h, nonce: flipFirst(h.nonce) }) },
  { name: "agent: replaced", change: (h) => ({ ...h, agent: "mitm/1.0" }) },
  {
    name: "public key: another key announced",
    change: (h) => ({ ...h, publicKey: testIdentity("the man in the middle").publicKey }),
    modes: ["key"],
  },
];

type Mode = "secret" | "key";

for (const transport of availableTransports()) {
  describe(`handshake integrity through a relay on the path (${transport.name} transport)`, () => {
    let echo: Awaited<ReturnType<typeof startEcho>>;
    before(async () => {
      echo = await startEcho(transport);
    });
    after(() => echo.close());

    it(
      "secret mode: the secret never crosses the wire, in any encoding, through handshake, traffic and a resumption",
      TIMEOUT,
      async () => {
        const { receiver } = await receiverOn(transport, { config: { secret: SECRET } });
        const relay = await pathRelay(receiver.tcpPort);
        const { sender } = await senderTo(transport, echo.port, relay.port, { secret: SECRET });
        const client = await startClient(transport, receiver.udpPort);
        try {
          await eventually(() => sender.machine.session.peerConnected, "the sender accepted through the relay");
          await echoed(client, "first datagram through the relay");
          // The connection is cut: the sender comes back through the relay and resumes (AUTH with its token).
          relay.cut();
          await eventually(() => relay.recorded().length === 2 && sender.machine.session.peerConnected, "reconnected");
          await echoed(client, "second datagram through the relay");
          const recordings = relay.recorded();
          const resumed = framesIn(recordings[1].fromAcceptor).find((f) => f.type === FrameType.Accept);
          assert.equal(resumed?.type === FrameType.Accept && resumed.resumed, true, "the second handshake resumed");
          for (const [i, { fromDialer, fromAcceptor }] of recordings.entries()) {
            for (const [side, bytes] of [
              ["dialer → acceptor", fromDialer],
              ["acceptor → dialer", fromAcceptor],
            ] as const) {
              // The recording is the real thing: the preface, the handshake, and datagrams in clear.
              assert.deepEqual([...bytes.subarray(0, PREFACE.length)], [...PREFACE], `${side} #${i}: the preface`);
              const seen = framesIn(bytes).map((f) => f.type);
              const proof = side === "dialer → acceptor" ? FrameType.Auth : FrameType.Accept;
              assert.ok(seen.includes(FrameType.Hello) && seen.includes(proof), `${side} #${i}: ${seen.join(",")}`);
              assert.ok(
                Buffer.from(bytes).includes("datagram through the relay"),
                `${side} #${i}: payloads are visible`,
              );
              for (const form of secretForms(SECRET)) {
                assert.equal(Buffer.from(bytes).indexOf(form.bytes), -1, `${side} #${i}: the secret as ${form.name}`);
              }
            }
          }
        } finally {
          client.close();
          await sender.close();
          await relay.close();
          await receiver.close();
        }
      },
    );

    for (const mode of ["secret", "key"] as const satisfies Mode[]) {
      for (const side of ["dialer", "acceptor"] as const) {
        it(
          `${mode} mode: a HELLO of the ${side} altered on the path fails the proof at the acceptor, CLOSE(AUTH_FAILED), nothing accepted`,
          TIMEOUT,
          async () => {
            const senderKey = testIdentity("sender");
            const operator = yesOperator();
            const { receiver, log: receiverLog } = await receiverOn(transport, {
              config: mode === "secret" ? { secret: SECRET } : { identity: testIdentity("receiver") },
              admission: mode === "key" ? memoryTrust(senderKey) : undefined,
              askOperator: mode === "key" ? operator.ask : undefined,
            });
            const client = await startClient(transport, receiver.udpPort);
            const target = await startEcho(transport);
            try {
              for (const alteration of ALTERATIONS) {
                if (alteration.modes && !alteration.modes.includes(mode)) continue;
                const what = `${alteration.name} (${side}'s HELLO)`;
                const relay = await pathRelay(receiver.tcpPort, {
                  [side === "dialer" ? "fromDialer" : "fromAcceptor"]: alteration.change,
                });
                const run = await senderTo(
                  transport,
                  target.port,
                  relay.port,
                  mode === "secret" ? { secret: SECRET } : { identity: senderKey },
                );
                try {
                  await eventually(
                    () => relay.recorded().some((c) => closeIn(c.fromAcceptor) !== undefined),
                    `${what}: the acceptor's CLOSE`,
                  );
                  const first = relay.recorded()[0];
                  const close = closeIn(first.fromAcceptor) as Extract<Frame, { type: typeof FrameType.Close }>;
                  assert.equal(close.code, CloseCode.AuthFailed, `${what}: ${frameName(close)}`);
                  assert.ok(
                    !framesIn(first.fromAcceptor).some((f) => f.type === FrameType.Accept),
                    `${what}: no ACCEPT`,
                  );
                  client.send(`${what}: a datagram`);
                  await sleep(50);
                  assert.equal(relay.rewritten >= 1, true, `${what}: the relay changed a HELLO`);
                } finally {
                  await run.sender.close();
                  await relay.close();
                }
                assert.equal(run.sender.machine.stats.accepted, 0, `${what}: the sender accepted nothing`);
                assert.ok(
                  run.log.saw(/authentication failed/),
                  `${what}: the sender is told\n${run.log.lines.join("\n")}`,
                );
              }
              assert.equal(receiver.machine.stats.accepted, 0, "nothing was ever accepted");
              assert.ok(
                receiverLog.saw(mode === "secret" ? /wrong shared secret/ : /signature does not match/),
                receiverLog.lines.join("\n"),
              );
              assert.deepEqual(operator.asked, [], "no operator is asked about an altered handshake");
              assert.equal(target.received, 0, "nothing reached the target");
            } finally {
              target.close();
              client.close();
              await receiver.close();
            }
          },
        );
      }

      it(
        `${mode} mode: an auth mode changed on the path is refused as a mismatch (no downgrade), before any proof`,
        TIMEOUT,
        async () => {
          const senderKey = testIdentity("sender");
          const operator = yesOperator();
          const { receiver } = await receiverOn(transport, {
            config: mode === "secret" ? { secret: SECRET } : { identity: testIdentity("receiver") },
            admission: mode === "key" ? memoryTrust(senderKey) : undefined,
            askOperator: mode === "key" ? operator.ask : undefined,
          });
          // Key → secret drops the key (a secret-mode HELLO may carry none); secret → key must add one.
          const downgrade: HelloRewrite = (hello) =>
            hello.auth === AuthMode.Key
              ? { ...hello, auth: AuthMode.Secret, publicKey: new Uint8Array(0) }
              : { ...hello, auth: AuthMode.Key, publicKey: testIdentity("the man in the middle").publicKey };
          for (const side of ["fromDialer", "fromAcceptor"] as const) {
            const relay = await pathRelay(receiver.tcpPort, { [side]: downgrade });
            const run = await senderTo(
              transport,
              echo.port,
              relay.port,
              mode === "secret" ? { secret: SECRET } : { identity: senderKey },
            );
            // The end that got the altered HELLO compares it with its own configuration and refuses.
            const refusal = () => {
              const first = relay.recorded()[0];
              return first && closeIn(side === "fromDialer" ? first.fromAcceptor : first.fromDialer);
            };
            try {
              await eventually(() => refusal() !== undefined, `${side}: the refusing end's CLOSE`);
              const close = refusal();
              assert.equal(close?.code, CloseCode.AuthMismatch, `${side}: ${close && frameName(close)}`);
              const first = relay.recorded()[0];
              assert.ok(!framesIn(first.fromAcceptor).some((f) => f.type === FrameType.Accept), `${side}: no ACCEPT`);
            } finally {
              await run.sender.close();
              await relay.close();
            }
            assert.equal(run.sender.machine.stats.accepted, 0, side);
          }
          assert.equal(receiver.machine.stats.accepted, 0);
          assert.deepEqual(operator.asked, []);
          await receiver.close();
        },
      );
    }
  });
}

function closeIn(bytes: Uint8Array): Extract<Frame, { type: typeof FrameType.Close }> | undefined {
  return framesIn(bytes).find((f): f is Extract<Frame, { type: typeof FrameType.Close }> => f.type === FrameType.Close);
}
