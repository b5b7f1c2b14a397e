//! The `ntm-rs` command line: `--help`, `--check`, and clear errors for bad
//! configurations. No root needed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn rs(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ntm-rs"))
        .args(args)
        .output()
        .expect("run ntm-rs")
}

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("ntm-rs.example.toml")
}

#[test]
fn help_describes_the_program() {
    let out = rs(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Relay Server"), "{text}");
    assert!(text.contains("--config"), "{text}");
    assert!(text.contains("version 2"), "{text}");
}

#[test]
fn check_accepts_the_example_and_bad_keys_are_explained() {
    let out = rs(&["--check", "--config", example().to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK (RS id 1"));

    let dir = std::env::temp_dir().join(format!("ntm-rs-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    let text = std::fs::read_to_string(example()).unwrap();
    std::fs::write(&bad, text.replace("c0ffee00c0ffee00", "c0ffee")).unwrap();
    let out = rs(&["--config", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("key must be exactly 64 hex digits"), "{err}");
    std::fs::write(&bad, "id = 1\nkey = 5\n").unwrap();
    let out = rs(&["--config", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml") && err.contains("key"), "{err}");
}

/// Under systemd (`Type=notify`, `WatchdogSec=`): READY=1 once it serves,
/// then WATCHDOG=1 pings; `ntm-rs status` over its socket (mode 0660);
/// JSON logs with --log-format json. A fake NOTIFY_SOCKET stands in for
/// systemd.
#[test]
fn notifies_systemd_pings_the_watchdog_and_answers_status() {
    use std::os::unix::net::UnixDatagram;
    let dir = std::env::temp_dir().join(format!("ntm-rs-notify-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let notify = dir.join("notify.sock");
    let sd = UnixDatagram::bind(&notify).unwrap();
    sd.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let status = dir.join("rs.sock");
    let cfg = dir.join("rs.toml");
    let text = std::fs::read_to_string(example()).unwrap().replace(
        "status_socket = \"/run/ntm-rs/ntm-rs.sock\"",
        &format!("status_socket = \"{}\"", status.display()),
    );
    ntm_ops::keys::write_private(&cfg, &text).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_ntm-rs"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--config",
        ])
        .arg(&cfg)
        .env("NOTIFY_SOCKET", &notify)
        .env("WATCHDOG_USEC", "200000")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while !(got.iter().any(|m: &String| m.contains("READY=1"))
        && got.iter().any(|m| m.contains("WATCHDOG=1")))
    {
        let n = sd.recv(&mut buf).expect("a notification in time");
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&status).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o660);
    let out = rs(&["status", "--json", "--socket", status.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st: ntm_rs::Status = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st.id, 1);
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    let first = log.lines().next().expect("a log line");
    let v: serde_json::Value = serde_json::from_str(first).expect("JSON log lines");
    assert!(
        v.get("level").is_some() && v.get("message").is_some(),
        "{first}"
    );
    assert!(!status.exists(), "the socket file goes with the daemon");
    std::fs::remove_dir_all(&dir).unwrap();
}
