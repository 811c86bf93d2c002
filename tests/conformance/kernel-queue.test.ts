/**
 * Datagrams the kernel drops at our sockets are counted (issue 13), for every transport: a client in
 * a child process blasts a bounded burst at a receiver's public port while this process (the
 * receiver's event loop) is stalled in spawnSync, so the socket's receive queue overflows on purpose;
 * likewise a "target" blasts a sender's flow socket. An explicit sample (sampleKernelDrops, instead of
 * waiting for the timer) must then show exactly what the kernel's own counter shows, as drops
 * "kernel-queue" in machine.stats and in the mapping's (and the flow's) counters, and warn naming the
 * socket. Also: the start-up warning when the kernel grants less buffer than asked. Linux (/proc)
 * only; elsewhere nothing can be counted and the tests skip. node:test + node:assert only (runs
 * under bun test and, bundled, node --test).
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { describe, it } from "node:test";
import {
  formatHostPort,
  kernelDropCountersAvailable,
  readUdpSocketStats,
  startReceiver,
  startSender,
} from "@mcudpt/core";
import { availableTransports } from "../helpers/transports.js";
import { eventually, LOOPBACK, memoryLogger, startClient, startEcho } from "../helpers/tunnel.js";

const SECRET = "kernel-queue-secret";
const BOUNDED = { timeout: 60_000 };
/** Datagrams per burst, and their size: far more than a 64 KiB buffer (128 KiB as Linux counts it) holds. */
const BURST = 3_000;
const SIZE = 200;
/** A small buffer, so that the burst overflows it whatever net.core.rmem_max says. */
const SMALL_BUFFER = 65_536;
const linux = kernelDropCountersAvailable();

/**
 * Sends BURST datagrams to 127.0.0.1:`port` from a child process (bound to `from`, 0 = any) and waits
 * for it to finish: this process's event loop, the tunnel's, does nothing meanwhile. Loopback delivers
 * each datagram inside the child's send, so when this returns every datagram either sits in the
 * socket's queue or was dropped by the kernel.
 */
function blastFromChild(port: number, from = 0): void {
  const script = `
    const dgram = require("node:dgram");
    const { PORT, FROM, COUNT, SIZE } = process.env;
    const socket = dgram.createSocket("udp4");
    socket.bind(Number(FROM), "127.0.0.1", () => {
      const payload = Buffer.alloc(Number(SIZE), 120);
      let left = Number(COUNT);
      const done = () => { if (--left === 0) socket.close(); };
      for (let i = 0; i < Number(COUNT); i++) socket.send(payload, Number(PORT), "127.0.0.1", done);
    });
  `;
  const child = spawnSync(process.execPath, ["-e", script], {
    env: { ...process.env, PORT: String(port), FROM: String(from), COUNT: String(BURST), SIZE: String(SIZE) },
    timeout: 30_000,
    encoding: "utf8",
  });
  assert.equal(child.status, 0, `blaster failed: ${child.error ?? ""} ${child.stderr}`);
}

/** The kernel's drop counter of this process's socket at `key` (formatHostPort form). */
function kernelDrops(key: string): number {
  const row = readUdpSocketStats().get(key);
  assert.ok(row, `no /proc/net/udp row for ${key}`);
  return row.drops;
}

function rmemMax(): number | undefined {
  try {
    return Number(readFileSync("/proc/sys/net/core/rmem_max", "utf8").trim());
  } catch {
    return undefined;
  }
}

for (const transport of availableTransports()) {
  describe(`kernel-queue drops (${transport.name})`, {
    skip: linux ? false : "no /proc/net/udp: nothing to count",
  }, () => {
    it("counts what the kernel dropped at an overflowed public port, on its mapping only", BOUNDED, async () => {
      const log = memoryLogger();
      const receiver = await startReceiver({
        transport,
        mappings: [
          { name: "quiet", udp: { host: LOOPBACK, port: 0 } },
          { name: "busy", udp: { host: LOOPBACK, port: 0 } },
        ],
        tcp: { host: LOOPBACK, port: 0 },
        config: { secret: SECRET },
        logger: log,
        udpBufferBytes: SMALL_BUFFER,
      });
      try {
        const busyPort = receiver.udpPorts[1];
        const key = formatHostPort(LOOPBACK, busyPort);
        const machine = receiver.machine;
        await receiver.sampleKernelDrops();
        assert.equal(machine.stats.drops["kernel-queue"], 0);
        const inBefore = machine.mappingStats[1].udpIn;

        blastFromChild(busyPort);
        const dropped = kernelDrops(key); // final: the child has exited
        assert.ok(dropped > 0, "the burst should have overflowed the public socket's queue");
        assert.ok(dropped < BURST);

        await receiver.sampleKernelDrops();
        assert.equal(machine.stats.drops["kernel-queue"], dropped);
        assert.equal(machine.mappingStats[1].drops["kernel-queue"], dropped);
        assert.equal(machine.mappingStats[0].drops["kernel-queue"], 0);
        // Every datagram of the burst is accounted for: read from the queue, or dropped by the kernel.
        await eventually(
          () => machine.mappingStats[1].udpIn - inBefore + dropped === BURST,
          "the queued datagrams to be read",
          10_000,
        );
        assert.ok(
          log.saw(
            new RegExp(
              `warn: the kernel dropped ${dropped} datagrams at UDP socket ${key} \\(the public port of mapping "busy"`,
            ),
          ),
          log.lines.join("\n"),
        );
        assert.ok(log.saw(/--udp-buffer.*net\.core\.rmem_max/));
        // Sampling again finds nothing new: each drop is counted once.
        await receiver.sampleKernelDrops();
        assert.equal(machine.stats.drops["kernel-queue"], dropped);
      } finally {
        await receiver.close();
      }
    });

    it("counts what the kernel dropped at an overflowed flow socket, on its flow and mapping", BOUNDED, async () => {
      const receiverLog = memoryLogger();
      const senderLog = memoryLogger();
      const echo = await startEcho(transport);
      const targetPort = echo.port;
      const receiver = await startReceiver({
        transport,
        udp: { host: LOOPBACK, port: 0 },
        tcp: { host: LOOPBACK, port: 0 },
        config: { secret: SECRET },
        logger: receiverLog,
      });
      const sender = await startSender({
        transport,
        target: { host: LOOPBACK, port: targetPort },
        tcp: { host: LOOPBACK, port: receiver.tcpPort },
        config: { secret: SECRET },
        logger: senderLog,
        reconnect: { initialMs: 50, maxMs: 500 },
        udpBufferBytes: SMALL_BUFFER,
      });
      const client = await startClient(transport, receiver.udpPort);
      try {
        assert.equal(sender.udpBufferBytes, SMALL_BUFFER);
        await client.request("open the flow", 10_000);
        const flowRow = [...readUdpSocketStats().values()].find(
          (row) => row.remote === formatHostPort(LOOPBACK, targetPort),
        );
        assert.ok(flowRow, "the flow socket, connected to the target");
        // The target goes quiet; a child takes its address and floods the flow socket.
        echo.close();
        blastFromChild(flowRow.port, targetPort);
        const dropped = kernelDrops(flowRow.local);
        assert.ok(dropped > 0, "the burst should have overflowed the flow socket's queue");

        await sender.sampleKernelDrops();
        const machine = sender.machine;
        assert.equal(machine.stats.drops["kernel-queue"], dropped);
        assert.equal(machine.mappingStats[0].drops["kernel-queue"], dropped);
        const [flow] = [...machine.flows.values()];
        assert.ok(flow, "the flow is still open");
        assert.ok(flow.dropped >= dropped, `flow dropped ${flow.dropped}, kernel ${dropped}`);
        assert.ok(
          senderLog.saw(
            new RegExp(`warn: the kernel dropped ${dropped} datagrams at UDP socket ${flowRow.local} \\(flow`),
          ),
          senderLog.lines.join("\n"),
        );
        // The receiver's public socket kept up with the one client: nothing counted there.
        await receiver.sampleKernelDrops();
        assert.equal(receiver.machine.stats.drops["kernel-queue"], 0);
      } finally {
        client.close();
        await sender.close();
        await receiver.close();
      }
    });

    it("warns at start when the kernel grants a public socket less buffer than asked", BOUNDED, async (t) => {
      const max = rmemMax();
      if (max === undefined || max * 2 > 1024 ** 3) return t.skip("net.core.rmem_max unknown or huge");
      const requested = max * 2;
      const log = memoryLogger();
      const receiver = await startReceiver({
        transport,
        udp: { host: LOOPBACK, port: 0 },
        tcp: { host: LOOPBACK, port: 0 },
        config: { secret: SECRET },
        logger: log,
        udpBufferBytes: requested,
      });
      try {
        assert.ok(
          log.saw(
            new RegExp(
              `warn: UDP 127\\.0\\.0\\.1:${receiver.udpPort}: asked the kernel for a .* UDP receive buffer, got`,
            ),
          ),
          log.lines.join("\n"),
        );
        assert.ok(log.saw(new RegExp(`sysctl -w net\\.core\\.rmem_max=${requested}`)));
      } finally {
        await receiver.close();
      }
      // Granted (64 KiB is under any rmem_max): no warning.
      const quiet = memoryLogger();
      const granted = await startReceiver({
        transport,
        udp: { host: LOOPBACK, port: 0 },
        tcp: { host: LOOPBACK, port: 0 },
        config: { secret: SECRET },
        logger: quiet,
        udpBufferBytes: SMALL_BUFFER,
      });
      await granted.close();
      assert.ok(!quiet.saw(/asked the kernel/), quiet.lines.join("\n"));
    });
  });
}
