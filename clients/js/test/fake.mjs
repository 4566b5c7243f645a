// An in-memory websocket and server for testing the client's logic without sockets.
//
// FakeServer.WebSocket is a constructor with the browser WebSocket's surface (url,
// protocol, binaryType, onopen/onmessage/onclose/onerror, send, close); each instance is
// handed to the server's `onConnect(socket)`, which scripts the server side with
// socket.accept() / socket.deliver(message) / socket.drop(code). Frames travel as
// real payloads of the negotiated codec (encoded by the codec under test), on later turns
// of the event loop, as over a network.
import { CODECS } from "../src/index.js";

export class FakeSocket {
  constructor(server, url, protocols) {
    this.server = server;
    this.url = url;
    this.offered = protocols;
    this.protocol = "";
    this.binaryType = "blob";
    this.readyState = 0;
    this.onopen = this.onmessage = this.onclose = this.onerror = null;
    this.received = []; // decoded client messages
    this.closedByClient = null;
  }

  get codec() {
    return CODECS[this.protocol || "liveroom.v1.msgpack"];
  }

  /** Complete the handshake selecting `protocol` (default: the first offered). */
  accept(protocol = this.offered[0]) {
    this.protocol = protocol;
    this.readyState = 1;
    setTimeout(() => this.onopen?.({}));
  }

  /** Send a server message (encoded with the codec), or raw bytes / text as given. */
  deliver(message) {
    const data = message && typeof message === "object" && "t" in message ? this.codec.encodeServer(message) : message;
    const payload = data instanceof Uint8Array ? data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength) : data;
    setTimeout(() => {
      if (this.readyState === 1) this.onmessage?.({ data: payload });
    });
  }

  welcome(extra = {}) {
    this.deliver({ t: "welcome", v: 1, sid: "s-1", uid: "u-1", name: "Ann", role: "viewer", hb: 20000, now: Date.now(), ...extra });
  }

  /** Close from the server side with `code`. */
  drop(code = 1006, reason = "") {
    if (this.readyState === 3) return;
    this.readyState = 3;
    setTimeout(() => this.onclose?.({ code, reason }));
  }

  // --- the client's side ---
  send(data) {
    if (this.readyState !== 1) throw new Error("not open");
    const message = this.codec.decodeClient(data);
    this.received.push(message);
    this.server.onMessage?.(this, message);
  }

  close(code = 1000, reason = "") {
    this.closedByClient = { code, reason };
    this.drop(code, reason);
  }
}

export class FakeServer {
  constructor({ onConnect, onMessage } = {}) {
    this.sockets = [];
    this.onConnect = onConnect;
    this.onMessage = onMessage;
    const server = this;
    this.WebSocket = class {
      constructor(url, protocols) {
        const socket = new FakeSocket(server, url, protocols);
        server.sockets.push(socket);
        setTimeout(() => server.onConnect?.(socket));
        return socket;
      }
    };
  }

  get last() {
    return this.sockets[this.sockets.length - 1];
  }
}

/** A server that accepts every connection with a welcome and answers joins from `rooms`. */
export function simpleServer({ joined = () => ({}), onMessage } = {}) {
  const server = new FakeServer({
    onConnect(socket) {
      socket.accept();
      socket.welcome();
    },
    onMessage(socket, message) {
      if (message.t === "join") {
        socket.deliver({
          t: "joined",
          room: message.room,
          ep: "e1",
          off: 0,
          viewers: 1,
          likes: 0,
          resync: false,
          recent: [],
          rid: message.rid,
          ...joined(message, socket),
        });
        return;
      }
      onMessage?.(socket, message);
    },
  });
  return server;
}

export function comment(off, text = `c${off}`) {
  return { t: "comment", id: `e1.${off}`, uid: "u-2", name: "Bo", text, ts: 1732500000000 + off, off };
}
