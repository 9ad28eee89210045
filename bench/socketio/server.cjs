// socket.io server as scripts/bench runs it: the relay of most WebRTC
// signaling tutorials. A client connects with its user name in the
// handshake's auth payload and joins a room named after it; a `signal` event
// `{target, type, payload}` is re-emitted to the target's room with the
// originator stamped, or answered with `signal-error` when nobody is in that
// room. There is no registration step, as in the tutorials.
//
// socket.io's defaults except: WebSocket only (no long-polling start and
// upgrade, so every system is reached over one WebSocket), and
// per-message deflate stated off (already engine.io's default) so that the
// comparison does not hinge on it. The ping interval and timeout are
// engine.io's defaults, written out: the bench's clients answer every ping,
// and the idle-memory scenario ends long before a missed one would count.
// Like the other servers, it logs nothing per connection.
//
// Usage: node server.cjs <dir holding node_modules/socket.io> <port>
"use strict";
const http = require("node:http");
const path = require("node:path");

const [dir, port] = process.argv.slice(2);
if (!dir || !port) {
  console.error("usage: node server.cjs <socket.io install dir> <port>");
  process.exit(2);
}
const { Server } = require(path.join(path.resolve(dir), "node_modules", "socket.io"));

// socket.io answers /socket.io/ itself; every other request lands here, and
// /healthcheck is what the driver polls for readiness.
const httpServer = http.createServer((req, res) => {
  res.writeHead(req.url === "/healthcheck" ? 200 : 404, { "content-type": "text/plain" });
  res.end(req.url === "/healthcheck" ? "ok\n" : "not found\n");
});

const io = new Server(httpServer, {
  transports: ["websocket"],
  perMessageDeflate: false,
  pingInterval: 25000,
  pingTimeout: 20000,
});

io.use((socket, next) => {
  const user = socket.handshake.auth && socket.handshake.auth.user;
  if (typeof user !== "string" || user === "") {
    next(new Error("auth.user (a user name) is required"));
    return;
  }
  socket.data.user = user;
  next();
});

io.on("connection", (socket) => {
  const user = socket.data.user;
  socket.join(user);
  socket.on("signal", (msg) => {
    // Rooms, socket.io's own feature: JOIN joins, an event with a room and
    // no target goes to every other member (the room scenario).
    if (msg && msg.target === "" && msg.type === "JOIN") {
      const room = msg.payload && msg.payload.room;
      socket.join(`room:${room}`);
      socket.emit("signal", { target: "", type: "JOINED", originator: "", payload: { room } });
      return;
    }
    if (msg && msg.target === undefined && typeof msg.room === "string") {
      socket
        .to(`room:${msg.room}`)
        .emit("signal", { target: "", room: msg.room, type: msg.type, originator: user, payload: msg.payload });
      return;
    }
    const target = msg && msg.target;
    if (typeof target !== "string" || !io.sockets.adapter.rooms.has(target)) {
      socket.emit("signal-error", { type: "TARGET_NOT_FOUND", target });
      return;
    }
    io.to(target).emit("signal", { target, type: msg.type, originator: user, payload: msg.payload });
  });
});

httpServer.listen(Number(port), "127.0.0.1", () =>
  console.log(`socket.io listening on 127.0.0.1:${httpServer.address().port}`),
);
for (const signal of ["SIGINT", "SIGTERM"]) {
  process.on(signal, () => process.exit(0));
}
