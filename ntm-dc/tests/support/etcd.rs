// Real `etcd` processes for the tests: one member or a cluster of three
// on free loopback ports, each with a temporary data directory, killed
// and removed on drop. `etcd` comes from Debian's etcd-server, which
// `cargo xtask setup` installs. Shared by the store's unit tests
// (include!) and the integration tests (mod).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// One etcd member.
pub struct Etcd {
    child: Option<Child>,
    dir: PathBuf,
    /// Its client URL (`http://127.0.0.1:PORT`).
    pub url: String,
    client_port: u16,
}

/// A loopback port nobody listens on now, below the ephemeral range
/// (32768 and up): an outgoing connection cannot take it before etcd binds
/// it. Another test process may still pick it; `cluster` starts again then.
fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    static N: AtomicU32 = AtomicU32::new(0);
    let seed = std::collections::hash_map::RandomState::new();
    loop {
        let mut h = seed.build_hasher();
        h.write_u32(N.fetch_add(1, Ordering::Relaxed));
        let port = 20_000 + (h.finish() % 12_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn data_dir(name: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "ntm-dc-etcd-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating the etcd data directory");
    dir
}

impl Etcd {
    /// A single-member cluster.
    pub fn start() -> Etcd {
        let mut c = Etcd::cluster(1);
        c.pop().expect("one member")
    }

    /// A cluster of `n` members, each healthy before this returns. A
    /// member that exits (a port taken by another test process meanwhile)
    /// has the cluster started again on other ports.
    pub fn cluster(n: usize) -> Vec<Etcd> {
        let mut last = String::new();
        for _ in 0..5 {
            let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
            let initial: Vec<String> = (ports.iter().enumerate())
                .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
                .collect();
            let token = format!("ntm-{}-{}", std::process::id(), ports[0].0);
            let mut members: Vec<Etcd> = (ports.iter().enumerate())
                .map(|(i, &(client, peer))| {
                    Etcd::spawn(&format!("m{i}"), client, peer, &initial.join(","), &token)
                })
                .collect();
            match Etcd::all_healthy(&mut members, Duration::from_secs(60)) {
                Ok(()) => return members,
                Err(e) => last = e,
            }
        }
        panic!("etcd did not start in five tries; the last: {last}")
    }

    /// Waits until every member is healthy (the cluster has a leader), or
    /// says which exited, with the end of its log.
    fn all_healthy(members: &mut [Etcd], within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        for m in members.iter_mut() {
            while !m.healthy() {
                if let Some(Ok(Some(st))) = m.child.as_mut().map(Child::try_wait) {
                    let log =
                        std::fs::read_to_string(m.dir.with_extension("log")).unwrap_or_default();
                    let tail: String = log.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
                    return Err(format!("etcd at {} exited ({st}): {tail}", m.url));
                }
                assert!(
                    Instant::now() < deadline,
                    "etcd at {} not healthy within {within:?}; its log is {}",
                    m.url,
                    m.dir.with_extension("log").display()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    fn spawn(name: &str, client: u16, peer: u16, initial: &str, token: &str) -> Etcd {
        let dir = data_dir(name);
        let curl = format!("http://127.0.0.1:{client}");
        let purl = format!("http://127.0.0.1:{peer}");
        let etcd = ntm_testbed::etcd::binary().unwrap_or_else(|e| panic!("{e}"));
        let log = std::fs::File::create(dir.with_extension("log")).expect("creating etcd's log");
        let member = ntm_testbed::etcd::Member {
            name,
            data_dir: &dir,
            client_url: &curl,
            peer_url: &purl,
            initial_cluster: initial,
            token,
        };
        let child = ntm_testbed::etcd::member_command(&etcd, &member)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting etcd");
        Etcd {
            child: Some(child),
            dir,
            url: curl,
            client_port: client,
        }
    }

    /// Whether `GET /health` says healthy.
    pub fn healthy(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.client_port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
        let req = "GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
        let mut body = String::new();
        s.write_all(req.as_bytes()).is_ok()
            && s.read_to_string(&mut body).is_ok()
            && body.contains("\"health\":\"true\"")
    }

    /// The member's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the member (as a crash would).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file(self.dir.with_extension("log"));
    }
}
