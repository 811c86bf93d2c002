/**
 * The CLI's reload (apps/cli/src/reload.ts) against a stand-in role: what it hands the role from a
 * re-read --config file, what it refuses before the role is asked anything, the one line it logs,
 * the counts, the log level changed only by a reload that succeeded, and SIGHUPs that arrive during
 * a reload (one more reload, not one per signal). No sockets, no processes.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { type ReceiverReload, type SenderReload, UserError } from "@mcudpt/core";
import { problemsOf } from "../../apps/cli/src/check.ts";
import { receiverArgs, receiverLimits, senderArgs } from "../../apps/cli/src/commands.ts";
import { operations } from "../../apps/cli/src/ops/index.ts";
import { opsOptions } from "../../apps/cli/src/ops/options.ts";
import { type ReloadRecord, readFlags, rememberCommandLine, reloader } from "../../apps/cli/src/reload.ts";

const dir = mkdtempSync(join(tmpdir(), "mcudpt-reload-unit-"));
after(() => rmSync(dir, { recursive: true, force: true }));
const defs = { receiver: receiverArgs, sender: senderArgs };
const config = join(dir, "receiver.toml");
const BASE = 'udp = "127.0.0.1:40001"\ntcp = "127.0.0.1:40002"\nsecret = "s"\n';

/** A reloader for a receiver started from `config` with `typed` flags, around a stand-in role. */
function setup(typed: string[], role: { fail?: string; gate?: Promise<void> } = {}) {
  writeFileSync(config, `${BASE}idle-timeout = 60\n`, { mode: 0o600 });
  const flags = ["--config", config, ...typed];
  rememberCommandLine(flags);
  const lines: string[] = [];
  const ops = operations("mcudpt receiver", "info", opsOptions({}), {
    stderr: { write: (t) => lines.push(String(t).trimEnd()) },
  });
  const updates: Array<ReceiverReload | SenderReload> = [];
  const record: ReloadRecord = { ok: 0, failed: 0 };
  const { args } = readFlags("receiver", flags, defs, () => {});
  const reload = reloader({
    role: "receiver",
    listening: true,
    keyMode: false,
    defs,
    args,
    ops,
    record,
    clientLimits: receiverLimits,
    secret: "s",
    secured: (a) => a,
    validate: (f) => problemsOf("receiver", f),
    handle: {
      async reload(update) {
        updates.push(update);
        await role.gate;
        if (role.fail) throw new UserError(role.fail);
        return [];
      },
    },
  });
  return { reload, lines, updates, record, ops };
}

describe("reload (CLI)", () => {
  it("hands the role the re-read limits and mappings, logs one line saying what changed", async () => {
    const { reload, lines, updates, record } = setup([]);
    writeFileSync(config, `${BASE}idle-timeout = 30\nnew-flow-rate = 5\n`);
    await reload();
    assert.equal(updates.length, 1);
    const update = updates[0] as ReceiverReload;
    assert.equal(update.limits?.idleTimeoutMs, 30_000);
    assert.deepEqual(update.clientLimits, { newFlowsPerSecond: 5, amplificationLimit: 10 });
    // With its size: the role compares port ranges whole (a range resized is not "nothing changed").
    assert.deepEqual(update.mappings, [{ name: undefined, udp: { host: "127.0.0.1", port: 40001 }, ports: 1 }]);
    assert.equal(update.tls, undefined);
    assert.equal(lines.length, 1);
    assert.match(
      lines[0],
      /reloaded the configuration \(SIGHUP\): --idle-timeout 60 → 30; --new-flow-rate \(default\) → 5$/,
    );
    assert.deepEqual([record.ok, record.failed, record.last?.result], [1, 0, "ok"]);
    // Again, unchanged: nothing to say but that.
    await reload();
    assert.match(lines[1], /reloaded the configuration \(SIGHUP\): nothing changed$/);
    // A range: the role is told its size (refusing it is the role's part: tests/conformance/ranges.test.ts).
    writeFileSync(config, BASE.replace("127.0.0.1:40001", "127.0.0.1:40001-40004"));
    await reload();
    assert.deepEqual((updates[2] as ReceiverReload).mappings?.[0]?.ports, 4);
  });

  it("a flag typed on the command line wins over the file's, as at start", async () => {
    const { reload, updates, lines } = setup(["--idle-timeout", "20"]);
    writeFileSync(config, `${BASE}idle-timeout = 30\n`);
    await reload();
    assert.equal(updates[0].limits?.idleTimeoutMs, 20_000);
    assert.match(lines[0], /nothing changed$/);
  });

  it("refuses, before the role is asked, what check refuses and what needs a restart: one line each", async () => {
    const { reload, lines, updates, record } = setup([]);
    const cases: Array<[string, RegExp]> = [
      [`${BASE}idle-timeout = "soon"\n`, /--idle-timeout: "soon" is not a positive number of seconds/],
      [`${BASE}max-flow = 3\nbogus = 1\n`, /"max-flow" is not a setting .*\(and 1 more problem\)$/],
      [
        `${BASE}keepalive = 5\nhandshake-timeout = 3\n`,
        /--keepalive and --handshake-timeout changed: those need a restart$/,
      ],
      [BASE.replace('secret = "s"', 'secret = "t"'), /--secret changed: that needs a restart$/],
    ];
    for (const [text, why] of cases) {
      writeFileSync(config, text);
      await reload();
      assert.match(lines.at(-1) ?? "", /error: reload \(SIGHUP\) failed, the running configuration is kept: /);
      assert.match(lines.at(-1) ?? "", why);
    }
    assert.equal(lines.length, cases.length);
    assert.equal(updates.length, 0);
    assert.deepEqual([record.ok, record.failed, record.last?.result], [0, cases.length, "failed"]);
  });

  it("a --secret-file whose content changed needs a restart", async () => {
    const secretFile = join(dir, "secret");
    writeFileSync(secretFile, "s\n", { mode: 0o600 });
    const { reload, lines, updates } = setup(["--secret-file", secretFile]);
    writeFileSync(secretFile, "rotated\n");
    await reload();
    assert.match(
      lines[0],
      /failed, the running configuration is kept: the shared secret changed: that needs a restart$/,
    );
    assert.equal(updates.length, 0);
  });

  it("a role that refuses the update: one line, counted, and the log level stays", async () => {
    const { reload, lines, record, ops } = setup([], {
      fail: "adding or removing mappings needs a restart (added #2)",
    });
    writeFileSync(config, `${BASE}verbose = true\n`);
    await reload();
    assert.equal(lines.length, 1);
    assert.match(lines[0], /failed, the running configuration is kept: adding or removing mappings needs a restart/);
    assert.equal(record.failed, 1);
    ops.logger.log("debug", "not shown");
    assert.equal(lines.length, 1);
  });

  it("a successful reload changes the log level", async () => {
    const { reload, lines, ops } = setup([]);
    writeFileSync(config, `${BASE}verbose = true\n`);
    await reload();
    ops.logger.log("debug", "shown now");
    assert.match(lines.at(-1) ?? "", /debug: shown now$/);
  });

  it("SIGHUPs during a reload make one more reload after it, not one each", async () => {
    let open!: () => void;
    const gate = new Promise<void>((resolve) => (open = resolve));
    const { reload, updates, record } = setup([], { gate });
    const first = reload();
    const second = reload();
    const third = reload();
    open();
    await Promise.all([first, second, third]);
    assert.equal(record.ok, 2);
    assert.equal(updates.length, 2);
  });
});
