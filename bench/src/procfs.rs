//! CPU time and memory from `/proc`: the server's own accounting.
//!
//! Server CPU per relayed envelope is taken from the server process's
//! `utime + stime` over the measured window, so the figure stays meaningful
//! when the generator, not the server, is the bottleneck. A system made of
//! several processes (a cluster: two gateways and Redis) is measured as the
//! sum of them all, with each one's share reported beside it. The same window
//! also samples the whole machine (`/proc/stat`) so that CPU used by anything
//! else ("foreign" load, e.g. a compile in another shell) is reported and the
//! driver can discard polluted runs.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use serde::Serialize;

/// Reads the CPU accounting of the server's processes, of this process and
/// of the whole machine.
#[derive(Debug, Clone)]
pub struct CpuMeter {
    processes: Vec<Measured>,
    clk_tck: f64,
    udp_ports: Vec<u16>,
}

/// One process of the system under test.
#[derive(Debug, Clone)]
struct Measured {
    name: String,
    pid: u32,
    stat: PathBuf,
}

impl Measured {
    /// Its CPU time so far (all its threads), in clock ticks.
    fn ticks(&self) -> anyhow::Result<u64> {
        process_ticks(&std::fs::read_to_string(&self.stat)?)
    }
}

/// One reading of every counter, in clock ticks.
#[derive(Debug, Clone)]
pub struct CpuSample {
    at: Instant,
    /// Per process, in the meter's order.
    server: Vec<u64>,
    this: u64,
    busy: u64,
    steal: u64,
    udp: UdpDrops,
}

/// CPU use between two samples, in percent of one core (100 = one core
/// fully busy) and in seconds.
#[derive(Debug, Clone, Serialize)]
pub struct CpuWindow {
    /// Wall-clock length of the window.
    pub wall_s: f64,
    /// CPU seconds of the server process (all its threads), or of all the
    /// processes of the system under test together.
    pub server_cpu_s: f64,
    /// Server CPU in percent of one core.
    pub server_cpu_pct: f64,
    /// Each process's share of `server_cpu_s` (one entry for a single
    /// server).
    pub processes: Vec<ProcessCpu>,
    /// CPU of this generator process in percent of one core.
    pub client_cpu_pct: f64,
    /// Busy CPU of everything else on the machine, in percent of one core.
    pub foreign_cpu_pct: f64,
    /// Time the hypervisor gave to other guests, in percent of one core.
    pub steal_pct: f64,
    /// UDP datagrams dropped by the server's sockets (receive buffer full).
    pub server_udp_drops: u64,
    /// UDP datagrams dropped by every other UDP socket (the generator's).
    pub other_udp_drops: u64,
}

/// The CPU one process of the system under test used in a window.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessCpu {
    /// What it is (`server`, or the name the driver gave it, e.g. `redis`).
    pub name: String,
    /// Its PID.
    pub pid: u32,
    /// CPU seconds.
    pub cpu_s: f64,
    /// In percent of one core.
    pub cpu_pct: f64,
}

/// Drop counters of UDP sockets from `/proc/net/udp{,6}`.
#[derive(Debug, Clone, Copy, Default)]
struct UdpDrops {
    server: u64,
    other: u64,
}

impl CpuMeter {
    /// A meter for the processes `(name, pid)` of the system under test,
    /// whose UDP sockets (if any) are bound to `udp_ports`; `clk_tck` is the
    /// kernel's USER_HZ (`getconf CLK_TCK`, 100 on every mainstream Linux).
    pub fn new(
        processes: &[(String, u32)],
        clk_tck: u32,
        udp_ports: Vec<u16>,
    ) -> anyhow::Result<Self> {
        if processes.is_empty() {
            bail!("no server process to measure");
        }
        let meter = Self {
            processes: processes
                .iter()
                .map(|(name, pid)| Measured {
                    name: name.clone(),
                    pid: *pid,
                    stat: PathBuf::from(format!("/proc/{pid}/stat")),
                })
                .collect(),
            clk_tck: f64::from(clk_tck.max(1)),
            udp_ports,
        };
        for p in &meter.processes {
            p.ticks()
                .with_context(|| format!("reading the CPU time of {} (pid {})", p.name, p.pid))?;
        }
        Ok(meter)
    }

    /// Reads every counter now.
    pub fn sample(&self) -> anyhow::Result<CpuSample> {
        let (busy, steal) = machine_ticks()?;
        let server = self
            .processes
            .iter()
            .map(Measured::ticks)
            .collect::<anyhow::Result<Vec<u64>>>()?;
        Ok(CpuSample {
            at: Instant::now(),
            server,
            this: process_ticks(&std::fs::read_to_string("/proc/self/stat")?)?,
            busy,
            steal,
            udp: udp_drops(&self.udp_ports),
        })
    }

    /// CPU use between `start` and `end`.
    pub fn window(&self, start: &CpuSample, end: &CpuSample) -> CpuWindow {
        let wall_s = end.at.duration_since(start.at).as_secs_f64().max(1e-9);
        let secs = |ticks: u64| ticks as f64 / self.clk_tck;
        let each: Vec<u64> = end
            .server
            .iter()
            .zip(&start.server)
            .map(|(e, s)| e.saturating_sub(*s))
            .collect();
        let server: u64 = each.iter().sum();
        let this = end.this.saturating_sub(start.this);
        let busy = end.busy.saturating_sub(start.busy);
        let foreign = busy.saturating_sub(server + this);
        let pct = |ticks: u64| 100.0 * secs(ticks) / wall_s;
        CpuWindow {
            wall_s,
            server_cpu_s: secs(server),
            server_cpu_pct: pct(server),
            processes: self
                .processes
                .iter()
                .zip(each)
                .map(|(p, ticks)| ProcessCpu {
                    name: p.name.clone(),
                    pid: p.pid,
                    cpu_s: secs(ticks),
                    cpu_pct: pct(ticks),
                })
                .collect(),
            client_cpu_pct: pct(this),
            foreign_cpu_pct: pct(foreign),
            steal_pct: pct(end.steal.saturating_sub(start.steal)),
            server_udp_drops: end.udp.server.saturating_sub(start.udp.server),
            other_udp_drops: end.udp.other.saturating_sub(start.udp.other),
        }
    }
}

/// `utime + stime` from the text of `/proc/<pid>/stat`. The command name
/// (field 2) may hold spaces and parentheses, so fields are counted from the
/// last `)`.
fn process_ticks(stat: &str) -> anyhow::Result<u64> {
    let Some(close) = stat.rfind(')') else {
        bail!("unexpected /proc/<pid>/stat format");
    };
    // After ")": field 3 (state) is index 0, so utime (14) is 11, stime (15) is 12.
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let field = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .context("short /proc/<pid>/stat")?
            .parse()
            .context("bad number in /proc/<pid>/stat")
    };
    Ok(field(11)? + field(12)?)
}

/// Busy and steal ticks of the whole machine from `/proc/stat`'s `cpu` line
/// (user nice system idle iowait irq softirq steal ...). Busy counts what
/// processes and interrupts used, the same time the per-process counters
/// are charged with.
fn machine_ticks() -> anyhow::Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("no cpu line in /proc/stat")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    Ok((at(0) + at(1) + at(2) + at(5) + at(6), at(7)))
}

/// Sums the `drops` column of every UDP socket, split into the sockets
/// bound to one of `ports` (the server's) and the others. Sockets that close between two samples
/// take their counts with them, so only sockets living through a window
/// are counted fully (the server's and the generator's are).
fn udp_drops(ports: &[u16]) -> UdpDrops {
    let mut drops = UdpDrops::default();
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(count)) = (fields.get(1), fields.last()) else {
                continue;
            };
            let local_port = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            let count: u64 = count.parse().unwrap_or(0);
            if local_port.is_some_and(|p| ports.contains(&p)) {
                drops.server += count;
            } else {
                drops.other += count;
            }
        }
    }
    drops
}

/// Resident set size of `pid` in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    status_kib(&format!("/proc/{pid}/status"), "VmRSS:")
}

/// Peak resident set size of this process in KiB (`VmHWM`): a sanity
/// check that the generator itself stayed small.
pub fn own_peak_rss_kib() -> Option<u64> {
    status_kib("/proc/self/status", "VmHWM:").ok()
}

fn status_kib(path: &str, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {field} in {path}"))
}

/// This process's soft limit on open files, from `/proc/self/limits`.
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let stat = "42 (a (weird) name) S 1 42 42 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 3 0";
        assert_eq!(process_ticks(stat).unwrap(), 12);
    }

    #[test]
    fn this_process_can_be_measured() {
        let me = [("server".to_owned(), std::process::id())];
        let meter = CpuMeter::new(&me, 100, vec![0]).unwrap();
        let a = meter.sample().unwrap();
        let b = meter.sample().unwrap();
        let w = meter.window(&a, &b);
        assert!(w.server_cpu_s >= 0.0 && w.foreign_cpu_pct >= 0.0);
        assert_eq!(w.processes.len(), 1);
        assert!(rss_kib(std::process::id()).unwrap() > 0);
    }
}
