/**
 * Several senders on one receiver (PROTOCOL.md §18), over every transport with real sockets on
 * loopback: three senders with their own keys serve three mappings at once (50 clients each, no
 * datagram crossing mappings); a key's mappings="…" refuses the others it asks for; from="…" admits a
 * key from 127.0.0.2 and ::1 but not from 127.0.0.3; a standby sender takes over when the active one's
 * connection dies, and the one that comes back waits as standby. Trust lives in authorized_keys files,
 * as an operator writes them. node:test + node:assert only (runs under bun test and node --test).
 */
import assert from "node:assert/strict";
import { rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import {
  fileAdmission,
  type LoadedIdentity,
  publicKeyLine,
  type ReceiverHandle,
  type SenderHandle,
  startReceiver,
  startSender,
  type Transport,
  type UdpSocket,
} from "@mcudpt/core";
import { Capability, FlowCloseReason, type Frame, FrameType, MappingStatus, utf8 } from "@mcudpt/protocol";
import { testIdentity } from "../helpers/keys.js";
import { type FaultProxy, startProxy } from "../helpers/proxy.js";
import { frames, handshakeAsSender, isFrame, rawConnect } from "../helpers/raw-peer.js";
import { linesWith, RETRY, TIMEOUT, tempDir } from "../helpers/security.js";
import { availableTransports } from "../helpers/transports.js";
import { eventually, LOOPBACK, type MemoryLogger, memoryLogger, sleep, startClient, text } from "../helpers/tunnel.js";

const NAMES = ["dns", "ntp", "wg"];

/** A UDP target that answers `payload` with `payload|name`: a reply says which target it came from. */
async function namedTarget(transport: Transport, name: string): Promise<UdpSocket> {
  const socket: UdpSocket = await transport.bindUdp({
    host: LOOPBACK,
    port: 0,
    onDatagram: (data, address, port) => socket.send(new TextEncoder().encode(`${text(data)}|${name}`), port, address),
    onError: () => {},
  });
  return socket;
}

for (const transport of availableTransports()) {
  describe(`several senders (${transport.name} transport)`, () => {
    const cleanups: Array<() => unknown> = [];
    after(async () => {
      for (const cleanup of cleanups.reverse()) await cleanup();
    });

    /** A receiver with NAMES on ephemeral UDP ports, TCP on `tcpHost`, admitting by `authorizedLines`. */
    async function receiverWith(
      authorizedLines: string[],
      tcpHost = LOOPBACK,
    ): Promise<{ receiver: ReceiverHandle; log: MemoryLogger; file: string }> {
      const dir = tempDir();
      cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
      const file = join(dir, "authorized_keys");
      writeFileSync(file, `${authorizedLines.join("\n")}\n`);
      const log = memoryLogger();
      const receiver = await startReceiver({
        transport,
        mappings: NAMES.map((name) => ({ name, udp: { host: LOOPBACK, port: 0 } })),
        tcp: { host: tcpHost, port: 0 },
        config: { identity: testIdentity("receiver") },
        admission: fileAdmission({ authorizedKeys: file, knownSenders: join(dir, "known"), mappingNames: NAMES }),
        logger: log,
      });
      cleanups.push(() => receiver.close());
      return { receiver, log, file };
    }

    async function senderWith(
      identity: LoadedIdentity,
      targets: Array<[string, UdpSocket]>,
      tcpPort: number,
      tcpHost = LOOPBACK,
    ): Promise<{ sender: SenderHandle; log: MemoryLogger }> {
      const log = memoryLogger();
      const sender = await startSender({
        transport,
        mappings: targets.map(([name, socket]) => ({ name, target: { host: LOOPBACK, port: socket.port } })),
        tcp: { host: tcpHost, port: tcpPort },
        config: { identity, keepaliveMs: 500 },
        logger: log,
        reconnect: RETRY,
      });
      cleanups.push(() => sender.close());
      return { sender, log };
    }

    const keyLine = (identity: LoadedIdentity, options = "") =>
      `${options}${publicKeyLine(identity.publicKey, identity.path)}`;

    it(
      "three senders with different keys serve three mappings at once, 50 clients each, no datagram crossing",
      TIMEOUT,
      async () => {
        const keys = NAMES.map((name) => testIdentity(`site-${name}`));
        const { receiver } = await receiverWith(keys.map((key, i) => keyLine(key, `mappings="${NAMES[i]}" `)));
        const targets = await Promise.all(NAMES.map((name) => namedTarget(transport, name)));
        for (const target of targets) cleanups.push(() => target.close());
        const senders = await Promise.all(
          keys.map((key, i) => senderWith(key, [[NAMES[i], targets[i]]], receiver.tcpPort)),
        );
        for (const { log } of senders)
          await eventually(() => linesWith(log, "serving").length > 0, "every sender serves");
        const clients = await Promise.all(
          NAMES.flatMap((_, m) => Array.from({ length: 50 }, () => startClient(transport, receiver.udpPorts[m]))),
        );
        for (const client of clients) cleanups.push(() => client.close());
        const replies = await Promise.all(
          clients.map((client, i) => client.request(`${NAMES[Math.floor(i / 50)]}-${i % 50}`, 20_000)),
        );
        replies.forEach((reply, i) => {
          const name = NAMES[Math.floor(i / 50)];
          assert.equal(text(reply), `${name}-${i % 50}|${name}`);
        });
        // No reply of another mapping reached any client, late or not.
        for (const [i, client] of clients.entries()) {
          const name = NAMES[Math.floor(i / 50)];
          for (const reply of client.replies) assert.ok(text(reply).endsWith(`|${name}`), text(reply));
        }
        const rows = receiver.machine.session.peers();
        assert.equal(rows.length, 3);
        for (const peer of rows) assert.equal(receiver.machine.session.servedBy(peer).length, 1);
        assert.equal(receiver.machine.stats.drops["unknown-flow"], 0);
      },
    );

    it(
      "a sender asking for a mapping its key may not serve is refused for it, with a reason it logs",
      TIMEOUT,
      async () => {
        const key = testIdentity("limited");
        const { receiver, log: receiverLog } = await receiverWith([keyLine(key, 'mappings="dns" ')]);
        const dns = await namedTarget(transport, "dns");
        const ntp = await namedTarget(transport, "ntp");
        cleanups.push(
          () => dns.close(),
          () => ntp.close(),
        );
        const { log } = await senderWith(
          key,
          [
            ["dns", dns],
            ["ntp", ntp],
          ],
          receiver.tcpPort,
        );
        await eventually(
          () => linesWith(log, "mapping ntp: refused by the receiver", "this key may not serve mapping ntp").length > 0,
          `the sender logs the refusal\n${log.lines.join("\n")}`,
        );
        assert.ok(linesWith(receiverLog, "for mappings dns").length > 0, receiverLog.lines.join("\n"));
        const dnsClient = await startClient(transport, receiver.udpPorts[0]);
        const ntpClient = await startClient(transport, receiver.udpPorts[1]);
        cleanups.push(
          () => dnsClient.close(),
          () => ntpClient.close(),
        );
        assert.equal(text(await dnsClient.request("q", 10_000)), "q|dns");
        for (let i = 0; i < 5; i++) ntpClient.send(`ntp ${i}`);
        await sleep(300);
        assert.deepEqual(ntpClient.replies, []);
        assert.ok(receiver.machine.mappingStats[1].drops["no-sender"] >= 1);
      },
    );

    it(
      'from="…" is enforced before anything else: 127.0.0.2 and ::1 admitted, 127.0.0.3 refused',
      TIMEOUT,
      async () => {
        const key = testIdentity("roaming");
        // Dual stack: IPv4 sources arrive as IPv4-mapped IPv6 addresses, which from= matches as IPv4.
        const { receiver, log: receiverLog } = await receiverWith([keyLine(key, 'from="127.0.0.2,::1" ')], "::");
        const dns = await namedTarget(transport, "dns");
        cleanups.push(() => dns.close());
        for (const [source, host, admitted] of [
          ["127.0.0.2", "127.0.0.1", true],
          ["127.0.0.3", "127.0.0.1", false],
          ["::1", "::1", true],
        ] as const) {
          // The sender reaches the receiver through a relay whose upstream connections leave from `source`.
          const relay: FaultProxy = await startProxy(receiver.tcpPort, "passthrough", { localAddress: source, host });
          const { sender, log } = await senderWith(key, [["dns", dns]], relay.port);
          try {
            if (admitted) {
              await eventually(
                () => linesWith(log, "accepted by receiver").length > 0,
                `${source}: ${log.lines.join("\n")}`,
              );
              const client = await startClient(transport, receiver.udpPorts[0]);
              cleanups.push(() => client.close());
              assert.equal(text(await client.request(`via ${source}`, 10_000)), `via ${source}|dns`);
            } else {
              await eventually(
                () => linesWith(receiverLog, "may not connect from", "127.0.0.3").length > 0,
                `${source} refused: ${receiverLog.lines.join("\n")}`,
              );
              assert.equal(linesWith(log, "accepted by receiver").length, 0);
            }
          } finally {
            await sender.close();
            await relay.close();
          }
          // The next source starts afresh (its session is not this one's to resume).
          await eventually(
            () => receiver.machine.session.peers().every((peer) => peer.openLink === undefined),
            "closed",
          );
        }
      },
    );

    it(
      "a standby takes over when the active sender's connection dies; the one that returns waits as standby",
      TIMEOUT,
      async () => {
        const first = testIdentity("site-a");
        const second = testIdentity("site-b");
        const { receiver, log: receiverLog } = await receiverWith([keyLine(first), keyLine(second)]);
        const a = await namedTarget(transport, "a");
        const b = await namedTarget(transport, "b");
        cleanups.push(
          () => a.close(),
          () => b.close(),
        );
        const relay = await startProxy(receiver.tcpPort);
        cleanups.push(() => relay.close());
        const active = await senderWith(first, [["dns", a]], relay.port);
        await eventually(() => linesWith(active.log, "mapping dns: serving").length > 0, "a serves");
        const standby = await senderWith(second, [["dns", b]], receiver.tcpPort);
        await eventually(() => linesWith(standby.log, "mapping dns: standby").length > 0, "b waits");
        const client = await startClient(transport, receiver.udpPorts[0]);
        cleanups.push(() => client.close());
        assert.equal(text(await client.request("before", 10_000)), "before|a");
        relay.cut(); // the active sender's connection dies
        await eventually(() => linesWith(standby.log, "mapping dns: serving").length > 0, "b takes over");
        assert.ok(
          linesWith(receiverLog, "mapping dns: sender", "takes over from").length > 0,
          receiverLog.lines.join("\n"),
        );
        // The same client, the same flow on the receiver: now answered through b (new source port at the target).
        assert.equal(text(await client.request("after", 10_000)), "after|b");
        // a reconnects (through the relay again) and resumes: it is standby now, b keeps serving.
        await eventually(
          () => linesWith(active.log, "mapping dns: standby").length > 0,
          "a returns as standby",
          10_000,
        );
        assert.equal(text(await client.request("still", 10_000)), "still|b");
      },
    );

    it(
      "a hostile sender naming another sender's flows (DATA, SDATA, FLOW_CLOSE) gets nothing through",
      TIMEOUT,
      async () => {
        const honest = testIdentity("honest");
        const hostile = testIdentity("hostile");
        const { receiver } = await receiverWith([
          keyLine(honest, 'mappings="dns" '),
          keyLine(hostile, 'mappings="ntp" '),
        ]);
        const dns = await namedTarget(transport, "dns");
        cleanups.push(() => dns.close());
        const { log } = await senderWith(honest, [["dns", dns]], receiver.tcpPort);
        await eventually(() => linesWith(log, "mapping dns: serving").length > 0, "the honest sender serves dns");
        const clients = await Promise.all(
          Array.from({ length: 10 }, () => startClient(transport, receiver.udpPorts[0])),
        );
        for (const client of clients) cleanups.push(() => client.close());
        for (const [i, client] of clients.entries()) assert.equal(text(await client.request(`q${i}`)), `q${i}|dns`);
        const ids = [...receiver.machine.flows.values()].map((flow) => flow.id);
        assert.equal(ids.length, 10);

        // The hostile sender asks for both mappings: refused dns, serving ntp. Then it names dns's flows.
        const raw = await rawConnect(receiver.tcpPort);
        cleanups.push(() => raw.destroy());
        await handshakeAsSender(raw, hostile, {
          capabilities: Capability.Resume | Capability.Senders,
          mappings: ["dns", "ntp"],
        });
        const state = await raw.waitFrame(isFrame(FrameType.MappingState), "MAPPING_STATE");
        assert.deepEqual(
          state.entries.map((e) => [e.name, e.status]),
          [
            ["dns", MappingStatus.Refused],
            ["ntp", MappingStatus.Serving],
          ],
        );
        const forged: Frame[] = [];
        for (const flowId of [...ids, Math.max(...ids) + 1]) {
          forged.push({ type: FrameType.Data, flowId, payload: utf8("forged|dns") });
          forged.push({ type: FrameType.Sdata, flowId, seq: 0, payload: utf8("forged too|dns") });
          forged.push({ type: FrameType.FlowClose, flowId, reason: 0 });
        }
        raw.write(frames(...forged));
        await eventually(
          () => receiver.machine.stats.drops["unknown-flow"] >= 2 * (ids.length + 1),
          "the forged DATA and SDATA counted as unknown flows",
        );
        // The flows are intact (the FLOW_CLOSEs were ignored) and still answered by the honest sender.
        const sorted = (list: number[]) => [...list].sort((a, b) => a - b);
        assert.deepEqual(sorted([...receiver.machine.flows.values()].map((flow) => flow.id)), sorted(ids));
        for (const [i, client] of clients.entries())
          assert.equal(text(await client.request(`again${i}`)), `again${i}|dns`);
        for (const client of clients) for (const reply of client.replies) assert.doesNotMatch(text(reply), /forged/);
        // Nothing of dns ever reached the hostile sender; its forged ids were answered as unknown.
        assert.equal(raw.frames.filter(isFrame(FrameType.FlowOpen)).length, 0);
        assert.equal(raw.frames.filter(isFrame(FrameType.Data)).length, 0);
        const answers = raw.frames.filter(isFrame(FrameType.FlowClose));
        assert.ok(answers.length >= ids.length, `${answers.length} FLOW_CLOSE answers`);
        assert.ok(answers.every((f) => f.reason === FlowCloseReason.UnknownFlow));
        assert.equal(raw.closed, false);
      },
    );
  });
}
