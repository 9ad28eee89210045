// What a well-formed result of the /bench page is: checked by the browser
// test (with small parameters) and by scripts/browser-bench before it
// writes bench-results/browser.json. Shapes and counts, not the figures.

const TRANSPORTS = ["websocket", "webtransport"];

/**
 * @param {any} result what the page put in `globalThis.bench.result`
 * @param {Record<string, number>} params what the page was asked to run
 * @returns {string[]} what is wrong; empty when well-formed
 */
export function benchResultProblems(result, params) {
  const problems = [];
  const positive = (value, what) => {
    if (!(typeof value === "number" && Number.isFinite(value) && value > 0)) {
      problems.push(`${what} is ${JSON.stringify(value)}, not a finite positive number`);
    }
  };
  const nonNegative = (value, what) => {
    if (!(typeof value === "number" && Number.isFinite(value) && value >= 0)) {
      problems.push(`${what} is ${JSON.stringify(value)}, not a finite number >= 0`);
    }
  };
  const equal = (value, expected, what) => {
    if (JSON.stringify(value) !== JSON.stringify(expected)) {
      problems.push(`${what} is ${JSON.stringify(value)}, expected ${JSON.stringify(expected)}`);
    }
  };
  const samples = (values, count, what) => {
    if (!Array.isArray(values)) {
      problems.push(`${what} is not an array`);
      return;
    }
    equal(values.length, count, `${what}.length`);
    values.forEach((v, i) => positive(v, `${what}[${i}]`));
  };
  const ordered = (values, what) => {
    if (values.some((v, i) => i > 0 && v < values[i - 1])) problems.push(`${what} out of order: ${values.join(" > ")}`);
  };

  for (const field of ["bench", "date", "page", "user_agent", "browser"]) {
    if (typeof result?.[field] !== "string" || result[field] === "") problems.push(`${field} missing`);
  }
  if (problems.length) return problems;
  equal(typeof result.cross_origin_isolated, "boolean", "typeof cross_origin_isolated");
  positive(result.clock_resolution_ms, "clock_resolution_ms");
  equal(result.params, params, "params");
  equal(Object.keys(result.transports ?? {}).sort(), TRANSPORTS, "transports");
  for (const t of TRANSPORTS) {
    const r = result.transports?.[t];
    if (!r) continue;
    if (r.error !== undefined) problems.push(`${t} failed: ${r.error}`);
    const { setup, rtt, burst } = r;
    if (!setup || !rtt || !burst) {
      problems.push(`${t} lacks ${["setup", "rtt", "burst"].filter((k) => !r[k]).join(", ")}`);
      continue;
    }
    equal(setup.count, params.setups, `${t}.setup.count`);
    for (const k of ["median_ms", "min_ms", "max_ms"]) positive(setup[k], `${t}.setup.${k}`);
    ordered([setup.min_ms, setup.median_ms, setup.max_ms], `${t}.setup min, median, max`);
    samples(setup.samples_ms, params.setups, `${t}.setup.samples_ms`);

    equal(rtt.count, params.n, `${t}.rtt.count`);
    equal(rtt.lost, 0, `${t}.rtt.lost`);
    for (const k of ["p50_ms", "p90_ms", "p99_ms", "max_ms", "mean_ms", "achieved_rate"]) positive(rtt[k], `${t}.rtt.${k}`);
    for (const k of ["late_ms_p99", "late_ms_max"]) nonNegative(rtt[k], `${t}.rtt.${k}`);
    ordered([rtt.p50_ms, rtt.p90_ms, rtt.p99_ms, rtt.max_ms], `${t}.rtt p50, p90, p99, max`);
    samples(rtt.samples_ms, params.n, `${t}.rtt.samples_ms`);

    equal(burst.count, params.bursts, `${t}.burst.count`);
    equal(burst.envelopes, params.burst, `${t}.burst.envelopes`);
    for (const k of ["envelope_bytes", "median_ms", "envelopes_per_s"]) positive(burst[k], `${t}.burst.${k}`);
    samples(burst.samples_ms, params.bursts, `${t}.burst.samples_ms`);
  }
  return problems;
}
