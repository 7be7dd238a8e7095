//! The lab's state file (`/run/NAME/lab.json`): what `op25b lab up` made and
//! started, written before each thing is made, so `down` removes exactly
//! that, also after a crash. A process is recorded with its start time: a
//! PID reused by another process is never signalled.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::def::Names;
use super::LabError;

/// Version of the state file's layout.
const VERSION: u32 = 1;

/// A process the lab started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proc {
    /// Its PID.
    pub pid: u32,
    /// Its start time (clock ticks since boot, /proc/PID/stat field 22).
    pub start: u64,
}

impl Proc {
    /// The process `pid` as it is now, if it exists.
    pub fn of(pid: u32) -> Option<Proc> {
        start_time(pid).map(|start| Proc { pid, start })
    }

    /// Whether this very process still runs (not exited, not a zombie).
    pub fn alive(&self) -> bool {
        start_time(self.pid) == Some(self.start) && proc_state(self.pid) != Some('Z')
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL; `false` if it was gone already.
    pub fn stop(&self, grace: Duration) -> bool {
        if !self.alive() {
            return false;
        }
        let pid = Pid::from_raw(self.pid as i32);
        let _ = kill(pid, Signal::SIGTERM);
        if !self.wait_gone(grace) {
            tracing::warn!(pid = self.pid, "ignored SIGTERM: sending SIGKILL");
            let _ = kill(pid, Signal::SIGKILL);
            self.wait_gone(Duration::from_secs(5));
        }
        true
    }

    fn wait_gone(&self, within: Duration) -> bool {
        let t0 = Instant::now();
        while self.alive() {
            if t0.elapsed() >= within {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }
}

/// Field 22 of /proc/PID/stat.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After "pid (comm) ": comm may hold spaces and parentheses.
    let rest = &stat[stat.rfind(") ")? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(") ")? + 2..].chars().next()
}

/// What a lab made and started.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    /// Layout version.
    pub version: u32,
    /// The lab's names.
    pub names: Names,
    /// Namespaces created (deleted by `down`).
    pub namespaces: Vec<String>,
    /// The `op25b run` process.
    pub op25b: Option<Proc>,
    /// The SMTP servers' process.
    pub servers: Option<Proc>,
    /// The config op25b runs (in the state directory).
    pub config: PathBuf,
    /// The config it was copied from, if the user gave one (for `reload`).
    pub source_config: Option<PathBuf>,
    /// The control socket, if the lab added one.
    pub socket: Option<PathBuf>,
    /// The op25b instances of a lab of several (`up --instances N`); empty
    /// for a lab of one, which runs `op25b`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<Instance>,
    /// The kernel forwards instead of op25b (`up --router kernel`).
    #[serde(default)]
    pub kernel_router: bool,
    /// The kind of upstream the lab gave op25b (`up --upstream`).
    #[serde(default)]
    pub upstream: super::veth::Upstream,
}

/// One op25b instance of a lab of several: its devices, files and process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// Its number, 0 ..
    pub index: usize,
    /// Its subscriber-side TUN (in the subscriber namespace).
    pub sub_tun: String,
    /// Its upstream TUN (in the outside namespace).
    pub up_tun: String,
    /// Its config, log and control socket live here.
    pub dir: PathBuf,
    /// Its control socket.
    pub socket: PathBuf,
    /// The `op25b run` process.
    pub op25b: Option<Proc>,
}

impl LabState {
    /// A new, empty state for the lab `names`.
    pub fn new(names: &Names) -> LabState {
        LabState {
            version: VERSION,
            names: names.clone(),
            namespaces: Vec::new(),
            op25b: None,
            servers: None,
            config: names.state_dir().join("op25b.toml"),
            source_config: None,
            socket: None,
            instances: Vec::new(),
            kernel_router: false,
            upstream: super::veth::Upstream::Tun,
        }
    }

    /// The state file of lab `names`.
    pub fn path(names: &Names) -> PathBuf {
        names.state_dir().join("lab.json")
    }

    /// Reads the state of lab `names`: `None` if there is no file; an error
    /// naming the file if it cannot be read or parsed.
    pub fn load(names: &Names) -> Result<Option<LabState>, LabError> {
        let path = Self::path(names);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(LabError::io(&path, e)),
        };
        let state: LabState = serde_json::from_str(&text).map_err(|e| {
            LabError::State(format!("{}: {e} (`op25b lab down` removes the lab by its names)", path.display()))
        })?;
        if state.version != VERSION || state.names.name != names.name {
            return Err(LabError::State(format!("{}: another layout or lab than this op25b knows", path.display())));
        }
        Ok(Some(state))
    }

    /// Writes the state atomically (a temporary file renamed over it).
    pub fn save(&self) -> Result<(), LabError> {
        let path = Self::path(&self.names);
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self).map_err(|e| LabError::State(e.to_string()))?;
        std::fs::write(&tmp, text + "\n").map_err(|e| LabError::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| LabError::io(&path, e))
    }
}

/// Creates the state directory, root-only.
pub fn make_dir(dir: &Path) -> Result<(), LabError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| LabError::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_changed_start_time_is_not() {
        let me = Proc::of(std::process::id()).expect("own /proc entry");
        assert!(me.alive());
        assert!(!Proc { start: me.start + 1, ..me }.alive());
    }

    #[test]
    fn the_state_round_trips_through_json() {
        let names = Names::new("o25unit").expect("valid name");
        let mut s = LabState::new(&names);
        s.namespaces.push(names.sub_ns.clone());
        s.op25b = Some(Proc { pid: 7, start: 9 });
        let back: LabState = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back.op25b, s.op25b);
        assert_eq!(back.namespaces, s.namespaces);
    }
}
