/**
 * A grouped bar chart of ratios to direct, hand-written SVG (no dependencies): one panel for
 * throughput-like figures (higher is better, 1.0 = as fast as direct) and one for latencies
 * (lower is better, 1.0 = as fast as direct).
 */

export interface Series {
  id: string;
  label: string;
  color: string;
}

export interface Group {
  label: string;
  /** Ratio per series id (undefined: not measured). */
  values: Record<string, number | undefined>;
  /** Optional target marks: ratio value and the series they apply to. */
  targets?: Array<{ series: string; value: number }>;
}

export interface Panel {
  title: string;
  groups: Group[];
  /** Upper bound of the axis (auto when omitted). */
  max?: number;
  /** Logarithmic axis (for ratios spanning orders of magnitude). */
  log?: boolean;
}

const esc = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");

function niceMax(v: number): number {
  const steps = [0.5, 1, 1.5, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 50, 100];
  for (const s of steps) if (v <= s) return s;
  return Math.ceil(v / 50) * 50;
}

function ticks(max: number): number[] {
  const step = max <= 1.5 ? 0.25 : max <= 3 ? 0.5 : max <= 6 ? 1 : max <= 10 ? 2 : max <= 20 ? 5 : max <= 50 ? 10 : 25;
  const out: number[] = [];
  for (let t = 0; t <= max + 1e-9; t += step) out.push(Math.round(t * 100) / 100);
  return out;
}

export function barChart(title: string, subtitle: string, series: Series[], panels: Panel[]): string {
  const width = 980;
  const left = 60;
  const right = 20;
  const panelHeight = 250;
  const panelGap = 95;
  const top = 80;
  const plotW = width - left - right;
  const height = top + panels.length * (panelHeight + panelGap) + 10;
  const parts: string[] = [];
  parts.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="Helvetica, Arial, sans-serif" font-size="12">`,
    `<rect width="${width}" height="${height}" fill="#ffffff"/>`,
    `<text x="${left}" y="24" font-size="17" font-weight="bold">${esc(title)}</text>`,
    `<text x="${left}" y="44" fill="#555">${esc(subtitle)}</text>`,
  );
  // Legend
  let lx = left;
  for (const s of series) {
    parts.push(
      `<rect x="${lx}" y="56" width="12" height="12" fill="${s.color}"/>`,
      `<text x="${lx + 17}" y="66">${esc(s.label)}</text>`,
    );
    lx += 30 + s.label.length * 7;
  }
  parts.push(
    `<line x1="${lx}" y1="62" x2="${lx + 18}" y2="62" stroke="#000" stroke-width="2" stroke-dasharray="4,2"/>`,
    `<text x="${lx + 23}" y="66">target</text>`,
  );

  panels.forEach((panel, p) => {
    const y0 = top + p * (panelHeight + panelGap) + 30;
    const all = panel.groups
      .flatMap((g) => [...Object.values(g.values), ...(g.targets ?? []).map((t) => t.value)])
      .filter((v): v is number => v !== undefined && Number.isFinite(v));
    const max = panel.max ?? niceMax(Math.max(1, ...all) * 1.08);
    const min = panel.log ? (Math.min(1, ...all) < 1 ? 0.5 : 1) : 0;
    const y = panel.log
      ? (v: number) =>
          y0 + panelHeight - (Math.log10(Math.max(min, Math.min(v, max)) / min) / Math.log10(max / min)) * panelHeight
      : (v: number) => y0 + panelHeight - (Math.min(v, max) / max) * panelHeight;
    parts.push(`<text x="${left}" y="${y0 - 12}" font-size="14" font-weight="bold">${esc(panel.title)}</text>`);
    const axisTicks = panel.log
      ? [0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500].filter((t) => t >= min && t <= max)
      : ticks(max);
    for (const t of axisTicks) {
      parts.push(
        `<line x1="${left}" y1="${y(t)}" x2="${left + plotW}" y2="${y(t)}" stroke="${t === 1 ? "#888" : "#e4e4e4"}" stroke-width="${t === 1 ? 1.5 : 1}"/>`,
        `<text x="${left - 6}" y="${y(t) + 4}" text-anchor="end" fill="#444">${t}×</text>`,
      );
    }
    const groupW = plotW / panel.groups.length;
    const barW = Math.min(26, (groupW - 16) / series.length);
    panel.groups.forEach((g, gi) => {
      const gx = left + gi * groupW + (groupW - barW * series.length) / 2;
      series.forEach((s, si) => {
        const v = g.values[s.id];
        const x = gx + si * barW;
        if (v === undefined || !Number.isFinite(v)) {
          parts.push(
            `<text x="${x + barW / 2}" y="${y(min) - 3}" text-anchor="middle" font-size="9" fill="#999">n/a</text>`,
          );
          return;
        }
        const clipped = v > max;
        parts.push(
          `<rect x="${x + 1}" y="${y(v)}" width="${barW - 2}" height="${Math.max(0, y(min) - y(v))}" fill="${s.color}"><title>${esc(`${g.label} — ${s.label}: ${v.toFixed(2)}×`)}</title></rect>`,
        );
        parts.push(
          `<text x="${x + barW / 2}" y="${y(v) - 3}" text-anchor="middle" font-size="9" fill="#333">${clipped ? "↑" : ""}${v >= 10 ? v.toFixed(0) : v.toFixed(2)}</text>`,
        );
        for (const t of g.targets ?? []) {
          if (t.series !== s.id) continue;
          parts.push(
            `<line x1="${x - 1}" y1="${y(t.value)}" x2="${x + barW + 1}" y2="${y(t.value)}" stroke="#000" stroke-width="2" stroke-dasharray="4,2"/>`,
          );
        }
      });
      const lines = g.label.split("\n");
      lines.forEach((line, li) => {
        parts.push(
          `<text x="${left + gi * groupW + groupW / 2}" y="${y(min) + 16 + li * 14}" text-anchor="middle" fill="#222">${esc(line)}</text>`,
        );
      });
    });
    parts.push(`<line x1="${left}" y1="${y(min)}" x2="${left + plotW}" y2="${y(min)}" stroke="#333"/>`);
  });
  parts.push("</svg>");
  return `${parts.join("\n")}\n`;
}
