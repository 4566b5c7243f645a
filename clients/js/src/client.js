// LiveroomClient: one viewer session of protocol v1 over a websocket, kept alive across
// reconnects.
//
// Guarantees (SPEC section numbers in brackets):
// - Every server message is decoded strictly (src/strict.js, src/wire.js); one the decoder
//   refuses is never handed to the application: an answer to a pending command rejects it
//   with code "protocol", anything else is reported to "error" handlers. Messages of an
//   unknown type are ignored, events of an unknown type skipped [§13].
// - Answers are matched to commands by request id, never by order [§3].
// - Room events reach handlers exactly once and in offset order per room: offset-carrying
//   events at or below the room's stored offset are dropped as duplicates; the offset and
//   epoch are stored from `joined` and from each event [§8].
// - After a dropped connection the client reconnects with exponential backoff and jitter,
//   as the close code says [§11] (a bug-class code, or an expired token without
//   `getToken`, ends the session instead), then rejoins every room it was in, resuming
//   from the stored offset; a resync (`joined.resync`, or an unsolicited `joined`) is
//   passed on as such [§8].
// - A `buy` is answered exactly once: after a reconnect it is sent again with the same rid
//   and `retry: true` [§9.3], so it is never charged twice and learns its first answer;
//   "try again" answers are retried the same way after a backoff. Comments, likes, pings and
//   refreshes in flight when the connection drops are rejected with "disconnected" (they
//   may have taken effect); commands not yet sent wait for the connection (and the room's
//   rejoin) up to their timeout.
// - With `getToken`, the token is refreshed before `welcome.exp` [§1, §5.7] and a fresh one
//   is used on every reconnect.
// - Heartbeat: the websocket stack answers the server's pings [§1]; when nothing has arrived
//   for the heartbeat interval the client sends an application `ping`, and when nothing
//   arrives within the heartbeat timeout after that the connection is taken as dead and
//   replaced.
// - Nothing is left behind: close() clears every timer and settles every promise.

import { CLIENT_ERROR_CODES, LiveroomError, UnknownMessageType } from "./errors.js";
import { CODECS, codecFor } from "./codec.js";
import { OFFSET_EVENT_TYPES } from "./schema.gen.js";
import { CLIENT_TYPES, toWire } from "./wire.js";

/** Defaults of the constructor's options; durations in seconds. */
export const DEFAULTS = Object.freeze({
  codec: "msgpack",
  reconnect: Object.freeze({ initialDelay: 0.5, maxDelay: 10, jitter: 0.5 }),
  // interval: null means the server's `welcome.hb`, at least 1 s.
  heartbeat: Object.freeze({ interval: null, timeout: 10 }),
  connectTimeout: 10, // to open the websocket and receive `welcome`
  requestTimeout: 10, // join, leave, comment, like, ping, refresh: from the call to the answer
  buyTimeout: 30, // buy: from the call to the answer, across reconnects and retries
  buyRetries: 3, // "try again" answers retried with the same rid (after 1 s, 2 s, 4 s)
  refreshBefore: 60, // with getToken: refresh this long before the token expires (at most half its life)
});

/**
 * What the client does when the server closes the connection with a code [§11]:
 * reconnect, reconnect after a longer backoff, reconnect with a fresh token (ends the
 * session without getToken), or stop (a bug-class code must not loop; 1000 is final).
 * Unknown codes reconnect (4000-4999 as 1011 says).
 */
export const CLOSE_ACTIONS = Object.freeze({
  1000: "stop",
  1001: "reconnect",
  1002: "stop",
  1003: "stop",
  1007: "stop",
  1008: "stop",
  1009: "stop",
  1011: "reconnect",
  1013: "backoff",
  4001: "token",
  4002: "token",
  4003: "stop",
  4008: "reconnect",
  4009: "reconnect",
});

/**
 * The commands: which answer types settle each, and what happens to one in flight when the
 * connection drops ("reject": may have taken effect; "resend": idempotent, sent again with
 * `retry: true`; "settle": the drop itself gives the outcome).
 */
export const COMMANDS = Object.freeze({
  join: { answers: ["joined"], onDrop: "resend", room: false },
  leave: { answers: ["left"], onDrop: "settle", room: false },
  comment: { answers: ["ack"], onDrop: "reject", room: true },
  like: { answers: ["ack"], onDrop: "reject", room: true },
  ping: { answers: ["pong"], onDrop: "reject", room: false },
  buy: { answers: ["buy_result"], onDrop: "resend", room: true },
  refresh: { answers: ["refreshed"], onDrop: "reject", room: false },
});

/** How each server message type is handled (method names of LiveroomClient). */
export const MESSAGE_HANDLERS = Object.freeze({
  welcome: "_onWelcome",
  joined: "_onJoined",
  left: "_onAnswer",
  batch: "_onBatch",
  ack: "_onAnswer",
  error: "_onError",
  pong: "_onPong",
  buy_result: "_onBuyResult",
  refreshed: "_onRefreshed",
});

/** How each room event changes the client's view of a room (client.room(name)) [§8, §9]. */
export const VIEW_UPDATES = Object.freeze({
  likes: (view, ev) => {
    view.likes = ev.total;
  },
  viewers: (view, ev) => {
    view.viewers = ev.count;
  },
  pinned: (view, ev) => {
    view.pin = ev.product;
  },
  unpinned: (view, ev) => {
    if (view.pin && view.pin.id === ev.pid) view.pin = null;
  },
  sale_opened: (view, ev) => {
    view.sale = { ...ev.sale };
  },
  stock: (view, ev) => {
    if (view.sale && view.sale.id === ev.sale) {
      const status = ev.remaining > 0 && view.sale.status === "sold_out" ? "open" : view.sale.status;
      view.sale = { ...view.sale, remaining: ev.remaining, status };
    }
  },
  sold_out: (view, ev) => {
    if (view.sale && view.sale.id === ev.sale) view.sale = { ...view.sale, remaining: 0, status: "sold_out" };
  },
  sale_closed: (view, ev) => {
    if (view.sale && view.sale.id === ev.sale) {
      view.sale = { ...view.sale, status: ev.reason === "ended" ? "ended" : "closed" };
    }
  },
});

const DAY_MS = 86_400_000;
const TRY_AGAIN = "try again"; // the stable buy_result.msg to retry with the same rid [§9.3]
const JOIN_RETRY_CODES = new Set(["rate_limited", "rooms_full", "unavailable", "internal"]);

function merge(defaults, given) {
  if (given === false) return false;
  return Object.freeze({ ...defaults, ...(given ?? {}) });
}

function randomId() {
  const c = globalThis.crypto;
  if (c && typeof c.randomUUID === "function") return c.randomUUID();
  const bytes = new Uint8Array(16);
  if (c && typeof c.getRandomValues === "function") c.getRandomValues(bytes);
  else for (let i = 0; i < 16; i++) bytes[i] = Math.floor(Math.random() * 256);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function withToken(url, token) {
  if (!token) return url;
  const hash = url.indexOf("#");
  const base = hash < 0 ? url : url.slice(0, hash);
  return `${base}${base.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}`;
}

function tokenError(code, reason) {
  const name = code === 4002 ? "token_expired" : "token_invalid";
  return new LiveroomError(name, `${CLIENT_ERROR_CODES[name]}${reason ? `: ${reason}` : ""}`, {
    closeCode: code,
    reason,
  });
}

/** A room as the client keeps it: where it is in the room's history, and the room's view. */
class RoomRecord {
  constructor(name) {
    this.name = name;
    this.ep = null; // epoch of the stored offset
    this.off = null; // offset of the last offset-carrying event seen (null: never joined)
    this.joinedGen = 0; // the connection generation it is joined on (0: not joined now)
    this.joinRid = null; // the rid of the join in flight
    this.waiters = []; // join() promises: {resolve, reject, timer}
    this.retryTimer = null;
    this.retries = 0;
    this.view = { likes: 0, viewers: 0, pin: null, sale: null };
  }
}

/** One websocket and what the client knows about it. */
class Connection {
  constructor(ws, gen) {
    this.ws = ws;
    this.gen = gen;
    this.codec = null;
    this.welcome = null;
    this.exp = null;
    this.lastRecv = Date.now();
    this.pingAt = null; // when the heartbeat's ping went out (null: none)
  }
}

export class LiveroomClient {
  /**
   * @param {object} options see index.d.ts (LiveroomClientOptions)
   */
  constructor(options = {}) {
    const given = Object.fromEntries(Object.entries(options).filter(([, value]) => value !== undefined));
    const o = { ...DEFAULTS, ...given };
    if (typeof o.url !== "string") throw new TypeError("url is required");
    if (!CODECS[o.codec] || o.codec.startsWith("liveroom.")) {
      throw new TypeError(`codec must be "msgpack" or "json", not ${JSON.stringify(o.codec)}`);
    }
    this.url = o.url;
    this._token = o.token ?? null;
    this._getToken = o.getToken ?? null;
    this._codec = CODECS[o.codec];
    this._WebSocket = o.WebSocket ?? globalThis.WebSocket;
    if (typeof this._WebSocket !== "function") {
      throw new TypeError("no WebSocket: pass the `ws` package's WebSocket as options.WebSocket (Node < 22)");
    }
    this._reconnect = merge(DEFAULTS.reconnect, o.reconnect);
    this._heartbeat = merge(DEFAULTS.heartbeat, o.heartbeat);
    this._opts = o;
    this._debug = typeof o.debug === "function" ? o.debug : null;

    this._state = "idle";
    this._conn = null; // the open connection (welcome received)
    this._gen = 0; // connection generations, for telling stale callbacks apart
    this._welcome = null;
    this._skew = 0; // server clock minus local clock, ms
    this._rooms = new Map(); // name -> RoomRecord: the rooms the application wants to be in
    this._commands = new Map(); // rid -> command, in submission order
    this._nextRid = 1;
    this._handlers = new Map(); // type -> Set of handlers
    this._attempt = 0; // reconnect attempts since the last welcome
    this._tokenFailures = 0;
    this._connecting = null; // the promise of connect() in progress
    this._dialing = null; // the Connection being opened (before welcome)
    this._reconnectTimer = null;
    this._heartbeatTimer = null;
    this._refreshTimer = null;
  }

  // --- public surface ----------------------------------------------------------------

  /** "idle" | "connecting" | "open" | "reconnecting" | "closed" */
  get state() {
    return this._state;
  }

  /** The last `welcome` received (null before the first). */
  get welcome() {
    return this._welcome;
  }

  /** The negotiated codec's name: "msgpack" or "json". */
  get codec() {
    return (this._conn?.codec ?? this._codec).name;
  }

  /** The rooms the client is in (or rejoining). */
  get rooms() {
    return [...this._rooms.keys()];
  }

  /** The server's clock, estimated from `welcome.now` and `pong.now` (unix ms). */
  serverNow() {
    return Date.now() + this._skew;
  }

  /**
   * A copy of what the client knows of a room: epoch, offset, whether it is joined on the
   * current connection, and its view (likes, viewers, pin, sale) as of the last event.
   */
  room(name) {
    const rec = this._rooms.get(name);
    if (!rec) return null;
    return {
      room: name,
      epoch: rec.ep,
      offset: rec.off,
      joined: this._conn !== null && rec.joinedGen === this._conn.gen,
      ...rec.view,
    };
  }

  /**
   * Register a handler; returns the function that unregisters it.
   * Types: every room event by its wire name (handler(event, room, meta)), "event" (every
   * room event), "joined", "left", "state", "error", "refreshed", "welcome".
   */
  on(type, handler) {
    if (typeof handler !== "function") throw new TypeError("handler must be a function");
    let set = this._handlers.get(type);
    if (!set) this._handlers.set(type, (set = new Set()));
    const entry = (...args) => handler(...args);
    set.add(entry);
    return () => {
      set.delete(entry);
    };
  }

  /** Open the session; resolves with `welcome`. Rejects with LiveroomError (token_invalid, token_expired, connect_failed, timeout). */
  connect() {
    if (this._state === "open") return Promise.resolve(this._welcome);
    if (this._connecting) return this._connecting;
    if (this._state === "reconnecting" || this._state === "connecting") return this._waitOpen();
    this._attempt = 0;
    this._tokenFailures = 0;
    this._setState("connecting", { attempt: 1, reconnect: false });
    const connecting = (async () => {
      try {
        const conn = await this._dial(this._token === null);
        if (this._state !== "connecting") {
          this._detach(conn, 1000, "client closed");
          throw new LiveroomError("closed", CLIENT_ERROR_CODES.closed);
        }
        this._established(conn, false);
        return conn.welcome;
      } catch (error) {
        this._shutdown(error, { code: error.closeCode, reason: error.reason }, false);
        throw error;
      } finally {
        this._connecting = null;
      }
    })();
    this._connecting = connecting;
    return connecting;
  }

  /** Join a room; resolves with `joined`. The client rejoins it by itself after a reconnect. */
  join(room) {
    const problem = this._problem("join", { t: "join", room });
    if (problem) return Promise.reject(problem);
    let rec = this._rooms.get(room);
    if (!rec) this._rooms.set(room, (rec = new RoomRecord(room)));
    return new Promise((resolve, reject) => {
      const waiter = { resolve, reject, timer: null };
      waiter.timer = setTimeout(() => {
        rec.waiters = rec.waiters.filter((w) => w !== waiter);
        if (rec.off === null && rec.waiters.length === 0 && this._rooms.get(room) === rec) this._forget(rec);
        reject(new LiveroomError("timeout", `join ${room}: no answer in ${this._opts.requestTimeout} s`));
      }, this._opts.requestTimeout * 1000);
      rec.waiters.push(waiter);
      if (this._conn && (rec.joinRid === null || rec.joinedGen === this._conn.gen)) this._sendJoin(rec);
    });
  }

  /** Leave a room; resolves with `left`. The room is forgotten at once (not rejoined). */
  leave(room) {
    const rec = this._rooms.get(room);
    if (rec) {
      this._forget(rec, new LiveroomError("closed", `left ${room}`));
      const joining = this._conn !== null && (rec.joinRid !== null || rec.joinedGen === this._conn.gen);
      // Not in the room on this connection, and no join on its way: nothing to undo.
      if (!joining && !this._problem("leave", { t: "leave", room })) return Promise.resolve({ t: "left", room });
    }
    return this._command("leave", { t: "leave", room }, room);
  }

  /** Post a comment; resolves with the `ack` ({rid, off}). */
  comment(room, text) {
    return this._command("comment", { t: "comment", room, text }, room);
  }

  /** Add likes (1..100; the server counts at most 10 per message); resolves with the `ack`. */
  like(room, count = 1) {
    return this._command("like", { t: "like", room, n: count }, room);
  }

  /**
   * Press Buy; resolves with the `buy_result`, whatever its status. `options.rid` retries an
   * earlier attempt (its rid, with `retry: true`); by default a new unique rid is used.
   */
  buy(room, sale, qty = 1, options = {}) {
    const rid = options.rid ?? `b-${randomId()}`;
    const message = { t: "buy", room, sale, qty, rid };
    if (options.rid !== undefined) message.retry = true;
    return this._command("buy", message, room, { rid, timeout: this._opts.buyTimeout });
  }

  /** Application-level ping; resolves with `pong` (and updates serverNow()). */
  ping() {
    return this._command("ping", { t: "ping" }, null);
  }

  /** Put a fresh token for the same user in force [§5.7]; resolves with `refreshed`. */
  refresh(token) {
    return this._command("refresh", { t: "refresh", token }, null, { token });
  }

  /** End the session: close the websocket, stop reconnecting, settle every promise with "closed". */
  close() {
    if (this._state === "closed" || this._state === "idle") return;
    const conn = this._conn;
    this._conn = null;
    if (conn) this._detach(conn, 1000, "client closed");
    this._shutdown(null, { code: 1000, reason: "client closed" });
    this._dialing?.pending?.fail(new LiveroomError("closed", CLIENT_ERROR_CODES.closed));
  }

  // --- commands ------------------------------------------------------------------------

  /** Why the command cannot be accepted now (a LiveroomError), or null. */
  _problem(kind, message, rid) {
    if (this._state === "idle" || this._state === "closed") {
      return new LiveroomError("closed", `${kind}: the client is ${this._state} (call connect() first)`);
    }
    try {
      toWire({ ...message, rid: rid ?? 0 }, CLIENT_TYPES);
    } catch (error) {
      return new LiveroomError("invalid_field", `${kind}: ${error.message}`, { field: error.field, cause: error });
    }
    return null;
  }

  _command(kind, message, room, { rid, timeout, token } = {}) {
    const problem = this._problem(kind, message, rid);
    if (problem) return Promise.reject(problem);
    rid ??= this._nextRid++;
    if (this._commands.has(rid)) return Promise.reject(new LiveroomError("invalid_field", `rid ${rid} is in use`));
    return new Promise((resolve, reject) => {
      const cmd = {
        kind,
        rid,
        room,
        message: { ...message, rid },
        token,
        sentGen: 0, // the connection generation it was sent on (0: not sent)
        tries: 0,
        holdUntil: 0, // a "try again" buy waits until then
        holdTimer: null,
        resolve,
        reject,
        timer: null,
      };
      const seconds = timeout ?? this._opts.requestTimeout;
      cmd.timer = setTimeout(() => {
        this._settle(cmd, new LiveroomError("timeout", `${kind}: no answer in ${seconds} s`, { rid }));
      }, seconds * 1000);
      this._commands.set(rid, cmd);
      this._pump();
    });
  }

  /** Send every command that can go now, in submission order. */
  _pump() {
    const conn = this._conn;
    if (!conn) return;
    const now = Date.now();
    for (const cmd of this._commands.values()) {
      if (cmd.sentGen === conn.gen || cmd.holdUntil > now) continue;
      if (COMMANDS[cmd.kind].room && cmd.room !== null) {
        const rec = this._rooms.get(cmd.room);
        if (rec && rec.joinedGen !== conn.gen) continue; // wait for the rejoin
      }
      cmd.sentGen = conn.gen;
      cmd.tries += 1;
      if (!this._send(conn, cmd.message)) return;
    }
  }

  _settle(cmd, error, value) {
    if (this._commands.get(cmd.rid) !== cmd) return;
    this._commands.delete(cmd.rid);
    clearTimeout(cmd.timer);
    clearTimeout(cmd.holdTimer);
    if (error) cmd.reject(error);
    else cmd.resolve(value);
  }

  /** Send on `conn`; false (and the connection is dropped) if the websocket refuses. */
  _send(conn, message) {
    this._debug?.("send", message);
    const data = conn.codec.encodeClient(message);
    try {
      conn.ws.send(data);
      return true;
    } catch (error) {
      this._detach(conn, 1006, "send failed");
      this._lost(conn, 1006, `send failed: ${error?.message ?? error}`);
      return false;
    }
  }

  // --- rooms ---------------------------------------------------------------------------

  _sendJoin(rec) {
    const conn = this._conn;
    if (!conn) return;
    clearTimeout(rec.retryTimer);
    rec.retryTimer = null;
    const rid = this._nextRid++;
    rec.joinRid = rid;
    const message = { t: "join", room: rec.name, rid };
    if (rec.off !== null && rec.ep !== null) {
      message.off = rec.off; // resume [§8]
      message.ep = rec.ep;
    }
    this._send(conn, message);
  }

  _forget(rec, error) {
    if (this._rooms.get(rec.name) === rec) this._rooms.delete(rec.name);
    clearTimeout(rec.retryTimer);
    for (const w of rec.waiters.splice(0)) {
      clearTimeout(w.timer);
      w.reject(error ?? new LiveroomError("closed", `${rec.name}: not joined`));
    }
  }

  // --- connection lifecycle ----------------------------------------------------------------

  _setState(state, details = {}) {
    this._state = state;
    this._emit("state", { state, ...details });
  }

  _waitOpen() {
    return new Promise((resolve, reject) => {
      const off = this.on("state", (s) => {
        if (s.state === "open") {
          off();
          resolve(this._welcome);
        } else if (s.state === "closed") {
          off();
          reject(s.error ?? new LiveroomError("closed", "the client is closed"));
        }
      });
    });
  }

  /** Open a websocket and wait for `welcome`; resolves with the Connection. */
  async _dial(fetchToken) {
    let token = this._token;
    if (this._getToken && fetchToken) {
      let timer;
      try {
        const limit = new Promise((_, reject) => {
          timer = setTimeout(() => reject(new Error(`no token in ${this._opts.connectTimeout} s`)), this._opts.connectTimeout * 1000);
        });
        token = await Promise.race([this._getToken(), limit]);
      } catch (error) {
        throw new LiveroomError("connect_failed", `getToken failed: ${error?.message ?? error}`, { cause: error });
      } finally {
        clearTimeout(timer);
      }
      this._token = token;
    }
    const gen = ++this._gen;
    let ws;
    try {
      ws = new this._WebSocket(withToken(this.url, token), [this._codec.subprotocol]);
    } catch (error) {
      throw new LiveroomError("connect_failed", `cannot open ${this.url}: ${error?.message ?? error}`, { cause: error });
    }
    ws.binaryType = "arraybuffer";
    const conn = new Connection(ws, gen);
    this._dialing = conn;
    return new Promise((resolve, reject) => {
      const fail = (error) => {
        clearTimeout(timer);
        conn.pending = null;
        if (this._dialing === conn) this._dialing = null;
        this._detach(conn, 1000, "");
        reject(error);
      };
      const timer = setTimeout(
        () => fail(new LiveroomError("timeout", `no welcome from ${this.url} in ${this._opts.connectTimeout} s`)),
        this._opts.connectTimeout * 1000,
      );
      conn.pending = {
        resolve: () => {
          clearTimeout(timer);
          conn.pending = null;
          if (this._dialing === conn) this._dialing = null;
          resolve(conn);
        },
        fail,
      };
      ws.onopen = () => {
        // Use the codec the server selected [§1]: none selected means msgpack.
        try {
          conn.codec = codecFor(ws.protocol);
        } catch (error) {
          fail(new LiveroomError("protocol", error.message));
        }
      };
      ws.onmessage = (event) => this._onData(conn, event.data);
      ws.onerror = () => {}; // a close event follows
      ws.onclose = (event) => this._onClose(conn, event.code, event.reason);
    });
  }

  _established(conn, reconnected) {
    this._conn = conn;
    this._welcome = conn.welcome;
    this._attempt = 0;
    this._tokenFailures = 0;
    this._setState("open", { welcome: conn.welcome, reconnected });
    this._emit("welcome", conn.welcome);
    this._startHeartbeat(conn);
    this._scheduleRefresh(conn);
    for (const rec of this._rooms.values()) this._sendJoin(rec);
    this._pump();
  }

  /** Stop listening to a websocket and close it (abruptly when the `ws` package allows). */
  _detach(conn, code, reason) {
    const ws = conn.ws;
    ws.onopen = ws.onmessage = ws.onclose = null;
    ws.onerror = () => {};
    try {
      if (code === 1006 && typeof ws.terminate === "function") ws.terminate();
      else ws.close(code === 1006 ? 4000 : code, reason);
    } catch {
      // already closed
    }
  }

  _onClose(conn, code, reason) {
    if (conn.pending) {
      // Refused before welcome: a bad token, a full server, or no server at all.
      const error =
        code === 4001 || code === 4002
          ? tokenError(code, reason)
          : new LiveroomError("connect_failed", `connection closed before welcome (${code}${reason ? ` ${reason}` : ""})`, {
              closeCode: code,
              reason,
            });
      conn.pending.fail(error);
      return;
    }
    this._lost(conn, code, reason);
  }

  /** The open connection `conn` is gone: settle what was in flight, then reconnect or stop. */
  _lost(conn, code, reason) {
    if (this._conn !== conn) return;
    this._conn = null;
    clearInterval(this._heartbeatTimer);
    clearTimeout(this._refreshTimer);
    for (const rec of this._rooms.values()) {
      rec.joinedGen = 0;
      rec.joinRid = null;
    }
    for (const cmd of [...this._commands.values()]) {
      if (cmd.sentGen !== conn.gen) continue;
      const onDrop = COMMANDS[cmd.kind].onDrop;
      if (onDrop === "resend") {
        cmd.sentGen = 0;
        cmd.message = { ...cmd.message, retry: true }; // same rid [§9.3]
      } else if (onDrop === "settle") {
        this._settle(cmd, null, { t: "left", room: cmd.room }); // not rejoined: left
      } else {
        this._settle(cmd, new LiveroomError("disconnected", `${cmd.kind}: ${CLIENT_ERROR_CODES.disconnected}`, { rid: cmd.rid }));
      }
    }
    const action = CLOSE_ACTIONS[code] ?? "reconnect";
    if (this._state === "closed") return;
    if (!this._reconnect || action === "stop") {
      const error =
        code !== 1000
          ? new LiveroomError("closed", `the connection closed (${code}${reason ? ` ${reason}` : ""})`, {
              closeCode: code,
              reason,
            })
          : null;
      this._shutdown(error, { code, reason });
      return;
    }
    if (action === "token" && !this._getToken) {
      this._shutdown(tokenError(code, reason), { code, reason });
      return;
    }
    this._scheduleReconnect(code, reason, action === "backoff" ? 4 : 1);
  }

  _scheduleReconnect(code, reason, factor = 1, error = undefined) {
    const { initialDelay, maxDelay, jitter } = this._reconnect;
    this._attempt += 1;
    const base = Math.min(maxDelay, initialDelay * 2 ** (this._attempt - 1) * factor);
    const delay = base * (1 - jitter * Math.random());
    this._setState("reconnecting", { code, reason, attempt: this._attempt, delay, error });
    clearTimeout(this._reconnectTimer);
    this._reconnectTimer = setTimeout(() => this._reconnectNow(code), delay * 1000);
  }

  async _reconnectNow(lastCode) {
    if (this._state !== "reconnecting") return;
    this._setState("connecting", { attempt: this._attempt, reconnect: true });
    let conn;
    try {
      conn = await this._dial(true);
    } catch (error) {
      if (this._state !== "connecting") return;
      const code = error.closeCode;
      if (code === 4001 || code === 4002) {
        // A fresh token was refused too: give up after a second refusal [§11].
        this._tokenFailures += 1;
        if (!this._getToken || this._tokenFailures >= 2) {
          this._shutdown(error, { code, reason: error.reason });
          return;
        }
      }
      if (code !== undefined && CLOSE_ACTIONS[code] === "stop") {
        this._shutdown(error, { code, reason: error.reason });
        return;
      }
      this._scheduleReconnect(code ?? lastCode, error.message, CLOSE_ACTIONS[code] === "backoff" ? 4 : 1, error);
      return;
    }
    if (this._state !== "connecting") {
      this._detach(conn, 1000, "client closed");
      return;
    }
    this._established(conn, true);
  }

  /** End the session; settle everything (with `error`, or "closed"). */
  _shutdown(error, { code, reason } = {}, report = true) {
    clearTimeout(this._reconnectTimer);
    clearInterval(this._heartbeatTimer);
    clearTimeout(this._refreshTimer);
    const settleWith = error ?? new LiveroomError("closed", CLIENT_ERROR_CODES.closed, { closeCode: code, reason });
    for (const cmd of [...this._commands.values()]) this._settle(cmd, settleWith);
    for (const rec of [...this._rooms.values()]) this._forget(rec, settleWith);
    const wasClosed = this._state === "closed";
    if (error && !wasClosed && report) this._emit("error", error);
    if (!wasClosed) this._setState("closed", { code, reason, error: error ?? undefined });
  }

  // --- heartbeat and token refresh ---------------------------------------------------------

  _startHeartbeat(conn) {
    clearInterval(this._heartbeatTimer);
    if (!this._heartbeat) return;
    const interval = this._heartbeat.interval ? this._heartbeat.interval * 1000 : Math.max(conn.welcome.hb || 20000, 1000);
    const timeout = this._heartbeat.timeout * 1000;
    const tick = Math.max(50, Math.min(interval, timeout) / 4);
    this._heartbeatTimer = setInterval(() => {
      if (this._conn !== conn) return;
      const now = Date.now();
      if (conn.pingAt !== null && conn.lastRecv < conn.pingAt && now - conn.pingAt > timeout) {
        // Nothing at all since our ping, not even its answer: the connection is dead.
        // (Judged from the ping's time, not from the silence: a background tab's timers
        // may fire a minute late, and must not take a quiet room for a dead one.)
        this._detach(conn, 1006, "heartbeat timeout");
        this._lost(conn, 1006, "heartbeat timeout");
      } else if (now - conn.lastRecv > interval && (conn.pingAt === null || conn.lastRecv >= conn.pingAt)) {
        conn.pingAt = now;
        this.ping().catch(() => {}); // any message counts as alive, even an error
      }
    }, tick);
  }

  _scheduleRefresh(conn) {
    clearTimeout(this._refreshTimer);
    if (!this._getToken || conn.exp === null || conn.exp === undefined) return;
    const remaining = conn.exp - this.serverNow();
    const lead = Math.min(this._opts.refreshBefore * 1000, remaining / 2);
    const delay = remaining - lead;
    // Timers overflow past 2^31 ms: a token good for weeks is looked at again daily.
    this._refreshTimer = setTimeout(
      () => (delay > DAY_MS ? this._scheduleRefresh(conn) : this._autoRefresh(conn)),
      Math.max(0, Math.min(delay, DAY_MS)),
    );
  }

  async _autoRefresh(conn) {
    if (this._conn !== conn) return;
    try {
      const token = await this._getToken();
      if (this._conn !== conn) return;
      await this.refresh(token);
    } catch (error) {
      if (this._conn !== conn) return;
      this._emit("error", error instanceof LiveroomError ? error : new LiveroomError("token_invalid", String(error?.message ?? error), { cause: error }));
      const remaining = conn.exp - this.serverNow();
      if (remaining > 0) {
        clearTimeout(this._refreshTimer);
        this._refreshTimer = setTimeout(() => this._autoRefresh(conn), Math.min(5000, Math.max(250, remaining / 4)));
      }
    }
  }

  // --- incoming messages -----------------------------------------------------------------

  _onData(conn, data) {
    conn.lastRecv = Date.now();
    const codec = conn.codec ?? this._codec;
    if ((typeof data === "string") === codec.binary) {
      this._violation(conn, new LiveroomError("protocol", `${typeof data === "string" ? "text" : "binary"} frame on ${codec.subprotocol}`));
      return;
    }
    let message;
    try {
      message = codec.decodeServer(data);
    } catch (error) {
      if (error instanceof UnknownMessageType) {
        this._debug?.("ignored", error.message); // a type added later within v1 [§13]
        return;
      }
      const refused = new LiveroomError("protocol", `a server message was refused: ${error.message}`, {
        field: error.field,
        rid: error.rid,
        cause: error,
      });
      const cmd = error.rid !== undefined ? this._commands.get(error.rid) : undefined;
      if (cmd) this._settle(cmd, refused);
      else this._violation(conn, refused);
      return;
    }
    this._debug?.("recv", message);
    if (conn.welcome === null && message.t !== "welcome") {
      this._violation(conn, new LiveroomError("protocol", `expected welcome, got ${message.t}`));
      return;
    }
    const handler = MESSAGE_HANDLERS[message.t];
    if (handler) this[handler](conn, message);
  }

  _violation(conn, error) {
    if (conn.pending) conn.pending.fail(error);
    else this._emit("error", error);
  }

  _onWelcome(conn, msg) {
    if (conn.welcome !== null) return; // only the first message is a welcome
    conn.welcome = msg;
    conn.exp = msg.exp ?? null;
    this._skew = msg.now - Date.now();
    conn.pending?.resolve();
  }

  _onJoined(conn, msg) {
    if (msg.rid !== undefined) {
      const waiting = this._commands.get(msg.rid);
      if (waiting) this._settle(waiting, null, msg); // a join sent by an extension through _command
    }
    const rec = this._rooms.get(msg.room);
    if (!rec) return; // left meanwhile
    if (msg.rid !== undefined && msg.rid !== rec.joinRid) return; // the answer to an older join
    // An unsolicited joined is a resync of a room joined on this connection [§8].
    if (msg.rid === undefined && (!msg.resync || rec.joinedGen !== conn.gen)) return;
    const resumed = !msg.resync && rec.off !== null && rec.ep === msg.ep;
    const newEvents = resumed ? msg.recent.filter((ev) => !OFFSET_EVENT_TYPES.has(ev.t) || ev.off > rec.off) : msg.recent;
    rec.joinRid = null;
    rec.joinedGen = conn.gen;
    rec.retries = 0;
    rec.ep = msg.ep;
    rec.off = msg.off;
    // The view: recent first, then the snapshot's pin, sale and counts [§8].
    for (const ev of newEvents) VIEW_UPDATES[ev.t]?.(rec.view, ev);
    Object.assign(rec.view, { likes: msg.likes, viewers: msg.viewers, pin: msg.pin ?? null, sale: msg.sale ?? null });
    this._emit("joined", msg, { resumed, resync: msg.resync, unsolicited: msg.rid === undefined });
    for (const ev of newEvents) this._emitEvent(ev, msg.room, { replay: true });
    for (const w of rec.waiters.splice(0)) {
      clearTimeout(w.timer);
      w.resolve(msg);
    }
    this._pump();
  }

  _onBatch(conn, msg) {
    const rec = this._rooms.get(msg.room);
    if (!rec || rec.joinedGen !== conn.gen) return; // not (or no longer) in this room
    for (const ev of msg.ev) {
      if (OFFSET_EVENT_TYPES.has(ev.t)) {
        if (ev.off <= rec.off) continue; // a duplicate [§8]
        rec.off = ev.off;
      }
      VIEW_UPDATES[ev.t]?.(rec.view, ev);
      this._emitEvent(ev, msg.room, { replay: false });
    }
  }

  _onAnswer(conn, msg) {
    const cmd = msg.rid === undefined ? undefined : this._commands.get(msg.rid);
    if (!cmd) return; // the answer to a command that timed out
    if (!COMMANDS[cmd.kind].answers.includes(msg.t)) {
      this._settle(cmd, new LiveroomError("protocol", `${cmd.kind} answered by ${msg.t}`, { rid: msg.rid }));
      return;
    }
    this._settle(cmd, null, msg);
    if (msg.t === "left") this._emit("left", msg);
  }

  _onPong(conn, msg) {
    this._skew = msg.now - Date.now();
    this._onAnswer(conn, msg);
  }

  _onRefreshed(conn, msg) {
    const cmd = msg.rid === undefined ? undefined : this._commands.get(msg.rid);
    if (cmd?.kind === "refresh") {
      this._token = cmd.token; // used on the next reconnect (without getToken)
      conn.exp = msg.exp;
      this._scheduleRefresh(conn);
      this._emit("refreshed", msg);
    }
    this._onAnswer(conn, msg);
  }

  _onBuyResult(conn, msg) {
    const cmd = this._commands.get(msg.rid);
    if (!cmd || cmd.kind !== "buy") return;
    if (msg.status === "error" && msg.msg === TRY_AGAIN && cmd.tries <= this._opts.buyRetries) {
      // Not taken (or not known to be): the same attempt again after a backoff [§9.3].
      cmd.sentGen = 0;
      cmd.message = { ...cmd.message, retry: true };
      const delay = 1000 * 2 ** (cmd.tries - 1);
      cmd.holdUntil = Date.now() + delay;
      clearTimeout(cmd.holdTimer);
      cmd.holdTimer = setTimeout(() => this._pump(), delay);
      return;
    }
    this._settle(cmd, null, msg);
  }

  _onError(conn, msg) {
    const error = new LiveroomError(msg.code, msg.msg || msg.code, { rid: msg.rid, answer: msg });
    if (msg.rid !== undefined) {
      const cmd = this._commands.get(msg.rid);
      if (cmd) {
        this._settle(cmd, error);
        return;
      }
      for (const rec of this._rooms.values()) {
        if (rec.joinRid === msg.rid) {
          this._joinRefused(rec, error);
          return;
        }
      }
    }
    this._emit("error", error);
  }

  _joinRefused(rec, error) {
    rec.joinRid = null;
    const retryable = JOIN_RETRY_CODES.has(error.code) && (rec.off !== null || rec.waiters.length > 0);
    if (retryable && rec.retries < 5) {
      // A rejoin the server cannot take now: again after a backoff.
      rec.retries += 1;
      rec.retryTimer = setTimeout(() => {
        if (this._conn && this._rooms.get(rec.name) === rec) this._sendJoin(rec);
      }, 500 * 2 ** rec.retries);
      if (rec.waiters.length === 0) this._emit("error", Object.assign(error, { room: rec.name }));
      return;
    }
    error.room = rec.name;
    if (rec.waiters.length === 0) this._emit("error", error); // a rejoin failed: the room is lost
    this._forget(rec, error);
  }

  // --- events ------------------------------------------------------------------------------

  _emitEvent(ev, room, meta) {
    this._emit(ev.t, ev, room, meta);
    this._emit("event", ev, room, meta);
  }

  _emit(type, ...args) {
    const set = this._handlers.get(type);
    if (!set) return;
    for (const handler of [...set]) {
      try {
        handler(...args);
      } catch (error) {
        // A bug in a handler must not break the session; report it as uncaught.
        setTimeout(() => {
          throw error;
        });
      }
    }
  }
}
