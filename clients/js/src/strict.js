// Strict readers of untrusted payloads: msgpack bytes and JSON text to plain values.
//
// Why not @msgpack/msgpack's decoder, or JSON.parse: protocol v1 (SPEC §2, §4) has MUSTs
// that neither enforces and that no option of theirs can add: invalid UTF-8 must be
// refused (both replace it), a `bin` or `ext` value anywhere makes the message malformed
// (even an empty one, under an unknown key), map keys must be strings (integer keys come
// back as strings), `1.0` and `1e1` are not integers (both give back `1` and `10`), lone
// surrogates are malformed (JSON.parse accepts "\ud800"), nesting is bounded (1024
// containers) and so are msgpack containers (4096 items); and a map may carry any key
// (@msgpack/msgpack refuses `__proto__`, which protocol v1 says to ignore). These readers
// are written for exactly that, so the checks cost one pass over the bytes.
//
// What they return: null, booleans, numbers (integers only), strings (well-formed UTF-16),
// arrays, maps as objects without a prototype (so any key is data, never a prototype),
// and WireFloat for a float (msgpack float32/64, JSON numbers with a fraction or an
// exponent), so that the schema check refuses a float where an integer is expected and
// ignores it under an unknown key. Integers beyond 2^53 keep their magnitude, if not
// their last digits: they are out of every range of protocol v1 anyway.
//
// Errors: only MalformedMessage, whatever the input (src/errors.js).

import { MalformedMessage } from "./errors.js";

export const MAX_DEPTH = 1024; // nested containers, the message map included (SPEC §2)
export const MAX_ITEMS = 4096; // items of one msgpack array or map in a client message (SPEC §12)

/** A float read from the wire; protocol v1 has none, so no field accepts one. */
export class WireFloat {
  /** @param {number} value */
  constructor(value) {
    this.value = value;
  }
}

/** Whether `value` is a map as these readers return it (or a plain object of ours). */
export function isMap(value) {
  return (
    value !== null && typeof value === "object" && !Array.isArray(value) && !(value instanceof WireFloat)
  );
}

const utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/** @param {ArrayBuffer|ArrayBufferView} data */
export function asBytes(data) {
  if (data instanceof Uint8Array) return data;
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  if (data instanceof ArrayBuffer || Object.prototype.toString.call(data) === "[object ArrayBuffer]") {
    return new Uint8Array(data);
  }
  throw new MalformedMessage("expected bytes");
}

// --- msgpack -------------------------------------------------------------------------

/**
 * Read one msgpack value that must fill `data` exactly.
 * @param {ArrayBuffer|ArrayBufferView} data
 * @param {number} [maxItems] most items of one array or map: MAX_ITEMS, the limit on client
 *   messages (SPEC §12); server messages have no such bound (decodeServer passes Infinity)
 * @returns {unknown}
 * @throws {MalformedMessage}
 */
export function readMsgpack(data, maxItems = MAX_ITEMS) {
  const bytes = asBytes(data);
  const reader = new MsgpackReader(bytes, maxItems);
  if (bytes.length === 0) throw new MalformedMessage("not a msgpack message: empty payload");
  const value = reader.value(0);
  if (reader.pos !== bytes.length) {
    throw new MalformedMessage(`not a msgpack message: ${bytes.length - reader.pos} bytes after the message`);
  }
  return value;
}

class MsgpackReader {
  /** @param {Uint8Array} bytes */
  constructor(bytes, maxItems) {
    this.bytes = bytes;
    this.maxItems = maxItems;
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.pos = 0;
  }

  need(n) {
    if (this.pos + n > this.bytes.length) throw new MalformedMessage("not a msgpack message: truncated");
    const at = this.pos;
    this.pos += n;
    return at;
  }

  value(depth) {
    const head = this.bytes[this.need(1)];
    if (head <= 0x7f) return head;
    if (head >= 0xe0) return head - 0x100;
    if (head <= 0x8f) return this.map(head & 0x0f, depth);
    if (head <= 0x9f) return this.array(head & 0x0f, depth);
    if (head <= 0xbf) return this.str(head & 0x1f);
    const view = this.view;
    switch (head) {
      case 0xc0:
        return null;
      case 0xc2:
        return false;
      case 0xc3:
        return true;
      case 0xc4:
      case 0xc5:
      case 0xc6:
        throw new MalformedMessage("not a msgpack message: bin values are not part of the protocol");
      case 0xc7:
      case 0xc8:
      case 0xc9:
      case 0xd4:
      case 0xd5:
      case 0xd6:
      case 0xd7:
      case 0xd8:
        throw new MalformedMessage("not a msgpack message: ext values are not part of the protocol");
      case 0xca:
        return new WireFloat(view.getFloat32(this.need(4)));
      case 0xcb:
        return new WireFloat(view.getFloat64(this.need(8)));
      case 0xcc:
        return this.bytes[this.need(1)];
      case 0xcd:
        return view.getUint16(this.need(2));
      case 0xce:
        return view.getUint32(this.need(4));
      case 0xcf: {
        const at = this.need(8);
        return view.getUint32(at) * 2 ** 32 + view.getUint32(at + 4);
      }
      case 0xd0:
        return view.getInt8(this.need(1));
      case 0xd1:
        return view.getInt16(this.need(2));
      case 0xd2:
        return view.getInt32(this.need(4));
      case 0xd3: {
        const at = this.need(8);
        return view.getInt32(at) * 2 ** 32 + view.getUint32(at + 4);
      }
      case 0xd9:
        return this.str(this.bytes[this.need(1)]);
      case 0xda:
        return this.str(view.getUint16(this.need(2)));
      case 0xdb:
        return this.str(view.getUint32(this.need(4)));
      case 0xdc:
        return this.array(view.getUint16(this.need(2)), depth);
      case 0xdd:
        return this.array(view.getUint32(this.need(4)), depth);
      case 0xde:
        return this.map(view.getUint16(this.need(2)), depth);
      case 0xdf:
        return this.map(view.getUint32(this.need(4)), depth);
      default: // 0xc1: never used
        throw new MalformedMessage(`not a msgpack message: reserved byte 0x${head.toString(16)}`);
    }
  }

  str(length) {
    const at = this.need(length);
    return decodeUtf8(this.bytes, at, length);
  }

  container(count, depth, kind) {
    if (depth + 1 > MAX_DEPTH) {
      throw new MalformedMessage(`not a msgpack message: nested deeper than ${MAX_DEPTH} containers`);
    }
    if (count > this.maxItems) {
      throw new MalformedMessage(`not a msgpack message: ${kind} of ${count} items (at most ${this.maxItems})`);
    }
    // Every item takes at least one byte (two for a map entry): a header cannot claim more,
    // so nothing is allocated beyond the payload's size, whatever the item limit.
    if (count * (kind === "map" ? 2 : 1) > this.bytes.length - this.pos) {
      throw new MalformedMessage("not a msgpack message: truncated");
    }
  }

  array(count, depth) {
    this.container(count, depth, "array");
    const out = new Array(count);
    for (let i = 0; i < count; i++) out[i] = this.value(depth + 1);
    return out;
  }

  map(count, depth) {
    this.container(count, depth, "map");
    const out = Object.create(null);
    for (let i = 0; i < count; i++) {
      const head = this.bytes[this.pos];
      const isStr = (head >= 0xa0 && head <= 0xbf) || head === 0xd9 || head === 0xda || head === 0xdb;
      const key = this.value(depth + 1); // a bin or ext key is refused in there
      if (!isStr) throw new MalformedMessage("not a msgpack message: map keys must be strings");
      out[key] = this.value(depth + 1); // a repeated key: the last value wins (SPEC §2)
    }
    return out;
  }
}

/** Decode UTF-8 strictly: invalid sequences (overlong, surrogates, truncated) throw. */
function decodeUtf8(bytes, at, length) {
  if (length <= 32) {
    // Short ASCII strings (keys, ids, types) without a TextDecoder call.
    let ascii = "";
    let i = at;
    const end = at + length;
    for (; i < end; i++) {
      const b = bytes[i];
      if (b >= 0x80) break;
      ascii += String.fromCharCode(b);
    }
    if (i === end) return ascii;
  }
  try {
    return utf8.decode(bytes.subarray(at, at + length));
  } catch {
    throw new MalformedMessage("not a msgpack message: a string is not valid UTF-8");
  }
}

// --- JSON ------------------------------------------------------------------------------

/**
 * Read one JSON value (RFC 8259) that must fill `data` exactly (whitespace aside).
 * @param {string|ArrayBuffer|ArrayBufferView} data text, or its UTF-8 bytes
 * @returns {unknown}
 * @throws {MalformedMessage}
 */
export function readJson(data) {
  let text;
  if (typeof data === "string") {
    if (!isWellFormed(data)) throw new MalformedMessage("not a JSON message: lone surrogate");
    text = data;
  } else {
    try {
      text = utf8.decode(asBytes(data));
    } catch (error) {
      if (error instanceof MalformedMessage) throw error;
      throw new MalformedMessage("not a JSON message: invalid UTF-8");
    }
  }
  const parser = new JsonParser(text);
  parser.space();
  const value = parser.value(0);
  parser.space();
  if (parser.pos !== text.length) parser.fail("unexpected text after the value");
  return value;
}

const NUMBER = /-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?/y;
const PLAIN = /[^"\\\u0000-\u001f]*/y;
const ESCAPES = { '"': '"', "\\": "\\", "/": "/", b: "\b", f: "\f", n: "\n", r: "\r", t: "\t" };

class JsonParser {
  constructor(text) {
    this.text = text;
    this.pos = 0;
  }

  fail(what) {
    throw new MalformedMessage(`not a JSON message: ${what} at ${this.pos}`);
  }

  space() {
    const text = this.text;
    let c = text.charCodeAt(this.pos);
    while (c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09) c = text.charCodeAt(++this.pos);
  }

  value(depth) {
    const c = this.text[this.pos];
    if (c === "{") return this.object(depth);
    if (c === "[") return this.array(depth);
    if (c === '"') return this.string();
    if (c === "-" || (c >= "0" && c <= "9")) return this.number();
    for (const [word, value] of LITERALS) {
      if (this.text.startsWith(word, this.pos)) {
        this.pos += word.length;
        return value;
      }
    }
    return this.fail(c === undefined ? "unexpected end" : "unexpected character");
  }

  enter(depth) {
    if (depth + 1 > MAX_DEPTH) this.fail(`nested deeper than ${MAX_DEPTH} containers`);
    this.pos++;
    this.space();
  }

  object(depth) {
    this.enter(depth);
    const out = Object.create(null);
    if (this.text[this.pos] === "}") {
      this.pos++;
      return out;
    }
    for (;;) {
      if (this.text[this.pos] !== '"') this.fail("expected a string key");
      const key = this.string();
      this.space();
      if (this.text[this.pos] !== ":") this.fail("expected ':'");
      this.pos++;
      this.space();
      out[key] = this.value(depth + 1); // a repeated key: the last value wins (SPEC §2)
      this.space();
      const c = this.text[this.pos++];
      if (c === "}") return out;
      if (c !== ",") this.fail("expected ',' or '}'");
      this.space();
    }
  }

  array(depth) {
    this.enter(depth);
    const out = [];
    if (this.text[this.pos] === "]") {
      this.pos++;
      return out;
    }
    for (;;) {
      out.push(this.value(depth + 1));
      this.space();
      const c = this.text[this.pos++];
      if (c === "]") return out;
      if (c !== ",") this.fail("expected ',' or ']'");
      this.space();
    }
  }

  number() {
    NUMBER.lastIndex = this.pos;
    const match = NUMBER.exec(this.text);
    if (match === null) return this.fail("bad number");
    this.pos = NUMBER.lastIndex;
    const value = Number(match[0]);
    // A fraction or an exponent makes a float, even when whole: 1.0 and 1e1 are not integers.
    return match[1] !== undefined || match[2] !== undefined ? new WireFloat(value) : value;
  }

  string() {
    const text = this.text;
    let out = "";
    this.pos++;
    for (;;) {
      PLAIN.lastIndex = this.pos;
      PLAIN.exec(text);
      out += text.slice(this.pos, PLAIN.lastIndex);
      this.pos = PLAIN.lastIndex;
      const c = text[this.pos++];
      if (c === '"') break;
      if (c !== "\\") this.fail(c === undefined ? "unterminated string" : "control character in a string");
      const e = text[this.pos++];
      if (e === "u") {
        out += String.fromCharCode(this.hex4());
      } else if (Object.prototype.hasOwnProperty.call(ESCAPES, e)) {
        out += ESCAPES[e];
      } else {
        this.fail("bad escape");
      }
    }
    // \uD800 alone (or a low surrogate alone) is not a character (SPEC §2).
    if (!isWellFormed(out)) this.fail("lone surrogate");
    return out;
  }

  hex4() {
    const digits = this.text.slice(this.pos, this.pos + 4);
    if (!/^[0-9a-fA-F]{4}$/.test(digits)) this.fail("bad \\u escape");
    this.pos += 4;
    return parseInt(digits, 16);
  }
}

const LITERALS = [
  ["true", true],
  ["false", false],
  ["null", null],
];

/** Whether a JS string is well-formed UTF-16 (no lone surrogate), i.e. encodable as UTF-8. */
export function isWellFormed(text) {
  if (typeof text.isWellFormed === "function") return text.isWellFormed();
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 0xd800 || c > 0xdfff) continue;
    if (c > 0xdbff) return false; // a low surrogate first
    const d = text.charCodeAt(i + 1);
    if (!(d >= 0xdc00 && d <= 0xdfff)) return false; // a high surrogate alone
    i++;
  }
  return true;
}
