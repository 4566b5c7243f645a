// Pins, flash sales and Buy against a real `liveroom serve`, driven through its service API
// (engine/service.py): answers per SPEC §9.3, and a buy whose answer is lost to a cut
// connection is retried with the same rid and never charged twice.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { Server, TcpProxy, killAll, makeClient, mintToken, next, record, waitFor } from "./helpers.mjs";

const ROOM = "shop-1";
const server = new Server({ AUTH_ALLOW_ANONYMOUS: "true" });
const clients = [];
let proxy;

function client(user, options = {}) {
  const c = makeClient(options.url ?? server.url, { token: mintToken({ user, name: `${user}-name` }), ...options });
  clients.push(c);
  return c;
}

async function openSale(saleId, { stock, limit }) {
  const { status, body } = await server.api("POST", "/v1/sales", {
    sale_id: saleId,
    room: ROOM,
    product_id: "p-1",
    stock,
    price: 9900,
    per_user_limit: limit,
    duration: 600,
  });
  assert.equal(status, 201, JSON.stringify(body));
  return body;
}

async function orders(saleId) {
  const { status, body } = await server.api("GET", `/v1/sales/${saleId}/orders?limit=1000`);
  assert.equal(status, 200, JSON.stringify(body));
  return body.orders;
}

before(async () => {
  await server.start();
  proxy = await new TcpProxy(server.wsPort).listen();
});
after(async () => {
  for (const c of clients) c.close();
  await proxy?.close();
  await server.stop("SIGKILL").catch(() => {});
  killAll();
});

test("pin and sale reach the room; buys answer ok, limit_reached and sold_out per SPEC §9.3", async () => {
  const ann = client("u-ann");
  const bob = client("u-bob");
  await Promise.all([ann.connect(), bob.connect()]);
  await ann.join(ROOM);
  await bob.join(ROOM);
  const annSees = record(ann, ["pinned", "sale_opened", "purchase", "stock", "sold_out"]);

  const pinned = next(bob, "pinned");
  const product = { id: "p-1", title: "限时秒杀 保温杯", price: 9900, currency: "CNY", extra: { 颜色: "黑", stars: 5, 包邮: true } };
  assert.equal((await server.api("POST", `/v1/rooms/${ROOM}/pin`, product)).status, 200);
  const [pin] = await pinned;
  assert.deepEqual(pin.product, product);
  assert.deepEqual(bob.room(ROOM).pin, product);

  const opened = next(bob, "sale_opened");
  await openSale("s-basic", { stock: 3, limit: 2 });
  const [saleOpened] = await opened;
  assert.equal(saleOpened.sale.id, "s-basic");
  assert.equal(saleOpened.sale.remaining, 3);
  assert.equal(saleOpened.sale.limit, 2);

  const first = await ann.buy(ROOM, "s-basic", 2);
  assert.equal(first.t, "buy_result");
  assert.equal(first.status, "ok");
  assert.equal(first.qty, 2);
  assert.equal(first.remaining, 1);
  assert.match(first.order, /^s-basic-/);
  assert.equal((await ann.buy(ROOM, "s-basic", 1)).status, "limit_reached");
  const tooMany = await bob.buy(ROOM, "s-basic", 2);
  assert.equal(tooMany.status, "sold_out");
  assert.equal(tooMany.order, undefined);
  const last = await bob.buy(ROOM, "s-basic", 1);
  assert.deepEqual([last.status, last.remaining], ["ok", 0]);
  assert.equal((await bob.buy(ROOM, "s-basic", 1)).status, "sold_out");

  await waitFor(() => annSees.some((c) => c.type === "sold_out"), { what: "sold_out" });
  const purchases = annSees.filter((c) => c.type === "purchase").map((c) => c.args[0].qty);
  assert.deepEqual(purchases, [2, 1]);
  assert.equal(ann.room(ROOM).sale.status, "sold_out");
  assert.equal(ann.room(ROOM).sale.remaining, 0);
  const sold = await orders("s-basic");
  assert.deepEqual(sold.map((o) => o.quantity).sort(), [1, 2]);

  // A late joiner gets the pin and the sale in its snapshot.
  const late = client("u-late");
  await late.connect();
  const snapshot = await late.join(ROOM);
  assert.equal(snapshot.pin.id, "p-1");
  assert.deepEqual([snapshot.sale.id, snapshot.sale.remaining], ["s-basic", 0]);
});

test("a buy whose answer is lost to a cut connection is resent with the same rid and retry: true, and charged once", async () => {
  await openSale("s-cut", { stock: 10, limit: 5 });
  const buyer = client("u-cut", { url: proxy.url });
  await buyer.connect();
  await buyer.join(ROOM);
  const states = record(buyer, ["state"]);

  proxy.swallowAfterNextClientData(300); // the buy reaches the server; its answer does not come back
  const result = await buyer.buy(ROOM, "s-cut", 3);
  assert.equal(result.status, "ok");
  assert.equal(result.qty, 3);
  assert.ok(states.some((s) => s.args[0].state === "reconnecting"), "the connection was not cut");

  const buys = buyer.sent.filter((m) => m.t === "buy");
  assert.equal(buys.length, 2);
  assert.equal(buys[1].rid, buys[0].rid);
  assert.equal(buys[0].retry, undefined);
  assert.equal(buys[1].retry, true);
  const rejoin = buyer.sent.filter((m) => m.t === "join").at(-1);
  assert.equal(buyer.sent.indexOf(rejoin) < buyer.sent.indexOf(buys[1]), true, "the resend waits for the rejoin");

  const placed = (await orders("s-cut")).filter((o) => o.user_id === "u-cut");
  assert.equal(placed.length, 1, JSON.stringify(placed));
  assert.equal(placed[0].order_id, result.order);
  assert.equal(placed[0].quantity, 3);
  const resentAt = buyer.sentAt[buyer.sent.indexOf(buys[1])];
  assert.ok(placed[0].ts_ms < resentAt, "the order was not placed by the first attempt");
  const { body: state } = await server.api("GET", "/v1/sales/s-cut");
  assert.equal(state.sold, 3);

  // The app can retry an attempt itself with its rid: the first answer again, nothing more sold.
  const again = await buyer.buy(ROOM, "s-cut", 3, { rid: buys[0].rid });
  assert.deepEqual([again.status, again.order], ["ok", result.order]);
  assert.equal((await orders("s-cut")).length, 1);
});

test("the JSON codec buys too", async () => {
  await openSale("s-json", { stock: 5, limit: 1 });
  const j = client("u-json", { codec: "json" });
  await j.connect();
  await j.join(ROOM);
  const purchase = next(j, "purchase", { filter: (ev) => ev.sale === "s-json" });
  const result = await j.buy(ROOM, "s-json");
  assert.deepEqual([result.status, result.qty], ["ok", 1]);
  const [event] = await purchase;
  assert.equal(event.name, "u***");
  assert.equal((await j.buy(ROOM, "s-json")).status, "limit_reached");
});

test("buy errors: not_joined rejects with the SPEC code", async () => {
  const c = client("u-nojoin");
  await c.connect();
  await assert.rejects(c.buy("elsewhere", "s-basic"), { code: "not_joined" });
});

test("an anonymous viewer (no token): welcome without exp, events arrive, comment and buy are read_only", async () => {
  const anon = makeClient(server.url, {});
  clients.push(anon);
  const welcome = await anon.connect();
  assert.match(welcome.uid, /^anon:/);
  assert.equal(welcome.exp, undefined);
  const joined = await anon.join(ROOM); // the room is live: its viewers and sales made it
  assert.equal(joined.room, ROOM);
  await assert.rejects(anon.comment(ROOM, "hi"), { code: "read_only" });
  await assert.rejects(anon.buy(ROOM, "s-json"), { code: "read_only" });
  await assert.rejects(anon.join("never-created"), { code: "room_not_live" });
});
