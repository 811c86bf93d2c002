/**
 * Scaling out with the kernel's own load balancer (docs/operations.md, "Several receivers behind a
 * load balancer"), in network namespaces the test creates (root, ip and nft; skipped otherwise):
 *
 *   cli 10.201.0.2 ── 10.201.0.1 lb ─┬─ 10.201.1.2 ra: receiver A (node) ← sender A (node) ─┐
 *   40 clients      nftables DNAT    └─ 10.201.2.2 rb: receiver B (bun)  ← sender B (bun)  ─┤
 *                   of 10.201.0.1:5353 by jhash(saddr . sport) mod 2                          │
 *                   (and the routes between them)           svc 10.201.3.2: UDP echo  ←──────┘
 *
 * Each receiver has its own sender (on its host, dialing 127.0.0.1); both senders forward to one
 * echo target, which tags every reply with the address the datagram came from: which sender, hence
 * which receiver, carried it. 40 clients (one address, distinct source ports) send 5 datagrams each
 * to the virtual address: every client gets its own 5 datagrams back, from the virtual address, all
 * through one receiver; both receivers carry some (40 clients all hashed to one receiver would be a
 * 2^-39 chance). Then the rules are loaded again and lb's conntrack forgets every client (its UDP
 * timeouts are set to 1 s; the test waits until no entry is left): the same 40 clients (same source
 * ports) reach the same receivers again, by the seeded hash alone, into the flows still open there.
 * Over both rounds each client is one flow on exactly one receiver (their -v logs).
 */
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { CLI, eventually, has } from "../helpers/cli-process.ts";
import { Namespaces, type NsProcess, netnsUnavailable, nftUnavailable } from "../helpers/netns.ts";
import { scratchDir } from "../helpers/scratch.ts";

const VIP = "10.201.0.1";
const CLIENT = "10.201.0.2";
const RECEIVERS = { A: "10.201.1.2", B: "10.201.2.2" } as const;
const ECHO = "10.201.3.2";
const UDP_PORT = 5353;
const TCP_PORT = 7000;
const ECHO_PORT = 9000;
const CLIENTS = 40;
const PER_CLIENT = 5;
const SECRET = "load-balancer-test-secret";

/**
 * The balancer, as docs/operations.md gives it: a fixed seed, so the same client lands on the same
 * receiver after its conntrack entry expires or the rules are reloaded.
 */
const RULESET = `table ip mcudpt_lb {
  chain prerouting {
    type nat hook prerouting priority dstnat; policy accept;
    ip daddr ${VIP} udp dport ${UDP_PORT} dnat to jhash ip saddr . udp sport mod 2 seed 0x6d637564 map { 0 : ${RECEIVERS.A}, 1 : ${RECEIVERS.B} }
  }
}
`;

const unavailable = netnsUnavailable(["ip", "nft"]) ?? nftUnavailable(RULESET) ?? (!has("bun") && "needs bun");

/** The UDP target: answers each datagram with "FROM-ADDRESS PAYLOAD". */
const ECHO_SCRIPT = `
import { createSocket } from "node:dgram";
const [host, port] = [process.argv[2], Number(process.argv[3])];
const socket = createSocket("udp4");
socket.on("message", (msg, from) => socket.send(Buffer.concat([Buffer.from(from.address + " "), msg]), from.port, from.address));
socket.bind(port, host, () => process.stdout.write("ready\\n"));
`;

/**
 * The clients: one socket on HOST per port of PORTS (0: any free one; a port given again reuses
 * that client's source port), each sending PER datagrams to VIP:PORT one after the other, each sent
 * again every 300 ms until its reply comes (20 s at most); prints [{ port, replies: [{ from, tag,
 * payload }] }] as JSON. Payloads are padded to 64 bytes so a reply (tag + payload) stays well under
 * the receiver's amplification limit.
 */
const CLIENTS_SCRIPT = `
import { createSocket } from "node:dgram";
const [host, vip, port, ports, per] = process.argv.slice(2);
const client = async (i, localPort) => {
  const socket = createSocket("udp4");
  await new Promise((resolve) => socket.bind(localPort, host, resolve));
  const replies = [];
  for (let j = 0; j < Number(per); j++) {
    const payload = ("client " + i + " datagram " + j + " ").padEnd(64, ".");
    replies.push(await new Promise((resolve, reject) => {
      const send = () => socket.send(payload, Number(port), vip);
      const resend = setInterval(send, 300);
      const deadline = setTimeout(() => { clearInterval(resend); reject(new Error("no reply to " + payload)); }, 20000);
      const onMessage = (msg, from) => {
        const text = msg.toString();
        const space = text.indexOf(" ");
        if (text.slice(space + 1) !== payload) return; // a late reply to an earlier datagram sent again
        socket.off("message", onMessage);
        clearInterval(resend);
        clearTimeout(deadline);
        resolve({ from: from.address + ":" + from.port, tag: text.slice(0, space), payload });
      };
      socket.on("message", onMessage);
      send();
    }));
  }
  const result = { port: socket.address().port, replies };
  socket.close();
  return result;
};
const results = await Promise.all(ports.split(",").map((p, i) => client(i, Number(p))));
process.stdout.write(JSON.stringify(results));
`;

interface ClientResult {
  port: number;
  replies: Array<{ from: string; tag: string; payload: string }>;
}

// bun test does not print a skip's reason: the name carries it.
const NAME =
  "spreads 40 clients over two receivers, each flow sticking to one, every client answered with its own " +
  `datagrams; after a rule reload and conntrack forgetting them, the same receivers again${unavailable ? ` (skipped: ${unavailable})` : ""}`;

describe("several receivers behind a kernel load balancer (nftables jhash DNAT)", () => {
  const spaces = unavailable ? undefined : new Namespaces("lb");
  after(async () => {
    await spaces?.cleanup();
  });

  it(NAME, { skip: unavailable || false, timeout: 120_000 }, async () => {
    const ns = spaces as Namespaces;
    const scripts = scratchDir("mcudpt-lb-");
    writeFileSync(join(scripts, "echo.mjs"), ECHO_SCRIPT);
    writeFileSync(join(scripts, "clients.mjs"), CLIENTS_SCRIPT);

    const cli = ns.add("cli");
    const lb = ns.add("lb");
    const ra = ns.add("ra");
    const rb = ns.add("rb");
    const svc = ns.add("svc");
    ns.link(cli, "eth0", `${CLIENT}/24`, lb, "cli0", `${VIP}/24`);
    ns.link(ra, "eth0", `${RECEIVERS.A}/24`, lb, "ra0", "10.201.1.1/24");
    ns.link(rb, "eth0", `${RECEIVERS.B}/24`, lb, "rb0", "10.201.2.1/24");
    ns.link(svc, "eth0", `${ECHO}/24`, lb, "svc0", "10.201.3.1/24");
    // Every host routes through lb: the receivers' replies must pass it to be un-DNATed.
    for (const [space, gateway] of [
      [cli, VIP],
      [ra, "10.201.1.1"],
      [rb, "10.201.2.1"],
      [svc, "10.201.3.1"],
    ]) {
      ns.exec(space, "ip", ["route", "add", "default", "via", gateway]);
    }
    ns.exec(lb, "sysctl", ["-q", "-w", "net.ipv4.ip_forward=1"]);
    // lb forgets a UDP flow after 1 s of silence (30 s and 120 s by default), for the second round.
    ns.exec(lb, "sysctl", [
      "-q",
      "-w",
      "net.netfilter.nf_conntrack_udp_timeout=1",
      "net.netfilter.nf_conntrack_udp_timeout_stream=1",
    ]);
    ns.exec(lb, "nft", ["-f", "-"], RULESET);

    const echo = ns.spawn(svc, "node", [join(scripts, "echo.mjs"), ECHO, String(ECHO_PORT)]);
    await eventually(
      () => echo.stdout().includes("ready"),
      () => `echo target ready\n${echo.stderr()}`,
    );

    const env = (name: string) => ({ MCUDPT_SECRET: SECRET, MCUDPT_CONFIG_DIR: scratchDir(name) });
    const receivers: Record<keyof typeof RECEIVERS, NsProcess> = {} as never;
    for (const [name, space, runtime] of [
      ["A", ra, "node"],
      ["B", rb, "bun"],
    ] as const) {
      const receiver = ns.spawn(
        space,
        runtime,
        [CLI, "receiver", "--udp", `:${UDP_PORT}`, "--tcp", `127.0.0.1:${TCP_PORT}`, "-v"],
        env("mcudpt-lb-receiver-"),
      );
      receivers[name] = receiver;
      await eventually(
        () => /receiver listening/.test(receiver.stderr()),
        () => `receiver ${name} listening\n${receiver.stderr()}`,
      );
      const sender = ns.spawn(
        space,
        runtime,
        [CLI, "sender", "--udp", `${ECHO}:${ECHO_PORT}`, "--tcp", `127.0.0.1:${TCP_PORT}`],
        env("mcudpt-lb-sender-"),
      );
      await eventually(
        () => /sender \S+ accepted/.test(receiver.stderr()),
        () => `receiver ${name} accepted its sender\n${receiver.stderr()}\n${sender.stderr()}`,
      );
    }

    const runClients = async (ports: number[]): Promise<ClientResult[]> => {
      const args = [join(scripts, "clients.mjs"), CLIENT, VIP, String(UDP_PORT), ports.join(","), String(PER_CLIENT)];
      const clients = ns.spawn(cli, "node", args);
      const code = await Promise.race([
        clients.exited,
        new Promise<string>((resolve) => setTimeout(() => resolve("timeout"), 60_000)),
      ]);
      assert.equal(code, 0, `clients finished\n${clients.stderr()}`);
      return JSON.parse(clients.stdout()) as ClientResult[];
    };

    /** Every client: its own datagrams back, in order, from the VIP, all through one receiver (which). */
    const receiverOfEach = (results: ClientResult[]): Map<number, string> => {
      assert.equal(results.length, CLIENTS);
      assert.equal(new Set(results.map((r) => r.port)).size, CLIENTS, "distinct source ports");
      const receiverOf = new Map<number, string>();
      for (const [i, result] of results.entries()) {
        assert.deepEqual(
          result.replies.map((reply) => reply.payload.replace(/\.+$/, "")),
          Array.from({ length: PER_CLIENT }, (_, j) => `client ${i} datagram ${j} `),
        );
        for (const reply of result.replies) assert.equal(reply.from, `${VIP}:${UDP_PORT}`, "replies come from the VIP");
        const tags = new Set(result.replies.map((reply) => reply.tag));
        assert.equal(tags.size, 1, `client ${result.port} stuck to one receiver: ${[...tags].join(", ")}`);
        const tag = [...tags][0];
        const name = Object.entries(RECEIVERS).find(([, address]) => address === tag)?.[0];
        assert.ok(name, `the echo target saw sender address ${tag}`);
        receiverOf.set(result.port, name);
      }
      return receiverOf;
    };

    /** Clients lb tracks (conntrack entries toward the VIP's port). */
    const tracked = () =>
      ns
        .exec(lb, "cat", ["/proc/net/nf_conntrack"])
        .split("\n")
        .filter((line) => line.includes(`dst=${VIP} `) && line.includes(`dport=${UDP_PORT} `)).length;

    const first = receiverOfEach(await runClients(Array.from({ length: CLIENTS }, () => 0)));
    const counts = { A: 0, B: 0 };
    for (const name of first.values()) counts[name as "A" | "B"]++;
    assert.ok(counts.A > 0 && counts.B > 0, `both receivers carry clients: ${JSON.stringify(counts)}`);

    // Round two: the rules loaded again and every client forgotten by conntrack; the same clients
    // (same source ports) land on the same receivers, by the hash alone, within their flows' idle timeout.
    assert.ok(tracked() > 0, "lb tracked the clients");
    ns.exec(lb, "nft", ["delete", "table", "ip", "mcudpt_lb"]);
    ns.exec(lb, "nft", ["-f", "-"], RULESET);
    await eventually(() => tracked() === 0, "lb forgets the clients", 30_000);
    const second = receiverOfEach(await runClients([...first.keys()]));
    assert.deepEqual([...second], [...first], "each client on the same receiver as before");

    // The receivers' side: each client is exactly one flow, over both rounds, on the receiver its
    // replies came through, and the receivers saw the client's real address (DNAT, no SNAT).
    for (const [name, receiver] of Object.entries(receivers)) {
      const opened = [
        ...receiver.stderr().matchAll(/flow \d+ opened for client (?:::ffff:)?(\d+\.\d+\.\d+\.\d+):(\d+)/g),
      ];
      const ports = opened.map((m) => Number(m[2]));
      for (const m of opened) assert.equal(m[1], CLIENT, "the receiver sees the client's own address");
      assert.equal(new Set(ports).size, ports.length, `receiver ${name}: one flow per client`);
      const expected = [...first].filter(([, n]) => n === name).map(([port]) => port);
      assert.deepEqual(
        ports.sort((x, y) => x - y),
        expected.sort((x, y) => x - y),
        `receiver ${name} opened flows for exactly its clients`,
      );
    }
  });
});
