/**
 * The operations modules without processes: the status line's text and when it is drawn, the
 * --metrics address rules, the SIGUSR1 snapshot, the published manifests, and docs/cli.md being
 * what `bun run docs:cli` would write from the flag definitions.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { type LaneInfo, type Stats, zeroDrops, zeroLaneTotals } from "@mcudpt/protocol";
import type { Observed } from "../../apps/cli/src/ops/observe.ts";
import { opsOptions, parseMetricsAddress } from "../../apps/cli/src/ops/options.ts";
import { snapshotJson, snapshotText } from "../../apps/cli/src/ops/snapshot.ts";
import { StatusLine } from "../../apps/cli/src/ops/status.ts";
import { CLI_DOC, COMMANDS, renderCliDoc } from "../../scripts/cli-docs.ts";
import { publishedManifest } from "../../scripts/pack.ts";

const ROOT = join(import.meta.dirname, "..", "..");

/** Two lanes of one session: the first open with an RTT, the second stalled. */
const TWO_LANES: LaneInfo[] = [
  {
    conn: 1,
    peer: "127.0.0.1:4000",
    open: true,
    stalled: false,
    rttMs: 0.5,
    datagramsSent: 10,
    datagramsReceived: 9,
    nudgesSent: 3,
  },
  {
    conn: 2,
    peer: "127.0.0.1:4001",
    open: true,
    stalled: true,
    rttMs: 12.6,
    datagramsSent: 5,
    datagramsReceived: 4,
    nudgesSent: 0,
  },
];

function fakeObserved(stats: Partial<Stats> = {}): Observed {
  const full: Stats = {
    udpIn: 0,
    udpInBytes: 0,
    udpOut: 0,
    udpOutBytes: 0,
    flowsOpened: 0,
    flowsClosed: 0,
    flowsEvicted: 0,
    accepted: 1,
    handshakeFailures: 0,
    drops: zeroDrops(),
    dropsWithoutMapping: zeroDrops(),
    rttMs: undefined,
    ...stats,
  };
  const flows = [
    {
      id: 7,
      client: "192.0.2.1:5353",
      mapping: "game+3",
      datagramsIn: 3,
      bytesIn: 300,
      datagramsOut: 2,
      bytesOut: 200,
      dropped: 0,
      lastActive: 0,
    },
  ];
  return {
    role: "receiver",
    transport: "node",
    stats: full,
    peerConnected: () => true,
    flowCount: () => flows.length,
    reconnects: () => 0,
    flows: () => flows,
    mappings: () => [
      {
        name: "dns",
        label: "dns",
        flows: 1,
        flowsOpened: 4,
        udpIn: 3,
        udpInBytes: 300,
        udpOut: 2,
        udpOutBytes: 200,
        drops: zeroDrops(),
      },
    ],
  };
}

describe("status line", () => {
  it("is drawn only on a TTY, in text format, without --quiet", () => {
    assert.equal(StatusLine.wanted({ isTTY: true, write() {} }, false, "text"), true);
    assert.equal(StatusLine.wanted({ isTTY: false, write() {} }, false, "text"), false);
    assert.equal(StatusLine.wanted({ write() {} }, false, "text"), false);
    assert.equal(StatusLine.wanted({ isTTY: true, write() {} }, true, "text"), false);
    assert.equal(StatusLine.wanted({ isTTY: true, write() {} }, false, "json"), false);
  });

  it("shows the peer, flows, rates each way, drops by reason and the RTT, within the terminal width", () => {
    const observed = fakeObserved({ drops: { ...fakeObserved().stats.drops, backpressure: 4 }, rttMs: 1.25 });
    const writes: string[] = [];
    const line = new StatusLine(observed, { isTTY: true, columns: 200, write: (t) => writes.push(t) });
    const start = { at: 0, udpIn: 0, udpInBytes: 0, udpOut: 0, udpOutBytes: 0 };
    const text = line.render(start, { at: 2000, udpIn: 2000, udpInBytes: 3_000_000, udpOut: 10, udpOutBytes: 500 });
    assert.equal(
      text,
      "sender up | 1 flows | in 1.0k dg/s 1.5MB/s | out 5 dg/s 250B/s | drops backpressure=4 | rtt 1.3 ms",
    );
    const narrow = new StatusLine(observed, { isTTY: true, columns: 40, write() {} });
    assert.equal(narrow.render(start, start).length, 39);
  });

  it("shows the lanes open of those kept, and duplicates suppressed, when there is more than one", () => {
    const laned: Observed = {
      ...fakeObserved(),
      lanes: () => ({ open: 1, wanted: 2 }),
      laneTotals: () => ({ ...zeroLaneTotals(), duplicatesSuppressed: 1500 }),
    };
    const line = new StatusLine(laned, { isTTY: true, columns: 200, write() {} });
    const start = { at: 0, udpIn: 0, udpInBytes: 0, udpOut: 0, udpOutBytes: 0 };
    assert.match(line.render(start, { ...start, at: 1000 }), / \| lanes 1\/2 dup 1\.5k \| /);
    const single: Observed = { ...fakeObserved(), lanes: () => ({ open: 1, wanted: 1 }) };
    assert.doesNotMatch(
      new StatusLine(single, { isTTY: true, columns: 200, write() {} }).render(start, start),
      /lanes/,
    );
  });

  it("shows who serves what with several senders (short fingerprints, standby), and a sender's mapping states", () => {
    const row = (sender: string, serving: string[], standby: string[], connected = true) => ({
      sender,
      peer: "192.0.2.1:40000",
      connected,
      serving,
      standby,
      toSender: 0,
      fromSender: 0,
    });
    const start = { at: 0, udpIn: 0, udpInBytes: 0, udpOut: 0, udpOutBytes: 0 };
    const render = (o: Observed) => new StatusLine(o, { isTTY: true, columns: 300, write() {} }).render(start, start);
    const two: Observed = {
      ...fakeObserved(),
      senders: () => [row("SHA256:abcdefghXYZ", ["dns", "ntp"], []), row("SHA256:12345678xyz", [], ["dns"], false)],
    };
    assert.match(render(two), / \| senders abcdefgh dns,ntp; 12345678 \(lost\) - standby dns \| /);
    const one: Observed = { ...fakeObserved(), senders: () => [row("SHA256:abcdefghXYZ", ["dns"], [])] };
    assert.doesNotMatch(render(one), /senders/);
    const sender: Observed = {
      ...fakeObserved(),
      role: "sender",
      serving: () => [
        { label: "dns", state: "serving" },
        { label: "ntp", state: "standby" },
      ],
    };
    assert.match(render(sender), / \| mappings dns serving, ntp standby \| /);
    const all: Observed = { ...fakeObserved(), role: "sender", serving: () => [{ label: "dns", state: "serving" }] };
    assert.doesNotMatch(render(all), /mappings/);
  });

  it("shows each open lane's RTT when more than one has measured it", () => {
    const laned: Observed = { ...fakeObserved(), lanes: () => ({ open: 2, wanted: 2 }), laneRows: () => TWO_LANES };
    const line = new StatusLine(laned, { isTTY: true, columns: 200, write() {} });
    const start = { at: 0, udpIn: 0, udpInBytes: 0, udpOut: 0, udpOutBytes: 0 };
    assert.match(line.render(start, { ...start, at: 1000 }), / \| lanes 2\/2 rtt 0\.5\/13 ms \| /);
  });

  it("says so when this side waits for the peer to admit its key, and shows no stale RTT", () => {
    const waiting: Observed = {
      ...fakeObserved({ rttMs: undefined }),
      role: "sender",
      peerConnected: () => false,
      phase: () => "waiting",
    };
    const line = new StatusLine(waiting, { isTTY: true, columns: 200, write() {} });
    const start = { at: 0, udpIn: 0, udpInBytes: 0, udpOut: 0, udpOutBytes: 0 };
    const text = line.render(start, { ...start, at: 1000 });
    assert.match(text, /^receiver connected, waiting for the receiver to admit this key \(its operator\?\) \| /);
    assert.match(text, /rtt -$/);
  });
});

describe("--metrics address", () => {
  it("binds loopback unless an address says otherwise", () => {
    assert.deepEqual(parseMetricsAddress("9100"), { host: "127.0.0.1", port: 9100 });
    assert.deepEqual(parseMetricsAddress(":9100"), { host: "127.0.0.1", port: 9100 });
    assert.deepEqual(parseMetricsAddress("0.0.0.0:9100"), { host: "0.0.0.0", port: 9100 });
    assert.deepEqual(parseMetricsAddress("[::1]:0"), { host: "::1", port: 0 });
    assert.throws(() => parseMetricsAddress("65536"), /out of range/);
    assert.throws(() => opsOptions({ metrics: ["1", "2"] }), /more than once/);
    assert.throws(() => opsOptions({ metrics: "" }), /needs a value/);
    assert.deepEqual(opsOptions({}), { metrics: undefined, logFormat: "text", quiet: false });
  });
});

describe("SIGUSR1 snapshot", () => {
  it("lists totals and every flow with its mapping, client and counters", () => {
    const text = snapshotText(fakeObserved({ udpIn: 3 }), 1500);
    assert.match(text, /^snapshot: sender connected, 1 flows, udp in 3 dg/);
    assert.match(text, /\n\s+flow\s+mapping\s+client\s+in dg/);
    assert.match(text, /\n\s+7\s+game\+3\s+192\.0\.2\.1:5353\s+3\s+300\s+2\s+200\s+1\.5 s\n$/);
  });

  it("lists each sender, what it serves and its traffic, when several may serve (text and JSON)", () => {
    const observed: Observed = {
      ...fakeObserved(),
      senders: () => [
        {
          sender: "SHA256:aaaa",
          peer: "192.0.2.1:4000",
          connected: true,
          serving: ["dns"],
          standby: [],
          toSender: 5,
          fromSender: 4,
        },
        {
          sender: "SHA256:bbbb",
          peer: undefined,
          connected: false,
          serving: [],
          standby: ["dns"],
          toSender: 0,
          fromSender: 0,
        },
      ],
    };
    const text = snapshotText(observed, 1500);
    assert.match(text, /\n {2}sender SHA256:aaaa 192\.0\.2\.1:4000 connected, serving dns, to it 5 dg, from it 4 dg\n/);
    assert.match(text, /\n {2}sender SHA256:bbbb - lost \(resume grace\), serving -, standby dns, to it 0 dg/);
    const records = snapshotJson(observed, "mcudpt receiver", 1500)
      .trim()
      .split("\n")
      .map((line) => JSON.parse(line));
    assert.deepEqual(
      records.filter((r) => r.msg === "sender").map((r) => [r.sender, r.serving, r.standby]),
      [
        ["SHA256:aaaa", ["dns"], []],
        ["SHA256:bbbb", [], ["dns"]],
      ],
    );
  });

  it("lists each lane, with its peer, state, RTT and counts, when the session has several", () => {
    const text = snapshotText({ ...fakeObserved(), laneRows: () => TWO_LANES }, 1500);
    assert.match(text, /\n {2}lane 1: 127\.0\.0\.1:4000 open, rtt 0\.5 ms, out 10 dg, in 9 dg, nudges 3\n/);
    assert.match(text, /\n {2}lane 2: 127\.0\.0\.1:4001 stalled, rtt 12\.6 ms, out 5 dg, in 4 dg, nudges 0\n/);
    assert.doesNotMatch(snapshotText({ ...fakeObserved(), laneRows: () => TWO_LANES.slice(0, 1) }, 1500), /lane 1/);
  });
});

describe("published manifests", () => {
  const versions = new Map([
    ["@mcudpt/core", "1.2.3"],
    ["@mcudpt/protocol", "1.2.0"],
  ]);
  it("drop the bun → src condition, src/ and scripts, and pin workspace:* to the real version", () => {
    const out = publishedManifest(
      {
        name: "@mcudpt/transport-node",
        version: "1.2.3",
        files: ["dist", "src"],
        exports: { ".": { types: "./dist/index.d.ts", bun: "./src/index.ts", import: "./dist/index.js" } },
        scripts: { build: "tsc" },
        dependencies: { "@mcudpt/core": "workspace:*" },
      },
      versions,
    );
    assert.deepEqual(out.exports, { ".": { types: "./dist/index.d.ts", import: "./dist/index.js" } });
    assert.deepEqual(out.files, ["dist"]);
    assert.deepEqual(out.dependencies, { "@mcudpt/core": "1.2.3" });
    assert.equal(out.scripts, undefined);
  });

  it("ship the CLI without dependencies (it is one bundle)", () => {
    const out = publishedManifest(
      {
        name: "mcudpt",
        version: "1.2.3",
        files: ["bin", "dist"],
        bin: { mcudpt: "./bin/mcudpt.js" },
        dependencies: { citty: "^0.2.2" },
      },
      versions,
    );
    assert.equal(out.dependencies, undefined);
    assert.deepEqual(out.bin, { mcudpt: "./bin/mcudpt.js" });
  });
});

describe("docs/cli.md", () => {
  it("is what `bun run docs:cli` writes from the flag definitions (run it after changing a flag)", () => {
    assert.equal(readFileSync(CLI_DOC, "utf8"), renderCliDoc(), "docs/cli.md is stale: run `bun run docs:cli`");
  });

  it("has a section for every command the CLI has (it says it documents every command)", () => {
    const main = readFileSync(join(ROOT, "apps", "cli", "src", "main.ts"), "utf8");
    const table = /const subCommands[^=]*= \{([^}]*)\}/.exec(main)?.[1] ?? "";
    const commands = [...table.matchAll(/^\s*(\w+):/gm)].map((m) => m[1]);
    assert.deepEqual(commands, ["receiver", "sender", "check", "demo", "keygen"]);
    assert.deepEqual(
      COMMANDS.map(([name]) => name),
      commands,
    );
    const doc = readFileSync(CLI_DOC, "utf8");
    for (const name of commands) assert.match(doc, new RegExp(`^## mcudpt ${name}$`, "m"));
    assert.match(doc, /\| `--out FILE` \|/, "keygen's flags");
  });
});

describe("metrics registry", () => {
  it("exports per-mapping flows, datagrams and bytes with the mapping's label", async () => {
    const { metricsRegistry } = await import("../../apps/cli/src/ops/metrics.ts");
    const text = await metricsRegistry(fakeObserved(), { version: "test" }).metrics();
    assert.match(text, /^mcudpt_mapping_flows\{mapping="dns"\} 1$/m);
    assert.match(text, /^mcudpt_mapping_datagrams_total\{mapping="dns",direction="in"\} 3$/m);
    assert.match(text, /^mcudpt_mapping_bytes_total\{mapping="dns",direction="out"\} 200$/m);
  });

  it("leaves out a gauge with no value yet (no RTT measured, no reload so far) instead of exporting 0", async () => {
    const { metricsRegistry } = await import("../../apps/cli/src/ops/metrics.ts");
    const fresh = await metricsRegistry(fakeObserved(), { version: "test" }).metrics();
    for (const name of [
      "mcudpt_rtt_seconds",
      "mcudpt_config_last_reload_successful",
      "mcudpt_config_last_reload_timestamp_seconds",
    ]) {
      assert.match(fresh, new RegExp(`^# TYPE ${name} gauge$`, "m"));
      assert.doesNotMatch(fresh, new RegExp(`^${name} `, "m"), `${name} has no sample yet`);
    }
    const at = new Date(1_700_000_000_000);
    const later = await metricsRegistry(
      {
        ...fakeObserved({ rttMs: 1.5 }),
        reloads: () => ({ ok: 0, failed: 1, last: { at, result: "failed" as const, message: "x" } }),
      },
      { version: "test" },
    ).metrics();
    assert.match(later, /^mcudpt_rtt_seconds 0\.0015$/m);
    assert.match(later, /^mcudpt_config_last_reload_successful 0$/m);
    assert.match(later, /^mcudpt_config_last_reload_timestamp_seconds 1700000000$/m);
  });

  it("exports each lane's RTT, stall, datagrams and nudges, labelled by its position in the session", async () => {
    const { metricsRegistry } = await import("../../apps/cli/src/ops/metrics.ts");
    const text = await metricsRegistry({ ...fakeObserved(), laneRows: () => TWO_LANES }, { version: "test" }).metrics();
    assert.match(text, /^mcudpt_lane_rtt_seconds\{lane="1"\} 0\.0005$/m);
    assert.match(text, /^mcudpt_lane_rtt_seconds\{lane="2"\} 0\.0126$/m);
    assert.match(text, /^mcudpt_lane_stalled\{lane="2"\} 1$/m);
    assert.match(text, /^mcudpt_lane_datagrams_total\{lane="1",direction="out"\} 10$/m);
    assert.match(text, /^mcudpt_lane_datagrams_total\{lane="2",direction="in"\} 4$/m);
    assert.match(text, /^mcudpt_lane_nudges_total\{lane="1"\} 3$/m);
  });
});
