/**
 * Operations features of the built CLI as processes: --metrics serves Prometheus text whose counters
 * move with the traffic (127.0.0.1 only), --log-format json writes one parseable object per line,
 * SIGUSR1 prints a per-flow snapshot, the live status line appears on a TTY (a pty from `script`)
 * and never when stderr is a pipe or with --quiet, and bad operations flags are one-line errors.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { type AddressInfo, createServer } from "node:net";
import { after, describe, it } from "node:test";
import {
  CLI,
  eventually,
  freePort,
  has,
  killAll,
  sleep,
  startCli,
  startEcho,
  stopWith,
  udpRequest,
} from "../helpers/cli-process.js";
import { killProcs, metricsUrl, sample, scrape, startProc } from "../helpers/ops.js";

const TIMEOUT = { timeout: 60_000 };
const SECRET = "ops-test-secret";

after(() => {
  killAll();
  killProcs();
});

describe("operations of the built CLI", () => {
  it(
    "metrics move with traffic, JSON log lines parse, SIGUSR1 prints per-flow snapshots, no status line on a pipe",
    TIMEOUT,
    async () => {
      const echo = await startEcho();
      const udp = await freePort("udp");
      const tcp = await freePort("tcp");
      const receiver = startCli("node", [
        "receiver",
        ...["--udp", `127.0.0.1:${udp}`, "--tcp", `127.0.0.1:${tcp}`, "--secret", SECRET],
        ...["--metrics", "0", "--log-format", "json"],
      ]);
      const runtime = has("bun") ? "bun" : "node";
      const sender = startCli(runtime, [
        "sender",
        ...["--udp", `127.0.0.1:${echo.address().port}`, "--tcp", `127.0.0.1:${tcp}`, "--secret", SECRET],
        ...["--metrics", "127.0.0.1:0"],
      ]);
      try {
        await eventually(
          () => /accepted by receiver/.test(sender.stderr()),
          () => `sender accepted\n${sender.stderr()}\n${receiver.stderr()}`,
        );
        const url = metricsUrl(receiver.stderr());
        assert.ok(url?.startsWith("http://127.0.0.1:"), `a bare port binds loopback only: ${url}`);
        const before = await scrape(url as string);
        assert.equal(sample(before, "mcudpt_peer_connected"), 1);
        assert.equal(sample(before, "mcudpt_handshake_failures_total"), 0);
        assert.match(before, /# TYPE mcudpt_drops_total counter\nmcudpt_drops_total\{reason="no-sender"\} 0/);

        assert.equal(await udpRequest(udp, "one"), "one");
        assert.equal(await udpRequest(udp, "two"), "two");
        const after = await scrape(url as string);
        assert.ok(sample(after, "mcudpt_datagrams_total", 'direction="in"')! >= 2);
        assert.ok(sample(after, "mcudpt_bytes_total", 'direction="out"')! >= 6);
        assert.equal(sample(after, "mcudpt_flows"), 2);
        // The one (unnamed) mapping carries the same traffic, under its own label.
        assert.equal(sample(after, "mcudpt_mapping_flows", 'mapping="#1"'), 2);
        assert.ok(sample(after, "mcudpt_mapping_datagrams_total", 'mapping="#1",direction="in"')! >= 2);
        assert.equal(sample(after, "mcudpt_flows_opened_total"), 2);
        assert.match(
          after,
          /mcudpt_info\{role="receiver",version="[^"]+",transport="node",runtime="Node\.js [^"]+"\} 1/,
        );
        const senderAfter = await scrape(metricsUrl(sender.stderr())!);
        assert.equal(sample(senderAfter, "mcudpt_flows"), 2);
        assert.equal(sample(senderAfter, "mcudpt_reconnects_total"), 0);

        receiver.child.kill("SIGUSR1");
        sender.child.kill("SIGUSR1");
        await eventually(
          () => /"msg":"flow"/.test(receiver.stderr()),
          () => `receiver snapshot\n${receiver.stderr()}`,
        );
        await eventually(
          () => /^snapshot: receiver connected, 2 flows/m.test(sender.stderr()),
          () => `sender snapshot\n${sender.stderr()}`,
        );

        // Every receiver line is one JSON object with the same fields.
        const lines = receiver.stderr().trim().split("\n");
        for (const line of lines) {
          const record = JSON.parse(line);
          assert.equal(typeof record.time, "string");
          assert.match(record.level, /^(debug|info|warn|error)$/);
          assert.equal(record.name, "mcudpt receiver");
          assert.equal(typeof record.msg, "string");
        }
        const flows = lines.map((line) => JSON.parse(line)).filter((r) => r.msg === "flow");
        assert.equal(flows.length, 2);
        assert.ok(
          flows.every(
            (flow) =>
              flow.datagramsIn >= 1 &&
              flow.bytesOut >= 3 &&
              /^127\.0\.0\.1:\d+$/.test(flow.client) &&
              flow.mapping === "#1",
          ),
        );
        // The sender's table lists both flows with their mapping and their clients' addresses.
        assert.equal(sender.count(/^\s+\d+\s+#1\s+127\.0\.0\.1:\d+\s+\d+/), 2);
        // stderr is a pipe: plain lines, never a status line.
        assert.doesNotMatch(sender.stderr(), /\r|\x1b\[K|\d+ flows \|/);
        assert.deepEqual(await stopWith(sender, "SIGTERM"), { code: 0, signal: null });
        assert.deepEqual(await stopWith(receiver, "SIGTERM"), { code: 0, signal: null });
      } finally {
        echo.close();
      }
    },
  );

  it("draws the live status line on a TTY, not with --quiet", {
    ...TIMEOUT,
    skip: !has("script") && "no script(1) for a pty",
  }, async () => {
    const onPty = async (extra: string) => {
      const udp = await freePort("udp");
      const tcp = await freePort("tcp");
      // script(1) gives the receiver a pseudo-terminal; timeout(1) ends it after a couple of refreshes.
      const command = `timeout -s TERM 2.5 node ${CLI} receiver --udp 127.0.0.1:${udp} --tcp 127.0.0.1:${tcp} --secret x ${extra}`;
      const proc = startProc("script", ["-qfec", command, "/dev/null"], { env: { COLUMNS: "200" } });
      await proc.exited;
      return proc.stdout();
    };
    const [shown, quiet] = await Promise.all([onPty(""), onPty("--quiet")]);
    assert.match(shown, /\r\x1b\[Ksender down \| 0 flows \| in 0 dg\/s 0B\/s \| out 0 dg\/s 0B\/s \| drops 0 \| rtt -/);
    assert.match(shown, /receiver listening/);
    assert.doesNotMatch(quiet, /0 flows \|/);
  });

  it("a --metrics port that is taken stops the start before anything listens: one line, exit 2", TIMEOUT, async () => {
    const taken = createServer();
    await new Promise<void>((resolve) => taken.listen(0, "127.0.0.1", resolve));
    const port = (taken.address() as AddressInfo).port;
    try {
      for (const runtime of ["node", "bun"]) {
        const result = spawnSync(
          runtime,
          [
            CLI,
            "receiver",
            "--udp",
            `127.0.0.1:${await freePort("udp")}`,
            "--tcp",
            `127.0.0.1:${await freePort("tcp")}`,
            "--secret",
            "s",
            "--metrics",
            `127.0.0.1:${port}`,
          ],
          { encoding: "utf8", timeout: 15_000 },
        );
        assert.equal(result.status, 2, `${runtime}: exit 2, as for a UDP or TCP port in use: ${result.stderr}`);
        const lines = result.stderr.trim().split("\n");
        assert.equal(lines.length, 1, `${runtime}: nothing before the refusal (no "listening"): ${result.stderr}`);
        assert.match(lines[0], new RegExp(`--metrics: cannot listen on 127\\.0\\.0\\.1:${port}: `));
      }
    } finally {
      taken.close();
    }
  });

  it("rejects bad operations flags with one line and exit code 2", TIMEOUT, async () => {
    const cases: Array<[string[], RegExp]> = [
      [["--metrics", "nope"], /--metrics: "nope" has no port/],
      [["--metrics", "70000"], /--metrics: port 70000 .* out of range/],
      [["--metrics", "1:2:3"], /--metrics: write IPv6 addresses in brackets/],
      [["--metrics", "9100", "--metrics", "9101"], /--metrics given more than once/],
      [["--metrics"], /--metrics needs a value/],
      [["--log-format", "xml"], /log-format/],
    ];
    for (const [args, pattern] of cases) {
      const result = spawnSync("node", [CLI, "receiver", ...args], { encoding: "utf8", timeout: 15_000 });
      assert.equal(result.status, 2, `${args.join(" ")}: ${result.stderr}`);
      assert.match(result.stderr, pattern);
      assert.equal(result.stderr.trim().split("\n").length, 1, result.stderr);
    }
    await sleep(0);
  });
});
