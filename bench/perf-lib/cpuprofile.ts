/**
 * Summarises a .cpuprofile (Chrome/V8 format, written by both `node --cpu-prof` and `bun --cpu-prof`):
 * self time and inclusive time per function, aggregated by name and location.
 */
import { readFileSync } from "node:fs";

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
  columnNumber?: number;
}

interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
  hitCount?: number;
}

interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples?: number[];
  timeDeltas?: number[];
}

export interface FunctionCost {
  name: string;
  where: string;
  selfMs: number;
  selfPct: number;
  totalMs: number;
  totalPct: number;
}

export interface ProfileSummary {
  file: string;
  /** Profiled wall time (ms) and how much of it was not idle. */
  wallMs: number;
  busyMs: number;
  busyPct: number;
  /** Top functions by self time (idle excluded); percentages are of busy time. */
  topSelf: FunctionCost[];
  /** Top functions of the mcudpt bundle by inclusive time; percentages are of busy time. */
  topTotal: FunctionCost[];
}

const IDLE = new Set(["(idle)"]);

function where(frame: CallFrame): string {
  if (!frame.url) return "native";
  let url = frame.url.replace(/^file:\/\//, "");
  if (url.includes("mcudpt.js")) url = "mcudpt.js";
  return `${url}:${frame.lineNumber + 1}`;
}

function isOurs(frame: CallFrame): boolean {
  return frame.url.includes("mcudpt.js");
}

export function summarize(file: string, top = 15): ProfileSummary {
  const profile = JSON.parse(readFileSync(file, "utf8")) as CpuProfile;
  const byId = new Map<number, ProfileNode>();
  const parent = new Map<number, number>();
  for (const node of profile.nodes) {
    byId.set(node.id, node);
    for (const child of node.children ?? []) parent.set(child, node.id);
  }
  const samples = profile.samples ?? [];
  const deltas = profile.timeDeltas ?? [];
  // timeDeltas[i] is the time before sample i: attribute the gap after a sample to it, capped at three
  // sampling intervals. Node samples idle time explicitly ("(idle)"); Bun does not sample at all while
  // the process sleeps, so an uncapped gap would charge seconds of idleness to the last function seen.
  const sorted = deltas.filter((d) => d > 0).sort((a, b) => a - b);
  const cap = 3 * (sorted[Math.floor(sorted.length / 2)] ?? 1000);
  const sampleMs = (i: number) => Math.min(cap, (i + 1 < deltas.length ? deltas[i + 1] : (deltas[i] ?? 0)) || 0) / 1000;
  const wallMs = (profile.endTime - profile.startTime) / 1000;

  const self = new Map<string, { frame: CallFrame; ms: number }>();
  const total = new Map<string, { frame: CallFrame; ms: number }>();
  let wall = 0;
  let idle = 0;
  for (let i = 0; i < samples.length; i++) {
    const ms = Math.max(0, sampleMs(i));
    wall += ms;
    const leaf = byId.get(samples[i]);
    if (!leaf) continue;
    if (IDLE.has(leaf.callFrame.functionName)) {
      idle += ms;
      continue;
    }
    const key = `${leaf.callFrame.functionName}@${where(leaf.callFrame)}`;
    const s = self.get(key) ?? { frame: leaf.callFrame, ms: 0 };
    s.ms += ms;
    self.set(key, s);
    // Inclusive: each distinct function on the stack once.
    const seen = new Set<string>();
    for (let id: number | undefined = leaf.id; id !== undefined; id = parent.get(id)) {
      const node = byId.get(id);
      if (!node) break;
      const k = `${node.callFrame.functionName}@${where(node.callFrame)}`;
      if (seen.has(k)) continue;
      seen.add(k);
      const t = total.get(k) ?? { frame: node.callFrame, ms: 0 };
      t.ms += ms;
      total.set(k, t);
    }
  }
  const busy = wall - idle;
  wall = Math.max(wall, wallMs);
  const cost = (frame: CallFrame, selfMs: number, totalMs: number): FunctionCost => ({
    name: frame.functionName || "(anonymous)",
    where: where(frame),
    selfMs: round(selfMs),
    selfPct: round((100 * selfMs) / (busy || 1)),
    totalMs: round(totalMs),
    totalPct: round((100 * totalMs) / (busy || 1)),
  });
  const keyOf = (f: CallFrame) => `${f.functionName}@${where(f)}`;
  const topSelf = [...self.values()]
    .sort((a, b) => b.ms - a.ms)
    .slice(0, top)
    .map((s) => cost(s.frame, s.ms, total.get(keyOf(s.frame))?.ms ?? s.ms));
  const topTotal = [...total.values()]
    .filter((t) => isOurs(t.frame))
    .sort((a, b) => b.ms - a.ms)
    .slice(0, top)
    .map((t) => cost(t.frame, self.get(keyOf(t.frame))?.ms ?? 0, t.ms));
  return {
    file,
    wallMs: round(wall),
    busyMs: round(busy),
    busyPct: round((100 * busy) / (wall || 1)),
    topSelf,
    topTotal,
  };
}

function round(x: number): number {
  return Math.round(x * 10) / 10;
}
