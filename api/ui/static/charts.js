// SVG charts built as one string per update (no per-point DOM nodes with listeners): stacked
// ratio bars per SN layer (the SN papers' figure), a layer's ratio evolution over steps, and the
// per-layer mean/variance divergence. Colours of the normalizers and of the output choices
// (a layer with point-wise members mixes its normalized output with DyT and the identity by a
// third ratio vector, "output") are fixed everywhere.

import { integerTicks } from "./ticks.js";
import { esc } from "./util.js";
import { NORM_LABELS, NORMS, OUTPUT_LABELS, OUTPUTS } from "./vocabulary.js";

export { NORM_LABELS, NORMS, OUTPUT_LABELS, OUTPUTS };
export const NORM_COLORS = {
  in: "#4e79a7", ln: "#f28e2b", bn: "#59a14f", gn: "#b07aa1", rms: "#76b7b2",
};
export const OUTPUT_COLORS = { norm: "#9c9c9c", dyt: "#edc948", none: "#e15759" };

const FONT = 11;

/** The keys, labels and colours of one part of a snapshot: "mean"/"var" (the normalizers) or
 * "output" (the output choices). */
export function partScale(part) {
  return part === "output"
    ? { keys: OUTPUTS, labels: OUTPUT_LABELS, colors: OUTPUT_COLORS }
    : { keys: NORMS, labels: NORM_LABELS, colors: NORM_COLORS };
}

/** The keys of ``part`` that a job's ``pool`` (its spec's search.pool) has, in the canonical
 * order: its statistics members for "mean"/"var"; for "output", the normalized output and its
 * point-wise members (none without them). Every key without a pool (a spec that names none). */
export function pooledKeys(part, pool) {
  const { keys } = partScale(part);
  if (!Array.isArray(pool)) return [...keys];
  if (part !== "output") return keys.filter((key) => pool.includes(key));
  const pointwise = keys.filter((key) => pool.includes(key));
  return pointwise.length ? keys.filter((key) => key === "norm" || pool.includes(key)) : [];
}

/** Whether any of ``points`` (snapshots) has output ratios (a pool with point-wise members). */
export function hasOutput(points) {
  return points.some((p) => p.output && Object.keys(p.output).length);
}

export function legendHtml(norms = NORMS, part = "mean") {
  const { labels, colors } = partScale(part);
  return `<div class="legend" data-part="${part === "output" ? "output" : "norms"}">${norms.map((n) =>
    `<span class="legend-item"><svg width="12" height="12" aria-hidden="true"><rect width="12"
      height="12" rx="2" fill="${colors[n]}"/></svg>${labels[n]}</span>`).join("")}</div>`;
}

function fmt(v) { return v === null || v === undefined ? "–" : Number(v).toFixed(3); }

export function ratiosText(ratios, part = "mean") {
  const { keys, labels } = partScale(part);
  return keys.filter((n) => ratios?.[n] !== null && ratios?.[n] !== undefined)
    .map((n) => `${labels[n]} ${fmt(ratios[n])}`).join(" · ");
}

function yAxis(x0, y0, h, w, ticks = [0, 0.25, 0.5, 0.75, 1], fmtTick = (t) => t.toFixed(2)) {
  return ticks.map((t) => {
    const y = (y0 + h - t * h).toFixed(1);
    return `<line class="grid" x1="${x0}" x2="${x0 + w}" y1="${y}" y2="${y}"/>` +
      `<text class="tick" x="${x0 - 4}" y="${y}" dy="0.32em" text-anchor="end">${fmtTick(t)}</text>`;
  }).join("");
}

// Charts are drawn at the pixel width of the box they go into (``width``, the viewBox's), so
// that they fill their card at their natural text size; the SVG's width="100%" keeps them
// fitted when the window changes. Without a width, the plot is MIN_PLOT_W units. With few
// layers the bars spread out (at most MAX_BAR wide); with many, a bar is at least 3 units and
// the chart scales down to fit.
const MIN_PLOT_W = 520;
const MAX_BAR = 44;
const LAYER_MARGIN = 50; // left axis + right padding of the layer charts

export function layerGeometry(n, width = null) {
  const count = Math.max(n, 1);
  const target = width ? Math.max(width - LAYER_MARGIN, 120) : MIN_PLOT_W;
  const step = Math.max(3, target / count);
  return { step, bar: Math.max(2, Math.min(step * 0.78, MAX_BAR)), plotW: step * count };
}

function xLabels(layers, x0, y, step) {
  const every = Math.max(1, Math.ceil(layers.length / 30));
  return layers.map((layer, i) => (i % every ? "" :
    `<text class="tick" x="${(x0 + i * step + step / 2).toFixed(1)}" y="${y}"
      text-anchor="middle">${layer.layer_index}</text>`)).join("");
}

/**
 * Stacked bars, one per layer (network order), of one part ("mean", "var" or "output") of the
 * newest snapshot of each layer: ``layers`` = [{layer, layer_index, mean: {in, ln, ...}, var:
 * {...}, output: {norm, dyt, none} | null, mean_fixed, var_fixed}]. Each layer's group is
 * <g data-testid="layer-bar" data-layer=...> with one <rect data-norm=...> per member of its
 * pool (a layer without output ratios has no bar in the output chart).
 */
export function ratioBarsSvg(layers, { part, testid, selected = null, title = "", width = null }) {
  const n = layers.length;
  const { step, bar, plotW } = layerGeometry(n, width);
  const m = { l: 40, r: 10, t: 22, b: 30 };
  const h = 190;
  const W = m.l + plotW + m.r;
  const H = m.t + h + m.b;
  const out = [];
  const { keys, colors } = partScale(part);
  layers.forEach((layer, i) => {
    const ratios = layer[part] || {};
    const x = (m.l + i * step + (step - bar) / 2).toFixed(2);
    let y = m.t + h;
    const fixed = layer[`${part}_fixed`];
    const rects = [];
    for (const norm of keys) {
      const v = ratios[norm];
      if (v === null || v === undefined) continue;
      const hh = Math.max(0, v) * h;
      y -= hh;
      rects.push(`<rect data-norm="${norm}" data-value="${v}" x="${x}" y="${y.toFixed(2)}"
        width="${bar.toFixed(2)}" height="${hh.toFixed(2)}" fill="${colors[norm]}"/>`);
    }
    const cls = `layer-bar${layer.layer === selected ? " selected" : ""}${fixed ? " fixed" : ""}`;
    out.push(`<g data-testid="layer-bar" data-layer="${esc(layer.layer)}" data-index="${i}"
      class="${cls}"><title>#${layer.layer_index} ${esc(layer.layer)} (${part})${fixed ? ", fixed" : ""}
${ratiosText(ratios, part)}</title>${rects.join("")}</g>`);
  });
  return `<svg data-testid="${testid}" class="chart ratio-chart" viewBox="0 0 ${W} ${H}"
    width="100%" preserveAspectRatio="xMinYMin meet" role="img" aria-label="${esc(title)}" data-part="${part}"
    data-layers="${n}">
    <text class="chart-title" x="${m.l}" y="14">${esc(title)}</text>
    ${yAxis(m.l, m.t, h, plotW)}
    ${out.join("")}
    ${xLabels(layers, m.l, m.t + h + 14, step)}
    <text class="axis-label" x="${m.l + plotW / 2}" y="${H - 2}" text-anchor="middle">layer</text>
  </svg>`;
}

/** 0.5 * L1 distance between the mean and variance ratio vectors (0: same, 1: disjoint). */
export function divergence(layer) {
  let sum = 0;
  for (const norm of NORMS) sum += Math.abs((layer.mean?.[norm] ?? 0) - (layer.var?.[norm] ?? 0));
  return 0.5 * sum;
}

export function divergenceSvg(layers, { testid = "divergence-chart", selected = null,
  width = null } = {}) {
  const n = layers.length;
  const { step, bar, plotW } = layerGeometry(n, width);
  const m = { l: 40, r: 10, t: 22, b: 30 };
  const h = 90;
  const W = m.l + plotW + m.r;
  const H = m.t + h + m.b;
  const bars = layers.map((layer, i) => {
    const d = divergence(layer);
    const hh = d * h;
    const x = (m.l + i * step + (step - bar) / 2).toFixed(2);
    return `<g data-layer="${esc(layer.layer)}" data-divergence="${d.toFixed(4)}"
      class="div-bar${layer.layer === selected ? " selected" : ""}"><title>#${layer.layer_index}
${esc(layer.layer)}: ${d.toFixed(3)}</title><rect x="${x}" y="${(m.t + h - hh).toFixed(2)}"
      width="${bar.toFixed(2)}" height="${hh.toFixed(2)}"/></g>`;
  });
  return `<svg data-testid="${testid}" class="chart divergence-chart" viewBox="0 0 ${W} ${H}"
    width="100%" preserveAspectRatio="xMinYMin meet" role="img" aria-label="mean/variance divergence per layer">
    <text class="chart-title" x="${m.l}" y="14">mean vs. variance divergence (½·L1 of the ratios)</text>
    ${yAxis(m.l, m.t, h, plotW, [0, 0.5, 1])}
    ${bars.join("")}
    ${xLabels(layers, m.l, m.t + h + 14, step)}
    <text class="axis-label" x="${m.l + plotW / 2}" y="${H - 2}" text-anchor="middle">layer</text>
  </svg>`;
}

const r1 = (v) => Math.round(v * 10) / 10;

/**
 * The polyline points of one normalizer's ratio: at most the first, lowest, highest and last
 * value per pixel column (the line looks the same; 20,000 steps draw as ~3,000 points).
 */
export function decimatedLine(points, part, norm, xOf, yOf) {
  const coords = [];
  let column = null;
  let first = null;
  let lo = null;
  let hi = null;
  let last = null;
  const flush = () => {
    if (column === null) return;
    coords.push(`${column},${first}`);
    if (lo !== first) coords.push(`${column},${lo}`);
    if (hi !== lo) coords.push(`${column},${hi}`);
    if (last !== hi) coords.push(`${column},${last}`);
  };
  for (const p of points) {
    const v = p[part]?.[norm];
    if (v === null || v === undefined) continue;
    const x = r1(xOf(p.step));
    const y = r1(yOf(v));
    if (Math.floor(x) !== Math.floor(column ?? -1)) {
      flush();
      column = x;
      first = lo = hi = last = y;
    } else {
      lo = Math.min(lo, y);
      hi = Math.max(hi, y);
      last = y;
    }
  }
  flush();
  return coords;
}

/**
 * A layer's ratios over steps: two panels (mean above, variance below), one line per normalizer
 * of its pool, a dashed mark where the part became fixed; a third panel of its output ratios
 * when the layer has point-wise members. ``points`` ascending by step. A hover
 * guide (one delegated listener, see attachEvolutionHover) reads ``data-*`` of the SVG.
 */
export function evolutionSvg(points, { layer, testid = "layer-evolution-chart", width = null } = {}) {
  const W = Math.max(width || 760, 320);
  const m = { l: 40, r: 12, t: 22, b: 30 };
  const ph = 130;
  const gap = 34;
  const plotW = W - m.l - m.r;
  const output = hasOutput(points);
  const H = m.t + ph * (output ? 3 : 2) + gap * (output ? 2 : 1) + m.b;
  if (!points.length) {
    return `<svg data-testid="${testid}" class="chart evolution-chart" viewBox="0 0 ${W} 60"
      width="100%" preserveAspectRatio="xMinYMin meet" data-points="0"><text class="muted-text" x="${m.l}" y="30">
      No ratio history for ${esc(layer || "this layer")} yet.</text></svg>`;
  }
  const s0 = points[0].step;
  const s1 = points.at(-1).step;
  const span = Math.max(1, s1 - s0);
  const xOf = (s) => m.l + ((s - s0) / span) * plotW;
  const panels = [["mean", m.t], ["var", m.t + ph + gap]];
  if (output) panels.push(["output", m.t + 2 * (ph + gap)]);
  const titles = { mean: "mean", var: "variance", output: "output" };
  const parts = panels.map(([part, top]) => {
    const lines = [];
    const { keys, colors } = partScale(part);
    for (const norm of keys) {
      const coords = decimatedLine(points, part, norm, xOf, (v) => top + ph - v * ph);
      if (coords.length) {
        lines.push(`<polyline data-norm="${norm}" data-part="${part}" class="line" fill="none"
          stroke="${colors[norm]}" points="${coords.join(" ")}"/>`);
      }
    }
    const fixedAt = points.find((p) => p[`${part}_fixed`]);
    const mark = fixedAt ? `<line class="fixed-mark" x1="${xOf(fixedAt.step).toFixed(1)}"
      x2="${xOf(fixedAt.step).toFixed(1)}" y1="${top}" y2="${top + ph}"/><text class="tick"
      x="${xOf(fixedAt.step).toFixed(1)}" y="${top - 3}" text-anchor="middle">fixed</text>` : "";
    return `<text class="chart-title" x="${m.l}" y="${top - 6}">${titles[part]} ratios</text>${
      yAxis(m.l, top, ph, plotW, [0, 0.5, 1])}${mark}${lines.join("")}`;
  });
  // Steps are integers: ticks at a nice step, each labelled once (ticks.js).
  const ticks = integerTicks(s0, s1, 8).ticks.map((s) => `<text class="tick"
    x="${xOf(s).toFixed(1)}" y="${H - m.b + 14}" text-anchor="middle">${s}</text>`);
  return `<svg data-testid="${testid}" class="chart evolution-chart" viewBox="0 0 ${W} ${H}"
    width="100%" preserveAspectRatio="xMinYMin meet" role="img" aria-label="ratio evolution of ${esc(layer)}"
    data-layer="${esc(layer)}" data-points="${points.length}" data-x0="${m.l}"
    data-x1="${m.l + plotW}" data-s0="${s0}" data-s1="${s1}"
    data-x-ticks="${integerTicks(s0, s1, 8).ticks.join(",")}">
    ${parts.join("")}
    ${ticks.join("")}
    <text class="axis-label" x="${m.l + plotW / 2}" y="${H - 2}" text-anchor="middle">step</text>
    <g class="hover" visibility="hidden"><line class="guide" y1="${m.t}" y2="${H - m.b}"/>
      <text class="hover-text" y="${m.t - 8}" font-size="${FONT}"></text></g>
  </svg>`;
}

/** The index of the point nearest to step ``target`` (``points`` ascending by step, not empty;
 * a tie goes to the later point). */
export function nearestIndex(points, target) {
  let lo = 0;
  let hi = points.length - 1;
  while (lo < hi) { // first point with step >= target
    const mid = (lo + hi) >> 1;
    if (points[mid].step < target) lo = mid + 1; else hi = mid;
  }
  if (lo > 0 && target - points[lo - 1].step < points[lo].step - target) lo -= 1;
  return lo;
}

/**
 * One mousemove listener on ``container`` for the evolution chart it holds: the nearest step's
 * values at the pointer. ``getPoints()`` returns the chart's current points (ascending step).
 */
export function attachEvolutionHover(container, getPoints) {
  container.addEventListener("mousemove", (event) => {
    const svg = container.querySelector("svg.evolution-chart[data-x0]");
    const points = getPoints();
    if (!svg || !points.length) return;
    const hover = svg.querySelector("g.hover");
    const matrix = svg.getScreenCTM();
    if (!matrix) return;
    const pt = new DOMPoint(event.clientX, event.clientY).matrixTransform(matrix.inverse());
    const x0 = Number(svg.dataset.x0);
    const x1 = Number(svg.dataset.x1);
    if (pt.x < x0 || pt.x > x1) { hover.setAttribute("visibility", "hidden"); return; }
    const s0 = Number(svg.dataset.s0);
    const s1 = Number(svg.dataset.s1);
    const target = s0 + ((pt.x - x0) / Math.max(1e-9, x1 - x0)) * (s1 - s0);
    const p = points[nearestIndex(points, target)];
    const x = x0 + ((p.step - s0) / Math.max(1, s1 - s0)) * (x1 - x0);
    const guide = hover.querySelector("line");
    guide.setAttribute("x1", x.toFixed(1));
    guide.setAttribute("x2", x.toFixed(1));
    const text = hover.querySelector("text");
    text.setAttribute("x", Math.min(x, x1 - 330).toFixed(1));
    text.textContent = `step ${p.step} (epoch ${p.epoch}) · mean ${ratiosText(p.mean)} · var ${
      ratiosText(p.var)}${p.output ? ` · output ${ratiosText(p.output, "output")}` : ""}`;
    hover.setAttribute("visibility", "visible");
  });
  container.addEventListener("mouseleave", () => {
    container.querySelector("svg.evolution-chart g.hover")?.setAttribute("visibility", "hidden");
  });
}
