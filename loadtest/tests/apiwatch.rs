//! `typha-loadtest apiwatch` against a real kube-apiserver (the current test release) on loopback
//! (`scripts/test-apiserver.sh`).

use serde_json::Value;
use std::process::Command;
use typha::testing::ApiServer;

const BIN: &str = env!("CARGO_BIN_EXE_typha-loadtest");

fn apiwatch(args: &[&str]) -> (Option<i32>, Value, String) {
    let out = Command::new(BIN)
        .arg("apiwatch")
        .args(args)
        .output()
        .expect("spawn typha-loadtest");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let v = serde_json::from_str(stdout.trim()).unwrap_or(Value::Null);
    (
        out.status.code(),
        v,
        format!("stdout: {stdout}\nstderr: {stderr}"),
    )
}

#[test]
fn direct_watchers_each_get_every_write_on_their_own_connection() {
    let api = ApiServer::start("apiwatch").unwrap_or_else(|e| panic!("{e}"));
    let kc = api.kubeconfig();
    let kc = kc.to_str().unwrap();
    let pid = api.env["APISERVER_PID"].clone();
    let (code, r, out) = apiwatch(&[
        "--kubeconfig",
        kc,
        "--watchers",
        "20",
        "--write-rate",
        "5",
        "--duration",
        "3",
        "--apiserver-pid",
        &pid,
        "--json",
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(r["passed"], true, "{out}");
    assert_eq!(r["watchers"], 20);
    assert_eq!(r["watchers_open"], 20, "{r}");
    // Each watcher on its own connection (plus the writer's).
    let conns = r["connections"].as_u64().expect("connections counted");
    assert!((20..=25).contains(&conns), "{conns} connections: {r}");
    let writes = r["writes"].as_u64().unwrap();
    // 5/s for 3 s: the interval's first tick is immediate, the deadline may cut the last one.
    assert!((13..=16).contains(&writes), "{writes} writes: {r}");
    assert_eq!(r["expected_deliveries"].as_u64(), Some(20 * writes));
    assert_eq!(r["delivered"].as_u64(), Some(20 * writes), "{r}");
    assert_eq!(r["latency_us"]["count"].as_u64(), Some(20 * writes));
    let p99 = r["latency_us"]["p99"].as_u64().unwrap();
    let max = r["latency_us"]["max"].as_u64().unwrap();
    assert!(p99 > 0 && p99 <= max && max < 10_000_000, "{r}");
    assert!(r["window_secs"].as_f64().unwrap() >= 2.9, "{r}");
    let cpu = r["apiserver_cpu_secs"].as_f64().expect("API server CPU");
    assert!(cpu > 0.0, "{r}");
    assert!(r["cpu_us_per_delivery"].as_f64().unwrap() > 0.0);
    assert!(
        r["apiserver_rss_start_kib"].as_u64().unwrap() > 10_000,
        "{r}"
    );
    assert!(r["rss_per_watcher_kib"].is_number(), "{r}");

    // The writer alone (the configuration with a typha daemon as the only watcher).
    let (code, r, out) = apiwatch(&[
        "--kubeconfig",
        kc,
        "--watchers",
        "0",
        "--write-rate",
        "10",
        "--duration",
        "1",
        "--apiserver-pid",
        &pid,
        "--json",
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(r["writes"].as_u64().unwrap() >= 8, "{r}");
    assert_eq!(r["delivered"], 0);
    assert!(r["cpu_us_per_delivery"].is_null());
    assert!(r["apiserver_cpu_secs"].as_f64().unwrap() > 0.0);
}

#[test]
fn refuses_a_server_not_on_loopback() {
    let dir = std::env::temp_dir().join(format!("typha-apiwatch-refuse-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        "apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters:\n- name: k\n  cluster:\n    \
         server: https://10.1.2.3:6443\ncontexts:\n- name: c\n  context:\n    cluster: k\n    \
         user: u\nusers:\n- name: u\n  user:\n    token: t\n",
    )
    .unwrap();
    let (code, v, out) = apiwatch(&["--kubeconfig", path.to_str().unwrap(), "--json"]);
    assert_eq!(code, Some(2), "{out}");
    assert!(v.is_null());
    assert!(out.contains("not on loopback"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}
