// Axis ticks (ticks.js): evenly spaced at nice steps, every tick labelled once, integers on
// integer axes, the domain covering the data.

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { integerTicks, niceDomain, tickLabel } from "../../../api/ui/static/ticks.js";

const evenlySpaced = (ticks) => ticks.slice(1).every((t, i) => Math.abs(t - ticks[i] - (ticks[1] - ticks[0])) < 1e-9);

describe("integerTicks", () => {
  test("every epoch of a short run is a tick", () => {
    assert.deepEqual(integerTicks(1, 2).ticks, [1, 2]);
    assert.deepEqual(integerTicks(1, 6).ticks, [1, 2, 3, 4, 5, 6]);
    assert.deepEqual(integerTicks(3, 3).ticks, [3]);
  });

  test("longer runs: multiples of 2, 5, 10, ... never more than asked, never uneven", () => {
    assert.deepEqual(integerTicks(1, 10).ticks, [2, 4, 6, 8, 10]);
    assert.deepEqual(integerTicks(1, 37).ticks, [5, 10, 15, 20, 25, 30, 35]);
    assert.deepEqual(integerTicks(0, 500, 6).ticks, [0, 100, 200, 300, 400, 500]);
    for (let hi = 2; hi <= 400; hi += 1) {
      for (const max of [4, 6, 8]) {
        const { ticks, step } = integerTicks(1, hi, max);
        assert.ok(ticks.length >= 1 && ticks.length <= max, `1..${hi} max ${max}: ${ticks}`);
        assert.ok(ticks.every(Number.isInteger) && ticks.every((t) => t >= 1 && t <= hi));
        assert.ok(evenlySpaced(ticks) && ticks.every((t) => t % step === 0), `${ticks}`);
        assert.equal(new Set(ticks).size, ticks.length);
      }
    }
  });

  test("the labels of the old evolution axis (rounded fifths) no longer repeat or skip", () => {
    const ticks = integerTicks(1, 4, 6).ticks;
    assert.deepEqual(ticks, [1, 2, 3, 4]); // rounded fifths gave 1, 2, 2, 3, 3, 4
  });

  test("no ticks for an empty or non-finite range", () => {
    assert.deepEqual(integerTicks(4.2, 4.8).ticks, []);
    assert.deepEqual(integerTicks(4.5, 5).ticks, [5]);
    assert.deepEqual(integerTicks(NaN, 3).ticks, []);
  });
});

describe("niceDomain", () => {
  test("covers the data with nice, evenly spaced and distinct labels", () => {
    const d = niceDomain(0.23, 2.31);
    assert.deepEqual(d.ticks, [0, 0.5, 1, 1.5, 2, 2.5]);
    assert.ok(d.lo <= 0.23 && d.hi >= 2.31);
    for (const [lo, hi] of [[0.0012, 0.0049], [0.9, 0.98], [3, 17000], [-2, 3], [0.31, 0.32]]) {
      const dom = niceDomain(lo, hi);
      assert.ok(dom.lo <= lo && dom.hi >= hi, `${lo}..${hi}: ${dom.ticks}`);
      assert.ok(dom.ticks.length >= 2 && dom.ticks.length <= 6, `${dom.ticks}`);
      assert.ok(evenlySpaced(dom.ticks), `${dom.ticks}`);
      const labels = dom.ticks.map((t) => tickLabel(t, dom.decimals));
      assert.equal(new Set(labels).size, labels.length, `${labels}`);
    }
  });

  test("quarter steps get their extra decimal; a flat series still gets a range", () => {
    const d = niceDomain(0, 1, 5);
    assert.deepEqual(d.ticks, [0, 0.25, 0.5, 0.75, 1]);
    assert.deepEqual(d.ticks.map((t) => tickLabel(t, d.decimals)), ["0.00", "0.25", "0.50", "0.75", "1.00"]);
    const flat = niceDomain(0.5, 0.5);
    assert.ok(flat.lo < 0.5 && flat.hi > 0.5);
  });
});
