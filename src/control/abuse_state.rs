//! The abuse state file (`[abuse] state_file`): the quarantines and the
//! tracked subscribers, kept across a restart (an upgrade, a crash,
//! `systemctl restart`).
//!
//! Read once at start: a quarantine that ended while op25b was down is not
//! restored. A file that cannot be read or parsed gives one warning, is
//! moved aside (renamed with a `.broken-UNIXTIME` suffix, never deleted),
//! and op25b starts empty. Written by the abuse thread when something
//! changed (at most once every [`SAVE_EVERY`], or less often if saving
//! takes long) and when op25b stops, as JSON
//! (serde), atomically: a temporary file beside it, fsync, rename, fsync of
//! the directory, so a crash leaves the old file or the new one, never half
//! of one. A failed write (a full disk) is counted (`abuse_state_write_errors`),
//! logged once, and tried again a second later until a save succeeds; op25b
//! runs on.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::writer::{create_dir_of, Failures};
use crate::state::abuse::{Abuse, Clocks, SavedAbuse, STATE_VERSION};
use crate::stats::{OutputFile, WriteErrors};

/// The shortest time between two saves while things change.
pub const SAVE_EVERY: Duration = Duration::from_secs(1);

/// A save waits at least this many times as long as the last one took, so
/// that saving a big table (4,096 subscribers under a flood of sources: 3.7 MB
/// of JSON, about 50 ms to build and serialise) takes at most a twentieth of
/// the abuse thread's time.
const SAVE_SHARE: u32 = 20;

/// Both clocks, read now.
pub fn clocks_now() -> Clocks {
    let unix = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    Clocks { instant: Instant::now(), unix }
}

/// Why a state file was not restored.
#[derive(Debug, thiserror::Error)]
enum LoadError {
    #[error("cannot read it: {0}")]
    Read(io::Error),
    #[error("it is not an op25b abuse state file: {0}")]
    Parse(serde_json::Error),
    #[error("it is of version {0}; this op25b reads version {STATE_VERSION}")]
    Version(u64),
    #[error("it is {0} bytes, more than a state file of the largest table ({MAX_BYTES})")]
    TooBig(u64),
}

/// The largest file read: a full table of the largest size (`track` =
/// 1,048,576, about 1 KB of JSON each) and room to spare.
const MAX_BYTES: u64 = 2 << 30;

fn read(path: &Path) -> Result<Option<SavedAbuse>, LoadError> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(LoadError::Read(e)),
    };
    let len = file.metadata().map_err(LoadError::Read)?.len();
    if len > MAX_BYTES {
        return Err(LoadError::TooBig(len));
    }
    let mut text = Vec::with_capacity(len as usize);
    io::Read::read_to_end(&mut io::Read::take(&mut file, MAX_BYTES + 1), &mut text).map_err(LoadError::Read)?;
    // The version first, so that a newer file says so rather than failing to parse.
    let value: serde_json::Value = serde_json::from_slice(&text).map_err(LoadError::Parse)?;
    match value.get("version").and_then(serde_json::Value::as_u64) {
        Some(v) if v == u64::from(STATE_VERSION) => {}
        Some(v) => return Err(LoadError::Version(v)),
        None => {}
    }
    serde_json::from_value(value).map(Some).map_err(LoadError::Parse)
}

/// `path` with `suffix` appended to its name.
fn beside(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Restores what `path` holds into `abuse` (at start, before the abuse
/// thread records anything). A file that is missing is no news; one that
/// cannot be used is moved aside with one warning.
pub fn load(path: &Path, abuse: &Abuse) {
    let saved = match read(path) {
        Ok(None) => return,
        Ok(Some(saved)) => saved,
        Err(e) => {
            let aside = beside(path, &format!(".broken-{}", clocks_now().unix as u64));
            match std::fs::rename(path, &aside) {
                Ok(()) => tracing::warn!(
                    file = %path.display(),
                    moved_to = %aside.display(),
                    "abuse state not restored: {e}; the file was moved aside and op25b starts with no quarantine"
                ),
                Err(r) => tracing::warn!(
                    file = %path.display(),
                    "abuse state not restored: {e}; moving it aside failed too ({r}); op25b starts with no quarantine"
                ),
            }
            return;
        }
    };
    let r = abuse.restore(saved, &clocks_now());
    tracing::info!(
        file = %path.display(),
        quarantines = r.quarantines,
        ended_meanwhile = r.ended,
        tracked = r.tracked,
        left_out = r.left_out,
        "abuse state restored"
    );
}

/// Writes `saved` to `path` atomically.
fn write(path: &Path, saved: &SavedAbuse) -> io::Result<()> {
    let name = path.file_name().map_or_else(|| "abuse.state".into(), |n| n.to_string_lossy().into_owned());
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let result = (|| {
        create_dir_of(path)?;
        let mut f = File::create(&tmp)?;
        let mut text = serde_json::to_vec(saved).map_err(io::Error::other)?;
        text.push(b'\n');
        f.write_all(&text)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // The rename itself is durable once the directory is.
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp); // may not exist
    }
    result
}

/// The abuse thread's side of the file: when to save, and the failures.
pub struct StateFile {
    errors: Arc<WriteErrors>,
    failures: Option<(PathBuf, Failures)>,
    /// A change not yet saved (or whose save failed).
    dirty: bool,
    /// When the last save started, and how long it took.
    last: Option<(Instant, Duration)>,
}

impl StateFile {
    /// Nothing saved yet; failed writes are counted in `errors`.
    pub fn new(errors: Arc<WriteErrors>) -> StateFile {
        StateFile { errors, failures: None, dirty: false, last: None }
    }

    /// Saves `abuse` to the file its settings name, if something changed and
    /// the last save is at least [`SAVE_EVERY`] old (`force`: whatever changed
    /// and whenever, as when op25b stops).
    pub fn tick(&mut self, abuse: &Abuse, force: bool) {
        self.dirty |= abuse.take_changed();
        let Some(path) = abuse.settings().state_file else { return };
        let now = Instant::now();
        let due = self.last.is_none_or(|(t, took)| now.duration_since(t) >= SAVE_EVERY.max(took * SAVE_SHARE));
        if !(force || (self.dirty && due)) {
            return;
        }
        let failures = match &mut self.failures {
            Some((p, f)) if *p == path => f,
            slot => {
                let f = Failures::new(OutputFile::AbuseState, path.clone(), Arc::clone(&self.errors));
                &mut slot.insert((path.clone(), f)).1
            }
        };
        let result = write(&path, &abuse.save(&clocks_now()));
        self.last = Some((now, now.elapsed()));
        match result {
            Ok(()) => self.dirty = false,
            Err(e) => failures.failed(&e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::abuse::{parse_subscriber, AbuseSettings, Quarantine};

    fn abuse(state_file: &Path) -> (Arc<Quarantine>, Abuse) {
        let q = Arc::new(Quarantine::new(16));
        let settings = AbuseSettings { state_file: Some(state_file.to_path_buf()), ..AbuseSettings::default() };
        (Arc::clone(&q), Abuse::new(settings, q))
    }

    #[test]
    fn a_quarantine_survives_and_a_broken_file_is_moved_aside() {
        let dir = std::env::temp_dir().join(format!("op25b-abuse-state-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("abuse.state");
        let key = parse_subscriber("100.64.1.10").unwrap();
        let (_, a) = abuse(&path);
        let errors = Arc::new(WriteErrors::default());
        let mut file = StateFile::new(Arc::clone(&errors));
        file.tick(&a, false);
        assert!(!path.exists(), "nothing changed, nothing written");
        a.quarantine(key, Instant::now(), Some(Duration::from_secs(600)));
        file.tick(&a, false);
        assert!(path.exists());
        let (q, b) = abuse(&path);
        load(&path, &b);
        assert!(q.until(key).is_some(), "in quarantine again");
        // A damaged file: moved aside, nothing restored.
        std::fs::write(&path, b"{\"version\":1,\"quarant").unwrap();
        let (q, c) = abuse(&path);
        load(&path, &c);
        assert!(q.is_empty() && !path.exists());
        let aside: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name()).collect();
        assert!(aside.iter().any(|n| n.to_string_lossy().starts_with("abuse.state.broken-")), "{aside:?}");
        // A newer version is not read either.
        std::fs::write(&path, b"{\"version\":2}").unwrap();
        load(&path, &c);
        assert!(!path.exists());
        assert_eq!(errors.get(OutputFile::AbuseState), 0);
        // A directory where the file should go: every failed save is counted.
        std::fs::create_dir_all(&path).unwrap();
        file.tick(&a, true);
        file.tick(&a, true);
        assert_eq!(errors.get(OutputFile::AbuseState), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
