// The demo's host console: pin and unpin catalogue products, open / restock / close the
// pinned product's flash sale, post announcements, and watch the room: its figures
// (polled from the demo's figures endpoint every second) and its live events (through a
// websocket client of its own, role host). Every action is a demo endpoint, which is the
// service API's handler for the demo room; its JSON errors are shown as they come.

import { LiveroomClient } from "./liveroom.mjs";
import {
  STATUS_TEXT,
  api,
  appendBounded,
  byTestId,
  el,
  money,
  productImage,
  session,
  showState,
} from "./common.js";

const POLL_MS = 1000;
const MAX_FEED = 200;

const state = {
  room: null,
  catalogue: [], // [{product, sale: {price, stock, per_user_limit}}]
  pin: null, // pinned product id
  sale: null, // the current sale's state, from the figures
  formFor: null, // product id the sale form was filled for
};

const roomPath = (tail) => `api/rooms/${encodeURIComponent(state.room)}/${tail}`;

function say(kind, text) {
  const node = byTestId("host-result");
  node.dataset.kind = kind;
  node.textContent = text;
}

/** Runs a console action; says what it did, or the endpoint's error. */
async function act(what, call) {
  try {
    const answer = await call();
    say("ok", what(answer));
    await refresh();
  } catch (err) {
    say("error", `${err.code ?? "error"}: ${err.message}`);
  }
}

function feed(kind, who, text) {
  const item = el(
    "li",
    { class: `line ${kind}`, testid: `feed-${kind}` },
    el("span", { class: "who", text: who }),
    el("span", { class: "text", text }),
  );
  appendBounded(byTestId("feed"), item, MAX_FEED);
}

// --- catalogue and sale form ------------------------------------------------------------

function renderCatalogue() {
  const list = byTestId("catalogue");
  list.replaceChildren(
    ...state.catalogue.map(({ product }) => {
      const pinned = product.id === state.pin;
      const pin = el("button", { type: "button", testid: "pin-button", text: pinned ? "Pinned" : "Pin" });
      pin.disabled = pinned;
      pin.addEventListener("click", () =>
        act(() => `Pinned ${product.title}`, () => api("POST", roomPath("pin"), product)),
      );
      return el(
        "li",
        { class: pinned ? "item pinned" : "item", testid: "catalogue-item", data: { productId: product.id } },
        productImage(product, "catalogue-image"),
        el(
          "div",
          { class: "item-body" },
          el("div", { class: "item-title", text: product.title }),
          el("div", { class: "item-price", text: money(product.price, product.currency) }),
        ),
        pin,
      );
    }),
  );
}

function fillSaleForm() {
  if (state.formFor === state.pin) return;
  state.formFor = state.pin;
  const item = state.catalogue.find(({ product }) => product.id === state.pin);
  if (!item) return;
  byTestId("sale-price").value = item.sale.price;
  byTestId("sale-stock").value = item.sale.stock;
  byTestId("sale-limit").value = item.sale.per_user_limit;
}

function renderSale() {
  const sale = state.sale;
  const now = byTestId("sale-now");
  now.dataset.status = sale?.status ?? "none";
  if (!sale) {
    now.textContent = "No sale yet.";
    return;
  }
  const title = state.catalogue.find(({ product }) => product.id === sale.product_id)?.product.title;
  now.textContent =
    `${sale.sale_id} · ${title ?? sale.product_id} · ${money(sale.price)} · ` +
    `${STATUS_TEXT[sale.status] ?? sale.status} · ${sale.remaining} of ${sale.initial + sale.restocked} left`;
}

// --- figures ----------------------------------------------------------------------------

async function refresh() {
  const f = await api("GET", roomPath("figures"));
  byTestId("fig-viewers").textContent = String(f.viewers);
  byTestId("fig-orders").textContent = String(f.orders);
  byTestId("fig-units").textContent = String(f.units_sold);
  byTestId("fig-stock").textContent = f.stock_left === null ? "–" : String(f.stock_left);
  byTestId("fig-gmv").textContent = money(f.gmv);
  const pin = f.pin?.id ?? null;
  if (pin !== state.pin) {
    state.pin = pin;
    renderCatalogue();
  }
  state.sale = f.sale;
  fillSaleForm();
  renderSale();
}

async function poll() {
  try {
    await refresh();
  } catch {
    // the server is restarting: the next poll tries again
  }
  setTimeout(poll, POLL_MS);
}

// --- start ------------------------------------------------------------------------------

async function start() {
  state.catalogue = await api("GET", "catalogue.json");
  const first = await session({ role: "host" });
  state.room = first.room;
  byTestId("room").textContent = first.room;
  renderCatalogue();
  await poll();

  const intNumber = (id) => Number.parseInt(byTestId(id).value, 10);
  byTestId("unpin-button").addEventListener("click", () =>
    act((a) => (a.unpinned ? "Unpinned" : "Nothing was pinned"), () => api("DELETE", roomPath("pin"))),
  );
  byTestId("sale-form").addEventListener("submit", (e) => {
    e.preventDefault();
    if (state.pin === null) {
      say("error", "Pin a product first: the sale is for the pinned product.");
      return;
    }
    const body = {
      product_id: state.pin,
      price: intNumber("sale-price"),
      stock: intNumber("sale-stock"),
      per_user_limit: intNumber("sale-limit"),
    };
    act((s) => `Sale ${s.sale_id} opened: ${s.remaining} units`, () => api("POST", "api/sales", body));
  });
  byTestId("restock").addEventListener("click", () => {
    if (!state.sale) return say("error", "No sale to restock.");
    const path = `api/sales/${encodeURIComponent(state.sale.sale_id)}/restock`;
    act((s) => `Restocked: ${s.remaining} left`, () => api("POST", path, { quantity: intNumber("restock-qty") }));
  });
  byTestId("close-sale").addEventListener("click", () => {
    if (!state.sale) return say("error", "No sale to close.");
    const path = `api/sales/${encodeURIComponent(state.sale.sale_id)}/close`;
    act((s) => `Sale ${s.sale_id} closed`, () => api("POST", path));
  });
  byTestId("message-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const input = byTestId("message-input");
    const text = input.value;
    act(() => {
      input.value = "";
      return "Announced";
    }, () => api("POST", roomPath("messages"), { text }));
  });

  const client = new LiveroomClient({
    url: first.url,
    token: first.token,
    getToken: async () => (await session({ role: "host" })).token,
  });
  showState(byTestId("state"), client);
  const live = {
    comment: (e) => feed("comment", e.name, e.text),
    system: (e) => feed("system", "📢", e.text),
    purchase: (e) => feed("purchase", "🛒", `${e.name} bought ${e.qty}`),
    pinned: (e) => feed("pin", "📌", `pinned ${e.product.title}`),
    unpinned: (e) => feed("pin", "📌", `unpinned ${e.pid}`),
    sale_opened: (e) => feed("sale", "⚡", `sale ${e.sale.id} opened: ${e.sale.stock} units`),
    sold_out: (e) => feed("sale", "⚡", `sale ${e.sale} sold out`),
    sale_closed: (e) => feed("sale", "⚡", `sale ${e.sale} ${e.reason}`),
    stock: (e) => {
      if (state.sale?.sale_id === e.sale) byTestId("fig-stock").textContent = String(e.remaining);
    },
    viewers: (e) => {
      byTestId("fig-viewers").textContent = String(e.count);
    },
  };
  let seen = 0; // last offset shown (the feed skips what a resume repeats)
  const handle = (type, event) => {
    if (event.off !== undefined && event.off !== null) {
      if (event.off <= seen) return;
      seen = event.off;
    }
    live[type]?.(event);
  };
  for (const type of Object.keys(live)) client.on(type, (event) => handle(type, event));
  const onJoined = (joined) => {
    if (joined.resync) seen = 0;
    for (const event of joined.recent ?? []) handle(event.t, event);
    seen = Math.max(seen, joined.off);
  };
  client.on("joined", onJoined);
  await client.connect();
  onJoined(await client.join(state.room));
}

start().catch((err) => {
  const node = byTestId("state");
  node.dataset.state = "closed";
  node.textContent = "cannot connect";
  say("error", `The console could not start: ${err.message ?? err}`);
});
