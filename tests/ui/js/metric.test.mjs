// A language model's job in the UI: judged by validation perplexity (lower is better) where a
// classifier's is judged by accuracy, its pool (LN, RMS, DyT: no BN) in the legends and the
// heatmap, its output ratios and torch layers in the recommendation table.

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import "./browser-env.mjs";
import { legendHtml, pooledKeys } from "../../../api/ui/static/charts.js";
import { curveMetrics, METRICS } from "../../../api/ui/static/curves.js";
import { shareNorm } from "../../../api/ui/static/heatmap.js";
import { judgedMetric, trialValues } from "../../../api/ui/static/metric.js";
import { metricOptionsHtml, trialsHeadHtml } from "../../../api/ui/static/page-job-view.js";
import { reportHtml } from "../../../api/ui/static/report.js";
import { setVocabulary } from "../../../api/ui/static/vocabulary.js";

const label = (name, text) => ({ name, label: text });
// What GET /api/v1/vocabulary answers (tests/api/test_api.py pins it).
setVocabulary({
  statuses: ["queued"], finished_statuses: [], artifact_kinds: [],
  normalizers: [label("in", "IN"), label("ln", "LN"), label("bn", "BN"), label("gn", "GN"),
    label("rms", "RMS")],
  members: [],
  output_choices: [label("norm", "norm"), label("dyt", "DyT"), label("none", "none")],
});

const PPL = judgedMetric("perplexity");
const ACC = judgedMetric("accuracy");

describe("the judged metric", () => {
  test("a language model is judged by perplexity, lower being better; anything else by accuracy", () => {
    assert.equal(PPL.key, "val_perplexity");
    assert.equal(PPL.higherIsBetter, false);
    assert.equal(ACC.key, "val_accuracy");
    assert.equal(ACC.higherIsBetter, true);
    assert.equal(judgedMetric(undefined), ACC); // a job or report from before language models
    assert.equal(PPL.fmt(4.1234), "4.12");
    assert.equal(ACC.fmt(0.9712), "97.1%");
  });

  test("a trial's best perplexity is its lowest, its best accuracy its highest; final is the last", () => {
    const line = [{ epoch: 1, value: 6 }, { epoch: 2, value: 4 }, { epoch: 3, value: 5 }];
    assert.deepEqual(trialValues(line, {}, PPL), { final: line[2], best: line[1] });
    assert.deepEqual(trialValues(line, {}, ACC), { final: line[2], best: line[0] });
  });

  test("before its epochs are loaded, a trial shows its stored best (an accuracy's epoch only)", () => {
    const stored = { val_accuracy: 0.4, epoch: 2, val_perplexity: 3.5 };
    assert.deepEqual(trialValues([], stored, PPL), { final: null, best: { value: 3.5, epoch: null } });
    assert.deepEqual(trialValues(undefined, stored, ACC), { final: null, best: { value: 0.4, epoch: 2 } });
    assert.deepEqual(trialValues([], { val_accuracy: 0.4 }, PPL), { final: null, best: null });
  });

  test("the trials table's head names the job's metric", () => {
    const ppl = trialsHeadHtml(PPL);
    assert.match(ppl, /Final-epoch val\. ppl/);
    assert.match(ppl, /Best-epoch val\. ppl/);
    assert.match(ppl, /the lowest validation perplexity/);
    assert.doesNotMatch(ppl, /acc/);
    assert.match(trialsHeadHtml(ACC), /Final-epoch val\. acc\.[\s\S]*the highest validation accuracy/);
  });

  test("a language model's curves start at perplexity; a classifier's offer none", () => {
    assert.deepEqual(curveMetrics(PPL), ["val_perplexity", "val_accuracy", "val_loss", "train_loss"]);
    assert.deepEqual(curveMetrics(ACC), ["val_accuracy", "val_loss", "train_loss"]);
    assert.equal(METRICS.val_perplexity.label, "validation perplexity");
    assert.match(metricOptionsHtml(PPL), /^<option value="val_perplexity">validation perplexity</);
  });
});

describe("the job's pool", () => {
  test("legends show the pooled members only: LN and RMS; norm and DyT for the output", () => {
    const pool = ["ln", "rms", "dyt"];
    assert.deepEqual(pooledKeys("mean", pool), ["ln", "rms"]);
    assert.deepEqual(pooledKeys("output", pool), ["norm", "dyt"]);
    assert.deepEqual(pooledKeys("output", ["in", "ln", "bn"]), []); // no point-wise member
    assert.deepEqual(pooledKeys("mean", null), ["in", "ln", "bn", "gn", "rms"]); // no pool known
    const legend = legendHtml(pooledKeys("mean", pool));
    assert.match(legend, /LN/);
    assert.match(legend, /RMS/);
    assert.doesNotMatch(legend, /BN|IN|GN/);
  });

  test("the heatmap shows BN's share when BN is pooled, else the first pooled normalizer's", () => {
    assert.deepEqual(shareNorm(["in", "ln", "bn"]), { norm: "bn", fallback: false });
    assert.deepEqual(shareNorm(["ln", "rms"]), { norm: "ln", fallback: true });
    assert.deepEqual(shareNorm(["rms"]), { norm: "rms", fallback: true });
    assert.deepEqual(shareNorm([]), { norm: "bn", fallback: false });
  });
});

describe("a language model's report", () => {
  const report = {
    recommendation: {
      target_batch_size: 32,
      trial_ids: ["a"],
      torch_layers: {
        "blocks.0.norm1": "RMSNormWithBias(32)", "blocks.0.norm2": "DynamicTanh(32)",
        norm: "LayerNorm(32)",
      },
      summary: { outputs: { "blocks.0.norm1": "norm", "blocks.0.norm2": "dyt", norm: "norm" } },
      plan: {
        metadata: { trials: 1 },
        layers: [
          { name: "blocks.0.norm1", mean: "rms", var: "rms", confidence: 1,
            mean_ratios: { ln: 0.4, rms: 0.6 }, var_ratios: { ln: 0.4, rms: 0.6 },
            output: "norm", output_ratios: { norm: 0.7, dyt: 0.3 } },
          { name: "blocks.0.norm2", mean: "ln", var: "ln", confidence: 1,
            mean_ratios: { ln: 0.6, rms: 0.4 }, var_ratios: { ln: 0.6, rms: 0.4 },
            output: "dyt", output_ratios: { norm: 0.2, dyt: 0.8 } },
          { name: "norm", mean: "ln", var: "ln", confidence: 1,
            mean_ratios: { ln: 0.9, rms: 0.1 }, var_ratios: { ln: 0.9, rms: 0.1 },
            output: "norm", output_ratios: { norm: 0.6, dyt: 0.4 } },
        ],
      },
    },
    verification: {
      epochs: 1, batch_size: 32, seeds: [0], metric_name: "perplexity",
      metric: "final-epoch validation perplexity: mean and sample std over seeds",
      results: {
        plan: { label: "plan", val_perplexity: 5.25, std: null, n: 1, seeds: [0] },
        ln: { label: "all-LN", val_perplexity: 5.5, std: null, n: 1, seeds: [0] },
      },
      verdict: { text: "keep all-LN: the plan's perplexity is not lower" },
    },
  };

  test("the verification is in perplexity; the best row is the lowest", () => {
    const html = reportHtml(report);
    assert.equal(html.verificationHead, "Final-epoch val. ppl (mean)");
    assert.match(html.verificationInfo, /Perplexity: final-epoch validation perplexity/);
    assert.match(html.verificationRows, /data-key="plan" class="best">[\s\S]*?5\.250/);
    assert.match(html.verificationRows, /data-key="ln" class="">[\s\S]*?5\.500/);
    assert.doesNotMatch(html.verificationRows, /%/);
    assert.equal(reportHtml({ verification: { ...report.verification, metric_name: undefined,
      results: { bn: { label: "all-BN", val_accuracy: 0.9, seeds: [0] } } } }).verificationHead,
    "Final-epoch val. acc. (mean)");
  });

  test("each row names its torch layer, RMS among the ratios, and the output ratios", () => {
    const rows = reportHtml(report).recommendationRows.split('data-testid="recommendation-row"').slice(1);
    assert.equal(rows.length, 3);
    assert.match(rows[0], /RMSNormWithBias\(32\)/);
    assert.match(rows[0], /LN 0\.400 · RMS 0\.600/);
    assert.match(rows[0], /data-testid="output-ratios">norm 0\.700 · DyT 0\.300</);
    assert.match(rows[1], /DynamicTanh\(32\)/);
    assert.match(rows[1], /data-output="dyt"/);
    assert.match(rows[2], /LayerNorm\(32\)/);
    // A layer without point-wise members has no output ratios.
    const plain = reportHtml({ recommendation: { plan: { layers: [{ name: "l", mean: "bn",
      var: "bn", confidence: 1, mean_ratios: { bn: 1 }, var_ratios: { bn: 1 } }] } } });
    assert.match(plain.recommendationRows, /data-testid="output-ratios">–</);
  });
});
