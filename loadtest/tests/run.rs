//! `typha-loadtest run` as a binary against a typha-rs daemon (sim datastore, in this test
//! process): a run with every scenario flag passes and verifies every client; a daemon
//! `/digest` that lies makes it fail with exit status 1.

use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Output};
use std::time::Duration;
use typha::daemon::Daemon;
use typha::http::http_get;

const BIN: &str = env!("CARGO_BIN_EXE_typha-loadtest");

/// A small daemon on ephemeral loopback ports, with sim churn.
fn daemon() -> Daemon {
    let flags = [
        "--sim-nodes".to_owned(),
        "10".to_owned(),
        "--sim-endpoints".to_owned(),
        "300".to_owned(),
        "--sim-policies".to_owned(),
        "20".to_owned(),
        "--sim-churn-rate".to_owned(),
        "300".to_owned(),
        "--log-severity-screen".to_owned(),
        "none".to_owned(),
    ];
    typha::testing::start_daemon_with_flags(&flags, Duration::from_secs(20)).unwrap()
}

fn run(args: &[String]) -> (Output, Value) {
    let out = Command::new(BIN).arg("run").args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let j: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON object ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out, j)
}

fn base_args(d: &Daemon, metrics: SocketAddr, secs: &str) -> Vec<String> {
    [
        "--addr",
        &d.protocol_addr.to_string(),
        "--metrics-addr",
        &metrics.to_string(),
        "--target-pid",
        &std::process::id().to_string(),
        "--threads",
        "2",
        "--duration",
        secs,
        "--json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[test]
fn every_scenario_flag_at_once_passes_and_verifies_every_client() {
    let d = daemon();
    let mut args = base_args(&d, d.metrics_addr.unwrap(), "5");
    for a in [
        "--clients",
        "200",
        "--full-maps",
        "4",
        // Full-map clients connect first, so they hold every seq the others start from.
        "--ramp-per-sec",
        "1000",
        "--slow-fraction",
        "0.05",
        "--slow-bytes-per-sec",
        "200000",
        "--stalled-fraction",
        "0.05",
        "--kill-rate",
        "10",
        "--restart-delay",
        "0.3",
    ] {
        args.push(a.into());
    }
    let (out, j) = run(&args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{j:#}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(j["passed"], true);
    // Nothing on stderr but what the tool itself says (no progress lines with --json).
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("in-sync"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let roles = &j["scenario"]["roles"];
    let stalled = roles["stalled"].as_u64().unwrap();
    assert!(
        stalled > 0 && roles["slow"].as_u64().unwrap() > 0,
        "{roles}"
    );
    assert_eq!(roles["full-map"], 4);
    let flags = j["scenario"]["flags"].as_array().unwrap();
    assert_eq!(flags.len(), 4, "{flags:?}");
    let kills = j["scenario"]["kills"].as_u64().unwrap();
    assert!(kills >= 20, "{}", j["scenario"]);
    assert!(j["scenario"]["restarts"].as_u64().unwrap() > 0);
    let c = &j["clients"];
    assert_eq!(c["requested"], 200);
    assert_eq!(c["connected"], 200);
    // Every client but the stalled ones reached in-sync, and every one held in sync at the end
    // was verified against the daemon's digest.
    assert_eq!(c["in_sync"].as_u64().unwrap(), 200 - stalled);
    let v = &j["verification"];
    assert_eq!(v["mismatches"].as_array().unwrap().len(), 0, "{v}");
    assert_eq!(v["verified_at_end"], c["in_sync_at_end"], "{v}");
    assert_eq!(v["full_map_verified"], 4);
    // Killed sessions were verified too.
    assert!(
        v["digest_only_verified"].as_u64().unwrap() > 196 - stalled,
        "{v}"
    );
    assert!(v["frames_compared"].as_u64().unwrap() > 0);
    assert!(j["lag"]["count"].as_u64().unwrap() > 0);
    assert!(j["daemon_drops_by_reason"].is_object(), "{j:#}");
    assert!(j["datastore_to_client_latency"].is_object());
    // The old fields are all still there.
    for f in [
        "run",
        "clients",
        "lag",
        "steady_state_lag",
        "time_to_in_sync",
        "received",
        "drops",
        "server",
    ] {
        assert!(!j[f].is_null(), "{f}");
    }
    drop(d);
}

/// Serves `/metrics` from the real daemon and `/digest` with the digest's last hex digit
/// changed.
fn lying_proxy(real: SocketAddr) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut req = Vec::new();
            let mut b = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut b) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&b[..n]),
                }
            }
            let req = String::from_utf8_lossy(&req);
            let path = req.split(' ').nth(1).unwrap_or("/").to_owned();
            let (code, mut body) = http_get(real, &path, Duration::from_secs(5)).unwrap();
            if path.starts_with("/digest") && code == 200 {
                let at = body.find("\"digest\":\"").unwrap() + "\"digest\":\"".len() + 31;
                let c = if &body[at..at + 1] == "0" { "1" } else { "0" };
                body.replace_range(at..at + 1, c);
            }
            let _ = write!(
                s,
                "HTTP/1.1 {code} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

#[test]
fn a_daemon_digest_that_disagrees_fails_the_run() {
    let d = daemon();
    let proxy = lying_proxy(d.metrics_addr.unwrap());
    let mut args = base_args(&d, proxy, "2");
    for a in ["--clients", "20", "--full-maps", "2", "--ramp-per-sec", "0"] {
        args.push(a.into());
    }
    let (out, j) = run(&args);
    assert_eq!(out.status.code(), Some(1), "{j:#}");
    assert_eq!(j["passed"], false);
    let m = j["verification"]["mismatches"].as_array().unwrap();
    assert!(!m.is_empty());
    // Each message names the client and the seq.
    let first = m[0].as_str().unwrap();
    assert!(
        first.contains("client ") && first.contains("seq "),
        "{first}"
    );
    drop(d);
}

/// A daemon that accepts connections and never answers (a listener nobody accepts on: the
/// kernel completes the handshakes): no client can reach in-sync, and the run must say so and
/// fail instead of printing its figures as a pass.
#[test]
fn clients_that_never_reach_in_sync_fail_the_run() {
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let out = Command::new(BIN)
        .args([
            "run",
            "--addr",
            &addr,
            "--clients",
            "5",
            "--full-maps",
            "1",
            "--ramp-per-sec",
            "0",
            "--duration",
            "1",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("NOT IN SYNC: 5 of 5 clients did not reach in-sync within 1.0 s"),
        "{stdout}"
    );
    assert!(
        stdout.contains("result: FAIL (5 of 5 clients did not reach in-sync within the 1 s run)"),
        "{stdout}"
    );
    drop(silent);
}

/// Felix-protocol clients (`--protocol typha`) against the real daemon on its shared port: all
/// reach in-sync, and every full-map client's map matches the daemon's `/digest` at some seq.
#[test]
fn felix_protocol_clients_sync_and_verify_against_the_daemon() {
    let d = daemon();
    let mut args = base_args(&d, d.metrics_addr.unwrap(), "12");
    for a in [
        "--protocol",
        "typha",
        "--clients",
        "40",
        "--full-maps",
        "3",
        "--ramp-per-sec",
        "500",
    ] {
        args.push(a.into());
    }
    let (out, j) = run(&args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{j:#}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(j["run"]["protocol"], "typha");
    assert_eq!(j["clients"]["in_sync"], 40);
    assert_eq!(j["verification"]["full_map_verified"], 3, "{j:#}");
    assert!(
        j["received"]["update_frames"].as_u64().unwrap() > 0,
        "{j:#}"
    );
    assert_eq!(j["hard_failures"], 0);
    drop(d);
}
