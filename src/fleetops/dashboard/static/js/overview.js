// The overview: fleet totals, one card per cluster (workers, health, queue, quotas),
// the workers, the readiness score check by check, and the latest changes.

import { getJSON, itemsOf } from "./api.js";
import { badge, empty, fill, fmtAgo, fmtInteger, fmtNumber, h, stateBadge, timeEl } from "./dom.js";

/** A cluster's health, in words and tone: what a person should know first. */
export function clusterHealth(c) {
  if (c.degraded) return { text: "degraded", tone: "bad", why: "restarting too often" };
  if (c.desired_workers > 0 && c.heartbeating_workers === 0) {
    return { text: "down", tone: "bad", why: "no worker heartbeats" };
  }
  if (c.heartbeating_workers < c.desired_workers) {
    return { text: "under-replicated", tone: "warn", why: `${c.heartbeating_workers} of ${c.desired_workers} workers heartbeat` };
  }
  return { text: "healthy", tone: "ok", why: "every desired worker heartbeats" };
}

function usage(label, used, limit, format = fmtInteger) {
  if (limit === null || limit === undefined) {
    return h("div", {}, h("div", { class: "quota-label" }, h("span", {}, label), h("strong", {}, `${format(used)} · no limit`)));
  }
  const share = limit > 0 ? Math.min(1, used / limit) : 0;
  const tone = share >= 0.95 ? "bad" : share >= 0.8 ? "warn" : "";
  return h(
    "div",
    {},
    h("div", { class: "quota-label" }, h("span", {}, label), h("strong", {}, `${format(used)} / ${format(limit)}`)),
    h("div", {
      class: `bar ${tone}`.trim(), role: "meter", "aria-label": label,
      "aria-valuemin": "0", "aria-valuemax": String(limit), "aria-valuenow": String(used),
    }, h("span", { style: `width:${(share * 100).toFixed(1)}%` })),
  );
}

function limitOnly(label, value, format) {
  const text = value === null || value === undefined ? "no limit" : format(value);
  return h("div", {}, h("div", { class: "quota-label" }, h("span", {}, label), h("strong", {}, text)));
}

function clusterCard(c) {
  const health = clusterHealth(c);
  const q = c.resource_quotas ?? {};
  const tasks = c.tasks ?? {};
  const titleId = `cluster-${c.name}-title`;
  return h(
    "article",
    { class: `card ${health.tone}`, "aria-labelledby": titleId, dataset: { cluster: c.name } },
    h("div", { class: "card-head" },
      h("h4", { id: titleId }, c.name),
      h("span", { class: "agents" }, (c.agents ?? []).join(", ")),
      h("span", { class: `badge ${health.tone}`, title: health.why }, health.text)),
    h("dl", { class: "facts" },
      h("div", {}, h("dt", {}, "workers live / desired"), h("dd", { class: "workers" }, `${c.heartbeating_workers} / ${c.desired_workers}`)),
      h("div", {}, h("dt", {}, "queued"), h("dd", {}, fmtInteger(tasks.queued ?? 0))),
      h("div", {}, h("dt", {}, "running"), h("dd", {}, fmtInteger(tasks.running ?? 0))),
      h("div", {}, h("dt", {}, "dead letters"), h("dd", {}, fmtInteger(tasks.dead ?? 0)))),
    h("div", { class: "quotas", "aria-label": `${c.name} quotas` },
      usage("workers (max agents)", c.live_workers, q.max_agents),
      usage("tasks in flight", tasks.running ?? 0, q.max_concurrent_tasks),
      limitOnly("tokens per minute", q.tokens_per_minute, fmtNumber),
      limitOnly("cost per hour", q.cost_per_hour, (v) => `$${fmtNumber(v)}`)),
    h("p", { class: "note" },
      `${fmtInteger(tasks.succeeded ?? 0)} succeeded · concurrency ${c.concurrency} per worker`,
      c.routes?.length ? ` · routes to ${c.routes.join(", ")}` : "",
      c.provider ? ` · ${c.provider}` : ""),
  );
}

function kpi(label, value, extra) {
  return h("div", { class: "kpi" }, h("dt", {}, label), h("dd", {}, value, extra ? h("small", {}, ` ${extra}`) : null));
}

export class OverviewView {
  constructor(panel, { onFleetName, onAlerts }) {
    this.panel = panel;
    this.onFleetName = onFleetName;
    this.onAlerts = onAlerts;
    this.kpis = panel.querySelector("#kpis");
    this.cards = panel.querySelector("#cluster-cards");
    this.workers = panel.querySelector("#workers-table");
    this.allWorkers = panel.querySelector("#workers-all");
    this.readiness = panel.querySelector("#readiness");
    this.changes = panel.querySelector("#changes");
    this.allWorkers.addEventListener("change", () => this.refresh());
    this.clusters = [];
  }

  show() {
    return this.refresh();
  }

  hide() {}

  async refresh() {
    const [clusters, workers, readiness, changes, deployments, alerts] = await Promise.allSettled([
      getJSON("api/v1/clusters"),
      // gone workers only when asked for: a worker restarting in a loop leaves
      // thousands of them a day
      getJSON("api/v1/workers", this.allWorkers.checked ? {} : { live: true }),
      getJSON("api/v1/readiness"),
      getJSON("api/v1/changes", { limit: 1000 }),
      getJSON("api/v1/deployments", { limit: 1 }),
      getJSON("api/v1/alerts"),
    ]);
    if (deployments.status === "fulfilled" && deployments.value.length) {
      this.onFleetName(deployments.value[0].fleet);
    }
    const alertItems = alerts.status === "fulfilled" ? itemsOf(alerts.value) : null;
    if (alertItems) this.onAlerts(alertItems);
    this.drawClusters(clusters);
    this.drawKpis(clusters, readiness, alertItems);
    this.drawWorkers(workers);
    this.drawReadiness(readiness);
    this.drawChanges(changes);
  }

  drawClusters(result) {
    if (result.status === "rejected") {
      fill(this.cards, empty(`Clusters are not available: ${result.reason.message}`, { missing: result.reason.missing }));
      return;
    }
    this.clusters = result.value;
    if (!this.clusters.length) {
      fill(this.cards, empty("This fleet has no clusters."));
      return;
    }
    fill(this.cards, this.clusters.map(clusterCard));
  }

  drawKpis(clusters, readiness, alertItems) {
    const list = clusters.status === "fulfilled" ? clusters.value : [];
    const sum = (f) => list.reduce((n, c) => n + f(c), 0);
    const score = readiness.status === "fulfilled" ? readiness.value.readiness_score : null;
    const healthy = list.filter((c) => clusterHealth(c).tone === "ok").length;
    const firing = alertItems ? alertItems.filter((a) => (a.state ?? a.status ?? "firing") === "firing").length : null;
    fill(
      this.kpis,
      kpi("readiness score", score === null ? "–" : String(score), score === null ? null : "/ 100"),
      kpi("healthy clusters", `${healthy}`, `/ ${list.length}`),
      kpi("workers heartbeating", `${sum((c) => c.heartbeating_workers)}`, `/ ${sum((c) => c.desired_workers)}`),
      kpi("tasks running", fmtInteger(sum((c) => c.tasks?.running ?? 0)), `${fmtInteger(sum((c) => c.tasks?.queued ?? 0))} queued`),
      kpi("dead letters", fmtInteger(sum((c) => c.tasks?.dead ?? 0))),
      kpi("alerts firing", firing === null ? "–" : String(firing)),
    );
  }

  drawWorkers(result) {
    if (result.status === "rejected") {
      fill(this.workers, empty(`Workers are not available: ${result.reason.message}`, { missing: result.reason.missing }));
      return;
    }
    const rows = result.value
      .slice()
      .sort((a, b) => a.cluster.localeCompare(b.cluster) || a.id.localeCompare(b.id));
    if (!rows.length) {
      fill(this.workers, empty(this.allWorkers.checked ? "No worker is known." : "No worker is running."));
      return;
    }
    const now = Date.now() / 1000;
    fill(
      this.workers,
      h("table", {},
        h("caption", { class: "visually-hidden" }, "Workers"),
        h("thead", {}, h("tr", {},
          h("th", { scope: "col" }, "worker"), h("th", { scope: "col" }, "cluster"), h("th", { scope: "col" }, "state"),
          h("th", { scope: "col", class: "num" }, "in flight"), h("th", { scope: "col", class: "num" }, "processed"),
          h("th", { scope: "col" }, "last heartbeat"), h("th", { scope: "col", class: "num" }, "pid"))),
        h("tbody", {}, rows.map((w) => h("tr", {},
          h("td", { class: "mono" }, w.id),
          h("td", {}, w.cluster),
          h("td", {}, stateBadge(w.state)),
          h("td", { class: "num" }, `${w.inflight} / ${w.concurrency}`),
          h("td", { class: "num" }, fmtInteger(w.processed)),
          h("td", {}, w.heartbeat_at ? timeEl(w.heartbeat_at, fmtAgo(w.heartbeat_at, now)) : "–"),
          h("td", { class: "num" }, w.pid ?? "–"))))),
    );
  }

  drawReadiness(result) {
    if (result.status === "rejected") {
      fill(this.readiness, empty(`Readiness is not available: ${result.reason.message}`, { missing: result.reason.missing }));
      return;
    }
    const r = result.value;
    const checks = r.readiness_checks ?? [];
    fill(
      this.readiness,
      h("p", { class: "score" }, h("strong", {}, String(r.readiness_score)), h("span", { class: "note" }, "of 100 points")),
      h("ul", { class: "checks" }, checks.map((c) => h("li", {},
        h("span", { "aria-hidden": "true", class: c.passed ? "ok" : "error-text" }, c.passed ? "✓" : "✗"),
        h("span", {},
          h("span", { class: "visually-hidden" }, c.passed ? "passed: " : "failed: "),
          c.name.replaceAll("_", " "), " ", h("span", { class: "why" }, `— ${c.why}`)),
        h("span", { class: "note" }, `${c.weight} pts`)))),
    );
  }

  drawChanges(result) {
    if (result.status === "rejected") {
      fill(this.changes, empty(`Changes are not available: ${result.reason.message}`, { missing: result.reason.missing }));
      return;
    }
    // The change log answers oldest first: show the newest few.
    const rows = result.value.slice(-5).reverse();
    if (!rows.length) {
      fill(this.changes, empty("No change recorded yet."));
      return;
    }
    fill(
      this.changes,
      h("table", {},
        h("caption", { class: "visually-hidden" }, "Recent changes"),
        h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "when"), h("th", { scope: "col" }, "kind"),
          h("th", { scope: "col" }, "by"), h("th", { scope: "col" }, "reason"))),
        h("tbody", {}, rows.map((c) => h("tr", {},
          h("td", {}, timeEl(c.at, fmtAgo(c.at))),
          h("td", {}, badge(c.kind, "info")),
          h("td", {}, c.actor),
          h("td", { class: "wrap" }, c.reason || c.subject || "–"))))),
    );
  }
}
