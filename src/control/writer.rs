//! What the events and capture writers share: a named thread that ends when
//! the data plane's senders are gone, and the files they create.

use std::io;
use std::path::Path;

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

/// Creates the directory `path` goes in, if it names one.
pub(crate) fn create_dir_of(path: &Path) -> io::Result<()> {
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => std::fs::create_dir_all(dir),
        None => Ok(()),
    }
}
