//! The repository keeps its own copies of the contract that lives in
//! `../shared` (`docs/protocol.md`, `docs/testbed.md`, `tests/data/ntm2.json`),
//! so that a clone stands on its own. When `../shared` is beside the repository, the
//! copies must equal it; without it there is nothing to compare.

use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("ntm-proto sits in the workspace")
        .to_path_buf()
}

fn same(copy: &str, original: &str) {
    let shared = repo().join("..").join("shared");
    let Ok(want) = std::fs::read(shared.join(original)) else {
        eprintln!("no ../shared/{original} beside the repository: nothing to compare");
        return;
    };
    let got = std::fs::read(repo().join(copy))
        .unwrap_or_else(|e| panic!("{copy} is the repository's copy of {original}: {e}"));
    assert!(
        got == want,
        "{copy} differs from ../shared/{original}: copy it again (cp ../shared/{original} {copy})"
    );
}

#[test]
fn protocol_copy_is_current() {
    same("docs/protocol.md", "PROTOCOL.md");
}

#[test]
fn testbed_copy_is_current() {
    same("docs/testbed.md", "TESTBED.md");
}

#[test]
fn vectors_copy_is_current() {
    same("ntm-proto/tests/data/ntm2.json", "vectors/ntm2.json");
}
