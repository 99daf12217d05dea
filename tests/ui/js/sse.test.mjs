// sse.js: the text/event-stream parser (parseEvents) and the reconnecting reader
// (followEvents) over a scripted fetch.

import assert from "node:assert/strict";
import { afterEach, describe, test } from "node:test";

import { ApiError } from "../../../api/ui/static/api.js";
import { followEvents, parseEvents } from "../../../api/ui/static/sse.js";
import { browserEnv, streamResponse, until } from "./browser-env.mjs";

/** Feed chunks the way followEvents does: append, parse, keep the rest. */
function feed(chunks) {
  const events = [];
  let buffer = "";
  for (const chunk of chunks) {
    const [complete, rest] = parseEvents(buffer + chunk);
    events.push(...complete);
    buffer = rest;
  }
  return { events, rest: buffer };
}

const STREAM = [
  ": connected",
  "",
  "event: status",
  "id: 7",
  'data: {"id": 7, "to_status": "running"}',
  "",
  "event: progress",
  "data: {",
  'data:  "progress": 0.5',
  "data: }",
  "",
  "retry: 3000",
  "",
  "event: end",
  'data: {"status": "succeeded"}',
  "",
  "",
];
const EXPECTED = [
  { event: "status", id: "7", data: '{"id": 7, "to_status": "running"}' },
  { event: "progress", id: null, data: '{\n "progress": 0.5\n}' },
  { event: "end", id: null, data: '{"status": "succeeded"}' },
];

describe("parseEvents", () => {
  test("a complete buffer: fields, multi-line data, comments and retry-only blocks", () => {
    const [events, rest] = parseEvents(STREAM.join("\n"));
    assert.deepEqual(events, EXPECTED);
    assert.equal(rest, "");
  });

  test("an event without its blank line stays in the rest", () => {
    const [events, rest] = parseEvents("event: status\ndata: {}\n");
    assert.deepEqual(events, []);
    assert.equal(rest, "event: status\ndata: {}\n");
    const [later] = parseEvents(`${rest}\n`);
    assert.deepEqual(later, [{ event: "status", id: null, data: "{}" }]);
  });

  for (const [name, eol] of [["LF", "\n"], ["CRLF", "\r\n"], ["CR", "\r"]]) {
    test(`${name} line endings, split at every position (mid-line, mid-field, mid-newline)`, () => {
      const text = STREAM.join(eol);
      for (let cut = 0; cut <= text.length; cut += 1) {
        const { events, rest } = feed([text.slice(0, cut), text.slice(cut)]);
        assert.deepEqual(events, EXPECTED, `cut at ${cut}: ${JSON.stringify(text.slice(0, cut))}`);
        assert.equal(rest, "");
      }
      assert.deepEqual(feed([...text]).events, EXPECTED, "one character per chunk");
    });
  }

  test("field syntax: one leading space stripped, colons in values, a bare field name", () => {
    const [events] = parseEvents(
      "data:no-space\ndata:  two spaces\ndata: a: b: c\ndata\nevent:named\n\n");
    assert.deepEqual(events, [{ event: "named", id: null, data: "no-space\n two spaces\na: b: c\n" }]);
  });

  test("comment-only, retry-only and unknown-field blocks dispatch nothing", () => {
    const [events, rest] = parseEvents(": ping\n\n:\n\nretry: 10\n\nfoo: bar\n\n");
    assert.deepEqual(events, []);
    assert.equal(rest, "");
  });

  test("retry and unknown fields next to data leave the data alone", () => {
    const [events] = parseEvents("retry: 5000\ndata: x\nfoo: y\n: note\ndata: z\n\n");
    assert.deepEqual(events, [{ event: "message", id: null, data: "x\nz" }]);
  });

  test("an id alone is still reported (it moves Last-Event-ID); the last id of a block wins", () => {
    const [events] = parseEvents("id: 3\n\nid: 4\nid: 5\ndata: d\n\nid\ndata: e\n\n");
    assert.deepEqual(events, [
      { event: "message", id: "3", data: "" },
      { event: "message", id: "5", data: "d" },
      { event: "message", id: "", data: "e" },
    ]);
  });

  test("events in one buffer come out in order; an unterminated tail is kept", () => {
    const [events, rest] = parseEvents("data: 1\n\ndata: 2\n\ndata: 3");
    assert.deepEqual(events.map((e) => e.data), ["1", "2"]);
    assert.equal(rest, "data: 3");
  });
});

// A broken reader could retry forever: each test has a time limit and stops its stream.
describe("followEvents", { timeout: 10_000 }, () => {
  const streams = [];
  afterEach(() => { while (streams.length) streams.pop().stop(); });

  /** followEvents with recorded states, events and errors; ``seen.closed()`` waits for the end. */
  function follow(url, options = {}) {
    const seen = { states: [], events: [], errors: [] };
    const handle = followEvents(url, {
      onEvent: (name, data, id) => seen.events.push([name, data, id]),
      onState: (state) => seen.states.push(state),
      onError: (error) => seen.errors.push(error),
      ...options,
    });
    streams.push(handle);
    seen.closed = () => until(() => seen.states.includes("closed"), "the closed state");
    return { handle, seen };
  }

  test("JSON data parsed, text kept; the token is sent; it ends at the `end` event", async (t) => {
    const { sessionStorage } = browserEnv();
    sessionStorage.setItem("normsearch.token", "tok-1");
    const calls = [];
    t.mock.method(globalThis, "fetch", async (url, init) => {
      calls.push([url, init]);
      return streamResponse([
        "event: status\nid: 4\ndata: {\"to_status\"",
        ": \"running\"}\n\ndata: not json\n\n",
        "event: end\ndata: {\"status\": \"succeeded\"}\n\nevent: after-end\ndata: 1\n\n",
      ]);
    });
    const { seen } = follow("/api/v1/jobs/x/events");
    await seen.closed();
    assert.deepEqual(seen.events, [
      ["status", { to_status: "running" }, "4"],
      ["message", "not json", null],
      ["end", { status: "succeeded" }, null],
    ]);
    assert.deepEqual(seen.states, ["connecting", "open", "closed"]);
    assert.equal(calls.length, 1);
    const [url, init] = calls[0];
    assert.equal(url, "/api/v1/jobs/x/events");
    assert.equal(init.headers.Authorization, "Bearer tok-1");
    assert.equal(init.headers.Accept, "text/event-stream");
    assert.equal(init.headers["Last-Event-ID"], undefined);
  });

  test("a character split across chunks is decoded whole", async (t) => {
    browserEnv();
    const bytes = new TextEncoder().encode('data: {"message": "é"}\n\nevent: end\ndata: {}\n\n');
    const at = bytes.indexOf(0xc3) + 1; // between the two bytes of "é"
    t.mock.method(globalThis, "fetch", async () =>
      streamResponse([bytes.slice(0, at), bytes.slice(at)]));
    const { seen } = follow("/events");
    await seen.closed();
    assert.deepEqual(seen.events[0], ["message", { message: "é" }, null]);
  });

  test("a dropped stream reconnects with Last-Event-ID, backing off 1, 2, 4 s, reset on open",
    async (t) => {
    browserEnv();
    t.mock.timers.enable({ apis: ["setTimeout"] });
    const headers = [];
    const answers = [
      () => streamResponse(["event: status\nid: 9\ndata: {}\n\n: half an event\ndata: lost"]),
      () => new Response('{"message": "busy"}', { status: 503 }),
      () => { throw new TypeError("network down"); },
      () => streamResponse(["event: status\nid: 10\ndata: {}\n\n"]),
      () => streamResponse(["event: end\ndata: {}\n\n"]),
    ];
    t.mock.method(globalThis, "fetch", async (url, init) => {
      headers.push(init.headers["Last-Event-ID"]);
      return answers[headers.length - 1]();
    });
    const { seen } = follow("/events", { lastEventId: 3 });
    const retries = (n) => until(() => seen.states.filter((s) => s === "retrying").length === n,
      `retry ${n}`);
    await retries(1);
    t.mock.timers.tick(999);
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(headers.length, 1, "no reconnect before the delay");
    t.mock.timers.tick(1);
    await retries(2); // the 503: 2 s
    t.mock.timers.tick(1999);
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(headers.length, 2);
    t.mock.timers.tick(1);
    await retries(3); // the network error: 4 s
    t.mock.timers.tick(3999);
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(headers.length, 3);
    t.mock.timers.tick(1);
    await retries(4); // opened, then dropped again: back to 1 s
    t.mock.timers.tick(1000);
    await seen.closed();
    assert.deepEqual(headers, ["3", "9", "9", "9", "10"]);
    assert.deepEqual(seen.events.map(([name, , id]) => [name, id]),
      [["status", "9"], ["status", "10"], ["end", null]]);
    assert.deepEqual(seen.errors, []);
    assert.deepEqual(seen.states, ["connecting", "open", "retrying", "connecting", "retrying",
      "connecting", "retrying", "connecting", "open", "retrying", "connecting", "open", "closed"]);
  });

  test("a 4xx answer is reported once and not retried", async (t) => {
    browserEnv();
    const fetch = t.mock.method(globalThis, "fetch", async () =>
      new Response('{"code": "not_found", "message": "No such job."}', { status: 404 }));
    const { seen } = follow("/events");
    await seen.closed();
    assert.equal(fetch.mock.callCount(), 1);
    assert.equal(seen.errors.length, 1);
    assert.ok(seen.errors[0] instanceof ApiError);
    assert.equal(seen.errors[0].status, 404);
    assert.equal(seen.errors[0].message, "No such job.");
    assert.deepEqual(seen.errors[0].body, { code: "not_found", message: "No such job." });
    assert.deepEqual(seen.states, ["connecting", "closed"]);
  });

  test("a 401 ends the session: token dropped, the login page with a message", async (t) => {
    const { sessionStorage, location } = browserEnv("#/jobs/abc");
    sessionStorage.setItem("normsearch.token", "old");
    t.mock.method(globalThis, "fetch", async () =>
      new Response("not json", { status: 401, statusText: "Unauthorized" }));
    const { seen } = follow("/events");
    await seen.closed();
    assert.deepEqual(seen.errors, [], "a 401 is not an onError");
    assert.equal(sessionStorage.getItem("normsearch.token"), null);
    assert.equal(location.hash, "#/login");
    assert.equal(sessionStorage.getItem("normsearch.next"), "#/jobs/abc");
    assert.match(sessionStorage.getItem("normsearch.flash"), /session ended \(401 Unauthorized\)/);
  });

  test("stop() aborts the open stream and nothing reconnects", async (t) => {
    browserEnv();
    t.mock.timers.enable({ apis: ["setTimeout"] });
    let signal = null;
    const fetch = t.mock.method(globalThis, "fetch", async (url, init) => {
      signal = init.signal;
      const body = new ReadableStream({
        start(controller) {
          controller.enqueue(new TextEncoder().encode("data: 1\n\n"));
          signal.addEventListener("abort", () => controller.error(signal.reason));
        },
      });
      return new Response(body, { status: 200 });
    });
    const { handle, seen } = follow("/events");
    await until(() => seen.events.length === 1, "the first event");
    handle.stop();
    await seen.closed();
    t.mock.timers.tick(60_000);
    await new Promise((resolve) => setImmediate(resolve));
    assert.ok(signal.aborted);
    assert.equal(fetch.mock.callCount(), 1);
    assert.deepEqual(seen.states, ["connecting", "open", "closed"]);
  });
});
