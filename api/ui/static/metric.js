// What a job is judged by, as the API says it (a job's ``metric``, a verification's
// ``metric_name``: service/metrics.py): validation accuracy for a classifier, validation
// perplexity (lower is better) for a language model. Every table and curve that shows "the"
// metric of a job reads it here, so that a language model's pages never say accuracy where its
// trials are judged by perplexity.

import { finalAndBest } from "./curves.js";
import { fmtNum, fmtPct } from "./util.js";

const JUDGED = {
  accuracy: {
    name: "accuracy", key: "val_accuracy", label: "validation accuracy", short: "val. acc.",
    higherIsBetter: true, fmt: (v, digits = 1) => fmtPct(v, digits),
  },
  perplexity: {
    name: "perplexity", key: "val_perplexity", label: "validation perplexity", short: "val. ppl",
    higherIsBetter: false, fmt: (v, digits = 2) => fmtNum(v, digits),
  },
};

/** The metric named ``name`` ("accuracy" or "perplexity"); accuracy for anything else (a job
 * or report from before language models, which has no name). */
export function judgedMetric(name) {
  return JUDGED[name] ?? JUDGED.accuracy;
}

/** A trial's final-epoch and best-epoch points of ``metric`` ({epoch, value} each, or null)
 * from its per-epoch ``line`` ([{epoch, value}] ascending; best: the highest accuracy or the
 * lowest perplexity). Before its line is loaded, ``best`` is the trial's stored best
 * (``best_metrics``, whose epoch is the best accuracy's: none for a perplexity). */
export function trialValues(line, bestMetrics, metric) {
  if (line?.length) return finalAndBest(line, metric.higherIsBetter);
  const stored = bestMetrics?.[metric.key];
  if (stored === null || stored === undefined) return { final: null, best: null };
  const epoch = metric.higherIsBetter ? bestMetrics.epoch ?? null : null;
  return { final: null, best: { value: stored, epoch } };
}
