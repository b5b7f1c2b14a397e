//! Building and removing a testbed, and the guard that removes it.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::child::Child;
use crate::keys::Keys;
use crate::status::{self, Status};
use crate::sys::{self, in_netns, ip, ip_batch, require_root, run};
use crate::topology::{self, Role, VETHS};
use crate::{wait_until, Error, Result};

/// File name of the recorded build options inside the state directory.
pub(crate) const OPTIONS_FILE: &str = "testbed.toml";
/// File naming the process whose guard will tear the testbed down; absent
/// once [`Testbed::keep`] has disarmed it.
const OWNER_FILE: &str = "owner";

/// The longest prefix body (before the final `-`).
const MAX_PREFIX_BODY: usize = 16;

/// How a testbed is built, besides its prefix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Options {
    /// RX and TX queue count of the veths on the AF_XDP path (gn and gn2
    /// `eth0`, the lan bridge's ports, ntma `lan0` and `wan0`, nat1 `lan`);
    /// every other veth has one.
    /// Both ends of a pair get the same count: native XDP refuses to attach
    /// to a veth whose peer has more TX queues than it has RX queues.
    pub queues: u16,
    /// Keep IPv6 on. Off by default, so that router solicitations and
    /// DAD probes do not show up in what the adapter and tests count.
    pub ipv6: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            queues: 1,
            ipv6: false,
        }
    }
}

impl Options {
    fn validate(&self) -> Result<()> {
        if (1..=64).contains(&self.queues) {
            Ok(())
        } else {
            Err(Error::BadOption(format!(
                "queues = {} (the veth queue count must be 1 to 64)",
                self.queues
            )))
        }
    }
}

/// Checks a prefix and returns it in canonical form: 1 to 16 lower-case
/// letters and digits, starting with a letter, then one `-` (added when
/// missing: `ntm` means `ntm-`). Only the last character may be `-`, so no
/// prefix can match another testbed's names (`t1-` never matches `t1x-gn`)
/// and `down` never removes what belongs to another testbed.
pub fn check_prefix(prefix: &str) -> Result<String> {
    let bad = |why| Error::BadPrefix {
        prefix: prefix.to_owned(),
        why,
    };
    let body = prefix.strip_suffix('-').unwrap_or(prefix);
    if body.is_empty() || body.len() > MAX_PREFIX_BODY {
        return Err(bad(
            "it needs 1 to 16 letters or digits before the final '-'",
        ));
    }
    if !body.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(bad("it must start with a lower-case letter"));
    }
    if !body
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    {
        return Err(bad(
            "only lower-case letters and digits may come before the final '-'",
        ));
    }
    Ok(format!("{body}-"))
}

/// A short prefix, distinct per process and per call, for tests that run
/// in parallel: `t` + up to 4 characters of `tag` + the process id and a
/// counter in base 36, e.g. `tup0b3k0-`.
pub fn unique_prefix(tag: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let tag: String = tag
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .take(4)
        .collect();
    // Fixed width for the pid, so two processes' prefixes cannot coincide.
    let pid = base36(std::process::id() % 36u32.pow(4), 4);
    let n = base36(COUNTER.fetch_add(1, Ordering::Relaxed) % 36u32.pow(3), 1);
    format!("t{tag}{pid}{n}-")
}

fn base36(mut v: u32, width: usize) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    while v > 0 || out.len() < width {
        out.push(DIGITS[(v % 36) as usize]);
        v /= 36;
    }
    out.reverse();
    String::from_utf8(out).expect("ASCII digits")
}

/// The state directory of the testbed with `prefix`: key store, build
/// options, logs of spawned programs. Removed by `down`.
pub fn state_dir(prefix: &str) -> PathBuf {
    Path::new(sys::STATE_ROOT).join(prefix)
}

/// The name of the nftables table in nat1 and nat2.
pub fn nat_table_name(prefix: &str) -> String {
    format!("{prefix}nat")
}

/// What the state of the testbed with `prefix` is.
pub fn status(prefix: &str) -> Result<Status> {
    require_root()?;
    let prefix = check_prefix(prefix)?;
    status::gather(&prefix)
}

/// A testbed that is up. Dropping it tears the testbed down (also while a
/// panic unwinds); [`Testbed::keep`] leaves it up instead.
#[derive(Debug)]
pub struct Testbed {
    prefix: String,
    options: Options,
    keys: Keys,
    state_dir: PathBuf,
    armed: bool,
}

impl Testbed {
    /// Builds the testbed with `prefix` and default [`Options`]. See
    /// [`Testbed::up_with`].
    pub fn up(prefix: &str) -> Result<Testbed> {
        Testbed::up_with(prefix, Options::default())
    }

    /// Builds the testbed with `prefix`. When one with this prefix is up
    /// and complete, built with the same options, it is taken over as is
    /// (same keys). When something with the prefix exists but differs from
    /// the topology, it is removed and built again.
    pub fn up_with(prefix: &str, options: Options) -> Result<Testbed> {
        require_root()?;
        let prefix = check_prefix(prefix)?;
        options.validate()?;
        let started = Instant::now();
        let dir = state_dir(&prefix);
        let found = status::gather(&prefix)?;
        if found.is_complete() && found.options.as_ref() == Some(&options) {
            tracing::info!(%prefix, "testbed is up already");
            let tb = Testbed {
                keys: Keys::load(&dir)?,
                prefix,
                options,
                state_dir: dir,
                armed: true,
            };
            tb.write_owner()?;
            return Ok(tb);
        }
        if !found.is_absent() {
            tracing::info!(
                %prefix,
                problems = %found.problems.join("; "),
                "testbed is there but not as specified, building it again"
            );
            down(&prefix)?;
        }
        // From here on, an error drops the guard, which removes the half.
        let tb = Testbed {
            keys: Keys::generate()?,
            prefix,
            options,
            state_dir: dir,
            armed: true,
        };
        tb.build()?;
        tracing::info!(prefix = %tb.prefix, elapsed = ?started.elapsed(), "testbed up");
        Ok(tb)
    }

    fn build(&self) -> Result<()> {
        let p = &self.prefix;
        sys::ensure_bpffs()?;
        self.write_state()?;
        write_resolv_confs(p)?;

        let mut script = String::new();
        for role in Role::ALL {
            writeln!(script, "netns add {}", role.ns(p)).expect("String write");
        }
        {
            let _lock = sys::netns_lock()?;
            ip_batch(None, &script, false)?;
        }

        for role in Role::ALL {
            in_netns(&role.ns(p), || self.namespace_sysctls(role))??;
        }
        ip_batch(None, &links_script(p, self.options.queues), false)?;
        for role in Role::ALL {
            ip_batch(Some(&role.ns(p)), &namespace_script(role), false)?;
        }

        let table = nat_table_name(p);
        for role in topology::NATS {
            in_netns(&role.ns(p), || {
                run(
                    Command::new("nft").args(["-f", "-"]),
                    Some(&nat_ruleset(&table)),
                )
            })??;
        }
        tx_csum_off(p)?;
        wait_complete(p)
    }

    /// Per-namespace sysctls, set before any link exists so that the
    /// `default` values apply to every link created afterwards.
    fn namespace_sysctls(&self, role: Role) -> Result<()> {
        let set = |key: &str, value: &str| {
            sys::write_sysctl(key, value).map_err(|source| Error::Io {
                what: format!("setting {key} = {value} in {}", role.ns(&self.prefix)),
                source,
            })
        };
        if !self.options.ipv6 {
            for key in [
                "net/ipv6/conf/all/disable_ipv6",
                "net/ipv6/conf/default/disable_ipv6",
            ] {
                match set(key, "1") {
                    // A kernel without IPv6 has nothing to switch off.
                    Err(Error::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::NotFound => {}
                    r => r?,
                }
            }
        }
        if topology::BRIDGES.contains(&role) {
            for key in topology::BRIDGE_NF_CALL {
                match set(key, "0") {
                    // Without br_netfilter, bridges never call the IP hooks.
                    Err(Error::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::NotFound => {}
                    r => r?,
                }
            }
        }
        // A new namespace inherits the host's IPv4 settings; reverse path
        // filtering there would make the testbed depend on the host.
        set("net/ipv4/conf/all/rp_filter", "0")?;
        set("net/ipv4/conf/default/rp_filter", "0")?;
        let forward = if topology::NATS.contains(&role) {
            "1"
        } else {
            "0"
        };
        set("net/ipv4/ip_forward", forward)
    }

    fn write_owner(&self) -> Result<()> {
        let path = self.state_dir.join(OWNER_FILE);
        std::fs::write(&path, format!("{}\n", std::process::id())).map_err(|source| Error::Io {
            what: format!("writing {}", path.display()),
            source,
        })
    }

    fn write_state(&self) -> Result<()> {
        create_dir(&self.state_dir, 0o700)?;
        create_dir(&self.state_dir.join("logs"), 0o700)?;
        self.write_owner()?;
        self.keys.store(&self.state_dir)?;
        let path = self.state_dir.join(OPTIONS_FILE);
        let text = toml::to_string(&self.options).expect("plain options serialize");
        std::fs::write(&path, text).map_err(|source| Error::Io {
            what: format!("writing {}", path.display()),
            source,
        })
    }

    /// The prefix, in canonical form (`ntm-`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The options it was built with.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// The namespace name of `role` (`ntm-cn`).
    pub fn ns(&self, role: Role) -> String {
        role.ns(&self.prefix)
    }

    /// See [`Role::addr`].
    pub fn addr(&self, role: Role) -> Option<Ipv4Addr> {
        role.addr()
    }

    /// The keys of this testbed.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The state directory: `keys.toml`, `testbed.toml`, `logs/`. A good
    /// place for generated configs (removed by `down`).
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The nftables table in nat1 and nat2 (`nft list table ip NAME`).
    pub fn nat_table(&self) -> String {
        nat_table_name(&self.prefix)
    }

    /// What is up.
    pub fn status(&self) -> Result<Status> {
        status::gather(&self.prefix)
    }

    /// `ip netns exec <ns> program`, for when a test needs the Command
    /// itself (stdin, custom stdio). Prefer [`Testbed::output`] and
    /// [`Testbed::spawn`].
    pub fn command(&self, role: Role, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec"]).arg(self.ns(role)).arg(program);
        c
    }

    /// Runs `args` (program first) inside `role`'s namespace, through
    /// `ip netns exec` (so with its own /etc/resolv.conf), and returns its
    /// stdout. A non-zero exit is an error that carries its stderr.
    pub fn output<I, S>(&self, role: Role, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut args = args.into_iter();
        let program = args
            .next()
            .ok_or_else(|| Error::BadOption("exec/output need at least a program name".into()))?;
        let mut c = self.command(role, program);
        c.args(args);
        run(&mut c, None)
    }

    /// Like [`Testbed::output`], for when only success matters.
    pub fn exec<I, S>(&self, role: Role, args: I) -> Result<()>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.output(role, args).map(drop)
    }

    /// Starts `cmd` inside `role`'s namespace through `ip netns exec`, so
    /// with the namespace's own /etc/resolv.conf and a /sys that shows the
    /// namespace's interfaces (but no bpffs: a program that pins must mount
    /// it itself, or be started with [`Testbed::spawn_keep_mounts`]). It
    /// runs in its own process group, with `cmd`'s arguments, environment
    /// and working directory, stdout and stderr going to a log file in the
    /// state directory. The returned guard stops it when dropped.
    pub fn spawn(&self, role: Role, cmd: &Command) -> Result<Child> {
        let mut c = self.command(role, cmd.get_program());
        c.args(cmd.get_args());
        self.start(role, cmd, c, false)
    }

    /// Like [`Testbed::spawn`], but entering only the network namespace:
    /// the program shares the host's mounts, so /sys/fs/bpf pins are the
    /// host's and /etc/resolv.conf is the host's too. For daemons that pin
    /// BPF objects or need to be inspected from outside; never for DHCP
    /// clients or anything else that writes resolver configuration.
    pub fn spawn_keep_mounts(&self, role: Role, cmd: &Command) -> Result<Child> {
        let mut c = Command::new(cmd.get_program());
        c.args(cmd.get_args());
        self.start(role, cmd, c, true)
    }

    fn start(&self, role: Role, orig: &Command, mut c: Command, setns: bool) -> Result<Child> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let program = Path::new(orig.get_program())
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| "program".into());
        let name = format!("{role}/{program}");
        let logs = self.state_dir.join("logs");
        create_dir(&logs, 0o700)?;
        let log = logs.join(format!(
            "{role}-{program}-{}.log",
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let io = |what: String| move |source| Error::Io { what, source };
        let out = std::fs::File::create(&log).map_err(io(format!("creating {}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(io(format!("duplicating {}", log.display())))?;
        for (k, v) in orig.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        if let Some(d) = orig.get_current_dir() {
            c.current_dir(d);
        }
        c.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let what = sys::describe(&c);
        tracing::debug!(cmd = %what, ns = %self.ns(role), log = %log.display(), "spawn");
        let spawned = if setns {
            // A process forked by a thread inside the namespace starts there.
            self.in_netns(role, || c.spawn())?
        } else {
            c.spawn()
        };
        let child = spawned.map_err(|source| Error::Spawn { cmd: what, source })?;
        Ok(Child::new(child, name, log))
    }

    /// Runs `f` on a thread inside `role`'s network namespace; see
    /// [`crate::in_netns`].
    pub fn in_netns<T, F>(&self, role: Role, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        in_netns(&self.ns(role), f)
    }

    /// Disarms the guard: the testbed stays up after this value is gone
    /// (`cargo xtask testbed up`). Returns the prefix, for a later
    /// [`down`].
    pub fn keep(mut self) -> String {
        self.armed = false;
        // Kept testbeds are no longer anyone's to clean up: see down_stale.
        let _ = std::fs::remove_file(self.state_dir.join(OWNER_FILE));
        std::mem::take(&mut self.prefix)
    }

    /// Tears the testbed down now, reporting what went wrong.
    pub fn down(mut self) -> Result<()> {
        self.armed = false;
        down(&self.prefix)
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = down(&self.prefix) {
                eprintln!("ntm-testbed: tearing down {}: {e}", self.prefix);
            }
        }
    }
}

fn create_dir(dir: &Path, mode: u32) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(|source| Error::Io {
            what: format!("creating {}", dir.display()),
            source,
        })
}

/// Writes `/etc/netns/<ns>/resolv.conf` for every namespace of the
/// testbed with `p`.
fn write_resolv_confs(p: &str) -> Result<()> {
    for role in Role::ALL {
        let dir = Path::new(sys::NETNS_ETC_DIR).join(role.ns(p));
        create_dir(&dir, 0o755)?;
        let file = dir.join("resolv.conf");
        let text = format!(
            "# ntm-testbed: the {role} namespace's own resolver configuration\nnameserver {}\n",
            role.nameserver()
        );
        std::fs::write(&file, text).map_err(|source| Error::Io {
            what: format!("writing {}", file.display()),
            source,
        })?;
    }
    Ok(())
}

/// Switches TX checksum offload off on the interfaces of the AF_XDP path
/// ([`topology::TX_CSUM_OFF`]).
fn tx_csum_off(p: &str) -> Result<()> {
    for role in Role::ALL {
        let ifs: Vec<&str> = topology::TX_CSUM_OFF
            .iter()
            .filter(|(r, _)| *r == role)
            .map(|(_, i)| *i)
            .collect();
        if ifs.is_empty() {
            continue;
        }
        in_netns(&role.ns(p), || -> Result<()> {
            for i in ifs {
                run(Command::new("ethtool").args(["-K", i, "tx", "off"]), None)?;
            }
            Ok(())
        })??;
    }
    Ok(())
}

/// Waits for the testbed with `p` to be complete.
fn wait_complete(p: &str) -> Result<()> {
    // Links come up asynchronously (carrier, bridge port state); give
    // them a moment before calling the result incomplete.
    let mut last = None;
    let complete = wait_until(Duration::from_secs(5), || match status::gather(p) {
        Ok(s) => {
            let done = s.is_complete();
            last = Some(Ok(s));
            done
        }
        Err(e) => {
            last = Some(Err(e));
            false
        }
    });
    match last {
        Some(Ok(_)) if complete => Ok(()),
        Some(Ok(s)) => Err(Error::Incomplete {
            prefix: p.to_owned(),
            problems: s.problems.join("; "),
        }),
        Some(Err(e)) => Err(e),
        None => unreachable!("wait_until calls the condition at least once"),
    }
}

/// The `ip -batch` script creating the veth pairs, each end in its
/// namespace, and the bridges.
fn links_script(p: &str, queues: u16) -> String {
    let mut script = String::new();
    for l in &VETHS {
        let q = if l.xdp_path { queues } else { 1 };
        writeln!(
            script,
            "link add {} netns {} numtxqueues {q} numrxqueues {q} type veth peer {} netns {} numtxqueues {q} numrxqueues {q}",
            l.a_if,
            l.a.ns(p),
            l.b_if,
            l.b.ns(p)
        )
        .expect("String write");
    }
    for role in topology::BRIDGES {
        // STP off and no forward delay: a port forwards as soon as its
        // link is up, instead of listening and learning first (a GN's
        // first DHCP and ARP frames would be lost).
        writeln!(
            script,
            "link add {} netns {} type bridge stp_state 0 forward_delay 0",
            topology::ifname::BRIDGE,
            role.ns(p)
        )
        .expect("String write");
    }
    script
}

/// The `ip -batch` script that configures `role`'s namespace once its
/// links exist.
fn namespace_script(role: Role) -> String {
    let mut s = String::from("link set lo up\n");
    for i in topology::interfaces(role) {
        if topology::BRIDGES.contains(&role) && i != topology::ifname::BRIDGE {
            writeln!(s, "link set {i} master {}", topology::ifname::BRIDGE).expect("String write");
        }
        writeln!(s, "link set {i} up").expect("String write");
    }
    for (r, i, a, l) in topology::ADDRS {
        if r == role {
            writeln!(s, "addr add {a}/{l} dev {i}").expect("String write");
        }
    }
    for (r, gw) in topology::DEFAULT_ROUTES {
        if r == role {
            writeln!(s, "route add default via {gw}").expect("String write");
        }
    }
    s
}

/// A home-router NAT: inside to outside is masqueraded, outside to inside
/// only for connections the inside started.
fn nat_ruleset(table: &str) -> String {
    let (lan, wan) = (topology::ifname::NAT_LAN, topology::ifname::NAT_WAN);
    format!(
        "table ip {table} {{
    chain forward {{
        type filter hook forward priority filter; policy drop;
        iifname \"{lan}\" oifname \"{wan}\" counter accept
        iifname \"{wan}\" oifname \"{lan}\" ct state established,related counter accept
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname \"{wan}\" counter masquerade
    }}
}}
"
    )
}

/// Removes everything carrying `prefix`: processes in its namespaces, the
/// namespaces (and so every link in them), links and nftables tables in
/// the host namespace, `/etc/netns/<prefix>*`, pins under
/// `/sys/fs/bpf/<prefix>*` and the state directory. Works on what is
/// found, not on what a guard remembers, so it cleans up after a crash;
/// nothing to remove is not an error.
pub fn down(prefix: &str) -> Result<()> {
    require_root()?;
    let prefix = check_prefix(prefix)?;
    let started = Instant::now();
    let namespaces: Vec<String> = sys::list_netns()?
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    stop_processes(&namespaces);
    if !namespaces.is_empty() {
        let script: String = namespaces
            .iter()
            .map(|n| format!("netns del {n}\n"))
            .collect();
        // Whatever fails here shows up in the check below.
        if let Err(e) = ip_batch(None, &script, true) {
            tracing::warn!(%e, "deleting namespaces");
        }
    }
    for link in status::host_links(&prefix)? {
        if let Err(e) = ip(["link", "del", &link]) {
            tracing::warn!(%e, "deleting host link");
        }
    }
    delete_host_nft_tables(&prefix);
    for path in sys::entries_with_prefix(sys::NETNS_ETC_DIR, &prefix)
        .into_iter()
        .chain(sys::entries_with_prefix(sys::BPFFS, &prefix))
        .chain([state_dir(&prefix)])
    {
        let r = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match r {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!(path = %path.display(), %e, "removing");
            }
            _ => {}
        }
    }

    let mut left: Vec<String> = sys::list_netns()?
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .map(|n| format!("namespace {n}"))
        .collect();
    left.extend(
        status::host_links(&prefix)?
            .into_iter()
            .map(|l| format!("host link {l}")),
    );
    left.extend(
        sys::entries_with_prefix(sys::NETNS_ETC_DIR, &prefix)
            .into_iter()
            .chain(sys::entries_with_prefix(sys::BPFFS, &prefix))
            .chain(Some(state_dir(&prefix)).filter(|d| d.exists()))
            .map(|p| p.display().to_string()),
    );
    if left.is_empty() {
        tracing::info!(%prefix, elapsed = ?started.elapsed(), "testbed down");
        Ok(())
    } else {
        Err(Error::Leftovers {
            prefix,
            leftovers: left.join(", "),
        })
    }
}

/// Removes the testbeds whose owner died without tearing them down (a test
/// killed by a signal, say) and returns their prefixes. Testbeds disarmed
/// with [`Testbed::keep`] have no owner and stay.
pub fn down_stale() -> Result<Vec<String>> {
    require_root()?;
    let mut removed = Vec::new();
    for dir in sys::entries_with_prefix(sys::STATE_ROOT, "") {
        let Some(prefix) = dir.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Ok(prefix) = check_prefix(prefix) else {
            continue;
        };
        let owner = std::fs::read_to_string(dir.join(OWNER_FILE))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        if let Some(pid) = owner {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                tracing::info!(%prefix, pid, "owner is gone, removing its testbed");
                down(&prefix)?;
                removed.push(prefix);
            }
        }
    }
    Ok(removed)
}

/// The prefixes of the testbeds on this machine, found by their state
/// directories and by namespaces named `<prefix><role>`.
pub fn list() -> Result<Vec<String>> {
    let mut found: Vec<String> = sys::entries_with_prefix(sys::STATE_ROOT, "")
        .iter()
        .filter_map(|d| d.file_name()?.to_str().map(str::to_owned))
        .filter(|n| check_prefix(n).is_ok_and(|c| c == *n))
        .collect();
    for ns in sys::list_netns()? {
        for role in Role::ALL {
            if let Some(p) = ns.strip_suffix(role.suffix()) {
                if check_prefix(p).is_ok_and(|c| c == p) {
                    found.push(p.to_owned());
                }
            }
        }
    }
    found.sort();
    found.dedup();
    Ok(found)
}

/// Pids of the processes in these namespaces, this one excepted.
fn pids_in(namespaces: &[String]) -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut pids: Vec<i32> = namespaces
        .iter()
        .filter_map(|ns| ip(["netns", "pids", ns]).ok())
        .flat_map(|out| {
            out.lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<Vec<i32>>()
        })
        .filter(|p| *p != me && *p > 1)
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// SIGTERM to every process in the namespaces, SIGKILL to those still
/// there a moment later.
fn stop_processes(namespaces: &[String]) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    for signal in [Signal::SIGTERM, Signal::SIGKILL] {
        let pids = pids_in(namespaces);
        if pids.is_empty() {
            return;
        }
        tracing::info!(?pids, %signal, "stopping processes left in the testbed");
        for p in pids {
            let _ = kill(Pid::from_raw(p), signal);
        }
        wait_until(Duration::from_secs(2), || pids_in(namespaces).is_empty());
    }
}

/// nftables tables in the host namespace whose names carry the prefix.
/// The testbed puts its tables inside nat1 and nat2; this catches any that
/// a failed or older run left on the host.
fn delete_host_nft_tables(prefix: &str) {
    let Ok(list) = run(Command::new("nft").args(["list", "tables"]), None) else {
        return;
    };
    for line in list.lines() {
        let mut w = line.split_whitespace();
        if let (Some("table"), Some(family), Some(name)) = (w.next(), w.next(), w.next()) {
            if name.starts_with(prefix) {
                if let Err(e) = run(
                    Command::new("nft").args(["delete", "table", family, name]),
                    None,
                ) {
                    tracing::warn!(%e, "deleting host nftables table");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_canonical_and_cannot_catch_each_other() {
        assert_eq!(check_prefix("ntm-").unwrap(), "ntm-");
        assert_eq!(check_prefix("ntm").unwrap(), "ntm-");
        assert_eq!(check_prefix("a1-").unwrap(), "a1-");
        for bad in [
            "",
            "-",
            "1a-",
            "Ntm-",
            "ntm--",
            "a-b-",
            "a b",
            "a_b",
            "abcdefghijklmnopq-",
            "é-",
        ] {
            let e = check_prefix(bad).unwrap_err();
            assert!(e.to_string().contains("prefix"), "{bad}: {e}");
        }
        assert!(check_prefix(&format!("{}-", "a".repeat(16))).is_ok());
    }

    #[test]
    fn unique_prefixes_are_valid_short_and_distinct() {
        let a = unique_prefix("up");
        let b = unique_prefix("up");
        let c = unique_prefix("Two Beds!");
        assert_ne!(a, b);
        for p in [&a, &b, &c] {
            assert_eq!(&check_prefix(p).unwrap(), p);
            assert!(p.len() <= 12, "{p}");
        }
        assert!(a.starts_with("tup"), "{a}");
        assert!(c.starts_with("ttwob"), "{c}");
        for p in [&a, &b] {
            for q in [&a, &b] {
                if p != q {
                    assert!(!format!("{q}gn").starts_with(p.as_str()));
                }
            }
        }
    }

    #[test]
    fn base36_pads_and_counts() {
        assert_eq!(base36(0, 4), "0000");
        assert_eq!(base36(35, 1), "z");
        assert_eq!(base36(36, 1), "10");
        assert_eq!(base36(36u32.pow(4) - 1, 4), "zzzz");
    }

    #[test]
    fn namespace_scripts_configure_what_the_topology_says() {
        assert_eq!(
            namespace_script(Role::Ntma),
            "link set lo up\nlink set lan0 up\nlink set wan0 up\n\
             addr add 100.64.0.1/10 dev lan0\naddr add 192.168.10.2/24 dev wan0\n\
             route add default via 192.168.10.1\n"
        );
        assert_eq!(
            namespace_script(Role::Gn),
            "link set lo up\nlink set eth0 up\n"
        );
        let inet = namespace_script(Role::Inet);
        assert!(inet.contains("link set br0 up\nlink set nat1 master br0\nlink set nat1 up\n"));
        assert!(!inet.contains("addr"));
        assert!(namespace_script(Role::Cn2).ends_with("route add default via 192.168.20.1\n"));
        assert_eq!(
            namespace_script(Role::Lan),
            "link set lo up\nlink set br0 up\n\
             link set gn master br0\nlink set gn up\n\
             link set gn2 master br0\nlink set gn2 up\n\
             link set ntma master br0\nlink set ntma up\n"
        );
        assert_eq!(
            namespace_script(Role::Gn2),
            "link set lo up\nlink set eth0 up\n"
        );
    }

    #[test]
    fn links_script_bridges_the_gns_and_lan0_with_queues_on_both_ends() {
        let s = links_script("t-", 2);
        assert!(s.contains(
            "link add lan0 netns t-ntma numtxqueues 2 numrxqueues 2 type veth \
             peer ntma netns t-lan numtxqueues 2 numrxqueues 2\n"
        ));
        assert!(s.contains("link add eth0 netns t-gn2 numtxqueues 2 numrxqueues 2 type veth peer gn2 netns t-lan numtxqueues 2 numrxqueues 2\n"));
        assert!(s.contains("link add eth0 netns t-dc numtxqueues 1 numrxqueues 1 type veth"));
        for ns in ["t-lan", "t-inet"] {
            assert!(s.contains(&format!(
                "link add br0 netns {ns} type bridge stp_state 0 forward_delay 0\n"
            )));
        }
    }

    #[test]
    fn the_nat_ruleset_names_its_table_and_interfaces() {
        let r = nat_ruleset("ntm-nat");
        assert!(r.starts_with("table ip ntm-nat {"));
        assert!(r.contains("oifname \"wan\" counter masquerade"));
        assert!(r.contains("policy drop"));
    }

    #[test]
    fn options_round_trip_and_validate() {
        let o = Options {
            queues: 2,
            ipv6: false,
        };
        let t = toml::to_string(&o).unwrap();
        assert_eq!(toml::from_str::<Options>(&t).unwrap(), o);
        assert!(o.validate().is_ok());
        assert!(Options {
            queues: 0,
            ..o.clone()
        }
        .validate()
        .is_err());
        assert!(Options { queues: 65, ..o }.validate().is_err());
    }
}
