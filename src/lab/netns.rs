//! Named network namespaces as `ip netns` keeps them: a bind mount of the
//! namespace on /run/netns/NAME, so iproute2, op25b's `netns =` and this
//! module see the same ones. Nothing here touches the root namespace's
//! network configuration.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

use super::LabError;

/// Where named namespaces live.
const NETNS_DIR: &str = "/run/netns";

/// The path of namespace `name`.
pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Whether namespace `name` exists.
pub fn exists(name: &str) -> bool {
    path(name).exists()
}

/// /run/netns as `ip netns add` prepares it: a shared mount point, so a
/// namespace mounted there is seen from every mount namespace.
fn prepare_dir() -> Result<(), LabError> {
    let dir = Path::new(NETNS_DIR);
    std::fs::create_dir_all(dir).map_err(|e| LabError::io(dir, e))?;
    let shared = MsFlags::MS_SHARED | MsFlags::MS_REC;
    match mount(None::<&str>, dir, Some("none"), shared, None::<&str>) {
        Ok(()) => Ok(()),
        // Not a mount point yet: bind it onto itself, then make it shared.
        Err(nix::errno::Errno::EINVAL) => {
            mount(Some(dir), dir, Some("none"), MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
                .and_then(|()| mount(None::<&str>, dir, Some("none"), shared, None::<&str>))
                .map_err(|e| LabError::Netns(format!("mounting {NETNS_DIR}: {e}")))
        }
        Err(e) => Err(LabError::Netns(format!("making {NETNS_DIR} a shared mount: {e}"))),
    }
}

/// Creates namespace `name` (fails if it exists), with `lo` down as new.
pub fn create(name: &str) -> Result<(), LabError> {
    prepare_dir()?;
    let target = path(name);
    OpenOptions::new().write(true).create_new(true).mode(0o444).open(&target).map_err(|e| {
        if e.kind() == io::ErrorKind::AlreadyExists {
            LabError::Netns(format!("namespace {name} exists already (`op25b lab down` removes a lab's)"))
        } else {
            LabError::io(&target, e)
        }
    })?;
    // unshare() moves the calling thread only: do it on a thread of its own,
    // which ends with the namespace held by the mount alone.
    let made = std::thread::scope(|s| {
        s.spawn(|| -> Result<(), String> {
            unshare(CloneFlags::CLONE_NEWNET).map_err(|e| format!("unshare(CLONE_NEWNET): {e}"))?;
            mount(Some("/proc/thread-self/ns/net"), &target, Some("none"), MsFlags::MS_BIND, None::<&str>)
                .map_err(|e| format!("bind mount on {}: {e}", target.display()))
        })
        .join()
        .unwrap_or_else(|_| Err("the namespace thread panicked".to_string()))
    });
    if let Err(e) = made {
        let _ = std::fs::remove_file(&target);
        return Err(LabError::Netns(format!("creating namespace {name}: {e}")));
    }
    Ok(())
}

/// Deletes namespace `name`; nothing to do if it is absent. Processes still
/// inside keep it alive, unnamed, until they exit.
pub fn delete(name: &str) -> Result<(), LabError> {
    let target = path(name);
    if !target.exists() {
        return Ok(());
    }
    match umount2(&target, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) => {}
        Err(e) => return Err(LabError::Netns(format!("unmounting {}: {e}", target.display()))),
    }
    std::fs::remove_file(&target).map_err(|e| LabError::io(&target, e))
}

/// Opens namespace `name` for `setns`.
pub fn open(name: &str) -> Result<File, LabError> {
    let p = path(name);
    File::open(&p).map_err(|e| LabError::Netns(format!("namespace {name}: {}: {e}", p.display())))
}

/// Runs `f` on a thread inside namespace `name`: sockets it opens live there.
pub fn within<T: Send>(name: &str, f: impl FnOnce() -> Result<T, LabError> + Send) -> Result<T, LabError> {
    let file = open(name)?;
    std::thread::scope(|s| {
        s.spawn(|| {
            setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| LabError::Netns(format!("entering {name}: {e}")))?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(LabError::Netns(format!("a thread in namespace {name} panicked"))))
    })
}

/// The PIDs of processes whose network namespace is `name` (as `ip netns pids`).
pub fn pids(name: &str) -> Vec<u32> {
    use std::os::unix::fs::MetadataExt;
    let Ok(ns) = std::fs::metadata(path(name)) else { return Vec::new() };
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::metadata(format!("/proc/{pid}/ns/net")).is_ok_and(|m| m.dev() == ns.dev() && m.ino() == ns.ino())
        })
        .collect()
}
