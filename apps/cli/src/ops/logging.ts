/**
 * Log output for the long-running commands: the usual text lines, or one JSON object per line for
 * log collectors (journald with a JSON parser, Docker/Kubernetes log pipelines, Loki, ...).
 * Either way every message is one printable, bounded line (logLine): in JSON that means each line
 * parses on its own, holds exactly one event, and no string in it carries a raw control character,
 * a line separator (U+2028/U+2029, which some JavaScript-based tools split on) or a lone surrogate.
 */
import { type Logger, logLine, stderrLogger } from "@mcudpt/core";
import type { LogLevel } from "@mcudpt/protocol";

export type LogFormat = "text" | "json";

/** Log levels, least severe first. */
export const LEVEL_ORDER: Record<LogLevel, number> = { debug: 0, info: 1, warn: 2, error: 3 };

/** Where log lines go: process.stderr, unless a test gives its own. */
export interface LogStream {
  write(text: string): unknown;
}

export function makeLogger(
  name: string,
  level: LogLevel,
  format: LogFormat,
  stream: LogStream = process.stderr,
): Logger {
  if (format === "text") return stderrLogger({ name, level, stream });
  const min = LEVEL_ORDER[level];
  return {
    log(lineLevel, message) {
      if (LEVEL_ORDER[lineLevel] < min) return;
      stream.write(jsonRecord(name, String(message), { level: lineLevel }));
    },
  };
}

/**
 * One JSON line (a log event, a SIGUSR1 snapshot record): `time`, `level` (info unless `fields` says
 * otherwise), `name`, `msg`, then `fields`. Every string in it, keys included, is made printable
 * and bounded (logLine) before JSON.stringify, so the line is one line whatever the strings held.
 */
export function jsonRecord(name: string, msg: string, fields: Record<string, unknown>): string {
  const record = { time: new Date().toISOString(), level: "info", name, msg, ...fields };
  return `${JSON.stringify(clean(record, 0))}\n`;
}

/** Strings made printable and bounded, all the way down (plain objects and arrays; depth-limited). */
function clean(value: unknown, depth: number): unknown {
  if (typeof value === "string") return logLine(value);
  if (value === null || typeof value !== "object" || depth > 8) return value;
  if (Array.isArray(value)) return value.map((item) => clean(item, depth + 1));
  const proto = Object.getPrototypeOf(value);
  if (proto !== Object.prototype && proto !== null) return value; // a Date, a Buffer...: their own toJSON
  const out: Record<string, unknown> = {};
  for (const [key, item] of Object.entries(value)) out[logLine(key, 200)] = clean(item, depth + 1);
  return out;
}
