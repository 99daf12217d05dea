// A succeeded job's report.json as table rows: the recommendation (one row per planned layer,
// with the torch layer it becomes, as the worker wrote it: recommendation.torch_layers, computed
// by sn_core itself; "–" in reports from before that field), the layer's output choice where
// its pool has point-wise members (the normalized output, DyT or none: the torch layer says
// what it becomes) with its output ratios, and the verification (each model trained from
// scratch) in the metric the job is judged by (metric.js).

import { NORM_LABELS, OUTPUT_LABELS, ratiosText } from "./charts.js";
import { judgedMetric } from "./metric.js";
import { esc, fmtNum } from "./util.js";

function normTag(norm) {
  return `<span class="norm norm-${esc(norm)}">${esc(NORM_LABELS[norm] ?? String(norm).toUpperCase())}</span>`;
}

/** A layer's output choice: the plan's ``output`` or the summary's ``outputs`` (the worker's
 * recommendation); null for a layer without point-wise members. */
export function layerOutput(layer, outputs) {
  return layer.output ?? outputs?.[layer.name] ?? null;
}

function outputCell(output) {
  if (output === null) return '<td class="muted" data-testid="output">–</td>';
  return `<td data-testid="output" data-output="${esc(output)}"><span class="output output-${
    esc(output)}">${esc(OUTPUT_LABELS[output] ?? output)}</span></td>`;
}

// A layer the trials left undecided (resolved by the aggregation rule) and a confidence that a
// single trial cannot measure are said in words.
function recommendationRow(layer, index, torchLayers, indifferent, singleTrial, outputs) {
  const note = indifferent.has(layer.name)
    ? ' <span class="small muted" data-testid="indifferent">indifferent</span>' : "";
  return `<tr data-testid="recommendation-row" data-layer="${esc(layer.name)}">
    <td class="num">${index}</td><td class="mono">${esc(layer.name)}${note}</td>
    <td>${normTag(layer.mean)}</td><td>${normTag(layer.var)}</td>
    ${outputCell(layerOutput(layer, outputs))}
    <td class="num">${singleTrial ? "1 trial" : fmtNum(layer.confidence, 2)}</td>
    <td class="mono" data-testid="torch-layer">${esc(torchLayers?.[layer.name] ?? "–")}</td>
    <td class="small">${esc(ratiosText(layer.mean_ratios))}</td>
    <td class="small">${esc(ratiosText(layer.var_ratios))}</td>
    <td class="small" data-testid="output-ratios">${
  esc(ratiosText(layer.output_ratios, "output") || "–")}</td>
  </tr>`;
}

function verificationRow([key, row], best, metric) {
  const digits = metric.higherIsBetter ? 2 : 3; // accuracy in %, perplexity as it is
  const cell = (v) => (v === null || v === undefined ? "–" : metric.fmt(v, digits));
  const value = row[metric.key];
  const isBest = value !== null && value !== undefined && value === best;
  return `<tr data-testid="verification-row" data-key="${esc(key)}" class="${isBest ? "best" : ""}">
    <td>${esc(row.label)}</td><td class="mono">${esc(key)}</td>
    <td class="num">${cell(value)}</td><td class="num">${cell(row.std)}</td>
    <td class="num">${(row.seeds || []).join(", ") || (row.per_seed || []).length}</td></tr>`;
}

/** The verification's verdict in plain words ("" for a report without one). */
export function verdictText(report) {
  const verdict = report.verification?.verdict;
  return verdict?.text ? `Verdict: ${verdict.text}` : "";
}

/** {verdictText, recommendationInfo, recommendationRows, verificationInfo, verificationHead,
 * verificationRows} (text, HTML). A language model's verification is in validation perplexity
 * (lower is better), a classifier's in accuracy (worker/job.py: each row's key is the metric's,
 * ``metric_name`` says which). */
export function reportHtml(report) {
  const rec = report.recommendation || {};
  const layers = rec.plan?.layers || [];
  const verification = report.verification;
  const results = Object.entries(verification?.results || {});
  const metric = judgedMetric(verification?.metric_name);
  const values = results.map(([, r]) => r[metric.key]).filter((v) => v !== null && v !== undefined);
  const best = metric.higherIsBetter ? Math.max(...values) : Math.min(...values);
  const aggregation = rec.summary?.aggregation;
  const indifferent = new Set(aggregation?.indifferent_layers || []);
  const singleTrial = rec.plan?.metadata?.trials === 1;
  return {
    verdictText: verdictText(report),
    recommendationInfo: `${layers.length} layers · target batch size ${
      rec.target_batch_size ?? "–"} · from ${(rec.trial_ids || []).length} trial(s)${
      indifferent.size ? ` · ${indifferent.size} indifferent: ${aggregation.rule}` : ""}`,
    recommendationRows: layers
      .map((layer, i) => recommendationRow(layer, i, rec.torch_layers, indifferent, singleTrial,
        rec.summary?.outputs))
      .join(""),
    verificationInfo: verification
      ? `The recommended plan and the uniform baselines trained from scratch: ${
        verification.epochs} epochs, batch size ${verification.batch_size}, seeds ${
        (verification.seeds || []).join(", ")}; the SN row is the search's own annealed trial. ${
        verification.metric ? `${metric.higherIsBetter ? "Accuracy" : "Perplexity"}: ${
          verification.metric}.` : ""}`
      : "No verification was run for this job.",
    verificationHead: `Final-epoch ${metric.short} (mean)`,
    verificationRows: results.map((entry) => verificationRow(entry, best, metric)).join(""),
  };
}
