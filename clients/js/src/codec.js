// The two codecs of protocol v1 (SPEC §1, §2): `liveroom.v1.msgpack` (binary frames) and
// `liveroom.v1.json` (text frames, for debugging).
//
// A codec encodes a message (checked and put in wire order by toWire, then written by
// @msgpack/msgpack's Encoder or JSON.stringify: shortest integer and string forms, keys in
// the server's order, so the bytes equal the protocol's vectors) and decodes a payload
// strictly (src/strict.js reads it, src/wire.js checks it against the schema).
//
//   codec.decodeServer(payload) -> a server message   (what a client reads)
//   codec.decodeClient(payload) -> a client message   (what a server reads: tests, mocks)
//   codec.decodeEvent(payload)  -> a room event on its own
//   codec.encodeClient(message), encodeServer(message), encodeEvent(event)
//                               -> Uint8Array (msgpack) or string (json)
//
// Decoding throws only MalformedMessage, UnknownMessageType or InvalidField; encoding
// throws InvalidField for a message that protocol v1 would refuse.

import { Encoder } from "@msgpack/msgpack";
import { CLIENT_TYPES, EVENT_TYPES, SERVER_TYPES, eventFromWire, fromWire, toWire } from "./wire.js";
import { readJson, readMsgpack } from "./strict.js";

class Codec {
  /** @param {{name: string, subprotocol: string, binary: boolean, dumps: Function, loads: Function}} spec */
  constructor(spec) {
    Object.assign(this, spec);
    Object.freeze(this);
  }

  /** Encode a client message (what a client sends). */
  encodeClient(message) {
    return this.dumps(toWire(message, CLIENT_TYPES));
  }

  /** Encode a server message (tests, mock servers). */
  encodeServer(message) {
    return this.dumps(toWire(message, SERVER_TYPES));
  }

  /** Encode a room event on its own. */
  encodeEvent(event) {
    return this.dumps(toWire(event, EVENT_TYPES));
  }

  decodeServer(payload) {
    // No item limit: server messages have no size bound (SPEC §2), and a busy room's batch
    // may hold more than 4096 events; the payload's size still bounds what is allocated.
    return fromWire(this.loads(payload, Infinity), SERVER_TYPES);
  }

  decodeClient(payload) {
    return fromWire(this.loads(payload), CLIENT_TYPES);
  }

  decodeEvent(payload) {
    return eventFromWire(this.loads(payload, Infinity));
  }
}

const encoder = new Encoder({ useBigInt64: false, ignoreUndefined: true });

export const MSGPACK = new Codec({
  name: "msgpack",
  subprotocol: "liveroom.v1.msgpack",
  binary: true,
  /** @returns {Uint8Array} */
  dumps: (value) => encoder.encode(value),
  /** Strict read (src/strict.js); `maxItems`: most items per array or map (default 4096). */
  loads: (payload, maxItems) => readMsgpack(payload, maxItems),
});

export const JSON_CODEC = new Codec({
  name: "json",
  subprotocol: "liveroom.v1.json",
  binary: false,
  /** @returns {string} compact JSON, non-ASCII unescaped (as the server writes it) */
  dumps: (value) => JSON.stringify(value),
  loads: (payload) => readJson(payload),
});

/** The codecs by name and by subprotocol. */
export const CODECS = Object.freeze(
  Object.assign(Object.create(null), {
    msgpack: MSGPACK,
    json: JSON_CODEC,
    [MSGPACK.subprotocol]: MSGPACK,
    [JSON_CODEC.subprotocol]: JSON_CODEC,
  }),
);

/** The codec of a negotiated subprotocol; none ("") means msgpack (SPEC §1). */
export function codecFor(subprotocol) {
  if (!subprotocol) return MSGPACK;
  const codec = CODECS[subprotocol];
  if (codec === undefined) throw new Error(`unknown subprotocol ${JSON.stringify(subprotocol)}`);
  return codec;
}
