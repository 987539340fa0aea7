// The task explorer: the newest tasks (filtered by state, cluster and agent), and one
// task in detail: its facts, attempts, effects journal, payload, result and trace.

import { getJSON, itemsOf, postJSON } from "./api.js";
import {
  empty, fill, fmtAgo, fmtDateTime, fmtInteger, fmtSeconds, h, stateBadge, timeEl,
} from "./dom.js";
import { drawWaterfall } from "./waterfall.js";

const SHOWN = 100;
// With a filter, the newest matches are looked for among this many of the newest tasks
// first, then among four times as many, and so on: the API pages oldest first.
const FILTERED_SPAN = 2000;
const PAGE = 1000;
const MAX_REQUESTS = 6;
const TERMINAL_STATES = new Set(["succeeded", "dead", "cancelled"]);
// Workers send their spans to the store in batches: a task's trace can fill in for a
// few seconds after it finished, so its detail keeps refreshing that long.
const SETTLE_SECONDS = 30;

/**
 * The newest tasks matching ``filters`` with ids below ``before`` (Infinity: all),
 * newest first. ``total`` is how many tasks the store holds: ids count up from 1,
 * so the newest ones are found just below it.
 */
export async function newestTasks(filters, before, total) {
  const unfiltered = !filters.state && !filters.cluster && !filters.agent;
  const anchor = before === Infinity ? total : before - 1;
  let span = unfiltered ? SHOWN : FILTERED_SPAN;
  let requests = 0;
  let found = [];
  for (;;) {
    const start = Math.max(0, anchor - span);
    found = [];
    let after = start;
    for (;;) {
      const page = await getJSON("api/v1/tasks", { ...filters, limit: PAGE, after: after || null });
      requests += 1;
      const items = itemsOf(page);
      for (const t of items) if (t.id < before) found.push(t);
      const last = items.length ? items[items.length - 1].id : null;
      if (!page.next_after || last === null || last >= before - 1 || requests >= MAX_REQUESTS) break;
      after = page.next_after;
    }
    if (found.length >= SHOWN || start === 0 || requests >= MAX_REQUESTS) break;
    span *= 4;
  }
  return found.slice(-SHOWN).reverse();
}

export class TasksView {
  constructor(panel, { navigate }) {
    this.panel = panel;
    this.navigate = navigate;
    this.form = panel.querySelector("#task-filters");
    this.clusterSelect = panel.querySelector("#task-cluster");
    this.live = panel.querySelector("#tasks-live");
    this.list = panel.querySelector("#task-list");
    this.listNote = panel.querySelector("#task-list-note");
    this.detail = panel.querySelector("#task-detail");
    this.openForm = panel.querySelector("#task-open");
    this.before = null; // null: the newest tasks; else ids below this one
    this.selected = null;
    this.settling = false;
    this.trace = null;
    this.taskSignature = null;
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.before = null;
      this.loadList();
    });
    this.openForm.addEventListener("submit", (event) => {
      event.preventDefault();
      const id = Number(panel.querySelector("#task-open-id").value);
      if (id > 0) this.navigate(`tasks/${id}`);
    });
    panel.querySelector("#task-newest").addEventListener("click", () => {
      this.before = null;
      this.loadList();
    });
    this.olderButton = panel.querySelector("#task-older");
    this.olderButton.addEventListener("click", () => {
      const ids = [...this.list.querySelectorAll("tr[data-task-id]")].map((r) => Number(r.dataset.taskId));
      if (ids.length) {
        this.before = Math.min(...ids);
        this.loadList();
      }
    });
  }

  filters() {
    const data = new FormData(this.form);
    return {
      state: data.get("state") || null,
      cluster: data.get("cluster") || null,
      agent: (data.get("agent") || "").trim() || null,
    };
  }

  async show(params) {
    const id = params?.[0] ? Number(params[0]) : null;
    const listed = this.list.querySelector("table") !== null;
    await Promise.all([
      listed ? null : this.loadList(),
      id && id !== this.selected ? this.openTask(id) : null,
    ]);
  }

  hide() {}

  async refresh() {
    await Promise.all([
      this.live.checked && this.before === null ? this.loadList() : null,
      this.selected && this.settling ? this.openTask(this.selected, { quiet: true }) : null,
    ]);
  }

  async loadClusters() {
    const clusters = await getJSON("api/v1/clusters");
    const current = this.clusterSelect.value;
    const names = clusters.map((c) => c.name);
    const options = [...this.clusterSelect.options].slice(1).map((o) => o.value);
    if (names.join() !== options.join()) {
      fill(this.clusterSelect, h("option", { value: "" }, "any"), names.map((n) => h("option", {}, n)));
      this.clusterSelect.value = names.includes(current) ? current : "";
    }
    return clusters.reduce((n, c) => n + Object.values(c.tasks ?? {}).reduce((a, b) => a + b, 0), 0);
  }

  async loadList() {
    // Only the latest search may draw: an earlier one can answer after it.
    const generation = (this.listGeneration = (this.listGeneration ?? 0) + 1);
    const filters = this.filters();
    this.list.setAttribute("aria-busy", "true");
    let tasks;
    try {
      const total = await this.loadClusters();
      tasks = await newestTasks(filters, this.before ?? Infinity, total);
    } catch (error) {
      if (generation !== this.listGeneration) return;
      this.list.setAttribute("aria-busy", "false");
      fill(this.list, empty(`Tasks are not available: ${error.message}`, { missing: error.missing }));
      return;
    }
    if (generation !== this.listGeneration) return;
    this.list.setAttribute("aria-busy", "false");
    this.list.dataset.query = JSON.stringify(filters);
    this.listNote.textContent = this.before === null ? "newest first" : `below #${this.before}, newest first`;
    this.olderButton.disabled = tasks.length === 0;
    if (!tasks.length) {
      fill(this.list, empty("No task matches these filters."));
      return;
    }
    const now = Date.now() / 1000;
    fill(
      this.list,
      h("table", { "aria-describedby": "task-list-note" },
        h("caption", { class: "visually-hidden" }, "Tasks"),
        h("thead", {}, h("tr", {},
          h("th", { scope: "col", class: "num" }, "id"), h("th", { scope: "col" }, "agent"),
          h("th", { scope: "col" }, "state"), h("th", { scope: "col", class: "num" }, "attempts"),
          h("th", { scope: "col" }, "created"), h("th", { scope: "col", class: "num" }, "took"))),
        h("tbody", {}, tasks.map((t) => h("tr", {
          dataset: { taskId: String(t.id), state: t.state },
          class: t.id === this.selected ? "selected" : null,
        },
          h("td", { class: "num" }, h("a", { href: `#tasks/${t.id}`, "aria-label": `task ${t.id}` }, `#${t.id}`)),
          h("td", {}, `${t.cluster}/${t.agent}`),
          h("td", {}, stateBadge(t.state)),
          h("td", { class: "num" }, String(t.attempts)),
          h("td", {}, timeEl(t.created_at, fmtAgo(t.created_at, now))),
          h("td", { class: "num" }, t.finished_at && t.created_at ? fmtSeconds(t.finished_at - t.created_at) : "–"))))),
    );
  }

  /**
   * Show task ``id``. A quiet call (the refresh loop's, while the task runs or has just
   * finished) redraws only what changed, so an open span or section stays open.
   */
  async openTask(id, { quiet = false } = {}) {
    if (!quiet) {
      this.selected = id;
      this.taskSignature = null;
      for (const row of this.list.querySelectorAll("tr[data-task-id]")) {
        row.classList.toggle("selected", Number(row.dataset.taskId) === id);
      }
      fill(this.detail, h("h3", { id: "task-detail-title" }, `Task #${id}`), empty("Loading…"));
    }
    let task;
    try {
      task = await getJSON(`api/v1/tasks/${id}`);
    } catch (error) {
      if (!quiet) {
        fill(this.detail, h("h3", { id: "task-detail-title" }, `Task #${id}`), empty(error.message, { missing: error.missing }));
      }
      return;
    }
    if (this.selected !== id) return;
    const signature = JSON.stringify([task.state, task.attempt_history, task.effects]);
    if (signature !== this.taskSignature) {
      this.taskSignature = signature;
      const trace = quiet && this.trace ? this.trace : h("div", { id: "task-trace", class: "trace" }, empty("Loading the trace…"));
      const [head, data] = this.renderTask(task);
      fill(this.detail, ...head, h("h4", { id: "task-trace-title" }, "Trace"), trace, ...data);
      this.trace = trace;
      this.detail.dataset.taskId = String(id);
    }
    const finishedAgo = task.finished_at ? Date.now() / 1000 - task.finished_at : 0;
    this.settling = !TERMINAL_STATES.has(task.state) || finishedAgo < SETTLE_SECONDS;
    await this.loadTrace(id, quiet);
  }

  async loadTrace(id, quiet) {
    let spans;
    try {
      const answer = await getJSON("api/v1/traces", { task_id: id });
      spans = answer.spans ?? itemsOf(answer);
    } catch (error) {
      if (!quiet || error.missing) {
        fill(this.trace, empty(
          error.missing ? "Traces are not available from this API yet." : `The trace is not available: ${error.message}`,
          { missing: error.missing },
        ));
      }
      return;
    }
    if (this.selected !== id) return;
    if (quiet && String(spans.length) === this.trace.dataset.spans) return;
    drawWaterfall(this.trace, spans, { settling: this.settling });
  }

  /** A dead letter's Retry button, or a queued or running task's Cancel button. */
  renderAction(t) {
    const [action, label, hint] = t.state === "dead"
      ? ["retry", "Retry", "Queue it again with its full attempts; effects already done are not run again"]
      : t.state === "queued" || t.state === "running"
        ? ["cancel", "Cancel", "Cancel it; a worker running it is fenced off"]
        : [null];
    if (!action) return null;
    const status = h("span", { class: "note", role: "status" });
    const button = h("button", { type: "button", id: `task-${action}`, title: hint }, label);
    button.addEventListener("click", async () => {
      if (action === "cancel" && !window.confirm(`Cancel task #${t.id}?`)) return;
      button.disabled = true;
      fill(status, action === "retry" ? "Queueing it again…" : "Cancelling…");
      try {
        await postJSON(`api/v1/tasks/${t.id}/${action}`);
      } catch (error) {
        button.disabled = false;
        fill(status, error.message);
        return;
      }
      await this.openTask(t.id, { quiet: true });
    });
    return h("p", { class: "task-actions" }, button, " ", status);
  }

  /** The task's nodes: [those above its trace (facts, attempts, effects), those below]. */
  renderTask(t) {
    const fact = (label, value, wide) =>
      h("div", { class: wide ?? null }, h("dt", {}, label), h("dd", {}, value ?? "–"));
    const took = t.finished_at && t.started_at ? fmtSeconds(t.finished_at - t.started_at) : "–";
    const attempts = t.attempt_history ?? [];
    const effects = t.effects ?? [];
    return [[
      h("h3", { id: "task-detail-title" }, `Task #${t.id}`, h("span", { class: "note" }, `${t.cluster}/${t.agent}`), stateBadge(t.state)),
      this.renderAction(t),
      h("dl", { class: "task-facts" },
        fact("created", timeEl(t.created_at, fmtDateTime(t.created_at)), "wide"),
        fact("waited", t.started_at ? fmtSeconds(t.started_at - t.created_at) : "–"),
        fact("last attempt ran", took),
        fact("attempts · failures · redeliveries", `${t.attempts} · ${t.failures} · ${t.redeliveries}`),
        fact("epoch · priority", `${t.epoch} · ${t.priority}`),
        fact("parent", t.parent_id ? h("a", { href: `#tasks/${t.parent_id}` }, `#${t.parent_id}`) : "–"),
        t.lease_owner ? fact("lease held by", t.lease_owner) : null,
        t.idempotency_key ? fact("idempotency key", t.idempotency_key, "wide") : null),
      t.error ? h("p", { class: "error-text" }, h("strong", {}, "Error: "), t.error) : null,
      t.dead_reason ? h("p", { class: "error-text" }, h("strong", {}, "Dead-lettered: "), t.dead_reason) : null,
      h("h4", {}, `Attempts (${attempts.length})`),
      attempts.length
        ? h("table", { id: "task-attempts" },
          h("thead", {}, h("tr", {},
            h("th", { scope: "col", class: "num" }, "#"), h("th", { scope: "col" }, "worker"),
            h("th", { scope: "col" }, "outcome"), h("th", { scope: "col" }, "started"),
            h("th", { scope: "col", class: "num" }, "took"), h("th", { scope: "col", class: "num" }, "epoch"),
            h("th", { scope: "col" }, "error"))),
          h("tbody", {}, attempts.map((a) => h("tr", {},
            h("td", { class: "num" }, String(a.attempt)),
            h("td", { class: "mono" }, a.worker ?? "–"),
            h("td", {}, stateBadge(a.outcome ?? "running")),
            h("td", {}, timeEl(a.started_at)),
            h("td", { class: "num" }, a.ended_at ? fmtSeconds(a.ended_at - a.started_at) : "–"),
            h("td", { class: "num" }, String(a.epoch)),
            h("td", { class: "wrap" }, a.error ?? "")))))
        : empty("No attempt yet."),
      h("h4", {}, `Effects (${effects.length})`),
      effects.length
        ? h("table", { id: "task-effects" },
          h("thead", {}, h("tr", {},
            h("th", { scope: "col" }, "key"), h("th", { scope: "col" }, "state"),
            h("th", { scope: "col", class: "num" }, "executions"), h("th", { scope: "col", class: "num" }, "epoch"),
            h("th", { scope: "col", class: "num" }, "took"))),
          h("tbody", {}, effects.map((e) => h("tr", {},
            h("td", { class: "mono" }, e.key),
            h("td", {}, stateBadge(e.state)),
            h("td", { class: "num" }, fmtInteger(e.executions)),
            h("td", { class: "num" }, String(e.epoch)),
            h("td", { class: "num" }, e.finished_at && e.started_at ? fmtSeconds(e.finished_at - e.started_at) : "–")))))
        : empty("No side effect journaled."),
    ], [
      h("details", {}, h("summary", {}, "Payload"), h("pre", {}, JSON.stringify(t.payload, null, 2))),
      h("details", {}, h("summary", {}, "Result"), h("pre", {}, JSON.stringify(t.result, null, 2))),
    ]];
  }
}
