//! KubeVirt live migrations (`kubevirt.io/v1` VirtualMachineInstanceMigration) as Calico
//! v3.32.1's LiveMigration resource (`k8s/resources/livemigration.go`), sent to Felix as raw v3
//! `livemigrations/<ns>/<name>` so that it can prepare the migration target's networking.

use super::core::{str_at, string_map_at, v3_key, V3_API};
use super::{go_shapes, gojson, name, namespace, Kv, TranslateError};
use serde_json::{json, Map, Value};

/// Phases in which Calico emits a LiveMigration; in any other phase (Pending, Succeeded,
/// unset) the migration yields nothing.
const ACTIVE_PHASES: &[&str] = &[
    "Scheduling",
    "Scheduled",
    "PreparingTarget",
    "TargetReady",
    "Running",
    "Failed",
];

/// Labels KubeVirt puts on the target virt-launcher pod: the VMI name (two spellings, the
/// second for KubeVirt before 1.7) and the migration's UID.
const VMI_ID_LABEL: &str = "vmi.kubevirt.io/id";
const VM_NAME_LABEL: &str = "vm.kubevirt.io/name";
const MIGRATION_JOB_LABEL: &str = "kubevirt.io/migrationJobUID";

/// Translates a VirtualMachineInstanceMigration into the raw v3
/// `/calico/resources/v3/projectcalico.org/livemigrations/<ns>/<name>`: name, namespace, uid,
/// creationTimestamp, labels and annotations of the migration, a target selector matching the
/// target pod by VMI name and migration UID, and the source workload (`k8s`,
/// `<ns>/<source pod>`) once KubeVirt reports the source pod. Migrations in a phase Calico
/// ignores, without a VMI name or without a UID yield nothing.
pub fn translate_live_migration(obj: &Value) -> Result<Vec<Kv>, TranslateError> {
    let n = name(obj)?;
    let ns = namespace(obj);
    let phase = str_at(obj, "/status/phase").unwrap_or("");
    let vmi = str_at(obj, "/spec/vmiName").unwrap_or("");
    let uid = str_at(obj, "/metadata/uid").unwrap_or("");
    if !ACTIVE_PHASES.contains(&phase) || vmi.is_empty() || uid.is_empty() {
        return Ok(Vec::new());
    }
    let mut meta = Map::new();
    meta.insert("name".into(), Value::String(n.into()));
    if !ns.is_empty() {
        meta.insert("namespace".into(), Value::String(ns.into()));
    }
    meta.insert("uid".into(), Value::String(uid.into()));
    if let Some(ts) = obj.pointer("/metadata/creationTimestamp") {
        meta.insert("creationTimestamp".into(), ts.clone());
    }
    for (field, ptr) in [
        ("labels", "/metadata/labels"),
        ("annotations", "/metadata/annotations"),
    ] {
        if let Some(m) = string_map_at(obj, ptr, "metadata")? {
            meta.insert(field.into(), json!(m));
        }
    }
    let selector = format!(
        "({VMI_ID_LABEL} == '{vmi}' || {VM_NAME_LABEL} == '{vmi}') && {MIGRATION_JOB_LABEL} == '{uid}'"
    );
    let mut spec = Map::new();
    if let Some(src) = str_at(obj, "/status/migrationState/sourcePod").filter(|s| !s.is_empty()) {
        spec.insert(
            "source".into(),
            json!({"workload": {"orchestratorID": "k8s", "workloadID": format!("{ns}/{src}")}}),
        );
    }
    spec.insert("target".into(), json!({ "selector": selector }));
    let value = json!({
        "kind": "LiveMigration",
        "apiVersion": V3_API,
        "metadata": meta,
        "spec": spec,
    });
    Ok(vec![(
        v3_key("livemigrations", ns, n),
        gojson::to_bytes(&value, &go_shapes::LIVE_MIGRATION),
    )])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vmim(phase: &str, source: Option<&str>) -> Value {
        let mut v = json!({
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachineInstanceMigration",
            "metadata": {
                "name": "mig-1", "namespace": "vms", "uid": "c05275a7-f85b-42d5-a1d0-acdd49c26d57",
                "resourceVersion": "77", "creationTimestamp": "2026-03-01T00:00:00Z",
                "labels": {"kubevirt.io/vmi-name": "vm12"},
            },
            "spec": {"vmiName": "vm12"},
            "status": {"phase": phase},
        });
        if let Some(s) = source {
            v["status"]["migrationState"] = json!({"sourcePod": s});
        }
        v
    }

    #[test]
    fn an_active_migration_becomes_a_live_migration() {
        let out =
            translate_live_migration(&vmim("Running", Some("virt-launcher-vm12-abcde"))).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(
            out[0].0,
            "/calico/resources/v3/projectcalico.org/livemigrations/vms/mig-1"
        );
        assert_eq!(
            String::from_utf8(out[0].1.to_vec()).unwrap(),
            concat!(
                r#"{"kind":"LiveMigration","apiVersion":"projectcalico.org/v3","metadata":{"name":"mig-1","#,
                r#""namespace":"vms","uid":"c05275a7-f85b-42d5-a1d0-acdd49c26d57","#,
                r#""creationTimestamp":"2026-03-01T00:00:00Z","labels":{"kubevirt.io/vmi-name":"vm12"}},"#,
                r#""spec":{"source":{"workload":{"orchestratorID":"k8s","workloadID":"vms/virt-launcher-vm12-abcde"}},"#,
                r#""target":{"selector":"(vmi.kubevirt.io/id == 'vm12' || vm.kubevirt.io/name == 'vm12') \u0026\u0026 "#,
                r#"kubevirt.io/migrationJobUID == 'c05275a7-f85b-42d5-a1d0-acdd49c26d57'"}}}"#
            )
        );
        // Before KubeVirt knows the source pod, the target alone.
        let early = translate_live_migration(&vmim("Scheduling", None)).unwrap();
        assert!(!String::from_utf8_lossy(&early[0].1).contains("source"));
    }

    #[test]
    fn other_phases_yield_nothing() {
        for phase in ["", "Pending", "Succeeded"] {
            assert!(translate_live_migration(&vmim(phase, None))
                .unwrap()
                .is_empty());
        }
        let mut no_vmi = vmim("Running", None);
        no_vmi["spec"] = json!({});
        assert!(translate_live_migration(&no_vmi).unwrap().is_empty());
    }
}
