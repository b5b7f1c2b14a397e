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

/// A loopback port nobody listens on now.
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
    l.local_addr().expect("its address").port()
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

    /// A cluster of `n` members, each healthy before this returns.
    pub fn cluster(n: usize) -> Vec<Etcd> {
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let initial: Vec<String> = (ports.iter().enumerate())
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect();
        let token = format!("ntm-{}-{}", std::process::id(), ports[0].0);
        let members: Vec<Etcd> = (ports.iter().enumerate())
            .map(|(i, &(client, peer))| {
                Etcd::spawn(&format!("m{i}"), client, peer, &initial.join(","), &token)
            })
            .collect();
        for m in &members {
            m.wait_healthy(Duration::from_secs(60));
        }
        members
    }

    fn spawn(name: &str, client: u16, peer: u16, initial: &str, token: &str) -> Etcd {
        let dir = data_dir(name);
        let curl = format!("http://127.0.0.1:{client}");
        let purl = format!("http://127.0.0.1:{peer}");
        let etcd = ntm_testbed::etcd::binary().unwrap_or_else(|e| panic!("{e}"));
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
            .stderr(Stdio::null())
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

    /// Waits until the member is healthy (it has a leader).
    pub fn wait_healthy(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.healthy() {
            assert!(
                Instant::now() < deadline,
                "etcd at {} not healthy within {within:?}",
                self.url
            );
            std::thread::sleep(Duration::from_millis(100));
        }
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
    }
}
