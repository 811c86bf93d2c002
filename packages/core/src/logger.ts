/**
 * One line per event on stderr. The protocol's log outputs and the runtime's own go through here.
 * Every message is made one printable, bounded line (logLine): a peer's text cannot forge a line of
 * its own, put terminal escapes on the operator's terminal, or make a multi-megabyte line.
 */
import type { LogLevel } from "@mcudpt/protocol";
import { logLine } from "./log-line.js";

export interface Logger {
  log(level: LogLevel, message: string): void;
}

const ORDER: Record<LogLevel, number> = { debug: 0, info: 1, warn: 2, error: 3 };

export function stderrLogger(options: {
  name: string;
  level?: LogLevel;
  timestamps?: boolean;
  /** Where lines go (default: process.stderr). */
  stream?: { write(text: string): unknown };
}): Logger {
  const min = ORDER[options.level ?? "info"];
  const timestamps = options.timestamps ?? true;
  const name = logLine(options.name, 200);
  return {
    log(level, message) {
      if (ORDER[level] < min) return;
      const stamp = timestamps ? `${new Date().toISOString()} ` : "";
      const tag = level === "info" ? "" : `${level}: `;
      (options.stream ?? process.stderr).write(`${stamp}${name}: ${tag}${logLine(String(message))}\n`);
    },
  };
}

export const silentLogger: Logger = { log() {} };

/** Logs at most once per `intervalMs` per key, counting what it held back (ICMP storms, floods). */
export class RateLimitedLog {
  private readonly last = new Map<string, { at: number; suppressed: number }>();
  constructor(
    private readonly logger: Logger,
    private readonly intervalMs = 10_000,
  ) {}

  log(key: string, level: LogLevel, message: string, now = Date.now()): void {
    const entry = this.last.get(key);
    if (entry && now - entry.at < this.intervalMs) {
      entry.suppressed++;
      return;
    }
    const more = entry && entry.suppressed > 0 ? ` (${entry.suppressed} more since the last report)` : "";
    this.last.set(key, { at: now, suppressed: 0 });
    this.logger.log(level, message + more);
  }
}
