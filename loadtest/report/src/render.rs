//! Results JSON → the Markdown report and the specifications of its plots. Pure: no process is
//! run and nothing is written here, so it is tested on a recorded fixture.

use super::plot::{Bars, Lines, PlotSpec, Series};
use serde_json::Value;
use std::fmt::Write as _;
use std::path::{Component, Path};

/// The Markdown and the plots it links (file name → what to draw).
#[derive(Debug)]
pub struct Rendered {
    pub markdown: String,
    pub plots: Vec<(String, PlotSpec)>,
    pub failed_cells: usize,
}

/// How the report links a plot in `plots_dir`: relative to the report's directory when the
/// plots are below it, else the path as given.
pub fn link_prefix(report: &Path, plots_dir: &Path) -> String {
    let base = report.parent().unwrap_or(Path::new(""));
    let rel = plots_dir.strip_prefix(base).unwrap_or(plots_dir);
    let parts: Vec<String> = rel
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("{}/", parts.join("/"))
    }
}

// ---------------------------------------------------------------------------------------------
// Reading the results
// ---------------------------------------------------------------------------------------------

fn f(v: &Value, ptr: &str) -> Option<f64> {
    v.pointer(ptr).and_then(Value::as_f64)
}

fn u(v: &Value, ptr: &str) -> Option<u64> {
    v.pointer(ptr).and_then(Value::as_u64)
}

fn st<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str)
}

/// A percentile of a latency object in µs: `run` writes `p99_us`, `pubsub` and `apiwatch`
/// write `p99`.
fn pct(lat: &Value, q: &str) -> Option<f64> {
    if lat.get("count").and_then(Value::as_u64) == Some(0) {
        return None;
    }
    lat.get(format!("{q}_us"))
        .or_else(|| lat.get(q))
        .and_then(Value::as_f64)
}

/// The latency `run` measures from the pods' `typha-loadtest/stamp` label
/// (`datastore_to_client_latency`), when it measured any.
fn stamp_latency(v: &Value) -> Option<&Value> {
    v.get("datastore_to_client_latency")
        .filter(|l| l.is_object() && pct(l, "p99").is_some())
}

/// The records of the cells, in order.
fn cells(results: &Value) -> Vec<&Value> {
    results["cells"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

fn kind(c: &Value) -> &str {
    st(c, "/params/kind").unwrap_or("")
}

/// The cell's clients speak Felix's protocol (`run --protocol typha`).
fn felix(c: &Value) -> bool {
    st(c, "/params/protocol") == Some("typha")
}

/// Daemon CPU per delivery the clients received (µs): whole-run daemon CPU over the `Updates`
/// frames (native) or `MsgKVs` messages (Felix) the clients counted. The one CPU figure that
/// needs nothing from the daemon, so it compares typha-rs with Calico's Typha.
fn cpu_us_per_received(run: &Value) -> Option<f64> {
    let cpu = f(run, "/server/whole_run/server_cpu_secs")?;
    let n = f(run, "/received/update_frames").filter(|n| *n > 0.0)?;
    Some(cpu * 1e6 / n)
}

fn status(c: &Value) -> &str {
    st(c, "/status").unwrap_or("error")
}

/// One `run` cell, read.
#[derive(Debug, Clone)]
struct RunRow<'a> {
    cell: &'a Value,
    group: String,
    clients: f64,
    churn: f64,
    keys: Option<u64>,
    lag_p50: Option<f64>,
    lag_p99: Option<f64>,
    steady: bool,
    cpu_us: Option<f64>,
    cpu_steady: bool,
    rss_per_client: Option<f64>,
    all_in_sync: Option<f64>,
    in_sync_at_end: Option<u64>,
}

fn run_row(c: &Value) -> Option<RunRow<'_>> {
    let r = c.pointer("/results/run").filter(|r| r.is_object());
    let empty = Value::Null;
    let r = r.unwrap_or(&empty);
    let steady_lag = &r["steady_state_lag"];
    let (lat, steady) = if pct(steady_lag, "p99").is_some() {
        (steady_lag, true)
    } else {
        (&r["lag"], false)
    };
    let steady_cpu = f(r, "/server/steady_state/server_cpu_us_per_frame");
    Some(RunRow {
        cell: c,
        group: st(c, "/params/group").unwrap_or("fanout").to_owned(),
        clients: f(c, "/params/clients")?,
        churn: f(c, "/params/churn").unwrap_or(0.0),
        keys: u(c, "/snapshot_keys").or_else(|| u(c, "/params/keys_nominal")),
        lag_p50: pct(lat, "p50"),
        lag_p99: pct(lat, "p99"),
        steady,
        cpu_us: steady_cpu.or_else(|| f(r, "/server/whole_run/server_cpu_us_per_frame")),
        cpu_steady: steady_cpu.is_some(),
        rss_per_client: f(r, "/server/rss_per_client_bytes"),
        all_in_sync: f(r, "/clients/all_in_sync_after_secs"),
        in_sync_at_end: u(r, "/clients/in_sync_at_end"),
    })
}

#[derive(Debug, Clone)]
struct PubsubRow<'a> {
    cell: &'a Value,
    target: String,
    n: f64,
    bytes: u64,
    rate: f64,
    cpu_us: Option<f64>,
    per_cpu_sec: Option<f64>,
    p50: Option<f64>,
    p99: Option<f64>,
    delivered: Option<u64>,
    expected: Option<u64>,
    rss_end_kib: Option<f64>,
    version: Option<String>,
}

fn pubsub_row(c: &Value) -> Option<PubsubRow<'_>> {
    let empty = Value::Null;
    let r = c
        .pointer("/results/pubsub")
        .filter(|r| r.is_object())
        .unwrap_or(&empty);
    let cpu_us = f(r, "/cpu_us_per_delivery");
    Some(PubsubRow {
        cell: c,
        target: st(c, "/params/target")?.to_owned(),
        n: f(c, "/params/subscribers")?,
        bytes: u(c, "/params/msg_bytes")?,
        rate: f(c, "/params/rate")?,
        cpu_us,
        per_cpu_sec: f(r, "/deliveries_per_cpu_sec").or(cpu_us.map(|c| 1e6 / c)),
        p50: pct(&r["latency_us"], "p50"),
        p99: pct(&r["latency_us"], "p99"),
        delivered: u(r, "/delivered"),
        expected: u(r, "/expected_deliveries"),
        rss_end_kib: f(r, "/server_rss_end_kib"),
        version: st(r, "/server_version").map(str::to_owned),
    })
}

#[derive(Debug, Clone)]
struct ApiRow<'a> {
    cell: &'a Value,
    direct: bool,
    n: f64,
    /// API server CPU as a fraction of one core over the window.
    api_cores: Option<f64>,
    api_cpu_us: Option<f64>,
    p50: Option<f64>,
    p99: Option<f64>,
    /// Which latency `run` gave for the via-typha side.
    latency_source: &'static str,
    rss_per_watcher_kib: Option<f64>,
    typha_cpu_us: Option<f64>,
    /// The typha daemon's CPU over its whole run as a fraction of one core.
    typha_cores: Option<f64>,
}

fn api_row(c: &Value) -> Option<ApiRow<'_>> {
    let direct = kind(c) == "apiserver-direct";
    let n = f(c, "/params/watchers").or_else(|| f(c, "/params/clients"))?;
    let empty = Value::Null;
    let w = c
        .pointer("/results/apiwatch")
        .filter(|r| r.is_object())
        .unwrap_or(&empty);
    let api_cores = match (f(w, "/apiserver_cpu_secs"), f(w, "/window_secs")) {
        (Some(cpu), Some(win)) if win > 0.0 => Some(cpu / win),
        _ => None,
    };
    let r = c
        .pointer("/results/run")
        .filter(|r| r.is_object())
        .unwrap_or(&empty);
    let typha_cores = match (
        f(r, "/server/whole_run/server_cpu_secs"),
        f(r, "/server/whole_run/secs"),
    ) {
        (Some(cpu), Some(secs)) if !direct && secs > 0.0 => Some(cpu / secs),
        _ => None,
    };
    let (p50, p99, latency_source, typha_cpu_us) = if direct {
        (
            pct(&w["latency_us"], "p50"),
            pct(&w["latency_us"], "p99"),
            "watch event",
            None,
        )
    } else {
        let cpu = f(r, "/server/steady_state/server_cpu_us_per_frame")
            .or_else(|| f(r, "/server/whole_run/server_cpu_us_per_frame"));
        match stamp_latency(r) {
            Some(l) => (pct(l, "p50"), pct(l, "p99"), "stamp label", cpu),
            None => (
                pct(&r["lag"], "p50"),
                pct(&r["lag"], "p99"),
                "frame lag: the run reported no stamp latency",
                cpu,
            ),
        }
    };
    Some(ApiRow {
        cell: c,
        direct,
        n,
        api_cores,
        api_cpu_us: f(w, "/cpu_us_per_delivery"),
        p50,
        p99,
        latency_source,
        rss_per_watcher_kib: f(w, "/rss_per_watcher_kib"),
        typha_cpu_us,
        typha_cores,
    })
}

// ---------------------------------------------------------------------------------------------
// Formatting
// ---------------------------------------------------------------------------------------------

const DASH: &str = "–";

fn us(v: Option<f64>) -> String {
    match v {
        None => DASH.into(),
        Some(x) if x < 1_000.0 => format!("{x:.0} µs"),
        Some(x) if x < 10_000.0 => format!("{:.2} ms", x / 1e3),
        Some(x) if x < 1_000_000.0 => format!("{:.1} ms", x / 1e3),
        Some(x) => format!("{:.2} s", x / 1e6),
    }
}

fn num(v: Option<f64>, digits: usize) -> String {
    v.map_or(DASH.into(), |x| format!("{x:.digits$}"))
}

fn int(v: f64) -> String {
    let s = format!("{}", v.round() as i64);
    let (sign, digits) = s.split_at(usize::from(s.starts_with('-')));
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    format!("{sign}{out}")
}

fn bytes(v: Option<f64>) -> String {
    match v {
        None => DASH.into(),
        Some(b) if b.abs() < 1024.0 => format!("{b:.0} B"),
        Some(b) if b.abs() < 1024.0 * 1024.0 => format!("{:.1} KiB", b / 1024.0),
        Some(b) => format!("{:.1} MiB", b / (1024.0 * 1024.0)),
    }
}

fn msg_size(b: u64) -> String {
    if b >= 1024 && b % 1024 == 0 {
        format!("{} KiB", b / 1024)
    } else {
        format!("{b} B")
    }
}

fn anchor(id: &str) -> String {
    format!("cell-{id}")
}

fn cell_link(c: &Value) -> String {
    let id = st(c, "/id").unwrap_or("?");
    format!("[{id}](#{})", anchor(id))
}

fn result_word(c: &Value) -> &'static str {
    match status(c) {
        "ok" => "pass",
        "failed" => "**FAIL**",
        crate::matrix::NOT_MEASURED => "not measured",
        _ => "**no result**",
    }
}

/// `2026-11-24 22:01 UTC` from unix seconds.
pub fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        (rem % 3600) / 60
    )
}

/// One line naming the machine, for the report and the plots.
pub fn machine_line(m: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(c) = u(m, "/cores") {
        parts.push(format!("{c} cores"));
    }
    if let Some(model) = st(m, "/cpu_model") {
        parts.push(model.to_owned());
    }
    if let Some(kib) = u(m, "/mem_total_kib") {
        parts.push(format!("{:.0} GiB RAM", kib as f64 / (1024.0 * 1024.0)));
    }
    if let Some(k) = st(m, "/kernel") {
        parts.push(format!("Linux {k}"));
    }
    if let Some(r) = st(m, "/rustc") {
        parts.push(r.to_owned());
    }
    if let Some(g) = st(m, "/git_commit") {
        let dirty = if m["git_dirty"] == true {
            " + uncommitted changes"
        } else {
            ""
        };
        parts.push(format!("commit {g}{dirty}"));
    }
    if parts.is_empty() {
        "machine not recorded".into()
    } else {
        parts.join(", ")
    }
}

fn ids(rows: &[&Value]) -> String {
    rows.iter()
        .filter_map(|c| st(c, "/id"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn caption(machine: &str, rows: &[&Value]) -> Vec<String> {
    vec![
        format!("typha-loadtest bench-report; cells: {}", ids(rows)),
        machine.to_owned(),
    ]
}

fn image(md: &mut String, prefix: &str, name: &str, alt: &str, rows: &[&Value]) {
    let _ = writeln!(md, "![{alt}]({prefix}{name})\n");
    let _ = writeln!(
        md,
        "*{alt}: from cells {} (commands below, under \"Commands\").*\n",
        rows.iter()
            .map(|c| cell_link(c))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

// ---------------------------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------------------------

/// Renders the report: `preamble`, then the generated sections. Plots are linked as
/// `{link_prefix}NAME.png`.
pub fn render(results: &Value, preamble: &str, link_prefix: &str) -> Result<Rendered, String> {
    if !results.is_object() {
        return Err("the results are not a JSON object".into());
    }
    let all = cells(results);
    let machine = machine_line(&results["machine"]);
    let mut md = String::new();
    let mut plots = Vec::new();
    if !preamble.trim().is_empty() {
        md.push_str(preamble.trim_end());
        md.push_str("\n\n");
    }
    md.push_str("## Generated report\n\n");
    md.push_str(
        "<!-- Everything below is written by `make bench-report` (`typha-loadtest bench-report`) \
         from docs/benchmarks/results.json; edit docs/benchmarks/preamble.md or the generator, \
         not this text. -->\n\n",
    );
    if all.is_empty() {
        md.push_str(
            "No cells recorded: the matrix has not been run on this tree yet. Run `make \
             bench-report` (about 20 minutes) to measure and write this section.\n",
        );
        return Ok(Rendered {
            markdown: md,
            plots,
            failed_cells: 0,
        });
    }
    let matrix = st(results, "/matrix").unwrap_or("?");
    let _ = writeln!(
        md,
        "Produced by `make bench-report` (`typha-loadtest bench-report`, {matrix} matrix); \
         re-render with `typha-loadtest bench-report --render-only docs/benchmarks/results.json`."
    );
    let _ = writeln!(md);
    let _ = writeln!(md, "**Machine:** {machine}.\n");
    if let Some(start) = u(results, "/started_at_unix") {
        let took = u(results, "/finished_at_unix")
            .map(|end| format!(", {:.1} minutes", end.saturating_sub(start) as f64 / 60.0))
            .unwrap_or_default();
        let _ = writeln!(md, "**Run:** started {}{took}.\n", utc(start));
    }
    let _ = writeln!(
        md,
        "Every process of a cell ran on this one machine, the load generators beside the server \
         they measure, so CPU figures of the server include its side of loopback TCP and the \
         load generator competes with it for the cores. Each table row links its cell's exact \
         commands (section \"Commands\").\n"
    );

    let failed: Vec<&Value> = all.iter().copied().filter(|c| status(c) != "ok").collect();
    if !failed.is_empty() {
        md.push_str("### Cells without a passing result\n\n");
        md.push_str("| cell | status | what happened |\n|---|---|---|\n");
        for c in &failed {
            let errs = failure_text(c);
            let _ = writeln!(
                md,
                "| {} | {} | {} |",
                cell_link(c),
                status(c),
                if errs.is_empty() { DASH.into() } else { errs }
            );
        }
        md.push('\n');
    }

    // Cells whose clients speak Felix's protocol have their own section; every other section
    // is about the native protocol, as before those cells existed.
    let runs: Vec<RunRow> = all
        .iter()
        .filter(|c| kind(c) == "run" && !felix(c))
        .filter_map(|c| run_row(c))
        .collect();
    let felix_runs: Vec<RunRow> = all
        .iter()
        .filter(|c| kind(c) == "run" && felix(c))
        .filter_map(|c| run_row(c))
        .collect();
    let felix_apis: Vec<&Value> = all
        .iter()
        .filter(|c| kind(c) == "apiserver-typha" && felix(c))
        .copied()
        .collect();
    let pubsubs: Vec<PubsubRow> = all
        .iter()
        .filter(|c| kind(c) == "pubsub")
        .filter_map(|c| pubsub_row(c))
        .collect();
    let apis: Vec<ApiRow> = all
        .iter()
        .filter(|c| kind(c).starts_with("apiserver-") && !felix(c))
        .filter_map(|c| api_row(c))
        .collect();

    targets(&mut md, &runs, &pubsubs, &apis, &felix_apis);
    fanout(&mut md, &mut plots, &runs, &machine, link_prefix);
    tls_cost(&mut md, &runs);
    storm_and_idle(&mut md, &mut plots, &runs, &machine, link_prefix);
    comparisons(&mut md, &mut plots, &pubsubs, &machine, link_prefix);
    apiserver(&mut md, &mut plots, &apis, &machine, link_prefix);
    felix_protocol(&mut md, &runs, &felix_runs, &pubsubs, &felix_apis);

    if !all.is_empty() {
        md.push_str("### Commands\n\n");
        md.push_str(
            "Each cell's commands, in the order they ran (a daemon in the background, stopped \
             with SIGTERM after the cell; ports are free loopback ports picked per cell).\n\n",
        );
        for c in &all {
            let id = st(c, "/id").unwrap_or("?");
            let _ = writeln!(
                md,
                "<a id=\"{}\"></a>**{id}** ({}, {:.0} s)\n",
                anchor(id),
                status(c),
                f(c, "/elapsed_secs").unwrap_or(0.0)
            );
            md.push_str("```\n");
            for cmd in c["commands"].as_array().into_iter().flatten() {
                if let Some(s) = cmd.as_str() {
                    md.push_str(s);
                    md.push('\n');
                }
            }
            md.push_str("```\n\n");
        }
    }
    Ok(Rendered {
        markdown: md,
        plots,
        failed_cells: failed
            .iter()
            .filter(|c| status(c) != crate::matrix::NOT_MEASURED)
            .count(),
    })
}

enum Verdict {
    Met,
    NotMet,
    Unmeasured,
}

fn verdict(v: Verdict) -> &'static str {
    match v {
        Verdict::Met => "met",
        Verdict::NotMet => "**not met**",
        Verdict::Unmeasured => "not measured",
    }
}

fn check(ok: Option<bool>) -> Verdict {
    match ok {
        Some(true) => Verdict::Met,
        Some(false) => Verdict::NotMet,
        None => Verdict::Unmeasured,
    }
}

/// The row of `rows` with the largest N among those `pick` accepts.
fn largest<T>(rows: &[T], n: impl Fn(&T) -> f64, pick: impl Fn(&T) -> bool) -> Option<&T> {
    rows.iter()
        .filter(|r| pick(r))
        .max_by(|a, b| n(a).total_cmp(&n(b)))
}

/// Pairs each Felix-protocol pub/sub row with its native twin (same daemon, stream and N):
/// `(felix, native, felix CPU ÷ native CPU)`.
fn felix_pubsub_pairs<'r, 'a>(
    pubsubs: &'r [PubsubRow<'a>],
) -> Vec<(&'r PubsubRow<'a>, Option<&'r PubsubRow<'a>>, Option<f64>)> {
    pubsubs
        .iter()
        .filter(|r| r.target == "typha-felix")
        .map(|fr| {
            let twin = pubsubs.iter().find(|x| {
                x.target == "typha" && x.n == fr.n && x.bytes == fr.bytes && x.rate == fr.rate
            });
            let ratio = twin
                .and_then(|t| t.cpu_us)
                .zip(fr.cpu_us)
                .filter(|(n, _)| *n > 0.0)
                .map(|(n, f)| f / n);
            (fr, twin, ratio)
        })
        .collect()
}

/// typha-rs' and Calico's Typha's `(CPU per received delivery, RSS at the end)` from the
/// side-by-side cells behind the API server.
fn typha_vs_calico(apis: &[&Value]) -> Option<[(Option<f64>, Option<f64>); 2]> {
    let by = |d: &str| {
        apis.iter()
            .find(|c| st(c, "/params/daemon") == Some(d))
            .and_then(|c| c.pointer("/results/run"))
            .map(|r| (cpu_us_per_received(r), f(r, "/server/rss_end_bytes")))
    };
    Some([by("typha-rs")?, by("calico-typha")?])
}

fn targets(
    md: &mut String,
    runs: &[RunRow],
    pubsubs: &[PubsubRow],
    apis: &[ApiRow],
    felix_apis: &[&Value],
) {
    md.push_str("### Targets\n\n| target | measured | cell | verdict |\n|---|---|---|---|\n");
    // 1. CPU and p99 at 10,000 clients × 10 batches/s × 8 KiB.
    let t = largest(
        pubsubs,
        |r| r.n,
        |r| r.target == "typha" && r.bytes == 8192 && r.rate == 10.0 && r.cpu_us.is_some(),
    );
    let (measured, cell, v) = match t {
        Some(r) => {
            let ok = r.cpu_us.zip(r.p99).map(|(c, p)| c <= 8.0 && p <= 200_000.0);
            let note = if r.n < 10_000.0 {
                format!(" (at {} clients, not 10,000)", int(r.n))
            } else {
                String::new()
            };
            (
                format!(
                    "{} µs per delivery, p99 {}{note}",
                    num(r.cpu_us, 2),
                    us(r.p99)
                ),
                cell_link(r.cell),
                if r.n < 10_000.0 {
                    Verdict::Unmeasured
                } else {
                    check(ok)
                },
            )
        }
        None => (DASH.into(), DASH.into(), Verdict::Unmeasured),
    };
    let _ = writeln!(
        md,
        "| ≤ 8 µs of CPU per delivery at 10,000 clients × 10 batches/s × 8 KiB, p99 ≤ 200 ms | {measured} | {cell} | {} |",
        verdict(v)
    );
    // 2. At least Redis' efficiency at 512 B × 100/s.
    let pair = largest(
        pubsubs,
        |r| r.n,
        |r| {
            r.target == "typha"
                && r.bytes == 512
                && r.rate == 100.0
                && r.per_cpu_sec.is_some()
                && pubsubs
                    .iter()
                    .any(|x| x.target == "redis" && x.n == r.n && x.bytes == 512 && x.rate == 100.0)
        },
    )
    .and_then(|t| {
        pubsubs
            .iter()
            .find(|x| x.target == "redis" && x.n == t.n && x.bytes == 512 && x.rate == 100.0)
            .map(|r| (t, r))
    });
    let (measured, cell, v) = match pair {
        Some((t, r)) => (
            format!(
                "typha-rs {} deliveries per CPU-second, Redis {} (at {} subscribers)",
                t.per_cpu_sec.map_or(DASH.into(), int),
                r.per_cpu_sec.map_or(DASH.into(), int),
                int(t.n)
            ),
            format!("{}, {}", cell_link(t.cell), cell_link(r.cell)),
            check(t.per_cpu_sec.zip(r.per_cpu_sec).map(|(a, b)| a >= b)),
        ),
        None => (DASH.into(), DASH.into(), Verdict::Unmeasured),
    };
    let _ = writeln!(
        md,
        "| at least Redis' deliveries per CPU-second at 512 B × 100/s (by coalescing) | {measured} | {cell} | {} |",
        verdict(v)
    );
    // 3. Storm.
    let storm = largest(runs, |r| r.clients, |r| r.group == "storm");
    let (measured, cell, v) = match storm {
        Some(r) => {
            let full_size = r.clients >= 10_000.0 && r.keys.is_some_and(|k| k >= 45_000);
            let what = match r.all_in_sync {
                Some(s) => format!("all in sync after {s:.2} s"),
                None => format!(
                    "not all in sync within the run ({} of {} at the end)",
                    r.in_sync_at_end.map_or(DASH.into(), |n| int(n as f64)),
                    int(r.clients)
                ),
            };
            let size = format!(
                " ({} clients, {} keys)",
                int(r.clients),
                r.keys.map_or(DASH.into(), |k| int(k as f64))
            );
            let v = if !full_size {
                Verdict::Unmeasured
            } else if r.all_in_sync.is_some_and(|s| s <= 10.0) {
                Verdict::Met
            } else {
                Verdict::NotMet
            };
            (what + &size, cell_link(r.cell), v)
        }
        None => (DASH.into(), DASH.into(), Verdict::Unmeasured),
    };
    let _ = writeln!(
        md,
        "| 10,000 clients reconnecting at once with a 50,000-key snapshot all in sync within 10 s | {measured} | {cell} | {} |",
        verdict(v)
    );
    // 4. Idle RSS.
    let idle = largest(runs, |r| r.clients, |r| r.group == "idle");
    let (measured, cell, v) = match idle {
        Some(r) => (
            format!(
                "{} per client ({} clients)",
                bytes(r.rss_per_client),
                int(r.clients)
            ),
            cell_link(r.cell),
            check(r.rss_per_client.map(|b| b <= 10.0 * 1024.0)),
        ),
        None => (DASH.into(), DASH.into(), Verdict::Unmeasured),
    };
    let _ = writeln!(
        md,
        "| ≤ 10 KiB of RSS per idle client | {measured} | {cell} | {} |",
        verdict(v)
    );
    // 5. The API server's load with typha-rs in front, against direct watchers.
    let direct = largest(apis, |r| r.n, |r| r.direct && r.api_cores.is_some());
    let via = direct.and_then(|d| apis.iter().find(|r| !r.direct && r.n == d.n));
    let (measured, cell, v) = match (direct, via) {
        (Some(d), Some(t)) => (
            format!(
                "API server CPU {} of a core with {} direct watchers, {} with typha-rs serving {} clients",
                num(d.api_cores.map(|c| c * 100.0), 0) + "%",
                int(d.n),
                num(t.api_cores.map(|c| c * 100.0), 0) + "%",
                int(t.n)
            ),
            format!("{}, {}", cell_link(d.cell), cell_link(t.cell)),
            check(d.api_cores.zip(t.api_cores).map(|(a, b)| b < a)),
        ),
        _ => (DASH.into(), DASH.into(), Verdict::Unmeasured),
    };
    let _ = writeln!(
        md,
        "| typha-rs takes the watch load off the API server (less API server CPU than direct watchers at the same N) | {measured} | {cell} | {} |",
        verdict(v)
    );
    // 6. Felix's protocol costs about what the native one does, per delivery.
    let pairs: Vec<_> = felix_pubsub_pairs(pubsubs)
        .into_iter()
        .filter_map(|(fr, twin, ratio)| Some((fr, twin?, ratio?)))
        .collect();
    let (measured, cell, v) = if pairs.is_empty() {
        (DASH.into(), DASH.into(), Verdict::Unmeasured)
    } else {
        let measured = pairs
            .iter()
            .map(|(fr, tw, ratio)| {
                format!(
                    "{:.2}× at {} × {} × {}/s ({} against {})",
                    ratio,
                    int(fr.n),
                    msg_size(fr.bytes),
                    int(fr.rate),
                    num(fr.cpu_us, 2) + " µs",
                    num(tw.cpu_us, 2) + " µs"
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        let cells = pairs
            .iter()
            .map(|(fr, _, _)| cell_link(fr.cell))
            .collect::<Vec<_>>()
            .join(", ");
        let worst = pairs.iter().map(|p| p.2).fold(0.0f64, f64::max);
        (measured, cells, check(Some(worst <= 1.2)))
    };
    let _ = writeln!(
        md,
        "| Felix-protocol deliveries within 1.2× of native ones (server CPU per delivery, pub/sub cells) | {measured} | {cell} | {} |",
        verdict(v)
    );
    // 7. Against the daemon it replaces.
    let (measured, cell, v) = match typha_vs_calico(felix_apis) {
        Some([(rs_cpu, rs_rss), (go_cpu, go_rss)]) => {
            let ratio = |a: Option<f64>, b: Option<f64>| {
                a.zip(b).filter(|(a, _)| *a > 0.0).map(|(a, b)| b / a)
            };
            let (cpu, rss) = (ratio(rs_cpu, go_cpu), ratio(rs_rss, go_rss));
            let cells = felix_apis
                .iter()
                .map(|c| cell_link(c))
                .collect::<Vec<_>>()
                .join(", ");
            (
                format!(
                    "Calico's Typha {} the CPU per delivery ({} against {}) and {} the RSS ({} against {})",
                    num(cpu, 1) + "×",
                    us(go_cpu),
                    us(rs_cpu),
                    num(rss, 1) + "×",
                    bytes(go_rss),
                    bytes(rs_rss)
                ),
                cells,
                check(cpu.zip(rss).map(|(c, r)| c >= 4.0 && r >= 20.0)),
            )
        }
        None => (DASH.into(), DASH.into(), Verdict::Unmeasured),
    };
    let _ = writeln!(
        md,
        "| ≥ 4× less CPU per delivery and ≥ 20× less RSS than Calico's Typha serving the same Felix clients | {measured} | {cell} | {} |",
        verdict(v)
    );
    md.push('\n');
}

fn fanout(
    md: &mut String,
    plots: &mut Vec<(String, PlotSpec)>,
    runs: &[RunRow],
    machine: &str,
    prefix: &str,
) {
    let rows: Vec<&RunRow> = runs.iter().filter(|r| r.group == "fanout").collect();
    if rows.is_empty() {
        return;
    }
    md.push_str("### Fan-out: typha-rs on the sim datastore\n\n");
    md.push_str(
        "Clients ramp up, take the snapshot, then receive the sim's churn. Lag: an `Updates` \
         frame's decode time minus when its oldest update reached the daemon, over the steady \
         state (every client in sync) where one was reached, else the whole run (marked ¹). CPU: \
         the daemon's CPU time per `Updates` frame written, steady state where reached, else \
         whole run including the snapshots (¹). RSS per client: (RSS at end − RSS at start) / \
         clients held.\n\n",
    );
    md.push_str(
        "| cell | clients | churn/s | snapshot keys | lag p50 | lag p99 | daemon CPU per delivery | RSS per client | all in sync after | result |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in &rows {
        let mark = |b: bool| if b { "" } else { " ¹" };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {}{} | {}{} | {}{} | {} | {} | {} |",
            cell_link(r.cell),
            int(r.clients),
            int(r.churn),
            r.keys.map_or(DASH.into(), |k| int(k as f64)),
            us(r.lag_p50),
            mark(r.steady || r.lag_p50.is_none()),
            us(r.lag_p99),
            mark(r.steady || r.lag_p99.is_none()),
            r.cpu_us.map_or(DASH.into(), |c| format!("{c:.2} µs")),
            mark(r.cpu_steady || r.cpu_us.is_none()),
            bytes(r.rss_per_client),
            r.all_in_sync
                .map_or("not within the run".into(), |s| format!("{s:.2} s")),
            result_word(r.cell),
        );
    }
    md.push_str("\n¹ whole run: no steady state was reached.\n\n");

    // Series per (churn, snapshot size), N on the x axis.
    let mut keys: Vec<(f64, u64)> = Vec::new();
    for r in &rows {
        let k = (r.churn, nominal_keys(r.cell));
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    let series_of = |sel: &dyn Fn(&RunRow) -> Option<f64>, suffix: &str| -> Vec<Series> {
        keys.iter()
            .map(|&(churn, k)| Series {
                name: format!("{} upd/s, {} keys{suffix}", int(churn), short_keys(k)),
                points: sorted(
                    rows.iter()
                        .filter(|r| r.churn == churn && nominal_keys(r.cell) == k)
                        .filter_map(|r| sel(r).map(|y| (r.clients, y)))
                        .collect(),
                ),
                dashed: false,
            })
            .filter(|s| !s.points.is_empty())
            .collect()
    };
    let cells: Vec<&Value> = rows.iter().map(|r| r.cell).collect();
    let mut lat = series_of(&|r| r.lag_p99.map(|v| v / 1e3), " p99");
    let mut p50 = series_of(&|r| r.lag_p50.map(|v| v / 1e3), " p50");
    for s in &mut p50 {
        s.dashed = true;
    }
    lat.extend(p50);
    if !lat.is_empty() {
        plots.push((
            "latency.png".into(),
            PlotSpec::Lines(Lines {
                title: "Update lag p50 (dashed) and p99 vs clients".into(),
                x_label: "clients".into(),
                y_label: "lag (ms)".into(),
                log_x: true,
                log_y: true,
                series: lat,
                caption: caption(machine, &cells),
            }),
        ));
        image(md, prefix, "latency.png", "Lag p50/p99 vs clients", &cells);
    }
    let cpu = series_of(&|r| r.cpu_us, "");
    if !cpu.is_empty() {
        plots.push((
            "cpu_per_delivery.png".into(),
            PlotSpec::Lines(Lines {
                title: "Daemon CPU per delivered update frame vs clients".into(),
                x_label: "clients".into(),
                y_label: "µs per delivery".into(),
                log_x: true,
                log_y: false,
                series: cpu,
                caption: caption(machine, &cells),
            }),
        ));
        image(
            md,
            prefix,
            "cpu_per_delivery.png",
            "CPU µs per delivery vs clients",
            &cells,
        );
    }
    let mut rss_rows = cells.clone();
    let mut rss = series_of(&|r| r.rss_per_client.map(|b| b / 1024.0), "");
    let idle: Vec<&RunRow> = runs.iter().filter(|r| r.group == "idle").collect();
    let idle_points = sorted(
        idle.iter()
            .filter_map(|r| r.rss_per_client.map(|b| (r.clients, b / 1024.0)))
            .collect(),
    );
    if !idle_points.is_empty() {
        rss.push(Series {
            name: "idle (no churn)".into(),
            points: idle_points,
            dashed: true,
        });
        rss_rows.extend(idle.iter().map(|r| r.cell));
    }
    if !rss.is_empty() {
        plots.push((
            "rss_per_client.png".into(),
            PlotSpec::Lines(Lines {
                title: "Daemon RSS growth per connected client vs clients".into(),
                x_label: "clients".into(),
                y_label: "KiB per client".into(),
                log_x: true,
                log_y: false,
                series: rss,
                caption: caption(machine, &rss_rows),
            }),
        ));
        image(
            md,
            prefix,
            "rss_per_client.png",
            "RSS per client vs clients",
            &rss_rows,
        );
    }
}

/// TLS cells beside their plaintext fan-out twins (same clients, churn and snapshot size).
/// Results recorded before TLS cells existed have none: the section is left out.
fn tls_cost(md: &mut String, runs: &[RunRow]) {
    let tls: Vec<&RunRow> = runs.iter().filter(|r| r.group == "tls").collect();
    if tls.is_empty() {
        return;
    }
    md.push_str(
        "### TLS cost per delivery

",
    );
    md.push_str(
        "The daemon with TLS on the protocol port (a CA, a server and a client certificate \
         generated at run time; CN checked on both sides), every client over TLS, beside the \
         plaintext fan-out cell of the same clients, churn and snapshot size. The frames are \
         still encoded once and shared; each client's connection encrypts its copy, so the \
         difference is the cost of encryption per delivered `Updates` frame. CPU as in the \
         fan-out table (steady state where reached, else whole run ¹).\n\n",
    );
    md.push_str(
        "| clients | churn/s | snapshot keys | daemon CPU per delivery, plaintext | with TLS | difference | TLS lag p99 | cells |\n|---|---|---|---|---|---|---|---|\n",
    );
    let mark = |r: &RunRow| {
        if r.cpu_steady || r.cpu_us.is_none() {
            ""
        } else {
            " ¹"
        }
    };
    let cpu = |r: &RunRow| {
        r.cpu_us
            .map_or(DASH.into(), |c| format!("{c:.2} µs{}", mark(r)))
    };
    for t in &tls {
        let plain = runs.iter().find(|p| {
            p.group == "fanout"
                && p.clients == t.clients
                && p.churn == t.churn
                && nominal_keys(p.cell) == nominal_keys(t.cell)
        });
        let diff = match plain.and_then(|p| p.cpu_us.zip(t.cpu_us)) {
            Some((p, c)) if p > 0.0 => format!("{:+.2} µs ({:+.0} %)", c - p, (c - p) / p * 100.0),
            Some((p, c)) => format!("{:+.2} µs", c - p),
            None => DASH.into(),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {diff} | {} | {} |",
            int(t.clients),
            int(t.churn),
            t.keys.map_or(DASH.into(), |k| int(k as f64)),
            plain.map_or("no plaintext cell".into(), cpu),
            cpu(t),
            us(t.lag_p99),
            match plain {
                Some(p) => format!("{}, {}", cell_link(p.cell), cell_link(t.cell)),
                None => cell_link(t.cell),
            },
        );
    }
    md.push_str("\n¹ whole run: no steady state was reached.\n\n");
}

fn nominal_keys(c: &Value) -> u64 {
    u(c, "/params/keys_nominal").unwrap_or(0)
}

fn short_keys(k: u64) -> String {
    if k >= 1000 {
        format!("{}k", k / 1000)
    } else {
        k.to_string()
    }
}

fn sorted(mut v: Vec<(f64, f64)>) -> Vec<(f64, f64)> {
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    v
}

fn storm_and_idle(
    md: &mut String,
    plots: &mut Vec<(String, PlotSpec)>,
    runs: &[RunRow],
    machine: &str,
    prefix: &str,
) {
    let storms: Vec<&RunRow> = runs.iter().filter(|r| r.group == "storm").collect();
    let idle: Vec<&RunRow> = runs.iter().filter(|r| r.group == "idle").collect();
    if !storms.is_empty() {
        md.push_str("### Reconnect storm\n\n");
        md.push_str(
            "Every client connects at once (`--ramp-per-sec 0`); the figure is the time from the \
             start until every client holds the whole snapshot and is in sync.\n\n",
        );
        md.push_str("| cell | clients | snapshot keys | all in sync after | in sync at the end | result |\n|---|---|---|---|---|---|\n");
        for r in &storms {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} |",
                cell_link(r.cell),
                int(r.clients),
                r.keys.map_or(DASH.into(), |k| int(k as f64)),
                r.all_in_sync
                    .map_or("not within the run".into(), |s| format!("{s:.2} s")),
                r.in_sync_at_end.map_or(DASH.into(), |n| int(n as f64)),
                result_word(r.cell)
            );
        }
        md.push('\n');
        let points = sorted(
            storms
                .iter()
                .filter_map(|r| r.all_in_sync.map(|s| (r.clients, s)))
                .collect(),
        );
        let cells: Vec<&Value> = storms.iter().map(|r| r.cell).collect();
        if points.is_empty() {
            md.push_str("No storm reached all-in-sync, so there is nothing to plot.\n\n");
        } else {
            plots.push((
                "storm.png".into(),
                PlotSpec::Lines(Lines {
                    title: "Reconnect storm: time until every client is in sync".into(),
                    x_label: "clients".into(),
                    y_label: "seconds".into(),
                    log_x: true,
                    log_y: false,
                    series: vec![Series {
                        name: "all in sync after".into(),
                        points,
                        dashed: false,
                    }],
                    caption: caption(machine, &cells),
                }),
            ));
            image(
                md,
                prefix,
                "storm.png",
                "Reconnect storm time vs clients",
                &cells,
            );
        }
    }
    if !idle.is_empty() {
        md.push_str("### Idle clients\n\n| cell | clients | snapshot keys | RSS per client | result |\n|---|---|---|---|---|\n");
        for r in &idle {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} |",
                cell_link(r.cell),
                int(r.clients),
                r.keys.map_or(DASH.into(), |k| int(k as f64)),
                bytes(r.rss_per_client),
                result_word(r.cell)
            );
        }
        md.push('\n');
    }
}

const TARGETS: [&str; 5] = ["typha", "typha-felix", "bare", "redis", "nats"];

fn comparisons(
    md: &mut String,
    plots: &mut Vec<(String, PlotSpec)>,
    rows: &[PubsubRow],
    machine: &str,
    prefix: &str,
) {
    if rows.is_empty() {
        return;
    }
    md.push_str("### Against Redis, NATS and the bare writer\n\n");
    md.push_str(
        "`typha-loadtest pubsub` delivers the same message sizes at the same rates to N \
         subscribers through each target: typha-rs, Redis pub/sub, NATS, and a bare writer that \
         writes each message to every socket and does nothing else (the physical floor). CPU is \
         the server's CPU time per delivered message.\n\n",
    );
    md.push_str("| cell | target | subscribers | message | rate | delivered / expected | server CPU per delivery | deliveries per CPU-second | latency p50 | latency p99 | server RSS at end | result |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        let target = match &r.version {
            Some(v) => format!("{} ({v})", r.target),
            None => r.target.clone(),
        };
        let _ = writeln!(
            md,
            "| {} | {target} | {} | {} | {}/s | {} / {} | {} | {} | {} | {} | {} | {} |",
            cell_link(r.cell),
            int(r.n),
            msg_size(r.bytes),
            int(r.rate),
            r.delivered.map_or(DASH.into(), |d| int(d as f64)),
            r.expected.map_or(DASH.into(), |d| int(d as f64)),
            r.cpu_us.map_or(DASH.into(), |c| format!("{c:.2} µs")),
            r.per_cpu_sec.map_or(DASH.into(), int),
            us(r.p50),
            us(r.p99),
            bytes(r.rss_end_kib.map(|k| k * 1024.0)),
            result_word(r.cell)
        );
    }
    md.push('\n');

    // Groups: (profile, N) in the order first seen.
    let mut groups: Vec<(u64, f64, f64)> = Vec::new();
    for r in rows {
        let g = (r.bytes, r.rate, r.n);
        if !groups.contains(&g) {
            groups.push(g);
        }
    }
    let find = |t: &str, g: &(u64, f64, f64)| {
        rows.iter()
            .find(|r| r.target == t && r.bytes == g.0 && r.rate == g.1 && r.n == g.2)
    };
    md.push_str("**typha-rs' overhead over the bare writer** (server CPU per delivery, typha-rs ÷ bare):\n\n");
    md.push_str("| message × rate | subscribers | typha-rs | bare writer | ratio |\n|---|---|---|---|---|\n");
    for g in &groups {
        let t = find("typha", g).and_then(|r| r.cpu_us);
        let b = find("bare", g).and_then(|r| r.cpu_us);
        let ratio = t
            .zip(b)
            .filter(|(_, b)| *b > 0.0)
            .map_or(DASH.into(), |(t, b)| format!("**{:.2}×**", t / b));
        let _ = writeln!(
            md,
            "| {} × {}/s | {} | {} | {} | {ratio} |",
            msg_size(g.0),
            int(g.1),
            int(g.2),
            t.map_or(DASH.into(), |c| format!("{c:.2} µs")),
            b.map_or(DASH.into(), |c| format!("{c:.2} µs")),
        );
    }
    md.push('\n');

    let values: Vec<Vec<Option<f64>>> = groups
        .iter()
        .map(|g| {
            TARGETS
                .iter()
                .map(|t| find(t, g).and_then(|r| r.cpu_us))
                .collect()
        })
        .collect();
    if values.iter().flatten().any(Option::is_some) {
        let cells: Vec<&Value> = rows.iter().map(|r| r.cell).collect();
        plots.push((
            "comparisons.png".into(),
            PlotSpec::Bars(Bars {
                title: "Server CPU per delivered message".into(),
                y_label: "µs per delivery".into(),
                groups: groups
                    .iter()
                    .map(|g| format!("{} × {}/s, N={}", msg_size(g.0), int(g.1), int(g.2)))
                    .collect(),
                bars: TARGETS.iter().map(|t| (*t).to_owned()).collect(),
                values,
                caption: caption(machine, &cells),
            }),
        ));
        image(
            md,
            prefix,
            "comparisons.png",
            "CPU per delivery: typha-rs (native and Felix protocol), bare, Redis, NATS",
            &cells,
        );
    }
}

/// Felix's protocol beside the native one (the same daemon, settings and cells), then typha-rs
/// against Calico's Typha behind the same API server and writer.
fn felix_protocol(
    md: &mut String,
    runs: &[RunRow],
    felix_runs: &[RunRow],
    pubsubs: &[PubsubRow],
    apis: &[&Value],
) {
    let pairs = felix_pubsub_pairs(pubsubs);
    if felix_runs.is_empty() && pairs.is_empty() && apis.is_empty() {
        return;
    }
    md.push_str(
        "### Felix's protocol

",
    );
    if !felix_runs.is_empty() {
        md.push_str(
            "Each cell beside its native twin (same clients, churn, snapshot, ramp and \
             duration; `run --protocol typha`). Target: Felix-protocol deliveries within 1.2× of \
             the native CPU per delivery.\n\n\
             | Felix cell | native twin | CPU per delivery, native → Felix | ratio | RSS per client, native → Felix | all in sync, native → Felix | result |\n\
             |---|---|---:|---:|---:|---:|---|\n",
        );
        for fr in felix_runs {
            let id = st(fr.cell, "/id").unwrap_or("?");
            let twin_id = id.strip_prefix("felix-").unwrap_or(id);
            let twin = runs.iter().find(|r| st(r.cell, "/id") == Some(twin_id));
            let native_cpu = twin.and_then(|t| t.cpu_us);
            let ratio = native_cpu
                .zip(fr.cpu_us)
                .filter(|(n, _)| *n > 0.0)
                .map(|(n, f)| f / n);
            let secs = |v: Option<f64>| v.map_or(DASH.into(), |x| format!("{x:.2} s"));
            let _ = writeln!(
                md,
                "| {} | {} | {} → {} | {} | {} → {} | {} → {} | {} |",
                cell_link(fr.cell),
                twin.map_or(DASH.into(), |t| cell_link(t.cell)),
                us(native_cpu),
                us(fr.cpu_us),
                ratio.map_or(DASH.into(), |r| format!("{r:.2}×")),
                bytes(twin.and_then(|t| t.rss_per_client)),
                bytes(fr.rss_per_client),
                secs(twin.and_then(|t| t.all_in_sync)),
                secs(fr.all_in_sync),
                result_word(fr.cell),
            );
        }
        md.push('\n');
    }
    if !pairs.is_empty() {
        md.push_str(
            "#### Pub/sub cells: Felix's protocol beside the native one\n\n\
             The same daemon and payload stream (`pubsub --target typha-felix` against \
             `--target typha`): each message is one rewrite of a config key, sent to every \
             subscriber as one `MsgKVs`, gob-encoded and snappy-compressed once. Latency runs \
             from when the sim wrote the value (Felix's messages carry no timestamp; the value \
             carries it) to when the subscriber decoded it.\n\n\
             | Felix cell | native twin | subscribers | message × rate | CPU per delivery, native → Felix | ratio | p99, native → Felix | delivered / expected (Felix) | result |\n\
             |---|---|---:|---|---:|---:|---:|---:|---|\n",
        );
        for (fr, twin, ratio) in &pairs {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} × {}/s | {} → {} | {} | {} → {} | {} / {} | {} |",
                cell_link(fr.cell),
                twin.map_or(DASH.into(), |t| cell_link(t.cell)),
                int(fr.n),
                msg_size(fr.bytes),
                int(fr.rate),
                twin.and_then(|t| t.cpu_us)
                    .map_or(DASH.into(), |c| format!("{c:.2} µs")),
                fr.cpu_us.map_or(DASH.into(), |c| format!("{c:.2} µs")),
                ratio.map_or(DASH.into(), |r| format!("{r:.2}×")),
                us(twin.and_then(|t| t.p99)),
                us(fr.p99),
                fr.delivered.map_or(DASH.into(), |d| int(d as f64)),
                fr.expected.map_or(DASH.into(), |d| int(d as f64)),
                result_word(fr.cell),
            );
        }
        md.push('\n');
    }
    if !apis.is_empty() {
        md.push_str(
            "#### typha-rs against Calico's Typha\n\n\
             Both behind the same test API server and writer, each serving the same \
             Felix-protocol clients (`run --protocol typha`). CPU per delivery is the daemon's \
             whole-run CPU over the messages its clients received (Calico's Typha exports no \
             typha-rs counters). Targets: typha-rs ≥ 4× less CPU per delivery and ≥ 20× less RSS.\n\n\
             | cell | daemon | clients | CPU per received delivery | RSS at the end | in sync at the end | result |\n\
             |---|---|---:|---:|---:|---:|---|\n",
        );
        for c in apis {
            let r = c.pointer("/results/run").unwrap_or(&Value::Null);
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} |",
                cell_link(c),
                st(c, "/params/daemon").unwrap_or("?"),
                f(c, "/params/clients").map_or(DASH.into(), int),
                us(cpu_us_per_received(r)),
                bytes(f(r, "/server/rss_end_bytes")),
                u(r, "/clients/in_sync_at_end").map_or(DASH.into(), |n| int(n as f64)),
                result_word(c),
            );
        }
        md.push('\n');
        if let Some([(rs_cpu, rs_rss), (go_cpu, go_rss)]) = typha_vs_calico(apis) {
            let ratio = |a: Option<f64>, b: Option<f64>| {
                a.zip(b)
                    .filter(|(a, _)| *a > 0.0)
                    .map_or(DASH.into(), |(a, b)| format!("{:.1}×", b / a))
            };
            let _ = writeln!(
                md,
                "Calico's Typha over typha-rs: {} the CPU per delivery (target ≥ 4×), {} the RSS \
                 (target ≥ 20×).\n",
                ratio(rs_cpu, go_cpu),
                ratio(rs_rss, go_rss),
            );
        }
    }
}

fn apiserver(
    md: &mut String,
    plots: &mut Vec<(String, PlotSpec)>,
    rows: &[ApiRow],
    machine: &str,
    prefix: &str,
) {
    if rows.is_empty() {
        return;
    }
    md.push_str("### N direct watchers on the API server vs typha-rs in front of it\n\n");
    md.push_str(
        "Without Typha every Felix watches the API server itself. *Direct*: N pod watches, \
         each on its own connection (`typha-loadtest apiwatch --watchers N`), while the tool \
         writes a `typha-loadtest/stamp` label on its pods at the given rate; latency is an \
         event's receive time minus the stamp. *Via typha-rs*: one typha daemon \
         (`--datastore-type kubernetes`) watches the same server and serves N `typha-loadtest \
         run` clients while `apiwatch --watchers 0` writes the same labels; the API server's CPU \
         is measured the same way. API server CPU is its CPU time over the window as a share of \
         one core.\n\n",
    );
    md.push_str("| cell | setup | N | API server CPU (of a core) | API server CPU per delivery | latency p50 | latency p99 (source) | API server RSS per watcher | typha-rs CPU (of a core) | typha-rs CPU per delivery | result |\n|---|---|---|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} ({}) | {} | {} | {} | {} |",
            cell_link(r.cell),
            if r.direct {
                "direct watchers"
            } else {
                "via typha-rs"
            },
            int(r.n),
            r.api_cores
                .map_or(DASH.into(), |c| format!("{:.0}%", c * 100.0)),
            r.api_cpu_us.map_or(DASH.into(), |c| format!("{c:.1} µs")),
            us(r.p50),
            us(r.p99),
            r.latency_source,
            r.rss_per_watcher_kib
                .map_or(DASH.into(), |k| format!("{k:.1} KiB")),
            r.typha_cores
                .map_or(DASH.into(), |c| format!("{:.0}%", c * 100.0)),
            r.typha_cpu_us.map_or(DASH.into(), |c| format!("{c:.2} µs")),
            result_word(r.cell)
        );
    }
    md.push('\n');
    let series = |direct: bool, sel: &dyn Fn(&ApiRow) -> Option<f64>| Series {
        name: if direct {
            "direct watchers".into()
        } else {
            "via typha-rs".into()
        },
        points: sorted(
            rows.iter()
                .filter(|r| r.direct == direct)
                .filter_map(|r| sel(r).map(|y| (r.n, y)))
                .collect(),
        ),
        dashed: !direct,
    };
    let cpu = vec![
        series(true, &|r| r.api_cores.map(|c| c * 100.0)),
        series(false, &|r| r.api_cores.map(|c| c * 100.0)),
    ];
    let lat = vec![
        series(true, &|r| r.p99.map(|v| v / 1e3)),
        series(false, &|r| r.p99.map(|v| v / 1e3)),
    ];
    let cells: Vec<&Value> = rows.iter().map(|r| r.cell).collect();
    let nonempty = |v: Vec<Series>| -> Vec<Series> {
        v.into_iter().filter(|s| !s.points.is_empty()).collect()
    };
    let (cpu, lat) = (nonempty(cpu), nonempty(lat));
    if cpu.is_empty() && lat.is_empty() {
        return;
    }
    plots.push((
        "apiserver.png".into(),
        PlotSpec::Pair(
            Box::new(PlotSpec::Lines(Lines {
                title: "API server CPU".into(),
                x_label: "watchers / clients".into(),
                y_label: "% of a core".into(),
                log_x: true,
                log_y: false,
                series: cpu,
                caption: Vec::new(),
            })),
            Box::new(PlotSpec::Lines(Lines {
                title: "Latency p99".into(),
                x_label: "watchers / clients".into(),
                y_label: "ms".into(),
                log_x: true,
                log_y: false,
                series: lat,
                caption: Vec::new(),
            })),
            caption(machine, &cells),
        ),
    ));
    image(
        md,
        prefix,
        "apiserver.png",
        "API server CPU and latency: direct watchers vs typha-rs",
        &cells,
    );
}

/// What went wrong in a cell, for the table of cells without a passing result. A run that
/// exits 1 says why in its own JSON (`failure_reasons`, e.g. clients left out of sync), which
/// tells a reader far more than the exit status; the harness' CPU beside it shows whether the
/// load generator, not the daemon, was the limit.
fn failure_text(c: &Value) -> String {
    let run = &c["results"]["run"];
    let reasons: Vec<String> = run["failure_reasons"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let text = if reasons.is_empty() {
        c["errors"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_default()
    } else {
        let mut t = reasons.join("; ");
        if let (Some(cpu), Some(secs)) = (
            run["harness_cpu_secs"].as_f64(),
            c["params"]["duration_secs"].as_f64(),
        ) {
            let _ = write!(
                t,
                " (load generator: {cpu:.1} s of CPU in the {secs:.0} s run)"
            );
        }
        t
    };
    text.replace('|', "\\|").replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_failed_run_says_why_from_its_own_report() {
        let unsynced = json!({
            "errors": ["run: exit status 1; stderr: "],
            "params": {"duration_secs": 30.0},
            "results": {"run": {"failure_reasons": ["45 of 5000 clients did not reach in-sync within the 30 s run"],
                                "harness_cpu_secs": 49.16}},
        });
        assert_eq!(
            failure_text(&unsynced),
            "45 of 5000 clients did not reach in-sync within the 30 s run \
             (load generator: 49.2 s of CPU in the 30 s run)"
        );
        let crashed = json!({"errors": ["run: exit status 2; stderr: a|b\nc"]});
        assert_eq!(
            failure_text(&crashed),
            "run: exit status 2; stderr: a\\|b c"
        );
    }

    #[test]
    fn small_helpers() {
        assert_eq!(int(1234567.0), "1,234,567");
        assert_eq!(int(999.0), "999");
        assert_eq!(int(-1000.0), "-1,000");
        assert_eq!(us(Some(850.0)), "850 µs");
        assert_eq!(us(Some(46_000.0)), "46.0 ms");
        assert_eq!(us(None), "–");
        assert_eq!(bytes(Some(741.0)), "741 B");
        assert_eq!(bytes(Some(2150.0)), "2.1 KiB");
        assert_eq!(msg_size(8192), "8 KiB");
        assert_eq!(msg_size(512), "512 B");
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc(1_795_557_717), "2026-11-24 22:01 UTC");
        assert_eq!(
            link_prefix(
                Path::new("docs/benchmarks.md"),
                Path::new("docs/benchmarks")
            ),
            "benchmarks/"
        );
        assert_eq!(link_prefix(Path::new("out/r.md"), Path::new("out")), "");
        assert_eq!(
            link_prefix(Path::new("r.md"), Path::new("./plots")),
            "plots/"
        );
    }

    #[test]
    fn stamp_latency_is_runs_datastore_to_client_latency() {
        let r = json!({"lag": {"count": 3, "p99_us": 5}, "datastore_to_client_latency": {"count": 2, "p50_us": 7, "p99_us": 9}});
        assert_eq!(pct(stamp_latency(&r).unwrap(), "p99"), Some(9.0));
        let r = json!({"datastore_to_client_latency": {"count": 0}});
        assert!(stamp_latency(&r).is_none());
    }

    #[test]
    fn an_empty_run_renders_a_placeholder() {
        let r = render(
            &json!({"cells": [], "machine": {"cores": 2}}),
            "# Benchmarks\n",
            "b/",
        )
        .unwrap();
        assert!(r
            .markdown
            .starts_with("# Benchmarks\n\n## Generated report"));
        assert!(r.markdown.contains("No cells recorded"));
        assert!(r.plots.is_empty());
        assert!(render(&json!([1]), "", "").is_err());
    }
}

#[cfg(test)]
mod fixture_tests {
    use super::*;
    use serde_json::json;

    const FIXTURE: &str = include_str!("../../tests/fixtures/bench-results.json");

    #[test]
    fn results_without_tls_cells_render_without_the_tls_section() {
        let mut results: Value = serde_json::from_str(FIXTURE).unwrap();
        let cells = results["cells"].as_array_mut().unwrap();
        let before = cells.len();
        cells.retain(|c| c["params"]["group"] != "tls");
        assert_eq!(cells.len(), before - 1);
        let r = render(&results, "", "benchmarks/").unwrap();
        assert!(!r.markdown.contains("TLS cost"), "{}", r.markdown);
        assert!(r
            .markdown
            .contains("### Fan-out: typha-rs on the sim datastore"));
        // A TLS cell without its plaintext twin still renders, and says so.
        let mut results: Value = serde_json::from_str(FIXTURE).unwrap();
        let cells = results["cells"].as_array_mut().unwrap();
        cells.retain(|c| c["id"] != "fanout-n200-churn100-keys1k");
        let r = render(&results, "", "benchmarks/").unwrap();
        assert!(
            r.markdown.contains("| no plaintext cell | 15.99 µs | – |"),
            "{}",
            r.markdown
        );
    }

    #[test]
    fn felix_cells_render_beside_their_native_twins_and_calico_typha() {
        let mut results: Value = serde_json::from_str(FIXTURE).unwrap();
        let cells = results["cells"].as_array_mut().unwrap();
        let native = cells
            .iter()
            .find(|c| c["id"] == "fanout-n200-churn100-keys1k")
            .unwrap()
            .clone();
        let native_cpu = native
            .pointer("/results/run/server/steady_state/server_cpu_us_per_frame")
            .and_then(Value::as_f64)
            .unwrap();
        let mut fx = native.clone();
        fx["id"] = json!("felix-fanout-n200-churn100-keys1k");
        fx["params"]["protocol"] = json!("typha");
        fx["results"]["run"]["server"]["steady_state"]["server_cpu_us_per_frame"] =
            json!(native_cpu * 1.1);
        cells.push(fx);
        let api = |daemon: &str, cpu_secs: f64, rss: u64| {
            json!({
                "id": format!("apiserver-felix-{daemon}-n1000"),
                "status": "ok",
                "params": {"kind": "apiserver-typha", "daemon": daemon, "protocol": "typha",
                    "clients": 1000, "write_rate": 10.0, "duration_secs": 20.0},
                "commands": ["x"],
                "results": {"run": {
                    "server": {"whole_run": {"server_cpu_secs": cpu_secs}, "rss_end_bytes": rss},
                    "received": {"update_frames": 200_000},
                    "clients": {"in_sync_at_end": 1000}
                }}
            })
        };
        // A Felix pub/sub cell beside its native twin (20 µs), 1.25× the cost: over target.
        let mut ps = cells
            .iter()
            .find(|c| c["id"] == "pubsub-typha-n50-8192B-10hz")
            .unwrap()
            .clone();
        ps["id"] = json!("pubsub-typha-felix-n50-8192B-10hz");
        ps["params"]["target"] = json!("typha-felix");
        ps["results"]["pubsub"]["target"] = json!("typha-felix");
        ps["results"]["pubsub"]["cpu_us_per_delivery"] = json!(25.0);
        ps["results"]["pubsub"]["deliveries_per_cpu_sec"] = json!(40000.0);
        cells.push(ps);
        cells.push(api("typha-rs", 2.0, 10 << 20));
        cells.push(api("calico-typha", 8.0, 370 << 20));
        let md = render(&results, "", "benchmarks/").unwrap().markdown;
        assert!(md.contains("### Felix's protocol"), "{md}");
        assert!(md.contains("#### Pub/sub cells: Felix's protocol beside the native one"));
        let row = md
            .lines()
            .find(|l| l.starts_with("| [pubsub-typha-felix-n50-8192B-10hz]") && l.contains(" → "))
            .unwrap();
        assert!(
            row.contains("[pubsub-typha-n50-8192B-10hz]")
                && row.contains("| 20.00 µs → 25.00 µs | 1.25× |"),
            "{row}"
        );
        let target = |what: &str| {
            md.lines()
                .find(|l| l.starts_with("| ") && l.contains(what))
                .unwrap_or_else(|| panic!("no target row {what}: {md}"))
                .to_owned()
        };
        let felix_target = target("Felix-protocol deliveries within 1.2×");
        assert!(
            felix_target.contains("1.25× at 50 × 8 KiB × 10/s (25.00 µs against 20.00 µs)")
                && felix_target.ends_with("| **not met** |"),
            "{felix_target}"
        );
        let calico_target = target("than Calico's Typha serving the same Felix clients");
        assert!(
            calico_target
                .contains("Calico's Typha 4.0× the CPU per delivery (40 µs against 10 µs)")
                && calico_target.ends_with("| met |"),
            "{calico_target}"
        );
        // The Felix cell beside its twin, with the ratio; the twin stays in the native tables.
        let row = md
            .lines()
            .find(|l| l.starts_with("| [felix-fanout-n200-churn100-keys1k]"))
            .unwrap();
        assert!(
            row.contains("[fanout-n200-churn100-keys1k]") && row.contains("| 1.10× |"),
            "{row}"
        );
        assert!(md.contains("#### typha-rs against Calico's Typha"));
        // 2 s and 8 s of CPU over 200,000 deliveries: 10 µs and 40 µs.
        assert!(
            md.contains("| calico-typha | 1,000 | 40 µs | 370.0 MiB | 1,000 | pass |"),
            "{md}"
        );
        assert!(
            md.contains("Calico's Typha over typha-rs: 4.0× the CPU per delivery (target ≥ 4×), 37.0× the RSS"),
            "{md}"
        );
        // Without a calico-typha binary its cell says so, and is not a failed cell.
        let failed_before = render(&results, "", "benchmarks/").unwrap().failed_cells;
        let cells = results["cells"].as_array_mut().unwrap();
        let go = cells.last_mut().unwrap();
        go["status"] = json!(crate::matrix::NOT_MEASURED);
        go["errors"] = json!(["not measured: no calico-typha binary: pass --calico-typha-bin"]);
        go["results"] = json!({});
        let r = render(&results, "", "benchmarks/").unwrap();
        assert_eq!(r.failed_cells, failed_before);
        assert!(
            r.markdown
                .contains("| calico-typha | 1,000 | – | – | – | not measured |"),
            "{}",
            r.markdown
        );
        assert!(
            r.markdown
                .contains("| not-measured | not measured: no calico-typha binary"),
            "{}",
            r.markdown
        );
        // Without Felix cells the section is absent (the fixture alone).
        let plain: Value = serde_json::from_str(FIXTURE).unwrap();
        assert!(!render(&plain, "", "benchmarks/")
            .unwrap()
            .markdown
            .contains("Felix's protocol"));
    }

    #[test]
    fn the_fixture_renders_every_section() {
        let results: Value = serde_json::from_str(FIXTURE).unwrap();
        let r = render(&results, "# Benchmarks\n\nHand-written.\n", "benchmarks/").unwrap();
        let md = &r.markdown;
        for heading in [
            "## Generated report",
            "### Cells without a passing result",
            "### Targets",
            "### Fan-out: typha-rs on the sim datastore",
            "### TLS cost per delivery",
            "### Reconnect storm",
            "### Idle clients",
            "### Against Redis, NATS and the bare writer",
            "### N direct watchers on the API server vs typha-rs in front of it",
            "### Commands",
        ] {
            assert!(md.contains(heading), "no {heading:?} in\n{md}");
        }
        assert!(md.starts_with("# Benchmarks\n\nHand-written.\n\n## Generated report"));
        // The TLS cell beside its plaintext twin: 0.55 s against 0.40 s of CPU over the same
        // 34,400 frames of the steady state.
        assert!(
            md.contains(
                "| 200 | 100 | 1,085 | 11.63 µs | 15.99 µs | +4.36 µs (+38 %) | 24.3 ms | \
                 [fanout-n200-churn100-keys1k](#cell-fanout-n200-churn100-keys1k), \
                 [tls-n200-churn100-keys1k](#cell-tls-n200-churn100-keys1k) |"
            ),
            "{md}"
        );
        // The TLS cell is not a row of the plaintext fan-out table.
        let fanout = md
            .split("### Fan-out")
            .nth(1)
            .and_then(|s| s.split("### TLS cost").next())
            .unwrap();
        assert!(!fanout.contains("| [tls-"), "{fanout}");
        assert!(md.contains("**Machine:** 2 cores, AMD EPYC"), "{md}");
        // The overhead over the bare writer, as ratios of the recorded 20/10 and 9/4 µs (50
        // subscribers: the server's CPU time is counted in 10 ms ticks, hence the round figures).
        assert!(
            md.contains("| 8 KiB × 10/s | 50 | 20.00 µs | 10.00 µs | **2.00×** |"),
            "{md}"
        );
        assert!(
            md.contains("| 512 B × 100/s | 50 | 9.00 µs | 4.00 µs | **2.25×** |"),
            "{md}"
        );
        // The failed cell is listed with what it printed.
        assert_eq!(r.failed_cells, 1);
        assert!(md.contains(
            "| [pubsub-nats-n50-512B-100hz](#cell-pubsub-nats-n50-512B-100hz) | error | pubsub: exit status 2; stderr: error: unrecognized subcommand"
        ), "{md}");
        // Targets: typha's 111,111 deliveries per CPU-second against Redis' 200,000 (at 50
        // subscribers there is nothing to coalesce): not met, and said so; the storm and the
        // 8 KiB figure are at too small an N to judge.
        assert!(
            md.contains(
                "typha-rs 111,111 deliveries per CPU-second, Redis 200,000 (at 50 subscribers)"
            ),
            "{md}"
        );
        let redis_row = md.lines().find(|l| l.contains("at least Redis")).unwrap();
        assert!(redis_row.ends_with("| **not met** |"), "{redis_row}");
        let storm_row = md
            .lines()
            .find(|l| l.contains("reconnecting at once"))
            .unwrap();
        assert!(storm_row.ends_with("| not measured |"), "{storm_row}");
        // Every cell has its commands, and every table row links them.
        for c in results["cells"].as_array().unwrap() {
            let id = c["id"].as_str().unwrap();
            assert!(
                md.contains(&format!("<a id=\"cell-{id}\"></a>**{id}**")),
                "{id}"
            );
            let first = c["commands"][0].as_str().unwrap_or("");
            assert!(first.is_empty() || md.contains(first), "{id}: {first}");
        }
        let names: Vec<&str> = r.plots.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "latency.png",
                "cpu_per_delivery.png",
                "rss_per_client.png",
                "storm.png",
                "comparisons.png",
                "apiserver.png"
            ]
        );
        for n in &names {
            assert!(md.contains(&format!("](benchmarks/{n})")), "{n} not linked");
        }
        // The comparison bars: one group per (profile, N), one bar per target, NATS' 512 B
        // bar missing (its cell failed).
        let bars = r
            .plots
            .iter()
            .find_map(|(n, p)| match p {
                PlotSpec::Bars(b) if n == "comparisons.png" => Some(b),
                _ => None,
            })
            .unwrap();
        assert_eq!(bars.bars, ["typha", "typha-felix", "bare", "redis", "nats"]);
        assert_eq!(bars.values.len(), 2);
        // The fixture has no Felix pub/sub cell: its bars are missing, nothing else moves.
        assert_eq!(
            bars.values[0],
            [Some(20.0), None, Some(10.0), Some(10.0), Some(40.0)]
        );
        assert_eq!(
            bars.values[1],
            [Some(9.0), None, Some(4.0), Some(5.0), None]
        );
        // Nor a Felix or Calico cell: those targets are not measured.
        for what in ["Felix-protocol deliveries within", "than Calico's Typha"] {
            let row = md.lines().find(|l| l.contains(what)).unwrap();
            assert!(row.ends_with("| not measured |"), "{row}");
        }
        assert!(bars.caption[1].starts_with("2 cores"));
    }
}
