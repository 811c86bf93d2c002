/**
 * The built CLI in both TCP directions with several mappings, for mixed runtime pairs: `receiver
 * --connect` + `sender --listen` (ssh -L) with two named mappings listed in different orders, in key
 * mode with the listening side's allowlist and the dialing side's pin; and a mapping mismatch reported
 * by both processes.
 */
import assert from "node:assert/strict";
import { createSocket } from "node:dgram";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { generateKeyPair, writeKeyPair } from "@mcudpt/core";
import {
  eventually,
  freePort,
  has,
  killAll,
  RUNTIMES,
  type Runtime,
  startCli,
  stopWith,
  udpRequest,
} from "../helpers/cli-process.js";

const available = RUNTIMES.filter(has);
const TIMEOUT = { timeout: 60_000 };
const dirs: string[] = [];

after(() => {
  killAll();
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), "mcudpt-e2e-directions-"));
  dirs.push(dir);
  return dir;
}

/** A UDP target on 127.0.0.1 that answers `payload@name`. */
async function namedTarget(name: string) {
  const socket = createSocket("udp4");
  socket.on("message", (msg, rinfo) => socket.send(`${msg}@${name}`, rinfo.port, rinfo.address));
  await new Promise<void>((resolve) => socket.bind(0, "127.0.0.1", resolve));
  return socket;
}

function keyPair(dir: string, name: string) {
  const pair = generateKeyPair(name);
  const path = join(dir, name);
  writeKeyPair(path, pair);
  return { path, ...pair };
}

describe("-L and several mappings through the built CLI", () => {
  const pairs: Array<[Runtime, Runtime]> =
    available.length > 1
      ? [
          ["node", "bun"],
          ["bun", "node"],
        ]
      : [[available[0], available[0]]];

  for (const [receiverRuntime, senderRuntime] of pairs) {
    it(
      `${receiverRuntime} receiver --connect, ${senderRuntime} sender --listen: dns and ntp, keys pinned both ways`,
      TIMEOUT,
      async () => {
        const dir = tempDir();
        const receiverKey = keyPair(dir, "receiver");
        const senderKey = keyPair(dir, "sender");
        writeFileSync(join(dir, "authorized_receivers"), `${receiverKey.publicKeyLine}\n`);
        const dns = await namedTarget("dns");
        const ntp = await namedTarget("ntp");
        const tcpPort = await freePort("tcp");
        const [dnsPort, ntpPort] = [await freePort("udp"), await freePort("udp")];
        const sender = startCli(senderRuntime, [
          "sender",
          "--udp",
          `ntp=127.0.0.1:${(ntp.address() as { port: number }).port}`,
          "--udp",
          `dns=127.0.0.1:${(dns.address() as { port: number }).port}`,
          "--listen",
          `127.0.0.1:${tcpPort}`,
          "--key",
          senderKey.path,
          "--authorized-keys",
          join(dir, "authorized_receivers"),
        ]);
        try {
          await eventually(
            () => /listening for the receiver/.test(sender.stderr()),
            `sender listening\n${sender.stderr()}`,
          );
          const receiver = startCli(receiverRuntime, [
            "receiver",
            "--udp",
            `dns=127.0.0.1:${dnsPort}`,
            "--udp",
            `ntp=127.0.0.1:${ntpPort}`,
            "--connect",
            `127.0.0.1:${tcpPort}`,
            "--key",
            receiverKey.path,
            "--sender-key",
            senderKey.fingerprint,
          ]);
          try {
            await eventually(
              () => /accepted by sender/.test(receiver.stderr()),
              `receiver accepted\n${receiver.stderr()}\n${sender.stderr()}`,
            );
            assert.equal(await udpRequest(dnsPort, "query"), "query@dns");
            assert.equal(await udpRequest(ntpPort, "time"), "time@ntp");
            assert.match(
              sender.stderr(),
              /listed in .*authorized_receivers/,
              "the listening side admitted the dialer by its allowlist",
            );
          } finally {
            assert.equal((await stopWith(receiver, "SIGTERM")).code, 0, "receiver exits 0");
          }
        } finally {
          assert.equal((await stopWith(sender, "SIGTERM")).code, 0, "sender exits 0");
          dns.close();
          ntp.close();
        }
      },
    );
  }

  it(
    "mappings that do not pair up are refused at the handshake, by both processes, naming both lists",
    TIMEOUT,
    async () => {
      const runtime = available[0];
      const tcpPort = await freePort("tcp");
      const receiver = startCli(runtime, [
        "receiver",
        "--udp",
        `dns=127.0.0.1:${await freePort("udp")}`,
        "--udp",
        `ntp=127.0.0.1:${await freePort("udp")}`,
        "--tcp",
        `127.0.0.1:${tcpPort}`,
        "--secret",
        "s",
      ]);
      try {
        await eventually(() => /receiver listening/.test(receiver.stderr()), "receiver listening");
        const sender = startCli(runtime, [
          "sender",
          "--udp",
          "dns=127.0.0.1:9",
          "--tcp",
          `127.0.0.1:${tcpPort}`,
          "--secret",
          "s",
        ]);
        try {
          await eventually(
            () => /mappings differ/.test(sender.stderr()) && /mappings differ/.test(receiver.stderr()),
            `both name the mismatch\n${sender.stderr()}\n${receiver.stderr()}`,
          );
          assert.match(sender.stderr(), /the receiver has 2 \(dns, ntp\), the sender 1 \(dns\)/);
        } finally {
          await stopWith(sender, "SIGTERM");
        }
      } finally {
        await stopWith(receiver, "SIGTERM");
      }
    },
  );
});
