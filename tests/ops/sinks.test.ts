/**
 * Issue 12 item 1, the sinks: whatever text reaches a log line (text or JSON), the operator prompt,
 * the status line, the SIGUSR1 snapshot or a metric label comes out as ONE printable line of bounded
 * length. Each sink gets the same hostile strings: newlines that forge a log line, CR, C0/C1 controls,
 * ANSI escapes, U+2028/U+2029, a bidi override, zero-width characters, what invalid UTF-8 decodes to,
 * lone surrogates, and 100 KB strings. Then the protocol path: a raw peer on a real receiver sending
 * CLOSE before HELLO with a hostile reason, and with invalid UTF-8 (refused with a protocol error),
 * leaves one clean line each. Loopback only, ephemeral ports, bounded waits.
 */
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { PassThrough } from "node:stream";
import { describe, it } from "node:test";
import { LOG_LINE_MAX, logLine, printableLine, startReceiver, stderrLogger } from "@mcudpt/core";
import {
  CloseCode,
  concatBytes,
  encodeFrame,
  type Frame,
  FrameType,
  type LogLevel,
  PREFACE,
  type Stats,
  zeroDrops,
} from "@mcudpt/protocol";
import { PromptLine, stdinApprover } from "../../apps/cli/src/approval.ts";
import { operations } from "../../apps/cli/src/ops/index.ts";
import { type LogFormat, makeLogger } from "../../apps/cli/src/ops/logging.ts";
import { LABEL_VALUE_MAX, labelValue, metricsRegistry } from "../../apps/cli/src/ops/metrics.ts";
import type { MappingRow, Observed } from "../../apps/cli/src/ops/observe.ts";
import { snapshotJson, snapshotText } from "../../apps/cli/src/ops/snapshot.ts";
import { StatusLine } from "../../apps/cli/src/ops/status.ts";
import { isFrame, rawConnect } from "../helpers/raw-peer.js";
import { availableTransports } from "../helpers/transports.js";
import { eventually, LOOPBACK } from "../helpers/tunnel.js";

/** The reproduction: a fake stand-alone "accepted" line, then a colour escape. */
const FORGED = "bye\n2026-01-01T00:00:00.000Z mcudpt receiver: sender 203.0.113.9:4444 accepted …\n\x1b[31mred\x1b[0m";

/** What a lenient decoder makes of invalid UTF-8 (the protocol's own decoder refuses it; see below). */
const INVALID_UTF8 = new TextDecoder().decode(Uint8Array.of(0x61, 0xff, 0xfe, 0xc3, 0x28, 0xed, 0xa0, 0x80, 0x62));

const HOSTILE: Record<string, string> = {
  "forged log line": FORGED,
  "CR (overwrites the line on a terminal)": "progress 100%\rprogress  0% (lies)",
  "C0 and C1 controls, DEL": "nul\0bel\x07bs\x08vt\x0bff\x0cdel\x7fnel\x85csi\x9b31m",
  "ANSI escapes (colour, title, clear screen)": "\x1b[31mred\x1b[0m\x1b]0;pwned\x07\x1b[2J\x1b[H",
  "U+2028 and U+2029": "one\u2028two\u2029three",
  "bidi override U+202E and isolates": "invoice\u202egpj.exe \u2066x\u2069",
  "zero-width characters and BOM": "a\u200bb\u200dc\ufeffd",
  "invalid UTF-8, decoded leniently": INVALID_UTF8,
  "lone surrogates": "x\ud800y\udfffz\udbff",
  "100 KB of text": "A".repeat(100_000),
  "100 KB of newlines": "\n".repeat(100_000),
  "100 KB of escapes": "\x1b[31m".repeat(20_000),
  "100 KB of astral characters": "😀".repeat(25_000),
};

/** Any character that may break a line, move the cursor, or make text lie about itself; lone surrogates. */
const UNSAFE = /[\u0000-\u001f\u007f-\u009f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]|[\ud800-\udfff]/u;

function assertClean(text: string, what: string, maxLength: number): void {
  const bad = UNSAFE.exec(text);
  assert.equal(
    bad,
    null,
    `${what}: raw U+${bad?.[0].codePointAt(0)?.toString(16)} at ${bad?.index} in ${JSON.stringify(text.slice(0, 200))}`,
  );
  assert.ok(text.length <= maxLength, `${what}: ${text.length} characters, more than ${maxLength}`);
  // Well-formed: encodes to UTF-8 and back as itself (no lone surrogate turned into U+FFFD on the way).
  assert.equal(Buffer.from(text, "utf8").toString("utf8"), text, `${what}: not well-formed`);
}

/** A stream that keeps what was written, write by write. */
function capture() {
  const writes: string[] = [];
  return { writes, write: (text: string) => writes.push(text), text: () => writes.join("") };
}

/** The note a long message ends with (within the bound). */
const NOTE = /… \((\d+) more characters\)$/;

describe("logLine (the sinks' one helper)", () => {
  it("leaves ordinary text alone, Unicode and U+FFFD included", () => {
    for (const text of ["receiver listening: UDP 127.0.0.1:53", "dns-é-名-\ufffd 😀", 'quote " and \\ kept'])
      assert.equal(logLine(text), text);
  });

  it("escapes every unsafe character, lone surrogates too, in one printable line", () => {
    assert.equal(logLine("a\nb\rc\x1b[31m"), "a\\nb\\rc\\x1b[31m");
    assert.equal(logLine("x\ud800y"), "x\\u{d800}y");
    assert.equal(logLine("\u202e\u2028"), "\\u{202e}\\u{2028}");
    for (const [name, text] of Object.entries(HOSTILE)) assertClean(logLine(text), name, LOG_LINE_MAX);
  });

  it("bounds a long message, never cutting an escape or a surrogate pair, and says how much was left out", () => {
    const long = logLine("A".repeat(100_000));
    assert.ok(long.length <= LOG_LINE_MAX, "the note included");
    const kept = long.replace(NOTE, "");
    assert.match(kept, /^A{4000,}$/);
    assert.equal(long, `${kept}… (${100_000 - kept.length} more characters)`);
    const escapes = logLine("\x1b".repeat(100_000));
    assert.ok(escapes.length <= LOG_LINE_MAX);
    assert.match(escapes.replace(NOTE, ""), /^(\\x1b)+$/, "only whole escapes");
    const astral = logLine("😀".repeat(25_000));
    const shown = astral.replace(NOTE, "");
    assert.match(shown, /^(😀)+$/u, "only whole characters");
    assert.equal(Number(NOTE.exec(astral)?.[1]), 25_000 - shown.length / 2);
  });

  it("is idempotent: a line it made passes through it (or another sink) unchanged", () => {
    for (const [name, text] of Object.entries(HOSTILE)) {
      const once = logLine(text);
      assert.equal(logLine(once), once, name);
      const short = logLine(text, 128);
      assert.ok(short.length <= 128, name);
      assert.equal(logLine(short, 128), short, name);
    }
  });

  it("printableLine escapes without bounding", () => {
    assert.equal(printableLine("\x1b".repeat(10_000)).length, 40_000);
  });
});

describe("text log sink (stderrLogger, --log-format text)", () => {
  for (const [name, message] of Object.entries(HOSTILE)) {
    it(`writes ${name} as one line, no forged line start, no raw control bytes`, () => {
      const out = capture();
      const logger = stderrLogger({ name: "mcudpt receiver", level: "debug", stream: out });
      logger.log("warn", `127.0.0.1:4444 closed the connection: normal (${message})`);
      assert.equal(out.writes.length, 1, "one write per event");
      const line = out.writes[0];
      assert.ok(line.endsWith("\n"));
      assert.equal(line.indexOf("\n"), line.length - 1, "exactly one line");
      const body = line.slice(0, -1);
      assert.match(body, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z mcudpt receiver: warn: 127\.0\.0\.1:4444 closed/);
      assertClean(body, name, 100 + LOG_LINE_MAX);
    });
  }

  it("keeps the forged text visibly inside the real line, escaped", () => {
    const out = capture();
    stderrLogger({ name: "mcudpt receiver", timestamps: false, stream: out }).log("info", `closed: (${FORGED})`);
    assert.equal(
      out.text(),
      "mcudpt receiver: closed: (bye\\n2026-01-01T00:00:00.000Z mcudpt receiver: sender 203.0.113.9:4444 accepted …\\n\\x1b[31mred\\x1b[0m)\n",
    );
  });

  it("is used by the CLI's text format", () => {
    const out = capture();
    makeLogger("mcudpt receiver", "info", "text", out).log("info", FORGED);
    assert.equal(out.writes.length, 1);
    assert.equal(out.text().split("\n").length, 2, "one line and its newline");
    assertClean(out.text().slice(0, -1), "text format", 200 + LOG_LINE_MAX);
  });
});

describe("JSON log sink (--log-format json)", () => {
  for (const [name, message] of Object.entries(HOSTILE)) {
    it(`writes ${name} as exactly one JSON.parse-able line with a printable msg`, () => {
      const out = capture();
      const logger = makeLogger("mcudpt receiver", "debug", "json", out);
      logger.log("warn", `closed (${message})`);
      logger.log("info", "next event");
      assert.equal(out.writes.length, 2, "one write per event");
      const lines = out.text().split("\n");
      assert.equal(lines.pop(), "", "ends with a newline");
      assert.equal(lines.length, 2, "exactly one line per event");
      for (const line of lines) {
        // The raw line itself: no control byte, no U+2028/U+2029 that a JavaScript-based tool would
        // split on, no lone surrogate (JSON.stringify would have to write \udXXX).
        assertClean(line, `${name} (raw JSON line)`, 200 + 2 * LOG_LINE_MAX);
        assert.doesNotMatch(line, /\\ud[89ab]/i, "no escaped lone surrogate either");
      }
      const [first, second] = lines.map((line) => JSON.parse(line));
      assert.deepEqual(Object.keys(first), ["time", "level", "name", "msg"]);
      assert.equal(first.level, "warn");
      assert.equal(first.name, "mcudpt receiver");
      assert.equal(first.msg, logLine(`closed (${message})`));
      assertClean(first.msg, `${name} (msg)`, LOG_LINE_MAX);
      assert.equal(second.msg, "next event");
    });
  }

  it("keeps the level filter", () => {
    const out = capture();
    makeLogger("mcudpt sender", "warn", "json", out).log("info", FORGED);
    assert.equal(out.writes.length, 0);
  });
});

/**
 * An operator's terminal: stdout (the prompt) and stderr (log lines) both land on `screen`, in order.
 * The logger is the CLI's own (operations(): the text format, around the open prompt).
 */
function terminal(level: LogLevel = "debug") {
  const screen = capture();
  const prompt = new PromptLine(screen, () => true);
  const ops = operations(
    "mcudpt receiver",
    level,
    { metrics: undefined, logFormat: "text", quiet: true },
    {
      prompt,
      stderr: screen,
    },
  );
  const log = (message: string, lineLevel: LogLevel = "warn") => ops.logger.log(lineLevel, message);
  return { screen, prompt, log };
}

describe("operator prompt sink (approval.ts)", () => {
  for (const [name, hostile] of Object.entries(HOSTILE)) {
    it(`shows a peer address with ${name} as one printable, bounded question`, async () => {
      const { screen, prompt } = terminal();
      const input = new PassThrough();
      const ask = stdinApprover("sender", { input, prompt });
      const answer = ask(
        { peer: `203.0.113.9:4444${hostile}`, fingerprint: `SHA256:${hostile}` },
        new AbortController().signal,
      );
      await eventually(() => screen.writes.length > 0, "the question");
      const question = screen.text();
      assert.match(question, /^Sender connection from 203\.0\.113\.9:4444/);
      assert.ok(question.endsWith("Accept? [yes/no] "), JSON.stringify(question.slice(-60)));
      assertClean(question, name, 1024);
      input.write("yes\n");
      assert.equal(await answer, true);
      // From a pipe the answer is echoed; the screen is then the question, the answer, a newline.
      assert.equal(screen.text(), `${question}yes\n`);
    });
  }

  it("echoes a piped answer printable, and names a peer that went away printable", async () => {
    const { screen, prompt } = terminal();
    const input = new PassThrough();
    const ask = stdinApprover("sender", { input, prompt });
    const first = ask({ peer: "a\x1b[2Jb", fingerprint: "SHA256:x" }, new AbortController().signal);
    input.write("\x1b[31mmaybe\n");
    await eventually(() => screen.text().includes("Please type"), "asked again");
    input.write("no\n");
    assert.equal(await first, false);
    const cancel = new AbortController();
    const second = ask({ peer: "c\r\nd", fingerprint: "SHA256:y" }, cancel.signal);
    await eventually(() => prompt.open, "second question open");
    cancel.abort();
    assert.equal(await second, false);
    const lines = screen.text().split("\n");
    assert.equal(lines.pop(), "");
    for (const line of lines) assertClean(line, "prompt transcript", 2000);
    assert.ok(
      lines.some((line) => line.endsWith("Accept? [yes/no] \\x1b[31mmaybe")),
      JSON.stringify(lines),
    );
    assert.ok(
      lines.includes("(question withdrawn: sender c\\r\\nd went away before an answer)"),
      JSON.stringify(lines),
    );
  });

  it("issue 18 item 9: a log line while the prompt is open starts on its own line, and the prompt is re-printed", async () => {
    const { screen, prompt, log } = terminal("info");
    const input = new PassThrough();
    const ask = stdinApprover("sender", { input, prompt });
    const answer = ask({ peer: "192.0.2.7:5000", fingerprint: "SHA256:abc" }, new AbortController().signal);
    await eventually(() => prompt.open, "question open");
    log(`drops: 3 datagrams dropped (backpressure) ${FORGED}`);
    log("below the log level: not written, and the prompt left alone", "debug");
    log("another warning");
    input.write("yes\n");
    assert.equal(await answer, true);
    assert.equal(prompt.open, false);
    log("after the answer");
    const question = "Sender connection from 192.0.2.7:5000, key SHA256:abc. Accept? [yes/no] ";
    const lines = screen.text().split("\n");
    assert.equal(lines.pop(), "");
    // Every log line stands alone; the question is never glued to one.
    const logLines = lines.filter((line) => /mcudpt receiver: warn:/.test(line));
    assert.equal(logLines.length, 3);
    for (const line of logLines) assert.match(line, /^\d{4}-\d\d-\d\dT[\d:.]+Z mcudpt receiver: warn: /);
    assert.deepEqual(
      lines.map((line) => (logLines.includes(line) ? "LOG" : line)),
      [question, "LOG", question, "LOG", `${question}yes`, "LOG"],
    );
  });

  it("does not touch stdout around log lines when they go elsewhere (another file or pipe)", () => {
    const out = capture();
    const prompt = new PromptLine(out, () => false);
    prompt.ask("Accept? [yes/no] ");
    let logged = 0;
    prompt.interrupt(() => logged++);
    assert.equal(logged, 1);
    assert.deepEqual(out.writes, ["Accept? [yes/no] "]);
  });
});

function fakeStats(drops: Record<string, number> = {}): Stats {
  return {
    udpIn: 1,
    udpInBytes: 10,
    udpOut: 1,
    udpOutBytes: 10,
    flowsOpened: 1,
    flowsClosed: 0,
    flowsEvicted: 0,
    accepted: 1,
    handshakeFailures: 0,
    drops: { backpressure: 0, ...drops } as Stats["drops"],
    dropsWithoutMapping: zeroDrops(),
    rttMs: 2,
  };
}

/** A view whose every string (client, mapping name, even a drop reason) is hostile. */
function hostileObserved(hostile: string, mappings: MappingRow[] = []): Observed {
  const flows = [
    {
      id: 1,
      client: `192.0.2.1:53${hostile}`,
      mapping: `game${hostile}`,
      datagramsIn: 1,
      bytesIn: 2,
      datagramsOut: 3,
      bytesOut: 4,
      dropped: 0,
      lastActive: 0,
    },
  ];
  return {
    role: "receiver",
    transport: "node",
    stats: fakeStats({ [`reason${hostile}`]: 5 }),
    peerConnected: () => true,
    flowCount: () => flows.length,
    reconnects: () => 0,
    flows: () => flows,
    mappings: () => mappings,
  };
}

describe("status line sink (status.ts)", () => {
  for (const [name, hostile] of Object.entries(HOSTILE)) {
    it(`draws ${name} as one printable line within the terminal width`, () => {
      const writes: string[] = [];
      const columns = 120;
      const line = new StatusLine(hostileObserved(hostile), { isTTY: true, columns, write: (t) => writes.push(t) });
      const sample = { at: 0, udpIn: 0, udpInBytes: 0, udpOut: 0, udpOutBytes: 0 };
      const text = line.render(sample, { ...sample, at: 1000 });
      assert.match(text, /^sender up \| 1 flows/);
      assertClean(text, name, columns - 1);
      // What is written is the line after the status line's own \r\x1b[K, nothing else raw.
      line.update();
      for (const write of writes) assertClean(write.replace(/^\r\x1b\[K/, ""), `${name} (written)`, columns);
    });
  }
});

describe("SIGUSR1 snapshot sink (snapshot.ts)", () => {
  for (const [name, hostile] of Object.entries(HOSTILE)) {
    it(`lists a client with ${name} as printable lines (text) and one JSON line per record`, () => {
      const observed = hostileObserved(hostile);
      const lines = snapshotText(observed, 1000).split("\n");
      assert.equal(lines.pop(), "");
      assert.equal(lines.length, 3, "totals, the table header, one flow");
      for (const line of lines) assertClean(line, name, 200 + LOG_LINE_MAX);
      assert.match(lines[2], /^ +1 {2}game.* 192\.0\.2\.1:53/);
      const records = snapshotJson(observed, "mcudpt receiver", 1000).split("\n");
      assert.equal(records.pop(), "");
      assert.equal(records.length, 2, "the totals and one flow");
      for (const record of records) assertClean(record, `${name} (JSON)`, 4 * LOG_LINE_MAX);
      const flow = JSON.parse(records[1]);
      assert.equal(flow.msg, "flow");
      assertClean(flow.client, `${name} (client field)`, LOG_LINE_MAX);
      assertClean(flow.mapping, `${name} (mapping field)`, LOG_LINE_MAX);
    });
  }
});

/** One sample line of Prometheus text: its name, labels (unescaped as a scraper would) and value. */
function parseSample(line: string): { name: string; labels: Record<string, string>; value: string } {
  const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
  assert.ok(match, `not a sample line: ${JSON.stringify(line.slice(0, 200))}`);
  const labels: Record<string, string> = {};
  const body = match[2] ?? "";
  const pair = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)/y;
  for (let at = 0; at < body.length; ) {
    pair.lastIndex = at;
    const found = pair.exec(body);
    assert.ok(found, `bad label syntax at ${at}: ${JSON.stringify(body.slice(at, at + 80))}`);
    labels[found[1]] = found[2].replace(/\\([\\"n])/g, (_, c) => (c === "n" ? "\n" : c));
    at = pair.lastIndex;
  }
  return { name: match[1], labels, value: match[3] };
}

function mappingRow(name: string): MappingRow {
  return {
    name,
    label: name,
    flows: 1,
    flowsOpened: 2,
    udpIn: 3,
    udpInBytes: 4,
    udpOut: 5,
    udpOutBytes: 6,
    drops: zeroDrops(),
  };
}

describe("metrics label sink (metrics.ts labelValue)", () => {
  it("prom-client itself escapes only backslash, quote and newline in label values (hence labelValue)", async () => {
    // prom-client is the CLI's dependency, resolved from there.
    const { Gauge, Registry } = createRequire(new URL("../../apps/cli/package.json", import.meta.url))(
      "prom-client",
    ) as typeof import("../../apps/cli/node_modules/prom-client/index.js");
    const registry = new Registry();
    new Gauge({ name: "t", help: "t", labelNames: ["v"], registers: [registry] }).set({ v: 'a"b\\c\nd\re\x1bf' }, 1);
    const text = await registry.metrics();
    assert.ok(text.includes('t{v="a\\"b\\\\c\\nd\re\x1bf"} 1'), JSON.stringify(text));
  });

  it("labelValue: printable, bounded, ordinary names unchanged", () => {
    assert.equal(labelValue("dns"), "dns");
    assert.equal(labelValue("#2"), "#2");
    assert.equal(labelValue("a\r\x1b[31m"), "a\\r\\x1b[31m");
    for (const [name, hostile] of Object.entries(HOSTILE)) assertClean(labelValue(hostile), name, LABEL_VALUE_MAX);
  });

  for (const [name, hostile] of Object.entries(HOSTILE)) {
    it(`scrapes a mapping named with ${name} (and a hostile info label) as valid, small, printable text`, async () => {
      const observed = hostileObserved(hostile, [mappingRow(hostile), mappingRow("dns")]);
      const text = await metricsRegistry(observed, { version: `1.0${hostile}`, runtime: "test" }).metrics();
      assert.ok(text.length < 20_000, `${text.length} bytes scraped`);
      const lines = text.split("\n");
      assert.equal(lines.pop(), "");
      const samples = lines.filter((line) => line !== "" && !line.startsWith("#")).map(parseSample);
      for (const line of lines) assertClean(line, name, 2000);
      for (const sample of samples)
        for (const value of Object.values(sample.labels)) assertClean(value, `${name} (label value)`, 2000);
      const flows = samples.filter((s) => s.name === "mcudpt_mapping_flows");
      assert.deepEqual(
        flows.map((s) => s.labels.mapping),
        [labelValue(hostile), "dns"],
      );
      const info = samples.find((s) => s.name === "mcudpt_info");
      assert.equal(info?.labels.version, labelValue(`1.0${hostile}`));
      const drops = samples.filter((s) => s.name === "mcudpt_drops_total").map((s) => s.labels.reason);
      assert.ok(drops.includes(labelValue(`reason${hostile}`)), JSON.stringify(drops));
    });
  }

  it("two long names alike in their first characters stay two series", async () => {
    const long = "m".repeat(10_000);
    const observed = hostileObserved("", [mappingRow(`${long}-a`), mappingRow(`${long}-b`)]);
    const text = await metricsRegistry(observed, { version: "test" }).metrics();
    const names = text
      .split("\n")
      .filter((line) => line.startsWith("mcudpt_mapping_datagrams_total{"))
      .map((line) => parseSample(line).labels.mapping);
    assert.equal(names.length, 4, "two mappings, two directions");
    assert.equal(new Set(names).size, 2);
    for (const value of names) assert.ok(value.length <= LABEL_VALUE_MAX);
  });
});

/** A CLOSE frame whose message bytes are given as they are: here, not valid UTF-8. */
function rawClose(code: number, message: Uint8Array): Uint8Array {
  const body = concatBytes(Uint8Array.of(code >> 8, code & 0xff), message);
  const length = new Uint8Array(4);
  new DataView(length.buffer).setUint32(0, body.length);
  return concatBytes(Uint8Array.of(FrameType.Close), length, body);
}

type CloseFrame = Extract<Frame, { type: typeof FrameType.Close }>;

describe("the protocol path into the sinks: a real receiver, a raw peer before HELLO", () => {
  const [transport] = availableTransports();
  for (const format of ["text", "json"] as LogFormat[]) {
    it(`--log-format ${format}: a hostile CLOSE reason and an invalid UTF-8 CLOSE leave one clean line each`, {
      timeout: 30_000,
    }, async () => {
      const out = capture();
      const receiver = await startReceiver({
        transport,
        udp: { host: LOOPBACK, port: 0 },
        tcp: { host: LOOPBACK, port: 0 },
        config: { secret: "sinks-secret", handshakeTimeoutMs: 5000 },
        logger: makeLogger("mcudpt receiver", "debug", format, out),
      });
      try {
        const lines = () => out.text().split("\n").slice(0, -1);
        const about = (port: number) =>
          lines().filter((line) => new RegExp(`:${port}(?!\\d)`).test(line) && !/connection from/.test(line));

        const forger = await rawConnect(receiver.tcpPort);
        forger.write(
          concatBytes(PREFACE, encodeFrame({ type: FrameType.Close, code: CloseCode.Normal, message: FORGED })),
        );
        await forger.whenClosedWithin(5000, "the forger's connection closed");
        await eventually(() => about(forger.localPort).length > 0, "a line about the forger");

        const invalid = await rawConnect(receiver.tcpPort);
        invalid.write(
          concatBytes(PREFACE, rawClose(CloseCode.Normal, Uint8Array.of(0x62, 0x79, 0xff, 0xfe, 0x0a, 0x1b))),
        );
        await invalid.whenClosedWithin(5000, "the invalid UTF-8 peer's connection closed");
        await eventually(() => about(invalid.localPort).length > 0, "a line about the invalid UTF-8 peer");
        // Refused with a protocol error, told so in a CLOSE of its own.
        const refusal = await invalid.waitFrame(isFrame(FrameType.Close), "the receiver's CLOSE");
        assert.equal((refusal as CloseFrame).code, CloseCode.ProtocolError);

        assert.equal(out.writes.length, lines().length, "one line per write, one write per event");
        for (const line of lines()) {
          assertClean(line, `${format} line`, 2 * (200 + LOG_LINE_MAX));
          if (format === "json") JSON.parse(line);
          else assert.match(line, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z mcudpt receiver: /);
        }
        assert.equal(lines().filter((line) => /^2026-01-01T00:00:00\.000Z/.test(line)).length, 0, "no forged line");
        assert.equal(about(forger.localPort).length, 1, JSON.stringify(about(forger.localPort)));
        assert.equal(about(invalid.localPort).length, 1, JSON.stringify(about(invalid.localPort)));
        assert.match(about(invalid.localPort)[0], /not valid UTF-8/);
      } finally {
        await receiver.close();
      }
    });
  }
});
