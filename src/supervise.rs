//! How the daemon survives, or ends, when one of its parts fails.
//!
//! Two kinds of failure, two answers:
//! * A part that can be rebuilt from what the daemon still holds (a per-kind watch, the
//!   datastore driver, the snapshot encoder) runs inside a *recoverable scope*: a panic there
//!   unwinds to its supervisor, which counts it (`typha_component_restarts_total`), marks the
//!   part down on the status board (readiness, then liveness, fail while it stays down) and
//!   restarts it after a backoff.
//! * Anywhere else a panic, or a thread ending while the daemon is not shutting down, ends the
//!   process with a non-zero status ([`EXIT_THREAD_DIED`]), so Kubernetes restarts a replica
//!   rather than keeping a half-dead one. The panic hook ([`install_panic_hook`]) writes its
//!   last word to stderr with raw `write(2)` calls that wait for at most a moment, so even a
//!   broken or stuck log pipe cannot keep the process from exiting.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// The exit status of a daemon whose thread died.
pub const EXIT_THREAD_DIED: i32 = 70;

thread_local! {
    static RECOVERABLE_DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Whether the current thread is inside a recoverable scope (a supervised part).
pub fn in_recoverable_scope() -> bool {
    RECOVERABLE_DEPTH.with(|d| d.get() > 0)
}

struct ScopeGuard;

impl ScopeGuard {
    fn enter() -> ScopeGuard {
        RECOVERABLE_DEPTH.with(|d| d.set(d.get() + 1));
        ScopeGuard
    }
}

impl Drop for ScopeGuard {
    fn drop(&mut self) {
        RECOVERABLE_DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
    }
}

/// Runs `f` in a recoverable scope, catching its panic: the supervisor decides what next.
pub fn catch_recoverable<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    let _scope = ScopeGuard::enter();
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| panic_message(&*p))
}

/// A future polled in a recoverable scope: a panic in it unwinds to the task's `JoinHandle`
/// (tokio catches it) instead of ending the process.
pub struct Recoverable<F>(Pin<Box<F>>);

impl<F: Future> Recoverable<F> {
    pub fn new(f: F) -> Self {
        Recoverable(Box::pin(f))
    }
}

impl<F: Future> Future for Recoverable<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let _scope = ScopeGuard::enter();
        self.0.as_mut().poll(cx)
    }
}

/// The text of a panic payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_owned()
    }
}

/// Exponential backoff between restarts of one part; reset once the part has recovered.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        Backoff {
            first,
            max,
            next: first,
        }
    }

    /// The wait before the next restart; each call doubles the following one, up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

/// Writes `bytes` to stderr with `write(2)`, giving up on any error or when stderr stays
/// unwritable for 100 ms: the path of last resort, for a process about to exit.
pub fn write_stderr_best_effort(bytes: &[u8]) {
    let mut rest = bytes;
    while !rest.is_empty() {
        let mut pfd = libc::pollfd {
            fd: libc::STDERR_FILENO,
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one valid pollfd, and a buffer pointer/length from a live slice.
        let ready = unsafe { libc::poll(&mut pfd, 1, 100) };
        if ready <= 0 || pfd.revents & libc::POLLOUT == 0 {
            return;
        }
        let n = unsafe { libc::write(libc::STDERR_FILENO, rest.as_ptr().cast(), rest.len()) };
        if n <= 0 {
            return;
        }
        rest = &rest[n as usize..];
    }
}

/// Installs the process-wide panic hook (the daemon binary does, once, before anything else).
/// A panic in a recoverable scope is left to unwind to its supervisor, which logs it; any
/// other panic writes one line naming the thread, the place and the message, then ends the
/// process at once with [`EXIT_THREAD_DIED`].
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        if in_recoverable_scope() {
            return;
        }
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("unnamed");
        let place = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let msg = panic_message(info.payload());
        let mut line = String::new();
        crate::logging::escape_into(
            &mut line,
            &format!("typha: fatal: thread '{name}' panicked at {place}: {msg}; exiting"),
            false,
        );
        line.push('\n');
        fatal_exit(&line);
    }));
}

/// Writes `last_word` on the best-effort path and ends the process with
/// [`EXIT_THREAD_DIED`], without running destructors or waiting for any other thread.
pub fn fatal_exit(last_word: &str) -> ! {
    write_stderr_best_effort(last_word.as_bytes());
    // SAFETY: `_exit` ends the process immediately; nothing here relies on cleanup.
    unsafe { libc::_exit(EXIT_THREAD_DIED) }
}

/// Why a watched thread ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThreadExit {
    pub name: &'static str,
    pub panicked: bool,
}

/// Every long-lived thread of a daemon holds an [`ExitGuard`] from here; the owner of the
/// receiving end learns of each thread's end, whatever the cause.
#[derive(Debug, Clone)]
pub struct ExitWatch {
    tx: crossbeam_channel::Sender<ThreadExit>,
}

impl ExitWatch {
    pub fn new() -> (ExitWatch, crossbeam_channel::Receiver<ThreadExit>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        (ExitWatch { tx }, rx)
    }

    /// A guard to move into the thread named `name`; it reports when dropped.
    pub fn guard(&self, name: &'static str) -> ExitGuard {
        ExitGuard {
            name,
            tx: self.tx.clone(),
        }
    }
}

pub struct ExitGuard {
    name: &'static str,
    tx: crossbeam_channel::Sender<ThreadExit>,
}

impl Drop for ExitGuard {
    fn drop(&mut self) {
        let _ = self.tx.send(ThreadExit {
            name: self.name,
            panicked: std::thread::panicking(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recoverable_panic_is_caught_with_its_message() {
        assert!(!in_recoverable_scope());
        let r: Result<(), String> = catch_recoverable(|| {
            assert!(in_recoverable_scope());
            panic!("boom {}", 7)
        });
        assert_eq!(r, Err("boom 7".to_owned()));
        assert!(!in_recoverable_scope(), "the scope ends with the call");
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let got: Vec<u64> = (0..4).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(got, vec![100, 200, 350, 350]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }

    #[test]
    fn exit_guards_report_normal_ends_and_panics() {
        let (w, rx) = ExitWatch::new();
        let g = w.guard("quiet");
        std::thread::spawn(move || drop(g)).join().unwrap();
        assert_eq!(
            rx.recv().unwrap(),
            ThreadExit {
                name: "quiet",
                panicked: false
            }
        );
        let g = w.guard("loud");
        let _ = std::thread::spawn(move || {
            let _g = g;
            panic!("test panic");
        })
        .join();
        assert_eq!(
            rx.recv().unwrap(),
            ThreadExit {
                name: "loud",
                panicked: true
            }
        );
    }
}
