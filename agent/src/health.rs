//! Health samples for heartbeats: CPU and memory of this process and the
//! host (from /proc), free space and inodes of the workspace (statvfs),
//! and whether the workspace can take work at all.
//!
//! A workspace that is nearly full, out of inodes or not writable is a
//! *problem*: the agent refuses new channels and jobs while it lasts and
//! says why in its health, so that the control plane routes elsewhere and
//! an operator sees the cause instead of a failed job.

use std::path::{Path, PathBuf};

use nix::{
    sys::statvfs::statvfs,
    unistd::{SysconfVar, sysconf},
};
use tether::{config::format_size, proto::HealthSample};
use tokio::time::Instant;

/// Below these, the workspace is too full to take work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thresholds {
    /// Free bytes.
    pub min_disk_free: u64,
    /// Free inodes.
    pub min_inodes_free: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            min_disk_free: 64 << 20,
            min_inodes_free: 1000,
        }
    }
}

/// A problem that makes the agent refuse work.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Stable code: `disk_low`, `inodes_low` or `workspace_not_writable`.
    pub code: &'static str,
    /// What is wrong and what to do, for operators.
    pub message: String,
}

/// Takes samples; keeps the previous CPU counters to compute rates.
#[derive(Debug)]
pub struct Sampler {
    workspace: PathBuf,
    thresholds: Thresholds,
    ticks_per_second: f64,
    page_size: u64,
    last_process: Option<(Instant, u64)>,
    last_host: Option<(u64, u64)>,
}

impl Sampler {
    pub fn new(workspace: &Path, thresholds: Thresholds) -> Self {
        let ticks = sysconf(SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100);
        let page = sysconf(SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .unwrap_or(4096);
        Self {
            workspace: workspace.to_owned(),
            thresholds,
            ticks_per_second: ticks.max(1) as f64,
            page_size: u64::try_from(page).unwrap_or(4096),
            last_process: None,
            last_host: None,
        }
    }

    /// A sample of everything this module measures (the session fills in
    /// channels, jobs, config hash and certificate), and the problem, if
    /// any. Values that cannot be read stay 0.
    pub fn sample(&mut self) -> (HealthSample, Option<Problem>) {
        let mut s = HealthSample::default();
        if let Some(ticks) = process_cpu_ticks() {
            let now = Instant::now();
            if let Some((then, before)) = self.last_process {
                let secs = now.duration_since(then).as_secs_f64();
                if secs > 0.0 {
                    let used = ticks.saturating_sub(before) as f64 / self.ticks_per_second;
                    s.process_cpu_percent = used / secs * 100.0;
                }
            }
            self.last_process = Some((now, ticks));
        }
        if let Some((busy, total)) = host_cpu_ticks() {
            if let Some((busy0, total0)) = self.last_host {
                let dt = total.saturating_sub(total0);
                if dt > 0 {
                    s.host_cpu_percent = busy.saturating_sub(busy0) as f64 / dt as f64 * 100.0;
                }
            }
            self.last_host = Some((busy, total));
        }
        s.process_rss_bytes = self.rss_bytes();
        let (total, available) = host_memory();
        s.host_memory_total_bytes = total;
        s.host_memory_available_bytes = available;
        let problem = self.workspace_sample(&mut s);
        if let Some(p) = &problem {
            s.problem = p.message.clone();
            s.problem_code = p.code.into();
        }
        (s, problem)
    }

    fn rss_bytes(&self) -> u64 {
        std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|t| t.split_whitespace().nth(1)?.parse::<u64>().ok())
            .map_or(0, |pages| pages.saturating_mul(self.page_size))
    }

    fn workspace_sample(&self, s: &mut HealthSample) -> Option<Problem> {
        let dir = self.workspace.display();
        match statvfs(&self.workspace) {
            Ok(st) => {
                let frag = st.fragment_size().max(1);
                s.workspace_disk_free_bytes = st.blocks_available().saturating_mul(frag);
                s.workspace_disk_total_bytes = st.blocks().saturating_mul(frag);
                s.workspace_inodes_free = st.files_available();
                s.workspace_inodes_total = st.files();
            }
            Err(e) => {
                return Some(Problem {
                    code: "workspace_not_writable",
                    message: format!(
                        "cannot inspect the workspace {dir}: {e}; check that it exists and that the agent's user may use it"
                    ),
                });
            }
        }
        let t = self.thresholds;
        if s.workspace_disk_free_bytes < t.min_disk_free {
            return Some(Problem {
                code: "disk_low",
                message: format!(
                    "the workspace {dir} has {} free, below min_disk_free ({}); free space there (or lower min_disk_free) — \
                     the agent takes no new channels or jobs until then",
                    format_size(s.workspace_disk_free_bytes),
                    format_size(t.min_disk_free)
                ),
            });
        }
        // Filesystems without inode limits (btrfs, some overlays) report 0
        // total inodes: nothing to run out of.
        if s.workspace_inodes_total > 0 && s.workspace_inodes_free < t.min_inodes_free {
            return Some(Problem {
                code: "inodes_low",
                message: format!(
                    "the workspace {dir} has {} free inodes, below min_inodes_free ({}); delete small files there \
                     (or lower min_inodes_free) — the agent takes no new channels or jobs until then",
                    s.workspace_inodes_free, t.min_inodes_free
                ),
            });
        }
        if let Err(e) = write_check(&self.workspace) {
            return Some(Problem {
                code: "workspace_not_writable",
                message: format!(
                    "cannot write to the workspace {dir}: {e}; give the agent's user write access (e.g. chown) — \
                     the agent takes no new channels or jobs until then"
                ),
            });
        }
        None
    }
}

/// Creates and removes a file: the only sure test of writability (modes
/// lie under ACLs, read-only mounts and full disks).
fn write_check(dir: &Path) -> std::io::Result<()> {
    let path = dir.join(".tether-write-check");
    std::fs::write(&path, b"ok")?;
    std::fs::remove_file(&path)
}

/// utime + stime of this process, clock ticks.
fn process_cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces; fields after ")" are fixed.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ")": state is field 3, so utime (14) and stime (15) are at 11, 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// (busy, total) jiffies over all CPUs of the host.
fn host_cpu_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let values: Vec<u64> = line
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = values.iter().take(8).sum();
    // idle + iowait
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// (total, available) bytes of host memory.
fn host_memory() -> (u64, u64) {
    let Ok(info) = std::fs::read_to_string("/proc/meminfo") else {
        return (0, 0);
    };
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb.saturating_mul(1024))
    };
    (field("MemTotal:"), field("MemAvailable:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_reads_the_workspace_and_the_host() {
        let dir = tempfile::tempdir().unwrap();
        let mut sampler = Sampler::new(dir.path(), Thresholds::default());
        let (first, problem) = sampler.sample();
        assert_eq!(problem, None, "{first:?}");
        assert!(first.workspace_disk_total_bytes > 0);
        assert!(first.host_memory_total_bytes >= first.host_memory_available_bytes);
        assert!(first.process_rss_bytes > 0);
        // Rates need two samples; burn CPU until the kernel counts a tick
        // (bounded: a few seconds at most).
        let start = process_cpu_ticks().unwrap();
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        let mut x = 0u64;
        while process_cpu_ticks().unwrap() == start && Instant::now() < deadline {
            for i in 0..100_000u64 {
                x = x.wrapping_mul(31).wrapping_add(i);
            }
            std::hint::black_box(x);
        }
        let (second, _) = sampler.sample();
        assert!(second.process_cpu_percent > 0.0, "{second:?}");
        assert!(
            dir.path().read_dir().unwrap().next().is_none(),
            "the write check leaves nothing behind"
        );
    }

    #[test]
    fn a_full_workspace_is_a_problem_that_names_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let mut sampler = Sampler::new(
            dir.path(),
            Thresholds {
                min_disk_free: u64::MAX,
                min_inodes_free: 0,
            },
        );
        let (s, problem) = sampler.sample();
        let p = problem.expect("nothing has u64::MAX bytes free");
        assert_eq!(p.code, "disk_low");
        assert!(p.message.contains("min_disk_free"), "{}", p.message);
        assert_eq!(s.problem_code, "disk_low");

        let mut sampler = Sampler::new(
            dir.path(),
            Thresholds {
                min_disk_free: 0,
                min_inodes_free: u64::MAX,
            },
        );
        let (s, problem) = sampler.sample();
        if s.workspace_inodes_total > 0 {
            assert_eq!(problem.map(|p| p.code), Some("inodes_low"));
        }
    }

    #[test]
    fn a_missing_workspace_is_a_problem() {
        let dir = tempfile::tempdir().unwrap();
        let mut sampler = Sampler::new(&dir.path().join("gone"), Thresholds::default());
        let (_, problem) = sampler.sample();
        assert_eq!(problem.map(|p| p.code), Some("workspace_not_writable"));
    }
}
