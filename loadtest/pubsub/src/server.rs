//! The server under test as a child process on a free loopback port: started, waited for,
//! sampled through `/proc`, and killed and reaped when its guard drops (also on error paths).

use super::{PubsubConfig, Target};
use anyhow::{anyhow, bail, Context};
use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running server; dropping it kills and reaps the process and removes its scratch directory.
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    pub pid: u32,
    /// Where subscribers connect.
    pub addr: SocketAddr,
    /// Where the publisher connects (the bare writer's control port; the same as `addr` for
    /// Redis and NATS; unused for typha, whose datastore publishes).
    pub publish_addr: SocketAddr,
    pub version: String,
    dir: PathBuf,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl ServerProcess {
    fn log_tail(&self) -> String {
        let text = fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// The server's CPU time and RSS now; an error (with its log) if it has exited.
    pub fn sample(&self) -> anyhow::Result<typha_loadtest_common::sys::ProcSample> {
        typha_loadtest_common::sys::sample_process(self.pid).map_err(|e| {
            anyhow!(
                "the server (pid {}) exited during the run ({e}); its log:\n{}",
                self.pid,
                self.log_tail()
            )
        })
    }

    /// Waits until the subscriber port accepts a connection, or fails with the server's log.
    fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "the server exited ({status}) before accepting connections; its log:\n{}",
                    self.log_tail()
                );
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "the server did not accept connections on {} within {timeout:?}; its log:\n{}",
                    self.addr,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Makes the kernel kill the server if the harness dies without running its guard (a signal,
/// an abort): no server is left running on a port after an interrupted run.
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before exec and calls only async-signal-safe
    // functions (prctl, getppid).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before the prctl took effect.
            if libc::getppid() as u32 != parent {
                return Err(std::io::Error::other("the harness is gone"));
            }
            Ok(())
        });
    }
}

/// A port that was free a moment ago (the server binds it right after).
fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind(("127.0.0.1", 0)).context("cannot bind a loopback port")?;
    Ok(l.local_addr()?.port())
}

/// `name` on `PATH`, or in the sbin/bin directories Debian installs servers to (not always on
/// a user's `PATH`).
fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(
            ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"]
                .iter()
                .map(PathBuf::from),
        )
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn binary(cfg: &PubsubConfig) -> anyhow::Result<PathBuf> {
    if let Some(p) = &cfg.server_bin {
        if !p.is_file() {
            bail!("--server-bin {} is not a file", p.display());
        }
        return Ok(p.clone());
    }
    match cfg.target {
        Target::Redis => find_binary("redis-server").ok_or_else(|| {
            anyhow!("redis-server not found: apt-get install redis-server (or run scripts/install-bench-deps.sh)")
        }),
        Target::Nats => find_binary("nats-server").ok_or_else(|| {
            anyhow!("nats-server not found: apt-get install nats-server (or run scripts/install-bench-deps.sh)")
        }),
        Target::Bare => std::env::current_exe().context("cannot find this executable"),
        Target::Typha | Target::TyphaFelix => {
            let exe = std::env::current_exe().context("cannot find this executable")?;
            let p = exe.with_file_name("typha");
            if !p.is_file() {
                bail!(
                    "no typha binary next to {} (build it with `cargo build --release --bin typha`, or pass --server-bin)",
                    exe.display()
                );
            }
            Ok(p)
        }
    }
}

/// `redis-server 7.0.15`, `nats-server 2.9.10`, `typha 0.1.0`: the first line of `--version`,
/// tidied.
fn version(target: Target, bin: &Path) -> String {
    if target == Target::Bare {
        return concat!(
            "bare-writer (typha-loadtest ",
            env!("CARGO_PKG_VERSION"),
            ")"
        )
        .into();
    }
    let out = Command::new(bin).arg("--version").output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let first = text.lines().next().unwrap_or("").trim();
    match target {
        Target::Redis => first
            .split_whitespace()
            .find_map(|w| w.strip_prefix("v="))
            .map_or_else(|| first.to_string(), |v| format!("redis-server {v}")),
        Target::Nats => first
            .split_whitespace()
            .last()
            .map(|v| format!("nats-server {}", v.trim_start_matches('v')))
            .unwrap_or_default(),
        _ => first.to_string(),
    }
}

/// Connections the server must accept: the subscribers, the publisher and some slack.
fn max_clients(cfg: &PubsubConfig) -> usize {
    cfg.subscribers + 64
}

fn write_config(cfg: &PubsubConfig, dir: &Path, port: u16) -> anyhow::Result<Option<PathBuf>> {
    let text = match cfg.target {
        // No persistence, no client cut for a growing output buffer (pubsub 0 0 0): a slow
        // subscriber shows as latency, as it does with the other targets.
        Target::Redis => format!(
            "port {port}\nbind 127.0.0.1\nprotected-mode no\ndaemonize no\nsave \"\"\n\
             appendonly no\nmaxclients {}\ntcp-backlog 4096\n\
             client-output-buffer-limit pubsub 0 0 0\nclient-output-buffer-limit normal 0 0 0\n\
             dir {}\nlogfile \"\"\n",
            max_clients(cfg),
            dir.display()
        ),
        // A slow consumer is cut when its pending bytes pass max_pending or a write blocks
        // longer than write_deadline: both raised so nobody is cut during a run.
        Target::Nats => format!(
            "listen: 127.0.0.1:{port}\nmax_connections: {}\nmax_payload: {}\n\
             max_pending: 1073741824\nwrite_deadline: \"300s\"\nping_interval: \"120s\"\n",
            max_clients(cfg),
            cfg.msg_bytes.max(1 << 20)
        ),
        Target::Bare | Target::Typha | Target::TyphaFelix => return Ok(None),
    };
    let path = dir.join("server.conf");
    fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(Some(path))
}

pub fn start(cfg: &PubsubConfig) -> anyhow::Result<ServerProcess> {
    let bin = binary(cfg)?;
    let port = free_port()?;
    let control = free_port()?;
    let dir = std::env::temp_dir().join(format!(
        "typha-pubsub-{}-{}-{port}",
        std::process::id(),
        cfg.target.name()
    ));
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let conf = write_config(cfg, &dir, port)?;
    let mut cmd = Command::new(&bin);
    match cfg.target {
        Target::Redis => {
            cmd.arg(conf.as_deref().unwrap_or(Path::new("")));
        }
        Target::Nats => {
            cmd.arg("-c").arg(conf.as_deref().unwrap_or(Path::new("")));
        }
        Target::Bare => {
            cmd.args(["bare-writer", "--port", &port.to_string()])
                .args(["--control-port", &control.to_string()])
                .args(["--msg-bytes", &cfg.msg_bytes.to_string()]);
        }
        Target::Typha | Target::TyphaFelix => {
            // The environment must not change the daemon's settings behind the harness' back.
            for (k, _) in std::env::vars_os() {
                if k.to_string_lossy().starts_with("TYPHA_") {
                    cmd.env_remove(k);
                }
            }
            // A tiny cluster whose only traffic is the payload stream; every update is its own
            // batch (max batch size 1) and goes out uncompressed.
            cmd.args(["--config-file", "/dev/null", "--datastore-type", "sim"])
                .args([
                    "--server-host",
                    "127.0.0.1",
                    "--server-port",
                    &port.to_string(),
                ])
                .args([
                    "--health-enabled",
                    "false",
                    "--prometheus-metrics-enabled",
                    "false",
                ])
                .args(["--log-severity-screen", "warning"])
                .args([
                    "--max-connections-upper-limit",
                    &max_clients(cfg).to_string(),
                ])
                .args([
                    "--server-compression",
                    "none",
                    "--snapshot-cache-max-batch-size",
                    "1",
                ])
                .args([
                    "--sim-nodes",
                    "1",
                    "--sim-endpoints",
                    "0",
                    "--sim-namespaces",
                    "1",
                ])
                .args(["--sim-policies", "0", "--sim-churn-rate", "0"])
                .args(["--sim-payload-bytes", &cfg.msg_bytes.to_string()])
                .args(["--sim-payload-rate", &cfg.rate.to_string()]);
        }
    }
    let log = fs::File::create(dir.join("server.log"))?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log));
    die_with_parent(&mut cmd);
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let _ = fs::remove_dir_all(&dir);
            bail!("cannot start {}: {e}", bin.display());
        }
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut server = ServerProcess {
        pid: child.id(),
        child,
        addr,
        publish_addr: match cfg.target {
            Target::Bare => SocketAddr::from(([127, 0, 0, 1], control)),
            _ => addr,
        },
        version: version(cfg.target, &bin),
        dir,
    };
    server.wait_ready(Duration::from_secs(30))?;
    Ok(server)
}
