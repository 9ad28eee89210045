// The browser half of scripts/browser-bench: opens the gateway's /bench page
// in headless Chromium, runs it with fixed parameters, and writes
// browser.json (the page's result plus machine, date, commit, Chromium
// version, gateway flags) and browser.svg (the page's own plot).
//
//   node tests/browser/bench.mjs ORIGIN OUT_DIR [GATEWAY_FLAG...]
//
// ORIGIN is a running gateway (http://127.0.0.1:PORT); the gateway flags are
// only recorded. scripts/browser-bench starts and stops the gateway.

import { execFileSync } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import os from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { benchResultProblems } from "./bench-result.mjs";
import { launchChromium } from "./chromium.mjs";

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = resolve(HERE, "../..");
const ARTIFACTS = join(HERE, "artifacts");

/**
 * A few thousand envelopes at a steady 500/s (10 s per transport), as the
 * generator's light-load latency run; 20 set-ups; five bursts of 2,000.
 */
const PARAMS = { n: 5000, rate: 500, warmup: 500, size: 200, setups: 20, burst: 2000, bursts: 5 };
/** The page run takes about 30 s; this bounds it on a slow machine. */
const RUN_TIMEOUT_MS = 180_000;
/** Before the run, wait this long at most for the machine to be quiet... */
const QUIET_WAIT_MS = 30_000;
/** ...that is, less than this much of one core busy. */
const QUIET_PCT = 15;

const [origin, outDir, ...gatewayFlags] = process.argv.slice(2);
if (!origin || !outDir) {
  console.error("usage: node tests/browser/bench.mjs ORIGIN OUT_DIR [GATEWAY_FLAG...]");
  process.exit(2);
}

function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

/** CPU time of the whole machine (all cores), from /proc/stat. */
function cpuTicks() {
  const [, ...fields] = readFileSync("/proc/stat", "utf8").split("\n")[0].trim().split(/\s+/);
  const ticks = fields.map(Number);
  const idle = ticks[3] + (ticks[4] ?? 0);
  return { busy: ticks.reduce((s, v) => s + v, 0) - idle, total: ticks.reduce((s, v) => s + v, 0) };
}

/** Percent of one core busy over `ms`. */
async function busyPct(ms) {
  const a = cpuTicks();
  await sleep(ms);
  const b = cpuTicks();
  return (100 * os.cpus().length * (b.busy - a.busy)) / Math.max(1, b.total - a.total);
}

/** Waits (bounded) for a quiet machine; returns the last reading. */
async function waitQuiet() {
  const deadline = Date.now() + QUIET_WAIT_MS;
  for (;;) {
    const pct = await busyPct(1000);
    if (pct < QUIET_PCT || Date.now() > deadline) return Math.round(pct);
    console.log(`waiting for a quiet machine (${pct.toFixed(0)}% of a core busy)`);
  }
}

function git(...args) {
  try {
    return execFileSync("git", args, { cwd: ROOT, encoding: "utf8" }).trim();
  } catch {
    return "";
  }
}

function machine() {
  const cpu = readFileSync("/proc/cpuinfo", "utf8").match(/^model name\s*:\s*(.+)$/m)?.[1] ?? os.cpus()[0]?.model ?? "";
  return {
    cpu_model: cpu,
    cores: os.cpus().length,
    memory_gib: Math.round(os.totalmem() / 2 ** 30 * 10) / 10,
    kernel: os.release(),
    node: process.version,
  };
}

const fmt = (v) => (v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v >= 1 ? v.toFixed(2) : v.toFixed(3));

/** The figures as a Markdown table, as the README shows them. */
function markdown(doc) {
  const ws = doc.transports.websocket;
  const wt = doc.transports.webtransport;
  const p = doc.params;
  const rows = [
    [`connection set-up, median of ${p.setups} (ms)`, (r) => fmt(r.setup.median_ms)],
    [`RTT p50 / p90 / p99 / max (ms), ${p.n.toLocaleString("en-US")} at ${p.rate}/s`,
      (r) => [r.rtt.p50_ms, r.rtt.p90_ms, r.rtt.p99_ms, r.rtt.max_ms].map(fmt).join(" / ")],
    [`burst of ${p.burst.toLocaleString("en-US")}, median of ${p.bursts} (envelopes/s)`,
      (r) => r.burst.envelopes_per_s.toLocaleString("en-US")],
  ];
  return [
    "| measure | WebSocket | WebTransport |",
    "|---|---|---|",
    ...rows.map(([label, f]) => `| ${label} | ${f(ws)} | ${f(wt)} |`),
  ].join("\n");
}

async function main() {
  const started = new Date();
  const quietPct = await waitQuiet();
  const loadBefore = readFileSync("/proc/loadavg", "utf8").trim();
  const browser = await launchChromium();
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    const problems = [];
    page.on("console", (msg) => msg.type() === "error" && problems.push(msg.text()));
    page.on("pageerror", (err) => problems.push(err.message));
    const query = new URLSearchParams(Object.entries(PARAMS).map(([k, v]) => [k, String(v)]));
    await page.goto(`${origin}/bench?${query}`);
    await page.getByRole("button", { name: "Run" }).click();
    console.log(`running ${origin}/bench?${query} in Chromium ${browser.version()}`);
    await page.waitForFunction(() => ["done", "failed"].includes(globalThis.bench.state), null, { timeout: RUN_TIMEOUT_MS, polling: 500 });
    mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: join(ARTIFACTS, "bench.png"), fullPage: true });
    const { state, error, result, svg } = await page.evaluate(() => globalThis.bench);
    if (state !== "done") throw new Error(`the page failed: ${error}`);
    problems.push(...benchResultProblems(result, PARAMS));
    if (problems.length) throw new Error(`the result is not well-formed:\n  ${problems.join("\n  ")}`);

    // The run's own fields first; then the page's (its date is when the
    // page finished, the run's is when it started).
    const doc = {
      bench: result.bench,
      date: started.toISOString(),
      git_commit: git("rev-parse", "HEAD"),
      git_dirty: git("status", "--porcelain", "--untracked-files=no") !== "",
      chromium: browser.version(),
      machine: machine(),
      gateway_flags: gatewayFlags,
      busy_pct_of_a_core_before: quietPct,
      loadavg_before: loadBefore,
      loadavg_after: readFileSync("/proc/loadavg", "utf8").trim(),
      run_s: Math.round((Date.now() - started.getTime()) / 100) / 10,
    };
    for (const [key, value] of Object.entries(result)) if (!(key in doc)) doc[key] = value;
    mkdirSync(outDir, { recursive: true });
    writeFileSync(join(outDir, "browser.json"), JSON.stringify(doc, null, 2) + "\n");
    writeFileSync(join(outDir, "browser.svg"), svg);
    console.log(`\n${markdown(doc)}\n`);
    console.log(`wrote ${join(outDir, "browser.json")} and browser.svg (page screenshot: ${join(ARTIFACTS, "bench.png")})`);
  } finally {
    await browser.close();
  }
}

const watchdog = setTimeout(() => {
  console.error("FAIL: the browser bench took too long");
  process.exit(1);
}, RUN_TIMEOUT_MS + QUIET_WAIT_MS + 60_000);
main().then(
  () => clearTimeout(watchdog),
  (err) => {
    console.error(`FAIL: ${err.message ?? err}`);
    process.exit(1);
  },
);
