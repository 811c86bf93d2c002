/**
 * The receiver and sender commands: parse flags, start the role, run until a signal.
 *
 * Role (who listens for UDP) and TCP direction (who dials) are independent: by default the receiver
 * listens on --tcp and the sender dials it (ssh -R, as the original); `receiver --connect` and
 * `sender --listen` turn it round (ssh -L, as udp-over-tcp does).
 */
import { type HostPort, type Logger, startReceiver, startSender, UserError } from "@mcudpt/core";
import { RECEIVER_DEFAULTS } from "@mcudpt/protocol";
import { type ArgsDef, defineCommand } from "citty";
import { stdinApprover } from "./approval.js";
import {
  type CarrierAddress,
  carrierAddressArg,
  carrierArgs,
  carrierFor,
  defaultCarrierAddress,
  tlsArgsFor,
} from "./carrier-options.js";
import { configArgs } from "./config-file.js";
import {
  dialPinsFor,
  identityFor,
  keyArgs,
  listenTrustFor,
  type PeerRole,
  rejectKeyFlagsWithSecret,
  trustArgs,
} from "./identity.js";
import {
  type Observed,
  type Operations,
  observeReceiver,
  observeSender,
  operations,
  opsArgs,
  opsOptions,
  receiverBufferArgs,
  senderBufferArgs,
  udpBufferOption,
} from "./ops/index.js";
import {
  type CommonOptions,
  commonArgs,
  commonOptions,
  laneOptions,
  withRedundancy,
  limit,
  mappingsArg,
  type RawArgs,
} from "./options.js";
import { type ReloadRecord, type ReloadSpec, reloader } from "./reload.js";
import { pickTransport, runtimeDescription } from "./runtime.js";
import { dialTls, listenTls, tlsArgs } from "./tls-options.js";

export const receiverArgs = {
  udp: {
    type: "string",
    description:
      "Public UDP address clients send to (default :1937, all interfaces); repeat for several mappings, optionally named: --udp dns=:53 --udp ntp=:123; a port range (FIRST-LAST, at most 4096 ports in all) maps each port to the sender's target port at the same offset: --udp game=:27015-27030",
    valueHint: "[NAME=][HOST]:PORT[-LAST]",
  },
  tcp: {
    type: "string",
    description:
      "TCP address to listen on for the sender (default :1937, all interfaces); ws://[HOST]:PORT/PATH serves the WebSocket carrier there (behind nginx or a CDN), wss:// the same over TLS",
    valueHint: "[HOST]:PORT|ws://…",
  },
  connect: {
    type: "string",
    description:
      "Dial the sender at this address instead of listening (ssh -L style: the sender runs with --listen); ws:// or wss://HOST[:PORT]/PATH for the WebSocket carrier",
    valueHint: "HOST:PORT|ws://…",
  },
  ...configArgs,
  ...commonArgs,
  ...keyArgs,
  ...trustArgs("sender"),
  "new-flow-rate": {
    type: "string",
    description: `New flows one client address may open per second, bursts of twice that; 0 = no limit (default ${RECEIVER_DEFAULTS.newFlowsPerSecond})`,
    valueHint: "N",
  },
  "amplification-limit": {
    type: "string",
    description: `Until a client sends a second datagram, replies to it total at most N × its bytes (anti-spoofing); 0 = off (default ${RECEIVER_DEFAULTS.amplificationLimit})`,
    valueHint: "N",
  },
  ...receiverBufferArgs,
  ...tlsArgs,
  ...carrierArgs,
  ...opsArgs,
} satisfies ArgsDef;

export const senderArgs = {
  udp: {
    type: "string",
    description:
      "Target UDP service the flows are forwarded to (default :1937, this machine); repeat for several mappings, in the receiver's order or by the same names; a port range (HOST:FIRST-LAST) as long as the receiver's sends each of its ports to the port at the same offset: --udp game=10.0.0.5:27015-27030",
    valueHint: "[NAME=]HOST:PORT[-LAST]",
  },
  tcp: {
    type: "string",
    description:
      "Receiver's TCP address to dial (default :1937, this machine); ws:// or wss://HOST[:PORT]/PATH dials it over the WebSocket carrier (through nginx, a CDN, a proxy)",
    valueHint: "HOST:PORT|ws://…",
  },
  listen: {
    type: "string",
    description:
      "Listen on this TCP address for the receiver instead of dialing it (ssh -L style: the receiver runs with --connect); ws://[HOST]:PORT/PATH for the WebSocket carrier",
    valueHint: "[HOST]:PORT|ws://…",
  },
  ...configArgs,
  ...commonArgs,
  ...keyArgs,
  ...trustArgs("receiver"),
  ...tlsArgs,
  ...carrierArgs,
  "proxy-protocol": {
    type: "boolean",
    description: "Prepend a PROXY protocol v2 header to each datagram sent to the target, so it sees the real client",
  },
  ...senderBufferArgs,
  ...opsArgs,
} satisfies ArgsDef;

/**
 * The TCP side this end takes: `flag` is the default direction's flag, `swap` the other one. --tcp
 * is the receiver's listening address (its swap is --connect) and the sender's to dial (--listen).
 */
export function tcpSide(
  args: RawArgs,
  flag: "tcp",
  swap: "connect" | "listen",
): { address: HostPort; carrier: CarrierAddress; swapped: boolean } {
  const tcpListens = swap === "connect";
  const swapped = carrierAddressArg(args, swap, !tcpListens);
  if (swapped && args[flag] !== undefined) throw new UserError(`give --${flag} or --${swap}, not both`);
  const carrier = swapped ?? carrierAddressArg(args, flag, tcpListens) ?? defaultCarrierAddress();
  return { address: carrier.address, carrier, swapped: swapped !== undefined };
}

/** The receiver's per-client limits. */
export function receiverLimits(args: RawArgs): { newFlowsPerSecond: number; amplificationLimit: number } {
  return {
    newFlowsPerSecond: limit(args, "new-flow-rate", RECEIVER_DEFAULTS.newFlowsPerSecond),
    amplificationLimit: limit(args, "amplification-limit", RECEIVER_DEFAULTS.amplificationLimit, 10_000),
  };
}

/** Settings that work but surprise: say so once at start-up. */
export function warnAboutSettings(logger: Logger, options: CommonOptions): void {
  for (const warning of options.warnings) logger.log("warn", warning);
  if (options.idleTimeoutMs < options.keepaliveMs * 3) {
    logger.log(
      "warn",
      `--idle-timeout ${options.idleTimeoutMs / 1000} s is shorter than 3 × --keepalive (${(options.keepaliveMs * 3) / 1000} s): ` +
        "flows may idle out before a dead connection is noticed, and then cannot resume",
    );
  }
}

function machineConfig(options: CommonOptions) {
  return {
    secret: options.secret,
    idleTimeoutMs: options.idleTimeoutMs,
    maxFlows: options.maxFlows,
    keepaliveMs: options.keepaliveMs,
    handshakeTimeoutMs: options.handshakeTimeoutMs,
    maxBufferBytes: options.maxBufferBytes,
    nudgeMs: options.nudgeMs,
    redundant: options.redundant,
    redundantMaxBytes: options.redundantMaxBytes,
    maxDelayMs: options.maxDelayMs,
  };
}

/**
 * Runs until SIGINT/SIGTERM, then closes gracefully (goodbye to the peer) and exits 0. A second
 * signal exits at once. SIGHUP reloads (`hangup`), never stops. Errors thrown by callbacks are
 * logged, never fatal: the tunnel stays up.
 */
async function runUntilSignal(logger: Logger, close: () => Promise<void>, hangup: () => void): Promise<never> {
  // Installed before anything starts: SIGHUP's default action would end the process.
  if (process.platform !== "win32") process.on("SIGHUP", hangup);
  process.on("uncaughtException", (error) =>
    logger.log("error", `unexpected error (please report): ${error?.stack ?? error}`),
  );
  process.on("unhandledRejection", (error) =>
    logger.log("error", `unexpected rejection (please report): ${(error as Error)?.stack ?? error}`),
  );
  return new Promise<never>(() => {
    let stopping = false;
    const stop = (signal: string) => {
      if (stopping) process.exit(1);
      stopping = true;
      logger.log("info", `${signal}: shutting down`);
      close().then(
        () => process.exit(0),
        () => process.exit(0),
      );
    };
    process.on("SIGINT", () => stop("SIGINT"));
    process.on("SIGTERM", () => stop("SIGTERM"));
  });
}

/** Trust, key pins, TLS, the carrier and the operator prompt for the TCP side this end takes. */
function sideOptions(
  givenArgs: RawArgs,
  rawArgs: readonly string[],
  address: CarrierAddress,
  ops: Operations,
  peer: PeerRole,
  listening: boolean,
  keyMode: boolean,
  mappingNames: readonly string[],
) {
  const logger = ops.logger;
  const carrier = carrierFor(
    givenArgs,
    rawArgs,
    address,
    !listening,
    listening ? `listens for the ${peer}` : `dials the ${peer}`,
  );
  const args = tlsArgsFor(givenArgs, address);
  return {
    carrier,
    admission: keyMode && listening ? listenTrustFor(args, peer, mappingNames) : undefined,
    pins: keyMode && !listening ? dialPinsFor(args, peer) : undefined,
    // Flag errors before files are created: a bad command line leaves nothing behind.
    tls: listening ? listenTls(args, logger, peer) : dialTls(args, logger, peer),
    // With an allowlist nobody is asked: unknown keys are refused.
    askOperator:
      keyMode && listening && args["authorized-keys"] === undefined
        ? ops.holdingStatus(stdinApprover(peer, { prompt: ops.prompt }))
        : undefined,
  };
}

/** The part of a role's reload (SIGHUP) that is the same for both roles. */
function reloadBase(role: "receiver" | "sender", args: RawArgs, ops: Operations, record: ReloadRecord) {
  const swap = role === "receiver" ? "connect" : "listen";
  return {
    role,
    secured: (a: RawArgs) => tlsArgsFor(a, tcpSide(a, "tcp", swap).carrier),
    defs: { receiver: receiverArgs, sender: senderArgs },
    args,
    ops,
    record,
    // Loaded when used: check.ts itself reads this module's flag definitions.
    validate: (flags: string[]) => import("./check.js").then((check) => check.problemsOf(role, flags)),
  } satisfies Partial<ReloadSpec>;
}

/** The certificate a listening side serves, for a reload to compare. */
function servedCertificate(tls: ReturnType<typeof sideOptions>["tls"]) {
  return tls && "cert" in tls ? { cert: tls.cert, key: tls.key } : undefined;
}

/**
 * Starts a role and runs it until a signal. Signal handlers go in before anything is bound, so a
 * SIGTERM during start-up still closes cleanly. A refused key or certificate is not a network error:
 * dialing stopped (the reason is logged), so exit 1 for the operator (or systemd) to see.
 */
async function runRole<H extends { fatal: Promise<string>; close(): Promise<void> }>(
  ops: Operations,
  start: () => Promise<H>,
  observe: (handle: H) => Observed,
  reload: (handle: H) => () => Promise<void>,
): Promise<void> {
  let handle: H | undefined;
  let onHangup: (() => Promise<void>) | undefined;
  let hungUp = false;
  const running = runUntilSignal(
    ops.logger,
    () => ops.stop().then(() => handle?.close()),
    // A SIGHUP during start-up reloads once the role runs.
    () => (onHangup ? void onHangup() : (hungUp = true)),
  );
  await ops.listenMetrics();
  const started = await start();
  handle = started;
  onHangup = reload(started);
  if (hungUp) void onHangup();
  void started.fatal.then(() =>
    ops
      .stop()
      .then(() => started.close())
      .finally(() => process.exit(1)),
  );
  await ops.start(observe(started));
  await running;
}

export const receiverCommand = defineCommand({
  meta: {
    name: "receiver",
    description: "Public side: listen for UDP clients; the sender connects (or, with --connect, is dialed)",
  },
  args: receiverArgs,
  async run({ args, rawArgs }) {
    const options = commonOptions(args);
    const mappings = withRedundancy(
      args,
      mappingsArg(rawArgs, "receiver").map(({ name, address: udp, ports }) => ({ name, udp, ports })),
    );
    const tcp = tcpSide(args, "tcp", "connect");
    const dialing = tcp.swapped;
    const { newFlowsPerSecond, amplificationLimit } = receiverLimits(args);
    const udpBufferBytes = udpBufferOption(args);
    const ops = operations("mcudpt receiver", options.logLevel, opsOptions(args));
    const record: ReloadRecord = { ok: 0, failed: 0 };
    const logger = ops.logger;
    const keyMode = !options.secret;
    if (!keyMode) rejectKeyFlagsWithSecret(args, "sender");
    const names = mappings.map(({ name }) => name ?? "");
    const side = sideOptions(args, rawArgs, tcp.carrier, ops, "sender", !dialing, keyMode, names);
    const identity = keyMode ? identityFor(args, logger) : undefined;
    warnAboutSettings(logger, options);
    const transport = pickTransport(options.transport);
    logger.log("debug", `runtime: ${runtimeDescription()}`);
    await runRole(
      ops,
      () =>
        startReceiver({
          transport,
          mappings,
          tcp: tcp.address,
          tcpMode: dialing ? "dial" : "listen",
          config: {
            ...machineConfig(options),
            ...laneOptions(args, dialing),
            identity,
            newFlowsPerSecond,
            amplificationLimit,
          },
          logger,
          ...side,
          udpBufferBytes,
        }),
      (handle) => ({ ...observeReceiver(handle, transport.name), reloads: () => record }),
      (handle) =>
        reloader({
          ...reloadBase("receiver", args, ops, record),
          secret: options.secret,
          listening: !dialing,
          keyMode,
          keyFingerprint: identity?.fingerprint,
          tls: servedCertificate(side.tls),
          clientLimits: receiverLimits,
          handle,
        }),
    );
  },
});

export const senderCommand = defineCommand({
  meta: {
    name: "sender",
    description:
      "Private side: connect to the receiver (or, with --listen, wait for it) and forward its flows to UDP targets",
  },
  args: senderArgs,
  async run({ args, rawArgs }) {
    const options = commonOptions(args);
    const mappings = withRedundancy(
      args,
      mappingsArg(rawArgs, "sender").map(({ name, address: target, ports }) => ({
        name,
        target,
        ports,
      })),
    );
    const tcp = tcpSide(args, "tcp", "listen");
    const listening = tcp.swapped;
    const udpBufferBytes = udpBufferOption(args);
    const ops = operations("mcudpt sender", options.logLevel, opsOptions(args));
    const record: ReloadRecord = { ok: 0, failed: 0 };
    const logger = ops.logger;
    const keyMode = !options.secret;
    if (!keyMode) rejectKeyFlagsWithSecret(args, "receiver");
    const names = mappings.map(({ name }) => name ?? "");
    const side = sideOptions(args, rawArgs, tcp.carrier, ops, "receiver", listening, keyMode, names);
    const identity = keyMode ? identityFor(args, logger) : undefined;
    if (identity) logger.log("info", `sender key ${identity.fingerprint} (public key in ${identity.path}.pub)`);
    warnAboutSettings(logger, options);
    const transport = pickTransport(options.transport);
    logger.log("debug", `runtime: ${runtimeDescription()}`);
    await runRole(
      ops,
      () =>
        startSender({
          transport,
          mappings,
          tcp: tcp.address,
          tcpMode: listening ? "listen" : "dial",
          config: { ...machineConfig(options), ...laneOptions(args, !listening), identity },
          logger,
          ...side,
          proxyProtocol: args["proxy-protocol"] === true,
          udpBufferBytes,
        }),
      (handle) => ({ ...observeSender(handle, transport.name), reloads: () => record }),
      (handle) =>
        reloader({
          ...reloadBase("sender", args, ops, record),
          secret: options.secret,
          listening,
          keyMode,
          keyFingerprint: identity?.fingerprint,
          tls: servedCertificate(side.tls),
          handle,
        }),
    );
  },
});
