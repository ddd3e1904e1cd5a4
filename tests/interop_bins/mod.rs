//! Finding the Go interop suite (`interop/`, built by `scripts/build-interop.sh` into
//! `~/.cache/typha-rs/interop/<hash>/`; `make test` builds it through `make interop`).
//!
//! A test that needs it skips with a printed "skipped: ..." when it is not built, except under
//! CI (`CI` set to anything but `false`/`0`), where a missing build is a failure: CI runs
//! `make test`, which must have built it.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

/// The directory holding `gobclient`, `decodecheck` and `vectors`, or `None` (after printing
/// why) when the suite is not built and this is not CI. `TYPHA_INTEROP_BIN` overrides the
/// lookup.
pub fn interop_bins(test: &str) -> Option<PathBuf> {
    let dir = match std::env::var_os("TYPHA_INTEROP_BIN") {
        Some(d) => PathBuf::from(d),
        None => {
            let root = env!("CARGO_MANIFEST_DIR");
            let out = Command::new("bash")
                .arg(format!("{root}/scripts/build-interop.sh"))
                .arg("--print-dir")
                .output();
            match out {
                Ok(o) if o.status.success() => {
                    PathBuf::from(String::from_utf8_lossy(&o.stdout).trim().to_string())
                }
                Ok(o) => return missing(test, &String::from_utf8_lossy(&o.stderr)),
                Err(e) => return missing(test, &e.to_string()),
            }
        }
    };
    let built = ["gobclient", "decodecheck", "vectors"]
        .iter()
        .all(|b| dir.join(b).is_file());
    if built {
        Some(dir)
    } else {
        missing(test, &format!("no interop binaries in {}", dir.display()))
    }
}

fn missing(test: &str, why: &str) -> Option<PathBuf> {
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    assert!(
        !ci,
        "{test}: the Go interop suite is not built ({why}); `make test` builds it with `make interop`"
    );
    println!("skipped: {test}: the Go interop suite is not built ({why}); run `make interop`");
    None
}
