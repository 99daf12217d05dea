// A line chart over epochs as one SVG string: integer epoch ticks and nice value ticks
// (ticks.js), one <polyline> per line; thin lines (e.g. single seeds) under thick ones (their
// mean). The SVG scales with its card (viewBox, width 100%).

import { esc } from "./util.js";
import { integerTicks, niceDomain, tickLabel } from "./ticks.js";

// Categorical colours for lines (the normalizers keep their own fixed colours elsewhere).
export const LINE_COLORS = [
  "#1d2330", "#4e79a7", "#e15759", "#f28e2b", "#76b7b2", "#59a14f", "#edc948", "#b07aa1",
  "#ff9da7", "#9c755f",
];

export function lineColor(index) { return LINE_COLORS[index % LINE_COLORS.length]; }

/**
 * ``lines``: [{key, label, color, points: [{epoch, value}], thin?}]. ``domain``: a fixed value
 * range (accuracy: [0, 1]) or null for one fitted to the data. Each drawn line is
 * <polyline data-series=key data-points=n>; the SVG carries data-lines and data-x-ticks.
 */
export function lineChartSvg(lines, { testid, title, yLabel, domain = null, percent = false,
  width = null }) {
  const W = Math.max(width || 560, 280); // the box's pixel width: text at its natural size
  const H = 250;
  const m = { l: 46, r: 12, t: 22, b: 34 };
  const plotW = W - m.l - m.r;
  const plotH = H - m.t - m.b;
  const drawn = lines.filter((line) => line.points.length);
  if (!drawn.length) {
    return `<svg data-testid="${testid}" class="chart line-chart" viewBox="0 0 ${W} 60"
      width="100%" preserveAspectRatio="xMinYMin meet" data-lines="0" role="img"
      aria-label="${esc(title)}"><text class="chart-title" x="${m.l}" y="14">${esc(title)}</text>
      <text class="muted-text" x="${m.l}" y="40">No epochs recorded yet.</text></svg>`;
  }
  let e0 = Infinity, e1 = -Infinity, v0 = Infinity, v1 = -Infinity;
  for (const line of drawn) {
    for (const p of line.points) {
      e0 = Math.min(e0, p.epoch); e1 = Math.max(e1, p.epoch);
      v0 = Math.min(v0, p.value); v1 = Math.max(v1, p.value);
    }
  }
  const y = domain ? niceDomain(domain[0], domain[1], 6) : niceDomain(v0, v1, 6);
  const x = integerTicks(e0, e1, 10);
  const xOf = (e) => m.l + (e1 === e0 ? plotW / 2 : ((e - e0) / (e1 - e0)) * plotW);
  const yOf = (v) => m.t + plotH - ((v - y.lo) / Math.max(1e-12, y.hi - y.lo)) * plotH;
  const fmtY = (t) => (percent ? `${tickLabel(t * 100, Math.max(0, y.decimals - 2))}%`
    : tickLabel(t, y.decimals));
  const grid = y.ticks.map((t) => `<line class="grid" x1="${m.l}" x2="${m.l + plotW}"
    y1="${yOf(t).toFixed(1)}" y2="${yOf(t).toFixed(1)}"/><text class="tick" x="${m.l - 4}"
    y="${yOf(t).toFixed(1)}" dy="0.32em" text-anchor="end">${fmtY(t)}</text>`).join("");
  const xTicks = x.ticks.map((t) => `<text class="tick" x="${xOf(t).toFixed(1)}"
    y="${m.t + plotH + 14}" text-anchor="middle">${t}</text>`).join("");
  const ordered = [...drawn.filter((l) => l.thin), ...drawn.filter((l) => !l.thin)];
  const polylines = ordered.map((line) => {
    const coords = line.points.map((p) => `${xOf(p.epoch).toFixed(1)},${yOf(p.value).toFixed(1)}`);
    const marks = line.points.length === 1 ? `<circle cx="${xOf(line.points[0].epoch).toFixed(1)}"
      cy="${yOf(line.points[0].value).toFixed(1)}" r="${line.thin ? 2 : 3}" fill="${line.color}"/>` : "";
    return `<g data-series="${esc(line.key)}"><title>${esc(line.label)}</title><polyline
      class="line${line.thin ? " thin" : ""}" fill="none" stroke="${line.color}"
      data-points="${line.points.length}" points="${coords.join(" ")}"/>${marks}</g>`;
  }).join("");
  return `<svg data-testid="${testid}" class="chart line-chart" viewBox="0 0 ${W} ${H}"
    width="100%" preserveAspectRatio="xMinYMin meet" role="img" aria-label="${esc(title)}"
    data-lines="${drawn.length}" data-x-ticks="${x.ticks.join(",")}">
    <text class="chart-title" x="${m.l}" y="14">${esc(title)}</text>
    ${grid}${xTicks}${polylines}
    <text class="axis-label" x="${m.l + plotW / 2}" y="${H - 2}" text-anchor="middle">epoch</text>
    <text class="axis-label" transform="translate(11 ${m.t + plotH / 2}) rotate(-90)"
      text-anchor="middle">${esc(yLabel)}</text>
  </svg>`;
}
