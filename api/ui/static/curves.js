// Training curves of a job, as data: the stored per-epoch metrics (GET /jobs/{id}/metrics: one
// point per trial, epoch and metric) turned into one line per search trial and, for the
// verification, one line per configuration (plan, all-BN, ...) = the mean over its seeds at
// each epoch, with each seed kept for thin lines. Every summary says which epoch it is:
// final (the last epoch trained) or best (the highest accuracy, the lowest loss or perplexity).

import { trialConfig } from "./job-data.js";

export const METRICS = {
  val_accuracy: { label: "validation accuracy", accuracy: true },
  val_loss: { label: "validation loss", accuracy: false },
  val_perplexity: { label: "validation perplexity", accuracy: false },
  train_loss: { label: "training loss", accuracy: false },
};

/** The curves a job offers, its judged metric first (``judged``: metric.js's): a classifier has
 * no perplexity; a language model has all four (its accuracy is next-character accuracy). */
export function curveMetrics(judged) {
  const rest = Object.keys(METRICS).filter((name) => name !== judged.key);
  return [judged.key, ...(judged.name === "perplexity" ? rest : rest.filter(
    (name) => name !== "val_perplexity"))];
}
export const SEARCH_VARIANT = "sn";

/** {trial_id: [{epoch, value}] ascending by epoch} of one metric (the newest value of an epoch
 * wins, so a replayed epoch is drawn once). */
export function pointsByTrial(points, metric) {
  const byTrial = new Map();
  for (const p of points) {
    if (p.name !== metric || !Number.isFinite(p.value)) continue;
    if (!byTrial.has(p.trial_id)) byTrial.set(p.trial_id, new Map());
    byTrial.get(p.trial_id).set(p.epoch, p.value);
  }
  const out = new Map();
  for (const [trial, epochs] of byTrial) {
    out.set(trial, [...epochs].sort((a, b) => a[0] - b[0]).map(([epoch, value]) => ({ epoch, value })));
  }
  return out;
}

/** The final-epoch and best-epoch points of one line ({epoch, value} each; null when empty).
 * Best: the highest value (accuracy) or the lowest (loss); ties go to the earlier epoch. */
export function finalAndBest(line, higherIsBetter = true) {
  if (!line.length) return { final: null, best: null };
  let best = line[0];
  for (const p of line) {
    if (higherIsBetter ? p.value > best.value : p.value < best.value) best = p;
  }
  return { final: line.at(-1), best };
}

/** How a verification configuration is named: "plan", "all-BN" (labels: the vocabulary's). */
export function configurationLabel(variant, labels = {}) {
  return variant === "plan" ? "plan" : `all-${labels[variant] ?? String(variant).toUpperCase()}`;
}

/** One line per search trial (variant ``sn``), in trial id order: {key, trialId, seed, batch,
 * label, points}. */
export function searchSeries(trials, points, metric) {
  const lines = pointsByTrial(points, metric);
  return trials
    .filter((t) => t.variant === SEARCH_VARIANT)
    .sort((a, b) => a.id - b.id)
    .map((t) => {
      const { seed, batch } = trialConfig(t);
      return {
        key: `trial-${t.id}`, trialId: t.id, seed, batch,
        label: `#${t.number} · seed ${seed ?? "?"} · batch ${batch ?? "?"}`,
        points: lines.get(t.id) || [],
      };
    });
}

/**
 * One entry per verification configuration, "plan" first, then the baselines in the order they
 * first appear: {key, variant, label, seeds: [{seed, trialId, points}], mean: [{epoch, value,
 * n}]}. ``mean`` at an epoch averages the seeds that reached it (``n`` says how many).
 */
export function configurationSeries(trials, points, metric, labels = {}) {
  const lines = pointsByTrial(points, metric);
  const groups = new Map();
  const verification = trials.filter((t) => t.variant !== SEARCH_VARIANT).sort((a, b) => a.id - b.id);
  for (const t of verification) {
    if (!groups.has(t.variant)) groups.set(t.variant, []);
    groups.get(t.variant).push({ seed: trialConfig(t).seed, trialId: t.id, points: lines.get(t.id) || [] });
  }
  const order = [...groups.keys()].sort((a, b) => (a === "plan" ? -1 : b === "plan" ? 1 : 0));
  return order.map((variant) => {
    const seeds = groups.get(variant).sort((a, b) => (a.seed ?? 0) - (b.seed ?? 0));
    return { key: `config-${variant}`, variant, label: configurationLabel(variant, labels), seeds, mean: meanLine(seeds) };
  });
}

/** The per-epoch mean over ``seeds``' lines, with the count of seeds at each epoch. */
export function meanLine(seeds) {
  const sums = new Map();
  for (const { points } of seeds) {
    for (const p of points) {
      const s = sums.get(p.epoch) || { total: 0, n: 0 };
      s.total += p.value;
      s.n += 1;
      sums.set(p.epoch, s);
    }
  }
  return [...sums].sort((a, b) => a[0] - b[0])
    .map(([epoch, s]) => ({ epoch, value: s.total / s.n, n: s.n }));
}

/** The x and y ranges of the lines: {epochs: [lo, hi], values: [lo, hi]} (null when empty). */
export function extent(lines) {
  let e0 = Infinity, e1 = -Infinity, v0 = Infinity, v1 = -Infinity;
  for (const line of lines) {
    for (const p of line) {
      e0 = Math.min(e0, p.epoch); e1 = Math.max(e1, p.epoch);
      v0 = Math.min(v0, p.value); v1 = Math.max(v1, p.value);
    }
  }
  return Number.isFinite(e0) ? { epochs: [e0, e1], values: [v0, v1] } : null;
}
