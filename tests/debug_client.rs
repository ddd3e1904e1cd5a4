//! `typha client` (the debugging client) against the real `typha` binary on the sim datastore.

use serde_json::Value;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::Output;
use std::time::Duration;
use typha::http::http_get;

mod support;
use support::{free_port, run_typha_client, DaemonProcess};

type Running = DaemonProcess;

fn start_daemon() -> Running {
    let d = DaemonProcess::start(
        0,
        &[
            "--sim-nodes",
            "10",
            "--sim-endpoints",
            "300",
            "--sim-policies",
            "20",
            "--sim-churn-rate",
            "200",
        ],
        &[],
    );
    d.wait_ready(Duration::from_secs(30));
    d
}

fn stdout_lines(out: &Output) -> Vec<String> {
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

const T: Duration = Duration::from_secs(60);

#[test]
fn digest_json_matches_the_daemon() {
    let d = start_daemon();
    let addr = d.protocol.to_string();
    let http = d.metrics.to_string();
    let out = run_typha_client(
        &["--addr", &addr, "--http-addr", &http, "--digest", "--json"],
        T,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    let events: Vec<Value> = stdout_lines(&out)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().expect("every line has an event"))
        .collect();
    assert_eq!(kinds[0], "connected");
    assert_eq!(events[0]["addr"], addr.as_str());
    assert_eq!(events[0]["syncer"], "felix");
    assert_eq!(*kinds.last().unwrap(), "digest", "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| **k == "digest").count(), 1);
    assert!(kinds.contains(&"snapshot-complete"));

    // Replaying the update lines gives the map the digest line describes.
    let mut map: HashMap<String, Value> = HashMap::new();
    let mut last_seq = 0;
    for e in events.iter().filter(|e| e["event"] == "update") {
        let key = e["key"].as_str().unwrap().to_owned();
        assert!(key.starts_with("/calico/"), "{e}");
        assert!(e["revision"].is_string(), "{e}");
        let seq = e["seq"].as_u64().unwrap();
        assert!(seq >= last_seq, "seq went backwards: {e}");
        last_seq = seq;
        match &e["value"] {
            Value::Null => {
                map.remove(&key);
            }
            v => {
                map.insert(key, v.clone());
            }
        }
    }
    assert!(!map.is_empty());
    let dl = events.last().unwrap();
    assert_eq!(dl["match"], true, "{dl}");
    assert_eq!(dl["keys"].as_u64().unwrap(), map.len() as u64, "{dl}");
    assert!(dl["seq"].as_u64().unwrap() >= last_seq, "{dl}");
    assert_eq!(dl["digest"], dl["daemon_digest"]);

    // And the daemon, asked independently, says the same for that sequence number.
    let seq = dl["seq"].as_u64().unwrap();
    let (code, body) = http_get(d.metrics, &format!("/digest?seq={seq}"), T).unwrap();
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["syncers"]["felix"]["digest"], dl["digest"]);
    assert_eq!(v["syncers"]["felix"]["keys"], dl["keys"]);
}

#[test]
fn human_mode_prints_connection_snapshot_status_and_updates() {
    let d = start_daemon();
    let addr = d.protocol.to_string();
    // Several addresses: a dead one and the daemon; whichever is picked first, it ends up on
    // the daemon.
    let dead = format!("127.0.0.1:{}", free_port());
    let out = run_typha_client(&["--addr", &dead, "--addr", &addr, "--duration", "1.5"], T);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    let lines = stdout_lines(&out);
    assert!(
        lines[0].starts_with(&format!("connected to {addr}: server ")),
        "{}",
        lines[0]
    );
    let snap = lines
        .iter()
        .find(|l| l.starts_with("snapshot complete: seq "))
        .expect("a snapshot line");
    // In sync either in the snapshot or by a later status line.
    assert!(
        snap.ends_with("status in-sync") || lines.iter().any(|l| l == "status: in-sync"),
        "{lines:#?}"
    );
    assert!(lines
        .iter()
        .any(|l| l.starts_with("snapshot seq ") && l.contains(": set /calico/")));
    // 200 changes a second for 1.5 s: some arrive after the snapshot.
    assert!(
        lines.iter().any(|l| l.starts_with("update seq ")),
        "no update lines in {} lines",
        lines.len()
    );

    // --quiet-updates: one line per frame instead of per key.
    let out = run_typha_client(&["--addr", &addr, "--duration", "1", "--quiet-updates"], T);
    assert_eq!(out.status.code(), Some(0));
    let lines = stdout_lines(&out);
    assert!(!lines.iter().any(|l| l.starts_with("snapshot seq ")));
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("updates ") && l.contains(" keys, lag ")),
        "{lines:#?}"
    );

    // --until-in-sync stops by itself, with no digest line.
    let out = run_typha_client(&["--addr", &addr, "--until-in-sync"], T);
    assert_eq!(out.status.code(), Some(0));
    assert!(!stdout_lines(&out).iter().any(|l| l.starts_with("digest")));
}

#[test]
fn bgp_syncer_digest_matches_too() {
    let d = start_daemon();
    let out = run_typha_client(
        &[
            "--addr",
            &d.protocol.to_string(),
            "--http-addr",
            &d.metrics.to_string(),
            "--syncer",
            "bgp",
            "--compression",
            "none",
            "--digest",
            "--quiet-updates",
        ],
        T,
    );
    let lines = stdout_lines(&out);
    assert_eq!(out.status.code(), Some(0), "{lines:#?}");
    assert!(
        lines[0].contains("syncer bgp, compression none"),
        "{}",
        lines[0]
    );
    assert!(lines.last().unwrap().ends_with(": match"), "{lines:#?}");
}

#[test]
fn wrong_address_exits_2_with_a_clear_message() {
    let dead = format!("127.0.0.1:{}", free_port());
    let out = run_typha_client(&["--addr", &dead, "--digest"], T);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot connect to {dead}")) && err.contains("refused"),
        "{err}"
    );
    assert!(out.stdout.is_empty());

    let out = run_typha_client(&["--addr", "no-such-host.invalid:5473", "--json"], T);
    assert_eq!(out.status.code(), Some(2));
    let line: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["event"], "error");
    assert!(line["error"]
        .as_str()
        .unwrap()
        .contains("no-such-host.invalid"));

    // Usage errors are 2 as well; --help is not an error.
    assert_eq!(
        run_typha_client(&["--syncer", "etcd"], T).status.code(),
        Some(2)
    );
    assert_eq!(run_typha_client::<&str>(&[], T).status.code(), Some(2));
    let help = run_typha_client(&["--help"], T);
    assert_eq!(help.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&help.stdout).contains("Usage: typha client"));
}

/// An HTTP server answering every request with `body`, for the daemon's /digest.
fn fake_digest_server(body: String) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let mut buf = [0u8; 4096];
            let mut head = Vec::new();
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

#[test]
fn a_different_daemon_digest_exits_1() {
    let d = start_daemon();
    let http = fake_digest_server(
        r#"{"seq":1,"syncers":{"felix":{"keys":1,"digest":"00000000000000000000000000000001"}}}"#
            .into(),
    );
    let out = run_typha_client(
        &[
            "--addr",
            &d.protocol.to_string(),
            "--http-addr",
            &http.to_string(),
            "--digest",
            "--json",
            "--quiet-updates",
        ],
        T,
    );
    assert_eq!(out.status.code(), Some(1));
    let last: Value = serde_json::from_str(stdout_lines(&out).last().unwrap()).unwrap();
    assert_eq!(last["event"], "digest");
    assert_eq!(last["match"], false);
    assert_eq!(last["daemon_keys"], 1);
    assert_ne!(last["keys"], 1);

    // No daemon digest to compare with: exit 2, not a verdict.
    let stale = run_typha_client(
        &[
            "--addr",
            &d.protocol.to_string(),
            "--http-addr",
            &format!("127.0.0.1:{}", free_port()),
            "--digest",
            "--quiet-updates",
        ],
        T,
    );
    assert_eq!(stale.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&stale.stderr).contains("cannot get the daemon's digest"));
}
