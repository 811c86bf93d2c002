/**
 * `--metrics [HOST:]PORT`: Prometheus text format over HTTP, built with prom-client (runs on Node and
 * Bun). Every value is read from the machine's own counters when scraped (collect callbacks), so
 * nothing is added to the datagram path. Loaded only when --metrics is given (a separate chunk):
 * the other commands do not pay for parsing prom-client at start-up.
 *
 * Every label value goes through labelValue(): prom-client escapes only backslash, double quote and
 * newline in label values, so a CR, an ESC or a U+2028 in a mapping name (or, later, anything a peer
 * chose) would reach the scrape raw. labelValue makes it printable and bounded first.
 */
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { bindFailure, formatHostPort, logLine, messageOf, UserError } from "@mcudpt/core";
import type { DropReason, LaneInfo, LaneTotals } from "@mcudpt/protocol";
import { Counter, Gauge, Registry } from "prom-client";
import type { MappingRow, Observed, SenderRow } from "./observe.js";

export interface MetricsServer {
  readonly url: string;
  close(): Promise<void>;
}

/** Longest label value in a scrape, in characters: a label names something, it does not carry text. */
export const LABEL_VALUE_MAX = 128;

/** A label value as it may appear in a scrape: printable (no control or format characters), bounded. */
export function labelValue(value: unknown): string {
  return logLine(String(value), LABEL_VALUE_MAX);
}

/** Each value of `labels` through labelValue (label names are ours, and constant). */
function labels<K extends string>(values: Record<K, unknown>): Record<K, string> {
  const out = {} as Record<K, string>;
  for (const key of Object.keys(values) as K[]) out[key] = labelValue(values[key]);
  return out;
}

/**
 * The mapping label of each row: labelValue of its name, made unique (two names alike in their
 * first LABEL_VALUE_MAX characters would otherwise be summed into one series, or overwrite it).
 */
function mappingLabels(rows: readonly MappingRow[]): string[] {
  const seen = new Set<string>();
  return rows.map((row, i) => {
    let label = labelValue(row.label);
    if (seen.has(label)) label = `${logLine(String(row.label), LABEL_VALUE_MAX - 8)} (#${i + 1})`;
    seen.add(label);
    return label;
  });
}

/** Builds the registry for one running role. `info` becomes labels of mcudpt_info. */
export function metricsRegistry(observed: Observed, info: Record<string, string>): Registry {
  const registry = new Registry();
  const registers = [registry];
  const stats = observed.stats;
  // Counters mirror totals kept elsewhere: reset, then add the current total.
  const total = (name: string, help: string, value: () => number) =>
    new Counter({
      name,
      help,
      registers,
      collect() {
        this.reset();
        this.inc(value());
      },
    });
  const byLabel = (name: string, help: string, label: string, values: () => Record<string, number>) =>
    new Counter({
      name,
      help,
      labelNames: [label],
      registers,
      collect() {
        this.reset();
        for (const [key, value] of Object.entries(values())) this.inc(labels({ [label]: key }), value);
      },
    });
  const gauge = (name: string, help: string, value: () => number | undefined) =>
    new Gauge({
      name,
      help,
      registers,
      collect() {
        const v = value();
        // No value yet (no RTT measured, no reload so far): no sample at all. reset() would export 0,
        // which reads as a 0 ms round trip, or as a failed reload to an alert on == 0.
        if (v === undefined) this.remove();
        else this.set(v);
      },
    });

  new Gauge({
    name: "mcudpt_info",
    help: "Build and run-time information",
    labelNames: Object.keys(info),
    registers,
  }).set(labels(info), 1);
  gauge("mcudpt_peer_connected", "1 while the peer (the sender, or the receiver) is connected and accepted", () =>
    observed.peerConnected() ? 1 : 0,
  );
  gauge("mcudpt_flows", "Open flows", () => observed.flowCount());
  total("mcudpt_flows_opened_total", "Flows opened", () => stats.flowsOpened);
  total("mcudpt_flows_closed_total", "Flows closed (idle, evicted, closed by the peer, ...)", () => stats.flowsClosed);
  total("mcudpt_flows_evicted_total", "Flows closed to make room under --max-flows", () => stats.flowsEvicted);
  byLabel(
    "mcudpt_datagrams_total",
    "UDP datagrams: in = from clients/target into the tunnel, out = to them",
    "direction",
    () => ({
      in: stats.udpIn,
      out: stats.udpOut,
    }),
  );
  byLabel("mcudpt_bytes_total", "UDP payload bytes, directions as mcudpt_datagrams_total", "direction", () => ({
    in: stats.udpInBytes,
    out: stats.udpOutBytes,
  }));
  gauge("mcudpt_lanes_open", "TCP connections (lanes) of the session that are open", () => observed.lanes?.().open);
  const lane = (key: keyof LaneTotals) => () => observed.laneTotals?.()[key] ?? 0;
  total("mcudpt_nudges_sent_total", "Tail-loss nudges (PAD frames) sent", lane("nudgesSent"));
  total("mcudpt_duplicates_suppressed_total", "Redundant copies received and dropped", lane("duplicatesSuppressed"));
  total("mcudpt_redundant_copies_total", "Second copies sent on another lane (--redundant)", lane("redundantCopies"));
  total("mcudpt_flows_moved_total", "Flows moved to another lane", lane("flowsMoved"));
  laneMetrics(registers, () => observed.laneRows?.() ?? []);
  byLabel(
    "mcudpt_drops_total",
    "Datagrams dropped, by reason",
    "reason",
    () => ({ ...stats.drops }) as Record<DropReason, number>,
  );
  // Per mapping (several services over one tunnel): flows, datagrams and bytes each way.
  new Gauge({
    name: "mcudpt_mapping_flows",
    help: "Open flows of each mapping",
    labelNames: ["mapping"],
    registers,
    collect() {
      this.reset();
      const rows = observed.mappings();
      const names = mappingLabels(rows);
      rows.forEach((row, i) => {
        this.set(labels({ mapping: names[i] }), row.flows);
      });
    },
  });
  const perMapping = (name: string, help: string, pick: (row: MappingRow) => [number, number]) =>
    new Counter({
      name,
      help,
      labelNames: ["mapping", "direction"],
      registers,
      collect() {
        this.reset();
        const rows = observed.mappings();
        const names = mappingLabels(rows);
        rows.forEach((row, i) => {
          const [into, out] = pick(row);
          this.inc(labels({ mapping: names[i], direction: "in" }), into);
          this.inc(labels({ mapping: names[i], direction: "out" }), out);
        });
      },
    });
  perMapping(
    "mcudpt_mapping_datagrams_total",
    "UDP datagrams per mapping, directions as mcudpt_datagrams_total",
    (row) => [row.udpIn, row.udpOut],
  );
  perMapping(
    "mcudpt_mapping_bytes_total",
    "UDP payload bytes per mapping, directions as mcudpt_datagrams_total",
    (row) => [row.udpInBytes, row.udpOutBytes],
  );
  new Counter({
    name: "mcudpt_mapping_drops_total",
    help: "Datagrams dropped per mapping, by reason (kernel-queue: by the kernel at this side's sockets)",
    labelNames: ["mapping", "reason"],
    registers,
    collect() {
      this.reset();
      const rows = observed.mappings();
      const names = mappingLabels(rows);
      rows.forEach((row, i) => {
        for (const [reason, value] of Object.entries(row.drops)) this.inc(labels({ mapping: names[i], reason }), value);
      });
    },
  });
  senderMetrics(registers, () => observed.senders?.() ?? []);
  total("mcudpt_accepted_connections_total", "Connections that completed the handshake", () => stats.accepted);
  total("mcudpt_reconnects_total", "Connections to the peer after the first one", () => observed.reconnects());
  total("mcudpt_handshake_failures_total", "Handshakes refused, failed or timed out", () => stats.handshakeFailures);
  const reloads = () => observed.reloads?.() ?? { ok: 0, failed: 0 };
  byLabel("mcudpt_config_reloads_total", "Configuration reloads (SIGHUP), by result", "result", () => ({
    ok: reloads().ok,
    failed: reloads().failed,
  }));
  gauge("mcudpt_config_last_reload_successful", "1 when the last reload was applied, 0 when it failed", () => {
    const last = reloads().last;
    return last === undefined ? undefined : last.result === "ok" ? 1 : 0;
  });
  gauge("mcudpt_config_last_reload_timestamp_seconds", "When the last reload ran (Unix time)", () => {
    const last = reloads().last;
    return last === undefined ? undefined : last.at.getTime() / 1000;
  });
  gauge("mcudpt_rtt_seconds", "Round trip of the last keepalive ping over the TCP connection", () =>
    stats.rttMs === undefined ? undefined : stats.rttMs / 1000,
  );
  return registry;
}

/**
 * Per sender (a receiver with several senders, §18), labelled by key fingerprint: connected, which
 * mappings it serves (1) or waits for as standby (0), and its datagrams each way.
 */
function senderMetrics(registers: Registry[], rows: () => SenderRow[]): void {
  new Gauge({
    name: "mcudpt_sender_connected",
    help: "1 while the sender with this key has an open connection, 0 while its session waits for a resume",
    labelNames: ["sender"],
    registers,
    collect() {
      this.reset();
      for (const row of rows()) this.set(labels({ sender: row.sender }), row.connected ? 1 : 0);
    },
  });
  new Gauge({
    name: "mcudpt_sender_serving",
    help: "1 where the sender serves the mapping, 0 where it waits as standby",
    labelNames: ["sender", "mapping"],
    registers,
    collect() {
      this.reset();
      for (const row of rows()) {
        for (const mapping of row.serving) this.set(labels({ sender: row.sender, mapping }), 1);
        for (const mapping of row.standby) this.set(labels({ sender: row.sender, mapping }), 0);
      }
    },
  });
  new Counter({
    name: "mcudpt_sender_datagrams_total",
    help: "Datagrams per sender: to_sender = clients' datagrams it was given, from_sender = its replies",
    labelNames: ["sender", "direction"],
    registers,
    collect() {
      this.reset();
      for (const row of rows()) {
        this.inc(labels({ sender: row.sender, direction: "to_sender" }), row.toSender);
        this.inc(labels({ sender: row.sender, direction: "from_sender" }), row.fromSender);
      }
    },
  });
}

/**
 * Serves GET /metrics (and / for convenience) on host:port; port 0 picks a free port (see `url`).
 * `registry` is undefined until the role runs (the port is bound first, so a taken one is refused
 * before anything else starts): a scrape meanwhile gets 503.
 */
export async function startMetricsServer(
  registry: () => Registry | undefined,
  host: string,
  port: number,
): Promise<MetricsServer> {
  const server: Server = createServer((request, response) => {
    const path = (request.url ?? "/").split("?")[0];
    if (request.method !== "GET" && request.method !== "HEAD") {
      response.writeHead(405, { allow: "GET, HEAD" }).end();
      return;
    }
    if (path !== "/metrics" && path !== "/") {
      response.writeHead(404, { "content-type": "text/plain" }).end("not found: try /metrics\n");
      return;
    }
    const current = registry();
    if (!current) {
      response.writeHead(503, { "content-type": "text/plain", "retry-after": "1" }).end("starting\n");
      return;
    }
    current.metrics().then(
      (text) =>
        response
          .writeHead(200, { "content-type": current.contentType })
          .end(request.method === "HEAD" ? undefined : text),
      (error) => response.writeHead(500, { "content-type": "text/plain" }).end(`${messageOf(error)}\n`),
    );
  });
  try {
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(port, host, () => {
        server.off("error", reject);
        resolve();
      });
    });
  } catch (error) {
    throw new UserError(`--metrics: cannot listen on ${formatHostPort(host, port)}: ${bindFailure(error, port)}`);
  }
  // A scraper that misbehaves must not take the tunnel down: errors on the server are ignored.
  server.on("error", () => {});
  const bound = (server.address() as AddressInfo).port;
  return {
    url: `http://${formatHostPort(host, bound)}/metrics`,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections?.();
        server.close(() => resolve());
      }),
  };
}

/**
 * Per lane, labelled by its position in the session (1 = the first to open): a lane's counts start at
 * 0 when it opens, so a lane that is replaced looks like a counter reset, which rate() handles.
 * Position, not the peer's address and port: those change on every reconnection.
 */
function laneMetrics(registers: Registry[], rows: () => LaneInfo[]): void {
  const each = (collect: (row: LaneInfo, lane: string) => void) => {
    for (const [i, row] of rows().entries()) collect(row, String(i + 1));
  };
  new Gauge({
    name: "mcudpt_lane_rtt_seconds",
    help: "Round trip of the last keepalive ping on each lane (only lanes that have measured one)",
    labelNames: ["lane"],
    registers,
    collect() {
      this.reset();
      each((row, lane) => {
        if (row.rttMs !== undefined) this.set({ lane }, row.rttMs / 1000);
      });
    },
  });
  new Gauge({
    name: "mcudpt_lane_stalled",
    help: "1 while a lane's transport is backed up (new datagrams go to other lanes), 0 otherwise",
    labelNames: ["lane"],
    registers,
    collect() {
      this.reset();
      each((row, lane) => this.set({ lane }, row.stalled ? 1 : 0));
    },
  });
  new Counter({
    name: "mcudpt_lane_datagrams_total",
    help: "Datagrams carried on each lane since it opened: out = sent to the peer, in = received from it",
    labelNames: ["lane", "direction"],
    registers,
    collect() {
      this.reset();
      each((row, lane) => {
        this.inc({ lane, direction: "out" }, row.datagramsSent);
        this.inc({ lane, direction: "in" }, row.datagramsReceived);
      });
    },
  });
  new Counter({
    name: "mcudpt_lane_nudges_total",
    help: "Tail-loss nudges (PAD frames) sent on each lane since it opened",
    labelNames: ["lane"],
    registers,
    collect() {
      this.reset();
      each((row, lane) => this.inc({ lane }, row.nudgesSent));
    },
  });
}
