//! The operating system's side: file descriptor limits and per-process CPU time and RSS from
//! `/proc`.

use std::io;

/// CPU time (user + system) and resident set size of a process at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcSample {
    pub cpu_secs: f64,
    pub rss_bytes: u64,
}

/// `utime + stime` in clock ticks from the text of `/proc/PID/stat`.
///
/// The second field (the command name) is in parentheses and may itself contain spaces and
/// parentheses, so fields are counted from the last `)`: after it come field 3 (`state`)
/// onwards, and `utime`, `stime` are fields 14 and 15.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    // fields[0] is field 3; utime (field 14) is fields[11].
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    utime.checked_add(stime)
}

/// `VmRSS` in bytes from the text of `/proc/PID/status` (`VmRSS:  12345 kB`).
pub fn parse_vmrss_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut parts = line["VmRSS:".len()..].split_ascii_whitespace();
    let n: u64 = parts.next()?.parse().ok()?;
    let mult = match parts.next() {
        Some("kB") | None => 1024,
        Some("mB") => 1024 * 1024,
        Some(_) => return None,
    };
    n.checked_mul(mult)
}

/// Clock ticks per second, as `/proc/PID/stat` counts CPU time.
pub fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Samples `pid`'s CPU time and RSS.
pub fn sample_process(pid: u32) -> io::Result<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let ticks = parse_stat_cpu_ticks(&stat)
        .ok_or_else(|| invalid(format!("cannot parse /proc/{pid}/stat")))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss = parse_vmrss_bytes(&status)
        .ok_or_else(|| invalid(format!("no VmRSS in /proc/{pid}/status")))?;
    Ok(ProcSample {
        cpu_secs: ticks as f64 / clock_ticks_per_sec() as f64,
        rss_bytes: rss,
    })
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the new soft limit.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: lim is a valid rlimit to write to.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut want = lim.rlim_max;
    if want == libc::RLIM_INFINITY {
        // An unlimited hard limit still cannot exceed fs.nr_open.
        want = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1 << 20);
    }
    if want > lim.rlim_cur {
        let new = libc::rlimit {
            rlim_cur: want,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: new is a valid rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } != 0 {
            return Err(io::Error::last_os_error());
        }
        lim.rlim_cur = want;
    }
    Ok(lim.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    // A real line from a typha process, with a command name that has spaces and a ')'.
    const STAT: &str = "4242 (typha (rs) x) S 1 4242 4242 0 -1 4194560 12345 0 3 0 \
        1520 377 0 0 20 0 5 0 987654 1234567890 25000 18446744073709551615 1 1 0 0 0 0 0 \
        4096 0 0 0 0 17 1 0 0 0 0 0\n";

    #[test]
    fn stat_cpu_is_utime_plus_stime() {
        assert_eq!(parse_stat_cpu_ticks(STAT), Some(1520 + 377));
        let plain = "1 (systemd) S 0 1 1 0 -1 4194560 1 2 3 4 55 66 7 8 20 0 1 0 9 10 11";
        assert_eq!(parse_stat_cpu_ticks(plain), Some(55 + 66));
        assert_eq!(parse_stat_cpu_ticks("1 (x) S 0 1"), None);
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
        assert_eq!(
            parse_stat_cpu_ticks("1 (x) S 0 1 1 0 -1 0 1 2 3 4 abc 66"),
            None
        );
    }

    #[test]
    fn vmrss() {
        let status = "Name:\ttypha\nVmPeak:\t  200000 kB\nVmRSS:\t   12345 kB\nThreads:\t5\n";
        assert_eq!(parse_vmrss_bytes(status), Some(12345 * 1024));
        assert_eq!(parse_vmrss_bytes("Name:\tkthreadd\n"), None);
    }

    #[test]
    fn own_process_can_be_sampled() {
        let s = sample_process(std::process::id()).unwrap();
        assert!(s.rss_bytes > 0);
        assert!(s.cpu_secs >= 0.0);
        assert!(clock_ticks_per_sec() > 0);
        let n = raise_nofile_limit().unwrap();
        assert!(n >= 3);
    }
}
