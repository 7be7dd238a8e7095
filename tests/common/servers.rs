//! TCP [`Servers`] in the upstream namespace and the clients that talk to them.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use super::*;

/// One connection a server accepted.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The server's address the client connected to.
    pub local: SocketAddr,
    /// The client's address as the server saw it.
    pub peer: SocketAddr,
    /// Bytes received before EOF (None while the connection is open).
    pub bytes: Option<u64>,
}

/// The banner each server writes.
pub const BANNER: &str = "220 op25b-test ESMTP";

/// TCP servers on `[::]:PORT` (dual-stack) in a namespace. Each connection gets
/// the banner, then its bytes are counted until EOF and acknowledged with
/// `250 received N`. Dropping it stops the servers.
pub struct Servers {
    stop: Arc<AtomicBool>,
    accepted: Arc<Mutex<Vec<Accepted>>>,
    threads: Vec<JoinHandle<()>>,
    handlers: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Servers {
    /// Starts one listener per port inside `ns`.
    pub fn start(ns: &str, ports: &[u16]) -> Servers {
        let listeners: Vec<TcpListener> = in_netns(ns, || {
            ports.iter().map(|&port| listen(port).unwrap_or_else(|e| panic!("listen on [::]:{port}: {e}"))).collect()
        });
        let mut servers = Servers {
            stop: Arc::new(AtomicBool::new(false)),
            accepted: Arc::default(),
            threads: Vec::new(),
            handlers: Arc::default(),
        };
        for listener in listeners {
            let stop = servers.stop.clone();
            let accepted = servers.accepted.clone();
            let handlers = servers.handlers.clone();
            servers.threads.push(std::thread::spawn(move || accept_loop(&listener, &stop, &accepted, &handlers)));
        }
        servers
    }

    /// Every connection accepted so far.
    pub fn accepted(&self) -> Vec<Accepted> {
        self.accepted.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Connections accepted on `local` (address and port).
    pub fn accepted_on(&self, local: SocketAddr) -> Vec<Accepted> {
        self.accepted().into_iter().filter(|a| a.local == local).collect()
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join(); // a panic there already failed the test
        }
        let handlers = std::mem::take(&mut *self.handlers.lock().unwrap_or_else(|p| p.into_inner()));
        for h in handlers {
            let _ = h.join();
        }
    }
}

fn listen(port: u16) -> io::Result<TcpListener> {
    let sock = Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP))?;
    sock.set_only_v6(false)?;
    sock.set_reuse_address(true)?;
    sock.bind(&SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port).into())?;
    sock.listen(64)?;
    sock.set_nonblocking(true)?;
    Ok(sock.into())
}

/// Maps `::ffff:a.b.c.d` (a dual-stack listener's view of IPv4) back to IPv4.
fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

fn accept_loop(
    listener: &TcpListener,
    stop: &AtomicBool,
    accepted: &Arc<Mutex<Vec<Accepted>>>,
    handlers: &Mutex<Vec<JoinHandle<()>>>,
) {
    while !stop.load(Ordering::Relaxed) {
        let (stream, peer) = match listener.accept() {
            Ok(x) => x,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            Err(e) => panic!("accept: {e}"),
        };
        let local = stream.local_addr().map(canonical).unwrap_or_else(|e| panic!("local_addr: {e}"));
        let index = {
            let mut list = accepted.lock().unwrap_or_else(|p| p.into_inner());
            list.push(Accepted { local, peer: canonical(peer), bytes: None });
            list.len() - 1
        };
        let accepted = accepted.clone();
        let handler = std::thread::spawn(move || {
            let bytes = serve(stream).unwrap_or(0);
            accepted.lock().unwrap_or_else(|p| p.into_inner())[index].bytes = Some(bytes);
        });
        handlers.lock().unwrap_or_else(|p| p.into_inner()).push(handler);
    }
}

/// Banner, count bytes until EOF (bounded by a read timeout), acknowledge.
fn serve(mut stream: TcpStream) -> io::Result<u64> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(format!("{BANNER}\r\n").as_bytes())?;
    let mut buf = [0u8; 16 * 1024];
    let mut total = 0u64;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(e) => {
                println!("server: read from {:?}: {e}", stream.peer_addr());
                break;
            }
        }
    }
    // The client may be gone already (it only wanted the banner).
    let _ = stream.write_all(format!("250 received {total}\r\n").as_bytes());
    Ok(total)
}

/// Reads the server's first line.
pub fn read_banner(stream: &TcpStream) -> String {
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).unwrap_or_else(|e| panic!("reading the banner: {e}"));
    line.trim_end().to_string()
}

/// Connections from the subscriber side's default source to port 587 of MX4
/// (a server listens there): the first `n` get the server's banner, the
/// next is refused at once (a rule allows `n` a minute).
#[allow(dead_code)] // custom_router and programs_netns
pub fn assert_submissions_limited(lab: &Lab, n: usize) {
    let connect = || lab.connect(None, sa(MX4, 587), Duration::from_secs(3));
    for i in 0..n {
        let s = connect().unwrap_or_else(|e| panic!("connection {i} within the limit: {e}"));
        assert!(read_banner(&s).starts_with("220 "));
    }
    let e = connect().expect_err("the connection past the limit is refused");
    assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
}

/// Sends `n` bytes, half-closes, and returns everything the server sent back.
pub fn send_bulk(mut stream: TcpStream, n: usize) -> String {
    let chunk = vec![b'x'; 8192];
    let mut left = n;
    while left > 0 {
        let k = left.min(chunk.len());
        stream
            .write_all(&chunk[..k])
            .unwrap_or_else(|e| panic!("sending bulk data ({} of {n} bytes sent): {e}", n - left));
        left -= k;
    }
    stream.shutdown(std::net::Shutdown::Write).unwrap_or_else(|e| panic!("shutdown: {e}"));
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap_or_else(|e| panic!("reading the server's acknowledgement: {e}"));
    reply
}
