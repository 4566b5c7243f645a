// Reconnecting against a real `liveroom serve`: resume by offset behind a proxy that is
// cut and refuses for a while (backoff, no gap, no duplicate), resync after a server
// restart (new epoch), the heartbeat (server pings answered; a frozen connection
// replaced), and token expiry and refresh (SPEC §1, §5.7, §8, §11).
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { Server, TcpProxy, killAll, makeClient, mintToken, next, offsets, record, sleep, waitFor, within } from "./helpers.mjs";

// Short server timers: pings every 0.2 s to a quiet client, closed after 0.8 s of silence;
// pings and refreshes may come faster than the default 1/s (the heartbeat test's).
const server = new Server({
  SERVER_HEARTBEAT_INTERVAL: 0.2,
  SERVER_IDLE_TIMEOUT: 0.8,
  ROOMS_PING_RATE: 20,
  ROOMS_PING_BURST: 20,
});
const clients = [];
let proxy;

function client(user, options = {}) {
  const c = makeClient(options.url ?? server.url, { token: mintToken({ user }), ...options });
  clients.push(c);
  return c;
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

test("after a cut, the client reconnects with growing delays and resumes by offset: no gap, no duplicate", async () => {
  const ann = client("u-ann");
  const bob = client("u-bob", { url: proxy.url, reconnect: { initialDelay: 0.05, maxDelay: 0.2, jitter: 0.5 } });
  await Promise.all([ann.connect(), bob.connect()]);
  await ann.join("live-resume");
  await bob.join("live-resume");
  const seen = record(bob, ["comment", "joined", "state"]);
  const acked = [];
  const say = async (text) => acked.push((await ann.comment("live-resume", text)).off);
  for (const i of [1, 2, 3]) await say(`before ${i}`);
  await waitFor(() => offsets(seen).length === 3, { what: "3 comments" });

  proxy.refuse = true;
  proxy.cut();
  for (const i of [4, 5, 6, 7, 8]) await say(`while away ${i}`);
  await waitFor(() => seen.filter((c) => c.type === "state" && c.args[0].state === "reconnecting").length >= 4, {
    what: "4 reconnect attempts",
  });
  proxy.refuse = false;
  await waitFor(() => bob.state === "open" && bob.room("live-resume").joined, { what: "the rejoin" });
  for (const i of [9, 10]) await say(`after ${i}`);
  await waitFor(() => offsets(seen).length === 10, { what: "10 comments" });
  await sleep(100);

  assert.deepEqual(offsets(seen), acked);
  assert.deepEqual(
    seen.filter((c) => c.type === "comment").map((c) => c.args[0].text),
    ["before 1", "before 2", "before 3", "while away 4", "while away 5", "while away 6", "while away 7", "while away 8", "after 9", "after 10"],
  );
  const resumeJoin = bob.sent.filter((m) => m.t === "join").at(-1);
  assert.equal(resumeJoin.off, acked[2]);
  assert.equal(typeof resumeJoin.ep, "string");
  const rejoined = seen.filter((c) => c.type === "joined").at(-1).args[0];
  assert.equal(rejoined.resync, false);
  assert.deepEqual(rejoined.recent.map((e) => e.off), acked.slice(3, 8));

  const attempts = seen.filter((c) => c.type === "state" && c.args[0].state === "reconnecting").map((c) => c.args[0]);
  attempts.forEach((a, i) => {
    const base = Math.min(0.2, 0.05 * 2 ** i);
    assert.equal(a.attempt, i + 1);
    assert.ok(a.delay <= base && a.delay >= base / 2, `attempt ${a.attempt}: delay ${a.delay}, base ${base}`);
  });
  assert.equal(attempts[0].code, 1006);
});

test("after a server restart the rejoin resyncs (new epoch), and the new epoch's low offsets are delivered", async () => {
  const restartable = new Server();
  await restartable.start();
  try {
    const opts = { token: mintToken({ user: "u-r1" }), reconnect: { initialDelay: 0.1, maxDelay: 0.3, jitter: 0.5 } };
    const ann = client("u-r1", { url: restartable.url, ...opts });
    const bob = client("u-r2", { url: restartable.url, ...opts, token: mintToken({ user: "u-r2" }) });
    await Promise.all([ann.connect(), bob.connect()]);
    const first = await bob.join("live-restart");
    await ann.join("live-restart");
    for (const i of [1, 2, 3, 4]) await ann.comment("live-restart", `old ${i}`);
    await waitFor(() => bob.room("live-restart").offset === 4, { what: "offset 4" });
    const seen = record(bob, ["joined", "comment", "state"]);

    await restartable.stop("SIGTERM");
    await waitFor(() => seen.some((c) => c.type === "state" && c.args[0].state === "reconnecting"), { what: "reconnecting" });
    assert.equal(seen.find((c) => c.type === "state").args[0].code, 1001);
    await restartable.start();
    const [joined, info] = await next(bob, "joined", { timeout: 10000 });
    assert.equal(joined.resync, true);
    assert.equal(info.resumed, false);
    assert.notEqual(joined.ep, first.ep);
    assert.equal(bob.sent.filter((m) => m.t === "join").at(-1).off, 4);

    await waitFor(() => ann.state === "open" && ann.room("live-restart").joined, { timeout: 10000, what: "ann back" });
    const delivered = next(bob, "comment", { filter: (ev) => ev.text === "new epoch" });
    const fresh = await ann.comment("live-restart", "new epoch");
    assert.ok(fresh.off <= 4, `offset ${fresh.off}`);
    const [event] = await delivered;
    assert.equal(event.off, fresh.off);
    assert.equal(bob.room("live-restart").epoch, joined.ep);
  } finally {
    await restartable.stop("SIGKILL").catch(() => {});
  }
});

test("heartbeat: the websocket stack answers the server's pings, so a quiet client is never idle-closed", async () => {
  const quiet = client("u-quiet", { heartbeat: false });
  const states = record(quiet, ["state"]);
  await quiet.connect();
  await quiet.join("live-quiet");
  await sleep(2000); // 2.5x the server's idle timeout, without a message either way
  assert.equal(quiet.state, "open");
  assert.deepEqual(states.map((s) => s.args[0].state), ["connecting", "open"]);

  // The idle timeout is real: a socket that does not answer pings is closed with 4009.
  const raw = new WebSocket(`${server.url}?token=${mintToken({ user: "u-mute" })}`, ["liveroom.v1.msgpack"], { autoPong: false });
  const code = await within(new Promise((resolve) => raw.on("close", resolve)), 5000, "the idle close");
  assert.equal(code, 4009);
});

test("heartbeat: a frozen connection is detected by the client's ping and replaced, resuming the room", async () => {
  const c = client("u-frozen", { url: proxy.url, heartbeat: { interval: 0.3, timeout: 0.3 } });
  const other = client("u-talker");
  await Promise.all([c.connect(), other.connect()]);
  await c.join("live-frozen");
  await other.join("live-frozen");
  const seen = record(c, ["comment", "state"]);
  const t0 = Date.now();
  proxy.freeze();
  const posted = (await other.comment("live-frozen", "during the freeze")).off;
  const [state] = await next(c, "state", { filter: (s) => s.state === "open", timeout: 5000 });
  assert.equal(state.reconnected, true);
  const took = Date.now() - t0;
  assert.ok(took >= 500 && took < 3000, `replaced after ${took} ms`);
  assert.equal(seen.find((s) => s.type === "state").args[0].code, 1006);
  assert.ok(c.sent.some((m) => m.t === "ping"), "no application ping was sent");
  await waitFor(() => offsets(seen).includes(posted), { what: "the comment posted during the freeze" });
  assert.deepEqual(offsets(seen), [posted]);
});

test("token refresh: with getToken the client refreshes before expiry and the connection outlives its tokens", async () => {
  let minted = 0;
  const c = client("u-refresh", {
    token: undefined,
    getToken: async () => {
      minted += 1;
      return mintToken({ user: "u-refresh", ttl: 1.5 });
    },
  });
  const seen = record(c, ["refreshed", "state"]);
  const welcome = await c.connect();
  assert.ok(welcome.exp - Date.now() < 2000);
  await c.join("live-refresh");
  await sleep(3500);
  assert.equal(c.state, "open");
  assert.deepEqual(seen.filter((s) => s.type === "state").map((s) => s.args[0].state), ["connecting", "open"]);
  const refreshed = seen.filter((s) => s.type === "refreshed").map((s) => s.args[0]);
  assert.ok(refreshed.length >= 2, `${refreshed.length} refreshes`);
  assert.ok(refreshed.at(-1).exp > welcome.exp + 1000);
  assert.ok(minted >= 3);
  assert.equal((await c.comment("live-refresh", "still in")).t, "ack");
});

test("token refresh: refused tokens reject with the SPEC code and the old one stays in force", async () => {
  const c = client("u-picky", { token: mintToken({ user: "u-picky", rooms: ["a-room", "b-room"] }) });
  await c.connect();
  await c.join("a-room");
  await assert.rejects(c.refresh(mintToken({ user: "someone-else" })), { code: "token_invalid" });
  await assert.rejects(c.refresh(mintToken({ user: "u-picky", ttl: -5 })), { code: "token_expired" });
  await assert.rejects(c.refresh(mintToken({ user: "u-picky", rooms: ["b-room"] })), { code: "forbidden_room" });
  await assert.rejects(c.refresh("v1.garbage.token"), { code: "token_invalid" });
  const ok = await c.refresh(mintToken({ user: "u-picky", rooms: ["a-room"], ttl: 7200 }));
  assert.equal(ok.t, "refreshed");
  assert.ok(Math.abs(ok.exp - (Date.now() + 7200_000)) < 60_000);
  assert.equal(c.state, "open");
});

test("an expiring token without getToken: the server closes with 4002 and the session ends with token_expired", async () => {
  const c = client("u-expiring", { token: mintToken({ user: "u-expiring", ttl: 1 }) });
  await c.connect();
  const [state] = await next(c, "state", { filter: (s) => s.state === "closed", timeout: 5000 });
  assert.equal(state.code, 4002);
  assert.equal(state.error.code, "token_expired");
  await assert.rejects(c.comment("x", "y"), { code: "closed" });
});
