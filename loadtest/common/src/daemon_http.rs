//! What the harness reads from the daemon's HTTP listener: fan-out counters from `/metrics`
//! and `(seq, keys, digest)` records from `/digest`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;
use typha::http::http_get;
use typha::model::SyncerType;

const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// A Prometheus histogram: cumulative `(upper bound, count)` pairs, the last being `+Inf`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Buckets(pub Vec<(f64, u64)>);

impl Buckets {
    /// Observations in `self` but not in `earlier` (same bucket layout), or empty.
    pub fn delta(&self, earlier: &Buckets) -> Buckets {
        if self.0.len() != earlier.0.len() || self.0.iter().zip(&earlier.0).any(|(a, b)| a.0 != b.0)
        {
            return Buckets::default();
        }
        Buckets(
            self.0
                .iter()
                .zip(&earlier.0)
                .map(|(a, b)| (a.0, a.1.saturating_sub(b.1)))
                .collect(),
        )
    }

    pub fn count(&self) -> u64 {
        self.0.last().map_or(0, |b| b.1)
    }

    /// The upper bound of the bucket holding quantile `q` (`+Inf` beyond the last bound), or
    /// `None` without observations.
    pub fn quantile_bound(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = (q * total as f64).ceil().max(1.0) as u64;
        self.0.iter().find(|b| b.1 >= rank).map(|b| b.0)
    }
}

/// The buckets of histogram `name` (its `name_bucket{le="..."}` samples, in order).
pub fn prom_buckets(text: &str, name: &str) -> Buckets {
    let prefix = format!("{name}_bucket{{");
    let mut out = Vec::new();
    for l in text.lines() {
        let Some(rest) = l.strip_prefix(&prefix) else {
            continue;
        };
        let Some((labels, value)) = rest.split_once('}') else {
            continue;
        };
        let Some(le) = labels
            .split(',')
            .find_map(|kv| kv.trim().strip_prefix("le=\""))
            .and_then(|v| v.strip_suffix('"'))
        else {
            continue;
        };
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            match le.parse() {
                Ok(v) => v,
                Err(_) => continue,
            }
        };
        if let Ok(v) = value.trim().parse::<f64>() {
            out.push((le, v as u64));
        }
    }
    Buckets(out)
}

/// The daemon's fan-out counters at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FanoutCounters {
    /// `typha_frames_written_total`: `Updates` batches fully written to clients.
    pub frames_written: u64,
    /// `typha_write_calls_total`.
    pub write_calls: u64,
    /// `typha_bytes_written_total`.
    pub bytes_written: u64,
    /// `typha_client_latency_secs`: update reaching the daemon → its frame written to a client.
    pub latency: Buckets,
}

impl FanoutCounters {
    pub fn delta(&self, earlier: &FanoutCounters) -> FanoutCounters {
        FanoutCounters {
            frames_written: self.frames_written.saturating_sub(earlier.frames_written),
            write_calls: self.write_calls.saturating_sub(earlier.write_calls),
            bytes_written: self.bytes_written.saturating_sub(earlier.bytes_written),
            latency: self.latency.delta(&earlier.latency),
        }
    }
}

/// The value of an unlabelled sample `name` in a Prometheus text exposition.
pub fn prom_value(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let mut it = l.split_ascii_whitespace();
        (it.next()? == name).then(|| it.next()?.parse::<f64>().ok())?
    })
}

pub fn parse_fanout_counters(text: &str) -> Result<FanoutCounters, String> {
    let get = |name: &str| {
        prom_value(text, name)
            .filter(|v| v.is_finite() && *v >= 0.0)
            .map(|v| v as u64)
            .ok_or_else(|| format!("/metrics has no {name}"))
    };
    Ok(FanoutCounters {
        frames_written: get("typha_frames_written_total")?,
        write_calls: get("typha_write_calls_total")?,
        bytes_written: get("typha_bytes_written_total")?,
        latency: prom_buckets(text, "typha_client_latency_secs"),
    })
}

pub fn fetch_fanout_counters(addr: SocketAddr) -> Result<FanoutCounters, String> {
    let (code, body) = http_get(addr, "/metrics", HTTP_TIMEOUT)
        .map_err(|e| format!("GET http://{addr}/metrics: {e}"))?;
    if code != 200 {
        return Err(format!("GET http://{addr}/metrics: HTTP {code}"));
    }
    parse_fanout_counters(&body)
}

/// `typha_connections_dropped_by_reason_total{reason="..."}` samples: reason → count.
pub fn parse_drops_by_reason(text: &str) -> BTreeMap<String, u64> {
    let prefix = "typha_connections_dropped_by_reason_total{";
    let mut out = BTreeMap::new();
    for l in text.lines() {
        let Some(rest) = l.strip_prefix(prefix) else {
            continue;
        };
        let Some((labels, value)) = rest.split_once('}') else {
            continue;
        };
        let Some(reason) = labels
            .split(',')
            .find_map(|kv| kv.trim().strip_prefix("reason=\""))
            .and_then(|v| v.strip_suffix('"'))
        else {
            continue;
        };
        if let Ok(v) = value.trim().parse::<f64>() {
            if v.is_finite() && v >= 0.0 {
                out.insert(reason.to_owned(), v as u64);
            }
        }
    }
    out
}

pub fn fetch_drops_by_reason(addr: SocketAddr) -> Result<BTreeMap<String, u64>, String> {
    let (code, body) = http_get(addr, "/metrics", HTTP_TIMEOUT)
        .map_err(|e| format!("GET http://{addr}/metrics: {e}"))?;
    if code != 200 {
        return Err(format!("GET http://{addr}/metrics: HTTP {code}"));
    }
    Ok(parse_drops_by_reason(&body))
}

/// One syncer type's view in a `/digest` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonDigest {
    pub seq: u64,
    pub keys: u64,
    /// 32 lower-case hex digits.
    pub digest: String,
}

/// Parses `{"seq":N,"syncers":{"felix":{"keys":K,"digest":"<hex>"},...}}` for `syncer`.
pub fn parse_digest_json(body: &str, syncer: SyncerType) -> Result<DaemonDigest, String> {
    let v: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("/digest is not JSON: {e}"))?;
    let seq = v["seq"].as_u64().ok_or("/digest has no numeric \"seq\"")?;
    let view = &v["syncers"][syncer.as_str()];
    let keys = view["keys"]
        .as_u64()
        .ok_or_else(|| format!("/digest has no keys for {}", syncer.as_str()))?;
    let digest = view["digest"]
        .as_str()
        .ok_or_else(|| format!("/digest has no digest for {}", syncer.as_str()))?
        .to_owned();
    Ok(DaemonDigest { seq, keys, digest })
}

/// The daemon's newest record.
pub fn fetch_latest_digest(addr: SocketAddr, syncer: SyncerType) -> Result<DaemonDigest, String> {
    let (code, body) = http_get(addr, "/digest", HTTP_TIMEOUT)
        .map_err(|e| format!("GET http://{addr}/digest: {e}"))?;
    if code != 200 {
        return Err(format!(
            "GET http://{addr}/digest: HTTP {code}: {}",
            body.trim()
        ));
    }
    parse_digest_json(&body, syncer)
}

/// The daemon's record for `seq`: `Ok(None)` when it no longer (or never) held it (HTTP 404).
pub fn fetch_digest(
    addr: SocketAddr,
    seq: u64,
    syncer: SyncerType,
) -> Result<Option<DaemonDigest>, String> {
    let path = format!("/digest?seq={seq}");
    let (code, body) =
        http_get(addr, &path, HTTP_TIMEOUT).map_err(|e| format!("GET http://{addr}{path}: {e}"))?;
    match code {
        200 => parse_digest_json(&body, syncer).map(Some),
        404 => Ok(None),
        _ => Err(format!(
            "GET http://{addr}{path}: HTTP {code}: {}",
            body.trim()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_from_exposition() {
        let text = "# HELP typha_frames_written_total Frames fully written.\n\
            # TYPE typha_frames_written_total counter\n\
            typha_frames_written_total 1234567\n\
            typha_frames_written_total_extra 9\n\
            typha_write_calls_total 89\n\
            typha_bytes_written_total 4.5e+06\n\
            typha_connections_dropped_by_reason_total{reason=\"too-slow\"} 3\n";
        let c = parse_fanout_counters(text).unwrap();
        assert_eq!(
            c,
            FanoutCounters {
                frames_written: 1_234_567,
                write_calls: 89,
                bytes_written: 4_500_000,
                latency: Buckets::default(),
            }
        );
        let later = FanoutCounters {
            frames_written: 1_234_600,
            write_calls: 100,
            bytes_written: 4_500_010,
            latency: Buckets::default(),
        };
        assert_eq!(
            later.delta(&c),
            FanoutCounters {
                frames_written: 33,
                write_calls: 11,
                bytes_written: 10,
                latency: Buckets::default(),
            }
        );
        let drops = parse_drops_by_reason(text);
        assert_eq!(drops.len(), 1);
        assert_eq!(drops["too-slow"], 3);
        assert!(parse_fanout_counters("typha_write_calls_total 1\n")
            .unwrap_err()
            .contains("typha_frames_written_total"));
    }

    #[test]
    fn histogram_buckets() {
        let before = "typha_client_latency_secs_bucket{le=\"0.001\"} 10\n\
            typha_client_latency_secs_bucket{le=\"0.002\"} 10\n\
            typha_client_latency_secs_bucket{le=\"+Inf\"} 10\n\
            typha_client_latency_secs_sum 0.005\n\
            typha_client_latency_secs_count 10\n";
        let after = "typha_client_latency_secs_bucket{le=\"0.001\"} 60\n\
            typha_client_latency_secs_bucket{le=\"0.002\"} 109\n\
            typha_client_latency_secs_bucket{le=\"+Inf\"} 110\n";
        let a = prom_buckets(before, "typha_client_latency_secs");
        assert_eq!(a.0, vec![(0.001, 10), (0.002, 10), (f64::INFINITY, 10)]);
        let d = prom_buckets(after, "typha_client_latency_secs").delta(&a);
        assert_eq!(d.count(), 100);
        assert_eq!(d.quantile_bound(0.5), Some(0.001));
        assert_eq!(d.quantile_bound(0.51), Some(0.002));
        assert_eq!(d.quantile_bound(0.99), Some(0.002));
        assert_eq!(d.quantile_bound(1.0), Some(f64::INFINITY));
        assert_eq!(Buckets::default().quantile_bound(0.5), None);
        // Different layouts give no delta rather than nonsense.
        assert_eq!(d.delta(&Buckets(vec![(1.0, 1)])), Buckets::default());
    }

    #[test]
    fn digest_json() {
        let body = r#"{"seq":42,"syncers":{"felix":{"keys":1000,"digest":"00112233445566778899aabbccddeeff"},"bgp":{"keys":7,"digest":"0000000000000000000000000000000f"}}}"#;
        let d = parse_digest_json(body, SyncerType::Felix).unwrap();
        assert_eq!(
            d,
            DaemonDigest {
                seq: 42,
                keys: 1000,
                digest: "00112233445566778899aabbccddeeff".into()
            }
        );
        assert_eq!(parse_digest_json(body, SyncerType::Bgp).unwrap().keys, 7);
        assert!(parse_digest_json(body, SyncerType::NodeStatus).is_err());
        assert!(parse_digest_json("nope", SyncerType::Felix).is_err());
    }
}
