/**
 * Operations around a running receiver or sender: the log format, the live status line on a TTY,
 * the metrics endpoint and the SIGUSR1 snapshot. The commands call operations() before starting the
 * role (for its logger) and start() once it runs.
 */
import type { Logger } from "@mcudpt/core";
import type { LogLevel } from "@mcudpt/protocol";
import pkg from "../../package.json" with { type: "json" };
import { runtimeDescription } from "../runtime.js";
import { makeLogger } from "./logging.js";
import type { MetricsServer } from "./metrics.js";
import type { Observed } from "./observe.js";
import type { OpsOptions } from "./options.js";
import { onSnapshotSignal } from "./snapshot.js";
import { StatusLine } from "./status.js";

export { type Observed, observeReceiver, observeSender } from "./observe.js";
export { opsArgs, opsOptions } from "./options.js";

export interface Operations {
  /** The logger for the role: lines go above the status line when there is one. */
  readonly logger: Logger;
  start(observed: Observed): Promise<void>;
  /** Wraps the operator approval: no status line is drawn while a question waits for an answer. */
  holdingStatus<A extends unknown[], R>(ask: (...args: A) => Promise<R>): (...args: A) => Promise<R>;
  stop(): Promise<void>;
}

export function operations(name: string, level: LogLevel, options: OpsOptions): Operations {
  const base = makeLogger(name, level, options.logFormat);
  let status: StatusLine | undefined;
  let metrics: MetricsServer | undefined;
  let removeSignal: (() => void) | undefined;
  const logger: Logger = {
    log(lineLevel, message) {
      status?.clear();
      base.log(lineLevel, message);
      status?.redraw();
    },
  };
  return {
    logger,
    async start(observed) {
      if (options.metrics) {
        // Loaded on demand: a separate chunk of the bundle (see the file's comment).
        const { metricsRegistry, startMetricsServer } = await import("./metrics.js");
        metrics = await startMetricsServer(
          metricsRegistry(observed, {
            role: observed.role,
            version: pkg.version,
            transport: observed.transport,
            runtime: runtimeDescription(),
          }),
          options.metrics.host,
          options.metrics.port,
        );
        logger.log("info", `metrics at ${metrics.url}`);
      }
      removeSignal = onSnapshotSignal(observed, name, options.logFormat, (text) => {
        status?.clear();
        process.stderr.write(text);
        status?.redraw();
      });
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
    async stop() {
      status?.stop();
      status = undefined;
      removeSignal?.();
      await metrics?.close();
    },
  };
}
