// A typed usage of the client, checked by `tsc --noEmit --strict` (test/types.test.mjs):
// the API a frontend writes against, and mistakes the types must catch (@ts-expect-error).
import WebSocket from "ws";
import {
  LiveroomClient,
  LiveroomError,
  MSGPACK,
  type BuyResultMessage,
  type CommentEvent,
  type JoinedMessage,
  type RoomEvent,
  type ServerMessage,
  type StateChange,
} from "../../src/index.js";

async function show(): Promise<void> {
  const client = new LiveroomClient({
    url: "ws://127.0.0.1:8765/",
    token: "v1.x.y",
    getToken: async () => "v1.x.z",
    codec: "msgpack",
    WebSocket,
    reconnect: { initialDelay: 0.5, maxDelay: 10, jitter: 0.5 },
  });
  const welcome = await client.connect();
  const expires: number | undefined = welcome.exp;
  const joined: JoinedMessage = await client.join("live-42");
  const resync: boolean = joined.resync;
  for (const ev of joined.recent) {
    if (ev.t === "comment") {
      const text: string = ev.text; // narrowed by `t`
      void text;
    }
  }
  const ack = await client.comment("live-42", "你好");
  const off: number | undefined = ack.off;
  await client.like("live-42");
  await client.like("live-42", 3);
  const result: BuyResultMessage = await client.buy("live-42", "s-77", 1);
  if (result.status === "ok") {
    const order: string | undefined = result.order;
    void order;
  }
  await client.buy("live-42", "s-77", 1, { rid: result.rid });
  await client.leave("live-42");
  await client.refresh("v1.a.b");

  const off1 = client.on("comment", (ev: CommentEvent, room: string, meta) => {
    const who: string = ev.name;
    const replay: boolean = meta.replay;
    void [who, room, replay];
  });
  client.on("sale_opened", (ev) => {
    const remaining: number = ev.sale.remaining;
    const status: "scheduled" | "open" | "sold_out" | "closed" | "ended" = ev.sale.status;
    void [remaining, status];
  });
  client.on("stock", (ev, room) => void [ev.remaining, room]);
  client.on("pinned", (ev) => void ev.product.extra?.["颜色"]);
  client.on("event", (ev: RoomEvent) => void ev.t);
  client.on("joined", (msg, info) => void [msg.pin?.title, msg.sale?.limit, info.resync]);
  client.on("state", (s: StateChange) => void [s.state, s.delay, s.welcome?.uid]);
  client.on("error", (e: LiveroomError) => void [e.code, e.message]);
  off1();

  const view = client.room("live-42");
  if (view) void [view.offset, view.pin?.id, view.sale?.remaining];

  const payload = MSGPACK.encodeClient({ t: "join", room: "live-42", rid: 1 });
  const message: ServerMessage = MSGPACK.decodeServer(payload);
  void [expires, resync, off, message];

  // @ts-expect-error: not a room event nor a client event
  client.on("comments", () => {});
  // @ts-expect-error: a comment event has no `total`
  client.on("comment", (ev) => void ev.total);
  // @ts-expect-error: qty is a number
  await client.buy("live-42", "s-77", "1");
  // @ts-expect-error: codec is msgpack or json
  new LiveroomClient({ url: "ws://x/", codec: "xml" });
  // @ts-expect-error: buy_result status is a closed set
  const bad: BuyResultMessage["status"] = "maybe";
  void bad;
  client.close();
}
void show;
