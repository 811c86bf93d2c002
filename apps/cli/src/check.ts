/**
 * `mcudpt check [receiver|sender] [--bind] FLAGS…`: everything a start would validate, without
 * starting: the flags and the --config file go through the very functions the receiver and sender
 * commands call (config-file.ts, options.ts, identity.ts, tls-options.ts, ops), so a check passes
 * exactly when those would. With --bind the ports this side would listen on are bound with the
 * chosen transport, all at once as a start holds them, and released.
 *
 * Every problem found is one line; as many as can be found are reported, not only the first: each
 * config key, each --udp mapping and each file on its own, and a function that refuses a flag is
 * called again without that flag to find what else it would refuse. A check creates nothing: where
 * a start would generate the key or the TLS certificate, the summary says so (a certificate is
 * generated in a temporary directory to check the rest of the TLS flags, and deleted).
 *
 * Exit 0 and a one-line summary on stdout; or exit 2 and one line per problem on stderr. Warnings
 * (a secret others can read, a short idle timeout) go to stderr either way, as a start logs them.
 */
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  bindFailure,
  configDir,
  configPath,
  formatHostPort,
  type HostPort,
  type Logger,
  logLine,
  messageOf,
  pemFingerprint,
  Resolver,
  type TcpConnection,
  type Transport,
  tcpBufferGranted,
  tcpBufferUnsupported,
  UserError,
} from "@mcudpt/core";
import { checkPairedPorts, MAX_MAPPINGS, pairMappings } from "@mcudpt/protocol";
import { type ArgsDef, defineCommand, parseArgs } from "citty";
import { carrierFor, tcpBufferOption, tlsArgsFor } from "./carrier-options.js";
import { receiverArgs, receiverLimits, senderArgs, tcpSide, warnAboutSettings } from "./commands.js";
import {
  commandLineFlags,
  EXCLUSIVE,
  explainConfigError,
  readConfigFile,
  settingsToArgv,
  withConfigFile,
} from "./config-file.js";
import {
  DEFAULT_KEY_NAME,
  dialPinsFor,
  identityFor,
  listenTrustFor,
  type PeerRole,
  rejectKeyFlagsWithSecret,
} from "./identity.js";
import { opsOptions } from "./ops/index.js";
import { jsonRecord } from "./ops/logging.js";
import {
  type CommonOptions,
  commonOptions,
  laneOptions,
  type MappingArg,
  mappingLabel,
  mappingsArg,
  type RawArgs,
  repeated,
  stringArg,
  withRedundancy,
} from "./options.js";
import { pickTransport } from "./runtime.js";
import { dialTls, listenTls } from "./tls-options.js";

type Role = "receiver" | "sender";

const ROLE_ARGS: Record<Role, ArgsDef> = { receiver: receiverArgs, sender: senderArgs };

/** check's own flags, beside the role's. */
export const checkFlags = {
  bind: {
    type: "boolean",
    description:
      "Also bind the UDP and TCP ports this side would listen on (and --metrics's), all at once, then release them",
  },
  "peer-config": {
    type: "string",
    description:
      "Also pair this side's --udp mappings with those in the other side's --config FILE, as the handshake would (names or order, port range sizes)",
    valueHint: "FILE",
  },
} satisfies ArgsDef;

export const checkCommand = defineCommand({
  meta: {
    name: "check",
    description:
      "Validate a receiver's or sender's flags and --config file as a start would, without starting (it takes that role's flags): exit 0 with a one-line summary, or 2 with one line per problem",
  },
  args: {
    role: {
      type: "positional",
      required: false,
      description:
        "receiver (the default) or sender, first; then that role's flags, as `mcudpt receiver --help` lists them",
      valueHint: "receiver|sender",
    },
    ...checkFlags,
  },
  async run({ rawArgs }) {
    process.exitCode = await runCheck(rawArgs);
  },
});

/**
 * What `check` is given: the role (first word, default receiver) and the flags after it, with the
 * definitions they are checked against (the role's and --bind), for main.ts's command-line check.
 */
export function checkTarget(rest: readonly string[]): { role: Role; flags: string[]; defs: ArgsDef } {
  const [first, ...others] = rest;
  if (first === "receiver" || first === "sender") return { role: first, flags: others, defs: defsOf(first) };
  if (first !== undefined && !first.startsWith("-"))
    throw new UserError(`check: "${first}" is not a role: write mcudpt check receiver … or mcudpt check sender …`);
  return { role: "receiver", flags: [...rest], defs: defsOf("receiver") };
}

function defsOf(role: Role): ArgsDef {
  return { ...ROLE_ARGS[role], ...checkFlags };
}

/** Problem lines in the order found, each once. */
class Problems {
  readonly lines: string[] = [];
  explain: (message: string) => string = (message) => message;

  add(error: unknown): void {
    const known = error instanceof UserError || (error as Error)?.name === "CLIError";
    const text = `${known ? "" : "unexpected error: "}${this.explain(citeEnumError(messageOf(error)))}`;
    const line = logLine(text.replace(/\x1b\[[0-9;]*m/g, "").replace(/\s*\n\s*/g, " "));
    if (!this.lines.includes(line)) this.lines.push(line);
  }
}

/** A logger keeping what a start would warn about (its info lines say nothing a check needs). */
function warningsLogger(warnings: string[]): Logger {
  return {
    log(level, message) {
      if ((level === "warn" || level === "error") && !warnings.includes(message)) warnings.push(message);
    },
  };
}

/**
 * `read(args)`, collecting its UserErrors: when one names a flag `args` holds (`--idle-timeout: …`,
 * `give --secret or --secret-file, not both`), `read` runs again without that flag, so one call
 * reports every flag it would refuse. `clean` says no problem was found.
 */
function collect<T>(problems: Problems, args: RawArgs, read: (args: RawArgs) => T): { value?: T; clean: boolean } {
  const current = { ...args };
  let clean = true;
  for (let attempt = 0; attempt < 50; attempt++) {
    try {
      return { value: read(current), clean };
    } catch (error) {
      problems.add(error);
      clean = false;
      const flag = culprit(messageOf(error), current);
      if (flag === undefined) return { clean };
      delete current[flag];
    }
  }
  return { clean };
}

/** The first flag a message names that `args` holds. */
function culprit(message: string, args: RawArgs): string | undefined {
  for (const match of message.matchAll(/(?:^|[\s(])--([a-z][\w-]*)/g)) {
    if (args[match[1]] !== undefined) return match[1];
  }
  return undefined;
}

/** citty's enum error in the CLI's style (as main.ts words it). */
function citeEnumError(message: string): string {
  const match = /^Invalid value for argument: (--[\w-]+) \((.*)\)\. Expected one of: (.*?)\.?( \(EARG\))?$/.exec(
    message,
  );
  return match ? `${match[1]}: "${match[2]}" is not one of ${match[3]}` : message;
}

/**
 * The flags with --config's settings added, as withConfigFile makes them. When the file has bad keys,
 * each key is converted on its own so that every bad one is reported and the good ones still checked;
 * undefined when the file cannot be read at all.
 */
function loadConfig(flags: string[], role: Role, problems: Problems, warn: (line: string) => void) {
  const roles = { role, defs: ROLE_ARGS };
  try {
    const argv = withConfigFile(flags, roles, warn);
    problems.explain = explainConfigError;
    return argv;
  } catch (error) {
    const { given, config } = commandLineFlags(flags, defsOf(role));
    if (config === undefined || config === "") {
      problems.add(error);
      return undefined;
    }
    let settings: Record<string, unknown>;
    try {
      settings = readConfigFile(config, () => {});
    } catch (readError) {
      problems.add(readError);
      return undefined;
    }
    for (const group of EXCLUSIVE) if (group.some((name) => given.has(name))) for (const name of group) given.add(name);
    const added: string[] = [];
    const fromFile = new Set<string>();
    const before = problems.lines.length;
    for (const [key, value] of Object.entries(settings)) {
      try {
        const tokens = settingsToArgv({ [key]: value }, config, roles).get(key) ?? [];
        if (given.has(key)) continue;
        added.push(...tokens);
        fromFile.add(key);
      } catch (keyError) {
        problems.add(keyError);
      }
    }
    if (problems.lines.length === before) problems.add(error);
    problems.explain = (message) => {
      const flag = /^--([\w-]+)/.exec(message)?.[1];
      return flag !== undefined && fromFile.has(flag) ? `${message} (set in config file ${config})` : message;
    };
    return [...flags, ...added];
  }
}

/**
 * The --udp mappings as mappingsArg makes them; when it refuses them, each mapping on its own (its
 * name and address), then each against the ones before it (names and addresses given twice).
 */
function checkMappings(argv: string[], role: Role, problems: Problems) {
  try {
    return mappingsArg(argv, role);
  } catch (error) {
    problems.add(error);
  }
  let values: string[];
  try {
    values = repeated(argv, "udp");
  } catch {
    return undefined;
  }
  const flags = (list: string[]) => list.map((value) => `--udp=${value}`);
  const good = values.filter((value) => {
    try {
      mappingsArg(flags([value]), role);
      return true;
    } catch (error) {
      problems.add(error);
      return false;
    }
  });
  const kept: string[] = [];
  for (const value of good) {
    if (kept.length >= MAX_MAPPINGS) break;
    try {
      mappingsArg(flags([...kept, value]), role);
      kept.push(value);
    } catch (error) {
      problems.add(error);
    }
  }
  return undefined;
}

/**
 * --peer-config: the other side's --udp mappings, read from its config file as its start would read
 * them, paired with ours by the handshake's own rules (pairMappings, then the range sizes), so a
 * mismatch is found before both sides refuse each other. One line for what does not pair.
 */
function checkPairing(ours: MappingArg[], role: Role, file: string, problems: Problems): string | undefined {
  const peerRole: Role = role === "receiver" ? "sender" : "receiver";
  // The handshake's own words (a ProtocolError's message, without its code); a read error without --config's name.
  const fail = (error: unknown) => {
    const text = (error instanceof Error ? error.message : messageOf(error)).replace(/^--config: /, "");
    problems.add(new UserError(`--peer-config ${file}: ${text}`));
  };
  let theirs: MappingArg[];
  try {
    const settings = readConfigFile(file, () => {});
    const udp = settings.udp === undefined ? {} : { udp: settings.udp };
    theirs = mappingsArg(settingsToArgv(udp, file, { role: peerRole, defs: ROLE_ARGS }).get("udp") ?? [], peerRole);
  } catch (error) {
    fail(error);
    return undefined;
  }
  const side = (list: MappingArg[]) => ({ names: list.map((m) => m.name ?? ""), ports: list.map((m) => m.ports) });
  const [receiver, sender] = role === "receiver" ? [side(ours), side(theirs)] : [side(theirs), side(ours)];
  try {
    checkPairedPorts(pairMappings(receiver.names, sender.names), receiver, sender);
  } catch (error) {
    fail(error);
    return undefined;
  }
  return `mappings pair with ${file}`;
}

/** The key a start would use, without creating it (said when a start would). */
function checkIdentity(problems: Problems, args: RawArgs, logger: Logger): string | undefined {
  const explicit = args.key !== undefined;
  const path = configPath(DEFAULT_KEY_NAME);
  if (!explicit && !existsSync(path)) {
    return `key ${path} (none yet: a start creates it)`;
  }
  const { value } = collect(problems, args, (a) => identityFor(a, logger));
  return value ? `key ${value.fingerprint} (${value.path})` : undefined;
}

/**
 * The listening side's TLS, as listenTls reads it, never generating a certificate where a start
 * would (it is generated in a temporary directory instead, to check everything else, and deleted).
 */
function checkListenTls(problems: Problems, args: RawArgs, logger: Logger, peer: PeerRole) {
  return collect(problems, args, (a) => {
    const certFlag = a["tls-cert"] !== undefined;
    const keyFlag = a["tls-key"] !== undefined;
    const cert = certFlag ? stringArg(a, "tls-cert") : join(configDir(), "tls-cert.pem");
    const key = keyFlag ? stringArg(a, "tls-key") : join(configDir(), "tls-key.pem");
    const generated = a.tls && certFlag === keyFlag && !existsSync(cert as string) && !existsSync(key as string);
    if (!generated) {
      const tls = listenTls(a, logger, peer);
      return tls && `TLS certificate ${pemFingerprint(tls.cert)}`;
    }
    const scratch = mkdtempSync(join(tmpdir(), "mcudpt-check-"));
    try {
      listenTls({ ...a, "tls-cert": join(scratch, "cert.pem"), "tls-key": join(scratch, "key.pem") }, logger, peer);
    } finally {
      rmSync(scratch, { recursive: true, force: true });
    }
    return `TLS (no certificate yet: a start generates a self-signed one in ${cert}, key ${key})`;
  }).value;
}

/** Where a listening socket binds, as the core's bindAddress picks it: "" is every interface. */
async function bindHost(resolver: Resolver, host: string): Promise<string> {
  if (host === "" || host === "*") return "::";
  return (await resolver.resolve(host)).address;
}

/** The IPv6 wildcard, or the IPv4 one on a host without IPv6 (the core's withIPv4Fallback). */
async function withIPv4Fallback<T>(host: string, bind: (host: string) => Promise<T>): Promise<T> {
  if (host !== "::") return bind(host);
  try {
    return await bind("::");
  } catch (error) {
    const code = (error as NodeJS.ErrnoException)?.code;
    if (code !== "EAFNOSUPPORT" && code !== "EADDRNOTAVAIL" && code !== "EPROTONOSUPPORT") throw error;
    return bind("0.0.0.0");
  }
}

interface Port {
  /** How the problem line names it: "--udp dns=:53". */
  what: string;
  protocol: "UDP" | "TCP";
  address: HostPort;
  /** A UDP port range: this many ports from address.port (default 1), reported in one line. */
  ports?: number;
}

/** Binds every port with the transport a start would use, all held at once, then releases them. */
async function bindPorts(transport: Transport, ports: Port[], problems: Problems): Promise<void> {
  const resolver = new Resolver();
  const release: Array<() => void> = [];
  try {
    for (const { what, protocol, address, ports: count = 1 } of ports) {
      let host: string;
      try {
        host = await bindHost(resolver, address.host);
      } catch (error) {
        problems.add(new UserError(`${what}: cannot resolve "${address.host}": ${messageOf(error)}`));
        continue;
      }
      if (protocol === "UDP") {
        // Every port of a range, held at once; one line for the range however many fail.
        const failed: Array<{ port: number; error: unknown }> = [];
        for (let port = address.port; port < address.port + count; port++) {
          try {
            const socket = await withIPv4Fallback(host, (tryHost) =>
              transport.bindUdp({ host: tryHost, port, onDatagram() {}, onError() {} }),
            );
            release.push(() => socket.close());
          } catch (error) {
            failed.push({ port, error });
          }
        }
        if (failed.length > 0) {
          const [first] = failed;
          const more = failed.length > 1 ? ` (and ${failed.length - 1} more of its ${count} ports)` : "";
          const where = formatHostPort(host, first.port);
          problems.add(
            new UserError(`${what}: cannot listen on UDP ${where}${more}: ${bindFailure(first.error, first.port)}`),
          );
        }
        continue;
      }
      try {
        const server = await withIPv4Fallback(host, (tryHost) =>
          transport.listenTcp({
            host: tryHost,
            port: address.port,
            onConnection: (connection) => {
              connection.destroy();
              return { onData() {}, onDrain() {}, onClose() {} };
            },
          }),
        );
        release.push(() => server.close());
      } catch (error) {
        const where = formatHostPort(host, address.port);
        problems.add(new UserError(`${what}: cannot listen on TCP ${where}: ${bindFailure(error, address.port)}`));
      }
    }
  } finally {
    for (const close of release) {
      try {
        close();
      } catch {
        // released anyway when the process exits
      }
    }
  }
}

/**
 * --tcp-buffer as a start would apply it, and what the kernel grants for it: read back with
 * getsockopt on a loopback connection made for the purpose (127.0.0.1, an ephemeral port, both
 * ends sized as the tunnel's would be), then closed. On a transport that cannot set it, the
 * warning a start would log.
 */
async function checkTcpBuffer(
  transport: Transport,
  args: RawArgs,
  problems: Problems,
  logger: Logger,
): Promise<string | undefined> {
  const bytes = collect(problems, args, tcpBufferOption).value;
  if (bytes === undefined) return undefined;
  if (!transport.setsTcpBuffers) {
    logger.log("warn", tcpBufferUnsupported(transport, bytes));
    return `TCP buffers not sized (${transport.name} transport)`;
  }
  let granted: TcpConnection["bufferBytes"];
  try {
    granted = await probeTcpBuffers(transport, bytes);
  } catch (error) {
    problems.add(new UserError(`--tcp-buffer: could not try it on a loopback connection: ${messageOf(error)}`));
    return undefined;
  }
  const { level, message, summary } = tcpBufferGranted(bytes, granted);
  if (level === "warn") logger.log("warn", message);
  return summary;
}

/** The accepted end's buffer sizes on a loopback connection whose both ends asked for `bytes`. */
async function probeTcpBuffers(transport: Transport, bytes: number): Promise<TcpConnection["bufferBytes"]> {
  const quiet = { onData() {}, onDrain() {}, onClose() {} };
  let accepted: (connection: TcpConnection) => void = () => {};
  const arrived = new Promise<TcpConnection>((resolve) => {
    accepted = resolve;
  });
  const server = await transport.listenTcp({
    host: "127.0.0.1",
    port: 0,
    bufferBytes: bytes,
    onConnection: (connection) => {
      accepted(connection);
      return quiet;
    },
  });
  let dialed: TcpConnection | undefined;
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    dialed = await transport.connectTcp({
      host: "127.0.0.1",
      port: server.port,
      timeoutMs: 5000,
      bufferBytes: bytes,
      handlers: quiet,
    });
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error("the loopback connection was not accepted within 5 s")), 5000);
    });
    const connection = await Promise.race([arrived, timeout]);
    const sizes = connection.bufferBytes;
    connection.destroy();
    return sizes;
  } finally {
    clearTimeout(timer);
    dialed?.destroy();
    server.close();
  }
}

/** The summary's words for the carrier a ws:// address or --proxy chose (none for plain TCP). */
function carrierParts(carrier: ReturnType<typeof carrierFor>): string[] {
  const parts: string[] = [];
  const ws = carrier?.webSocket;
  if (ws) {
    parts.push(`WebSocket ${ws.secure ? "wss" : "ws"} path ${ws.path}`);
    if (ws.trustedProxies) parts.push(`client addresses from X-Forwarded-For/Forwarded of ${ws.trustedProxies}`);
  }
  const proxy = carrier?.proxy;
  if (proxy === "none") parts.push("no proxy (--proxy none)");
  else if (proxy) parts.push(`through the proxy ${proxy.text}`);
  return parts;
}

/** The summary's words for lanes and redundancy, when they are not the defaults. */
function laneParts(
  lanes: { lanes?: number; maxLanes?: number } | undefined,
  maxLanesGiven: boolean,
  redundant: boolean,
  marked: Array<{ name?: string; redundant?: boolean }> | undefined,
): string[] {
  const parts: string[] = [];
  if (lanes?.lanes !== undefined && lanes.lanes > 1) parts.push(`${lanes.lanes} lanes`);
  if (maxLanesGiven && lanes?.maxLanes !== undefined) parts.push(`up to ${lanes.maxLanes} lanes per session`);
  if (redundant) parts.push("every datagram on two lanes");
  const twice = (marked ?? []).flatMap((mapping, i) => (mapping.redundant ? [mapping.name ?? `#${i + 1}`] : []));
  if (twice.length > 0) parts.push(`${twice.join(", ")} on two lanes`);
  return parts;
}

/** Checks `mcudpt check …`'s arguments (after "check"); writes the summary or the problems; the exit code. */
export async function runCheck(rest: readonly string[]): Promise<number> {
  const { role, flags } = checkTarget(rest);
  const peer: PeerRole = role === "receiver" ? "sender" : "receiver";
  const problems = new Problems();
  const warnings: string[] = [];
  const logger = warningsLogger(warnings);
  const summary = await checkRole(role, peer, flags, problems, logger, warnings);
  // --log-format json on the command line: JSON lines, as main.ts writes its errors then.
  const json = flags.some((a, i) => a === "--log-format=json" || (a === "--log-format" && flags[i + 1] === "json"));
  const write = (stream: NodeJS.WriteStream, level: string, text: string) =>
    stream.write(
      json ? jsonRecord("mcudpt", text, { level }) : `${level === "info" ? "" : "mcudpt: "}${logLine(text)}\n`,
    );
  for (const warning of warnings) write(process.stderr, "warn", `warning: ${warning}`);
  if (problems.lines.length > 0 || summary === undefined) {
    for (const line of problems.lines) write(process.stderr, "error", line);
    return 2;
  }
  write(process.stdout, "info", summary);
  return 0;
}

/**
 * The problems `check ROLE FLAGS…` would report, one line each (none: a start would accept them),
 * without writing anything: what a reload (SIGHUP) validates the re-read configuration with.
 */
export async function problemsOf(role: Role, flags: string[]): Promise<string[]> {
  const problems = new Problems();
  const warnings: string[] = [];
  const summary = await checkRole(
    role,
    role === "receiver" ? "sender" : "receiver",
    flags,
    problems,
    warningsLogger(warnings),
    warnings,
  );
  return problems.lines.length > 0 || summary !== undefined ? problems.lines : ["the configuration does not check"];
}

async function checkRole(
  role: Role,
  peer: PeerRole,
  flags: string[],
  problems: Problems,
  logger: Logger,
  warnings: string[],
): Promise<string | undefined> {
  const argv = loadConfig(flags, role, problems, (line) => warnings.push(line));
  if (argv === undefined) return undefined;
  let args: RawArgs;
  try {
    args = parseArgs(argv, defsOf(role)) as RawArgs;
  } catch (error) {
    problems.add(error);
    return undefined;
  }

  // In the order the commands read them (commands.ts).
  const common = collect(problems, args, commonOptions);
  const options: CommonOptions | undefined = common.value;
  const mappings = checkMappings(argv, role, problems);
  const peerConfig = stringArg(args, "peer-config");
  const paired = mappings && peerConfig !== undefined ? checkPairing(mappings, role, peerConfig, problems) : undefined;
  const tcp = collect(problems, args, (a) => tcpSide(a, "tcp", role === "receiver" ? "connect" : "listen"));
  if (role === "receiver") collect(problems, args, receiverLimits);
  const ops = collect(problems, args, opsOptions);
  const secretGiven = args.secret !== undefined || args["secret-file"] !== undefined || !!process.env.MCUDPT_SECRET;
  const keyMode = !options?.secret && !secretGiven;
  if (!keyMode) collect(problems, args, (a) => rejectKeyFlagsWithSecret(a, peer));
  const swapped = tcp.value?.swapped ?? (role === "receiver" ? args.connect !== undefined : args.listen !== undefined);
  const listening = role === "receiver" ? !swapped : swapped;
  // Lanes and redundancy as the commands read them: --lanes on the listening side, --redundant
  // without --lanes 2, a --redundant-mappings name this side does not have.
  const lanes = collect(problems, args, (a) => laneOptions(a, !listening)).value;
  const marked = mappings ? collect(problems, args, (a) => withRedundancy(a, mappings)).value : undefined;
  // A ws:// or wss:// address: the carrier's flags, and wss:// standing for --tls.
  const carrierAddress = tcp.value?.carrier;
  let carrier: ReturnType<typeof carrierFor>;
  if (carrierAddress) {
    const side = listening ? `listens for the ${peer}` : `dials the ${peer}`;
    carrier = collect(problems, args, (a) => carrierFor(a, argv, carrierAddress, !listening, side)).value;
    const secured = collect(problems, args, (a) => tlsArgsFor(a, carrierAddress)).value;
    if (secured) args = secured;
  }
  const trust: string[] = [];
  if (keyMode && listening) {
    // mappings="…" on a key line must name this side's mappings (when they could be read).
    const names = mappings?.map(({ name }) => name ?? "");
    const { clean } = collect(problems, args, (a) => listenTrustFor(a, peer, names));
    if (clean)
      trust.push(
        args["authorized-keys"] !== undefined
          ? `${peer}s: only those in ${args["authorized-keys"]}`
          : `${peer}s: known ones or the operator's approval`,
      );
  }
  if (keyMode && !listening) {
    const { clean } = collect(problems, args, (a) => dialPinsFor(a, peer));
    if (clean)
      trust.push(args[`${peer}-key`] !== undefined ? `${peer} key pinned` : `${peer} key remembered on first contact`);
  }
  const tls = listening
    ? checkListenTls(problems, args, logger, peer)
    : collect(problems, args, (a) => dialTls(a, logger, peer) && "TLS").value;
  const key = keyMode ? checkIdentity(problems, args, logger) : undefined;
  if (options) warnAboutSettings(logger, options);
  const transport = options ? collect(problems, args, () => pickTransport(options.transport)).value : undefined;

  const tcpBuffer = transport ? await checkTcpBuffer(transport, args, problems, logger) : undefined;

  const bind = args.bind === true;
  if (bind && transport) {
    const ports: Port[] = [];
    if (role === "receiver" && mappings) {
      for (const mapping of mappings)
        ports.push({
          what: `--udp ${mappingLabel(mapping)}`,
          protocol: "UDP",
          address: mapping.address,
          ports: mapping.ports,
        });
    }
    if (listening && tcp.clean && tcp.value) {
      const flag = role === "receiver" ? "--tcp" : "--listen";
      const address = tcp.value.address;
      ports.push({ what: `${flag} ${formatHostPort(address.host, address.port)}`, protocol: "TCP", address });
    }
    const metrics = ops.value?.metrics;
    if (metrics && metrics.port !== 0)
      ports.push({
        what: `--metrics ${formatHostPort(metrics.host, metrics.port)}`,
        protocol: "TCP",
        address: metrics,
      });
    await bindPorts(transport, ports, problems);
  }
  if (problems.lines.length > 0 || !mappings || !tcp.value) return undefined;

  const { host, port } = tcp.value.address;
  // A dialing side with no host dials this machine (as the roles log it).
  const where = formatHostPort(host || (listening ? "" : "127.0.0.1"), port);
  const parts = [
    `${role} settings OK`,
    `${role === "receiver" ? "UDP" : "targets"} ${mappings.map(mappingLabel).join(", ")}`,
    ...(paired ? [paired] : []),
    listening ? `TCP listen ${where}` : `dials the ${peer} at ${where}`,
    keyMode ? [key ?? "key", ...trust].join(", ") : "shared secret",
    ...(tls ? [tls] : []),
    ...carrierParts(carrier),
    ...laneParts(lanes, args["max-lanes"] !== undefined, args.redundant === true, marked),
    ...(tcpBuffer ? [tcpBuffer] : []),
    ...(ops.value?.metrics ? [`metrics ${formatHostPort(ops.value.metrics.host, ops.value.metrics.port)}`] : []),
    bind ? "ports bindable" : "ports not tried (--bind tries them)",
  ];
  return parts.join("; ");
}
