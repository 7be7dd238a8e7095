//! An Ethernet upstream interface (`[upstream] interface = ...`) that the
//! host's own stack would also serve: op25b refuses to start, exit 2, with
//! one line saying what is wrong, before it creates any device.
//!
//! Each case makes its own namespace with a veth pair and removes it even
//! when the test fails. Root is required; the test fails loudly without it.

// Only a few of the shared helpers are needed here.
#[allow(dead_code)]
#[allow(unused_imports)] // The harness re-exports the lab's addresses; this file builds its own veth link.
mod common;

use std::process::{Command, Stdio};

use common::{ip_cmd, preflight, unique_base};

/// A namespace with a veth pair `u0` (the upstream interface) / `p0`, removed on drop.
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        let name = unique_base();
        ip_cmd(&["netns", "add", &name]);
        let ns = Netns(name);
        ip_cmd(&["-n", &ns.0, "link", "add", "u0", "type", "veth", "peer", "p0"]);
        ip_cmd(&["-n", &ns.0, "link", "set", "u0", "addrgenmode", "none"]);
        ns
    }

    /// Sets a sysctl in the namespace through /proc/sys (no procps needed).
    fn sysctl(&self, key: &str, value: &str) {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let out = Command::new("ip")
            .args(["netns", "exec", &self.0, "sh", "-c", &format!("echo {value} > {path}")])
            .output()
            .expect("run sh");
        assert!(out.status.success(), "{key}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// A host that leaves u0 alone: IPv6 off, no address, no forwarding.
    fn quiet(&self) {
        self.sysctl("net.ipv6.conf.u0.disable_ipv6", "1");
        ip_cmd(&["-n", &self.0, "link", "set", "u0", "up"]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Runs `op25b run` with an interface upstream in `ns`; returns (exit code, stderr).
fn run(ns: &Netns, dir: &std::path::Path) -> (Option<i32>, String) {
    let config = dir.join("op25b.toml");
    let text = format!(
        r#"[router]
addresses = ["100.64.0.1"]
[subscriber]
tun = "o25s"
netns = "{ns}"
prefixes = ["100.64.0.0/10"]
[upstream]
interface = "u0"
netns = "{ns}"
addresses = ["198.51.100.2/24", "2001:db8:1::2/64"]
gateway = ["198.51.100.1", "fe80::1"]
[op25b]
dynamic = ["100.64.0.0/10"]
"#,
        ns = ns.0
    );
    std::fs::write(&config, text).expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_op25b"))
        .args(["run", "--config"])
        .arg(&config)
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("start op25b");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn refused(setup: impl FnOnce(&Netns), want: &str) {
    preflight(false);
    let ns = Netns::new();
    setup(&ns);
    let dir = std::env::temp_dir().join(format!("{}-cfg", ns.0));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (code, stderr) = run(&ns, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(code, Some(2), "stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("upstream.interface")).collect();
    assert_eq!(lines.len(), 1, "one line about the interface: {stderr}");
    assert!(lines[0].contains(want), "want {want:?} in: {stderr}");
    // Refused before any device was made: no TUN in the namespace.
    let links = Command::new("ip").args(["-n", &ns.0, "-o", "link"]).output().expect("ip link");
    assert!(!String::from_utf8_lossy(&links.stdout).contains("o25s"), "a TUN was created");
}

#[test]
fn an_address_on_the_interface_is_refused() {
    refused(
        |ns| {
            ns.quiet();
            ip_cmd(&["-n", &ns.0, "addr", "add", "198.51.100.9/24", "dev", "u0"]);
        },
        "has address 198.51.100.9",
    );
}

#[test]
fn ipv6_on_the_interface_is_refused() {
    refused(
        |ns| {
            ns.quiet();
            ns.sysctl("net.ipv6.conf.u0.disable_ipv6", "0");
        },
        "disable_ipv6=1",
    );
}

#[test]
fn forwarding_on_the_interface_is_refused() {
    refused(
        |ns| {
            ns.quiet();
            ns.sysctl("net.ipv4.conf.u0.forwarding", "1");
        },
        "net.ipv4.conf.u0.forwarding is 1",
    );
}

#[test]
fn an_own_address_elsewhere_in_the_namespace_is_refused() {
    refused(
        |ns| {
            ns.quiet();
            ip_cmd(&["-n", &ns.0, "addr", "add", "198.51.100.2/32", "dev", "lo"]);
        },
        "also assigned to lo",
    );
}

#[test]
fn a_missing_interface_is_refused() {
    refused(
        |ns| {
            ip_cmd(&["-n", &ns.0, "link", "del", "u0"]);
        },
        "does not exist",
    );
}

#[test]
fn an_interface_mtu_below_the_configured_one_is_refused() {
    refused(
        |ns| {
            ns.quiet();
            ip_cmd(&["-n", &ns.0, "link", "set", "u0", "mtu", "1400"]);
        },
        "set upstream.mtu = 1400",
    );
}
