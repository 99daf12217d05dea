// Small helpers shared by the pages: HTML escaping, formatting, the global notice, timers.

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

/** Escape text for HTML element content and attribute values. */
export function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ESCAPES[c]);
}

export function fmtDate(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return d.toLocaleString(undefined, {
    year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", second: "2-digit",
  });
}

export function fmtPct(fraction, digits = 0) {
  const v = Number(fraction);
  return Number.isFinite(v) ? `${(v * 100).toFixed(digits)}%` : "";
}

export function fmtNum(value, digits = 3) {
  const v = Number(value);
  return value === null || value === undefined || !Number.isFinite(v) ? "–" : v.toFixed(digits);
}

/** A learning rate to 4 significant digits, without trailing zeros (0.1, 0.00625, 1.25e-7). */
export function fmtLr(value) {
  const v = Number(value);
  return value === null || value === undefined || !Number.isFinite(v)
    ? "–" : String(Number(v.toPrecision(4)));
}

/** How long a job ran: start to finish, or start to ``now`` while it runs; "" before it started.
 * Whole seconds, as "1 min 51 s" or "2 h 05 min" (the CLI's `ls` says the same). */
export function fmtDuration(startIso, endIso, now = Date.now()) {
  if (!startIso) return "";
  const start = new Date(startIso).getTime();
  const end = endIso ? new Date(endIso).getTime() : now;
  if (Number.isNaN(start) || Number.isNaN(end)) return "";
  const s = Math.max(0, Math.round((end - start) / 1000));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, "0")} s`;
  return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")} min`;
}

/** The file name of an artifact kind: "report_json" -> "report.json". */
export function artifactFileName(kind) {
  return String(kind).replace(/_(json|yaml|png|csv)$/, ".$1").replace(/^checkpoint$/, "checkpoint.zip")
    .replace(/^search_checkpoint$/, "search_checkpoint.zip");
}

export function fmtBytes(n) {
  const units = ["B", "KiB", "MiB", "GiB"];
  let v = Number(n) || 0;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return `${v.toFixed(i ? 1 : 0)} ${units[i]}`;
}

/** A progress bar (CSP-safe: the bar is an SVG rect, no inline style). */
export function progressHtml(fraction, testid = "job-progress") {
  const v = Math.max(0, Math.min(1, Number(fraction) || 0));
  const pct = (v * 100).toFixed(0);
  return `<div class="progress" data-testid="${testid}" role="progressbar" aria-valuemin="0"
    aria-valuemax="100" aria-valuenow="${pct}" data-progress="${v}">` +
    `<svg class="progress-bar" viewBox="0 0 100 6" preserveAspectRatio="none" aria-hidden="true">` +
    `<rect class="progress-track" x="0" y="0" width="100" height="6"/>` +
    `<rect class="progress-fill" x="0" y="0" width="${(v * 100).toFixed(2)}" height="6"/></svg>` +
    `<span class="progress-text">${pct}%</span></div>`;
}

export function statusBadge(status, testid = "job-status") {
  return `<span class="badge status-${esc(status)}" data-testid="${testid}">${esc(status)}</span>`;
}

// ---------------------------------------------------------------------------- notice

export function showNotice(message, kind = "error") {
  const box = document.getElementById("notice");
  document.getElementById("notice-text").textContent = message;
  box.dataset.kind = kind;
  box.hidden = false;
}

export function clearNotice() {
  const box = document.getElementById("notice");
  box.hidden = true;
  document.getElementById("notice-text").textContent = "";
}

// ---------------------------------------------------------------------------- timers

export function debounce(fn, ms) {
  let timer = null;
  const wrapped = (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
  wrapped.cancel = () => clearTimeout(timer);
  return wrapped;
}

/** Run ``fn`` at most once per ``ms``; calls in between are folded into one trailing call. */
export function throttle(fn, ms) {
  let last = 0;
  let timer = null;
  const wrapped = () => {
    const wait = last + ms - Date.now();
    if (wait <= 0) {
      last = Date.now();
      fn();
    } else if (timer === null) {
      timer = setTimeout(() => { timer = null; last = Date.now(); fn(); }, wait);
    }
  };
  wrapped.cancel = () => { clearTimeout(timer); timer = null; };
  return wrapped;
}

/**
 * A loader that runs ``fn`` one call at a time; calls during a run fold into one more run (so
 * news that arrives during a request costs one follow-up request). Errors go to ``onError``.
 */
export function serial(fn, onError) {
  let running = false;
  let again = false;
  const run = async () => {
    if (running) { again = true; return; }
    running = true;
    try {
      do {
        again = false;
        await fn();
      } while (again);
    } catch (error) {
      onError(error);
    } finally {
      running = false;
    }
  };
  return run;
}

/** A random key (works outside secure contexts, where crypto.randomUUID is missing). */
export function randomKey() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}
