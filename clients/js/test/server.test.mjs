// Against a real `liveroom serve`: connecting with tokens, rooms, comments, likes, the
// server's error answers, ping, leave, and the JSON codec end to end.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { LiveroomError } from "../src/index.js";
import { Server, killAll, makeClient, mintToken, next, offsets, record, waitFor } from "./helpers.mjs";

const server = new Server();
const clients = [];

function client(user, options = {}) {
  const c = makeClient(server.url, { token: mintToken({ user, name: `Name ${user}` }), ...options });
  clients.push(c);
  return c;
}

before(() => server.start());
after(async () => {
  for (const c of clients) c.close();
  await server.stop("SIGKILL").catch(() => {});
  killAll();
});

test("connect with a token: welcome names the user, its role, heartbeat and expiry", async () => {
  const c = client("u-welcome");
  const states = record(c, ["state"]);
  const welcome = await c.connect();
  assert.equal(welcome.t, "welcome");
  assert.equal(welcome.v, 1);
  assert.equal(welcome.uid, "u-welcome");
  assert.equal(welcome.name, "Name u-welcome");
  assert.equal(welcome.role, "viewer");
  assert.equal(welcome.hb, 20000);
  assert.ok(Math.abs(welcome.exp - (Date.now() + 3600_000)) < 60_000, `exp ${welcome.exp}`);
  assert.ok(Math.abs(c.serverNow() - Date.now()) < 2000);
  assert.deepEqual(states.map((s) => s.args[0].state), ["connecting", "open"]);
  assert.equal(c.codec, "msgpack");
  c.close();
  assert.equal(c.state, "closed");
});

test("a badly signed token is refused with token_invalid, an expired one with token_expired; no retry loop", async () => {
  const forged = client("u-bad", { token: mintToken({ user: "u-bad", secret: "not-the-secret" }) });
  const states = record(forged, ["state"]);
  await assert.rejects(forged.connect(), (e) => {
    assert.ok(e instanceof LiveroomError);
    assert.equal(e.code, "token_invalid");
    assert.equal(e.closeCode, 4001);
    assert.match(e.message, /token/);
    return true;
  });
  const expired = client("u-old", { token: mintToken({ user: "u-old", ttl: -10 }) });
  await assert.rejects(expired.connect(), { code: "token_expired", closeCode: 4002 });
  await new Promise((resolve) => setTimeout(resolve, 200));
  assert.deepEqual(states.map((s) => s.args[0].state), ["connecting", "closed"]);
  assert.equal(expired.state, "closed");
});

test("two viewers see each other's comments in order, each exactly once, with the acked offsets", async () => {
  const ann = client("u-ann");
  const bob = client("u-bob");
  await Promise.all([ann.connect(), bob.connect()]);
  const joined = await ann.join("live-1");
  assert.equal(joined.t, "joined");
  assert.equal(joined.room, "live-1");
  assert.equal(joined.resync, false);
  await bob.join("live-1");
  const annSees = record(ann, ["comment"]);
  const bobSees = record(bob, ["comment"]);
  const acks = [];
  for (const [who, text] of [
    [ann, "你好 🔥"],
    [bob, "hi Ann"],
    [ann, "第三条"],
    [bob, "four"],
  ]) {
    acks.push(await who.comment("live-1", text));
  }
  const expected = acks.map((a) => a.off);
  assert.deepEqual(expected, [...expected].sort((x, y) => x - y));
  await waitFor(() => annSees.length === 4 && bobSees.length === 4, { what: "4 comments each" });
  for (const seen of [annSees, bobSees]) {
    assert.deepEqual(offsets(seen), expected);
    assert.deepEqual(
      seen.map((c) => [c.args[0].text, c.args[0].uid, c.args[1]]),
      [
        ["你好 🔥", "u-ann", "live-1"],
        ["hi Ann", "u-bob", "live-1"],
        ["第三条", "u-ann", "live-1"],
        ["four", "u-bob", "live-1"],
      ],
    );
  }
  // A late joiner gets them in joined.recent, and as events, once.
  const cat = client("u-cat");
  const catSees = record(cat, ["comment", "joined"]);
  await cat.connect();
  const late = await cat.join("live-1");
  assert.deepEqual(late.recent.map((e) => e.off), expected);
  assert.deepEqual(offsets(catSees), expected);
  assert.equal(catSees[0].type, "joined");
});

test("likes: the ack, and the conflated total reaches the other viewer", async () => {
  const ann = client("u-liker");
  const bob = client("u-watcher");
  await Promise.all([ann.connect(), bob.connect()]);
  await ann.join("live-likes");
  await bob.join("live-likes");
  const total = next(bob, "likes", { filter: (ev) => ev.total === 13 });
  const ack = await ann.like("live-likes", 3);
  assert.equal(ack.t, "ack");
  assert.equal(ack.off, undefined);
  await ann.like("live-likes", 100); // valid, counted as 10 (rooms.max_likes_per_message)
  const [event, room] = await total;
  assert.deepEqual([event, room], [{ t: "likes", total: 13 }, "live-likes"]);
  assert.equal(bob.room("live-likes").likes, 13);
});

test("the server's refusals reject the command with the SPEC error code; the connection stays open", async () => {
  const c = client("u-errors");
  const narrow = client("u-narrow", { token: mintToken({ user: "u-narrow", rooms: ["only-this"] }) });
  await Promise.all([c.connect(), narrow.connect()]);
  await c.join("live-errors");
  await assert.rejects(c.comment("live-errors", "长".repeat(201)), { name: "LiveroomError", code: "comment_too_long" });
  await assert.rejects(c.comment("live-errors", "   "), { code: "empty_comment" });
  await assert.rejects(c.comment("live-errors", "bell \u0007"), { code: "invalid_field" });
  await assert.rejects(c.comment("not-joined-room", "hi"), { code: "not_joined" });
  await assert.rejects(narrow.join("live-errors"), { code: "forbidden_room" });
  assert.deepEqual(narrow.rooms, []);
  const ok = await c.comment("live-errors", "still here");
  assert.equal(typeof ok.off, "number");
  assert.equal(c.state, "open");
});

test("ping answers pong with the server's clock", async () => {
  const c = client("u-ping");
  await c.connect();
  const pong = await c.ping();
  assert.equal(pong.t, "pong");
  assert.ok(Math.abs(pong.now - Date.now()) < 2000);
});

test("leave: no more events of the room", async () => {
  const ann = client("u-leaver");
  const bob = client("u-stayer");
  await Promise.all([ann.connect(), bob.connect()]);
  await ann.join("live-leave");
  await bob.join("live-leave");
  const left = await ann.leave("live-leave");
  assert.equal(left.t, "left");
  assert.equal(left.room, "live-leave");
  const annSees = record(ann, ["comment"]);
  const bobSees = next(bob, "comment");
  await bob.comment("live-leave", "anyone?");
  await bobSees;
  await new Promise((resolve) => setTimeout(resolve, 100));
  assert.deepEqual(annSees, []);
  await assert.rejects(ann.comment("live-leave", "x"), { code: "not_joined" });
});

test("the JSON codec end to end: negotiated, commands answered, events decoded", async () => {
  const j = client("u-json", { codec: "json" });
  const m = client("u-msgpack");
  await Promise.all([j.connect(), m.connect()]);
  assert.equal(j.codec, "json");
  await j.join("直播间-1");
  await m.join("直播间-1");
  const seen = next(j, "comment", { filter: (ev) => ev.text === "从 msgpack 来的" });
  const ack = await j.comment("直播间-1", "从 JSON 来的 🔥");
  assert.equal(typeof ack.off, "number");
  await m.comment("直播间-1", "从 msgpack 来的");
  const [event, room] = await seen;
  assert.equal(room, "直播间-1");
  assert.equal(event.uid, "u-msgpack");
  await assert.rejects(j.comment("直播间-1", ""), { code: "empty_comment" });
  assert.equal((await j.ping()).t, "pong");
});

test("a joined with more than 4096 events (rooms.snapshot_size 5000) is accepted: server messages have no item bound", async () => {
  const big = new Server({ ROOMS_HISTORY_SIZE: 5000, ROOMS_SNAPSHOT_SIZE: 5000, ROOMS_COMMENT_RATE: 100000, ROOMS_COMMENT_BURST: 100000 });
  await big.start();
  try {
    const writer = client("u-writer", { url: big.url });
    await writer.connect();
    await writer.join("live-big");
    const acks = await Promise.all(Array.from({ length: 4200 }, (_, i) => writer.comment("live-big", `#${i}`)));
    const reader = client("u-reader", { url: big.url });
    await reader.connect();
    const seen = record(reader, ["comment"]);
    const joined = await reader.join("live-big");
    assert.equal(joined.recent.length, 4200);
    assert.deepEqual(offsets(seen), acks.map((a) => a.off));
  } finally {
    await big.stop("SIGKILL").catch(() => {});
  }
});
