// Types of @liveroom/client. The message types (protocol.gen.d.ts) are generated from the
// protocol's schema (protocol/messages.py); this file, the client's API, is written by hand.
import type {
  BuyResultMessage,
  ClientMessage,
  ErrorMessage,
  JoinedMessage,
  LeftMessage,
  PongMessage,
  Product,
  RefreshedMessage,
  Rid,
  RoomEvent,
  RoomEventMap,
  Sale,
  ServerMessage,
  WelcomeMessage,
  AckMessage,
} from "./protocol.gen.js";

export * from "./protocol.gen.js";

// --- errors ------------------------------------------------------------------------------

/** SPEC §10 error codes, and the client's own. Unknown codes may come (SPEC §10): `string`. */
export type ErrorCode =
  | "invalid_field"
  | "empty_comment"
  | "comment_too_long"
  | "forbidden_room"
  | "not_joined"
  | "too_many_rooms"
  | "rooms_full"
  | "room_not_live"
  | "read_only"
  | "rate_limited"
  | "token_invalid"
  | "token_expired"
  | "unavailable"
  | "internal"
  | "closed"
  | "disconnected"
  | "timeout"
  | "protocol"
  | "connect_failed"
  | (string & {});

/** What promises reject with and "error" handlers receive. */
export declare class LiveroomError extends Error {
  constructor(code: ErrorCode, message: string, details?: Record<string, unknown>);
  readonly name: "LiveroomError";
  /** The SPEC error code of a server `error` (§10), or a client-side code. */
  code: ErrorCode;
  /** The request id of the command, when there was one. */
  rid?: Rid;
  /** The websocket close code behind the error (token_invalid: 4001, token_expired: 4002, ...). */
  closeCode?: number;
  /** The close reason (for logs only: SPEC §11). */
  reason?: string;
  /** The offending key (invalid_field, protocol), dotted in nested maps: `pin.price`. */
  field?: string;
  /** The room a failed rejoin was for. */
  room?: string;
  /** The server's `error` message, when the error is one. */
  answer?: ErrorMessage;
}

export declare const CLIENT_ERROR_CODES: Readonly<Record<string, string>>;

/** Refused bytes or message (strict decoder); `name` is the reference decoder's class name. */
export declare class ProtocolError extends Error {
  readonly name: "ProtocolError" | "MalformedMessage" | "UnknownMessageType" | "InvalidField";
  rid?: Rid;
  /** Close code a server answers with; null: an `error` answer (invalid_field). */
  closeCode: number | null;
  code: string;
}
/** Not one well-formed message map (close 1007). */
export declare class MalformedMessage extends ProtocolError {
  readonly name: "MalformedMessage";
}
/** An unknown `t` (close 4003 from a server; a client ignores such messages). */
export declare class UnknownMessageType extends ProtocolError {
  readonly name: "UnknownMessageType";
}
/** A missing, mistyped or out-of-range field. */
export declare class InvalidField extends ProtocolError {
  readonly name: "InvalidField";
  field: string;
}

// --- codecs and the strict layer -----------------------------------------------------------

export interface Codec {
  readonly name: "msgpack" | "json";
  readonly subprotocol: "liveroom.v1.msgpack" | "liveroom.v1.json";
  /** Websocket frames: binary (msgpack) or text (json). */
  readonly binary: boolean;
  /** Decode a server message strictly; throws MalformedMessage, UnknownMessageType or InvalidField. */
  decodeServer(payload: ArrayBuffer | ArrayBufferView | string): ServerMessage;
  /** Decode a client message strictly (what a server reads: tests, mock servers). */
  decodeClient(payload: ArrayBuffer | ArrayBufferView | string): ClientMessage;
  /** Decode a room event on its own. */
  decodeEvent(payload: ArrayBuffer | ArrayBufferView | string): RoomEvent;
  /** Encode (after checking it: InvalidField) in the server's key order. */
  encodeClient(message: ClientMessage): Uint8Array | string;
  encodeServer(message: ServerMessage): Uint8Array | string;
  encodeEvent(event: RoomEvent): Uint8Array | string;
  /** Write / read plain values (no schema check; loads is the strict reader). */
  dumps(value: unknown): Uint8Array | string;
  loads(payload: ArrayBuffer | ArrayBufferView | string, maxItems?: number): unknown;
}
export declare const MSGPACK: Codec & { encodeClient(message: ClientMessage): Uint8Array };
export declare const JSON_CODEC: Codec & { encodeClient(message: ClientMessage): string };
export declare const CODECS: Readonly<Record<string, Codec>>;
export declare function codecFor(subprotocol: string | null | undefined): Codec;

/** A float read from the wire (protocol v1 has none: no field accepts one). */
export declare class WireFloat {
  constructor(value: number);
  value: number;
}
/** Strict msgpack reader: one value filling the payload, no bin/ext, string keys, valid UTF-8, depth <= 1024, <= maxItems (4096) items per container. */
export declare function readMsgpack(payload: ArrayBuffer | ArrayBufferView, maxItems?: number): unknown;
/** Strict JSON reader (RFC 8259): no lone surrogates, depth <= 1024, floats as WireFloat. */
export declare function readJson(payload: string | ArrayBuffer | ArrayBufferView): unknown;
/** Check a read value against the schema of its type (`types`: CLIENT_TYPES, SERVER_TYPES, EVENT_TYPES). */
export declare function fromWire(value: unknown, types: SchemaTable): ClientMessage | ServerMessage | RoomEvent;
export declare function toWire<M extends ClientMessage | ServerMessage | RoomEvent>(message: M, types: SchemaTable): M;
export declare function eventFromWire(value: unknown): RoomEvent;
/** String length in code points (SPEC §4.1). */
export declare function codePoints(text: string): number;
/** The room-name rule (SPEC §4.9). */
export declare function validRoomName(name: unknown): boolean;
export declare function validRid(rid: unknown): Rid | undefined;

export interface SchemaField {
  readonly key: string;
  readonly kind: "str" | "room" | "int" | "bool" | "rid" | "events" | "product" | "sale" | "attrs";
  readonly required: boolean;
  readonly lo: number;
  readonly hi: number;
  readonly choices: readonly string[] | null;
}
export type SchemaTable = Readonly<Record<string, readonly SchemaField[]>>;
export declare const CLIENT_TYPES: SchemaTable;
export declare const SERVER_TYPES: SchemaTable;
export declare const EVENT_TYPES: SchemaTable;
export declare const NESTED_TYPES: SchemaTable;
export declare const OFFSET_EVENT_TYPES: ReadonlySet<string>;
export declare const CONFLATED_EVENT_TYPES: ReadonlySet<string>;
export declare const PROTOCOL_VERSION: number;
export declare const MAX_INT: number;
export declare const MAX_ROOM_LENGTH: number;
export declare const MAX_RID_LENGTH: number;
export declare const MAX_TOKEN_LENGTH: number;
export declare const MAX_TEXT_LENGTH: number;
export declare const MAX_ATTRS: number;
export declare const MAX_ATTR_KEY_LENGTH: number;
export declare const MAX_ATTR_TEXT_LENGTH: number;
export declare const BUY_STATUSES: readonly BuyResultMessage["status"][];
export declare const SALE_STATUSES: readonly Sale["status"][];
export declare const SALE_CLOSE_REASONS: readonly string[];

// --- the client ----------------------------------------------------------------------------

/** Constructor of a browser-style WebSocket (globalThis.WebSocket, or the `ws` package's). */
export interface WebSocketLike {
  binaryType: string;
  readonly protocol: string;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
  send(data: ArrayBufferView | ArrayBuffer | string): void;
  close(code?: number, reason?: string): void;
}
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

export interface ReconnectOptions {
  /** Seconds before the first attempt (doubled each attempt). Default 0.5. */
  initialDelay?: number;
  /** Longest wait between attempts, seconds. Default 10. */
  maxDelay?: number;
  /** Share of the delay taken off at random (0..1). Default 0.5. */
  jitter?: number;
}

export interface HeartbeatOptions {
  /** Seconds of silence before an application ping; default: welcome.hb, at least 1 s. */
  interval?: number | null;
  /** Seconds more without any message before the connection is replaced. Default 10. */
  timeout?: number;
}

export interface LiveroomClientOptions {
  /** ws:// or wss:// URL of the server (any path). */
  url: string;
  /** The token, sent as ?token= (SPEC §1). Without it (and getToken): an anonymous viewer. */
  token?: string;
  /** A fresh token: used on connect (when no token is given), on every reconnect, and to refresh before welcome.exp. */
  getToken?: () => string | Promise<string>;
  /** Default "msgpack"; "json" for debugging. */
  codec?: "msgpack" | "json";
  /** Default globalThis.WebSocket (Node < 22: pass the `ws` package's WebSocket). */
  WebSocket?: WebSocketConstructor | (new (...args: any[]) => any);
  /** Backoff of reconnects, or false to end the session on the first drop. */
  reconnect?: ReconnectOptions | false;
  /** Liveness checks of a quiet connection, or false (the server's pings are answered anyway). */
  heartbeat?: HeartbeatOptions | false;
  /** Seconds to open the websocket and receive welcome. Default 10. */
  connectTimeout?: number;
  /** Seconds for join, leave, comment, like, ping, refresh (queue time included). Default 10. */
  requestTimeout?: number;
  /** Seconds for a buy, across reconnects and retries. Default 30. */
  buyTimeout?: number;
  /** "try again" buy answers retried with the same rid. Default 3. */
  buyRetries?: number;
  /** With getToken: refresh this many seconds before expiry (at most half the token's life). Default 60. */
  refreshBefore?: number;
  /** Sees every message: ("send", client message) and ("recv", server message). */
  debug?: (direction: "send" | "recv" | "ignored", message: unknown) => void;
}

export type ConnectionState = "idle" | "connecting" | "open" | "reconnecting" | "closed";

export interface StateChange {
  state: ConnectionState;
  /** connecting: the attempt number (1 for connect()). reconnecting: attempts since the last welcome. */
  attempt?: number;
  /** reconnecting: seconds until the next attempt. */
  delay?: number;
  /** reconnecting, closed: the close code that caused it (1006: lost, no close frame). */
  code?: number;
  reason?: string;
  /** open: the welcome of the new connection. */
  welcome?: WelcomeMessage;
  /** open: true after a reconnect. connecting: true for a reconnect attempt. */
  reconnected?: boolean;
  reconnect?: boolean;
  /** closed: why, when it was not close(); reconnecting: why the last attempt failed. */
  error?: LiveroomError;
}

/** Third argument of room event handlers. */
export interface EventMeta {
  /** True for events from joined.recent (already reflected in joined.pin / joined.sale). */
  replay: boolean;
}

/** Second argument of "joined" handlers. */
export interface JoinedInfo {
  /** A resume by offset that worked: recent holds only the events missed. */
  resumed: boolean;
  /** joined.resync: replace the room's view (SPEC §8). */
  resync: boolean;
  /** Sent by the server without a join (its history was reset: SPEC §8). */
  unsolicited: boolean;
}

/** What the client knows of a room (client.room(name)). */
export interface RoomView {
  room: string;
  epoch: string | null;
  /** Offset of the last event seen (null: not joined yet). */
  offset: number | null;
  /** Joined on the current connection. */
  joined: boolean;
  likes: number;
  viewers: number;
  pin: Product | null;
  sale: Sale | null;
}

export type RoomEventHandler<E> = (event: E, room: string, meta: EventMeta) => void;

export type ClientEvents = {
  [K in keyof RoomEventMap]: RoomEventHandler<RoomEventMap[K]>;
} & {
  /** Every room event. */
  event: RoomEventHandler<RoomEvent>;
  joined: (joined: JoinedMessage, info: JoinedInfo) => void;
  left: (left: LeftMessage) => void;
  state: (change: StateChange) => void;
  error: (error: LiveroomError) => void;
  refreshed: (refreshed: RefreshedMessage) => void;
  welcome: (welcome: WelcomeMessage) => void;
};

export interface BuyOptions {
  /** Retry an earlier attempt: its rid (sent with retry: true). Default: a new unique rid. */
  rid?: Rid;
}

export declare class LiveroomClient {
  constructor(options: LiveroomClientOptions);
  readonly url: string;
  readonly state: ConnectionState;
  /** The last welcome (null before the first). */
  readonly welcome: WelcomeMessage | null;
  /** The negotiated codec. */
  readonly codec: "msgpack" | "json";
  /** The rooms the client is in (or rejoining). */
  readonly rooms: string[];
  /** The server's clock (unix ms), from welcome.now and pong.now. */
  serverNow(): number;
  room(name: string): RoomView | null;
  on<K extends keyof ClientEvents>(type: K, handler: ClientEvents[K]): () => void;
  connect(): Promise<WelcomeMessage>;
  join(room: string): Promise<JoinedMessage>;
  leave(room: string): Promise<LeftMessage>;
  comment(room: string, text: string): Promise<AckMessage>;
  like(room: string, count?: number): Promise<AckMessage>;
  buy(room: string, sale: string, qty?: number, options?: BuyOptions): Promise<BuyResultMessage>;
  ping(): Promise<PongMessage>;
  refresh(token: string): Promise<RefreshedMessage>;
  close(): void;
}

export declare const DEFAULTS: Readonly<Required<Omit<LiveroomClientOptions, "url" | "token" | "getToken" | "WebSocket" | "debug">>>;
export declare const CLOSE_ACTIONS: Readonly<Record<number, "stop" | "reconnect" | "backoff" | "token">>;
export declare const COMMANDS: Readonly<
  Record<string, { answers: readonly string[]; onDrop: "reject" | "resend" | "settle"; room: boolean }>
>;
export declare const MESSAGE_HANDLERS: Readonly<Record<string, string>>;
export declare const VIEW_UPDATES: Readonly<Record<string, (view: RoomView, event: RoomEvent) => void>>;
