//! Operating the daemons (issue 11) on the testbed: every daemon's metrics
//! pass `promtool check metrics`; SIGHUP reloads of the DC and the adapter
//! under traffic lose no ping; `ntma status --check`; the capabilities
//! ntma keeps; the DC and RS run as `nobody` (the node with CAP_NET_ADMIN
//! and CAP_NET_BIND_SERVICE only) with key files and status sockets of mode
//! 0660 under umask 077; configurations holding readable keys are refused;
//! `systemd-analyze verify` passes on the units. Needs root, promtool
//! (prometheus) and systemd-analyze (`cargo xtask test` installs them).

use std::io::{Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use ntm_testbed::{wait_for, wait_until, CN_ADDR, DC_ADDR, NODE_FQDN, NODE_FQDNS, RS_ADDR};
use ntm_world::settle::flowing;
use ntm_world::{bin, write_private, Role, World, CN2_FQDN, CN_FQDN, GN2_FQDN, GN_FQDN, PATIENCE};

/// GET /metrics from inside `role`'s namespace: (status line, headers, body).
fn scrape(w: &World, role: Role, addr: SocketAddr, openmetrics: bool) -> Result<(String, String)> {
    let mut s =
        w.tb.in_netns(role, || {
            TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        })
        .map_err(|e| anyhow!("{e}"))?
        .with_context(|| format!("connect to the metrics endpoint {addr} in {role}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let accept = if openmetrics {
        "Accept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n"
    } else {
        ""
    };
    write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n{accept}\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (head, body) = out
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("no HTTP header end in {out:?}"))?;
    ensure!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    Ok((head.to_owned(), body.to_owned()))
}

/// `promtool check metrics` on `text` (stdin): its combined output, or an error.
fn promtool(text: &str) -> Result<String> {
    let mut c = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("promtool (Debian package prometheus; `cargo xtask test` installs it)")?;
    c.stdin.take().expect("piped").write_all(text.as_bytes())?;
    let out = c.wait_with_output()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success(),
        "promtool check metrics failed: {said}\n{text}"
    );
    Ok(said)
}

fn excerpt(text: &str, prefixes: &[&str]) -> String {
    text.lines()
        .filter(|l| !l.starts_with('#') && prefixes.iter().any(|p| l.starts_with(p)))
        .take(12)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The metric names in the dashboard's queries.
fn dashboard_metrics(json: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b = json.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let starts = ["ntma_", "ntm_dc_", "ntm_rs_", "ntm_node_"]
            .iter()
            .any(|p| json[i..].starts_with(p))
            && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_'));
        if starts {
            let end = json[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(json.len(), |e| i + e);
            out.push(json[i..end].to_owned());
            i = end;
        } else {
            i += 1;
        }
    }
    out.retain(|m| m != "ntma_ops");
    out
}

fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Starts `count` pings from gn to `dst`, 20 ms apart, in the background.
fn pinger(w: &World, dst: std::net::Ipv4Addr, count: u32) -> Result<ntm_testbed::Child> {
    let mut ping = Command::new("ping");
    ping.args(["-n", "-c", &count.to_string(), "-i", "0.02", "-W", "2"])
        .arg(dst.to_string());
    w.tb.spawn(Role::Gn, &ping)
        .map_err(|e| anyhow!("start ping: {e}"))
}

/// Waits for a running `ping` (a testbed child) to finish and checks that
/// it lost nothing; prints its summary line under `what`.
fn lossless_ping(pinger: &mut ntm_testbed::Child, what: &str) -> Result<()> {
    let status = pinger
        .wait_timeout(Duration::from_secs(30))
        .map_err(|e| anyhow!("{e}"))?
        .ok_or_else(|| anyhow!("ping did not finish"))?;
    let out = pinger.log();
    let line = out
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .ok_or_else(|| anyhow!("no ping summary: {out}"))?
        .to_owned();
    println!("{what}: {line}");
    ensure!(
        status.success() && line.contains(" 0% packet loss"),
        "{out}"
    );
    Ok(())
}

#[test]
fn every_daemon_serves_metrics_that_pass_promtool() -> Result<()> {
    let dc_m = SocketAddr::from((DC_ADDR, 9710));
    let rs_m = SocketAddr::from((RS_ADDR, 9720));
    let cn_m = SocketAddr::from((CN_ADDR, 9700));
    let ntma_m: SocketAddr = "127.0.0.1:9790".parse()?;
    let w = World::up_with_rs(
        &ntm_testbed::unique_prefix("metrics"),
        |dc| dc.metrics.listen = Some(dc_m),
        |rs| rs.metrics.listen = Some(rs_m),
    )?;
    let mut cn = w.node_with(Role::Cn, CN_FQDN, |c| c.metrics.listen = Some(cn_m))?;
    let mut ntma = w.ntma(|c| c.metrics.listen = Some(ntma_m))?;
    cn.registered()?;
    // Both GNs (gn and gn2) are nodes at the DC, with cn.
    ntma.registered_gn(GN2_FQDN)?;
    let (_, cn_vip) = w.leased_with_tunnel(&mut ntma)?;
    ensure!(w.ping(Role::Gn, cn_vip, 3)?.received == 3);

    let mut report = String::new();
    let mut scraped = String::new();
    for (name, role, addr, want) in [
        (
            "ntma",
            Role::Ntma,
            ntma_m,
            vec![
                (format!("ntma_registered{{gn=\"{GN_FQDN}\"}}"), 1.0),
                (
                    format!("ntma_tunnel_setup_seconds_count{{gn=\"{GN_FQDN}\"}}"),
                    1.0,
                ),
                ("ntma_link_ready".to_owned(), 1.0),
            ],
        ),
        (
            "ntm-dc",
            Role::Dc,
            dc_m,
            vec![("ntm_dc_registrations{state=\"active\"}".to_owned(), 3.0)],
        ),
        (
            "ntm-rs",
            Role::Rs,
            rs_m,
            vec![("ntm_rs_bindings{state=\"both\"}".to_owned(), 0.0)],
        ),
        (
            "ntm-node",
            Role::Cn,
            cn_m,
            vec![("ntm_node_registered".to_owned(), 1.0)],
        ),
    ] {
        let (head, text) = scrape(&w, role, addr, false)?;
        ensure!(head.contains("text/plain; version=0.0.4"), "{head}");
        let said = promtool(&text).with_context(|| name.to_owned())?;
        scraped.push_str(&text);
        for (series, v) in &want {
            ensure!(
                value(&text, series) == Some(*v),
                "{name}: no `{series} {v}` in\n{text}"
            );
        }
        let prefix = name.replace('-', "_");
        report.push_str(&format!(
            "--- {name}: {} lines, promtool check metrics: OK{}\n{}\n",
            text.lines().count(),
            if said.trim().is_empty() {
                String::new()
            } else {
                format!(" ({})", said.trim())
            },
            excerpt(
                &text,
                &[
                    &format!("{prefix}_registered"),
                    &format!("{prefix}_tunnel"),
                    &format!("{prefix}_drops_total{{reason=\"replay\"}}"),
                    &format!("{prefix}_worker_drops_total{{queue=\"0\",reason=\"replay\"}}"),
                    &format!("{prefix}_xdp_verdicts"),
                    &format!("{prefix}_xsk_ring_events_total{{queue=\"0\",side=\"lan\""),
                    &format!("{prefix}_registrations"),
                    &format!("{prefix}_events_total{{event=\"keepalive"),
                    &format!("{prefix}_datagrams"),
                    &format!("{prefix}_bindings"),
                    &format!("{prefix}_events_total{{event=\"data")
                ]
            )
        ));
        // Prometheus asks for OpenMetrics and gets it.
        let (head, om) = scrape(&w, role, addr, true)?;
        ensure!(head.contains("application/openmetrics-text"), "{head}");
        ensure!(om.ends_with("# EOF\n"), "{name}: {om}");
    }
    // The fast path's traffic shows in the per-tunnel and XDP series.
    let (_, text) = scrape(&w, Role::Ntma, ntma_m, false)?;
    let tx = value(
        &text,
        &format!(
            "ntma_tunnel_packets_total{{gn=\"{GN_FQDN}\",peer=\"{CN_FQDN}\",direction=\"tx\"}}"
        ),
    );
    ensure!(tx.is_some_and(|v| v >= 5.0), "tunnel tx: {tx:?}\n{text}");
    ensure!(text
        .contains("ntma_xsk_ring_events_total{queue=\"0\",side=\"wan\",counter=\"rx_dropped\"}"));
    let fill = value(&text, "ntma_umem_frames{queue=\"0\",where=\"fill\"}");
    ensure!(fill.is_some_and(|v| v > 0.0), "umem fill: {fill:?}\n{text}");
    // Every metric the Grafana dashboard uses is served.
    let dash = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/ntma.json"),
    )?;
    let mut used = dashboard_metrics(&dash);
    used.sort();
    used.dedup();
    ensure!(used.len() >= 20, "{used:?}");
    for m in &used {
        ensure!(
            scraped
                .lines()
                .any(|l| l.starts_with(&format!("{m} ")) || l.starts_with(&format!("{m}{{"))),
            "the dashboard uses {m}, which no daemon serves"
        );
    }
    println!(
        "{report}\ndashboard deploy/grafana/ntma.json: {} metrics, all served",
        used.len()
    );
    drop(cn);
    w.down()
}

/// Rewrites the DC's configuration with `tweak`.
fn rewrite_dc(w: &World, tweak: impl FnOnce(&mut ntm_dc::Config)) -> Result<()> {
    let path = w.dc_config_path();
    let mut c = ntm_dc::Config::load(path)?;
    tweak(&mut c);
    write_private(path, &c.to_toml())?;
    Ok(())
}

fn rewrite_ntma(config: &Path, tweak: impl FnOnce(&mut ntma_user::config::Config)) -> Result<()> {
    let mut c = ntma_user::config::Config::load(config)?;
    tweak(&mut c);
    write_private(config, &c.to_toml())?;
    Ok(())
}

#[test]
fn reloads_under_traffic_lose_no_ping() -> Result<()> {
    let w = World::up("reload")?;
    let mut cn = w.node(Role::Cn, CN_FQDN)?;
    let mut ntma = w.ntma(|_| {})?;
    cn.registered()?;
    let (_, cn_vip) = w.leased_with_tunnel(&mut ntma)?;
    let regs_before = w.dc_status()?.stat("registrations");

    // 300 pings, 20 ms apart (6 s), while both daemons reload.
    let mut pinger = pinger(&w, cn_vip, 300)?;
    flowing(&mut ntma, CN_FQDN, 10)?;

    // DC: a node added, one removed (cn2, not running), a new relay key.
    rewrite_dc(&w, |c| {
        c.nodes.retain(|n| n.fqdn != CN2_FQDN);
        c.nodes.push(ntm_dc::NodeEntry::new(
            "new.ntm.test",
            &ntm_proto::Key::from_bytes([0x42; 32]),
        ));
    })?;
    w.reload_dc()?;
    let st = wait_for(PATIENCE, || {
        w.dc_status().ok().filter(|s| s.stat("reloads") == 1)
    })
    .ok_or_else(|| anyhow!("the DC did not reload:\n{}", w.dc_log()))?;
    // One node in, one out: as many as the testbed's node FQDNs.
    ensure!(st.nodes_configured == NODE_FQDNS.len(), "{}", st.render());
    ensure!(
        w.dc_log()
            .contains("nodes added=new.ntm.test removed=cn2.ntm.test"),
        "{}",
        w.dc_log()
    );

    // ntma: DNS TTL, hold bounds and statistics interval.
    rewrite_ntma(&ntma.config, |c| {
        c.dns.ttl = 10;
        c.hold.per_peer = 16;
        c.stats_interval_secs = 30;
    })?;
    ntma.reload()?;
    ntma.wait("reloaded", |s| s.stat("reloads") == 1)?;
    // A change that needs a restart is refused, and nothing changes.
    rewrite_ntma(&ntma.config, |c| c.datapath.batch = 32)?;
    ntma.reload()?;
    ntma.wait("reload refused", |s| s.stat("reloads_refused") == 1)?;
    ensure!(
        ntma.child
            .log()
            .contains("[datapath], which needs a restart"),
        "{}",
        ntma.child.log()
    );

    lossless_ping(&mut pinger, "reload under traffic")?;

    // Unchanged nodes kept their registrations: nobody registered again.
    let st = w.dc_status()?;
    ensure!(st.stat("registrations") == regs_before, "{}", st.render());
    ensure!(st.registration(GN_FQDN).is_some_and(|r| r.active));
    let d = w.dig(Role::Gn, "100.64.0.1", CN_FQDN)?;
    ensure!(d.a == vec![cn_vip], "{d:?}");

    // Re-keying cn ends its registration.
    rewrite_dc(&w, |c| {
        for n in &mut c.nodes {
            if n.fqdn == CN_FQDN {
                n.key = ntm_proto::Key::from_bytes([0x43; 32]).to_hex();
            }
        }
    })?;
    w.reload_dc()?;
    let st = wait_for(PATIENCE, || {
        w.dc_status().ok().filter(|s| s.stat("reloads") == 2)
    })
    .ok_or_else(|| anyhow!("second reload"))?;
    ensure!(st.registration(CN_FQDN).is_none(), "{}", st.render());
    ensure!(st.registration(GN_FQDN).is_some_and(|r| r.active));

    // A new GN identity: ntma deregisters and registers again as it.
    let node_key = w.tb.keys().node(NODE_FQDN).context("node key")?.to_hex();
    rewrite_ntma(&ntma.config, |c| {
        c.gn[0].fqdn = NODE_FQDN.into();
        c.gn[0].key = node_key;
        c.datapath.batch = 64;
    })?;
    ntma.reload()?;
    let st = ntma.wait("registered as the new GN", |s| {
        s.gns[0].registration.registered && s.gns[0].registration.fqdn == NODE_FQDN
    })?;
    ensure!(st.stat("reloads") == 2, "{:?}", st.slow_path.stats);
    ensure!(
        wait_until(PATIENCE, || w
            .dc_status()
            .is_ok_and(|s| s.registration(NODE_FQDN).is_some_and(|r| r.active)
                && s.registration(GN_FQDN).is_some_and(|r| !r.active))),
        "{}",
        w.dc_status()?.render()
    );
    drop(cn);
    w.down()
}

#[test]
fn ntma_health_check_capabilities_key_file_and_socket_mode() -> Result<()> {
    let mut w = World::up("health")?;
    w.stop_dc()?;
    let key = w.tb.keys().node(GN_FQDN).context("gn key")?.to_hex();
    let key_file = w.tb.state_dir().join("gn.key");
    write_private(&key_file, &format!("{key}\n"))?;
    // Started as the unit starts it: with the unit's capability bounding
    // set only (deploy/systemd/ntma.service), and umask 077.
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd/ntma.service"),
    )?;
    let caps: Vec<String> = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .context("the unit bounds capabilities")?
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_ascii_lowercase()))
        .collect();
    let mut c = w.ntma_config()?;
    c.gn[0].key = String::new();
    c.gn[0].key_file = Some(key_file.clone());
    let config = w.tb.state_dir().join("ntma.toml");
    write_private(&config, &c.to_toml())?;
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(format!(
        "umask 077; exec setpriv --bounding-set=-all,{} --inh-caps=-all {} run --config {}",
        caps.join(","),
        bin("ntma")?.display(),
        config.display()
    ));
    let mut ntma = ntm_world::Ntma {
        child: w
            .tb
            .spawn(Role::Ntma, &cmd)
            .map_err(|e| anyhow!("start ntma: {e}"))?,
        socket: c.status_socket_path(),
        config,
    };
    ntma.wait("answering", |_| true)?;
    let (code, line) = ntma.check()?;
    ensure!(
        code == 1 && line.contains("not registered with the DC"),
        "{code} {line}"
    );
    w.start_dc()?;
    ntma.registered()?;
    ntma.registered_gn(GN2_FQDN)?;
    let (code, line) = ntma.check()?;
    ensure!(
        code == 1 && line.contains("link not ready"),
        "{code} {line}"
    );
    w.dhclient()?;
    ensure!(
        wait_until(PATIENCE, || ntma.check().is_ok_and(|(c, _)| c == 0)),
        "{:?}",
        ntma.check()
    );
    let st = ntma.status().context("status")?;
    ensure!(
        st.capabilities == ["CAP_BPF", "CAP_NET_ADMIN", "CAP_NET_RAW"],
        "{:?}",
        st.capabilities
    );
    ensure!(
        !st.datapath.workers.is_empty()
            && st
                .datapath
                .workers
                .iter()
                .all(|w| w.capabilities == Some(vec![])),
        "AF_XDP workers: {:?}",
        st.datapath.workers
    );
    ensure!(
        st.datapath.xdp.values().sum::<u64>() > 0,
        "XDP counters read after the drop: {:?}",
        st.datapath.xdp
    );
    // The kernel's loss counters of both interfaces, read from sysfs in
    // ntma's namespace, and of every AF_XDP socket.
    for (side, name) in [("lan", "lan0"), ("wan", "wan0")] {
        let nic = st.datapath.nics.iter().find(|n| n.side == side);
        ensure!(
            nic.is_some_and(|n| n.name == name
                && ntma_user::os::ifstats::COUNTERS
                    .iter()
                    .all(|c| n.counters.contains_key(*c))),
            "{side}: {:?}",
            st.datapath.nics
        );
    }
    ensure!(
        st.datapath.rings.len() == 2 && st.datapath.rings.iter().all(|r| r.counters.len() == 6),
        "{:?}",
        st.datapath.rings
    );
    let text = ntma.status_text()?;
    ensure!(
        text.contains("capabilities kept: CAP_BPF CAP_NET_ADMIN CAP_NET_RAW")
            && text.contains("nic lan lan0: ")
            && text.contains("nic wan wan0: ")
            && text.contains("ring 0 wan: "),
        "{text}"
    );
    let mode = std::fs::metadata(&ntma.socket)?.mode() & 0o777;
    ensure!(mode == 0o660, "status socket mode {mode:o}");
    // The process: no capability but those three in its control thread.
    let pid = st.pid;
    let caps = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let eff = caps
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(str::trim)
        .unwrap_or("");
    // CAP_NET_ADMIN (12), CAP_NET_RAW (13), CAP_BPF (39).
    ensure!(
        eff == format!("{:016x}", (1u64 << 12) | (1 << 13) | (1 << 39)),
        "CapEff {eff}"
    );
    ntma.stop()?;
    w.down()
}

/// A directory `nobody` can use: mode 0755 on the way, owned by nobody.
fn nobody_dir(w: &World, name: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("{}-{name}", w.tb.prefix()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    chown_nobody(&dir)?;
    Ok(dir)
}

fn chown_nobody(p: &Path) -> Result<()> {
    let st = Command::new("chown")
        .arg("nobody:nogroup")
        .arg(p)
        .status()?;
    ensure!(st.success(), "chown nobody {}", p.display());
    Ok(())
}

/// `sh -c 'umask 077; <pre> exec setpriv … <bin> <args>'`.
fn unprivileged(bin: &Path, args: &[&str], keep: &str, pre: &str) -> Command {
    let caps = if keep.is_empty() {
        "--inh-caps=-all --ambient-caps=-all --bounding-set=-all".to_owned()
    } else {
        format!("--inh-caps=-all,{keep} --ambient-caps=-all,{keep} --bounding-set=-all,{keep}")
    };
    let mut c = Command::new("sh");
    c.arg("-c").arg(format!(
        "umask 077; {pre} exec setpriv --reuid=nobody --regid=nogroup --clear-groups {caps} {} {}",
        bin.display(),
        args.join(" ")
    ));
    c
}

#[test]
fn dc_rs_and_node_run_unprivileged_with_key_files() -> Result<()> {
    // The world's own DC and RS are stopped; ours run as nobody.
    let mut w = World::up("nobody")?;
    w.stop_dc()?;
    let dir = nobody_dir(&w, "ops")?;
    let keys = w.tb.keys();
    let mut dc = ntm_dc::Config::load(w.dc_config_path())?;
    dc.status_socket = dir.join("dc.sock");
    // Its state directory is nobody's too.
    dc.store = ntm_dc::config::StoreConfig::redb_in(&dir);
    dc.listen = SocketAddrV4::new(DC_ADDR, 7710);
    for n in &mut dc.nodes {
        let f = dir.join(format!("{}.key", n.fqdn));
        write_private(&f, &format!("{}\n", n.key))?;
        chown_nobody(&f)?;
        n.key = String::new();
        n.key_file = Some(PathBuf::from(format!("{}.key", n.fqdn)));
    }
    for r in &mut dc.relays {
        write_private(&dir.join("rs.key"), &r.key)?;
        chown_nobody(&dir.join("rs.key"))?;
        r.key = String::new();
        r.key_file = Some(dir.join("rs.key"));
    }
    let dc_toml = dir.join("dc.toml");
    write_private(&dc_toml, &dc.to_toml())?;
    chown_nobody(&dc_toml)?;
    // The RS at another port than the world's (which still runs).
    let rs_key = keys.rs().to_hex();
    let rs_toml = dir.join("rs.toml");
    write_private(
        &rs_toml,
        &format!(
            "listen = \"{RS_ADDR}:7721\"\nid = 2\nkey_file = \"rs.key\"\nstatus_socket = \"{}\"\n",
            dir.join("rs.sock").display()
        ),
    )?;
    chown_nobody(&rs_toml)?;
    let _ = rs_key;

    let dc_bin = bin("ntm-dc")?;
    let rs_bin = bin("ntm-rs")?;
    let cfg = format!("--config {}", dc_toml.display());
    let dc_child =
        w.tb.spawn(Role::Dc, &unprivileged(&dc_bin, &[&cfg], "", ""))
            .map_err(|e| anyhow!("{e}"))?;
    let cfg = format!("--config {}", rs_toml.display());
    let rs_child =
        w.tb.spawn(Role::Rs, &unprivileged(&rs_bin, &[&cfg], "", ""))
            .map_err(|e| anyhow!("{e}"))?;
    for (name, child, sock) in [
        ("ntm-dc", &dc_child, "dc.sock"),
        ("ntm-rs", &rs_child, "rs.sock"),
    ] {
        let sock = dir.join(sock);
        if !wait_until(PATIENCE, || sock.exists()) {
            bail!("{name} as nobody did not start:\n{}", child.log());
        }
        let meta = std::fs::metadata(&sock)?;
        ensure!(
            meta.mode() & 0o777 == 0o660,
            "{name} socket mode {:o} under umask 077",
            meta.mode() & 0o777
        );
        ensure!(meta.uid() != 0, "{name} runs as root");
        let out = Command::new(bin(name)?)
            .args(["status", "--socket"])
            .arg(&sock)
            .output()?;
        ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        println!(
            "{name} status (as nobody):\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    // The node as nobody with CAP_NET_ADMIN and CAP_NET_BIND_SERVICE only.
    let node_dir = nobody_dir(&w, "node")?;
    let key = keys.node(CN_FQDN).context("cn key")?.to_hex();
    let key_path = node_dir.join("cn.key");
    write_private(&key_path, &key)?;
    chown_nobody(&key_path)?;
    let mut c = ntm_node::Config::new(
        CN_FQDN,
        &ntm_proto::Key::from_bytes([0; 32]),
        SocketAddrV4::new(DC_ADDR, 7710),
        SocketAddr::V4(ntm_world::UPSTREAM),
    );
    c.key = String::new();
    c.key_file = Some("cn.key".into());
    c.status_file = Some(node_dir.join("status.json"));
    c.stats_interval_secs = 0;
    let node_toml = node_dir.join("cn.toml");
    write_private(&node_toml, &c.to_toml())?;
    chown_nobody(&node_toml)?;
    let cfg = format!("--config {}", node_toml.display());
    // Debian's udev makes /dev/net/tun mode 0666; where it is 0600 (this
    // machine), the node's mount namespace (ip netns exec makes one) gets
    // a 0666 node of the same device, as udev would.
    let dev = node_dir.join("dev");
    std::fs::create_dir_all(&dev)?;
    let pre = format!(
        "mount -t tmpfs tmpfs {d} && mknod -m 0666 {d}/tun c 10 200 && mount --bind {d}/tun /dev/net/tun &&",
        d = dev.display()
    );
    let node =
        w.tb.spawn(
            Role::Cn,
            &unprivileged(
                &bin("ntm-node")?,
                &[&cfg],
                "+net_admin,+net_bind_service",
                &pre,
            ),
        )
        .map_err(|e| anyhow!("{e}"))?;
    let status = wait_for(PATIENCE, || {
        ntm_node::Status::load(&node_dir.join("status.json")).filter(|s| s.vip.is_some())
    })
    .ok_or_else(|| {
        anyhow!(
            "the node as nobody did not register:\n{}\nDC:\n{}",
            node.log(),
            dc_child.log()
        )
    })?;
    let vip = status.vip.expect("checked");
    let addr = w.sh(Role::Cn, "ip -4 -o addr show dev ntm0")?;
    ensure!(addr.contains(&vip.to_string()), "{addr}");
    // The DC (as nobody) knows it.
    let out = Command::new(&dc_bin)
        .args(["status", "--json", "--socket"])
        .arg(dir.join("dc.sock"))
        .output()?;
    let st: ntm_dc::Status = serde_json::from_slice(&out.stdout)?;
    ensure!(
        st.registration(CN_FQDN).is_some_and(|r| r.active),
        "{}",
        st.render()
    );

    // Readable keys are refused at start, with the fix.
    let loose = dir.join("loose.toml");
    std::fs::write(&loose, std::fs::read_to_string(w.dc_config_path())?)?;
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644))?;
    let out = Command::new(&dc_bin).arg("--config").arg(&loose).output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains(&format!("chmod 600 {}", loose.display())),
        "{err}"
    );
    std::fs::set_permissions(dir.join("rs.key"), std::fs::Permissions::from_mode(0o640))?;
    let out = Command::new(&rs_bin)
        .arg("--config")
        .arg(&rs_toml)
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("readable by group"),
        "{err}"
    );
    let ntma_toml = dir.join("ntma.toml");
    std::fs::write(&ntma_toml, w.ntma_config()?.to_toml())?;
    std::fs::set_permissions(&ntma_toml, std::fs::Permissions::from_mode(0o604))?;
    let out = Command::new(bin("ntma")?)
        .args(["run", "--config"])
        .arg(&ntma_toml)
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("readable by others") && err.contains("chmod 600"),
        "{err}"
    );

    drop(node);
    drop(dc_child);
    drop(rs_child);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&node_dir);
    w.down()
}

/// The units with ExecStart pointing at the built binaries.
#[test]
fn systemd_units_verify() -> Result<()> {
    let units = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd");
    let dir = std::env::temp_dir().join(format!("ntm-units-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut paths = Vec::new();
    for name in ["ntma", "ntm-dc", "ntm-rs", "ntm-node"] {
        let text = std::fs::read_to_string(units.join(format!("{name}.service")))?;
        let built = bin(name)?;
        let text = text.replace(
            &format!("/usr/bin/{name} "),
            &format!("{} ", built.display()),
        );
        ensure!(
            text.contains(&built.display().to_string()),
            "{name}: no ExecStart=/usr/bin/{name}"
        );
        let p = dir.join(format!("{name}.service"));
        std::fs::write(&p, text)?;
        paths.push(p);
    }
    // man pages are installed by the packages only (`cargo xtask dist --check`
    // verifies the installed units with them).
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&paths)
        .output()
        .context("systemd-analyze (Debian package systemd)")?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!(
        "systemd-analyze verify --man=no {}: exit {}\n{said}",
        dir.display(),
        out.status
    );
    ensure!(out.status.success() && said.trim().is_empty(), "{said}");
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// `/proc/<pid>/task/*`: each thread's name, CapEff and CapBnd (hex masks).
fn thread_caps(pid: u32) -> Result<Vec<(u32, String, u64, u64)>> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let t = t?;
        let tid: u32 = t.file_name().to_string_lossy().parse()?;
        let comm = std::fs::read_to_string(t.path().join("comm"))?
            .trim_end()
            .to_owned();
        let status = std::fs::read_to_string(t.path().join("status"))?;
        let mask = |field: &str| -> Result<u64> {
            let hex = status
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .map(str::trim)
                .with_context(|| format!("no {field} for thread {tid}"))?;
            Ok(u64::from_str_radix(hex, 16)?)
        };
        out.push((tid, comm, mask("CapEff:")?, mask("CapBnd:")?));
    }
    out.sort();
    Ok(out)
}

/// The raw datapath's worker drops every capability once set up, as the
/// AF_XDP workers do: every thread of the process is checked, the worker
/// still carries the traffic, and the status shows what each keeps.
#[test]
fn raw_datapath_worker_keeps_no_capabilities() -> Result<()> {
    let w = World::up("rawcaps")?;
    let mut cn = w.node(Role::Cn, CN_FQDN)?;
    let mut ntma = w.ntma(|c| {
        c.datapath.kind = ntma_user::config::DatapathKind::Raw;
        c.datapath.queues = 1;
    })?;
    cn.registered()?;
    let (_, cn_vip) = w.leased_with_tunnel(&mut ntma)?;
    let p = w.ping(Role::Gn, cn_vip, 5)?;
    ensure!(p.received == p.sent, "{}", p.output);

    let st = ntma.status().context("status")?;
    ensure!(st.datapath.mode == "raw", "{}", st.datapath.mode);
    ensure!(
        st.capabilities == ["CAP_BPF", "CAP_NET_ADMIN", "CAP_NET_RAW"],
        "{:?}",
        st.capabilities
    );
    ensure!(st.datapath.workers.len() == 1);
    ensure!(
        st.datapath.workers[0].capabilities == Some(vec![]),
        "raw worker: {:?}",
        st.datapath.workers[0].capabilities
    );
    ensure!(
        st.worker_counter("wan_tx") >= 5,
        "{:?}",
        st.datapath.workers
    );
    let text = ntma.status_text()?;
    ensure!(
        text.contains("  capabilities: none")
            && text.contains("capabilities kept: CAP_BPF CAP_NET_ADMIN CAP_NET_RAW"),
        "{text}"
    );

    // Every thread: the control thread (the process's first) keeps
    // CAP_NET_ADMIN (12), CAP_NET_RAW (13) and CAP_BPF (39), bounding set
    // too; every other thread, the raw worker among them, nothing.
    let keep = (1u64 << 12) | (1 << 13) | (1 << 39);
    let threads = thread_caps(st.pid)?;
    let listing: Vec<String> = threads
        .iter()
        .map(|(tid, comm, eff, bnd)| format!("{tid} {comm}: CapEff {eff:016x} CapBnd {bnd:016x}"))
        .collect();
    println!("ntma (raw datapath) threads:\n{}", listing.join("\n"));
    ensure!(
        threads.iter().any(|(_, comm, _, _)| comm == "ntma-raw"),
        "no raw worker thread: {listing:?}"
    );
    for (tid, comm, eff, bnd) in &threads {
        let want = if *tid == st.pid { keep } else { 0 };
        ensure!(
            *eff == want && *bnd == want,
            "thread {tid} ({comm}): CapEff {eff:016x} CapBnd {bnd:016x}, want {want:016x}\n{listing:?}"
        );
    }
    ntma.stop()?;
    drop(cn);
    w.down()
}

/// SIGHUP with a new `dns.upstream` under a running ping: forwarded names
/// resolve through the new resolver (dnsmasq) over UDP and TCP, where the
/// old one (the fake upstream) answered before; the ping loses nothing.
#[test]
fn reload_moves_dns_upstream_under_traffic() -> Result<()> {
    use ntm_world::dns::{Zone, DNSMASQ};
    use ntm_world::{NTMA_LAN_ADDR, UPSTREAM_ANSWER};
    const NAME: &str = "fwd.example.net";
    let moved: std::net::Ipv4Addr = "192.0.2.53".parse()?;

    let w = World::up("upstream")?;
    let mut cn = w.node(Role::Cn, CN_FQDN)?;
    let mut ntma = w.ntma(|_| {})?;
    cn.registered()?;
    let (_, cn_vip) = w.leased_with_tunnel(&mut ntma)?;
    let (d, out) = w.dig_with(Role::Gn, NTMA_LAN_ADDR, "", NAME, "A")?;
    ensure!(d.a == vec![UPSTREAM_ANSWER], "before the reload: {out}");
    let dnsmasq = w.dnsmasq(&Zone::default().a(NAME, moved))?;

    let mut pinger = pinger(&w, cn_vip, 200)?;
    flowing(&mut ntma, CN_FQDN, 10)?;

    rewrite_ntma(&ntma.config, |c| c.dns.upstream = DNSMASQ)?;
    ntma.reload()?;
    ntma.wait("reloaded", |s| s.stat("reloads") == 1)?;
    let log = ntma.child.log();
    ensure!(
        log.contains("configuration reloaded: dns.upstream")
            && log.contains("upstream resolver changed"),
        "{log}"
    );
    for opts in ["", "+tcp"] {
        let (d, out) = w.dig_with(Role::Gn, NTMA_LAN_ADDR, opts, NAME, "A")?;
        ensure!(
            d.status == "NOERROR" && d.a == vec![moved],
            "after the reload, dig {opts}: {out}"
        );
        println!(
            "after the reload, dig {opts} {NAME}: {} {:?}",
            d.status, d.a
        );
    }
    let said = dnsmasq.log();
    ensure!(
        said.matches(&format!("query[A] {NAME}")).count() >= 2,
        "dnsmasq saw: {said}"
    );

    lossless_ping(&mut pinger, "upstream reload under traffic")?;
    ensure!(ntma.status().context("status")?.stat("reloads_refused") == 0);
    drop(dnsmasq);
    ntma.stop()?;
    drop(cn);
    w.down()
}
