// A succeeded job's report.json as table rows: the recommendation (one row per planned layer,
// with the torch layer it becomes, as the worker wrote it: recommendation.torch_layers, computed
// by sn_core itself; "–" in reports from before that field), the layer's output choice where
// its pool has point-wise members (the normalized output, DyT or none: the torch layer says
// what it becomes) and the verification (each model trained from scratch).

import { NORM_LABELS, OUTPUT_LABELS, ratiosText } from "./charts.js";
import { esc, fmtNum, fmtPct } from "./util.js";

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
  </tr>`;
}

// A language model's verification is in validation perplexity (lower is better), a classifier's
// in accuracy (worker/job.py: the row's key is the metric's, metric_name says which).
function rowMetric(verification) {
  return verification?.metric_name === "perplexity"
    ? { key: "val_perplexity", fmt: (v) => fmtNum(v, 3), lower: true }
    : { key: "val_accuracy", fmt: (v) => fmtPct(v, 2), lower: false };
}

function verificationRow([key, row], best, metric) {
  const acc = row[metric.key];
  const isBest = acc !== null && acc !== undefined && acc === best;
  return `<tr data-testid="verification-row" data-key="${esc(key)}" class="${isBest ? "best" : ""}">
    <td>${esc(row.label)}</td><td class="mono">${esc(key)}</td>
    <td class="num">${acc === null || acc === undefined ? "–" : metric.fmt(acc)}</td>
    <td class="num">${row.std === null || row.std === undefined ? "–" : metric.fmt(row.std)}</td>
    <td class="num">${(row.seeds || []).join(", ") || (row.per_seed || []).length}</td></tr>`;
}

/** The verification's verdict in plain words ("" for a report without one). */
export function verdictText(report) {
  const verdict = report.verification?.verdict;
  return verdict?.text ? `Verdict: ${verdict.text}` : "";
}

/** {verdictText, recommendationInfo, recommendationRows, verificationInfo, verificationRows}
 * (text, HTML). */
export function reportHtml(report) {
  const rec = report.recommendation || {};
  const layers = rec.plan?.layers || [];
  const verification = report.verification;
  const results = Object.entries(verification?.results || {});
  const metric = rowMetric(verification);
  const values = results.map(([, r]) => r[metric.key]).filter((v) => v !== null && v !== undefined);
  const best = metric.lower ? Math.min(...values) : Math.max(...values);
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
        verification.metric ? `${metric.lower ? "Perplexity" : "Accuracy"}: ${
          verification.metric}.` : ""}`
      : "No verification was run for this job.",
    verificationRows: results.map((entry) => verificationRow(entry, best, metric)).join(""),
  };
}
