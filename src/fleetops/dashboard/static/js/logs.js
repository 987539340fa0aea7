// Log search: free text, level, cluster and task; "follow" re-runs the search on
// every tick so new lines appear without a reload.

import { getJSON, itemsOf } from "./api.js";
import { empty, fill, fmtDateTime, h, stateBadge, timeEl } from "./dom.js";

const BASE_FIELDS = new Set(["ts", "level", "logger", "event"]);

function fieldValue(key, value) {
  if (key === "task_id" && Number.isInteger(value)) return h("a", { href: `#tasks/${value}` }, `#${value}`);
  return typeof value === "object" ? JSON.stringify(value) : String(value);
}

export class LogsView {
  constructor(panel) {
    this.panel = panel;
    this.form = panel.querySelector("#log-filters");
    this.results = panel.querySelector("#log-results");
    this.live = panel.querySelector("#logs-live");
    this.clusterSelect = panel.querySelector("#log-cluster");
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.search();
    });
  }

  show() {
    return Promise.all([this.loadClusters(), this.search()]);
  }

  hide() {}

  refresh() {
    return this.live.checked ? this.search() : null;
  }

  async loadClusters() {
    if (this.clusterSelect.options.length > 1) return;
    try {
      const clusters = await getJSON("api/v1/clusters");
      this.clusterSelect.append(...clusters.map((c) => h("option", {}, c.name)));
    } catch {
      // the list stays "any"
    }
  }

  async search() {
    const data = new FormData(this.form);
    const params = Object.fromEntries([...data.entries()].map(([k, v]) => [k, String(v).trim()]));
    const generation = (this.generation = (this.generation ?? 0) + 1);
    let items;
    try {
      items = itemsOf(await getJSON("api/v1/logs", { ...params, limit: 200 }));
    } catch (error) {
      if (generation !== this.generation) return;
      fill(this.results, empty(
        error.missing ? "Log search is not available from this API yet." : `Logs are not available: ${error.message}`,
        { missing: error.missing },
      ));
      return;
    }
    if (generation !== this.generation) return;
    this.results.dataset.query = JSON.stringify(params);
    if (!items.length) {
      fill(this.results, empty("No log line matches this search."));
      return;
    }
    fill(
      this.results,
      h("table", { id: "log-table" },
        h("caption", { class: "visually-hidden" }, "Log lines, newest first"),
        h("thead", {}, h("tr", {},
          h("th", { scope: "col" }, "time"), h("th", { scope: "col" }, "level"),
          h("th", { scope: "col" }, "event"), h("th", { scope: "col" }, "logger"),
          h("th", { scope: "col" }, "fields"))),
        h("tbody", {}, items.map((line) => h("tr", {},
          h("td", { class: "mono" }, timeEl(line.ts, fmtDateTime(line.ts).slice(11))),
          h("td", {}, stateBadge(line.level)),
          h("td", { class: "mono" }, line.event),
          h("td", { class: "mono" }, line.logger),
          h("td", {}, h("span", { class: "log-fields" },
            Object.entries(line).filter(([k]) => !BASE_FIELDS.has(k)).map(([k, v]) =>
              h("span", {}, `${k}=`, h("b", {}, fieldValue(k, v)))))))))),
    );
  }
}
