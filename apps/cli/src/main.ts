#!/usr/bin/env node
/**
 * mcudpt command line. Bad input ends with one line on stderr and exit code 2; the long-running
 * commands never end on network errors (they log them).
 */
import "./no-color.js";
import { logLine, messageOf, UserError } from "@mcudpt/core";
import { type ArgsDef, type CommandDef, defineCommand, renderUsage, runCommand } from "citty";
import pkg from "../package.json" with { type: "json" };
import { checkCommand, checkTarget } from "./check.js";
import { receiverArgs, receiverCommand, senderArgs, senderCommand } from "./commands.js";
import { explainConfigError, withConfigFile } from "./config-file.js";
import { demoCommand } from "./demo.js";
import { keygenCommand } from "./identity.js";
import { normalizeArgv } from "./legacy.js";
import { jsonRecord } from "./ops/logging.js";
import { REPEATABLE } from "./options.js";
import { rememberCommandLine } from "./reload.js";

const VERSION: string = pkg.version;

const subCommands: Record<string, CommandDef<ArgsDef>> = {
  receiver: receiverCommand as unknown as CommandDef<ArgsDef>,
  sender: senderCommand as unknown as CommandDef<ArgsDef>,
  check: checkCommand as unknown as CommandDef<ArgsDef>,
  demo: demoCommand as unknown as CommandDef<ArgsDef>,
  keygen: keygenCommand as unknown as CommandDef<ArgsDef>,
};

const mainCommand = defineCommand({
  meta: { name: "mcudpt", version: VERSION, description: "Multi-client UDP tunnel over one TCP connection" },
  subCommands,
});

const HELP = `mcudpt ${VERSION}: a multi-client UDP tunnel over one TCP connection (ssh -R for UDP)

Usage:
  mcudpt receiver --udp [HOST]:PORT --tcp [HOST]:PORT [options]   public side
  mcudpt sender   --udp HOST:PORT   --tcp HOST:PORT   [options]   private side
  mcudpt demo [--clients N] [--duration SECONDS]                  see it work on loopback
  mcudpt check [receiver|sender] [--bind] [options]               validate settings without starting
  mcudpt keygen [--out FILE]                                      make an Ed25519 key pair

Example, forwarding DNS:
  public host:   mcudpt receiver --udp :53 --tcp :5353
  private host:  mcudpt sender --udp internal-dns.lan:53 --tcp tunnel-server:5353

Each side has an Ed25519 key (~/.config/mcudpt/id_ed25519, made on first run). The receiver asks
"Accept? [yes/no]" on stdin about a sender key it does not know and remembers a yes; unattended
receivers list sender keys in --authorized-keys. The sender remembers the receiver's key and refuses
a changed one. Or give both sides the same --secret (or MCUDPT_SECRET) instead of keys.

The original mcudpt's flags work unchanged: mcudpt -mode receiver -udp :53 -tcp :5353
(-mode defaults to receiver, -udp and -tcp to :1937).

Run "mcudpt receiver --help" or "mcudpt sender --help" for every option.`;

/** Every long flag name any command accepts, for Go-style single-dash spellings. */
function longFlagNames(): Set<string> {
  const names = new Set(["help", "version"]);
  for (const command of Object.values(subCommands)) {
    for (const name of Object.keys((command.args ?? {}) as ArgsDef)) names.add(name);
  }
  return names;
}

/** Flag names and aliases (without dashes) of a command's definitions. */
function flagNames(defs: ArgsDef): Set<string> {
  const names = new Set<string>();
  for (const [name, def] of Object.entries(defs)) {
    names.add(name);
    const aliases = "alias" in def && def.alias ? (Array.isArray(def.alias) ? def.alias : [def.alias]) : [];
    for (const alias of aliases) names.add(alias);
  }
  return names;
}

/**
 * A flag this command does not know: another command's (said as the config loader says it of a key
 * of the other role), or none at all.
 */
function unknownFlag(arg: string, name: string, command: string): UserError {
  const flag = arg.split("=")[0];
  const owners = Object.entries(subCommands)
    .filter(([other, def]) => other !== command && flagNames((def.args ?? {}) as ArgsDef).has(name))
    .map(([other]) => other);
  if (owners.length === 0) return new UserError(`unknown flag "${flag}" (see --help)`);
  const who = command === "receiver" || command === "sender" ? `the ${command}` : `mcudpt ${command}`;
  return new UserError(`${flag} is a ${owners.join(" and ")} setting: ${who} does not take it (see --help)`);
}

/**
 * citty ignores flags it does not know and keeps the last of repeated ones; a typo or a duplicate
 * must not silently run with other settings than the user wrote.
 */
function checkArgs(args: string[], defs: ArgsDef, command: string): void {
  const known = new Map<string, { name: string; type: string | undefined }>();
  for (const [name, def] of Object.entries(defs)) {
    known.set(name, { name, type: def.type });
    const aliases = "alias" in def && def.alias ? (Array.isArray(def.alias) ? def.alias : [def.alias]) : [];
    for (const alias of aliases) known.set(alias, { name, type: def.type });
  }
  const seen = new Set<string>();
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    const match = /^--?([^=]+)(=.*)?$/.exec(arg);
    if (!match || arg === "-" || arg === "--") throw new UserError(`unexpected argument "${arg}"`);
    const [, name, inline] = match;
    const flag = known.get(name);
    if (!flag) throw unknownFlag(arg, name, command);
    if (seen.has(flag.name) && !REPEATABLE.has(flag.name)) throw new UserError(`--${flag.name} given more than once`);
    seen.add(flag.name);
    if ((flag.type === "string" || flag.type === "enum") && inline === undefined) {
      const value = args[i + 1];
      const valueIsFlag =
        value !== undefined && /^--?[A-Za-z]/.test(value) && known.has(value.replace(/^--?/, "").split("=")[0]);
      if (value === undefined || valueIsFlag) throw new UserError(`${arg} needs a value`);
      i++;
    }
  }
}

/** --log-format json on the command line: the lines written before a logger exists must be JSON too. */
function jsonLogWanted(argv: string[]): boolean {
  return argv.some((a, i) => a === "--log-format=json" || (a === "--log-format" && argv[i + 1] === "json"));
}

export async function main(argv: string[]): Promise<number> {
  // A closed pipe on stdout/stderr (`| head`, a restarted log collector) must not take the tunnel
  // down nor spin on reporting its own write errors: lines that cannot be written are dropped.
  process.stdout.on("error", () => {});
  process.stderr.on("error", () => {});
  try {
    const args = normalizeArgv(argv, longFlagNames());
    if (args[0] === "help") args.splice(0, 1, "--help");
    const wantsHelp = args.some((a) => a === "--help" || a === "-h");
    if (args.some((a) => a === "--version" || a === "-V")) {
      process.stdout.write(`${VERSION}\n`);
      return 0;
    }
    let [name, ...rest] = args;
    let defaultedToReceiver = false;
    if (name === undefined || name.startsWith("-")) {
      if (wantsHelp) {
        process.stdout.write(`${HELP}\n`);
        return 0;
      }
      // The original's behaviour: no mode means receiver, with :1937 defaults.
      rest = args;
      name = "receiver";
      // Said whenever the defaults decide everything (`mcudpt`, `mcudpt -v`), not for the original's
      // `mcudpt -udp :53 -tcp :5353`, whose addresses say what is meant; once the flags are checked.
      defaultedToReceiver = !args.some((a) => /^--(udp|tcp|connect|config)(=|$)/.test(a));
    }
    const command = subCommands[name];
    if (!command)
      throw new UserError(`unknown command "${name}": expected receiver, sender, check, demo or keygen (see --help)`);
    if (wantsHelp) {
      process.stdout.write(`${await renderUsage(command, mainCommand as unknown as CommandDef<ArgsDef>)}\n`);
      return 0;
    }
    // `check ROLE …` takes ROLE's flags: they are checked as ROLE's are.
    const target = name === "check" ? checkTarget(rest) : { role: name, flags: rest, defs: command.args ?? {} };
    checkArgs(
      target.flags.filter((a) => a !== "--help" && a !== "-h"),
      target.defs as ArgsDef,
      target.role,
    );
    // --config FILE: the file's settings become flags after the typed ones (which win); see config-file.ts.
    // A reload (SIGHUP) reads the file again from the flags as typed.
    if (name === "receiver" || name === "sender") rememberCommandLine(rest);
    if (name === "receiver" || name === "sender")
      rest = withConfigFile(rest, { role: name, defs: { receiver: receiverArgs, sender: senderArgs } }, (line) =>
        process.stderr.write(
          jsonLogWanted(argv)
            ? jsonRecord("mcudpt", `warning: ${line}`, { level: "warn" })
            : `mcudpt: warning: ${logLine(line)}\n`,
        ),
      );
    if (defaultedToReceiver)
      process.stderr.write("mcudpt: no command given: running as receiver on :1937 (see mcudpt --help)\n");
    await runCommand(command, { rawArgs: rest });
    return 0;
  } catch (error) {
    const known = error instanceof UserError || (error as Error)?.name === "CLIError";
    const message = `${known ? "" : "unexpected error: "}${explainConfigError(citeEnumError(messageOf(error)))
      .replace(/\x1b\[[0-9;]*m/g, "")
      .replace(/\s*\n\s*/g, " ")}`;
    // With --log-format json the line a log collector most needs must be JSON too.
    const json = jsonLogWanted(argv);
    process.stderr.write(json ? jsonRecord("mcudpt", message, { level: "error" }) : `mcudpt: ${logLine(message)}\n`);
    if (!known && process.env.MCUDPT_DEBUG) process.stderr.write(`${(error as Error)?.stack}\n`);
    return 2;
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    if (code !== 0) process.exit(code);
  },
  () => process.exit(1),
);

/** citty's enum error ("Invalid value for argument: --transport (foo). Expected one of: …") in our style. */
function citeEnumError(message: string): string {
  const match = /^Invalid value for argument: (--[\w-]+) \((.*)\)\. Expected one of: (.*?)\.?( \(EARG\))?$/.exec(
    message,
  );
  return match ? `${match[1]}: "${match[2]}" is not one of ${match[3]}` : message;
}
