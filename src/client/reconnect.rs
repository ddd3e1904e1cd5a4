//! A client that stays connected to some replica: it picks one at random, and when the
//! connection ends (a Goodbye, EOF, an error, or silence longer than the read timeout: no
//! frame, pings included, from a peer that vanished without FIN or RST) it picks another and
//! starts again from a fresh snapshot, after a jittered exponential backoff.
//!
//! [`Backoff`], [`Rng`] and [`pick_replica`] are public so event-loop clients (many sessions
//! per thread) can follow the same policy.

use super::blocking::BlockingClient;
use super::discovery::Discovery;
use super::session::ClientOptions;
use super::state::{ClientEvent, SyncState};
use super::ClientError;
use crate::proto::GoodbyeReason;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A small, fast, non-cryptographic generator (xorshift64*): jitter and replica choice only.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded from the process's hash randomness and the clock, so clients started together
    /// still differ.
    pub fn new() -> Self {
        let mut h = RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        Self::seeded(h.finish())
    }

    pub fn seeded(seed: u64) -> Self {
        Rng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `[0, n)`; 0 when `n` is 0.
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform in `[lo, hi]`.
    pub fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        if hi <= lo {
            return lo;
        }
        let span = (hi - lo).as_nanos().min(u64::MAX as u128) as u64;
        lo + Duration::from_nanos(self.next_u64() % (span + 1))
    }
}

impl Default for Rng {
    fn default() -> Self {
        Self::new()
    }
}

/// Exponential backoff with "equal jitter": after `n` consecutive failures the delay is
/// uniform in `[d/2, d]` with `d = min(max, initial × 2ⁿ)`, so clients that failed together
/// do not retry together, and the wait never collapses to nothing.
#[derive(Debug, Clone)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max: max.max(initial),
            failures: 0,
        }
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The un-jittered ceiling of the next delay.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.failures.min(30)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// Records a failure and returns the delay before the next attempt.
    pub fn fail(&mut self, rng: &mut Rng) -> Duration {
        let d = self.ceiling();
        self.failures = self.failures.saturating_add(1);
        rng.between(d / 2, d)
    }

    /// The delay after a server asked this client to move (rebalancing or shutdown): not a
    /// failure, but spread over `[0, initial]` so the clients a replica sheds do not arrive
    /// at the next one in step.
    pub fn moved(&self, rng: &mut Rng) -> Duration {
        rng.between(Duration::ZERO, self.initial)
    }

    /// A connection worked (its snapshot completed): start again from `initial`.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// A random replica of `candidates`, other than `avoid` (the one just left or that just
/// failed) when there is another.
pub fn pick_replica(
    candidates: &[SocketAddr],
    avoid: Option<SocketAddr>,
    rng: &mut Rng,
) -> Option<SocketAddr> {
    let others: Vec<SocketAddr> = candidates
        .iter()
        .copied()
        .filter(|a| Some(*a) != avoid)
        .collect();
    let pool = if others.is_empty() {
        candidates
    } else {
        &others
    };
    (!pool.is_empty()).then(|| pool[rng.below(pool.len())])
}

#[derive(Debug, Clone)]
pub struct ReconnectOptions {
    /// Per-connection options. `read_timeout` is the dead-peer timeout: a connection that
    /// receives no bytes for this long (the server pings every 10 s by default) is given up.
    pub client: ClientOptions,
    pub discovery: Discovery,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl ReconnectOptions {
    pub fn new(discovery: Discovery) -> Self {
        ReconnectOptions {
            client: ClientOptions::default(),
            discovery,
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(10),
        }
    }
}

/// What happened, in order.
#[derive(Debug)]
pub enum ReconnectEvent {
    /// A new connection to `addr`; its snapshot follows, replacing the map.
    Connected { addr: SocketAddr },
    /// An event of the current connection.
    Event(ClientEvent),
    /// The connection to `addr` ended; the next attempt follows after `retry_in`.
    Disconnected {
        addr: SocketAddr,
        error: ClientError,
        retry_in: Duration,
    },
    /// Discovery or the connect failed; the next attempt follows after `retry_in`.
    ConnectFailed {
        addr: Option<SocketAddr>,
        error: ClientError,
        retry_in: Duration,
    },
}

/// A [`BlockingClient`] that reconnects. See the module docs.
pub struct ReconnectingClient {
    opts: ReconnectOptions,
    rng: Rng,
    backoff: Backoff,
    /// The current (or, between connections, the last) connection.
    conn: Option<BlockingClient>,
    addr: Option<SocketAddr>,
    live: bool,
    /// When the current connection last received bytes, and how many it had then.
    last_progress: Instant,
    last_bytes: u64,
    next_attempt: Instant,
    connects: u64,
}

impl ReconnectingClient {
    /// Connects on the first call to [`next_event_timeout`](Self::next_event_timeout).
    pub fn new(opts: ReconnectOptions) -> Self {
        ReconnectingClient {
            backoff: Backoff::new(opts.backoff_initial, opts.backoff_max),
            opts,
            rng: Rng::new(),
            conn: None,
            addr: None,
            live: false,
            last_progress: Instant::now(),
            last_bytes: 0,
            next_attempt: Instant::now(),
            connects: 0,
        }
    }

    /// The current connection's view (between connections, the last one's). A new connection
    /// starts empty and fills from its snapshot: wait for
    /// [`ClientEvent::SnapshotComplete`] before trusting it again.
    pub fn state(&self) -> Option<&SyncState> {
        self.conn.as_ref().map(BlockingClient::state)
    }

    /// The replica connected to now.
    pub fn replica(&self) -> Option<SocketAddr> {
        self.live.then_some(self.addr).flatten()
    }

    /// Connections established so far.
    pub fn connections(&self) -> u64 {
        self.connects
    }

    /// The next event, waiting at most `timeout`; [`ClientError::Timeout`] is the only error
    /// (everything else is reported as an event and followed by a reconnect).
    pub fn next_event_timeout(&mut self, timeout: Duration) -> Result<ReconnectEvent, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            let now = Instant::now();
            if !self.live {
                if now < self.next_attempt {
                    if now >= deadline {
                        return Err(ClientError::Timeout);
                    }
                    std::thread::sleep(self.next_attempt.min(deadline) - now);
                    continue;
                }
                return Ok(self.attempt());
            }
            let read_timeout = self.opts.client.read_timeout;
            let silent_for = now.duration_since(self.last_progress);
            if let Some(rt) = read_timeout {
                if silent_for >= rt {
                    return Ok(self.disconnect(ClientError::Timeout));
                }
            }
            if now >= deadline {
                return Err(ClientError::Timeout);
            }
            let mut wait = deadline - now;
            if let Some(rt) = read_timeout {
                wait = wait.min(rt - silent_for);
            }
            let Some(c) = self.conn.as_mut() else {
                self.live = false;
                continue;
            };
            let r = c.next_event_timeout(wait);
            let bytes = c.session().bytes_received();
            if bytes != self.last_bytes {
                self.last_bytes = bytes;
                self.last_progress = Instant::now();
            }
            match r {
                Ok(ev) => {
                    if matches!(ev, ClientEvent::SnapshotComplete { .. }) {
                        self.backoff.reset();
                    }
                    return Ok(ReconnectEvent::Event(ev));
                }
                Err(ClientError::Timeout) => continue,
                Err(e) => return Ok(self.disconnect(e)),
            }
        }
    }

    fn attempt(&mut self) -> ReconnectEvent {
        let candidates = match self.opts.discovery.discover() {
            Ok(c) if !c.is_empty() => c,
            Ok(_) => return self.connect_failed(None, ClientError::NoReplicas),
            Err(e) => return self.connect_failed(None, e),
        };
        let Some(addr) = pick_replica(&candidates, self.addr, &mut self.rng) else {
            return self.connect_failed(None, ClientError::NoReplicas);
        };
        match BlockingClient::connect(addr, self.opts.client.clone()) {
            Ok(c) => {
                tracing::debug!(%addr, "connected to a replica");
                self.conn = Some(c);
                self.addr = Some(addr);
                self.live = true;
                self.last_progress = Instant::now();
                self.last_bytes = 0;
                self.connects += 1;
                ReconnectEvent::Connected { addr }
            }
            Err(e) => self.connect_failed(Some(addr), e),
        }
    }

    fn connect_failed(&mut self, addr: Option<SocketAddr>, error: ClientError) -> ReconnectEvent {
        if addr.is_some() {
            self.addr = addr;
        }
        let retry_in = self.backoff.fail(&mut self.rng);
        tracing::debug!(?addr, %error, ?retry_in, "cannot connect to a replica");
        self.next_attempt = Instant::now() + retry_in;
        ReconnectEvent::ConnectFailed {
            addr,
            error,
            retry_in,
        }
    }

    fn disconnect(&mut self, error: ClientError) -> ReconnectEvent {
        self.live = false;
        if let Some(c) = self.conn.as_mut() {
            let _ = c.shutdown();
        }
        let moved = matches!(
            error,
            ClientError::Goodbye {
                reason: GoodbyeReason::Rebalancing | GoodbyeReason::Shutdown,
                ..
            }
        );
        let retry_in = if moved {
            self.backoff.moved(&mut self.rng)
        } else {
            self.backoff.fail(&mut self.rng)
        };
        let addr = self
            .addr
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        tracing::debug!(%addr, %error, ?retry_in, "connection to a replica ended");
        self.next_attempt = Instant::now() + retry_in;
        ReconnectEvent::Disconnected {
            addr,
            error,
            retry_in,
        }
    }

    /// Handles events until `done(self)` holds, for at most `timeout`; `on_event` sees each.
    pub fn run_until(
        &mut self,
        timeout: Duration,
        mut on_event: impl FnMut(&ReconnectEvent),
        mut done: impl FnMut(&ReconnectingClient) -> bool,
    ) -> Result<(), ClientError> {
        let deadline = Instant::now() + timeout;
        while !done(self) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ClientError::Timeout);
            }
            let ev = self.next_event_timeout(left)?;
            on_event(&ev);
        }
        Ok(())
    }

    /// Whether the current connection has a complete snapshot.
    pub fn is_in_sync(&self) -> bool {
        self.live && self.state().is_some_and(SyncState::is_in_sync)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter_in_the_upper_half() {
        let mut rng = Rng::seeded(7);
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut ceilings = Vec::new();
        for _ in 0..10 {
            let ceiling = b.ceiling();
            let d = b.fail(&mut rng);
            assert!(d >= ceiling / 2 && d <= ceiling, "{d:?} vs {ceiling:?}");
            ceilings.push(ceiling.as_millis());
        }
        assert_eq!(
            ceilings,
            [100, 200, 400, 800, 1600, 2000, 2000, 2000, 2000, 2000]
        );
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
        // A huge failure count saturates rather than overflowing.
        for _ in 0..100 {
            b.fail(&mut rng);
        }
        assert_eq!(b.ceiling(), Duration::from_secs(2));
        for _ in 0..100 {
            assert!(b.moved(&mut rng) <= Duration::from_millis(100));
        }
    }

    #[test]
    fn jitter_spreads_clients_that_fail_together() {
        let mut rng = Rng::seeded(1);
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        let delays: Vec<Duration> = (0..1000).map(|_| b.clone().fail(&mut rng)).collect();
        let distinct: std::collections::HashSet<_> = delays.iter().collect();
        assert!(distinct.len() > 900, "{}", distinct.len());
        let below_75 = delays
            .iter()
            .filter(|d| **d < Duration::from_millis(75))
            .count();
        assert!(
            (350..650).contains(&below_75),
            "{below_75} of 1000 in the lower half"
        );
    }

    #[test]
    fn replica_choice_avoids_the_last_and_covers_the_rest() {
        let mut rng = Rng::seeded(3);
        let a: Vec<SocketAddr> = (0..3)
            .map(|i| SocketAddr::from(([127, 0, 0, 1], 7000 + i)))
            .collect();
        let mut counts = [0usize; 3];
        for _ in 0..3000 {
            let p = pick_replica(&a, Some(a[0]), &mut rng).unwrap();
            assert_ne!(p, a[0]);
            counts[(p.port() - 7000) as usize] += 1;
        }
        assert_eq!(counts[0], 0);
        assert!(counts[1] > 1300 && counts[2] > 1300, "{counts:?}");
        // With nothing to avoid, every replica is chosen about equally.
        let mut counts = [0usize; 3];
        for _ in 0..3000 {
            counts[(pick_replica(&a, None, &mut rng).unwrap().port() - 7000) as usize] += 1;
        }
        assert!(counts.iter().all(|c| *c > 850), "{counts:?}");
        // A lone replica is chosen even if it is the one to avoid; none gives none.
        assert_eq!(pick_replica(&a[..1], Some(a[0]), &mut rng), Some(a[0]));
        assert_eq!(pick_replica(&[], None, &mut rng), None);
    }
}
