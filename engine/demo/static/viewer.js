// The demo's viewer page: comments, likes, viewer count, the pinned product with its
// flash sale and Buy button, "someone just bought" toasts, the connection state.
// The room's view follows SPEC §8: a fresh join or a resync replaces the comment list,
// a resume appends what was missed; offset-carrying events at or below the last offset
// seen are dropped. User text is set with textContent only (common.js).

import { LiveroomClient, LiveroomError } from "./liveroom.mjs";
import {
  STATUS_TEXT,
  appendBounded,
  byTestId,
  el,
  money,
  productImage,
  saleStatus,
  session,
  showState,
} from "./common.js";

const MAX_COMMENTS = 100;
const MAX_TOASTS = 3;
const TOAST_MS = 3500;
const USER_KEY = "liveroom-demo-user";

const view = {
  room: null,
  epoch: null,
  offset: 0, // last offset-carrying event shown
  joined: false,
  pin: null, // product
  sale: null, // sale snapshot, kept current by stock / sold_out / sale_closed events
  skew: 0, // server clock - local clock, ms
  buying: false,
};

// --- rendering ------------------------------------------------------------------------

function addLine(kind, name, text) {
  const item = el(
    "li",
    { class: `line ${kind}`, testid: kind },
    el("span", { class: "who", testid: `${kind}-name`, text: name }),
    el("span", { class: "text", testid: `${kind}-text`, text }),
  );
  appendBounded(byTestId("comments"), item, MAX_COMMENTS);
}

function toast(text) {
  const box = byTestId("toasts");
  const node = el("div", { class: "toast", testid: "toast", text });
  box.append(node);
  while (box.children.length > MAX_TOASTS) box.firstElementChild.remove();
  setTimeout(() => node.remove(), TOAST_MS);
}

function renderCard() {
  const card = byTestId("product-card");
  const pin = view.pin;
  card.hidden = pin === null;
  if (pin === null) return;
  card.dataset.productId = pin.id;
  byTestId("product-image-slot").replaceChildren(productImage(pin));
  byTestId("product-title").textContent = pin.title;
  const sale = view.sale !== null && view.sale.pid === pin.id ? view.sale : null;
  const listPrice = byTestId("product-price");
  const salePrice = byTestId("sale-price");
  const info = byTestId("sale-info");
  const buy = byTestId("buy-button");
  if (sale === null) {
    salePrice.textContent = money(pin.price, pin.currency);
    listPrice.textContent = "";
    info.hidden = true;
    buy.disabled = true;
    buy.dataset.status = "none";
    return;
  }
  const status = saleStatus(sale, view.skew);
  salePrice.textContent = money(sale.price, pin.currency);
  listPrice.textContent = sale.price < pin.price ? money(pin.price, pin.currency) : "";
  info.hidden = false;
  byTestId("stock").textContent = String(sale.remaining);
  byTestId("stock-total").textContent = String(sale.stock);
  byTestId("stock-bar").style.width = `${sale.stock ? (100 * sale.remaining) / sale.stock : 0}%`;
  const badge = byTestId("sale-status");
  badge.textContent = STATUS_TEXT[status] ?? status;
  badge.dataset.status = status;
  buy.dataset.status = status;
  buy.disabled = status !== "open" || view.buying;
}

const RESULT_TEXT = {
  sold_out: () => "Sold out: no units left",
  limit_reached: () => `Limit reached: at most ${view.sale?.limit ?? "?"} per person`,
  not_open: () => "The sale is not open",
};

function showResult(status, text) {
  const node = byTestId("buy-result");
  node.dataset.status = status;
  node.textContent = text;
}

// --- the room's events --------------------------------------------------------------------

/** False for an offset-carrying event already shown (SPEC §8); else records its offset. */
function isNew(event) {
  if (event.off === undefined || event.off === null) return true;
  if (event.off <= view.offset) return false;
  view.offset = event.off;
  return true;
}

function apply(event, { replay = false } = {}) {
  if (!isNew(event)) return;
  switch (event.t) {
    case "comment":
      addLine("comment", event.name, event.text);
      break;
    case "system":
      addLine("system", "📢", event.text);
      break;
    case "pinned":
      view.pin = event.product;
      break;
    case "unpinned":
      if (view.pin?.id === event.pid) view.pin = null;
      break;
    case "sale_opened":
      view.sale = { ...event.sale };
      showResult("", "");
      break;
    case "sale_closed":
      if (view.sale?.id === event.sale) view.sale.status = event.reason === "ended" ? "ended" : "closed";
      break;
    case "sold_out":
      if (view.sale?.id === event.sale) view.sale.remaining = 0;
      break;
    case "stock":
      if (view.sale?.id === event.sale) {
        view.sale.remaining = event.remaining;
        if (event.remaining > view.sale.stock) view.sale.stock = event.remaining;
        if (event.remaining > 0 && view.sale.status === "sold_out") view.sale.status = "open";
      }
      break;
    case "purchase":
      if (!replay) toast(`🛒 ${event.name} just bought ${event.qty}`);
      break;
    case "likes":
      byTestId("likes").textContent = String(event.total);
      break;
    case "viewers":
      byTestId("viewers").textContent = String(event.count);
      break;
    default:
      return; // unknown events are skipped (SPEC §13)
  }
  renderCard();
}

function onJoined(joined) {
  if (joined.room !== view.room) return;
  const fresh = !view.joined || joined.resync || joined.ep !== view.epoch;
  if (fresh) {
    byTestId("comments").replaceChildren();
    view.offset = 0;
  }
  view.epoch = joined.ep;
  for (const event of joined.recent ?? []) apply(event, { replay: true });
  view.offset = Math.max(view.offset, joined.off);
  view.pin = joined.pin ?? null;
  view.sale = joined.sale ? { ...joined.sale } : null;
  view.joined = true;
  byTestId("viewers").textContent = String(joined.viewers);
  byTestId("likes").textContent = String(joined.likes);
  renderCard();
}

// --- start ------------------------------------------------------------------------------

async function start() {
  const stored = sessionStorage.getItem(USER_KEY);
  const first = await session(stored ? { user: stored } : {}).catch(() => session());
  sessionStorage.setItem(USER_KEY, first.user);
  view.room = first.room;
  byTestId("room").textContent = first.room;
  byTestId("me").textContent = first.name;

  const client = new LiveroomClient({
    url: first.url,
    token: first.token,
    getToken: async () => (await session({ user: first.user })).token,
  });
  showState(byTestId("state"), client);
  client.on("joined", onJoined);
  for (const type of ["comment", "system", "pinned", "unpinned", "sale_opened", "sale_closed",
    "sold_out", "purchase", "stock", "likes", "viewers"]) {
    client.on(type, (event, room) => {
      if (room === undefined || room === view.room) apply({ t: type, ...event });
    });
  }

  const welcome = await client.connect();
  if (typeof welcome?.now === "number") view.skew = welcome.now - Date.now();
  onJoined(await client.join(view.room));

  byTestId("composer").addEventListener("submit", async (e) => {
    e.preventDefault();
    const input = byTestId("comment-input");
    const text = input.value;
    if (!text.trim()) return;
    const error = byTestId("comment-error");
    try {
      await client.comment(view.room, text);
      input.value = "";
      error.textContent = "";
    } catch (err) {
      error.textContent = err instanceof LiveroomError ? `not sent: ${err.code}` : "not sent";
    }
  });
  byTestId("like-button").addEventListener("click", () => {
    client.like(view.room, 1).catch(() => {});
  });
  byTestId("buy-button").addEventListener("click", async () => {
    const sale = view.sale;
    if (sale === null) return;
    view.buying = true;
    renderCard();
    showResult("pending", "…");
    try {
      const result = await client.buy(view.room, sale.id, 1);
      if (result.status === "ok") {
        showResult("ok", `✓ Order ${result.order}: ${result.qty} bought`);
      } else if (result.status in RESULT_TEXT) {
        showResult(result.status, RESULT_TEXT[result.status]());
      } else {
        showResult(result.status, `Not bought: ${result.msg ?? result.status}`);
      }
    } catch (err) {
      showResult("error", `Not bought: ${err instanceof LiveroomError ? err.code : err.message}`);
    } finally {
      view.buying = false;
      renderCard();
    }
  });
  setInterval(renderCard, 1000); // scheduled -> open -> ended as the clock moves
}

start().catch((err) => {
  const state = byTestId("state");
  state.dataset.state = "closed";
  state.textContent = "cannot connect";
  byTestId("comment-error").textContent = `The demo could not start: ${err.message ?? err}`;
});
