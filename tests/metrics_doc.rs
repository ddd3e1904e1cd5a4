//! docs/metrics.md tables every metric: each `typha_*` family a running daemon exposes is listed
//! there with its exposed type, and each family listed there is registered in src/metrics.rs.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use typha::client::{BlockingClient, ClientOptions};
use typha::daemon::{Daemon, DaemonConfig};
use typha::datastore::sim::SimConfig;
use typha::datastore::{BatchLimits, DatastoreThreadConfig, DriverConfig};
use typha::http::http_get;
use typha::proto::encode::EncodeOptions;
use typha::server::ServerConfig;

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR")))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `name -> type` from the rows of the doc's tables whose first cell is a code span.
fn documented(doc: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in doc.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // "| `name` | type | ..." splits into ["", "`name`", "type", ...].
        if cells.len() < 4 || !cells[0].is_empty() {
            continue;
        }
        let Some(name) = cells[1].strip_prefix('`').and_then(|c| c.strip_suffix('`')) else {
            continue;
        };
        if name.starts_with("typha_") || name.starts_with("process_") {
            out.insert(name.to_owned(), cells[2].to_owned());
        }
    }
    out
}

/// `name -> type` from the `# TYPE` lines of an exposition.
fn exposed(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let (name, ty) = l.split_once(' ')?;
            Some((name.to_owned(), ty.trim().to_owned()))
        })
        .collect()
}

/// Every `"typha_..."` string literal in src/metrics.rs: the registered names.
fn registered(src: &str) -> BTreeSet<String> {
    src.split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| {
            s.starts_with("typha_") && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_metric_is_documented() {
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let d = Daemon::start(DaemonConfig {
        server: ServerConfig {
            listen: loopback,
            tick: Duration::from_millis(20),
            ..ServerConfig::default()
        },
        datastore: DatastoreThreadConfig {
            driver: DriverConfig::Sim(SimConfig {
                nodes: 5,
                endpoints: 50,
                namespaces: 3,
                policies: 10,
                churn_rate: 100.0,
                ..SimConfig::default()
            }),
            limits: BatchLimits::default(),
            encode: EncodeOptions::default(),
            health_listen: Some(loopback),
            metrics_listen: Some(loopback),
            liveness_stall: Duration::from_secs(30),
            datastore_unreachable: Duration::from_secs(300),
            component_down_unready: typha::status::DEFAULT_COMPONENT_DOWN_UNREADY,
        },
        batch_channel_capacity: 1024,
    })
    .unwrap();
    // A client in sync, so the snapshot and fan-out series have samples.
    let mut c = BlockingClient::connect(d.protocol_addr, ClientOptions::default()).unwrap();
    c.run_until_in_sync(Duration::from_secs(30)).unwrap();
    let target = c.state().seq() + 3;
    c.run_until_seq(target, Duration::from_secs(30)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let (code, text) =
            http_get(d.metrics_addr.unwrap(), "/metrics", Duration::from_secs(5)).unwrap();
        assert_eq!(code, 200);
        if text.contains("typha_frames_written_total ") || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(c);
    d.stop().unwrap();

    let doc = documented(&read("docs/metrics.md"));
    let exp = exposed(&text);
    let reg = registered(&read("src/metrics.rs"));

    let mut problems = Vec::new();
    for (name, ty) in &exp {
        match doc.get(name) {
            None if name.starts_with("typha_") => {
                problems.push(format!("{name} ({ty}) is exposed but not documented"))
            }
            Some(d) if d != ty => {
                problems.push(format!("{name}: documented as {d}, exposed as {ty}"))
            }
            _ => {}
        }
    }
    for name in &reg {
        if !doc.contains_key(name) {
            problems.push(format!("{name} is registered but not documented"));
        }
    }
    for name in doc.keys() {
        let exists = if name.starts_with("typha_") {
            reg.contains(name)
        } else {
            exp.contains_key(name)
        };
        if !exists {
            problems.push(format!("{name} is documented but does not exist"));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}\n\nexposition:\n{text}");

    // The process collector is registered (Linux), as the doc promises.
    if cfg!(target_os = "linux") {
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
        ] {
            assert!(exp.contains_key(name), "{name} missing");
        }
    }
    // Sanity of the parsers themselves: the well-known families were found.
    for name in ["typha_connections_active", "typha_client_latency_secs"] {
        assert!(doc.contains_key(name) && exp.contains_key(name) && reg.contains(name));
    }
}
