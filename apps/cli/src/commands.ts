/** The receiver and sender commands: parse flags, start the role, run until a signal. */
import { type Logger, startReceiver, startSender } from "@mcudpt/core";
import { RECEIVER_DEFAULTS } from "@mcudpt/protocol";
import { type ArgsDef, defineCommand } from "citty";
import { stdinApprover } from "./approval.js";
import { configArgs } from "./config-file.js";
import {
  identityFor,
  keyArgs,
  receiverPinsFor,
  receiverTrustArgs,
  rejectKeyFlagsWithSecret,
  senderTrustArgs,
  senderTrustFor,
} from "./identity.js";
import { observeReceiver, observeSender, operations, opsArgs, opsOptions } from "./ops/index.js";
import { address, type CommonOptions, commonArgs, commonOptions, limit } from "./options.js";
import { pickTransport, runtimeDescription } from "./runtime.js";
import { receiverTls, receiverTlsArgs, senderTls, senderTlsArgs } from "./tls-options.js";

export const receiverArgs = {
  udp: {
    type: "string",
    description: "Public UDP address clients send to (default :1937, all interfaces)",
    valueHint: "[HOST]:PORT",
  },
  tcp: {
    type: "string",
    description: "TCP address the sender connects to (default :1937, all interfaces)",
    valueHint: "[HOST]:PORT",
  },
  ...configArgs,
  ...commonArgs,
  ...keyArgs,
  ...receiverTrustArgs,
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
  ...receiverTlsArgs,
  ...opsArgs,
} satisfies ArgsDef;

export const senderArgs = {
  udp: {
    type: "string",
    description: "Target UDP service the flows are forwarded to (default :1937, this machine)",
    valueHint: "HOST:PORT",
  },
  tcp: {
    type: "string",
    description: "Receiver's TCP address (default :1937, this machine)",
    valueHint: "HOST:PORT",
  },
  ...configArgs,
  ...commonArgs,
  ...keyArgs,
  ...senderTrustArgs,
  ...senderTlsArgs,
  "proxy-protocol": {
    type: "boolean",
    description: "Prepend a PROXY protocol v2 header to each datagram sent to the target, so it sees the real client",
  },
  ...opsArgs,
} satisfies ArgsDef;

/** Settings that work but surprise: say so once at start-up. */
function warnAboutSettings(logger: Logger, options: CommonOptions): void {
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
  };
}

/**
 * Runs until SIGINT/SIGTERM, then closes gracefully (goodbye to the peer) and exits 0. A second
 * signal exits at once. Errors thrown by callbacks are logged, never fatal: the tunnel stays up.
 */
async function runUntilSignal(logger: Logger, close: () => Promise<void>): Promise<never> {
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

export const receiverCommand = defineCommand({
  meta: { name: "receiver", description: "Public side: listen for UDP clients and for the sender's TCP connection" },
  args: receiverArgs,
  async run({ args }) {
    const options = commonOptions(args);
    const udp = address(args, "udp");
    const tcp = address(args, "tcp");
    const newFlowsPerSecond = limit(args, "new-flow-rate", RECEIVER_DEFAULTS.newFlowsPerSecond);
    const amplificationLimit = limit(args, "amplification-limit", RECEIVER_DEFAULTS.amplificationLimit, 10_000);
    const ops = operations("mcudpt receiver", options.logLevel, opsOptions(args));
    const logger = ops.logger;
    const keyMode = !options.secret;
    if (!keyMode) rejectKeyFlagsWithSecret(args);
    const trust = keyMode ? senderTrustFor(args) : undefined;
    // Flag errors first, files created after: a bad command line leaves nothing behind.
    const tls = receiverTls(args, logger);
    const identity = keyMode ? identityFor(args, logger) : undefined;
    warnAboutSettings(logger, options);
    const transport = pickTransport(options.transport);
    logger.log("debug", `runtime: ${runtimeDescription()}`);
    const handle = await startReceiver({
      transport,
      udp,
      tcp,
      config: { ...machineConfig(options), identity, newFlowsPerSecond, amplificationLimit },
      logger,
      trust,
      // With an allowlist nobody is asked: unknown keys are refused.
      askOperator: keyMode && args["authorized-keys"] === undefined ? ops.holdingStatus(stdinApprover(logger)) : undefined,
      tls,
    });
    // Signal handlers first: a SIGTERM while the metrics endpoint starts must still close cleanly.
    const running = runUntilSignal(logger, () => ops.stop().then(() => handle.close()));
    await ops.start(observeReceiver(handle, transport.name));
    await running;
  },
});

export const senderCommand = defineCommand({
  meta: { name: "sender", description: "Private side: connect to the receiver and forward its flows to a UDP target" },
  args: senderArgs,
  async run({ args }) {
    const options = commonOptions(args);
    const target = address(args, "udp");
    const receiver = address(args, "tcp");
    const ops = operations("mcudpt sender", options.logLevel, opsOptions(args));
    const logger = ops.logger;
    const keyMode = !options.secret;
    if (!keyMode) rejectKeyFlagsWithSecret(args);
    const pins = keyMode ? receiverPinsFor(args) : undefined;
    const tls = senderTls(args, logger);
    const identity = keyMode ? identityFor(args, logger) : undefined;
    if (identity) logger.log("info", `sender key ${identity.fingerprint} (public key in ${identity.path}.pub)`);
    warnAboutSettings(logger, options);
    const transport = pickTransport(options.transport);
    logger.log("debug", `runtime: ${runtimeDescription()}`);
    const handle = await startSender({
      transport,
      target,
      receiver,
      config: { ...machineConfig(options), identity },
      logger,
      pins,
      tls,
      proxyProtocol: args["proxy-protocol"] === true,
    });
    // A refused receiver key or certificate is not a network error: the sender gave up (the reason is
    // logged); exit non-zero so the operator (or systemd) sees it.
    void handle.fatal.then(() => ops.stop().then(() => handle.close()).finally(() => process.exit(1)));
    // Signal handlers first: a SIGTERM while the metrics endpoint starts must still close cleanly.
    const running = runUntilSignal(logger, () => ops.stop().then(() => handle.close()));
    await ops.start(observeSender(handle, transport.name));
    await running;
  },
});
