//! DNS on the testbed with stock software: a real upstream resolver
//! (dnsmasq in the dc namespace, UDP and TCP), dig with any options, and a
//! DNS-over-TCP client (RFC 7766 framing, several queries pipelined on one
//! connection) for the adapter's DNS tests (`tests/dns.rs`).
//!
//! ```no_run
//! use ntm_world::dns::{Zone, DNSMASQ};
//! use ntm_world::World;
//!
//! let w = World::up("doc")?;
//! let _upstream = w.dnsmasq(&Zone::default().a("fwd.example.net", "192.0.2.53".parse()?))?;
//! let _ntma = w.ntma(|c| c.dns.upstream = DNSMASQ)?;
//! # Ok::<(), anyhow::Error>(())
//! ```

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::process::Command;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context as _, Result};
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use ntm_testbed::{wait_until, Child, DC_ADDR};

use crate::{Dig, Role, World, PATIENCE};

/// The real upstream resolver of the DNS tests: dnsmasq on the DC's address,
/// port 53, UDP and TCP (the fake upstream of [`crate::UPSTREAM`] stays for
/// the other tests). Point the adapter at it with `c.dns.upstream = DNSMASQ`.
pub const DNSMASQ: SocketAddrV4 = SocketAddrV4::new(DC_ADDR, 53);

/// What dnsmasq answers: these records and nothing else (no upstream
/// servers, no /etc/hosts; other names get REFUSED).
#[derive(Debug, Clone, Default)]
pub struct Zone {
    a: Vec<(String, Ipv4Addr)>,
    txt: Vec<(String, Vec<String>)>,
}

impl Zone {
    /// An A record.
    pub fn a(mut self, name: &str, addr: Ipv4Addr) -> Self {
        self.a.push((name.to_owned(), addr));
        self
    }

    /// `n` A records for `name`: 10.77.0.1, 10.77.0.2, ... ([`Zone::many_addr`]).
    pub fn many_a(mut self, name: &str, n: u16) -> Self {
        for i in 0..n {
            self.a.push((name.to_owned(), Zone::many_addr(i)));
        }
        self
    }

    /// The `i`th address of [`Zone::many_a`].
    pub fn many_addr(i: u16) -> Ipv4Addr {
        let [hi, lo] = (i + 1).to_be_bytes();
        Ipv4Addr::new(10, 77, hi, lo)
    }

    /// A TXT record of `strings` (each at most 255 bytes, no commas).
    pub fn txt(mut self, name: &str, strings: &[String]) -> Self {
        self.txt.push((name.to_owned(), strings.to_vec()));
        self
    }
}

impl World {
    /// Starts dnsmasq in the dc namespace on [`DNSMASQ`] answering `zone`
    /// (its queries logged into the child's log), and waits until it
    /// answers over TCP. Stop it by dropping the child (before the world).
    pub fn dnsmasq(&self, zone: &Zone) -> Result<Child> {
        let dir = self.tb.state_dir();
        let hosts = dir.join("dnsmasq.hosts");
        let text: String = zone
            .a
            .iter()
            .map(|(name, addr)| format!("{addr} {name}\n"))
            .collect();
        std::fs::write(&hosts, text).context("write the dnsmasq hosts file")?;
        let mut cmd = Command::new("dnsmasq");
        cmd.args([
            "--no-daemon",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--log-queries",
            "--bind-interfaces",
            "--user=root",
            // Its own default (1232) would truncate before the adapter does.
            "--edns-packet-max=4096",
            "--port=53",
        ])
        .arg(format!("--listen-address={}", DNSMASQ.ip()))
        .arg(format!("--addn-hosts={}", hosts.display()))
        .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()));
        for (name, strings) in &zone.txt {
            cmd.arg(format!("--txt-record={name},{}", strings.join(",")));
        }
        let mut child = self
            .tb
            .spawn(Role::Dc, &cmd)
            .map_err(|e| anyhow!("start dnsmasq (is it installed? `cargo xtask setup`): {e}"))?;
        // Ready when it answers a name it knows over TCP.
        let probe = zone
            .a
            .first()
            .map_or("nothing.invalid", |(n, _)| n.as_str());
        let script = format!(
            "dig @{} -p {} +tcp +tries=1 +time=1 {probe} A",
            DNSMASQ.ip(),
            DNSMASQ.port()
        );
        let ready = wait_until(PATIENCE, || {
            self.sh(Role::Dc, &script)
                .is_ok_and(|out| out.contains("status: NOERROR") || zone.a.is_empty())
        });
        ensure!(
            ready,
            "dnsmasq never answered on {DNSMASQ} (running: {}): {}",
            child.is_running(),
            child.log()
        );
        Ok(child)
    }

    /// `dig @server <opts> name type` in `role`'s namespace (one try of at
    /// most 10 s unless `opts` say otherwise): the parsed answer and the
    /// whole output. A non-zero exit is not an error: the caller decides.
    pub fn dig_with(
        &self,
        role: Role,
        server: Ipv4Addr,
        opts: &str,
        name: &str,
        rtype: &str,
    ) -> Result<(Dig, String)> {
        let out = self.sh(
            role,
            &format!("dig @{server} +tries=1 +time=10 {opts} {name} {rtype} 2>&1; true"),
        )?;
        Ok((Dig::parse(&out), out))
    }

    /// One TCP connection from `role`'s namespace to `server`: writes every
    /// query (length-prefixed, all in one write: pipelined), then reads as
    /// many answers, in the order they come. Returns the time from connect
    /// to the last answer, and the answers.
    pub fn tcp_queries(
        &self,
        role: Role,
        server: SocketAddrV4,
        queries: &[Vec<u8>],
    ) -> Result<(Duration, Vec<Message>)> {
        // The connect is timed inside the namespace's thread, the rest after
        // it: the thread's start and end are not the adapter's time.
        let (connect, s) = self
            .tb
            .in_netns(role, || {
                let t0 = Instant::now();
                let s = TcpStream::connect_timeout(&server.into(), PATIENCE);
                (t0.elapsed(), s)
            })
            .map_err(|e| anyhow!("{e}"))?;
        let t0 = Instant::now();
        let mut s = s.with_context(|| format!("connect to {server} over TCP"))?;
        s.set_read_timeout(Some(PATIENCE))?;
        s.set_nodelay(true)?;
        let mut out = Vec::new();
        for q in queries {
            out.extend_from_slice(&u16::try_from(q.len())?.to_be_bytes());
            out.extend_from_slice(q);
        }
        s.write_all(&out).context("write the queries")?;
        let mut answers = Vec::new();
        for _ in queries {
            let mut len = [0u8; 2];
            s.read_exact(&mut len).context("an answer's length")?;
            let mut m = vec![0u8; usize::from(u16::from_be_bytes(len))];
            s.read_exact(&mut m).context("an answer")?;
            answers.push(Message::from_vec(&m).context("the answer parses")?);
        }
        Ok((connect + t0.elapsed(), answers))
    }
}

/// A query for `name` (no trailing dot needed) of type `rtype` with id `id`
/// and RD set, as bytes.
pub fn query(name: &str, rtype: RecordType, id: u16) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    let name = if name.ends_with('.') {
        name.to_owned()
    } else {
        format!("{name}.")
    };
    m.add_query(Query::query(
        Name::from_str(&name).expect("a DNS name"),
        rtype,
    ));
    m.to_vec().expect("a query encodes")
}
