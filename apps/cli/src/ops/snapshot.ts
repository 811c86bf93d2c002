/**
 * `kill -USR1 PID`: writes a snapshot of the totals and of every open flow to stderr (a table, or
 * one JSON object per line with --log-format json), without stopping anything. SIGUSR1 does not
 * exist on Windows; there the handler is simply not installed.
 * Every line is one printable, bounded line (logLine; in JSON, jsonRecord does it): a client
 * address or any other text shown cannot break the table or put escapes on the terminal.
 */
import { logLine, now } from "@mcudpt/core";
import { jsonRecord, type LogFormat } from "./logging.js";
import { type FlowRow, nonZeroDrops, type Observed } from "./observe.js";

/** Largest number of flows listed one by one; the rest are summed up in one line. */
const MAX_LISTED = 1000;

export function snapshotText(observed: Observed, at = now()): string {
  const s = observed.stats;
  const peer = observed.role === "receiver" ? "sender" : "receiver";
  const lines = [
    `snapshot: ${peer} ${observed.peerConnected() ? "connected" : "not connected"}, ${observed.flowCount()} flows, ` +
      `udp in ${s.udpIn} dg ${s.udpInBytes} B, udp out ${s.udpOut} dg ${s.udpOutBytes} B, ` +
      `drops ${nonZeroDrops(s).join(" ") || "0"}, rtt ${s.rttMs === undefined ? "-" : `${s.rttMs.toFixed(1)} ms`}, ` +
      `reconnects ${observed.reconnects()}, handshake failures ${s.handshakeFailures}`,
  ];
  // Several senders (§18): who serves what, and each one's traffic.
  for (const row of observed.senders?.() ?? []) {
    const standby = row.standby.length > 0 ? `, standby ${row.standby.join(",")}` : "";
    lines.push(
      `  sender ${row.sender} ${row.peer ?? "-"} ${row.connected ? "connected" : "lost (resume grace)"}, ` +
        `serving ${row.serving.join(",") || "-"}${standby}, to it ${row.toSender} dg, from it ${row.fromSender} dg`,
    );
  }
  const lanes = observed.laneRows?.() ?? [];
  if (lanes.length > 1) {
    for (const [i, lane] of lanes.entries()) {
      const rtt = lane.rttMs === undefined ? "-" : `${lane.rttMs.toFixed(1)} ms`;
      lines.push(
        `  lane ${i + 1}: ${logLine(lane.peer, 60)} ${lane.open ? (lane.stalled ? "stalled" : "open") : "closing"}, rtt ${rtt}, ` +
          `out ${lane.datagramsSent} dg, in ${lane.datagramsReceived} dg, nudges ${lane.nudgesSent}`,
      );
    }
  }
  const reloads = observed.reloads?.();
  if (reloads?.last) {
    const { at, result, message } = reloads.last;
    lines.push(
      `  reload: last ${at.toISOString()} ${result} (${message}); ${reloads.ok} ok, ${reloads.failed} failed so far`,
    );
  }
  const flows = [...observed.flows()].sort((a, b) => b.bytesIn + b.bytesOut - (a.bytesIn + a.bytesOut));
  if (flows.length > 0)
    lines.push(
      `  ${"flow".padStart(10)}  ${"mapping".padEnd(12)} ${"client".padEnd(40)} ${"in dg".padStart(10)} ${"in B".padStart(12)} ${"out dg".padStart(10)} ${"out B".padStart(12)}  idle`,
    );
  for (const flow of flows.slice(0, MAX_LISTED)) {
    lines.push(
      `  ${String(flow.id).padStart(10)}  ${logLine(flow.mapping, 40).padEnd(12)} ${logLine(flow.client, 60).padEnd(40)} ${String(flow.datagramsIn).padStart(10)} ${String(flow.bytesIn).padStart(12)} ` +
        `${String(flow.datagramsOut).padStart(10)} ${String(flow.bytesOut).padStart(12)}  ${idle(flow, at)}`,
    );
  }
  if (flows.length > MAX_LISTED) lines.push(`  ... and ${flows.length - MAX_LISTED} more flows`);
  return `${lines.map((line) => logLine(line)).join("\n")}\n`;
}

export function snapshotJson(observed: Observed, name: string, at = now()): string {
  const s = observed.stats;
  let out = jsonRecord(name, "snapshot", {
    peerConnected: observed.peerConnected(),
    flows: observed.flowCount(),
    udpIn: s.udpIn,
    udpInBytes: s.udpInBytes,
    udpOut: s.udpOut,
    udpOutBytes: s.udpOutBytes,
    drops: s.drops,
    rttMs: s.rttMs ?? null,
    reconnects: observed.reconnects(),
    handshakeFailures: s.handshakeFailures,
    reloads: reloadFields(observed),
  });
  for (const row of observed.senders?.() ?? []) out += jsonRecord(name, "sender", { ...row });
  for (const [i, lane] of (observed.laneRows?.() ?? []).entries()) {
    out += jsonRecord(name, "lane", { lane: i + 1, ...lane, rttMs: lane.rttMs ?? null });
  }
  let listed = 0;
  for (const flow of observed.flows()) {
    if (listed++ >= MAX_LISTED) break;
    const { lastActive: _, ...rest } = flow;
    out += jsonRecord(name, "flow", { ...rest, idleMs: Math.round(at - flow.lastActive) });
  }
  return out;
}

/** The reloads so far and the last one, for the JSON snapshot (null before the first). */
function reloadFields(observed: Observed) {
  const reloads = observed.reloads?.();
  if (!reloads?.last) return null;
  const { at, result, message } = reloads.last;
  return { ok: reloads.ok, failed: reloads.failed, last: { at: at.toISOString(), result, message } };
}

function idle(flow: FlowRow, at: number): string {
  return `${((at - flow.lastActive) / 1000).toFixed(1)} s`;
}

/** Installs the SIGUSR1 handler; returns its removal. */
export function onSnapshotSignal(
  observed: Observed,
  name: string,
  format: LogFormat,
  write: (text: string) => void,
): () => void {
  if (process.platform === "win32") return () => {};
  const handler = () => write(format === "json" ? snapshotJson(observed, name) : snapshotText(observed));
  process.on("SIGUSR1", handler);
  return () => process.off("SIGUSR1", handler);
}
