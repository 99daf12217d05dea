// The API's vocabulary (GET /api/v1/vocabulary): job statuses, artifact kinds, the statistics
// normalizers (the keys of a snapshot's mean and var), the output choices (the keys of its
// output: the normalized output, then the point-wise members) and every pool member, with
// their labels. The UI keeps no copy of these names: app.js loads them once, after login
// (the route needs a token), before it renders a page; the pages read the containers below.

import { request } from "./api.js";

export const JOB_STATUSES = [];
export const FINISHED_STATUSES = new Set();
export const ACTIVE_STATUSES = new Set(); // the statuses that are not finished
export const ARTIFACT_KINDS = [];
export const NORMS = [];
export const NORM_LABELS = {};
export const OUTPUTS = [];
export const OUTPUT_LABELS = {};
export const MEMBERS = []; // [{name, label, kind: "statistics" | "pointwise"}]

let loaded = false;
let pending = null;

/** Fill the containers from a vocabulary answer ({statuses, finished_statuses, ...}). */
export function setVocabulary(vocabulary) {
  const finished = new Set(vocabulary.finished_statuses);
  JOB_STATUSES.splice(0, JOB_STATUSES.length, ...vocabulary.statuses);
  FINISHED_STATUSES.clear();
  ACTIVE_STATUSES.clear();
  for (const status of vocabulary.statuses) {
    (finished.has(status) ? FINISHED_STATUSES : ACTIVE_STATUSES).add(status);
  }
  ARTIFACT_KINDS.splice(0, ARTIFACT_KINDS.length, ...vocabulary.artifact_kinds);
  NORMS.splice(0, NORMS.length, ...vocabulary.normalizers.map((n) => n.name));
  for (const key of Object.keys(NORM_LABELS)) delete NORM_LABELS[key];
  for (const n of vocabulary.normalizers) NORM_LABELS[n.name] = n.label;
  // An API from before the point-wise members has neither list: no output ratios to show.
  const outputs = vocabulary.output_choices || [];
  OUTPUTS.splice(0, OUTPUTS.length, ...outputs.map((n) => n.name));
  for (const key of Object.keys(OUTPUT_LABELS)) delete OUTPUT_LABELS[key];
  for (const n of outputs) OUTPUT_LABELS[n.name] = n.label;
  MEMBERS.splice(0, MEMBERS.length, ...(vocabulary.members || []));
  loaded = true;
}

export function vocabularyLoaded() { return loaded; }

/** Fetch the vocabulary once; concurrent calls share the request, a failed one is retried. */
export function loadVocabulary() {
  if (!pending) {
    pending = request("vocabulary").then(setVocabulary, (error) => {
      pending = null;
      throw error;
    });
  }
  return pending;
}
