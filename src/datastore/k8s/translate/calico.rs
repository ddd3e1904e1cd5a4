//! Calico resources (CRDs): ClusterInformation, FelixConfiguration, (Global)NetworkSet, Tier,
//! HostEndpoint, IPPool, BGPConfiguration, BGPPeer, IPAM blocks and block affinities.
//!
//! v1 values follow `libcalico-go/lib/backend/model` (fields in Go's order); config values are
//! raw text (§3.5); BGPConfiguration, BGPPeer and selector-scoped FelixConfigurations are passed
//! through as raw v3 values with the metadata described at `CalicoMeta` (in `core.rs`).

use super::core::{
    array_at, f64_at, invalid, nonempty_at, parse_cidr, parse_cidr_or_ip, parse_ip,
    raw_v3_resource, str_at, string_map_at, strings_at, to_bytes, CalicoMeta, EndpointPort,
    GoFloat, IpNet, LABEL_NAMESPACE,
};
use super::{escape, go_shapes, raw, Kv, TranslateError};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;

// ---------------------------------------------------------------------------------------------
// ClusterInformation
// ---------------------------------------------------------------------------------------------

/// Where the config objects named `default` and `node.<n>` (ClusterInformation,
/// FelixConfiguration) put their v1 keys: GlobalConfig `/calico/v1/config/`, HostConfig
/// `/calico/v1/host/<n>/config/`. `None` for any other name, which Calico passes through as
/// the raw v3 resource.
fn v1_config_prefix(name: &str) -> Option<String> {
    if name == "default" {
        Some("/calico/v1/config/".to_string())
    } else {
        name.strip_prefix("node.")
            .map(|node| format!("/calico/v1/host/{node}/config/"))
    }
}

/// Translates a ClusterInformation as v3.32.1's shared config processor
/// (`updateprocessors/configurationprocessor.go`) does for each name:
/// * `default`: the GlobalConfig keys `/calico/v1/config/{ClusterGUID, ClusterType,
///   CalicoVersion, Variant}` (raw strings, each only when set) and `/calico/v1/Ready` (raw
///   `true` / `false` from `spec.datastoreReady`, only when set);
/// * `node.<n>`: the same fields as HostConfig keys `/calico/v1/host/<n>/config/<Name>`, but no
///   ready flag (the processor has no per-node key for `DatastoreReady`);
/// * any other name: the raw v3 `/calico/resources/v3/projectcalico.org/clusterinformations/<name>`,
///   as the processor passes through every name it does not recognise (seen side by side with
///   calico-typha v3.32.1: a stray `leftover` object reached its clients).
///
/// Config annotations are ignored, as in Calico.
pub fn translate_cluster_information(obj: &Value) -> Result<Vec<Kv>, TranslateError> {
    let meta = CalicoMeta::of(obj, "ClusterInformation")?;
    let Some(prefix) = v1_config_prefix(&meta.key_name) else {
        return Ok(vec![raw_v3_resource(
            "ClusterInformation",
            "clusterinformations",
            obj,
            &go_shapes::CLUSTER_INFORMATION,
        )?]);
    };
    let mut out = Vec::new();
    for (field, config) in [
        ("/spec/clusterGUID", "ClusterGUID"),
        ("/spec/clusterType", "ClusterType"),
        ("/spec/calicoVersion", "CalicoVersion"),
    ] {
        if let Some(v) = nonempty_at(obj, field) {
            out.push((format!("{prefix}{config}"), raw(v)));
        }
    }
    match obj.pointer("/spec/datastoreReady") {
        None | Some(Value::Null) => {}
        Some(Value::Bool(b)) => {
            if meta.key_name == "default" {
                out.push(("/calico/v1/Ready".to_string(), raw(&b.to_string())));
            }
        }
        Some(_) => return Err(invalid("spec.datastoreReady", "not a boolean")),
    }
    if let Some(v) = nonempty_at(obj, "/spec/variant") {
        out.push((format!("{prefix}Variant"), raw(v)));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// FelixConfiguration
// ---------------------------------------------------------------------------------------------

/// How a FelixConfiguration spec field becomes its v1 config value (by its Go type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fk {
    /// `confignamev1:"-"`: not a config parameter.
    Skip,
    /// A non-pointer string: as is; empty means unset.
    Str,
    /// A pointer to a string type (or to a `numorstring` type printed by its `String()`): as
    /// is, empty included.
    StrPtr,
    Bool,
    Int,
    /// A `metav1.Duration`, in seconds (Go `%v` of a float64).
    Secs,
    /// A `metav1.Duration` tagged `configv1timescale:"milliseconds"`.
    Millis,
    /// `[]string`, comma-joined.
    List,
    /// `map[string]string`, as `k=v,` pairs.
    Map,
    /// `[]numorstring.Port`, as Go's `%v` prints it: `[a b]`.
    PortList,
    ProtoPorts,
    RouteTableRange,
    RouteTableRanges,
    HealthTimeoutOverrides,
    BpfConntrackTimeouts,
}

/// `FelixConfigurationSpec` of v3.32.1: JSON field name, v1 config name (the Go field name or
/// its `confignamev1` tag), value kind. Generated from
/// `api/pkg/apis/projectcalico/v3/felixconfig.go`. Fields not in this table (newer versions)
/// get their JSON name with the first letter upper-cased and a kind guessed from the JSON
/// value; that guess cannot know about `confignamev1` renames or duration fields.
const FELIX_FIELDS: &[(&str, &str, Fk)] = &[
    ("nodeSelector", "-", Fk::Skip),
    (
        "useInternalDataplaneDriver",
        "UseInternalDataplaneDriver",
        Fk::Bool,
    ),
    ("dataplaneDriver", "DataplaneDriver", Fk::Str),
    (
        "dataplaneWatchdogTimeout",
        "DataplaneWatchdogTimeout",
        Fk::Secs,
    ),
    ("ipv6Support", "Ipv6Support", Fk::Bool),
    ("routeRefreshInterval", "RouteRefreshInterval", Fk::Secs),
    (
        "interfaceRefreshInterval",
        "InterfaceRefreshInterval",
        Fk::Secs,
    ),
    (
        "iptablesRefreshInterval",
        "IptablesRefreshInterval",
        Fk::Secs,
    ),
    (
        "iptablesPostWriteCheckInterval",
        "IptablesPostWriteCheckIntervalSecs",
        Fk::Secs,
    ),
    (
        "iptablesLockProbeInterval",
        "IptablesLockProbeIntervalMillis",
        Fk::Millis,
    ),
    ("featureDetectOverride", "FeatureDetectOverride", Fk::Str),
    ("featureGates", "FeatureGates", Fk::Str),
    ("ipsetsRefreshInterval", "IpsetsRefreshInterval", Fk::Secs),
    ("maxIpsetSize", "MaxIpsetSize", Fk::Int),
    ("iptablesBackend", "IptablesBackend", Fk::StrPtr),
    ("xdpRefreshInterval", "XDPRefreshInterval", Fk::Secs),
    ("netlinkTimeout", "NetlinkTimeoutSecs", Fk::Secs),
    ("metadataAddr", "MetadataAddr", Fk::Str),
    ("metadataPort", "MetadataPort", Fk::Int),
    ("openstackRegion", "OpenstackRegion", Fk::Str),
    ("interfacePrefix", "InterfacePrefix", Fk::Str),
    ("interfaceExclude", "InterfaceExclude", Fk::Str),
    ("chainInsertMode", "ChainInsertMode", Fk::Str),
    (
        "defaultEndpointToHostAction",
        "DefaultEndpointToHostAction",
        Fk::Str,
    ),
    (
        "iptablesFilterAllowAction",
        "IptablesFilterAllowAction",
        Fk::Str,
    ),
    (
        "iptablesMangleAllowAction",
        "IptablesMangleAllowAction",
        Fk::Str,
    ),
    (
        "iptablesFilterDenyAction",
        "IptablesFilterDenyAction",
        Fk::Str,
    ),
    ("logPrefix", "LogPrefix", Fk::Str),
    ("logActionRateLimit", "LogActionRateLimit", Fk::StrPtr),
    (
        "logActionRateLimitBurst",
        "LogActionRateLimitBurst",
        Fk::Int,
    ),
    ("logFilePath", "LogFilePath", Fk::Str),
    ("logSeverityFile", "LogSeverityFile", Fk::Str),
    ("logSeverityScreen", "LogSeverityScreen", Fk::Str),
    ("logSeveritySys", "LogSeveritySys", Fk::Str),
    ("logDebugFilenameRegex", "LogDebugFilenameRegex", Fk::Str),
    ("ipipEnabled", "IpInIpEnabled", Fk::Bool),
    ("ipipMTU", "IpInIpMtu", Fk::Int),
    ("vxlanEnabled", "VXLANEnabled", Fk::Bool),
    ("vxlanMTU", "VXLANMTU", Fk::Int),
    ("vxlanMTUV6", "VXLANMTUV6", Fk::Int),
    ("vxlanPort", "VXLANPort", Fk::Int),
    ("vxlanVNI", "VXLANVNI", Fk::Int),
    (
        "allowVXLANPacketsFromWorkloads",
        "AllowVXLANPacketsFromWorkloads",
        Fk::Bool,
    ),
    (
        "allowIPIPPacketsFromWorkloads",
        "AllowIPIPPacketsFromWorkloads",
        Fk::Bool,
    ),
    ("reportingInterval", "ReportingIntervalSecs", Fk::Secs),
    ("reportingTTL", "ReportingTTLSecs", Fk::Secs),
    (
        "endpointReportingEnabled",
        "EndpointReportingEnabled",
        Fk::Bool,
    ),
    (
        "endpointReportingDelay",
        "EndpointReportingDelaySecs",
        Fk::Secs,
    ),
    (
        "endpointStatusPathPrefix",
        "EndpointStatusPathPrefix",
        Fk::Str,
    ),
    ("iptablesMarkMask", "IptablesMarkMask", Fk::Int),
    (
        "disableConntrackInvalidCheck",
        "DisableConntrackInvalidCheck",
        Fk::Bool,
    ),
    ("healthEnabled", "HealthEnabled", Fk::Bool),
    ("healthHost", "HealthHost", Fk::StrPtr),
    ("healthPort", "HealthPort", Fk::Int),
    (
        "healthTimeoutOverrides",
        "HealthTimeoutOverrides",
        Fk::HealthTimeoutOverrides,
    ),
    (
        "prometheusMetricsEnabled",
        "PrometheusMetricsEnabled",
        Fk::Bool,
    ),
    ("prometheusMetricsHost", "PrometheusMetricsHost", Fk::Str),
    ("prometheusMetricsPort", "PrometheusMetricsPort", Fk::Int),
    (
        "prometheusGoMetricsEnabled",
        "PrometheusGoMetricsEnabled",
        Fk::Bool,
    ),
    (
        "prometheusProcessMetricsEnabled",
        "PrometheusProcessMetricsEnabled",
        Fk::Bool,
    ),
    (
        "prometheusWireGuardMetricsEnabled",
        "PrometheusWireGuardMetricsEnabled",
        Fk::Bool,
    ),
    (
        "prometheusMetricsCAFile",
        "PrometheusMetricsCAFile",
        Fk::StrPtr,
    ),
    (
        "prometheusMetricsCertFile",
        "PrometheusMetricsCertFile",
        Fk::StrPtr,
    ),
    (
        "prometheusMetricsKeyFile",
        "PrometheusMetricsKeyFile",
        Fk::StrPtr,
    ),
    (
        "prometheusMetricsClientAuth",
        "PrometheusMetricsClientAuth",
        Fk::StrPtr,
    ),
    (
        "failsafeInboundHostPorts",
        "FailsafeInboundHostPorts",
        Fk::ProtoPorts,
    ),
    (
        "failsafeOutboundHostPorts",
        "FailsafeOutboundHostPorts",
        Fk::ProtoPorts,
    ),
    ("kubeNodePortRanges", "KubeNodePortRanges", Fk::PortList),
    ("policySyncPathPrefix", "PolicySyncPathPrefix", Fk::Str),
    ("usageReportingEnabled", "UsageReportingEnabled", Fk::Bool),
    (
        "usageReportingInitialDelay",
        "UsageReportingInitialDelaySecs",
        Fk::Secs,
    ),
    (
        "usageReportingInterval",
        "UsageReportingIntervalSecs",
        Fk::Secs,
    ),
    ("natPortRange", "NATPortRange", Fk::StrPtr),
    ("natOutgoingAddress", "NATOutgoingAddress", Fk::Str),
    ("natOutgoingExclusions", "NATOutgoingExclusions", Fk::StrPtr),
    (
        "deviceRouteSourceAddress",
        "DeviceRouteSourceAddress",
        Fk::Str,
    ),
    (
        "deviceRouteSourceAddressIPv6",
        "DeviceRouteSourceAddressIPv6",
        Fk::Str,
    ),
    ("deviceRouteProtocol", "DeviceRouteProtocol", Fk::Int),
    ("removeExternalRoutes", "RemoveExternalRoutes", Fk::Bool),
    ("programClusterRoutes", "ProgramClusterRoutes", Fk::StrPtr),
    ("ipForwarding", "IPForwarding", Fk::Str),
    ("externalNodesList", "ExternalNodesCIDRList", Fk::List),
    ("debugMemoryProfilePath", "DebugMemoryProfilePath", Fk::Str),
    (
        "debugDisableLogDropping",
        "DebugDisableLogDropping",
        Fk::Bool,
    ),
    (
        "debugSimulateCalcGraphHangAfter",
        "DebugSimulateCalcGraphHangAfter",
        Fk::Secs,
    ),
    (
        "debugSimulateDataplaneHangAfter",
        "DebugSimulateDataplaneHangAfter",
        Fk::Secs,
    ),
    (
        "debugSimulateDataplaneApplyDelay",
        "DebugSimulateDataplaneApplyDelay",
        Fk::Secs,
    ),
    ("debugHost", "DebugHost", Fk::StrPtr),
    ("debugPort", "DebugPort", Fk::Int),
    (
        "iptablesNATOutgoingInterfaceFilter",
        "IptablesNATOutgoingInterfaceFilter",
        Fk::Str,
    ),
    (
        "sidecarAccelerationEnabled",
        "SidecarAccelerationEnabled",
        Fk::Bool,
    ),
    ("xdpEnabled", "XDPEnabled", Fk::Bool),
    ("genericXDPEnabled", "GenericXDPEnabled", Fk::Bool),
    ("nftablesMode", "NFTablesMode", Fk::StrPtr),
    (
        "nftablesRefreshInterval",
        "NftablesRefreshInterval",
        Fk::Secs,
    ),
    (
        "nftablesFilterAllowAction",
        "NftablesFilterAllowAction",
        Fk::Str,
    ),
    (
        "nftablesMangleAllowAction",
        "NftablesMangleAllowAction",
        Fk::Str,
    ),
    (
        "nftablesFilterDenyAction",
        "NftablesFilterDenyAction",
        Fk::Str,
    ),
    ("nftablesMarkMask", "NftablesMarkMask", Fk::Int),
    ("bpfEnabled", "BPFEnabled", Fk::Bool),
    ("bpfDisableUnprivileged", "BPFDisableUnprivileged", Fk::Bool),
    ("bpfJITHardening", "BPFJITHardening", Fk::StrPtr),
    ("bpfLogLevel", "BPFLogLevel", Fk::Str),
    ("bpfConntrackLogLevel", "BPFConntrackLogLevel", Fk::Str),
    ("bpfConntrackMode", "BPFConntrackCleanupMode", Fk::StrPtr),
    (
        "bpfConntrackTimeouts",
        "BPFConntrackTimeouts",
        Fk::BpfConntrackTimeouts,
    ),
    ("bpfLogFilters", "BPFLogFilters", Fk::Map),
    ("bpfCTLBLogFilter", "BPFCTLBLogFilter", Fk::Str),
    ("bpfDataIfacePattern", "BPFDataIfacePattern", Fk::Str),
    ("bpfL3IfacePattern", "BPFL3IfacePattern", Fk::Str),
    (
        "bpfConnectTimeLoadBalancingEnabled",
        "BPFConnectTimeLoadBalancingEnabled",
        Fk::Bool,
    ),
    (
        "bpfConnectTimeLoadBalancing",
        "BPFConnectTimeLoadBalancing",
        Fk::StrPtr,
    ),
    (
        "bpfHostNetworkedNATWithoutCTLB",
        "BPFHostNetworkedNATWithoutCTLB",
        Fk::StrPtr,
    ),
    ("bpfExternalServiceMode", "BPFExternalServiceMode", Fk::Str),
    ("bpfDSROptoutCIDRs", "BPFDSROptoutCIDRs", Fk::List),
    (
        "bpfExtToServiceConnmark",
        "BPFExtToServiceConnmark",
        Fk::Int,
    ),
    (
        "bpfKubeProxyIptablesCleanupEnabled",
        "BPFKubeProxyIptablesCleanupEnabled",
        Fk::Bool,
    ),
    (
        "bpfKubeProxyMinSyncPeriod",
        "BPFKubeProxyMinSyncPeriod",
        Fk::Secs,
    ),
    (
        "bpfKubeProxyHealthzPort",
        "BPFKubeProxyHealthzPort",
        Fk::Int,
    ),
    ("bpfPSNATPorts", "BPFPSNATPorts", Fk::StrPtr),
    ("bpfMapSizeNATFrontend", "BPFMapSizeNATFrontend", Fk::Int),
    ("bpfMapSizeNATBackend", "BPFMapSizeNATBackend", Fk::Int),
    ("bpfMapSizeNATAffinity", "BPFMapSizeNATAffinity", Fk::Int),
    ("bpfMapSizeRoute", "BPFMapSizeRoute", Fk::Int),
    ("bpfMapSizeConntrack", "BPFMapSizeConntrack", Fk::Int),
    (
        "bpfMapSizePerCpuConntrack",
        "BPFMapSizePerCPUConntrack",
        Fk::Int,
    ),
    (
        "bpfMapSizeConntrackScaling",
        "BPFMapSizeConntrackScaling",
        Fk::Str,
    ),
    (
        "bpfMapSizeConntrackCleanupQueue",
        "BPFMapSizeConntrackCleanupQueue",
        Fk::Int,
    ),
    ("bpfMapSizeIPSets", "BPFMapSizeIPSets", Fk::Int),
    ("bpfMapSizeIfState", "BPFMapSizeIfState", Fk::Int),
    ("bpfHostConntrackBypass", "BPFHostConntrackBypass", Fk::Bool),
    ("bpfEnforceRPF", "BPFEnforceRPF", Fk::Str),
    ("bpfPolicyDebugEnabled", "BPFPolicyDebugEnabled", Fk::Bool),
    (
        "bpfForceTrackPacketsFromIfaces",
        "BPFForceTrackPacketsFromIfaces",
        Fk::List,
    ),
    ("bpfDisableGROForIfaces", "BPFDisableGROForIfaces", Fk::Str),
    ("bpfExcludeCIDRsFromNAT", "BPFExcludeCIDRsFromNAT", Fk::List),
    ("bpfExportBufferSizeMB", "BPFExportBufferSizeMB", Fk::Int),
    ("istioAmbientMode", "IstioAmbientMode", Fk::StrPtr),
    ("istioDSCPMark", "IstioDSCPMark", Fk::StrPtr),
    ("cgroupV2Path", "CgroupV2Path", Fk::Str),
    (
        "flowLogsPolicyEvaluationMode",
        "FlowLogsPolicyEvaluationMode",
        Fk::StrPtr,
    ),
    ("bpfRedirectToPeer", "BPFRedirectToPeer", Fk::Str),
    ("bpfAttachType", "BPFAttachType", Fk::StrPtr),
    ("flowLogsFlushInterval", "FlowLogsFlushInterval", Fk::Secs),
    (
        "flowLogsCollectorDebugTrace",
        "FlowLogsCollectorDebugTrace",
        Fk::Bool,
    ),
    (
        "flowLogsGoldmaneServer",
        "FlowLogsGoldmaneServer",
        Fk::StrPtr,
    ),
    ("flowLogsLocalReporter", "FlowLogsLocalReporter", Fk::StrPtr),
    ("bpfProfiling", "BPFProfiling", Fk::Str),
    ("routeSource", "RouteSource", Fk::Str),
    ("routeTableRanges", "RouteTableRanges", Fk::RouteTableRanges),
    ("routeTableRange", "RouteTableRange", Fk::RouteTableRange),
    ("routeSyncDisabled", "RouteSyncDisabled", Fk::Bool),
    (
        "ipv4NormalRoutePriority",
        "IPv4NormalRoutePriority",
        Fk::Int,
    ),
    (
        "ipv4ElevatedRoutePriority",
        "IPv4ElevatedRoutePriority",
        Fk::Int,
    ),
    (
        "ipv6NormalRoutePriority",
        "IPv6NormalRoutePriority",
        Fk::Int,
    ),
    (
        "ipv6ElevatedRoutePriority",
        "IPv6ElevatedRoutePriority",
        Fk::Int,
    ),
    (
        "liveMigrationRouteConvergenceTime",
        "LiveMigrationRouteConvergenceTime",
        Fk::Secs,
    ),
    ("wireguardEnabled", "WireguardEnabled", Fk::Bool),
    ("wireguardEnabledV6", "WireguardEnabledV6", Fk::Bool),
    (
        "wireguardThreadingEnabled",
        "WireguardThreadingEnabled",
        Fk::Bool,
    ),
    ("wireguardListeningPort", "WireguardListeningPort", Fk::Int),
    (
        "wireguardListeningPortV6",
        "WireguardListeningPortV6",
        Fk::Int,
    ),
    (
        "wireguardRoutingRulePriority",
        "WireguardRoutingRulePriority",
        Fk::Int,
    ),
    ("wireguardInterfaceName", "WireguardInterfaceName", Fk::Str),
    (
        "wireguardInterfaceNameV6",
        "WireguardInterfaceNameV6",
        Fk::Str,
    ),
    ("wireguardMTU", "WireguardMTU", Fk::Int),
    ("wireguardMTUV6", "WireguardMTUV6", Fk::Int),
    (
        "wireguardHostEncryptionEnabled",
        "WireguardHostEncryptionEnabled",
        Fk::Bool,
    ),
    (
        "wireguardKeepAlive",
        "WireguardPersistentKeepAlive",
        Fk::Secs,
    ),
    ("awsSrcDstCheck", "AWSSrcDstCheck", Fk::StrPtr),
    ("serviceLoopPrevention", "ServiceLoopPrevention", Fk::Str),
    ("workloadSourceSpoofing", "WorkloadSourceSpoofing", Fk::Str),
    ("mtuIfacePattern", "MTUIfacePattern", Fk::Str),
    ("floatingIPs", "FloatingIPs", Fk::StrPtr),
    (
        "windowsManageFirewallRules",
        "WindowsManageFirewallRules",
        Fk::StrPtr,
    ),
    ("goGCThreshold", "GoGCThreshold", Fk::Int),
    ("goMemoryLimitMB", "GoMemoryLimitMB", Fk::Int),
    ("goMaxProcs", "GoMaxProcs", Fk::Int),
    ("requireMTUFile", "RequireMTUFile", Fk::Bool),
    (
        "bpfMaglevMaxEndpointsPerService",
        "BPFMaglevMaxEndpointsPerService",
        Fk::Int,
    ),
    ("bpfMaglevMaxServices", "BPFMaglevMaxServices", Fk::Int),
];

/// Go field names of `BPFConntrackTimeouts`, in declaration order, by JSON name.
const BPF_CONNTRACK_TIMEOUT_FIELDS: &[(&str, &str)] = &[
    ("creationGracePeriod", "CreationGracePeriod"),
    ("tcpSynSent", "TCPSynSent"),
    ("tcpEstablished", "TCPEstablished"),
    ("tcpFinsSeen", "TCPFinsSeen"),
    ("tcpResetSeen", "TCPResetSeen"),
    ("udpTimeout", "UDPTimeout"),
    ("genericTimeout", "GenericTimeout"),
    ("icmpTimeout", "ICMPTimeout"),
];

const NANOS_PER_SECOND: u128 = 1_000_000_000;
const NANOS_PER_MILLI: u128 = 1_000_000;

/// Go's `time.ParseDuration`, in nanoseconds (sign separate).
pub(super) fn parse_go_duration(input: &str) -> Option<(bool, u128)> {
    let mut s = input;
    let mut neg = false;
    if let Some(c) = s.chars().next() {
        if c == '-' || c == '+' {
            neg = c == '-';
            s = &s[1..];
        }
    }
    if s == "0" {
        return Some((neg, 0));
    }
    if s.is_empty() {
        return None;
    }
    let mut total: u128 = 0;
    while !s.is_empty() {
        let b = s.as_bytes()[0];
        if !(b == b'.' || b.is_ascii_digit()) {
            return None;
        }
        let int_len = s.bytes().take_while(u8::is_ascii_digit).count();
        let v: u128 = if int_len == 0 {
            0
        } else {
            s[..int_len].parse().ok()?
        };
        s = &s[int_len..];
        let (mut frac, mut scale, mut frac_len) = (0u128, 1f64, 0usize);
        if let Some(rest) = s.strip_prefix('.') {
            s = rest;
            frac_len = s.bytes().take_while(u8::is_ascii_digit).count();
            for d in s[..frac_len].bytes() {
                if frac < u128::from(u64::MAX) / 10 {
                    frac = frac * 10 + u128::from(d - b'0');
                    scale *= 10.0;
                }
            }
            s = &s[frac_len..];
        }
        if int_len == 0 && frac_len == 0 {
            return None;
        }
        let unit_len = s
            .bytes()
            .position(|c| c == b'.' || c.is_ascii_digit())
            .unwrap_or(s.len());
        let unit: u128 = match &s[..unit_len] {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => NANOS_PER_MILLI,
            "s" => NANOS_PER_SECOND,
            "m" => 60 * NANOS_PER_SECOND,
            "h" => 3600 * NANOS_PER_SECOND,
            _ => return None,
        };
        s = &s[unit_len..];
        let mut part = v.checked_mul(unit)?;
        if frac > 0 {
            part += (frac as f64 * (unit as f64 / scale)) as u128;
        }
        total = total.checked_add(part)?;
        if total > 1 << 63 {
            return None;
        }
    }
    if !neg && total > (1 << 63) - 1 {
        return None;
    }
    Some((neg, total))
}

/// Go's `Duration.String()` (`1m30s`, `1.5s`, `100ms`, `0s`).
pub(super) fn go_duration_string(neg: bool, nanos: u128) -> String {
    fn frac(v: u128, prec: u32) -> (String, u128) {
        // The `prec` low decimal digits of v as ".ddd" without trailing zeros.
        let div = 10u128.pow(prec);
        let f = v % div;
        let mut s = String::new();
        if f != 0 {
            let digits = format!("{f:0width$}", width = prec as usize);
            s = format!(".{}", digits.trim_end_matches('0'));
        }
        (s, v / div)
    }
    if nanos == 0 {
        return "0s".to_string();
    }
    let sign = if neg { "-" } else { "" };
    if nanos < NANOS_PER_SECOND {
        let (prec, unit) = if nanos < 1_000 {
            (0, "ns")
        } else if nanos < NANOS_PER_MILLI {
            (3, "\u{b5}s")
        } else {
            (6, "ms")
        };
        let (f, int) = frac(nanos, prec);
        return format!("{sign}{int}{f}{unit}");
    }
    let (f, secs) = frac(nanos, 9);
    let (s, mins) = (secs % 60, secs / 60);
    let mut out = format!("{}{f}s", s);
    if mins > 0 {
        let (m, hours) = (mins % 60, mins / 60);
        out = format!("{m}m{out}");
        if hours > 0 {
            out = format!("{hours}h{out}");
        }
    }
    format!("{sign}{out}")
}

/// Go's `%v` of a float64 (`strconv.FormatFloat(f, 'g', -1, 64)`): the shortest
/// representation, in exponent form when the decimal exponent is below -4 or at least 6
/// (`%v` decides with precision 6: `1e+06`, `1e-05`).
fn go_float_v(f: f64) -> String {
    if f == 0.0 {
        return if f.is_sign_negative() { "-0" } else { "0" }.to_string();
    }
    if f.is_nan() {
        return "NaN".to_string();
    }
    if f.is_infinite() {
        return if f > 0.0 { "+Inf" } else { "-Inf" }.to_string();
    }
    let e = format!("{:e}", f.abs());
    let (mant, exp) = e.split_once('e').unwrap_or((e.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mant.chars().filter(char::is_ascii_digit).collect();
    let sign = if f < 0.0 { "-" } else { "" };
    if !(-4..6).contains(&exp) {
        let (first, rest) = digits.split_at(1);
        let dot = if rest.is_empty() { "" } else { "." };
        let esign = if exp < 0 { '-' } else { '+' };
        return format!("{sign}{first}{dot}{rest}e{esign}{:02}", exp.abs());
    }
    if exp < 0 {
        let zeros = "0".repeat((-exp - 1) as usize);
        return format!("{sign}0.{zeros}{digits}");
    }
    let int_len = exp as usize + 1;
    if digits.len() <= int_len {
        format!("{sign}{digits}{}", "0".repeat(int_len - digits.len()))
    } else {
        format!("{sign}{}.{}", &digits[..int_len], &digits[int_len..])
    }
}

/// A duration (JSON string) as seconds or milliseconds, formatted as Go's `%v` does.
fn duration_config(v: &Value, millis: bool, field: &str) -> Result<String, TranslateError> {
    let s = v
        .as_str()
        .ok_or_else(|| invalid("spec", format!("{field}: not a duration string")))?;
    let (neg, nanos) = parse_go_duration(s)
        .ok_or_else(|| invalid("spec", format!("{field}: bad duration {s:?}")))?;
    let unit = if millis {
        NANOS_PER_MILLI
    } else {
        NANOS_PER_SECOND
    };
    let value = (nanos / unit) as f64 + (nanos % unit) as f64 / unit as f64;
    Ok(go_float_v(if neg { -value } else { value }))
}

/// A scalar printed as Go's `%v` would print the field's value.
fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The v1 config value of one spec field, or `None` when the field counts as unset.
fn felix_config_value(kind: Fk, v: &Value, field: &str) -> Result<Option<String>, TranslateError> {
    let bad = |what: &str| invalid("spec", format!("{field}: {what}"));
    if v.is_null() {
        return Ok(None);
    }
    let list = |v: &Value| -> Result<Vec<Value>, TranslateError> {
        v.as_array().cloned().ok_or_else(|| bad("not a list"))
    };
    Ok(match kind {
        Fk::Skip => None,
        Fk::Str => scalar_text(v).filter(|s| !s.is_empty()),
        Fk::StrPtr | Fk::Bool | Fk::Int => Some(scalar_text(v).ok_or_else(|| bad("not a scalar"))?),
        Fk::Secs => Some(duration_config(v, false, field)?),
        Fk::Millis => Some(duration_config(v, true, field)?),
        Fk::List => Some(
            list(v)?
                .iter()
                .map(|x| scalar_text(x).ok_or_else(|| bad("not a list of strings")))
                .collect::<Result<Vec<_>, _>>()?
                .join(","),
        ),
        Fk::Map => {
            let m = v.as_object().ok_or_else(|| bad("not a map"))?;
            // Go iterates the map in random order; sorted here.
            let mut s = String::new();
            for (k, x) in m {
                s.push_str(&format!("{k}={},", scalar_text(x).unwrap_or_default()));
            }
            Some(s)
        }
        Fk::PortList => {
            let ports: Vec<String> = list(v)?.iter().filter_map(scalar_text).collect();
            Some(format!("[{}]", ports.join(" ")))
        }
        Fk::ProtoPorts => {
            let pps = list(v)?;
            if pps.is_empty() {
                return Ok(Some("none".to_string()));
            }
            let parts: Vec<String> = pps
                .iter()
                .map(|pp| {
                    let proto = str_at(pp, "/protocol").unwrap_or("").to_lowercase();
                    let port = pp.get("port").and_then(Value::as_u64).unwrap_or(0);
                    match nonempty_at(pp, "/net") {
                        Some(net) => {
                            let v6 = parse_cidr_or_ip(net).is_some_and(|(ip, _)| ip.is_ipv6());
                            if v6 {
                                format!("{proto}:[{net}]:{port}")
                            } else {
                                format!("{proto}:{net}:{port}")
                            }
                        }
                        None => format!("{proto}:{port}"),
                    }
                })
                .collect();
            Some(parts.join(","))
        }
        Fk::RouteTableRange => {
            let min = v.get("min").and_then(Value::as_i64).unwrap_or(0);
            let max = v.get("max").and_then(Value::as_i64).unwrap_or(0);
            Some(format!("{min}-{max}"))
        }
        Fk::RouteTableRanges => Some(
            list(v)?
                .iter()
                .map(|r| {
                    let min = r.get("min").and_then(Value::as_i64).unwrap_or(0);
                    let max = r.get("max").and_then(Value::as_i64).unwrap_or(0);
                    format!("{min}-{max}")
                })
                .collect::<Vec<_>>()
                .join(","),
        ),
        Fk::HealthTimeoutOverrides => {
            let htos = list(v)?;
            if htos.is_empty() {
                return Ok(None);
            }
            let mut parts = Vec::new();
            for h in &htos {
                let name = str_at(h, "/name").unwrap_or("");
                let t = str_at(h, "/timeout").unwrap_or("0s");
                let (neg, nanos) =
                    parse_go_duration(t).ok_or_else(|| bad(&format!("bad duration {t:?}")))?;
                parts.push(format!("{name}={}", go_duration_string(neg, nanos)));
            }
            Some(parts.join(","))
        }
        Fk::BpfConntrackTimeouts => {
            let parts: Vec<String> = BPF_CONNTRACK_TIMEOUT_FIELDS
                .iter()
                .filter_map(|(json, go)| {
                    let x = v.get(*json).filter(|x| !x.is_null())?;
                    Some(format!("{go}={}", scalar_text(x).unwrap_or_default()))
                })
                .collect();
            Some(parts.join(","))
        }
    })
}

/// Config name and value for a spec field missing from [`FELIX_FIELDS`].
fn unknown_felix_field(field: &str, v: &Value) -> Option<(String, String)> {
    let mut chars = field.chars();
    let first = chars.next()?;
    let config = format!("{}{}", first.to_ascii_uppercase(), chars.as_str());
    let value = match v {
        Value::Null => return None,
        Value::String(s) if s.is_empty() => return None,
        Value::Array(a) if a.iter().all(Value::is_string) => a
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(","),
        Value::Array(_) | Value::Object(_) => v.to_string(),
        _ => scalar_text(v)?,
    };
    Some((config, value))
}

const CONFIG_ANNOTATION_PREFIX: &str = "config.projectcalico.org/";

/// Translates a FelixConfiguration (§3.5). The name `default` gives GlobalConfig keys
/// `/calico/v1/config/<Name>`, the name `node.<n>` HostConfig keys
/// `/calico/v1/host/<n>/config/<Name>`: one raw-text key per spec field that is set, named after
/// the Go field (its `confignamev1` tag where it has one, e.g. `ipipEnabled` → `IpInIpEnabled`,
/// `reportingInterval` → `ReportingIntervalSecs`), valued as Calico formats it: strings as they
/// are, bools and ints as Go prints them, durations in seconds (`"90s"` → `90`, milliseconds
/// for the `...Millis` fields), lists comma-joined, maps as `k=v,` pairs, and the special forms
/// of the failsafe ports (`tcp:22,udp:[fd00::/8]:53`, `none` when empty), route table ranges
/// (`1-250`) and health-timeout overrides (`name=1m30s`). Annotations
/// `config.projectcalico.org/<Name>` add keys or override fields. Any other name
/// (selector-scoped config, v3.32+) is passed through as the raw v3
/// `/calico/resources/v3/projectcalico.org/felixconfigurations/<name>`.
pub fn translate_felix_configuration(obj: &Value) -> Result<Vec<Kv>, TranslateError> {
    let meta = CalicoMeta::of(obj, "FelixConfiguration")?;
    let Some(prefix) = v1_config_prefix(&meta.key_name) else {
        return Ok(vec![raw_v3_resource(
            "FelixConfiguration",
            "felixconfigurations",
            obj,
            &go_shapes::FELIX_CONFIGURATION,
        )?]);
    };
    let mut config: BTreeMap<String, String> = BTreeMap::new();
    if let Some(spec) = obj.get("spec").and_then(Value::as_object) {
        for (field, v) in spec {
            match FELIX_FIELDS.iter().find(|(json, _, _)| json == field) {
                Some((_, name, kind)) => {
                    if let Some(value) = felix_config_value(*kind, v, field)? {
                        config.insert((*name).to_string(), value);
                    }
                }
                None => {
                    if let Some((name, value)) = unknown_felix_field(field, v) {
                        config.insert(name, value);
                    }
                }
            }
        }
    }
    for (k, v) in &meta.annotations {
        if let Some(name) = k.strip_prefix(CONFIG_ANNOTATION_PREFIX) {
            config.insert(name.to_string(), v.clone());
        }
    }
    Ok(config
        .into_iter()
        .map(|(name, value)| (format!("{prefix}{name}"), raw(&value)))
        .collect())
}

// ---------------------------------------------------------------------------------------------
// Network sets
// ---------------------------------------------------------------------------------------------

/// v1 `NetworkSet` (`model/networkset.go`).
#[derive(Serialize)]
struct NetworkSetValue {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    nets: Vec<String>,
    labels: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    profile_ids: Vec<String>,
}

/// `spec.nets` as networks; entries that do not parse are skipped, as in Calico.
fn netset_nets(obj: &Value) -> Result<Vec<String>, TranslateError> {
    Ok(strings_at(obj, "/spec/nets", "spec.nets")?
        .iter()
        .filter_map(|n| parse_cidr_or_ip(n))
        .map(|(_, n)| n.to_string())
        .collect())
}

/// Labels as Go marshals a possibly-nil map: `null` when there are none.
fn labels_or_null(labels: BTreeMap<String, String>) -> Option<BTreeMap<String, String>> {
    (!labels.is_empty()).then_some(labels)
}

/// Translates a GlobalNetworkSet into `/calico/v1/netset/<name>` with `nets` (as networks),
/// `labels` (null when none) and no `profile_ids` (Calico sets none for global sets).
pub fn translate_global_network_set(obj: &Value) -> Result<Vec<Kv>, TranslateError> {
    let meta = CalicoMeta::of(obj, "GlobalNetworkSet")?;
    let v = NetworkSetValue {
        nets: netset_nets(obj)?,
        labels: labels_or_null(meta.labels),
        profile_ids: Vec::new(),
    };
    Ok(vec![(
        format!("/calico/v1/netset/{}", escape(&meta.name)),
        to_bytes(&v),
    )])
}

/// Translates a NetworkSet into `/calico/v1/netset/<ns>%2f<name>` with `nets`, `labels` plus
/// `projectcalico.org/namespace=<ns>`, and `profile_ids` `["kns.<ns>"]`.
pub fn translate_network_set(obj: &Value) -> Result<Vec<Kv>, TranslateError> {
    let meta = CalicoMeta::of(obj, "NetworkSet")?;
    if meta.namespace.is_empty() {
        return Err(TranslateError::Missing("metadata.namespace"));
    }
    let mut labels = meta.labels;
    labels.insert(LABEL_NAMESPACE.to_string(), meta.namespace.clone());
    let v = NetworkSetValue {
        nets: netset_nets(obj)?,
        labels: Some(labels),
        profile_ids: vec![format!("kns.{}", meta.namespace)],
    };
    Ok(vec![(
        format!(
            "/calico/v1/netset/{}",
            escape(&format!("{}/{}", meta.namespace, meta.key_name))
        ),
        to_bytes(&v),
    )])
}

// ---------------------------------------------------------------------------------------------
// Tier
// ---------------------------------------------------------------------------------------------

#[derive(Serialize)]
struct TierValue {
    #[serde(skip_serializing_if = "Option::is_none")]
    order: Option<GoFloat>,
    #[serde(rename = "defaultAction")]
    default_action: &'static str,
}

/// Translates a Tier into `/calico/v1/policy/tier/<name>/metadata` with `order` and
/// `defaultAction` (`Pass` when the spec says Pass, `Deny` otherwise). When `spec.order` is
/// unset the built-in tiers get their built-in order (`kube-admin` 1000, `default` 1e6,
/// `kube-baseline` 1e7) and other tiers none (Felix then orders them last).
pub fn translate_tier(obj: &Value) -> Result<Vec<Kv>, TranslateError> {
    let meta = CalicoMeta::of(obj, "Tier")?;
    let order = f64_at(obj, "/spec/order", "spec.order")?.or(match meta.name.as_str() {
        "kube-admin" => Some(1_000.0),
        "default" => Some(1_000_000.0),
        "kube-baseline" => Some(10_000_000.0),
        _ => None,
    });
    let v = TierValue {
        order: order.map(GoFloat),
        default_action: if str_at(obj, "/spec/defaultAction") == Some("Pass") {
            "Pass"
        } else {
            "Deny"
        },
    };
    Ok(vec![(
        format!("/calico/v1/policy/tier/{}/metadata", meta.key_name),
        to_bytes(&v),
    )])
}

// ---------------------------------------------------------------------------------------------
// HostEndpoint
// ---------------------------------------------------------------------------------------------

/// v1 `HostEndpoint` (`model/hostendpoint.go`).
#[derive(Serialize)]
struct HostEndpointValue {
    #[serde(skip_serializing_if = "String::is_empty")]
    name: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    expected_ipv4_addrs: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    expected_ipv6_addrs: Vec<String>,
    labels: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    profile_ids: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ports: Vec<EndpointPort>,
    #[serde(rename = "qosControls", skip_serializing_if = "Option::is_none")]
    qos_controls: Option<QosControls>,
}

#[derive(Serialize)]
struct QosControls {
    dscp: Value,
}

const DSCP_NAMES: &[&str] = &[
    "DF", "EF", "AF11", "AF12", "AF13", "AF21", "AF22", "AF23", "AF31", "AF32", "AF33", "AF41",
    "AF42", "AF43", "CS0", "CS1", "CS2", "CS3", "CS4", "CS5", "CS6",
];

/// The DSCP annotation as `numorstring.DSCP` validates and marshals it.
pub(super) fn dscp(s: &str) -> Option<Value> {
    if let Ok(n) = s.parse::<u8>() {
        return (n <= 63).then(|| Value::from(n));
    }
    // Valid when a known name, ignoring case and surrounding space; sent in its canonical
    // spelling when it matches one exactly but for case, otherwise as given.
    DSCP_NAMES
        .iter()
        .find(|n| n.eq_ignore_ascii_case(s.trim()))?;
    let canonical = DSCP_NAMES.iter().find(|n| n.eq_ignore_ascii_case(s));
    Some(Value::String(canonical.map_or(s, |n| *n).to_string()))
}

/// Translates a HostEndpoint into `/calico/v1/host/<spec.node>/endpoint/<name>` with `name`
/// (the interface), `expected_ipv4_addrs` / `expected_ipv6_addrs` (from `expectedIPs`),
/// `labels` (null when none), `profile_ids`, `ports` (protocols lower case) and `qosControls`
/// (only the DSCP of the `qos.projectcalico.org/dscp` annotation). Several HostEndpoints for one
/// node and name are resolved by the driver (`shared_keys`).
pub fn translate_host_endpoint(obj: &Value) -> Result<Vec<Kv>, TranslateError> {
    let meta = CalicoMeta::of(obj, "HostEndpoint")?;
    let node = nonempty_at(obj, "/spec/node").ok_or(TranslateError::Missing("spec.node"))?;
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for ip in strings_at(obj, "/spec/expectedIPs", "spec.expectedIPs")? {
        match parse_ip(&ip) {
            Some(a) if a.is_ipv4() => v4.push(a.to_string()),
            Some(a) => v6.push(a.to_string()),
            None => {}
        }
    }
    let mut ports = Vec::new();
    for p in array_at(obj, "/spec/ports", "spec.ports")? {
        let protocol = match p.get("protocol") {
            Some(Value::String(s)) => match s.parse::<u8>() {
                Ok(n) => Value::from(n),
                Err(_) => Value::String(s.to_lowercase()),
            },
            Some(Value::Number(n)) => Value::Number(n.clone()),
            _ => Value::String(String::new()),
        };
        let port = p
            .get("port")
            .and_then(Value::as_u64)
            .and_then(|n| u16::try_from(n).ok())
            .ok_or_else(|| invalid("spec.ports", "bad port"))?;
        ports.push(EndpointPort {
            name: str_at(p, "/name").unwrap_or("").to_string(),
            protocol,
            port,
        });
    }
    let qos_controls = meta
        .annotations
        .get("qos.projectcalico.org/dscp")
        .and_then(|s| dscp(s))
        .map(|dscp| QosControls { dscp });
    let v = HostEndpointValue {
        name: str_at(obj, "/spec/interfaceName").unwrap_or("").to_string(),
        expected_ipv4_addrs: v4,
        expected_ipv6_addrs: v6,
        labels: labels_or_null(meta.labels.clone()),
        profile_ids: strings_at(obj, "/spec/profiles", "spec.profiles")?,
        ports,
        qos_controls,
    };
    Ok(vec![(
        format!("/calico/v1/host/{node}/endpoint/{}", escape(&meta.name)),
        to_bytes(&v),
    )])
}

// ---------------------------------------------------------------------------------------------
// IP pools and IPAM
// ---------------------------------------------------------------------------------------------

/// A CIDR as it appears in a key: the masked network with its `/` replaced by `-`.
fn cidr_segment(n: IpNet) -> String {
    n.to_string().replacen('/', "-", 1)
}

fn ip_version(n: IpNet) -> u8 {
    if n.is_v4() {
        4
    } else {
        6
    }
}

fn strict_cidr(obj: &Value, ptr: &str, field: &'static str) -> Result<IpNet, TranslateError> {
    let s = str_at(obj, ptr).ok_or(TranslateError::Missing(field))?;
    parse_cidr(s)
        .map(|(_, n)| n)
        .ok_or_else(|| invalid(field, format!("bad CIDR {s:?}")))
}

/// v1 `IPPool` (`model/ippool.go`).
#[derive(Serialize)]
struct IpPoolValue {
    cidr: String,
    ipip: &'static str,
    ipip_mode: &'static str,
    vxlan_mode: &'static str,
    masquerade: bool,
    ipam: bool,
    disabled: bool,
    #[serde(rename = "disableBGPExport")]
    disable_bgp_export: bool,
    assignment_mode: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    allowed_uses: Vec<String>,
}

fn encap_mode(mode: Option<&str>) -> &'static str {
    match mode {
        Some("Always") => "always",
        Some("CrossSubnet") => "cross-subnet",
        _ => "",
    }
}

/// Translates an IPPool into `/calico/v1/ipam/v4/pool/<cidr>` (or `v6`; the `/` of the CIDR
/// as `-`) with the value of `IPPoolV3ToV1`: `cidr`, `ipip` (`tunl0` when IPIP is on),
/// `ipip_mode` / `vxlan_mode` (`always`, `cross-subnet` or `""`), `masquerade` (natOutgoing),
/// `ipam` (not disabled), `disabled`, `disableBGPExport`, `assignment_mode` (default
/// `Automatic`) and `allowed_uses` when set. Two pools of one CIDR are resolved by the driver
/// (`shared_keys`).
pub fn translate_ip_pool(obj: &Value) -> Result<Vec<Kv>, TranslateError> {
    CalicoMeta::of(obj, "IPPool")?;
    let cidr = strict_cidr(obj, "/spec/cidr", "spec.cidr")?;
    let ipip_mode = encap_mode(str_at(obj, "/spec/ipipMode"));
    let disabled = obj
        .pointer("/spec/disabled")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let v = IpPoolValue {
        cidr: cidr.to_string(),
        ipip: if ipip_mode.is_empty() { "" } else { "tunl0" },
        ipip_mode,
        vxlan_mode: encap_mode(str_at(obj, "/spec/vxlanMode")),
        masquerade: obj
            .pointer("/spec/natOutgoing")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        ipam: !disabled,
        disabled,
        disable_bgp_export: obj
            .pointer("/spec/disableBGPExport")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        assignment_mode: nonempty_at(obj, "/spec/assignmentMode")
            .unwrap_or("Automatic")
            .to_string(),
        allowed_uses: strings_at(obj, "/spec/allowedUses", "spec.allowedUses")?,
    };
    Ok(vec![(
        format!(
            "/calico/v1/ipam/v{}/pool/{}",
            ip_version(cidr),
            cidr_segment(cidr)
        ),
        to_bytes(&v),
    )])
}

/// `AllocationAttribute` (`model/block.go`).
#[derive(Serialize)]
struct AllocationAttribute {
    #[serde(skip_serializing_if = "Option::is_none")]
    handle_id: Option<String>,
    #[serde(rename = "secondary", skip_serializing_if = "BTreeMap::is_empty")]
    active_owner_attrs: BTreeMap<String, String>,
    #[serde(
        rename = "alternateOwnerAttrs",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    alternate_owner_attrs: BTreeMap<String, String>,
}

/// `AllocationBlock` (`model/block.go`), fields in Go's order.
#[derive(Serialize)]
struct AllocationBlock {
    cidr: String,
    affinity: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    affinity_claim_time: Option<Value>,
    allocations: Value,
    unallocated: Value,
    attributes: Vec<AllocationAttribute>,
    #[serde(rename = "sequenceNumber")]
    sequence_number: u64,
    #[serde(rename = "sequenceNumberForAllocation")]
    sequence_number_for_allocation: Value,
    deleted: bool,
}

/// A list (or `null` when absent) passed through.
fn list_or_null(obj: &Value, ptr: &str, field: &'static str) -> Result<Value, TranslateError> {
    match obj.pointer(ptr) {
        None | Some(Value::Null) => Ok(Value::Null),
        Some(v @ Value::Array(_)) => Ok(v.clone()),
        Some(_) => Err(invalid(field, "not a list")),
    }
}

/// Translates an IPAMBlock into `/calico/ipam/v2/assignment/ipv4/block/<cidr>` (or `ipv6`)
/// whose value is the `AllocationBlock` built from the spec as `IPAMBlockV3toV1` builds it:
/// `cidr`, `affinity`, `affinity_claim_time` (when set), `allocations`, `unallocated`,
/// `attributes` (`handle_id`, `secondary`, `alternateOwnerAttrs`), `sequenceNumber`,
/// `sequenceNumberForAllocation` and `deleted`.
pub fn translate_ipam_block(obj: &Value) -> Result<Vec<Kv>, TranslateError> {
    CalicoMeta::of(obj, "IPAMBlock")?;
    let cidr = strict_cidr(obj, "/spec/cidr", "spec.cidr")?;
    let mut attributes = Vec::new();
    for a in array_at(obj, "/spec/attributes", "spec.attributes")? {
        attributes.push(AllocationAttribute {
            handle_id: str_at(a, "/handle_id").map(str::to_string),
            active_owner_attrs: string_map_at(a, "/secondary", "spec.attributes.secondary")?
                .unwrap_or_default(),
            alternate_owner_attrs: string_map_at(
                a,
                "/alternateOwnerAttrs",
                "spec.attributes.alternateOwnerAttrs",
            )?
            .unwrap_or_default(),
        });
    }
    let seq_for_alloc = match obj.pointer("/spec/sequenceNumberForAllocation") {
        None | Some(Value::Null) => Value::Null,
        Some(v @ Value::Object(_)) => v.clone(),
        Some(_) => return Err(invalid("spec.sequenceNumberForAllocation", "not a map")),
    };
    let v = AllocationBlock {
        cidr: cidr.to_string(),
        affinity: str_at(obj, "/spec/affinity").map(str::to_string),
        affinity_claim_time: obj
            .pointer("/spec/affinityClaimTime")
            .filter(|v| !v.is_null())
            .cloned(),
        allocations: list_or_null(obj, "/spec/allocations", "spec.allocations")?,
        unallocated: list_or_null(obj, "/spec/unallocated", "spec.unallocated")?,
        attributes,
        sequence_number: obj
            .pointer("/spec/sequenceNumber")
            .and_then(Value::as_u64)
            .unwrap_or(0),
        sequence_number_for_allocation: seq_for_alloc,
        deleted: obj
            .pointer("/spec/deleted")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    };
    Ok(vec![(
        format!(
            "/calico/ipam/v2/assignment/ipv{}/block/{}",
            ip_version(cidr),
            cidr_segment(cidr)
        ),
        to_bytes(&v),
    )])
}

#[derive(Serialize)]
struct BlockAffinityValue {
    state: String,
    deleted: bool,
}

/// Go's `strconv.ParseBool`.
fn go_parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Translates a BlockAffinity (for the bgp syncer only) into
/// `/calico/ipam/v2/<type>/<spec.node>/ipv4/block/<cidr>` (`<type>` is `spec.type`, `host` when
/// unset; `ipv6` for IPv6 blocks) with value `{"state":..,"deleted":..}`. `spec.deleted` may be
/// a boolean (v3 CRDs) or a string (`crd.projectcalico.org/v1`).
pub fn translate_block_affinity(obj: &Value) -> Result<Vec<Kv>, TranslateError> {
    CalicoMeta::of(obj, "BlockAffinity")?;
    let cidr = strict_cidr(obj, "/spec/cidr", "spec.cidr")?;
    let node = nonempty_at(obj, "/spec/node").ok_or(TranslateError::Missing("spec.node"))?;
    let affinity_type = nonempty_at(obj, "/spec/type").unwrap_or("host");
    let deleted = match obj.pointer("/spec/deleted") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) if s.is_empty() => false,
        Some(Value::String(s)) => go_parse_bool(s)
            .ok_or_else(|| invalid("spec.deleted", format!("not a boolean: {s:?}")))?,
        Some(_) => return Err(invalid("spec.deleted", "not a boolean")),
    };
    let v = BlockAffinityValue {
        state: str_at(obj, "/spec/state").unwrap_or("").to_string(),
        deleted,
    };
    Ok(vec![(
        format!(
            "/calico/ipam/v2/{affinity_type}/{node}/ipv{}/block/{}",
            ip_version(cidr),
            cidr_segment(cidr)
        ),
        to_bytes(&v),
    )])
}

// ---------------------------------------------------------------------------------------------
// Raw v3 kinds
// ---------------------------------------------------------------------------------------------

/// Translates a BGPConfiguration into the raw v3
/// `/calico/resources/v3/projectcalico.org/bgpconfigurations/<name>`: kind, apiVersion
/// `projectcalico.org/v3`, the normalized metadata (see `CalicoMeta`: resourceVersion,
/// managedFields, generation and other bookkeeping removed) and the spec.
pub fn translate_bgp_configuration(obj: &Value) -> Result<Vec<Kv>, TranslateError> {
    Ok(vec![raw_v3_resource(
        "BGPConfiguration",
        "bgpconfigurations",
        obj,
        &go_shapes::BGP_CONFIGURATION,
    )?])
}

/// Translates a BGPPeer into the raw v3 `/calico/resources/v3/projectcalico.org/bgppeers/<name>`
/// (as [`translate_bgp_configuration`]).
pub fn translate_bgp_peer(obj: &Value) -> Result<Vec<Kv>, TranslateError> {
    Ok(vec![raw_v3_resource(
        "BGPPeer",
        "bgppeers",
        obj,
        &go_shapes::BGP_PEER,
    )?])
}

/// Translates a BGPFilter into the raw v3 `/calico/resources/v3/projectcalico.org/bgpfilters/<name>`
/// (the bgp syncer's; as [`translate_bgp_configuration`]).
pub fn translate_bgp_filter(obj: &Value) -> Result<Vec<Kv>, TranslateError> {
    Ok(vec![raw_v3_resource(
        "BGPFilter",
        "bgpfilters",
        obj,
        &go_shapes::BGP_FILTER,
    )?])
}

/// Translates a CalicoNodeStatus into the raw v3
/// `/calico/resources/v3/projectcalico.org/caliconodestatuses/<name>` (the node-status syncer's
/// only kind; as [`translate_bgp_configuration`]).
pub fn translate_calico_node_status(obj: &Value) -> Result<Vec<Kv>, TranslateError> {
    Ok(vec![raw_v3_resource(
        "CalicoNodeStatus",
        "caliconodestatuses",
        obj,
        &go_shapes::CALICO_NODE_STATUS,
    )?])
}

#[cfg(test)]
mod tests {
    use super::super::core::tests::{fixture, pairs, text, translate};
    use super::*;

    #[test]
    fn go_number_and_duration_formats() {
        assert_eq!(go_float_v(90.0), "90");
        assert_eq!(go_float_v(0.5), "0.5");
        assert_eq!(go_float_v(10.5), "10.5");
        assert_eq!(go_float_v(123456.0), "123456");
        assert_eq!(go_float_v(1e6), "1e+06");
        assert_eq!(go_float_v(1234567.0), "1.234567e+06");
        assert_eq!(go_float_v(0.0001), "0.0001");
        assert_eq!(go_float_v(0.00001), "1e-05");
        assert_eq!(go_float_v(-2.5), "-2.5");
        assert_eq!(go_float_v(0.0), "0");
        let d = |s: &str| parse_go_duration(s).map(|(n, v)| go_duration_string(n, v));
        assert_eq!(d("90s").as_deref(), Some("1m30s"));
        assert_eq!(d("1500ms").as_deref(), Some("1.5s"));
        assert_eq!(d("1h").as_deref(), Some("1h0m0s"));
        assert_eq!(d("100ms").as_deref(), Some("100ms"));
        assert_eq!(d("1.5us").as_deref(), Some("1.5\u{b5}s"));
        assert_eq!(d("0").as_deref(), Some("0s"));
        assert_eq!(d("-2m3.5s").as_deref(), Some("-2m3.5s"));
        assert_eq!(d("1h2m3s4ms").as_deref(), Some("1h2m3.004s"));
        for bad in ["", "90", "s", "1x", "1.s.", "--1s"] {
            assert_eq!(parse_go_duration(bad), None, "{bad:?}");
        }
        assert_eq!(parse_go_duration(".5s"), Some((false, 500_000_000)));
    }

    #[test]
    fn cluster_information() {
        assert_eq!(
            translate(
                translate_cluster_information,
                "clusterinformation/default.yaml"
            ),
            pairs(&[
                (
                    "/calico/v1/config/ClusterGUID",
                    "1f2e3d4c5b6a79880a1b2c3d4e5f6a7b"
                ),
                (
                    "/calico/v1/config/ClusterType",
                    "typha,kdd,k8s,operator,bgp,kubeadm"
                ),
                ("/calico/v1/config/CalicoVersion", "v3.32.1"),
                ("/calico/v1/Ready", "true"),
                ("/calico/v1/config/Variant", "Calico"),
            ])
        );
        let other = translate(
            translate_cluster_information,
            "clusterinformation/not-ready-other.yaml",
        );
        assert_eq!(other.len(), 1);
        assert_eq!(
            other[0].0,
            "/calico/resources/v3/projectcalico.org/clusterinformations/leftover"
        );
        let mut per_node = fixture("clusterinformation/default.yaml");
        per_node["metadata"]["name"] = serde_json::json!("node.worker-1");
        let keys: Vec<String> = translate_cluster_information(&per_node)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(
            keys,
            [
                "/calico/v1/host/worker-1/config/ClusterGUID",
                "/calico/v1/host/worker-1/config/ClusterType",
                "/calico/v1/host/worker-1/config/CalicoVersion",
                "/calico/v1/host/worker-1/config/Variant",
            ]
        );
        let mut ci = fixture("clusterinformation/default.yaml");
        ci["spec"] = serde_json::json!({ "datastoreReady": false });
        assert_eq!(
            text(&translate_cluster_information(&ci).unwrap_or_default()),
            pairs(&[("/calico/v1/Ready", "false")])
        );
    }

    #[test]
    fn felix_configuration_global() {
        let p = |k: &str| format!("/calico/v1/config/{k}");
        let expected: Vec<(String, String)> = [
            (
                "BPFConntrackTimeouts",
                "CreationGracePeriod=10s,TCPEstablished=1h",
            ),
            ("BPFLogFilters", "all=tcp,eth0=udp,"),
            ("ExternalNodesCIDRList", "10.9.0.0/16,10.10.0.5"),
            ("ExtraThing", "on"),
            (
                "FailsafeInboundHostPorts",
                "tcp:22,udp:[fd00::/8]:53,tcp:10.0.0.0/8:179",
            ),
            ("FailsafeOutboundHostPorts", "none"),
            ("FloatingIPs", "Disabled"),
            ("FutureKnob", "3"),
            (
                "HealthTimeoutOverrides",
                "InternalDataplaneMainLoop=1m30s,CalculationGraph=1.5s",
            ),
            ("IpInIpEnabled", "true"),
            ("IptablesLockProbeIntervalMillis", "50"),
            ("IptablesRefreshInterval", "90"),
            ("KubeNodePortRanges", "[30000:32767 40000]"),
            ("LogSeverityScreen", "Debug"),
            ("NATPortRange", "32768:65535"),
            ("NetlinkTimeoutSecs", "10.5"),
            ("ReportingIntervalSecs", "0"),
            ("RouteRefreshInterval", "5400"),
            ("RouteTableRanges", "1-250,255-3000"),
            ("VXLANVNI", "4096"),
            ("WireguardEnabled", "false"),
        ]
        .iter()
        .map(|(k, v)| (p(k), v.to_string()))
        .collect();
        assert_eq!(
            translate(
                translate_felix_configuration,
                "felixconfiguration/default.yaml"
            ),
            expected
        );
    }

    #[test]
    fn felix_configuration_per_node_and_selector_scoped() {
        assert_eq!(
            translate(
                translate_felix_configuration,
                "felixconfiguration/node.yaml"
            ),
            pairs(&[
                ("/calico/v1/host/worker-1/config/BPFEnabled", "true"),
                (
                    "/calico/v1/host/worker-1/config/DefaultEndpointToHostAction",
                    "Return"
                ),
                (
                    "/calico/v1/host/worker-1/config/LogSeverityScreen",
                    "Warning"
                ),
            ])
        );
        assert_eq!(
            translate(
                translate_felix_configuration,
                "felixconfiguration/selector-scoped.yaml"
            ),
            pairs(&[(
                "/calico/resources/v3/projectcalico.org/felixconfigurations/gpu-nodes",
                concat!(
                    r#"{"kind":"FelixConfiguration","apiVersion":"projectcalico.org/v3","metadata":{"name":"gpu-nodes","#,
                    r#""uid":"78b43cd2-5a96-4711-9765-ad23cb478f05","creationTimestamp":"2026-03-07T10:00:00Z","#,
                    r#""labels":{"purpose":"gpu"},"annotations":{"kubectl.kubernetes.io/last-applied-configuration":"{\"apiVersion\":\"crd.projectcalico.org/v1\",\"kind\":\"FelixConfiguration\",\"metadata\":{\"name\":\"gpu-nodes\"}}\n"}},"#,
                    r#""spec":{"nodeSelector":"gpu == 'true'","bpfEnabled":true,"#,
                    r#""bpfLogLevel":""}}"#
                )
            )])
        );
        let mut bad = fixture("felixconfiguration/node.yaml");
        bad["spec"]["iptablesRefreshInterval"] = Value::String("soon".into());
        assert!(matches!(
            translate_felix_configuration(&bad),
            Err(TranslateError::Invalid { .. })
        ));
    }

    #[test]
    fn network_sets() {
        assert_eq!(
            translate(
                translate_global_network_set,
                "globalnetworkset/blocklist.yaml"
            ),
            pairs(&[(
                "/calico/v1/netset/blocklist",
                r#"{"nets":["198.51.100.0/24","203.0.113.7/32","2001:db8:1::/48"],"labels":{"feed":"threats"}}"#
            )])
        );
        let mut unlabelled = fixture("globalnetworkset/blocklist.yaml");
        if let Some(a) = unlabelled["metadata"]["annotations"].as_object_mut() {
            a.clear();
        }
        unlabelled["spec"]["nets"] = serde_json::json!([]);
        assert_eq!(
            text(&translate_global_network_set(&unlabelled).unwrap_or_default()),
            pairs(&[("/calico/v1/netset/blocklist", r#"{"labels":null}"#)])
        );
        assert_eq!(
            translate(translate_network_set, "networkset/partners.yaml"),
            pairs(&[(
                "/calico/v1/netset/shop%2fpartners",
                concat!(
                    r#"{"nets":["192.0.2.0/25","2001:db8::/32"],"#,
                    r#""labels":{"projectcalico.org/namespace":"shop","role":"partner"},"profile_ids":["kns.shop"]}"#
                )
            )])
        );
    }

    #[test]
    fn tiers() {
        assert_eq!(
            translate(translate_tier, "tier/default.yaml"),
            pairs(&[(
                "/calico/v1/policy/tier/default/metadata",
                r#"{"order":1000000,"defaultAction":"Deny"}"#
            )])
        );
        assert_eq!(
            translate(translate_tier, "tier/security.yaml"),
            pairs(&[(
                "/calico/v1/policy/tier/security/metadata",
                r#"{"order":100,"defaultAction":"Pass"}"#
            )])
        );
        let mut t = fixture("tier/default.yaml");
        t["metadata"]["name"] = Value::String("team".into());
        t["spec"] = serde_json::json!({ "defaultAction": "Log" });
        assert_eq!(
            text(&translate_tier(&t).unwrap_or_default()),
            pairs(&[(
                "/calico/v1/policy/tier/team/metadata",
                r#"{"defaultAction":"Deny"}"#
            )])
        );
        t["metadata"]["name"] = Value::String("kube-baseline".into());
        assert_eq!(
            text(&translate_tier(&t).unwrap_or_default())[0].1,
            r#"{"order":10000000,"defaultAction":"Deny"}"#
        );
    }

    #[test]
    fn host_endpoint() {
        assert_eq!(
            translate(translate_host_endpoint, "hostendpoint/worker-1-eth0.yaml"),
            pairs(&[(
                "/calico/v1/host/worker-1/endpoint/worker-1-eth0",
                concat!(
                    r#"{"name":"eth0","expected_ipv4_addrs":["172.18.0.3"],"expected_ipv6_addrs":["fd00:172:18::3"],"#,
                    r#""labels":{"projectcalico.org/created-by":"calico-kube-controllers","role":"k8s-worker"},"#,
                    r#""profile_ids":["projectcalico-default-allow"],"ports":[{"name":"ssh","protocol":"tcp","port":22},"#,
                    r#"{"name":"bgp","protocol":6,"port":179}],"qosControls":{"dscp":"AF11"}}"#
                )
            )])
        );
        let mut hep = fixture("hostendpoint/worker-1-eth0.yaml");
        if let Some(spec) = hep["spec"].as_object_mut() {
            spec.remove("node");
        }
        assert_eq!(
            translate_host_endpoint(&hep),
            Err(TranslateError::Missing("spec.node"))
        );
        assert_eq!(dscp("10"), Some(Value::from(10)));
        assert_eq!(dscp("64"), None);
        assert_eq!(dscp("ef"), Some(Value::String("EF".into())));
        assert_eq!(dscp("bogus"), None);
    }

    #[test]
    fn ip_pools() {
        assert_eq!(
            translate(translate_ip_pool, "ippool/default-ipv4.yaml"),
            pairs(&[(
                "/calico/v1/ipam/v4/pool/10.244.0.0-16",
                concat!(
                    r#"{"cidr":"10.244.0.0/16","ipip":"tunl0","ipip_mode":"always","vxlan_mode":"","#,
                    r#""masquerade":true,"ipam":true,"disabled":false,"disableBGPExport":false,"#,
                    r#""assignment_mode":"Automatic","allowed_uses":["Workload","Tunnel"]}"#
                )
            )])
        );
        assert_eq!(
            translate(translate_ip_pool, "ippool/ipv6.yaml"),
            pairs(&[(
                "/calico/v1/ipam/v6/pool/fd00:10:244::-48",
                concat!(
                    r#"{"cidr":"fd00:10:244::/48","ipip":"","ipip_mode":"","vxlan_mode":"cross-subnet","#,
                    r#""masquerade":false,"ipam":false,"disabled":true,"disableBGPExport":true,"#,
                    r#""assignment_mode":"Manual"}"#
                )
            )])
        );
        let mut bad = fixture("ippool/ipv6.yaml");
        bad["spec"]["cidr"] = Value::String("fd00::1".into());
        assert!(matches!(
            translate_ip_pool(&bad),
            Err(TranslateError::Invalid { .. })
        ));
    }

    #[test]
    fn raw_bgp_kinds() {
        assert_eq!(
            translate(translate_bgp_configuration, "bgpconfiguration/default.yaml"),
            pairs(&[(
                "/calico/resources/v3/projectcalico.org/bgpconfigurations/default",
                concat!(
                    r#"{"kind":"BGPConfiguration","apiVersion":"projectcalico.org/v3","metadata":{"name":"default","#,
                    r#""uid":"79f058d4-3cb2-4efa-8ad6-3eb179f058d4","creationTimestamp":"2026-03-01T08:00:35Z","#,
                    r#""annotations":{"kubectl.kubernetes.io/last-applied-configuration":"{\"apiVersion\":\"crd.projectcalico.org/v1\",\"kind\":\"BGPConfiguration\",\"metadata\":{\"name\":\"default\"}}\n","#,
                    r#""note":"mesh"}},"spec":{"logSeverityScreen":"Info","nodeToNodeMeshEnabled":true,"#,
                    r#""asNumber":64512,"serviceClusterIPs":[{"cidr":"10.96.0.0/12"}]}}"#
                )
            )])
        );
        assert_eq!(
            translate(translate_bgp_peer, "bgppeer/rr.yaml"),
            pairs(&[(
                "/calico/resources/v3/projectcalico.org/bgppeers/peer-with-rr",
                concat!(
                    r#"{"kind":"BGPPeer","apiVersion":"projectcalico.org/v3","metadata":{"name":"peer-with-rr","#,
                    r#""uid":"0f1a2b3c-4d5e-4f6a-9b7c-8d9e0f1a2b3c","generation":1,"creationTimestamp":"2026-03-03T12:00:00Z","#,
                    r#""labels":{"peer":"route-reflector"}},"spec":{"nodeSelector":"!has(route-reflector)","#,
                    r#""peerSelector":"has(route-reflector)"}}"#
                )
            )])
        );
        // Bookkeeping-only changes (resourceVersion, generation, managedFields) do not change
        // the bytes.
        let a = fixture("bgpconfiguration/default.yaml");
        let mut b = a.clone();
        b["metadata"]["resourceVersion"] = Value::String("99999".into());
        b["metadata"]["generation"] = Value::from(6);
        b["metadata"]["managedFields"] = serde_json::json!([]);
        assert_eq!(
            translate_bgp_configuration(&a),
            translate_bgp_configuration(&b)
        );
    }

    #[test]
    fn ipam_block() {
        let mut allocations = vec!["0", "null", "1"];
        allocations.extend(std::iter::repeat("null").take(61));
        let unallocated: Vec<String> = (3..64).chain([1]).map(|i| i.to_string()).collect();
        let expected = format!(
            concat!(
                r#"{{"cidr":"10.244.1.0/26","affinity":"host:worker-1","affinity_claim_time":"2026-03-02T09:15:00Z","#,
                r#""allocations":[{}],"unallocated":[{}],"attributes":[{{"handle_id":"ipip-tunnel-addr-worker-1","#,
                r#""secondary":{{"node":"worker-1","type":"ipipTunnelAddress"}}}},"#,
                r#"{{"handle_id":"k8s-pod-network.3f1c9a7e2b8d4c6f0a1e5b9d7c3f2a8e6b4d0c9f1a2e3b4c5d6e7f8091a2b3c4","#,
                r#""secondary":{{"namespace":"shop","node":"worker-1","pod":"frontend-7d4b9c6f5-x8k2p","#,
                r#""timestamp":"2026-03-10 12:00:05.123456789 +0000 UTC"}}}}],"sequenceNumber":7,"#,
                r#""sequenceNumberForAllocation":{{"0":1,"2":6}},"deleted":false}}"#
            ),
            allocations.join(","),
            unallocated.join(",")
        );
        assert_eq!(
            translate(translate_ipam_block, "ipamblock/10-244-1-0-26.yaml"),
            vec![(
                "/calico/ipam/v2/assignment/ipv4/block/10.244.1.0-26".to_string(),
                expected
            )]
        );
    }

    #[test]
    fn block_affinities() {
        assert_eq!(
            translate(translate_block_affinity, "blockaffinity/worker-1.yaml"),
            pairs(&[(
                "/calico/ipam/v2/host/worker-1/ipv4/block/10.244.1.0-26",
                r#"{"state":"confirmed","deleted":false}"#
            )])
        );
        assert_eq!(
            translate(translate_block_affinity, "blockaffinity/virtual-v6.yaml"),
            pairs(&[(
                "/calico/ipam/v2/virtual/vm-pool/ipv6/block/fd00:10:244:9::-122",
                r#"{"state":"pendingDeletion","deleted":true}"#
            )])
        );
        let mut bad = fixture("blockaffinity/worker-1.yaml");
        bad["spec"]["deleted"] = Value::String("maybe".into());
        assert!(matches!(
            translate_block_affinity(&bad),
            Err(TranslateError::Invalid { .. })
        ));
    }
}
