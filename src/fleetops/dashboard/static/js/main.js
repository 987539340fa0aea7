// The dashboard's shell: tabs between the views (WAI-ARIA tabs: arrow keys, Home and
// End), the address bar's #view/arg as the route, and one refresh loop that updates
// the visible view every few seconds (``?refresh=SECONDS`` sets how often).

import { getJSON, onConnection } from "./api.js";
import { AlertsView } from "./alerts.js";
import { MetricsView, describeRenderer } from "./charts.js";
import { fmtClock } from "./dom.js";
import { LogsView } from "./logs.js";
import { OverviewView } from "./overview.js";
import { loadChartLibrary } from "./plot.js";
import { TasksView } from "./tasks.js";

const DEFAULT_REFRESH_SECONDS = 5;

const tabs = [...document.querySelectorAll('#view-tabs [role="tab"]')];
const panels = new Map(tabs.map((tab) => [tab.dataset.view, document.getElementById(tab.getAttribute("aria-controls"))]));
const connection = document.getElementById("connection");
const alertsCount = document.getElementById("alerts-count");

function refreshSeconds() {
  const asked = Number(new URLSearchParams(window.location.search).get("refresh"));
  return Number.isFinite(asked) && asked >= 1 ? asked : DEFAULT_REFRESH_SECONDS;
}

function navigate(route) {
  if (window.location.hash !== `#${route}`) window.location.hash = route;
  else route_();
}

function showAlertCount(items) {
  const firing = items.filter((a) => (a.state ?? a.status ?? "firing") === "firing").length;
  alertsCount.hidden = firing === 0;
  alertsCount.textContent = String(firing);
  alertsCount.setAttribute("aria-label", `${firing} firing`);
}

function setFleetName(name) {
  document.getElementById("fleet-name").textContent = name;
  document.title = `${name} · fleetops`;
}

const views = {
  overview: new OverviewView(panels.get("overview"), { onFleetName: setFleetName, onAlerts: showAlertCount }),
  metrics: new MetricsView(panels.get("metrics")),
  tasks: new TasksView(panels.get("tasks"), { navigate }),
  logs: new LogsView(panels.get("logs")),
  alerts: new AlertsView(panels.get("alerts"), { onAlerts: showAlertCount }),
};
let current = null;

function select(name, params = [], { focusTab = false } = {}) {
  if (!views[name]) name = "overview";
  for (const tab of tabs) {
    const on = tab.dataset.view === name;
    tab.setAttribute("aria-selected", String(on));
    tab.tabIndex = on ? 0 : -1;
    if (on && focusTab) tab.focus();
    panels.get(tab.dataset.view).hidden = !on;
  }
  if (current && current !== name) views[current].hide();
  current = name;
  document.body.dataset.view = name;
  guard(views[name].show(params));
}

function route_() {
  const [name, ...params] = window.location.hash.replace(/^#/, "").split("/").filter(Boolean);
  select(name || "overview", params);
}

function guard(promise) {
  return Promise.resolve(promise).catch((error) => console.error(error));
}

// --- keyboard --------------------------------------------------------------------------

document.getElementById("view-tabs").addEventListener("keydown", (event) => {
  const index = tabs.indexOf(document.activeElement);
  if (index < 0) return;
  const next = {
    ArrowRight: (index + 1) % tabs.length,
    ArrowLeft: (index - 1 + tabs.length) % tabs.length,
    Home: 0,
    End: tabs.length - 1,
  }[event.key];
  if (next === undefined) return;
  event.preventDefault();
  const tab = tabs[next];
  tab.focus();
  navigate(tab.dataset.view);
});

for (const tab of tabs) tab.addEventListener("click", () => navigate(tab.dataset.view));

const SEARCH_FIELDS = { tasks: "#task-agent", logs: "#log-q", metrics: "#metrics-range" };

document.addEventListener("keydown", (event) => {
  if (event.altKey || event.ctrlKey || event.metaKey) return;
  const target = event.target;
  const typing = target.closest?.("input, select, textarea, [contenteditable]");
  if (typing) return;
  if (/^[1-5]$/.test(event.key)) {
    event.preventDefault();
    const tab = tabs[Number(event.key) - 1];
    navigate(tab.dataset.view);
    tab.focus();
  } else if (event.key === "/" && SEARCH_FIELDS[current]) {
    event.preventDefault();
    document.querySelector(SEARCH_FIELDS[current]).focus();
  }
});

// --- connection status and the refresh loop -----------------------------------------

onConnection((ok) => {
  connection.classList.toggle("bad", !ok);
  connection.textContent = ok ? `Live · updated ${fmtClock(Date.now() / 1000)}` : "The API does not answer; retrying…";
});

async function tick() {
  if (!document.hidden) {
    // The metrics view samples on every tick, shown or not, and redraws when shown.
    const jobs = [guard(views.metrics.tick())];
    if (current !== "metrics") jobs.push(guard(views[current].refresh()));
    // The overview fetches the alerts itself; elsewhere the tab's count needs them.
    if (current !== "alerts" && current !== "overview") jobs.push(guard(views.alerts.refresh()));
    await Promise.all(jobs);
  }
  window.setTimeout(tick, refreshSeconds() * 1000);
}

window.addEventListener("hashchange", route_);

getJSON("api/v1/deployments", { limit: 1 })
  .then((deployments) => {
    if (deployments.length) setFleetName(deployments[0].fleet);
  })
  .catch(() => {});

loadChartLibrary().then((loaded) => {
  document.body.dataset.charts = loaded ? "uplot" : "svg";
  describeRenderer(document.getElementById("chart-library"), loaded);
  route_();
  if (current !== "metrics") guard(views.metrics.tick());
  window.setTimeout(tick, refreshSeconds() * 1000);
});
