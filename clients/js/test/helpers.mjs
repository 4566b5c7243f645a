// Test helpers: real `liveroom serve` processes, tokens, a cuttable TCP proxy, bounded waits.
//
// Every process started here is recorded and killed by PID in killAll(), which each test
// file calls from after(), and again on process exit, so none outlives a failed run.
// Servers listen on free loopback ports chosen by the server itself (port 0: it prints
// the ports it bound) and are restarted on the same ports.
import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import net from "node:net";
import { fileURLToPath } from "node:url";
import WebSocket from "ws";
import { LiveroomClient } from "../src/index.js";

export { WebSocket };
export const REPO = fileURLToPath(new URL("../../../", import.meta.url));
export const LIVEROOM = process.env.LIVEROOM_BIN ?? `${REPO}.venv/bin/liveroom`;
export const PYTHON = process.env.LIVEROOM_PYTHON ?? `${REPO}.venv/bin/python`;
export const SECRET = "js-client-test-secret";
export const API_KEY = "js-client-test-key";

const processes = new Set();

function killProcess(proc) {
  if (proc.exitCode === null && proc.signalCode === null) {
    try {
      process.kill(proc.pid, "SIGKILL");
    } catch {
      // gone already
    }
  }
}

/** Kill every process these helpers started (by PID). */
export function killAll() {
  for (const proc of processes) killProcess(proc);
  processes.clear();
}
process.on("exit", killAll);

/** Wait until `predicate()` is truthy (polling); throws after `timeout` ms naming `what`. */
export async function waitFor(predicate, { timeout = 5000, interval = 10, what = "condition" } = {}) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = await predicate();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
    await sleep(interval);
  }
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** A promise rejected after `ms` unless `promise` settles first. */
export function within(promise, ms, what = "promise") {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** The next call of a client's `type` handler, as the array of its arguments. */
export function next(client, type, { timeout = 5000, filter = () => true } = {}) {
  let off;
  const got = new Promise((resolve) => {
    off = client.on(type, (...args) => {
      if (filter(...args)) resolve(args);
    });
  });
  return within(got, timeout, `a "${type}" event`).finally(() => off());
}

/** Record the calls of a client's handlers for `types`: [{type, args}]. */
export function record(client, types) {
  const calls = [];
  for (const type of types) client.on(type, (...args) => calls.push({ type, args }));
  return calls;
}

function b64url(data) {
  return Buffer.from(data).toString("base64url");
}

/** A token of engine/auth.py's scheme: v1.<b64url(JSON claims)>.<b64url(HMAC-SHA256)>. */
export function mintToken({ user, name = user, rooms = ["*"], role = "viewer", ttl = 3600, secret = SECRET }) {
  const claims = { sub: user, name, rooms, role, exp: Date.now() / 1000 + ttl };
  const signed = `v1.${b64url(JSON.stringify(claims))}`;
  return `${signed}.${b64url(createHmac("sha256", secret).update(signed).digest())}`;
}

/** A `liveroom serve` process; `settings` become LIVEROOM_<KEY> variables. */
export class Server {
  constructor(settings = {}) {
    this.settings = settings;
    this.wsPort = 0;
    this.apiPort = 0;
    this.proc = null;
    this.output = "";
  }

  get url() {
    return `ws://127.0.0.1:${this.wsPort}/`;
  }

  env() {
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("LIVEROOM_")));
    Object.assign(env, {
      LIVEROOM_SERVER_HOST: "127.0.0.1",
      LIVEROOM_SERVICE_HOST: "127.0.0.1",
      LIVEROOM_SERVER_PORT: String(this.wsPort),
      LIVEROOM_SERVICE_PORT: String(this.apiPort),
      LIVEROOM_AUTH_SECRET: SECRET,
      LIVEROOM_SERVICE_API_KEYS: API_KEY,
      LIVEROOM_SERVER_CLOSE_TIMEOUT: "1",
      LIVEROOM_LOG_LEVEL: "info",
    });
    for (const [key, value] of Object.entries(this.settings)) env[`LIVEROOM_${key}`] = String(value);
    return env;
  }

  /** Start (again, on the same ports once known); resolves when both ports are reported. */
  async start({ timeout = 20000 } = {}) {
    const proc = spawn(LIVEROOM, ["serve"], { env: this.env(), stdio: ["ignore", "ignore", "pipe"] });
    processes.add(proc);
    this.proc = proc;
    let text = "";
    const ready = new Promise((resolve, reject) => {
      proc.stderr.setEncoding("utf8");
      proc.stderr.on("data", (chunk) => {
        text += chunk;
        this.output += chunk;
        const ws = /liveroom listening on ws:\/\/127\.0\.0\.1:(\d+)\//.exec(text);
        const api = /service API on http:\/\/127\.0\.0\.1:(\d+)/.exec(text);
        if (ws && api) resolve([Number(ws[1]), Number(api[1])]);
      });
      proc.on("error", reject);
      proc.on("exit", (code, signal) => reject(new Error(`liveroom exited at start (${code ?? signal}): ${text}`)));
    });
    [this.wsPort, this.apiPort] = await within(ready, timeout, `liveroom serve to start (${LIVEROOM})`);
    return this;
  }

  /** Stop with `signal` and wait for the exit (SIGKILL after `timeout` ms). */
  async stop(signal = "SIGTERM", { timeout = 10000 } = {}) {
    const proc = this.proc;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    const exited = new Promise((resolve) => proc.once("exit", resolve));
    proc.kill(signal);
    try {
      await within(exited, timeout, "liveroom to exit");
    } catch (error) {
      killProcess(proc);
      throw error;
    } finally {
      processes.delete(proc);
    }
  }

  kill() {
    if (this.proc) killProcess(this.proc);
  }

  /** Call the service API: resolves with {status, body}. */
  async api(method, path, body) {
    const response = await fetch(`http://127.0.0.1:${this.apiPort}${path}`, {
      method,
      headers: { Authorization: `Bearer ${API_KEY}`, "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(5000),
    });
    return { status: response.status, body: await response.json() };
  }
}

/**
 * A TCP proxy in front of a server's websocket port, to cut, freeze or refuse connections.
 *   cut()              destroy every connection (the client sees 1006)
 *   refuse = true      accept new connections and destroy them at once
 *   freeze()           stop forwarding on the current connections, without closing them
 *   swallowAfterNextClientData(ms): forward the next client bytes, then drop everything the
 *                      server sends on that connection, and cut it `ms` later
 */
export class TcpProxy {
  constructor(targetPort) {
    this.targetPort = targetPort;
    this.pairs = new Set();
    this.refuse = false;
    this.accepted = 0;
    this.armed = null;
    this.server = net.createServer((client) => this.accept(client));
  }

  get url() {
    return `ws://127.0.0.1:${this.port}/`;
  }

  async listen() {
    await new Promise((resolve) => this.server.listen(0, "127.0.0.1", resolve));
    this.port = this.server.address().port;
    return this;
  }

  accept(client) {
    this.accepted += 1;
    if (this.refuse) {
      client.destroy();
      return;
    }
    const upstream = net.connect(this.targetPort, "127.0.0.1");
    const pair = { client, upstream, frozen: false, swallow: false };
    this.pairs.add(pair);
    const end = () => {
      this.pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on("data", (data) => {
      if (pair.frozen) return;
      upstream.write(data);
      if (this.armed) {
        const ms = this.armed;
        this.armed = null;
        pair.swallow = true;
        setTimeout(end, ms);
      }
    });
    upstream.on("data", (data) => {
      if (!pair.frozen && !pair.swallow) client.write(data);
    });
    client.on("error", end);
    upstream.on("error", end);
    client.on("close", end);
    upstream.on("close", end);
  }

  cut() {
    for (const pair of [...this.pairs]) {
      pair.client.destroy();
      pair.upstream.destroy();
    }
    this.pairs.clear();
  }

  freeze() {
    for (const pair of this.pairs) pair.frozen = true;
  }

  swallowAfterNextClientData(ms = 300) {
    this.armed = ms;
  }

  async close() {
    this.cut();
    await new Promise((resolve) => this.server.close(resolve));
  }
}

/** A LiveroomClient on the `ws` package, with test-friendly (short) delays. */
export function makeClient(url, options = {}) {
  const sent = [];
  const sentAt = [];
  const client = new LiveroomClient({
    url,
    WebSocket,
    reconnect: { initialDelay: 0.05, maxDelay: 0.3, jitter: 0.5 },
    debug: (direction, message) => {
      if (direction === "send") {
        sent.push(message);
        sentAt.push(Date.now());
      }
    },
    ...options,
  });
  client.sent = sent; // every message sent, in order
  client.sentAt = sentAt; // when each was sent (unix ms)
  return client;
}

/** Offsets of the events of `type` recorded by record(). */
export function offsets(calls, type = "comment") {
  return calls.filter((c) => c.type === type).map((c) => c.args[0].off);
}
for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"]) {
  process.once(signal, () => {
    killAll();
    process.exit(1);
  });
}
