//! The benchmark matrix and its runner: every cell is one or more child processes printing one
//! JSON object each; a daemon a cell needs is started on free loopback ports and stopped after
//! it; the test API server (`scripts/test-apiserver.sh`) is started once for the API-server cells.

use serde_json::{json, Value};
use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use typha::http::http_get;

/// What a `run` cell measures (they are grouped so in the report).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunGroup {
    /// Clients ramped up, then steady churn.
    Fanout,
    /// Every client connects at once: time until all are in sync.
    Storm,
    /// No churn: memory per idle client.
    Idle,
    /// As a fan-out cell, with TLS between the daemon and every client: set beside the
    /// plaintext fan-out cell of the same clients, churn and snapshot size.
    Tls,
}

impl RunGroup {
    pub fn name(self) -> &'static str {
        match self {
            RunGroup::Fanout => "fanout",
            RunGroup::Storm => "storm",
            RunGroup::Idle => "idle",
            RunGroup::Tls => "tls",
        }
    }
}

/// The daemon an API-server cell puts between the test API server and the clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiDaemon {
    /// typha-rs (`typha --datastore-type kubernetes`).
    TyphaRs,
    /// Calico's own Typha (`calico-typha`, a binary supplied with `--calico-typha-bin` or
    /// `CALICO_TYPHA_BIN`): the daemon typha-rs replaces, serving the same Felix-protocol
    /// clients from the same writes.
    Calico,
}

impl ApiDaemon {
    pub fn name(self) -> &'static str {
        match self {
            ApiDaemon::TyphaRs => "typha-rs",
            ApiDaemon::Calico => "calico-typha",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum CellKind {
    /// `typha` on the sim datastore + `typha-loadtest run`.
    Run {
        group: RunGroup,
        /// The clients speak Felix's protocol (`run --protocol typha`) instead of the native one.
        felix: bool,
        clients: usize,
        churn: f64,
        /// `--sim-endpoints`, chosen for about `keys` keys in the Felix snapshot.
        endpoints: usize,
        keys: u64,
        ramp: f64,
        duration: f64,
    },
    /// `typha-loadtest pubsub --target ...`.
    Pubsub {
        target: &'static str,
        subscribers: usize,
        msg_bytes: usize,
        rate: f64,
        duration: f64,
    },
    /// `typha-loadtest apiwatch --watchers N` on the test API server.
    ApiDirect {
        watchers: usize,
        write_rate: f64,
        duration: f64,
    },
    /// `typha --datastore-type kubernetes` on the same server, N `run` clients behind it, and
    /// `apiwatch --watchers 0` writing the same stamps.
    ApiTypha {
        daemon: ApiDaemon,
        /// The clients speak Felix's protocol (always, with Calico's Typha).
        felix: bool,
        clients: usize,
        write_rate: f64,
        duration: f64,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    pub id: String,
    pub kind: CellKind,
}

/// `--sim-endpoints` for about `keys` keys in the Felix snapshot: with the sim's default 100
/// nodes, 3,000 endpoints give 3,736 keys and 50,000 give 52,236 (see docs/benchmarks.md).
pub fn endpoints_for_keys(keys: u64) -> usize {
    ((keys.saturating_sub(640)) as f64 / 1.032).round().max(1.0) as usize
}

fn run_cell(group: RunGroup, clients: usize, churn: f64, keys: u64, ramp: f64, d: f64) -> Cell {
    any_run_cell(group, false, clients, churn, keys, ramp, d)
}

/// The twin of [`run_cell`] whose clients speak Felix's protocol: id `felix-<the twin's id>`.
fn felix_cell(group: RunGroup, clients: usize, churn: f64, keys: u64, ramp: f64, d: f64) -> Cell {
    any_run_cell(group, true, clients, churn, keys, ramp, d)
}

fn any_run_cell(
    group: RunGroup,
    felix: bool,
    clients: usize,
    churn: f64,
    keys: u64,
    ramp: f64,
    d: f64,
) -> Cell {
    let k = if keys >= 1000 {
        format!("{}k", keys / 1000)
    } else {
        keys.to_string()
    };
    Cell {
        id: format!(
            "{}{}-n{clients}-churn{churn}-keys{k}",
            if felix { "felix-" } else { "" },
            group.name()
        ),
        kind: CellKind::Run {
            group,
            felix,
            clients,
            churn,
            endpoints: endpoints_for_keys(keys),
            keys,
            ramp,
            duration: d,
        },
    }
}

fn pubsub_cells(ns: &[usize], profiles: &[(usize, f64)], duration: f64) -> Vec<Cell> {
    let mut v = Vec::new();
    for &(msg_bytes, rate) in profiles {
        for &n in ns {
            for target in ["typha", "typha-felix", "bare", "redis", "nats"] {
                v.push(Cell {
                    id: format!("pubsub-{target}-n{n}-{msg_bytes}B-{rate}hz"),
                    kind: CellKind::Pubsub {
                        target,
                        subscribers: n,
                        msg_bytes,
                        rate,
                        duration,
                    },
                });
            }
        }
    }
    v
}

fn api_cells(ns: &[usize], write_rate: f64, duration: f64) -> Vec<Cell> {
    let mut v = Vec::new();
    for &n in ns {
        v.push(Cell {
            id: format!("apiserver-direct-n{n}"),
            kind: CellKind::ApiDirect {
                watchers: n,
                write_rate,
                duration,
            },
        });
    }
    for &n in ns {
        v.push(Cell {
            id: format!("apiserver-typha-n{n}"),
            kind: CellKind::ApiTypha {
                daemon: ApiDaemon::TyphaRs,
                felix: false,
                clients: n,
                write_rate,
                duration,
            },
        });
    }
    v
}

/// typha-rs and Calico's Typha side by side behind the same test API server and the same
/// writer, each serving `n` Felix-protocol clients (the same `run --protocol typha`).
fn typha_vs_calico_cells(ns: &[usize], write_rate: f64, duration: f64) -> Vec<Cell> {
    let mut v = Vec::new();
    for &n in ns {
        for daemon in [ApiDaemon::TyphaRs, ApiDaemon::Calico] {
            v.push(Cell {
                id: format!("apiserver-felix-{}-n{n}", daemon.name()),
                kind: CellKind::ApiTypha {
                    daemon,
                    felix: true,
                    clients: n,
                    write_rate,
                    duration,
                },
            });
        }
    }
    v
}

/// Duration of the 10,000-client storm cells (see `full`).
const STORM_10K_SECS: f64 = 120.0;

/// The full matrix: about 18.5 minutes of measurement (with the TLS, Felix-protocol and Calico
/// Typha cells) plus start-up, about 25 minutes on a 2-core machine (Calico's Typha is built
/// once, before the first cell that needs it, and cached). Durations: fan-out 20 s (30 s above
/// 1,000 clients), 100k-key snapshot 25 s, storms 30 s (120 s at 10,000 clients), idle 15 s,
/// pub/sub 15 s, API server cells 20 s of writes.
pub fn full() -> Vec<Cell> {
    let mut v = Vec::new();
    for churn in [100.0, 1000.0] {
        for n in [100, 1000, 5000, 10_000] {
            // Above 1,000 clients the ramp and the snapshots take longer: 10 s more.
            let (ramp, d) = if n > 1000 {
                (2000.0, 30.0)
            } else {
                (1000.0, 20.0)
            };
            v.push(run_cell(RunGroup::Fanout, n, churn, 10_000, ramp, d));
        }
    }
    for n in [100, 1000] {
        v.push(run_cell(RunGroup::Fanout, n, 100.0, 100_000, 1000.0, 25.0));
    }
    // TLS beside the plaintext fan-out cells of the same settings: 1,000 clients at the higher
    // churn, where deliveries dominate the daemon's CPU; 5,000 at the lower one, because at
    // 5,000 × 1,000 updates/s the harness itself falls behind (plaintext too), and clients
    // that are behind get several frames per write, which hides the per-frame cost.
    for (n, churn) in [(1000, 1000.0), (5000, 100.0)] {
        let (ramp, d) = if n > 1000 {
            (2000.0, 30.0)
        } else {
            (1000.0, 20.0)
        };
        v.push(run_cell(RunGroup::Tls, n, churn, 10_000, ramp, d));
    }
    // A 10,000-client storm moves 37 GB (native) to 70 GB (Felix) over loopback: on 2 cores
    // shared with the load generator that takes about a minute and a half, so its cells run
    // long enough to see every client in sync and report when.
    for (n, d) in [(1000, 30.0), (10_000, STORM_10K_SECS)] {
        v.push(run_cell(RunGroup::Storm, n, 100.0, 50_000, 0.0, d));
    }
    v.push(run_cell(RunGroup::Idle, 10_000, 0.0, 10_000, 2000.0, 15.0));
    // Felix's protocol beside the native cells of the same settings: fan-out at 1,000 and
    // 10,000 clients, the 10,000-client storm, RSS per idle client.
    v.push(felix_cell(
        RunGroup::Fanout,
        1000,
        100.0,
        10_000,
        1000.0,
        20.0,
    ));
    v.push(felix_cell(
        RunGroup::Fanout,
        10_000,
        100.0,
        10_000,
        2000.0,
        30.0,
    ));
    v.push(felix_cell(
        RunGroup::Storm,
        10_000,
        100.0,
        50_000,
        0.0,
        STORM_10K_SECS,
    ));
    v.push(felix_cell(
        RunGroup::Idle,
        10_000,
        0.0,
        10_000,
        2000.0,
        15.0,
    ));
    v.extend(pubsub_cells(
        &[1000, 10_000],
        &[(8192, 10.0), (512, 100.0)],
        15.0,
    ));
    v.extend(api_cells(&[100, 1000, 3000], 10.0, 20.0));
    v.extend(typha_vs_calico_cells(&[1000], 10.0, 20.0));
    v
}

/// The smoke matrix (about two minutes): small N, a small snapshot, 5 s runs.
pub fn quick() -> Vec<Cell> {
    let mut v = Vec::new();
    for n in [50, 200] {
        v.push(run_cell(RunGroup::Fanout, n, 100.0, 1000, 1000.0, 5.0));
    }
    v.push(run_cell(RunGroup::Storm, 200, 100.0, 1000, 0.0, 5.0));
    v.push(run_cell(RunGroup::Idle, 200, 0.0, 1000, 1000.0, 4.0));
    v.push(run_cell(RunGroup::Tls, 200, 100.0, 1000, 1000.0, 5.0));
    v.push(felix_cell(RunGroup::Fanout, 200, 100.0, 1000, 1000.0, 5.0));
    v.push(felix_cell(RunGroup::Storm, 200, 100.0, 1000, 0.0, 5.0));
    v.push(felix_cell(RunGroup::Idle, 200, 0.0, 1000, 1000.0, 4.0));
    v.extend(pubsub_cells(&[50], &[(8192, 10.0), (512, 100.0)], 3.0));
    v.extend(api_cells(&[20], 10.0, 4.0));
    v.extend(typha_vs_calico_cells(&[20], 10.0, 4.0));
    v
}

/// The cells whose id contains one of the comma-separated `filter` strings (all without one).
pub fn select(cells: Vec<Cell>, filter: Option<&str>) -> Vec<Cell> {
    let Some(f) = filter else {
        return cells;
    };
    let parts: Vec<&str> = f
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    cells
        .into_iter()
        .filter(|c| parts.iter().any(|p| c.id.contains(p)))
        .collect()
}

/// Where the binaries and scripts are.
#[derive(Debug, Clone)]
pub struct Env {
    pub typha: PathBuf,
    pub loadtest: PathBuf,
    pub repo_root: PathBuf,
    /// Calico's `calico-typha` binary (`--calico-typha-bin`, `CALICO_TYPHA_BIN`), or why there
    /// is none; only the Calico cells need it, and without it they are not measured.
    pub calico_typha: Result<PathBuf, String>,
}

impl Env {
    fn apiserver_script(&self) -> PathBuf {
        self.repo_root.join("scripts/test-apiserver.sh")
    }

    /// One command line as the report records it: paths inside the repository relative to its
    /// root, the binaries under `target/release` (or `${CARGO_TARGET_DIR:-target}/release`
    /// when they were built elsewhere, as `make bench-report` does with `CARGO_TARGET_DIR` set;
    /// the same for `debug`), and Calico's Typha as `$CALICO_TYPHA_BIN`, so that the report
    /// does not carry the directory layout of the machine that ran it and its commands can be
    /// pasted at the root of any checkout ([`machine_paths`] checks each cell's). Temporary
    /// files (certificates, the API server's directory) keep their absolute paths: they exist
    /// only during the run.
    pub fn recorded(&self, argv: &[String]) -> String {
        const BIN: &str = "@BIN@";
        const CALICO_BIN: &str = "@CALICO_TYPHA_BIN@";
        let abs = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        let root = abs(&self.repo_root);
        let bin_dir = self.typha.parent().map(abs);
        let bin_label = bin_dir.as_ref().and_then(|d| {
            let profile = d.file_name()?.to_str()?;
            if !matches!(profile, "release" | "debug") {
                return None;
            }
            Some(if *d == root.join("target").join(profile) {
                format!("target/{profile}")
            } else {
                format!("${{CARGO_TARGET_DIR:-target}}/{profile}")
            })
        });
        let root_prefix = format!("{}/", root.display());
        // Calico's Typha lives wherever its builder put it: the variable that names it.
        let calico = self
            .calico_typha
            .as_ref()
            .ok()
            .map(|p| p.display().to_string());
        let rewritten: Vec<String> = argv
            .iter()
            .map(|a| {
                if calico.as_deref() == Some(a.as_str()) {
                    return CALICO_BIN.to_owned();
                }
                if let (Some(d), Some(_)) = (&bin_dir, &bin_label) {
                    if let Some(rest) = Path::new(a)
                        .strip_prefix(d)
                        .ok()
                        .filter(|_| a.starts_with('/'))
                    {
                        return format!("{BIN}/{}", rest.display());
                    }
                }
                if root_prefix.len() > 1 {
                    a.replace(&root_prefix, "")
                } else {
                    a.clone()
                }
            })
            .collect();
        let line = shell_line(&rewritten).replace(CALICO_BIN, "$CALICO_TYPHA_BIN");
        match bin_label {
            Some(label) => line.replace(BIN, &label),
            None => line,
        }
    }
}

/// The absolute paths in a recorded command line that are not temporary (under the temporary
/// directory, which exists only during the run), e.g. a checkout or a cache of this machine.
pub fn machine_paths(line: &str) -> Vec<String> {
    let tmp = std::env::temp_dir();
    line.split_whitespace()
        .map(|w| w.rsplit('=').next().unwrap_or(w).trim_matches('\''))
        .filter(|w| w.starts_with('/'))
        .filter(|w| !Path::new(w).starts_with(&tmp) && !Path::new(w).starts_with("/tmp"))
        .map(str::to_owned)
        .collect()
}

fn s(x: impl ToString) -> String {
    x.to_string()
}

/// One command line as a shell would take it.
pub fn shell_line(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty()
                && a.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./:=,@%+".contains(&b))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

struct Ports {
    server: u16,
    health: u16,
    metrics: u16,
}

fn free_ports() -> std::io::Result<Ports> {
    // Held together so the three differ.
    let a = TcpListener::bind("127.0.0.1:0")?;
    let b = TcpListener::bind("127.0.0.1:0")?;
    let c = TcpListener::bind("127.0.0.1:0")?;
    Ok(Ports {
        server: a.local_addr()?.port(),
        health: b.local_addr()?.port(),
        metrics: c.local_addr()?.port(),
    })
}

fn daemon_argv(env: &Env, ports: &Ports, datastore: &[String]) -> Vec<String> {
    let mut v = vec![
        env.typha.display().to_string(),
        s("--server-host"),
        s("127.0.0.1"),
        s("--server-port"),
        s(ports.server),
        s("--health-host"),
        s("127.0.0.1"),
        s("--health-port"),
        s(ports.health),
        s("--prometheus-metrics-host"),
        s("127.0.0.1"),
        s("--prometheus-metrics-port"),
        s(ports.metrics),
        s("--max-connections-upper-limit"),
        s(12_000),
    ];
    v.extend_from_slice(datastore);
    v
}

/// The CA, server and client certificates of the TLS cells, generated at run time (rcgen) into
/// a temporary directory; no key is ever written into the repository.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// The server's certificate CN (what the clients expect) and the clients' CN (what the daemon
/// requires), as in a Calico install.
pub const TLS_SERVER_CN: &str = "typha-server";
pub const TLS_CLIENT_CN: &str = "typha-client";

impl TlsFiles {
    fn in_dir(dir: &Path) -> TlsFiles {
        TlsFiles {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server-key.pem"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client-key.pem"),
        }
    }

    /// Generates a CA and a server and client certificate from it into `dir`.
    pub fn generate(dir: &Path) -> Result<TlsFiles, String> {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
            IsCa, KeyPair, KeyUsagePurpose,
        };
        let err = |e: rcgen::Error| format!("cannot generate the TLS certificates: {e}");
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let files = TlsFiles::in_dir(dir);
        let write = |path: &Path, text: &str| {
            std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
        };
        let mut p = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        p.distinguished_name
            .push(DnType::CommonName, "typha-loadtest bench CA");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(p, KeyPair::generate().map_err(err)?).map_err(err)?;
        write(&files.ca, &ca.pem())?;
        for (cn, usage, cert, key) in [
            (
                TLS_SERVER_CN,
                ExtendedKeyUsagePurpose::ServerAuth,
                &files.server_cert,
                &files.server_key,
            ),
            (
                TLS_CLIENT_CN,
                ExtendedKeyUsagePurpose::ClientAuth,
                &files.client_cert,
                &files.client_key,
            ),
        ] {
            let mut p = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
            p.distinguished_name.push(DnType::CommonName, cn);
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            p.extended_key_usages = vec![usage];
            let k = KeyPair::generate().map_err(err)?;
            let c = p.signed_by(&k, &ca).map_err(err)?;
            write(cert, &c.pem())?;
            write(key, &k.serialize_pem())?;
        }
        Ok(files)
    }

    fn daemon_args(&self) -> Vec<String> {
        vec![
            s("--server-cert-file"),
            self.server_cert.display().to_string(),
            s("--server-key-file"),
            self.server_key.display().to_string(),
            s("--ca-file"),
            self.ca.display().to_string(),
            s("--client-cn"),
            s(TLS_CLIENT_CN),
        ]
    }

    fn run_args(&self) -> Vec<String> {
        vec![
            s("--ca-file"),
            self.ca.display().to_string(),
            s("--cert-file"),
            self.client_cert.display().to_string(),
            s("--key-file"),
            self.client_key.display().to_string(),
            s("--server-cn"),
            s(TLS_SERVER_CN),
        ]
    }
}

fn sim_datastore(endpoints: usize, churn: f64) -> Vec<String> {
    vec![
        s("--datastore-type"),
        s("sim"),
        s("--sim-endpoints"),
        s(endpoints),
        s("--sim-churn-rate"),
        s(churn),
    ]
}

fn k8s_datastore(kubeconfig: &str) -> Vec<String> {
    vec![
        s("--datastore-type"),
        s("kubernetes"),
        s("--kubeconfig"),
        s(kubeconfig),
    ]
}

fn run_argv(env: &Env, ports: &Ports, pid: u32, clients: usize, ramp: f64, d: f64) -> Vec<String> {
    vec![
        env.loadtest.display().to_string(),
        s("run"),
        s("--addr"),
        format!("127.0.0.1:{}", ports.server),
        s("--metrics-addr"),
        format!("127.0.0.1:{}", ports.metrics),
        s("--target-pid"),
        s(pid),
        s("--clients"),
        s(clients),
        s("--ramp-per-sec"),
        s(ramp),
        s("--duration"),
        s(d),
        s("--json"),
    ]
}

/// Removes `flag` and its value from `argv`.
fn drop_flag(argv: &mut Vec<String>, flag: &str) {
    if let Some(i) = argv.iter().position(|a| a == flag) {
        argv.drain(i..(i + 2).min(argv.len()));
    }
}

/// `run --protocol typha`: the clients speak Felix's protocol.
fn felix_args(felix: bool) -> Vec<String> {
    if felix {
        vec![s("--protocol"), s("typha")]
    } else {
        Vec::new()
    }
}

/// What a Calico cell records when no binary was supplied (status `not-measured`).
pub const NOT_MEASURED_NO_CALICO: &str = "not measured: no calico-typha binary";
/// The status of such a cell: not a failure of the run.
pub const NOT_MEASURED: &str = "not-measured";

/// Calico's Typha on `ports`, watching the test API server: configured as the calico-typha
/// Deployment configures it, through `TYPHA_*` variables (and the datastore through
/// `DATASTORE_TYPE` and `KUBECONFIG`), passed with `env` so that the recorded command line
/// carries them. Without a binary, why the cell is not measured.
fn calico_typha_argv(env: &Env, ports: &Ports, kubeconfig: &str) -> Result<Vec<String>, String> {
    let bin = env
        .calico_typha
        .as_ref()
        .map_err(|e| format!("{NOT_MEASURED_NO_CALICO}: {e}"))?;
    let mut v = vec![s("env")];
    for (k, val) in [
        ("DATASTORE_TYPE", s("kubernetes")),
        ("KUBECONFIG", s(kubeconfig)),
        ("TYPHA_DATASTORETYPE", s("kubernetes")),
        ("TYPHA_SERVERHOST", s("127.0.0.1")),
        ("TYPHA_SERVERPORT", s(ports.server)),
        ("TYPHA_HEALTHENABLED", s("true")),
        ("TYPHA_HEALTHHOST", s("127.0.0.1")),
        ("TYPHA_HEALTHPORT", s(ports.health)),
        ("TYPHA_PROMETHEUSMETRICSENABLED", s("false")),
        ("TYPHA_LOGFILEPATH", s("none")),
        ("TYPHA_LOGSEVERITYSYS", s("none")),
        ("TYPHA_LOGSEVERITYSCREEN", s("WARNING")),
        ("TYPHA_MAXCONNECTIONSUPPERLIMIT", s(12_000)),
        ("TYPHA_MAXCONNECTIONSLOWERLIMIT", s(12_000)),
    ] {
        v.push(format!("{k}={val}"));
    }
    v.push(bin.display().to_string());
    Ok(v)
}

fn pubsub_argv(env: &Env, target: &str, n: usize, bytes: usize, rate: f64, d: f64) -> Vec<String> {
    vec![
        env.loadtest.display().to_string(),
        s("pubsub"),
        s("--target"),
        s(target),
        s("--subscribers"),
        s(n),
        s("--msg-bytes"),
        s(bytes),
        s("--rate"),
        s(rate),
        s("--duration"),
        s(d),
        s("--json"),
    ]
}

fn apiwatch_argv(
    env: &Env,
    api: &ApiServerProc,
    watchers: usize,
    rate: f64,
    d: f64,
) -> Vec<String> {
    vec![
        env.loadtest.display().to_string(),
        s("apiwatch"),
        s("--kubeconfig"),
        api.kubeconfig.clone(),
        s("--watchers"),
        s(watchers),
        s("--write-rate"),
        s(rate),
        s("--duration"),
        s(d),
        s("--apiserver-pid"),
        s(api.pid),
        s("--json"),
    ]
}

/// A finished child: exit code (None if killed), stdout, stderr.
#[derive(Debug, Default)]
struct ChildOutcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    timed_out: bool,
}

struct Running {
    child: Child,
    out: std::thread::JoinHandle<String>,
    err: std::thread::JoinHandle<String>,
}

fn spawn(argv: &[String]) -> std::io::Result<Running> {
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // Drained on threads so a chatty child never blocks on a full pipe.
    let mut so = child.stdout.take();
    let mut se = child.stderr.take();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(o) = so.as_mut() {
            let _ = o.read_to_string(&mut s);
        }
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(e) = se.as_mut() {
            let _ = e.read_to_string(&mut s);
        }
        s
    });
    Ok(Running { child, out, err })
}

fn finish(mut r: Running, timeout: Duration) -> ChildOutcome {
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        match r.child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if Instant::now() >= deadline => {
                timed_out = true;
                let _ = r.child.kill();
                break r.child.wait().ok();
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(_) => break None,
        }
    };
    ChildOutcome {
        code: status.and_then(|s| s.code()),
        stdout: r.out.join().unwrap_or_default(),
        stderr: r.err.join().unwrap_or_default(),
        timed_out,
    }
}

fn run_child(argv: &[String], timeout: Duration) -> ChildOutcome {
    match spawn(argv) {
        Ok(r) => finish(r, timeout),
        Err(e) => ChildOutcome {
            code: None,
            stderr: format!("cannot start {}: {e}", argv[0]),
            ..Default::default()
        },
    }
}

/// The last `n` characters of `s` (on a char boundary).
fn tail(s: &str, n: usize) -> String {
    if s.len() <= n {
        return s.to_owned();
    }
    let mut i = s.len() - n;
    while !s.is_char_boundary(i) {
        i += 1;
    }
    format!("…{}", &s[i..])
}

/// What a cell records of one child: its JSON (if it printed one) and whether it passed.
struct Recorded {
    json: Option<Value>,
    /// "ok" (exit 0), "failed" (exit 1: ran, but its checks failed), "error" (no result).
    status: &'static str,
    note: Option<String>,
}

fn record(name: &str, o: &ChildOutcome) -> Recorded {
    let json = serde_json::from_str::<Value>(o.stdout.trim())
        .ok()
        .filter(Value::is_object);
    let status = match (o.code, &json) {
        (Some(0), Some(_)) => "ok",
        (Some(1), Some(_)) => "failed",
        _ => "error",
    };
    let note = (status != "ok").then(|| {
        let why = if o.timed_out {
            "timed out and was killed".to_owned()
        } else {
            match o.code {
                Some(c) => format!("exit status {c}"),
                None => "no exit status".to_owned(),
            }
        };
        format!("{name}: {why}; stderr: {}", tail(o.stderr.trim(), 1500))
    });
    Recorded { json, status, note }
}

fn worst(a: &'static str, b: &'static str) -> &'static str {
    let rank = |s| match s {
        "ok" => 0,
        "failed" => 1,
        _ => 2,
    };
    if rank(b) > rank(a) {
        b
    } else {
        a
    }
}

/// A typha daemon started for one cell, stopped on drop.
struct DaemonProc {
    child: Child,
    log: PathBuf,
}

impl DaemonProc {
    fn start(argv: &[String], health: u16, log: PathBuf) -> Result<DaemonProc, String> {
        let file = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let file2 = file.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(file2)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", argv[0]))?;
        let mut d = DaemonProc { child, log };
        let addr = SocketAddr::from(([127, 0, 0, 1], health));
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            if let Ok(Some(st)) = d.child.try_wait() {
                return Err(format!("the daemon exited ({st}): {}", d.log_tail()));
            }
            if let Ok((200, _)) = http_get(addr, "/readiness", Duration::from_secs(2)) {
                return Ok(d);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the daemon was not ready in 180 s: {}",
                    d.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_tail(&self) -> String {
        tail(
            &std::fs::read_to_string(&self.log).unwrap_or_default(),
            1500,
        )
    }
}

impl Drop for DaemonProc {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: signalling our own child, which has not been reaped yet.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `typha_keys{syncer="felix"}` from the daemon's metrics.
fn felix_keys(metrics: u16) -> Option<u64> {
    let (code, body) = http_get(
        SocketAddr::from(([127, 0, 0, 1], metrics)),
        "/metrics",
        Duration::from_secs(5),
    )
    .ok()?;
    if code != 200 {
        return None;
    }
    body.lines()
        .find_map(|l| l.strip_prefix("typha_keys{syncer=\"felix\"} "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

/// The test API server, started once for all API-server cells and stopped on drop.
struct ApiServerProc {
    script: PathBuf,
    dir: PathBuf,
    kubeconfig: String,
    pid: u32,
    start_commands: Vec<String>,
}

impl ApiServerProc {
    fn start(env: &Env) -> Result<ApiServerProc, String> {
        let script = env.apiserver_script();
        let dir =
            std::env::temp_dir().join(format!("typha-bench-apiserver-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut start_commands = Vec::new();
        // It runs in its own session, so an interrupt of this process does not reach it.
        eprintln!(
            "typha-loadtest bench-report: starting the test API server in {}; if this run is \
             interrupted, stop it with: bash {} stop {}",
            dir.display(),
            script.display(),
            dir.display()
        );
        for sub in ["install", "start", "crds"] {
            let mut argv = vec![s("bash"), script.display().to_string(), s(sub)];
            if sub != "install" {
                argv.push(dir.display().to_string());
            }
            let o = run_child(&argv, Duration::from_secs(900));
            if o.code != Some(0) {
                return Err(format!(
                    "{} failed: {}",
                    env.recorded(&argv),
                    tail(o.stderr.trim(), 1500)
                ));
            }
            if sub != "install" {
                start_commands.push(env.recorded(&argv));
            }
        }
        let text = std::fs::read_to_string(dir.join("env"))
            .map_err(|e| format!("no env file from test-apiserver.sh: {e}"))?;
        let get = |k: &str| {
            text.lines()
                .filter_map(|l| l.split_once('='))
                .find(|(key, _)| key.trim() == k)
                .map(|(_, v)| v.trim().to_owned())
        };
        let kubeconfig = get("KUBECONFIG").ok_or("no KUBECONFIG in the env file")?;
        let pid = get("APISERVER_PID")
            .and_then(|p| p.parse().ok())
            .ok_or("no APISERVER_PID in the env file")?;
        Ok(ApiServerProc {
            script,
            dir,
            kubeconfig,
            pid,
            start_commands,
        })
    }
}

impl Drop for ApiServerProc {
    fn drop(&mut self) {
        let argv = [
            s("bash"),
            self.script.display().to_string(),
            s("stop"),
            self.dir.display().to_string(),
        ];
        let _ = run_child(&argv, Duration::from_secs(60));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Grace beyond a child's own duration before it is killed.
const CHILD_GRACE: Duration = Duration::from_secs(180);

fn secs(d: f64) -> Duration {
    Duration::from_secs_f64(d)
}

impl Cell {
    /// The cell's parameters as recorded.
    pub fn params(&self) -> Value {
        match &self.kind {
            CellKind::Run {
                group,
                felix,
                clients,
                churn,
                endpoints,
                keys,
                ramp,
                duration,
            } => json!({"kind": "run", "group": group.name(),
                "protocol": if *felix { "typha" } else { "native" }, "clients": clients,
                "churn": churn, "sim_endpoints": endpoints, "keys_nominal": keys,
                "ramp_per_sec": ramp, "duration_secs": duration,
                "tls": *group == RunGroup::Tls}),
            CellKind::Pubsub {
                target,
                subscribers,
                msg_bytes,
                rate,
                duration,
            } => json!({"kind": "pubsub", "target": target, "subscribers": subscribers,
                "msg_bytes": msg_bytes, "rate": rate, "duration_secs": duration}),
            CellKind::ApiDirect {
                watchers,
                write_rate,
                duration,
            } => json!({"kind": "apiserver-direct", "watchers": watchers,
                "write_rate": write_rate, "duration_secs": duration}),
            CellKind::ApiTypha {
                daemon,
                felix,
                clients,
                write_rate,
                duration,
            } => json!({"kind": "apiserver-typha", "daemon": daemon.name(),
                "protocol": if *felix { "typha" } else { "native" }, "clients": clients,
                "write_rate": write_rate, "duration_secs": duration}),
        }
    }

    /// A one-line description for `--list`.
    pub fn describe(&self, env: &Env) -> String {
        let ports = Ports {
            server: 25473,
            health: 29098,
            metrics: 29093,
        };
        match &self.kind {
            CellKind::Run {
                group,
                felix,
                clients,
                churn,
                endpoints,
                ramp,
                duration,
                ..
            } => {
                let mut dargv = daemon_argv(env, &ports, &sim_datastore(*endpoints, *churn));
                let mut rargv = run_argv(env, &ports, 0, *clients, *ramp, *duration);
                rargv.extend(felix_args(*felix));
                if *group == RunGroup::Tls {
                    let tls = TlsFiles::in_dir(Path::new("$TMPDIR/tls"));
                    dargv.extend(tls.daemon_args());
                    rargv.extend(tls.run_args());
                }
                format!("{} & {}", env.recorded(&dargv), env.recorded(&rargv))
            }
            CellKind::Pubsub {
                target,
                subscribers,
                msg_bytes,
                rate,
                duration,
            } => env.recorded(&pubsub_argv(
                env,
                target,
                *subscribers,
                *msg_bytes,
                *rate,
                *duration,
            )),
            CellKind::ApiDirect { watchers, .. } => {
                format!("test API server + apiwatch --watchers {watchers}")
            }
            CellKind::ApiTypha {
                daemon: ApiDaemon::TyphaRs,
                felix,
                clients,
                ..
            } => format!(
                "test API server + typha --datastore-type kubernetes + run --clients {clients}{} \
                 + apiwatch --watchers 0",
                if *felix { " --protocol typha" } else { "" }
            ),
            CellKind::ApiTypha {
                daemon: ApiDaemon::Calico,
                clients,
                ..
            } => format!(
                "test API server + calico-typha + run --clients {clients} --protocol typha \
                 + apiwatch --watchers 0"
            ),
        }
    }

    fn needs_apiserver(&self) -> bool {
        matches!(
            self.kind,
            CellKind::ApiDirect { .. } | CellKind::ApiTypha { .. }
        )
    }

    /// The cell runs Calico's Typha (`--calico-typha-bin`).
    pub fn needs_calico_typha(&self) -> bool {
        matches!(
            self.kind,
            CellKind::ApiTypha {
                daemon: ApiDaemon::Calico,
                ..
            }
        )
    }
}

/// Runs every cell in order; after each, `save` gets the records so far.
pub fn run_all(
    env: &Env,
    cells: &[Cell],
    mut save: impl FnMut(&[Value]) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let logs = std::env::temp_dir().join(format!("typha-bench-{}", std::process::id()));
    std::fs::create_dir_all(&logs)?;
    let mut api: Option<Result<ApiServerProc, String>> = None;
    let mut records = Vec::new();
    for (i, cell) in cells.iter().enumerate() {
        eprintln!(
            "typha-loadtest bench-report: [{}/{}] {}",
            i + 1,
            cells.len(),
            cell.id
        );
        let started = Instant::now();
        let mut rec = json!({
            "id": cell.id,
            "params": cell.params(),
            "commands": [],
            "results": {},
        });
        let outcome = if cell.needs_apiserver() {
            let api = api.get_or_insert_with(|| ApiServerProc::start(env));
            match api {
                Ok(a) => run_api_cell(env, cell, a, &logs, &mut rec),
                Err(e) => Err(format!("the test API server did not start: {e}")),
            }
        } else {
            run_local_cell(env, cell, &logs, &mut rec)
        };
        let (mut status, mut notes) = match outcome {
            Ok(x) => x,
            Err(e) => ("error", vec![e]),
        };
        // A report's commands must run at the root of any checkout.
        let foreign: Vec<String> = rec["commands"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .flat_map(machine_paths)
            .collect();
        if !foreign.is_empty() {
            status = "error";
            notes.push(format!(
                "a recorded command carries a path of this machine (not relative to the \
                 repository root, nor temporary): {}",
                foreign.join(", ")
            ));
        }
        rec["status"] = json!(status);
        rec["errors"] = json!(notes);
        rec["elapsed_secs"] = json!(started.elapsed().as_secs_f64());
        eprintln!("typha-loadtest bench-report:   {status}");
        for n in &notes {
            eprintln!("typha-loadtest bench-report:   {n}");
        }
        records.push(rec);
        save(&records)?;
    }
    drop(api);
    let _ = std::fs::remove_dir_all(&logs);
    Ok(())
}

type CellOutcome = Result<(&'static str, Vec<String>), String>;

fn push_command(env: &Env, rec: &mut Value, argv: &[String]) {
    if let Some(a) = rec["commands"].as_array_mut() {
        a.push(json!(env.recorded(argv)));
    }
}

fn run_local_cell(env: &Env, cell: &Cell, logs: &Path, rec: &mut Value) -> CellOutcome {
    match &cell.kind {
        CellKind::Run {
            group,
            felix,
            clients,
            churn,
            endpoints,
            ramp,
            duration,
            ..
        } => {
            let ports = free_ports().map_err(|e| format!("no free port: {e}"))?;
            let mut dargv = daemon_argv(env, &ports, &sim_datastore(*endpoints, *churn));
            let tls = if *group == RunGroup::Tls {
                // Per cell, in the run's temporary directory (removed at the end).
                let files = TlsFiles::generate(&logs.join(format!("{}-tls", cell.id)))?;
                dargv.extend(files.daemon_args());
                Some(files)
            } else {
                None
            };
            push_command(env, rec, &dargv);
            let daemon =
                DaemonProc::start(&dargv, ports.health, logs.join(format!("{}.log", cell.id)))?;
            rec["snapshot_keys"] = json!(felix_keys(ports.metrics));
            // Let the daemon's start-up work settle before the clients' window starts.
            std::thread::sleep(Duration::from_secs(1));
            let mut rargv = run_argv(env, &ports, daemon.pid(), *clients, *ramp, *duration);
            rargv.extend(felix_args(*felix));
            if let Some(files) = &tls {
                rargv.extend(files.run_args());
            }
            push_command(env, rec, &rargv);
            let o = run_child(&rargv, secs(*duration) + CHILD_GRACE);
            let r = record("run", &o);
            rec["results"]["run"] = r.json.unwrap_or(Value::Null);
            drop(daemon);
            Ok((r.status, r.note.into_iter().collect()))
        }
        CellKind::Pubsub {
            target,
            subscribers,
            msg_bytes,
            rate,
            duration,
        } => {
            let argv = pubsub_argv(env, target, *subscribers, *msg_bytes, *rate, *duration);
            push_command(env, rec, &argv);
            let o = run_child(&argv, secs(*duration) + CHILD_GRACE);
            let r = record("pubsub", &o);
            rec["results"]["pubsub"] = r.json.unwrap_or(Value::Null);
            Ok((r.status, r.note.into_iter().collect()))
        }
        _ => Err("not a local cell".into()),
    }
}

fn run_api_cell(
    env: &Env,
    cell: &Cell,
    api: &ApiServerProc,
    logs: &Path,
    rec: &mut Value,
) -> CellOutcome {
    for c in &api.start_commands {
        if let Some(a) = rec["commands"].as_array_mut() {
            a.push(json!(c));
        }
    }
    match &cell.kind {
        CellKind::ApiDirect {
            watchers,
            write_rate,
            duration,
        } => {
            let argv = apiwatch_argv(env, api, *watchers, *write_rate, *duration);
            push_command(env, rec, &argv);
            let o = run_child(&argv, secs(*duration) + CHILD_GRACE);
            let r = record("apiwatch", &o);
            rec["results"]["apiwatch"] = r.json.unwrap_or(Value::Null);
            Ok((r.status, r.note.into_iter().collect()))
        }
        CellKind::ApiTypha {
            daemon,
            felix,
            clients,
            write_rate,
            duration,
        } => {
            let ports = free_ports().map_err(|e| format!("no free port: {e}"))?;
            let dargv = match daemon {
                ApiDaemon::TyphaRs => daemon_argv(env, &ports, &k8s_datastore(&api.kubeconfig)),
                ApiDaemon::Calico => match calico_typha_argv(env, &ports, &api.kubeconfig) {
                    Ok(argv) => argv,
                    Err(why) => return Ok((NOT_MEASURED, vec![why])),
                },
            };
            let which = *daemon;
            push_command(env, rec, &dargv);
            let daemon =
                DaemonProc::start(&dargv, ports.health, logs.join(format!("{}.log", cell.id)))?;
            if which == ApiDaemon::TyphaRs {
                rec["snapshot_keys"] = json!(felix_keys(ports.metrics));
            }
            // The clients connect and take their snapshots first; the writes start once they
            // have had time to (ramp at 1,000/s, then 3 s).
            let lead = *clients as f64 / 1000.0 + 3.0;
            let mut rargv = run_argv(
                env,
                &ports,
                daemon.pid(),
                *clients,
                1000.0,
                duration + lead + 2.0,
            );
            rargv.extend(felix_args(*felix));
            if which == ApiDaemon::Calico {
                // Calico's Typha has neither typha-rs' fan-out counters nor `/digest`: the run
                // measures its CPU and RSS (--target-pid) and what the clients received.
                drop_flag(&mut rargv, "--metrics-addr");
            }
            push_command(env, rec, &rargv);
            let running = spawn(&rargv).map_err(|e| format!("cannot start {}: {e}", rargv[0]))?;
            std::thread::sleep(secs(lead));
            let wargv = apiwatch_argv(env, api, 0, *write_rate, *duration);
            push_command(env, rec, &wargv);
            let wo = run_child(&wargv, secs(*duration) + CHILD_GRACE);
            let ro = finish(running, secs(*duration + lead + 2.0) + CHILD_GRACE);
            drop(daemon);
            let w = record("apiwatch (writer)", &wo);
            let r = record("run", &ro);
            rec["results"]["apiwatch"] = w.json.unwrap_or(Value::Null);
            rec["results"]["run"] = r.json.unwrap_or(Value::Null);
            Ok((
                worst(w.status, r.status),
                w.note.into_iter().chain(r.note).collect(),
            ))
        }
        _ => Err("not an API server cell".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrices() {
        let full = full();
        let ids: Vec<&str> = full.iter().map(|c| c.id.as_str()).collect();
        let unique: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len(), "duplicate ids: {ids:?}");
        assert!(ids.contains(&"fanout-n10000-churn1000-keys10k"));
        assert!(ids.contains(&"storm-n10000-churn100-keys50k"));
        assert!(ids.contains(&"pubsub-redis-n10000-512B-100hz"));
        assert!(ids.contains(&"apiserver-direct-n3000"));
        assert!(ids.contains(&"apiserver-typha-n3000"));
        // Each TLS cell has its plaintext fan-out twin (same clients, churn, snapshot, ramp
        // and duration).
        let tls: Vec<&Cell> = full.iter().filter(|c| c.id.starts_with("tls-")).collect();
        assert_eq!(tls.len(), 2);
        for quick_or_full in [full.clone(), quick()] {
            for t in quick_or_full.iter().filter(|c| c.id.starts_with("tls-")) {
                let twin = format!("fanout-{}", &t.id["tls-".len()..]);
                let p = quick_or_full.iter().find(|c| c.id == twin).expect(&twin);
                let (CellKind::Run { group, .. }, CellKind::Run { group: g2, .. }) =
                    (&t.kind, &p.kind)
                else {
                    panic!("not run cells")
                };
                assert_eq!((*group, *g2), (RunGroup::Tls, RunGroup::Fanout));
                let mut twin_kind = t.kind.clone();
                if let CellKind::Run { group, .. } = &mut twin_kind {
                    *group = RunGroup::Fanout;
                }
                assert_eq!(twin_kind, p.kind);
                assert_eq!(t.params()["tls"], true);
                assert_eq!(p.params()["tls"], false);
            }
        }
        assert_eq!(
            quick().iter().filter(|c| c.id.starts_with("tls-")).count(),
            1
        );
        // The measured time of the full matrix fits its 25-minute budget with start-up.
        let measured: f64 = full
            .iter()
            .map(|c| match c.kind {
                CellKind::Run { duration, .. }
                | CellKind::Pubsub { duration, .. }
                | CellKind::ApiDirect { duration, .. }
                | CellKind::ApiTypha { duration, .. } => duration,
            })
            .sum();
        assert!(measured < 19.0 * 60.0, "{measured} s");
        let quick: f64 = quick()
            .iter()
            .map(|c| match c.kind {
                CellKind::Run { duration, .. }
                | CellKind::Pubsub { duration, .. }
                | CellKind::ApiDirect { duration, .. }
                | CellKind::ApiTypha { duration, .. } => duration,
            })
            .sum();
        assert!(quick < 90.0, "{quick} s");
        // Every Felix-protocol cell has its native twin, identical but for the protocol.
        for m in [full.clone(), crate::matrix::quick()] {
            let felix: Vec<&Cell> = m.iter().filter(|c| c.id.starts_with("felix-")).collect();
            assert!(felix.len() >= 3);
            for fc in felix {
                let twin = m
                    .iter()
                    .find(|c| c.id == fc.id["felix-".len()..])
                    .expect(&fc.id);
                let mut k = fc.kind.clone();
                if let CellKind::Run {
                    felix: ref mut is_felix,
                    ..
                } = k
                {
                    assert!(*is_felix);
                    *is_felix = false;
                }
                assert_eq!(k, twin.kind);
                assert_eq!(fc.params()["protocol"], "typha");
                assert_eq!(twin.params()["protocol"], "native");
            }
            // typha-rs and Calico's Typha side by side, both on Felix's protocol.
            let vs: Vec<&Cell> = m
                .iter()
                .filter(|c| c.id.starts_with("apiserver-felix-"))
                .collect();
            assert_eq!(vs.len(), 2);
            assert_eq!(vs.iter().filter(|c| c.needs_calico_typha()).count(), 1);
        }
        let env = Env {
            typha: "/r/target/release/typha".into(),
            loadtest: "/r/target/release/typha-loadtest".into(),
            repo_root: "/r".into(),
            calico_typha: Ok("/cache/calico-typha/0123/calico-typha".into()),
        };
        let argv = calico_typha_argv(
            &env,
            &Ports {
                server: 1,
                health: 2,
                metrics: 3,
            },
            "/k",
        )
        .unwrap();
        assert_eq!(argv[0], "env");
        for kv in [
            "TYPHA_SERVERPORT=1",
            "TYPHA_HEALTHPORT=2",
            "KUBECONFIG=/k",
            "TYPHA_DATASTORETYPE=kubernetes",
        ] {
            assert!(argv.iter().any(|a| a == kv), "{kv}: {argv:?}");
        }
        assert_eq!(
            argv.last().unwrap(),
            "/cache/calico-typha/0123/calico-typha"
        );
        // Recorded as the variable that names it, not this machine's path.
        assert!(
            env.recorded(&argv).ends_with(" $CALICO_TYPHA_BIN"),
            "{}",
            env.recorded(&argv)
        );
        let missing = Env {
            calico_typha: Err("pass --calico-typha-bin".into()),
            ..env
        };
        assert!(calico_typha_argv(
            &missing,
            &Ports {
                server: 1,
                health: 2,
                metrics: 3
            },
            "/k"
        )
        .unwrap_err()
        .starts_with("not measured: no calico-typha binary: pass --calico-typha-bin"));
        let mut a = vec![s("run"), s("--metrics-addr"), s("127.0.0.1:3"), s("--json")];
        drop_flag(&mut a, "--metrics-addr");
        assert_eq!(a, [s("run"), s("--json")]);
        assert_eq!(select(full.clone(), Some("storm")).len(), 3);
        assert_eq!(
            select(full.clone(), Some("apiserver-direct, idle")).len(),
            5
        );
        assert_eq!(select(full.clone(), None).len(), full.len());
        assert!(select(full, Some("nothing")).is_empty());
    }

    #[test]
    fn sim_sizes_and_quoting() {
        // The two measured points the estimate comes from.
        assert!((endpoints_for_keys(3736) as i64 - 3000).abs() < 10);
        assert!((endpoints_for_keys(52_236) as i64 - 50_000).abs() < 10);
        assert_eq!(endpoints_for_keys(0), 1);
        assert_eq!(
            shell_line(&[s("a"), s("--x"), s("127.0.0.1:5"), s("it's"), s("")]),
            r"a --x 127.0.0.1:5 'it'\''s' ''"
        );
        assert_eq!(tail("abcdef", 3), "…def");
        assert_eq!(tail("ab", 3), "ab");
    }

    #[test]
    fn recorded_commands_carry_no_machine_path() {
        let root = std::env::temp_dir().join(format!("bench-root-{}", std::process::id()));
        let release = root.join("target/release");
        std::fs::create_dir_all(&release).unwrap();
        let root = std::fs::canonicalize(&root).unwrap();
        let script = root.join("scripts/test-apiserver.sh");
        let argv = |bin: &Path| {
            vec![
                bin.join("typha").display().to_string(),
                s("--addr"),
                s("127.0.0.1:5473"),
                script.display().to_string(),
                s("/tmp/typha-bench-tls-1/ca.pem"),
            ]
        };
        let env = |bin: &Path| Env {
            typha: bin.join("typha"),
            loadtest: bin.join("typha-loadtest"),
            repo_root: root.clone(),
            calico_typha: Err("not built".into()),
        };
        // Built by `make bench-report` into the repository's own target directory.
        assert_eq!(
            env(&release).recorded(&argv(&release)),
            "target/release/typha --addr 127.0.0.1:5473 scripts/test-apiserver.sh \
             /tmp/typha-bench-tls-1/ca.pem"
        );
        // Built with CARGO_TARGET_DIR elsewhere: the variable, not this machine's directory.
        let elsewhere =
            std::env::temp_dir().join(format!("bench-tgt-{}/release", std::process::id()));
        std::fs::create_dir_all(&elsewhere).unwrap();
        let line = env(&elsewhere).recorded(&argv(&elsewhere));
        assert!(
            line.starts_with("${CARGO_TARGET_DIR:-target}/release/typha --addr"),
            "{line}"
        );
        assert!(line.contains(" scripts/test-apiserver.sh "), "{line}");
        assert!(!line.contains(&root.display().to_string()), "{line}");
        assert!(machine_paths(&line).is_empty(), "{line}");
        assert_eq!(
            machine_paths(
                "env KUBECONFIG=/tmp/x/kubeconfig /work/bin/t --ca '/root/c a' -f=/opt/x"
            ),
            ["/work/bin/t", "/root/c", "/opt/x"]
        );
        let _ = std::fs::remove_dir_all(&root);
        let _ = std::fs::remove_dir_all(elsewhere.parent().unwrap());
        assert_eq!(worst("ok", "failed"), "failed");
        assert_eq!(worst("error", "failed"), "error");
    }

    #[test]
    fn tls_cells_get_generated_certificates_and_the_tls_flags() {
        let dir = std::env::temp_dir().join(format!("typha-bench-tls-test-{}", std::process::id()));
        let files = TlsFiles::generate(&dir).unwrap();
        for p in [
            &files.ca,
            &files.server_cert,
            &files.server_key,
            &files.client_cert,
            &files.client_key,
        ] {
            let text = std::fs::read_to_string(p).unwrap();
            assert!(text.starts_with("-----BEGIN "), "{}", p.display());
        }
        // The client's library accepts the files: a CA, a client certificate and its key.
        typha::client::tls::ClientTls::from_files(&typha::client::tls::ClientTlsOptions {
            ca_file: files.ca.clone(),
            cert_file: Some(files.client_cert.clone()),
            key_file: Some(files.client_key.clone()),
            server_cn: Some(TLS_SERVER_CN.into()),
            server_uri_san: None,
        })
        .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let env = Env {
            typha: "typha".into(),
            loadtest: "typha-loadtest".into(),
            repo_root: ".".into(),
            calico_typha: Err("not built".into()),
        };
        let cell = quick()
            .into_iter()
            .find(|c| c.id.starts_with("tls-"))
            .unwrap();
        let line = cell.describe(&env);
        for flag in [
            "--server-cert-file",
            "--server-key-file",
            "--client-cn typha-client",
            "--cert-file",
            "--key-file",
            "--server-cn typha-server",
        ] {
            assert!(line.contains(flag), "{flag}: {line}");
        }
        assert_eq!(line.matches("--ca-file").count(), 2, "{line}");
    }

    #[test]
    fn a_missing_command_is_recorded_not_fatal() {
        let o = run_child(&[s("/nonexistent/typha-loadtest"), s("pubsub")], secs(5.0));
        let r = record("pubsub", &o);
        assert_eq!(r.status, "error");
        assert!(r.json.is_none());
        let note = r.note.unwrap();
        assert!(note.contains("cannot start /nonexistent"), "{note}");
        let o = run_child(
            &[
                s("sh"),
                s("-c"),
                s("echo '{\"passed\":false}'; echo bad >&2; exit 1"),
            ],
            secs(5.0),
        );
        let r = record("run", &o);
        assert_eq!(r.status, "failed");
        assert_eq!(r.json.unwrap()["passed"], false);
        assert!(r.note.unwrap().contains("exit status 1; stderr: bad"));
        let o = run_child(&[s("sleep"), s("5")], secs(0.2));
        assert!(o.timed_out);
        assert!(record("x", &o).note.unwrap().contains("timed out"));
    }
}
