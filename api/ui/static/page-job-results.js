// The job page's result views drawn into its skeleton (page-job-view.js): the training curves
// (one line per search trial; per verification configuration the mean over its seeds, thick,
// and each seed, thin) with legends that say which value is the final epoch's and which the
// best epoch's, and the layers x batch sizes heatmap of a succeeded job's report. The data rules
// are in curves.js and heatmap.js; page-job.js decides when to draw.

import { NORM_COLORS, NORM_LABELS, pooledKeys } from "./charts.js";
import { configurationSeries, finalAndBest, METRICS, searchSeries } from "./curves.js";
import { heatmapModel, heatmapSvg, shareNorm, trendText } from "./heatmap.js";
import { lineChartSvg, lineColor } from "./line-chart.js";
import { esc, fmtPct } from "./util.js";

/** The pixel width a chart is drawn at (null while its card is hidden: the chart's default). */
function boxWidth(root, sel) {
  return root.querySelector(sel)?.clientWidth || null;
}

/** "final-epoch 97.1% (epoch 10) · best-epoch 97.5% (epoch 8)" of one line (for a loss the
 * best epoch is the lowest). */
export function summaryText(points, metric) {
  const { accuracy } = METRICS[metric];
  const { final, best } = finalAndBest(points, accuracy);
  if (!final) return "no epoch yet";
  const value = (v) => (accuracy ? fmtPct(v, 1) : v.toFixed(3));
  return `final-epoch ${value(final.value)} (epoch ${final.epoch}) · best-epoch ${
    value(best.value)} (epoch ${best.epoch})`;
}

function legendItem(key, color, label, text) {
  return `<li data-series="${esc(key)}"><svg width="14" height="8" aria-hidden="true"><line
    x1="0" x2="14" y1="4" y2="4" stroke="${color}" stroke-width="3"/></svg>
    <strong>${esc(label)}</strong>: ${esc(text)}</li>`;
}

/** Both curve charts and their legends for ``metric`` (a key of METRICS). */
export function drawCurveCharts(root, { trials, metrics, metric }) {
  const $ = (sel) => root.querySelector(sel);
  const { label, accuracy } = METRICS[metric];
  const chart = { yLabel: label, domain: accuracy ? [0, 1] : null, percent: accuracy };

  // Search trials coloured by batch size (the legend names each trial's seed and batch).
  const search = searchSeries(trials, metrics, metric);
  const batches = [...new Set(search.map((l) => l.batch))].sort((a, b) => a - b);
  const searchLines = search.map((l) => ({ ...l, color: lineColor(batches.indexOf(l.batch) + 1) }));
  $("#chart-search-curves").innerHTML = lineChartSvg(searchLines, {
    ...chart, testid: "search-curves", title: `search trials: ${label} per epoch`,
    width: boxWidth(root, "#chart-search-curves"),
  });
  $("#search-curves-legend").innerHTML = searchLines
    .map((l) => legendItem(l.key, l.color, l.label, summaryText(l.points, metric))).join("");

  const configs = configurationSeries(trials, metrics, metric, NORM_LABELS);
  const lines = [];
  const legend = configs.map((c, i) => {
    const color = lineColor(i);
    for (const seed of c.seeds) {
      lines.push({
        key: `${c.key}-seed-${seed.seed}`, label: `${c.label}, seed ${seed.seed}`, color,
        thin: true, points: seed.points,
      });
    }
    lines.push({ key: c.key, label: `${c.label}: mean over its seeds`, color, points: c.mean });
    const n = c.seeds.length;
    return legendItem(c.key, color, c.label,
      `mean over ${n} seed${n === 1 ? "" : "s"}: ${summaryText(c.mean, metric)}`);
  });
  $("#chart-config-curves").innerHTML = configs.length ? lineChartSvg(lines, {
    ...chart, testid: "config-curves", title: `verification: ${label} per epoch`,
    width: boxWidth(root, "#chart-config-curves"),
  }) : `<p class="muted">No verification trials yet.</p>`;
  $("#config-curves-legend").innerHTML = legend.join("");
}

/** The heatmap card of a succeeded job's ``report`` for ``part`` ("mean" or "var"); ``pool``:
 * the job's search.pool (the cells show BN's share, or the first pooled normalizer's). */
export function drawBatchHeatmap(root, report, part, pool = null) {
  const $ = (sel) => root.querySelector(sel);
  const byBatch = report.recommendation?.by_batch_size || {};
  $("#batch-card").hidden = false;
  const { norm, fallback } = shareNorm(pooledKeys("mean", pool));
  const normLabel = NORM_LABELS[norm] ?? norm;
  const why = fallback ? ` (no BN in the pool: coloured by ${normLabel}, its first normalizer)` : "";
  if (Object.keys(byBatch).length < 2) {
    const target = report.recommendation?.target_batch_size;
    $("#batch-trend").textContent = `One batch size searched${target ? ` (${target})` : ""}: `
      + "nothing to set side by side. Search several (search.trials.batch_sizes) to see how "
      + "the choices move with the batch.";
    $("#chart-heatmap").innerHTML = "";
    $("#heatmap-info").textContent = "";
    return;
  }
  const model = heatmapModel(byBatch, { part, norm });
  $("#batch-trend").textContent = `${trendText(model, normLabel, part)} (final-epoch ratios)${why}`;
  $("#chart-heatmap").innerHTML = heatmapSvg(model, {
    color: NORM_COLORS[norm] ?? "#59a14f", normLabel, part, width: boxWidth(root, "#chart-heatmap"),
    title: `${normLabel} share of each layer's ${part === "mean" ? "mean" : "variance"} ratios`,
  });
  $("#heatmap-info").textContent = model.complete
    ? "Rows: SN layers in network order; columns: batch sizes. Each cell is the layer's "
      + `final-epoch ratio averaged over that batch size's trials (darker: more ${normLabel}); `
      + "the text is the pair chosen at that batch size (mean/variance)."
    : "This report predates per-layer ratios by batch size: only the layers are shown.";
}
