//! The `ntma` command line: help, `check-config`, `status` without a
//! daemon, and `run` refusing what cannot work before it touches anything.
//! None of these attach XDP or open sockets on real NICs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn ntma(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ntma"))
        .args(args)
        .env("RUST_LOG", "info")
        .output()
        .expect("run ntma")
}

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("ntma.example.toml")
}

fn temp_config(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ntma-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    // Private: ntma refuses to run on a configuration holding a key that
    // group or others can read.
    ntm_ops::keys::write_private(&path, text).unwrap();
    path
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn help_lists_the_commands() {
    let out = ntma(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["run", "status", "check-config"] {
        assert!(text.contains(cmd), "{cmd} missing: {text}");
    }
    let out = ntma(&["run", "--help"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("RUST_LOG"));
}

#[test]
fn check_config_accepts_the_example() {
    let out = ntma(&["check-config", "--config", example().to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(
            "configuration OK (gn.ntm.test on lan0 / wan0, status socket /run/ntma/ntma.sock)"
        ),
        "{text}"
    );
}

#[test]
fn bad_configurations_fail_on_one_line_with_what_to_fix() {
    let example = std::fs::read_to_string(example()).unwrap();
    let cases = [
        (
            "key.toml",
            example.replace(
                "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
                "00",
            ),
            "dc.key = (hidden): give K_node as 64 hex digits",
        ),
        (
            "mode.toml",
            example.replace("non_vip = \"icmp-unreachable\"", "non_vip = \"route\""),
            "icmp-unreachable",
        ),
        (
            "ring.toml",
            example.replace("rx_ring = 2048", "rx_ring = 1000"),
            "datapath.rx_ring = 1000: use a power of two",
        ),
        (
            "same.toml",
            example.replace("interface = \"wan0\"", "interface = \"lan0\""),
            "the uplink must be another NIC",
        ),
        (
            "typo.toml",
            example.replace("lease_secs", "lease_sec"),
            "lease_sec",
        ),
    ];
    for (name, text, want) in cases {
        let path = temp_config(name, &text);
        for cmd in ["check-config", "run"] {
            let out = ntma(&[cmd, "--config", path.to_str().unwrap()]);
            assert!(!out.status.success(), "{name}: {cmd} accepted it");
            let err = stderr(&out);
            assert!(err.contains(want), "{name}: {cmd}: {err}");
            assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
            assert!(!err.contains("Backtrace") && !err.contains("panicked"));
        }
    }
    let out = ntma(&["check-config", "--config", "/nonexistent/ntma.toml"]);
    assert!(stderr(&out).contains("cannot read /nonexistent/ntma.toml"));
}

#[test]
fn status_without_a_daemon_says_what_to_check() {
    let out = ntma(&["status", "--socket", "/nonexistent/ntma.sock"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("/nonexistent/ntma.sock") && err.contains("ntma run"),
        "{err}"
    );
}

#[test]
fn run_refuses_interfaces_that_are_not_there() {
    let example = std::fs::read_to_string(example()).unwrap();
    let text = example
        .replace("interface = \"lan0\"", "interface = \"ntmanolan9\"")
        .replace("interface = \"wan0\"", "interface = \"ntmanowan9\"");
    let path = temp_config("noif.toml", &text);
    let out = ntma(&["run", "--config", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("ntmanolan9 does not exist") && err.contains("ip link"),
        "{err}"
    );
}
