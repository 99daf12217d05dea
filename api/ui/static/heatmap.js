// Per-layer choices by batch size, side by side: a heatmap with one row per layer (network
// order), one column per searched batch size, each cell coloured by one normalizer's share of
// that layer's final-epoch ratios averaged over the batch size's trials (report.json's
// recommendation.by_batch_size[bs].layers, worker/recommend.py) and labelled with the chosen
// pair. The SN paper's finding, BN's share growing with the batch, reads as the cells getting
// darker from left to right. A pool without BN (a transformer's: LN, RMS, DyT) is coloured by
// its first pooled normalizer instead, and the caption says so (shareNorm).

import { esc } from "./util.js";

export const MAX_WIDTH = 900;

/**
 * The heatmap's model from ``by_batch_size`` ({"8": {layers: {name: {mean, var}}, choices,
 * trials, mean_ratio, var_ratio}, ...}): {batchSizes (ascending), layers (network order),
 * cells: [{layer, row, batch, col, value (null: the normalizer is not in the layer's pool),
 * choice}], trend: [{batch, trials, value}] (the share averaged over the layers), complete
 * (false for a report from before per-layer ratios)}.
 */
export function heatmapModel(byBatchSize, { part = "mean", norm = "bn" } = {}) {
  const entries = Object.entries(byBatchSize || {})
    .map(([batch, row]) => [Number(batch), row]).sort((a, b) => a[0] - b[0]);
  const layers = [];
  for (const [, row] of entries) {
    for (const name of Object.keys(row.layers || row.choices || {})) {
      if (!layers.includes(name)) layers.push(name);
    }
  }
  const cells = [];
  entries.forEach(([batch, row], col) => {
    layers.forEach((layer, r) => {
      const ratios = row.layers?.[layer]?.[part];
      const v = ratios?.[norm];
      cells.push({
        layer, row: r, batch, col, value: v === undefined || v === null ? null : Number(v),
        choice: row.choices?.[layer] ?? null,
      });
    });
  });
  return {
    batchSizes: entries.map(([batch]) => batch),
    layers,
    cells,
    trend: entries.map(([batch, row]) => ({
      batch, trials: row.trials ?? null, value: row[`${part}_ratio`]?.[norm] ?? null,
    })),
    complete: entries.length > 0 && entries.every(([, row]) => row.layers),
  };
}

/** The normalizer whose share colours the cells: {norm, fallback}. BN when the pool has it (or
 * no pool is known: a report from before pools were recorded), else the first of ``pooled``
 * (the pool's statistics members in canonical order), with ``fallback`` true. */
export function shareNorm(pooled) {
  if (!pooled.length || pooled.includes("bn")) return { norm: "bn", fallback: false };
  return { norm: pooled[0], fallback: true };
}

/** "#rrggbb" between white (share 0) and ``color`` (share 1). */
export function shareColor(value, color) {
  const t = Math.max(0, Math.min(1, Number(value) || 0));
  const rgb = [1, 3, 5].map((i) => parseInt(color.slice(i, i + 2), 16));
  const mixed = rgb.map((c) => Math.round(255 + (c - 255) * t).toString(16).padStart(2, "0"));
  return `#${mixed.join("")}`;
}

/** "BN share (mean ratios), over the layers: batch 8 0.20 → batch 128 0.80". */
export function trendText(model, normLabel, part) {
  const steps = model.trend.filter((t) => t.value !== null)
    .map((t) => `batch ${t.batch} ${Number(t.value).toFixed(2)}`);
  return steps.length ? `${normLabel} share of the ${part === "mean" ? "mean" : "variance"
  } ratios averaged over the layers: ${steps.join(" → ")}` : "";
}

/**
 * The heatmap as one SVG string. Each cell is <rect data-testid="heatmap-cell" data-layer
 * data-batch data-value> with a <title> (layer, batch, share, choice); the chosen pair is
 * written in the cell when rows are tall enough.
 */
export function heatmapSvg(model, { testid = "batch-heatmap", color, normLabel, part = "mean",
  title = "", width = null } = {}) {
  const cols = model.batchSizes.length;
  const rows = model.layers.length;
  // The box's pixel width, at most MAX_WIDTH (the CSS caps the SVG there too): wide cells say
  // nothing more.
  const W = Math.min(Math.max(width || 560, 320), MAX_WIDTH);
  const m = { l: 150, r: 10, t: 40, b: 8 };
  const cellW = (W - m.l - m.r) / Math.max(cols, 1);
  const cellH = rows > 60 ? 6 : rows > 30 ? 10 : 18;
  const H = m.t + rows * cellH + m.b;
  const labelEvery = Math.max(1, Math.ceil(10 / cellH));
  const out = [];
  model.batchSizes.forEach((batch, col) => {
    out.push(`<text class="tick" x="${(m.l + col * cellW + cellW / 2).toFixed(1)}" y="${m.t - 6}"
      text-anchor="middle">batch ${batch}</text>`);
  });
  model.layers.forEach((layer, r) => {
    if (r % labelEvery) return;
    const short = layer.length > 24 ? `…${layer.slice(-23)}` : layer;
    out.push(`<text class="tick mono" x="${m.l - 4}" y="${(m.t + r * cellH + cellH / 2).toFixed(1)}"
      dy="0.32em" text-anchor="end">${esc(short)}</text>`);
  });
  for (const cell of model.cells) {
    const x = (m.l + cell.col * cellW).toFixed(1);
    const y = (m.t + cell.row * cellH).toFixed(1);
    const fill = cell.value === null ? "#f2f4f7" : shareColor(cell.value, color);
    const share = cell.value === null ? `no ${normLabel} in the pool` : `${normLabel} share ${
      cell.value.toFixed(2)}`;
    const text = cellH >= 14 && cell.choice ? `<text class="cell-text${cell.value > 0.6 ? " dark" : ""}"
      x="${(m.l + cell.col * cellW + cellW / 2).toFixed(1)}" y="${(m.t + cell.row * cellH + cellH / 2).toFixed(1)}"
      dy="0.32em" text-anchor="middle">${esc(cell.choice)}</text>` : "";
    out.push(`<g><title>${esc(cell.layer)}, batch ${cell.batch}: ${share}${cell.choice
      ? `; chosen ${esc(cell.choice)}` : ""}</title><rect data-testid="heatmap-cell"
      data-layer="${esc(cell.layer)}" data-batch="${cell.batch}" data-value="${cell.value ?? ""}"
      x="${x}" y="${y}" width="${(cellW - 1).toFixed(1)}" height="${Math.max(1, cellH - 1)}"
      fill="${fill}"/>${text}</g>`);
  }
  return `<svg data-testid="${testid}" class="chart heatmap" viewBox="0 0 ${W} ${H}" width="100%"
    preserveAspectRatio="xMinYMin meet" role="img" aria-label="${esc(title)}" data-part="${part}"
    data-rows="${rows}" data-cols="${cols}">
    <text class="chart-title" x="4" y="14">${esc(title)}</text>
    ${out.join("")}
  </svg>`;
}
