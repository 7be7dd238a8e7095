//! `op25b lab`: the lab built by the binary itself, as a CI job uses it:
//! up with the SMTP servers, mail from the subscriber namespace (through the
//! submission port and the relay accepted, straight to the MX on 25 refused),
//! `exec`, `status --json`, `mail --json`, and `down`, also after a crash;
//! the mail with either kind of upstream (a TUN, or a veth op25b routes on).
//! Each test names its own lab (unique namespaces and state directory) and
//! takes it down even when it fails. Needs root; fails loudly without it.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use op25b::lab::def::{self, Names};
use op25b::lab::netns;
use serde_json::Value;

mod labkit;
use labkit::{op25b, text, TestLab};

fn pid(lab: &TestLab, which: &str) -> i32 {
    lab.state()[which]["pid"].as_i64().unwrap_or_else(|| panic!("no {which} in the state file")) as i32
}

/// Sends one message from `src` to `dst` inside the lab's subscriber
/// namespace: the server's last reply, or the client's error.
fn send(names: &Names, src: IpAddr, dst: SocketAddr, subject: &str) -> std::io::Result<String> {
    netns::within(&names.sub_ns, || Ok(smtp(src, dst, subject))).expect("entering the subscriber namespace")
}

fn smtp(src: IpAddr, dst: SocketAddr, subject: &str) -> std::io::Result<String> {
    let sock = socket2::Socket::new(socket2::Domain::for_address(dst), socket2::Type::STREAM, None)?;
    sock.bind(&SocketAddr::new(src, 0).into())?;
    sock.connect_timeout(&dst.into(), Duration::from_secs(5))?;
    let stream: TcpStream = sock.into();
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut w = stream.try_clone()?;
    let mut r = BufReader::new(stream);
    let mut reply = || -> std::io::Result<String> {
        let mut last = String::new();
        loop {
            let mut l = String::new();
            r.read_line(&mut l)?;
            if l.len() < 4 || l.as_bytes()[3] != b'-' {
                last.push_str(l.trim_end());
                return Ok(last);
            }
        }
    };
    let greeting = reply()?;
    assert!(greeting.starts_with("220 ") && greeting.contains(&format!("{}", dst.port())), "{greeting}");
    let mut out = String::new();
    for cmd in [
        "EHLO subscriber.test".to_string(),
        "MAIL FROM:<alice@subscriber.example>".into(),
        "RCPT TO:<bob@outside.example>".into(),
        "DATA".into(),
        format!("Subject: {subject}\r\n\r\n..a dotted line\r\n."),
    ] {
        w.write_all(format!("{cmd}\r\n").as_bytes())?;
        out = reply()?;
    }
    w.write_all(b"QUIT\r\n")?;
    Ok(out)
}

#[test]
fn a_lab_with_servers_delivers_what_op25b_lets_through() {
    mail_through(TestLab::up(&["--servers"]), "tun");
}

/// The same lab with op25b as the router on a veth upstream (ARP, NDP, the
/// outside's gateway): the same mail arrives, the same connection is refused.
#[test]
fn a_lab_with_a_veth_upstream_delivers_the_same_mail() {
    let lab = TestLab::up(&["--servers", "--upstream", "veth"]);
    let config = std::fs::read_to_string(lab.names.state_dir().join("op25b.toml")).expect("the lab's config");
    assert!(config.contains("interface = \"op25b-up\"") && !config.contains("\ntun = \"op25b-up\""), "{config}");
    // A reload writes the veth lab's config again (the interface is start-only: unchanged, accepted).
    let reload = lab.lab(&["reload"]);
    assert!(reload.status.success(), "{}", text(&reload));
    lab.wait_counter("reloads_accepted", 1);
    mail_through(lab, "veth");
}

/// The same lab with the kernel as the router (`--router kernel`, the
/// benchmark's reference): OP25B as an nftables rule lets the same mail
/// through and refuses the same connection; `down` removes its third namespace.
#[test]
fn a_lab_with_the_kernel_router_delivers_the_same_mail() {
    let lab = TestLab::up(&["--servers", "--router", "kernel"]);
    let rtr = format!("{}-rtr", lab.name());
    assert!(netns::exists(&rtr) && lab.state()["op25b"].is_null(), "{}", lab.state());
    mail_through(lab, "tun");
    assert!(!netns::exists(&rtr), "{rtr} left behind by down");
}

fn mail_through(lab: TestLab, upstream: &str) {
    let names = &lab.names;
    let dyn4 = def::ip(def::DYN4);
    let cases = [
        (dyn4, SocketAddr::new(def::ip(def::MX4), 587), "mx:587"),
        (dyn4, SocketAddr::new(def::ip(def::RELAY4), 25), "relay:25"),
        (def::ip(def::DYN6), SocketAddr::new(def::ip(def::MX6), 465), "mx6:465"),
        (def::ip(def::STATIC4), SocketAddr::new(def::ip(def::MX4), 25), "static mx:25"),
    ];
    for (src, dst, subject) in cases {
        match send(names, src, dst, subject) {
            Ok(r) => assert!(r.starts_with("250 OK message accepted"), "{subject}: {r}"),
            Err(e) => panic!("{subject}: {e}"),
        }
    }
    let blocked = send(names, dyn4, SocketAddr::new(def::ip(def::MX4), 25), "blocked");
    assert!(
        blocked.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused),
        "dynamic to MX:25: {blocked:?}"
    );

    let out = lab.lab(&["mail", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let mails: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object a line"))
        .collect();
    let mut seen: Vec<(String, String, u64)> = mails
        .iter()
        .map(|m| {
            let subject = m["data"].as_str().unwrap_or("").lines().next().unwrap_or("").to_string();
            (m["server"].as_str().unwrap_or("").to_string(), subject, m["local_port"].as_u64().unwrap_or(0))
        })
        .collect();
    seen.sort();
    let expected = [
        ("mx", "Subject: mx6:465", 465),
        ("mx", "Subject: mx:587", 587),
        ("mx", "Subject: static mx:25", 25),
        ("relay", "Subject: relay:25", 25),
    ]
    .map(|(a, b, c)| (a.to_string(), b.to_string(), c));
    assert_eq!(seen, expected, "{mails:?}");
    assert!(mails.iter().all(|m| m["data"].as_str().unwrap_or("").contains("\r\n.a dotted line\r\n")), "{mails:?}");

    let text_out = lab.lab(&["mail"]);
    assert!(String::from_utf8_lossy(&text_out.stdout).contains("relay (198.51.100.25, 2001:db8:25::25): 1 message"));

    let status = lab.lab(&["status", "--json"]);
    assert!(status.status.success(), "{}", text(&status));
    let v: Value = serde_json::from_slice(&status.stdout).expect("status --json is JSON");
    assert_eq!(v["up"], true);
    assert_eq!(v["definition"]["names"]["sub_ns"], format!("{}-sub", lab.name()));
    assert_eq!(v["mail"]["mx"], 3);
    assert_eq!(v["upstream"], upstream);
}

#[test]
fn exec_runs_in_the_subscriber_namespace_and_passes_the_exit_status() {
    let lab = TestLab::up(&[]);
    let out = lab.lab(&["exec", "--", "cat", "/proc/net/if_inet6"]);
    assert!(out.status.success(), "{}", text(&out));
    let addrs = String::from_utf8_lossy(&out.stdout);
    // 2001:db8:100:1::10, as /proc writes it.
    assert!(addrs.contains("20010db8010000010000000000000010"), "{addrs}");
    let out = lab.lab(&["exec", "--outside", "--", "sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out));
    let out = lab.lab(&["exec", "--", "/nonexistent/program"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
}

#[test]
fn down_removes_everything_after_a_crash_and_again_does_nothing() {
    let lab = TestLab::up(&["--servers"]);
    let (op25b_pid, servers_pid) = (pid(&lab, "op25b"), pid(&lab, "servers"));
    for pid in [op25b_pid, servers_pid] {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).expect("SIGKILL");
    }
    for _ in 0..250 {
        if !PathBuf::from(format!("/proc/{op25b_pid}")).exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = lab.lab(&["status"]);
    assert_eq!(status.status.code(), Some(1), "a crashed lab is not up: {}", text(&status));
    // `up` again on the crashed lab rebuilds it.
    let again = lab.lab(&["up"]);
    assert!(again.status.success() && text(&again).contains("tearing it down first"), "{}", text(&again));
    for _ in 0..2 {
        let out = lab.lab(&["down"]);
        assert!(out.status.success(), "{}", text(&out));
    }
    assert!(!netns::exists(&lab.names.sub_ns) && !netns::exists(&lab.names.inet_ns));
    assert!(!lab.names.state_dir().exists(), "{} left behind", lab.names.state_dir().display());
}

#[test]
fn a_config_of_the_users_own_must_name_the_labs_namespaces() {
    let dir = std::env::temp_dir().join(format!("o25lab-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("mine.toml");
    std::fs::write(&file, def::config_toml(&Names::new("elsewhere").expect("name"))).expect("config");
    let name = format!("o25cfg-{}", std::process::id());
    let out = op25b(&["lab", "up", "--name", &name, "--config", file.to_str().expect("utf-8")]);
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let expected = format!("subscriber.netns: the lab {name} needs \"{name}-sub\"");
    assert!(text(&out).contains(&expected), "{}", text(&out));
    assert!(!netns::exists(&format!("{name}-sub")) && !PathBuf::from(format!("/run/{name}")).exists());
}

#[test]
fn up_without_root_is_a_usage_error_and_makes_nothing() {
    let name = format!("o25nr-{}", std::process::id());
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", env!("CARGO_BIN_EXE_op25b"), "lab", "up"])
        .args(["--name", &name])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run setpriv (util-linux): {e}"));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("must run as root"), "{}", text(&out));
    assert!(!netns::exists(&format!("{name}-sub")) && !PathBuf::from(format!("/run/{name}")).exists());
}

/// `op25b lab demo` wants the lab's SMTP servers (a usage error without);
/// it finds every case as OP25B should have it, and says so
/// when one differs: after a reload to `action = "icmp"` the blocked
/// connections end unreachable, not refused (exit status 1). `lab traffic`
/// prints the five connections, the two to MX:25 refused; the demo's view
/// of the servers' log is its own connections, not those made before.
#[test]
fn demo_checks_each_case_and_traffic_prints_five_connections() {
    let bare = TestLab::up(&[]);
    let out = bare.lab(&["demo"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("not up with its SMTP servers"), "{}", text(&out));
    drop(bare);
    let lab = TestLab::up(&["--servers"]);
    let out = lab.lab(&["traffic"]);
    assert!(out.status.success(), "{}", text(&out));
    let seen: Vec<(String, u64)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .map(|v| (v["result"].as_str().unwrap_or("").to_string(), v["port"].as_u64().unwrap_or(0)))
        .collect();
    let want = [("refused", 25), ("connected", 587), ("connected", 25), ("connected", 25), ("refused", 25)];
    assert_eq!(seen, want.map(|(r, p)| (r.to_string(), p)), "{}", text(&out));

    let out = lab.lab(&["demo"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("checks: 16 of 16 as expected"), "{}", text(&out));

    let file = std::env::temp_dir().join(format!("{}-icmp.toml", lab.name()));
    let config = def::config_toml(&lab.names).replace("action = \"reject\"", "action = \"icmp\"");
    std::fs::write(&file, config).expect("config");
    let reload = lab.lab(&["reload", "--config", file.to_str().expect("utf-8")]);
    std::fs::remove_file(&file).ok();
    assert!(reload.status.success(), "{}", text(&reload));
    lab.wait_counter("reloads_accepted", 1);
    let out = lab.lab(&["demo"]);
    let table = text(&out);
    assert_eq!(out.status.code(), Some(1), "{table}");
    for case in ["1 ", "6 ", "15 "] {
        let row = table.lines().find(|l| l.starts_with(case)).unwrap_or_else(|| panic!("no case {case}:\n{table}"));
        assert!(row.contains("unreachable") && row.contains("FAIL"), "{row}");
    }
    assert!(table.contains("checks: 13 of 16 as expected"), "{table}");
}
