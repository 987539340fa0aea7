// Alerts and incidents. The alert engine fills these endpoints; until it does, or while
// nothing fires, each list says so plainly.

import { getJSON, itemsOf } from "./api.js";
import { empty, fill, fmtAgo, h, stateBadge, timeEl } from "./dom.js";

const pick = (item, ...names) => names.map((n) => item[n]).find((v) => v !== undefined && v !== null);

function table(items, caption) {
  return h("table", {},
    h("caption", { class: "visually-hidden" }, caption),
    h("thead", {}, h("tr", {},
      h("th", { scope: "col" }, "name"), h("th", { scope: "col" }, "severity"),
      h("th", { scope: "col" }, "state"), h("th", { scope: "col" }, "since"),
      h("th", { scope: "col" }, "summary"))),
    h("tbody", {}, items.map((item) => {
      const since = pick(item, "started_at", "fired_at", "opened_at", "created_at", "at");
      return h("tr", {},
        h("td", {}, String(pick(item, "title", "name", "rule", "id") ?? "–")),
        h("td", {}, stateBadge(pick(item, "severity", "level") ?? "–")),
        h("td", {}, stateBadge(pick(item, "state", "status") ?? "–")),
        h("td", {}, since ? timeEl(since, fmtAgo(since)) : "–"),
        h("td", { class: "wrap" }, String(pick(item, "summary", "description", "message") ?? "")));
    })));
}

export class AlertsView {
  constructor(panel, { onAlerts }) {
    this.alerts = panel.querySelector("#alerts-list");
    this.incidents = panel.querySelector("#incidents-list");
    this.onAlerts = onAlerts;
  }

  show() {
    return this.refresh();
  }

  hide() {}

  async refresh() {
    await Promise.all([
      this.load("api/v1/alerts", this.alerts, "alerts", "No alert is firing.", (items) => this.onAlerts(items)),
      this.load("api/v1/incidents", this.incidents, "incidents", "No open incident.", () => {}),
    ]);
  }

  async load(path, holder, noun, none, then) {
    let items;
    try {
      items = itemsOf(await getJSON(path));
    } catch (error) {
      fill(holder, empty(
        error.missing ? `The ${noun} API is not available yet.` : `The ${noun} are not available: ${error.message}`,
        { missing: error.missing },
      ));
      return;
    }
    then(items);
    fill(holder, items.length ? table(items, noun) : empty(none));
  }
}
