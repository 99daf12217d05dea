// api.js: download file names from Content-Disposition, and request()'s mapping of answers to
// values and ApiErrors over a scripted fetch.

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import {
  ApiError, dispositionFilename, request, setNext, takeNext,
} from "../../../api/ui/static/api.js";
import { browserEnv } from "./browser-env.mjs";

describe("dispositionFilename", () => {
  for (const [header, expected] of [
    ['attachment; filename="plan.yaml"', "plan.yaml"],
    ["attachment; filename=plan.json", "plan.json"],
    ["attachment; filename=plan.json; size=10", "plan.json"],
    ["attachment; filename*=UTF-8''r%C3%A9sum%C3%A9.csv", "résumé.csv"],
    ["attachment; filename=\"fallback.csv\"; filename*=UTF-8''real%20name.csv", "real name.csv"],
    ["attachment; FILENAME=\"Upper.zip\"", "Upper.zip"],
    ["attachment; filename*=UTF-8''bad%E0%A4%A.csv; filename=\"plain.csv\"", "plain.csv"],
  ]) {
    test(header, () => assert.equal(dispositionFilename(header, "fallback"), expected));
  }
  test("no header or no filename: the fallback", () => {
    assert.equal(dispositionFilename(null, "job-plan.json"), "job-plan.json");
    assert.equal(dispositionFilename("", "x"), "x");
    assert.equal(dispositionFilename("inline", "x"), "x");
  });
});

describe("request", () => {
  test("the token, JSON body and API prefix; the parsed answer", async (t) => {
    const { sessionStorage } = browserEnv();
    sessionStorage.setItem("normsearch.token", "tok");
    const fetch = t.mock.method(globalThis, "fetch", async () =>
      Response.json({ id: "abc" }, { status: 201 }));
    const job = await request("jobs", { method: "POST", json: { a: 1 }, headers: { X: "y" } });
    assert.deepEqual(job, { id: "abc" });
    const [url, init] = fetch.mock.calls[0].arguments;
    assert.equal(url, "/api/v1/jobs");
    assert.equal(init.method, "POST");
    assert.equal(init.body, '{"a":1}');
    assert.deepEqual(init.headers, { Accept: "application/json", X: "y",
      Authorization: "Bearer tok", "Content-Type": "application/json" });
  });

  test("204 -> null; raw -> the Response; an allowed status is not an error", async (t) => {
    browserEnv();
    const answers = [new Response(null, { status: 204 }), new Response("x", { status: 200 }),
      Response.json({ errors: [] }, { status: 422 })];
    t.mock.method(globalThis, "fetch", async () => answers.shift());
    assert.equal(await request("/api/v1/jobs/x", { method: "DELETE" }), null);
    assert.equal(await (await request("/plain", { raw: true })).text(), "x");
    assert.deepEqual(await request("/v", { allow: [422] }), { errors: [] });
  });

  test("an error body becomes an ApiError with its message and body", async (t) => {
    browserEnv();
    t.mock.method(globalThis, "fetch", async () =>
      Response.json({ code: "conflict", message: "The job is running." }, { status: 409 }));
    await assert.rejects(request("/api/v1/jobs/x/retry", { method: "POST" }), (error) => {
      assert.ok(error instanceof ApiError);
      assert.equal(error.status, 409);
      assert.equal(error.message, "The job is running.");
      assert.equal(error.body.code, "conflict");
      return true;
    });
  });

  test("a body that is not JSON: the status line", async (t) => {
    browserEnv();
    t.mock.method(globalThis, "fetch", async () =>
      new Response("<html>", { status: 502, statusText: "Bad Gateway" }));
    await assert.rejects(request("/x"), { name: "ApiError", status: 502, message: "502 Bad Gateway",
      body: null });
  });

  test("a network failure is ApiError 0; an abort stays an AbortError", async (t) => {
    browserEnv();
    const fetch = t.mock.method(globalThis, "fetch", async () => {
      throw new TypeError("fetch failed");
    });
    await assert.rejects(request("/x"), { status: 0,
      message: "The API could not be reached (fetch failed)." });
    fetch.mock.mockImplementation(async () => { throw new DOMException("aborted", "AbortError"); });
    await assert.rejects(request("/x"), { name: "AbortError" });
  });

  test("a 401 with the session's token ends the session; with another token it does not",
    async (t) => {
      const { sessionStorage, location } = browserEnv("#/new");
      sessionStorage.setItem("normsearch.token", "mine");
      t.mock.method(globalThis, "fetch", async () =>
        Response.json({ message: "Unknown token." }, { status: 401 }));
      await assert.rejects(request("/api/v1/me", { token: "typed-in" }), { status: 401 });
      assert.equal(sessionStorage.getItem("normsearch.token"), "mine", "the login page's check");
      assert.equal(location.hash, "#/new");
      await assert.rejects(request("/api/v1/me"), { status: 401 });
      assert.equal(sessionStorage.getItem("normsearch.token"), null);
      assert.equal(location.hash, "#/login");
      assert.equal(sessionStorage.getItem("normsearch.flash"),
        "Your session ended (Unknown token.). Log in again.");
      assert.equal(takeNext(), "#/new");
      assert.equal(takeNext(), "#/jobs", "taken once");
    });

  test("setNext never remembers the login page", () => {
    browserEnv();
    setNext("#/login");
    assert.equal(takeNext(), "#/jobs");
    setNext("#/jobs/abc");
    assert.equal(takeNext(), "#/jobs/abc");
  });
});
