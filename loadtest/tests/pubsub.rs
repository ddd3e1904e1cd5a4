//! `typha-loadtest pubsub`: every target runs a small fan-out (50 subscribers, 512 B, 20/s, 3 s)
//! to completion and reports sensible figures. Redis and NATS come from Debian's packages:
//! `scripts/install-bench-deps.sh` installs them (`make test` runs it); without them these tests
//! fail and say so. The typha target needs the daemon binary, built here if missing.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_typha-loadtest");
const SUBSCRIBERS: u64 = 50;
const RATE: f64 = 20.0;
const DURATION: f64 = 3.0;
const WARMUP: f64 = 1.0;

fn require(server: &str) {
    let found = ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"]
        .iter()
        .chain(
            std::env::var("PATH")
                .unwrap_or_default()
                .split(':')
                .collect::<Vec<_>>()
                .iter(),
        )
        .any(|d| Path::new(d).join(server).is_file());
    assert!(
        found,
        "{server} is not installed: run scripts/install-bench-deps.sh (apt-get install -y {server})"
    );
}

/// The `typha` daemon binary of this build, built now (a no-op when it is up to date).
fn typha_bin() -> PathBuf {
    let bin_dir = Path::new(BIN).parent().expect("binary directory");
    let target_dir = bin_dir.parent().expect("target directory");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args([
        "build",
        "--quiet",
        "-p",
        "typha",
        "--bin",
        "typha",
        "--target-dir",
    ])
    .arg(target_dir)
    .current_dir(env!("CARGO_MANIFEST_DIR"));
    // Cargo gives this test process CARGO_MANIFEST_DIR and the like; passed on, they would
    // make build scripts that watch them (ring's) rebuild, and the next build rebuild again.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("CARGO_") && k != "CARGO_HOME" {
            cmd.env_remove(k);
        }
    }
    if bin_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("run cargo build");
    assert!(status.success(), "cargo build --bin typha failed");
    let p = bin_dir.join("typha");
    assert!(p.is_file(), "{} missing after the build", p.display());
    p
}

/// Runs `pubsub --json` and returns (exit code, the JSON object, stderr).
fn pubsub(target: &str, extra: &[&str]) -> (i32, Value, String) {
    let mut child = Command::new(BIN)
        .args(["pubsub", "--target", target, "--json"])
        .args(["--subscribers", &SUBSCRIBERS.to_string()])
        .args(["--msg-bytes", "512", "--rate", &RATE.to_string()])
        .args([
            "--duration",
            &DURATION.to_string(),
            "--warmup",
            &WARMUP.to_string(),
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn typha-loadtest");
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("typha-loadtest pubsub --target {target} did not stop");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let lines: Vec<&str> = stdout.lines().collect();
    let json = if lines.len() == 1 {
        serde_json::from_str(lines[0])
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {stdout}\nstderr: {stderr}"))
    } else {
        Value::Null
    };
    (out.status.code().unwrap_or(-1), json, stderr)
}

fn check(target: &str, version_word: &str, extra: &[&str]) {
    let (code, j, stderr) = pubsub(target, extra);
    assert_eq!(
        code, 0,
        "{target}: exit {code}; report {j}; stderr: {stderr}"
    );
    assert_eq!(j["passed"], true, "{j}");
    assert_eq!(j["target"], target);
    assert!(
        j["server_version"].as_str().unwrap().contains(version_word),
        "{j}"
    );
    assert_eq!(j["subscribers"], SUBSCRIBERS);
    assert_eq!(j["subscribed"], SUBSCRIBERS);
    assert_eq!(j["disconnected"], 0);
    assert_eq!(j["msg_bytes"], 512);
    // The window is duration - warmup = 2 s at 20/s: about 40 messages.
    let window = j["window_secs"].as_f64().unwrap();
    assert!((1.8..2.5).contains(&window), "{j}");
    let published = j["published"].as_u64().unwrap();
    assert!((30..=50).contains(&published), "published {published}: {j}");
    let expected = j["expected_deliveries"].as_u64().unwrap();
    assert_eq!(expected, published * SUBSCRIBERS);
    let delivered = j["delivered"].as_u64().unwrap();
    let in_flight = j["in_flight"].as_u64().unwrap();
    assert!(delivered <= expected);
    assert!(
        delivered as f64 >= 0.95 * (expected - in_flight) as f64,
        "{j}"
    );
    // On an idle loopback nothing should still be in flight after the drain.
    assert!(delivered as f64 >= 0.9 * expected as f64, "{j}");
    // One latency sample per delivered window message.
    let lat = &j["latency_us"];
    assert_eq!(lat["count"].as_u64().unwrap(), delivered);
    let (p50, p99, max) = (
        lat["p50"].as_u64().unwrap(),
        lat["p99"].as_u64().unwrap(),
        lat["max"].as_u64().unwrap(),
    );
    assert!(p50 > 0 && p50 <= p99 && p99 <= max, "{lat}");
    assert!(p99 < 2_000_000, "p99 {p99} us on an idle loopback: {j}");
    // The deliveries that fell in the window are about the window's share of all of them.
    let arrivals = j["window_arrivals"].as_u64().unwrap();
    assert!(arrivals as f64 >= 0.8 * expected as f64, "{j}");
    assert!(j["server_rss_start_kib"].as_u64().unwrap() > 0);
    assert!(j["server_rss_end_kib"].as_u64().unwrap() > 0);
    let cpu = j["server_cpu_secs"].as_f64().unwrap();
    assert!(cpu >= 0.0);
    // CPU time is counted in 10 ms ticks: a small run may show none, then the ratios are null.
    if cpu > 0.0 {
        let per = j["cpu_us_per_delivery"].as_f64().unwrap();
        let rate = j["deliveries_per_cpu_sec"].as_f64().unwrap();
        assert!((per * rate / 1e6 - 1.0).abs() < 0.01, "{j}");
    } else {
        assert!(j["cpu_us_per_delivery"].is_null());
    }
    assert!(j["harness_cpu_secs"].as_f64().unwrap() >= 0.0);
    for k in ["duration_secs", "rate"] {
        assert!(j[k].as_f64().is_some(), "missing {k}: {j}");
    }
}

#[test]
fn redis() {
    require("redis-server");
    check("redis", "redis-server", &[]);
}

#[test]
fn nats() {
    require("nats-server");
    check("nats", "nats-server", &[]);
}

#[test]
fn bare_writer() {
    check("bare", "bare-writer", &[]);
}

#[test]
fn typha() {
    let bin = typha_bin();
    check("typha", "typha", &["--server-bin", bin.to_str().unwrap()]);
}

/// The same daemon and payload stream, subscribers on Felix's protocol: the stamps and
/// numbers come out of the gob values, so a decode fault shows as lost or unstamped messages.
#[test]
fn typha_felix() {
    let bin = typha_bin();
    check(
        "typha-felix",
        "typha",
        &["--server-bin", bin.to_str().unwrap()],
    );
}

#[test]
fn cannot_run_is_exit_2_with_the_reason() {
    let (code, j, stderr) = pubsub("redis", &["--server-bin", "/nonexistent/redis-server"]);
    assert_eq!(code, 2, "{j} {stderr}");
    assert!(stderr.contains("/nonexistent/redis-server"), "{stderr}");
    let (code, _, stderr) = pubsub("nats", &["--msg-bytes", "8"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--msg-bytes"), "{stderr}");
}

#[test]
fn a_server_that_exits_at_once_is_reported() {
    let (code, _, stderr) = pubsub("typha", &["--server-bin", "/bin/false"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("exited"), "{stderr}");
}
