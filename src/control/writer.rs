//! What the events and capture writers share: a named thread that ends when
//! the data plane's senders are gone, and the files they create.

use std::fmt::Display;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::stats::{OutputFile, WriteErrors};

/// A writer's thread.
pub struct WriterThread {
    name: &'static str,
    thread: std::thread::JoinHandle<()>,
}

impl WriterThread {
    /// Starts `work` on a thread called `name`.
    pub(crate) fn spawn(name: &'static str, work: impl FnOnce() + Send + 'static) -> io::Result<WriterThread> {
        let thread = std::thread::Builder::new().name(name.into()).spawn(work)?;
        Ok(WriterThread { name, thread })
    }

    /// Waits for the writer to finish: every sender must be gone first.
    pub fn join(self) {
        if self.thread.join().is_err() {
            tracing::error!(writer = self.name, "a writer thread panicked");
        }
    }
}

/// How long a reload waits for a writer to take its new file: the writer
/// takes it between two batches, so only a writer stuck on a write waits
/// this long (the reload then goes on; the writer takes the file later).
pub(crate) const SWITCH_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Creates the directory `path` goes in, if it names one.
pub(crate) fn create_dir_of(path: &Path) -> io::Result<()> {
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => std::fs::create_dir_all(dir),
        None => Ok(()),
    }
}

/// The failed writes of one output: each is counted ([`WriteErrors`]); the
/// first is logged, the rest only counted, so a full disk costs one log line
/// and forwarding goes on.
pub struct Failures {
    output: OutputFile,
    path: PathBuf,
    errors: Arc<WriteErrors>,
    logged: bool,
}

impl Failures {
    /// The failures of `output`, written to `path`, counted in `errors`
    /// (the output's one writer thread counts them).
    pub fn new(output: OutputFile, path: PathBuf, errors: Arc<WriteErrors>) -> Failures {
        Failures { output, path, errors, logged: false }
    }

    /// The output is written to `path` from now on (a reopen): its first
    /// failed write is logged again.
    pub fn reopened(&mut self, path: PathBuf) {
        self.path = path;
        self.logged = false;
    }

    /// Counts (and the first time logs) a failed write.
    pub fn failed(&mut self, e: &dyn Display) {
        self.errors.add(self.output, 1);
        if !self.logged {
            self.logged = true;
            tracing::error!(
                file = %self.path.display(),
                error = %e,
                "cannot write the {} file; further failed writes are only counted ({}_write_errors), forwarding goes on",
                self.output.name(),
                self.output.name(),
            );
        }
    }

    /// Counts the write if it failed.
    pub fn check<T, E: Display>(&mut self, result: Result<T, E>) {
        if let Err(e) = result {
            self.failed(&e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file system that is always full.
    struct Full;

    impl io::Write for Full {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from_raw_os_error(28))
        }
        fn flush(&mut self) -> io::Result<()> {
            Err(io::Error::from_raw_os_error(28))
        }
    }

    #[test]
    fn every_failed_write_is_counted_under_its_file() {
        use io::Write;
        let errors = Arc::new(WriteErrors::default());
        let mut f = Failures::new(OutputFile::Events, "events.jsonl".into(), Arc::clone(&errors));
        let mut out = io::BufWriter::with_capacity(64, Full);
        for _ in 0..10 {
            f.check(writeln!(out, "{}", "x".repeat(100)));
        }
        f.check(out.flush());
        assert_eq!(errors.get(OutputFile::Events), 11);
        assert_eq!((errors.get(OutputFile::Capture), errors.get(OutputFile::Stats)), (0, 0));
        f.check(Ok::<(), io::Error>(()));
        assert_eq!(errors.get(OutputFile::Events), 11);
    }
}
