//! Pod QoS controls from annotations (`handleQoSControlsAnnotations` in Calico v3.32.1's
//! `k8s/conversion/workload_endpoint_default.go`).
//!
//! Each annotation is a Kubernetes quantity (`10M`, `1Gi`, `1.5k`), read as its integer value
//! rounded up. A value that does not parse counts as 0 (unset); one below its kind's minimum or
//! above its maximum is clamped to that bound. Then the dependent settings are checked (a
//! burst needs a bandwidth, a peakrate needs a bandwidth below it, a minburst needs a peakrate,
//! a packet burst needs a packet rate; each is cleared otherwise) and defaults are filled in (a
//! 4Gi burst with a bandwidth, a burst of 5 packets with a packet rate). The Kubernetes
//! bandwidth annotations are read first and Calico's own override them. Calico logs the
//! problems and keeps the pod; so does this.

use super::calico::dscp;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// `internalapi.QoSControls`, members in Go's declaration order (all `omitempty`).
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct QosControls {
    #[serde(skip_serializing_if = "is_zero")]
    ingress_bandwidth: i64,
    #[serde(skip_serializing_if = "is_zero")]
    ingress_burst: i64,
    #[serde(skip_serializing_if = "is_zero")]
    ingress_peakrate: i64,
    #[serde(skip_serializing_if = "is_zero")]
    ingress_minburst: i64,
    #[serde(skip_serializing_if = "is_zero")]
    egress_bandwidth: i64,
    #[serde(skip_serializing_if = "is_zero")]
    egress_burst: i64,
    #[serde(skip_serializing_if = "is_zero")]
    egress_peakrate: i64,
    #[serde(skip_serializing_if = "is_zero")]
    egress_minburst: i64,
    #[serde(skip_serializing_if = "is_zero")]
    ingress_packet_rate: i64,
    #[serde(skip_serializing_if = "is_zero")]
    ingress_packet_burst: i64,
    #[serde(skip_serializing_if = "is_zero")]
    egress_packet_rate: i64,
    #[serde(skip_serializing_if = "is_zero")]
    egress_packet_burst: i64,
    #[serde(skip_serializing_if = "is_zero")]
    ingress_max_connections: i64,
    #[serde(skip_serializing_if = "is_zero")]
    egress_max_connections: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    dscp: Option<Value>,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

const K8S_INGRESS_BANDWIDTH: &str = "kubernetes.io/ingress-bandwidth";
const K8S_EGRESS_BANDWIDTH: &str = "kubernetes.io/egress-bandwidth";
const QOS: &str = "qos.projectcalico.org/";

// Bounds, as the quantities Calico parses them from.
const BANDWIDTH: (i64, i64) = (1_000, 1_000_000_000_000_000); // 1k .. 1P bits/s
const BURST: (i64, i64) = (1_000, 34_359_738_360); // 1k .. MaxUint32*8 bits
const DEFAULT_BURST: i64 = 4 * 1024 * 1024 * 1024; // 4Gi bits
const PEAKRATE: (i64, i64) = (1_010, 1_010_000_000_000_000); // 1.01k .. 1.01P bits/s
const MINBURST: (i64, i64) = (1_000, 100_000_000); // 1k .. 100M bytes
const PACKET_RATE: (i64, i64) = (1, 10_000);
const PACKET_BURST: (i64, i64) = (1, 10_000);
const DEFAULT_PACKET_BURST: i64 = 5;
const CONNECTIONS: (i64, i64) = (1, 4_294_967_295);

/// `resource.ParseQuantity(s).Value()`: the quantity's value rounded up to an integer, or
/// `None` when `s` is not a quantity.
pub(super) fn quantity_value(s: &str) -> Option<i64> {
    let (neg, rest) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let num_len = rest
        .bytes()
        .take_while(|b| b.is_ascii_digit() || *b == b'.')
        .count();
    let (num, suffix) = rest.split_at(num_len);
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if (int.is_empty() && frac.is_empty()) || frac.contains('.') {
        return None;
    }
    // value = digits * 10^dec_exp * 2^bin_exp
    let (mut dec_exp, bin_exp): (i32, u32) = match suffix {
        "" => (0, 0),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        e if e.starts_with(['e', 'E']) => {
            let exp = &e[1..];
            let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            (exp.parse().ok()?, 0)
        }
        _ => return None,
    };
    let digits = format!("{int}{frac}");
    let digits = digits.trim_start_matches('0');
    dec_exp -= i32::try_from(frac.len()).ok()?;
    let mut mantissa: u128 = 0;
    for d in digits.bytes() {
        mantissa = mantissa
            .checked_mul(10)?
            .checked_add(u128::from(d - b'0'))?;
    }
    mantissa = mantissa.checked_mul(1u128 << bin_exp)?;
    let value: u128 = if dec_exp >= 0 {
        mantissa.checked_mul(10u128.checked_pow(dec_exp.unsigned_abs())?)?
    } else {
        let div = 10u128
            .checked_pow(dec_exp.unsigned_abs())
            .unwrap_or(u128::MAX);
        // Rounded away from zero, as `Quantity.Value` rounds.
        mantissa.div_ceil(div)
    };
    let v = i64::try_from(value).unwrap_or(i64::MAX);
    Some(if neg { -v } else { v })
}

/// `parseAndValidateQty`: unparseable is 0, out of range is clamped.
fn bounded(s: &str, (min, max): (i64, i64)) -> i64 {
    match quantity_value(s) {
        None => 0,
        Some(v) if v < min => min,
        Some(v) if v > max => max,
        Some(v) => v,
    }
}

/// The QoS controls a pod's annotations ask for, or `None` when they ask for none.
pub(super) fn qos_controls(annotations: &BTreeMap<String, String>) -> Option<QosControls> {
    let get = |k: &str| annotations.get(k).map(String::as_str);
    let calico = |k: &str| annotations.get(&format!("{QOS}{k}")).map(String::as_str);
    let mut q = QosControls::default();
    let set = |field: &mut i64, v: Option<&str>, range| {
        if let Some(s) = v {
            *field = bounded(s, range);
        }
    };
    set(
        &mut q.ingress_bandwidth,
        get(K8S_INGRESS_BANDWIDTH),
        BANDWIDTH,
    );
    set(
        &mut q.egress_bandwidth,
        get(K8S_EGRESS_BANDWIDTH),
        BANDWIDTH,
    );
    set(
        &mut q.ingress_bandwidth,
        calico("ingressBandwidth"),
        BANDWIDTH,
    );
    set(
        &mut q.egress_bandwidth,
        calico("egressBandwidth"),
        BANDWIDTH,
    );
    set(&mut q.ingress_burst, calico("ingressBurst"), BURST);
    set(&mut q.egress_burst, calico("egressBurst"), BURST);
    set(&mut q.ingress_peakrate, calico("ingressPeakrate"), PEAKRATE);
    set(&mut q.egress_peakrate, calico("egressPeakrate"), PEAKRATE);
    set(&mut q.ingress_minburst, calico("ingressMinburst"), MINBURST);
    set(&mut q.egress_minburst, calico("egressMinburst"), MINBURST);
    set(
        &mut q.ingress_packet_rate,
        calico("ingressPacketRate"),
        PACKET_RATE,
    );
    set(
        &mut q.egress_packet_rate,
        calico("egressPacketRate"),
        PACKET_RATE,
    );
    set(
        &mut q.ingress_packet_burst,
        calico("ingressPacketBurst"),
        PACKET_BURST,
    );
    set(
        &mut q.egress_packet_burst,
        calico("egressPacketBurst"),
        PACKET_BURST,
    );
    set(
        &mut q.ingress_max_connections,
        calico("ingressMaxConnections"),
        CONNECTIONS,
    );
    set(
        &mut q.egress_max_connections,
        calico("egressMaxConnections"),
        CONNECTIONS,
    );

    if q.ingress_burst != 0 && q.ingress_bandwidth == 0 {
        q.ingress_burst = 0;
    }
    if q.egress_burst != 0 && q.egress_bandwidth == 0 {
        q.egress_burst = 0;
    }
    if q.ingress_peakrate != 0
        && (q.ingress_bandwidth == 0 || q.ingress_bandwidth >= q.ingress_peakrate)
    {
        q.ingress_peakrate = 0;
    }
    if q.egress_peakrate != 0
        && (q.egress_bandwidth == 0 || q.egress_bandwidth >= q.egress_peakrate)
    {
        q.egress_peakrate = 0;
    }
    if q.ingress_minburst != 0 && q.ingress_peakrate == 0 {
        q.ingress_minburst = 0;
    }
    if q.egress_minburst != 0 && q.egress_peakrate == 0 {
        q.egress_minburst = 0;
    }
    if q.ingress_packet_burst != 0 && q.ingress_packet_rate == 0 {
        q.ingress_packet_burst = 0;
    }
    if q.egress_packet_burst != 0 && q.egress_packet_rate == 0 {
        q.egress_packet_burst = 0;
    }
    if q.ingress_bandwidth != 0 && q.ingress_burst == 0 {
        q.ingress_burst = DEFAULT_BURST;
    }
    if q.egress_bandwidth != 0 && q.egress_burst == 0 {
        q.egress_burst = DEFAULT_BURST;
    }
    if q.ingress_packet_rate != 0 && q.ingress_packet_burst == 0 {
        q.ingress_packet_burst = DEFAULT_PACKET_BURST;
    }
    if q.egress_packet_rate != 0 && q.egress_packet_burst == 0 {
        q.egress_packet_burst = DEFAULT_PACKET_BURST;
    }
    q.dscp = calico("dscp").and_then(dscp);
    (q != QosControls::default()).then_some(q)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_as_kubernetes_reads_them() {
        for (s, v) in [
            ("10M", Some(10_000_000)),
            ("1Gi", Some(1 << 30)),
            ("1.5k", Some(1_500)),
            ("1.01k", Some(1_010)),
            ("100", Some(100)),
            ("0.5", Some(1)),
            ("1500m", Some(2)),
            ("1e3", Some(1_000)),
            ("2E6", Some(2_000_000)),
            ("+7", Some(7)),
            ("", None),
            ("10MB", None),
            ("k", None),
            ("1.2.3", None),
        ] {
            assert_eq!(quantity_value(s), v, "{s:?}");
        }
    }

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn json(q: Option<QosControls>) -> String {
        serde_json::to_string(&q).unwrap()
    }

    #[test]
    fn bandwidth_gets_a_default_burst_and_calico_overrides_kubernetes() {
        let q = qos_controls(&ann(&[
            ("kubernetes.io/ingress-bandwidth", "10M"),
            ("kubernetes.io/egress-bandwidth", "20M"),
            ("qos.projectcalico.org/egressBandwidth", "30M"),
        ]));
        assert_eq!(
            json(q),
            r#"{"ingressBandwidth":10000000,"ingressBurst":4294967296,"egressBandwidth":30000000,"egressBurst":4294967296}"#
        );
    }

    #[test]
    fn dependent_settings_are_cleared_and_values_clamped() {
        let q = qos_controls(&ann(&[
            // Burst without bandwidth: cleared.
            ("qos.projectcalico.org/ingressBurst", "1M"),
            // Peakrate not above bandwidth: cleared, and so is the minburst that needs it.
            ("qos.projectcalico.org/egressBandwidth", "5M"),
            ("qos.projectcalico.org/egressPeakrate", "5M"),
            ("qos.projectcalico.org/egressMinburst", "2k"),
            // Above the maximum: clamped; packet burst defaulted.
            ("qos.projectcalico.org/ingressPacketRate", "20k"),
            // Unparseable: unset.
            ("qos.projectcalico.org/egressMaxConnections", "lots"),
            ("qos.projectcalico.org/ingressMaxConnections", "0"),
            ("qos.projectcalico.org/dscp", "af11"),
        ]));
        assert_eq!(
            json(q),
            r#"{"egressBandwidth":5000000,"egressBurst":4294967296,"ingressPacketRate":10000,"ingressPacketBurst":5,"ingressMaxConnections":1,"dscp":"AF11"}"#
        );
    }

    #[test]
    fn no_annotations_no_controls() {
        assert_eq!(qos_controls(&ann(&[("other", "1")])), None);
        assert_eq!(
            qos_controls(&ann(&[("qos.projectcalico.org/ingressBandwidth", "bad")])),
            None
        );
    }
}
