//! Lost devices: a TUN device deleted underneath op25b, or the network
//! namespace it was made in gone from its name.
//!
//! What the kernel reports, measured (kernel 6.18, tun-rs 2.8.16): after
//! `ip link del` of a TUN (or the end of its namespace) the queue's file
//! descriptor stays open but detached: poll(2) returns POLLERR at once (tun-rs
//! says "fd error"), and every read and write fails with EBADFD. A link set
//! down is not a loss: reads find nothing and writes fail with EIO until it is
//! up again. `ip netns delete NAME` only removes the name: the namespace and
//! the device in it live on while anything holds them, and op25b's own queues
//! do (each TUN file pins the namespace it was opened in), so no read or
//! write ever fails. The watch thread here notices the name instead.
//!
//! Policy: the first loss is recorded once, the owner is told (op25b then
//! stops with one log line naming the device and exits non-zero, so a
//! supervisor restarts it); the workers log nothing about it and stop reading
//! the lost queue, so nothing spins or floods the log meanwhile.

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often the watch thread looks at the namespaces' names.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// A device op25b lost.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeviceFault {
    /// `subscriber` or `upstream`.
    pub side: &'static str,
    /// The TUN device's name.
    pub device: String,
    /// The namespace it was made in, if any.
    pub netns: Option<String>,
    /// What showed the loss.
    pub cause: String,
}

impl fmt::Display for DeviceFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} device {}", self.side, self.device)?;
        if let Some(ns) = &self.netns {
            write!(f, " (netns {ns})")?;
        }
        write!(f, " is gone: {}", self.cause)
    }
}

/// Whether an error of a read or write on a TUN queue means the device is gone.
pub(crate) fn is_lost(e: &io::Error) -> bool {
    e.raw_os_error() == Some(nix::errno::Errno::EBADFD as i32)
}

/// The devices' names, the first loss, and whom to tell.
pub(crate) struct Faults {
    /// Device name and namespace, by device index (0 subscriber, 1 upstream).
    names: [(String, Option<String>); 2],
    first: Mutex<Option<DeviceFault>>,
    lost: AtomicBool,
    notify: Option<Arc<dyn Fn() + Send + Sync>>,
}

impl Faults {
    pub(crate) fn new(names: [(String, Option<String>); 2], notify: Option<Arc<dyn Fn() + Send + Sync>>) -> Faults {
        Faults { names, first: Mutex::new(None), lost: AtomicBool::new(false), notify }
    }

    /// Records that device `dev` is gone (only the first loss is kept) and
    /// tells the owner once.
    pub(crate) fn lost(&self, dev: usize, cause: &dyn fmt::Display) {
        let mut first = self.first.lock().unwrap_or_else(|e| e.into_inner());
        if first.is_some() {
            return;
        }
        let (device, netns) = self.names[dev].clone();
        *first = Some(DeviceFault { side: ["subscriber", "upstream"][dev], device, netns, cause: cause.to_string() });
        self.lost.store(true, Ordering::Release);
        drop(first);
        if let Some(notify) = &self.notify {
            notify();
        }
    }

    /// Whether a device was lost.
    pub(crate) fn any(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    /// The first loss.
    pub(crate) fn first(&self) -> Option<DeviceFault> {
        self.first.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Which namespace a file under /run/netns names: nsfs device and inode.
pub(crate) type NsId = (u64, u64);

/// The namespace `/run/netns/NAME` names now, if the name exists.
fn current(name: &str) -> Option<NsId> {
    fs::metadata(format!("/run/netns/{name}")).ok().map(|m| (m.dev(), m.ino()))
}

/// A thread that checks once a second that each device's namespace still
/// goes by its name; when the name is gone or names another namespace, the
/// device counts as lost.
pub(crate) struct NetnsWatch {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NetnsWatch {
    /// Watches `namespaces` (device index, name, the namespace the device was
    /// made in); no thread when there is none.
    pub(crate) fn start(namespaces: Vec<(usize, String, NsId)>, faults: Arc<Faults>) -> io::Result<NetnsWatch> {
        let stop = Arc::new(AtomicBool::new(false));
        if namespaces.is_empty() {
            return Ok(NetnsWatch { stop, thread: None });
        }
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new().name("op25b-netns".into()).spawn(move || {
            while !flag.load(Ordering::Acquire) && !faults.any() {
                for (dev, name, id) in &namespaces {
                    let cause = match current(name) {
                        Some(now) if now == *id => continue,
                        Some(_) => format!("/run/netns/{name} now names another network namespace"),
                        None => format!("network namespace {name} was deleted (/run/netns/{name} is gone)"),
                    };
                    faults.lost(*dev, &cause);
                    return;
                }
                std::thread::park_timeout(WATCH_EVERY);
            }
        })?;
        Ok(NetnsWatch { stop, thread: Some(thread) })
    }

    /// Stops the thread and waits for it.
    pub(crate) fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            if t.join().is_err() {
                tracing::error!("the namespace watch panicked");
            }
        }
    }
}

impl Drop for NetnsWatch {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_first_loss_is_kept_and_told() {
        let told = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let t = Arc::clone(&told);
        let f = Faults::new(
            [("o25sub".into(), Some("lab-sub".into())), ("o25up".into(), None)],
            Some(Arc::new(move || {
                t.fetch_add(1, Ordering::Relaxed);
            })),
        );
        assert!(!f.any() && f.first().is_none());
        let ebadfd = io::Error::from_raw_os_error(nix::errno::Errno::EBADFD as i32);
        assert!(is_lost(&ebadfd));
        assert!(!is_lost(&io::Error::from_raw_os_error(nix::errno::Errno::EIO as i32)));
        f.lost(0, &ebadfd);
        f.lost(1, &"later");
        assert!(f.any());
        assert_eq!(told.load(Ordering::Relaxed), 1);
        let first = f.first().unwrap();
        assert_eq!((first.side, first.device.as_str()), ("subscriber", "o25sub"));
        assert_eq!(first.to_string(), format!("subscriber device o25sub (netns lab-sub) is gone: {ebadfd}"),);
    }
}
