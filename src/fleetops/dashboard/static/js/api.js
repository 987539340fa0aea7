// The dashboard's only way to the HTTP API. Paths are relative to the page, so the
// dashboard also works behind a reverse proxy that mounts fleetops under a prefix.

/** An API answer that was not a success; ``missing`` when this API has no such route. */
export class ApiError extends Error {
  constructor(status, message, { missing = false } = {}) {
    super(message);
    this.status = status;
    this.missing = missing;
  }
}

const listeners = new Set();

/** Call ``fn(ok, error)`` after every request: the header shows whether the API answers. */
export function onConnection(fn) {
  listeners.add(fn);
}

function report(ok, error) {
  for (const fn of listeners) fn(ok, error);
}

export function url(path, params = {}) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value === null || value === undefined || value === "") continue;
    query.set(key, Array.isArray(value) ? value.join(",") : String(value));
  }
  const text = query.toString();
  return text ? `${path}?${text}` : path;
}

async function request(path, params, parse, method = "GET") {
  let response;
  try {
    response = await fetch(url(path, params), { method, headers: { Accept: "application/json" } });
  } catch (error) {
    report(false, error);
    throw new ApiError(0, "the API does not answer");
  }
  report(true, null);
  if (response.ok) return parse(response);
  let detail = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (typeof body.detail === "string") detail = body.detail;
  } catch {
    // a body that is not JSON: keep the status line
  }
  // A route this API does not have yet (FastAPI answers a bare 404 "Not Found"), or a
  // method it does not allow: shown as an empty state, not as an error.
  const missing = response.status === 405 || (response.status === 404 && detail === "Not Found");
  throw new ApiError(response.status, detail, { missing });
}

export function getJSON(path, params = {}) {
  return request(path, params, (r) => r.json());
}

/** An action (retry a task, cancel one): a POST without a body; its JSON answer. */
export function postJSON(path, params = {}) {
  return request(path, params, (r) => r.json(), "POST");
}

export function getText(path, params = {}) {
  return request(path, params, (r) => r.text());
}

/** Items of a list endpoint, whether it answers a bare list or ``{"items": [...]}``. */
export function itemsOf(body) {
  if (Array.isArray(body)) return body;
  if (body && Array.isArray(body.items)) return body.items;
  return [];
}
