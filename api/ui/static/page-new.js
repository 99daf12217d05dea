// #/new: a spec editor (JSON or YAML) with the shipped examples as templates, live validation (a
// debounced POST /spec/validate: JSON as JSON, any other text as YAML, which the API parses) with
// each error listed by field path, and submit (POST /jobs with an Idempotency-Key per form, text
// and name) -> the job page.

import { ApiError, reportError, request } from "./api.js";
import { fieldHint, jsonErrorMessage, schemaHints, validationErrors } from "./spec-help.js";
import { debounce, esc, randomKey, showNotice } from "./util.js";

const DRAFT_KEY = "normsearch.draft";
const VALIDATE_DELAY_MS = 400;

export function render(root) {
  root.innerHTML = `
    <section class="card">
      <div class="toolbar">
        <h1>New search job</h1>
        <span class="spacer"></span>
        <label>Template
          <select data-testid="template-select" id="template-select" disabled>
            <option value="">loading…</option>
          </select>
        </label>
      </div>
      <p class="muted" id="template-title"></p>
      <div class="editor-grid">
        <div class="editor-col">
          <label for="spec-editor" class="sr-only">Job spec (JSON or YAML)</label>
          <textarea id="spec-editor" data-testid="spec-editor" spellcheck="false"
            autocomplete="off" wrap="off" rows="30"></textarea>
          <div class="editor-actions">
            <button type="button" class="button" id="format-spec">Format JSON</button>
            <span class="spacer"></span>
            <label>Name (optional)
              <input type="text" id="job-name" data-testid="job-name-input" maxlength="100"
                placeholder="e.g. resnet20, first try" autocomplete="off">
            </label>
            <button type="button" class="button primary" data-testid="submit-job" id="submit-job">
              Submit job</button>
          </div>
        </div>
        <aside class="editor-side">
          <h2>Validation</h2>
          <div data-testid="spec-errors" id="spec-errors" class="spec-errors" aria-live="polite">
            <p class="muted">Checking…</p>
          </div>
          <details class="hints">
            <summary>Spec fields</summary>
            <div id="field-hints" class="field-hints"><p class="muted">loading…</p></div>
          </details>
        </aside>
      </div>
    </section>`;
  const select = root.querySelector("#template-select");
  const title = root.querySelector("#template-title");
  const editor = root.querySelector("#spec-editor");
  const errorsBox = root.querySelector("#spec-errors");
  const submit = root.querySelector("#submit-job");
  const hints = root.querySelector("#field-hints");
  let alive = true;
  let examples = [];
  let schema = null;
  let seq = 0; // the newest validation request; older answers are dropped
  let idempotency = { text: null, key: null };

  function showErrors(errors, heading) {
    errorsBox.dataset.state = errors.length ? "invalid" : "valid";
    if (!errors.length) {
      errorsBox.innerHTML = `<p class="ok">${esc(heading || "The spec is valid.")}</p>`;
      return;
    }
    errorsBox.innerHTML = `<p class="bad">${esc(heading || "The spec has errors:")}</p><ul>` +
      errors.map((e) => `<li data-testid="field-error" data-field="${esc(e.field)}">` +
        `<code class="field">${esc(e.field)}</code> ${esc(e.message)}` +
        `${fieldHint(schema, e.field)}</li>`).join("") + "</ul>";
  }

  /** The request body of the editor's text: a text that starts with "{" is JSON ({json, spec},
   * or {error} where it does not parse); any other is YAML ({yaml}: the API parses it and names
   * its errors); {error} for an empty text. */
  function parse() {
    const text = editor.value;
    if (!text.trim()) {
      return { error: { field: "(body)", message: "the spec is empty: choose a template" } };
    }
    if (!text.trimStart().startsWith("{")) return { body: { yaml: text } };
    try {
      const spec = JSON.parse(text);
      return { body: { json: spec }, spec };
    } catch (error) {
      return { error: { field: "(json)", message: jsonErrorMessage(text, error) } };
    }
  }

  async function validate() {
    const mine = ++seq;
    const { body: payload, error } = parse();
    if (error) {
      showErrors([error]);
      return;
    }
    try {
      const answer = await request("/api/v1/spec/validate", { method: "POST", ...payload,
        allow: [422], raw: true });
      const body = await answer.json();
      if (!alive || mine !== seq) return;
      if (answer.ok) showErrors([], "The spec is valid.");
      else showErrors(validationErrors(body));
    } catch (err) {
      if (!alive || mine !== seq) return;
      if (err instanceof ApiError && err.status !== 401) {
        showErrors([{ field: err.body?.field || "(body)", message: err.message }]);
      } else {
        reportError(err);
      }
    }
  }
  const validateSoon = debounce(validate, VALIDATE_DELAY_MS);

  function setText(text) {
    editor.value = text;
    sessionStorage.setItem(DRAFT_KEY, text);
    validate();
  }

  function applyTemplate(name) {
    const example = examples.find((e) => e.name === name);
    if (!example) return;
    title.textContent = example.title;
    setText(JSON.stringify(example.spec, null, 2));
  }

  async function load() {
    try {
      const [list, jsonSchema] = await Promise.all([
        request("/api/v1/spec/examples"),
        request("/api/v1/spec/schema").catch(() => null),
      ]);
      if (!alive) return;
      examples = list;
      schema = jsonSchema;
      select.innerHTML = examples.map((e) =>
        `<option value="${esc(e.name)}">${esc(e.name)}</option>`).join("");
      select.disabled = !examples.length;
      hints.innerHTML = schema ? schemaHints(schema) : `<p class="muted">unavailable</p>`;
      const draft = sessionStorage.getItem(DRAFT_KEY);
      if (draft) {
        editor.value = draft;
        const fromTemplate = examples.find((e) => JSON.stringify(e.spec, null, 2) === draft);
        if (fromTemplate) select.value = fromTemplate.name;
        title.textContent = fromTemplate ? fromTemplate.title : "Your draft (kept in this tab).";
        validate();
      } else if (examples.length) {
        select.value = examples[0].name;
        applyTemplate(examples[0].name);
      }
    } catch (error) {
      reportError(error);
    }
  }

  select.addEventListener("change", () => applyTemplate(select.value));
  editor.addEventListener("input", () => {
    sessionStorage.setItem(DRAFT_KEY, editor.value);
    errorsBox.dataset.state = "pending";
    validateSoon();
  });
  editor.addEventListener("keydown", (event) => {
    if (event.key === "Tab" && !event.shiftKey) { // indent instead of leaving the editor
      event.preventDefault();
      editor.setRangeText("  ", editor.selectionStart, editor.selectionEnd, "end");
      editor.dispatchEvent(new Event("input"));
    }
  });
  root.querySelector("#format-spec").addEventListener("click", async () => {
    const { spec, body: payload } = parse();
    if (spec !== undefined) {
      setText(JSON.stringify(spec, null, 2));
      return;
    }
    if (!payload) return;
    // YAML: as JSON, with the defaults the API fills in (when it validates)
    try {
      const answer = await request("/api/v1/spec/validate", { method: "POST", ...payload });
      if (alive) setText(JSON.stringify(answer.spec, null, 2));
    } catch {
      validate();
    }
  });
  submit.addEventListener("click", async () => {
    validateSoon.cancel();
    const { body: payload, error } = parse();
    if (error) {
      showErrors([error]);
      return;
    }
    // One key per spec text and name: a changed name is another submission.
    const text = `${editor.value}\n${root.querySelector("#job-name").value.trim()}`;
    if (idempotency.text !== text) idempotency = { text, key: randomKey() };
    submit.disabled = true;
    try {
      const name = root.querySelector("#job-name").value.trim();
      const query = name ? `?${new URLSearchParams({ name })}` : "";
      const job = await request(`/api/v1/jobs${query}`, {
        method: "POST", ...payload, headers: { "Idempotency-Key": `ui-${idempotency.key}` },
      });
      if (!alive) return;
      sessionStorage.removeItem(DRAFT_KEY);
      location.hash = `#/jobs/${job.id}`;
    } catch (err) {
      if (!alive) return;
      if (err instanceof ApiError && err.status === 422) showErrors(validationErrors(err.body));
      if (err instanceof ApiError && err.status !== 401) {
        showNotice(`The job was not submitted: ${err.message}`);
      } else {
        reportError(err);
      }
    } finally {
      submit.disabled = false;
    }
  });

  load();
  return () => {
    alive = false;
    validateSoon.cancel();
  };
}
