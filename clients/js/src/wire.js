// Wire maps <-> checked messages, driven by the generated schema tables (schema.gen.js).
//
// fromWire(value, types) checks a freshly read value against the schema of its type and
// returns a new plain object holding the known keys only, `t` first, then the schema's
// fields in wire order; absent and nil/null optional keys are left out. It mirrors the
// reference decoder (protocol/wire.py) rule for rule: unknown keys are ignored (nested
// maps too), events of unknown type inside an event list are skipped (SPEC §13), and it
// throws only MalformedMessage (not a map with a string `t`), UnknownMessageType (no such
// `t` in `types`) or InvalidField (a missing, mistyped or out-of-range field; `field` is
// the dotted path, e.g. `pin.price`).
//
// toWire(message, types) is the same check for what we send (so a bad argument fails here
// with invalid_field instead of closing the connection with 1007), and yields the map in
// the order the server writes it, so its encoding matches the vectors byte for byte.

import { InvalidField, MalformedMessage, UnknownMessageType } from "./errors.js";
import {
  CLIENT_TYPES,
  EVENT_TYPES,
  MAX_ATTR_KEY_LENGTH,
  MAX_ATTR_TEXT_LENGTH,
  MAX_INT,
  MAX_RID_LENGTH,
  NESTED_TYPES,
  SERVER_TYPES,
} from "./schema.gen.js";
import { isMap, isWellFormed } from "./strict.js";

export { CLIENT_TYPES, EVENT_TYPES, SERVER_TYPES };

const RID_BOUND = 2 ** 53; // |rid| < 2^53

/** Length of a string in code points (SPEC §4.1): "🔥" is 1. */
export function codePoints(text) {
  let n = text.length;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdbff && i + 1 < text.length) {
      const d = text.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) {
        n--;
        i++;
      }
    }
  }
  return n;
}

const ROOM_NAME = /^[\p{L}\p{M}\p{N}_.:-]+$/u;

/** The room-name rule (SPEC §4.9): 1..64 letters, marks, digits or `_ . : -`. */
export function validRoomName(name) {
  return typeof name === "string" && ROOM_NAME.test(name) && codePoints(name) <= 64;
}

/** `rid` if it is a usable request id (SPEC §4.3), else undefined. */
export function validRid(rid) {
  if (typeof rid === "string") return codePoints(rid) <= MAX_RID_LENGTH && isWellFormed(rid) ? rid : undefined;
  if (typeof rid === "number" && Number.isInteger(rid) && Math.abs(rid) < RID_BOUND) return rid;
  return undefined;
}

function isInt(value) {
  return typeof value === "number" && Number.isInteger(value);
}

/**
 * Build the message that the map `value` describes.
 * @param {unknown} value a value read by readMsgpack/readJson (or built by the caller)
 * @param {object} types CLIENT_TYPES, SERVER_TYPES or EVENT_TYPES
 */
export function fromWire(value, types) {
  if (!isMap(value)) throw new MalformedMessage("a message must be a map");
  const kind = value.t;
  const rid = validRid(value.rid);
  if (typeof kind !== "string") throw new MalformedMessage("a message must have a string field 't'", { rid });
  const schema = types[kind]; // the tables have no prototype: only real types are found
  if (schema === undefined) {
    throw new UnknownMessageType(`unknown message type ${JSON.stringify(kind.slice(0, 40))}`, { rid });
  }
  return build(schema, value, rid, "", { t: kind });
}

/** A room event from its map; an unknown type is an InvalidField of the event list. */
export function eventFromWire(value) {
  try {
    return fromWire(value, EVENT_TYPES);
  } catch (error) {
    if (error instanceof UnknownMessageType) throw new InvalidField(error.message, { field: "ev" });
    throw error;
  }
}

/** The wire map of a message, checked against its schema: see fromWire. */
export function toWire(message, types) {
  return fromWire(message, types);
}

function build(schema, value, rid, prefix, out) {
  for (const f of schema) {
    const v = value[f.key];
    if (v === undefined || v === null) {
      if (f.required) throw new InvalidField(`${prefix}${f.key}: missing`, { field: prefix + f.key, rid });
      continue;
    }
    out[f.key] = check(f, v, rid, prefix);
  }
  return out;
}

function check(f, v, rid, prefix) {
  const key = prefix + f.key;
  const fail = (why) => {
    throw new InvalidField(`${key}: ${why}`, { field: key, rid });
  };
  switch (f.kind) {
    case "str": {
      if (typeof v !== "string" || !isWellFormed(v)) return fail("expected a string");
      if (f.choices) {
        if (!f.choices.includes(v)) fail(`must be one of ${f.choices.join(", ")}`);
      } else {
        const n = codePoints(v);
        if (n < f.lo || n > f.hi) fail(`length must be ${f.lo}..${f.hi}, got ${n}`);
      }
      return v;
    }
    case "room":
      if (typeof v !== "string") return fail("expected a string");
      if (!validRoomName(v)) {
        fail("must be 1-64 letters, marks, digits or '_', '.', ':', '-' (no spaces, symbols, control or format characters)");
      }
      return v;
    case "int":
      if (!isInt(v)) return fail("expected an integer");
      if (v < f.lo || v > f.hi) fail(`must be in ${f.lo}..${f.hi}`);
      return v;
    case "bool":
      if (typeof v !== "boolean") fail("expected a boolean");
      return v;
    case "rid":
      if (validRid(v) === undefined) {
        throw new InvalidField(`rid: expected a string of at most ${MAX_RID_LENGTH} characters or an integer`, {
          field: "rid",
        });
      }
      if (typeof v === "string" && v.length < f.lo) throw new InvalidField("rid: must not be empty", { field: "rid" });
      return v;
    case "events": {
      if (!Array.isArray(v)) return fail("expected a list of events");
      const events = [];
      for (const item of v) {
        // Event types added later within v1 are skipped, not refused (SPEC §13).
        if (isMap(item) && typeof item.t === "string" && EVENT_TYPES[item.t] === undefined) continue;
        events.push(eventFromWire(item));
      }
      return events;
    }
    case "attrs":
      return checkAttrs(f, v, rid, key);
    default: {
      if (!isMap(v)) return fail("expected a map");
      return build(NESTED_TYPES[f.kind], v, rid, key + ".", {});
    }
  }
}

function checkAttrs(f, v, rid, key) {
  if (!isMap(v)) throw new InvalidField(`${key}: expected a map`, { field: key, rid });
  const entries = Object.entries(v);
  if (entries.length > f.hi) throw new InvalidField(`${key}: at most ${f.hi} entries`, { field: key, rid });
  const out = {};
  for (const [k, value] of entries) {
    if (codePoints(k) > MAX_ATTR_KEY_LENGTH || !isWellFormed(k)) {
      throw new InvalidField(`${key}: keys must be strings of at most ${MAX_ATTR_KEY_LENGTH} characters`, {
        field: key,
        rid,
      });
    }
    if (value === null || value === undefined) continue; // nil is the same as an absent key
    const ok =
      typeof value === "boolean" ||
      (isInt(value) && Math.abs(value) <= MAX_INT) ||
      (typeof value === "string" && isWellFormed(value) && codePoints(value) <= MAX_ATTR_TEXT_LENGTH);
    if (!ok) {
      throw new InvalidField(
        `${key}.${k.slice(0, 40)}: expected a string of at most ${MAX_ATTR_TEXT_LENGTH} characters, an integer with |value| < 2^53 or a boolean`,
        { field: `${key}.${k}`, rid },
      );
    }
    // An own property even for the key "__proto__": attrs keys are data.
    Object.defineProperty(out, k, { value, enumerable: true, writable: true, configurable: true });
  }
  return out;
}
