// @ts-check
/**
 * @file The demo app at `/`: register, see who is online, call someone and
 * chat over a WebRTC data channel (with video where there is a camera).
 * This file is the page: it wires the DOM to /client.js (the gateway) and
 * to /call.js (the calls, which know no DOM); the gateway only relays the
 * handshake.
 *
 * Calls use the ICE servers the gateway hands out (`client.iceServers`:
 * STUN, and TURN with credentials it mints; none works on one machine or a
 * LAN). URL options: `?transport=websocket` preselects a transport,
 * `?ice=stun:host:port` (repeatable) adds ICE servers, `?relay=1` checks
 * "Relay calls through TURN only" (`iceTransportPolicy: "relay"`).
 *
 * Paths are relative, so the app also works behind a proxy that serves the
 * gateway under a prefix (e.g. `/api/`).
 */
import { SignalClient, SignalError } from "./client.js";
import { Phone } from "./call.js";

/**
 * @typedef {import("./client.js").CloseDetail} CloseDetail
 * @typedef {import("./call.js").CallState} CallState
 * @typedef {import("./call.js").EndReason} EndReason
 * @typedef {"auto" | "webtransport" | "websocket"} TransportChoice
 * @typedef {import("./client.js").SignalClientEventMap} ClientEvents
 *
 * @typedef {object} SavedSession what this tab keeps across reloads
 * @property {string} username
 * @property {string} token
 * @property {TransportChoice} transport
 * @property {boolean} [relay] calls through TURN only
 */

const STORAGE_SESSION = "signal-gateway-demo:session"; // per tab: who this tab is
const STORAGE_TOKENS = "signal-gateway-demo:tokens"; // per browser: names we own
const PEOPLE_REFRESH_MS = 3_000;
/** @type {Readonly<Record<string, string>>} */
const TRANSPORT_LABEL = { webtransport: "WebTransport", websocket: "WebSocket" };

const params = new URLSearchParams(location.search);
/** ICE servers from `?ice=`, used besides the gateway's. */
const EXTRA_ICE_SERVERS = params.getAll("ice").map((urls) => ({ urls }));
/** The gateway: wherever this page was served from (the origin, or a proxy's prefix). */
const GATEWAY = { baseUrl: new URL(".", location.href).href };

const ui = {
  joinView: $("join-view", HTMLElement),
  joinForm: $("join-form", HTMLFormElement),
  name: $("name", HTMLInputElement),
  transportHint: $("transport-hint", HTMLElement),
  relay: $("relay", HTMLInputElement),
  joinButton: $("join-button", HTMLButtonElement),
  joinError: $("join-error", HTMLElement),
  lobby: $("lobby-view", HTMLElement),
  me: $("me", HTMLElement),
  meAvatar: $("me-avatar", HTMLElement),
  meName: $("me-name", HTMLElement),
  meTransport: $("me-transport", HTMLElement),
  leave: $("leave", HTMLButtonElement),
  banner: $("banner", HTMLElement),
  bannerText: $("banner-text", HTMLElement),
  bannerAction: $("banner-action", HTMLButtonElement),
  people: $("people", HTMLElement),
  peopleNote: $("people-note", HTMLElement),
  refresh: $("refresh", HTMLButtonElement),
  dialForm: $("dial-form", HTMLFormElement),
  dial: $("dial", HTMLInputElement),
  callDot: $("call-dot", HTMLElement),
  callState: $("call-state", HTMLElement),
  transports: $("transports", HTMLElement),
  myCallTransport: $("my-call-transport", HTMLElement),
  peerName: $("peer-name", HTMLElement),
  peerTransport: $("peer-transport", HTMLElement),
  hangup: $("hangup", HTMLButtonElement),
  toggleMic: $("toggle-mic", HTMLButtonElement),
  toggleCam: $("toggle-cam", HTMLButtonElement),
  remoteVideo: $("remote-video", HTMLVideoElement),
  localVideo: $("local-video", HTMLVideoElement),
  remoteTag: $("remote-tag", HTMLElement),
  placeholder: $("placeholder", HTMLElement),
  placeholderText: $("placeholder-text", HTMLElement),
  chatLog: $("chat-log", HTMLElement),
  chatForm: $("chat-form", HTMLFormElement),
  chatInput: $("chat-input", HTMLInputElement),
  chatSend: $("chat-send", HTMLButtonElement),
  incoming: $("incoming", HTMLDialogElement),
  incomingAvatar: $("incoming-avatar", HTMLElement),
  incomingTitle: $("incoming-title", HTMLElement),
  incomingDetail: $("incoming-detail", HTMLElement),
  accept: $("accept", HTMLButtonElement),
  decline: $("decline", HTMLButtonElement),
  toast: $("toast", HTMLElement),
};
/** The join form's Auto / WebTransport / WebSocket radios. */
const transportRadios = radioGroup(ui.joinForm, "transport");

/** @type {SignalClient | null} */
let client = null;
/** @type {TransportChoice} */
let transportChoice = "auto";
let peopleTimer = 0;
let peopleListed = true; // false once /v1/users refused us (not on the gateway's machine)

const phone = new Phone({
  send: signal,
  transport: () => client?.transport ?? null,
  iceServers: EXTRA_ICE_SERVERS,
}, {
  state: onCallState,
  interrupted: () => setCallState("connecting", "Connection interrupted, waiting…"),
  ended: onCallEnded,
  localMedia: showLocal,
  remoteTrack: showRemoteTrack,
  peerTransport: showPeerTransport,
  chatOpen: enableChat,
  chatClosed: disableChat,
  chatMessage: (peer, text) => chatLine(peer, text, false),
  gatewayError: onGatewayError,
});

// ---- start ----

const preset = params.get("transport");
if (preset && ["auto", "webtransport", "websocket"].includes(preset)) {
  transportRadios.value = preset;
}
ui.relay.checked = params.get("relay") === "1";
if (!SignalClient.webTransportSupported) {
  for (const radio of transportRadios) {
    if (radio instanceof HTMLInputElement && radio.value === "webtransport") radio.disabled = true;
  }
  ui.transportHint.textContent = window.isSecureContext
    ? "This browser has no WebTransport, so Auto will use WebSocket."
    : "WebTransport needs a secure context (https, localhost or 127.0.0.1), so Auto will use WebSocket here.";
}

ui.joinForm.addEventListener("submit", (ev) => {
  ev.preventDefault();
  join(ui.name.value.trim(), transportOf(transportRadios.value));
});
ui.leave.addEventListener("click", leave);
ui.refresh.addEventListener("click", () => refreshPeople(true));
ui.dialForm.addEventListener("submit", (ev) => {
  ev.preventDefault();
  const name = ui.dial.value.trim();
  if (name) startCall(name);
});
ui.hangup.addEventListener("click", () => phone.hangUp());
ui.accept.addEventListener("click", () => phone.accept());
ui.decline.addEventListener("click", () => phone.decline());
ui.incoming.addEventListener("cancel", (ev) => {
  ev.preventDefault(); // Escape declines explicitly rather than leaving the caller ringing
  phone.decline();
});
ui.chatForm.addEventListener("submit", (ev) => {
  ev.preventDefault();
  sendChat();
});
ui.toggleMic.addEventListener("click", () => toggleTrack("audio", ui.toggleMic, "microphone"));
ui.toggleCam.addEventListener("click", () => toggleTrack("video", ui.toggleCam, "camera"));
document.addEventListener("visibilitychange", () => {
  if (!document.hidden && client) refreshPeople();
});
window.addEventListener("pagehide", (ev) => {
  if (ev.persisted) return; // back/forward cache: client.js reconnects on return
  // Tell the peer; client.js then ends its stream so the gateway sees us go at once.
  phone.hangUpOnUnload();
});

resume();

// ---- joining and leaving ----

/** Comes back as the same user after a reload of this tab. */
async function resume() {
  /** @type {Partial<SavedSession> | null} */
  const saved = readJson(sessionStorage, STORAGE_SESSION);
  if (!saved?.token) {
    ui.name.focus();
    return;
  }
  const transport = transportOf(saved.transport);
  ui.name.value = saved.username ?? "";
  transportRadios.value = transport;
  ui.relay.checked ||= saved.relay === true;
  setBusy(true, "Reconnecting…");
  let resumed;
  try {
    resumed = await SignalClient.fromToken(saved.token, GATEWAY);
  } catch (err) {
    setBusy(false);
    if (err instanceof SignalError && err.code === "UNAUTHENTICATED") {
      sessionStorage.removeItem(STORAGE_SESSION); // the gateway forgot us (restart or expiry): join again
    } else {
      ui.joinError.textContent = `Could not reach the gateway: ${errorMessage(err)}`;
    }
    return;
  }
  client = resumed;
  await connect(resumed, transport);
}

/**
 * @param {string} name
 * @param {TransportChoice} transport
 */
async function join(name, transport) {
  ui.joinError.textContent = "";
  if (!name) {
    ui.joinError.textContent = "Type a name first.";
    ui.name.focus();
    return;
  }
  setBusy(true, "Joining…");
  /** @type {Record<string, string>} */
  const owned = readJson(localStorage, STORAGE_TOKENS) ?? {};
  let joined;
  try {
    joined = await SignalClient.register(name, { ...GATEWAY, token: owned[name] });
  } catch (err) {
    setBusy(false);
    ui.joinError.textContent = err instanceof SignalError && err.code === "TAKEN"
      ? `“${name}” is already taken. Pick another name.`
      : errorMessage(err);
    ui.name.focus();
    return;
  }
  client = joined;
  owned[joined.username] = joined.token;
  writeJson(localStorage, STORAGE_TOKENS, owned);
  await connect(joined, transport);
}

/**
 * @param {SignalClient} c the client just registered or resumed
 * @param {TransportChoice} transport
 */
async function connect(c, transport) {
  transportChoice = transport;
  onClientEvent(c, "connected", onOpen);
  onClientEvent(c, "close", onClose);
  onClientEvent(c, "reconnecting", onReconnecting);
  onClientEvent(c, "identity", onIdentity);
  onClientEvent(c, "message", (envelope) => phone.handle(envelope));
  onClientEvent(c, "iceservers", ({ iceServers }) => {
    phone.iceServers = [...iceServers, ...EXTRA_ICE_SERVERS];
  });
  phone.iceTransportPolicy = ui.relay.checked ? "relay" : "all";
  try {
    await c.connect({ transport });
  } catch (err) {
    setBusy(false);
    ui.joinError.textContent = `Could not connect${transport === "auto" ? "" : ` over ${TRANSPORT_LABEL[transport]}`}: ${errorMessage(err)}`;
    client = null;
    return;
  }
  saveSession();
  setBusy(false);
  ui.joinView.hidden = true;
  ui.lobby.hidden = false;
  ui.me.hidden = false;
  ui.meName.textContent = c.username;
  ui.meAvatar.textContent = initial(c.username);
  ui.meAvatar.style.setProperty("--hue", hue(c.username));
  document.title = `${c.username} · signal-gateway`;
  showMyTransport();
  refreshPeople();
}

function leave() {
  phone.hangUp();
  const old = client;
  client = null;
  old?.close();
  sessionStorage.removeItem(STORAGE_SESSION);
  clearTimeout(peopleTimer);
  hideBanner();
  ui.me.hidden = true;
  ui.lobby.hidden = true;
  ui.joinView.hidden = false;
  ui.chatLog.replaceChildren();
  document.title = "signal-gateway · peer-to-peer calls";
  ui.name.focus();
}

/**
 * @param {boolean} busy
 * @param {string} [label]
 */
function setBusy(busy, label = "Join") {
  ui.joinButton.disabled = busy;
  ui.joinButton.textContent = busy ? label : "Join";
  ui.name.disabled = busy;
}

function saveSession() {
  if (!client) return;
  /** @type {SavedSession} */
  const session = { username: client.username, token: client.token, transport: transportChoice, relay: ui.relay.checked };
  writeJson(sessionStorage, STORAGE_SESSION, session);
}

// ---- the gateway connection ----

/**
 * Listens to one of client.js's events, handing over its `detail`.
 * @template {keyof ClientEvents} K
 * @param {SignalClient} c
 * @param {K} type
 * @param {(detail: ClientEvents[K]["detail"]) => void} listener
 */
function onClientEvent(c, type, listener) {
  c.addEventListener(type, (ev) => listener(ev.detail));
}

/** @param {ClientEvents["connected"]["detail"]} welcome */
function onOpen(welcome) {
  hideBanner();
  showMyTransport();
  if (ui.lobby.hidden) return; // the first connection: connect() shows the lobby
  if (welcome.reconnected) toast(`Back online over ${TRANSPORT_LABEL[welcome.transport]}.`);
  // The transport may have changed: tell the peer.
  phone.reconnected();
  refreshPeople();
}

/** @param {CloseDetail} detail */
function onClose({ reason, message, willReconnect }) {
  if (reason === "CLOSED" || !client) return; // we closed it ourselves
  if (willReconnect) {
    setMyBadge("Reconnecting…", "warn");
    return;
  }
  setMyBadge("Offline", "bad");
  clearTimeout(peopleTimer);
  const inCall = phone.state === "connected" ? " Your call goes on: it does not need the gateway." : "";
  if (reason === "REPLACED") {
    showBanner(`“${client.username}” is now connected in another tab or window, so this one stepped aside.${inCall}`, "Use it here", reconnect);
  } else if (reason === "KICKED") {
    showBanner(`An administrator disconnected you.${inCall}`, "Reconnect", reconnect);
  } else {
    showBanner(`Disconnected from the gateway: ${message || reason}.${inCall}`, "Reconnect", reconnect);
  }
}

/** @param {ClientEvents["reconnecting"]["detail"]} detail */
function onReconnecting({ delay }) {
  setMyBadge(`Reconnecting in ${Math.max(1, Math.round(delay / 1000))} s…`, "warn");
}

function onIdentity() {
  // The gateway restarted and we registered our name again: keep the new token.
  if (!client) return;
  saveSession();
  /** @type {Record<string, string>} */
  const owned = readJson(localStorage, STORAGE_TOKENS) ?? {};
  owned[client.username] = client.token;
  writeJson(localStorage, STORAGE_TOKENS, owned);
}

async function reconnect() {
  if (!client) return;
  hideBanner();
  setMyBadge("Connecting…", "warn");
  try {
    await client.connect({ transport: transportChoice });
  } catch (err) {
    setMyBadge("Offline", "bad");
    showBanner(`Could not reconnect: ${errorMessage(err)}`, "Try again", reconnect);
  }
}

function showMyTransport() {
  if (!client?.transport || client.state !== "connected") return;
  setMyBadge(TRANSPORT_LABEL[client.transport], client.transport);
  const why = client.fallbackReason;
  ui.meTransport.title = why
    ? `Signalling over WebSocket: WebTransport was not available (${why.message})`
    : `Signalling over ${TRANSPORT_LABEL[client.transport]}`;
}

/**
 * @param {string} text
 * @param {string} kind the badge's class: a transport, `warn` or `bad`
 */
function setMyBadge(text, kind) {
  ui.meTransport.textContent = text;
  ui.meTransport.className = `badge ${kind}`;
}

/**
 * Sends an envelope through the gateway; a failure is shown, not thrown.
 * @param {string} target
 * @param {string} type
 * @param {unknown} payload
 */
function signal(target, type, payload) {
  try {
    client?.send(target, type, payload);
  } catch (err) {
    toast(`Could not reach the gateway: ${errorMessage(err)}`);
  }
}

/**
 * An error envelope from the gateway that is not about the call.
 * @param {string} type
 * @param {{ message?: string }} payload
 */
function onGatewayError(type, payload) {
  if (type === "RATE_LIMITED") {
    toast("Slow down a little: the gateway is rate limiting this connection.");
  } else {
    toast(payload.message || type);
  }
}

// ---- who is online ----

async function refreshPeople(byHand = false) {
  clearTimeout(peopleTimer);
  if (!client || client.state === "disconnected") return;
  if (peopleListed || byHand) {
    try {
      const { connected } = await client.users();
      peopleListed = true;
      renderPeople(connected.filter((c) => c.username !== client?.username));
    } catch (err) {
      const status = err instanceof SignalError && "status" in err ? err.status : undefined;
      if (status === 401 || status === 403) {
        peopleListed = false;
        ui.people.replaceChildren();
        ui.peopleNote.textContent = "This gateway only shows who is online to pages on its own machine. Call someone by name instead.";
        ui.dial.focus();
      } else {
        ui.peopleNote.textContent = `Could not load the list: ${errorMessage(err)}`;
      }
    }
  }
  if (peopleListed && !document.hidden) peopleTimer = setTimeout(refreshPeople, PEOPLE_REFRESH_MS);
}

/** @param {Array<{ username: string, transport: string }>} people */
function renderPeople(people) {
  people.sort((a, b) => a.username.localeCompare(b.username));
  const busy = phone.state !== "idle";
  const items = people.map((person) => {
    const li = document.createElement("li");
    const avatar = document.createElement("span");
    avatar.className = "avatar";
    avatar.textContent = initial(person.username);
    avatar.style.setProperty("--hue", hue(person.username));
    avatar.setAttribute("aria-hidden", "true");
    const who = document.createElement("span");
    who.className = "who";
    const name = document.createElement("span");
    name.className = "who-name";
    name.textContent = person.username;
    const via = document.createElement("span");
    via.className = `who-via ${person.transport}`;
    via.textContent = `via ${TRANSPORT_LABEL[person.transport] ?? person.transport}`;
    who.append(name, via);
    const button = document.createElement("button");
    button.type = "button";
    button.className = "secondary small";
    button.textContent = phone.peer === person.username && busy ? "In call" : "Call";
    button.setAttribute("aria-label", `Call ${person.username}`);
    button.disabled = busy;
    button.addEventListener("click", () => startCall(person.username));
    li.append(avatar, who, button);
    return li;
  });
  ui.people.replaceChildren(...items);
  ui.peopleNote.textContent = people.length
    ? ""
    : "Nobody else is here yet. Open this page in another tab (or on another device) and join with another name.";
}

// ---- calls ----

/** @param {string} target */
function startCall(target) {
  if (!client || phone.state !== "idle") return;
  if (target === client.username) {
    toast("That's you. Pick someone else.");
    return;
  }
  phone.dial(target);
}

/**
 * @param {Exclude<CallState, "idle">} state
 * @param {CallState} previous
 */
function onCallState(state, previous) {
  const peer = phone.peer ?? "";
  if (state !== "ringing" && ui.incoming.open) ui.incoming.close();
  switch (state) {
    case "calling":
      setCallState("calling", `Calling ${peer}…`);
      showCallUi();
      chatSystem(`Calling ${peer}${relayOnly()}…`);
      break;
    case "ringing":
      showIncoming(peer);
      break;
    case "connecting":
      setCallState("connecting", `Connecting to ${peer}…`);
      if (previous === "ringing") {
        showCallUi();
        chatSystem(`You accepted ${peer}'s call${relayOnly()}.`);
      }
      break;
    case "connected":
      setCallState("connected", `Connected to ${peer}`);
      renderPeopleState();
      phone.route().then((route) => {
        const relayed = route && (route.local === "relay" || route.remote === "relay");
        chatSystem(relayed ? `Connected to ${peer} through the TURN relay.` : `Connected to ${peer}, peer to peer.`);
      }, () => chatSystem(`Connected to ${peer}.`));
      break;
  }
}

/** What the chat says about a call set to go through TURN only. */
function relayOnly() {
  return phone.iceTransportPolicy === "relay" ? " (TURN relay only)" : "";
}

/** @param {string} from */
function showIncoming(from) {
  setCallState("ringing", `${from} is calling…`);
  const transport = phone.peerTransport;
  ui.incomingAvatar.textContent = initial(from);
  ui.incomingAvatar.style.setProperty("--hue", hue(from));
  ui.incomingTitle.textContent = `${from} is calling`;
  ui.incomingDetail.textContent = transport
    ? `Signalled over ${TRANSPORT_LABEL[transport] ?? transport}`
    : "Incoming call";
  ui.incoming.showModal();
  ui.accept.focus();
}

/**
 * @param {EndReason} reason
 * @param {string} peer
 * @param {unknown} [error]
 */
function onCallEnded(reason, peer, error) {
  const message = endMessage(reason, peer, error);
  if (ui.incoming.open) ui.incoming.close();
  ui.remoteVideo.srcObject = null;
  ui.localVideo.srcObject = null;
  disableChat();
  setCallState("idle", message);
  chatSystem(message);
  ui.hangup.hidden = true;
  ui.toggleMic.hidden = true;
  ui.toggleCam.hidden = true;
  ui.transports.hidden = true;
  ui.remoteTag.hidden = true;
  ui.placeholderText.textContent = "Call someone from the list to start a video chat.";
  updateVideos();
  refreshPeople();
}

/**
 * What the call bar and the chat say when a call ends.
 * @param {EndReason} reason
 * @param {string} peer
 * @param {unknown} error
 * @returns {string}
 */
function endMessage(reason, peer, error) {
  switch (reason) {
    case "hung-up": return "Call ended";
    case "declined": return `You declined ${peer}'s call`;
    case "missed": return `Missed call from ${peer}`;
    case "no-answer": return `${peer} did not answer`;
    case "peer-hung-up": return `${peer} hung up`;
    case "peer-declined": return `${peer} declined the call`;
    case "peer-busy": return `${peer} is in another call`;
    case "peer-left": return `${peer} left the gateway`;
    case "peer-offline": return `${peer} is not online`;
    case "unreachable": return phone.iceTransportPolicy === "relay"
      ? `No route through the TURN relay${error ? ` (${errorMessage(error)})` : ""}: check the gateway's --turn-url and --turn-secret`
      : "The browsers could not reach each other (across networks the gateway needs --stun-url and --turn-url)";
    case "failed": return `The call failed: ${errorMessage(error)}`;
  }
}

function sendChat() {
  const text = ui.chatInput.value.trim();
  if (!client || !text || !phone.say(text)) return;
  chatLine(client.username, text, true);
  ui.chatInput.value = "";
}

// ---- media ----

/** @param {MediaStream | null} local */
function showLocal(local) {
  const hasVideo = Boolean(local?.getVideoTracks().length);
  ui.localVideo.srcObject = hasVideo ? local : null;
  ui.localVideo.hidden = !hasVideo;
  if (hasVideo) ui.localVideo.play().catch(() => {});
  ui.toggleMic.hidden = !local?.getAudioTracks().length;
  ui.toggleCam.hidden = !hasVideo;
  for (const button of [ui.toggleMic, ui.toggleCam]) button.setAttribute("aria-pressed", "false");
  ui.toggleMic.setAttribute("aria-label", "Mute microphone");
  ui.toggleCam.setAttribute("aria-label", "Turn camera off");
  if (!local) chatSystem("No camera or microphone here: this is a chat-only call.");
}

/**
 * @param {MediaStream} stream
 * @param {MediaStreamTrack} track
 */
function showRemoteTrack(stream, track) {
  if (ui.remoteVideo.srcObject !== stream) ui.remoteVideo.srcObject = stream;
  track.addEventListener("unmute", updateVideos);
  track.addEventListener("mute", updateVideos);
  ui.remoteVideo.play().catch(() => {});
  updateVideos();
}

/**
 * @param {"audio" | "video"} kind
 * @param {HTMLButtonElement} button
 * @param {string} what
 */
function toggleTrack(kind, button, what) {
  const on = phone.toggle(kind);
  if (on === null) return;
  button.setAttribute("aria-pressed", String(!on));
  button.setAttribute("aria-label", on
    ? (kind === "audio" ? "Mute microphone" : "Turn camera off")
    : (kind === "audio" ? "Unmute microphone" : "Turn camera on"));
  toast(on ? `Your ${what} is on.` : `Your ${what} is off.`);
}

function updateVideos() {
  const stream = ui.remoteVideo.srcObject;
  const live = stream instanceof MediaStream && stream.getVideoTracks().some((t) => !t.muted && t.readyState === "live");
  ui.remoteVideo.classList.toggle("live", live);
  ui.placeholder.hidden = live;
  if (!live && phone.state !== "idle") {
    ui.placeholderText.textContent = phone.state === "connected"
      ? `${phone.peer} has no camera on. The chat works all the same.`
      : ui.callState.textContent;
  }
}

// ---- view helpers ----

/**
 * @param {CallState} kind
 * @param {string} text
 */
function setCallState(kind, text) {
  ui.callState.textContent = text;
  ui.callDot.className = `call-dot ${kind}`;
  if (kind !== "idle" && !ui.remoteVideo.classList.contains("live")) ui.placeholderText.textContent = text;
}

function showCallUi() {
  ui.hangup.hidden = false;
  ui.remoteTag.hidden = false;
  ui.remoteTag.textContent = phone.peer;
  renderPeopleState();
}

function renderPeopleState() {
  const busy = phone.state !== "idle";
  for (const button of ui.people.querySelectorAll("button")) button.disabled = busy;
}

/**
 * "You [WebTransport] ⇄ Bob [WebSocket]" in the call bar.
 * @param {string} transport the peer's
 */
function showPeerTransport(transport) {
  const peer = phone.peer;
  if (!peer || !client?.transport) return;
  const label = TRANSPORT_LABEL[transport] ?? transport;
  ui.transports.hidden = false;
  ui.myCallTransport.textContent = TRANSPORT_LABEL[client.transport];
  ui.myCallTransport.className = `badge ${client.transport}`;
  ui.peerName.textContent = peer;
  ui.peerTransport.textContent = label;
  ui.peerTransport.className = `badge ${transport}`;
  ui.transports.title = `Signalling: you over ${TRANSPORT_LABEL[client.transport]}, ${peer} over ${label}`;
  ui.remoteTag.textContent = `${peer} · ${label}`;
}

function enableChat() {
  ui.chatInput.disabled = false;
  ui.chatSend.disabled = false;
  ui.chatInput.placeholder = `Message ${phone.peer}`;
  ui.chatInput.focus();
}

function disableChat() {
  ui.chatInput.disabled = true;
  ui.chatSend.disabled = true;
  ui.chatInput.placeholder = "Chat opens in a call";
}

/**
 * @param {string} who
 * @param {string} text
 * @param {boolean} mine
 */
function chatLine(who, text, mine) {
  const li = document.createElement("li");
  li.className = mine ? "mine" : "theirs";
  const meta = document.createElement("span");
  meta.className = "chat-meta";
  meta.textContent = `${who} · ${new Date().toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })}`;
  const body = document.createElement("span");
  body.className = "chat-text";
  body.textContent = text;
  li.append(meta, body);
  appendChat(li);
}

/** @param {string} text */
function chatSystem(text) {
  const li = document.createElement("li");
  li.className = "system";
  li.textContent = text;
  appendChat(li);
}

/** @param {HTMLLIElement} li */
function appendChat(li) {
  ui.chatLog.append(li);
  while (ui.chatLog.children.length > 200) ui.chatLog.firstElementChild?.remove();
  ui.chatLog.scrollTop = ui.chatLog.scrollHeight;
}

/**
 * @param {string} text
 * @param {string} action the button's label
 * @param {() => void} onAction
 */
function showBanner(text, action, onAction) {
  ui.bannerText.textContent = text;
  ui.bannerAction.textContent = action;
  ui.bannerAction.onclick = onAction;
  ui.banner.hidden = false;
}

function hideBanner() {
  ui.banner.hidden = true;
}

let toastTimer = 0;
/** @param {string} text */
function toast(text) {
  ui.toast.textContent = text;
  ui.toast.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { ui.toast.hidden = true; }, 4_000);
}

/** @param {string} name */
function initial(name) {
  return [...name.trim()][0]?.toUpperCase() ?? "?";
}

/**
 * A stable colour per name.
 * @param {string} name
 */
function hue(name) {
  let h = 0;
  for (const ch of name) h = (h * 31 + (ch.codePointAt(0) ?? 0)) % 360;
  return String(h);
}

/**
 * @param {unknown} value
 * @returns {TransportChoice} `value` if it is one, else `"auto"`
 */
function transportOf(value) {
  return value === "webtransport" || value === "websocket" ? value : "auto";
}

/** @param {unknown} err */
function errorMessage(err) {
  return err instanceof Error ? err.message : String(err);
}

/**
 * The element of index.html with this id; throws if it is missing or of
 * another kind, so a renamed element fails at load, not at first use.
 * @template {HTMLElement} T
 * @param {string} id
 * @param {{ new (): T }} kind
 * @returns {T}
 */
function $(id, kind) {
  const element = document.getElementById(id);
  if (!(element instanceof kind)) throw new Error(`index.html has no ${kind.name} #${id}`);
  return element;
}

/**
 * @param {HTMLFormElement} form
 * @param {string} name
 */
function radioGroup(form, name) {
  const group = form.elements.namedItem(name);
  if (!(group instanceof RadioNodeList)) throw new Error(`#${form.id} has no radio group "${name}"`);
  return group;
}

/**
 * @param {Storage} storage
 * @param {string} key
 */
function readJson(storage, key) {
  try {
    return JSON.parse(storage.getItem(key) ?? "null");
  } catch {
    return null;
  }
}

/**
 * @param {Storage} storage
 * @param {string} key
 * @param {unknown} value
 */
function writeJson(storage, key, value) {
  try {
    storage.setItem(key, JSON.stringify(value));
  } catch {
    // storage full or disabled: the app still works, it just forgets on reload
  }
}
