// jobs-query.js: the jobs list's filter, sort and page in the hash, and the pager.

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import {
  DEFAULT_SORT, jobsHash, lastPageOffset, pageRange, readJobsQuery,
} from "../../../api/ui/static/jobs-query.js";

const allowed = { statuses: ["queued", "running", "failed"], sorts: [DEFAULT_SORT, "status"] };

describe("readJobsQuery", () => {
  test("a full query", () => {
    assert.deepEqual(readJobsQuery("#/jobs?status=running&sort=status&offset=40", allowed),
      { status: "running", sort: "status", offset: 40 });
  });

  test("no query: all statuses, newest first, the first page", () => {
    for (const hash of ["#/jobs", "#/jobs?", ""]) {
      assert.deepEqual(readJobsQuery(hash, allowed), { status: "", sort: DEFAULT_SORT, offset: 0 });
    }
  });

  test("values it does not know fall back to the defaults", () => {
    assert.deepEqual(readJobsQuery("#/jobs?status=RUNNING&sort=drop%20table&offset=-20", allowed),
      { status: "", sort: DEFAULT_SORT, offset: 0 });
    for (const [offset, expected] of [["abc", 0], ["12.9", 12], ["7x", 7], ["", 0], ["1e3", 1]]) {
      assert.equal(readJobsQuery(`#/jobs?offset=${offset}`, allowed).offset, expected, offset);
    }
  });

  test("the allowed lists come from the caller", () => {
    assert.equal(readJobsQuery("#/jobs?status=archived", { statuses: ["archived"], sorts: [] })
      .status, "archived");
  });
});

describe("jobsHash", () => {
  test("only what differs from the defaults", () => {
    assert.equal(jobsHash({ status: "", sort: DEFAULT_SORT, offset: 0 }), "#/jobs");
    assert.equal(jobsHash({ status: "failed", sort: DEFAULT_SORT, offset: 0 }),
      "#/jobs?status=failed");
    assert.equal(jobsHash({ status: "", sort: "-progress", offset: 20 }),
      "#/jobs?sort=-progress&offset=20");
  });

  test("round-trips through readJobsQuery", () => {
    const state = { status: "queued", sort: "status", offset: 60 };
    assert.deepEqual(readJobsQuery(jobsHash(state), allowed), state);
  });
});

describe("the pager", () => {
  test("lastPageOffset: the start of the page holding the last job", () => {
    assert.equal(lastPageOffset(1, 20), 0);
    assert.equal(lastPageOffset(20, 20), 0);
    assert.equal(lastPageOffset(21, 20), 20);
    assert.equal(lastPageOffset(95, 20), 80);
    assert.equal(lastPageOffset(0, 20), 0);
  });

  test("pageRange: 1-based, clipped to the total", () => {
    assert.equal(pageRange(0, 20, 95), "1–20 of 95");
    assert.equal(pageRange(80, 15, 95), "81–95 of 95");
    assert.equal(pageRange(0, 0, 0), "0–0 of 0");
  });
});
