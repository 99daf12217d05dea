// The two browser globals the UI modules under test read at call time (not at import time), for
// `node --test`: sessionStorage (where api.js keeps the token) and location (401 -> #/login).
// Node 20 has fetch, Response, ReadableStream, TextDecoderStream and crypto itself.

class MemoryStorage {
  #items = new Map();
  getItem(key) { return this.#items.has(key) ? this.#items.get(key) : null; }
  setItem(key, value) { this.#items.set(key, String(value)); }
  removeItem(key) { this.#items.delete(key); }
  clear() { this.#items.clear(); }
}

/** Fresh globals for one test: an empty sessionStorage and location at ``hash``. */
export function browserEnv(hash = "#/jobs") {
  globalThis.sessionStorage = new MemoryStorage();
  globalThis.location = { hash };
  return { sessionStorage: globalThis.sessionStorage, location: globalThis.location };
}

/** A fetch Response whose body arrives in these chunks (text, or bytes to split a character). */
export function streamResponse(chunks, init = {}) {
  const encoder = new TextEncoder();
  const body = new ReadableStream({
    start(controller) {
      for (const chunk of chunks) {
        controller.enqueue(typeof chunk === "string" ? encoder.encode(chunk) : chunk);
      }
      controller.close();
    },
  });
  return new Response(body, { status: 200, headers: { "Content-Type": "text/event-stream" },
    ...init });
}

/** Let pending promises and I/O callbacks run until ``condition()`` holds (fails after 2,000). */
export async function until(condition, what = "the condition") {
  for (let i = 0; i < 2000; i += 1) {
    if (condition()) return;
    await new Promise((resolve) => setImmediate(resolve));
  }
  throw new Error(`timed out waiting for ${what}`);
}
