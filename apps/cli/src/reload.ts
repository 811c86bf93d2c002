/**
 * SIGHUP: read the command line's --config file and every file the settings name again, and apply
 * what a running receiver or sender can take without a restart — limits, the log level, the trust
 * files (a key no longer admitted ends its session), the TLS certificate (for new connections), a
 * sender's new targets, a listening key-mode receiver's named mappings added, removed or moved.
 * Flags typed on the command line still win over the file, as at start.
 *
 * All or nothing: the new configuration is first checked as `mcudpt check` checks it (check.ts),
 * then compared with the running one — a setting only a restart can change (the transport, an
 * address, the key, a sender's mapping added or removed…) refuses the reload — and only then
 * applied, the steps that can fail at run time (binding a new mapping's port, serving the new
 * certificate) first. A refused or failed reload
 * changes nothing, logs one line saying why, and the process runs on. Each is counted
 * (mcudpt_config_reloads_total{result}) and the last one shows in the SIGUSR1 snapshot.
 */
import {
  configPath,
  loadIdentity,
  type Logger,
  messageOf,
  pemFingerprint,
  type ReceiverReload,
  type SenderReload,
  UserError,
} from "@mcudpt/core";
import type { Limits } from "@mcudpt/protocol";
import { type ArgsDef, parseArgs } from "citty";
import { withConfigFile } from "./config-file.js";
import { DEFAULT_KEY_NAME, listenTrustFor, type PeerRole } from "./identity.js";
import type { Operations } from "./ops/index.js";
import { commonOptions, mappingsArg, type RawArgs, stringArg } from "./options.js";
import { listenTls } from "./tls-options.js";

type Role = "receiver" | "sender";

/** The command line as typed, before --config's settings were added: what a reload reads again. */
let typedCommandLine: readonly string[] = [];

/** main.ts keeps the role's flags as typed, for reloads. */
export function rememberCommandLine(flags: readonly string[]): void {
  typedCommandLine = [...flags];
}

/** Reloads so far, for the metrics and the snapshot. */
export interface ReloadRecord {
  ok: number;
  failed: number;
  last?: { at: Date; result: "ok" | "failed"; message: string };
}

/** Flags whose new value a running role takes (`udp`: a sender's new target); any other needs a restart. */
function reloadableFlags(role: Role, listening: boolean): Set<string> {
  const peer = role === "receiver" ? "sender" : "receiver";
  return new Set([
    "config",
    "udp",
    "idle-timeout",
    "max-flows",
    "max-buffer",
    "max-delay",
    "verbose",
    "quiet",
    ...(role === "receiver" ? ["new-flow-rate", "amplification-limit"] : []),
    // The listening side's trust and certificate; the dialing side re-reads its pins at each check.
    ...(listening ? ["authorized-keys", `known-${peer}s`, "tls-cert", "tls-key"] : []),
  ]);
}

export interface ReloadSpec {
  role: Role;
  /** This end listens for TCP (it admits keys and serves the certificate). */
  listening: boolean;
  keyMode: boolean;
  /** Every role's flag definitions (the config loader tells a key of the other role from a typo). */
  defs: Record<Role, ArgsDef>;
  /** The flags the role was started with, --config's included, as citty parsed them. */
  args: RawArgs;
  /** The running secret (read from --secret-file at start: the file may have changed since). */
  secret: string | undefined;
  /** The running key's fingerprint (key mode) and certificate (listening with TLS). */
  keyFingerprint?: string;
  tls?: { cert: string; key: string };
  ops: Operations;
  record: ReloadRecord;
  /** The flags with a wss:// address standing for --tls, as the commands read them (carrier-options.ts). */
  secured(args: RawArgs): RawArgs;
  /** The receiver's client limits (--new-flow-rate, --amplification-limit), as commands.ts reads them. */
  clientLimits?: (args: RawArgs) => { newFlowsPerSecond: number; amplificationLimit: number };
  /** The problems `mcudpt check` finds in the role's flags (check.ts), one line each. */
  validate(flags: string[]): Promise<string[]>;
  /** The running role. */
  handle: { reload(update: ReceiverReload | SenderReload): Promise<string[]> };
}

/**
 * Reloads on SIGHUP, one at a time (a SIGHUP during a reload runs one more after it). Returns the
 * handler, for runRole to install before anything starts.
 */
export function reloader(spec: ReloadSpec): () => Promise<void> {
  let running: Promise<void> | undefined;
  let again = false;
  const once = async () => {
    const { logger } = spec.ops;
    const at = new Date();
    try {
      const changes = await reload(spec);
      spec.record.ok++;
      const message = changes.length > 0 ? changes.join("; ") : "nothing changed";
      spec.record.last = { at, result: "ok", message };
      logger.log("info", `reloaded the configuration (SIGHUP): ${message}`);
    } catch (error) {
      spec.record.failed++;
      const known = error instanceof UserError;
      const message = `${known ? "" : "unexpected error: "}${messageOf(error)}`;
      spec.record.last = { at, result: "failed", message };
      logger.log("error", `reload (SIGHUP) failed, the running configuration is kept: ${message}`);
    }
  };
  return () => {
    if (running) {
      again = true;
      return running;
    }
    running = (async () => {
      do {
        again = false;
        await once();
      } while (again);
      running = undefined;
    })();
    return running;
  };
}

/** One reload: check, compare, apply. Returns what changed, for the log line; throws a one-line UserError. */
async function reload(spec: ReloadSpec): Promise<string[]> {
  const { role, listening, keyMode } = spec;
  const peer: PeerRole = role === "receiver" ? "sender" : "receiver";
  const typed = [...typedCommandLine];
  const problems = await spec.validate(typed);
  if (problems.length > 0) {
    const more =
      problems.length > 1 ? ` (and ${problems.length - 1} more problem${problems.length > 2 ? "s" : ""})` : "";
    throw new UserError(`${problems[0]}${more}`);
  }
  const warnings = spec.ops.logger;
  const { argv, args } = readFlags(role, typed, spec.defs, (line) => warnings.log("warn", line));
  refuseRestartOnlyChanges(spec, args);
  const options = commonOptions(args);
  if (options.secret !== spec.secret) throw new UserError("the shared secret changed: that needs a restart");
  if (keyMode) {
    const keyFile = stringArg(args, "key") ?? configPath(DEFAULT_KEY_NAME);
    const now = loadIdentity(keyFile).fingerprint;
    if (now !== spec.keyFingerprint)
      throw new UserError(`the key in ${keyFile} changed (${now}): a new key needs a restart`);
  }
  const mappings = mappingsArg(argv, role);
  // A key's mappings="…" may name a mapping this reload adds (and no longer one it removes).
  const names = mappings.map(({ name }) => name ?? "");
  const admission = keyMode && listening ? listenTrustFor(args, peer, names) : undefined;
  const tls = listening ? listenTls(spec.secured(args), warningsOnly(warnings), peer) : undefined;
  const renewed = tls && spec.tls && (tls.cert !== spec.tls.cert || tls.key !== spec.tls.key) ? tls : undefined;
  const limits: Limits = {
    idleTimeoutMs: options.idleTimeoutMs,
    maxFlows: options.maxFlows,
    maxBufferBytes: options.maxBufferBytes,
    maxDelayMs: options.maxDelayMs,
    mappings: mappings.map(() => ({})),
  };
  const common = { limits, admission, tls: renewed };
  const update: ReceiverReload | SenderReload =
    role === "receiver"
      ? {
          ...common,
          clientLimits: spec.clientLimits?.(args),
          mappings: mappings.map(({ name, address, ports }) => ({ name, udp: address, ports })),
        }
      : { ...common, mappings: mappings.map(({ name, address, ports }) => ({ name, target: address, ports })) };
  const done = await spec.handle.reload(update);
  spec.ops.setLogLevel(options.logLevel);
  const changes = changedValues(spec, args);
  if (renewed && spec.tls)
    changes.push(`TLS certificate ${pemFingerprint(renewed.cert)} (was ${pemFingerprint(spec.tls.cert)})`);
  spec.args = args;
  if (renewed) spec.tls = { cert: renewed.cert, key: renewed.key };
  return [...changes, ...done];
}

/** `flags` as typed with --config's settings added, and parsed as the command parses them. */
export function readFlags(
  role: Role,
  flags: readonly string[],
  defs: Record<Role, ArgsDef>,
  warn: (line: string) => void,
): { argv: string[]; args: RawArgs } {
  const argv = withConfigFile([...flags], { role, defs }, warn);
  return { argv, args: parseArgs(argv, defs[role]) as RawArgs };
}

/** Throws, naming them, when flags only a restart can change have another value now. */
function refuseRestartOnlyChanges(spec: ReloadSpec, args: RawArgs): void {
  const reloadable = reloadableFlags(spec.role, spec.listening);
  const changed = Object.keys(spec.defs[spec.role]).filter(
    (name) => !reloadable.has(name) && JSON.stringify(spec.args[name]) !== JSON.stringify(args[name]),
  );
  if (changed.length === 0) return;
  const names = changed.map((name) => `--${name}`);
  const list = names.length === 1 ? names[0] : `${names.slice(0, -1).join(", ")} and ${names.at(-1)}`;
  throw new UserError(`${list} changed: ${names.length === 1 ? "that needs" : "those need"} a restart`);
}

/** The reloadable scalar flags whose value changed, as "--idle-timeout 60 → 30". */
function changedValues(spec: ReloadSpec, args: RawArgs): string[] {
  const defs = spec.defs[spec.role];
  const shown = (name: string, value: unknown) =>
    defs[name]?.type === "boolean" ? (value ? "on" : "off") : value === undefined ? "(default)" : String(value);
  return [...reloadableFlags(spec.role, spec.listening)]
    .filter((name) => name !== "udp" && name !== "config")
    .filter((name) => JSON.stringify(spec.args[name] ?? false) !== JSON.stringify(args[name] ?? false))
    .map((name) => `--${name} ${shown(name, spec.args[name])} → ${shown(name, args[name])}`);
}

/** The warnings of `logger`: a reload's own line says what was read (no "TLS certificate …" info line). */
function warningsOnly(logger: Logger): Logger {
  return {
    log(level, message) {
      if (level === "warn" || level === "error") logger.log(level, message);
    },
  };
}
