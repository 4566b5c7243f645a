// Every protocol test vector (protocol/vectors/, SPEC §15) through the JS codecs.
//
// - v1.json: each message decodes (with the decoder of its direction) to a value equal to
//   `message`, from both payloads, and encodes to exactly `msgpack_hex` and `json`.
// - invalid_server.json: server payloads a client MUST refuse; the strict decoder
//   (decodeServer) refuses each with the reference decoder's error class.
// - invalid.json: client payloads a server MUST refuse. A client never reads client
//   messages, but they are still meaningful here: the same strict reader and schema check
//   serve decodeClient (what a JS mock server or a test uses), and each vector is about a
//   rule that binds both sides (bin/ext anywhere, UTF-8, depth, item counts, floats are
//   not integers, rid bounds...). So every one of them runs, through decodeClient, and
//   must be refused with its class. Their `outcome` (close 1009 for payloads over 4096
//   bytes) is what a server does before decoding; it does not apply to a decoder.
// - edge.json: client payloads that are valid although no encoder writes them (repeated
//   keys: the last value wins; nesting of exactly 1024; `ep` without `off`): decodeClient
//   accepts each and yields `message` (known keys only).
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { CODECS, InvalidField, MalformedMessage, UnknownMessageType, WireFloat, readMsgpack } from "../src/index.js";
import { isWellFormed } from "../src/strict.js";
import { encode as msgpackEncode } from "@msgpack/msgpack";

const VECTORS = fileURLToPath(new URL("../../../protocol/vectors/", import.meta.url));
const load = (name) => JSON.parse(readFileSync(VECTORS + name, "utf8"));
const hex = (bytes) => Buffer.from(bytes).toString("hex");
const fromHex = (text) => new Uint8Array(Buffer.from(text, "hex"));
const CLASSES = { MalformedMessage, UnknownMessageType, InvalidField };
// Raw msgpack of any value (no schema check): a map with a "__proto__" key as own data.
const MSGPACK_BYTES = (value) => msgpackEncode(value);

const valid = load("v1.json");
const invalid = load("invalid.json");
const invalidServer = load("invalid_server.json");
const edge = load("edge.json");

const decoders = {
  client: (codec, payload) => codec.decodeClient(payload),
  server: (codec, payload) => codec.decodeServer(payload),
  event: (codec, payload) => codec.decodeEvent(payload),
};
const encoders = {
  client: (codec, message) => codec.encodeClient(message),
  server: (codec, message) => codec.encodeServer(message),
  event: (codec, message) => codec.encodeEvent(message),
};

test("the vector files are all there and not empty", () => {
  assert.ok(valid.length >= 80, `v1.json: ${valid.length}`);
  assert.ok(invalid.length >= 100, `invalid.json: ${invalid.length}`);
  assert.ok(invalidServer.length >= 90, `invalid_server.json: ${invalidServer.length}`);
  assert.ok(edge.length >= 8, `edge.json: ${edge.length}`);
  assert.deepEqual(new Set(valid.map((v) => v.direction)), new Set(["client", "server", "event"]));
});

test("valid vectors: both payloads decode to the message", () => {
  for (const v of valid) {
    const decode = decoders[v.direction];
    assert.deepStrictEqual(decode(CODECS.msgpack, fromHex(v.msgpack_hex)), v.message, `${v.name} (msgpack)`);
    assert.deepStrictEqual(decode(CODECS.json, v.json), v.message, `${v.name} (json text)`);
    assert.deepStrictEqual(decode(CODECS.json, new TextEncoder().encode(v.json)), v.message, `${v.name} (json bytes)`);
  }
});

test("valid vectors: the message encodes to exactly the vector's bytes in both codecs", () => {
  for (const v of valid) {
    const encode = encoders[v.direction];
    assert.equal(hex(encode(CODECS.msgpack, v.message)), v.msgpack_hex, `${v.name} (msgpack)`);
    assert.equal(encode(CODECS.json, v.message), v.json, `${v.name} (json)`);
  }
});

test("valid vectors: the encoder writes the server's key order whatever order it is given", () => {
  for (const v of valid) {
    const shuffled = Object.fromEntries(Object.entries(v.message).reverse());
    assert.equal(hex(encoders[v.direction](CODECS.msgpack, shuffled)), v.msgpack_hex, v.name);
  }
});

function refuses(decode, vector) {
  const payload = fromHex(vector.hex);
  const codec = CODECS[vector.codec];
  assert.throws(
    () => decode(codec, payload),
    (error) => {
      assert.ok(error instanceof CLASSES[vector.error], `${vector.name} (${vector.codec}): ${error?.name}: ${error?.message}`);
      assert.equal(error.name, vector.error);
      assert.ok(error.message.length > 0);
      return true;
    },
    `${vector.name} (${vector.codec}) was accepted`,
  );
}

test("invalid_server vectors: decodeServer refuses each with the reference error class", () => {
  for (const v of invalidServer) refuses(decoders.server, v);
});

test("invalid vectors: decodeClient refuses each with the reference error class", () => {
  for (const v of invalid) refuses(decoders.client, v);
});

test("invalid vectors: the codec of the vector refuses the JSON ones given as text too", () => {
  for (const v of invalid.filter((x) => x.codec === "json")) {
    let text;
    try {
      text = new TextDecoder("utf-8", { fatal: true }).decode(fromHex(v.hex));
    } catch {
      continue; // invalid UTF-8 cannot be a JS string (a browser refuses such a text frame)
    }
    assert.throws(() => CODECS.json.decodeClient(text), CLASSES[v.error], v.name);
  }
});

test("edge vectors: decodeClient accepts each and yields the message", () => {
  for (const v of edge) {
    assert.deepStrictEqual(CODECS[v.codec].decodeClient(fromHex(v.hex)), v.message, `${v.name} (${v.codec})`);
  }
});

test("invalid fields name the offending key, dotted in nested maps", () => {
  const byName = Object.fromEntries(invalidServer.filter((v) => v.codec === "msgpack").map((v) => [v.name, v]));
  const fieldOf = (name) => {
    try {
      CODECS.msgpack.decodeServer(fromHex(byName[name].hex));
    } catch (error) {
      return error.field;
    }
    return undefined;
  };
  assert.equal(fieldOf("joined_pin_price_negative"), "pin.price");
  assert.equal(fieldOf("joined_sale_unknown_status"), "sale.status");
  assert.equal(fieldOf("buy_result_unknown_status"), "status");
  assert.equal(fieldOf("joined_pin_extra_float_value"), "pin.extra.rating");
});

test("beyond the vectors: any key is data (__proto__ is ignored like any unknown key), floats under unknown keys are ignored", () => {
  const pong = { t: "pong", now: 5 };
  const withProto = MSGPACK_BYTES({ ...pong, ["__proto__"]: { polluted: true }, x: 1.5 });
  assert.deepStrictEqual(CODECS.msgpack.decodeServer(withProto), pong);
  assert.deepStrictEqual(CODECS.json.decodeServer('{"t":"pong","now":5,"__proto__":{"polluted":true},"x":1.5e3}'), pong);
  assert.equal({}.polluted, undefined);
  assert.throws(() => CODECS.json.decodeServer('{"t":"constructor"}'), UnknownMessageType);
  assert.throws(() => CODECS.msgpack.decodeServer(MSGPACK_BYTES({ t: "toString" })), UnknownMessageType);
});

test("beyond the vectors: strings keep a BOM and NUL, whitespace and escapes follow RFC 8259", () => {
  const text = "\ufeff\u0000\ud83d\udd25\"\\/\b\f\n\r\t";
  const event = { t: "system", id: "m-1", text, ts: 1, off: 1 };
  assert.deepStrictEqual(CODECS.msgpack.decodeEvent(CODECS.msgpack.encodeEvent(event)), event);
  assert.deepStrictEqual(CODECS.json.decodeEvent(CODECS.json.encodeEvent(event)), event);
  const spaced = ' \r\n\t{ "t" : "pong" , "now" : 7 , "rid" : "\\u0061\\ud83d\\udd25" } \n';
  assert.deepStrictEqual(CODECS.json.decodeServer(spaced), { t: "pong", now: 7, rid: "a🔥" });
  for (const bad of ['{"t":"pong","now":1,}', '{"t":"pong","now":01}', '{"t":"pong","now":1}x', '{"t":"po\nng","now":1}', '{"t":"pong","now":-}', '{"t":"pong","now":1e}', '{"t":"\\x"}', '\ufeff{"t":"pong","now":1}']) {
    assert.throws(() => CODECS.json.decodeServer(bad), MalformedMessage, JSON.stringify(bad));
  }
});

test("beyond the vectors: integers in every msgpack width, and 64-bit values beyond 2^53 are out of range, never rounded in", () => {
  const hexes = { "cc ff": 255, "cd ff ff": 65535, "ce ff ff ff ff": 4294967295, "cf 00 1f ff ff ff ff ff ff": 2 ** 53 - 1, "d0 80": -128, "d1 80 00": -32768, "d2 80 00 00 00": -(2 ** 31), "d3 ff e0 00 00 00 00 00 01": -(2 ** 53 - 1) };
  for (const [h, value] of Object.entries(hexes)) {
    assert.equal(readMsgpack(fromHex(h.replaceAll(" ", ""))), value, h);
  }
  const big = fromHex("82a174a4706f6e67a36e6f77cf0020000000000000"); // {t: pong, now: 2^53}
  assert.throws(() => CODECS.msgpack.decodeServer(big), InvalidField);
  assert.ok(readMsgpack(fromHex("cb3ff0000000000000")) instanceof WireFloat); // 1.0 stays a float
});

test("beyond the vectors: a length header larger than the payload is refused before any allocation", () => {
  for (const h of ["dc ff ff", "de ff ff", "da ff ff 61", "db 00 00 10 00 61"]) {
    assert.throws(() => readMsgpack(fromHex(h.replaceAll(" ", ""))), MalformedMessage, h);
  }
});

test("beyond the vectors: lone surrogates are found without String.prototype.isWellFormed too (older browsers)", () => {
  // String.prototype.isWellFormed is Node 20+ (Debian 12's Node 18 lacks it): the expected
  // answers are written out, and the native method, where there is one, must agree.
  const cases = ["a", "\ud83d\udd25", "\ud800", "\udc00", "a\ud800b", "\ud800\ud800\udc00", "\udc00\ud800", ""];
  const expected = [true, true, false, false, false, false, false, true];
  const saved = Object.getOwnPropertyDescriptor(String.prototype, "isWellFormed");
  if (saved) assert.deepEqual(cases.map((c) => c.isWellFormed()), expected);
  delete String.prototype.isWellFormed;
  try {
    assert.deepEqual(cases.map((c) => isWellFormed(c)), expected);
    assert.throws(() => CODECS.json.decodeServer('{"t":"pong","now":1,"rid":"\\udc00"}'), MalformedMessage);
  } finally {
    if (saved) Object.defineProperty(String.prototype, "isWellFormed", saved);
  }
});

test("beyond the vectors: a server batch may hold more than 4096 events (no size bound on server messages, SPEC §2)", () => {
  const events = Array.from({ length: 5000 }, (_, i) => ({ t: "likes", total: i }));
  const batch = { t: "batch", room: "live-42", ev: events };
  assert.equal(CODECS.msgpack.decodeServer(CODECS.msgpack.encodeServer(batch)).ev.length, 5000);
  assert.equal(CODECS.json.decodeServer(CODECS.json.encodeServer(batch)).ev.length, 5000);
  // A client message keeps the 4096-item limit (the vector array_over_4096_items).
  const ping = MSGPACK_BYTES({ t: "ping", x: new Array(4097).fill(0) });
  assert.throws(() => CODECS.msgpack.decodeClient(ping), MalformedMessage);
});
