// The metrics view: throughput, latency and errors, and the seed's six multi-agent
// metrics, polled from the history API and redrawn in place. While this API has no
// history endpoint, the page samples /metrics itself (see sampler.js).

import { getJSON, getText } from "./api.js";
import { fill, h } from "./dom.js";
import { LineChart } from "./plot.js";
import { Sampler } from "./sampler.js";

export const GOLDEN_CHARTS = [
  {
    id: "throughput", title: "Throughput", unit: "/s",
    metric: "fleetops_task_attempts_total", fn: "rate", by: ["cluster"],
    help: "Task attempts finished per second, by cluster.",
  },
  {
    id: "latency", title: "Latency p95", unit: "s",
    metric: "fleetops_task_duration_seconds", fn: "p95", by: ["cluster"],
    help: "95th percentile of an attempt's run time, by cluster.",
  },
  {
    id: "errors", title: "Errors", unit: "/s",
    metric: "fleetops_task_attempts_total", fn: "rate", by: ["outcome"],
    exclude: { outcome: ["succeeded"] },
    emptyText: "No failed attempt in this range",
    help: "Attempts per second that did not succeed, by outcome.",
  },
];

export const SEED_CHARTS = [
  {
    id: "coordination", title: "Coordination efficiency p95", unit: "s",
    metric: "agent_coordination_efficiency", fn: "p95", by: ["cluster"],
    help: "Seconds until every task a coordinator started has answered.",
  },
  {
    id: "consensus", title: "Consensus success rate", unit: "ratio",
    metric: "consensus_success_rate", fn: "avg", by: ["cluster"],
    help: "Share of votes that reached a decision (last 100 rounds).",
  },
  {
    id: "delivery", title: "Message delivery latency p95", unit: "ms",
    metric: "message_delivery_latency", fn: "p95", by: ["target_cluster"],
    help: "From a message being sent to an agent starting on it, by target cluster.",
  },
  {
    id: "utilization", title: "Agent utilization", unit: "ratio",
    metric: "agent_utilization", fn: "avg", by: ["cluster"],
    help: "Busy share of the workers' agent slots, by cluster.",
  },
  {
    id: "reasoning", title: "Reasoning chain length p95", unit: "steps",
    metric: "reasoning_chain_length", fn: "p95", by: ["cluster", "agent"],
    help: "Thought, tool call and observation rounds per reasoning chain.",
  },
  {
    id: "planning", title: "Planning success rate", unit: "ratio",
    metric: "planning_success_rate", fn: "avg", by: ["cluster", "agent"],
    help: "Share of plans that succeeded (each agent's last 100).",
  },
];

const ALL_CHARTS = [...GOLDEN_CHARTS, ...SEED_CHARTS];
const RANGES = { "5m": 300, "15m": 900, "1h": 3600, "6h": 21600, "24h": 86400 };

/** A step giving about 90 points over the range, rounded to a readable duration. */
function stepFor(rangeSeconds) {
  const nice = [5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600];
  const want = rangeSeconds / 90;
  const step = nice.find((s) => s >= want) ?? 3600;
  return step < 60 ? `${step}s` : `${step / 60}m`;
}

function labelOf(labels, by) {
  const parts = by.map((name) => labels?.[name]).filter((v) => v !== undefined && v !== "");
  return parts.length ? parts.join(" / ") : "fleet";
}

function kept(spec, series) {
  const exclude = spec.exclude ?? {};
  return series.filter((s) =>
    Object.entries(exclude).every(([name, values]) => !values.includes(s.labels?.[name])),
  );
}

export class MetricsView {
  constructor(panel) {
    this.panel = panel;
    this.source = "unknown"; // "history" | "sampled"
    this.sampler = new Sampler(ALL_CHARTS.map((c) => c.metric));
    this.range = panel.querySelector("#metrics-range");
    this.live = panel.querySelector("#metrics-live");
    this.sourceNote = panel.querySelector("#metrics-source");
    this.charts = new Map();
    for (const [specs, holder] of [
      [GOLDEN_CHARTS, panel.querySelector("#charts-golden")],
      [SEED_CHARTS, panel.querySelector("#charts-seed")],
    ]) {
      for (const spec of specs) holder.append(this.figure(spec));
    }
    this.range.addEventListener("change", () => this.draw());
    this.live.addEventListener("change", () => {
      if (this.live.checked) this.draw();
    });
    this.visible = false;
  }

  figure(spec) {
    const plotHolder = h("div");
    const figure = h(
      "figure",
      { class: "chart", id: `chart-${spec.id}`, dataset: { metric: spec.metric, points: "0" } },
      h("figcaption", {}, h("h4", {}, spec.title), h("p", {}, spec.help)),
      plotHolder,
    );
    this.charts.set(spec.id, { spec, figure, chart: new LineChart(plotHolder, spec) });
    return figure;
  }

  show() {
    this.visible = true;
    return this.tick({ force: true });
  }

  hide() {
    this.visible = false;
  }

  /** Called on every tick, visible or not: sampling must not stop while another view shows. */
  async tick({ force = false } = {}) {
    if (this.source === "unknown") await this.probe();
    if (this.source === "sampled") await this.sample();
    if (this.visible && (force || this.live.checked)) await this.draw();
  }

  async probe() {
    const spec = GOLDEN_CHARTS[0];
    try {
      await getJSON("api/v1/metrics/query", { metric: spec.metric, fn: spec.fn, by: spec.by, range: "5m", step: "10s" });
      this.source = "history";
      this.sourceNote.textContent = "From the fleet's metric history; refreshed every few seconds.";
    } catch (error) {
      if (error.status === 0) return; // the API does not answer: ask again next tick
      if (!error.missing) {
        // the endpoint exists but refused this query: each chart shows its own error
        this.source = "history";
        return;
      }
      this.source = "sampled";
      this.sourceNote.textContent =
        "This API has no metric history yet: these charts show what this page has sampled " +
        "from /metrics since it opened.";
    }
  }

  async sample() {
    try {
      this.sampler.add(await getText("metrics"));
    } catch {
      // the next tick samples again; a gap in the series shows the miss
    }
  }

  async draw() {
    const rangeKey = this.range.value;
    const rangeSeconds = RANGES[rangeKey] ?? 900;
    const step = stepFor(rangeSeconds);
    await Promise.all(
      [...this.charts.values()].map(async ({ spec, figure, chart }) => {
        let answer;
        try {
          answer =
            this.source === "history"
              ? await getJSON("api/v1/metrics/query", { metric: spec.metric, fn: spec.fn, by: spec.by, range: rangeKey, step })
              : this.sampler.query(spec.metric, spec.fn, spec.by, rangeSeconds);
        } catch (error) {
          figure.dataset.error = error.message;
          chart.showError(error.missing ? "Not available from this API" : `Cannot load: ${error.message}`);
          return;
        }
        delete figure.dataset.error;
        const series = kept(spec, answer.series ?? []).map((s) => ({
          label: labelOf(s.labels, spec.by),
          points: s.points ?? [],
        }));
        series.sort((a, b) => a.label.localeCompare(b.label));
        const points = chart.update(series);
        const last = Math.max(0, ...chart.data[0]);
        figure.dataset.points = String(points);
        figure.dataset.lastTs = String(last);
        figure.dataset.renderer = chart.renderer;
      }),
    );
  }
}

/** Fill the footer's note on which chart renderer is in use. */
export function describeRenderer(node, loaded) {
  fill(
    node,
    loaded
      ? "Charts drawn with uPlot."
      : "Charts drawn as plain SVG: the uPlot package is not installed (run make).",
  );
}
