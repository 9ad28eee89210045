// @ts-nocheck
/**
 * @file The demo app at `/`: register, see who is online, call someone and
 * chat over a WebRTC data channel (with video where there is a camera).
 * Uses nothing but /client.js; the gateway only relays the handshake.
 *
 * Signalling messages between two demo pages:
 * - `hello`        {transport}: sent before an offer and with an answer, so
 *                  each side can show the other's transport (and the caller
 *                  learns at once when the callee is not online);
 * - `video-offer`, `video-answer` (RTCSessionDescription) and
 *   `ice-candidate` (RTCIceCandidate, or null at the end), as in the seed;
 * - `hang-up`, `call-decline` {reason}.
 *
 * URL options: `?transport=websocket` preselects a transport, `?ice=stun:host:port`
 * (repeatable) adds ICE servers (the default, none, works on one machine or a LAN).
 *
 * Paths are relative, so the app also works behind a proxy that serves the
 * gateway under a prefix (e.g. `/api/`).
 */
import { SignalClient } from "./client.js";

const STORAGE_SESSION = "signal-gateway-demo:session"; // per tab: who this tab is
const STORAGE_TOKENS = "signal-gateway-demo:tokens"; // per browser: names we own
const PEOPLE_REFRESH_MS = 3_000;
const RING_TIMEOUT_MS = 30_000;
const TRANSPORT_LABEL = { webtransport: "WebTransport", websocket: "WebSocket" };

const params = new URLSearchParams(location.search);
/** The gateway: wherever this page was served from (the origin, or a proxy's prefix). */
const GATEWAY = { baseUrl: new URL(".", location.href).href };
const ICE_SERVERS = params.getAll("ice").map((urls) => ({ urls }));

const $ = (id) => document.getElementById(id);
const ui = {
  joinView: $("join-view"),
  joinForm: $("join-form"),
  name: $("name"),
  joinButton: $("join-button"),
  joinError: $("join-error"),
  lobby: $("lobby-view"),
  me: $("me"),
  meAvatar: $("me-avatar"),
  meName: $("me-name"),
  meTransport: $("me-transport"),
  leave: $("leave"),
  banner: $("banner"),
  bannerText: $("banner-text"),
  bannerAction: $("banner-action"),
  people: $("people"),
  peopleNote: $("people-note"),
  refresh: $("refresh"),
  dialForm: $("dial-form"),
  dial: $("dial"),
  callDot: $("call-dot"),
  callState: $("call-state"),
  transports: $("transports"),
  myCallTransport: $("my-call-transport"),
  peerName: $("peer-name"),
  peerTransport: $("peer-transport"),
  hangup: $("hangup"),
  toggleMic: $("toggle-mic"),
  toggleCam: $("toggle-cam"),
  remoteVideo: $("remote-video"),
  localVideo: $("local-video"),
  remoteTag: $("remote-tag"),
  placeholder: $("placeholder"),
  placeholderText: $("placeholder-text"),
  chatLog: $("chat-log"),
  chatForm: $("chat-form"),
  chatInput: $("chat-input"),
  chatSend: $("chat-send"),
  incoming: $("incoming"),
  incomingAvatar: $("incoming-avatar"),
  incomingTitle: $("incoming-title"),
  incomingDetail: $("incoming-detail"),
  accept: $("accept"),
  decline: $("decline"),
  toast: $("toast"),
};

/** @type {SignalClient | null} */
let client = null;
let transportChoice = "auto";
let peopleTimer = 0;
let peopleListed = true; // false once /v1/users refused us (not on the gateway's machine)
/** What each peer told us in `hello`. */
const peerInfo = new Map();

/** The one call this page can be in. */
let call = idleCall();
/** Who the last call was with, to ignore late errors about it. */
let lastEnded = { peer: null, at: 0 };

function idleCall() {
  return {
    state: "idle", // idle | calling | ringing | connecting | connected
    peer: null,
    role: null,
    pc: null,
    channel: null,
    offer: null,
    candidates: [],
    local: null,
    timer: 0,
  };
}

// ---- start ----

const preset = params.get("transport");
if (preset && ["auto", "webtransport", "websocket"].includes(preset)) {
  ui.joinForm.elements.transport.value = preset;
}
if (!SignalClient.webTransportSupported) {
  ui.joinForm.querySelector('input[value="webtransport"]').disabled = true;
  $("transport-hint").textContent = window.isSecureContext
    ? "This browser has no WebTransport, so Auto will use WebSocket."
    : "WebTransport needs a secure context (https, localhost or 127.0.0.1), so Auto will use WebSocket here.";
}

ui.joinForm.addEventListener("submit", (ev) => {
  ev.preventDefault();
  join(ui.name.value.trim(), ui.joinForm.elements.transport.value);
});
ui.leave.addEventListener("click", leave);
ui.refresh.addEventListener("click", () => refreshPeople(true));
ui.dialForm.addEventListener("submit", (ev) => {
  ev.preventDefault();
  const name = ui.dial.value.trim();
  if (name) startCall(name);
});
ui.hangup.addEventListener("click", () => endCall("Call ended", { notify: true }));
ui.accept.addEventListener("click", acceptCall);
ui.decline.addEventListener("click", () => declineCall("declined"));
ui.incoming.addEventListener("cancel", (ev) => {
  ev.preventDefault(); // Escape declines explicitly rather than leaving the caller ringing
  declineCall("declined");
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
  if (call.peer && call.state !== "idle") signal(call.peer, "hang-up", null);
});

resume();

// ---- joining and leaving ----

/** Comes back as the same user after a reload of this tab. */
async function resume() {
  const saved = readJson(sessionStorage, STORAGE_SESSION);
  if (!saved?.token) {
    ui.name.focus();
    return;
  }
  ui.name.value = saved.username ?? "";
  ui.joinForm.elements.transport.value = saved.transport ?? "auto";
  setBusy(true, "Reconnecting…");
  try {
    client = await SignalClient.fromToken(saved.token, GATEWAY);
  } catch (err) {
    setBusy(false);
    if (err.code === "UNAUTHENTICATED") {
      sessionStorage.removeItem(STORAGE_SESSION); // the gateway forgot us (restart or expiry): join again
    } else {
      ui.joinError.textContent = `Could not reach the gateway: ${err.message}`;
    }
    return;
  }
  await connect(saved.transport ?? "auto");
}

async function join(name, transport) {
  ui.joinError.textContent = "";
  if (!name) {
    ui.joinError.textContent = "Type a name first.";
    ui.name.focus();
    return;
  }
  setBusy(true, "Joining…");
  const owned = readJson(localStorage, STORAGE_TOKENS) ?? {};
  try {
    client = await SignalClient.register(name, { ...GATEWAY, token: owned[name] });
  } catch (err) {
    setBusy(false);
    ui.joinError.textContent = err.code === "TAKEN"
      ? `“${name}” is already taken. Pick another name.`
      : err.message;
    ui.name.focus();
    return;
  }
  owned[client.username] = client.token;
  writeJson(localStorage, STORAGE_TOKENS, owned);
  await connect(transport);
}

async function connect(transport) {
  transportChoice = transport;
  client.addEventListener("open", onOpen);
  client.addEventListener("close", onClose);
  client.addEventListener("reconnecting", onReconnecting);
  client.addEventListener("identity", onIdentity);
  client.addEventListener("message", (ev) => onEnvelope(ev.detail));
  try {
    await client.connect({ transport });
  } catch (err) {
    setBusy(false);
    ui.joinError.textContent = `Could not connect${transport === "auto" ? "" : ` over ${TRANSPORT_LABEL[transport]}`}: ${err.message}`;
    client = null;
    return;
  }
  saveSession();
  setBusy(false);
  ui.joinView.hidden = true;
  ui.lobby.hidden = false;
  ui.me.hidden = false;
  ui.meName.textContent = client.username;
  ui.meAvatar.textContent = initial(client.username);
  ui.meAvatar.style.setProperty("--hue", hue(client.username));
  document.title = `${client.username} · signal-gateway`;
  showMyTransport();
  refreshPeople();
}

function leave() {
  endCall("Call ended", { notify: true });
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

function setBusy(busy, label = "Join") {
  ui.joinButton.disabled = busy;
  ui.joinButton.textContent = busy ? label : "Join";
  ui.name.disabled = busy;
}

function saveSession() {
  writeJson(sessionStorage, STORAGE_SESSION, {
    username: client.username,
    token: client.token,
    transport: transportChoice,
  });
}

// ---- the gateway connection ----

function onOpen(ev) {
  hideBanner();
  showMyTransport();
  if (ui.lobby.hidden) return; // the first connection: connect() shows the lobby
  if (ev.detail.reconnected) toast(`Back online over ${TRANSPORT_LABEL[client.transport]}.`);
  // The transport may have changed: tell the peer.
  if (call.peer && call.state !== "idle" && call.state !== "ringing") {
    sendHello(call.peer);
    showPeerTransport();
  }
  refreshPeople();
}

function onClose(ev) {
  const { reason, message, willReconnect } = ev.detail;
  if (reason === "CLOSED" || !client) return; // we closed it ourselves
  if (willReconnect) {
    setMyBadge("Reconnecting…", "warn");
    return;
  }
  setMyBadge("Offline", "bad");
  clearTimeout(peopleTimer);
  const inCall = call.state === "connected" ? " Your call goes on: it does not need the gateway." : "";
  if (reason === "REPLACED") {
    showBanner(`“${client.username}” is now connected in another tab or window, so this one stepped aside.${inCall}`, "Use it here", reconnect);
  } else if (reason === "KICKED") {
    showBanner(`An administrator disconnected you.${inCall}`, "Reconnect", reconnect);
  } else {
    showBanner(`Disconnected from the gateway: ${message || reason}.${inCall}`, "Reconnect", reconnect);
  }
}

function onReconnecting(ev) {
  setMyBadge(`Reconnecting in ${Math.max(1, Math.round(ev.detail.delay / 1000))} s…`, "warn");
}

function onIdentity() {
  // The gateway restarted and we registered our name again: keep the new token.
  saveSession();
  const owned = readJson(localStorage, STORAGE_TOKENS) ?? {};
  owned[client.username] = client.token;
  writeJson(localStorage, STORAGE_TOKENS, owned);
}

async function reconnect() {
  hideBanner();
  setMyBadge("Connecting…", "warn");
  try {
    await client.connect({ transport: transportChoice });
  } catch (err) {
    setMyBadge("Offline", "bad");
    showBanner(`Could not reconnect: ${err.message}`, "Try again", reconnect);
  }
}

function showMyTransport() {
  if (!client?.transport || client.state !== "open") return;
  setMyBadge(TRANSPORT_LABEL[client.transport], client.transport);
  const why = client.fallbackReason;
  ui.meTransport.title = why
    ? `Signalling over WebSocket: WebTransport was not available (${why.message})`
    : `Signalling over ${TRANSPORT_LABEL[client.transport]}`;
}

function setMyBadge(text, kind) {
  ui.meTransport.textContent = text;
  ui.meTransport.className = `badge ${kind}`;
}

// ---- who is online ----

async function refreshPeople(byHand = false) {
  clearTimeout(peopleTimer);
  if (!client || client.state === "closed") return;
  if (peopleListed || byHand) {
    try {
      const { connected } = await client.users();
      peopleListed = true;
      renderPeople(connected.filter((c) => c.username !== client?.username));
    } catch (err) {
      if (err.status === 401 || err.status === 403) {
        peopleListed = false;
        ui.people.replaceChildren();
        ui.peopleNote.textContent = "This gateway only shows who is online to pages on its own machine. Call someone by name instead.";
        ui.dial.focus();
      } else {
        ui.peopleNote.textContent = `Could not load the list: ${err.message}`;
      }
    }
  }
  if (peopleListed && !document.hidden) peopleTimer = setTimeout(refreshPeople, PEOPLE_REFRESH_MS);
}

function renderPeople(people) {
  people.sort((a, b) => a.username.localeCompare(b.username));
  const busy = call.state !== "idle";
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
    button.textContent = call.peer === person.username && busy ? "In call" : "Call";
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

// ---- signalling ----

function signal(target, type, payload) {
  try {
    client?.send(target, type, payload);
    return true;
  } catch (err) {
    toast(`Could not reach the gateway: ${err.message}`);
    return false;
  }
}

function sendHello(target) {
  signal(target, "hello", { transport: client.transport });
}

function onEnvelope({ type, originator, payload }) {
  if (originator === "") {
    onGatewayError(type, payload ?? {});
    return;
  }
  const fromPeer = originator === call.peer;
  switch (type) {
    case "hello":
      peerInfo.set(originator, payload ?? {});
      if (fromPeer) showPeerTransport();
      break;
    case "video-offer":
      onOffer(originator, payload);
      break;
    case "video-answer":
      if (fromPeer && call.role === "caller") onAnswer(payload).catch(failCall);
      break;
    case "ice-candidate":
      if (fromPeer && payload) addCandidate(payload).catch(() => {}); // a stale candidate is harmless
      break;
    case "hang-up":
      if (fromPeer) endCall(call.state === "ringing" ? `Missed call from ${originator}` : `${originator} hung up`);
      break;
    case "call-decline":
      if (fromPeer) endCall(payload?.reason === "busy" ? `${originator} is in another call` : `${originator} declined the call`);
      break;
    default:
      break; // unknown types are for other apps
  }
}

function onGatewayError(type, payload) {
  // The rest of a call's envelopes to someone who turned out to be offline.
  if (payload.target && payload.target === lastEnded.peer && payload.target !== call.peer
    && Date.now() - lastEnded.at < 5_000) return;
  if (type === "TARGET_NOT_FOUND" && payload.target && payload.target === call.peer) {
    endCall(call.state === "connected"
      ? `${call.peer} left the gateway`
      : `${call.peer} is not online`);
    refreshPeople();
  } else if (type === "RATE_LIMITED") {
    toast("Slow down a little: the gateway is rate limiting this connection.");
  } else {
    toast(payload.message || type);
  }
}

// ---- calls ----

async function startCall(target) {
  if (!client || call.state !== "idle") return;
  if (target === client.username) {
    toast("That's you. Pick someone else.");
    return;
  }
  call = { ...idleCall(), state: "calling", peer: target, role: "caller" };
  setCallState("calling", `Calling ${target}…`);
  showCallUi();
  chatSystem(`Calling ${target}…`);
  sendHello(target); // before asking for the camera: an offline callee shows up at once
  try {
    const local = await getMedia();
    if (call.peer !== target) return stopMedia(local); // ended meanwhile
    call.local = local;
    showLocal();
    const pc = newPeerConnection();
    const kinds = new Set(call.local?.getTracks().map((t) => t.kind));
    for (const track of call.local?.getTracks() ?? []) pc.addTrack(track, call.local);
    // Receive their video and audio even when we have none to send.
    for (const kind of ["audio", "video"]) {
      if (!kinds.has(kind)) pc.addTransceiver(kind, { direction: "recvonly" });
    }
    useChannel(pc.createDataChannel("chat"));
    await pc.setLocalDescription(await pc.createOffer());
    signal(target, "video-offer", pc.localDescription);
    call.timer = setTimeout(() => {
      if (call.state === "calling") endCall(`${target} did not answer`, { notify: true });
    }, RING_TIMEOUT_MS);
  } catch (err) {
    failCall(err);
  }
}

function onOffer(from, offer) {
  if (call.state !== "idle") {
    if (from !== call.peer) signal(from, "call-decline", { reason: "busy" });
    return;
  }
  call = { ...idleCall(), state: "ringing", peer: from, role: "callee", offer };
  setCallState("ringing", `${from} is calling…`);
  const info = peerInfo.get(from) ?? {};
  ui.incomingAvatar.textContent = initial(from);
  ui.incomingAvatar.style.setProperty("--hue", hue(from));
  ui.incomingTitle.textContent = `${from} is calling`;
  ui.incomingDetail.textContent = info.transport
    ? `Signalled over ${TRANSPORT_LABEL[info.transport] ?? info.transport}`
    : "Incoming call";
  ui.incoming.showModal();
  ui.accept.focus();
  call.timer = setTimeout(() => {
    if (call.state === "ringing") declineCall("timeout");
  }, RING_TIMEOUT_MS);
}

async function acceptCall() {
  if (call.state !== "ringing") return;
  ui.incoming.close();
  clearTimeout(call.timer);
  const peer = call.peer;
  call.state = "connecting";
  setCallState("connecting", `Connecting to ${peer}…`);
  showCallUi();
  chatSystem(`You accepted ${peer}'s call.`);
  try {
    const local = await getMedia();
    if (call.peer !== peer) return stopMedia(local); // ended meanwhile
    call.local = local;
    showLocal();
    const pc = newPeerConnection();
    pc.addEventListener("datachannel", (ev) => useChannel(ev.channel));
    await pc.setRemoteDescription(call.offer);
    // addTrack re-uses the transceivers the offer created, so no renegotiation.
    for (const track of call.local?.getTracks() ?? []) pc.addTrack(track, call.local);
    await flushCandidates();
    await pc.setLocalDescription(await pc.createAnswer());
    sendHello(peer);
    signal(peer, "video-answer", pc.localDescription);
    showPeerTransport();
  } catch (err) {
    failCall(err);
  }
}

function declineCall(reason) {
  if (call.state !== "ringing") return;
  if (ui.incoming.open) ui.incoming.close();
  signal(call.peer, "call-decline", { reason });
  endCall(reason === "timeout" ? `Missed call from ${call.peer}` : `You declined ${call.peer}'s call`);
}

async function onAnswer(answer) {
  clearTimeout(call.timer);
  call.state = "connecting";
  setCallState("connecting", `Connecting to ${call.peer}…`);
  await call.pc.setRemoteDescription(answer);
  await flushCandidates();
  showPeerTransport();
}

async function addCandidate(candidate) {
  if (call.pc?.remoteDescription) await call.pc.addIceCandidate(candidate);
  else call.candidates.push(candidate); // before the offer/answer is in place
}

async function flushCandidates() {
  const queued = call.candidates;
  call.candidates = [];
  for (const candidate of queued) await call.pc.addIceCandidate(candidate).catch(() => {});
}

function newPeerConnection() {
  const pc = new RTCPeerConnection({ iceServers: ICE_SERVERS });
  const peer = call.peer;
  call.pc = pc;
  pc.addEventListener("icecandidate", (ev) => signal(peer, "ice-candidate", ev.candidate));
  pc.addEventListener("track", (ev) => {
    const stream = ev.streams[0] ?? (ui.remoteVideo.srcObject instanceof MediaStream ? ui.remoteVideo.srcObject : new MediaStream());
    if (!ev.streams[0]) stream.addTrack(ev.track);
    if (ui.remoteVideo.srcObject !== stream) ui.remoteVideo.srcObject = stream;
    ev.track.addEventListener("unmute", updateVideos);
    ev.track.addEventListener("mute", updateVideos);
    ui.remoteVideo.play().catch(() => {});
    updateVideos();
  });
  pc.addEventListener("connectionstatechange", () => {
    if (call.pc !== pc) return;
    if (pc.connectionState === "connected") {
      clearTimeout(call.timer);
      call.state = "connected";
      setCallState("connected", `Connected to ${peer}`);
      chatSystem(`Connected to ${peer}, peer to peer.`);
      renderPeopleState();
    } else if (pc.connectionState === "disconnected") {
      setCallState("connecting", "Connection interrupted, waiting…");
    } else if (pc.connectionState === "failed") {
      endCall("The browsers could not reach each other (try ?ice=stun:… across networks)", { notify: true });
    }
  });
  return pc;
}

function useChannel(channel) {
  call.channel = channel;
  channel.addEventListener("open", () => {
    if (call.channel !== channel) return;
    ui.chatInput.disabled = false;
    ui.chatSend.disabled = false;
    ui.chatInput.placeholder = `Message ${call.peer}`;
    ui.chatInput.focus();
  });
  channel.addEventListener("close", () => {
    if (call.channel === channel) disableChat();
  });
  channel.addEventListener("message", (ev) => {
    let text = "";
    try {
      text = String(JSON.parse(ev.data).text ?? "");
    } catch {
      text = String(ev.data);
    }
    if (text) chatLine(call.peer, text, false);
  });
}

function sendChat() {
  const text = ui.chatInput.value.trim();
  if (!text || call.channel?.readyState !== "open") return;
  call.channel.send(JSON.stringify({ text }));
  chatLine(client.username, text, true);
  ui.chatInput.value = "";
}

function endCall(message, { notify = false } = {}) {
  if (call.state === "idle") return;
  if (notify && call.peer) signal(call.peer, "hang-up", null);
  if (ui.incoming.open) ui.incoming.close();
  clearTimeout(call.timer);
  call.channel?.close();
  call.pc?.close();
  stopMedia(call.local);
  lastEnded = { peer: call.peer, at: Date.now() };
  call = idleCall();
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

function failCall(err) {
  endCall(`The call failed: ${err?.message ?? err}`, { notify: true });
}

// ---- media ----

/** Camera and microphone if there are any; audio only, or nothing, otherwise. */
async function getMedia() {
  if (!navigator.mediaDevices?.getUserMedia) return null;
  for (const constraints of [{ video: true, audio: true }, { audio: true }, { video: true }]) {
    try {
      return await navigator.mediaDevices.getUserMedia(constraints);
    } catch (err) {
      if (err.name === "NotAllowedError") break; // the person said no: don't ask again
    }
  }
  return null;
}

function stopMedia(stream) {
  for (const track of stream?.getTracks() ?? []) track.stop();
}

function showLocal() {
  const hasVideo = Boolean(call.local?.getVideoTracks().length);
  ui.localVideo.srcObject = hasVideo ? call.local : null;
  ui.localVideo.hidden = !hasVideo;
  if (hasVideo) ui.localVideo.play().catch(() => {});
  ui.toggleMic.hidden = !call.local?.getAudioTracks().length;
  ui.toggleCam.hidden = !hasVideo;
  for (const button of [ui.toggleMic, ui.toggleCam]) button.setAttribute("aria-pressed", "false");
  ui.toggleMic.setAttribute("aria-label", "Mute microphone");
  ui.toggleCam.setAttribute("aria-label", "Turn camera off");
  if (!call.local) chatSystem("No camera or microphone here: this is a chat-only call.");
}

function toggleTrack(kind, button, what) {
  const tracks = kind === "audio" ? call.local?.getAudioTracks() : call.local?.getVideoTracks();
  if (!tracks?.length) return;
  const off = tracks[0].enabled;
  for (const track of tracks) track.enabled = !off;
  button.setAttribute("aria-pressed", String(off));
  button.setAttribute("aria-label", off
    ? (kind === "audio" ? "Unmute microphone" : "Turn camera on")
    : (kind === "audio" ? "Mute microphone" : "Turn camera off"));
  toast(off ? `Your ${what} is off.` : `Your ${what} is on.`);
}

function updateVideos() {
  const stream = ui.remoteVideo.srcObject;
  const live = stream instanceof MediaStream && stream.getVideoTracks().some((t) => !t.muted && t.readyState === "live");
  ui.remoteVideo.classList.toggle("live", live);
  ui.placeholder.hidden = live;
  if (!live && call.state !== "idle") {
    ui.placeholderText.textContent = call.state === "connected"
      ? `${call.peer} has no camera on. The chat works all the same.`
      : ui.callState.textContent;
  }
}

// ---- view helpers ----

function setCallState(kind, text) {
  ui.callState.textContent = text;
  ui.callDot.className = `call-dot ${kind}`;
  if (kind !== "idle" && !ui.remoteVideo.classList.contains("live")) ui.placeholderText.textContent = text;
}

function showCallUi() {
  ui.hangup.hidden = false;
  ui.remoteTag.hidden = false;
  ui.remoteTag.textContent = call.peer;
  renderPeopleState();
}

function renderPeopleState() {
  const busy = call.state !== "idle";
  for (const button of ui.people.querySelectorAll("button")) button.disabled = busy;
}

/** "You [WebTransport] ⇄ Bob [WebSocket]" in the call bar. */
function showPeerTransport() {
  const transport = peerInfo.get(call.peer)?.transport;
  if (!transport || !client?.transport) return;
  const label = TRANSPORT_LABEL[transport] ?? transport;
  ui.transports.hidden = false;
  ui.myCallTransport.textContent = TRANSPORT_LABEL[client.transport];
  ui.myCallTransport.className = `badge ${client.transport}`;
  ui.peerName.textContent = call.peer;
  ui.peerTransport.textContent = label;
  ui.peerTransport.className = `badge ${transport}`;
  ui.transports.title = `Signalling: you over ${TRANSPORT_LABEL[client.transport]}, ${call.peer} over ${label}`;
  ui.remoteTag.textContent = `${call.peer} · ${label}`;
}

function disableChat() {
  ui.chatInput.disabled = true;
  ui.chatSend.disabled = true;
  ui.chatInput.placeholder = "Chat opens in a call";
}

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

function chatSystem(text) {
  const li = document.createElement("li");
  li.className = "system";
  li.textContent = text;
  appendChat(li);
}

function appendChat(li) {
  ui.chatLog.append(li);
  while (ui.chatLog.children.length > 200) ui.chatLog.firstElementChild.remove();
  ui.chatLog.scrollTop = ui.chatLog.scrollHeight;
}

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
function toast(text) {
  ui.toast.textContent = text;
  ui.toast.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { ui.toast.hidden = true; }, 4_000);
}

function initial(name) {
  return [...name.trim()][0]?.toUpperCase() ?? "?";
}

/** A stable colour per name. */
function hue(name) {
  let h = 0;
  for (const ch of name) h = (h * 31 + ch.codePointAt(0)) % 360;
  return String(h);
}

function readJson(storage, key) {
  try {
    return JSON.parse(storage.getItem(key) ?? "null");
  } catch {
    return null;
  }
}

function writeJson(storage, key, value) {
  try {
    storage.setItem(key, JSON.stringify(value));
  } catch {
    // storage full or disabled: the app still works, it just forgets on reload
  }
}
