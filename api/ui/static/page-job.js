// #/jobs/<id>: one job, live. The event stream (sse.js) drives every update:
//   status   -> timeline item, status badge, buttons; trials refreshed (throttled)
//   progress -> progress bar
//   ratios   -> {trial_id: newest step}: for the selected search trial, read only what is new:
//               the bar charts ask for the newest step (after=<held step>, max_points=1), the
//               evolution chart for the selected layer's new steps (after=<held step>)
//   end      -> the job detail (artifacts, error) and, when it succeeded, the report
// Nothing reloads on a timer. Each loader runs one request at a time; news that arrives during
// a request is folded into one follow-up request.

import { ApiError, download, reportError, request } from "./api.js";
import {
  attachEvolutionHover, divergenceSvg, evolutionSvg, hasOutput, legendHtml, pooledKeys,
  ratioBarsSvg, ratiosText,
} from "./charts.js";
import { METRICS, pointsByTrial } from "./curves.js";
import {
  defaultTrial, extendHistory, lastEventId, orderedLayers, ratiosNews, stepInfo, trialConfig,
  trialLr,
} from "./job-data.js";
import { drawBatchHeatmap, drawCurveCharts } from "./page-job-results.js";
import { jobPageHtml, metricOptionsHtml, trialsHeadHtml } from "./page-job-view.js";
import { judgedMetric, trialValues } from "./metric.js";
import { reportHtml } from "./report.js";
import { followEvents } from "./sse.js";
import { installTooltip } from "./tooltip.js";
import {
  artifactFileName, esc, fmtBytes, fmtDate, fmtDuration, fmtLr, progressHtml,
  serial, showNotice, statusBadge, throttle,
} from "./util.js";
import { ACTIVE_STATUSES, FINISHED_STATUSES } from "./vocabulary.js";

const EVOLUTION_MAX_POINTS = 20000;
const TRIALS_THROTTLE_MS = 3000;
const CURVES_THROTTLE_MS = 5000;
const SEARCH_VARIANT = "sn";

const loader = (fn) => serial(fn, reportError);
// The outputs with a button of their own in the job page's download row.
const OWN_BUTTONS = new Set([
  "plan_json", "plan_yaml", "checkpoint", "search_plan_json", "search_checkpoint", "ratios_csv",
]);

export function render(root, [jobId]) {
  const base = `/api/v1/jobs/${jobId}`;
  const state = {
    job: null,
    eventIds: new Set(),
    trials: [],
    trialId: null, // the selected search trial
    newest: { trialId: null, lastStep: null, layers: new Map() }, // layer -> newest point
    evo: { trialId: null, layer: null, lastStep: null, points: [] },
    layer: null, // the selected layer
    reportFor: null, // the run whose report is shown
    report: null,
    metrics: [], // every trial's per-epoch metric points (GET /metrics)
    judged: null, // what the job is judged by (metric.js), once the job is loaded
    metric: "val_accuracy", // the curves shown: the judged metric's until the user picks one
    metricPicked: false,
    streamState: "",
    gen: 0, // bumped when the trial selection resets; older answers are dropped
  };
  let alive = true;
  let stream = null;
  const controller = new AbortController();
  const signal = controller.signal;

  root.innerHTML = jobPageHtml(jobId);
  const removeTooltip = installTooltip(root);

  const $ = (sel) => root.querySelector(sel);
  // The pixel width a chart is drawn at (null while its card is hidden: the default).
  const boxWidth = (sel) => $(sel)?.clientWidth || null;
  const trialSelect = $("#trial-select");
  const layerSelect = $("#layer-select");
  const metricSelect = $("#metric-select");
  const heatmapPart = $("#heatmap-part");

  // ------------------------------------------------------------------ header and lifecycle

  function drawHead() {
    const job = state.job;
    $("#status-slot").innerHTML = statusBadge(job.status);
    $("#progress-slot").innerHTML = progressHtml(job.progress);
    // A cancelling job's worker is already stopping it: nothing more to ask until it is cancelled.
    $("#cancel-job").hidden = !ACTIVE_STATUSES.has(job.status) || job.status === "cancelling";
    $("#retry-job").hidden = !["failed", "cancelled"].includes(job.status);
    const facts = [
      ...(job.name ? [["Name", job.name]] : []),
      ["Model", job.arch], ["Dataset", job.dataset],
      ["Target batch size", job.target_batch_size ?? "–"], ["Run", job.run],
      ["Attempts", job.attempts], ["Created", fmtDate(job.created_at)],
      ["Started", fmtDate(job.started_at) || "–"], ["Finished", fmtDate(job.finished_at) || "–"],
      ["Duration", fmtDuration(job.started_at, job.finished_at) || "–"],
    ];
    $("#facts").innerHTML = facts.map(([k, v]) => `<div><dt>${esc(k)}</dt><dd>${esc(v)}</dd></div>`)
      .join("");
    const errorBox = $("#job-error");
    errorBox.textContent = job.error ? `Error: ${job.error}` : "";
    errorBox.hidden = !job.error;
    const kinds = new Set((job.artifacts || []).map((a) => a.kind));
    $("[data-download=json]").hidden = !kinds.has("plan_json");
    $("[data-download=yaml]").hidden = !kinds.has("plan_yaml");
    $("[data-download=checkpoint]").hidden = !kinds.has("checkpoint");
    $("[data-download=search-plan]").hidden = !kinds.has("search_plan_json");
    $("[data-download=search-checkpoint]").hidden = !kinds.has("search_checkpoint");
    // Every other output (report.json, ratios.png, ...) by its file name.
    $("#artifact-downloads").innerHTML = (job.artifacts || [])
      .filter((a) => !OWN_BUTTONS.has(a.kind))
      .map((a) => `<button type="button" class="button" data-testid="download-artifact"
        data-artifact="${esc(a.kind)}" title="${esc(fmtBytes(a.size_bytes))}, sha256 ${
  esc(a.sha256.slice(0, 12))}…">${esc(artifactFileName(a.kind))}</button>`).join("");
    // Size and sha256 of the file the button downloads (the zip itself).
    const ckpt = (job.artifacts || []).find((a) => a.kind === "checkpoint");
    $("#artifact-info").textContent = ckpt ? `checkpoint.zip ${fmtBytes(ckpt.size_bytes)}, sha256 ${
      ckpt.sha256.slice(0, 12)}…` : "";
    $("#spec-view").textContent = JSON.stringify(job.spec, null, 2);
  }

  function setStatus(status, progress) {
    if (!state.job) return;
    const changed = status && status !== state.job.status;
    if (status) state.job.status = status;
    if (progress !== undefined && progress !== null) state.job.progress = progress;
    if (changed) {
      drawHead();
    } else {
      $("#progress-slot").innerHTML = progressHtml(state.job.progress);
    }
  }

  function addEvents(events) {
    const list = $("#timeline");
    const fresh = events.filter((e) => !state.eventIds.has(String(e.id)));
    if (!fresh.length) return;
    const html = fresh.map((e) => {
      state.eventIds.add(String(e.id));
      const from = e.from_status ? `${esc(e.from_status)} → ` : "";
      return `<li data-testid="timeline-event" data-status="${esc(e.to_status)}"
        data-event-id="${esc(e.id)}" class="status-${esc(e.to_status)}">
        <span class="dot"></span><div><div class="tl-head">${from}<strong>${esc(e.to_status)}</strong>
        <time datetime="${esc(e.at)}">${esc(fmtDate(e.at))}</time></div>
        ${e.message ? `<div class="tl-msg">${esc(e.message)}</div>` : ""}</div></li>`;
    }).join("");
    list.insertAdjacentHTML("beforeend", html);
  }

  // A language model is judged by perplexity, and its pool (search.pool) is not the classifiers'
  // default: the trials table, the curve choices and the legends follow the job.
  function adoptJob(job) {
    const judged = judgedMetric(job.metric);
    if (state.judged?.name !== judged.name) {
      state.judged = judged;
      $("#trials-head").innerHTML = trialsHeadHtml(judged);
      metricSelect.innerHTML = metricOptionsHtml(judged);
      if (!state.metricPicked) state.metric = judged.key;
      metricSelect.value = state.metric;
      drawTrials();
      drawCurves();
    }
    const pool = job.spec?.search?.pool ?? null;
    $("#norm-legend").innerHTML = legendHtml(pooledKeys("mean", pool));
    $("#output-legend").innerHTML = legendHtml(pooledKeys("output", pool), "output");
  }

  async function loadJob() {
    const job = await request(base, { signal });
    if (!alive) return;
    state.job = job;
    adoptJob(job);
    drawHead();
    addEvents(job.events || []);
    if (job.status === "succeeded" && state.reportFor !== job.run) loadReport();
    if (FINISHED_STATUSES.has(job.status) && job.status !== "succeeded") {
      $("#results-card").hidden = true;
    }
  }

  function startStream() {
    stream?.stop();
    if (!state.job || FINISHED_STATUSES.has(state.job.status)) {
      setLive("");
      return;
    }
    stream = followEvents(`${base}/events`, {
      lastEventId: lastEventId(state.eventIds),
      onEvent,
      onState: (s) => setLive({ open: "live", connecting: "connecting…",
        retrying: "reconnecting…", closed: "" }[s] ?? ""),
      onError: (error) => showNotice(`Live updates stopped: ${error.message}`),
    });
  }

  function setLive(text) {
    const box = $("#live-state");
    box.textContent = text;
    box.dataset.state = text;
  }

  function onEvent(name, data) {
    if (!alive) return;
    if (name === "status") {
      addEvents([data]);
      setStatus(data.to_status);
      refreshTrials();
      if (FINISHED_STATUSES.has(data.to_status)) refreshJob();
    } else if (name === "progress") {
      setStatus(data.status, data.progress);
    } else if (name === "ratios") {
      const news = ratiosNews(data, {
        trials: state.trials, trialId: state.trialId, newestStep: state.newest.lastStep,
        evolutionLayer: state.evo.layer, evolutionStep: state.evo.lastStep,
      });
      if (news.newest) loadNewest();
      if (news.evolution) loadEvolution();
      if (news.trialsNow) refreshTrials.now();
      else refreshTrials();
      refreshCurves(); // metrics are written with the snapshots of the same epoch
    } else if (name === "end") {
      setStatus(data.status);
      refreshJob();
      refreshTrials.now();
      refreshCurves.now();
    }
  }

  const refreshJob = loader(async () => {
    await loadJob();
    if (alive && state.trialId !== null) { loadNewest(); loadEvolution(); }
  });

  // ------------------------------------------------------------------ trials

  const loadTrials = loader(async () => {
    const trials = await request(`${base}/trials`, { signal });
    if (!alive) return;
    state.trials = trials;
    drawTrials();
    // The curves group the metrics by trial: redraw them with trials that arrived after the
    // metrics (on "end" both load at once, and a verification trial may be new to the page).
    drawCurves();
  });
  const refreshTrials = throttle(loadTrials, TRIALS_THROTTLE_MS);
  refreshTrials.now = loadTrials;

  function drawTrials() {
    const body = $("#trials-body");
    const judged = state.judged ?? judgedMetric();
    const lines = pointsByTrial(state.metrics, judged.key);
    const shown = (p) => (p ? `${judged.fmt(p.value)}${p.epoch ? ` (ep ${p.epoch})` : ""}` : "–");
    body.innerHTML = state.trials.length ? state.trials.map((t) => {
      const { seed, batch } = trialConfig(t);
      const lr = trialLr(t);
      const { final, best } = trialValues(lines.get(t.id), t.best_metrics, judged);
      return `<tr data-testid="trial-row" data-trial-id="${t.id}" data-variant="${esc(t.variant)}"
        class="${t.id === state.trialId ? "selected" : ""}">
        <td class="mono" title="${esc(t.ray_trial_id)}">#${t.number}</td><td>${esc(t.variant)}</td>
        <td>${statusBadge(t.status.toLowerCase(), "trial-status")}</td>
        <td class="num">${seed ?? "–"}</td><td class="num">${batch ?? "–"}</td>
        <td class="num" data-testid="trial-lr" title="base lr ${fmtLr(lr.base)}">${fmtLr(lr.effective)}</td>
        <td class="num" data-testid="trial-final" data-metric="${judged.name}">${shown(final)}</td>
        <td class="num" data-testid="trial-best" data-metric="${judged.name}">${shown(best)}</td>
        <td class="num">${t.epochs_used} / ${t.epochs_budget}</td></tr>`;
    }).join("") : `<tr class="empty"><td colspan="9">No trials yet.</td></tr>`;

    const search = state.trials.filter((t) => t.variant === SEARCH_VARIANT);
    const options = search.map((t) => {
      const { seed, batch } = trialConfig(t);
      return `<option value="${t.id}">#${t.number} · seed ${seed ?? "?"} · batch ${batch ?? "?"} · ${
        esc(t.status.toLowerCase())}</option>`;
    }).join("");
    if (trialSelect.dataset.options !== options) {
      trialSelect.innerHTML = options || `<option value="">no search trial yet</option>`;
      trialSelect.dataset.options = options;
    }
    trialSelect.disabled = !search.length;
    if (state.trialId === null || !search.some((t) => t.id === state.trialId)) {
      const pick = defaultTrial(search, state.job?.target_batch_size);
      if (pick) selectTrial(pick.id);
    } else {
      trialSelect.value = String(state.trialId);
    }
  }

  function selectTrial(id) {
    state.trialId = id;
    state.gen += 1;
    state.newest = { trialId: id, lastStep: null, layers: new Map() };
    state.evo = { trialId: id, layer: state.layer, lastStep: null, points: [] };
    trialSelect.value = String(id);
    for (const row of root.querySelectorAll("[data-testid=trial-row]")) {
      row.classList.toggle("selected", Number(row.dataset.trialId) === id);
    }
    loadNewest();
    loadEvolution();
  }

  // ------------------------------------------------------------------ training curves

  const loadCurves = loader(async () => {
    const params = new URLSearchParams();
    for (const name of Object.keys(METRICS)) params.append("name", name);
    const answer = await request(`${base}/metrics?${params}`, { signal });
    if (!alive) return;
    state.metrics = answer.points;
    drawCurves();
    drawTrials();
  });
  const refreshCurves = throttle(loadCurves, CURVES_THROTTLE_MS);
  refreshCurves.now = loadCurves;

  function drawCurves() {
    drawCurveCharts(root, { trials: state.trials, metrics: state.metrics, metric: state.metric });
  }

  function drawHeatmap() {
    if (state.report) {
      drawBatchHeatmap(root, state.report, heatmapPart.value, state.job?.spec?.search?.pool);
    }
  }

  // ------------------------------------------------------------------ ratios: newest step

  const loadNewest = loader(async () => {
    const { trialId, lastStep } = state.newest;
    if (trialId === null) return;
    const gen = state.gen;
    const params = new URLSearchParams({ trial: trialId, max_points: 1 });
    if (lastStep !== null) params.set("after", lastStep);
    const answer = await request(`${base}/ratios?${params}`, { signal });
    if (!alive || gen !== state.gen) return;
    const trial = answer.trials[0];
    if (!trial || !trial.points.length) return;
    for (const p of trial.points) state.newest.layers.set(p.layer, p);
    state.newest.lastStep = trial.last_step;
    drawBars();
  });

  let barsFrame = 0;
  function drawBars() {
    if (barsFrame) return;
    barsFrame = requestAnimationFrame(() => {
      barsFrame = 0;
      if (!alive) return;
      const layers = orderedLayers(state.newest.layers);
      if (!layers.length) return;
      $("#step-info").textContent = stepInfo(layers, state.newest.lastStep);
      const selected = state.layer;
      $("#bar-charts").classList.toggle("stacked", layers.length > 40); // full width each
      $("#chart-mean").innerHTML = ratioBarsSvg(layers, { part: "mean", testid: "ratio-chart-mean",
        selected, title: "mean ratios", width: boxWidth("#chart-mean") });
      $("#chart-var").innerHTML = ratioBarsSvg(layers, { part: "var", testid: "ratio-chart-var",
        selected, title: "variance ratios", width: boxWidth("#chart-var") });
      // Output ratios: only a pool with point-wise members (dyt, none) has them.
      const output = hasOutput(layers);
      $("#chart-output").hidden = !output;
      $("#output-legend").hidden = !output;
      $("#chart-output").innerHTML = output ? ratioBarsSvg(layers, { part: "output",
        testid: "ratio-chart-output", selected, title: "output ratios",
        width: boxWidth("#chart-output") }) : "";
      $("#chart-divergence").innerHTML = divergenceSvg(layers, { selected,
        width: boxWidth("#chart-divergence") });
      updateLayerOptions(layers);
    });
  }

  function updateLayerOptions(layers) {
    const names = layers.map((p) => p.layer);
    const key = names.join("\n");
    if (layerSelect.dataset.key !== key) {
      layerSelect.innerHTML = layers.map((p) =>
        `<option value="${esc(p.layer)}">#${p.layer_index} ${esc(p.layer)}</option>`).join("");
      layerSelect.dataset.key = key;
      layerSelect.disabled = !names.length;
    }
    if (!state.layer || !names.includes(state.layer)) {
      selectLayer(names[0]);
    } else {
      layerSelect.value = state.layer;
    }
  }

  function selectLayer(name) {
    if (!name) return;
    const changed = name !== state.layer;
    state.layer = name;
    layerSelect.value = name;
    for (const g of root.querySelectorAll("#bar-charts [data-layer]")) {
      g.classList.toggle("selected", g.dataset.layer === name);
    }
    if (changed || state.evo.layer !== name) {
      state.evo = { trialId: state.trialId, layer: name, lastStep: null, points: [] };
      $("#chart-evolution").innerHTML = `<p class="muted">Loading ${esc(name)}…</p>`;
      loadEvolution();
    }
  }

  // ------------------------------------------------------------------ ratios: one layer's history

  const loadEvolution = loader(async () => {
    const { trialId, layer, lastStep } = state.evo;
    if (trialId === null || !layer) return;
    const gen = state.gen;
    const params = new URLSearchParams({ trial: trialId, layer, max_points: EVOLUTION_MAX_POINTS });
    if (lastStep !== null) params.set("after", lastStep);
    const answer = await request(`${base}/ratios?${params}`, { signal });
    if (!alive || gen !== state.gen || state.evo.layer !== layer) return;
    const trial = answer.trials[0];
    if (!trial) return;
    if (trial.points.length) extendHistory(state.evo, trial, lastStep, EVOLUTION_MAX_POINTS);
    if (trial.points.length || lastStep === null) drawEvolution();
  });

  let evoFrame = 0;
  function drawEvolution() {
    if (evoFrame) return;
    evoFrame = requestAnimationFrame(() => {
      evoFrame = 0;
      if (!alive) return;
      const { points, layer, downsampled } = state.evo;
      $("#chart-evolution").innerHTML = evolutionSvg(points, { layer,
        width: boxWidth("#chart-evolution") });
      const last = points.at(-1);
      $("#evolution-info").textContent = last ? `${layer}: ${points.length} steps${
        downsampled ? " (evenly downsampled)" : ""}; newest step ${last.step}: mean ${
        ratiosText(last.mean)}; variance ${ratiosText(last.var)}${last.output
        ? `; output ${ratiosText(last.output, "output")}` : ""}` : "";
    });
  }

  // ------------------------------------------------------------------ the report

  async function loadReport() {
    const run = state.job.run;
    state.reportFor = run;
    let report;
    try {
      report = await request(`${base}/report`, { signal });
    } catch (error) {
      state.reportFor = null;
      if (error instanceof ApiError && error.status === 409) return; // not ready yet
      throw error;
    }
    if (!alive) return;
    state.report = report;
    drawReport(report);
    drawHeatmap();
  }

  function drawReport(report) {
    const { verdictText, recommendationInfo, recommendationRows, verificationInfo,
      verificationHead, verificationRows } = reportHtml(report);
    $("#verdict").textContent = verdictText;
    $("#verdict").hidden = !verdictText;
    $("#recommendation-info").textContent = recommendationInfo;
    $("#recommendation-body").innerHTML = recommendationRows;
    $("#verification-info").textContent = verificationInfo;
    $("#verification-metric").textContent = verificationHead;
    $("#verification-body").innerHTML = verificationRows;
    $("#results-card").hidden = false;
  }

  // ------------------------------------------------------------------ controls (delegated)

  const DOWNLOADS = {
    csv: ["/ratios.csv", `${jobId}-ratios.csv`],
    json: ["/recommendation", `${jobId}-plan.json`],
    yaml: ["/recommendation?format=yaml", `${jobId}-plan.yaml`],
    checkpoint: ["/checkpoint", `${jobId}-checkpoint.zip`],
    "search-plan": ["/artifacts/search_plan_json", `${jobId}-search_plan.json`],
    "search-checkpoint": ["/search-checkpoint", `${jobId}-search_checkpoint.zip`],
  };

  root.addEventListener("click", async (event) => {
    const button = event.target.closest("button");
    if (button?.dataset.artifact) {
      const kind = button.dataset.artifact;
      button.disabled = true;
      try {
        await download(`${base}/artifacts/${encodeURIComponent(kind)}`,
          `${jobId}-${artifactFileName(kind)}`);
      } catch (error) { reportError(error); } finally { button.disabled = false; }
      return;
    }
    if (button?.dataset.download) {
      const [path, name] = DOWNLOADS[button.dataset.download];
      button.disabled = true;
      try { await download(`${base}${path}`, name); } catch (error) { reportError(error); }
      finally { button.disabled = false; }
      return;
    }
    if (button?.id === "cancel-job" || button?.id === "retry-job") {
      const action = button.id === "cancel-job" ? "cancel" : "retry";
      button.disabled = true;
      try {
        const job = await request(`${base}/${action}`, { method: "POST", signal });
        if (!alive) return;
        state.job = job;
        drawHead();
        addEvents(job.events || []);
        if (action === "retry") {
          $("#results-card").hidden = true;
          $("#batch-card").hidden = true;
          state.report = null;
          state.metrics = [];
          drawCurves();
          state.reportFor = null;
          state.trialId = null;
          state.gen += 1;
          state.newest = { trialId: null, lastStep: null, layers: new Map() };
          state.evo = { trialId: null, layer: state.layer, lastStep: null, points: [] };
          refreshTrials.now();
          startStream();
        }
      } catch (error) {
        reportError(error);
      } finally {
        button.disabled = false;
      }
      return;
    }
    const bar = event.target.closest("#bar-charts [data-layer]");
    if (bar) selectLayer(bar.dataset.layer);
  });
  trialSelect.addEventListener("change", () => {
    if (trialSelect.value) selectTrial(Number(trialSelect.value));
  });
  layerSelect.addEventListener("change", () => selectLayer(layerSelect.value));
  metricSelect.addEventListener("change", () => {
    state.metric = metricSelect.value;
    state.metricPicked = true;
    drawCurves();
  });
  heatmapPart.addEventListener("change", drawHeatmap);
  attachEvolutionHover($("#chart-evolution"), () => state.evo.points);

  // ------------------------------------------------------------------ start

  (async () => {
    try {
      await loadJob();
      if (!alive) return;
      await loadTrials();
      await loadCurves();
      startStream();
    } catch (error) {
      if (error instanceof ApiError && error.status === 404) {
        showNotice(`Job ${jobId} was not found.`);
      } else {
        reportError(error);
      }
    }
  })();

  return () => {
    alive = false;
    stream?.stop();
    controller.abort();
    refreshTrials.cancel();
    refreshCurves.cancel();
    cancelAnimationFrame(barsFrame);
    cancelAnimationFrame(evoFrame);
    removeTooltip();
  };
}
