//! `typha-loadtest bench-report`: re-rendering recorded results into Markdown + PNG plots, and
//! a matrix cell whose binary is missing recorded as failed instead of aborting the run.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_typha-loadtest");
const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/bench-results.json"
);
const PREAMBLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../docs/benchmarks/preamble.md"
);

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("typha-bench-report-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn bench_report(args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("bench-report")
        .args(args)
        .output()
        .expect("spawn typha-loadtest")
}

fn text(o: &Output) -> String {
    format!(
        "{:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Checks a PNG's signature and every chunk's CRC; returns (width, height, IDAT bytes).
fn png_info(path: &Path) -> (u32, u32, usize) {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        &b[..8],
        b"\x89PNG\r\n\x1a\n",
        "{}: no PNG signature",
        path.display()
    );
    let (mut i, mut dims, mut idat, mut end) = (8, None, 0, false);
    while i + 12 <= b.len() {
        let len = u32::from_be_bytes(b[i..i + 4].try_into().unwrap()) as usize;
        let kind = &b[i + 4..i + 8];
        assert!(
            i + 12 + len <= b.len(),
            "{}: truncated chunk",
            path.display()
        );
        let data = &b[i + 8..i + 8 + len];
        let crc = u32::from_be_bytes(b[i + 8 + len..i + 12 + len].try_into().unwrap());
        assert_eq!(
            crc32(&b[i + 4..i + 8 + len]),
            crc,
            "{}: bad CRC",
            path.display()
        );
        match kind {
            b"IHDR" => {
                dims = Some((
                    u32::from_be_bytes(data[0..4].try_into().unwrap()),
                    u32::from_be_bytes(data[4..8].try_into().unwrap()),
                ))
            }
            b"IDAT" => idat += len,
            b"IEND" => {
                end = true;
                assert_eq!(i + 12 + len, b.len(), "{}: data after IEND", path.display());
            }
            _ => {}
        }
        i += 12 + len;
    }
    assert!(end, "{}: no IEND", path.display());
    let (w, h) = dims.expect("IHDR");
    (w, h, idat)
}

#[test]
fn recorded_results_render_to_markdown_and_valid_pngs() {
    let dir = tmp("render");
    let out = dir.join("benchmarks.md");
    let plots = dir.join("benchmarks");
    let o = bench_report(&[
        "--render-only",
        FIXTURE,
        "--out",
        out.to_str().unwrap(),
        "--plots-dir",
        plots.to_str().unwrap(),
        "--preamble",
        PREAMBLE,
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let md = std::fs::read_to_string(&out).unwrap();
    let preamble = std::fs::read_to_string(PREAMBLE).unwrap();
    assert!(
        md.starts_with(preamble.trim_end()),
        "the preamble comes first"
    );
    for table in [
        "| target | measured | cell | verdict |",
        "| cell | clients | churn/s | snapshot keys | lag p50 | lag p99 |",
        "| clients | churn/s | snapshot keys | daemon CPU per delivery, plaintext | with TLS |",
        "| cell | clients | snapshot keys | all in sync after |",
        "| cell | target | subscribers | message | rate |",
        "| message × rate | subscribers | typha-rs | bare writer | ratio |",
        "| cell | setup | N | API server CPU (of a core) |",
    ] {
        assert!(md.contains(table), "no table {table:?} in\n{md}");
    }
    assert!(md.contains("**2.25×**"), "{md}");
    // Every linked plot exists and is a whole, valid PNG of the drawn size with content.
    let links: Vec<&str> = md
        .split("](benchmarks/")
        .skip(1)
        .filter_map(|s| s.split(')').next())
        .filter(|l| l.ends_with(".png"))
        .collect();
    assert_eq!(links.len(), 6, "{links:?}");
    for name in links {
        let (w, h, idat) = png_info(&plots.join(name));
        assert_eq!((w, h), (1000, 560), "{name}");
        assert!(idat > 10_000, "{name}: {idat} bytes of image data: blank?");
    }
    assert!(String::from_utf8_lossy(&o.stderr).contains("1 cell(s) failed"));

    // A font that is not there: a clear error, nothing written.
    let o = bench_report(&[
        "--render-only",
        FIXTURE,
        "--out",
        dir.join("other.md").to_str().unwrap(),
        "--font",
        "/nonexistent/font.ttf",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("/nonexistent/font.ttf") && err.contains("fonts-dejavu-core"),
        "{err}"
    );
    assert!(!dir.join("other.md").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_cell_whose_binary_is_missing_is_recorded_as_failed() {
    let dir = tmp("missing");
    let empty = dir.join("no-binaries");
    std::fs::create_dir_all(&empty).unwrap();
    let results = dir.join("results.json");
    let o = bench_report(&[
        "--quick",
        "--cells",
        "pubsub-bare-n50-512B,fanout-n50-",
        "--bin-dir",
        empty.to_str().unwrap(),
        "--results",
        results.to_str().unwrap(),
        "--out",
        dir.join("report.md").to_str().unwrap(),
        "--plots-dir",
        dir.join("plots").to_str().unwrap(),
        "--preamble",
        PREAMBLE,
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&results).unwrap()).unwrap();
    assert_eq!(r["matrix"], "quick");
    assert!(r["machine"]["cores"].as_u64().unwrap() >= 1, "{r}");
    assert!(r["machine"]["kernel"].is_string(), "{r}");
    let cells = r["cells"].as_array().unwrap();
    let ids: Vec<&str> = cells.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        ["fanout-n50-churn100-keys1k", "pubsub-bare-n50-512B-100hz"]
    );
    for c in cells {
        assert_eq!(c["status"], "error", "{c}");
        let e = c["errors"][0].as_str().unwrap();
        assert!(
            e.contains("cannot start") && e.contains("no-binaries"),
            "{e}"
        );
        assert!(!c["commands"].as_array().unwrap().is_empty(), "{c}");
    }
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(md.contains("### Cells without a passing result"), "{md}");
    assert!(
        md.contains(
            "[pubsub-bare-n50-512B-100hz](#cell-pubsub-bare-n50-512B-100hz) | error | pubsub:"
        ),
        "{md}"
    );
    assert!(
        md.contains("--target bare --subscribers 50 --msg-bytes 512 --rate 100"),
        "{md}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// One real cell end to end: the runner starts the test API server, runs `apiwatch`, records
/// its JSON with the commands, stops the server and renders the API server section.
#[test]
fn an_apiserver_cell_runs_end_to_end() {
    let dir = tmp("apicell");
    let bin_dir = Path::new(BIN).parent().unwrap();
    let repo_root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let results = dir.join("results.json");
    let o = bench_report(&[
        "--quick",
        "--cells",
        "apiserver-direct",
        "--bin-dir",
        bin_dir.to_str().unwrap(),
        "--repo-root",
        repo_root,
        "--results",
        results.to_str().unwrap(),
        "--out",
        dir.join("report.md").to_str().unwrap(),
        "--plots-dir",
        dir.join("plots").to_str().unwrap(),
        "--preamble",
        PREAMBLE,
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&results).unwrap()).unwrap();
    assert!(r["finished_at_unix"].as_u64() >= r["started_at_unix"].as_u64());
    let cells = r["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 1, "{r}");
    let c = &cells[0];
    assert_eq!(c["id"], "apiserver-direct-n20");
    assert_eq!(c["status"], "ok", "{c}");
    let cmds: Vec<&str> = c["commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(cmds[0].contains("test-apiserver.sh start "), "{cmds:?}");
    // Relative to the repository root: neither the checkout nor the build directory of this
    // machine appears (the binaries are `${CARGO_TARGET_DIR:-target}/<profile>/...`).
    let root = std::fs::canonicalize(repo_root).unwrap();
    for cmd in &cmds {
        assert!(!cmd.contains(&*root.to_string_lossy()), "{cmd}");
        assert!(!cmd.contains(&*bin_dir.to_string_lossy()), "{cmd}");
    }
    let last = cmds.last().unwrap();
    assert!(
        last.starts_with("${CARGO_TARGET_DIR:-target}/") || last.starts_with("target/"),
        "{cmds:?}"
    );
    assert!(
        cmds.last().unwrap().contains("apiwatch --kubeconfig")
            && cmds.last().unwrap().contains("--watchers 20"),
        "{cmds:?}"
    );
    let w = &c["results"]["apiwatch"];
    assert_eq!(w["passed"], true, "{w}");
    assert_eq!(w["watchers_open"], 20, "{w}");
    let writes = w["writes"].as_u64().unwrap();
    assert!(
        writes > 0 && w["delivered"].as_u64() == Some(20 * writes),
        "{w}"
    );
    assert!(w["apiserver_cpu_secs"].as_f64().unwrap() > 0.0, "{w}");
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(
        md.contains(
            "| [apiserver-direct-n20](#cell-apiserver-direct-n20) | direct watchers | 20 |"
        ),
        "{md}"
    );
    assert!(!md.contains("### Cells without a passing result"), "{md}");
    let (w, h, _) = png_info(&dir.join("plots/apiserver.png"));
    assert_eq!((w, h), (1000, 560));
    // The API server was stopped: its directory (named after the runner's pid) is gone.
    let leftovers: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with("typha-bench-apiserver-") && cmds[0].contains(&format!("/{name}"))
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
