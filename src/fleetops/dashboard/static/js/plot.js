// Line charts: uPlot when its npm package is installed, else plain SVG drawn here.
// Both take the same input, series of [timestamp, value] points, and both keep a
// text legend with the latest values, which is also what a screen reader reads.

import { fmtClock, fmtValue, h, fill, toSeconds } from "./dom.js";

// Okabe–Ito colours, distinguishable with the common colour-vision deficiencies.
export const PALETTE = ["#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000", "#8c6d31"];
const MAX_SERIES = PALETTE.length;
const HEIGHT = 170;

let library = null;

/** Load uPlot from the folder the server serves it from; null when it is not there. */
export async function loadChartLibrary() {
  try {
    const module = await import("../vendor/uplot/uPlot.esm.js");
    library = module.default;
    document.head.append(h("link", { rel: "stylesheet", href: "static/vendor/uplot/uPlot.min.css" }));
  } catch {
    library = null;
  }
  return library !== null;
}

/** Align series on one sorted time axis, as uPlot wants: [[xs], [ys of each series]]. */
export function align(series) {
  const times = new Set();
  const maps = series.map((s) => {
    const m = new Map();
    for (const [t, v] of s.points) {
      const x = toSeconds(t);
      if (x === null) continue;
      times.add(x);
      m.set(x, v === null || v === undefined || !Number.isFinite(Number(v)) ? null : Number(v));
    }
    return m;
  });
  const xs = [...times].sort((a, b) => a - b);
  return [xs, ...maps.map((m) => xs.map((x) => (m.has(x) ? m.get(x) : null)))];
}

/** One chart in ``container``; ``update(series)`` redraws it in place. */
export class LineChart {
  constructor(container, { title, unit, emptyText = "No data in this range yet" }) {
    this.container = container;
    this.emptyText = emptyText;
    this.title = title;
    this.unit = unit;
    this.series = [];
    this.data = [[]];
    this.plot = null;
    this.area = h("div", { class: "plot", role: "img", "aria-label": `${title}: no data yet` });
    this.legend = h("ul", { class: "legend", "aria-label": `${title}: latest values` });
    this.emptyNote = h("div", { class: "plot-empty" }, "No data yet");
    this.area.append(this.emptyNote);
    fill(container, this.area, this.legend);
    this.resizer = new ResizeObserver(() => this.resize());
    this.resizer.observe(this.area);
  }

  get renderer() {
    return library ? "uplot" : "svg";
  }

  /** Draw ``series`` ([{label, points}]); answers how many points have a value. */
  update(series) {
    const shown = series.slice(0, MAX_SERIES);
    const data = align(shown);
    const labelsChanged =
      shown.length !== this.series.length || shown.some((s, i) => s.label !== this.series[i].label);
    this.series = shown;
    this.data = data;
    const points = data.slice(1).reduce((n, ys) => n + ys.filter((y) => y !== null).length, 0);
    this.emptyNote.textContent = this.emptyText;
    this.emptyNote.hidden = points > 0;
    if (library) this.drawUPlot(labelsChanged);
    else this.drawSvg();
    this.drawLegend(null);
    return points;
  }

  showError(text) {
    this.emptyNote.textContent = text;
    this.emptyNote.hidden = false;
  }

  resize() {
    const width = this.area.clientWidth;
    if (width === 0) return;
    if (this.plot) this.plot.setSize({ width, height: HEIGHT });
    else if (!library && this.series.length) this.drawSvg();
  }

  drawLegend(index) {
    const items = this.series.map((s, i) => {
      const ys = this.data[i + 1];
      let value = null;
      if (index !== null && index !== undefined) value = ys[index];
      else for (let k = ys.length - 1; k >= 0 && value === null; k -= 1) value = ys[k];
      return { label: s.label, value, colour: PALETTE[i] };
    });
    fill(
      this.legend,
      items.map((it) =>
        h("li", {},
          h("span", { class: "swatch", style: `background:${it.colour}`, "aria-hidden": "true" }),
          h("span", {}, it.label),
          h("span", { class: "value" }, fmtValue(it.value, this.unit))),
      ),
    );
    const summary = items.length
      ? items.map((it) => `${it.label} ${fmtValue(it.value, this.unit)}`).join(", ")
      : "no data yet";
    this.area.setAttribute("aria-label", `${this.title}: ${summary}`);
  }

  // --- uPlot ---------------------------------------------------------------------------

  drawUPlot(rebuild) {
    const width = this.area.clientWidth || 300;
    if (this.plot && !rebuild) {
      this.plot.setData(this.data);
      return;
    }
    if (this.plot) this.plot.destroy();
    const unit = this.unit;
    const axis = { stroke: "#4f5862", grid: { stroke: "#eaeef2", width: 1 }, ticks: { stroke: "#d0d7de", width: 1 } };
    this.plot = new library(
      {
        width,
        height: HEIGHT,
        legend: { show: false },
        cursor: { drag: { x: false, y: false } },
        scales: {
          // The data's own extent: for a lone timestamp uPlot would span years (it pads
          // by a day in milliseconds), so show a minute around it instead.
          x: { time: true, range: () => xExtent(this.data[0]) },
          y: { range: (u, min, max) => yRange(min, max, unit) },
        },
        series: [
          {},
          ...this.series.map((s, i) => ({
            label: s.label,
            stroke: PALETTE[i],
            width: 1.75,
            spanGaps: false,
          })),
        ],
        axes: [
          {
            ...axis,
            font: "10px system-ui, sans-serif",
            space: 70,
            values: (u, ticks) => {
              const [x0, x1] = [u.scales.x.min, u.scales.x.max];
              return ticks.map((t) => (x1 - x0 > 1800 ? fmtClock(t).slice(0, 5) : fmtClock(t)));
            },
          },
          {
            ...axis,
            font: "10px system-ui, sans-serif",
            size: 62,
            values: (u, ticks) => ticks.map((v) => fmtValue(v, unit)),
          },
        ],
        hooks: {
          setCursor: [(u) => this.drawLegend(u.cursor.idx ?? null)],
        },
      },
      this.data,
      this.area,
    );
  }

  // --- SVG fallback ------------------------------------------------------------------

  drawSvg() {
    const width = this.area.clientWidth || 300;
    const [xs, ...ys] = this.data;
    const left = 62;
    const right = 8;
    const top = 8;
    const bottom = 20;
    const ns = "http://www.w3.org/2000/svg";
    const el = (tag, attrs, text) => {
      const node = document.createElementNS(ns, tag);
      for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
      if (text !== undefined) node.textContent = text;
      return node;
    };
    const svg = el("svg", { viewBox: `0 0 ${width} ${HEIGHT}`, "aria-hidden": "true", focusable: "false" });
    const values = ys.flat().filter((v) => v !== null);
    if (xs.length && values.length) {
      const [lo, hi] = yRange(Math.min(...values), Math.max(...values), this.unit);
      const step = niceStep(hi - lo);
      const [x0, x1] = xExtent(xs);
      const px = (x) => left + ((x - x0) / (x1 - x0)) * (width - left - right);
      const py = (y) => top + (1 - (y - lo) / (hi - lo)) * (HEIGHT - top - bottom);
      for (let y = lo; y <= hi + step / 1000; y += step) {
        svg.append(el("line", { class: "grid", x1: left, x2: width - right, y1: py(y), y2: py(y) }));
        svg.append(el("text", { x: left - 6, y: py(y) + 3, "text-anchor": "end" }, fmtValue(y, this.unit)));
      }
      svg.append(el("line", { class: "axis", x1: left, x2: width - right, y1: py(lo), y2: py(lo) }));
      for (const [x, anchor] of [[x0, "start"], [(x0 + x1) / 2, "middle"], [x1, "end"]]) {
        svg.append(el("text", { x: px(x), y: HEIGHT - 5, "text-anchor": anchor }, fmtClock(x)));
      }
      ys.forEach((series, i) => {
        let d = "";
        let pen = "M";
        series.forEach((y, k) => {
          if (y === null) {
            pen = "M";
            return;
          }
          d += `${pen}${px(xs[k]).toFixed(1)},${py(y).toFixed(1)} `;
          pen = "L";
        });
        if (d) {
          svg.append(el("path", { d, fill: "none", stroke: PALETTE[i], "stroke-width": 1.75, "stroke-linejoin": "round" }));
        }
        // A lone point between gaps would not show as a line: mark it.
        series.forEach((y, k) => {
          const alone = y !== null && (series[k - 1] ?? null) === null && (series[k + 1] ?? null) === null;
          if (alone) svg.append(el("circle", { cx: px(xs[k]), cy: py(y), r: 2, fill: PALETTE[i] }));
        });
      });
    }
    const old = this.area.querySelector("svg");
    if (old) old.replaceWith(svg);
    else this.area.prepend(svg);
  }
}

function xExtent(xs) {
  if (!xs.length) return [Date.now() / 1000 - 60, Date.now() / 1000];
  const first = xs[0];
  const last = xs[xs.length - 1];
  return last > first ? [first, last] : [first - 30, last + 30];
}

/** A round tick step (1, 2, 2.5 or 5 times a power of ten) giving about ``count`` ticks. */
function niceStep(span, count = 4) {
  const raw = span / count;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const norm = raw / magnitude;
  const nice = norm <= 1 ? 1 : norm <= 2 ? 2 : norm <= 2.5 ? 2.5 : norm <= 5 ? 5 : 10;
  return nice * magnitude;
}

/** The y axis: from zero (or below), to a round value above the data; ratios to 100 %. */
function yRange(min, max, unit) {
  if (min === null || max === null || !Number.isFinite(min) || !Number.isFinite(max)) {
    return [0, 1];
  }
  let lo = Math.min(0, min);
  let hi = max;
  if (unit === "ratio" && hi <= 1) return [lo, 1];
  if (hi <= lo) hi = lo + (Math.abs(lo) || 1);
  const step = niceStep(hi - lo);
  lo = Math.floor(lo / step) * step;
  hi = Math.ceil((hi * 1.02) / step) * step;
  return [lo, hi];
}
