/**
 * --tcp-buffer on every transport: where the transport can size TCP buffers (Bun), both ends of a
 * connection asked for a size read it back from getsockopt (Linux: twice the size set) and `ss -tm`
 * shows the same skmem rb/tb for the socket, unlike a connection that asked for nothing; a tunnel
 * sized so says what the kernel granted on both sides, once. Where it cannot (Node's net.Socket has
 * no such option), the tunnel says so once at the start and runs with the kernel's sizes.
 * node:test only, so it also runs under real Node.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { describe, it } from "node:test";
import { startReceiver, startSender, type TcpConnection, type Transport } from "@mcudpt/core";
import { SECRET } from "../helpers/scenarios.js";
import { availableTransports } from "../helpers/transports.js";
import { eventually, LOOPBACK, memoryLogger, startClient, startEcho, text } from "../helpers/tunnel.js";

const TIMEOUT = { timeout: 30_000 };
/** Between the usual defaults (tcp_rmem 128 KiB, wmem 16 KiB) and rmem_max/wmem_max (208 KiB by default). */
const ASKED = 96 * 1024;
const LINUX = process.platform === "linux";
const FACTOR = LINUX ? 2 : 1;

/** A loopback connection, both ends asking for `bytes` (or nothing). */
async function connectionPair(transport: Transport, bytes: number | undefined) {
  const quiet = { onData() {}, onDrain() {}, onClose() {} };
  let accept: (connection: TcpConnection) => void = () => {};
  const accepted = new Promise<TcpConnection>((resolve) => {
    accept = resolve;
  });
  const server = await transport.listenTcp({
    host: LOOPBACK,
    port: 0,
    bufferBytes: bytes,
    onConnection: (connection) => {
      accept(connection);
      return quiet;
    },
  });
  const dialed = await transport.connectTcp({ host: LOOPBACK, port: server.port, bufferBytes: bytes, handlers: quiet });
  const listened = await accepted;
  return {
    dialed,
    listened,
    port: server.port,
    close() {
      dialed.destroy();
      listened.destroy();
      server.close();
    },
  };
}

/** `ss -tm`'s skmem rb and tb of the socket from `localPort` to `remotePort` (undefined without ss). */
function ssBuffers(localPort: number, remotePort: number): { receive: number; send: number } | undefined {
  const result = spawnSync(
    "ss",
    ["-tmnH", "state", "established", `( sport = :${localPort} and dport = :${remotePort} )`],
    {
      encoding: "utf8",
    },
  );
  if (result.error || result.status !== 0) return undefined; // no ss here
  const match = /skmem:\(r\d+,rb(\d+),t\d+,tb(\d+)/.exec(result.stdout);
  // ss ran: the socket must be there, with its skmem.
  assert.ok(match, `ss -tm shows the socket :${localPort} → :${remotePort}:\n${result.stdout}`);
  return { receive: Number(match[1]), send: Number(match[2]) };
}

for (const transport of availableTransports()) {
  describe(`--tcp-buffer (${transport.name} transport)`, () => {
    if (transport.setsTcpBuffers) {
      it(
        `both ends of a connection that asked for ${ASKED / 1024} KiB get it (getsockopt, and ss -tm agrees); an unsized one does not`,
        TIMEOUT,
        async () => {
          const sized = await connectionPair(transport, ASKED);
          const plain = await connectionPair(transport, undefined);
          try {
            const expected = { receive: ASKED * FACTOR, send: ASKED * FACTOR };
            assert.deepEqual(sized.dialed.bufferBytes, expected, "the dialed end");
            assert.deepEqual(sized.listened.bufferBytes, expected, "the accepted end");
            const untouched = plain.dialed.bufferBytes;
            assert.ok(untouched, "an unsized connection reads its sizes too");
            assert.notDeepEqual(untouched, expected, "the kernel's own sizes are not what was asked");
            if (LINUX) {
              const listenedSeen = ssBuffers(sized.port, sized.listened.remotePort);
              if (listenedSeen)
                assert.deepEqual(listenedSeen, expected, "ss -tm shows the accepted socket's skmem rb/tb");
              const dialedSeen = ssBuffers(sized.listened.remotePort, sized.port);
              if (dialedSeen) assert.deepEqual(dialedSeen, expected, "ss -tm shows the dialed socket's skmem rb/tb");
            }
          } finally {
            sized.close();
            plain.close();
          }
        },
      );
    } else {
      it("the transport says it cannot size TCP buffers, and its connections read no sizes", TIMEOUT, async () => {
        const pair = await connectionPair(transport, ASKED);
        try {
          assert.equal(pair.dialed.bufferBytes, undefined);
          assert.equal(pair.listened.bufferBytes, undefined);
        } finally {
          pair.close();
        }
      });
    }

    it(
      "a tunnel with tcpBufferBytes on both sides: each says once what the kernel granted, or that it cannot",
      TIMEOUT,
      async () => {
        const echo = await startEcho(transport);
        const receiverLog = memoryLogger();
        const senderLog = memoryLogger();
        const carrier = { tcpBufferBytes: ASKED };
        const receiver = await startReceiver({
          transport,
          udp: { host: LOOPBACK, port: 0 },
          tcp: { host: LOOPBACK, port: 0 },
          config: { secret: SECRET },
          logger: receiverLog,
          carrier,
        });
        const sender = await startSender({
          transport,
          target: { host: LOOPBACK, port: echo.port },
          tcp: { host: LOOPBACK, port: receiver.tcpPort },
          config: { secret: SECRET },
          logger: senderLog,
          carrier,
          reconnect: { initialMs: 50, maxMs: 500 },
        });
        try {
          await eventually(
            () => receiver.machine.session.peerConnected && sender.machine.session.peerConnected,
            "connected",
          );
          const client = await startClient(transport, receiver.udpPort);
          assert.equal(text(await client.request("through")), "through");
          client.close();
          const said = transport.setsTcpBuffers
            ? /TCP buffers: asked 96 KiB \(--tcp-buffer\), the kernel granted receive 96 KiB, send 96 KiB/
            : /--tcp-buffer 96 KiB is not applied: the node transport cannot set SO_SNDBUF\/SO_RCVBUF/;
          for (const log of [receiverLog, senderLog]) {
            assert.equal(log.lines.filter((line) => said.test(line)).length, 1, log.lines.join("\n"));
          }
        } finally {
          await sender.close();
          await receiver.close();
          echo.close();
        }
      },
    );
  });
}
