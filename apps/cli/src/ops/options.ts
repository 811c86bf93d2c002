/** The operations flags (--metrics, --log-format), shared by receiver and sender, strictly validated. */
import { parseHostPort, UserError } from "@mcudpt/core";
import type { ArgsDef } from "citty";
import type { LogFormat } from "./logging.js";

export const opsArgs = {
  metrics: {
    type: "string",
    description:
      "Serve Prometheus metrics at http://HOST:PORT/metrics (HOST defaults to 127.0.0.1; give 0.0.0.0 or [::] to expose it)",
    valueHint: "[HOST:]PORT",
  },
  "log-format": {
    type: "enum",
    options: ["text", "json"],
    default: "text",
    description: "Log lines as text, or one JSON object per line (for log collectors; no status line)",
  },
} satisfies ArgsDef;

export interface OpsOptions {
  metrics: { host: string; port: number } | undefined;
  logFormat: LogFormat;
  quiet: boolean;
}

/** "9100", ":9100", "127.0.0.1:9100", "[::1]:9100"; port 0 picks a free port (logged). */
export function parseMetricsAddress(text: string): { host: string; port: number } {
  const value = text.trim();
  const { host, port } = /^\d+$/.test(value)
    ? parseHostPort(`:${value}`, "--metrics", { allowPortZero: true })
    : parseHostPort(value, "--metrics", { allowPortZero: true });
  // Metrics reveal traffic figures: only listen beyond loopback when an address says so.
  return { host: host === "" ? "127.0.0.1" : host, port };
}

export function opsOptions(args: Record<string, unknown>): OpsOptions {
  const metrics = args.metrics;
  if (Array.isArray(metrics)) throw new UserError("--metrics given more than once");
  if (metrics !== undefined && (typeof metrics !== "string" || metrics.trim() === ""))
    throw new UserError("--metrics needs a value");
  const format = args["log-format"] ?? "text";
  if (format !== "text" && format !== "json") throw new UserError(`--log-format: "${format}" is not text or json`);
  return {
    metrics: typeof metrics === "string" ? parseMetricsAddress(metrics) : undefined,
    logFormat: format,
    quiet: Boolean(args.quiet),
  };
}
