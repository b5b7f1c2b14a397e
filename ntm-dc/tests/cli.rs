//! The `ntm-dc` command line: `--help`, `--check`, and clear errors for bad
//! configurations. No root needed.

use ntm_ops::test_util::{stderr, stdout, Cli};

fn cli() -> Cli {
    ntm_ops::cli_of!("ntm-dc", "ntm-dc.example.toml")
}

#[test]
fn help_describes_the_program() {
    let out = cli().run(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Direction Coordinator"), "{text}");
    assert!(text.contains("--config"), "{text}");
    assert!(text.contains("RUST_LOG"), "{text}");
    assert!(text.contains("tunnel_suite"), "{text}");
    assert!(text.contains("AES-256-GCM (default)"), "{text}");
}

#[test]
fn check_accepts_the_example() {
    let cli = cli();
    let out = cli.run(&["--check", "--config", cli.example().to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("OK (3 nodes, 1 relays, VIP pool 100.64.0.0/10"),
        "{text}"
    );
    assert!(text.contains("tunnel suite 2 aes-256-gcm"), "{text}");
    let [(_, path, _)] = cli
        .edited(&[("suite1.toml", "tunnel_suite = 2", "tunnel_suite = 1", "")])
        .try_into()
        .unwrap();
    let out = cli.run(&["--check", "--config", path.to_str().unwrap()]);
    let text = stdout(&out);
    assert!(text.contains("tunnel suite 1 hmac-sha256-128"), "{text}");
}

/// A key of the example.
const CN2_KEY: &str = "0202020202020202020202020202020202020202020202020202020202020202";

#[test]
fn bad_configurations_fail_with_what_to_fix() {
    let cli = cli();
    let cases = cli.edited(&[
        (
            "pool.toml",
            "100.64.0.0/10",
            "100.64.0.5/10",
            "did you mean \"100.64.0.0/10\"",
        ),
        (
            "key.toml",
            CN2_KEY,
            "0202",
            "the key of [[node]] fqdn = \"cn2.ntm.test\" must be exactly 64 hex digits",
        ),
        (
            "dup.toml",
            "fqdn = \"cn2.ntm.test\"",
            "fqdn = \"cn.ntm.test\"",
            "appears twice",
        ),
        (
            "domain.toml",
            "fqdn = \"gn.ntm.test\"",
            "fqdn = \"gn.example.org\"",
            "is not under domain \"ntm.test\"",
        ),
        (
            "suite.toml",
            "tunnel_suite = 2",
            "tunnel_suite = 3",
            "tunnel_suite = 3: must be 2 (aes-256-gcm, the default) or 1",
        ),
        (
            "syntax.toml",
            "keepalive_secs = 20",
            "keepalive_secs = \"twenty\"",
            "keepalive_secs",
        ),
    ]);
    for (name, path, want) in cases {
        let out = cli.run(&["--config", path.to_str().unwrap()]);
        let err = stderr(&out);
        assert!(!out.status.success(), "{name} was accepted");
        assert!(err.contains(want), "{name}: {err}");
    }
    let out = cli.run(&["--config", "/nonexistent/dc.toml"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("cannot read the configuration file /nonexistent/dc.toml"),
        "{err}"
    );
}

#[test]
fn keygen_prints_a_new_key_each_time() {
    let a = cli().run(&["keygen"]);
    let b = cli().run(&["keygen"]);
    assert!(a.status.success());
    let (a, b) = (
        String::from_utf8_lossy(&a.stdout).trim().to_owned(),
        String::from_utf8_lossy(&b.stdout).trim().to_owned(),
    );
    assert_eq!(a.len(), 64, "{a}");
    assert!(a.parse::<ntm_proto::Key>().is_ok());
    assert_ne!(a, b);
}

#[test]
fn add_node_prints_the_dc_entry_and_the_node_snippets() {
    let example = cli().example().to_owned();
    let out = cli().run(&[
        "add-node",
        "new.ntm.test",
        "--dc",
        "198.18.0.2:7710",
        "--config",
        example.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    // The DC's entry parses as one, with the same key as the snippets.
    let dc_part = text.split("# 2a.").next().unwrap();
    let entry: ntm_dc::Config = ntm_dc::Config::from_toml(dc_part).unwrap();
    assert_eq!(entry.nodes[0].fqdn, "new.ntm.test");
    let key = &entry.nodes[0].key;
    assert_eq!(text.matches(key.as_str()).count(), 3, "{text}");
    assert!(text.contains("dc = \"198.18.0.2:7710\""), "{text}");
    assert!(
        text.contains("[dc]\naddress = \"198.18.0.2:7710\"\n\n[[gn]]\nfqdn = "),
        "{text}"
    );
    // Names outside the domain or already provisioned are refused.
    let out = cli().run(&[
        "add-node",
        "x.example.org",
        "--config",
        example.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("domain"));
    let out = cli().run(&[
        "add-node",
        "cn.ntm.test",
        "--config",
        example.to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("already has a [[node]]"));
    // --key-file writes the key, mode 0600, and the snippets name the file.
    let dir = std::env::temp_dir().join(format!("ntm-dc-addnode-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kf = dir.join("new.key");
    let out = cli().run(&[
        "add-node",
        "new.ntm.test",
        "--key-file",
        kf.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("key_file = "), "{text}");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&kf).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    assert!(ntm_ops::keys::read_key_file(&kf)
        .unwrap()
        .parse::<ntm_proto::Key>()
        .is_ok());
    std::fs::remove_dir_all(&dir).unwrap();
}
