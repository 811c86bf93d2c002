/**
 * Operations around a running receiver or sender: the log format, the live status line on a TTY,
 * the metrics endpoint and the SIGUSR1 snapshot. The commands call operations() before starting the
 * role (for its logger) and start() once it runs.
 */
import type { Logger } from "@mcudpt/core";
import type { LogLevel } from "@mcudpt/protocol";
import pkg from "../../package.json" with { type: "json" };
import { PromptLine } from "../approval.js";
import { runtimeDescription } from "../runtime.js";
import { LEVEL_ORDER, type LogStream, makeLogger } from "./logging.js";
import type { Registry } from "prom-client";
import type { MetricsServer } from "./metrics.js";
import type { Observed } from "./observe.js";
import type { OpsOptions } from "./options.js";
import { onSnapshotSignal } from "./snapshot.js";
import { StatusLine } from "./status.js";

export { type Observed, observeReceiver, observeSender } from "./observe.js";
export { opsArgs, opsOptions } from "./options.js";

export interface Operations {
  /** The logger for the role: lines go above the status line when there is one, never onto an open prompt. */
  readonly logger: Logger;
  /** The operator's question line on stdout, which log lines and snapshots go around (see PromptLine). */
  readonly prompt: PromptLine;
  /** Binds the --metrics port (if any) before the role starts, so a taken port fails first. */
  listenMetrics(): Promise<void>;
  start(observed: Observed): Promise<void>;
  /** Wraps the operator approval: no status line is drawn while a question waits for an answer. */
  holdingStatus<A extends unknown[], R>(ask: (...args: A) => Promise<R>): (...args: A) => Promise<R>;
  stop(): Promise<void>;
  /** From now on, lines below `level` are dropped (a reload changed --verbose or --quiet). */
  setLogLevel(level: LogLevel): void;
}

export function operations(
  name: string,
  level: LogLevel,
  options: OpsOptions,
  io: {
    /** The operator's question line (default: one on stdout). */
    prompt?: PromptLine;
    /** Where log lines and snapshots go (default: process.stderr). */
    stderr?: LogStream;
  } = {},
): Operations {
  const prompt = io.prompt ?? new PromptLine();
  const stderr = io.stderr ?? process.stderr;
  let status: StatusLine | undefined;
  let metrics: MetricsServer | undefined;
  let registry: Registry | undefined;
  let removeSignal: (() => void) | undefined;
  // Every line actually written (not those below the log level) goes above the status line and
  // around an open operator question, never onto it.
  const terminal: LogStream = {
    write(text) {
      status?.clear();
      prompt.interrupt(() => stderr.write(text));
      status?.redraw();
      return true;
    },
  };
  // Every line is formatted by one logger that takes all levels; the level is checked here, so a
  // reload can change it.
  const lines = makeLogger(name, "debug", options.logFormat, terminal);
  let minimum = LEVEL_ORDER[level];
  const logger: Logger = {
    log(lineLevel, message) {
      if (LEVEL_ORDER[lineLevel] >= minimum) lines.log(lineLevel, message);
    },
  };
  const listenMetrics = async (): Promise<void> => {
    if (!options.metrics || metrics) return;
    // Loaded on demand: a separate chunk of the bundle (see the file's comment).
    const { startMetricsServer } = await import("./metrics.js");
    metrics = await startMetricsServer(() => registry, options.metrics.host, options.metrics.port);
  };
  return {
    logger,
    prompt,
    listenMetrics,
    async start(observed) {
      if (options.metrics) {
        await listenMetrics();
        const { metricsRegistry } = await import("./metrics.js");
        registry = metricsRegistry(observed, {
          role: observed.role,
          version: pkg.version,
          transport: observed.transport,
          runtime: runtimeDescription(),
        });
        logger.log("info", `metrics at ${metrics?.url}`);
      }
      removeSignal = onSnapshotSignal(observed, name, options.logFormat, (text) => terminal.write(text));
      if (StatusLine.wanted(process.stderr, options.quiet, options.logFormat)) {
        status = new StatusLine(observed, process.stderr);
        status.start();
      }
    },
    holdingStatus(ask) {
      let open = 0;
      return async (...args) => {
        if (open++ === 0 && status) {
          status.clear();
          status.paused = true;
        }
        try {
          return await ask(...args);
        } finally {
          if (--open === 0 && status) status.paused = false;
        }
      };
    },
    setLogLevel(next) {
      minimum = LEVEL_ORDER[next];
    },
    async stop() {
      status?.stop();
      status = undefined;
      removeSignal?.();
      await metrics?.close();
    },
  };
}
export { receiverBufferArgs, senderBufferArgs, udpBufferOption } from "./udp-buffer.js";
