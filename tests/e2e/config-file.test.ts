/**
 * --config FILE: TOML and JSON files become the same parsed arguments as the equivalent flags
 * (compared through citty's own parser), command-line precedence, every one-line error, the
 * exposed-secret warning; then the built CLI, receiver and sender, run from the example files in
 * contrib/config and pass a datagram. Files live in temp dirs; MCUDPT_CONFIG_DIR too.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { chmodSync, copyFileSync, readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { pathToFileURL } from "node:url";
import { receiverArgs, senderArgs } from "../../apps/cli/src/commands.ts";
import {
  explainConfigError,
  parseConfigText,
  REPEATABLE_FLAGS,
  settingsToArgv,
  withConfigFile,
} from "../../apps/cli/src/config-file.ts";
import {
  CLI,
  eventually,
  freePort,
  killAll,
  ROOT,
  startCli,
  startEcho,
  stopWith,
  udpRequest,
} from "../helpers/cli-process.ts";
import { scratchDir } from "../helpers/scratch.ts";

// citty is the CLI's dependency, not the test tree's: load the very copy the CLI resolves.
const cittyPath = createRequire(join(ROOT, "apps", "cli", "package.json")).resolve("citty");
const { parseArgs } = (await import(pathToFileURL(cittyPath).href)) as typeof import("citty");

const DEFS = { receiver: receiverArgs, sender: senderArgs };
const dir = scratchDir("mcudpt-config-");

function file(name: string, text: string, mode = 0o600): string {
  const path = join(dir, name);
  writeFileSync(path, text);
  chmodSync(path, mode);
  return path;
}

/** What citty parses from `argv` with `--config` applied, for `role`. */
function parsed(role: "receiver" | "sender", argv: string[], warnings: string[] = []) {
  return parseArgs(
    withConfigFile(argv, { role, defs: DEFS }, (line) => warnings.push(line)),
    DEFS[role],
  );
}

function throwsLine(fn: () => unknown, pattern: RegExp): void {
  assert.throws(fn, (error: Error) => {
    assert.equal(error.name, "UserError");
    assert.doesNotMatch(error.message, /\n/, "one line");
    assert.match(error.message, pattern);
    return true;
  });
}

describe("--config: files become flags", () => {
  it("TOML: strings, numbers, booleans and a list equal the same flags typed", () => {
    const path = file(
      "receiver.toml",
      [
        "# a comment",
        'tcp = "127.0.0.1:5353"',
        "idle-timeout = 30",
        "max-flows = 100",
        'max-buffer = "512k"',
        "verbose = true",
        "tls = false",
        'transport = "node"',
        "keepalive = 2.5",
      ].join("\n"),
    );
    const typed = parseArgs(
      [
        "--config",
        path,
        "--tcp",
        "127.0.0.1:5353",
        "--idle-timeout",
        "30",
        "--max-flows",
        "100",
        "--max-buffer",
        "512k",
        "--verbose",
        "--transport",
        "node",
        "--keepalive",
        "2.5",
      ],
      receiverArgs,
    );
    assert.deepEqual(parsed("receiver", ["--config", path]), typed);
  });

  it("JSON: the same keys and values", () => {
    const path = file(
      "sender.json",
      JSON.stringify({ udp: "10.0.0.53:53", tcp: "127.0.0.1:5353", "idle-timeout": 30, "proxy-protocol": true }),
    );
    assert.deepEqual(
      parsed("sender", ["--config", path]),
      parseArgs(
        [
          "--config",
          path,
          "--udp",
          "10.0.0.53:53",
          "--tcp",
          "127.0.0.1:5353",
          "--idle-timeout",
          "30",
          "--proxy-protocol",
        ],
        senderArgs,
      ),
    );
  });

  it("a repeatable flag takes a list: udp = [a, b] is --udp a --udp b", () => {
    assert.ok(REPEATABLE_FLAGS.has("udp"));
    const tokens = settingsToArgv(parseConfigText('udp = ["dns=:53", "ntp=:123"]', "x.toml"), "x.toml", {
      role: "receiver",
      defs: DEFS,
    });
    assert.deepEqual(tokens.get("udp"), ["--udp=dns=:53", "--udp=ntp=:123"]);
    // citty reads `--udp=dns=:53` as the value "dns=:53", exactly as `--udp dns=:53`.
    assert.deepEqual(parseArgs(["--udp=dns=:53"], receiverArgs).udp, parseArgs(["--udp", "dns=:53"], receiverArgs).udp);
  });

  it("a comma-separated flag takes a list too: ws-trusted-proxy = [a, b] is --ws-trusted-proxy a,b", () => {
    const toml = parseConfigText(
      'tcp = "ws://127.0.0.1:8080/m"\nws-trusted-proxy = ["127.0.0.1", "::1"]\nredundant-mappings = ["game", "voip"]',
      "x.toml",
    );
    const tokens = settingsToArgv(toml, "x.toml", { role: "receiver", defs: DEFS });
    assert.deepEqual(tokens.get("ws-trusted-proxy"), ["--ws-trusted-proxy=127.0.0.1,::1"]);
    assert.deepEqual(tokens.get("redundant-mappings"), ["--redundant-mappings=game,voip"]);
    const json = settingsToArgv(parseConfigText('{"ws-trusted-proxy": "10.0.0.0/8"}', "x.json"), "x.json", {
      role: "sender",
      defs: DEFS,
    });
    assert.deepEqual(json.get("ws-trusted-proxy"), ["--ws-trusted-proxy=10.0.0.0/8"]);
    for (const bad of ["ws-trusted-proxy = []", "ws-trusted-proxy = [1, 2]"]) {
      throwsLine(
        () => settingsToArgv(parseConfigText(bad, "bad.toml"), "bad.toml", { role: "receiver", defs: DEFS }),
        /^config file bad\.toml: "ws-trusted-proxy" must list one or more strings \(or be one "a,b" string\)$/,
      );
    }
  });

  it("another extension: JSON first, then TOML", () => {
    const json = file("settings.conf", '{"idle-timeout": 5}');
    const toml = file("settings.cfg", "idle-timeout = 6");
    assert.equal(parsed("receiver", ["--config", json])["idle-timeout"], "5");
    assert.equal(parsed("receiver", ["--config", toml])["idle-timeout"], "6");
  });

  it("relative FILE values are relative to the config file's directory; absolute ones unchanged", () => {
    const path = file("paths.toml", 'secret-file = "mcudpt.secret"\nkey = "/etc/mcudpt/id_ed25519"\ntcp = ":1"');
    const args = parsed("sender", ["--config", path]);
    assert.equal(args["secret-file"], join(dir, "mcudpt.secret"));
    assert.equal(args.key, "/etc/mcudpt/id_ed25519");
    assert.equal(args.tcp, ":1", "not a file: untouched");
  });

  it("without --config the command line is returned as is", () => {
    const argv = ["--udp", ":53"];
    assert.equal(withConfigFile(argv, { role: "receiver", defs: DEFS }), argv);
  });
});

describe("--config: the command line wins", () => {
  const path = file(
    "precedence.toml",
    'udp = ["a=:1", "b=:2"]\ntcp = ":5353"\nidle-timeout = 30\nsecret-file = "s"\nverbose = true',
  );

  it("a typed flag overrides the file's value, in either spelling and position", () => {
    for (const argv of [
      ["--idle-timeout", "9", "--config", path],
      ["--config", path, "--idle-timeout=9"],
      [`--config=${path}`, "--idle-timeout", "9", "-v"],
    ]) {
      const args = parsed("receiver", argv);
      assert.equal(args["idle-timeout"], "9");
      assert.equal(args.tcp, ":5353", "the file's other settings stay");
    }
  });

  it("a repeatable flag on the command line replaces the file's whole list", () => {
    const merged = withConfigFile(["--config", path, "--udp", "c=:3"], { role: "receiver", defs: DEFS });
    assert.deepEqual(merged, [
      "--config",
      path,
      "--udp",
      "c=:3",
      "--tcp=:5353",
      "--idle-timeout=30",
      `--secret-file=${join(dir, "s")}`,
      "--verbose",
    ]);
  });

  it("a typed --secret overrides the file's secret-file; -q (alias) overrides its verbose", () => {
    const args = parsed("receiver", ["--config", path, "--secret", "typed", "-q"]);
    assert.equal(args.secret, "typed");
    assert.equal(args["secret-file"], undefined);
    assert.equal(args.quiet, true);
    assert.equal(args.verbose, undefined);
  });
});

describe("--config: errors are one line naming the file and the key", () => {
  const cases: Array<[string, string, RegExp]> = [
    ["unknown.toml", "colour = 1", /unknown\.toml: "colour" is not a setting/],
    ["camel.json", '{"idleTimeout": 3}', /camel\.json: "idleTimeout" is not a setting.*did you mean "idle-timeout"/],
    ["alias.toml", "v = true", /alias\.toml: "v" is not a setting/],
    [
      "role.toml",
      'receiver-key = "SHA256:x"',
      /role\.toml: "receiver-key" is a sender setting: the receiver does not take it/,
    ],
    ["nested.toml", 'config = "other.toml"', /nested\.toml: "config": a config file cannot name another one/],
    ["bool.toml", 'verbose = "yes"', /bool\.toml: "verbose" must be true or false, not a string/],
    ["str.toml", "tcp = true", /str\.toml: "tcp" must be a string or a number, not a boolean/],
    ["table.toml", '[tcp]\nhost = "x"', /table\.toml: "tcp" must be a string or a number, not a table/],
    ["date.toml", "tcp = 2024-01-01", /date\.toml: "tcp" must be a string or a number, not a date/],
    ["null.json", '{"tcp": null}', /null\.json: "tcp" must be a string or a number, not null/],
    ["list.toml", 'tcp = [":1", ":2"]', /list\.toml: "tcp" takes one value, not a list/],
    ["listitem.toml", "udp = [true]", /listitem\.toml: "udp" must be a string or a number, not a boolean/],
    ["enum.toml", 'transport = "deno"', /enum\.toml: "transport" is "deno": expected one of auto, bun, node/],
    ["array.json", "[1, 2]", /array\.json: expected a table of settings \(key = value\), not a list/],
    ["broken.toml", "tcp = ", /broken\.toml: invalid TOML at line 1, column \d+/],
    ["broken.json", '{"tcp": ', /broken\.json: invalid JSON/],
    ["broken.conf", "tcp = ", /broken\.conf is neither JSON \(invalid JSON.*\) nor TOML \(invalid TOML at line 1/],
  ];
  for (const [name, text, pattern] of cases) {
    it(`${name}: ${text.replace(/\s+/g, " ")}`, () => {
      const path = file(name, text);
      throwsLine(() => parsed("receiver", ["--config", path]), pattern);
    });
  }

  it("a file that cannot be read", () => {
    throwsLine(
      () => parsed("sender", ["--config", join(dir, "missing.toml")]),
      /--config: cannot read .*missing\.toml/,
    );
  });

  it("an empty file name", () => {
    throwsLine(() => parsed("sender", ["--config="]), /--config needs a file name/);
  });

  it("a bad value from the file is reported with the file's name", () => {
    const path = file("value.toml", 'idle-timeout = "soon"');
    withConfigFile(["--config", path], { role: "receiver", defs: DEFS });
    assert.equal(
      explainConfigError('--idle-timeout: "soon" is not a positive number of seconds'),
      `--idle-timeout: "soon" is not a positive number of seconds (set in config file ${path})`,
    );
    assert.equal(explainConfigError("--keepalive: bad"), "--keepalive: bad", "not from the file: unchanged");
  });
});

describe("--config: a secret in a file others can read", () => {
  it("warns for secret = ... in a group- or world-readable file, not in a 0600 one nor for secret-file", () => {
    const warnings: string[] = [];
    parsed("receiver", ["--config", file("open.toml", 'secret = "s3"', 0o644)], warnings);
    assert.equal(warnings.length, 1);
    assert.match(warnings[0], /open\.toml holds a secret and other users can read it: chmod 600/);
    parsed("receiver", ["--config", file("closed.toml", 'secret = "s3"', 0o600)], warnings);
    parsed("receiver", ["--config", file("path.toml", 'secret-file = "x"', 0o644)], warnings);
    assert.equal(warnings.length, 1);
  });
});

describe("--config: the built CLI", () => {
  after(killAll);

  function run(args: string[]) {
    const result = spawnSync("node", [CLI, ...args], {
      encoding: "utf8",
      timeout: 15_000,
      env: { ...process.env, MCUDPT_CONFIG_DIR: scratchDir("mcudpt-e2e-") },
    });
    return { status: result.status, stderr: result.stderr };
  }

  it("exits 2 with one line for a bad config file", () => {
    const { status, stderr } = run(["sender", "--config", file("cli-bad.toml", "colour = 1")]);
    assert.equal(status, 2);
    assert.equal(stderr.trim().split("\n").length, 1);
    assert.match(stderr, /^mcudpt: config file .*cli-bad\.toml: "colour" is not a setting/);
  });

  it("every commented-out example in contrib/config/*.toml is a setting of that role, with a value it takes", () => {
    for (const role of ["receiver", "sender"] as const) {
      const path = join(ROOT, "contrib", "config", `${role}.toml`);
      const examples = readFileSync(path, "utf8")
        .split("\n")
        .filter((line) => /^# [a-z][a-z-]* = \S/.test(line))
        .map((line) => line.slice(2).replace(/\s+\(.*$/, ""));
      assert.ok(examples.length >= 8, `${role}.toml has commented examples`);
      for (const example of examples) {
        // Each on its own, as an operator uncomments it: a key the role takes, a value of the right type.
        assert.doesNotThrow(
          () => settingsToArgv(parseConfigText(example, path), path, { role, defs: DEFS }),
          `${role}.toml: ${example}`,
        );
      }
    }
  });

  it("runs a receiver and a sender from contrib/config/*.toml (addresses overridden) and passes a datagram", async () => {
    const work = scratchDir("mcudpt-config-e2e-");
    for (const role of ["receiver", "sender"]) {
      copyFileSync(join(ROOT, "contrib", "config", `${role}.toml`), join(work, `${role}.toml`));
    }
    // Both examples name secret-file = "mcudpt.secret", next to them.
    writeFileSync(join(work, "mcudpt.secret"), "config-file-e2e-secret\n", { mode: 0o600 });
    const echo = await startEcho();
    const udp = await freePort("udp");
    const tcp = await freePort("tcp");
    const receiver = startCli("node", [
      "receiver",
      "--config",
      join(work, "receiver.toml"),
      "--udp",
      `127.0.0.1:${udp}`,
      "--tcp",
      `127.0.0.1:${tcp}`,
    ]);
    const sender = startCli("node", [
      "sender",
      `--config=${join(work, "sender.toml")}`,
      "--udp",
      `127.0.0.1:${echo.address().port}`,
      "--tcp",
      `127.0.0.1:${tcp}`,
    ]);
    try {
      await eventually(
        () => /accepted by receiver/.test(sender.stderr()),
        () => `sender accepted\nreceiver: ${receiver.stderr()}\nsender: ${sender.stderr()}`,
      );
      // Passing needs the file's secret-file on both sides: without a secret the receiver would
      // wait for an operator's approval that never comes (stdin is closed).
      assert.equal(await udpRequest(udp, "through config files"), "through config files");
      assert.doesNotMatch(receiver.stderr(), /warn|error/i);
    } finally {
      await stopWith(sender, "SIGTERM");
      await stopWith(receiver, "SIGTERM");
      echo.close();
    }
  });
});
