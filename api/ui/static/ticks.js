// Axis ticks for the SVG charts: evenly spaced at a "nice" step (1, 2 or 5 times a power of ten,
// and 2.5 for continuous axes), every tick labelled, no label repeated or skipped. Integer axes
// (epochs, steps) never get fractional ticks, however short the range.

const INTEGER_STEPS = [1, 2, 5];
const CONTINUOUS_STEPS = [1, 2, 2.5, 5];

/** The smallest nice step (``mantissas`` x 10^k) at least ``raw``. */
function niceStep(raw, mantissas) {
  const power = 10 ** Math.floor(Math.log10(raw));
  for (const m of mantissas) if (m * power >= raw - 1e-12 * power) return m * power;
  return 10 * power;
}

/**
 * Integer ticks for [lo, hi] (e.g. epochs 1..37): the multiples of a nice integer step inside
 * the range, at most ``maxTicks`` of them (and at least one: ``lo`` itself when the range holds
 * no multiple, e.g. a single epoch). Returns {ticks, step}.
 */
export function integerTicks(lo, hi, maxTicks = 8) {
  const a = Math.ceil(Math.min(lo, hi));
  const b = Math.floor(Math.max(lo, hi));
  if (!(Number.isFinite(a) && Number.isFinite(b)) || b < a) return { ticks: [], step: 1 };
  if (a === b) return { ticks: [a], step: 1 };
  // The smallest nice step (1, 2, 5, 10, 20, ...) whose multiples in range fit in maxTicks.
  for (let power = 1; ; power *= 10) {
    for (const m of INTEGER_STEPS) {
      const ticks = multiples(a, b, m * power);
      if (ticks.length <= Math.max(1, maxTicks)) {
        return { ticks: ticks.length ? ticks : [a], step: m * power };
      }
    }
  }
}

function multiples(a, b, step) {
  const out = [];
  for (let t = Math.ceil(a / step) * step; t <= b; t += step) out.push(t);
  return out;
}

/**
 * A continuous axis for values in [lo, hi] (e.g. losses): the domain widened to multiples of a
 * nice step and the ticks at each multiple (at most ``maxTicks``), with the decimals a label
 * needs so that no two labels read the same. Returns {lo, hi, ticks, step, decimals}.
 */
export function niceDomain(lo, hi, maxTicks = 6) {
  let a = Math.min(lo, hi);
  let b = Math.max(lo, hi);
  if (!(Number.isFinite(a) && Number.isFinite(b))) return niceDomain(0, 1, maxTicks);
  if (a === b) {
    const pad = Math.abs(a) > 0 ? Math.abs(a) * 0.1 : 1;
    a -= pad;
    b += pad;
  }
  let step = niceStep((b - a) / Math.max(1, maxTicks - 1), CONTINUOUS_STEPS);
  let low = Math.floor(a / step + 1e-9) * step;
  let high = Math.ceil(b / step - 1e-9) * step;
  while (Math.round((high - low) / step) + 1 > maxTicks) {
    step = niceStep(step * 1.01, CONTINUOUS_STEPS);
    low = Math.floor(a / step + 1e-9) * step;
    high = Math.ceil(b / step - 1e-9) * step;
  }
  const count = Math.round((high - low) / step);
  const decimals = Math.max(0, -Math.floor(Math.log10(step) + 1e-9) + (isQuarter(step) ? 1 : 0));
  const ticks = Array.from({ length: count + 1 }, (_, i) => round(low + i * step, decimals));
  return { lo: ticks[0], hi: ticks.at(-1), ticks, step, decimals };
}

// 2.5 x 10^k needs one more decimal than its power of ten (0.25, 2.5).
function isQuarter(step) {
  const m = step / 10 ** Math.floor(Math.log10(step) + 1e-9);
  return Math.abs(m - 2.5) < 1e-9;
}

function round(value, decimals) {
  const f = 10 ** decimals;
  const r = Math.round(value * f) / f;
  return Object.is(r, -0) ? 0 : r;
}

/** A tick's label with ``decimals`` digits. */
export function tickLabel(value, decimals = 0) {
  return Number(value).toFixed(decimals);
}
