// A trace as a waterfall: one row per span, indented under its parent, with a bar
// from its start to its end on the trace's time axis. Each row is a button: choosing
// one shows the span's attributes below.

import { empty, fill, fmtSeconds, h, toSeconds } from "./dom.js";

/** Spans in tree order (parents before children, siblings by start) with their depth. */
export function treeOrder(spans) {
  const ids = new Set(spans.map((s) => s.span_id));
  const children = new Map();
  const roots = [];
  for (const span of spans) {
    const parent = span.parent_span_id;
    if (parent && ids.has(parent) && parent !== span.span_id) {
      if (!children.has(parent)) children.set(parent, []);
      children.get(parent).push(span);
    } else {
      roots.push(span);
    }
  }
  const byStart = (a, b) => (a.start ?? 0) - (b.start ?? 0);
  const out = [];
  const seen = new Set();
  const visit = (span, depth) => {
    if (seen.has(span.span_id)) return;
    seen.add(span.span_id);
    out.push({ span, depth });
    for (const child of (children.get(span.span_id) ?? []).sort(byStart)) visit(child, depth + 1);
  };
  for (const root of roots.sort(byStart)) visit(root, 0);
  return out;
}

function isError(span) {
  const status = span.status;
  const code = typeof status === "object" && status !== null ? status.code ?? status.status_code : status;
  return String(code ?? "").toLowerCase().includes("error");
}

export function drawWaterfall(holder, rawSpans, { settling = false } = {}) {
  const spans = (rawSpans ?? []).map((s) => ({
    ...s,
    start: toSeconds(s.start_time),
    end: toSeconds(s.end_time) ?? toSeconds(s.start_time),
  })).filter((s) => s.start !== null);
  holder.dataset.spans = String(spans.length);
  if (!spans.length) {
    fill(holder, empty(settling
      ? "No span has reached the store yet; workers send them every few seconds. Looking again…"
      : "No span was recorded for this task."));
    return;
  }
  const t0 = Math.min(...spans.map((s) => s.start));
  const t1 = Math.max(...spans.map((s) => s.end ?? s.start));
  const total = Math.max(t1 - t0, 1e-6);
  const pct = (t) => ((t - t0) / total) * 100;
  const attrs = h("div", { class: "span-attrs", "aria-live": "polite" });
  const rows = treeOrder(spans);
  const traces = new Set(spans.map((s) => s.trace_id));
  const list = h("ol", { class: "waterfall", "aria-label": `Trace waterfall, ${spans.length} spans over ${fmtSeconds(total)}` });
  list.append(
    h("li", { class: "axis-row", "aria-hidden": "true" },
      h("span", {}, "span"),
      h("span", { class: "ticks" }, [0, 0.25, 0.5, 0.75, 1].map((f) =>
        h("span", { style: `left:${f * 100}%` }, fmtSeconds(total * f))))),
  );
  const buttons = [];
  for (const { span, depth } of rows) {
    const kind = String(span.kind ?? "internal").toLowerCase().replace(/^span_kind_/, "");
    const duration = (span.end ?? span.start) - span.start;
    const left = pct(span.start);
    const width = Math.max(0.3, pct(span.end ?? span.start) - left);
    const error = isError(span);
    const timeLeft = left + width > 80;
    const button = h(
      "button",
      {
        type: "button", class: "span-row", "aria-pressed": "false",
        "aria-label": `${span.name}, ${kind}, starts at +${fmtSeconds(span.start - t0)}, takes ${fmtSeconds(duration)}${error ? ", error" : ""}`,
        dataset: { spanId: span.span_id ?? "" },
      },
      h("span", { class: "span-name", style: `padding-left:${depth * 14}px`, title: span.name },
        span.name, h("span", { class: "kind" }, kind)),
      h("span", { class: "span-track" },
        h("span", { class: `span-bar kind-${kind}${error ? " error" : ""}`, style: `left:${left}%;width:${width}%` }),
        h("span", { class: "span-time", style: timeLeft ? `right:${100 - left + 0.5}%` : `left:${left + width + 0.5}%` },
          fmtSeconds(duration))),
    );
    button.addEventListener("click", () => {
      for (const b of buttons) b.setAttribute("aria-pressed", String(b === button));
      showAttributes(attrs, span, t0);
    });
    buttons.push(button);
    list.append(h("li", {}, button));
  }
  // Arrow keys move between spans, like rows of a tree.
  list.addEventListener("keydown", (event) => {
    const index = buttons.indexOf(document.activeElement);
    if (index < 0) return;
    const next = { ArrowDown: index + 1, ArrowUp: index - 1, Home: 0, End: buttons.length - 1 }[event.key];
    if (next === undefined) return;
    event.preventDefault();
    buttons[Math.max(0, Math.min(buttons.length - 1, next))].focus();
  });
  fill(
    holder,
    h("p", { class: "note" },
      `${spans.length} spans over ${fmtSeconds(total)}`,
      traces.size > 1 ? ` in ${traces.size} traces` : "",
      " · choose a span for its attributes"),
    list,
    attrs,
  );
}

function showAttributes(holder, span, t0) {
  const entries = [
    ["span id", span.span_id], ["parent", span.parent_span_id || "–"], ["trace id", span.trace_id],
    ["starts at", `+${fmtSeconds(span.start - t0)}`], ["duration", fmtSeconds((span.end ?? span.start) - span.start)],
    ["status", typeof span.status === "object" ? JSON.stringify(span.status) : span.status ?? "–"],
    ["cluster", span.cluster ?? "–"], ["agent", span.agent ?? "–"],
    ...Object.entries(span.attributes ?? {}).map(([k, v]) => [k, typeof v === "object" ? JSON.stringify(v) : String(v)]),
  ];
  fill(
    holder,
    h("table", {},
      h("caption", { class: "note" }, span.name),
      h("tbody", {}, entries.map(([k, v]) => h("tr", {}, h("th", { scope: "row" }, k), h("td", { class: "mono wrap" }, v))))),
  );
}
