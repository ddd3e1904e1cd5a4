//! Test-only fault points. With the `fault-injection` cargo feature (off by default, enabled
//! only for the tests that need it), a named point fires once for each time it was armed:
//! by [`arm`] in the test process, or by `TYPHA_TEST_FAULTS=name,name,...` in a daemon's
//! environment (read once, at the first point reached). Without the feature every point is
//! the constant `false` and compiles away, so release builds carry no hook.
//!
//! Points: `reactor-panic`, `datastore-thread-panic`, `http-panic`, `signal-thread-panic`
//! (panics outside any supervised scope: the process must end), `datastore-thread-finish`
//! (the datastore thread returns early: the process must end too), `driver-panic`,
//! `driver-finish`, `watch-<kind>-panic`, `watch-<kind>-finish` and `snapshot-panic`
//! (supervised: the part must come back).

/// Whether the fault point `name` fires now.
#[inline]
pub fn fires(name: &str) -> bool {
    #[cfg(feature = "fault-injection")]
    {
        imp::fires(name)
    }
    #[cfg(not(feature = "fault-injection"))]
    {
        let _ = name;
        false
    }
}

/// Panics at a fault point that is armed.
#[macro_export]
#[doc(hidden)]
macro_rules! fault_point {
    ($name:expr) => {
        if $crate::fault::fires($name) {
            panic!("injected fault {}", $name);
        }
    };
}

/// Arms `name` to fire once more. Only with the `fault-injection` feature.
#[cfg(feature = "fault-injection")]
pub fn arm(name: &str) {
    imp::arm(name)
}

#[cfg(feature = "fault-injection")]
mod imp {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Mutex, OnceLock};

    /// Lets the hot path skip the lock while nothing is armed.
    static ANY: AtomicBool = AtomicBool::new(false);

    fn armed() -> &'static Mutex<HashMap<String, u32>> {
        static ARMED: OnceLock<Mutex<HashMap<String, u32>>> = OnceLock::new();
        ARMED.get_or_init(|| {
            let mut m = HashMap::new();
            for name in std::env::var("TYPHA_TEST_FAULTS")
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
            {
                *m.entry(name.to_owned()).or_insert(0) += 1;
            }
            ANY.store(!m.is_empty(), Ordering::Relaxed);
            Mutex::new(m)
        })
    }

    pub fn arm(name: &str) {
        let mut m = armed().lock().unwrap_or_else(|p| p.into_inner());
        *m.entry(name.to_owned()).or_insert(0) += 1;
        ANY.store(true, Ordering::Relaxed);
    }

    pub fn fires(name: &str) -> bool {
        let map = armed();
        if !ANY.load(Ordering::Relaxed) {
            return false;
        }
        let mut m = map.lock().unwrap_or_else(|p| p.into_inner());
        match m.get_mut(name) {
            Some(n) if *n > 0 => {
                *n -= 1;
                if *n == 0 {
                    m.remove(name);
                }
                ANY.store(!m.is_empty(), Ordering::Relaxed);
                true
            }
            _ => false,
        }
    }
}
