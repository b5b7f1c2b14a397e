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
