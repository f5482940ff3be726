//! Helpers of the controller's scale benchmark (`benches/fleet_sim.rs`):
//! the simulated fleet's layout, the ideal wall time under the fleet limits,
//! and figures of a process read from `/proc` (memory, open files, CPU).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;

/// One declared member and its agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub set: String,
    /// `p` (the primary) or `s` (the standby).
    pub member: &'static str,
    pub agent: String,
    pub host: String,
}

/// `sets` sets of two: set `sNNN` has member `p` (agent `sNNN-p`) and `s`
/// (agent `sNNN-s`). Hosts `hNN`: the primary of set i is on host i mod H,
/// its standby on host (i + H/2) mod H, so every host holds as many
/// primaries as standbys and the tests (on the standbys) are spread evenly.
pub fn layout(sets: usize, hosts: usize) -> Vec<Member> {
    let hosts = hosts.max(1);
    let width = (sets.max(2) - 1).to_string().len().max(3);
    let hwidth = (hosts.max(2) - 1).to_string().len().max(2);
    let mut out = Vec::with_capacity(sets * 2);
    for i in 0..sets {
        let set = format!("s{i:0width$}");
        for (member, host) in [("p", i % hosts), ("s", (i + hosts / 2) % hosts)] {
            out.push(Member {
                agent: format!("{set}-{member}"),
                set: set.clone(),
                member,
                host: format!("h{host:0hwidth$}"),
            });
        }
    }
    out
}

/// What the limits allow when the controller costs nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ideal {
    pub wall: Duration,
    /// Tests run in rounds of at most `at_once`.
    pub rounds: usize,
    /// The most tests that can run at once: min(F, Σ_h min(tests_h, M), T).
    pub at_once: usize,
}

/// The ideal wall time of `tests_per_host` tests of `d` each under a fleet
/// limit F and a per-host limit M: the number of rounds is the larger of
/// ceil(T / F) and, over the hosts, ceil(tests on the host / M).
pub fn ideal(
    tests_per_host: &BTreeMap<String, usize>,
    fleet: usize,
    per_host: usize,
    d: Duration,
) -> Ideal {
    let (fleet, per_host) = (fleet.max(1), per_host.max(1));
    let tests: usize = tests_per_host.values().sum();
    let busiest = tests_per_host
        .values()
        .map(|t| t.div_ceil(per_host))
        .max()
        .unwrap_or(0);
    let rounds = tests.div_ceil(fleet).max(busiest);
    let at_once = tests_per_host
        .values()
        .map(|t| (*t).min(per_host))
        .sum::<usize>()
        .min(fleet)
        .min(tests);
    Ideal {
        wall: d * rounds as u32,
        rounds,
        at_once,
    }
}

/// How long each place stayed empty in a run that kept at most `at_once`
/// tests running: with the starts and finishes sorted, the (i + at_once)-th
/// test could only start once the i-th had finished, so
/// `start[i + at_once] - finish[i]` is the time from one test's end (as its
/// agent recorded it) to the next test's start on the freed place (as that
/// agent recorded it): relaying the result, storing the verdict, choosing
/// and ordering the next test. Exact when the fleet limit is what binds;
/// an approximation when a per-host limit is.
pub fn turnarounds(starts: &[f64], finishes: &[f64], at_once: usize) -> Vec<f64> {
    let mut s = starts.to_vec();
    let mut f = finishes.to_vec();
    s.sort_by(f64::total_cmp);
    f.sort_by(f64::total_cmp);
    let c = at_once.max(1);
    s.iter()
        .skip(c)
        .zip(&f)
        .map(|(start, finish)| start - finish)
        .collect()
}

/// Mean, median, 90th percentile and maximum of `xs` (zeros when empty).
pub fn summary(xs: &[f64]) -> (f64, f64, f64, f64) {
    if xs.is_empty() {
        return (0.0, 0.0, 0.0, 0.0);
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (
        v.iter().sum::<f64>() / v.len() as f64,
        at(0.5),
        at(0.9),
        v[v.len() - 1],
    )
}

/// Raise this process's soft RLIMIT_NOFILE to its hard limit; returns the
/// (soft, hard) limits found.
pub fn raise_nofile() -> anyhow::Result<(u64, u64)> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok((soft, hard))
}

/// Figures of one process from `/proc`.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcSample {
    pub rss_kib: u64,
    /// The peak resident set size (VmHWM), kept by the kernel.
    pub hwm_kib: u64,
    pub fds: u64,
    pub threads: u64,
    /// User + system CPU time, in seconds.
    pub cpu_secs: f64,
}

pub fn proc_sample(pid: u32) -> anyhow::Result<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat"))?;
    // After the command name (in parentheses, may hold spaces) come fields
    // 3, 4, ...; utime and stime are fields 14 and 15, in clock ticks.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    Ok(ProcSample {
        rss_kib: field("VmRSS:"),
        hwm_kib: field("VmHWM:"),
        fds,
        threads: field("Threads:"),
        cpu_secs: (ticks(14) + ticks(15)) as f64 / hz,
    })
}

/// Samples a process every 100 ms on a thread of its own and keeps the
/// peaks the kernel does not keep (open files, threads).
pub struct Sampler {
    stop: Arc<AtomicBool>,
    max_fds: Arc<AtomicU64>,
    max_threads: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    pub fn start(pid: u32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let max_fds = Arc::new(AtomicU64::new(0));
        let max_threads = Arc::new(AtomicU64::new(0));
        let (s, f, t) = (stop.clone(), max_fds.clone(), max_threads.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Ok(p) = proc_sample(pid) {
                    f.fetch_max(p.fds, Ordering::Relaxed);
                    t.fetch_max(p.threads, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Sampler {
            stop,
            max_fds,
            max_threads,
            thread: Some(thread),
        }
    }

    /// The most open files and threads seen so far.
    pub fn peaks(&self) -> (u64, u64) {
        (
            self.max_fds.load(Ordering::Relaxed),
            self.max_threads.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ideal_takes_the_tighter_limit() {
        let hosts: BTreeMap<String, usize> = (0..50).map(|h| (format!("h{h}"), 10)).collect();
        let d = Duration::from_secs(2);
        let i = |wall: u32, rounds, at_once| Ideal {
            wall: d * wall,
            rounds,
            at_once,
        };
        // 500 tests, fleet 100: 5 rounds; 10 per host, 2 at once: 5 rounds.
        assert_eq!(ideal(&hosts, 100, 2, d), i(5, 5, 100));
        // The fleet limit is tighter.
        assert_eq!(ideal(&hosts, 50, 2, d), i(10, 10, 50));
        // The hosts are tighter.
        assert_eq!(ideal(&hosts, 500, 1, d), i(10, 10, 50));
        // One at a time.
        assert_eq!(ideal(&hosts, 1, usize::MAX, d), i(500, 500, 1));
        // One busy host sets the pace.
        let mut uneven = hosts.clone();
        uneven.insert("busy".into(), 30);
        assert_eq!(ideal(&uneven, 1000, 2, d).rounds, 15);
    }

    #[test]
    fn the_layout_spreads_tests_evenly() {
        let m = layout(500, 50);
        assert_eq!(m.len(), 1000);
        assert_eq!(m[0].agent, "s000-p");
        assert_eq!(m[999].agent, "s499-s");
        assert_eq!(m[999].set, "s499");
        let mut per_host: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
        for x in &m {
            let e = per_host.entry(&x.host).or_default();
            if x.member == "s" { e.1 += 1 } else { e.0 += 1 }
        }
        assert_eq!(per_host.len(), 50);
        assert!(per_host.values().all(|&(p, s)| p == 10 && s == 10));
        // Small fleets work too.
        assert_eq!(layout(1, 1).len(), 2);
        assert_eq!(layout(10, 50)[1].host, "h25");
    }

    #[test]
    fn turnarounds_pair_each_start_with_the_place_it_waited_for() {
        // Two places; tests of 2 s; each place is refilled 0.1 s after it
        // frees, the second place started 0.5 s late.
        let starts = [0.0, 0.5, 2.1, 2.6, 4.2];
        let finishes = [2.0, 2.5, 4.1, 4.6, 6.2];
        let t = turnarounds(&starts, &finishes, 2);
        assert_eq!(t.len(), 3);
        assert!(t.iter().all(|x| (x - 0.1).abs() < 1e-9), "{t:?}");
        assert!(turnarounds(&starts, &finishes, 10).is_empty());
        let (mean, p50, p90, max) = summary(&[1.0, 2.0, 3.0, 4.0, 10.0]);
        assert_eq!((mean, p50, p90, max), (4.0, 3.0, 10.0, 10.0));
        assert_eq!(summary(&[]), (0.0, 0.0, 0.0, 0.0));
    }

    #[test]
    fn this_process_can_be_sampled() {
        let p = proc_sample(std::process::id()).unwrap();
        assert!(p.rss_kib > 0 && p.hwm_kib >= p.rss_kib && p.fds > 0 && p.threads > 0);
    }
}
