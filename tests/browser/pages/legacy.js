// A test page that talks to the gateway the way the seed's web app does
// (its register, home and meeting pages and signalSession.ts), served by a
// proxy that sends /api/* to the gateway: relative fetches with the
// browser's cookies, the name read raw from document.cookie, and a
// WebSocket authenticated by nothing but those cookies. The suite drives it
// through `window.legacy`.

/** Envelopes received on the WebSocket. */
const received = [];
let socket = null;

window.legacy = {
  received,
  /** POST {prefix}/v1/register as register.tsx does: `{status, body}`. */
  async register(username, prefix = "/api") {
    const response = await fetch(`${prefix}/v1/register`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ username }),
    });
    return { status: response.status, body: await response.json() };
  },
  /** The name exactly as the seed's pages read it: the raw cookie value. */
  cookieName() {
    return document.cookie
      .split("; ")
      .find((row) => row.startsWith("user_username="))
      ?.split("=")[1];
  },
  /** GET /api/v1/user as home.tsx does: the status (it redirects on 401). */
  async user() {
    const response = await fetch("/api/v1/user", {
      method: "GET",
      headers: { "Content-Type": "application/json" },
    });
    return response.status;
  },
  /** Opens the WebSocket as signalSession.ts does; resolves with WELCOME. */
  connect(timeout = 10_000) {
    socket = new WebSocket(`ws://${location.host}/api/v1/connect`);
    socket.onmessage = (ev) => received.push(JSON.parse(ev.data));
    return this.message("WELCOME", timeout);
  },
  send(target, type, payload) {
    socket.send(JSON.stringify({ target, type, payload }));
  },
  /** The first envelope of `type`, waiting up to `timeout` ms. */
  message(type, timeout = 10_000) {
    return new Promise((resolve, reject) => {
      const started = Date.now();
      const poll = () => {
        const found = received.find((m) => m.type === type);
        if (found) return resolve(found);
        if (socket?.readyState === WebSocket.CLOSED) return reject(new Error(`socket closed before ${type}`));
        if (Date.now() - started > timeout) return reject(new Error(`timed out after ${timeout} ms: ${type}`));
        setTimeout(poll, 25);
      };
      poll();
    });
  },
};
document.title = "ready";
