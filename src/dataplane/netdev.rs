//! The kernel's own figures of a TUN device, which op25b's counters cannot
//! see: packets the kernel dropped at the device's transmit queue towards
//! op25b when op25b did not read fast enough (the device's `tx_dropped`).
//!
//! They come from the device's line of /proc/net/dev in the namespace the
//! device lives in. A proc net file stays bound to the namespace of the
//! thread that opened it, so the device set-up opens it there once, beside
//! the device, and the control thread reads it again at each scrape
//! (positioned reads from the start: the kernel renders it afresh).

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

use procfs::net::InterfaceDeviceStatus;
use procfs::FromRead;

/// /proc/net/dev of a device's namespace, and the device's name.
#[derive(Debug)]
pub(crate) struct NetDev {
    name: String,
    file: File,
}

/// Reads a file from its start with positioned reads, leaving its offset alone.
struct FromStart<'a> {
    file: &'a File,
    pos: u64,
}

impl Read for FromStart<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl NetDev {
    /// Opens /proc/net/dev of the calling thread's namespace for device `name`.
    pub(crate) fn open_here(name: &str) -> io::Result<NetDev> {
        Ok(NetDev { name: name.to_string(), file: File::open("/proc/thread-self/net/dev")? })
    }

    /// Packets the kernel dropped on their way to op25b (the device's
    /// `tx_dropped`), or why not: the file cannot be read or parsed, or the
    /// device is gone from it.
    pub(crate) fn queue_dropped(&self) -> Result<u64, String> {
        let all =
            InterfaceDeviceStatus::from_read(FromStart { file: &self.file, pos: 0 }).map_err(|e| e.to_string())?;
        all.0.get(&self.name).map(|d| d.sent_drop).ok_or_else(|| format!("{} is gone from /proc/net/dev", self.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The loopback device of the test's namespace is always there, and a
    /// second read sees the file afresh.
    #[test]
    fn reads_a_device_line_again_and_again() {
        let lo = NetDev::open_here("lo").expect("/proc/thread-self/net/dev opens");
        assert!(lo.queue_dropped().is_ok());
        assert!(lo.queue_dropped().is_ok());
        let none = NetDev::open_here("o25-none-such").expect("opens");
        assert_eq!(none.queue_dropped(), Err("o25-none-such is gone from /proc/net/dev".into()));
    }
}
