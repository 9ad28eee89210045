// @ts-check
/**
 * @file The bench page at `/bench`: WebSocket against WebTransport through
 * this gateway, measured in the browser that opens the page. Uses nothing
 * but /client.js.
 *
 * Two clients of one page, A and B, connect over the same transport:
 * - set-up: A connects `setups` times; each time, from the creation of the
 *   `WebSocket`/`WebTransport` to the WELCOME envelope (`client.timing`);
 * - round trip: A sends `warmup + n` envelopes to B on a fixed schedule of
 *   `rate` per second (open loop: a late echo never delays the next send);
 *   B sends each one back; the RTT of the last `n` is timed from just
 *   before A's send to A receiving the echo;
 * - burst: A sends `burst` envelopes at once; the time until B has them all,
 *   `bursts` times.
 * Each phase runs for both transports (alternating which goes first) on
 * fresh connections, closed at the end of the phase.
 *
 * Parameters come from the form, pre-filled from the query
 * (`/bench?n=200&rate=500`). `globalThis.bench` exposes the state, the
 * result and the plot's SVG to scripts (scripts/browser-bench, the browser
 * tests).
 */
import { ERROR_TYPES, SignalClient } from "./client.js";

/** @typedef {"websocket" | "webtransport"} Transport */
/** @type {Transport[]} */
const TRANSPORTS = ["websocket", "webtransport"];
const LABELS = { websocket: "WebSocket", webtransport: "WebTransport" };
/** The demo's --ws and --wt colours (light theme): the plot is also a standalone file. */
const COLORS = { websocket: "#0f766e", webtransport: "#6d28d9" };

/**
 * Parameters: default and allowed range. The defaults take about 15 s;
 * `size` stays well under the gateway's 64 KiB envelope limit.
 */
const PARAMS = {
  n: { value: 2000, min: 1, max: 100_000 },
  rate: { value: 500, min: 1, max: 10_000 },
  warmup: { value: 200, min: 0, max: 100_000 },
  size: { value: 200, min: 0, max: 32_768 },
  setups: { value: 10, min: 1, max: 1_000 },
  burst: { value: 1000, min: 1, max: 100_000 },
  bursts: { value: 3, min: 1, max: 100 },
};
/** @typedef {{ [K in keyof typeof PARAMS]: number }} Params */

/** Bounds on waits, so a stuck transport fails its phase instead of hanging the page. */
const CONNECT_TIMEOUT_MS = 10_000;
/** After the last send, how long missing echoes may take before they count as lost. */
const DRAIN_MS = 5_000;
/** A burst must be complete within this plus 1 ms per envelope. */
const BURST_TIMEOUT_MS = 10_000;
/** A pause between bursts, so one burst's tail never overlaps the next. */
const BURST_GAP_MS = 100;

// ---- measuring ----

/**
 * Runs `fn` after `ms`. Chromium clamps chained `setTimeout`s to 4 ms,
 * which would turn 500 envelopes/s into pairs every 4 ms;
 * `scheduler.postTask` keeps its delay.
 * @param {() => void} fn
 * @param {number} ms
 */
function later(fn, ms) {
  const scheduler = /** @type {any} */ (globalThis).scheduler;
  if (typeof scheduler?.postTask === "function") scheduler.postTask(fn, { delay: Math.max(0, ms) });
  else setTimeout(fn, Math.max(0, ms));
}

/** @param {number} ms */
function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * @template T
 * @param {Promise<T>} promise
 * @param {number} ms
 * @param {string} what
 * @returns {Promise<T>}
 */
function within(promise, ms, what) {
  /** @type {ReturnType<typeof setTimeout> | undefined} */
  let timer;
  const expired = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} took longer than ${ms} ms`)), ms);
  });
  return /** @type {Promise<T>} */ (Promise.race([promise, expired])).finally(() => clearTimeout(timer));
}

/** @param {number} v milliseconds, rounded to the microsecond */
function us(v) {
  return Math.round(v * 1000) / 1000;
}

/**
 * Nearest-rank percentile of sorted values.
 * @param {ArrayLike<number>} sorted
 * @param {number} q 0..1
 */
function percentile(sorted, q) {
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))];
}

/** @param {number[]} values */
function median(values) {
  return percentile(Float64Array.from(values).sort(), 0.5);
}

/** The smallest step of `performance.now()` seen in a few milliseconds. */
function clockResolution() {
  let best = Infinity;
  let last = performance.now();
  const end = last + 20;
  for (let seen = 0; seen < 50;) {
    const now = performance.now();
    if (now > end) break;
    if (now !== last) {
      best = Math.min(best, now - last);
      last = now;
      seen += 1;
    }
  }
  return us(best);
}

/** Limits under which the default parameters run (the defaults are for production). */
const BENCH_FLAGS = "--envelope-rate 100000 --envelope-burst 100000 --queue-envelopes 4096";

/** @param {{ type: string, payload: any }} envelope */
function gatewayError(envelope) {
  const message = `the gateway answered ${envelope.type}: ${envelope.payload?.message ?? ""}`;
  if (envelope.type === "RATE_LIMITED" || envelope.type === "TARGET_SLOW") {
    return new Error(`${message}. Its limits stop this bench: start it with ${BENCH_FLAGS}`);
  }
  return new Error(message);
}

/**
 * @typedef {object} Handlers what A and B do with envelopes during a phase
 * @property {((envelope: any) => void) | null} a
 * @property {((envelope: any) => void) | null} b
 */

/**
 * Connects A and B over `transport`, runs `body`, and closes both. An error
 * envelope from the gateway or a dropped connection fails the phase.
 * @template T
 * @param {Transport} transport
 * @param {SignalClient} a
 * @param {SignalClient} b
 * @param {(on: Handlers) => Promise<T>} body
 * @returns {Promise<T>}
 */
async function withPair(transport, a, b, body) {
  /** @type {Handlers} */
  const on = { a: null, b: null };
  /** @type {(err: Error) => void} */
  let fail = () => {};
  /** @type {Promise<never>} */
  const failed = new Promise((_, reject) => {
    fail = reject;
  });
  failed.catch(() => {}); // a failure while connecting is reported by connect()
  /** @param {"a" | "b"} side */
  const onMessage = (side) => (/** @type {Event} */ ev) => {
    const envelope = /** @type {CustomEvent} */ (ev).detail;
    if (envelope.originator === "" && ERROR_TYPES.includes(envelope.type)) fail(gatewayError(envelope));
    else on[side]?.(envelope);
  };
  const onClose = (/** @type {Event} */ ev) => {
    const { code, reason, message } = /** @type {CustomEvent} */ (ev).detail;
    fail(new Error(`the ${LABELS[transport]} connection closed: ${code} ${reason} ${message}`));
  };
  const listeners = /** @type {const} */ ([[a, onMessage("a")], [b, onMessage("b")]]);
  for (const [client, onMsg] of listeners) {
    client.addEventListener("message", onMsg);
    client.addEventListener("close", onClose);
  }
  try {
    const options = { transport, reconnect: /** @type {false} */ (false), timeout: CONNECT_TIMEOUT_MS };
    await Promise.all([a.connect(options), b.connect(options)]);
    return await Promise.race([body(on), failed]);
  } finally {
    for (const [client, onMsg] of listeners) {
      client.removeEventListener("message", onMsg);
      client.removeEventListener("close", onClose);
    }
    await Promise.all([a.close(), b.close()]);
  }
}

/**
 * Connection set-up: A connects and closes `setups` times.
 * @param {Transport} transport
 * @param {SignalClient} a
 * @param {Params} p
 */
async function measureSetup(transport, a, p) {
  /** @type {number[]} */
  const samples = [];
  for (let k = 0; k < p.setups; k += 1) {
    try {
      await a.connect({ transport, reconnect: false, timeout: CONNECT_TIMEOUT_MS });
      const timing = /** @type {{ created: number, welcomed: number }} */ (a.timing);
      samples.push(us(timing.welcomed - timing.created));
    } finally {
      await a.close();
    }
  }
  return {
    count: samples.length,
    median_ms: median(samples),
    min_ms: Math.min(...samples),
    max_ms: Math.max(...samples),
    samples_ms: samples,
  };
}

/**
 * Round trips at a steady rate, open loop.
 * @param {Transport} transport
 * @param {SignalClient} a
 * @param {SignalClient} b
 * @param {Params} p
 */
function measureRtt(transport, a, b, p) {
  return withPair(transport, a, b, async (on) => {
    const total = p.warmup + p.n;
    const pad = "x".repeat(p.size);
    const sentAt = new Float64Array(total);
    const late = new Float64Array(total);
    const rtt = new Float64Array(total).fill(-1);
    let echoed = 0;
    /** @type {() => void} */
    let allEchoed = () => {};
    const done = new Promise((resolve) => {
      allEchoed = () => resolve(undefined);
    });
    on.b = (envelope) => {
      if (envelope.type === "bench-ping") b.send(envelope.originator, "bench-pong", envelope.payload);
    };
    on.a = (envelope) => {
      const i = envelope.payload?.i;
      if (envelope.type !== "bench-pong" || !(i >= 0 && i < total) || rtt[i] >= 0) return;
      rtt[i] = performance.now() - sentAt[i];
      echoed += 1;
      if (echoed === total) allEchoed();
    };
    const interval = 1000 / p.rate;
    const start = performance.now() + 10;
    await new Promise((resolve, reject) => {
      let next = 0;
      const tick = () => {
        try {
          // Everything due is sent now, so a late tick never lowers the rate.
          for (let due = start + next * interval; next < total && due <= performance.now(); due = start + next * interval) {
            const now = performance.now();
            sentAt[next] = now;
            late[next] = now - due;
            a.send(b.username, "bench-ping", { i: next, pad });
            next += 1;
          }
          if (next < total) later(tick, start + next * interval - performance.now());
          else resolve(undefined);
        } catch (err) {
          reject(err);
        }
      };
      later(tick, start - performance.now());
    });
    await Promise.race([done, sleep(DRAIN_MS)]);
    const timed = rtt.subarray(p.warmup).filter((v) => v >= 0).sort();
    if (timed.length === 0) throw new Error(`no echo came back within ${DRAIN_MS} ms`);
    const sortedLate = late.slice().sort();
    return {
      count: timed.length,
      lost: p.n - timed.length,
      p50_ms: us(percentile(timed, 0.5)),
      p90_ms: us(percentile(timed, 0.9)),
      p99_ms: us(percentile(timed, 0.99)),
      max_ms: us(timed[timed.length - 1]),
      mean_ms: us(timed.reduce((s, v) => s + v, 0) / timed.length),
      achieved_rate: total > 1 ? Math.round((1000 * (total - 1)) / (sentAt[total - 1] - sentAt[0])) : p.rate,
      late_ms_p99: us(percentile(sortedLate, 0.99)),
      late_ms_max: us(sortedLate[total - 1]),
      samples_ms: Array.from(rtt.subarray(p.warmup).filter((v) => v >= 0), us),
    };
  });
}

/**
 * Throughput: bursts from A to B.
 * @param {Transport} transport
 * @param {SignalClient} a
 * @param {SignalClient} b
 * @param {Params} p
 */
function measureBurst(transport, a, b, p) {
  return withPair(transport, a, b, async (on) => {
    const pad = "x".repeat(p.size);
    /** @type {number[]} */
    const samples = [];
    for (let k = 0; k < p.bursts; k += 1) {
      let got = 0;
      /** @type {(at: number) => void} */
      let complete = () => {};
      /** @type {Promise<number>} */
      const completed = new Promise((resolve) => {
        complete = resolve;
      });
      on.b = (envelope) => {
        if (envelope.type === "bench-burst" && envelope.payload?.k === k && ++got === p.burst) complete(performance.now());
      };
      const started = performance.now();
      for (let i = 0; i < p.burst; i += 1) a.send(b.username, "bench-burst", { k, i, pad });
      const ended = await within(completed, BURST_TIMEOUT_MS + p.burst, `a burst of ${p.burst} envelopes`);
      samples.push(us(ended - started));
      await sleep(BURST_GAP_MS);
    }
    const mid = median(samples);
    return {
      count: samples.length,
      envelopes: p.burst,
      envelope_bytes: JSON.stringify({ target: b.username, type: "bench-burst", payload: { k: 0, i: 0, pad } }).length,
      median_ms: mid,
      envelopes_per_s: Math.round((p.burst * 1000) / mid),
      samples_ms: samples,
    };
  });
}

/**
 * @typedef {object} TransportResult
 * @property {Awaited<ReturnType<typeof measureSetup>>} [setup]
 * @property {Awaited<ReturnType<typeof measureRtt>>} [rtt]
 * @property {Awaited<ReturnType<typeof measureBurst>>} [burst]
 * @property {string} [error] why this transport's measures stopped
 */

/**
 * Measures both transports.
 * @param {Params} p
 * @param {(text: string, done: number) => void} progress `done` from 0 to 1
 */
async function runBench(p, progress) {
  const tag = Math.random().toString(36).slice(2, 10);
  const a = await SignalClient.register(`bench-${tag}-a`);
  const b = await SignalClient.register(`bench-${tag}-b`);
  /** @type {Record<Transport, TransportResult>} */
  const transports = { websocket: {}, webtransport: {} };
  const phases = /** @type {const} */ ([
    ["setup", "connection set-up", (/** @type {Transport} */ t) => measureSetup(t, a, p)],
    ["rtt", "round trips", (/** @type {Transport} */ t) => measureRtt(t, a, b, p)],
    ["burst", "bursts", (/** @type {Transport} */ t) => measureBurst(t, a, b, p)],
  ]);
  let step = 0;
  for (const [index, [key, label, measure]] of phases.entries()) {
    // Alternating the order spreads any drift (a warming cache, a busy
    // machine) over both transports.
    for (const t of index % 2 === 0 ? TRANSPORTS : [...TRANSPORTS].reverse()) {
      progress(`${LABELS[t]}: ${label}…`, step / (phases.length * TRANSPORTS.length));
      step += 1;
      if (transports[t].error) continue;
      try {
        /** @type {any} */ (transports[t])[key] = await measure(t);
      } catch (err) {
        transports[t].error = `${label}: ${err instanceof Error ? err.message : String(err)}`;
      }
    }
  }
  progress("done", 1);
  return {
    bench: "signal-gateway /bench",
    date: new Date().toISOString(),
    page: location.href,
    user_agent: navigator.userAgent,
    browser: browserName(),
    cross_origin_isolated: globalThis.crossOriginIsolated === true,
    clock_resolution_ms: clockResolution(),
    params: p,
    transports,
  };
}

function browserName() {
  const ua = navigator.userAgent;
  for (const [pattern, name] of /** @type {const} */ ([
    [/Edg\/([\d.]+)/, "Edge"],
    [/Firefox\/([\d.]+)/, "Firefox"],
    [/HeadlessChrome\/([\d.]+)/, "Headless Chrome"],
    [/Chrome\/([\d.]+)/, "Chrome"],
    [/Version\/([\d.]+).*Safari/, "Safari"],
  ])) {
    const match = ua.match(pattern);
    if (match) return `${name} ${match[1]}`;
  }
  return "unknown browser";
}

// ---- the plot ----

/** @param {string} text */
function xml(text) {
  return text.replace(/[<>&"]/g, (c) => ({ "<": "&lt;", ">": "&gt;", "&": "&amp;", '"': "&quot;" })[c] ?? c);
}

/** @param {number} v milliseconds */
function fmtMs(v) {
  if (v >= 100) return v.toFixed(0);
  if (v >= 10) return v.toFixed(1);
  if (v >= 1) return v.toFixed(2);
  return v.toFixed(3);
}

/**
 * The RTT distributions of both transports as CDFs on a log time axis, as a
 * standalone SVG document (explicit colours and fonts): the page shows it
 * and scripts/browser-bench saves it as is.
 * @param {Awaited<ReturnType<typeof runBench>>} result
 */
function cdfSvg(result) {
  const W = 760;
  const H = 420;
  const left = 64;
  const right = 24;
  const top = 84;
  const bottom = 56;
  const plotW = W - left - right;
  const plotH = H - top - bottom;
  const series = TRANSPORTS.flatMap((t) => {
    const rtt = result.transports[t].rtt;
    return rtt ? [{ t, rtt, sorted: Float64Array.from(rtt.samples_ms).sort() }] : [];
  });
  const all = series.flatMap((s) => [s.sorted[0], s.sorted[s.sorted.length - 1]]).filter((v) => v > 0);
  const lo = 10 ** Math.floor(Math.log10(Math.min(...all, 1)));
  const hi = 10 ** Math.ceil(Math.log10(Math.max(...all, lo * 10)));
  const x = (/** @type {number} */ v) => left + (plotW * (Math.log10(Math.max(v, lo)) - Math.log10(lo))) / (Math.log10(hi) - Math.log10(lo));
  const y = (/** @type {number} */ q) => top + plotH * (1 - q);
  const p = result.params;
  const out = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="Helvetica, Arial, sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="#ffffff"/>`,
    `<text x="${left}" y="26" font-size="16" font-weight="bold" fill="#161a2b">Round-trip time through signal-gateway, in the browser (CDF)</text>`,
    `<text x="${left}" y="46" fill="#5a6178">${xml(`${p.n.toLocaleString("en-US")} envelopes at ${p.rate}/s after ${p.warmup} warm-up, ${p.size} B pad · ${result.browser} · ${result.date.slice(0, 10)}`)}</text>`,
  ];
  for (let e = Math.round(Math.log10(lo)); e <= Math.round(Math.log10(hi)); e += 1) {
    for (const m of [1, 2, 5]) {
      const v = m * 10 ** e;
      if (v > hi * 1.0001) break;
      const px = x(v).toFixed(1);
      out.push(`<line x1="${px}" y1="${top}" x2="${px}" y2="${top + plotH}" stroke="${m === 1 ? "#d5d8e2" : "#eceef4"}"/>`);
      out.push(`<text x="${px}" y="${top + plotH + 18}" text-anchor="middle" fill="#5a6178">${xml(String(Number(v.toPrecision(3))))}</text>`);
    }
  }
  for (const q of [0, 0.25, 0.5, 0.75, 1]) {
    out.push(`<line x1="${left}" y1="${y(q)}" x2="${left + plotW}" y2="${y(q)}" stroke="#eceef4"/>`);
    out.push(`<text x="${left - 8}" y="${y(q) + 4}" text-anchor="end" fill="#5a6178">${q * 100}%</text>`);
  }
  for (const q of [0.9, 0.99]) {
    out.push(`<line x1="${left}" y1="${y(q).toFixed(1)}" x2="${left + plotW}" y2="${y(q).toFixed(1)}" stroke="#b8bdcc" stroke-dasharray="4 4"/>`);
    out.push(`<text x="${left + plotW + 3}" y="${(y(q) + 4).toFixed(1)}" fill="#8a90a6" font-size="10">p${q * 100}</text>`);
  }
  out.push(`<rect x="${left}" y="${top}" width="${plotW}" height="${plotH}" fill="none" stroke="#b8bdcc"/>`);
  out.push(`<text x="${left + plotW / 2}" y="${H - 14}" text-anchor="middle" fill="#161a2b">round-trip time (ms, log scale): page → gateway → page's second connection → gateway → page</text>`);
  series.forEach(({ t, rtt, sorted }, k) => {
    // One point per half pixel: at most ~1,400 points whatever the sample count.
    const points = [`${x(sorted[0]).toFixed(1)},${y(0).toFixed(1)}`];
    let lastX = -1;
    for (let i = 0; i < sorted.length; i += 1) {
      const px = Math.round(x(sorted[i]) * 2) / 2;
      if (px !== lastX) {
        if (i > 0) points.push(`${px.toFixed(1)},${y(i / sorted.length).toFixed(1)}`);
        points.push(`${px.toFixed(1)},${y((i + 1) / sorted.length).toFixed(1)}`);
        lastX = px;
      } else {
        points[points.length - 1] = `${px.toFixed(1)},${y((i + 1) / sorted.length).toFixed(1)}`;
      }
    }
    out.push(`<polyline fill="none" stroke="${COLORS[t]}" stroke-width="2" stroke-linejoin="round" points="${points.join(" ")}"/>`);
    const ly = 66;
    const lx = left + k * 340;
    out.push(`<line x1="${lx}" y1="${ly - 4}" x2="${lx + 22}" y2="${ly - 4}" stroke="${COLORS[t]}" stroke-width="3"/>`);
    out.push(`<text x="${lx + 28}" y="${ly}" fill="#161a2b"><tspan font-weight="bold">${LABELS[t]}</tspan> p50 ${fmtMs(rtt.p50_ms)} · p99 ${fmtMs(rtt.p99_ms)} · max ${fmtMs(rtt.max_ms)} ms</text>`);
  });
  out.push("</svg>");
  return out.join("\n") + "\n";
}

// ---- the page ----

const $ = (/** @type {string} */ id) => /** @type {HTMLElement} */ (document.getElementById(id));
const form = /** @type {HTMLFormElement} */ ($("form"));
const runButton = /** @type {HTMLButtonElement} */ ($("run"));
const progressBar = /** @type {HTMLProgressElement} */ ($("progress"));
const statusLine = $("status");

/** What scripts read: `state` is "ready", "running", "done" or "failed". */
const bench = {
  state: "loading",
  /** @type {Awaited<ReturnType<typeof runBench>> | null} */ result: null,
  svg: "",
  error: "",
};
/** @type {any} */ (globalThis).bench = bench;

/** @param {URLSearchParams} source */
function fillForm(source) {
  for (const [name, spec] of Object.entries(PARAMS)) {
    const input = /** @type {HTMLInputElement} */ (form.elements.namedItem(name));
    input.min = String(spec.min);
    input.max = String(spec.max);
    input.value = source.get(name) ?? String(spec.value);
  }
}

/** @returns {Params} */
function readForm() {
  /** @type {Record<string, number>} */
  const p = {};
  for (const [name, spec] of Object.entries(PARAMS)) {
    const value = Number(/** @type {HTMLInputElement} */ (form.elements.namedItem(name)).value);
    if (!Number.isInteger(value) || value < spec.min || value > spec.max) {
      throw new RangeError(`${name} must be a whole number from ${spec.min} to ${spec.max}`);
    }
    p[name] = value;
  }
  return /** @type {Params} */ (p);
}

/**
 * @param {string} label
 * @param {(r: TransportResult) => number | string | undefined} pick
 * @param {"lower" | "higher" | null} better
 * @param {(v: number) => string} [format]
 */
function row(label, pick, better, format = fmtMs) {
  return { label, pick, better, format };
}

/** @param {Awaited<ReturnType<typeof runBench>>} result */
function showResult(result) {
  const p = result.params;
  const rows = [
    row(`Connection set-up, median of ${p.setups} (ms)`, (r) => r.setup?.median_ms, "lower"),
    row("Round trip p50 (ms)", (r) => r.rtt?.p50_ms, "lower"),
    row("Round trip p90 (ms)", (r) => r.rtt?.p90_ms, "lower"),
    row("Round trip p99 (ms)", (r) => r.rtt?.p99_ms, "lower"),
    row("Round trip max (ms)", (r) => r.rtt?.max_ms, "lower"),
    row("Echoes back", (r) => (r.rtt ? `${r.rtt.count} of ${p.n}` : undefined), null),
    row(`Burst of ${p.burst}, median of ${p.bursts} (envelopes/s)`, (r) => r.burst?.envelopes_per_s, "higher", (v) => v.toLocaleString("en-US")),
    row(`Burst of ${p.burst}, median time (ms)`, (r) => r.burst?.median_ms, "lower"),
  ];
  const body = $("figures");
  body.replaceChildren();
  for (const { label, pick, better, format } of rows) {
    const tr = document.createElement("tr");
    const name = document.createElement("td");
    name.textContent = label;
    tr.append(name);
    const values = TRANSPORTS.map((t) => pick(result.transports[t]));
    const numbers = values.every((v) => typeof v === "number") ? /** @type {number[]} */ (values) : null;
    values.forEach((v, i) => {
      const td = document.createElement("td");
      td.textContent = v === undefined ? "—" : typeof v === "number" ? format(v) : v;
      if (numbers && better && numbers[0] !== numbers[1]) {
        const best = better === "lower" ? Math.min(...numbers) : Math.max(...numbers);
        if (numbers[i] === best) td.className = "better";
      }
      tr.append(td);
    });
    const ratio = document.createElement("td");
    ratio.textContent = numbers && numbers[0] > 0 ? `${(numbers[1] / numbers[0]).toFixed(2)}×` : "";
    tr.append(ratio);
    body.append(tr);
  }
  const notes = [];
  for (const t of TRANSPORTS) {
    const r = result.transports[t];
    if (r.error) notes.push(`${LABELS[t]} failed: ${r.error}.`);
    if (r.rtt) notes.push(`${LABELS[t]} sent at ${r.rtt.achieved_rate}/s, each send at most ${fmtMs(r.rtt.late_ms_max)} ms after its slot.`);
  }
  notes.push(
    "Set-up: from new WebSocket / new WebTransport to the WELCOME envelope.",
    `Round trip: ${p.n} envelopes (after ${p.warmup} not counted) sent on a fixed schedule of ${p.rate}/s, each echoed by the page's second connection; timed from just before the send to the echo's arrival.`,
    `Clock resolution ${fmtMs(result.clock_resolution_ms)} ms${result.cross_origin_isolated ? " (cross-origin isolated)" : ""}; ${result.browser}.`,
  );
  $("notes").textContent = notes.join(" ");
  bench.svg = cdfSvg(result);
  $("plot").innerHTML = bench.svg;
  $("json").textContent = JSON.stringify(result, null, 2);
  for (const id of ["results", "plot-card", "json-card"]) $(id).hidden = false;
}

form.addEventListener("submit", async (ev) => {
  ev.preventDefault();
  if (bench.state === "running") return;
  let p;
  try {
    p = readForm();
  } catch (err) {
    statusLine.textContent = err instanceof Error ? err.message : String(err);
    return;
  }
  const query = new URLSearchParams(Object.entries(p).map(([k, v]) => [k, String(v)]));
  history.replaceState(null, "", `?${query}`);
  bench.state = "running";
  bench.error = "";
  runButton.disabled = true;
  progressBar.hidden = false;
  try {
    const result = await runBench(p, (text, done) => {
      statusLine.textContent = text;
      progressBar.value = done;
    });
    bench.result = result;
    showResult(result);
    const errors = TRANSPORTS.filter((t) => result.transports[t].error);
    statusLine.textContent = errors.length ? `Done, but ${errors.map((t) => LABELS[t]).join(" and ")} failed: see below.` : "Done.";
    bench.state = "done";
  } catch (err) {
    bench.error = err instanceof Error ? err.message : String(err);
    statusLine.textContent = `Failed: ${bench.error}`;
    bench.state = "failed";
  } finally {
    runButton.disabled = false;
    progressBar.hidden = true;
  }
});

$("copy").addEventListener("click", async () => {
  const button = /** @type {HTMLButtonElement} */ ($("copy"));
  try {
    await navigator.clipboard.writeText($("json").textContent ?? "");
    button.textContent = "Copied";
  } catch {
    // No clipboard access (permissions, or not a secure context): select it for Ctrl+C.
    getSelection()?.selectAllChildren($("json"));
    button.textContent = "Selected: press Ctrl+C";
  }
  setTimeout(() => {
    button.textContent = "Copy JSON";
  }, 2000);
});

fillForm(new URLSearchParams(location.search));
$("flags").textContent = BENCH_FLAGS;
runButton.disabled = false;
bench.state = "ready";
