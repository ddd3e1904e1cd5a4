//! Shedding policy: when the reactor lets clients go on purpose (above the connection target,
//! or during a graceful shutdown), and which ones. It lives outside the event loop, as a hook
//! the loop calls once per tick (as Redis' `ae.c` runs its before-sleep hook and timers): the
//! policy decides how many and whom; each client's session decides how to close (a native
//! client is told `Goodbye`, a Typha client is closed). `docs/rebalancing.md` has the rules.

use super::conn::Phase;
use std::time::{Duration, Instant};

/// The settings the policy works from (from `ServerConfig`).
#[derive(Debug, Clone, Copy)]
pub struct ShedConfig {
    /// Above the connection target, one client goes per interval.
    pub drop_interval: Duration,
    /// The loop's timer resolution: an interval shorter than a tick still sheds at its rate.
    pub tick: Duration,
    /// A graceful shutdown sheds clients over (95 % of) this long; zero: all at once.
    pub shutdown_timeout: Duration,
    /// Longest gap between two shutdown drops.
    pub shutdown_drop_interval_max: Duration,
}

/// Why a client is being shed, for its farewell and the drop metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShedReason {
    Shutdown,
    Rebalancing,
}

/// What the policy wants done this tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    Nothing,
    /// Shed up to `count` clients, chosen by [`pick`].
    Some {
        reason: ShedReason,
        count: usize,
    },
    /// The shutdown deadline: every remaining client goes now.
    Everyone,
}

/// Connection counts as the loop sees them.
#[derive(Debug, Clone, Copy)]
pub struct Counts {
    /// Every connection, closing ones included.
    pub total: usize,
    /// Connections not already closing.
    pub open: usize,
}

#[derive(Debug)]
pub struct ShedPolicy {
    cfg: ShedConfig,
    /// While shedding for a graceful shutdown: when the next client goes, the gap between
    /// drops, and when whoever is left goes at once.
    plan: Option<ShutdownPlan>,
    shutting_down: bool,
    /// The next rebalancing drop is due no earlier than this.
    next_rebalance_drop: Instant,
}

impl ShedPolicy {
    pub fn new(cfg: ShedConfig, now: Instant) -> Self {
        ShedPolicy {
            cfg,
            plan: None,
            shutting_down: false,
            next_rebalance_drop: now,
        }
    }

    /// A shutdown begins with `open` clients. Returns the gap between drops when they are to be
    /// shed gradually (`gradual` and a non-zero timeout), `None` when all go at once.
    pub fn begin_shutdown(&mut self, open: usize, gradual: bool, now: Instant) -> Option<Duration> {
        self.shutting_down = true;
        if gradual && !self.cfg.shutdown_timeout.is_zero() && open > 0 {
            let plan = ShutdownPlan::new(
                open,
                self.cfg.shutdown_timeout,
                self.cfg.shutdown_drop_interval_max,
                now,
            );
            self.plan = Some(plan);
            Some(plan.gap)
        } else {
            None
        }
    }

    /// Abandons a gradual shutdown (a second signal): returns whether one was under way, in
    /// which case everyone left is to go now.
    pub fn hurry(&mut self) -> bool {
        self.plan.take().is_some()
    }

    /// The per-tick hook: what to shed now, given the connection counts and the target.
    pub fn on_tick(&mut self, now: Instant, counts: Counts, target: usize) -> Shed {
        if let Some(plan) = &mut self.plan {
            if now >= plan.deadline {
                self.plan = None;
                return Shed::Everyone;
            }
            return match plan.take_due(now) {
                0 => Shed::Nothing,
                count => Shed::Some {
                    reason: ShedReason::Shutdown,
                    count,
                },
            };
        }
        if self.shutting_down || now < self.next_rebalance_drop || counts.total <= target {
            return Shed::Nothing;
        }
        let interval = self.cfg.drop_interval;
        // Drops are counted per interval, not per tick, so an interval shorter than the tick
        // still sheds at its rate; a backlog of missed intervals is not made up in a burst.
        let mut due = 1u64;
        if !interval.is_zero() {
            let late = now.duration_since(self.next_rebalance_drop);
            due += (late.as_nanos() / interval.as_nanos()).min(u64::MAX as u128) as u64;
            due = due.min((self.cfg.tick.as_nanos() / interval.as_nanos()) as u64 + 1);
        }
        let count = usize::try_from(due)
            .unwrap_or(usize::MAX)
            .min(counts.open.saturating_sub(target));
        if count == 0 {
            return Shed::Nothing;
        }
        self.next_rebalance_drop = now + interval;
        Shed::Some {
            reason: ShedReason::Rebalancing,
            count,
        }
    }
}

/// Whom to shed: up to `count` of `conns` (slot, phase, connection id), the newest streaming
/// clients first (they have the least invested in this replica and the rest keep their
/// long-lived streams), then the newest still being sent a snapshot, then the newest still in
/// their handshake. Closing connections are never picked.
pub fn pick(conns: impl Iterator<Item = (usize, Phase, u64)>, count: usize) -> Vec<usize> {
    let rank = |p: Phase| match p {
        Phase::Streaming => Some(2u8),
        Phase::Snapshot => Some(1),
        Phase::Handshake => Some(0),
        Phase::Closing { .. } => None,
    };
    let mut ranked: Vec<((u8, u64), usize)> = conns
        .filter_map(|(slot, phase, id)| rank(phase).map(|r| ((r, id), slot)))
        .collect();
    ranked.sort_unstable_by_key(|&(key, _)| std::cmp::Reverse(key));
    ranked.truncate(count);
    ranked.into_iter().map(|(_, slot)| slot).collect()
}

/// The schedule of a gradual shutdown: drops spaced evenly so the last goes at 95 % of the
/// timeout (leaving the rest for the farewells to be read), but never further apart than the
/// configured maximum gap.
#[derive(Debug, Clone, Copy)]
struct ShutdownPlan {
    gap: Duration,
    next: Instant,
    deadline: Instant,
}

impl ShutdownPlan {
    fn new(connections: usize, timeout: Duration, max_gap: Duration, now: Instant) -> Self {
        let spread = timeout.mul_f64(0.95);
        let gap = (spread / connections.clamp(1, u32::MAX as usize) as u32).min(max_gap);
        ShutdownPlan {
            gap,
            next: now,
            deadline: now + timeout,
        }
    }

    /// How many drops are due by `now` (one per elapsed gap), advancing the schedule.
    fn take_due(&mut self, now: Instant) -> usize {
        let mut due = 0;
        while self.next <= now && due < 1_000_000 {
            due += 1;
            if self.gap.is_zero() {
                return usize::MAX;
            }
            self.next += self.gap;
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ShedConfig {
        ShedConfig {
            drop_interval: Duration::from_secs(1),
            tick: Duration::from_millis(100),
            shutdown_timeout: Duration::from_secs(10),
            shutdown_drop_interval_max: Duration::from_secs(1),
        }
    }

    #[test]
    fn rebalancing_sheds_one_per_interval_down_to_the_target() {
        let t0 = Instant::now();
        let mut p = ShedPolicy::new(cfg(), t0);
        let c = Counts {
            total: 12,
            open: 12,
        };
        assert_eq!(
            p.on_tick(t0, c, 10),
            Shed::Some {
                reason: ShedReason::Rebalancing,
                count: 1
            }
        );
        assert_eq!(
            p.on_tick(t0 + Duration::from_millis(500), c, 10),
            Shed::Nothing
        );
        assert_eq!(
            p.on_tick(t0 + Duration::from_millis(1000), c, 10),
            Shed::Some {
                reason: ShedReason::Rebalancing,
                count: 1
            }
        );
        let at_target = Counts {
            total: 10,
            open: 10,
        };
        assert_eq!(
            p.on_tick(t0 + Duration::from_secs(5), at_target, 10),
            Shed::Nothing
        );
    }

    #[test]
    fn gradual_shutdown_spreads_drops_then_sheds_everyone_at_the_deadline() {
        let t0 = Instant::now();
        let mut p = ShedPolicy::new(cfg(), t0);
        let gap = p.begin_shutdown(19, true, t0).unwrap();
        assert_eq!(gap, Duration::from_millis(500));
        let c = Counts {
            total: 19,
            open: 19,
        };
        assert_eq!(
            p.on_tick(t0, c, 1),
            Shed::Some {
                reason: ShedReason::Shutdown,
                count: 1
            }
        );
        assert_eq!(
            p.on_tick(t0 + Duration::from_millis(1000), c, 1),
            Shed::Some {
                reason: ShedReason::Shutdown,
                count: 2
            }
        );
        assert_eq!(
            p.on_tick(t0 + Duration::from_secs(10), c, 1),
            Shed::Everyone
        );
        // Shutting down, the policy never rebalances.
        assert_eq!(p.on_tick(t0 + Duration::from_secs(20), c, 1), Shed::Nothing);
    }

    #[test]
    fn newest_streaming_clients_are_picked_first() {
        let closing = Phase::Closing {
            deadline: Instant::now(),
        };
        let conns = [
            (0, Phase::Streaming, 1),
            (1, Phase::Streaming, 5),
            (2, Phase::Snapshot, 9),
            (3, Phase::Handshake, 10),
            (4, closing, 11),
        ];
        assert_eq!(pick(conns.into_iter(), 3), vec![1, 0, 2]);
        assert_eq!(pick(conns.into_iter(), 10), vec![1, 0, 2, 3]);
    }
}
