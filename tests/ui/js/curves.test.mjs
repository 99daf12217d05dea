// Training curves as data (curves.js) and drawn (line-chart.js): one line per search trial, one
// per verification configuration (the mean over its seeds, each seed kept), final- and
// best-epoch summaries, integer epoch ticks, a chart that scales with its card.

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import "./browser-env.mjs";
import {
  configurationLabel, configurationSeries, finalAndBest, meanLine, pointsByTrial,
  searchSeries,
} from "../../../api/ui/static/curves.js";
import { lineChartSvg } from "../../../api/ui/static/line-chart.js";

// Database ids are shared by every job (this job's trials are 13 to 18); numbers are per job.
const trial = (n, variant, seed, batch) =>
  ({ id: n + 12, number: n, variant, config: { trial: { seed, batch_size: batch } } });
const TRIALS = [
  trial(3, "sn", 0, 32), trial(1, "sn", 0, 8), trial(5, "bn", 0, 32), trial(4, "plan", 1, 32),
  trial(2, "plan", 0, 32), trial(6, "bn", 1, 32),
];
const pt = (n, epoch, value, name = "val_accuracy") =>
  ({ trial_id: n + 12, epoch, step: epoch, name, value });
const POINTS = [
  pt(1, 1, 0.5), pt(1, 2, 0.7), pt(3, 1, 0.6), pt(3, 2, 0.65), pt(3, 3, 0.64),
  pt(2, 1, 0.8), pt(2, 2, 0.9), pt(4, 1, 0.6), pt(4, 2, 0.7), pt(4, 3, 0.8),
  pt(5, 1, 0.7), pt(5, 2, 0.75), pt(6, 1, 0.72), pt(6, 2, 0.74),
  pt(1, 1, 2.0, "val_loss"), pt(1, 2, 1.5, "val_loss"), pt(2, 2, 0.2, "train_loss"),
];

describe("series", () => {
  test("pointsByTrial keeps one metric, ascending epochs, one value per epoch", () => {
    const lines = pointsByTrial([...POINTS, pt(1, 2, 0.71)], "val_accuracy");
    assert.deepEqual(lines.get(13), [{ epoch: 1, value: 0.5 }, { epoch: 2, value: 0.71 }]);
    assert.equal(pointsByTrial(POINTS, "val_loss").size, 1);
    assert.equal(pointsByTrial(POINTS, "nope").size, 0);
  });

  test("one line per search trial, in id order, named by seed and batch", () => {
    const lines = searchSeries(TRIALS, POINTS, "val_accuracy");
    assert.deepEqual(lines.map((l) => l.trialId), [13, 15]);
    assert.equal(lines[0].label, "#1 · seed 0 · batch 8"); // the job's number, not the id
    assert.deepEqual(lines[1].points.map((p) => p.epoch), [1, 2, 3]);
  });

  test("one entry per configuration, plan first; the mean over the seeds at each epoch", () => {
    const configs = configurationSeries(TRIALS, POINTS, "val_accuracy", { bn: "BN" });
    assert.deepEqual(configs.map((c) => c.variant), ["plan", "bn"]);
    assert.deepEqual(configs.map((c) => c.label), ["plan", "all-BN"]);
    const plan = configs[0];
    assert.deepEqual(plan.seeds.map((s) => s.seed), [0, 1]);
    // epochs 1-2 from both seeds, epoch 3 from seed 1 only (n says so)
    assert.deepEqual(plan.mean.map((p) => [p.epoch, Number(p.value.toFixed(3)), p.n]),
      [[1, 0.7, 2], [2, 0.8, 2], [3, 0.8, 1]]);
    assert.deepEqual(meanLine([]), []);
    assert.equal(configurationLabel("gn"), "all-GN");
  });

  test("final and best epoch are told apart (best: highest accuracy, lowest loss)", () => {
    const line = pointsByTrial(POINTS, "val_accuracy").get(15);
    assert.deepEqual(finalAndBest(line), { final: { epoch: 3, value: 0.64 }, best: { epoch: 2, value: 0.65 } });
    const loss = pointsByTrial(POINTS, "val_loss").get(13);
    assert.deepEqual(finalAndBest(loss, false).best, { epoch: 2, value: 1.5 });
    assert.deepEqual(finalAndBest([]), { final: null, best: null });
    assert.deepEqual(finalAndBest(pointsByTrial(POINTS, "val_accuracy").get(16)).final,
      { epoch: 3, value: 0.8 });
  });
});

describe("lineChartSvg", () => {
  const lines = searchSeries(TRIALS, POINTS, "val_accuracy")
    .map((l, i) => ({ ...l, color: ["#000000", "#ff0000"][i] }));

  test("one polyline per line with points; fills its card (viewBox, width 100%)", () => {
    const svg = lineChartSvg(lines, { testid: "t", title: "acc", yLabel: "acc", domain: [0, 1], percent: true });
    assert.equal((svg.match(/<polyline/g) || []).length, 2);
    assert.match(svg, /width="100%"/);
    assert.match(svg, /viewBox="0 0 \d+ \d+"/);
    assert.doesNotMatch(svg, /height="\d/); // the height follows the width
    assert.match(svg, /data-series="trial-13"[\s\S]*?data-points="2"/);
    assert.match(svg, />100%</);
    const wide = lineChartSvg(lines, { testid: "t", title: "", yLabel: "", width: 610 });
    assert.match(wide, /viewBox="0 0 610 250"/); // the box's pixel width: text keeps its size
  });

  test("every epoch is a tick for a short run; integer ticks only for a long one", () => {
    const svg = lineChartSvg(lines, { testid: "t", title: "", yLabel: "" });
    assert.match(svg, /data-x-ticks="1,2,3"/);
    const long = [{ key: "a", label: "a", color: "#000000", points: Array.from({ length: 37 }, (_, i) => ({ epoch: i + 1, value: i })) }];
    const ticks = lineChartSvg(long, { testid: "t", title: "", yLabel: "" }).match(/data-x-ticks="([^"]*)"/)[1];
    assert.equal(ticks, "5,10,15,20,25,30,35");
  });

  test("thin lines (seeds) are drawn under thick ones (their mean)", () => {
    const svg = lineChartSvg([
      { key: "mean", label: "mean", color: "#000000", points: [{ epoch: 1, value: 1 }, { epoch: 2, value: 2 }] },
      { key: "seed", label: "seed", color: "#000000", thin: true, points: [{ epoch: 1, value: 1 }, { epoch: 2, value: 3 }] },
    ], { testid: "t", title: "", yLabel: "" });
    assert.ok(svg.indexOf('data-series="seed"') < svg.indexOf('data-series="mean"'));
    assert.match(svg, /class="line thin"/);
  });

  test("no points: says so", () => {
    const svg = lineChartSvg([{ key: "a", label: "a", color: "#000000", points: [] }], { testid: "t", title: "x", yLabel: "" });
    assert.match(svg, /data-lines="0"/);
    assert.match(svg, /No epochs recorded yet/);
  });
});
