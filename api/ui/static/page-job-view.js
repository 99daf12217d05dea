// The job page's skeleton (page-job.js fills it in and keeps it live). Every data-testid here is
// a stable hook of the browser tests.

import { legendHtml, NORMS, OUTPUTS } from "./charts.js";
import { curveMetrics, METRICS } from "./curves.js";
import { judgedMetric } from "./metric.js";
import { esc, progressHtml } from "./util.js";

/** The trials table's head for a job judged by ``judged`` (metric.js): its final-epoch and
 * best-epoch columns name that metric. */
export function trialsHeadHtml(judged) {
  const best = judged.higherIsBetter ? "highest" : "lowest";
  return `<th>Trial</th><th>Variant</th><th>Status</th><th class="num">Seed</th>
    <th class="num">Batch</th>
    <th class="num" title="base lr scaled to the batch size (training.lr_scaling)">
      lr (effective)</th>
    <th class="num" data-testid="trials-final-head" title="${esc(judged.label)} of the last epoch trained">
      Final-epoch ${esc(judged.short)}</th>
    <th class="num" data-testid="trials-best-head" title="the ${best} ${esc(judged.label)} over the epochs, and its epoch">
      Best-epoch ${esc(judged.short)}</th><th class="num">Epochs</th>`;
}

/** The curve choices of a job judged by ``judged``, its metric first (selected). */
export function metricOptionsHtml(judged) {
  return curveMetrics(judged).map((name) =>
    `<option value="${name}">${esc(METRICS[name].label)}</option>`).join("");
}

export function jobPageHtml(jobId) {
  return `
    <section class="card job-head">
      <div class="toolbar">
        <h1>Job <code data-testid="job-id" class="mono">${esc(jobId)}</code></h1>
        <span id="status-slot"></span>
        <span class="live" id="live-state"></span>
        <span class="spacer"></span>
        <button type="button" class="button danger" data-testid="cancel-job" id="cancel-job"
          hidden>Cancel</button>
        <button type="button" class="button" data-testid="retry-job" id="retry-job"
          hidden>Retry</button>
      </div>
      <div id="progress-slot">${progressHtml(0)}</div>
      <dl class="facts" id="facts"></dl>
      <p class="job-error" id="job-error" hidden></p>
      <div class="downloads" id="downloads">
        <span class="muted">Download:</span>
        <button type="button" class="button" data-testid="download-csv"
          data-download="csv">Ratio history (CSV)</button>
        <button type="button" class="button" data-testid="download-json" data-download="json"
          title="The plan of the configuration the verdict chose" hidden>Plan (JSON)</button>
        <button type="button" class="button" data-testid="download-yaml" data-download="yaml"
          title="The plan of the configuration the verdict chose" hidden>Plan (YAML)</button>
        <button type="button" class="button" data-testid="download-checkpoint"
          data-download="checkpoint" title="A trained model of the configuration the verdict chose"
          hidden>Checkpoint, verdict's choice (zip)</button>
        <button type="button" class="button" data-testid="download-search-plan"
          data-download="search-plan" title="The search's own per-layer plan"
          hidden>Search plan (JSON)</button>
        <button type="button" class="button" data-testid="download-search-checkpoint"
          data-download="search-checkpoint"
          title="The best search trial, finalized with its own choices (not verified)"
          hidden>Search checkpoint (zip)</button>
        <span id="artifact-downloads"></span>
        <span class="muted" id="artifact-info"></span>
      </div>
      <p class="verdict" id="verdict" data-testid="verdict" hidden></p>
    </section>
    <div class="grid-2">
      <section class="card">
        <h2>Timeline</h2>
        <ol class="timeline" data-testid="timeline" id="timeline"></ol>
      </section>
      <section class="card">
        <h2>Trials</h2>
        <div class="table-wrap">
          <table class="table" data-testid="trials-table">
            <thead><tr id="trials-head">${trialsHeadHtml(judgedMetric())}</tr></thead>
            <tbody id="trials-body"><tr class="empty"><td colspan="9">No trials yet.</td></tr></tbody>
          </table>
        </div>
      </section>
    </div>
    <section class="card" id="curves-card">
      <div class="toolbar">
        <h2>Training curves</h2>
        <span class="spacer"></span>
        <label>Metric
          <select data-testid="metric-select" id="metric-select">
            ${metricOptionsHtml(judgedMetric())}
          </select>
        </label>
      </div>
      <div class="charts" id="curve-charts">
        <div class="chart-box"><div id="chart-search-curves"><p class="muted">No epochs yet.</p></div>
          <ul class="series-legend small" data-testid="search-curves-legend"
            id="search-curves-legend"></ul></div>
        <div class="chart-box"><div id="chart-config-curves"></div>
          <ul class="series-legend small" data-testid="config-curves-legend"
            id="config-curves-legend"></ul></div>
      </div>
      <p class="muted small">Per epoch, as the trials reported it. Search: one line per trial.
        Verification: one thick line per configuration, the mean over its seeds, and one thin
        line per seed. The legends give each line's final-epoch and best-epoch values.</p>
    </section>
    <section class="card" id="ratios-card">
      <div class="toolbar">
        <h2>Per-layer switch ratios</h2>
        <span class="spacer"></span>
        <label>Search trial
          <select data-testid="trial-select" id="trial-select" disabled>
            <option value="">no search trial yet</option>
          </select>
        </label>
      </div>
      <div class="toolbar small">
        <span id="norm-legend">${legendHtml(NORMS)}</span>
        <span id="output-legend" hidden>${legendHtml(OUTPUTS, "output")}</span>
        <span class="spacer"></span>
        <span class="muted" id="step-info"></span>
      </div>
      <div class="charts" id="bar-charts">
        <div class="chart-box" id="chart-mean"><p class="muted">No ratios yet.</p></div>
        <div class="chart-box" id="chart-var"></div>
        <div class="chart-box" id="chart-output" hidden></div>
        <div class="chart-box" id="chart-divergence"></div>
      </div>
      <p class="muted small">Newest step of the selected trial; each bar is one SN layer in
        network order (hover for its values, click to show its evolution below).</p>
    </section>
    <section class="card" id="evolution-card">
      <div class="toolbar">
        <h2>Layer evolution</h2>
        <span class="spacer"></span>
        <label>Layer
          <select data-testid="layer-select" id="layer-select" disabled>
            <option value="">no layers yet</option>
          </select>
        </label>
      </div>
      <div class="chart-box" id="chart-evolution"></div>
      <p class="muted small" id="evolution-info"></p>
    </section>
    <section class="card" id="results-card" hidden>
      <h2>Recommendation</h2>
      <p class="muted" id="recommendation-info"></p>
      <div class="table-wrap">
        <table class="table" data-testid="recommendation-table">
          <thead><tr><th class="num">#</th><th>Layer</th><th>Mean</th><th>Variance</th>
            <th>Output</th><th class="num">Confidence</th><th>Torch layer</th><th>Mean ratios</th>
            <th>Variance ratios</th><th>Output ratios</th></tr></thead>
          <tbody id="recommendation-body"></tbody>
        </table>
      </div>
      <h2>Verification</h2>
      <p class="muted" id="verification-info"></p>
      <table class="table" data-testid="verification-table">
        <thead><tr><th>Model</th><th>Key</th><th class="num" data-testid="verification-metric"
          id="verification-metric">Final-epoch ${esc(judgedMetric().short)} (mean)</th>
          <th class="num">Std (over seeds)</th><th class="num">Seeds</th></tr></thead>
        <tbody id="verification-body"></tbody>
      </table>
    </section>
    <section class="card" id="batch-card" data-testid="batch-card" hidden>
      <div class="toolbar">
        <h2>Per-layer choices by batch size</h2>
        <span class="spacer"></span>
        <label>Ratios
          <select data-testid="heatmap-part" id="heatmap-part">
            <option value="mean">mean</option><option value="var">variance</option>
          </select>
        </label>
      </div>
      <p class="muted" data-testid="batch-trend" id="batch-trend"></p>
      <div class="chart-box" id="chart-heatmap"></div>
      <p class="muted small" id="heatmap-info"></p>
    </section>
    <section class="card">
      <details><summary>Job spec</summary><pre class="spec" id="spec-view"></pre></details>
    </section>`;
}
