//! docs/configuration.md tables every setting: each flag and its TYPHA_* variable appear there.

use clap::CommandFactory;
use typha::config::Config;

#[test]
fn every_setting_is_documented() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/configuration.md"
    ))
    .expect("docs/configuration.md");
    let mut missing = Vec::new();
    for arg in Config::command().get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if long == "help" || long == "version" {
            continue;
        }
        let env = arg
            .get_env()
            .and_then(|e| e.to_str())
            .unwrap_or_else(|| panic!("--{long} has no TYPHA_ variable"));
        assert!(env.starts_with("TYPHA_"), "{env}");
        if !doc.contains(&format!("`--{long}`")) || !doc.contains(&format!("`{env}`")) {
            missing.push(long.to_owned());
        }
    }
    assert!(missing.is_empty(), "undocumented settings: {missing:?}");
}
