/**
 * Lanes over real TCP (PROTOCOL.md §16), for every transport and both TCP directions: the dialer keeps
 * N connections in one session, flows spread over them, a lane whose TCP connection is reset moves its
 * flows to the others (no flow reopened, the session stays) and is re-opened by the dialer; the
 * acceptor's --max-lanes caps them. The dialer reaches the acceptor through the fault proxy so one
 * lane can be reset. node:test + node:assert only (runs under bun test and, bundled, node --test).
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  type ReceiverHandle,
  type SenderHandle,
  startReceiver,
  startSender,
  type Transport,
  type UdpSocket,
} from "@mcudpt/core";
import { randomBytes } from "node:crypto";
import {
  Capability,
  CloseCode,
  concatBytes,
  encodeFrame,
  FrameType,
  FrameWriter,
  HEADER_SIZE,
  PREFACE,
  Role,
  utf8,
} from "@mcudpt/protocol";
import { createPrivateKey, generateKeyPairSync } from "node:crypto";
import { createCertificate, pemFingerprint } from "@mcudpt/core";
import { memoryTrust, testIdentity } from "../helpers/keys.js";
import { type FaultProxy, startProxy } from "../helpers/proxy.js";
import { startTunnel } from "../helpers/scenarios.js";
import { isFrame, rawConnect, recordingProxy } from "../helpers/raw-peer.js";
import { createHmac } from "node:crypto";
import { availableTransports } from "../helpers/transports.js";
import {
  eventually,
  LOOPBACK,
  memoryLogger,
  startClient,
  startEcho,
  type TestClient,
  text,
} from "../helpers/tunnel.js";

const SECRET = "lanes-secret";
const TIMEOUT = { timeout: 60_000 };
const RECONNECT = { initialMs: 50, maxMs: 300 };

interface LaneTunnel {
  receiver: ReceiverHandle;
  sender: SenderHandle;
  proxy: FaultProxy;
  echo: UdpSocket;
  close(): Promise<void>;
}

/** A tunnel whose dialing side (the sender with -R, the receiver with -L) keeps `lanes` lanes through a proxy. */
async function startLaneTunnel(
  transport: Transport,
  direction: "R" | "L",
  lanes: number,
  maxLanes?: number,
  redundant = false,
  keepaliveMs?: number,
): Promise<LaneTunnel> {
  const echo = await startEcho(transport);
  const keepalive = keepaliveMs ? { keepaliveMs } : {};
  const dialer = { secret: SECRET, lanes, redundant, ...keepalive };
  const acceptor = { secret: SECRET, ...(maxLanes ? { maxLanes } : {}), ...keepalive };
  let receiver: ReceiverHandle;
  let sender: SenderHandle;
  let proxy: FaultProxy;
  if (direction === "R") {
    receiver = await startReceiver({
      transport,
      udp: { host: LOOPBACK, port: 0 },
      tcp: { host: LOOPBACK, port: 0 },
      config: acceptor,
      logger: memoryLogger(),
    });
    proxy = await startProxy(receiver.tcpPort);
    sender = await startSender({
      transport,
      target: { host: LOOPBACK, port: echo.port },
      tcp: { host: LOOPBACK, port: proxy.port },
      config: dialer,
      logger: memoryLogger(),
      reconnect: RECONNECT,
    });
  } else {
    sender = await startSender({
      transport,
      target: { host: LOOPBACK, port: echo.port },
      tcp: { host: LOOPBACK, port: 0 },
      tcpMode: "listen",
      config: acceptor,
      logger: memoryLogger(),
    });
    proxy = await startProxy(sender.tcpPort);
    receiver = await startReceiver({
      transport,
      udp: { host: LOOPBACK, port: 0 },
      tcp: { host: LOOPBACK, port: proxy.port },
      tcpMode: "dial",
      config: dialer,
      logger: memoryLogger(),
      reconnect: RECONNECT,
    });
  }
  return {
    receiver,
    sender,
    proxy,
    echo,
    close: async () => {
      await sender.close();
      await receiver.close();
      await proxy.close();
      echo.close();
    },
  };
}

const openLanes = (handle: ReceiverHandle | SenderHandle) =>
  handle.machine.session.lanes().filter((lane) => lane.open).length;

async function requestAll(clients: TestClient[], tag: string): Promise<void> {
  await Promise.all(
    clients.map(async (client, i) => {
      const reply = await client.request(`${tag}-${i}`, 10_000);
      assert.equal(text(reply), `${tag}-${i}`);
    }),
  );
}

for (const transport of availableTransports()) {
  for (const direction of ["R", "L"] as const) {
    describe(`lanes over ${transport.name}, -${direction}`, () => {
      it(
        "three lanes join one session; flows spread over them; a reset lane moves its flows and comes back",
        TIMEOUT,
        async () => {
          const t = await startLaneTunnel(transport, direction, 3);
          const clients: TestClient[] = [];
          try {
            await eventually(
              () => openLanes(t.receiver) === 3 && openLanes(t.sender) === 3,
              "three lanes on both sides",
            );
            assert.equal(t.receiver.machine.laneTotals.lanesJoined, 2);
            for (let i = 0; i < 12; i++) clients.push(await startClient(transport, t.receiver.udpPort));
            await requestAll(clients, "first");
            const used = t.receiver.machine.session.lanes().filter((lane) => lane.datagramsSent > 0).length;
            assert.ok(used >= 2, `flows on ${used} lane(s)`);
            const flowsOpened = t.receiver.machine.stats.flowsOpened;
            const socketsBefore = t.sender.machine.flows.size;
            assert.equal(flowsOpened, 12);

            assert.ok(t.proxy.cutOne(), "a lane to reset");
            await eventually(() => openLanes(t.receiver) === 2 || openLanes(t.receiver) === 3, "the lane noticed");
            await requestAll(clients, "after-reset");
            // The same flows, the same sockets on the sender: nothing was reopened, the session stayed.
            assert.equal(t.receiver.machine.stats.flowsOpened, flowsOpened);
            assert.equal(t.sender.machine.flows.size, socketsBefore);
            assert.equal(t.receiver.machine.stats.drops["no-sender"], 0);
            await eventually(() => openLanes(t.receiver) === 3 && openLanes(t.sender) === 3, "the lane re-opened");
            await requestAll(clients, "third");
          } finally {
            for (const client of clients) client.close();
            await t.close();
          }
        },
      );

      it("each lane measures its own round trip with its keepalive pings", TIMEOUT, async () => {
        const t = await startLaneTunnel(transport, direction, 2, undefined, false, 400);
        try {
          for (const side of [t.receiver, t.sender]) {
            await eventually(() => {
              const lanes = side.machine.session.lanes().filter((lane) => lane.open);
              return lanes.length === 2 && lanes.every((lane) => lane.rttMs !== undefined && lane.rttMs >= 0);
            }, "an RTT on both lanes");
          }
        } finally {
          await t.close();
        }
      });

      it("--redundant: a lane reset mid-stream loses no datagram, and none arrives twice", TIMEOUT, async () => {
        const t = await startLaneTunnel(transport, direction, 2, undefined, true);
        const client = await startClient(transport, t.receiver.udpPort);
        try {
          await eventually(() => openLanes(t.receiver) === 2 && openLanes(t.sender) === 2, "two lanes");
          assert.equal(text(await client.request("warm-up", 10_000)), "warm-up");
          const before = client.replies.length;
          const n = 300;
          for (let i = 0; i < n; i++) {
            client.send(`seq-${i}`);
            if (i === 150) assert.ok(t.proxy.cutOne(), "a lane to reset");
            if (i % 10 === 9) await new Promise((r) => setTimeout(r, 5));
          }
          await eventually(() => client.replies.length - before >= n, `${n} replies`, 15_000);
          await new Promise((r) => setTimeout(r, 200)); // a duplicate would arrive by now
          const got = client.replies.slice(before).map((reply) => text(reply));
          assert.equal(got.length, n, "no datagram delivered twice");
          assert.deepEqual(new Set(got).size, n);
          const totals = [t.receiver.machine.laneTotals, t.sender.machine.laneTotals];
          assert.ok(
            totals.every((x) => x.duplicatesSuppressed > 0),
            "copies were suppressed on both sides",
          );
        } finally {
          client.close();
          await t.close();
        }
      });

      it(
        "an acceptor that takes no lanes (an earlier version, or --max-lanes 1): one connection, no churn",
        TIMEOUT,
        async () => {
          const t = await startLaneTunnel(transport, direction, 3, 1);
          const client = await startClient(transport, t.receiver.udpPort);
          try {
            assert.equal(text(await client.request("single", 10_000)), "single");
            await new Promise((r) => setTimeout(r, 800)); // several reconnect periods of the test tunnels
            assert.equal(openLanes(t.receiver), 1);
            assert.equal(openLanes(t.sender), 1);
            // The first connection, and at most one try per extra lane: the dialer saw the HELLO and stopped.
            assert.ok(t.proxy.accepted <= 3, `${t.proxy.accepted} connections`);
            assert.equal(text(await client.request("still-single", 10_000)), "still-single");
          } finally {
            client.close();
            await t.close();
          }
        },
      );

      it("--max-lanes 2 against --lanes 3: two lanes, the tunnel works", TIMEOUT, async () => {
        const t = await startLaneTunnel(transport, direction, 3, 2);
        const client = await startClient(transport, t.receiver.udpPort);
        try {
          await eventually(() => openLanes(t.receiver) === 2 && openLanes(t.sender) === 2, "two lanes");
          await eventually(
            () => (direction === "R" ? t.receiver : t.sender).machine.laneTotals.joinsRefused >= 1,
            "a JOIN refused",
          );
          assert.equal(text(await client.request("capped", 10_000)), "capped");
          assert.equal(openLanes(t.receiver), 2);
        } finally {
          client.close();
          await t.close();
        }
      });
    });
  }
}

/** The preface, HELLO and JOIN at the start of what a lane's dialer wrote (a replay attacker's capture). */
function joinPrefix(bytes: Uint8Array): Uint8Array {
  let end = PREFACE.length;
  for (const expected of [FrameType.Hello, FrameType.Join]) {
    assert.equal(bytes[end], expected, `frame type at byte ${end}`);
    end += HEADER_SIZE + new DataView(bytes.buffer, bytes.byteOffset + end + 1, 4).getUint32(0);
  }
  return bytes.slice(0, end);
}

function laneHello(): Uint8Array {
  return encodeFrame({
    type: FrameType.Hello,
    role: Role.Sender,
    auth: 2,
    capabilities: Capability.Resume | Capability.Lanes,
    nonce: new Uint8Array(randomBytes(32)),
    publicKey: new Uint8Array(0),
    mappings: [""],
    agent: "hostile-join",
  });
}

for (const transport of availableTransports()) {
  describe(`hostile joins over ${transport.name}`, () => {
    it(
      "a recorded JOIN replayed on a new connection, and a JOIN naming another session: CLOSE(2), the lanes stay",
      TIMEOUT,
      async () => {
        const echo = await startEcho(transport);
        const receiver = await startReceiver({
          transport,
          udp: { host: LOOPBACK, port: 0 },
          tcp: { host: LOOPBACK, port: 0 },
          config: { secret: SECRET },
          logger: memoryLogger(),
        });
        const recorder = await recordingProxy(receiver.tcpPort);
        const sender = await startSender({
          transport,
          target: { host: LOOPBACK, port: echo.port },
          tcp: { host: LOOPBACK, port: recorder.port },
          config: { secret: SECRET, lanes: 2 },
          logger: memoryLogger(),
          reconnect: RECONNECT,
        });
        try {
          await eventually(() => openLanes(receiver) === 2, "two lanes");
          const recorded = recorder.recorded();
          assert.equal(recorded.length, 2);
          // Replay the second lane's preface, HELLO and JOIN.
          const replay = await rawConnect(receiver.tcpPort);
          replay.write(joinPrefix(recorded[1]));
          const refused = await replay.waitFrame(isFrame(FrameType.Close), "CLOSE for the replayed JOIN");
          assert.equal(refused.code, CloseCode.AuthFailed);
          await replay.whenClosedWithin(5000, "the replayed JOIN's connection closed");
          // A JOIN with the right secret but another session's token.
          const stranger = await rawConnect(receiver.tcpPort);
          const hello = laneHello();
          stranger.write(concatBytes(PREFACE, hello));
          const acceptorHello = await stranger.waitFrame(isFrame(FrameType.Hello), "the receiver's HELLO");
          const token = new Uint8Array(randomBytes(16));
          const transcript = concatBytes(utf8("mcudpt/1 lane join"), encodeFrame(acceptorHello), hello, token, token);
          const writer = new FrameWriter(256);
          writer.join(new Uint8Array(createHmac("sha256", SECRET).update(transcript).digest()), token);
          stranger.write(writer.take() as Uint8Array);
          const closed = await stranger.waitFrame(isFrame(FrameType.Close), "CLOSE for the foreign JOIN");
          assert.equal(closed.code, CloseCode.AuthFailed);
          assert.equal(receiver.machine.laneTotals.joinsRefused, 2);
          assert.equal(openLanes(receiver), 2);
          const client = await startClient(transport, receiver.udpPort);
          assert.equal(text(await client.request("still-here", 10_000)), "still-here");
          client.close();
          replay.destroy();
          stranger.destroy();
        } finally {
          await sender.close();
          await receiver.close();
          await recorder.close();
          echo.close();
        }
      },
    );

    it("--redundant across the sequence wrap-around: every datagram once, in order", TIMEOUT, async () => {
      const t = await startLaneTunnel(transport, "R", 2, undefined, true);
      const client = await startClient(transport, t.receiver.udpPort);
      try {
        await eventually(() => openLanes(t.receiver) === 2 && openLanes(t.sender) === 2, "two lanes");
        assert.equal(text(await client.request("open", 10_000)), "open");
        // Move both directions of the flow close to the wrap, in steps shorter than 2^31 (serial
        // arithmetic: a jump of 2^31 or more would read as going backwards).
        const jump = (seq: number) => {
          for (const flow of t.receiver.machine.flows.values()) (flow as { txSeq?: number }).txSeq = seq;
          for (const flow of t.sender.machine.flows.values()) (flow as { txSeq?: number }).txSeq = seq;
        };
        const burst = async (tag: string, n: number): Promise<string[]> => {
          const before = client.replies.length;
          for (let i = 0; i < n; i++) {
            client.send(`${tag}-${i}`);
            await new Promise((r) => setTimeout(r, 2));
          }
          await eventually(() => client.replies.length - before >= n, `${n} replies`, 10_000);
          await new Promise((r) => setTimeout(r, 200)); // a duplicate would arrive by now
          return client.replies.slice(before).map((reply) => text(reply));
        };
        jump(0x7ffffff0);
        assert.deepEqual(await burst("half", 5), ["half-0", "half-1", "half-2", "half-3", "half-4"]);
        jump(0xfffffff0);
        const got = await burst("w", 40);
        assert.deepEqual(
          got,
          Array.from({ length: 40 }, (_, i) => `w-${i}`),
        );
        const senderFlow = [...t.sender.machine.flows.values()][0] as { txSeq?: number };
        assert.ok((senderFlow.txSeq as number) < 0xfffffff0, "the sequence numbers wrapped");
      } finally {
        client.close();
        await t.close();
      }
    });
  });
}

/** A self-signed certificate for 127.0.0.1 (the listening side's TLS). */
function certificate(): { cert: string; key: string; fingerprint: string } {
  const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const cert = createCertificate({
    commonName: "mcudpt lanes test",
    publicKey,
    issuerKey: createPrivateKey(privateKey.export({ type: "pkcs8", format: "pem" }) as string),
    altNames: ["localhost", "127.0.0.1"],
    notAfter: new Date(Date.now() + 86_400_000),
  });
  return {
    cert,
    key: privateKey.export({ type: "pkcs8", format: "pem" }) as string,
    fingerprint: pemFingerprint(cert),
  };
}

for (const transport of availableTransports()) {
  for (const direction of ["R", "L"] as const) {
    it(
      `lanes in key mode inside TLS over ${transport.name}, -${direction}: every lane its own TLS and proof`,
      TIMEOUT,
      async () => {
        const echo = await startEcho(transport);
        const receiverKey = testIdentity("lanes-receiver");
        const senderKey = testIdentity("lanes-sender");
        const listenerIsReceiver = direction === "R";
        const tls = certificate();
        const tunnel = await startTunnel(transport, echo.port, {
          direction,
          receiverConfig: { identity: receiverKey, ...(listenerIsReceiver ? {} : { lanes: 3 }) },
          senderConfig: { identity: senderKey, ...(listenerIsReceiver ? { lanes: 3 } : {}) },
          trust: memoryTrust(listenerIsReceiver ? senderKey : receiverKey),
          receiverTls: { cert: tls.cert, key: tls.key },
          senderTls: { fingerprint: tls.fingerprint },
        });
        const client = await startClient(transport, tunnel.receiver.udpPort);
        try {
          await eventually(() => openLanes(tunnel.receiver) === 3 && openLanes(tunnel.sender) === 3, "three lanes");
          const clients = [client];
          for (let i = 0; i < 5; i++) clients.push(await startClient(transport, tunnel.receiver.udpPort));
          await requestAll(clients, "keys-tls");
          for (const extra of clients.slice(1)) extra.close();
        } finally {
          client.close();
          await tunnel.close();
          echo.close();
        }
      },
    );
  }
}

// Mixed runtime pairings (under Bun, where both transports exist): Bun receiver with Node sender, and
// the other way round, with lanes and redundancy.
const transports = availableTransports();
if (transports.length === 2) {
  for (const [receiverTransport, senderTransport] of [transports, [...transports].reverse()]) {
    it(
      `--lanes 2 --redundant, ${receiverTransport.name} receiver with ${senderTransport.name} sender`,
      TIMEOUT,
      async () => {
        const echo = await startEcho(senderTransport);
        const tunnel = await startTunnel(receiverTransport, echo.port, {
          senderTransport,
          receiverConfig: { secret: SECRET },
          senderConfig: { secret: SECRET, lanes: 2, redundant: true },
        });
        const clients: TestClient[] = [];
        try {
          await eventually(() => openLanes(tunnel.receiver) === 2 && openLanes(tunnel.sender) === 2, "two lanes");
          for (let i = 0; i < 6; i++) clients.push(await startClient(receiverTransport, tunnel.receiver.udpPort));
          await requestAll(clients, "mixed");
          assert.ok(tunnel.receiver.machine.laneTotals.duplicatesSuppressed > 0);
          assert.ok(tunnel.sender.machine.laneTotals.duplicatesSuppressed > 0);
        } finally {
          for (const client of clients) client.close();
          await tunnel.close();
          echo.close();
        }
      },
    );
  }
}

for (const transport of availableTransports()) {
  describe(`per-mapping redundancy over ${transport.name}`, () => {
    it(
      "only the mapping marked redundant is sent twice, and only datagrams up to redundantMaxBytes",
      TIMEOUT,
      async () => {
        const game = await startEcho(transport);
        const dns = await startEcho(transport);
        const perMapping = { secret: SECRET, redundantMaxBytes: 512 };
        const receiver = await startReceiver({
          transport,
          mappings: [
            { name: "game", udp: { host: LOOPBACK, port: 0 }, redundant: true },
            { name: "dns", udp: { host: LOOPBACK, port: 0 } },
          ],
          tcp: { host: LOOPBACK, port: 0 },
          config: perMapping,
          logger: memoryLogger(),
        });
        const sender = await startSender({
          transport,
          mappings: [
            { name: "game", target: { host: LOOPBACK, port: game.port }, redundant: true },
            { name: "dns", target: { host: LOOPBACK, port: dns.port } },
          ],
          tcp: { host: LOOPBACK, port: receiver.tcpPort },
          config: { ...perMapping, lanes: 2 },
          logger: memoryLogger(),
          reconnect: RECONNECT,
        });
        const gameClient = await startClient(transport, receiver.udpPorts[0]);
        const dnsClient = await startClient(transport, receiver.udpPorts[1]);
        try {
          await eventually(() => openLanes(receiver) === 2 && openLanes(sender) === 2, "two lanes");
          for (let i = 0; i < 20; i++) {
            assert.equal(text(await gameClient.request(`game-${i}`, 10_000)), `game-${i}`);
            assert.equal(text(await dnsClient.request(`dns-${i}`, 10_000)), `dns-${i}`);
          }
          // Each side sent each small game datagram twice (20 requests, 20 replies), no dns datagram.
          assert.equal(receiver.machine.laneTotals.redundantCopies, 20);
          assert.equal(sender.machine.laneTotals.redundantCopies, 20);
          await eventually(
            () => receiver.machine.laneTotals.duplicatesSuppressed + receiver.machine.laneTotals.lateCopies === 20,
            "the receiver dropped the 20 second copies of the replies",
          );
          const large = "x".repeat(600);
          for (let i = 0; i < 5; i++) assert.equal(text(await gameClient.request(large, 10_000)), large);
          assert.equal(receiver.machine.laneTotals.redundantCopies, 20, "a 600-byte datagram is sent once");
          assert.equal(sender.machine.laneTotals.redundantCopies, 20);
        } finally {
          gameClient.close();
          dnsClient.close();
          await sender.close();
          await receiver.close();
          game.close();
          dns.close();
        }
      },
    );
  });
}
