//! Machine statistics sent with each ping (CPU, memory, load, iowait, disk usage, disk and network
//! I/O totals and rates), from `sysinfo`; iowait from `/proc/stat` (Linux), 0 elsewhere. Also the
//! specifications of RegisterSpecifications (CPUs, memory, free disk of the store).

use std::path::Path;
use std::time::Instant;

use sysinfo::{Disks, Networks, System};

use crate::proto as pb;

const GIB: f64 = (1u64 << 30) as f64;

/// CPUs, memory (GiB) and free disk (GiB) of the filesystem holding `store`.
pub fn specifications(store: &Path) -> (i32, f32, f32) {
    let mut sys = System::new();
    sys.refresh_memory();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as i32;
    let mem = sys.total_memory() as f64 / GIB;
    let disk = free_space(store) as f64 / GIB;
    (cpus, mem as f32, disk as f32)
}

/// Free bytes of the filesystem holding `path` (statvfs), 0 if it cannot be read.
pub fn free_space(path: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt as _;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return 0;
    };
    // SAFETY: statvfs writes into the zeroed struct we own; `c` is a valid C string.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut st) == 0 {
            st.f_bavail as u64 * st.f_frsize as u64
        } else {
            0
        }
    }
}

/// Samples machine statistics; rates are computed between two samples.
pub struct StatsCollector {
    sys: System,
    disks: Disks,
    networks: Networks,
    last: Option<Sample>,
}

struct Sample {
    at: Instant,
    cpu_times: Option<(u64, u64)>,
    disk_read: u64,
    disk_written: u64,
    net_recv: u64,
    net_sent: u64,
}

impl Default for StatsCollector {
    fn default() -> Self {
        Self::new()
    }
}

impl StatsCollector {
    pub fn new() -> StatsCollector {
        let mut sys = System::new();
        sys.refresh_cpu_usage();
        StatsCollector {
            sys,
            disks: Disks::new_with_refreshed_list(),
            networks: Networks::new_with_refreshed_list(),
            last: None,
        }
    }

    /// Statistics now (rates over the time since the previous call; 0 on the first).
    pub fn sample(&mut self) -> pb::WorkerStats {
        self.sys.refresh_cpu_usage();
        self.sys.refresh_memory();
        self.disks.refresh(true);
        self.networks.refresh(true);
        let now = Instant::now();
        let total_mem = self.sys.total_memory().max(1) as f64;
        let mut disks = Vec::new();
        let (mut disk_read, mut disk_written) = (0u64, 0u64);
        for d in self.disks.list() {
            let usage = d.usage();
            disk_read += usage.total_read_bytes;
            disk_written += usage.total_written_bytes;
            if d.total_space() == 0 {
                continue;
            }
            let used = d.total_space().saturating_sub(d.available_space()) as f64;
            disks.push(pb::DiskUsage {
                device_name: format!(
                    "{} ({})",
                    d.name().to_string_lossy(),
                    d.mount_point().display()
                ),
                usage_percent: (used * 100.0 / d.total_space() as f64) as f32,
            });
        }
        let (mut net_recv, mut net_sent) = (0u64, 0u64);
        for (name, data) in self.networks.iter() {
            if name == "lo" {
                continue;
            }
            net_recv += data.total_received();
            net_sent += data.total_transmitted();
        }
        let sample = Sample {
            at: now,
            cpu_times: proc_stat_cpu(),
            disk_read,
            disk_written,
            net_recv,
            net_sent,
        };
        let (mut iowait, mut rates) = (0.0f32, [0.0f32; 4]);
        if let Some(prev) = &self.last {
            let secs = now.duration_since(prev.at).as_secs_f64().max(1e-3);
            let rate = |a: u64, b: u64| (a.saturating_sub(b) as f64 / secs) as f32;
            rates = [
                rate(sample.disk_read, prev.disk_read),
                rate(sample.disk_written, prev.disk_written),
                rate(sample.net_recv, prev.net_recv),
                rate(sample.net_sent, prev.net_sent),
            ];
            if let (Some((w1, t1)), Some((w0, t0))) = (sample.cpu_times, prev.cpu_times)
                && t1 > t0
            {
                iowait = ((w1.saturating_sub(w0)) as f64 * 100.0 / (t1 - t0) as f64) as f32;
            }
        }
        let stats = pb::WorkerStats {
            cpu_usage_percent: self.sys.global_cpu_usage(),
            mem_usage_percent: (self.sys.used_memory() as f64 * 100.0 / total_mem) as f32,
            load_1min: System::load_average().one as f32,
            iowait_percent: iowait,
            disks,
            disk_io: Some(pb::DiskIoStats {
                read_bytes_total: sample.disk_read as i64,
                write_bytes_total: sample.disk_written as i64,
                read_bytes_rate: rates[0],
                write_bytes_rate: rates[1],
            }),
            net_io: Some(pb::NetIoStats {
                recv_bytes_total: sample.net_recv as i64,
                sent_bytes_total: sample.net_sent as i64,
                recv_bytes_rate: rates[2],
                sent_bytes_rate: rates[3],
            }),
        };
        self.last = Some(sample);
        stats
    }
}

/// (iowait, total) jiffies of the `cpu` line of /proc/stat.
fn proc_stat_cpu() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    parse_proc_stat(&text)
}

fn parse_proc_stat(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let iowait = *fields.get(4)?;
    // user nice system idle iowait irq softirq steal (guest times are already in user/nice).
    let total = fields.iter().take(8).sum();
    Some((iowait, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat() {
        let text = "cpu  100 5 50 800 40 1 2 2 0 0\ncpu0 1 2 3 4 5 6 7 8\n";
        assert_eq!(parse_proc_stat(text), Some((40, 1000)));
        assert_eq!(parse_proc_stat("intr 1 2"), None);
    }

    #[test]
    fn samples_are_plausible() {
        let mut c = StatsCollector::new();
        let first = c.sample();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let s = c.sample();
        assert!((0.0..=100.0).contains(&s.mem_usage_percent), "{s:?}");
        assert!(s.mem_usage_percent > 0.0);
        assert!(s.load_1min >= 0.0);
        assert!(s.disk_io.is_some() && s.net_io.is_some());
        assert!(first.disk_io.unwrap().read_bytes_rate == 0.0);
        let (cpus, mem, disk) = specifications(Path::new("/"));
        assert!(cpus >= 1 && mem > 0.0 && disk > 0.0);
    }
}
