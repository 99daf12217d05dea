// #/jobs: your jobs, filtered by status, sorted, paginated. Polls every 5 s only while a job on
// the page is queued or running. Filter, sort and page live in the hash's query
// (#/jobs?status=running&offset=20) so the browser's back button and reloads keep them.

import { reportError, request } from "./api.js";
import { resultCell } from "./job-result.js";
import { DEFAULT_SORT, jobsHash, lastPageOffset, pageRange, readJobsQuery } from "./jobs-query.js";
import {
  esc, fmtDate, fmtDuration, progressHtml, statusBadge,
} from "./util.js";
import { ACTIVE_STATUSES, JOB_STATUSES } from "./vocabulary.js";

const PAGE_SIZE = 20;
const POLL_MS = 5000; // while a job on the page is queued or running
const IDLE_POLL_MS = 15000; // otherwise: new jobs from the CLI or another tab still appear
const SORTS = [
  ["-created_at", "newest first"], ["created_at", "oldest first"],
  ["-updated_at", "recently updated"], ["status", "status"], ["-progress", "progress"],
];

export function render(root) {
  const state = { status: "", sort: DEFAULT_SORT, offset: 0, total: 0, items: [] };
  root.innerHTML = `
    <section class="card">
      <div class="toolbar">
        <h1>Jobs</h1>
        <span class="spacer"></span>
        <label>Status
          <select data-testid="status-filter" id="status-filter">
            <option value="">all</option>
            ${JOB_STATUSES.map((s) => `<option value="${s}">${s}</option>`).join("")}
          </select>
        </label>
        <label>Sort
          <select id="sort-select">
            ${SORTS.map(([v, t]) => `<option value="${v}">${t}</option>`).join("")}
          </select>
        </label>
        <a class="button primary" href="#/new">New job</a>
      </div>
      <table class="table jobs" data-testid="jobs-table">
        <thead><tr>
          <th>Name</th><th>Status</th><th>Progress</th><th>Model</th><th>Dataset</th>
          <th class="num">Target batch</th>
          <th title="the configuration the verdict chose and its final-epoch validation accuracy (a language model: perplexity)">
            Result</th><th class="num" title="start to finish (to now while it runs)">Duration</th>
          <th>Created</th><th>Id</th>
        </tr></thead>
        <tbody id="jobs-body"><tr class="empty"><td colspan="10">Loading…</td></tr></tbody>
      </table>
      <div class="pager">
        <button type="button" class="button" data-testid="prev-page" id="prev-page">‹ Prev</button>
        <span data-testid="jobs-total" id="jobs-total" data-total="0"></span>
        <button type="button" class="button" data-testid="next-page" id="next-page">Next ›</button>
      </div>
    </section>`;
  const body = root.querySelector("#jobs-body");
  const filter = root.querySelector("#status-filter");
  const sortSelect = root.querySelector("#sort-select");
  const prev = root.querySelector("#prev-page");
  const next = root.querySelector("#next-page");
  const totalBox = root.querySelector("#jobs-total");
  let alive = true;
  let timer = null;
  let controller = null;

  function draw() {
    const { items, total, offset } = state;
    body.innerHTML = items.length ? items.map(rowHtml).join("") :
      `<tr class="empty"><td colspan="10">No jobs${state.status ? ` with status ${esc(state.status)}` : ""}.
        <a href="#/new">Submit one</a>.</td></tr>`;
    totalBox.textContent = pageRange(offset, items.length, total);
    totalBox.dataset.total = String(total);
    prev.disabled = offset <= 0;
    next.disabled = offset + PAGE_SIZE >= total;
  }

  async function load() {
    clearTimeout(timer);
    controller?.abort();
    controller = new AbortController();
    const params = new URLSearchParams({ sort: state.sort, limit: PAGE_SIZE, offset: state.offset });
    if (state.status) params.set("status", state.status);
    try {
      const page = await request(`/api/v1/jobs?${params}`, { signal: controller.signal });
      if (!alive) return;
      if (!page.items.length && page.total > 0 && state.offset > 0) {
        state.offset = lastPageOffset(page.total, PAGE_SIZE);
        load();
        return;
      }
      Object.assign(state, { items: page.items, total: page.total });
      draw();
    } catch (error) {
      reportError(error);
    }
    if (alive) {
      const active = state.items.some((job) => ACTIVE_STATUSES.has(job.status));
      timer = setTimeout(load, active ? POLL_MS : IDLE_POLL_MS);
    }
  }

  function change(patch) {
    Object.assign(state, patch);
    history.replaceState(null, "", jobsHash(state));
    load();
  }

  // The query of the hash (#/jobs?status=...) restores filter and page.
  Object.assign(state, readJobsQuery(location.hash, {
    statuses: JOB_STATUSES, sorts: SORTS.map(([value]) => value),
  }));
  filter.value = state.status;
  sortSelect.value = state.sort;

  filter.addEventListener("change", () => change({ status: filter.value, offset: 0 }));
  sortSelect.addEventListener("change", () => change({ sort: sortSelect.value, offset: 0 }));
  prev.addEventListener("click", () => change({ offset: Math.max(0, state.offset - PAGE_SIZE) }));
  next.addEventListener("click", () => change({ offset: state.offset + PAGE_SIZE }));
  // One delegated listener for every row.
  body.addEventListener("click", (event) => {
    const row = event.target.closest("[data-job-id]");
    if (row && !event.target.closest("a")) location.hash = `#/jobs/${row.dataset.jobId}`;
  });
  body.addEventListener("keydown", (event) => {
    const row = event.target.closest("[data-job-id]");
    if (row && event.key === "Enter") location.hash = `#/jobs/${row.dataset.jobId}`;
  });

  load();
  return () => {
    alive = false;
    clearTimeout(timer);
    controller?.abort();
  };
}

function rowHtml(job) {
  const result = resultCell(job);
  return `<tr data-testid="job-row" data-job-id="${esc(job.id)}" tabindex="0" class="clickable">
    <td class="name" data-testid="job-name">${esc(job.name || "–")}</td>
    <td>${statusBadge(job.status)}</td>
    <td>${progressHtml(job.progress)}</td>
    <td>${esc(job.arch)}</td>
    <td>${esc(job.dataset)}</td>
    <td class="num">${job.target_batch_size ?? "–"}</td>
    <td class="result result-${result.kind}" data-testid="job-result"
      title="${esc(result.title)}">${esc(result.text)}</td>
    <td class="num" data-testid="job-duration">${
  esc(fmtDuration(job.started_at, job.finished_at) || "–")}</td>
    <td title="${esc(job.created_at)}">${esc(fmtDate(job.created_at))}</td>
    <td><a href="#/jobs/${esc(job.id)}" class="mono">${esc(job.id.slice(0, 8))}</a></td>
  </tr>`;
}
