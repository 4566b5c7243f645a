export * from "./errors.js";
export { CODECS, JSON_CODEC, MSGPACK, codecFor } from "./codec.js";
export { readJson, readMsgpack, WireFloat } from "./strict.js";
export { codePoints, eventFromWire, fromWire, toWire, validRid, validRoomName } from "./wire.js";
export * from "./schema.gen.js";
export { LiveroomClient, CLOSE_ACTIONS, COMMANDS, DEFAULTS, MESSAGE_HANDLERS, VIEW_UPDATES } from "./client.js";
