/**
 * The live status line on a terminal: one line on stderr, rewritten in place every second, showing
 * whether the peer is connected, open flows, datagrams/s and bytes/s each way, drops by reason and
 * the keepalive round trip. Log lines go above it (the logger wrapper clears and redraws it).
 * Only ever drawn when stderr is a TTY: a pipe or a journal gets plain log lines and nothing else.
 * The line is made printable (printableLine) before it is cut to the terminal's width: whatever text
 * a part of it holds, it cannot move the cursor, change colours or break the line.
 */
import { printableLine } from "@mcudpt/core";
import { compact, nonZeroDrops, type Observed } from "./observe.js";

export interface StatusStream {
  isTTY?: boolean;
  columns?: number;
  write(text: string): unknown;
}

const CLEAR = "\r\x1b[K";

interface Sample {
  at: number;
  udpIn: number;
  udpInBytes: number;
  udpOut: number;
  udpOutBytes: number;
}

export class StatusLine {
  private timer: ReturnType<typeof setInterval> | undefined;
  private shown = "";
  private last: Sample | undefined;
  /** While set (an operator question is open on the terminal) nothing is drawn. */
  paused = false;

  constructor(
    private readonly observed: Observed,
    private readonly stream: StatusStream,
    private readonly intervalMs = 1000,
  ) {}

  /** Whether a status line may be drawn on `stream` at all. */
  static wanted(stream: StatusStream, quiet: boolean, format: string): boolean {
    return stream.isTTY === true && !quiet && format === "text";
  }

  start(): void {
    this.last = this.sample(performance.now());
    this.timer = setInterval(() => this.update(), this.intervalMs);
    this.timer.unref?.();
    this.update();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    this.clear();
  }

  /** Recomputes the rates since the last update and redraws. */
  update(now = performance.now()): void {
    const current = this.sample(now);
    const previous = this.last ?? current;
    this.last = current;
    if (this.paused) return;
    this.shown = this.render(previous, current);
    this.stream.write(`${CLEAR}${this.shown}`);
  }

  /** Removes the line (before a log line is written). */
  clear(): void {
    if (this.shown && !this.paused) this.stream.write(CLEAR);
  }

  /** Puts the last line back (after a log line). */
  redraw(): void {
    if (this.shown && this.timer && !this.paused) this.stream.write(this.shown);
  }

  render(previous: Sample, current: Sample): string {
    const o = this.observed;
    const seconds = Math.max((current.at - previous.at) / 1000, 0.001);
    const rate = (a: number, b: number) => compact((b - a) / seconds);
    const peer = o.role === "receiver" ? "sender" : "receiver";
    const parts = [
      `${peer} ${peerState(o, peer)}`,
      `${o.flowCount()} flows`,
      `in ${rate(previous.udpIn, current.udpIn)} dg/s ${rate(previous.udpInBytes, current.udpInBytes)}B/s`,
      `out ${rate(previous.udpOut, current.udpOut)} dg/s ${rate(previous.udpOutBytes, current.udpOutBytes)}B/s`,
    ];
    const lanes = o.lanes?.();
    if (lanes && lanes.wanted > 1) {
      const totals = o.laneTotals?.();
      const dup = totals && totals.duplicatesSuppressed > 0 ? ` dup ${compact(totals.duplicatesSuppressed)}` : "";
      const rtts = (o.laneRows?.() ?? []).filter((lane) => lane.open && lane.rttMs !== undefined);
      const each = rtts.length > 1 ? ` rtt ${rtts.map((lane) => milliseconds(lane.rttMs as number)).join("/")} ms` : "";
      parts.push(`lanes ${lanes.open}/${lanes.wanted}${each}${dup}`);
    }
    const who = servingText(o);
    if (who) parts.push(who);
    const drops = nonZeroDrops(o.stats);
    parts.push(drops.length > 0 ? `drops ${drops.join(" ")}` : "drops 0");
    const rtt = o.stats.rttMs;
    parts.push(`rtt ${rtt === undefined ? "-" : `${milliseconds(rtt)} ms`}`);
    const line = printableLine(parts.join(" | "));
    // A line longer than the terminal would wrap, and \r would then only rewrite its last row.
    const width = (this.stream.columns || 80) - 1; // 0 on a pty without a window size
    if (line.length <= width) return line;
    let cut = Math.max(0, width - 1);
    const unit = line.charCodeAt(cut);
    if (cut > 0 && unit >= 0xdc00 && unit <= 0xdfff) cut--; // never half a surrogate pair
    return `${line.slice(0, cut)}…`;
  }

  private sample(at: number): Sample {
    const s = this.observed.stats;
    return { at, udpIn: s.udpIn, udpInBytes: s.udpInBytes, udpOut: s.udpOut, udpOutBytes: s.udpOutBytes };
  }
}

/**
 * Who serves what, when there is a choice (§18): on a receiver with several senders (or a standby),
 * each sender's short fingerprint and its mappings; on a sender the receiver did not give every
 * mapping to, each mapping's state.
 */
function servingText(o: Observed): string | undefined {
  const senders = o.senders?.() ?? [];
  if (senders.length > 1 || senders.some((row) => row.standby.length > 0)) {
    const rows = senders.map((row) => {
      const short = row.sender.replace(/^SHA256:/, "").slice(0, 8);
      const standby = row.standby.length > 0 ? ` standby ${row.standby.join(",")}` : "";
      return `${short}${row.connected ? "" : " (lost)"} ${row.serving.join(",") || "-"}${standby}`;
    });
    return `senders ${rows.join("; ")}`;
  }
  const states = o.serving?.() ?? [];
  if (states.every((row) => row.state === undefined || row.state === "serving")) return undefined;
  return `mappings ${states.map((row) => `${row.label} ${row.state ?? "?"}`).join(", ")}`;
}

/** "up", "down", "connecting", or — a dialer that proved itself — waiting for the peer to admit its key. */
function peerState(o: Observed, peer: string): string {
  const phase = o.phase?.() ?? (o.peerConnected() ? "open" : "down");
  if (phase === "open") return "up";
  if (phase === "waiting") return `connected, waiting for the ${peer} to admit this key (its operator?)`;
  if (phase === "connecting") return "connecting";
  return o.role === "receiver" ? "down" : "connecting";
}

/** A round trip for a one-line display: one decimal below 10 ms, whole milliseconds above. */
function milliseconds(ms: number): string {
  return ms < 10 ? ms.toFixed(1) : String(Math.round(ms));
}
