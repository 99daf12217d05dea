// The ratio history of the job page: how a layer's history grows and stays bounded
// (job-data.js), how the evolution chart thins it to pixel columns and finds the step under
// the pointer (charts.js), and the other data rules of the page.

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { decimatedLine, nearestIndex } from "../../../api/ui/static/charts.js";
import {
  defaultTrial, extendHistory, halvePoints, lastEventId, orderedLayers, ratiosNews, stepInfo,
  trialConfig, trialLr,
} from "../../../api/ui/static/job-data.js";

const point = (step, bn = 0.5) => ({ step, mean: { bn }, var: { bn: 1 - bn } });
const steps = (points) => points.map((p) => p.step);
const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

describe("extendHistory / halvePoints", () => {
  test("halving keeps every other point and always the newest", () => {
    assert.deepEqual(steps(halvePoints(range(1, 7).map(point))), [1, 3, 5, 7]);
    assert.deepEqual(steps(halvePoints(range(1, 6).map(point))), [1, 3, 5, 6]);
    assert.deepEqual(steps(halvePoints([point(1)])), [1]);
    assert.deepEqual(halvePoints([]), []);
  });

  test("the first read sets the history and its downsampled flag", () => {
    const held = { points: [], lastStep: null };
    extendHistory(held, { points: range(0, 4).map(point), last_step: 4, downsampled: true },
      null, 100);
    assert.deepEqual(steps(held.points), [0, 1, 2, 3, 4]);
    assert.equal(held.lastStep, 4);
    assert.equal(held.downsampled, true);
  });

  test("a later read appends only steps after the one asked after, keeping the flag", () => {
    const held = { points: range(0, 4).map(point), lastStep: 4, downsampled: false };
    const answer = { points: range(3, 8).map(point), last_step: 8, downsampled: true };
    const same = extendHistory(held, answer, 4, 100);
    assert.equal(same, held, "in place");
    assert.deepEqual(steps(held.points), range(0, 8));
    assert.equal(held.lastStep, 8);
    assert.equal(held.downsampled, false, "only the first read's flag counts");
  });

  test("past 1.5 x maxPoints the history is halved and marked downsampled", () => {
    const held = { points: range(1, 15).map(point), lastStep: 15, downsampled: false };
    extendHistory(held, { points: [point(16)], last_step: 16 }, 15, 10); // 16 > 15: halve
    assert.deepEqual(steps(held.points), [1, 3, 5, 7, 9, 11, 13, 15, 16]);
    assert.equal(held.downsampled, true);
    assert.equal(held.lastStep, 16);

    const atLimit = { points: range(1, 14).map(point), lastStep: 14, downsampled: false };
    extendHistory(atLimit, { points: [point(15)], last_step: 15 }, 14, 10); // 15: not more
    assert.equal(atLimit.points.length, 15);
    assert.equal(atLimit.downsampled, false);
  });

  test("a long live job stays bounded and keeps its newest step", () => {
    const held = { points: [], lastStep: null };
    extendHistory(held, { points: [point(0)], last_step: 0, downsampled: false }, null, 1000);
    for (let step = 1; step <= 20_000; step += 1) {
      extendHistory(held, { points: [point(step)], last_step: step }, held.lastStep, 1000);
      assert.ok(held.points.length <= 1500);
    }
    assert.equal(held.points.at(-1).step, 20_000);
    assert.equal(held.points[0].step, 0);
    const s = steps(held.points);
    assert.deepEqual(s, [...s].sort((a, b) => a - b), "still ascending");
    assert.equal(held.downsampled, true);
  });
});

describe("decimatedLine (the evolution chart's per-pixel-column thinning)", () => {
  const identity = (v) => v;

  test("one column: first, lowest, highest and last value, each once", () => {
    const points = [0.5, 0.1, 0.9, 0.3].map((bn, i) => ({ step: i / 10, mean: { bn } }));
    assert.deepEqual(decimatedLine(points, "mean", "bn", (s) => 40 + s, identity),
      ["40,0.5", "40,0.1", "40,0.9", "40,0.3"]);
  });

  test("a flat column is one point; a column's x is its first point's x", () => {
    const points = [
      { step: 0, mean: { bn: 0.2 } }, { step: 0.5, mean: { bn: 0.2 } },
      { step: 1, mean: { bn: 0.7 } }, { step: 1.4, mean: { bn: 0.2 } },
      { step: 1.9, mean: { bn: 0.2 } }, { step: 3, mean: { bn: 0.4 } },
    ];
    assert.deepEqual(decimatedLine(points, "mean", "bn", (s) => 10 + s, identity),
      // column 10: flat; column 11: first 0.7, lowest 0.2, highest 0.7, last 0.2 (the vertical
      // stroke covers the column's range, then leaves from its last value); column 13: one point
      ["10,0.2", "11,0.7", "11,0.2", "11,0.7", "11,0.2", "13,0.4"]);
  });

  test("points without this normalizer are skipped; coordinates round to 0.1", () => {
    const points = [
      { step: 0, var: { in: 0.123 } }, { step: 1, var: { bn: 0.5 } },
      { step: 2, var: { in: null } }, { step: 3, var: { in: 0.456 } }, { step: 4 },
    ];
    assert.deepEqual(decimatedLine(points, "var", "in", (s) => s * 2.04, (v) => v * 100),
      ["0,12.3", "6.1,45.6"]);
    assert.deepEqual(decimatedLine(points, "mean", "in", (s) => s, identity), []);
  });

  test("20,000 steps over 700 px become at most four points per column", () => {
    const points = range(0, 19_999).map((s) => ({ step: s, mean: { gn: (Math.sin(s) + 1) / 2 } }));
    const coords = decimatedLine(points, "mean", "gn", (s) => 40 + (s / 19_999) * 700,
      (v) => 22 + 130 - v * 130);
    const columns = new Map();
    for (const c of coords) {
      const x = Math.floor(Number(c.split(",")[0]));
      columns.set(x, (columns.get(x) ?? 0) + 1);
    }
    assert.ok(coords.length <= 4 * 701, `${coords.length} points`);
    assert.ok([...columns.values()].every((n) => n <= 4));
    assert.equal(columns.size, 701);
    const ys = coords.map((c) => Number(c.split(",")[1]));
    assert.equal(Math.min(...ys), 22, "the extremes survive");
    assert.equal(Math.max(...ys), 152);
  });
});

describe("nearestIndex (the hover guide's step)", () => {
  const points = [0, 10, 20, 40].map((step) => ({ step }));
  for (const [target, expected] of [
    [-5, 0], [0, 0], [4.9, 0], [5, 1], [14, 1], [16, 2], [30, 3], [29.9, 2], [40, 3], [99, 3],
  ]) {
    test(`step ${target} -> point ${expected}`, () => {
      assert.equal(nearestIndex(points, target), expected);
    });
  }
  test("a single point", () => assert.equal(nearestIndex([{ step: 7 }], 1000), 0));
});

describe("the job page's other data rules", () => {
  test("trialConfig reads Ray's nested config, else the flat one", () => {
    assert.deepEqual(
      trialConfig({ config: { trial: { seed: 1, batch_size: 32, lr: 0.1 }, seed: 9, lr: 5 } }),
      { seed: 1, batch: 32, lr: 0.1 });
    assert.deepEqual(trialConfig({ config: { seed: 2, batch_size: 8 } }),
      { seed: 2, batch: 8, lr: undefined });
    assert.deepEqual(trialConfig({}), { seed: undefined, batch: undefined, lr: undefined });
  });

  test("trialLr: the base lr of the config and the API's effective lr, else the base", () => {
    const config = { trial: { batch_size: 8, lr: 0.1, effective_lr: 0.025 } };
    assert.deepEqual(trialLr({ config, effective_lr: 0.025 }), { base: 0.1, effective: 0.025 });
    assert.deepEqual(trialLr({ config: { trial: { lr: 0.1 } }, effective_lr: null }),
      { base: 0.1, effective: 0.1 });
    assert.deepEqual(trialLr({ config: {} }), { base: undefined, effective: undefined });
  });

  test("defaultTrial: the one at the target batch size, else the first", () => {
    const search = [8, 32, 32].map((b, id) => ({ id, config: { trial: { batch_size: b } } }));
    assert.equal(defaultTrial(search, 32).id, 1);
    assert.equal(defaultTrial(search, 64).id, 0);
    assert.equal(defaultTrial(search, null).id, 0);
    assert.equal(defaultTrial([], 32), undefined);
  });

  test("lastEventId: the highest numeric id, or null", () => {
    assert.equal(lastEventId(new Set(["3", "12", "7"])), 12);
    assert.equal(lastEventId(new Set(["x", "5"])), 5);
    assert.equal(lastEventId(new Set()), null);
    assert.equal(lastEventId(new Set(["x"])), null);
  });

  test("orderedLayers sorts by network position, not by name or arrival", () => {
    const layers = new Map([["c", { layer: "c", layer_index: 2 }], ["a", { layer: "a",
      layer_index: 10 }], ["b", { layer: "b", layer_index: 0 }]]);
    assert.deepEqual(orderedLayers(layers).map((p) => p.layer), ["b", "c", "a"]);
  });

  test("stepInfo counts the layers whose both parts are fixed and the newest epoch", () => {
    const layers = [
      { epoch: 2, mean_fixed: true, var_fixed: true },
      { epoch: 3, mean_fixed: true, var_fixed: false },
      { epoch: 1, mean_fixed: false, var_fixed: true },
    ];
    assert.equal(stepInfo(layers, 120), "step 120 · epoch 3 · 3 layers · 1 fixed");
  });

  describe("ratiosNews", () => {
    const trials = [{ id: 1 }, { id: 2 }];
    const view = { trials, trialId: 1, newestStep: 10, evolutionLayer: "conv1",
      evolutionStep: 8 };

    test("news of the selected trial past both held steps: load both, trials throttled", () => {
      assert.deepEqual(ratiosNews({ 1: 11, 2: 5 }, view),
        { newest: true, evolution: true, trialsNow: false });
    });

    test("only the evolution is behind", () => {
      assert.deepEqual(ratiosNews({ 1: 10 }, view),
        { newest: false, evolution: true, trialsNow: false });
    });

    test("nothing new for the selected trial", () => {
      assert.deepEqual(ratiosNews({ 1: 8, 2: 99 }, view),
        { newest: false, evolution: false, trialsNow: false });
    });

    test("no layer selected: no evolution; nothing held yet: load", () => {
      assert.deepEqual(ratiosNews({ 1: 0 }, { ...view, newestStep: null, evolutionLayer: null }),
        { newest: true, evolution: false, trialsNow: false });
      assert.deepEqual(ratiosNews({ 1: 0 }, { ...view, evolutionStep: null }),
        { newest: false, evolution: true, trialsNow: false });
    });

    test("a trial the table does not list, or no trial selected: read the trials now", () => {
      assert.deepEqual(ratiosNews({ 3: 1 }, view),
        { newest: false, evolution: false, trialsNow: true });
      assert.equal(ratiosNews({ 1: 1 }, { ...view, trialId: null }).trialsNow, true);
      assert.equal(ratiosNews({}, { ...view, trialId: null }).trialsNow, true);
    });
  });
});
