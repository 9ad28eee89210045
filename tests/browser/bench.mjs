// The browser half of scripts/browser-bench: opens the gateway's /bench page
// in headless Chromium, then in headless Firefox ESR, runs it with fixed
// parameters in each, and writes browser.json (machine, date, commit,
// gateway flags, and per browser its version and the page's result) and
// browser.svg (the page's own plots, Chromium's above Firefox's).
//
//   node tests/browser/bench.mjs ORIGIN OUT_DIR [GATEWAY_FLAG...]
//
// ORIGIN is a running gateway (http://127.0.0.1:PORT); the gateway flags are
// only recorded. scripts/browser-bench starts and stops the gateway.
// BENCH_BROWSERS=chromium (or firefox) runs one browser only.

import { execFileSync } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import os from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { benchResultProblems } from "./bench-result.mjs";
import { launchChromium } from "./chromium.mjs";
import { launchFirefox } from "./firefox.mjs";

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
/** The browsers measured, in this order, and how each is started. */
const LAUNCH = { chromium: launchChromium, firefox: launchFirefox };
const BROWSERS = (process.env.BENCH_BROWSERS ?? "chromium,firefox").split(",").filter(Boolean);
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

/** The figures as a Markdown table, a column per browser and transport. */
function markdown(doc) {
  const runs = Object.entries(doc.browsers);
  const p = runs[0][1].params;
  const rows = [
    [`connection set-up, median of ${p.setups} (ms)`, (r) => fmt(r.setup.median_ms)],
    [`RTT p50 / p90 / p99 / max (ms), ${p.n.toLocaleString("en-US")} at ${p.rate}/s`,
      (r) => [r.rtt.p50_ms, r.rtt.p90_ms, r.rtt.p99_ms, r.rtt.max_ms].map(fmt).join(" / ")],
    [`burst of ${p.burst.toLocaleString("en-US")}, median of ${p.bursts} (envelopes/s)`,
      (r) => r.burst.envelopes_per_s.toLocaleString("en-US")],
  ];
  const columns = runs.flatMap(([kind, run]) => ["websocket", "webtransport"].map((t) => [`${kind} ${run.version}, ${t}`, run.transports[t]]));
  return [
    `| measure | ${columns.map(([label]) => label).join(" | ")} |`,
    `|---|${columns.map(() => "---|").join("")}`,
    ...rows.map(([label, f]) => `| ${label} | ${columns.map(([, r]) => f(r)).join(" | ")} |`),
  ].join("\n");
}

/** The pages' plots (each a whole <svg>), one above the other in one SVG. */
function stacked(svgs) {
  const sizes = svgs.map((svg) => {
    const [, width, height] = svg.match(/^<svg[^>]*? width="(\d+)" height="(\d+)"/) ?? [];
    if (!width) throw new Error("the page's SVG has no width and height");
    return { width: Number(width), height: Number(height) };
  });
  const width = Math.max(...sizes.map((s) => s.width));
  let y = 0;
  const plots = svgs.map((svg, i) => {
    const placed = svg.trim().replace(/^<svg /, `<svg x="0" y="${y}" `);
    y += sizes[i].height;
    return placed;
  });
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${y}" viewBox="0 0 ${width} ${y}">`,
    ...plots,
    "</svg>",
    "",
  ].join("\n");
}

/** Runs the page in one browser; returns its version, result and plot. */
async function measure(kind) {
  const browser = await LAUNCH[kind]();
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    const problems = [];
    page.on("console", (msg) => msg.type() === "error" && problems.push(msg.text()));
    page.on("pageerror", (err) => problems.push(err.message));
    const query = new URLSearchParams(Object.entries(PARAMS).map(([k, v]) => [k, String(v)]));
    await page.goto(`${origin}/bench?${query}`);
    await page.getByRole("button", { name: "Run" }).click();
    console.log(`running ${origin}/bench?${query} in ${kind} ${browser.version()}`);
    await page.waitForFunction(() => ["done", "failed"].includes(globalThis.bench.state), null, { timeout: RUN_TIMEOUT_MS, polling: 500 });
    mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: join(ARTIFACTS, `bench-${kind}.png`), fullPage: true });
    const { state, error, result, svg } = await page.evaluate(() => globalThis.bench);
    if (state !== "done") throw new Error(`${kind}: the page failed: ${error}`);
    problems.push(...benchResultProblems(result, PARAMS));
    if (problems.length) throw new Error(`${kind}: the result is not well-formed:\n  ${problems.join("\n  ")}`);
    return { version: browser.version(), result, svg };
  } finally {
    await browser.close();
  }
}

async function main() {
  const started = new Date();
  const quiet = [];
  const loadBefore = readFileSync("/proc/loadavg", "utf8").trim();
  const runs = {};
  for (const kind of BROWSERS) {
    if (!LAUNCH[kind]) throw new Error(`unknown browser ${kind} in BENCH_BROWSERS (${Object.keys(LAUNCH).join(", ")})`);
    quiet.push(await waitQuiet());
    runs[kind] = await measure(kind);
  }
  // The run's own fields, then each browser's version and page result (its
  // date is when that page finished; the run's is when it started).
  const doc = {
    bench: Object.values(runs)[0].result.bench,
    date: started.toISOString(),
    git_commit: git("rev-parse", "HEAD"),
    git_dirty: git("status", "--porcelain", "--untracked-files=no") !== "",
    machine: machine(),
    gateway_flags: gatewayFlags,
    busy_pct_of_a_core_before: quiet,
    loadavg_before: loadBefore,
    loadavg_after: readFileSync("/proc/loadavg", "utf8").trim(),
    run_s: Math.round((Date.now() - started.getTime()) / 100) / 10,
    browsers: Object.fromEntries(Object.entries(runs).map(([kind, { version, result }]) => [kind, { version, ...result }])),
  };
  mkdirSync(outDir, { recursive: true });
  writeFileSync(join(outDir, "browser.json"), JSON.stringify(doc, null, 2) + "\n");
  writeFileSync(join(outDir, "browser.svg"), stacked(Object.values(runs).map((r) => r.svg)));
  console.log(`\n${markdown(doc)}\n`);
  console.log(`wrote ${join(outDir, "browser.json")} and browser.svg (page screenshots: ${join(ARTIFACTS, "bench-*.png")})`);
}

const watchdog = setTimeout(() => {
  console.error("FAIL: the browser bench took too long");
  process.exit(1);
}, BROWSERS.length * (RUN_TIMEOUT_MS + QUIET_WAIT_MS + 60_000));
main().then(
  () => clearTimeout(watchdog),
  (err) => {
    console.error(`FAIL: ${err.message ?? err}`);
    process.exit(1);
  },
);
