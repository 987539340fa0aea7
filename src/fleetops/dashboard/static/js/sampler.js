// Live series without the history API: the page samples /metrics (the Prometheus text
// format) every few seconds and keeps what it saw since it opened. Rates and
// quantiles are computed over a sliding window the way PromQL's rate() and
// histogram_quantile() do, so the charts read the same as they will from history.

const WINDOW_SECONDS = 30;
const KEEP_SECONDS = 3600;

/** Parse the Prometheus text exposition format into Map(name → [{labels, value}]). */
export function parsePrometheus(text) {
  const metrics = new Map();
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!match) continue;
    const [, name, labelText, valueText] = match;
    const value = parseValue(valueText);
    if (Number.isNaN(value)) continue;
    if (!metrics.has(name)) metrics.set(name, []);
    metrics.get(name).push({ labels: parseLabels(labelText || ""), value });
  }
  return metrics;
}

function parseValue(text) {
  if (text === "+Inf" || text === "Inf") return Infinity;
  if (text === "-Inf") return -Infinity;
  return Number(text);
}

function parseLabels(text) {
  const labels = {};
  const pattern = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
  for (const [, key, raw] of text.matchAll(pattern)) {
    labels[key] = raw.replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
  }
  return labels;
}

const keyOf = (labels, names) => JSON.stringify(names.map((n) => labels[n] ?? ""));
const fullKey = (labels) =>
  JSON.stringify(Object.keys(labels).sort().map((k) => [k, labels[k]]));

/** Prometheus' histogram_quantile over cumulative [le, count] pairs sorted by le. */
export function histogramQuantile(q, buckets) {
  if (buckets.length === 0) return null;
  const total = buckets[buckets.length - 1][1];
  if (!(total > 0)) return null;
  const rank = q * total;
  let lowerBound = 0;
  let lowerCount = 0;
  for (const [le, count] of buckets) {
    if (count >= rank) {
      if (le === Infinity) return lowerBound;
      if (count === lowerCount) return le;
      return lowerBound + (le - lowerBound) * ((rank - lowerCount) / (count - lowerCount));
    }
    lowerBound = le;
    lowerCount = count;
  }
  return lowerBound;
}

/** The samples of the metrics the charts need, one snapshot per poll. */
export class Sampler {
  constructor(names) {
    this.wanted = new Set();
    for (const name of names) {
      for (const suffix of ["", "_bucket", "_sum", "_count"]) this.wanted.add(name + suffix);
    }
    this.snapshots = [];
  }

  /** Add a snapshot of ``text`` (a /metrics body) taken at ``t`` seconds. */
  add(text, t = Date.now() / 1000) {
    const all = parsePrometheus(text);
    const kept = new Map();
    for (const [name, samples] of all) if (this.wanted.has(name)) kept.set(name, samples);
    this.snapshots.push({ t, metrics: kept });
    while (this.snapshots.length && this.snapshots[0].t < t - KEEP_SECONDS) this.snapshots.shift();
  }

  get size() {
    return this.snapshots.length;
  }

  /**
   * ``{series: [{labels, points}]}`` as the history API answers it, for ``fn`` of
   * ``metric`` grouped by the ``by`` labels over the last ``rangeSeconds``.
   */
  query(metric, fn, by, rangeSeconds) {
    const snaps = this.snapshots;
    if (snaps.length === 0) return { series: [] };
    const since = snaps[snaps.length - 1].t - rangeSeconds;
    const isHistogram = snaps.some((s) => s.metrics.has(`${metric}_bucket`));
    const groups = new Map();
    const point = (labels, t, value) => {
      const key = keyOf(labels, by);
      if (!groups.has(key)) {
        groups.set(key, { labels: Object.fromEntries(by.map((n) => [n, labels[n] ?? ""])), points: [] });
      }
      groups.get(key).points.push([t, value]);
    };
    for (let i = 0; i < snaps.length; i += 1) {
      const snap = snaps[i];
      if (snap.t < since) continue;
      if (fn === "rate" || fn === "increase") {
        const j = this.windowStart(i);
        if (j === null) continue;
        for (const [labels, delta] of this.deltas(metric, j, i, by)) {
          point(labels, snap.t, fn === "rate" ? delta / (snap.t - snaps[j].t) : delta);
        }
      } else if (isHistogram && (fn === "p95" || fn === "p50" || fn === "avg")) {
        const j = this.windowStart(i);
        if (j === null) continue;
        for (const [labels, value] of this.histogramValues(metric, fn, j, i, by)) {
          point(labels, snap.t, value);
        }
      } else {
        for (const [labels, values] of this.grouped(snap, metric, by)) {
          let value;
          if (fn === "max") value = Math.max(...values);
          else if (fn === "avg") value = values.reduce((a, b) => a + b, 0) / values.length;
          else value = values.reduce((a, b) => a + b, 0);
          point(labels, snap.t, value);
        }
      }
    }
    return { series: [...groups.values()] };
  }

  /** The snapshot a window ending at snapshot ``i`` starts from, or null at the start. */
  windowStart(i) {
    if (i === 0) return null;
    const from = this.snapshots[i].t - WINDOW_SECONDS;
    let j = i - 1;
    while (j > 0 && this.snapshots[j - 1].t >= from) j -= 1;
    return j;
  }

  grouped(snap, name, by) {
    const out = new Map();
    for (const { labels, value } of snap.metrics.get(name) ?? []) {
      const key = keyOf(labels, by);
      if (!out.has(key)) out.set(key, [labels, []]);
      out.get(key)[1].push(value);
    }
    return [...out.values()];
  }

  /** Per group, the counter's rise from snapshot ``j`` to ``i`` (resets counted from 0). */
  deltas(name, j, i, by, extraKey = null) {
    const before = new Map();
    for (const { labels, value } of this.snapshots[j].metrics.get(name) ?? []) {
      before.set(fullKey(labels), value);
    }
    const out = new Map();
    for (const { labels, value } of this.snapshots[i].metrics.get(name) ?? []) {
      const prev = before.get(fullKey(labels)) ?? 0;
      const delta = value >= prev ? value - prev : value;
      const key = keyOf(labels, by) + (extraKey ? `|${labels[extraKey]}` : "");
      if (!out.has(key)) out.set(key, [labels, 0]);
      out.get(key)[1] += delta;
    }
    return [...out.values()];
  }

  histogramValues(name, fn, j, i, by) {
    if (fn === "avg") {
      const sums = new Map(this.deltas(`${name}_sum`, j, i, by).map(([l, v]) => [keyOf(l, by), v]));
      return this.deltas(`${name}_count`, j, i, by).map(([labels, count]) => [
        labels,
        count > 0 ? (sums.get(keyOf(labels, by)) ?? 0) / count : null,
      ]);
    }
    const q = fn === "p95" ? 0.95 : 0.5;
    const groups = new Map();
    for (const [labels, delta] of this.deltas(`${name}_bucket`, j, i, by, "le")) {
      const key = keyOf(labels, by);
      if (!groups.has(key)) groups.set(key, [labels, []]);
      groups.get(key)[1].push([parseValue(labels.le), delta]);
    }
    return [...groups.values()].map(([labels, buckets]) => [
      labels,
      histogramQuantile(q, buckets.sort((a, b) => a[0] - b[0])),
    ]);
  }
}
