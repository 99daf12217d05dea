"""One router per resource: jobs, job history (trials, ratios, metrics, events), job outputs,
tokens, health."""
