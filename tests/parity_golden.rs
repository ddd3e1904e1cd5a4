//! Golden tests: what Calico v3.32.1's Typha sends for each fixture object, byte for byte.
//!
//! `tests/fixtures/parity/<kind>/<name>.yaml` holds one Kubernetes object as the API server
//! returns it; `<name>.golden` holds every key the object yields once Typha's validation
//! filter has run, one `<key>\t<value>` line per key, sorted by key (an empty file: the object
//! yields nothing, or fails validation). `<kind>` is the driver's kind label, which picks the
//! translator. The expected bytes were written from the v3.32.1 sources and their own test
//! cases, or printed by Calico v3.32.1's own conversion, processors, validation filter and
//! serializer (see each fixture's comment and docs/datastore.md, "Golden tests"); every golden
//! has been checked against Calico's code. The test never writes them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use typha::datastore::k8s::translate::validate;
use typha::datastore::k8s::watched_kinds;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity")
}

fn load(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// What Typha would send for the object: translated, then validated.
fn sent(kind: &str, obj: &serde_json::Value) -> String {
    let spec = watched_kinds()
        .into_iter()
        .find(|k| k.name == kind)
        .unwrap_or_else(|| panic!("no watched kind {kind:?}"));
    // A translation error is a delete in the driver, as a conversion error is in Calico's
    // watcher: nothing is sent.
    let kvs = (spec.translate)(obj).unwrap_or_default();
    let kept: BTreeMap<String, String> = kvs
        .into_iter()
        .filter(|(k, v)| validate(k, v).is_ok())
        .map(|(k, v)| (k, String::from_utf8(v.to_vec()).unwrap()))
        .collect();
    kept.iter().map(|(k, v)| format!("{k}\t{v}\n")).collect()
}

fn cases() -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for kind in std::fs::read_dir(fixtures()).unwrap() {
        let kind = kind.unwrap().path();
        let label = kind.file_name().unwrap().to_string_lossy().into_owned();
        for f in std::fs::read_dir(&kind).unwrap() {
            let f = f.unwrap().path();
            if f.extension().is_some_and(|e| e == "yaml") {
                out.push((label.clone(), f));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn every_fixture_yields_exactly_its_golden_bytes() {
    let cases = cases();
    assert!(cases.len() >= 15, "fixtures missing: {}", cases.len());
    let mut failures = Vec::new();
    for (kind, path) in &cases {
        let golden = path.with_extension("golden");
        let want = std::fs::read_to_string(&golden)
            .unwrap_or_else(|e| panic!("{}: {e}", golden.display()));
        let got = sent(kind, &load(path));
        if got != want {
            failures.push(format!(
                "{}:\n--- expected\n{want}--- got\n{got}",
                path.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every kind the driver watches that reaches a client has at least one fixture here, apart
/// from the ones the translator unit tests already pin byte for byte.
#[test]
fn the_fixture_kinds_are_watched_kinds() {
    let kinds: Vec<String> = watched_kinds().iter().map(|k| k.name.to_string()).collect();
    for (kind, _) in cases() {
        assert!(kinds.contains(&kind), "{kind} is not a watched kind label");
    }
}

/// The bytes `managedFields` would add to the values that carry object metadata (Services,
/// EndpointSlices, and Calico resources whose metadata is the CR's own): what dropping it saves
/// per object on the fixture set. Printed for docs/datastore.md; asserted to be real.
#[test]
fn managed_fields_cost() {
    let mut with = 0usize;
    let mut without = 0usize;
    for (kind, path) in cases() {
        let obj = load(&path);
        let Some(mf) = obj.pointer("/metadata/managedFields") else {
            continue;
        };
        // Only where Typha keeps the CR's metadata: the Kubernetes kinds sent whole, and raw
        // v3 resources without the metadata annotation.
        let annotated = obj
            .pointer("/metadata/annotations/projectcalico.org~1metadata")
            .is_some();
        if !matches!(kind.as_str(), "service" | "endpointslice") && annotated {
            continue;
        }
        let value_bytes: usize = sent(&kind, &obj).len();
        let field = format!(r#","managedFields":{}"#, serde_json::to_string(mf).unwrap());
        without += value_bytes;
        with += value_bytes + field.len();
        println!(
            "{}: {} bytes sent, {} more with managedFields",
            path.display(),
            value_bytes,
            field.len()
        );
    }
    println!(
        "total: {without} bytes without managedFields, {with} with ({:.0}% more)",
        100.0 * (with - without) as f64 / without as f64
    );
    assert!(with > without && without > 0);
}
