#!/usr/bin/env python3
"""Runs the signal-bench scenarios and writes bench-results/ (stdlib only).

scripts/bench builds the binaries, installs PeerJS server and socket.io and
raises the open-file limit, then runs this driver. For every run it starts a
fresh server (signal-gateway, or PeerJS server or socket.io under node)
pinned to core 0, runs one scenario with signal-bench pinned to core 1, and
stops the server. Systems are interleaved in a rotating order (ABCD, BCDA,
CDAB, ...) so drift hits them alike, each configuration runs --reps times, runs polluted by foreign
CPU load are repeated, and comparisons between systems are ratios of runs
made in the same repetition. Where a scenario compares variants of the
gateway over WebSocket (the embedded identity store, JWT identities), they
join the rotation as units of their own, e.g. `ws+embedded`.

Cluster units (throughput and latency, over ws and wt): `+cross` starts a
redis-server and two gateway nodes on it and puts every pair's A on one
node and its B on the other, so every envelope crosses nodes; `+cluster`
starts one node with Redis and keeps both users on it (the cost of cluster
mode on the local path). All their processes are pinned to core 0, like the
single server, and their CPU is summed (gateway A + gateway B + Redis), with
each one's share reported beside the total.

When the register scenario runs, signal-bench-fsync first measures how
long one fdatasync takes where the embedded store's data directories go:
the floor under its commits, printed beside the registration figures.

Outputs: bench-results/latest.json (machine, date, commit, one object per
scenario x configuration x system (and variant) with medians and min-max, the raw runs,
paired ratios and the targets), bench-results/latest.md (the tables, also
printed) and bench-results/chart.svg.
"""

import argparse
import atexit
import datetime
import json
import math
import os
import platform
import secrets
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GATEWAY = os.path.join(ROOT, "target", "release", "signal-gateway")
BENCH = os.path.join(ROOT, "target", "release", "signal-bench")
FLOOR = os.path.join(ROOT, "target", "release", "signal-bench-floor")
KEYPAIR = os.path.join(ROOT, "target", "release", "signal-bench-keypair")
FSYNC_PROBE = os.path.join(ROOT, "target", "release", "signal-bench-fsync")
PEERJS_DIR = os.path.join(ROOT, "target", "bench-peerjs")
PEERJS_SERVER = os.path.join(ROOT, "bench", "peerjs", "server.cjs")
SOCKETIO_DIR = os.path.join(ROOT, "target", "bench-socketio")
SOCKETIO_SERVER = os.path.join(ROOT, "bench", "socketio", "server.cjs")
RUN_DIR = os.path.join(ROOT, "target", "bench-run")
PID_DIR = os.path.join(RUN_DIR, "pids")
CERT = os.path.join(RUN_DIR, "certs", "cert.pem")
# Embedded-store runs get a fresh --data-dir under here, removed after the run.
DATA_DIR = os.path.join(RUN_DIR, "data")
JWT_DIR = os.path.join(RUN_DIR, "jwt")
ES256_PRIVATE = os.path.join(JWT_DIR, "es256-private.pem")
ES256_PUBLIC = os.path.join(JWT_DIR, "es256-public.pem")
# A fresh HS256 secret per invocation; it reaches the gateway and the
# generator through their environment, not their command lines.
JWT_SECRET = secrets.token_hex(32)

SYSTEMS = ["ws", "wss", "wt", "peerjs", "socketio"]
# The room scenario's one configuration.
# References: run in the room scenario only, beside the systems.
REFERENCES = ["floor"]
ROOMS_CONFIG = {"rooms": 10, "members": 10, "rate": 2}
# The same rooms at ten times the rate (18k delivered/s).
ROOMS_FAST = {"rooms": 10, "members": 10, "rate": 20}
LABELS = {"ws": "gateway WebSocket", "wss": "gateway WebSocket over TLS", "wt": "gateway WebTransport",
          "peerjs": "PeerJS server", "socketio": "socket.io server",
          "floor": "floor (signal-bench-floor)"}
COLORS = {"ws": "#2b6cb0", "wss": "#2c7a7b", "wt": "#2f855a", "peerjs": "#c05621", "socketio": "#6b46c1"}
SERVERS = {"ws": "signal-gateway", "wss": "signal-gateway", "wt": "signal-gateway", "peerjs": "peerjs",
           "socketio": "socket.io", "floor": "signal-bench-floor"}
# Variants of the gateway over WebSocket, run beside the systems where a
# scenario compares them: registered identities kept in the embedded store
# (redb, registrations committed in batches, one fsync each) instead of memory, and JWTs minted by
# the generator instead of registered names (the gateway's --auth is then
# its default with a key, `both`).
VARIANTS = {"embedded": "embedded store", "jwt-hs256": "JWT HS256", "jwt-es256": "JWT ES256"}
# Cluster variants of the gateway over ws and wt, for the relay scenarios:
# one node with Redis (both users on it), or two nodes with Redis and every
# envelope crossing from one to the other.
CLUSTER_VARIANTS = {"cluster": "cluster mode, same node (1 node + Redis)",
                    "cross": "cross-node (2 nodes + Redis)"}
CLUSTER_UNITS = [f"{system}+{variant}" for variant in CLUSTER_VARIANTS for system in ("ws", "wt")]
# Relay variants: the peers acknowledge what they receive as client.js does
# (`ACK` every 32 envelopes or 1 s), so the gateway keeps each envelope for
# a resume until it is acknowledged (docs/resume.md).
RELAY_VARIANTS = {"ack": "ACKs as client.js"}
# How many gateway nodes each cluster variant runs (named a, b, ...).
CLUSTER_NODES = {"cluster": 1, "cross": 2}
# Redis as the README tells operators to run it: the append-only file,
# synced on every write (as tests/common/redis.rs does). Relaying touches
# it only through PUBLISH, which is not written to the file; route claims,
# leases and registrations are, outside the measured window.
REDIS_FLAGS = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "yes", "--appendfsync", "always",
               "--daemonize", "no", "--loglevel", "warning"]

# Registrations in flight at once in the register scenario: as many as the
# embedded store's group commit is judged by (issue 31).
REGISTER_CLIENTS = 64

# A run whose window saw more than this much CPU (percent of one core) used
# by anything but the server and the generator is repeated.
FOREIGN_MAX_PCT = 10.0
RETRIES = 2
# Before a run, wait for the machine to be quiet: at most QUIET_WAIT_S per
# run and QUIET_BUDGET_S over the whole invocation (so a busy machine cannot
# stretch it without bound; runs made anyway are gated as above).
QUIET_PCT = 15.0
QUIET_WAIT_S = 60.0
QUIET_BUDGET_S = {"quick": 30.0, "full": 240.0}
QUIET_LEFT = [0.0]

# Limits raised so that the bench measures the relay, not the abuse limits.
GATEWAY_FLAGS = [
    "--worker-threads", "1",
    "--envelope-rate", "10000000", "--envelope-burst", "10000000",
    "--connect-rate", "1000000", "--connect-burst", "1000000",
    "--register-rate", "1000000", "--register-burst", "1000000",
    "--max-connections", "200000", "--max-identities", "1000000",
    # Every identity is registered from 127.0.0.1.
    "--max-identities-per-ip", "1000000",
    "--queue-envelopes", "4096", "--queue-bytes", "16777216",
    "--shutdown-timeout", "1s",
    # Identities in memory, as the peers keep theirs: the scenarios measure
    # the relay and set-up, not the disk (the `ws+embedded` unit compares
    # the two stores).
    "--store", "memory",
]


def variant_options(variant, data_dir):
    """(gateway flags, signal-bench arguments, environment of both) of a variant."""
    if variant == "embedded":
        # The gateway lets a flag given again override the first, so this
        # --store replaces GATEWAY_FLAGS' memory.
        return ["--store", "embedded", "--data-dir", data_dir], [], {}
    if variant == "jwt-hs256":
        return [], ["--identity", "jwt-hs256"], {"SIGNAL_JWT_SECRET": JWT_SECRET, "BENCH_JWT_SECRET": JWT_SECRET}
    if variant == "jwt-es256":
        return ["--jwt-public-key", ES256_PUBLIC], ["--identity", "jwt-es256", "--jwt-key", ES256_PRIVATE], {}
    return [], [], {}


def unit_parts(unit):
    """`ws+embedded` -> ("ws", "embedded"); `wt` -> ("wt", "")."""
    system, _, variant = unit.partition("+")
    return system, variant


def unit_label(system, variant=""):
    if not variant:
        return LABELS[system]
    return LABELS[system] + ", " + (VARIANTS.get(variant) or RELAY_VARIANTS.get(variant) or CLUSTER_VARIANTS[variant])


# --- plans -------------------------------------------------------------------


def plan(quick):
    """(scenario, config key, bench arguments, units) for every configuration;
    the units are the systems, and the variants a configuration compares."""
    tw, td = (1, 2) if quick else (2, 5)
    lw, ld = (1, 3) if quick else (2, 10)
    items = []
    for pairs, window, payload in [(100, 10, 200), (10, 1, 200), (100, 10, 4096)]:
        # Relaying with the embedded store shows that durable registrations
        # leave the relay alone; once is enough. The cluster units relay
        # small envelopes, saturated and one in flight.
        extra = ["ws+embedded"] if (pairs, window, payload) == (100, 10, 200) else []
        extra += ["ws+ack"] if payload == 200 else []
        extra += CLUSTER_UNITS if payload == 200 else []
        items.append(("throughput", {"pairs": pairs, "window": window, "payload_bytes": payload},
                      ["throughput", "--pairs", pairs, "--window", window,
                       "--payload-bytes", payload, "--warmup", tw, "--duration", td], SYSTEMS + extra))
    for pairs, rate in [(100, 10), (100, 100)]:
        items.append(("latency", {"pairs": pairs, "rate": rate, "payload_bytes": 200},
                      ["latency", "--pairs", pairs, "--rate", rate, "--payload-bytes", 200,
                       "--warmup", lw, "--duration", ld], SYSTEMS + CLUSTER_UNITS))
    # Rooms: 10 rooms of 10, each member sending 2/s to its room, 1,800
    # delivered/s (beside the 2k relayed/s of the 1:1 latency scenario), and
    # 20/s, 18k delivered/s (beside the 20k relayed/s); with the floor, the
    # least any server can do for them.
    for config in (ROOMS_CONFIG, ROOMS_FAST):
        items.append(("rooms", config,
                      ["rooms", "--rooms", config["rooms"], "--members", config["members"],
                       "--rate", config["rate"], "--payload-bytes", 200, "--warmup", lw, "--duration", ld],
                      ["ws", "wt", "socketio", "floor"]))
    conns = 1000 if quick else 2000
    items.append(("setup", {"connections": conns, "concurrency": 32},
                  ["setup", "--connections", conns, "--concurrency", 32],
                  SYSTEMS + ["ws+" + v for v in VARIANTS]))
    # Bounded by time and count: memory registers ~90k/s, the embedded
    # store as many as its batched commits (one fsync each) carry. Against
    # each store: memory, embedded, and Redis (one node, `+cluster`).
    rd = 2 if quick else 5
    items.append(("register", {"duration_s": rd, "concurrency": REGISTER_CLIENTS},
                  ["register", "--count", 100000 * rd, "--duration", rd, "--concurrency", REGISTER_CLIENTS,
                   "--warmup", 100 if quick else 200],
                  ["ws", "ws+embedded", "ws+cluster"]))
    levels = [1000] if quick else [1000, 10000]
    items.append(("idle", {"levels": levels},
                  ["idle", "--levels", ",".join(map(str, levels)), "--settle", 2 if quick else 3], SYSTEMS))
    return items


# --- processes -----------------------------------------------------------------

STARTED = []


def cleanup():
    for proc in list(STARTED):
        stop(proc)
    shutil.rmtree(DATA_DIR, ignore_errors=True)


def stop(proc):
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        except ProcessLookupError:
            pass
    if proc in STARTED:
        STARTED.remove(proc)
    try:
        os.remove(os.path.join(PID_DIR, str(proc.pid)))
    except OSError:
        pass


def on_signal(signum, _frame):
    cleanup()
    sys.exit(128 + signum)


def free_port():
    """A port free on TCP and UDP (the gateway uses both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                    udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


def pin(core, pinned):
    return ["taskset", "-c", str(core)] if pinned else []


def spawn(cmd, log_path, env):
    """Starts `cmd` in its own session, logging to `log_path`; recorded so
    that it is stopped by its PID whatever happens."""
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    log.close()
    STARTED.append(proc)
    with open(os.path.join(PID_DIR, str(proc.pid)), "w") as f:
        f.write(" ".join(cmd) + "\n")
    return proc


def redis_answers(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def start_redis(pinned, log_path, data_dir):
    """A fresh redis-server with its files in `data_dir`; returns it and
    its port once it answers PING."""
    redis = shutil.which("redis-server")
    if not redis:
        raise RuntimeError("redis-server is missing (scripts/bench installs Debian's redis-server package)")
    os.makedirs(data_dir, exist_ok=True)
    port = free_port()
    cmd = pin(0, pinned) + [redis, "--port", str(port), "--dir", data_dir] + REDIS_FLAGS
    proc = spawn(cmd, log_path, dict(os.environ))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited at start; see {log_path}")
        if redis_answers(port):
            return proc, port
        time.sleep(0.05)
    stop(proc)
    raise RuntimeError(f"redis-server not ready in 10 s; see {log_path}")


def wait_ready(port, what, log_path):
    """Waits (bounded) until a node's /readyz says it has joined the cluster."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} not ready (GET /readyz) in 15 s; see {log_path}")


def start_cluster(system, variant, pinned, log_base, data_dir):
    """Redis and one node (`cluster`) or two (`cross`), all pinned to core
    0; returns the processes (gateway A first), gateway A's port, and the
    generator's arguments naming the other processes to measure (and, for
    `cross`, the node B users connect to)."""
    procs = []
    try:
        redis, redis_port = start_redis(pinned, f"{log_base}-redis.log", data_dir)
        procs.append(redis)
        url = f"redis://127.0.0.1:{redis_port}"
        ports = []
        for node in "ab"[:CLUSTER_NODES[variant]]:
            log_path = f"{log_base}-gateway-{node}.log"
            # Identities live in Redis on a node: this --store replaces
            # GATEWAY_FLAGS' memory (a flag given again overrides the first).
            flags = ["--redis", url, "--node-id", node, "--advertise-host", "127.0.0.1", "--store", "redis"]
            proc, port = start_server(system, pinned, log_path, flags)
            procs.append(proc)
            wait_ready(port, f"gateway node {node}", log_path)
            ports.append(port)
    except BaseException:
        for proc in reversed(procs):
            stop(proc)
        raise
    # Gateway A is the generator's --server-pid; Redis and B are added to it.
    gateways = procs[1:]
    args = ["--server-name", "gateway-a"]
    if variant == "cross":
        args += ["--peer-addr", f"127.0.0.1:{ports[1]}", "--also-measure", f"gateway-b={gateways[1].pid}"]
    args += ["--also-measure", f"redis={redis.pid}"]
    return gateways + [redis], ports[0], args


def start_server(system, pinned, log_path, flags=(), env_extra=None):
    """Starts `system` with extra gateway `flags` and environment; returns
    the process and its port once it answers."""
    port = free_port()
    context = None
    if system == "peerjs":
        cmd = pin(0, pinned) + ["node", PEERJS_SERVER, PEERJS_DIR, str(port)]
        ready = f"http://127.0.0.1:{port}/peerjs/id"
        env = dict(os.environ)
    elif system == "socketio":
        cmd = pin(0, pinned) + ["node", SOCKETIO_SERVER, SOCKETIO_DIR, str(port)]
        ready = f"http://127.0.0.1:{port}/healthcheck"
        env = dict(os.environ)
    elif system == "floor":
        cmd = pin(0, pinned) + [FLOOR, "--listen", f"127.0.0.1:{port}"]
        ready = None
        env = dict(os.environ)
    else:
        certs = os.path.dirname(CERT)
        cmd = pin(0, pinned) + [GATEWAY, "--listen", f"127.0.0.1:{port}", "--cert-dir", certs] + GATEWAY_FLAGS
        cmd += list(flags)
        ready = f"http://127.0.0.1:{port}/healthcheck"
        if system == "wss":
            cmd.append("--tls")
            ready = f"https://127.0.0.1:{port}/healthcheck"
            # Only to see that it answers; the generator verifies the certificate.
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        # No per-registration INFO line (PeerJS logs nothing per connection either).
        env = dict(os.environ, RUST_LOG="signal_gateway=warn", **(env_extra or {}))
    proc = spawn(cmd, log_path, env)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{system} server exited at start; see {log_path}")
        if ready is None:
            # No HTTP: ready once it accepts a connection.
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return proc, port
            except OSError:
                time.sleep(0.1)
                continue
        try:
            with urllib.request.urlopen(ready, timeout=1, context=context) as answer:
                if answer.status == 200:
                    return proc, port
        except OSError:
            time.sleep(0.1)
    stop(proc)
    raise RuntimeError(f"{system} server not ready in 15 s; see {log_path}")


def machine_busy_pct(interval=1.0):
    def busy():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return v[0] + v[1] + v[2] + v[5] + v[6]
    tck = os.sysconf("SC_CLK_TCK")
    a = busy()
    time.sleep(interval)
    return 100.0 * (busy() - a) / tck / interval


def wait_quiet():
    """Waits (bounded) until the machine is idle; returns the last busy %."""
    started = time.monotonic()
    deadline = started + min(QUIET_WAIT_S, QUIET_LEFT[0])
    try:
        while True:
            pct = machine_busy_pct(0.5)
            if pct < QUIET_PCT or time.monotonic() > deadline:
                if pct >= QUIET_PCT:
                    log(f"  machine still busy ({pct:.0f}% of a core); running anyway")
                return pct
            log(f"  waiting for a quiet machine ({pct:.0f}% of a core busy)")
            time.sleep(2)
    finally:
        QUIET_LEFT[0] = max(0.0, QUIET_LEFT[0] - (time.monotonic() - started))


def foreign_pct(result):
    if result.get("scenario") == "idle":
        return max((lvl["cpu"]["foreign_cpu_pct"] for lvl in result["levels"]), default=0.0)
    return result["cpu"]["foreign_cpu_pct"]


def run_one(unit, args, pinned, label, tag):
    """One run on a fresh server; repeated while foreign load pollutes it."""
    system, variant = unit_parts(unit)
    attempts = []
    for attempt in range(RETRIES + 1):
        wait_quiet()
        name = f"{tag}-{unit}-{attempt}"
        log_path = os.path.join(RUN_DIR, "logs", f"{name}.log")
        data_dir = os.path.join(DATA_DIR, name)
        flags, bench_args, env_extra = variant_options(variant, data_dir)
        if system == "wss":
            bench_args = bench_args + ["--tls-cert", CERT]
        try:
            if variant in CLUSTER_VARIANTS:
                procs, port, cluster_args = start_cluster(system, variant, pinned, log_path[:-4], data_dir)
                bench_args = bench_args + cluster_args
            else:
                proc, port = start_server(system, pinned, log_path, flags, env_extra)
                procs = [proc]
            try:
                cmd = pin(1, pinned) + [
                    BENCH, "--system", system, "--addr", f"127.0.0.1:{port}",
                    "--server-pid", str(procs[0].pid), "--clk-tck", str(os.sysconf("SC_CLK_TCK")),
                    "--label", label,
                ] + bench_args + [str(a) for a in args] + (["--ack"] if variant == "ack" else [])
                t0 = time.monotonic()
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                                     env=dict(os.environ, RUST_BACKTRACE="0", **env_extra))
                elapsed = time.monotonic() - t0
            finally:
                # Gateways before Redis: a node losing Redis first only logs.
                for proc in procs:
                    stop(proc)
        finally:
            shutil.rmtree(data_dir, ignore_errors=True)
        if out.returncode != 0 or not out.stdout.strip():
            err = out.stderr.strip().splitlines()[-3:]
            log(f"  {unit}: FAILED (exit {out.returncode}): {' | '.join(err)}")
            attempts.append({"error": " | ".join(err), "exit": out.returncode})
            continue
        result = json.loads(out.stdout.strip().splitlines()[-1])
        result["run_s"] = round(elapsed, 2)
        result["attempt"] = attempt
        noisy = foreign_pct(result) > FOREIGN_MAX_PCT
        result["noisy"] = noisy
        if noisy and attempt < RETRIES:
            log(f"  {unit}: foreign CPU {foreign_pct(result):.0f}% > {FOREIGN_MAX_PCT:.0f}%; repeating")
            attempts.append({"rejected_foreign_cpu_pct": round(foreign_pct(result), 1)})
            continue
        result["rejected"] = attempts
        return result
    return {"system": system, "failed": True, "rejected": attempts}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# --- figures -------------------------------------------------------------------


def figures(result):
    """The headline figures of one run, flat, per configuration key."""
    s = result["scenario"]
    # A cluster's processes, each one's share of the CPU per relayed envelope.
    by_process = result.get("server_cpu_us_per_relayed_by_process") or {}
    split = {f"server_cpu_us_per_relayed_{name.replace('-', '_')}": us
             for name, us in by_process.items()} if len(by_process) > 1 else {}
    if s == "throughput":
        return [({}, split | {
            "relayed_per_s": result["relayed_per_s"],
            "server_cpu_us_per_relayed": result["server_cpu_us_per_relayed"],
            "server_cpu_pct": result["cpu"]["server_cpu_pct"],
            "client_cpu_pct": result["cpu"]["client_cpu_pct"],
            "rtt_p50_us": result["rtt"]["p50_us"],
            "rtt_p99_us": result["rtt"]["p99_us"],
            "foreign_cpu_pct": result["cpu"]["foreign_cpu_pct"],
        })]
    if s == "latency":
        return [({}, split | {
            "relayed_per_s": result["relayed_per_s"],
            "rtt_p50_us": result["rtt"]["p50_us"],
            "rtt_p90_us": result["rtt"]["p90_us"],
            "rtt_p99_us": result["rtt"]["p99_us"],
            "rtt_p999_us": result["rtt"]["p999_us"],
            "rtt_max_us": result["rtt"]["max_us"],
            "rtt_from_schedule_p99_us": result["rtt_from_schedule"]["p99_us"],
            "send_lag_p99_us": result["send_lag"]["p99_us"],
            "server_cpu_pct": result["cpu"]["server_cpu_pct"],
            "server_cpu_us_per_relayed": result["server_cpu_us_per_relayed"],
            "client_cpu_pct": result["cpu"]["client_cpu_pct"],
            "lost_in_window": result["lost_in_window"],
            "foreign_cpu_pct": result["cpu"]["foreign_cpu_pct"],
        })]
    if s == "rooms":
        return [({}, {
            "delivered_per_s": result["delivered_per_s"],
            "server_cpu_us_per_delivered": result["server_cpu_us_per_delivered"],
            "latency_p50_us": result["latency"]["p50_us"],
            "latency_p99_us": result["latency"]["p99_us"],
            "server_cpu_pct": result["cpu"]["server_cpu_pct"],
            "client_cpu_pct": result["cpu"]["client_cpu_pct"],
            "missing_in_window": result["missing_in_window"],
            "foreign_cpu_pct": result["cpu"]["foreign_cpu_pct"],
        })]
    if s == "setup":
        return [({}, {
            "connections_per_s": result["connections_per_s"],
            "setup_p50_us": result["setup"]["p50_us"],
            "setup_p99_us": result["setup"]["p99_us"],
            "identity_p50_us": result["identity"]["p50_us"],
            "identity_p99_us": result["identity"]["p99_us"],
            "connect_p50_us": result["connect"]["p50_us"],
            "first_envelope_p50_us": result["first_envelope"]["p50_us"],
            "connect_and_first_envelope_p50_us": result["connect_and_first_envelope"]["p50_us"],
            "connect_and_first_envelope_p99_us": result["connect_and_first_envelope"]["p99_us"],
            "server_cpu_us_per_connection": result["server_cpu_us_per_connection"],
            "server_cpu_pct": result["cpu"]["server_cpu_pct"],
            "client_cpu_pct": result["cpu"]["client_cpu_pct"],
            "foreign_cpu_pct": result["cpu"]["foreign_cpu_pct"],
        })]
    if s == "register":
        return [({}, {
            "registrations": result["registrations"],
            "registrations_per_s": result["registrations_per_s"],
            "latency_p50_us": result["latency"]["p50_us"],
            "latency_p99_us": result["latency"]["p99_us"],
            "server_cpu_us_per_registration": result["server_cpu_us_per_registration"],
            "server_cpu_pct": result["cpu"]["server_cpu_pct"],
            "client_cpu_pct": result["cpu"]["client_cpu_pct"],
            "foreign_cpu_pct": result["cpu"]["foreign_cpu_pct"],
        })]
    if s == "idle":
        return [({"connections": lvl["connections"]}, {
            "rss_kib": lvl["rss_kib"],
            "rss_base_kib": lvl["rss_base_kib"],
            "rss_kib_per_connection": lvl["rss_bytes_per_connection"] / 1024,
            "rss_kib_per_connection_marginal": lvl["rss_bytes_per_connection_marginal"] / 1024,
            "idle_server_cpu_pct": lvl["idle_server_cpu_pct"],
            "setup_per_s": lvl["setup_per_s"],
            "foreign_cpu_pct": lvl["cpu"]["foreign_cpu_pct"],
        }) for lvl in result["levels"]]
    return []


def spread(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def aggregate(runs):
    """One object per scenario x configuration x system (and variant)."""
    groups = {}
    for run in runs:
        r = run["result"]
        if r.get("failed"):
            key = (run["scenario"], json.dumps(run["config"], sort_keys=True), run["system"], run["variant"])
            groups.setdefault(key, {"config": run["config"], "figs": [], "raw": [], "failed": 0})
            groups[key]["failed"] += 1
            continue
        for extra, figs in figures(r):
            config = dict(run["config"], **extra)
            if run["scenario"] == "idle":
                config.pop("levels", None)
            key = (run["scenario"], json.dumps(config, sort_keys=True), run["system"], run["variant"])
            g = groups.setdefault(key, {"config": config, "figs": [], "raw": [], "failed": 0})
            g["figs"].append(dict(figs, rep=run["rep"]))
            g["raw"].append(r)
    out = []
    for (scenario, _, system, variant), g in groups.items():
        names = [k for k in (g["figs"][0] if g["figs"] else {}) if k != "rep"]
        out.append({
            "scenario": scenario,
            "config": g["config"],
            "system": system,
            "variant": variant,
            "label": unit_label(system, variant),
            "server": SERVERS[system],
            "transport": "webtransport" if system == "wt" else "websocket",
            "tls": system in ("wss", "wt"),
            # Gateway nodes of a cluster on Redis (0: a single gateway, or a peer).
            "cluster_nodes": CLUSTER_NODES.get(variant, 0),
            "n": len(g["figs"]),
            "failed_runs": g["failed"],
            "noisy_runs": sum(1 for r in g["raw"] if r.get("noisy")),
            "figures": {k: spread([f[k] for f in g["figs"]]) for k in names},
            "per_rep": {str(f["rep"]): {k: f[k] for k in names} for f in g["figs"]},
            "runs": g["raw"],
        })
    return out


def find(results, scenario, unit, **config):
    """The result of `unit` (a system, or `system+variant`) in a configuration."""
    system, variant = unit_parts(unit)
    for r in results:
        if r["scenario"] == scenario and r["system"] == system and r.get("variant", "") == variant and all(
                r["config"].get(k) == v for k, v in config.items()):
            return r
    return None


def paired_ratio(results, scenario, num_unit, den_unit, fig, **config):
    """Median (min-max) over repetitions of num/den measured in the same repetition."""
    a, b = find(results, scenario, num_unit, **config), find(results, scenario, den_unit, **config)
    if not a or not b:
        return None
    ratios = []
    for rep, fa in a["per_rep"].items():
        fb = b["per_rep"].get(rep)
        if fb and fa.get(fig) and fb.get(fig):
            ratios.append(fa[fig] / fb[fig])
    return spread(ratios)


def med(results, scenario, system, fig, **config):
    r = find(results, scenario, system, **config)
    f = r and r["figures"].get(fig)
    return f["median"] if f else None


def ratios_and_targets(results, levels):
    top = max(levels)
    sat = dict(pairs=100, window=10, payload_bytes=200)
    light = dict(pairs=10, window=1, payload_bytes=200)
    big = dict(pairs=100, window=10, payload_bytes=4096)
    r2k = dict(pairs=100, rate=10)
    r20k = dict(pairs=100, rate=100)
    cpu = "server_cpu_us_per_relayed"
    ratios = {}

    def add(name, scenario, num, den, fig, **config):
        ratios[name] = paired_ratio(results, scenario, num, den, fig, **config)

    for num, den in [("peerjs", "ws"), ("wt", "ws"), ("wt", "wss"), ("wss", "ws"), ("socketio", "ws")]:
        add(f"{num}/{den} server CPU per relayed, 100x10 200 B", "throughput", num, den, cpu, **sat)
        add(f"{num}/{den} server CPU per relayed, 10x1 200 B", "throughput", num, den, cpu, **light)
        add(f"{num}/{den} server CPU per relayed, 100x10 4 KiB", "throughput", num, den, cpu, **big)
    for num, den in [("ws", "peerjs"), ("wt", "ws"), ("wt", "wss"), ("wss", "ws"), ("ws", "socketio")]:
        add(f"{num}/{den} RTT p99, 2k relayed/s", "latency", num, den, "rtt_p99_us", **r2k)
    for num, den in [("ws", "peerjs"), ("ws", "socketio")]:
        add(f"{num}/{den} RTT p99, 20k relayed/s", "latency", num, den, "rtt_p99_us", **r20k)
    for num, den in [("ws", "peerjs"), ("wt", "ws"), ("wt", "wss"), ("wss", "ws"), ("ws", "socketio")]:
        add(f"{num}/{den} setup rate", "setup", num, den, "connections_per_s")
    for num, den in [("wt", "ws"), ("wt", "wss"), ("wss", "ws")]:
        add(f"{num}/{den} server CPU per connection set-up", "setup", num, den, "server_cpu_us_per_connection")
    for variant in VARIANTS:
        add(f"ws+{variant}/ws setup rate", "setup", f"ws+{variant}", "ws", "connections_per_s")
        add(f"ws+{variant}/ws server CPU per connection set-up", "setup", f"ws+{variant}", "ws",
            "server_cpu_us_per_connection")
        add(f"ws+{variant}/ws connect + first envelope p50", "setup", f"ws+{variant}", "ws",
            "connect_and_first_envelope_p50_us")
    add("ws+embedded/ws registrations/s", "register", "ws+embedded", "ws", "registrations_per_s")
    add("ws+cluster/ws registrations/s", "register", "ws+cluster", "ws", "registrations_per_s")
    add("ws+embedded/ws server CPU per relayed, 100x10 200 B", "throughput", "ws+embedded", "ws", cpu, **sat)
    add("ws+ack/ws server CPU per relayed, 100x10 200 B", "throughput", "ws+ack", "ws", cpu, **sat)
    add("ws+ack/ws server CPU per relayed, 10x1 200 B", "throughput", "ws+ack", "ws", cpu, **light)
    # The cluster: cross-node and same-node cluster mode against the single
    # gateway, and cross-node against PeerJS server on one node. CPU counts
    # every process (both gateways and Redis).
    for t in ("ws", "wt"):
        for v in CLUSTER_VARIANTS:
            for name, config in (("100x10 200 B", sat), ("10x1 200 B", light)):
                add(f"{t}+{v}/{t} server CPU per relayed, {name}", "throughput", f"{t}+{v}", t, cpu, **config)
            for name, config in (("2k", r2k), ("20k", r20k)):
                add(f"{t}+{v}/{t} RTT p99, {name} relayed/s", "latency", f"{t}+{v}", t, "rtt_p99_us", **config)
                add(f"{t}+{v}/{t} RTT p50, {name} relayed/s", "latency", f"{t}+{v}", t, "rtt_p50_us", **config)
        for name, config in (("100x10 200 B", sat), ("10x1 200 B", light)):
            add(f"peerjs/{t}+cross server CPU per relayed, {name}", "throughput", "peerjs", f"{t}+cross", cpu,
                **config)
        add(f"{t}+cross/peerjs RTT p99, 2k relayed/s", "latency", f"{t}+cross", "peerjs", "rtt_p99_us", **r2k)
    for config, at in ((ROOMS_CONFIG, ""), (ROOMS_FAST, ", 20/s per member")):
        for num, den in [("socketio", "ws"), ("socketio", "wt"), ("socketio", "floor"), ("ws", "floor")]:
            add(f"{num}/{den} server CPU per delivered room envelope{at}", "rooms", num, den,
                "server_cpu_us_per_delivered", **config)
        add(f"ws/socketio room delivery latency p99{at}", "rooms", "ws", "socketio", "latency_p99_us", **config)
    add(f"ws/peerjs RSS per idle connection at {top}", "idle", "ws", "peerjs", "rss_kib_per_connection",
        connections=top)
    add(f"wt/ws RSS per idle connection at {top}", "idle", "wt", "ws", "rss_kib_per_connection", connections=top)
    add(f"wt/wss RSS per idle connection at {top}", "idle", "wt", "wss", "rss_kib_per_connection", connections=top)
    for lvl in levels:
        add(f"ws/socketio RSS per idle connection at {lvl}", "idle", "ws", "socketio", "rss_kib_per_connection",
            connections=lvl)

    def target(name, value, limit, better, unit, ratio_name=None, wss=None):
        """A target; `wss` is the same figure for WSS (from `wss_ratio` or
        `wss_value`), shown beside WebTransport's."""
        met = None if value is None else (value <= limit if better == "max" else value >= limit)
        ratio = ratios.get(ratio_name) if ratio_name else None
        return {"target": name, "value": value, "limit": limit, "kind": better, "unit": unit,
                "range": [ratio["min"], ratio["max"]] if ratio else None, "met": met, "wss": wss}

    def rv(name):
        return ratios[name]["median"] if ratios.get(name) else None

    def wss_ratio(name):
        """WebTransport against WSS, where the target compares it with WS."""
        r = ratios.get(name)
        return {"kind": "ratio", "value": rv(name), "range": [r["min"], r["max"]] if r else None}

    def wss_value(value):
        """WSS's own figure, where the target is an absolute one."""
        return {"kind": "absolute", "value": value, "range": None}

    def ratio_target(name, ratio_name, limit, better="max", wss=None):
        return target(name, rv(ratio_name), limit, better, "x", ratio_name, wss)

    targets = [
        target("WS: server CPU per relayed 200 B envelope at saturation (100x10)",
               med(results, "throughput", "ws", cpu, **sat), 2.0, "max", "us"),
        ratio_target("WS: PeerJS/WS server CPU per envelope at 100x10",
                     "peerjs/ws server CPU per relayed, 100x10 200 B", 6.0, "min"),
        ratio_target("WS: no worse than PeerJS per envelope at 10x1 (PeerJS/WS)",
                     "peerjs/ws server CPU per relayed, 10x1 200 B", 1.0, "min"),
        ratio_target("WS: RTT p99 at 2k envelopes/s vs PeerJS (WS/PeerJS)", "ws/peerjs RTT p99, 2k relayed/s", 0.6),
        target(f"WS: RSS per idle connection ({top} connections)",
               med(results, "idle", "ws", "rss_kib_per_connection", connections=top), 4.0, "max", "KiB"),
        ratio_target("WS: connection set-up rate vs PeerJS (WS/PeerJS)", "ws/peerjs setup rate", 3.0, "min"),
        ratio_target("WS: embedded store leaves connect + first envelope p50 alone (embedded/memory)",
                     "ws+embedded/ws connect + first envelope p50", 1.1),
        ratio_target("WS: embedded store leaves relaying alone, CPU per envelope at 100x10 (embedded/memory)",
                     "ws+embedded/ws server CPU per relayed, 100x10 200 B", 1.1),
        ratio_target(f"Embedded store: registrations/s at {REGISTER_CLIENTS} clients vs memory (embedded/memory)",
                     "ws+embedded/ws registrations/s", 0.25, "min"),
        target(f"Embedded store: registration latency p99 at {REGISTER_CLIENTS} clients",
               med(results, "register", "ws+embedded", "latency_p99_us"), 10000.0, "max", "us"),
        ratio_target("Embedded store: set-up rate with a registration within 1.5x of memory (embedded/memory)",
                     "ws+embedded/ws setup rate", 0.67, "min"),
        target("WT: server CPU per relayed 200 B envelope at saturation (100x10)",
               med(results, "throughput", "wt", cpu, **sat), 6.0, "max", "us",
               wss=wss_value(med(results, "throughput", "wss", cpu, **sat))),
        ratio_target("WT: server CPU per relayed 200 B envelope vs WS, 100x10 (WT/WS)",
                     "wt/ws server CPU per relayed, 100x10 200 B", 1.5,
                     wss=wss_ratio("wt/wss server CPU per relayed, 100x10 200 B")),
        ratio_target("WT: server CPU per relayed 4 KiB envelope vs WS, 100x10 (WT/WS)",
                     "wt/ws server CPU per relayed, 100x10 4 KiB", 2.0,
                     wss=wss_ratio("wt/wss server CPU per relayed, 100x10 4 KiB")),
        ratio_target("WT: RTT p99 at 2k envelopes/s vs WS (WT/WS)", "wt/ws RTT p99, 2k relayed/s", 1.3,
                     wss=wss_ratio("wt/wss RTT p99, 2k relayed/s")),
        target("WT: server CPU per connection set-up",
               med(results, "setup", "wt", "server_cpu_us_per_connection"), 200.0, "max", "us",
               wss=wss_value(med(results, "setup", "wss", "server_cpu_us_per_connection"))),
        target(f"WT: RSS per idle session ({top} sessions)",
               med(results, "idle", "wt", "rss_kib_per_connection", connections=top), 32.0, "max", "KiB",
               wss=wss_value(med(results, "idle", "wss", "rss_kib_per_connection", connections=top))),
    ]
    # Rooms against the gateway's own 1:1 relay at about the same rate, and
    # the floor against socket.io: below 10x there, no server that writes a
    # copy per member connection can meet the socket.io target.
    for config, pairs_config, at, pairs_at in ((ROOMS_CONFIG, r2k, "2/s per member", "2k"),
                                               (ROOMS_FAST, r20k, "20/s per member", "20k")):
        suffix = "" if config is ROOMS_CONFIG else ", 20/s per member"
        for t, name in (("ws", "WS"), ("wt", "WT"), ("floor", "floor")):
            room_cpu = med(results, "rooms", t, "server_cpu_us_per_delivered", **config)
            pair_cpu = med(results, "latency", t, cpu, **pairs_config)
            targets.append(
                ratio_target(f"Rooms {name}: socket.io/{name} server CPU per delivered room envelope, {at}",
                             f"socketio/{t} server CPU per delivered room envelope{suffix}", 10.0, "min"))
            if t != "floor":
                targets.append(
                    target(f"Rooms {name}: server CPU per delivered room envelope vs its 1:1 relay, {at} "
                           f"against {pairs_at}/s "
                           "(rooms/1:1)", room_cpu / pair_cpu if room_cpu and pair_cpu else None, 2.0, "max", "x"))
    for t, name in (("ws", "WS"), ("wt", "WT")):
        targets += [
            ratio_target(f"Cluster {name}: cross-node RTT p99 at 2k envelopes/s vs one node ({name} cross/{name})",
                         f"{t}+cross/{t} RTT p99, 2k relayed/s", 2.0),
            ratio_target(f"Cluster {name}: CPU per cross-node envelope, both gateways + Redis, vs one node, "
                         f"100x10 ({name} cross/{name})", f"{t}+cross/{t} server CPU per relayed, 100x10 200 B", 4.0),
            ratio_target(f"Cluster {name}: CPU per cross-node envelope, both gateways + Redis, vs one node, "
                         f"10x1 ({name} cross/{name})", f"{t}+cross/{t} server CPU per relayed, 10x1 200 B", 4.0),
            ratio_target(f"Cluster {name}: cross-node CPU per envelope still below PeerJS on one node, 100x10 "
                         f"(PeerJS/{name} cross)", f"peerjs/{t}+cross server CPU per relayed, 100x10 200 B", 1.0,
                         "min"),
            ratio_target(f"Cluster {name}: cross-node CPU per envelope still below PeerJS on one node, 10x1 "
                         f"(PeerJS/{name} cross)", f"peerjs/{t}+cross server CPU per relayed, 10x1 200 B", 1.0,
                         "min"),
            ratio_target(f"Cluster {name}: cross-node RTT p99 at 2k envelopes/s still below PeerJS on one node "
                         f"({name} cross/PeerJS)", f"{t}+cross/peerjs RTT p99, 2k relayed/s", 1.0),
        ]
    return ratios, targets


# --- reports -------------------------------------------------------------------


def num(v, digits=None):
    if v is None:
        return "–"
    if digits is None:
        digits = 0 if abs(v) >= 100 else (1 if abs(v) >= 10 else 2)
    return f"{v:,.{digits}f}"


def cell(f, digits=None):
    if not f:
        return "–"
    if f["n"] == 1 or f["min"] == f["max"]:
        return num(f["median"], digits)
    return f"{num(f['median'], digits)} ({num(f['min'], digits)}–{num(f['max'], digits)})"


def rows(res, scenario, variants=None):
    """The results of a scenario, configurations in plan order and units in
    the order of SYSTEMS then VARIANTS; `variants` keeps only those."""
    configs, out = [], []
    for r in res:
        key = json.dumps(r["config"], sort_keys=True)
        if r["scenario"] != scenario or (variants is not None and r.get("variant", "") not in variants):
            continue
        if key not in configs:
            configs.append(key)
        out.append(r)
    rank = {v: i for i, v in enumerate([""] + list(VARIANTS) + list(RELAY_VARIANTS) + list(CLUSTER_VARIANTS))}
    return sorted(out, key=lambda r: (configs.index(json.dumps(r["config"], sort_keys=True)),
                                      rank[r.get("variant", "")], (SYSTEMS + REFERENCES).index(r["system"])))


def label(r):
    return unit_label(r["system"], r.get("variant", ""))


def markdown(doc):
    res = doc["results"]
    m = doc["machine"]

    def ms(f, k, digits=2):
        x = f.get(k)
        return cell({kk: (v / 1000 if kk != "n" else v) for kk, v in x.items()}, digits) if x else "–"

    lines = [
        f"# signal-bench results ({doc['mode']})",
        "",
        f"{doc['date']} · commit `{doc['git_commit'][:12]}`{' (dirty tree)' if doc['git_dirty'] else ''} · "
        f"{m['cpu_model']} · {m['cores']} cores · Linux {m['kernel']} · {m['rustc']} · node {m['node']} · peer {m['peer']} · "
        f"socket.io {m.get('socketio', '–')} (engine.io {m.get('engine_io', '–')})",
        "",
        f"Server on core 0, generator on core 1 ({'pinned with taskset' if doc['pinned'] else 'NOT pinned'}); "
        f"fresh server per run; {doc['reps']} repetition(s), systems interleaved; "
        "cells are median (min–max). \"Relayed\" counts envelopes forwarded by the server (a round trip is 2). "
        "Server CPU is the server process's utime+stime over the measured window. "
        "WebSocket over TLS is the gateway started with --tls (TLS 1.3, ring, as its WebTransport).",
        "",
        "## Relay throughput (closed loop)",
        "",
        "| pairs × window | payload | system | relayed/s | server µs CPU / relayed | server CPU % | generator CPU % | RTT p50 µs | RTT p99 µs | n |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows(res, "throughput"):
        c, f = r["config"], r["figures"]
        lines.append(
            f"| {c['pairs']} × {c['window']} | {c['payload_bytes']} B | {label(r)} | "
            f"{cell(f.get('relayed_per_s'), 0)} | **{cell(f.get('server_cpu_us_per_relayed'), 2)}** | "
            f"{cell(f.get('server_cpu_pct'), 0)} | {cell(f.get('client_cpu_pct'), 0)} | "
            f"{cell(f.get('rtt_p50_us'), 0)} | {cell(f.get('rtt_p99_us'), 0)} | {r['n']} |")
    lines += [
        "",
        "## Latency (open loop, RTT A→server→B→server→A stamped at the real send)",
        "",
        "| pairs × rate | relayed/s | system | RTT p50 µs | p90 | p99 | p99.9 | max | p99 from schedule | send lag p99 | server CPU % | µs / relayed | lost | n |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows(res, "latency"):
        c, f = r["config"], r["figures"]
        lines.append(
            f"| {c['pairs']} × {c['rate']}/s | {num(2 * c['pairs'] * c['rate'], 0)} | {label(r)} | "
            f"{cell(f.get('rtt_p50_us'), 0)} | {cell(f.get('rtt_p90_us'), 0)} | **{cell(f.get('rtt_p99_us'), 0)}** | "
            f"{cell(f.get('rtt_p999_us'), 0)} | {cell(f.get('rtt_max_us'), 0)} | {cell(f.get('rtt_from_schedule_p99_us'), 0)} | "
            f"{cell(f.get('send_lag_p99_us'), 0)} | {cell(f.get('server_cpu_pct'), 1)} | "
            f"{cell(f.get('server_cpu_us_per_relayed'), 1)} | {cell(f.get('lost_in_window'), 0)} | {r['n']} |")
    lines += [
        "",
        "## Rooms (10 rooms × 10 members, each sending at a fixed rate to its room; latency from the send to "
        "each member's receipt, one clock)",
        "",
        "| per member | system | delivered/s | server µs CPU / delivered | latency p50 µs | p99 | server CPU % | missing | n |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows(res, "rooms"):
        f = r["figures"]
        lines.append(
            f"| {num(r['config'].get('rate'), 0)}/s | {label(r)} | {cell(f.get('delivered_per_s'), 0)} | "
            f"**{cell(f.get('server_cpu_us_per_delivered'), 2)}** | "
            f"{cell(f.get('latency_p50_us'), 0)} | {cell(f.get('latency_p99_us'), 0)} | "
            f"{cell(f.get('server_cpu_pct'), 1)} | {cell(f.get('missing_in_window'), 0)} | {r['n']} |")
    lines += cluster_markdown(res)
    lines += [
        "",
        "## Connection set-up (identity + connect + first envelope to itself and back, 32 at a time; "
        "socket.io has no identity step, its connect includes the Engine.IO and Socket.IO handshakes)",
        "",
        "| connections | system | connections/s | set-up p50 ms | p99 ms | identity p50 ms | connect p50 ms | first envelope p50 ms | server µs CPU / connection | generator CPU % | n |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows(res, "setup", variants=[""]):
        c, f = r["config"], r["figures"]
        lines.append(
            f"| {c['connections']} | {label(r)} | **{cell(f.get('connections_per_s'), 0)}** | "
            f"{ms(f, 'setup_p50_us')} | {ms(f, 'setup_p99_us')} | {ms(f, 'identity_p50_us')} | {ms(f, 'connect_p50_us')} | "
            f"{ms(f, 'first_envelope_p50_us')} | {cell(f.get('server_cpu_us_per_connection'), 0)} | "
            f"{cell(f.get('client_cpu_pct'), 0)} | {r['n']} |")
    lines += [
        "",
        "## Identities (gateway over WebSocket, the set-up above): registered names in memory or in the "
        "embedded store (registrations committed in batches, one fsync each), and JWTs minted by the generator (its identity step)",
        "",
        "| connections | identity | connections/s | server µs CPU / connection | identity p50 µs | p99 µs | "
        "connect + first envelope p50 ms | p99 ms | n |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    names = {"": "registered, memory store", "embedded": "registered, embedded store",
             "jwt-hs256": "JWT HS256", "jwt-es256": "JWT ES256"}
    for r in rows(res, "setup"):
        if r["system"] != "ws":
            continue
        c, f = r["config"], r["figures"]
        lines.append(
            f"| {c['connections']} | {names[r.get('variant', '')]} | **{cell(f.get('connections_per_s'), 0)}** | "
            f"**{cell(f.get('server_cpu_us_per_connection'), 0)}** | {cell(f.get('identity_p50_us'), 0)} | "
            f"{cell(f.get('identity_p99_us'), 0)} | {ms(f, 'connect_and_first_envelope_p50_us')} | "
            f"{ms(f, 'connect_and_first_envelope_p99_us')} | {r['n']} |")
    lines += [
        "",
        f"## Registrations (POST /v1/register alone, {REGISTER_CLIENTS} at a time, each on a keep-alive connection)",
        "",
        "| seconds at most | store | registered | registrations/s | latency p50 ms | p99 ms | "
        "server µs CPU / registration | server CPU % | generator CPU % | n |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    stores = {"": "memory", "embedded": "embedded (redb)",
              "cluster": "Redis (one node; gateway + Redis CPU)"}
    for r in rows(res, "register"):
        c, f = r["config"], r["figures"]
        lines.append(
            f"| {c['duration_s']} | {stores[r.get('variant', '')]} | "
            f"{cell(f.get('registrations'), 0)} | "
            f"**{cell(f.get('registrations_per_s'), 0)}** | {ms(f, 'latency_p50_us')} | {ms(f, 'latency_p99_us')} | "
            f"{cell(f.get('server_cpu_us_per_registration'), 0)} | {cell(f.get('server_cpu_pct'), 0)} | "
            f"{cell(f.get('client_cpu_pct'), 0)} | {r['n']} |")
    probe = doc.get("fsync")
    if probe:
        lines += [
            "",
            f"One fsync on this disk (fdatasync of a rewritten 4 KiB page, {probe['count']} in a row before the "
            f"runs, by signal-bench-fsync in the data directory): p50 {probe['p50_us'] / 1000:.2f} ms, "
            f"p90 {probe['p90_us'] / 1000:.2f} ms, p99 {probe['p99_us'] / 1000:.2f} ms. A commit waits for at "
            f"least one; {REGISTER_CLIENTS} clients at one registration each per fsync make at most "
            f"{REGISTER_CLIENTS / (probe['p50_us'] / 1e6):,.0f} registrations/s.",
        ]
    lines += [
        "",
        "## Idle memory (server RSS growth over the fresh server's RSS, divided by the connections)",
        "",
        "| connections | system | server RSS MiB | KiB / connection | KiB / connection, marginal | idle server CPU % | opened/s | n |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows(res, "idle"), key=lambda r: r["config"]["connections"]):
        c, f = r["config"], r["figures"]
        rss = f.get("rss_kib")
        lines.append(
            f"| {c['connections']:,} | {label(r)} | "
            f"{cell({k: (v / 1024 if k != 'n' else v) for k, v in rss.items()}, 1) if rss else '–'} | "
            f"**{cell(f.get('rss_kib_per_connection'), 1)}** | {cell(f.get('rss_kib_per_connection_marginal'), 1)} | "
            f"{cell(f.get('idle_server_cpu_pct'), 1)} | {cell(f.get('setup_per_s'), 0)} | {r['n']} |")
    lines += ["", "## Ratios (paired: computed per repetition, then median (min–max))", "",
              "| ratio | value |", "|---|---|"]
    # Ratios of systems not run (--systems, --only) are left out.
    for name, v in doc["ratios"].items():
        if v:
            lines.append(f"| {name} | {cell(v, 2)} |")
    lines += ["", "## Targets", "",
              "WebTransport's targets also show the same figure for WebSocket over TLS, the peer with the same "
              "cryptography: WT/WSS beside a WT/WS ratio, WSS's own value beside an absolute one.", "",
              "| target | measured | limit | met | against WSS |", "|---|---|---|---|---|"]
    for t in doc["targets"]:
        bound = "≤" if t["kind"] == "max" else "≥"
        value = num(t["value"], 2) + (f" {t['unit']}" if t["value"] is not None else "")
        if t["range"]:
            value += f" ({num(t['range'][0], 2)}–{num(t['range'][1], 2)})"
        met = "n/a" if t["met"] is None else ("yes" if t["met"] else "**no**")
        lines.append(f"| {t['target']} | {value} | {bound} {t['limit']} {t['unit']} | {met} | {beside_wss(t)} |")
    # An idle run gives one result per level: count it once, at the first level.
    noisy = [(r["scenario"], r["system"], r["noisy_runs"]) for r in res if r["noisy_runs"] and (
        r["scenario"] != "idle" or r["config"]["connections"] == min(doc["levels"]))]
    failed = [(r["scenario"], r["system"], r["failed_runs"]) for r in res if r["failed_runs"]]
    lines += ["", f"Runs repeated for foreign CPU load: {doc['rejected_runs']}; "
              f"kept although noisy: {sum(n for *_, n in noisy)}; failed: {sum(n for *_, n in failed)}. "
              f"Total time {doc['duration_s']:.0f} s.", ""]
    return "\n".join(lines)


def cluster_markdown(res):
    """The cluster table: one gateway, cluster mode on one node and
    cross-node, beside PeerJS server, with the CPU split per process."""
    units = ["ws", "ws+cluster", "ws+cross", "wt", "wt+cluster", "wt+cross", "peerjs"]
    configs = [("throughput", "100 × 10 closed loop", dict(pairs=100, window=10, payload_bytes=200)),
               ("throughput", "10 × 1 closed loop", dict(pairs=10, window=1, payload_bytes=200)),
               ("latency", "2k relayed/s open loop", dict(pairs=100, rate=10)),
               ("latency", "20k relayed/s open loop", dict(pairs=100, rate=100))]
    out = []
    for scenario, name, config in configs:
        for unit in units:
            r = find(res, scenario, unit, **config)
            if not r or (unit == "peerjs" and not any(find(res, scenario, u, **config) for u in CLUSTER_UNITS)):
                continue
            f = r["figures"]
            out.append(
                f"| {name} | {label(r)} | {cell(f.get('relayed_per_s'), 0)} | "
                f"**{cell(f.get('server_cpu_us_per_relayed'), 2)}** | "
                f"{cell(f.get('server_cpu_us_per_relayed_gateway_a'), 2)} | "
                f"{cell(f.get('server_cpu_us_per_relayed_gateway_b'), 2)} | "
                f"{cell(f.get('server_cpu_us_per_relayed_redis'), 2)} | {cell(f.get('server_cpu_pct'), 0)} | "
                f"{cell(f.get('rtt_p50_us'), 0)} | **{cell(f.get('rtt_p99_us'), 0)}** | {r['n']} |")
    if not out:
        return []
    return ["", "## Cluster (cross-node: every A on gateway A, every B on gateway B, one Redis; cluster mode on one "
            "node: both on gateway A, with Redis). Every process pinned to core 0 as the single server is; "
            "CPU per relayed envelope counts them all, split per process (– where a process is absent)", "",
            "| load | system | relayed/s | µs CPU / relayed, all processes | gateway A | gateway B | Redis | "
            "CPU % (all) | RTT p50 µs | RTT p99 µs | n |",
            "|---|---|---|---|---|---|---|---|---|---|---|"] + out


def beside_wss(t):
    """The targets table's WSS cell."""
    w = t.get("wss")
    if not w:
        return ""
    if w["value"] is None:
        return "–"
    if w["kind"] == "absolute":
        return f"WSS {num(w['value'], 2)} {t['unit']}"
    spread_text = f" ({num(w['range'][0], 2)}–{num(w['range'][1], 2)})" if w["range"] else ""
    return f"WT/WSS {num(w['value'], 2)} x{spread_text}"


def svg_chart(doc):
    res = doc["results"]
    top = max(doc["levels"])
    panels = [
        ("Server CPU per relayed envelope (µs, lower is better)", "server_cpu_us_per_relayed", "throughput",
         [("100×10, 200 B", dict(pairs=100, window=10, payload_bytes=200)),
          ("10×1, 200 B", dict(pairs=10, window=1, payload_bytes=200)),
          ("100×10, 4 KiB", dict(pairs=100, window=10, payload_bytes=4096))]),
        ("RTT p99, open loop (µs, log scale, lower is better)", "rtt_p99_us", "latency",
         [("2k relayed/s", dict(pairs=100, rate=10)), ("20k relayed/s", dict(pairs=100, rate=100))]),
        ("Connection set-up (connections/s, higher is better)", "connections_per_s", "setup", [("32 at a time", {})]),
        ("Idle RSS per connection (KiB, lower is better)", "rss_kib_per_connection", "idle",
         [(f"{lvl:,} connections", dict(connections=lvl)) for lvl in doc["levels"]]),
    ]
    log_panels = {"rtt_p99_us"}
    pw, ph, gap = 470, 300, 20
    width, height = 2 * pw + 3 * gap, 2 * ph + 3 * gap + 60
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
           f'<text x="{gap}" y="28" font-size="16" font-weight="bold">signal-gateway vs PeerJS server and socket.io — '
           f'{doc["mode"]} run, {doc["date"][:10]}, {doc["reps"]} rep(s), medians with min–max</text>']
    lx = gap
    for system in SYSTEMS:
        out.append(f'<rect x="{lx}" y="40" width="12" height="12" fill="{COLORS[system]}"/>'
                   f'<text x="{lx + 17}" y="50">{LABELS[system]}</text>')
        lx += 40 + 7 * len(LABELS[system])  # about 7 px per character at 12 px
    for i, (title, fig, scenario, groups) in enumerate(panels):
        x0 = gap + (i % 2) * (pw + gap)
        y0 = 60 + gap + (i // 2) * (ph + gap)
        out.append(f'<rect x="{x0}" y="{y0}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#dddddd"/>')
        out.append(f'<text x="{x0 + 10}" y="{y0 + 20}" font-weight="bold">{title}</text>')
        vals = []
        for _, cfg in groups:
            for system in SYSTEMS:
                r = find(res, scenario, system, **cfg)
                f = r and r["figures"].get(fig)
                vals.append(f["max"] if f else 0)
        left, bottom, plot_h = x0 + 50, y0 + ph - 40, ph - 80
        plot_w = pw - 70
        if fig in log_panels:
            positive = [v for v in vals if v > 0] or [1.0]
            lo = 10 ** math.floor(math.log10(min(positive) / 2))
            hi = 10 ** math.ceil(math.log10(max(positive) * 1.3))

            def scale(v, lo=lo, hi=hi):
                return plot_h * (math.log10(max(v, lo)) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))
            ticks = [10 ** e for e in range(int(math.log10(lo)), int(math.log10(hi)) + 1)]
        else:
            vmax = max(vals + [1e-9]) * 1.15

            def scale(v, vmax=vmax):
                return plot_h * v / vmax
            ticks = [vmax * t / 4 for t in range(5)]
        for v in ticks:
            y = bottom - scale(v)
            out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#e5e5e5"/>')
            out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#666">{num(v)}</text>')
        gw = plot_w / len(groups)
        bw = min(40, gw / (len(SYSTEMS) + 1))
        for g, (label, cfg) in enumerate(groups):
            gx = left + g * gw + (gw - bw * len(SYSTEMS)) / 2
            out.append(f'<text x="{left + g * gw + gw / 2:.1f}" y="{bottom + 18}" text-anchor="middle">{label}</text>')
            for s, system in enumerate(SYSTEMS):
                r = find(res, scenario, system, **cfg)
                f = r and r["figures"].get(fig)
                x = gx + s * bw
                if not f:
                    out.append(f'<text x="{x + bw / 2:.1f}" y="{bottom - 4}" text-anchor="middle" fill="#999">n/a</text>')
                    continue
                h = scale(f["median"])
                out.append(f'<rect x="{x + 2:.1f}" y="{bottom - h:.1f}" width="{bw - 4:.1f}" height="{h:.1f}" '
                           f'fill="{COLORS[system]}"><title>{LABELS[system]}, {label}: {num(f["median"])} '
                           f'({num(f["min"])}–{num(f["max"])})</title></rect>')
                if f["max"] > f["min"]:
                    y1, y2 = bottom - scale(f["min"]), bottom - scale(f["max"])
                    cx = x + bw / 2
                    out.append(f'<line x1="{cx:.1f}" y1="{y1:.1f}" x2="{cx:.1f}" y2="{y2:.1f}" stroke="#222"/>'
                               f'<line x1="{cx - 4:.1f}" y1="{y2:.1f}" x2="{cx + 4:.1f}" y2="{y2:.1f}" stroke="#222"/>'
                               f'<line x1="{cx - 4:.1f}" y1="{y1:.1f}" x2="{cx + 4:.1f}" y2="{y1:.1f}" stroke="#222"/>')
                top_y = bottom - scale(f["max"])
                out.append(f'<text x="{x + bw / 2:.1f}" y="{top_y - 5:.1f}" text-anchor="middle" font-size="10">'
                           f'{num(f["median"])}</text>')
        out.append(f'<line x1="{left}" y1="{bottom}" x2="{left + plot_w}" y2="{bottom}" stroke="#333"/>')
    out.append(f'<text x="{gap}" y="{height - 8}" fill="#666" font-size="10">Server on one core (taskset -c 0), '
               f'generator on the other; idle RSS read at up to {top:,} connections; commit {doc["git_commit"][:12]}; '
               f'data: bench-results/{doc["mode"]}.json</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


# --- machine -------------------------------------------------------------------


def sh(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20, cwd=ROOT).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def machine():
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    vulns = {}
    vdir = "/sys/devices/system/cpu/vulnerabilities"
    if os.path.isdir(vdir):
        for name in sorted(os.listdir(vdir)):
            with open(os.path.join(vdir, name)) as f:
                vulns[name] = f.read().strip()
    def npm_version(install_dir, package):
        try:
            with open(os.path.join(install_dir, "node_modules", package, "package.json")) as f:
                return json.load(f)["version"]
        except OSError:
            return ""
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "rustc": sh("rustc", "--version"),
        "node": sh("node", "--version"),
        "peer": npm_version(PEERJS_DIR, "peer"),
        "socketio": npm_version(SOCKETIO_DIR, "socket.io"),
        "engine_io": npm_version(SOCKETIO_DIR, "engine.io"),
        "clk_tck": os.sysconf("SC_CLK_TCK"),
        "open_files_limit": sh("sh", "-c", "ulimit -n"),
        "vulnerabilities": vulns,
    }


def main():
    global GATEWAY
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one short repetition (smoke run, about 5 minutes)")
    ap.add_argument("--reps", type=int, help="repetitions per configuration (default 3, 1 with --quick)")
    ap.add_argument("--only", help="comma-separated scenarios to run (throughput,latency,rooms,setup,register,idle)")
    ap.add_argument("--systems", default=",".join(SYSTEMS + REFERENCES),
                    help=f"comma-separated systems ({','.join(SYSTEMS + REFERENCES)}); a system brings its "
                    "variants along")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench-results"), help="output directory")
    ap.add_argument("--gateway", default=GATEWAY, help="gateway binary to run (to compare a build)")
    ap.add_argument("--render", metavar="JSON", help="only re-render chart.svg and the Markdown from a results file")
    args = ap.parse_args()
    GATEWAY = os.path.abspath(args.gateway)
    if args.render:
        with open(args.render) as f:
            doc = json.load(f)
        with open(os.path.join(args.out, "chart.svg"), "w") as f:
            f.write(svg_chart(doc))
        print(markdown(doc))
        return 0
    reps = args.reps or (1 if args.quick else 3)
    systems = [s for s in args.systems.split(",") if s]
    for s in systems:
        if s not in SYSTEMS + REFERENCES:
            ap.error(f"unknown system {s}")
    items = plan(args.quick)
    if args.only:
        wanted = set(args.only.split(","))
        items = [i for i in items if i[0] in wanted]
    # Each configuration keeps the units of the systems asked for.
    items = [(scenario, config, bench_args, [u for u in units if unit_parts(u)[0] in systems])
             for scenario, config, bench_args, units in items]
    items = [i for i in items if i[3]]
    shutil.rmtree(DATA_DIR, ignore_errors=True)
    if any("+jwt-es256" in u for *_, units in items for u in units):
        subprocess.run([KEYPAIR, JWT_DIR], check=True)
    os.makedirs(os.path.join(RUN_DIR, "logs"), exist_ok=True)
    os.makedirs(PID_DIR, exist_ok=True)
    os.makedirs(args.out, exist_ok=True)
    atexit.register(cleanup)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    pinned = (os.cpu_count() or 1) >= 2
    QUIET_LEFT[0] = QUIET_BUDGET_S["quick" if args.quick else "full"]
    # The disk's fsync latency, the floor of the embedded store's commits,
    # measured where its data directories go.
    fsync = None
    if any(scenario == "register" for scenario, *_ in items):
        wait_quiet()
        probe = subprocess.run([FSYNC_PROBE, DATA_DIR], capture_output=True, text=True, check=True)
        fsync = json.loads(probe.stdout)
        shutil.rmtree(DATA_DIR, ignore_errors=True)
    started = time.monotonic()
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    runs = []
    total = reps * sum(len(units) for *_, units in items)
    done = 0
    for rep in range(reps):
        for index, (scenario, config, bench_args, units) in enumerate(items):
            k = (rep + index) % len(units)
            order = units[k:] + units[:k]
            for unit in order:
                done += 1
                tag = f"r{rep}-{scenario}-{index}"
                log(f"[{done}/{total}] rep {rep + 1} {scenario} {json.dumps(config)} {unit} "
                    f"({time.monotonic() - started:.0f} s)")
                result = run_one(unit, bench_args, pinned, f"rep{rep}", tag)
                system, variant = unit_parts(unit)
                runs.append({"rep": rep, "scenario": scenario, "config": config, "system": system,
                             "variant": variant, "result": result})
    results = aggregate(runs)
    levels = next((i[1]["levels"] for i in items if i[0] == "idle"), [1000])
    ratios, targets = ratios_and_targets(results, levels)
    doc = {
        "tool": "signal-bench",
        "mode": "quick" if args.quick else "full",
        "date": date,
        "git_commit": sh("git", "rev-parse", "HEAD"),
        "git_dirty": bool(sh("git", "status", "--porcelain")),
        "machine": machine(),
        "pinned": pinned,
        "reps": reps,
        "levels": levels,
        "foreign_cpu_max_pct": FOREIGN_MAX_PCT,
        "rejected_runs": sum(len(r["result"].get("rejected", [])) for r in runs),
        "duration_s": time.monotonic() - started,
        "gateway": os.path.relpath(GATEWAY, ROOT),
        "gateway_flags": GATEWAY_FLAGS,
        "variants": {v: {"label": VARIANTS[v], "gateway_flags": variant_options(v, "<fresh dir>")[0],
                         "bench_args": variant_options(v, "")[1]} for v in VARIANTS},
        "cluster_variants": {v: {"label": CLUSTER_VARIANTS[v], "nodes": CLUSTER_NODES[v],
                                 "node_flags": ["--redis", "redis://127.0.0.1:<port>", "--node-id", "<a|b>",
                                                "--advertise-host", "127.0.0.1", "--store", "redis"],
                                 "redis_flags": REDIS_FLAGS, "redis": sh("redis-server", "--version")}
                             for v in CLUSTER_VARIANTS},
        "fsync": fsync,
        "results": results,
        "ratios": ratios,
        "targets": targets,
    }
    md = markdown(doc)
    # latest.* is the last run of either kind; quick.* / full.* keep the
    # last run of each kind side by side.
    for name in ("latest", doc["mode"]):
        with open(os.path.join(args.out, f"{name}.json"), "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
        with open(os.path.join(args.out, f"{name}.md"), "w") as f:
            f.write(md)
    with open(os.path.join(args.out, "chart.svg"), "w") as f:
        f.write(svg_chart(doc))
    print(md)
    log(f"wrote {args.out}/latest.json, latest.md, {doc['mode']}.json, {doc['mode']}.md and chart.svg "
        f"in {doc['duration_s']:.0f} s")
    failed = sum(r["failed_runs"] for r in results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
