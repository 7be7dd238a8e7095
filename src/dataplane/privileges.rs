//! What `op25b run` needs from the kernel before it creates anything, checked
//! at start so that a missing capability is one clear line (and exit status
//! 2), not an `EPERM` from deep inside device setup.
//!
//! - CAP_NET_ADMIN: creating a TUN device (TUNSETIFF), its MTU, queue length
//!   and link state, and writing its sysctls.
//! - CAP_SYS_ADMIN: only when the config puts a device in a network namespace
//!   (`setns(CLONE_NEWNET)` needs it).
//! - Opening `/dev/net/tun` read-write: ordinary file permissions. Most
//!   distributions make it 0666; where it is 0600 (some containers) a
//!   non-root user needs CAP_DAC_OVERRIDE or a mode or ACL that lets it in.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::MetadataExt;

use crate::config::Config;

use super::DeviceError;

/// The TUN clone device.
pub const TUN_PATH: &str = "/dev/net/tun";

/// Capability numbers (linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;

/// The process's effective capabilities and user, from /proc/self/status.
#[derive(Debug, Clone, Copy)]
struct Creds {
    cap_eff: u64,
    euid: u32,
}

impl Creds {
    fn read() -> io::Result<Creds> {
        Creds::parse(&std::fs::read_to_string("/proc/self/status")?)
            .ok_or_else(|| io::Error::other("/proc/self/status has no CapEff or Uid line"))
    }

    fn parse(status: &str) -> Option<Creds> {
        let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).map(str::trim);
        let cap_eff = u64::from_str_radix(field("CapEff:")?, 16).ok()?;
        // Uid: real, effective, saved, filesystem.
        let euid = field("Uid:")?.split_whitespace().nth(1)?.parse().ok()?;
        Some(Creds { cap_eff, euid })
    }

    fn has(&self, cap: u32) -> bool {
        self.cap_eff & (1 << cap) != 0
    }
}

/// Checks that this process can create the devices `config` asks for:
/// the capabilities, then `/dev/net/tun`. The error names what is missing
/// and how to grant it.
pub fn check(config: &Config) -> Result<(), DeviceError> {
    let creds = Creds::read().map_err(|cause| DeviceError::Tun {
        name: config.subscriber.tun.clone(),
        what: "read the process's capabilities",
        cause,
    })?;
    check_with(config, creds)?;
    // Open it once as the devices will, so a permission problem is named here.
    match OpenOptions::new().read(true).write(true).open(TUN_PATH) {
        Ok(_) => Ok(()),
        Err(e) if matches!(e.kind(), io::ErrorKind::PermissionDenied) => Err(tun_access(creds.euid, &e)),
        Err(cause) => Err(DeviceError::Tun { name: config.subscriber.tun.clone(), what: "open /dev/net/tun", cause }),
    }
}

fn check_with(config: &Config, creds: Creds) -> Result<(), DeviceError> {
    if !creds.has(CAP_NET_ADMIN) {
        return Err(DeviceError::Capability {
            capability: "CAP_NET_ADMIN",
            why: "to create the TUN devices".into(),
            euid: creds.euid,
        });
    }
    let namespaced = [("subscriber", &config.subscriber), ("upstream", &config.upstream)]
        .into_iter()
        .find_map(|(side, d)| d.netns.as_ref().map(|ns| format!("{side}.netns = {ns:?}")));
    if let Some(which) = namespaced {
        if !creds.has(CAP_SYS_ADMIN) {
            return Err(DeviceError::Capability {
                capability: "CAP_SYS_ADMIN",
                why: format!("to enter the network namespace of {which}"),
                euid: creds.euid,
            });
        }
    }
    Ok(())
}

/// `/dev/net/tun` refused this user: says its mode and owner and the ways in.
fn tun_access(euid: u32, e: &io::Error) -> DeviceError {
    let detail = match std::fs::metadata(TUN_PATH) {
        Ok(m) => format!("mode {:04o}, owner uid {}", m.mode() & 0o7777, m.uid()),
        Err(_) => "mode unknown".into(),
    };
    DeviceError::TunAccess { detail: format!("{e} ({detail})"), euid }
}

/// Maps a permission error from a device step to the capability it lacked.
pub(super) fn capability_error(e: &io::Error, capability: &'static str, why: String) -> Option<DeviceError> {
    (e.raw_os_error() == Some(nix::libc::EPERM)).then(|| DeviceError::Capability {
        capability,
        why,
        euid: Creds::read().map_or(u32::MAX, |c| c.euid),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: &str = "Name:\top25b\nUid:\t0\t0\t0\t0\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
    const NOBODY_NET_ADMIN: &str = "Uid:\t65534\t65534\t65534\t65534\nCapEff:\t0000000000001000\n";

    fn lab(netns: bool) -> Config {
        let b = crate::testing::PolicyBuilder::lab();
        let b = if netns { b.devices(("s", Some("ns-s")), ("u", None)) } else { b.devices(("s", None), ("u", None)) };
        Config::parse(std::path::Path::new("t.toml"), &b.toml()).expect("lab config")
    }

    #[test]
    fn parses_the_effective_set_and_user() {
        let c = Creds::parse(ROOT).expect("root status");
        assert!(c.has(CAP_NET_ADMIN) && c.has(CAP_SYS_ADMIN));
        assert_eq!(c.euid, 0);
        let c = Creds::parse(NOBODY_NET_ADMIN).expect("nobody status");
        assert!(c.has(CAP_NET_ADMIN) && !c.has(CAP_SYS_ADMIN));
        assert_eq!(c.euid, 65534);
        assert!(Creds::parse("Uid:\t0\t0\t0\t0\n").is_none());
    }

    #[test]
    fn net_admin_is_needed_always_sys_admin_only_with_a_namespace() {
        let nobody = Creds::parse(NOBODY_NET_ADMIN).expect("status");
        check_with(&lab(false), nobody).expect("CAP_NET_ADMIN is enough without namespaces");
        let e = check_with(&lab(true), nobody).expect_err("a namespace needs CAP_SYS_ADMIN").to_string();
        assert!(e.contains("CAP_SYS_ADMIN") && e.contains("subscriber.netns = \"ns-s\""), "{e}");
        let none = Creds { cap_eff: 0, euid: 65534 };
        let e = check_with(&lab(false), none).expect_err("nothing without CAP_NET_ADMIN").to_string();
        assert!(e.contains("CAP_NET_ADMIN") && e.contains("uid 65534"), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
    }
}
