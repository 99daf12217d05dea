// The jobs list's result column: a succeeded job's result as the worker wrote it (the verdict's
// configuration and its final-epoch accuracy with the spread over the seeds), a failed job's
// reason, "-" for anything else, including jobs that succeeded before results were recorded.

const MAX_REASON = 90;

/** {text, kind, title}: kind "result", "failure" or "none"; title the full text. */
export function resultCell(job) {
  if (job.result?.text) return { text: job.result.text, kind: "result", title: job.result.text };
  if (job.status === "failed" && job.error) {
    const text = job.error.length > MAX_REASON ? `${job.error.slice(0, MAX_REASON - 1)}…` : job.error;
    return { text: `failed: ${text}`, kind: "failure", title: job.error };
  }
  return { text: "-", kind: "none", title: "" };
}
