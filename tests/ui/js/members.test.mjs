// The new pool members in the UI: rms among the normalizers (its colour, its bars and lines) and
// the output ratios of layers with point-wise members (their own chart, evolution panel, legend
// and the recommendation table's output column), read from the API's vocabulary.

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import "./browser-env.mjs";
import {
  evolutionSvg, hasOutput, legendHtml, NORM_COLORS, OUTPUT_COLORS, ratioBarsSvg, ratiosText,
} from "../../../api/ui/static/charts.js";
import { layerOutput, reportHtml } from "../../../api/ui/static/report.js";
import { MEMBERS, NORMS, OUTPUTS, setVocabulary } from "../../../api/ui/static/vocabulary.js";

const label = (name, text) => ({ name, label: text });
// What GET /api/v1/vocabulary answers (tests/api/test_api.py pins it).
setVocabulary({
  statuses: ["queued"], finished_statuses: [], artifact_kinds: [],
  normalizers: [label("in", "IN"), label("ln", "LN"), label("bn", "BN"), label("gn", "GN"),
    label("rms", "RMS")],
  members: [{ name: "rms", label: "RMS", kind: "statistics" },
    { name: "dyt", label: "DyT", kind: "pointwise" }],
  output_choices: [label("norm", "norm"), label("dyt", "DyT"), label("none", "none")],
});

const tokens = {
  layer: "blocks.0.norm", layer_index: 0, step: 3, epoch: 3, mean_fixed: false, var_fixed: false,
  mean: { in: null, ln: 0.25, bn: null, gn: null, rms: 0.75 },
  var: { in: null, ln: 0.5, bn: null, gn: null, rms: 0.5 },
  output: { norm: 0.2, dyt: 0.7, none: 0.1 },
};
const plain = { ...tokens, layer: "head.bn", layer_index: 1, output: null,
  mean: { in: 0.5, ln: 0, bn: 0.5, gn: null } };

const rects = (svg, layer) => [...svg.split(`data-layer="${layer}"`)[1].split("</g>")[0]
  .matchAll(/<rect data-norm="(\w+)" data-value="([\d.]+)"[^>]*fill="(#\w+)"/g)]
  .map((m) => [m[1], Number(m[2]), m[3]]);

describe("pool members in the charts", () => {
  test("the vocabulary gives rms, the output choices and the members", () => {
    assert.deepEqual(NORMS, ["in", "ln", "bn", "gn", "rms"]);
    assert.deepEqual(OUTPUTS, ["norm", "dyt", "none"]);
    assert.deepEqual(MEMBERS.map((m) => m.kind), ["statistics", "pointwise"]);
    for (const n of NORMS) assert.match(NORM_COLORS[n], /^#[0-9a-f]{6}$/);
    for (const n of OUTPUTS) assert.match(OUTPUT_COLORS[n], /^#[0-9a-f]{6}$/);
  });

  test("rms is a bar segment of its own colour; the output chart stacks the output ratios", () => {
    const mean = ratioBarsSvg([tokens, plain], { part: "mean", testid: "m" });
    assert.deepEqual(rects(mean, "blocks.0.norm"),
      [["ln", 0.25, NORM_COLORS.ln], ["rms", 0.75, NORM_COLORS.rms]]);
    const output = ratioBarsSvg([tokens, plain], { part: "output", testid: "o" });
    assert.deepEqual(rects(output, "blocks.0.norm"), [["norm", 0.2, OUTPUT_COLORS.norm],
      ["dyt", 0.7, OUTPUT_COLORS.dyt], ["none", 0.1, OUTPUT_COLORS.none]]);
    assert.deepEqual(rects(output, "head.bn"), [], "a layer without point-wise members");
    assert.match(output, /DyT 0\.700/);
  });

  test("texts and legends name rms and the output choices by their labels", () => {
    assert.equal(ratiosText(tokens.mean), "LN 0.250 · RMS 0.750");
    assert.equal(ratiosText(tokens.output, "output"), "norm 0.200 · DyT 0.700 · none 0.100");
    assert.match(legendHtml(NORMS), /RMS<\/span>/);
    assert.match(legendHtml(OUTPUTS, "output"), new RegExp(`fill="${OUTPUT_COLORS.dyt}"/></svg>DyT`));
  });

  test("the evolution chart has an output panel only for a layer with output ratios", () => {
    assert.equal(hasOutput([plain]), false);
    assert.equal(hasOutput([plain, tokens]), true);
    const points = [1, 2, 3].map((step) => ({ ...tokens, step }));
    const svg = evolutionSvg(points, { layer: "blocks.0.norm" });
    assert.match(svg, /output ratios/);
    assert.deepEqual([...svg.matchAll(/data-norm="(\w+)" data-part="output"/g)].map((m) => m[1]),
      ["norm", "dyt", "none"]);
    assert.match(svg, /data-norm="rms" data-part="mean"/);
    assert.doesNotMatch(evolutionSvg([plain], { layer: "head.bn" }), /output ratios/);
  });
});

describe("the recommendation table's output column", () => {
  const layers = [
    { name: "blocks.0.norm", mean: "rms", var: "rms", confidence: 1, mean_ratios: {}, var_ratios: {} },
    { name: "blocks.1.norm", mean: "ln", var: "ln", confidence: 1, mean_ratios: {}, var_ratios: {},
      output: "none" },
    { name: "head.bn", mean: "bn", var: "bn", confidence: 1, mean_ratios: {}, var_ratios: {} },
  ];
  const recommendation = {
    plan: { metadata: { trials: 2 }, layers },
    torch_layers: { "blocks.0.norm": "DynamicTanh(64)", "blocks.1.norm": "Identity" },
    summary: { outputs: { "blocks.0.norm": "dyt", "blocks.1.norm": "none" } },
  };

  test("the plan's output, else the summary's, else none", () => {
    assert.equal(layerOutput(layers[0], recommendation.summary.outputs), "dyt");
    assert.equal(layerOutput(layers[1], {}), "none");
    assert.equal(layerOutput(layers[2], recommendation.summary.outputs), null);
  });

  test("each row shows its output choice by label and the torch layer it becomes", () => {
    const rows = reportHtml({ recommendation }).recommendationRows;
    const row = (name) => rows.split(`data-layer="${name}"`)[1].split("</tr>")[0];
    assert.match(row("blocks.0.norm"), /data-output="dyt"><span class="output output-dyt">DyT/);
    assert.match(row("blocks.0.norm"), /data-testid="torch-layer">DynamicTanh\(64\)/);
    assert.match(row("blocks.1.norm"), /data-output="none"/);
    assert.match(row("head.bn"), /data-testid="output">–/);
    assert.match(row("blocks.0.norm"), /norm-rms">RMS/);
  });
});
