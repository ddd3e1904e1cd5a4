//! `typha-loadtest bench-report` (`make bench-report`): runs a fixed matrix of benchmark cells,
//! each as child processes printing one JSON object (`typha` + `typha-loadtest run`,
//! `typha-loadtest pubsub`, `typha-loadtest apiwatch`), records every result with the exact
//! command lines and the machine in a results file, and renders the results into the Markdown
//! report with PNG plots.
//!
//! - It builds nothing: the binaries are taken from the directory of this executable (or
//!   `--bin-dir`), which `make bench-report` fills with `cargo build --release --workspace`.
//! - A cell whose command fails or does not exist is recorded as failed with the end of its
//!   stderr, and the report says so; the other cells still run.
//! - The results file is rewritten after every cell, so an interrupted run keeps what it
//!   measured; `--render-only RESULTS` re-renders without running anything.
//! - Rendering ([`render::render`]) is a pure function of the results and a hand-written
//!   preamble, unit-tested on a recorded fixture.

pub mod matrix;
pub mod plot;
pub mod render;

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchReportArgs {
    /// Re-render this results file instead of running the matrix.
    #[arg(long)]
    pub render_only: Option<PathBuf>,
    /// The small smoke matrix (about two minutes) instead of the full one (about 20 minutes).
    #[arg(long)]
    pub quick: bool,
    /// Run only the cells whose id contains one of these comma-separated strings.
    #[arg(long)]
    pub cells: Option<String>,
    /// Print the matrix's cells and commands without running them.
    #[arg(long)]
    pub list: bool,
    /// The results file written (and, with --render-only absent, overwritten).
    #[arg(long, default_value = "docs/benchmarks/results.json")]
    pub results: PathBuf,
    /// The Markdown report written.
    #[arg(long, default_value = "docs/benchmarks.md")]
    pub out: PathBuf,
    /// Directory of the PNG plots.
    #[arg(long, default_value = "docs/benchmarks")]
    pub plots_dir: PathBuf,
    /// Hand-written text put at the top of the report.
    #[arg(long, default_value = "docs/benchmarks/preamble.md")]
    pub preamble: PathBuf,
    /// Directory of the `typha` and `typha-loadtest` binaries [default: this executable's].
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// The repository root (for scripts/test-apiserver.sh and the git commit).
    #[arg(long, default_value = ".")]
    pub repo_root: PathBuf,
    /// Calico's own Typha (`calico-typha` v3.32.1) for the cells that run it beside typha-rs.
    /// The repository does not build it (scripts/build-calico-typha.sh says how to get one);
    /// without it those cells are recorded as not measured.
    #[arg(long, env = "CALICO_TYPHA_BIN")]
    pub calico_typha_bin: Option<PathBuf>,
    /// TrueType font for the plots' text.
    #[arg(long, default_value = plot::DEFAULT_FONT)]
    pub font: PathBuf,
}

pub fn main(args: BenchReportArgs) -> ExitCode {
    match run(&args) {
        Ok(failed) => {
            if failed > 0 {
                eprintln!(
                    "typha-loadtest bench-report: {failed} cell(s) failed; the report lists them"
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("typha-loadtest bench-report: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs (or only renders) and returns the number of failed cells.
fn run(args: &BenchReportArgs) -> anyhow::Result<usize> {
    let results = match &args.render_only {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("{}: not JSON: {e}", path.display()))?
        }
        None => {
            let cells = matrix::select(
                if args.quick {
                    matrix::quick()
                } else {
                    matrix::full()
                },
                args.cells.as_deref(),
            );
            if cells.is_empty() {
                anyhow::bail!("--cells {:?} selects no cell", args.cells);
            }
            let bin_dir = match &args.bin_dir {
                Some(d) => d.clone(),
                None => std::env::current_exe()?
                    .parent()
                    .map(Path::to_path_buf)
                    .ok_or_else(|| anyhow::anyhow!("this executable has no directory"))?,
            };
            let env = matrix::Env {
                typha: bin_dir.join("typha"),
                loadtest: bin_dir.join("typha-loadtest"),
                repo_root: args.repo_root.clone(),
                calico_typha: calico_typha_bin(args.calico_typha_bin.as_deref()),
            };
            if args.list {
                for c in &cells {
                    println!("{}  {}", c.id, c.describe(&env));
                }
                return Ok(0);
            }
            // Fail on a missing font before spending 20 minutes measuring.
            plot::register_font(&args.font)?;
            let machine = machine(&args.repo_root);
            let mut out = json!({
                "matrix": if args.quick { "quick" } else { "full" },
                "machine": machine,
                "started_at_unix": unix_secs(),
                "cells": [],
            });
            let results_path = args.results.clone();
            matrix::run_all(&env, &cells, |cells_so_far| {
                out["cells"] = Value::Array(cells_so_far.to_vec());
                write_json(&results_path, &out)
            })?;
            out["finished_at_unix"] = json!(unix_secs());
            write_json(&args.results, &out)?;
            out
        }
    };
    plot::register_font(&args.font)?;
    let preamble = match std::fs::read_to_string(&args.preamble) {
        Ok(p) => p,
        Err(e) => {
            eprintln!(
                "typha-loadtest bench-report: no preamble ({}: {e}); the report starts with the \
                 generated part",
                args.preamble.display()
            );
            String::new()
        }
    };
    let link_prefix = render::link_prefix(&args.out, &args.plots_dir);
    let rendered = render::render(&results, &preamble, &link_prefix).map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(&args.plots_dir)?;
    for (name, spec) in &rendered.plots {
        plot::draw(spec, &args.plots_dir.join(name))
            .map_err(|e| anyhow::anyhow!("plot {name}: {e}"))?;
    }
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, &rendered.markdown)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.out.display()))?;
    eprintln!(
        "typha-loadtest bench-report: wrote {} and {} plot(s) in {}",
        args.out.display(),
        rendered.plots.len(),
        args.plots_dir.display()
    );
    Ok(rendered.failed_cells)
}

fn write_json(path: &Path, v: &Value) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let text = serde_json::to_string_pretty(v)?;
    std::fs::write(path, text + "\n").map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn command_output(cmd: &str, args: &[&str], dir: &Path) -> Option<String> {
    let out = Command::new(cmd)
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// The machine the matrix runs on: cores, CPU model, memory, kernel, rustc, git commit.
/// Calico's Typha as supplied: an executable file (made absolute, so the cells can run it from
/// any directory), or why there is none (the Calico cells then say they were not measured).
fn calico_typha_bin(given: Option<&Path>) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let Some(path) = given.filter(|p| !p.as_os_str().is_empty()) else {
        return Err("pass --calico-typha-bin PATH or set CALICO_TYPHA_BIN \
                    (scripts/build-calico-typha.sh says how to get one)"
            .into());
    };
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(format!("{}: not an executable file", path.display()));
    }
    std::fs::canonicalize(path).map_err(|e| format!("{}: {e}", path.display()))
}

pub fn machine(repo_root: &Path) -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned());
    let mem_kib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_ascii_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    });
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let dirty =
        command_output("git", &["status", "--porcelain"], repo_root).is_some_and(|s| !s.is_empty());
    json!({
        "cores": cores,
        "cpu_model": model,
        "mem_total_kib": mem_kib,
        "kernel": command_output("uname", &["-r"], repo_root),
        "rustc": command_output("rustc", &["-V"], repo_root),
        "git_commit": command_output("git", &["rev-parse", "--short", "HEAD"], repo_root),
        "git_dirty": dirty,
        "nofile_hard": nofile_hard(),
    })
}

fn nofile_hard() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: lim is a valid rlimit to write to.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0).then_some(lim.rlim_max)
}
