// Server-Sent Events over fetch(): EventSource cannot send an Authorization header, so the
// stream is read with a ReadableStream reader and parsed here (text/event-stream framing:
// "field: value" lines, events separated by a blank line, ":" comments ignored). If the stream
// drops before an `end` event, it reconnects with Last-Event-ID (backing off up to 15 s).

import { ApiError, getToken, sessionExpired } from "./api.js";

/** Split a text/event-stream buffer into complete events; returns [events, rest]. */
export function parseEvents(buffer) {
  const events = [];
  const blocks = buffer.split(/\r\n\r\n|\n\n|\r\r/);
  const rest = blocks.pop();
  for (const block of blocks) {
    const event = { event: "message", data: [], id: null };
    for (const line of block.split(/\r\n|\n|\r/)) {
      if (!line || line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "event") event.event = value;
      else if (field === "data") event.data.push(value);
      else if (field === "id") event.id = value;
    }
    if (event.data.length || event.id !== null) {
      events.push({ event: event.event, id: event.id, data: event.data.join("\n") });
    }
  }
  return [events, rest];
}

/**
 * Follow ``url`` until an `end` event, ``stop()`` or a non-retryable error. ``onEvent(name,
 * data, id)`` gets each event with its data parsed as JSON. ``lastEventId`` resumes after that
 * status event. ``onState(state)`` gets "connecting", "open", "retrying", "closed".
 */
export function followEvents(url, { onEvent, onState = () => {}, onError = () => {},
  lastEventId = null } = {}) {
  const controller = new AbortController();
  let stopped = false;
  let lastId = lastEventId;
  let delay = 1000;

  async function once() {
    const headers = { Accept: "text/event-stream", Authorization: `Bearer ${getToken()}` };
    if (lastId !== null && lastId !== undefined) headers["Last-Event-ID"] = String(lastId);
    const response = await fetch(url, { headers, signal: controller.signal, cache: "no-store" });
    if (!response.ok) {
      const body = await response.json().catch(() => null);
      const message = (body && body.message) || `${response.status} ${response.statusText}`;
      throw new ApiError(response.status, body, message);
    }
    onState("open");
    delay = 1000;
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return false;
      buffer += value;
      const [events, rest] = parseEvents(buffer);
      buffer = rest;
      for (const e of events) {
        if (e.id !== null && e.id !== "") lastId = e.id;
        let data = e.data;
        try { data = JSON.parse(e.data); } catch { /* keep text */ }
        onEvent(e.event, data, e.id);
        if (e.event === "end") return true;
      }
    }
  }

  (async () => {
    while (!stopped) {
      onState("connecting");
      try {
        if (await once()) break;
      } catch (error) {
        if (stopped || error.name === "AbortError") break;
        if (error instanceof ApiError && error.status === 401) {
          sessionExpired(`Your session ended (${error.message}). Log in again.`);
          break;
        }
        if (error instanceof ApiError && error.status >= 400 && error.status < 500) {
          onError(error);
          break;
        }
      }
      if (stopped) break;
      onState("retrying");
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 2, 15_000);
    }
    onState("closed");
  })();

  return {
    stop() {
      stopped = true;
      controller.abort();
    },
  };
}
