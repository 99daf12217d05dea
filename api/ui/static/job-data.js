// The job page's data rules, apart from its DOM code (page-job.js) so that they can be unit
// tested: which trial to show, what a `ratios` event asks to load, the layers in network order,
// and the bounded ratio history of one layer.

/** A trial's seed, batch size and base lr: Ray's config nests them under ``trial`` (older rows:
 * flat). */
export function trialConfig(t) {
  const c = t.config || {};
  const inner = c.trial || {};
  return {
    seed: inner.seed ?? c.seed, batch: inner.batch_size ?? c.batch_size, lr: inner.lr ?? c.lr,
  };
}

/** A trial's base lr and the lr it trains with (the API's ``effective_lr``: the base scaled to
 * its batch size by the spec's ``training.lr_scaling``); unscaled when the row has none. */
export function trialLr(t) {
  const { lr } = trialConfig(t);
  return { base: lr, effective: t.effective_lr ?? lr };
}

/** The search trial shown first: the one at the job's target batch size, else the first. */
export function defaultTrial(search, targetBatchSize) {
  return search.find((t) => trialConfig(t).batch === targetBatchSize) || search[0];
}

/** The Last-Event-ID to resume after: the highest numeric id seen, or null. */
export function lastEventId(ids) {
  const numbers = [...ids].map(Number).filter(Number.isFinite);
  return numbers.length ? Math.max(...numbers) : null;
}

/**
 * What a `ratios` event ({trial_id: newest step}) asks for: the newest step of the selected
 * trial (``newest``), the selected layer's new steps (``evolution``), and whether the trials
 * table must be read now (``trialsNow``: a trial it does not list yet, or none selected) rather
 * than throttled. ``view``: {trials, trialId, newestStep, evolutionLayer, evolutionStep}.
 */
export function ratiosNews(data, view) {
  const news = { newest: false, evolution: false, trialsNow: view.trialId === null };
  for (const [trial, step] of Object.entries(data)) {
    const id = Number(trial);
    if (!view.trials.some((t) => t.id === id)) news.trialsNow = true;
    if (id === view.trialId) {
      if (view.newestStep === null || step > view.newestStep) news.newest = true;
      if (view.evolutionLayer && (view.evolutionStep === null || step > view.evolutionStep)) {
        news.evolution = true;
      }
    }
  }
  return news;
}

/** The newest point of each layer (a Map layer -> point) in network order. */
export function orderedLayers(newestByLayer) {
  return [...newestByLayer.values()].sort((a, b) => a.layer_index - b.layer_index);
}

/** "step S · epoch E · N layers · F fixed" of the newest points (F: both parts fixed). */
export function stepInfo(layers, step) {
  const epoch = layers.reduce((e, p) => Math.max(e, p.epoch), 0);
  const fixed = layers.filter((p) => p.mean_fixed && p.var_fixed).length;
  return `step ${step} · epoch ${epoch} · ${layers.length} layers · ${fixed} fixed`;
}

/** Every other point, and always the last one (the newest step stays drawn). */
export function halvePoints(points) {
  return points.filter((p, i) => i % 2 === 0 || i === points.length - 1);
}

/**
 * Add one /ratios answer (``answer.points`` ascending by step, ``last_step``, ``downsampled``)
 * to a held layer history ``held`` = {points, lastStep, downsampled}, in place. ``after`` is
 * the step the request asked after (null: the first read, which sets ``downsampled``); points
 * not after it are dropped. Past 1.5 x ``maxPoints`` the history is halved (evenly, newest point
 * kept), so a long live job stays bounded in memory and drawing time.
 */
export function extendHistory(held, answer, after, maxPoints) {
  held.points.push(...answer.points.filter((p) => after === null || p.step > after));
  held.lastStep = answer.last_step;
  if (after === null) held.downsampled = answer.downsampled;
  if (held.points.length > maxPoints * 1.5) {
    held.points = halvePoints(held.points);
    held.downsampled = true;
  }
  return held;
}
