// @ts-check
/**
 * @file The client of signal-gateway: served by the gateway at `/client.js`
 * and packed as the npm package `signal-gateway-client` (client/), for
 * browsers and Node 20+.
 *
 * An ES module with no dependencies and no build step:
 *
 * ```js
 * import { SignalClient } from "/client.js";
 * const client = await SignalClient.register("alice");
 * client.addEventListener("message", (ev) => console.log(ev.detail));
 * await client.connect({ transport: "auto" });   // or "webtransport" / "websocket"
 * client.send("bob", "video-offer", offer);
 * client.close();
 * ```
 *
 * What it does for you:
 * - registers a name (`POST /v1/register`) or resumes a token (`GET /v1/user`),
 *   or signs in with JWTs your application issues (`signIn({ getToken })`),
 *   refreshing them in band before they expire;
 * - opens WebTransport (pinning the development certificate with the hash
 *   from `/v1/cert-hash`, so no browser flags are needed) or WebSocket, and
 *   resolves `connect()` on the gateway's `WELCOME` envelope;
 * - frames envelopes as JSON lines on the WebTransport stream;
 * - reports its state (`connecting`, `connected`, `reconnecting`,
 *   `disconnected`) as events carrying the close code and reason of the
 *   gateway's wire table;
 * - reports the gateway's `CLOSE` envelope as a `close` event (a browser
 *   cannot read a WebTransport close code from this gateway);
 * - hands out the gateway's STUN and TURN servers (`client.iceServers`, from
 *   `WELCOME`) and fetches fresh TURN credentials before they expire;
 * - reconnects after an unexpected drop with capped, jittered exponential
 *   backoff (or your own `nextRetryDelayMs`), at once when the browser comes
 *   back online, re-using the token (and registering the same name again if
 *   the gateway forgot it, e.g. after a restart), but never after
 *   `REPLACED`, `KICKED` or another close the gateway marks as final;
 * - resumes: acknowledges what it processed (`ACK`), reconnects with
 *   `resume=N`, and delivers what the gateway replays exactly once;
 * - rooms: `join`, `leave`, `sendToRoom`, `members`, presence events, and
 *   joins its rooms again after a reconnect that could not resume.
 *
 * Cookies are never used: every request carries the token explicitly, so two
 * tabs (or two clients in one page) can be two different users.
 *
 * Browsers (docs/client.md, "Browsers", says what was verified and how):
 * tested by scripts/browser-test in headless Chromium 156 and Firefox ESR
 * 153, over WebTransport and WebSocket, calling each other; Safari 26.4+ is
 * reasoned, not run (the gateway sends the WebTransport SETTINGS it needs),
 * and a browser without `WebTransport` gets WebSocket from "auto". Node 20+
 * (scripts/client-test) uses WebSocket: Node's own where it has one, else
 * the `ws` package.
 */

/** The transports, in the order `"auto"` tries them. */
export const TRANSPORTS = Object.freeze(["webtransport", "websocket"]);

/**
 * `type`s of the error envelopes the gateway sends back to a sender (with
 * `originator: ""`); they arrive as `message` events like any envelope.
 */
export const ERROR_TYPES = Object.freeze([
  "TARGET_NOT_FOUND",
  "INVALID_MESSAGE",
  "RATE_LIMITED",
  "TARGET_SLOW",
  "UNDELIVERED",
  "TOKEN_REFUSED",
  "CLUSTER_UNAVAILABLE",
  "UNCONFIRMED",
  "EXPIRED",
  "NOT_IN_ROOM",
  "ROOM_FULL",
  "TOO_MANY_ROOMS",
  "FORBIDDEN",
]);

/** Default options of {@link SignalClient#connect}. */
export const CONNECT_DEFAULTS = Object.freeze({
  /** @type {"auto" | "webtransport" | "websocket"} */
  transport: "auto",
  /** Milliseconds for a connection to open (WELCOME received). */
  timeout: 10_000,
  /**
   * In `"auto"`: milliseconds WebTransport gets before falling back to
   * WebSocket. A QUIC handshake on a working path takes a few round trips;
   * a path that drops UDP never answers, so waiting longer only delays the
   * fallback.
   */
  webtransportTimeout: 3_000,
  /**
   * Reconnect after an unexpected drop; `false` turns it off. The defaults
   * are centrifuge-js's: from 500 ms, doubling, up to 20 s, each delay
   * jittered.
   */
  reconnect: Object.freeze({
    /** First delay, in milliseconds. */
    initialDelay: 500,
    /** Cap on the delay, in milliseconds. */
    maxDelay: 20_000,
    /** Growth factor per failed attempt. */
    factor: 2,
    /** Attempts before giving up (`Infinity`: keep trying). */
    maxAttempts: Infinity,
  }),
  /**
   * Resume after a reconnect: ask the gateway (`resume=N`) for what was
   * sent to this user since the last envelope processed. `false`: every
   * reconnect starts afresh (the client still acknowledges, so the gateway
   * frees what it holds).
   */
  resume: true,
  /** Envelopes held by `send()` while (re)connecting; more throw. */
  maxQueued: 256,
  /**
   * Close the connection when the page is hidden for good (tab closed,
   * navigation), so the gateway sees the user leave at once; a page put in
   * the back/forward cache reconnects when shown again. Without this a
   * closing tab's WebTransport session lingers on the gateway until its idle
   * timeout.
   */
  closeOnPageHide: true,
});

/** WebSocket close codes after which the gateway does not want a reconnect. */
const FINAL_CLOSE_CODES = new Set([1002, 1009, 4000, 4001, 4002, 4029]);
/**
 * Close reasons the gateway uses, by code (for closes without a `CLOSE` envelope).
 * @type {Record<number, string>}
 */
const CLOSE_REASONS = {
  1000: "NORMAL",
  1001: "SHUTDOWN",
  1002: "PROTOCOL_ERROR",
  1006: "CONNECTION_LOST",
  1009: "MESSAGE_TOO_BIG",
  1011: "INTERNAL_ERROR",
  4000: "UNAUTHENTICATED",
  4001: "REPLACED",
  4002: "KICKED",
  4003: "TOKEN_EXPIRED",
  4008: "SLOW_CONSUMER",
  4029: "RATE_LIMITED",
  4408: "IDLE_TIMEOUT",
  4409: "STREAM_TIMEOUT",
};
/** A connection up this long resets the backoff when it drops; a shorter one
 * (a flapping gateway) keeps backing off. */
const STABLE_CONNECTION_MS = 10_000;
/** How long `close()` lets the WebTransport stream's end reach the gateway. */
const STREAM_CLOSE_GRACE_MS = 1_000;
/** A WebTransport line may not outgrow this many times the envelope limit... */
const LINE_SLACK = 2;
/** ...or, before WELCOME says the limit, this many characters. */
const DEFAULT_MAX_LINE = 64 * 1024;
/**
 * A failed refresh of the ICE servers is tried again this soon (or at a
 * quarter of the credentials' life, when that is shorter): the current
 * credentials still have half their life left.
 */
const ICE_RETRY_MS = 10_000;
/**
 * Acknowledge after this many envelopes or this long after the first
 * unacknowledged one, whichever comes first (the resume protocol's cadence):
 * the gateway frees what is acknowledged, and one ACK per 32 envelopes keeps
 * the cost to a few percent of the traffic.
 */
const ACK_EVERY = 32;
const ACK_INTERVAL_MS = 1_000;
/** Server envelopes about rooms, handled here and reported as room events. */
const ROOM_TYPES = new Set(["JOINED", "LEFT", "PEER_JOINED", "PEER_LEFT"]);

const ENCODER = new TextEncoder();

/**
 * An error from the gateway or the client, with a machine-readable `code`:
 * `TAKEN`, `INVALID`, `RATE_LIMITED`, `UNAVAILABLE`, `UNAUTHENTICATED`,
 * `UNREACHABLE`, `TIMEOUT`, `WEBTRANSPORT_UNAVAILABLE`, `WEBTRANSPORT_FAILED`,
 * `WEBSOCKET_FAILED`, `NOT_CONNECTED`, `ALREADY_CONNECTED`, `QUEUE_FULL`,
 * `MESSAGE_TOO_BIG`, `FORBIDDEN`, `UNAUTHORIZED`, `CLOSED`, a room error
 * (`NOT_IN_ROOM`, `ROOM_FULL`, `TOO_MANY_ROOMS`, `INVALID_MESSAGE`), or a
 * close reason such as `REPLACED`.
 */
export class SignalError extends Error {
  /**
   * @param {string} code
   * @param {string} message
   * @param {Record<string, unknown>} [details] extra fields (`status`, `retryAfter`, `cause`...)
   */
  constructor(code, message, details = {}) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = "SignalError";
    /** @type {string} */
    this.code = code;
    Object.assign(this, details);
  }
}

/**
 * @typedef {object} Envelope
 * @property {string} target    the recipient (your name, on what you receive; `""` on a room envelope)
 * @property {string} type      `video-offer`, `ice-candidate`, an error type...
 * @property {string} originator the authenticated sender; `""` for the gateway
 * @property {any} payload      any JSON value
 * @property {number} [seq]     the gateway's sequence number for this user (resume)
 * @property {string} [room]    the room a room envelope was sent to
 *
 * @typedef {Envelope & { room: string }} RoomEnvelope an envelope a member sent to a room
 *
 * @typedef {object} CloseDetail
 * @property {number} code      WebSocket-style close code (4001 REPLACED...)
 * @property {string} reason    `REPLACED`, `SHUTDOWN`, `CONNECTION_LOST`...
 * @property {string} message   a sentence for humans
 * @property {boolean} reconnect whether the gateway wants the client back
 * @property {boolean} willReconnect whether this client is about to reconnect
 *
 * @typedef {"disconnected" | "connecting" | "connected" | "reconnecting"} ConnectionState
 *
 * @typedef {object} StateDetail what `connecting` and `disconnected` carry
 * @property {number} code     the close code from the wire table (`1000`
 *   after `close()`, `4001` after REPLACED...); `0` for `connect()` itself
 * @property {string} reason   its reason (`REPLACED`, `CONNECTION_LOST`,
 *   `OFFLINE`...), or what the client saw (`CONNECT_CALLED`, `TIMEOUT`,
 *   `UNAUTHENTICATED`...)
 * @property {string} message  a sentence for humans
 *
 * @typedef {StateDetail & { attempt: number, delay: number, error: SignalError | null }} ReconnectingDetail
 *   before each reconnect attempt: `code`/`reason` say why the connection
 *   ended, `error` why the previous attempt failed (`null` on the first)
 *
 * @typedef {Welcome & { reconnected: boolean }} ConnectedDetail
 *
 * @typedef {object} ResumedDetail
 * @property {boolean} resumed whether the gateway had everything since the
 *   last envelope this client processed (`false`: some may be missing)
 * @property {number} replayed how many envelopes it wrote again
 *
 * @typedef {object} PeerJoinedDetail
 * @property {string} room
 * @property {string} user
 *
 * @typedef {object} PeerLeftDetail
 * @property {string} room
 * @property {string} user
 * @property {string} reason `left`, `disconnected`, `kicked` or `deleted`
 *
 * @typedef {object} IceConfig what `GET /v1/ice-servers` answers and `WELCOME` carries
 * @property {RTCIceServer[]} iceServers STUN and TURN servers, as `new RTCPeerConnection({ iceServers })` takes them
 * @property {number} ttl seconds the TURN credentials in the list stay valid
 *
 * @typedef {object} Welcome
 * @property {string} username
 * @property {"websocket" | "webtransport"} transport
 * @property {number} connection_id
 * @property {number} max_envelope_bytes
 * @property {IceConfig} ice ICE servers with credentials minted for this connection
 * @property {string} [session] the user's resume session (a gateway with resume)
 * @property {boolean} [resumed] whether this connection resumed that session
 * @property {number} [replayed] envelopes written again after this WELCOME
 *
 * @typedef {object} RetryContext what `nextRetryDelayMs` decides on
 * @property {number} attempt  1 for the first retry after a drop
 * @property {number} elapsedMs since the connection dropped
 * @property {number} code     the close code of the drop
 * @property {string} reason   its reason
 * @property {SignalError | null} error why the previous attempt failed
 *
 * @typedef {object} ReconnectOptions
 * @property {number} [initialDelay]
 * @property {number} [maxDelay]
 * @property {number} [factor]
 * @property {number} [maxAttempts]
 * @property {(context: RetryContext) => number | null} [nextRetryDelayMs]
 *   your own policy: milliseconds until the next attempt, or `null` to stop
 *   (then the other fields are not used)
 *
 * @typedef {object} ConnectOptions
 * @property {"auto" | "webtransport" | "websocket"} [transport]
 * @property {number} [timeout]
 * @property {number} [webtransportTimeout]
 * @property {ReconnectOptions | false} [reconnect]
 * @property {boolean} [resume]
 * @property {number} [maxQueued]
 * @property {boolean} [closeOnPageHide]
 *
 * @typedef {Required<Omit<ConnectOptions, "reconnect">> & { reconnect: (Required<Omit<ReconnectOptions, "nextRetryDelayMs">> & Pick<ReconnectOptions, "nextRetryDelayMs">) | false }} ResolvedOptions
 *   {@link ConnectOptions} with the defaults filled in
 *
 * @typedef {object} ClientOptions
 * @property {string} [baseUrl] the gateway's HTTP origin (and path prefix, if
 *   behind a proxy); default: the page's origin
 *
 * The events of a {@link SignalClient}, each a `CustomEvent` whose `detail` is:
 * @typedef {object} SignalClientEventMap
 * @property {CustomEvent<StateDetail>} connecting `connect()` was called
 * @property {CustomEvent<ConnectedDetail>} connected on every (re)connection
 * @property {CustomEvent<ReconnectingDetail>} reconnecting before each reconnect attempt
 * @property {CustomEvent<StateDetail>} disconnected for good: `close()`, a
 *   final close from the gateway, no attempts left, `getToken()` threw
 * @property {CustomEvent<Envelope>} message an envelope from a user or the gateway
 * @property {CustomEvent<CloseDetail>} close a connection ended
 * @property {CustomEvent<ResumedDetail>} resumed after each reconnect
 * @property {CustomEvent<PeerJoinedDetail>} peer-joined someone joined a room you are in
 * @property {CustomEvent<PeerLeftDetail>} peer-left someone left a room you are in
 * @property {CustomEvent<RoomEnvelope>} room-message an envelope a member sent to a room
 * @property {CustomEvent<{ username: string, token: string }>} identity the
 *   gateway had forgotten the name and the client registered it again
 * @property {CustomEvent<IceConfig>} iceservers {@link SignalClient#iceServers} changed
 * @property {CustomEvent<SignalError>} error `getToken()` failed during a refresh
 */

/**
 * A client of the gateway: one registered user and (at most) one live
 * connection.
 *
 * Its state ({@link SignalClient#state}) is `disconnected`, `connecting`
 * (after `connect()`), `connected`, or `reconnecting` (after an unexpected
 * drop); each change fires the event of that name ({@link SignalClientEventMap}
 * lists every event and its `detail`). `addEventListener` is typed by event
 * name.
 *
 * `send()` while connecting or reconnecting queues the envelope (up to
 * `maxQueued`) and sends it once the connection is open; `send()` before
 * `connect()` or after the client closed throws `NOT_CONNECTED`.
 */
export class SignalClient extends EventTarget {
  /** @type {string} */ #baseUrl;
  /** @type {string} */ #username;
  /** @type {string} */ #token;
  /** Where fresh JWTs come from, for a client made by {@link SignalClient.signIn}. */
  /** @type {(() => Promise<string>) | null} */ #getToken = null;
  /** @type {ConnectionState} */
  #state = "disconnected";
  /** @type {Link | null} */ #link = null;
  /** Links left without a close when the browser went offline: closed once a new one is up. */
  /** @type {Link[]} */ #stale = [];
  /** @type {"websocket" | "webtransport" | null} */ #transport = null;
  /** @type {Welcome | null} */ #welcome = null;
  /** @type {{ created: number, welcomed: number } | null} */ #timing = null;
  /** @type {RTCIceServer[]} */ #iceServers = [];
  /** @type {ReturnType<typeof setTimeout> | undefined} */ #iceTimer;
  /** @type {ResolvedOptions} */
  #options = normalizeOptions({});
  /** @type {string[]} */ #queue = [];
  #attempt = 0;
  #openedAt = 0;
  /** Why the connection being re-established ended, and when. */
  /** @type {{ code: number, reason: string, message: string, at: number }} */
  #drop = { code: 0, reason: "", message: "", at: 0 };
  /** @type {ReturnType<typeof setTimeout> | undefined} */ #retryTimer;
  /** Bumped by connect() and close(): a late result of an older call is dropped. */
  #generation = 0;
  /** @type {SignalError | null} */ #fallbackReason = null;
  /** The gateway's resume session for this user, from WELCOME. */
  /** @type {string | null} */ #session = null;
  /** The highest `seq` processed: anything at or below it is a replay already seen. */
  #lastSeq = 0;
  #ackedSeq = 0;
  /** @type {ReturnType<typeof setTimeout> | undefined} */ #ackTimer;
  /** Rooms this client is in, each with its members in join order. */
  /** @type {Map<string, string[]>} */ #rooms = new Map();
  /** `join()`/`leave()` calls waiting for JOINED/LEFT, by room. */
  /** @type {Map<string, Array<{ type: "JOIN" | "LEAVE", resolve: (members: string[]) => void, reject: (error: SignalError) => void }>>} */
  #roomCalls = new Map();
  /** Back online, or back from the back/forward cache: retry now. */
  #retryNow = () => {
    if (this.#state === "reconnecting") {
      clearTimeout(this.#retryTimer);
      this.#attempt = 0;
      this.#scheduleReconnect(null, 0);
    }
  };
  /**
   * The browser says it lost the network: the connection is most likely
   * dead, though the socket may not know for a while. Leave it without a
   * close (so the gateway holds what it sends meanwhile for the resume) and
   * reconnect once online.
   */
  #onOffline = () => {
    const link = this.#link;
    if (this.#state !== "connected" || !link) return;
    link.detach();
    this.#stale.push(link);
    this.#dropped(link, { code: 1006, reason: "OFFLINE", message: "the browser went offline", reconnect: true });
  };
  /** @param {PageTransitionEvent} ev */
  #onPageHide = (ev) => {
    if (!this.#options.closeOnPageHide || this.#state === "disconnected") return;
    if (!ev.persisted || this.#options.reconnect === false) {
      this.close(); // the page is going away: leave at once
      return;
    }
    // Into the back/forward cache: leave now, come back on pageshow.
    this.#generation++;
    clearTimeout(this.#retryTimer);
    const link = this.#link;
    this.#link = null;
    const info = { code: 1001, reason: "PAGE_HIDDEN", message: "the page was put in the back/forward cache" };
    this.#drop = { ...info, at: Date.now() };
    this.#state = "reconnecting";
    this.#emit("close", { ...info, reconnect: true, willReconnect: true });
    link?.close();
  };

  /**
   * Prefer {@link SignalClient.register}, {@link SignalClient.fromToken} or
   * {@link SignalClient.signIn}.
   * @param {{ username: string, token: string, baseUrl?: string }} identity
   */
  constructor({ username, token, baseUrl }) {
    super();
    if (typeof token !== "string" || token === "") {
      throw new TypeError("SignalClient needs a token: use SignalClient.register(name)");
    }
    this.#baseUrl = resolveBaseUrl(baseUrl);
    this.#username = username;
    this.#token = token;
  }

  /**
   * Registers `username` with the gateway (`POST /v1/register`).
   * Rejects with a {@link SignalError} carrying the gateway's message: code
   * `TAKEN` (someone else has the name), `INVALID` (not a valid name),
   * `RATE_LIMITED` (with `retryAfter` seconds), `UNAVAILABLE`, `UNREACHABLE`.
   * @param {string} username 1–64 characters
   * @param {ClientOptions & { token?: string }} [options] `token`: a token
   *   this name had before, to claim it back instead of getting `TAKEN`
   * @returns {Promise<SignalClient>}
   */
  static async register(username, options = {}) {
    const baseUrl = resolveBaseUrl(options.baseUrl);
    const { status, body, headers } = await request(baseUrl, "/v1/register", {
      method: "POST",
      token: options.token,
      json: { username },
    });
    if (status === 200 && body?.status === "SUCCESS") {
      return new SignalClient({ username: body.username, token: body.token, baseUrl });
    }
    if (body?.status === "TAKEN") {
      throw new SignalError("TAKEN", body.message || `username "${username}" is already registered`);
    }
    const retryAfter = Number(headers.get("retry-after")) || undefined;
    throw new SignalError(
      body?.status || `HTTP_${status}`,
      body?.message || `registration failed with HTTP ${status}`,
      { status, retryAfter },
    );
  }

  /**
   * A client for a user your application signs in: `getToken()` resolves
   * to a JWT your backend issues for that user (see the README). It is
   * called to connect, before every reconnect attempt, and when the gateway
   * says the token is about to expire (`TOKEN_EXPIRING`): the fresh token is
   * then sent in band (`REFRESH_TOKEN`) and the connection carries on. When
   * it throws (the user signed out, say) the client stops: a reconnect
   * attempt ends in `disconnected` (`4000 UNAUTHENTICATED`), a refresh in an
   * `error` event. Checks the first token with `GET /v1/user`; rejects with
   * `UNAUTHENTICATED` when the gateway refuses it.
   * @param {ClientOptions & { getToken: () => Promise<string> }} options
   * @returns {Promise<SignalClient>}
   */
  static async signIn(options) {
    if (typeof options?.getToken !== "function") {
      throw new TypeError("SignalClient.signIn({ getToken }) needs a getToken function");
    }
    const baseUrl = resolveBaseUrl(options.baseUrl);
    const token = await options.getToken();
    const username = await whoAmI(baseUrl, token);
    if (username === null) {
      throw new SignalError("UNAUTHENTICATED", "the gateway refused the token (see its log for why)");
    }
    const client = new SignalClient({ username, token, baseUrl });
    client.#getToken = options.getToken;
    return client;
  }

  /**
   * A client for a token from an earlier registration (e.g. kept in
   * `sessionStorage` across reloads); checks it with `GET /v1/user`.
   * Rejects with code `UNAUTHENTICATED` when the gateway does not know it.
   * @param {string} token
   * @param {ClientOptions} [options]
   * @returns {Promise<SignalClient>}
   */
  static async fromToken(token, options = {}) {
    const baseUrl = resolveBaseUrl(options.baseUrl);
    const username = await whoAmI(baseUrl, token);
    if (username === null) {
      throw new SignalError("UNAUTHENTICATED", "the gateway does not know this token; register again");
    }
    return new SignalClient({ username, token, baseUrl });
  }

  /**
   * Who is registered and connected (`GET /v1/users`, an admin route: open
   * to pages on the gateway's own machine, or with the admin token).
   * Rejects with code `FORBIDDEN` or `UNAUTHORIZED` (and `status`) otherwise.
   * @param {ClientOptions & { adminToken?: string }} [options]
   * @returns {Promise<{ registered: string[], connected: Array<{ username: string, transport: string, connection_id: number, connected_at: string, queued: number }> }>}
   */
  static async users(options = {}) {
    const baseUrl = resolveBaseUrl(options.baseUrl);
    const { status, body } = await request(baseUrl, "/v1/users", { token: options.adminToken });
    if (status !== 200) {
      throw new SignalError(
        body?.status || `HTTP_${status}`,
        body?.message || `listing users failed with HTTP ${status}`,
        { status },
      );
    }
    return body;
  }

  /** Whether this browser has WebTransport (it needs a secure context: https or localhost). */
  static get webTransportSupported() {
    return typeof globalThis.WebTransport === "function";
  }

  /**
   * Listens to one of the client's events ({@link SignalClientEventMap}),
   * typed by name; any other name is a plain `EventTarget` listener.
   * @template {keyof SignalClientEventMap} K
   * @overload
   * @param {K} type
   * @param {(this: SignalClient, ev: SignalClientEventMap[K]) => void} listener
   * @param {boolean | AddEventListenerOptions} [options]
   * @returns {void}
   */
  /**
   * @overload
   * @param {string} type
   * @param {EventListenerOrEventListenerObject | null} listener
   * @param {boolean | AddEventListenerOptions} [options]
   * @returns {void}
   */
  /**
   * @param {string} type
   * @param {any} listener
   * @param {boolean | AddEventListenerOptions} [options]
   * @returns {void}
   */
  addEventListener(type, listener, options) {
    super.addEventListener(type, listener, options);
  }

  /**
   * @template {keyof SignalClientEventMap} K
   * @overload
   * @param {K} type
   * @param {(this: SignalClient, ev: SignalClientEventMap[K]) => void} listener
   * @param {boolean | EventListenerOptions} [options]
   * @returns {void}
   */
  /**
   * @overload
   * @param {string} type
   * @param {EventListenerOrEventListenerObject | null} listener
   * @param {boolean | EventListenerOptions} [options]
   * @returns {void}
   */
  /**
   * @param {string} type
   * @param {any} listener
   * @param {boolean | EventListenerOptions} [options]
   * @returns {void}
   */
  removeEventListener(type, listener, options) {
    super.removeEventListener(type, listener, options);
  }

  /** The registered name. */
  get username() {
    return this.#username;
  }

  /** The session token (keep it to resume with {@link SignalClient.fromToken}). */
  get token() {
    return this.#token;
  }

  /** The gateway's base URL. */
  get baseUrl() {
    return this.#baseUrl;
  }

  /**
   * `"disconnected"` (before `connect()` and after the end), `"connecting"`,
   * `"connected"` or `"reconnecting"`.
   * @returns {ConnectionState}
   */
  get state() {
    return this.#state;
  }

  /**
   * The transport of the current (or, once closed, the last) connection:
   * `"webtransport"` or `"websocket"`; `null` before the first one opened.
   */
  get transport() {
    return this.#transport;
  }

  /** The gateway's id of the current (or last) connection. */
  get connectionId() {
    return this.#welcome?.connection_id ?? null;
  }

  /**
   * The resume state: the gateway's session id for this user (`null` before
   * the first connection, or from a gateway without resume) and the highest
   * `seq` processed, which a reconnect sends as `resume=N`.
   * @returns {{ session: string | null, seq: number }}
   */
  get resumeState() {
    return { session: this.#session, seq: this.#lastSeq };
  }

  /**
   * When the current (or last) connection's `WebSocket`/`WebTransport` was
   * created and when its WELCOME arrived, in `performance.now()`
   * milliseconds: their difference is the connection's set-up time.
   * `null` before the first connection opened.
   */
  get timing() {
    return this.#timing;
  }

  /**
   * The gateway's STUN and TURN servers for this user's peer connections,
   * as `new RTCPeerConnection({ iceServers: client.iceServers })` takes
   * them; empty before the first connection and when the gateway has none.
   * Each (re)connection brings a fresh list, and while the client is
   * connected it fetches new TURN credentials when half their life is
   * over, so the list's credentials are always valid for at least half
   * their lifetime (`iceservers` event). Read it for each new peer
   * connection.
   * @returns {RTCIceServer[]}
   */
  get iceServers() {
    return this.#iceServers;
  }

  /** Why `"auto"` fell back to WebSocket on the last connection, if it did. */
  get fallbackReason() {
    return this.#fallbackReason;
  }

  /**
   * The rooms this client is in.
   * @returns {string[]}
   */
  get rooms() {
    return [...this.#rooms.keys()];
  }

  /**
   * Opens a connection. Resolves with the gateway's WELCOME payload once the
   * connection is attached; rejects with a {@link SignalError} otherwise
   * (`TIMEOUT`, `UNAUTHENTICATED`, `WEBTRANSPORT_UNAVAILABLE`,
   * `WEBTRANSPORT_FAILED`, `WEBSOCKET_FAILED`, `ALREADY_CONNECTED`...).
   *
   * `transport`: `"webtransport"` and `"websocket"` use that transport and
   * never another; `"auto"` uses WebTransport when the browser has it and
   * the gateway answers over it within `webtransportTimeout`, else
   * WebSocket.
   * @param {ConnectOptions} [options] see {@link CONNECT_DEFAULTS}
   * @returns {Promise<Welcome>}
   */
  async connect(options = {}) {
    if (this.#state !== "disconnected") {
      throw new SignalError("ALREADY_CONNECTED", `already ${this.#state}; call close() first`);
    }
    this.#options = normalizeOptions(options);
    this.#attempt = 0;
    const generation = ++this.#generation;
    this.#setState("connecting", { code: 0, reason: "CONNECT_CALLED", message: "connect() was called" });
    this.#watchPage(true);
    try {
      if (this.#getToken) this.#token = await this.#getToken();
      const { link, welcome } = await this.#open(null);
      if (generation !== this.#generation) {
        link.close();
        throw new SignalError("CLOSED", "close() was called while connecting");
      }
      this.#attach(link, welcome, false);
      return welcome;
    } catch (err) {
      if (generation === this.#generation) {
        const error = asSignalError(err);
        this.#end({ code: closeCodeOf(error), reason: error.code, message: error.message });
      }
      throw err;
    }
  }

  /**
   * Sends `{target, type, payload}` to user `target`. While connecting or
   * reconnecting the envelope is queued and sent once open. Throws a
   * {@link SignalError}: `NOT_CONNECTED` (before `connect()` or after the
   * client closed), `QUEUE_FULL`, `MESSAGE_TOO_BIG` (over the gateway's
   * limit, which would close the connection).
   * @param {string} target
   * @param {string} type
   * @param {any} [payload] anything `JSON.stringify` takes
   *   (RTCSessionDescription and RTCIceCandidate included); default `null`
   */
  send(target, type, payload = null) {
    if (typeof target !== "string" || typeof type !== "string") {
      throw new TypeError("send(target, type, payload): target and type must be strings");
    }
    this.#sendText(JSON.stringify({ target, type, payload: payload === undefined ? null : payload }));
  }

  /**
   * Joins `room` (`JOIN`). Resolves with its members, this user included,
   * in join order, once the gateway answers `JOINED`; rejects with a
   * {@link SignalError} whose code is the gateway's error (`ROOM_FULL`,
   * `TOO_MANY_ROOMS`, `FORBIDDEN`, `INVALID_MESSAGE` for a bad name) or
   * `TIMEOUT`, `NOT_CONNECTED`, `CLOSED`. Joining a room you are in
   * answers the members again. The client joins its rooms again by itself
   * after a reconnect that could not resume.
   * @param {string} room a name that follows the username rules
   * @returns {Promise<string[]>}
   */
  join(room) {
    return this.#roomCall("JOIN", room);
  }

  /**
   * Leaves `room` (`LEAVE`); resolves once the gateway answers `LEFT`,
   * rejects with `NOT_IN_ROOM` (and the codes of {@link SignalClient#join}).
   * @param {string} room
   * @returns {Promise<void>}
   */
  async leave(room) {
    await this.#roomCall("LEAVE", room);
  }

  /**
   * Sends `{room, type, payload}` to every other member of `room`; each
   * gets it as a `room-message` event. Queued while (re)connecting, like
   * {@link SignalClient#send}; errors (`NOT_IN_ROOM`) come back as `message`
   * events.
   * @param {string} room
   * @param {string} type
   * @param {any} [payload]
   */
  sendToRoom(room, type, payload = null) {
    if (typeof room !== "string" || typeof type !== "string") {
      throw new TypeError("sendToRoom(room, type, payload): room and type must be strings");
    }
    this.#sendText(JSON.stringify({ room, type, payload: payload === undefined ? null : payload }));
  }

  /**
   * The members of `room` as this client last heard (this user included, in
   * join order); empty when it is not in the room.
   * @param {string} room
   * @returns {string[]}
   */
  members(room) {
    return [...(this.#rooms.get(room) ?? [])];
  }

  /**
   * Closes for good (no reconnect). Over WebTransport it first ends the
   * stream, so the gateway sees the user leave at once. Fires `close` with
   * code 1000 and `disconnected`, if a connection was open or opening.
   * Resolves once the transport is closed.
   * @returns {Promise<void>}
   */
  async close() {
    const wasActive = this.#state !== "disconnected";
    this.#generation++;
    clearTimeout(this.#retryTimer);
    const link = this.#link;
    if (link && this.#state === "connected") this.#ack();
    this.#link = null;
    const info = { code: 1000, reason: "CLOSED", message: "closed by the client" };
    if (wasActive) this.#emit("close", { ...info, reconnect: false, willReconnect: false });
    this.#end(info, wasActive);
    await link?.close();
  }

  /**
   * {@link SignalClient.users} against this client's gateway.
   * @param {{ adminToken?: string }} [options]
   */
  users(options = {}) {
    return SignalClient.users({ ...options, baseUrl: this.#baseUrl });
  }

  // ---- internals ----

  /**
   * Sends one envelope's text, or queues it while (re)connecting.
   * @param {string} text
   */
  #sendText(text) {
    const limit = this.#welcome?.max_envelope_bytes;
    if (limit && ENCODER.encode(text).length > limit) {
      throw new SignalError("MESSAGE_TOO_BIG", `envelope is larger than the gateway's ${limit} bytes`);
    }
    if (this.#state === "connected" && this.#link) {
      this.#link.send(text);
    } else if (this.#state === "connecting" || this.#state === "reconnecting") {
      if (this.#queue.length >= this.#options.maxQueued) {
        throw new SignalError("QUEUE_FULL", `${this.#queue.length} envelopes already wait for the connection`);
      }
      this.#queue.push(text);
    } else {
      throw new SignalError("NOT_CONNECTED", `cannot send while ${this.#state}; call connect() first`);
    }
  }

  /**
   * Sends JOIN or LEAVE and waits for the gateway's answer about that room.
   * @param {"JOIN" | "LEAVE"} type
   * @param {string} room
   * @returns {Promise<string[]>}
   */
  #roomCall(type, room) {
    if (typeof room !== "string" || room === "") {
      return Promise.reject(new TypeError(`${type === "JOIN" ? "join" : "leave"}(room): room must be a non-empty string`));
    }
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        settle();
        reject(new SignalError("TIMEOUT", `no answer to ${type} ${room} within ${this.#options.timeout} ms`));
      }, this.#options.timeout);
      const call = {
        type,
        /** @param {string[]} members */
        resolve: (members) => {
          clearTimeout(timer);
          resolve(members);
        },
        /** @param {SignalError} error */
        reject: (error) => {
          clearTimeout(timer);
          reject(error);
        },
      };
      const settle = () => {
        const calls = this.#roomCalls.get(room) ?? [];
        const left = calls.filter((c) => c !== call);
        if (left.length) this.#roomCalls.set(room, left);
        else this.#roomCalls.delete(room);
      };
      try {
        this.#sendText(JSON.stringify({ target: "", type, payload: { room } }));
      } catch (err) {
        clearTimeout(timer);
        reject(err);
        return;
      }
      if (type === "LEAVE") this.#rooms.delete(room); // not to be joined again by a reconnect meanwhile
      this.#roomCalls.set(room, [...(this.#roomCalls.get(room) ?? []), call]);
    });
  }

  /**
   * Settles the oldest pending `type` call for `room`.
   * @param {string} room
   * @param {"JOIN" | "LEAVE" | null} type `null`: whichever is oldest
   * @param {(call: { resolve: (members: string[]) => void, reject: (error: SignalError) => void }) => void} settle
   */
  #settleRoomCall(room, type, settle) {
    const calls = this.#roomCalls.get(room);
    const index = calls?.findIndex((c) => type === null || c.type === type) ?? -1;
    if (!calls || index < 0) return;
    const [call] = calls.splice(index, 1);
    if (!calls.length) this.#roomCalls.delete(room);
    settle(call);
  }

  /**
   * Opens a link with the configured transport and waits for WELCOME.
   * @param {number | null} resume the `seq` to resume after, or `null`
   * @returns {Promise<{ link: Link, welcome: Welcome }>}
   */
  async #open(resume) {
    const { transport, timeout, webtransportTimeout } = this.#options;
    const deadline = Date.now() + timeout;
    if (transport === "websocket") {
      return this.#openWith("websocket", timeout, resume);
    }
    if (transport === "webtransport") {
      return this.#openWith("webtransport", timeout, resume);
    }
    this.#fallbackReason = null;
    if (!SignalClient.webTransportSupported) {
      this.#fallbackReason = noWebTransport();
      return this.#openWith("websocket", timeout, resume);
    }
    try {
      return await this.#openWith("webtransport", Math.min(webtransportTimeout, timeout), resume);
    } catch (err) {
      if (err instanceof SignalError && err.code === "UNAUTHENTICATED") throw err;
      this.#fallbackReason = asSignalError(err);
    }
    // The gateway may have attached the WebTransport session after all and
    // written to it: resume from what this client has, so the WebSocket that
    // replaces it gets those envelopes again.
    const fallbackResume = resume ?? (this.#options.resume ? this.#lastSeq : null);
    return this.#openWith("websocket", Math.max(1_000, deadline - Date.now()), fallbackResume);
  }

  /**
   * @param {"websocket" | "webtransport"} kind
   * @param {number} timeout
   * @param {number | null} resume
   * @returns {Promise<{ link: Link, welcome: Welcome }>}
   */
  async #openWith(kind, timeout, resume) {
    const deadline = Date.now() + timeout;
    /** @type {Link} */
    let link;
    /** @type {CertInfo | null} */
    let cert = null;
    if (kind === "websocket") {
      link = new WebSocketLink(websocketUrl(this.#baseUrl, this.#token, resume), await webSocketClass());
    } else {
      if (!SignalClient.webTransportSupported) throw noWebTransport();
      cert = await withTimeout(certInfo(this.#baseUrl), timeout, () =>
        new SignalError("TIMEOUT", `no answer from ${this.#baseUrl}/v1/cert-hash within ${timeout} ms`),
      );
      link = new WebTransportLink(webtransportUrl(this.#baseUrl, cert, this.#token, resume), cert);
    }
    try {
      const welcome = await withTimeout(link.opened, Math.max(0, deadline - Date.now()), () =>
        new SignalError("TIMEOUT", `${kind} did not open within ${timeout} ms (${redact(link.url)})`),
      );
      return { link, welcome };
    } catch (err) {
      link.close();
      if (!cert || !(err instanceof SignalError) || err.code !== "WEBTRANSPORT_FAILED") throw err;
      // A browser hides why a WebTransport handshake failed (401, 403...):
      // ask the gateway whether the token is the reason, else name the usual ones.
      if ((await whoAmI(this.#baseUrl, this.#token).catch(() => "?")) === null) {
        throw new SignalError("UNAUTHENTICATED", "the gateway does not know this token; register again", { cause: err });
      }
      throw new SignalError(
        "WEBTRANSPORT_FAILED",
        `${err.message} (is UDP port ${cert.webtransport.port} reachable, and this page's origin ` +
          `${globalThis.location?.origin ?? ""} allowed by the gateway's --allow-origin?)`,
        { cause: err },
      );
    }
  }

  /**
   * Makes `link` the client's connection: takes over the resume session,
   * joins the rooms again if the session could not be resumed, flushes the
   * queue, then hands over what arrived after WELCOME (replays first).
   * @param {Link} link
   * @param {Welcome} welcome
   * @param {boolean} reconnected
   */
  #attach(link, welcome, reconnected) {
    this.#link = link;
    this.#welcome = welcome;
    this.#timing = { created: link.createdAt, welcomed: link.welcomedAt };
    this.#transport = link.kind;
    this.#state = "connected";
    this.#openedAt = Date.now();
    for (const stale of this.#stale.splice(0)) stale.teardown();
    const resumed = welcome.resumed === true;
    if (typeof welcome.session === "string") {
      // A session that was not resumed numbers from 1 again.
      if (!resumed || welcome.session !== this.#session) this.#lastSeq = 0;
      this.#session = welcome.session;
    }
    this.#ackedSeq = this.#lastSeq;
    clearTimeout(this.#ackTimer);
    this.#ackTimer = undefined;
    link.onClose = (info) => this.#dropped(link, info);
    if (link.endInfo) {
      this.#dropped(link, link.endInfo); // it died between WELCOME and now
      return;
    }
    if (reconnected && !resumed) {
      for (const room of this.#rooms.keys()) link.send(JSON.stringify({ target: "", type: "JOIN", payload: { room } }));
    }
    const queued = this.#queue;
    this.#queue = [];
    for (const text of queued) link.send(text);
    this.#emit("connected", { ...welcome, reconnected });
    if (reconnected || resumed) this.#emit("resumed", { resumed, replayed: Number(welcome.replayed) || 0 });
    this.#useIceServers(welcome.ice);
    link.deliverTo((envelope) => this.#receive(link, envelope));
  }

  /**
   * One envelope from the gateway, after WELCOME: drops a replay already
   * processed, handles the gateway's own room and token envelopes, hands the
   * rest to the app, and acknowledges at the protocol's cadence.
   * @param {Link} link
   * @param {Envelope} envelope
   */
  #receive(link, envelope) {
    const seq = envelope.seq;
    if (typeof seq === "number") {
      if (seq <= this.#lastSeq) return;
      this.#lastSeq = seq;
    }
    if (envelope.originator === "") {
      if (envelope.type === "TOKEN_EXPIRING") this.#refresh(link);
      if (ROOM_TYPES.has(envelope.type)) this.#roomEvent(envelope);
      else this.#gatewayEnvelope(envelope);
    } else if (typeof envelope.room === "string" && envelope.room !== "") {
      this.#emit("room-message", /** @type {RoomEnvelope} */ (envelope));
    } else {
      this.#emit("message", envelope);
    }
    if (typeof seq === "number" && link === this.#link) {
      if (this.#lastSeq - this.#ackedSeq >= ACK_EVERY) this.#ack();
      else this.#ackTimer ??= setTimeout(() => this.#ack(), ACK_INTERVAL_MS);
    }
  }

  /**
   * An error or notice from the gateway; one about a room (its payload
   * names the room) settles the `join()` or `leave()` it answers. Every one
   * is a `message` event.
   * @param {Envelope} envelope
   */
  #gatewayEnvelope(envelope) {
    const room = envelope.payload?.room;
    const asked = envelope.payload?.type;
    if (typeof room === "string" && (asked === "JOIN" || asked === "LEAVE" || asked === undefined)) {
      const error = new SignalError(envelope.type, String(envelope.payload?.message ?? envelope.type), { room });
      let settled = false;
      this.#settleRoomCall(room, asked ?? null, (call) => {
        settled = true;
        call.reject(error);
      });
      // A room this client could not join again after a reconnect.
      if (!settled && asked === "JOIN") this.#rooms.delete(room);
    }
    this.#emit("message", envelope);
  }

  /**
   * JOINED, LEFT, PEER_JOINED or PEER_LEFT: keeps the member lists and
   * reports the change. A JOINED after a reconnect that could not resume
   * reports who came and went meanwhile.
   * @param {Envelope} envelope
   */
  #roomEvent(envelope) {
    const { type, payload } = envelope;
    const room = payload?.room;
    if (typeof room !== "string") return;
    if (type === "JOINED") {
      const members = Array.isArray(payload.members) ? payload.members.map(String) : [];
      const before = this.#rooms.get(room);
      this.#rooms.set(room, members);
      if (before) {
        for (const user of before) {
          if (!members.includes(user)) this.#emit("peer-left", { room, user, reason: "disconnected" });
        }
        for (const user of members) {
          if (!before.includes(user) && user !== this.#username) this.#emit("peer-joined", { room, user });
        }
      }
      this.#settleRoomCall(room, "JOIN", (call) => call.resolve([...members]));
    } else if (type === "LEFT") {
      this.#rooms.delete(room);
      this.#settleRoomCall(room, "LEAVE", (call) => call.resolve([]));
    } else if (type === "PEER_JOINED") {
      const members = this.#rooms.get(room);
      const user = String(payload.user);
      if (members && !members.includes(user)) members.push(user);
      this.#emit("peer-joined", { room, user });
    } else if (type === "PEER_LEFT") {
      const members = this.#rooms.get(room);
      const user = String(payload.user);
      if (members) this.#rooms.set(room, members.filter((m) => m !== user));
      this.#emit("peer-left", { room, user, reason: String(payload.reason ?? "left") });
    }
  }

  /** Tells the gateway everything up to the last `seq` is processed. */
  #ack() {
    clearTimeout(this.#ackTimer);
    this.#ackTimer = undefined;
    if (this.#state !== "connected" || !this.#link || this.#lastSeq <= this.#ackedSeq) return;
    this.#ackedSeq = this.#lastSeq;
    this.#link.send(JSON.stringify({ target: "", type: "ACK", payload: { seq: this.#lastSeq } }));
  }

  /**
   * Takes a list of ICE servers from the gateway and schedules its
   * refresh at half the credentials' life, so a peer connection made from
   * the list has at least that long to make its TURN allocations (an ICE
   * restart makes new ones).
   * @param {IceConfig} ice
   */
  #useIceServers(ice) {
    clearTimeout(this.#iceTimer);
    if (!Array.isArray(ice?.iceServers)) return; // not the gateway's answer
    this.#iceServers = ice.iceServers;
    this.#emit("iceservers", { iceServers: ice.iceServers, ttl: ice.ttl });
    const ttlMs = Number(ice.ttl) * 1000;
    // Without credentials (STUN only, or nothing) there is nothing to renew.
    if (ttlMs > 0 && ice.iceServers.some((server) => server.credential !== undefined)) {
      this.#iceTimer = setTimeout(() => this.#refreshIceServers(ttlMs), ttlMs / 2);
    }
  }

  /**
   * Fetches fresh ICE servers (`GET /v1/ice-servers`) while the client is
   * connected or reconnecting; a reconnection brings them in `WELCOME` anyway.
   * @param {number} ttlMs the life of the credentials in use
   */
  async #refreshIceServers(ttlMs) {
    if (this.#state !== "connected" && this.#state !== "reconnecting") return;
    const generation = this.#generation;
    const { status, body } = await request(this.#baseUrl, "/v1/ice-servers", { token: this.#token })
      .catch(() => ({ status: 0, body: null }));
    if (generation !== this.#generation || (this.#state !== "connected" && this.#state !== "reconnecting")) return;
    if (status === 200) {
      this.#useIceServers(body);
    } else if (status !== 401) {
      // The gateway is unreachable or busy; a refused token instead ends
      // the connection too, and the next one brings a list in WELCOME.
      this.#iceTimer = setTimeout(() => this.#refreshIceServers(ttlMs), Math.min(ICE_RETRY_MS, ttlMs / 4));
    }
  }

  /**
   * The connection ended without `close()`.
   * @param {Link} link
   * @param {Omit<CloseDetail, "willReconnect">} info
   */
  #dropped(link, info) {
    if (link !== this.#link) return;
    this.#link = null;
    clearTimeout(this.#ackTimer);
    this.#ackTimer = undefined;
    const willReconnect = info.reconnect && this.#options.reconnect !== false;
    if (Date.now() - this.#openedAt >= STABLE_CONNECTION_MS) this.#attempt = 0;
    this.#drop = { code: info.code, reason: info.reason, message: info.message, at: Date.now() };
    if (willReconnect) this.#state = "reconnecting";
    this.#emit("close", { ...info, willReconnect });
    if (!willReconnect) this.#end(info);
    else if (this.#state === "reconnecting") this.#scheduleReconnect(null);
  }

  /**
   * Waits for the next attempt, as long as the policy says (an `online`
   * event cuts the wait short).
   * @param {SignalError | null} error why the last attempt failed
   * @param {number} [now] retry after this many ms regardless of the policy
   */
  #scheduleReconnect(error, now) {
    const policy = this.#options.reconnect;
    if (policy === false) return;
    const generation = this.#generation;
    this.#attempt += 1;
    const { code, reason, message, at } = this.#drop;
    let delay = now;
    if (delay === undefined && policy.nextRetryDelayMs) {
      const next = policy.nextRetryDelayMs({ attempt: this.#attempt, elapsedMs: Date.now() - at, code, reason, error });
      if (next === null || next === undefined) {
        this.#giveUp(error ?? new SignalError(reason || "CLOSED", "nextRetryDelayMs stopped the retries"));
        return;
      }
      delay = Math.max(0, Number(next) || 0);
    } else if (delay === undefined) {
      if (this.#attempt > policy.maxAttempts) {
        this.#giveUp(error ?? new SignalError("CLOSED", "no reconnect attempts left"));
        return;
      }
      const ceiling = Math.min(policy.maxDelay, policy.initialDelay * policy.factor ** (this.#attempt - 1));
      // "Equal jitter": at least half the ceiling, so retries stay spread out
      // without collapsing to zero.
      delay = Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
    }
    this.#emit("reconnecting", { code, reason, message, attempt: this.#attempt, delay, error });
    this.#retryTimer = setTimeout(() => this.#reconnect(generation), delay);
  }

  /**
   * Sends the gateway a fresh JWT for the open connection, which then
   * answers `TOKEN_REFRESHED` (or `TOKEN_REFUSED`, when the connection
   * closes with `TOKEN_EXPIRED` and reconnects with a newer token).
   * @param {Link} link
   */
  async #refresh(link) {
    if (!this.#getToken) return;
    try {
      const token = await this.#getToken();
      if (link !== this.#link) return;
      this.#token = token;
      link.send(JSON.stringify({ target: "", type: "REFRESH_TOKEN", payload: { token } }));
    } catch (err) {
      this.#emit("error", asSignalError(err));
    }
  }

  /** @param {number} generation */
  async #reconnect(generation) {
    if (generation !== this.#generation || this.#state !== "reconnecting") return;
    try {
      if (this.#getToken) {
        try {
          this.#token = await this.#getToken();
        } catch (err) {
          // The app says there is no token to be had (signed out): stop.
          throw final(new SignalError("UNAUTHENTICATED", `getToken() failed: ${errorMessage(err)}`, { cause: err }));
        }
        if (generation !== this.#generation) return;
      }
      // Cheap probe first: is the gateway up, and does it still know us?
      let username = await whoAmI(this.#baseUrl, this.#token);
      if (generation !== this.#generation) return;
      if (username === null && this.#getToken) {
        throw final(new SignalError("UNAUTHENTICATED", "the gateway refused the fresh token"));
      }
      if (username === null) {
        const again = await SignalClient.register(this.#username, { baseUrl: this.#baseUrl, token: this.#token });
        if (generation !== this.#generation) return;
        this.#token = again.token;
        username = again.username;
        this.#emit("identity", { username, token: this.#token });
      }
      const { link, welcome } = await this.#open(this.#options.resume && this.#session !== null ? this.#lastSeq : null);
      if (generation !== this.#generation || this.#state !== "reconnecting") {
        link.close();
        return;
      }
      this.#attach(link, welcome, true);
    } catch (err) {
      if (generation !== this.#generation) return;
      const error = asSignalError(err);
      if (error.code === "TAKEN" || error.code === "INVALID") {
        this.#giveUp(new SignalError("UNAUTHENTICATED", `cannot get the name back: ${error.message}`, { cause: err }));
      } else if (FINAL_ERRORS.has(error)) {
        this.#giveUp(error);
      } else {
        this.#scheduleReconnect(error);
      }
    }
  }

  /** @param {SignalError} error */
  #giveUp(error) {
    const info = {
      code: error.code === "UNAUTHENTICATED" ? 4000 : this.#drop.code || 1006,
      reason: error.code,
      message: error.message,
    };
    this.#emit("close", { ...info, reconnect: false, willReconnect: false });
    this.#end(info);
  }

  /**
   * The end: state `disconnected`, nothing queued, no rooms, no pending
   * calls; fires `disconnected` (unless nothing had started).
   * @param {StateDetail} info
   * @param {boolean} [announce]
   */
  #end(info, announce = true) {
    clearTimeout(this.#iceTimer);
    clearTimeout(this.#ackTimer);
    this.#ackTimer = undefined;
    this.#watchPage(false);
    this.#queue = [];
    for (const stale of this.#stale.splice(0)) stale.teardown();
    this.#rooms.clear();
    const calls = [...this.#roomCalls.values()].flat();
    this.#roomCalls.clear();
    for (const call of calls) call.reject(new SignalError("CLOSED", `the connection ended: ${info.reason}`));
    this.#session = null;
    this.#lastSeq = 0;
    this.#ackedSeq = 0;
    if (this.#state === "disconnected") return;
    if (announce) this.#setState("disconnected", { code: info.code, reason: info.reason, message: info.message });
    else this.#state = "disconnected";
  }

  /**
   * @param {"connecting" | "disconnected"} state
   * @param {StateDetail} detail
   */
  #setState(state, detail) {
    this.#state = state;
    this.#emit(state, detail);
  }

  /**
   * Follows the page's life while connected: network lost and back, page
   * hidden (closed, navigated away, cached) and shown again.
   * @param {boolean} on
   */
  #watchPage(on) {
    const method = on ? "addEventListener" : "removeEventListener";
    globalThis[method]?.("online", this.#retryNow);
    globalThis[method]?.("offline", this.#onOffline);
    // Called through a union of the two methods, TypeScript knows no event
    // types; what pagehide delivers is a PageTransitionEvent.
    globalThis[method]?.("pagehide", /** @type {EventListener} */ (this.#onPageHide));
    globalThis[method]?.("pageshow", this.#retryNow);
  }

  /**
   * @template {keyof SignalClientEventMap} K
   * @param {K} type
   * @param {SignalClientEventMap[K]["detail"]} detail
   */
  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

// ---- transports ----

/**
 * One transport connection. Parses envelopes, recognises WELCOME (resolves
 * `opened`) and CLOSE (remembers why, then closes), and reports the end once.
 * Envelopes after WELCOME wait until the client takes them
 * ({@link Link#deliverTo}): a replay can arrive in the same read as WELCOME.
 */
class Link {
  /** @type {((envelope: Envelope) => void) | null} */ #handler = null;
  /** @type {Envelope[]} */ #pending = [];
  /** @type {((info: Omit<CloseDetail, "willReconnect">) => void) | null} */ onClose = null;
  /** How the link ended, once it has. */
  /** @type {Omit<CloseDetail, "willReconnect"> | null} */ endInfo = null;
  /** @type {Welcome | null} */ welcome = null;
  /** `performance.now()` at creation: the subclass creates its transport object right after. */
  createdAt = performance.now();
  welcomedAt = 0;
  ended = false;
  /** @type {(welcome: Welcome) => void} */ #resolve = () => {};
  /** @type {(error: SignalError) => void} */ #reject = () => {};

  /**
   * @param {"websocket" | "webtransport"} kind
   * @param {string} url
   */
  constructor(kind, url) {
    this.kind = kind;
    this.url = url;
    /** Resolves with the WELCOME payload; rejects if the link ends first. */
    this.opened = new Promise((resolve, reject) => {
      this.#resolve = resolve;
      this.#reject = reject;
    });
    this.opened.catch(() => {});
  }

  /** @param {string} text one envelope */
  receive(text) {
    let envelope;
    try {
      envelope = JSON.parse(text);
    } catch {
      return; // the gateway sends only JSON; nothing sensible to do with noise
    }
    if (envelope === null || typeof envelope !== "object") return;
    // Only the gateway itself sends originator "" (forwarded envelopes carry
    // the authenticated sender), so WELCOME and CLOSE cannot be spoofed.
    if (envelope.originator === "" && envelope.type === "WELCOME" && !this.welcome) {
      this.welcome = envelope.payload;
      this.welcomedAt = performance.now();
      this.#resolve(envelope.payload);
    } else if (envelope.originator === "" && envelope.type === "CLOSE") {
      const p = envelope.payload ?? {};
      this.end({
        code: Number(p.code) || 1000,
        reason: String(p.reason ?? CLOSE_REASONS[p.code] ?? "CLOSED"),
        message: String(p.message ?? ""),
        reconnect: p.reconnect !== false,
      });
      this.teardown(); // the gateway waits for us to close after CLOSE
    } else if (this.#handler) {
      this.#handler(envelope);
    } else if (this.welcome) {
      this.#pending.push(envelope);
    }
  }

  /**
   * Hands every envelope after WELCOME to `handler`: those already here, then
   * each as it comes.
   * @param {(envelope: Envelope) => void} handler
   */
  deliverTo(handler) {
    this.#handler = handler;
    for (const envelope of this.#pending.splice(0)) {
      if (this.#handler !== handler) break;
      handler(envelope);
    }
  }

  /** Stops reporting anything: the client has given up on this link. */
  detach() {
    this.#handler = () => {};
    this.#pending = [];
    this.onClose = null;
  }

  /**
   * Reports the end of the link, once.
   * @param {Omit<CloseDetail, "willReconnect">} info
   */
  end(info) {
    if (this.ended) return;
    this.ended = true;
    this.endInfo = info;
    if (this.welcome) {
      this.onClose?.(info);
    } else {
      const failure = info.reason === "CONNECTION_LOST" ? `${this.kind.toUpperCase()}_FAILED` : info.reason;
      this.#reject(new SignalError(failure, info.message || `${this.kind} closed (${info.code} ${info.reason})`, { closeCode: info.code }));
    }
  }

  /** @param {string} _text */
  send(_text) {}
  /** Closes the transport without ceremony. */
  teardown() {}
  /** Closes the link on purpose (no `onClose`). */
  async close() {
    this.detach();
    this.end({ code: 1000, reason: "CLOSED", message: "closed by the client", reconnect: false });
    this.teardown();
  }
}

/** Envelopes as WebSocket text frames. */
class WebSocketLink extends Link {
  /**
   * @param {string} url
   * @param {typeof WebSocket} WebSocketClass the platform's, or the `ws` package's
   */
  constructor(url, WebSocketClass) {
    super("websocket", url);
    let ws;
    try {
      ws = new WebSocketClass(url);
    } catch (err) {
      this.ws = null;
      this.end(lost(`cannot open a WebSocket to ${redact(url)}: ${errorMessage(err)}`));
      return;
    }
    this.ws = ws;
    ws.onmessage = (ev) => {
      if (typeof ev.data === "string") this.receive(ev.data);
    };
    ws.onclose = (ev) => {
      const reason = ev.reason || CLOSE_REASONS[ev.code] || "CLOSED";
      this.end({
        code: ev.code,
        reason: ev.code === 1006 ? "CONNECTION_LOST" : reason,
        message: ev.code === 1006 ? `the WebSocket to ${redact(url)} failed or was cut` : `WebSocket closed: ${ev.code} ${reason}`,
        reconnect: !FINAL_CLOSE_CODES.has(ev.code),
      });
    };
  }

  /** @param {string} text */
  send(text) {
    this.ws?.send(text);
  }

  teardown() {
    try {
      this.ws?.close(1000, "BYE");
    } catch {
      // already closed
    }
  }
}

/**
 * Envelopes as newline-terminated JSON lines on one bidirectional stream of
 * a WebTransport session.
 */
class WebTransportLink extends Link {
  /** @type {WritableStreamDefaultWriter<Uint8Array> | null} */ writer = null;

  /**
   * @param {string} url
   * @param {CertInfo} cert
   */
  constructor(url, cert) {
    super("webtransport", url);
    /** @type {WebTransportOptions} */
    const options = {};
    if (cert.development) {
      // A self-signed development certificate: pin it. A CA-issued one is
      // checked the usual way (pinning it would fail: it lives > 14 days).
      options.serverCertificateHashes = [{ algorithm: "sha-256", value: base64Bytes(cert.value) }];
    }
    try {
      this.wt = new WebTransport(url, options);
    } catch (err) {
      this.wt = null;
      this.end(lost(`cannot open WebTransport to ${redact(url)}: ${errorMessage(err)}`));
      return;
    }
    this.wt.closed.then(
      (info) => this.end({
        code: info?.closeCode || 1000,
        reason: CLOSE_REASONS[info?.closeCode ?? 1000] ?? "CLOSED",
        message: `WebTransport session closed${info?.reason ? `: ${info.reason}` : ""}`,
        reconnect: !FINAL_CLOSE_CODES.has(info?.closeCode ?? 0),
      }),
      (err) => this.end(lost(`WebTransport to ${redact(url)} failed or was cut: ${errorMessage(err)}`)),
    );
    this.#start();
  }

  async #start() {
    const wt = /** @type {WebTransport} */ (this.wt);
    try {
      await wt.ready;
      const stream = await wt.createBidirectionalStream();
      this.writer = stream.writable.getWriter();
      // The gateway only sees a stream once something is written on it; a
      // blank line is ignored by its framing.
      this.writer.write(ENCODER.encode("\n")).catch(() => {});
      this.#read(stream.readable.getReader());
    } catch (err) {
      this.end(lost(`WebTransport handshake with ${redact(this.url)} failed: ${errorMessage(err)}`));
      this.teardown();
    }
  }

  /** @param {ReadableStreamDefaultReader<Uint8Array>} reader */
  async #read(reader) {
    const decoder = new TextDecoder();
    let partial = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        // Lines may arrive split across reads (even inside a character:
        // `stream: true` keeps the bytes of an unfinished one), or several
        // per read. Only the new text is searched for line ends.
        const text = decoder.decode(value, { stream: true });
        let start = 0;
        for (let end = text.indexOf("\n"); end !== -1; end = text.indexOf("\n", start)) {
          const line = partial + text.slice(start, end);
          partial = "";
          start = end + 1;
          if (line.trim() !== "") this.receive(line);
        }
        partial += text.slice(start);
        if (partial.length > LINE_SLACK * (this.welcome?.max_envelope_bytes ?? DEFAULT_MAX_LINE)) {
          this.end({ code: 1009, reason: "MESSAGE_TOO_BIG", message: "the gateway sent an over-long line", reconnect: true });
          break;
        }
      }
    } catch {
      // the session failed; `closed` says how
    }
    // The gateway ended its stream (after a CLOSE envelope) or the session died.
    this.end(lost("the gateway ended the WebTransport stream"));
    this.teardown();
  }

  /** @param {string} text */
  send(text) {
    this.writer?.write(ENCODER.encode(text + "\n")).catch(() => {});
  }

  teardown() {
    try {
      this.wt?.close();
    } catch {
      // already closed
    }
  }

  /** Ends the stream (so the gateway drops the user at once), then the session. */
  async close() {
    this.detach();
    this.end({ code: 1000, reason: "CLOSED", message: "closed by the client", reconnect: false });
    if (this.writer) {
      await withTimeout(this.writer.close(), STREAM_CLOSE_GRACE_MS, () => new Error("timeout")).catch(() => {});
    }
    this.teardown();
  }
}

// ---- HTTP helpers ----

/**
 * @typedef {object} CertInfo
 * @property {string} value   base64 SHA-256 of the certificate
 * @property {boolean} development
 * @property {{ port: number, path: string, host?: string | null }} webtransport
 */

/**
 * @param {string} baseUrl
 * @returns {Promise<CertInfo>}
 */
async function certInfo(baseUrl) {
  const { status, body } = await request(baseUrl, "/v1/cert-hash", {});
  if (status !== 200 || !body?.webtransport?.port) {
    throw new SignalError("WEBTRANSPORT_FAILED", `the gateway did not describe its WebTransport endpoint (HTTP ${status})`);
  }
  return body;
}

/**
 * The name a token belongs to, or `null` if the gateway does not know it.
 * @param {string} baseUrl
 * @param {string} token
 * @returns {Promise<string | null>}
 */
async function whoAmI(baseUrl, token) {
  const { status, body } = await request(baseUrl, "/v1/user", { token });
  if (status === 200 && typeof body?.username === "string") return body.username;
  if (status === 404 || status === 401) return null;
  throw new SignalError(body?.status || `HTTP_${status}`, body?.message || `GET /v1/user failed with HTTP ${status}`, { status });
}

/**
 * A JSON request without cookies (the token travels explicitly).
 * @param {string} baseUrl
 * @param {string} path
 * @param {{ method?: string, token?: string, json?: unknown }} init
 * @returns {Promise<{ status: number, body: any, headers: Headers }>}
 */
async function request(baseUrl, path, { method = "GET", token, json }) {
  /** @type {Record<string, string>} */
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (json !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(baseUrl + path, {
      method,
      headers,
      body: json === undefined ? undefined : JSON.stringify(json),
      credentials: "omit",
      cache: "no-store",
    });
  } catch (err) {
    throw new SignalError("UNREACHABLE", `cannot reach the gateway at ${baseUrl}: ${errorMessage(err)}`, { cause: err });
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON: the status code says enough
  }
  return { status: response.status, body, headers: response.headers };
}

/**
 * @param {string | undefined} baseUrl
 * @returns {string} absolute, without a trailing slash
 */
function resolveBaseUrl(baseUrl) {
  const here = globalThis.location?.href;
  if (baseUrl === undefined && !here) {
    throw new TypeError("no page origin: pass { baseUrl: \"http://host:port\" }");
  }
  const url = new URL(baseUrl ?? "/", here);
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new TypeError(`baseUrl must be http(s), not ${url.protocol}`);
  }
  return (url.origin + url.pathname).replace(/\/+$/, "");
}

/**
 * @param {string} baseUrl
 * @param {string} token
 * @param {number | null} resume the last `seq` processed, to resume after it
 */
function websocketUrl(baseUrl, token, resume) {
  const url = new URL(`${baseUrl}/v1/connect`);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  url.searchParams.set("token", token);
  if (resume !== null) url.searchParams.set("resume", String(resume));
  return url.href;
}

/**
 * WebTransport goes to the gateway's host on its UDP port, or, in a cluster
 * behind a load balancer, to the host the node that answered advertises
 * (`--advertise-host`): the certificate hash is that node's. Browsers send
 * no cookies on this handshake, so the token rides in the query.
 * @param {string} baseUrl
 * @param {CertInfo} cert
 * @param {string} token
 * @param {number | null} resume the last `seq` processed, to resume after it
 */
function webtransportUrl(baseUrl, cert, token, resume) {
  const url = new URL(baseUrl);
  const host = cert.webtransport.host || url.hostname;
  const bracketed = host.includes(":") && !host.startsWith("[") ? `[${host}]` : host;
  const endpoint = new URL(`https://${bracketed}:${cert.webtransport.port}${cert.webtransport.path || "/v1/connect"}`);
  endpoint.searchParams.set("token", token);
  if (resume !== null) endpoint.searchParams.set("resume", String(resume));
  return endpoint.href;
}

// ---- small helpers ----

/**
 * The WebSocket class: the platform's (browsers, Node 22+), or on Node 20
 * the `ws` package's, which the npm package lists as an optional dependency.
 * @returns {Promise<typeof WebSocket>}
 */
async function webSocketClass() {
  if (typeof globalThis.WebSocket === "function") return globalThis.WebSocket;
  // A name, not a literal: bundlers for browsers and the browser type check leave it alone.
  const name = "ws";
  try {
    const ws = await import(name);
    return ws.WebSocket ?? ws.default;
  } catch (err) {
    throw new SignalError("UNREACHABLE", "this runtime has no WebSocket: on Node 20, install the `ws` package", {
      cause: err,
    });
  }
}

/**
 * @param {Partial<ConnectOptions>} options
 * @returns {ResolvedOptions}
 */
function normalizeOptions(options) {
  const transport = options.transport ?? CONNECT_DEFAULTS.transport;
  if (transport !== "auto" && !TRANSPORTS.includes(transport)) {
    throw new TypeError(`transport must be "auto", "webtransport" or "websocket", not ${JSON.stringify(transport)}`);
  }
  const reconnect = options.reconnect === false ? false : { ...CONNECT_DEFAULTS.reconnect, ...(options.reconnect ?? {}) };
  if (reconnect && reconnect.nextRetryDelayMs !== undefined && typeof reconnect.nextRetryDelayMs !== "function") {
    throw new TypeError("reconnect.nextRetryDelayMs must be a function");
  }
  return {
    transport,
    resume: options.resume ?? CONNECT_DEFAULTS.resume,
    timeout: options.timeout ?? CONNECT_DEFAULTS.timeout,
    webtransportTimeout: options.webtransportTimeout ?? CONNECT_DEFAULTS.webtransportTimeout,
    reconnect,
    maxQueued: options.maxQueued ?? CONNECT_DEFAULTS.maxQueued,
    closeOnPageHide: options.closeOnPageHide ?? CONNECT_DEFAULTS.closeOnPageHide,
  };
}

/**
 * @template T
 * @param {Promise<T>} promise
 * @param {number} ms
 * @param {() => Error} onTimeout
 * @returns {Promise<T>}
 */
function withTimeout(promise, ms, onTimeout) {
  /** @type {ReturnType<typeof setTimeout> | undefined} */
  let timer;
  const expired = new Promise((_, reject) => {
    timer = setTimeout(() => reject(onTimeout()), ms);
  });
  return /** @type {Promise<T>} */ (Promise.race([promise, expired])).finally(() => clearTimeout(timer));
}

/** Errors after which the client stops reconnecting. */
const FINAL_ERRORS = new WeakSet();

/**
 * @param {SignalError} error
 * @returns {SignalError} the same error, marked as the end of the retries
 */
function final(error) {
  FINAL_ERRORS.add(error);
  return error;
}

/**
 * @param {SignalError} error
 * @returns {number} the close code of the connection whose end caused it, or 0
 */
function closeCodeOf(error) {
  return Number(/** @type {{ closeCode?: unknown }} */ (error).closeCode) || 0;
}

/** @param {string} message */
function lost(message) {
  return { code: 1006, reason: "CONNECTION_LOST", message, reconnect: true };
}

function noWebTransport() {
  return new SignalError(
    "WEBTRANSPORT_UNAVAILABLE",
    "this browser has no WebTransport here (it needs a recent Chromium or Firefox and a secure context: https, localhost or 127.0.0.1)",
  );
}

/** @param {unknown} err */
function asSignalError(err) {
  return err instanceof SignalError ? err : new SignalError("UNREACHABLE", errorMessage(err), { cause: err });
}

/** @param {unknown} err */
function errorMessage(err) {
  return err instanceof Error ? err.message : String(err);
}

/** @param {string} url the URL without its token, for messages */
function redact(url) {
  return url.split("?")[0];
}

/** @param {string} b64 */
function base64Bytes(b64) {
  return Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
}
