// Errors of the liveroom client.
//
// Two families, split by who is at fault (as in h11/wsproto):
// - ProtocolError and its subclasses: bytes or a message that protocol v1 does not accept,
//   raised by the strict decoder (src/strict.js, src/wire.js). `name` is the class name
//   of the reference decoder (MalformedMessage, UnknownMessageType, InvalidField), so a
//   test can compare it with a vector's `error`; `closeCode` is what a server closes with
//   (null: an `error` answer, connection kept).
// - LiveroomError: what the client's promises reject with and what "error" handlers get.
//   `code` is the SPEC error code of a server `error` answer (§10) or a client-side code:
//   see CLIENT_ERROR_CODES.

/** Client-side error codes (server codes are those of SPEC §10). */
export const CLIENT_ERROR_CODES = Object.freeze({
  closed: "the client is closed (close() was called, or the server ended the session)",
  disconnected: "the connection dropped before the answer; the command may or may not have taken effect",
  timeout: "no answer in time",
  protocol: "the peer broke protocol v1 (a server message the strict decoder refuses)",
  connect_failed: "the websocket could not be opened",
  token_invalid: "the server refused the token (close 4001)",
  token_expired: "the token has expired (close 4002)",
});

export class ProtocolError extends Error {
  /**
   * @param {string} message
   * @param {{rid?: string|number}} [options] the offending message's request id, when readable
   */
  constructor(message, { rid } = {}) {
    super(message);
    this.rid = rid;
  }
  get name() {
    return "ProtocolError";
  }
}
ProtocolError.prototype.closeCode = 1008;
ProtocolError.prototype.code = "invalid_field";

/** Not one well-formed message map in the codec (close 1007). */
export class MalformedMessage extends ProtocolError {
  get name() {
    return "MalformedMessage";
  }
}
MalformedMessage.prototype.closeCode = 1007;

/** A well-formed map whose `t` names no type known here (close 4003 from a server). */
export class UnknownMessageType extends ProtocolError {
  get name() {
    return "UnknownMessageType";
  }
}
UnknownMessageType.prototype.closeCode = 4003;

/** A known type with a missing, mistyped or out-of-range field (`error` invalid_field). */
export class InvalidField extends ProtocolError {
  /**
   * @param {string} message
   * @param {{field: string, rid?: string|number}} options `field`: the wire key, dotted in nested maps (`pin.price`)
   */
  constructor(message, { field, rid } = {}) {
    super(message, { rid });
    this.field = field;
  }
  get name() {
    return "InvalidField";
  }
}
InvalidField.prototype.closeCode = null;

export class LiveroomError extends Error {
  /**
   * @param {string} code SPEC error code (§10) or a client-side code (CLIENT_ERROR_CODES)
   * @param {string} message
   * @param {object} [details] extra properties: rid, closeCode, reason, field, answer, cause
   */
  constructor(code, message, details = {}) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.code = code;
    for (const [key, value] of Object.entries(details)) {
      if (key !== "cause" && value !== undefined) this[key] = value;
    }
  }
  get name() {
    return "LiveroomError";
  }
}
