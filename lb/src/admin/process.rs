//! Process figures read from `/proc/self` (Linux): CPU time, open file descriptors and their
//! limit, resident and virtual memory, threads, start time. Elsewhere every figure is `None`.

use serde::Serialize;

/// One reading of the process's figures.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Process {
    pub cpu_seconds: Option<f64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
    pub resident_memory_bytes: Option<u64>,
    pub virtual_memory_bytes: Option<u64>,
    pub threads: Option<u64>,
    pub start_time_seconds: Option<f64>,
}

/// Reads the figures now.
pub fn read() -> Process {
    let mut p = Process {
        open_fds: std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| d.count() as u64),
        max_fds: rustix::process::getrlimit(rustix::process::Resource::Nofile).current,
        ..Process::default()
    };
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        stat_fields(&stat, &mut p);
    }
    p
}

/// Fills what `/proc/self/stat` holds (proc(5): after the `(comm)` field, utime is field 14,
/// stime 15, num_threads 20, starttime 22, vsize 23, rss 24, counted from 1).
fn stat_fields(stat: &str, p: &mut Process) {
    // The command name may hold spaces and parentheses: the fields start after the last ')'.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return;
    };
    let f: Vec<&str> = rest.split_ascii_whitespace().collect();
    // `f[0]` is field 3 (state).
    let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    if let (Some(u), Some(s)) = (field(14), field(15)) {
        if ticks > 0.0 {
            p.cpu_seconds = Some((u + s) as f64 / ticks);
        }
    }
    p.threads = field(20);
    p.virtual_memory_bytes = field(23);
    p.resident_memory_bytes = field(24).map(|pages| pages * rustix::param::page_size() as u64);
    if let (Some(start), Some(boot)) = (field(22), boot_time()) {
        if ticks > 0.0 {
            p.start_time_seconds = Some(boot as f64 + start as f64 / ticks);
        }
    }
}

/// Boot time, seconds since the epoch (`btime` of `/proc/stat`), read once.
fn boot_time() -> Option<u64> {
    static BOOT: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *BOOT.get_or_init(|| {
        let s = std::fs::read_to_string("/proc/stat").ok()?;
        s.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// Sets the `process_*` gauges from a reading.
pub fn record(p: &Process) {
    let set = |name: &'static str, v: Option<f64>| {
        if let Some(v) = v {
            metrics::gauge!(name).set(v);
        }
    };
    set("process_cpu_seconds_total", p.cpu_seconds);
    set("process_open_fds", p.open_fds.map(|v| v as f64));
    set("process_max_fds", p.max_fds.map(|v| v as f64));
    set(
        "process_resident_memory_bytes",
        p.resident_memory_bytes.map(|v| v as f64),
    );
    set(
        "process_virtual_memory_bytes",
        p.virtual_memory_bytes.map(|v| v as f64),
    );
    set("process_threads", p.threads.map(|v| v as f64));
    set("process_start_time_seconds", p.start_time_seconds);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (lb (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 150 0 0 20 0 7 0 \
                    1000 123456789 2048 18446744073709551615";
        let mut p = Process::default();
        stat_fields(stat, &mut p);
        let ticks = rustix::param::clock_ticks_per_second() as f64;
        assert_eq!(p.cpu_seconds, Some(400.0 / ticks));
        assert_eq!(p.threads, Some(7));
        assert_eq!(p.virtual_memory_bytes, Some(123456789));
        assert_eq!(
            p.resident_memory_bytes,
            Some(2048 * rustix::param::page_size() as u64)
        );
    }

    #[test]
    fn reads_this_process() {
        let p = read();
        if cfg!(target_os = "linux") {
            assert!(p.open_fds.unwrap() >= 3, "{p:?}");
            assert!(p.max_fds.unwrap() >= p.open_fds.unwrap(), "{p:?}");
            assert!(p.resident_memory_bytes.unwrap() > 1 << 20, "{p:?}");
            assert!(p.threads.unwrap() >= 1, "{p:?}");
        }
    }
}
