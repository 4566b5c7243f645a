// The client's logic against an in-memory server (test/fake.mjs): what a real server
// cannot be made to do on demand (unsolicited resyncs, duplicate offsets, unknown types,
// refused payloads, each close code, "try again" answers), fast and deterministic.
import { test } from "node:test";
import assert from "node:assert/strict";
import { LiveroomClient, LiveroomError, MSGPACK } from "../src/index.js";
import { FakeServer, comment, simpleServer } from "./fake.mjs";
import { next, record, sleep, waitFor, within } from "./helpers.mjs";

const FAST = { initialDelay: 0.01, maxDelay: 0.08, jitter: 0.5 };

function clientOf(server, options = {}) {
  return new LiveroomClient({ url: "ws://fake/", token: "t0", WebSocket: server.WebSocket, reconnect: FAST, ...options });
}

test("connect sends the token in the query string, offers the codec's subprotocol and resolves with welcome", async () => {
  const server = simpleServer();
  const client = clientOf(server, { url: "ws://fake/live?x=1", token: "v1.abc.def" });
  const states = record(client, ["state"]);
  const welcome = await client.connect();
  assert.equal(welcome.t, "welcome");
  assert.equal(server.last.url, "ws://fake/live?x=1&token=v1.abc.def");
  assert.deepEqual(server.last.offered, ["liveroom.v1.msgpack"]);
  assert.equal(server.last.binaryType, "arraybuffer");
  assert.deepEqual(states.map((s) => s.args[0].state), ["connecting", "open"]);
  client.close();
  assert.equal(client.state, "closed");
});

test("the client uses the codec the server selected", async () => {
  const server = new FakeServer({
    onConnect(socket) {
      socket.accept("liveroom.v1.json");
      socket.welcome();
    },
  });
  const client = clientOf(server);
  await client.connect();
  assert.equal(client.codec, "json");
  client.ping().catch(() => {});
  await waitFor(() => server.last.received.length === 1);
  assert.equal(server.last.received[0].t, "ping");
  client.close();
});

test("events reach handlers once, in offset order: duplicates dropped, conflated and unknown types handled", async () => {
  const server = simpleServer({ joined: () => ({ off: 2, recent: [comment(1), comment(2)] }) });
  const client = clientOf(server);
  const calls = record(client, ["comment", "likes", "event", "error"]);
  await client.connect();
  await client.join("r1");
  server.last.deliver({ t: "batch", room: "r1", ev: [comment(2), comment(3), { t: "likes", total: 5 }] });
  server.last.deliver({ t: "batch", room: "r1", ev: [comment(3), { t: "confetti", n: 1 }, comment(4)] });
  server.last.deliver(MSGPACK.dumps({ t: "shout", text: "a type added later in v1" }));
  server.last.deliver({ t: "batch", room: "other", ev: [comment(9)] });
  await waitFor(() => calls.filter((c) => c.type === "comment").length === 4);
  await sleep(20);
  assert.deepEqual(
    calls.filter((c) => c.type === "comment").map((c) => [c.args[0].off, c.args[1], c.args[2].replay]),
    [
      [1, "r1", true],
      [2, "r1", true],
      [3, "r1", false],
      [4, "r1", false],
    ],
  );
  assert.deepEqual(calls.filter((c) => c.type === "likes").map((c) => c.args[0]), [{ t: "likes", total: 5 }]);
  assert.equal(calls.filter((c) => c.type === "event").length, 5);
  assert.deepEqual(calls.filter((c) => c.type === "error"), []);
  assert.equal(client.room("r1").offset, 4);
  assert.equal(client.room("r1").likes, 5);
  client.close();
});

test("an unsolicited joined (resync) replaces the view: later, lower offsets are delivered", async () => {
  const server = simpleServer({ joined: () => ({ off: 7, recent: [comment(7)] }) });
  const client = clientOf(server);
  const calls = record(client, ["joined", "comment"]);
  await client.connect();
  await client.join("r1");
  server.last.deliver({ t: "joined", room: "r1", ep: "e2", off: 1, viewers: 1, likes: 0, resync: true, recent: [comment(1, "new epoch")] });
  server.last.deliver({ t: "batch", room: "r1", ev: [comment(2)] });
  await waitFor(() => calls.filter((c) => c.type === "comment").length === 3);
  const joined = calls.filter((c) => c.type === "joined");
  assert.equal(joined.length, 2);
  assert.equal(joined[1].args[0].resync, true);
  assert.equal(joined[1].args[1].unsolicited, true);
  assert.deepEqual(calls.filter((c) => c.type === "comment").map((c) => c.args[0].off), [7, 1, 2]);
  assert.deepEqual([client.room("r1").epoch, client.room("r1").offset], ["e2", 2]);
  client.close();
});

test("a refused server message never reaches the application: its command rejects with protocol, others go to error", async () => {
  const server = simpleServer({
    onMessage(socket, message) {
      if (message.t === "buy") socket.deliver(MSGPACK.dumps({ t: "buy_result", rid: message.rid, sale: "s1", status: "maybe" }));
    },
  });
  const client = clientOf(server);
  const errors = record(client, ["error", "comment"]);
  await client.connect();
  await client.join("r1");
  await assert.rejects(client.buy("r1", "s1"), (e) => e instanceof LiveroomError && e.code === "protocol" && e.field === "status");
  server.last.deliver(MSGPACK.dumps({ t: "batch", room: "r1", ev: [{ ...comment(5), off: -1 }] }));
  server.last.deliver(new Uint8Array([0x81, 0xa1, 0x74, 0xc4, 0x00])); // {"t": bin}: malformed
  server.last.deliver("{\"t\":\"ping\"}"); // a text frame on msgpack
  await waitFor(() => errors.filter((c) => c.type === "error").length === 3);
  assert.ok(errors.every((c) => c.type === "error" && c.args[0].code === "protocol"), JSON.stringify(errors));
  assert.equal(client.state, "open");
  client.close();
});

test("server errors reject the command with the SPEC code; errors without a known rid go to error handlers", async () => {
  const server = simpleServer({
    onMessage(socket, message) {
      if (message.t === "comment") socket.deliver({ t: "error", code: "comment_too_long", msg: "too long", rid: message.rid });
    },
  });
  const client = clientOf(server);
  await client.connect();
  await client.join("r1");
  await assert.rejects(client.comment("r1", "x".repeat(300)), { name: "LiveroomError", code: "comment_too_long" });
  const error = next(client, "error");
  server.last.deliver({ t: "error", code: "invalid_field", msg: "rid: expected a string" });
  const [e] = await error;
  assert.equal(e.code, "invalid_field");
  client.close();
});

test("invalid commands are refused locally with invalid_field, before anything is sent", async () => {
  const server = simpleServer();
  const client = clientOf(server);
  await assert.rejects(client.comment("r1", "hi"), { code: "closed" });
  await client.connect();
  await assert.rejects(client.join("live 42"), { code: "invalid_field", field: "room" });
  await assert.rejects(client.comment("r1", "x".repeat(2001)), { code: "invalid_field", field: "text" });
  await assert.rejects(client.comment("r1", "\ud800"), { code: "invalid_field", field: "text" });
  await assert.rejects(client.like("r1", 101), { code: "invalid_field", field: "n" });
  await assert.rejects(client.buy("r1", "s1", 0), { code: "invalid_field", field: "qty" });
  await assert.rejects(client.refresh(""), { code: "invalid_field", field: "token" });
  await sleep(20);
  assert.deepEqual(server.last.received, []);
  client.close();
});

test("a buy answered 'try again' is sent again with the same rid and retry: true", async () => {
  let presses = 0;
  const server = simpleServer({
    onMessage(socket, message) {
      if (message.t !== "buy") return;
      presses += 1;
      const answer = presses === 1 ? { status: "error", msg: "try again" } : { status: "ok", order: "s1-1", qty: 1 };
      socket.deliver({ t: "buy_result", rid: message.rid, sale: "s1", ...answer });
    },
  });
  const client = clientOf(server);
  await client.connect();
  await client.join("r1");
  const result = await within(client.buy("r1", "s1"), 3000, "buy");
  assert.equal(result.status, "ok");
  const buys = server.last.received.filter((m) => m.t === "buy");
  assert.equal(buys.length, 2);
  assert.equal(buys[0].rid, buys[1].rid);
  assert.equal(buys[0].retry, undefined);
  assert.equal(buys[1].retry, true);
  client.close();
});

test("close codes: bug-class codes end the session, others reconnect and rejoin", async (t) => {
  for (const [code, expected] of [
    [1007, "closed"],
    [1003, "closed"],
    [4003, "closed"],
    [1000, "closed"],
    [1001, "open"],
    [1011, "open"],
    [4008, "open"],
    [4009, "open"],
    [4999, "open"],
    [1006, "open"],
  ]) {
    await t.test(`close ${code}`, async () => {
      const server = simpleServer();
      const client = clientOf(server);
      await client.connect();
      await client.join("r1");
      const done = next(client, "state", { filter: (s) => s.state === expected, timeout: 2000 });
      server.last.drop(code, "bye");
      const [state] = await done;
      if (expected === "open") {
        assert.equal(state.reconnected, true);
        await waitFor(() => client.room("r1")?.joined, { what: "the rejoin" });
        const join = server.last.received.find((m) => m.t === "join");
        assert.deepEqual([join.off, join.ep], [0, "e1"]);
      } else {
        assert.equal(state.code, code);
        assert.equal(server.sockets.length, 1);
      }
      client.close();
    });
  }
});

test("an expired token ends the session without getToken, and is replaced with getToken", async () => {
  const server = simpleServer();
  const plain = clientOf(server);
  await plain.connect();
  const closed = next(plain, "state", { filter: (s) => s.state === "closed" });
  server.last.drop(4002, "token expired");
  const [state] = await closed;
  assert.equal(state.error.code, "token_expired");

  let n = 0;
  const refreshing = clientOf(server, { token: undefined, getToken: async () => `tok-${++n}` });
  await refreshing.connect();
  const reopened = next(refreshing, "state", { filter: (s) => s.state === "open" });
  server.last.drop(4002, "token expired");
  await reopened;
  assert.ok(server.last.url.endsWith("token=tok-2"), server.last.url);
  refreshing.close();
});

test("a token refused at connect rejects connect() with token_invalid, and no reconnect follows", async () => {
  const server = new FakeServer({
    onConnect(socket) {
      socket.accept();
      socket.drop(4001, "token_invalid: bad token signature");
    },
  });
  const client = clientOf(server);
  await assert.rejects(client.connect(), { code: "token_invalid", closeCode: 4001 });
  await sleep(50);
  assert.equal(client.state, "closed");
  assert.equal(server.sockets.length, 1);
});

test("reconnect delays grow exponentially up to maxDelay, with jitter", async () => {
  let up = true;
  const server = new FakeServer({
    onConnect(socket) {
      if (!up) return socket.drop(1006);
      socket.accept();
      socket.welcome();
    },
  });
  const client = clientOf(server, { reconnect: { initialDelay: 0.01, maxDelay: 0.04, jitter: 0.5 } });
  const states = record(client, ["state"]);
  await client.connect();
  up = false;
  server.last.drop(1006);
  await waitFor(() => states.filter((s) => s.args[0].state === "reconnecting").length >= 5, { timeout: 3000 });
  up = true;
  await waitFor(() => client.state === "open", { timeout: 3000 });
  const delays = states.filter((s) => s.args[0].state === "reconnecting").map((s) => s.args[0].delay);
  const bases = [0.01, 0.02, 0.04, 0.04, 0.04];
  bases.forEach((base, i) => {
    assert.ok(delays[i] <= base && delays[i] >= base * 0.5, `attempt ${i + 1}: ${delays[i]} for base ${base}`);
  });
  client.close();
});

test("leave forgets the room: no rejoin after a reconnect", async () => {
  const server = simpleServer({
    onMessage(socket, message) {
      if (message.t === "leave") socket.deliver({ t: "left", room: message.room, rid: message.rid });
    },
  });
  const client = clientOf(server);
  await client.connect();
  await client.join("r1");
  await client.join("r2");
  assert.deepEqual(await client.leave("r1"), { t: "left", room: "r1", rid: server.last.received.at(-1).rid });
  const reopened = next(client, "state", { filter: (s) => s.state === "open" });
  server.last.drop(1001);
  await reopened;
  await waitFor(() => client.room("r2")?.joined);
  assert.deepEqual(server.last.received.filter((m) => m.t === "join").map((m) => m.room), ["r2"]);
  assert.deepEqual(client.rooms, ["r2"]);
  client.close();
});

test("a comment in flight when the connection drops rejects with disconnected; one sent later waits for the rejoin", async () => {
  const server = simpleServer();
  const client = clientOf(server);
  await client.connect();
  await client.join("r1");
  const inFlight = client.comment("r1", "lost?");
  await waitFor(() => server.last.received.some((m) => m.t === "comment"));
  const first = server.last;
  first.drop(1006);
  await assert.rejects(inFlight, { code: "disconnected" });
  const later = client.comment("r1", "after");
  await waitFor(() => server.last !== first && server.last.received.some((m) => m.t === "comment"), { timeout: 2000 });
  const order = server.last.received.map((m) => m.t);
  assert.deepEqual(order, ["join", "comment"]);
  server.last.deliver({ t: "ack", rid: server.last.received[1].rid, off: 3 });
  assert.equal((await later).off, 3);
  client.close();
});

test("heartbeat: a quiet connection is pinged, and replaced when nothing comes back", async () => {
  let silent = true;
  const server = simpleServer({
    onMessage(socket, message) {
      if (message.t === "ping" && !silent) socket.deliver({ t: "pong", now: Date.now(), rid: message.rid });
    },
  });
  const client = clientOf(server, { heartbeat: { interval: 0.05, timeout: 0.1 } });
  await client.connect();
  const first = server.last;
  const reopened = next(client, "state", { filter: (s) => s.state === "open", timeout: 2000 });
  await reopened;
  assert.ok(first.received.some((m) => m.t === "ping"), "no ping was sent");
  assert.equal(server.sockets.length, 2);
  assert.equal(first.closedByClient.code, 4000);
  silent = false;
  await sleep(300);
  assert.equal(server.sockets.length, 2, "an answered ping keeps the connection");
  client.close();
});
