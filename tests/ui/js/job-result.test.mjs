// The jobs list's result column (job-result.js).

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { resultCell } from "../../../api/ui/static/job-result.js";

describe("resultCell", () => {
  test("a succeeded job shows the worker's line, final epoch and spread included", () => {
    const text = "plan 0.981 ± 0.004 (4 seeds, final epoch)";
    assert.deepEqual(resultCell({ status: "succeeded", result: { text } }), { text, kind: "result", title: text });
  });

  test("a failed job shows its reason, long ones cut with the whole in the title", () => {
    assert.equal(resultCell({ status: "failed", error: "ValueError: no trial" }).text, "failed: ValueError: no trial");
    const long = "x".repeat(200);
    const cell = resultCell({ status: "failed", error: long });
    assert.equal(cell.kind, "failure");
    assert.ok(cell.text.length < 100 && cell.text.endsWith("…") && cell.title === long);
  });

  test("'-' for running, cancelled and pre-result jobs", () => {
    for (const job of [{ status: "running" }, { status: "cancelled" }, { status: "succeeded", result: null }]) {
      assert.deepEqual(resultCell(job), { text: "-", kind: "none", title: "" });
    }
  });
});
