//! The capture writer: the packets the data plane did not forward, as they
//! arrived, in a pcap file (raw IP, real timestamps), rotated by size:
//! `dropped.pcap` becomes `dropped.pcap.1` and so on, `keep` files in all.
//! `tcpdump -r` and Wireshark read it, and `op25b replay` of it gives the
//! same verdicts.

use std::cell::RefCell;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use pcap_file::DataLink;

use super::writer::{create_dir_of, Failures, WriterThread, SWITCH_WAIT};
use crate::config::CaptureConfig;
use crate::dataplane::capture::{CaptureSource, SNAPLEN};
use crate::stats::{OutputFile, WriteErrors};

/// Why the writer could not start.
#[derive(Debug, thiserror::Error)]
#[error("capture.dropped {path}: {cause}")]
pub struct CaptureError {
    path: PathBuf,
    cause: io::Error,
}

/// The file under the pcap writer, shared with the loop so that it can
/// flush whenever the queue runs empty (the writer has no flush of its own).
/// `skip` bytes written through it are left out: the header a writer over a
/// file opened again writes, which the file already holds.
struct Out {
    file: Rc<RefCell<BufWriter<File>>>,
    skip: usize,
}

impl Out {
    fn flushing_end(&self) -> Out {
        Out { file: Rc::clone(&self.file), skip: 0 }
    }
}

impl Write for Out {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        if self.skip > 0 {
            let n = self.skip.min(b.len());
            self.skip -= n;
            return Ok(n);
        }
        self.file.borrow_mut().write(b)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.borrow_mut().flush()
    }
}

fn create(path: &Path) -> io::Result<File> {
    create_dir_of(path)?;
    File::create(path)
}

/// The header of every file the writer makes.
fn header() -> PcapHeader {
    PcapHeader { datalink: DataLink::RAW, snaplen: SNAPLEN as u32, ..PcapHeader::default() }
}

/// The header's bytes.
fn header_bytes() -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER as usize);
    // Writing to a Vec cannot fail.
    let _ = header().write_to(&mut v);
    v
}

/// A pcap writer over `file` (which holds `written` bytes: 0 for a new
/// file, whose header is written now), and its flushable end.
fn pcap(file: File, written: u64) -> io::Result<(PcapWriter<Out>, Out)> {
    let out = Out { file: Rc::new(RefCell::new(BufWriter::new(file))), skip: 0 };
    let flush = out.flushing_end();
    let skip = if written > 0 { HEADER as usize } else { 0 };
    let w = PcapWriter::with_header(Out { skip, ..out }, header()).map_err(io::Error::other)?;
    Ok((w, flush))
}

/// The pcap file header's size; each record adds 16 bytes and the data.
const HEADER: u64 = 24;

/// `path` with `.n` appended.
fn numbered(path: &Path, n: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// dropped.pcap -> .1 -> .2 ...; the oldest beyond `keep` files goes.
fn rotate(path: &Path, keep: usize) -> io::Result<()> {
    let last = keep.saturating_sub(1);
    if last == 0 {
        return std::fs::remove_file(path);
    }
    for n in (1..last).rev() {
        let from = numbered(path, n);
        if from.exists() {
            std::fs::rename(&from, numbered(path, n + 1))?;
        }
    }
    std::fs::rename(path, numbered(path, 1))
}

/// The capture's file, open, with the settings to write it with.
pub struct CaptureOutput {
    file: File,
    path: PathBuf,
    /// Bytes the file holds (0: new, its header not yet written).
    written: u64,
    max: u64,
    keep: usize,
}

impl CaptureOutput {
    /// The file of `cfg` as a reload opens it again: a file at the path that
    /// starts with the writer's own header is appended to (a reload loses
    /// nothing captured); anything else at the path is replaced by a new
    /// file, as at start. `None` without `[capture] dropped`.
    pub fn reopen(cfg: &CaptureConfig) -> Result<Option<CaptureOutput>, CaptureError> {
        let Some(path) = cfg.dropped.clone() else { return Ok(None) };
        let err = |cause| CaptureError { path: path.clone(), cause };
        let ours = |mut f: &File| {
            let mut head = [0u8; HEADER as usize];
            io::Read::read_exact(&mut f, &mut head).is_ok() && head[..] == header_bytes()[..]
        };
        let existing = match std::fs::OpenOptions::new().read(true).append(true).open(&path) {
            Ok(f) if ours(&f) => Some(f),
            Ok(_) => None,
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(err(e)),
        };
        let (file, written) = match existing {
            Some(f) => {
                let len = f.metadata().map_err(err)?.len();
                (f, len)
            }
            None => (create(&path).map_err(err)?, 0),
        };
        Ok(Some(CaptureOutput { file, path, written, max: cfg.max_bytes, keep: cfg.keep }))
    }

    /// The file of `cfg` as op25b starts it: new (an old one is replaced).
    fn create(cfg: &CaptureConfig) -> Result<Option<CaptureOutput>, CaptureError> {
        let Some(path) = cfg.dropped.clone() else { return Ok(None) };
        let file = create(&path).map_err(|cause| CaptureError { path: path.clone(), cause })?;
        Ok(Some(CaptureOutput { file, path, written: 0, max: cfg.max_bytes, keep: cfg.keep }))
    }
}

/// A new output for the writer, and where it says it took it.
type Switch = (CaptureOutput, crossbeam_channel::Sender<()>);

/// The running capture writer.
pub struct CaptureWriter {
    thread: WriterThread,
    switch: crossbeam_channel::Sender<Switch>,
}

impl CaptureWriter {
    /// Makes the writer write to `output` from its next packet on (a reload
    /// or a log rotation). Waits (up to two seconds) until the writer
    /// has flushed the old file and taken the new one.
    pub fn switch(&self, output: CaptureOutput) {
        let (done_tx, done_rx) = crossbeam_channel::bounded(1);
        let path = output.path.clone();
        if self.switch.send((output, done_tx)).is_err() {
            return; // the writer has ended: op25b is stopping
        }
        if done_rx.recv_timeout(SWITCH_WAIT).is_err() {
            tracing::warn!(file = %path.display(), "the capture writer is busy; it takes the reopened file after its current write");
        }
    }

    /// Waits for the writer to finish: the data plane must have stopped first.
    pub fn join(self) {
        drop(self.switch);
        self.thread.join();
    }
}

/// Creates the file of `cfg` and starts writing what arrives from the data
/// plane, until it stops (join the thread after it); failed writes are
/// counted in `errors`. `None` without `[capture] dropped`.
pub fn start(
    cfg: &CaptureConfig,
    source: CaptureSource,
    errors: Arc<WriteErrors>,
) -> Result<Option<CaptureWriter>, CaptureError> {
    let Some(output) = CaptureOutput::create(cfg)? else { return Ok(None) };
    let path = output.path.clone();
    let failures = Failures::new(OutputFile::Capture, path.clone(), errors);
    let (switch, switches) = crossbeam_channel::unbounded();
    let thread = WriterThread::spawn("op25b-capture", move || write_loop(source, switches, output, failures))
        .map_err(|cause| CaptureError { path, cause })?;
    Ok(Some(CaptureWriter { thread, switch }))
}

/// The writer's file and where it stands.
struct Current {
    writer: PcapWriter<Out>,
    out: Out,
    path: PathBuf,
    written: u64,
    max: u64,
    keep: usize,
}

impl Current {
    fn new(o: CaptureOutput) -> io::Result<Current> {
        let (writer, out) = pcap(o.file, o.written)?;
        let written = o.written.max(HEADER);
        Ok(Current { writer, out, path: o.path, written, max: o.max, keep: o.keep })
    }

    /// Rotates the file if a record of `record` bytes would take it over `max`.
    fn make_room(&mut self, record: u64) -> io::Result<()> {
        if self.written + record <= self.max || self.written <= HEADER {
            return Ok(());
        }
        let _ = self.out.flush(); // counted with the next write if it fails
        rotate(&self.path, self.keep)?;
        let (writer, out) = pcap(create(&self.path)?, 0)?;
        (self.writer, self.out, self.written) = (writer, out, HEADER);
        Ok(())
    }
}

fn write_loop(
    source: CaptureSource,
    switches: crossbeam_channel::Receiver<Switch>,
    output: CaptureOutput,
    mut failures: Failures,
) {
    // Forwarding goes on whatever fails here; the packets are lost, counted.
    // Without a file (it could not be made) every packet is a failed write
    // until a reload opens one again.
    let mut current = Current::new(output).map_err(|e| failures.failed(&e)).ok();
    let mut switches = switches;
    loop {
        let first = crossbeam_channel::select! {
            recv(source.filled) -> c => match c {
                Ok(c) => c,
                Err(_) => break,
            },
            recv(switches) -> s => {
                match s {
                    Ok((next, done)) => {
                        // What was written goes out to the old file first.
                        if let Some(c) = &mut current {
                            failures.check(c.out.flush());
                        }
                        failures.reopened(next.path.clone());
                        current = Current::new(next).map_err(|e| failures.failed(&e)).ok();
                        let _ = done.try_send(()); // the reload may have stopped waiting
                    }
                    // No more reopens: op25b is stopping.
                    Err(_) => switches = crossbeam_channel::never(),
                }
                continue;
            }
        };
        let mut next = Some(first);
        while let Some(c) = next.take().or_else(|| source.filled.try_recv().ok()) {
            let record = 16 + c.len as u64;
            if let Some(cur) = &mut current {
                if let Err(e) = cur.make_room(record) {
                    failures.failed(&e);
                    current = None;
                }
            } else {
                failures.failed(&"no capture file");
            }
            if let Some(cur) = &mut current {
                let ts = c.at.duration_since(std::time::SystemTime::UNIX_EPOCH).unwrap_or_default();
                let orig_len = u32::try_from(c.orig_len).unwrap_or(u32::MAX);
                failures.check(cur.writer.write_packet(&PcapPacket::new(ts, orig_len, &c.buf[..c.len])));
                cur.written += record;
            }
            let _ = source.free.try_send(c.buf);
        }
        // The queue ran empty: what was written is readable now.
        if let Some(cur) = &mut current {
            failures.check(cur.out.flush());
        }
        // Let the next burst gather: a worker's send wakes this thread only
        // while it waits in `recv`, so under load one wake-up serves a
        // batch instead of one per packet (the pool holds what arrives meanwhile).
        std::thread::sleep(BATCH);
    }
}

/// How long the writer lets packets gather after a batch.
const BATCH: std::time::Duration = std::time::Duration::from_millis(5);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::capture::pool;
    use pcap_file::pcap::PcapReader;

    fn records(path: &Path) -> usize {
        let mut r = PcapReader::new(File::open(path).expect("capture file")).expect("a pcap file");
        assert_eq!(r.header().datalink, DataLink::RAW);
        let mut n = 0;
        while let Some(p) = r.next_packet() {
            p.expect("whole records");
            n += 1;
        }
        n
    }

    #[test]
    fn rotates_by_size_and_keeps_the_newest_files() {
        let dir = std::env::temp_dir().join(format!("op25b-capture-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("dropped.pcap");
        let cfg = CaptureConfig { dropped: Some(path.clone()), max_bytes: 4096, keep: 3 };
        let (sink, source) = pool();
        let writer = start(&cfg, source, Arc::default()).expect("starts").expect("configured");
        let packet = crate::testing::packets::syn("100.64.1.10", "203.0.113.25", 25);
        let mut offered = 0;
        for _ in 0..400 {
            // The pool may run empty while the writer catches up: count what went in.
            while !sink.offer(&packet, std::time::SystemTime::now()) {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            offered += 1;
        }
        drop(sink);
        writer.join();
        let files: Vec<PathBuf> = [path.clone(), numbered(&path, 1), numbered(&path, 2)].into_iter().collect();
        for f in &files {
            assert!(f.exists(), "{}", f.display());
            assert!(std::fs::metadata(f).unwrap().len() <= 4096, "{} over max_bytes", f.display());
        }
        assert!(!numbered(&path, 3).exists(), "keep = 3 files in all");
        // Each record is 16 + 40 bytes: 72 fit in 4096 after the 24-byte header.
        assert_eq!(records(&numbered(&path, 1)), 72);
        assert!(records(&path) > 0 && offered == 400);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_reopen_appends_to_its_own_file_and_starts_a_new_one_after_a_rename() {
        let dir = std::env::temp_dir().join(format!("op25b-capture-reopen-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("dropped.pcap");
        let cfg = CaptureConfig { dropped: Some(path.clone()), max_bytes: 1 << 20, keep: 3 };
        let (sink, source) = pool();
        let writer = start(&cfg, source, Arc::default()).expect("starts").expect("configured");
        let packet = crate::testing::packets::syn("100.64.1.10", "203.0.113.25", 25);
        let offer = |n: usize| {
            for _ in 0..n {
                while !sink.offer(&packet, std::time::SystemTime::now()) {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            }
        };
        let reopen = || writer.switch(CaptureOutput::reopen(&cfg).expect("reopens").expect("configured"));
        // Waits (bounded) until the file holds `n` records of the SYN's 40 bytes.
        let holds = |n: u64| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while std::fs::metadata(&path).map_or(0, |m| m.len()) != HEADER + n * (16 + 40) {
                assert!(std::time::Instant::now() < deadline, "{n} records never written");
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        };
        offer(10);
        holds(10);
        reopen();
        offer(5);
        holds(15);
        // As logrotate does: rename, then reopen.
        let rotated = dir.join("dropped.pcap.old");
        std::fs::rename(&path, &rotated).unwrap();
        reopen();
        offer(7);
        drop(sink);
        writer.join();
        assert_eq!(records(&rotated), 15, "a reopen of its own file appends to it");
        assert_eq!(records(&path), 7, "after a rename, a new file");
        // Anything else at the path is replaced by a new file.
        std::fs::write(&path, b"not a capture").unwrap();
        let out = CaptureOutput::reopen(&cfg).unwrap().unwrap();
        assert_eq!(out.written, 0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
