/**
 * Log output for the long-running commands: the usual text lines, or one JSON object per line for
 * log collectors (journald with a JSON parser, Docker/Kubernetes log pipelines, Loki, ...).
 */
import { type Logger, stderrLogger } from "@mcudpt/core";
import type { LogLevel } from "@mcudpt/protocol";

export type LogFormat = "text" | "json";

const ORDER: Record<LogLevel, number> = { debug: 0, info: 1, warn: 2, error: 3 };

export function makeLogger(name: string, level: LogLevel, format: LogFormat): Logger {
  if (format === "text") return stderrLogger({ name, level });
  const min = ORDER[level];
  return {
    log(lineLevel, message) {
      if (ORDER[lineLevel] < min) return;
      process.stderr.write(
        `${JSON.stringify({ time: new Date().toISOString(), level: lineLevel, name, msg: message })}\n`,
      );
    },
  };
}

/** Writes a structured record (a SIGUSR1 snapshot) as one JSON line, whatever the level. */
export function jsonRecord(name: string, msg: string, fields: Record<string, unknown>): string {
  return `${JSON.stringify({ time: new Date().toISOString(), level: "info", name, msg, ...fields })}\n`;
}
