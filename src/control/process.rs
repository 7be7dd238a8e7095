//! The standard `process_*` figures of op25b itself (CPU seconds, resident and
//! virtual memory, open and maximum file descriptors, threads, start time),
//! read from /proc with the procfs crate at scrape time, on the control
//! thread: prometheus-client has no process collector of its own.

use procfs::process::{LimitValue, Process};
use procfs::WithCurrentSystemInfo;

/// One reading of /proc/self.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ProcessFigures {
    /// User and system CPU time, seconds.
    pub(crate) cpu_seconds: f64,
    /// Resident set size, bytes.
    pub(crate) resident_bytes: u64,
    /// Virtual memory size, bytes.
    pub(crate) virtual_bytes: u64,
    /// Open file descriptors.
    pub(crate) open_fds: u64,
    /// The soft limit of open file descriptors; `None` when unlimited.
    pub(crate) max_fds: Option<u64>,
    /// Threads.
    pub(crate) threads: u64,
    /// When the process started, Unix seconds.
    pub(crate) start_time_seconds: f64,
}

/// Reads the figures of this process.
pub(crate) fn read() -> procfs::ProcResult<ProcessFigures> {
    let me = Process::myself()?;
    let stat = me.stat()?;
    let ticks = procfs::ticks_per_second() as f64;
    let limits = me.limits()?;
    Ok(ProcessFigures {
        cpu_seconds: (stat.utime + stat.stime) as f64 / ticks,
        resident_bytes: stat.rss_bytes().get(),
        virtual_bytes: stat.vsize,
        open_fds: me.fd_count()? as u64,
        max_fds: match limits.max_open_files.soft_limit {
            LimitValue::Value(n) => Some(n),
            LimitValue::Unlimited => None,
        },
        threads: u64::try_from(stat.num_threads).unwrap_or(0),
        start_time_seconds: procfs::boot_time_secs()? as f64 + stat.starttime as f64 / ticks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The figures agree with what the test process can see of itself.
    #[test]
    fn the_figures_of_this_process() {
        let before = read().expect("/proc/self is readable");
        // A file opened is one more descriptor; a busy loop is CPU time.
        let files: Vec<std::fs::File> = (0..8).map(|_| std::fs::File::open("/proc/self/stat").unwrap()).collect();
        let spin = std::time::Instant::now();
        let mut x = 0u64;
        while spin.elapsed() < std::time::Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let after = read().expect("/proc/self is readable");
        assert!(after.open_fds >= before.open_fds + 8, "{before:?} -> {after:?}");
        drop(files);
        assert!(after.cpu_seconds > before.cpu_seconds, "{before:?} -> {after:?}");
        assert!(after.resident_bytes > 0 && after.virtual_bytes >= after.resident_bytes, "{after:?}");
        assert!(after.threads >= 1);
        let (soft, _) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
        let want = (soft != nix::sys::resource::RLIM_INFINITY).then_some(soft);
        assert_eq!(after.max_fds, want);
        // Started before now and after the machine booted, to the tick.
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        let boot = procfs::boot_time_secs().unwrap() as f64;
        assert!(after.start_time_seconds <= now && after.start_time_seconds >= boot, "{after:?}");
        assert_eq!(after.start_time_seconds, before.start_time_seconds);
    }
}
