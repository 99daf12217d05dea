// The layers x batch sizes heatmap (heatmap.js) from report.json's by_batch_size, and the
// ratio charts filling their card (charts.js).

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import "./browser-env.mjs";
import { layerGeometry, ratioBarsSvg } from "../../../api/ui/static/charts.js";
import { heatmapModel, heatmapSvg, shareColor, trendText } from "../../../api/ui/static/heatmap.js";

const ratios = (bn) => ({ in: 0, ln: 1 - bn, bn });
const BY = {
  128: {
    trials: 2, mean_ratio: { bn: 0.8 }, var_ratio: { bn: 0.7 },
    choices: { "conv.bn1": "bn/bn", "fc.norm": "ln/ln" },
    layers: { "conv.bn1": { mean: ratios(0.9), var: ratios(0.8) }, "fc.norm": { mean: { ln: 1 }, var: { ln: 1 } } },
  },
  8: {
    trials: 1, mean_ratio: { bn: 0.1 }, var_ratio: { bn: 0.2 },
    choices: { "conv.bn1": "ln/ln", "fc.norm": "ln/ln" },
    layers: { "conv.bn1": { mean: ratios(0.2), var: ratios(0.3) }, "fc.norm": { mean: { ln: 1 }, var: { ln: 1 } } },
  },
};

describe("heatmapModel", () => {
  test("rows are layers in network order, columns batch sizes ascending (numerically)", () => {
    const model = heatmapModel(BY, { part: "mean", norm: "bn" });
    assert.deepEqual(model.batchSizes, [8, 128]);
    assert.deepEqual(model.layers, ["conv.bn1", "fc.norm"]);
    const cell = (layer, batch) => model.cells.find((c) => c.layer === layer && c.batch === batch);
    assert.equal(cell("conv.bn1", 8).value, 0.2);
    assert.equal(cell("conv.bn1", 128).value, 0.9);
    assert.equal(cell("conv.bn1", 128).choice, "bn/bn");
    assert.equal(cell("fc.norm", 8).value, null); // BN not in that layer's pool
    assert.deepEqual(model.trend.map((t) => [t.batch, t.value]), [[8, 0.1], [128, 0.8]]);
    assert.equal(model.complete, true);
    assert.equal(heatmapModel(BY, { part: "var" }).cells.find((c) => c.layer === "conv.bn1" && c.batch === 8).value, 0.3);
  });

  test("a report from before per-layer ratios still names its layers, with no values", () => {
    const old = { 8: { choices: { a: "bn/bn" }, mean_ratio: { bn: 1 } }, 32: { choices: { a: "bn/bn" }, mean_ratio: { bn: 1 } } };
    const model = heatmapModel(old);
    assert.equal(model.complete, false);
    assert.deepEqual(model.cells.map((c) => c.value), [null, null]);
    assert.deepEqual(heatmapModel({}).batchSizes, []);
  });

  test("the trend in words; colours from white to the normalizer's", () => {
    assert.equal(trendText(heatmapModel(BY), "BN", "mean"),
      "BN share of the mean ratios averaged over the layers: batch 8 0.10 → batch 128 0.80");
    assert.equal(shareColor(0, "#59a14f"), "#ffffff");
    assert.equal(shareColor(1, "#59a14f"), "#59a14f");
    assert.equal(shareColor(2, "#000000"), "#000000");
  });
});

describe("heatmapSvg", () => {
  test("one cell per layer and batch size, labelled with the choice; fills its card", () => {
    const svg = heatmapSvg(heatmapModel(BY), { color: "#59a14f", normLabel: "BN", title: "t" });
    assert.equal((svg.match(/data-testid="heatmap-cell"/g) || []).length, 4);
    assert.match(svg, /data-layer="conv.bn1" data-batch="128" data-value="0.9"/);
    assert.match(svg, />bn\/bn</);
    assert.match(svg, /no BN in the pool/);
    assert.match(svg, /width="100%"/);
    assert.match(svg, /batch 8<[\s\S]*batch 128</);
    assert.match(heatmapSvg(heatmapModel(BY), { color: "#59a14f", width: 700 }), /viewBox="0 0 700 /);
    assert.match(heatmapSvg(heatmapModel(BY), { color: "#59a14f", width: 3000 }), /viewBox="0 0 900 /);
  });
});

describe("ratio charts fill their card", () => {
  test("few layers spread over the plot; many keep a readable step", () => {
    const few = layerGeometry(4);
    assert.ok(few.plotW >= 520 && few.bar <= 44 && few.step * 4 === few.plotW);
    const boxed = layerGeometry(21, 600); // drawn at the box's pixel width
    assert.ok(Math.abs(boxed.plotW + 50 - 600) < 1e-9 && boxed.bar <= 44);
    assert.equal(layerGeometry(400, 600).step, 3); // too many for the box: scaled down to fit
    const many = layerGeometry(200);
    assert.ok(many.step >= 3 && many.plotW === many.step * 200);
    const svg = ratioBarsSvg([{ layer: "a", layer_index: 0, mean: { bn: 1 } }], { part: "mean", testid: "x" });
    assert.match(svg, /width="100%"/);
    assert.doesNotMatch(svg, /height="\d+"\s+role/);
  });
});
