//! Request retransmission (§5): after 250 ms, doubling, at most 5 tries,
//! then the operation fails.

use std::time::{Duration, Instant};

/// Wait before the first retransmission.
pub const INITIAL_RTO: Duration = Duration::from_millis(250);
/// Transmissions of one request, the first included.
pub const MAX_TRIES: u32 = 5;

/// What to do when a [`Retransmit`] deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetransmitAction {
    /// Send the request again (the try is already counted).
    Send,
    /// All tries are used up: the operation failed.
    Failed,
}

/// Timer state of one outstanding request. The caller sends the first try
/// when it calls [`Retransmit::start`], then calls
/// [`Retransmit::on_timeout`] whenever `now` reaches [`Retransmit::deadline`].
/// With 5 tries the sends happen at 0, 0.25, 0.75, 1.75 and 3.75 s and the
/// failure at 7.75 s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retransmit {
    tries: u32,
    rto: Duration,
    deadline: Instant,
}

impl Retransmit {
    /// The first try goes out now.
    pub fn start(now: Instant) -> Retransmit {
        Retransmit {
            tries: 1,
            rto: INITIAL_RTO,
            deadline: now + INITIAL_RTO,
        }
    }

    /// When the next retransmission (or the failure) is due.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Transmissions so far.
    pub fn tries(&self) -> u32 {
        self.tries
    }

    /// Advance the timer. `None` while the deadline has not passed.
    pub fn on_timeout(&mut self, now: Instant) -> Option<RetransmitAction> {
        if now < self.deadline {
            return None;
        }
        // Doubling from the previous wait; the failure waits one more RTO
        // after the last try, so that a late answer still counts.
        self.rto *= 2;
        self.deadline = now + self.rto;
        if self.tries >= MAX_TRIES {
            return Some(RetransmitAction::Failed);
        }
        self.tries += 1;
        Some(RetransmitAction::Send)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_doubles_and_fails_after_five_tries() {
        let t0 = Instant::now();
        let mut r = Retransmit::start(t0);
        let mut sends = vec![Duration::ZERO];
        let mut failed_at = None;
        while failed_at.is_none() {
            let now = r.deadline();
            assert_eq!(r.on_timeout(now - Duration::from_millis(1)), None);
            match r.on_timeout(now).unwrap() {
                RetransmitAction::Send => sends.push(now - t0),
                RetransmitAction::Failed => failed_at = Some(now - t0),
            }
        }
        let ms: Vec<u128> = sends.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, vec![0, 250, 750, 1750, 3750]);
        assert_eq!(failed_at.unwrap().as_millis(), 7750);
        assert_eq!(r.tries(), MAX_TRIES);
    }
}
