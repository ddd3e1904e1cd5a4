//! The harness only talks to loopback: a daemon, a metrics endpoint or an API server elsewhere
//! is refused before anything connects.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

/// Whether `ip` is loopback: 127.0.0.0/8 or ::1 (an IPv4-mapped address is not accepted).
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.octets()[0] == 127,
        IpAddr::V6(v6) => v6.is_loopback(),
    }
}

/// Parses `ip:port` (`[v6]:port` for IPv6) and refuses anything but loopback.
pub fn parse_loopback_addr(flag: &str, s: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = s.trim().parse().map_err(|_| {
        format!("{flag} {s:?} is not an address of the form IP:PORT (e.g. 127.0.0.1:5473)")
    })?;
    if !is_loopback(addr.ip()) {
        return Err(format!(
            "{flag} {addr}: typha-loadtest only connects to loopback addresses (127.0.0.0/8 or \
             ::1); run it on the daemon's host"
        ));
    }
    if addr.port() == 0 {
        return Err(format!("{flag} {addr}: port 0 is not a listening port"));
    }
    Ok(addr)
}

/// The host of a server URL (`https://host:port/path`), without brackets for IPv6.
pub fn url_host(url: &str) -> Option<&str> {
    let rest = url.trim();
    let rest = rest.split_once("://").map_or(rest, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = hostport.strip_prefix('[') {
        v6.split_once(']')?.0
    } else {
        hostport.split(':').next().unwrap_or("")
    };
    (!host.is_empty()).then_some(host)
}

/// Whether a server URL's host is loopback: 127.0.0.0/8, ::1 or `localhost`.
pub fn is_loopback_url(url: &str) -> bool {
    match url_host(url) {
        Some(h) if h.eq_ignore_ascii_case("localhost") || h.eq_ignore_ascii_case("localhost.") => {
            true
        }
        Some(h) => h.parse::<IpAddr>().is_ok_and(is_loopback),
        None => false,
    }
}

/// Why a kubeconfig is refused: its server is not on loopback.
pub fn refuse(path: &Path, server: &str) -> String {
    format!(
        "--kubeconfig {}: the API server {server} is not on loopback (127.0.0.0/8, ::1 or \
         localhost); churn only drives a local test API server",
        path.display()
    )
}

/// The server URL of the kubeconfig's current context, refused unless it is on loopback.
pub fn loopback_server(path: &Path) -> Result<String, String> {
    let kc = kube::config::Kubeconfig::read_from(path)
        .map_err(|e| format!("--kubeconfig {}: {e}", path.display()))?;
    let ctx_name = kc
        .current_context
        .clone()
        .ok_or_else(|| format!("--kubeconfig {}: no current-context", path.display()))?;
    let ctx = kc
        .contexts
        .iter()
        .find(|c| c.name == ctx_name)
        .and_then(|c| c.context.as_ref())
        .ok_or_else(|| {
            format!(
                "--kubeconfig {}: current-context {ctx_name:?} is not defined",
                path.display()
            )
        })?;
    let server = kc
        .clusters
        .iter()
        .find(|c| c.name == ctx.cluster)
        .and_then(|c| c.cluster.as_ref())
        .and_then(|c| c.server.clone())
        .ok_or_else(|| {
            format!(
                "--kubeconfig {}: cluster {:?} has no server",
                path.display(),
                ctx.cluster
            )
        })?;
    if !is_loopback_url(&server) {
        return Err(refuse(path, &server));
    }
    Ok(server)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_urls() {
        for ok in [
            "https://127.0.0.1:6443",
            "https://127.9.8.7",
            "https://[::1]:6443/",
            "https://localhost:6443",
            "http://LOCALHOST",
            "https://user@127.0.0.1:1/api",
            "127.0.0.1:6443",
        ] {
            assert!(is_loopback_url(ok), "{ok}");
        }
        for bad in [
            "https://10.0.0.1:6443",
            "https://0.0.0.0:6443",
            "https://[::]:6443",
            "https://[::ffff:127.0.0.1]:6443",
            "https://localhost.example.com",
            "https://kubernetes.default.svc",
            "https://127.0.0.1.nip.io",
            "https://",
            "",
        ] {
            assert!(!is_loopback_url(bad), "{bad}");
        }
    }
}
