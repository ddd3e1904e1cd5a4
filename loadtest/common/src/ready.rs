//! The turn over ready sockets that the client driver and the pub/sub subscribers both take:
//! each socket with something to do is served once, round-robin, for a bounded time, so that
//! one big read (a snapshot) does not starve the others and the caller's own work (connects,
//! counters) stays on schedule.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// A tool's sockets, indexed, with a queue of those that have something to do.
pub trait ReadySockets {
    /// The queue of sockets with something to do.
    fn ready_queue(&mut self) -> &mut VecDeque<usize>;
    /// Serves socket `i`, just taken off the queue (a bounded amount); true if it has more to
    /// do now.
    fn serve(&mut self, i: usize, buf: &mut [u8]) -> bool;
    /// Queues socket `i` again, at the end.
    fn requeue(&mut self, i: usize);
}

/// Serves the sockets queued when the turn begins, each once, until the queue is through or
/// `max_turn` has passed; a socket with more to do goes to the back of the queue.
pub fn serve_turn(sockets: &mut impl ReadySockets, buf: &mut [u8], max_turn: Duration) {
    let turn = Instant::now();
    for _ in 0..sockets.ready_queue().len() {
        if turn.elapsed() >= max_turn {
            break;
        }
        let Some(i) = sockets.ready_queue().pop_front() else {
            break;
        };
        if sockets.serve(i, buf) {
            sockets.requeue(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Socket `i` needs `work[i]` turns.
    struct Fake {
        ready: VecDeque<usize>,
        work: Vec<usize>,
        served: Vec<usize>,
    }

    impl ReadySockets for Fake {
        fn ready_queue(&mut self) -> &mut VecDeque<usize> {
            &mut self.ready
        }
        fn serve(&mut self, i: usize, _buf: &mut [u8]) -> bool {
            self.served.push(i);
            self.work[i] -= 1;
            self.work[i] > 0
        }
        fn requeue(&mut self, i: usize) {
            self.ready.push_back(i);
        }
    }

    #[test]
    fn each_queued_socket_is_served_once_per_turn_and_the_busy_go_to_the_back() {
        let mut f = Fake {
            ready: VecDeque::from([0, 1, 2]),
            work: vec![3, 1, 2],
            served: Vec::new(),
        };
        serve_turn(&mut f, &mut [], Duration::from_secs(60));
        assert_eq!(f.served, [0, 1, 2]);
        assert_eq!(f.ready, [0, 2]);
        serve_turn(&mut f, &mut [], Duration::from_secs(60));
        assert_eq!(f.ready, [0]);
        // A turn that is already over serves nobody.
        serve_turn(&mut f, &mut [], Duration::ZERO);
        assert_eq!(f.ready, [0]);
        assert_eq!(f.served.len(), 5);
    }
}
