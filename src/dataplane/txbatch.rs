//! Small frames gathered for one `sendmmsg` on an Ethernet upstream's
//! socket: a worker's drain queues them ([`TxBatch::push`]) and sends them
//! at its end, or when the batch is full. Large frames (TCP super-packets)
//! are not copied: the device sends what is queued, then them, in order.
//!
//! Invariants: the buffer is allocated once; a frame is in at most one
//! batch; `send` empties the batch whether or not the kernel took it all
//! (what it refused is one failed write for the caller to count).

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::libc;

/// Frames in a batch.
pub(crate) const SLOTS: usize = 64;
/// Longest frame a batch takes (virtio-net header and Ethernet header included).
pub(crate) const SLOT: usize = 2048;

/// A batch of frames waiting for `sendmmsg`.
pub(crate) struct TxBatch {
    buf: Box<[u8]>,
    lens: Box<[usize]>,
    n: usize,
}

impl std::fmt::Debug for TxBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxBatch").field("queued", &self.n).finish()
    }
}

impl TxBatch {
    pub(crate) fn new() -> TxBatch {
        TxBatch { buf: vec![0u8; SLOTS * SLOT].into_boxed_slice(), lens: vec![0; SLOTS].into_boxed_slice(), n: 0 }
    }

    /// Queues the frame made of `parts` (their lengths summed fit [`SLOT`]);
    /// `false` when it is too long or the batch is full.
    pub(crate) fn push(&mut self, parts: &[&[u8]]) -> bool {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len > SLOT || self.n == SLOTS {
            return false;
        }
        let mut at = self.n * SLOT;
        for p in parts {
            self.buf[at..at + p.len()].copy_from_slice(p);
            at += p.len();
        }
        self.lens[self.n] = len;
        self.n += 1;
        true
    }

    /// Whether another frame would not fit.
    pub(crate) fn is_full(&self) -> bool {
        self.n == SLOTS
    }

    /// Sends the queued frames with `sendmmsg` (as many calls as the kernel
    /// needs) and empties the batch; the frames sent, or the error that
    /// stopped the rest.
    pub(crate) fn send(&mut self, fd: &OwnedFd) -> io::Result<usize> {
        let n = std::mem::take(&mut self.n);
        if n == 0 {
            return Ok(0);
        }
        // Only the `n` headers used are written: zeroing all SLOTS of them
        // (5 KiB) cost more instructions than the rest of a one-frame send.
        let mut iov = [MaybeUninit::<libc::iovec>::uninit(); SLOTS];
        let mut msgs = [MaybeUninit::<libc::mmsghdr>::uninit(); SLOTS];
        for i in 0..n {
            // The buffer outlives the call; the kernel only reads it.
            let v =
                iov[i].write(libc::iovec { iov_base: self.buf[i * SLOT..].as_mut_ptr().cast(), iov_len: self.lens[i] });
            // SAFETY: an all-zero msghdr is valid (no address, no control data).
            let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
            hdr.msg_iov = v;
            hdr.msg_iovlen = 1;
            msgs[i].write(libc::mmsghdr { msg_hdr: hdr, msg_len: 0 });
        }
        let mut done = 0;
        while done < n {
            // SAFETY: msgs[done..n] are written (above) and describe live buffers.
            let rc = unsafe {
                libc::sendmmsg(
                    fd.as_raw_fd(),
                    msgs[done..].as_mut_ptr().cast::<libc::mmsghdr>(),
                    (n - done) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            done += rc as usize;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    /// Every frame of a batch leaves whole and in order, for a partial and a
    /// full batch (only the headers in use are written before `sendmmsg`).
    #[test]
    fn a_batch_leaves_whole_and_in_order() {
        let (a, b) = UnixDatagram::pair().unwrap();
        // A lost frame fails the test rather than hanging it.
        b.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        let fd = OwnedFd::from(a);
        let mut batch = TxBatch::new();
        for count in [3, SLOTS] {
            let frames: Vec<Vec<u8>> = (0..count).map(|i| vec![i as u8; 20 + i]).collect();
            for f in &frames {
                assert!(batch.push(&[&f[..10], &f[10..]]));
            }
            assert_eq!(batch.is_full(), count == SLOTS);
            let refused = if count == SLOTS { "a full batch takes no more" } else { "a frame longer than a slot is refused" };
            assert!(!batch.push(&[&[0u8; SLOT + 1][..]]), "{refused}");
            assert_eq!(batch.send(&fd).unwrap(), count);
            assert_eq!(batch.send(&fd).unwrap(), 0, "the batch is empty after a send");
            let mut buf = [0u8; SLOT];
            for f in &frames {
                let n = b.recv(&mut buf).unwrap();
                assert_eq!(&buf[..n], &f[..]);
            }
        }
    }
}
