//! Whether a series of samples grows after the warm-up.
//!
//! A series grows when two measures both exceed its tolerance: the
//! least-squares trend projected over the judged span, and the rise from
//! the median of the first third of the judged samples to the median of the
//! last third. A steady leak exceeds both; noise, one late spike or a slope
//! made by a single outlier exceeds at most one.

/// How much a series may grow over the judged part of the run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerance {
    /// In the series' unit.
    pub abs: f64,
    /// As a fraction of the series' level (the first third's median).
    pub rel: f64,
}

impl Tolerance {
    fn at(&self, level: f64) -> f64 {
        self.abs.max(self.rel * level.abs())
    }
}

/// The judgement of one series.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    /// Samples judged (after the warm-up).
    pub samples: usize,
    /// Least-squares slope, per second.
    pub slope_per_sec: f64,
    /// The slope times the judged span.
    pub projected: f64,
    /// Median of the last third minus median of the first third.
    pub rise: f64,
    /// The tolerance at the series' level.
    pub allowed: f64,
    /// Both `projected` and `rise` exceed `allowed`.
    pub grows: bool,
}

/// The fewest judged samples: two per third.
pub const MIN_SAMPLES: usize = 6;

/// Judges the `(seconds, value)` points taken at or after `warmup`
/// seconds; `None` with fewer than [`MIN_SAMPLES`] of them.
pub fn judge(points: &[(f64, f64)], warmup: f64, tol: Tolerance) -> Option<Verdict> {
    let judged: Vec<(f64, f64)> = points.iter().copied().filter(|p| p.0 >= warmup).collect();
    let n = judged.len();
    if n < MIN_SAMPLES {
        return None;
    }
    let slope = slope(&judged);
    let span = judged[n - 1].0 - judged[0].0;
    let third = n / 3;
    let values = |s: &[(f64, f64)]| s.iter().map(|p| p.1).collect::<Vec<f64>>();
    let first = median(values(&judged[..third]));
    let last = median(values(&judged[n - third..]));
    let allowed = tol.at(first);
    let projected = slope * span;
    let rise = last - first;
    Some(Verdict {
        samples: n,
        slope_per_sec: slope,
        projected,
        rise,
        allowed,
        grows: projected > allowed && rise > allowed,
    })
}

/// The least-squares slope of `points` (0 when they share one time).
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    let mt = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mv = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mt).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mt) * (p.1 - mv)).sum();
    if sxx > 0.0 {
        sxy / sxx
    } else {
        0.0
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOL: Tolerance = Tolerance {
        abs: 10.0,
        rel: 0.05,
    };

    /// 30 samples 10 s apart, `f` of the sample index.
    fn series(f: impl Fn(usize) -> f64) -> Vec<(f64, f64)> {
        (0..30).map(|i| (i as f64 * 10.0, f(i))).collect()
    }

    /// A deterministic wobble in [-1, 1].
    fn noise(i: usize) -> f64 {
        ((i * 7919) % 13) as f64 / 6.0 - 1.0
    }

    #[test]
    fn a_flat_noisy_series_does_not_grow() {
        let v = judge(&series(|i| 1000.0 + 40.0 * noise(i)), 60.0, TOL).unwrap();
        assert!(!v.grows, "{v:?}");
        assert_eq!(v.samples, 24);
        assert_eq!(v.allowed, 50.0);
    }

    #[test]
    fn a_steady_leak_grows() {
        // 5 per sample: 115 over the judged span, above 5 % of 1000.
        let v = judge(&series(|i| 1000.0 + 5.0 * i as f64 + noise(i)), 60.0, TOL).unwrap();
        assert!(v.grows, "{v:?}");
        assert!((v.slope_per_sec - 0.5).abs() < 0.02, "{v:?}");
        // The same leak, too slow to matter at this level.
        let v = judge(&series(|i| 1000.0 + 1.0 * i as f64), 60.0, TOL).unwrap();
        assert!(!v.grows, "{v:?}");
    }

    #[test]
    fn a_small_series_is_judged_against_the_absolute_tolerance() {
        // File descriptors: 20, plus one every other sample, against 2.
        let fds = Tolerance { abs: 2.0, rel: 0.0 };
        let v = judge(&series(|i| 20.0 + (i / 2) as f64), 60.0, fds).unwrap();
        assert!(v.grows, "{v:?}");
        // Sockets that come and go.
        let v = judge(&series(|i| 20.0 + (i % 3) as f64), 60.0, fds).unwrap();
        assert!(!v.grows, "{v:?}");
    }

    #[test]
    fn one_late_spike_or_a_fall_is_not_growth() {
        let v = judge(
            &series(|i| if i == 29 { 5000.0 } else { 1000.0 }),
            60.0,
            TOL,
        )
        .unwrap();
        assert!(!v.grows, "{v:?}");
        let v = judge(&series(|i| 2000.0 - 20.0 * i as f64), 60.0, TOL).unwrap();
        assert!(!v.grows, "{v:?}");
    }

    #[test]
    fn the_warm_up_is_left_out() {
        // Rises to a plateau during the warm-up, flat after it.
        let v = judge(&series(|i| 1000.0 * (i.min(6) as f64)), 60.0, TOL).unwrap();
        assert!(!v.grows, "{v:?}");
        // Without the warm-up the same series grows.
        assert!(
            judge(&series(|i| 1000.0 * (i.min(6) as f64)), 0.0, TOL)
                .unwrap()
                .grows
        );
    }

    #[test]
    fn too_few_samples_give_no_verdict() {
        let pts: Vec<(f64, f64)> = (0..8).map(|i| (i as f64 * 10.0, 1.0)).collect();
        assert!(judge(&pts, 30.0, TOL).is_none());
        assert!(judge(&pts, 20.0, TOL).is_some());
    }
}
