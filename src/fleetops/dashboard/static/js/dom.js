// Building DOM nodes and formatting numbers, durations and times for people.

/**
 * h("td", {class: "num"}, "12") → <td class="num">12</td>. Attributes whose value is
 * null, undefined or false are left out; "on…" attributes become event listeners;
 * children may be strings, numbers, nodes, arrays of them, or null (skipped).
 */
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      node.addEventListener(name.slice(2).toLowerCase(), value);
    } else if (name === "dataset") {
      Object.assign(node.dataset, value);
    } else {
      node.setAttribute(name, value === true ? "" : String(value));
    }
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(node, child);
    else node.append(child instanceof Node ? child : String(child));
  }
}

/** Replace every child of ``node`` with ``children``. */
export function fill(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

/** A muted "nothing here" paragraph; ``missing`` marks an endpoint the API lacks. */
export function empty(text, { missing = false } = {}) {
  return h("p", { class: missing ? "empty missing" : "empty" }, text);
}

export function badge(text, tone = "") {
  return h("span", { class: `badge ${tone}`.trim() }, text);
}

const STATE_TONES = {
  succeeded: "ok", running: "info", queued: "", dead: "bad", cancelled: "warn",
  failed: "bad", dead_lettered: "bad", lease_lost: "warn", released: "",
  done: "ok", started: "info", error: "bad", warning: "warn", critical: "bad",
  firing: "bad", resolved: "ok", acknowledged: "warn", open: "bad", closed: "ok",
  info: "info", debug: "",
};

export function stateBadge(state) {
  return badge(state ?? "–", STATE_TONES[String(state).toLowerCase()] ?? "");
}

// --- numbers -----------------------------------------------------------------------

export function fmtNumber(v) {
  if (v === null || v === undefined || !Number.isFinite(v)) return "–";
  const abs = Math.abs(v);
  if (abs >= 1e6) return `${trim((v / 1e6).toFixed(1))}M`;
  if (abs >= 1e4) return `${trim((v / 1e3).toFixed(1))}k`;
  if (abs >= 100) return v.toFixed(0);
  if (abs >= 10) return trim(v.toFixed(1));
  if (abs === 0) return "0";
  if (abs < 0.01) return trim(v.toPrecision(2));
  return trim(v.toFixed(2));
}

function trim(text) {
  return text.includes(".") ? text.replace(/\.?0+$/, "") : text;
}

export function fmtInteger(v) {
  return Number.isFinite(v) ? Math.round(v).toLocaleString("en-US") : "–";
}

/** A value in a chart's unit: "s", "ms", "ratio", "/s", "steps" or none. */
export function fmtValue(v, unit) {
  if (v === null || v === undefined || !Number.isFinite(v)) return "–";
  switch (unit) {
    case "s": return fmtSeconds(v);
    case "ms": return v >= 1000 ? `${fmtNumber(v / 1000)} s` : `${fmtNumber(v)} ms`;
    case "ratio": return `${trim((v * 100).toFixed(1))} %`;
    case "/s": return `${fmtNumber(v)}/s`;
    case "steps": return `${fmtNumber(v)} steps`;
    default: return fmtNumber(v);
  }
}

export function fmtSeconds(v) {
  if (v === null || v === undefined || !Number.isFinite(v)) return "–";
  const abs = Math.abs(v);
  if (abs < 1) return `${fmtNumber(v * 1000)} ms`;
  if (abs < 120) return `${fmtNumber(v)} s`;
  if (abs < 7200) return `${trim((v / 60).toFixed(1))} min`;
  return `${trim((v / 3600).toFixed(1))} h`;
}

// --- times -------------------------------------------------------------------------

/** Seconds since the epoch from seconds, ms, µs or ns numbers, or an ISO string. */
export function toSeconds(t) {
  if (t === null || t === undefined || t === "") return null;
  if (typeof t === "string") {
    const n = Number(t);
    if (!Number.isNaN(n)) return toSeconds(n);
    const parsed = Date.parse(t);
    return Number.isNaN(parsed) ? null : parsed / 1000;
  }
  if (!Number.isFinite(t)) return null;
  if (t > 1e17) return t / 1e9;
  if (t > 1e14) return t / 1e6;
  if (t > 1e11) return t / 1e3;
  return t;
}

const pad = (n) => String(n).padStart(2, "0");

export function fmtClock(t) {
  const s = toSeconds(t);
  if (s === null) return "–";
  const d = new Date(s * 1000);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

export function fmtDateTime(t) {
  const s = toSeconds(t);
  if (s === null) return "–";
  const d = new Date(s * 1000);
  const day = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
  return `${day} ${fmtClock(s)}.${String(d.getMilliseconds()).padStart(3, "0")}`;
}

export function fmtAgo(t, now = Date.now() / 1000) {
  const s = toSeconds(t);
  if (s === null) return "–";
  const ago = Math.max(0, now - s);
  if (ago < 1) return "just now";
  if (ago < 60) return `${Math.round(ago)} s ago`;
  if (ago < 3600) return `${Math.round(ago / 60)} min ago`;
  if (ago < 86400) return `${trim((ago / 3600).toFixed(1))} h ago`;
  return fmtDateTime(s);
}

/** A <time> element showing ``text`` with the full date and time as its value. */
export function timeEl(t, text) {
  const s = toSeconds(t);
  if (s === null) return "–";
  return h("time", { datetime: new Date(s * 1000).toISOString(), title: fmtDateTime(s) }, text ?? fmtClock(s));
}
