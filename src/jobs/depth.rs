//! How many jobs the claim loop takes ahead of its free workers: enough to cover the time a
//! claim takes at the pace jobs are starting, between a small floor and `jobs.prefetch`.
//!
//! Short jobs start fast, so a claim's round trip would leave workers idle: the depth grows
//! toward the ceiling and one claim serves many starts. Long jobs start slowly: the depth
//! stays at the floor, so a node whose workers are busy holds almost nothing that another
//! node could run (and no job shows as `running` in the API while it only waits here).
//!
//! The type only does arithmetic on the times it is given, so it is tested with plain
//! numbers; the runner's claim loop and `examples/qb_phased.rs` both use it.

use std::time::{Duration, Instant};

/// The smallest depth (unless the ceiling is lower): one job ready for the next worker
/// that frees, so that start does not wait a claim's round trip.
pub const MIN_DEPTH: usize = 1;

/// The depth covers this many claims' round trips at the start rate.
const SAFETY: f64 = 2.0;

/// Starts are counted over windows at least this long; each window's rate joins the average.
const WINDOW: Duration = Duration::from_millis(10);

/// Time constant of the start rate's average: a window this long weighs 63%, so a change
/// of pace shows within a few of these.
const RATE_TAU: Duration = Duration::from_millis(100);

/// Weight of the newest claim in the claim time's average.
const CLAIM_WEIGHT: f64 = 0.25;

/// The claim loop's depth: see the module documentation.
#[derive(Debug, Clone)]
pub struct ClaimDepth {
    ceiling: usize,
    /// Average round trip of claims that got jobs, in seconds; `None` before the first.
    claim_secs: Option<f64>,
    /// Average start rate, jobs per second.
    rate: f64,
    /// The open window: when it began and the starts counted in it.
    window: Option<(Instant, u64)>,
}

impl ClaimDepth {
    /// `ceiling` is `jobs.prefetch`: 0 claims only for free workers.
    pub fn new(ceiling: usize) -> Self {
        Self {
            ceiling,
            claim_secs: None,
            rate: 0.0,
            window: None,
        }
    }

    /// A reload may change `jobs.prefetch`; what was measured stays.
    pub fn set_ceiling(&mut self, ceiling: usize) {
        self.ceiling = ceiling;
    }

    pub fn ceiling(&self) -> usize {
        self.ceiling
    }

    /// A claim statement took `elapsed` (sent to answered) and returned `got` jobs. Claims
    /// that found nothing are left out: an empty queue answers faster than a claim that
    /// takes jobs, and the depth only matters while there are jobs.
    pub fn record_claim(&mut self, elapsed: Duration, got: usize) {
        if got == 0 {
            return;
        }
        let sample = elapsed.as_secs_f64();
        self.claim_secs = Some(match self.claim_secs {
            Some(avg) => avg + CLAIM_WEIGHT * (sample - avg),
            None => sample,
        });
    }

    /// `n` jobs left the local queue for a worker at `now`.
    pub fn record_start(&mut self, n: usize, now: Instant) {
        self.roll(now);
        match &mut self.window {
            Some((_, count)) => *count += n as u64,
            None => self.window = Some((now, n as u64)),
        }
    }

    /// Closes the open window if it is long enough, folding its rate into the average with
    /// a weight that grows with its length (a long quiet spell replaces the old pace).
    fn roll(&mut self, now: Instant) {
        let Some((began, count)) = self.window else {
            return;
        };
        let span = now.saturating_duration_since(began);
        if span < WINDOW {
            return;
        }
        let sample = count as f64 / span.as_secs_f64();
        let weight = 1.0 - (-span.as_secs_f64() / RATE_TAU.as_secs_f64()).exp();
        self.rate += weight * (sample - self.rate);
        self.window = Some((now, 0));
    }

    /// The start rate as measured at `now`, jobs per second.
    pub fn rate(&mut self, now: Instant) -> f64 {
        self.roll(now);
        self.rate
    }

    /// Jobs to hold ahead of the free workers at `now`: start rate × claim time × the
    /// safety factor, rounded up, within `[min(MIN_DEPTH, ceiling), ceiling]`.
    pub fn depth(&mut self, now: Instant) -> usize {
        let floor = MIN_DEPTH.min(self.ceiling);
        let rate = self.rate(now);
        let Some(claim) = self.claim_secs else {
            return floor;
        };
        let wanted = (rate * claim * SAFETY).ceil();
        if wanted >= self.ceiling as f64 {
            self.ceiling
        } else {
            (wanted as usize).max(floor)
        }
    }

    /// What the next claim may take in all: the free workers plus the depth, less what
    /// waits locally; nothing while no worker is free (no claim is made only to fill the
    /// local queue, so a node whose workers are busy leaves the queue to the others).
    pub fn limit(&mut self, workers: usize, running: usize, local: usize, now: Instant) -> usize {
        if running >= workers {
            return 0;
        }
        (workers + self.depth(now)).saturating_sub(running + local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Jobs starting at `per_claim` every `every`, each claim taking `claim`, for `claims`
    /// claims from `t`; returns the time after the last.
    fn run(
        d: &mut ClaimDepth,
        t: Instant,
        claims: u32,
        every: Duration,
        claim: Duration,
        per_claim: usize,
    ) -> Instant {
        let mut now = t;
        for _ in 0..claims {
            d.record_claim(claim, per_claim);
            d.record_start(per_claim, now);
            now += every;
        }
        now
    }

    #[test]
    fn starts_at_the_floor() {
        let t = Instant::now();
        let mut d = ClaimDepth::new(96);
        assert_eq!(d.depth(t), MIN_DEPTH);
        assert_eq!(d.limit(4, 0, 0, t), 4 + MIN_DEPTH);
        // Measured claims but no starts yet: still the floor.
        d.record_claim(ms(3), 5);
        assert_eq!(d.depth(t), MIN_DEPTH);
    }

    #[test]
    fn grows_with_a_fast_start_rate_and_never_past_the_ceiling() {
        let t = Instant::now();
        let mut d = ClaimDepth::new(96);
        // 8 jobs every 4 ms (2,000 jobs/s), a claim taking 4 ms: wants 2,000 × 0.004 × 2 = 16.
        let now = run(&mut d, t, 200, ms(4), ms(4), 8);
        let depth = d.depth(now);
        assert!((15..=17).contains(&depth), "{depth}");
        assert_eq!(d.limit(4, 1, 2, now), 4 + depth - 3);
        // Faster still (25,000 jobs/s): the ceiling, not more.
        let now = run(&mut d, now, 200, ms(4), ms(4), 100);
        assert_eq!(d.depth(now), 96);
        assert_eq!(d.limit(4, 0, 0, now), 100);
        // A lower ceiling after a reload holds at once.
        d.set_ceiling(10);
        assert_eq!(d.depth(now), 10);
    }

    #[test]
    fn shrinks_back_when_jobs_run_long() {
        let t = Instant::now();
        let mut d = ClaimDepth::new(96);
        let now = run(&mut d, t, 200, ms(4), ms(4), 100);
        assert_eq!(d.depth(now), 96);
        // Then 4 workers on 10 s jobs: 4 starts every 10 s (0.4 jobs/s).
        let now = run(&mut d, now, 3, Duration::from_secs(10), ms(4), 4);
        assert_eq!(d.depth(now), MIN_DEPTH);
        assert!(d.rate(now) < 1.0, "{}", d.rate(now));
        // A quiet spell alone also brings it back: nothing started for 5 s.
        let now = run(&mut d, now, 200, ms(4), ms(4), 100);
        assert_eq!(d.depth(now), 96);
        assert_eq!(d.depth(now + Duration::from_secs(5)), MIN_DEPTH);
    }

    #[test]
    fn slow_claims_deepen_it_and_empty_claims_do_not_count() {
        let t = Instant::now();
        let mut d = ClaimDepth::new(1000);
        // 1,000 jobs/s: a 2 ms claim wants 4, a 20 ms claim wants about 40.
        let now = run(&mut d, t, 300, ms(8), ms(2), 8);
        let fast = d.depth(now);
        assert!((4..=5).contains(&fast), "{fast}");
        for _ in 0..40 {
            d.record_claim(ms(20), 8);
            // Quick empty answers leave the measured claim time alone.
            d.record_claim(ms(1), 0);
        }
        let slow = d.depth(now);
        assert!((38..=42).contains(&slow), "{slow}");
    }

    #[test]
    fn no_claim_while_no_worker_is_free() {
        let t = Instant::now();
        let mut d = ClaimDepth::new(96);
        let now = run(&mut d, t, 200, ms(4), ms(4), 100);
        assert_eq!(d.limit(4, 4, 0, now), 0);
        assert_eq!(d.limit(4, 3, 0, now), 97);
        // What waits locally counts against the depth.
        assert_eq!(d.limit(4, 3, 200, now), 0);
    }

    #[test]
    fn a_zero_ceiling_claims_only_for_free_workers() {
        let t = Instant::now();
        let mut d = ClaimDepth::new(0);
        assert_eq!(d.limit(4, 0, 0, t), 4);
        let now = run(&mut d, t, 200, ms(4), ms(4), 100);
        assert_eq!(d.depth(now), 0);
        assert_eq!(d.limit(4, 1, 0, now), 3);
        assert_eq!(d.limit(4, 1, 3, now), 0);
    }
}
