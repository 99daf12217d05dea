// The jobs list's state in the hash (#/jobs?status=running&sort=status&offset=20), apart from
// its DOM code (page-jobs.js): the back button and reloads keep the filter, sort and page, and a
// hand-edited hash falls back to the defaults instead of sending the API a bad query.

export const DEFAULT_SORT = "-created_at";

/**
 * {status, sort, offset} of a #/jobs hash: a status not in ``statuses`` -> "" (all), a sort not
 * in ``sorts`` -> DEFAULT_SORT, an offset that is not a non-negative integer -> 0.
 */
export function readJobsQuery(hash, { statuses, sorts }) {
  const query = new URLSearchParams(hash.split("?")[1] || "");
  return {
    status: statuses.includes(query.get("status")) ? query.get("status") : "",
    sort: sorts.includes(query.get("sort")) ? query.get("sort") : DEFAULT_SORT,
    offset: Math.max(0, Number.parseInt(query.get("offset") || "0", 10) || 0),
  };
}

/** The hash of a state: only what differs from the defaults (the plain list is #/jobs). */
export function jobsHash({ status, sort, offset }) {
  const params = new URLSearchParams();
  if (status) params.set("status", status);
  if (sort !== DEFAULT_SORT) params.set("sort", sort);
  if (offset) params.set("offset", offset);
  const search = params.toString();
  return `#/jobs${search ? `?${search}` : ""}`;
}

/** The offset of the last page of ``total`` jobs (a page past the end moves back to it). */
export function lastPageOffset(total, pageSize) {
  return Math.max(0, Math.floor((total - 1) / pageSize) * pageSize);
}

/** The pager's "from–to of total" (1-based; "0–0 of 0" for no jobs). */
export function pageRange(offset, shown, total) {
  const from = total ? offset + 1 : 0;
  const to = Math.min(offset + shown, total);
  return `${from}–${to} of ${total}`;
}
