// Helpers shared by the demo pages (viewer.js, host.js, and the panels later pages add).
// Guarantees: every text from the network reaches the page through text nodes
// (textContent), never as HTML; an image URL is used only if it resolves to http(s).

/** The element whose data-testid is `id` (pages give every live element one). */
export function byTestId(id, root = document) {
  return root.querySelector(`[data-testid="${id}"]`);
}

/**
 * A new element. `props`: `text` (textContent), `testid`, `class`, `data` (dataset
 * entries), any other key is set as an attribute (code-chosen keys only, never `style`).
 * Children are nodes or values shown as text.
 */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "text") node.textContent = String(value);
    else if (key === "testid") node.dataset.testid = value;
    else if (key === "class") node.className = value;
    else if (key === "data") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** `raw` as an absolute http(s) URL (relative ones resolved against the page), else null. */
export function safeImageUrl(raw) {
  if (typeof raw !== "string" || raw === "") return null;
  try {
    const url = new URL(raw, document.baseURI);
    return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
  } catch {
    return null;
  }
}

/** An image of a product, or a placeholder tile when it has no usable http(s) image. */
export function productImage(product, testid = "product-image") {
  const src = safeImageUrl(product.image);
  if (src === null) {
    return el("div", { class: "thumb placeholder", testid, text: [...product.title][0] ?? "?" });
  }
  return el("img", { class: "thumb", testid, src, alt: "", referrerpolicy: "no-referrer" });
}

/** A price in minor units (分, cents) as text: `¥69.00`. */
export function money(minor, currency = "CNY") {
  try {
    return new Intl.NumberFormat("zh-CN", { style: "currency", currency }).format(minor / 100);
  } catch {
    return `${(minor / 100).toFixed(2)} ${currency}`;
  }
}

/** Appends `node` to the list `list`, keeping at most `max` children (oldest dropped). */
export function appendBounded(list, node, max) {
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  list.append(node);
  while (list.children.length > max) list.firstElementChild.remove();
  if (atBottom) list.scrollTop = list.scrollHeight;
}

/** A failed call of a demo endpoint: the JSON error's code and message. */
export class ApiFailure extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** Calls a demo endpoint (a path relative to /demo/) and returns its JSON answer. */
export async function api(method, path, body) {
  const init = { method, headers: {} };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  let response;
  try {
    response = await fetch(new URL(path, document.baseURI), init);
  } catch (error) {
    throw new ApiFailure(0, "network", `the server cannot be reached (${error.message})`);
  }
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const err = data?.error ?? {};
    throw new ApiFailure(response.status, err.code ?? "http_error", err.message ?? response.statusText);
  }
  return data;
}

/** A demo token and where to use it: {url, room, token, user, name, role, expires}. */
export function session(params = {}) {
  return api("GET", `session?${new URLSearchParams(params)}`);
}

const STATE_TEXT = {
  connecting: "connecting…",
  open: "live",
  reconnecting: "reconnecting…",
  closed: "disconnected",
};

/** Keeps `node` showing the client's connection state (text and data-state). */
export function showState(node, client) {
  const set = (state) => {
    node.dataset.state = state;
    node.textContent = STATE_TEXT[state] ?? state;
  };
  set("connecting");
  client.on("state", ({ state }) => set(state));
}

/** The sale's status now: the snapshot's, moved on by its window (`skew`: server - local ms). */
export function saleStatus(sale, skew = 0) {
  if (sale.status === "closed" || sale.status === "ended") return sale.status;
  const now = Date.now() + skew;
  if (now >= sale.ends) return "ended";
  if (now < sale.starts) return "scheduled";
  return sale.remaining > 0 ? "open" : "sold_out";
}

export const STATUS_TEXT = {
  scheduled: "starts soon",
  open: "on sale",
  sold_out: "sold out",
  ended: "ended",
  closed: "closed",
};
