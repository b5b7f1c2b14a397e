//! The `ntma` command line: help, `check-config`, `status` without a
//! daemon, and `run` refusing what cannot work before it touches anything.
//! None of these attach XDP or open sockets on real NICs.

use std::path::PathBuf;
use std::process::Output;

use ntm_ops::test_util::{stderr, Cli};

fn cli() -> Cli {
    ntm_ops::cli_of!("ntma", "ntma.example.toml")
}

fn ntma(args: &[&str]) -> Output {
    cli().run(args)
}

fn example() -> PathBuf {
    cli().example().to_owned()
}

fn temp_config(name: &str, text: &str) -> PathBuf {
    cli().temp_config(name, text)
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
            "configuration OK (gn.ntm.test, gn2.ntm.test on lan0 / wan0, status socket /run/ntma/ntma.sock)"
        ),
        "{text}"
    );
}

/// The example's K_node.
const K_NODE: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

#[test]
fn bad_configurations_fail_on_one_line_with_what_to_fix() {
    let cases = cli().edited(&[
        (
            "key.toml",
            K_NODE,
            "00",
            "gn[0].key = (hidden): give K_node as 64 hex digits",
        ),
        (
            "mode.toml",
            "non_vip = \"icmp-unreachable\"",
            "non_vip = \"route\"",
            "icmp-unreachable",
        ),
        (
            "ring.toml",
            "rx_ring = 4096",
            "rx_ring = 1000",
            "datapath.rx_ring = 1000: use a power of two",
        ),
        (
            "same.toml",
            "interface = \"wan0\"",
            "interface = \"lan0\"",
            "the uplink must be another NIC",
        ),
        ("typo.toml", "lease_secs", "lease_sec", "lease_sec"),
    ]);
    for (name, path, want) in cases {
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
    assert!(stderr(&out).contains("cannot read the configuration file /nonexistent/ntma.toml"));
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
