// A test page's script that uses nothing but the gateway's /client.js; the
// suite drives it through `window.peer`. It runs either on a page of the
// gateway's own origin (injected into /healthcheck) or in peer.html with
// `?gw=...`, which loads client.js from there and talks to the gateway
// through `baseUrl`: `?gw=http://host:port` from the suite's static server
// (the gateway must then allow the page's origin with --allow-origin), or
// `?gw=/api` from a reverse proxy that sends /api/* to the gateway.
const gateway = new URLSearchParams(location.search).get("gw");
const { SignalClient, SignalError } = await import(gateway ? `${gateway}/client.js` : "/client.js");
const baseUrl = gateway ?? undefined;

/**
 * Everything a client did, for the suite to assert on; `ice`: the types of
 * the candidates this page gathered, ICE server errors and ICE states.
 */
const log = { events: [], messages: [], chat: [], errors: [], ice: { candidates: [], errors: [], states: [] } };
/**
 * How peer connections are made: with no ICE servers (host candidates:
 * enough on one machine), or with the client's `iceServers`; `relay`
 * forces `iceTransportPolicy: "relay"`.
 */
const rtc = { clientIce: false, relay: false };
let client = null;
let pc = null;
let channel = null;
let remote = null;
let pendingCandidates = [];
let localMedia = null;

function record(type) {
  return (ev) => log.events.push({ type, at: Date.now(), detail: JSON.parse(JSON.stringify(ev.detail ?? null)) });
}

function watch(c) {
  for (const type of ["connecting", "connected", "reconnecting", "disconnected", "close", "resumed", "identity", "iceservers", "peer-joined", "peer-left", "room-message"]) c.addEventListener(type, record(type));
  c.addEventListener("message", (ev) => {
    log.messages.push(ev.detail);
    onSignal(ev.detail).catch((err) => log.errors.push(String(err)));
  });
}

// Chromium gathers loopback candidates only with media permission (and
// --allow-loopback-in-peer-connection); asking once costs nothing here
// thanks to the fake-device flags, and makes the test work on a machine
// whose only interface is loopback.
async function media() {
  if (localMedia || !navigator.mediaDevices?.getUserMedia) return;
  localMedia = await navigator.mediaDevices.getUserMedia({ audio: true }).catch(() => null);
}

function newPeerConnection(target) {
  remote = target;
  pendingCandidates = [];
  pc = new RTCPeerConnection({
    iceServers: rtc.clientIce ? client.iceServers : [],
    iceTransportPolicy: rtc.relay ? "relay" : "all",
  });
  pc.onicecandidate = (ev) => {
    if (ev.candidate) log.ice.candidates.push(ev.candidate.type);
    client.send(remote, "ice-candidate", ev.candidate);
  };
  pc.onicecandidateerror = (ev) => log.ice.errors.push({ url: ev.url, code: ev.errorCode, text: ev.errorText });
  pc.oniceconnectionstatechange = () => log.ice.states.push(pc.iceConnectionState);
  return pc;
}

function useChannel(dc) {
  channel = dc;
  dc.onmessage = (ev) => log.chat.push(ev.data);
}

async function addPendingCandidates() {
  for (const candidate of pendingCandidates) await pc.addIceCandidate(candidate);
  pendingCandidates = [];
}

async function onSignal(envelope) {
  const { type, originator, payload } = envelope;
  if (type === "video-offer") {
    await media();
    newPeerConnection(originator);
    pc.ondatachannel = (ev) => useChannel(ev.channel);
    await pc.setRemoteDescription(payload);
    await addPendingCandidates();
    await pc.setLocalDescription(await pc.createAnswer());
    client.send(originator, "video-answer", pc.localDescription);
  } else if (type === "video-answer") {
    await pc.setRemoteDescription(payload);
    await addPendingCandidates();
  } else if (type === "ice-candidate") {
    if (payload === null) return; // end of candidates
    if (pc?.remoteDescription) await pc.addIceCandidate(payload);
    else pendingCandidates.push(payload);
  }
}

function until(what, check, timeout = 10_000) {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const poll = () => {
      const value = check();
      if (value) return resolve(value);
      if (Date.now() - started > timeout) return reject(new Error(`timed out after ${timeout} ms: ${what}`));
      setTimeout(poll, 25);
    };
    poll();
  });
}

function describe(err) {
  return { name: err?.name, code: err?.code, message: err?.message ?? String(err) };
}

window.peer = {
  log,
  get client() { return client; },
  /** Registers `name` and connects with `options`; returns what the client reports. */
  async join(name, options = {}) {
    client = await SignalClient.register(name, { baseUrl });
    watch(client);
    const welcome = await client.connect(options);
    return { transport: client.transport, welcome, token: client.token };
  },
  /**
   * Signs in with JWTs from `tokenUrl` (a backend minting them) and
   * connects: client.js gets a token to connect and a fresh one to refresh.
   */
  async signIn(tokenUrl, options = {}) {
    const getToken = async () => (await fetch(tokenUrl)).text();
    client = await SignalClient.signIn({ baseUrl, getToken });
    watch(client);
    const welcome = await client.connect(options);
    return { transport: client.transport, welcome, username: client.username };
  },
  /** A second client for an existing token (same user, another tab). */
  async resume(token, options = {}) {
    client = await SignalClient.fromToken(token, { baseUrl });
    watch(client);
    await client.connect(options);
    return { transport: client.transport, username: client.username };
  },
  /** connect() that is expected to fail: returns the error, or null. */
  async tryConnect(name, options) {
    client ??= await SignalClient.register(name, { baseUrl });
    const started = Date.now();
    try {
      await client.connect(options);
      return { error: null, ms: Date.now() - started, transport: client.transport, state: client.state, fallback: client.fallbackReason && describe(client.fallbackReason) };
    } catch (err) {
      return { error: describe(err), isSignalError: err instanceof SignalError, ms: Date.now() - started, state: client.state };
    }
  },
  async register(name) {
    try {
      await SignalClient.register(name, { baseUrl });
      return null;
    } catch (err) {
      return describe(err);
    }
  },
  /** Calls `target`: offer with a data channel, then waits for it to open. */
  async call(target) {
    await media();
    newPeerConnection(target);
    useChannel(pc.createDataChannel("chat"));
    await pc.setLocalDescription(await pc.createOffer());
    client.send(target, "video-offer", pc.localDescription);
  },
  /** Later peer connections use the client's ICE servers; `relay`: through TURN only. */
  useClientIce({ relay = false } = {}) {
    rtc.clientIce = true;
    rtc.relay = relay;
  },
  /**
   * The candidate types of the selected candidate pair, from getStats():
   * Chromium names the pair in the transport's stats.
   */
  async route() {
    const stats = await pc.getStats();
    let pair = null;
    stats.forEach((report) => {
      if (report.type === "transport" && report.selectedCandidatePairId) pair = stats.get(report.selectedCandidatePairId);
    });
    if (!pair) return null;
    const local = stats.get(pair.localCandidateId);
    const remote = stats.get(pair.remoteCandidateId);
    return { state: pair.state, local: local?.candidateType, remote: remote?.candidateType, localRelay: local?.relayProtocol ?? null };
  },
  /**
   * Waits up to `timeout` for ICE to connect; reports what happened either
   * way: the ICE state, this page's candidates and ICE server errors.
   */
  async iceOutcome(timeout) {
    const connected = () => ["connected", "completed"].includes(pc?.iceConnectionState);
    await until("ICE connected", connected, timeout).catch(() => {});
    return { connected: connected(), state: pc?.iceConnectionState, gathering: pc?.iceGatheringState, ...log.ice };
  },
  async channelOpen(timeout = 10_000) {
    await until("data channel open", () => channel?.readyState === "open", timeout);
    return { ice: pc.iceConnectionState, connection: pc.connectionState };
  },
  say(text) {
    channel.send(text);
  },
  heard(text, timeout = 10_000) {
    return until(`chat message ${JSON.stringify(text)}`, () => log.chat.includes(text), timeout);
  },
  send(target, type, payload) {
    client.send(target, type, payload);
  },
  received(type, timeout = 10_000) {
    return until(`envelope of type ${type}`, () => log.messages.find((m) => m.type === type), timeout);
  },
  event(type, timeout = 10_000, since = 0) {
    return until(`${type} event`, () => log.events.find((e) => e.type === type && e.at >= since), timeout);
  },
  async close() {
    await client.close();
    return client.state;
  },
  hangUp() {
    pc?.close();
  },
};
document.title = "ready";
