import assert from "node:assert/strict";
import { describe, test } from "node:test";

import "./browser-env.mjs";
import { reportHtml, verdictText } from "../../../api/ui/static/report.js";

const verification = {
  epochs: 6,
  batch_size: 32,
  seeds: [0, 1],
  metric: "final-epoch validation accuracy: mean and sample std over seeds",
  results: {
    sn: { label: "SN model", val_accuracy: 0.98, std: 0.01, n: 2, seeds: [0, 1], per_seed: [0.97, 0.99] },
    bn: { label: "all-BN", val_accuracy: 0.5, std: null, n: 1, seeds: [1], per_seed: [0.5] },
  },
  verdict: { text: "use all-BN: the plan is not better (-0.1 points, CI -0.6 to 0.4)" },
};

describe("report", () => {
  test("the verdict comes first, in plain words; none without one", () => {
    assert.equal(verdictText({ verification }), `Verdict: ${verification.verdict.text}`);
    assert.equal(verdictText({ verification: { ...verification, verdict: undefined } }), "");
    assert.equal(verdictText({}), "");
    assert.equal(reportHtml({ verification }).verdictText, verdictText({ verification }));
  });

  test("verification rows: one seed shows no std; the seeds are listed; the SN row is not 'from scratch'", () => {
    const html = reportHtml({ verification });
    assert.match(html.verificationRows, /data-key="bn"[\s\S]*?<td class="num">–<\/td>\s*<td class="num">1<\/td>/);
    assert.match(html.verificationRows, /data-key="sn"[\s\S]*?<td class="num">0, 1<\/td>/);
    assert.match(html.verificationInfo, /SN row is the search's own annealed trial/);
    assert.match(html.verificationInfo, /final-epoch validation accuracy/);
  });

  test("indifferent layers are marked and explained; one trial shows no confidence number", () => {
    const recommendation = {
      target_batch_size: 8,
      trial_ids: ["a", "b"],
      plan: {
        metadata: { trials: 2 },
        layers: [
          { name: "l0", mean: "bn", var: "bn", confidence: 0, mean_ratios: {}, var_ratios: {} },
          { name: "l1", mean: "in", var: "bn", confidence: 0.75, mean_ratios: {}, var_ratios: {} },
        ],
      },
      summary: { aggregation: { indifferent_layers: ["l0"], rule: "cheapest first" } },
    };
    const html = reportHtml({ recommendation });
    assert.match(html.recommendationRows, /data-layer="l0"[\s\S]*?indifferent/);
    assert.doesNotMatch(html.recommendationRows.split('data-layer="l1"')[1], /indifferent/);
    assert.match(html.recommendationInfo, /1 indifferent: cheapest first/);
    assert.match(html.recommendationRows, /0\.75/);
    const single = { ...recommendation, plan: { ...recommendation.plan, metadata: { trials: 1 } } };
    const rows = reportHtml({ recommendation: single }).recommendationRows;
    assert.match(rows, /1 trial/);
    assert.doesNotMatch(rows, /0\.75/);
  });
});
