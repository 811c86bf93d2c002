/**
 * `--config FILE`: settings for the receiver or sender in TOML or JSON. Keys are the long flag names
 * exactly as typed on the command line (`udp`, `secret-file`, `idle-timeout`, …); values are strings,
 * numbers, booleans, or lists for flags that may be repeated.
 *
 * The file becomes command-line flags (`--idle-timeout=30`), added after the real ones, for the keys
 * the command line does not give: citty then parses the whole list, so the file goes through exactly
 * the parsing and validation a typed flag does, and a flag typed on the command line always wins (for
 * a repeatable flag, the command line's values replace the file's list).
 *
 * A relative path in a FILE-valued key (secret-file, key, tls-cert, …) is relative to the config
 * file's directory, so a file in /etc/mcudpt can name its neighbours whatever the working directory.
 */
import { readFileSync } from "node:fs";
import { dirname, extname, isAbsolute, resolve } from "node:path";
import { isKeyFileExposed, messageOf, UserError } from "@mcudpt/core";
import type { ArgDef, ArgsDef } from "citty";
import { parse as parseToml, TomlError } from "smol-toml";
import { REPEATABLE } from "./options.js";

export const configArgs = {
  config: {
    type: "string",
    description:
      "Read settings from a TOML or JSON file whose keys are these flags' long names; flags given here override it",
    valueHint: "FILE",
  },
} satisfies ArgsDef;

/** Flags that may be given more than once (several mappings): in a config file they take a list. */
export const REPEATABLE_FLAGS: ReadonlySet<string> = REPEATABLE;

/**
 * Flags whose one value is a comma-separated list (--ws-trusted-proxy 127.0.0.1,::1, --redundant-mappings
 * game,voip): in a config file a list of strings says the same, and is what a TOML or JSON user writes.
 */
export const COMMA_LIST_FLAGS: ReadonlySet<string> = new Set(["ws-trusted-proxy", "redundant-mappings"]);

/** Settings that exclude each other: one given on the command line overrides the file's others too. */
export const EXCLUSIVE: ReadonlyArray<readonly string[]> = [
  ["secret", "secret-file"],
  ["verbose", "quiet"],
];

export type Settings = Record<string, unknown>;

/** Parses config text: TOML or JSON by extension; any other extension tries JSON, then TOML. */
export function parseConfigText(text: string, file: string): Settings {
  const ext = extname(file).toLowerCase();
  let parsed: unknown;
  if (ext === ".json") parsed = parseJson(text, file);
  else if (ext === ".toml") parsed = parseTomlText(text, file);
  else {
    try {
      parsed = parseJson(text, file);
    } catch (jsonError) {
      try {
        parsed = parseTomlText(text, file);
      } catch (tomlError) {
        throw new UserError(
          `config file ${file} is neither JSON (${reason(jsonError, file)}) nor TOML (${reason(tomlError, file)}); name it .json or .toml for one precise error`,
        );
      }
    }
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
    throw new UserError(`config file ${file}: expected a table of settings (key = value), not ${kind(parsed)}`);
  }
  return parsed as Settings;
}

function parseJson(text: string, file: string): unknown {
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new UserError(`config file ${file}: invalid JSON: ${messageOf(error)}`);
  }
}

function parseTomlText(text: string, file: string): unknown {
  try {
    return parseToml(text);
  } catch (error) {
    // smol-toml's message spans lines (it draws the spot); keep the first and say where.
    const first = messageOf(error)
      .split("\n")[0]
      .replace(/^Invalid TOML document:\s*/, "");
    const where = error instanceof TomlError ? ` at line ${error.line}, column ${error.column}` : "";
    throw new UserError(`config file ${file}: invalid TOML${where}: ${first}`);
  }
}

/** The part of a parse error after "config file X: ". */
function reason(error: unknown, file: string): string {
  return messageOf(error).replace(`config file ${file}: `, "");
}

/** Reads and parses `file`; warns (through `warn`) when it holds a secret other users can read. */
export function readConfigFile(file: string, warn: (line: string) => void): Settings {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (error) {
    throw new UserError(`--config: cannot read ${file}: ${messageOf(error)}`);
  }
  const settings = parseConfigText(text, file);
  if (typeof settings.secret === "string" && isKeyFileExposed(file)) {
    warn(`config file ${file} holds a secret and other users can read it: chmod 600 ${file}`);
  }
  return settings;
}

/** The roles whose flags a config file may hold, to tell "wrong role" from "unknown" keys. */
export interface Roles {
  /** The command being run ("receiver" or "sender"). */
  role: string;
  /** Every role's flag definitions, `role` included. */
  defs: Record<string, ArgsDef>;
}

/**
 * The command-line flags equivalent to `settings` (`--name=value`, `--name` for true, nothing for
 * false), for `roles.role`. Throws a one-line UserError naming the file and the key for an unknown
 * key, a key of another role, or a value of the wrong type.
 */
export function settingsToArgv(settings: Settings, file: string, roles: Roles): Map<string, string[]> {
  const defs = roles.defs[roles.role];
  const out = new Map<string, string[]>();
  const base = dirname(resolve(file));
  for (const [key, value] of Object.entries(settings)) {
    const where = `config file ${file}: "${key}"`;
    const def = Object.hasOwn(defs, key) ? (defs[key] as ArgDef) : undefined;
    if (!def || key === "config" || def.type === "positional") throw new UserError(unknownKey(where, key, roles));
    if (Array.isArray(value) && COMMA_LIST_FLAGS.has(key)) {
      if (value.length === 0 || !value.every((item) => typeof item === "string"))
        throw new UserError(`${where} must list one or more strings (or be one "a,b" string)`);
      out.set(key, flagTokens(where, key, def, value.join(","), base));
      continue;
    }
    const values = Array.isArray(value) ? value : [value];
    if (Array.isArray(value) && !REPEATABLE_FLAGS.has(key)) {
      throw new UserError(`${where} takes one value, not a list (--${key} may be given once)`);
    }
    const tokens: string[] = [];
    for (const item of values) tokens.push(...flagTokens(where, key, def, item, base));
    out.set(key, tokens);
  }
  return out;
}

function unknownKey(where: string, key: string, roles: Roles): string {
  if (key === "config") return `${where}: a config file cannot name another one`;
  const owners = Object.entries(roles.defs)
    .filter(([role, defs]) => role !== roles.role && Object.hasOwn(defs, key))
    .map(([role]) => role);
  if (owners.length > 0) return `${where} is a ${owners.join(" and ")} setting: the ${roles.role} does not take it`;
  const kebab = key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`).replace(/_/g, "-");
  const hint = kebab !== key && Object.hasOwn(roles.defs[roles.role], kebab) ? `; did you mean "${kebab}"?` : "";
  return `${where} is not a setting (keys are the long flag names, as in --help)${hint}`;
}

function flagTokens(where: string, key: string, def: ArgDef, value: unknown, base: string): string[] {
  if (def.type === "boolean") {
    if (typeof value !== "boolean") throw new UserError(`${where} must be true or false, not ${kind(value)}`);
    return value ? [`--${key}`] : [];
  }
  let text: string;
  if (typeof value === "string") text = value;
  else if (typeof value === "number" && Number.isFinite(value)) text = String(value);
  else throw new UserError(`${where} must be a string or a number, not ${kind(value)}`);
  if (def.type === "enum" && "options" in def && def.options && !def.options.includes(text)) {
    throw new UserError(`${where} is "${text}": expected one of ${def.options.join(", ")}`);
  }
  if ("valueHint" in def && def.valueHint === "FILE" && text !== "" && !isAbsolute(text)) text = resolve(base, text);
  return [`--${key}=${text}`];
}

function kind(value: unknown): string {
  if (Array.isArray(value)) return "a list";
  if (value === null) return "null";
  if (value instanceof Date || (typeof value === "object" && value?.constructor?.name === "TomlDate")) return "a date";
  if (typeof value === "object") return "a table";
  if (typeof value === "string") return "a string";
  if (typeof value === "number") return `the number ${value}`;
  return `${typeof value === "boolean" ? "a boolean" : typeof value}`;
}

/**
 * What the command line gives: the flags' long names (aliases resolved) and the --config value.
 * Walks `argv` as citty does (a string flag without `=` takes the next word); malformed command
 * lines are left to the command-line check, which runs first.
 */
export function commandLineFlags(argv: string[], defs: ArgsDef): { given: Set<string>; config?: string } {
  const names = new Map<string, { name: string; type: string | undefined }>();
  for (const [name, def] of Object.entries(defs)) {
    names.set(name, { name, type: def.type });
    const aliases = "alias" in def && def.alias ? (Array.isArray(def.alias) ? def.alias : [def.alias]) : [];
    for (const alias of aliases) names.set(alias, { name, type: def.type });
  }
  const given = new Set<string>();
  let config: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    const match = /^--?([^=]+)(?:=(.*))?$/s.exec(argv[i]);
    const flag = match && names.get(match[1]);
    if (!match || !flag) continue;
    given.add(flag.name);
    const takesValue = flag.type === "string" || flag.type === "enum";
    const value = match[2] ?? (takesValue ? argv[++i] : undefined);
    if (flag.name === "config") config = value;
  }
  return { given, config };
}

/**
 * `argv` with the settings of its `--config` file appended for the flags `argv` does not give.
 * Without --config, `argv` itself.
 */
export function withConfigFile(
  argv: string[],
  roles: Roles,
  warn: (line: string) => void = (line) => process.stderr.write(`mcudpt: warning: ${line}\n`),
): string[] {
  const defs = roles.defs[roles.role];
  supplied.clear();
  const { given, config } = commandLineFlags(argv, defs);
  for (const group of EXCLUSIVE) if (group.some((name) => given.has(name))) for (const name of group) given.add(name);
  if (config === undefined) return argv;
  if (config === "") throw new UserError("--config needs a file name");
  const fromFile = settingsToArgv(readConfigFile(config, warn), config, roles);
  const added: string[] = [];
  for (const [name, tokens] of fromFile) {
    if (given.has(name)) continue;
    added.push(...tokens);
    supplied.set(name, config);
  }
  return [...argv, ...added];
}

/** Flags the last withConfigFile took from a file, and that file: for errors about their values. */
const supplied = new Map<string, string>();

/**
 * An error message about a flag's value (`--idle-timeout: "x" is not …`) with the config file named
 * when the value came from there; other messages unchanged.
 */
export function explainConfigError(message: string): string {
  const flag = /^--([\w-]+)/.exec(message)?.[1];
  const file = flag === undefined ? undefined : supplied.get(flag);
  return file === undefined ? message : `${message} (set in config file ${file})`;
}
