//! Prometheus metrics. Names follow Typha's where the meaning is the same (so existing
//! dashboards keep working); ours are `typha_*` in Prometheus' conventions. `docs/metrics.md`
//! tables them all.
//!
//! Each daemon instance has its own registry, so several can run in one process (tests).

use crate::model::SyncerType;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// One series per syncer type, indexed by [`SyncerType::index`]: resolved once at start-up so
/// the hot path does no label lookup, and every syncer's series exists (at zero) from the
/// first scrape, as in Typha.
pub type PerSyncer<T> = [T; SyncerType::COUNT];

pub struct Metrics {
    pub registry: Registry,
    // Connections.
    pub connections_accepted: IntCounter,
    pub accept_errors: IntCounter,
    pub connections_active: IntGauge,
    pub connections_dropped: IntCounter,
    pub connections_dropped_by_reason: IntCounterVec,
    pub connections_by_syncer: IntGaugeVec,
    pub legacy_key_clients: IntGauge,
    pub legacy_key_parts: IntCounter,
    pub connections_target: IntGauge,
    pub rebalance_replicas: IntGauge,
    pub rebalance_nodes: IntGauge,
    // Snapshots.
    pub snapshots_generated: IntCounterVec,
    pub snapshots_reused: IntCounterVec,
    pub snapshot_raw_bytes: IntGaugeVec,
    pub snapshot_wire_bytes: IntGaugeVec,
    pub snapshot_encode_secs: Histogram,
    pub snapshot_bytes_live: IntGauge,
    pub snapshot_joins_bounded: IntCounterVec,
    pub client_snapshot_send_secs: PerSyncer<Histogram>,
    // Fan-out.
    pub bytes_written: IntCounter,
    pub write_calls: IntCounter,
    pub frames_written: IntCounter,
    pub fanout_latency_secs: Histogram,
    pub client_write_latency_secs: PerSyncer<Histogram>,
    pub ping_latency: PerSyncer<Histogram>,
    pub ring_batches: IntGauge,
    pub ring_bytes: IntGauge,
    // Datastore side.
    pub updates_total: IntCounter,
    pub updates_skipped: IntCounter,
    pub updates_skipped_by_prefix: IntCounterVec,
    pub batches_sent: IntCounter,
    pub breadcrumb_size: Histogram,
    pub kvs_per_msg: PerSyncer<Histogram>,
    pub sequence: IntGauge,
    pub keys: IntGaugeVec,
    pub channel_full: IntCounter,
    pub updates_refused_oversized: IntCounter,
    pub http_connections_refused: IntCounterVec,
    // Kubernetes datastore.
    pub datastore_events: IntCounterVec,
    pub datastore_updates_emitted: IntCounterVec,
    pub datastore_translate_errors: IntCounterVec,
    pub validation_failures: IntCounterVec,
    pub datastore_errors: IntCounterVec,
    pub datastore_watch_restarts: IntCounterVec,
    pub datastore_kind_absent: IntGaugeVec,
    /// Set from the status board when scraped.
    pub datastore_contact_age_secs: Gauge,
    pub datastore_in_sync: IntGauge,
    // TLS.
    pub tls_reloads: IntCounterVec,
    // Process.
    pub component_restarts: IntCounterVec,
    /// Copied from the process-wide log counters (`crate::logging`) when scraped.
    pub logs_dropped: IntCounter,
    pub log_errors: IntCounter,
    pub logs_suppressed: IntCounter,
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .expect("valid metric");
    r.register(Box::new(h.clone())).expect("unique metric");
    h
}

fn histogram_per_syncer(
    r: &Registry,
    name: &str,
    help: &str,
    buckets: Vec<f64>,
) -> PerSyncer<Histogram> {
    let v = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), &["syncer"])
        .expect("valid metric");
    r.register(Box::new(v.clone())).expect("unique metric");
    SyncerType::ALL.map(|t| v.with_label_values(&[t.as_str()]))
}

/// Latency buckets from 100 µs to ~100 s.
fn latency_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(0.0001, 2.0, 20).unwrap_or_default()
}

impl Metrics {
    /// Registers every metric in a fresh registry. The names and label sets are constants, so
    /// registration cannot fail at run time; the `expect`s guard programming errors only.
    pub fn new() -> Self {
        let r = Registry::new();
        #[cfg(target_os = "linux")]
        {
            let pc = prometheus::process_collector::ProcessCollector::for_self();
            let _ = r.register(Box::new(pc));
        }
        let m = Metrics {
            connections_accepted: counter(
                &r,
                "typha_connections_accepted",
                "Total connections accepted.",
            ),
            accept_errors: counter(
                &r,
                "typha_accept_errors_total",
                "Failed accept calls on the protocol port (such as EMFILE at the descriptor limit); each is retried on the next tick.",
            ),
            connections_active: gauge(&r, "typha_connections_active", "Open connections."),
            connections_dropped: counter(
                &r,
                "typha_connections_dropped",
                "Total connections closed by the server (any reason).",
            ),
            connections_dropped_by_reason: counter_vec(
                &r,
                "typha_connections_dropped_by_reason_total",
                "Connections closed, by reason.",
                &["reason"],
            ),
            legacy_key_clients: gauge(
                &r,
                "typha_legacy_policy_key_clients",
                "Typha-protocol clients (Felix v3.31 and older) served policy keys in the v3.31 form.",
            ),
            legacy_key_parts: counter(
                &r,
                "typha_legacy_policy_key_parts_encoded_total",
                "Batch parts also encoded in the legacy (v3.31 policy key) variants, which happens only while a legacy client is connected.",
            ),
            connections_by_syncer: gauge_vec(
                &r,
                "typha_connections_streaming",
                "Connections past the handshake, by syncer type and protocol (native, typha).",
                &["syncer", "protocol"],
            ),
            connections_target: gauge(
                &r,
                "typha_connections_target",
                "Connections this replica keeps before shedding (its share when rebalancing).",
            ),
            rebalance_replicas: gauge(
                &r,
                "typha_rebalance_replicas",
                "Endpoints of this daemon's Service at the last count (Kubernetes rebalancing).",
            ),
            rebalance_nodes: gauge(
                &r,
                "typha_rebalance_nodes",
                "Nodes at the last count (Kubernetes rebalancing).",
            ),
            snapshots_generated: counter_vec(
                &r,
                "typha_snapshots_generated",
                "Snapshots encoded, by syncer type.",
                &["syncer"],
            ),
            snapshots_reused: counter_vec(
                &r,
                "typha_snapshots_reused",
                "Clients served an already-encoded snapshot, by syncer type.",
                &["syncer"],
            ),
            snapshot_raw_bytes: gauge_vec(
                &r,
                "typha_snapshot_raw_bytes",
                "Size of the latest snapshot before compression, by syncer type.",
                &["syncer"],
            ),
            snapshot_wire_bytes: gauge_vec(
                &r,
                "typha_snapshot_compressed_bytes",
                "Size of the latest snapshot on the wire, by syncer type.",
                &["syncer"],
            ),
            snapshot_encode_secs: histogram(
                &r,
                "typha_snapshot_encode_seconds",
                "Time to encode (and compress) one snapshot.",
                latency_buckets(),
            ),
            snapshot_bytes_live: gauge(
                &r,
                "typha_snapshot_bytes_live",
                "Encoded bytes of all snapshots still referenced (cached or being downloaded).",
            ),
            snapshot_joins_bounded: counter_vec(
                &r,
                "typha_snapshot_joins_bounded_total",
                "Joins that found the live-snapshot bound reached, by outcome: shared_older (served an older snapshot) or waited.",
                &["outcome"],
            ),
            client_snapshot_send_secs: histogram_per_syncer(
                &r,
                "typha_client_snapshot_send_secs",
                "Time from the end of the handshake to the last snapshot byte written, by syncer type.",
                latency_buckets(),
            ),
            bytes_written: counter(
                &r,
                "typha_bytes_written_total",
                "Bytes written to client sockets.",
            ),
            write_calls: counter(
                &r,
                "typha_write_calls_total",
                "Vectored write system calls made to client sockets.",
            ),
            frames_written: counter(
                &r,
                "typha_frames_written_total",
                "Frames fully written to client sockets.",
            ),
            fanout_latency_secs: histogram(
                &r,
                "typha_client_latency_secs",
                "Time from an update reaching the daemon to its frame being written to a client.",
                latency_buckets(),
            ),
            client_write_latency_secs: histogram_per_syncer(
                &r,
                "typha_client_write_latency_secs",
                "Time from a frame being queued for a client to it being fully written, by syncer type.",
                latency_buckets(),
            ),
            ping_latency: histogram_per_syncer(
                &r,
                "typha_ping_latency",
                "Round trip from a ping being written to its pong being read, by syncer type.",
                latency_buckets(),
            ),
            ring_batches: gauge(
                &r,
                "typha_breadcrumb_ring_batches",
                "Recent batches held for clients that join from a snapshot.",
            ),
            ring_bytes: gauge(
                &r,
                "typha_breadcrumb_ring_bytes",
                "Encoded bytes held by the ring of recent batches.",
            ),
            updates_total: counter(
                &r,
                "typha_updates_total",
                "Updates received from the datastore.",
            ),
            updates_skipped: counter(
                &r,
                "typha_updates_skipped",
                "Updates dropped because they changed nothing.",
            ),
            updates_skipped_by_prefix: counter_vec(
                &r,
                "typha_updates_skipped_by_kind_total",
                "No-op updates dropped, by key kind.",
                &["kind"],
            ),
            batches_sent: counter(
                &r,
                "typha_batches_total",
                "Delta batches handed to the reactor.",
            ),
            breadcrumb_size: histogram(
                &r,
                "typha_breadcrumb_size",
                "Updates per delta batch (all syncer types together).",
                prometheus::exponential_buckets(1.0, 2.0, 14).unwrap_or_default(),
            ),
            kvs_per_msg: histogram_per_syncer(
                &r,
                "typha_kvs_per_msg",
                "Updates per Updates message (one per batch that has any for the syncer type), by syncer type.",
                prometheus::exponential_buckets(1.0, 2.0, 14).unwrap_or_default(),
            ),
            sequence: gauge(
                &r,
                "typha_breadcrumb_seq_number",
                "Sequence number of the newest delta batch.",
            ),
            keys: gauge_vec(
                &r,
                "typha_cache_size",
                "Keys in the canonical map, by syncer type view.",
                &["syncer"],
            ),
            channel_full: counter(
                &r,
                "typha_batch_channel_full_total",
                "Times a closed batch could not be handed over because the reactor's channel was full.",
            ),
            http_connections_refused: counter_vec(
                &r,
                "typha_http_connections_refused_total",
                "HTTP connections closed unserved, by reason: over_limit (the listener was at its connection cap) or head_timeout (no request head in time).",
                &["reason"],
            ),
            updates_refused_oversized: counter(
                &r,
                "typha_updates_refused_oversized_total",
                "Datastore updates refused because their entry alone would exceed the largest frame a client accepts.",
            ),
            datastore_events: counter_vec(
                &r,
                "typha_datastore_events_total",
                "Watch events received from the datastore, by kind.",
                &["kind"],
            ),
            datastore_updates_emitted: counter_vec(
                &r,
                "typha_datastore_updates_emitted_total",
                "Model updates the translation produced (changed keys only), by kind.",
                &["kind"],
            ),
            datastore_translate_errors: counter_vec(
                &r,
                "typha_datastore_translate_errors_total",
                "Objects that could not be translated (treated as deleted), by kind.",
                &["kind"],
            ),
            validation_failures: counter_vec(
                &r,
                "typha_validation_failures_total",
                "Values that failed Calico's validation and were sent as missing, by kind.",
                &["kind"],
            ),
            datastore_errors: counter_vec(
                &r,
                "typha_datastore_errors_total",
                "Errors listing or watching the datastore, by kind.",
                &["kind"],
            ),
            datastore_watch_restarts: counter_vec(
                &r,
                "typha_datastore_watch_restarts_total",
                "Relists after a watch expired or the API server restarted, by kind.",
                &["kind"],
            ),
            datastore_kind_absent: gauge_vec(
                &r,
                "typha_datastore_kind_absent",
                "1 while the API server does not serve a watched kind (CRD not installed).",
                &["kind"],
            ),
            datastore_contact_age_secs: {
                let g = Gauge::new(
                    "typha_datastore_contact_age_seconds",
                    "Seconds since the datastore server last answered (0 for the sim datastore).",
                )
                .expect("valid metric");
                r.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            datastore_in_sync: gauge(
                &r,
                "typha_datastore_in_sync",
                "1 while in sync with the datastore, else 0.",
            ),
            tls_reloads: counter_vec(
                &r,
                "typha_tls_reloads_total",
                "Reloads of the server's TLS files after they changed, by result (success, failure).",
                &["result"],
            ),
            component_restarts: counter_vec(
                &r,
                "typha_component_restarts_total",
                "Restarts of a supervised part after it panicked or ended, by component (driver, watch/<kind>, snapshot-encoder).",
                &["component"],
            ),
            logs_dropped: counter(
                &r,
                "typha_logs_dropped",
                "Log lines dropped because the log queue was full (the log reader is slow or stuck).",
            ),
            log_errors: counter(
                &r,
                "typha_log_errors",
                "Failed writes of log lines to stderr (the log reader has gone).",
            ),
            logs_suppressed: counter(
                &r,
                "typha_logs_suppressed_total",
                "Per-connection log lines held back by the storm limit (each second's count is logged in one line).",
            ),
            registry: r,
        };
        for t in SyncerType::ALL {
            let l = [t.as_str()];
            for protocol in ["native", "typha"] {
                m.connections_by_syncer
                    .with_label_values(&[t.as_str(), protocol]);
            }
            m.snapshots_generated.with_label_values(&l);
            m.snapshots_reused.with_label_values(&l);
            m.keys.with_label_values(&l);
            m.snapshot_raw_bytes.with_label_values(&l);
            m.snapshot_wire_bytes.with_label_values(&l);
        }
        m
    }

    /// Copies what the status board knows into the gauges that mirror it; called per scrape.
    pub fn observe_status(&self, status: &crate::status::StatusBoard) {
        self.datastore_contact_age_secs.set(
            status
                .datastore_unreachable_for()
                .map_or(0.0, |d| d.as_secs_f64()),
        );
        self.datastore_in_sync.set(i64::from(
            status.sync_status() == crate::model::SyncStatus::InSync,
        ));
        // The log counters are process-wide and only grow; each daemon's counter catches up.
        for (c, now) in [
            (&self.logs_dropped, crate::logging::dropped_lines()),
            (&self.log_errors, crate::logging::write_errors()),
            (&self.logs_suppressed, crate::logging::suppressed_lines()),
        ] {
            let seen = c.get();
            if now > seen {
                c.inc_by(now - seen);
            }
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let families = self.registry.gather();
        if TextEncoder::new().encode(&families, &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// A coarse label for a key, for per-kind no-op counts: the path up to its kind segment.
pub fn key_kind(key: &str) -> &'static str {
    const KINDS: &[(&str, &str)] = &[
        ("/calico/v1/host/", "host"),
        ("/calico/v1/policy/profile/", "profile"),
        ("/calico/v1/policy/tier/", "tier"),
        ("/calico/v1/policy/", "policy"),
        ("/calico/v1/config/", "config"),
        ("/calico/v1/netset/", "networkset"),
        ("/calico/v1/ipam/", "ippool"),
        ("/calico/ipam/v2/", "ipam"),
        ("/calico/resources/v3/projectcalico.org/nodes/", "node"),
        (
            "/calico/resources/v3/projectcalico.org/profiles/",
            "profile",
        ),
        (
            "/calico/resources/v3/projectcalico.org/kubernetesservice/",
            "service",
        ),
        (
            "/calico/resources/v3/projectcalico.org/kubernetesendpointslices/",
            "endpointslice",
        ),
        ("/calico/resources/v3/", "resource"),
    ];
    KINDS
        .iter()
        .find(|(p, _)| key.starts_with(p))
        .map_or("other", |(_, k)| k)
}
