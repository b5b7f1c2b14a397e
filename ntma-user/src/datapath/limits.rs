//! The limits of the datapath's settings, in one place: [`Sizes::validate`] checks the
//! configuration file's `[datapath]` ([`crate::config`]) and the programmatic
//! constructors ([`crate::fastpath::AfXdpConfig`], [`crate::rawpath::RawConfig`], which
//! perf and the tests build without a file) alike, and every error names the setting
//! by its key in the file.

use ntma_common::MAX_QUEUES;

/// Most packets per burst (one ring operation, one `recvmmsg`/`sendmmsg`).
pub const MAX_BATCH: usize = 1024;
/// Ring sizes: powers of two in this range.
pub const RING_MIN: u32 = 64;
/// See [`RING_MIN`].
pub const RING_MAX: u32 = 16384;
/// Most UMEM frames in all.
pub const MAX_FRAMES: u32 = 1 << 20;

/// A datapath setting that cannot work: its key in the configuration file
/// (`datapath.batch`), its value and what to use instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key} = {value}: {fix}")]
pub struct Invalid {
    /// The setting, as written in the file.
    pub key: &'static str,
    /// Its value.
    pub value: String,
    /// What to put there instead.
    pub fix: String,
}

fn invalid(key: &'static str, value: impl ToString, fix: impl Into<String>) -> Invalid {
    Invalid {
        key,
        value: value.to_string(),
        fix: fix.into(),
    }
}

/// The sizes of an AF_XDP datapath. Each field is the `[datapath]` key of the same
/// name (see [`crate::config::Datapath`]); empty `cores` means not pinned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes<'a> {
    pub queues: u32,
    pub cores: &'a [usize],
    pub frame_size: u32,
    pub frame_count: u32,
    pub fill_ring: u32,
    pub completion_ring: u32,
    pub rx_ring: u32,
    pub tx_ring: u32,
    pub batch: usize,
}

impl Sizes<'_> {
    /// Checks every size against the limits.
    pub fn validate(&self) -> Result<(), Invalid> {
        queues(self.queues)?;
        cores(self.cores)?;
        if !(self.frame_size == 2048 || self.frame_size == 4096) {
            return Err(invalid(
                "datapath.frame_size",
                self.frame_size,
                "use 2048 or 4096",
            ));
        }
        for (key, v) in [
            ("datapath.fill_ring", self.fill_ring),
            ("datapath.completion_ring", self.completion_ring),
            ("datapath.rx_ring", self.rx_ring),
            ("datapath.tx_ring", self.tx_ring),
        ] {
            if !v.is_power_of_two() || !(RING_MIN..=RING_MAX).contains(&v) {
                return Err(invalid(
                    key,
                    v,
                    format!("use a power of two from {RING_MIN} to {RING_MAX}, e.g. 2048"),
                ));
            }
        }
        batch(self.batch, self.rx_ring.min(self.tx_ring) as usize)?;
        self.frame_count()
    }

    /// Each queue keeps its fill ring full on both NICs, and frames in flight on the
    /// RX and TX rings come from the same UMEM; a worker needs at least 8 bursts of
    /// frames whatever the rings.
    fn frame_count(&self) -> Result<(), Invalid> {
        let per_queue =
            (2 * (u64::from(self.fill_ring) + u64::from(self.tx_ring))).max(8 * self.batch as u64);
        let needed = u64::from(self.queues) * per_queue;
        if u64::from(self.frame_count) < needed || self.frame_count > MAX_FRAMES {
            return Err(invalid(
                "datapath.frame_count",
                self.frame_count,
                format!(
                    "use at least queues x 2 x (fill_ring + tx_ring) = {needed} (and 8 x batch per queue) and at most {MAX_FRAMES}"
                ),
            ));
        }
        Ok(())
    }
}

/// `datapath.queues`: 1 to [`MAX_QUEUES`].
pub fn queues(n: u32) -> Result<(), Invalid> {
    if n == 0 || n > MAX_QUEUES {
        return Err(invalid(
            "datapath.queues",
            n,
            format!("use 1 to {MAX_QUEUES} (at most the NICs' RX queue count, `ethtool -l`)"),
        ));
    }
    Ok(())
}

/// `datapath.cores`: every core online and in this process's cpuset.
pub fn cores(cores: &[usize]) -> Result<(), Invalid> {
    if cores.is_empty() {
        return Ok(());
    }
    let online: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    match cores.iter().find(|c| !online.contains(c)) {
        Some(c) => Err(invalid(
            "datapath.cores",
            format!("{cores:?}"),
            format!(
                "core {c} does not exist or is not available to this process (available: {online:?})"
            ),
        )),
        None => Ok(()),
    }
}

/// `datapath.batch`: 1 to [`MAX_BATCH`], and at most `ring` (the smaller of the RX and
/// TX rings).
pub fn batch(batch: usize, ring: usize) -> Result<(), Invalid> {
    if batch == 0 || batch > ring || batch > MAX_BATCH {
        return Err(invalid(
            "datapath.batch",
            batch,
            format!("use 1 to {MAX_BATCH}, at most rx_ring and tx_ring (64 is a good start)"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> Sizes<'static> {
        Sizes {
            queues: 1,
            cores: &[],
            frame_size: 2048,
            frame_count: 8192,
            fill_ring: 2048,
            completion_ring: 2048,
            rx_ring: 2048,
            tx_ring: 2048,
            batch: 64,
        }
    }

    fn key(f: impl Fn(&mut Sizes<'static>)) -> &'static str {
        let mut s = ok();
        f(&mut s);
        s.validate().unwrap_err().key
    }

    #[test]
    fn every_limit_names_its_key() {
        ok().validate().unwrap();
        assert_eq!(key(|s| s.queues = 0), "datapath.queues");
        assert_eq!(key(|s| s.queues = MAX_QUEUES + 1), "datapath.queues");
        assert_eq!(key(|s| s.cores = &[100_000]), "datapath.cores");
        assert_eq!(key(|s| s.frame_size = 1024), "datapath.frame_size");
        assert_eq!(key(|s| s.fill_ring = 1000), "datapath.fill_ring");
        assert_eq!(key(|s| s.completion_ring = 32), "datapath.completion_ring");
        assert_eq!(key(|s| s.rx_ring = 32768), "datapath.rx_ring");
        assert_eq!(key(|s| s.tx_ring = 0), "datapath.tx_ring");
        assert_eq!(key(|s| s.frame_count = 8191), "datapath.frame_count");
        assert_eq!(
            key(|s| s.frame_count = MAX_FRAMES + 1),
            "datapath.frame_count"
        );
        assert_eq!(key(|s| s.batch = 0), "datapath.batch");
        assert_eq!(key(|s| s.batch = 1025), "datapath.batch");
        // At most the smaller ring, and 8 bursts of frames per queue.
        assert_eq!(
            key(|s| {
                s.tx_ring = 64;
                s.batch = 128
            }),
            "datapath.batch"
        );
        let e = Sizes {
            rx_ring: 1024,
            tx_ring: 1024,
            fill_ring: 64,
            batch: 1024,
            frame_count: 4096,
            ..ok()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("datapath.frame_count = 4096"), "{e}");
    }
}
