// util.js: escaping, formatting, the progress bar's clamping, and the timers (debounce,
// throttle, serial) on node's mock clock.

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import {
  artifactFileName, debounce, esc, fmtBytes, fmtDuration, fmtDate, fmtLr, fmtNum, fmtPct, progressHtml, randomKey, serial, statusBadge,
  throttle,
} from "../../../api/ui/static/util.js";

describe("escaping and formatting", () => {
  test("a duration is start to finish, or to now while running, in whole seconds", () => {
    const start = "2026-12-02T18:00:00Z";
    assert.equal(fmtDuration(start, "2026-12-02T18:01:51Z"), "1 min 51 s");
    assert.equal(fmtDuration(start, "2026-12-02T18:00:09.6Z"), "10 s");
    assert.equal(fmtDuration(start, "2026-12-02T20:05:00Z"), "2 h 05 min");
    assert.equal(fmtDuration(start, null, Date.parse("2026-12-02T18:00:30Z")), "30 s");
    assert.equal(fmtDuration(null, null), "");
  });

  test("an artifact kind's file name", () => {
    assert.equal(artifactFileName("report_json"), "report.json");
    assert.equal(artifactFileName("ratios_png"), "ratios.png");
    assert.equal(artifactFileName("search_checkpoint"), "search_checkpoint.zip");
  });

  test("esc escapes the five HTML specials, and null/undefined become empty", () => {
    assert.equal(esc(`<a href="x" title='y'>&amp;</a>`),
      "&lt;a href=&quot;x&quot; title=&#39;y&#39;&gt;&amp;amp;&lt;/a&gt;");
    assert.equal(esc(null), "");
    assert.equal(esc(undefined), "");
    assert.equal(esc(0), "0");
    assert.equal(esc(false), "false");
  });

  test("fmtLr: 4 significant digits, no trailing zeros; not a number -> a dash", () => {
    assert.equal(fmtLr(0.1), "0.1");
    assert.equal(fmtLr(0.00625), "0.00625");
    assert.equal(fmtLr(0.1 * Math.sqrt(2)), "0.1414");
    assert.equal(fmtLr(3.2), "3.2");
    assert.equal(fmtLr(null), "–");
    assert.equal(fmtLr(undefined), "–");
    assert.equal(fmtLr(NaN), "–");
  });

  test("fmtPct: a fraction as a percentage; not a number -> empty", () => {
    assert.equal(fmtPct(0.5), "50%");
    assert.equal(fmtPct(0.12345, 2), "12.35%");
    assert.equal(fmtPct("0.25"), "25%");
    assert.equal(fmtPct(undefined), "");
    assert.equal(fmtPct("abc"), "");
    assert.equal(fmtPct(Infinity), "");
  });

  test("fmtNum: fixed digits; null, undefined and non-numbers -> a dash", () => {
    assert.equal(fmtNum(1 / 3), "0.333");
    assert.equal(fmtNum(2, 1), "2.0");
    assert.equal(fmtNum(0), "0.000");
    assert.equal(fmtNum(null), "–");
    assert.equal(fmtNum(undefined), "–");
    assert.equal(fmtNum("x"), "–");
    assert.equal(fmtNum(NaN), "–");
  });

  test("fmtBytes: binary units, one decimal past bytes, GiB at most", () => {
    assert.equal(fmtBytes(0), "0 B");
    assert.equal(fmtBytes(1023), "1023 B");
    assert.equal(fmtBytes(1024), "1.0 KiB");
    assert.equal(fmtBytes(1536), "1.5 KiB");
    assert.equal(fmtBytes(5 * 1024 ** 2), "5.0 MiB");
    assert.equal(fmtBytes(3 * 1024 ** 4), "3072.0 GiB");
    assert.equal(fmtBytes(undefined), "0 B");
  });

  test("fmtDate: empty for nothing, the text itself when it is not a date", () => {
    assert.equal(fmtDate(null), "");
    assert.equal(fmtDate(""), "");
    assert.equal(fmtDate("not a date"), "not a date");
    const shown = fmtDate("2024-03-05T06:07:08Z");
    assert.match(shown, /2024/);
    assert.match(shown, /\d{2}:\d{2}:\d{2}/); // seconds shown
  });

  test("progressHtml clamps to [0, 1] and reports the percentage", () => {
    const bar = (v) => {
      const html = progressHtml(v);
      return [/aria-valuenow="(\d+)"/.exec(html)[1], /data-progress="([^"]+)"/.exec(html)[1],
        /class="progress-fill"[^>]*width="([^"]+)"/.exec(html)[1]];
    };
    assert.deepEqual(bar(0.426), ["43", "0.426", "42.60"]);
    assert.deepEqual(bar(-1), ["0", "0", "0.00"]);
    assert.deepEqual(bar(7), ["100", "1", "100.00"]);
    assert.deepEqual(bar("junk"), ["0", "0", "0.00"]);
    assert.match(progressHtml(0.5, "trial-progress"), /data-testid="trial-progress"/);
    assert.doesNotMatch(progressHtml(0.5), /style=/, "CSP: no inline style");
  });

  test("statusBadge escapes the status in its class and text", () => {
    assert.equal(statusBadge("running"),
      '<span class="badge status-running" data-testid="job-status">running</span>');
    assert.match(statusBadge('"><b>', "trial-status"), /status-&quot;&gt;&lt;b&gt;.*&quot;&gt;&lt;b&gt;/);
  });

  test("randomKey: 32 hex digits, different each call", () => {
    const keys = new Set(Array.from({ length: 50 }, randomKey));
    assert.equal(keys.size, 50);
    for (const key of keys) assert.match(key, /^[0-9a-f]{32}$/);
  });
});

describe("timers", () => {
  test("debounce: one call, with the last arguments, after a quiet period", (t) => {
    t.mock.timers.enable({ apis: ["setTimeout"] });
    const calls = [];
    const run = debounce((...args) => calls.push(args), 400);
    run(1);
    t.mock.timers.tick(300);
    run(2, "b");
    t.mock.timers.tick(399);
    assert.deepEqual(calls, []);
    t.mock.timers.tick(1);
    assert.deepEqual(calls, [[2, "b"]]);
    t.mock.timers.tick(1000);
    assert.equal(calls.length, 1);
  });

  test("debounce.cancel drops the pending call", (t) => {
    t.mock.timers.enable({ apis: ["setTimeout"] });
    let n = 0;
    const run = debounce(() => { n += 1; }, 100);
    run();
    run.cancel();
    t.mock.timers.tick(500);
    assert.equal(n, 0);
    run();
    t.mock.timers.tick(100);
    assert.equal(n, 1, "still usable after cancel");
  });

  test("throttle: the first call at once, the calls within the window folded into one", (t) => {
    t.mock.timers.enable({ apis: ["setTimeout", "Date"], now: 10_000 });
    const at = [];
    const run = throttle(() => at.push(Date.now()), 3000);
    run();
    assert.deepEqual(at, [10_000]);
    t.mock.timers.tick(1000);
    run();
    run();
    t.mock.timers.tick(500);
    run();
    assert.equal(at.length, 1, "nothing more inside the window");
    t.mock.timers.tick(1499);
    assert.equal(at.length, 1);
    t.mock.timers.tick(1);
    assert.deepEqual(at, [10_000, 13_000], "one trailing call when the window ends");
    t.mock.timers.tick(2999);
    run(); // within 3 s of the trailing call: waits for it
    assert.equal(at.length, 2);
    t.mock.timers.tick(1);
    assert.deepEqual(at, [10_000, 13_000, 16_000]);
    t.mock.timers.tick(10_000);
    run(); // long after: at once again
    assert.deepEqual(at, [10_000, 13_000, 16_000, 26_000]);
  });

  test("throttle.cancel drops the trailing call and lets a new one be scheduled", (t) => {
    t.mock.timers.enable({ apis: ["setTimeout", "Date"], now: 50_000 });
    let n = 0;
    const run = throttle(() => { n += 1; }, 1000);
    run();
    run();
    run.cancel();
    t.mock.timers.tick(5000);
    assert.equal(n, 1);
    run();
    assert.equal(n, 2);
    run();
    t.mock.timers.tick(1000);
    assert.equal(n, 3, "a trailing call after cancel is scheduled again");
  });

  test("serial: one run at a time; calls during a run fold into one more run", async () => {
    const releases = [];
    let runs = 0;
    const load = serial(async () => {
      runs += 1;
      await new Promise((resolve) => releases.push(resolve));
    }, (error) => { throw error; });
    const first = load();
    load();
    load();
    load();
    assert.equal(runs, 1);
    releases.shift()();
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(runs, 2, "the three calls during the run made one follow-up");
    releases.shift()();
    await first;
    assert.equal(runs, 2);
    const again = load(); // idle again: a call starts a run at once
    assert.equal(runs, 3);
    releases.shift()();
    await again;
    assert.equal(runs, 3);
  });

  test("serial: an error goes to onError and the loader runs again afterwards", async () => {
    const errors = [];
    let fail = true;
    let runs = 0;
    const load = serial(async () => {
      runs += 1;
      if (fail) throw new Error("boom");
    }, (error) => errors.push(error.message));
    await load();
    assert.deepEqual(errors, ["boom"]);
    fail = false;
    await load();
    assert.equal(runs, 2);
    assert.deepEqual(errors, ["boom"]);
  });
});
