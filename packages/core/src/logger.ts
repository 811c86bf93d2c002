/** One line per event on stderr. The protocol's log outputs and the runtime's own go through here. */
import type { LogLevel } from "@mcudpt/protocol";

export interface Logger {
  log(level: LogLevel, message: string): void;
}

const ORDER: Record<LogLevel, number> = { debug: 0, info: 1, warn: 2, error: 3 };

export function stderrLogger(options: { name: string; level?: LogLevel; timestamps?: boolean }): Logger {
  const min = ORDER[options.level ?? "info"];
  const timestamps = options.timestamps ?? true;
  return {
    log(level, message) {
      if (ORDER[level] < min) return;
      const stamp = timestamps ? `${new Date().toISOString()} ` : "";
      const tag = level === "info" ? "" : `${level}: `;
      process.stderr.write(`${stamp}${options.name}: ${tag}${message}\n`);
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
