#!/usr/bin/env bun
/**
 * Reproduction: a reply delivered to the WRONG client when the sender's flow sockets churn.
 *
 *   bun bench/port-reuse.ts [--runtime node|bun] [--cli PATH] [--clients N] [--rounds N]
 *                           [--max-flows N] [--delay-ms N]
 *
 * The real CLI (receiver + sender, --max-flows small) and a UDP echo target that answers after
 * --delay-ms and records the source port of every datagram it gets. More clients than --max-flows
 * send round-robin, so nearly every datagram opens a flow and evicts another: the sender closes a flow
 * socket and opens a new one thousands of times a second. When the kernel hands a just-closed flow
 * socket's port to a new flow while the target's reply to the old flow is still in flight, that reply
 * arrives on the new flow's socket and is forwarded to the new flow's client.
 *
 * Every datagram names its client's port; a reply naming another port is "foreign". For each one the
 * echo target's records show whether the two clients' datagrams left the sender from the same source
 * port (port reuse). Bounded (~20 s), 127.0.0.1 only; kills what it starts. Exit 1 if any reply was
 * foreign, 0 otherwise, 3 if it could not run.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { createSocket, type Socket as DgramSocket } from "node:dgram";
import { existsSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import os from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const HOST = "127.0.0.1";
const args = process.argv.slice(2);
const opt = (name: string, fallback: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 && args[i + 1] ? args[i + 1] : fallback;
};
const runtime = opt("runtime", "node");
const cli = resolve(opt("cli", join(ROOT, "apps", "cli", "dist", "mcudpt.js")));
const clientCount = Math.min(8000, Number(opt("clients", "3000")));
const rounds = Math.min(20, Number(opt("rounds", "6")));
const maxFlows = Number(opt("max-flows", "300"));
const delayMs = Math.min(1000, Number(opt("delay-ms", "20")));
if (runtime !== "node" && runtime !== "bun") throw new Error("--runtime node|bun");
if (!existsSync(cli)) {
  process.stderr.write(`${cli} is missing: run \`bun run build\` first\n`);
  process.exit(3);
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const children = new Set<ChildProcess>();
const killAll = () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
};
process.on("exit", killAll);
setTimeout(() => {
  process.stderr.write("port-reuse: hard deadline reached\n");
  killAll();
  process.exit(3);
}, 90_000).unref();

function track(child: ChildProcess): { out: () => string } {
  children.add(child);
  let out = "";
  child.stdout?.on("data", (d) => (out += d));
  child.stderr?.on("data", (d) => (out += d));
  child.on("exit", () => children.delete(child));
  return { out: () => out };
}

async function until(cond: () => boolean, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) return false;
    await sleep(20);
  }
  return true;
}

async function freePort(kind: "udp" | "tcp"): Promise<number> {
  if (kind === "tcp") {
    const s = createServer();
    await new Promise<void>((r) => s.listen(0, HOST, r));
    const p = (s.address() as { port: number }).port;
    await new Promise((r) => s.close(r));
    return p;
  }
  const s = createSocket("udp4");
  await new Promise<void>((r) => s.bind(0, HOST, r));
  const p = s.address().port;
  s.close();
  return p;
}

// The echo target: answers after delayMs; on SIGTERM writes "srcPort payload-head" lines to a file.
const recordFile = join(os.tmpdir(), `mcudpt-port-reuse-${process.pid}.txt`);
const ECHO = `
const dgram = require("node:dgram"), fs = require("node:fs");
const s = dgram.createSocket({ type: "udp4", recvBufferSize: 4 << 20 });
const seen = [];
s.on("message", (m, r) => {
  seen.push(r.port + " " + m.toString("latin1", 0, 40).split("#")[0]);
  setTimeout(() => s.send(m, r.port, r.address), ${delayMs});
});
s.on("error", () => {});
s.bind(0, "127.0.0.1", () => process.stdout.write("port " + s.address().port + "\\n"));
process.on("SIGTERM", () => { fs.writeFileSync(${JSON.stringify(recordFile)}, seen.join("\\n")); process.exit(0); });
setTimeout(() => process.exit(4), 80000).unref();
`;

async function main(): Promise<number> {
  const echo = spawn("node", ["-e", ECHO], { stdio: ["ignore", "pipe", "pipe"] });
  const echoOut = track(echo);
  if (!(await until(() => /port \d+/.test(echoOut.out()), 10_000))) throw new Error("echo target did not start");
  const echoPort = Number(/port (\d+)/.exec(echoOut.out())?.[1]);
  const udpPort = await freePort("udp");
  const tcpPort = await freePort("tcp");
  const common = ["--secret", "port-reuse", "--max-flows", String(maxFlows), "--idle-timeout", "10"];
  const receiver = spawn(
    runtime,
    // Churn from one address on purpose: the per-source new-flow limit is off.
    [cli, "receiver", "--udp", `${HOST}:${udpPort}`, "--tcp", `${HOST}:${tcpPort}`, "--new-flow-rate", "0", ...common],
    {
      stdio: ["ignore", "pipe", "pipe"],
    },
  );
  const rOut = track(receiver);
  if (!(await until(() => /receiver listening/.test(rOut.out()), 15_000))) throw new Error(`receiver: ${rOut.out()}`);
  const sender = spawn(
    runtime,
    [cli, "sender", "--udp", `${HOST}:${echoPort}`, "--tcp", `${HOST}:${tcpPort}`, ...common],
    {
      stdio: ["ignore", "pipe", "pipe"],
    },
  );
  const sOut = track(sender);
  if (!(await until(() => /accepted by receiver/.test(sOut.out()), 15_000))) throw new Error(`sender: ${sOut.out()}`);

  // Clients, round-robin; every payload starts with its client's port.
  const foreign: Array<{ to: number; payload: string }> = [];
  let own = 0;
  const sockets: DgramSocket[] = [];
  for (let i = 0; i < clientCount; i++) {
    const s = createSocket("udp4");
    s.on("error", () => {});
    await new Promise<void>((r) => s.bind(0, HOST, r));
    const port = s.address().port;
    s.on("message", (m) => {
      const text = m.toString("latin1").split("#")[0];
      if (Number(text.split("|")[1]) === port) own++;
      else foreign.push({ to: port, payload: text });
    });
    sockets.push(s);
  }
  let sent = 0;
  for (let round = 0; round < rounds; round++) {
    for (let i = 0; i < sockets.length; i++) {
      const s = sockets[i];
      s.send(Buffer.from(`R|${s.address().port}|${round}|`.padEnd(64, "#")), udpPort, HOST);
      sent++;
      if (i % 200 === 199) await sleep(1); // a few thousand datagrams a second
    }
  }
  await sleep(1500);
  for (const s of sockets) s.close();
  for (const c of [sender, receiver, echo]) c.kill("SIGTERM");
  await until(() => children.size === 0, 5000);
  killAll();

  // Which source port did the sender use for each client's datagrams?
  const byClient = new Map<number, Set<number>>();
  const byPayload = new Map<string, number>();
  for (const line of readFileSync(recordFile, "utf8").split("\n")) {
    const [src, payload] = line.split(" ");
    if (!payload) continue;
    byPayload.set(payload, Number(src));
    const client = Number(payload.split("|")[1]);
    let set = byClient.get(client);
    if (!set) byClient.set(client, (set = new Set()));
    set.add(Number(src));
  }
  rmSync(recordFile, { force: true });
  let explained = 0;
  const examples: string[] = [];
  for (const f of foreign) {
    const srcOfForeign = byPayload.get(f.payload);
    const reused = srcOfForeign !== undefined && (byClient.get(f.to)?.has(srcOfForeign) ?? false);
    if (reused) explained++;
    if (examples.length < 5) {
      examples.push(
        `client port ${f.to} got "${f.payload}" — the sender sent that datagram from port ${srcOfForeign}` +
          (reused ? `, a port it ALSO used for client ${f.to}'s flow` : ", a port not seen for this client"),
      );
    }
  }
  process.stdout.write(
    `${runtime}: ${clientCount} clients x ${rounds} rounds, --max-flows ${maxFlows}, echo delay ${delayMs} ms\n` +
      `sent ${sent}, own replies ${own}, FOREIGN replies ${foreign.length}` +
      ` (${explained} of them: the two flows left the sender from the same source port)\n` +
      examples.map((e) => `  ${e}\n`).join(""),
  );
  return foreign.length > 0 ? 1 : 0;
}

main().then(
  (code) => {
    killAll();
    process.exit(code);
  },
  (error) => {
    process.stderr.write(`port-reuse: ${(error as Error)?.stack ?? error}\n`);
    killAll();
    process.exit(3);
  },
);
