//! Readings from /proc: CPU time, RSS and open fds of the process under test
//! (`--pid`), the benchmark's own CPU time, and kernel TCP socket memory.
//!
//! Everything returns `io::Result` because the process under test may exit
//! mid-run; callers report a missing figure rather than failing the run.

use std::fs;
use std::io;

/// Seconds of CPU (user + system, all threads) `pid` has used so far.
pub fn cpu_seconds(pid: u32) -> io::Result<f64> {
    parse_stat_cpu(
        &fs::read_to_string(format!("/proc/{pid}/stat"))?,
        clock_ticks(),
    )
}

/// Seconds of CPU the benchmark itself has used so far.
pub fn self_cpu_seconds() -> io::Result<f64> {
    parse_stat_cpu(&fs::read_to_string("/proc/self/stat")?, clock_ticks())
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

pub fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
    } else {
        4096
    }
}

/// utime and stime are fields 14 and 15 of /proc/PID/stat. The command name
/// (field 2) may contain spaces and parentheses, so fields are counted from
/// the last `)`.
fn parse_stat_cpu(stat: &str, ticks: f64) -> io::Result<f64> {
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "unexpected /proc/PID/stat format",
        )
    };
    let rest = &stat[stat.rfind(')').ok_or_else(bad)? + 1..];
    let mut f = rest.split_ascii_whitespace().skip(11);
    let utime: u64 = f.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
    let stime: u64 = f.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
    Ok((utime + stime) as f64 / ticks)
}

/// Resident set size of `pid` in bytes (VmRSS).
pub fn rss_bytes(pid: u32) -> io::Result<u64> {
    parse_vmrss(&fs::read_to_string(format!("/proc/{pid}/status"))?)
}

fn parse_vmrss(status: &str) -> io::Result<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no VmRSS in /proc/PID/status"))
}

/// Number of open file descriptors of `pid`.
pub fn fd_count(pid: u32) -> io::Result<u64> {
    Ok(fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64)
}

/// TCP figures from /proc/net/sockstat for this network namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSockstat {
    pub inuse: u64,
    /// Kernel memory charged to TCP sockets, in bytes (the `mem` pages × page size).
    pub mem_bytes: u64,
}

pub fn tcp_sockstat() -> io::Result<TcpSockstat> {
    parse_sockstat(&fs::read_to_string("/proc/net/sockstat")?, page_size())
}

fn parse_sockstat(text: &str, page: u64) -> io::Result<TcpSockstat> {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("TCP:"))
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no TCP line in sockstat"))?;
    let words: Vec<&str> = line.split_ascii_whitespace().collect();
    let field = |name: &str| {
        words
            .iter()
            .position(|w| *w == name)
            .and_then(|i| words.get(i + 1))
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, format!("no {name} in sockstat"))
            })
    };
    Ok(TcpSockstat {
        inuse: field("inuse")?,
        mem_bytes: field("mem")? * page,
    })
}

/// The ephemeral port range, to decide when `idle` must spread over source addresses.
pub fn ephemeral_port_count() -> u64 {
    fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_ascii_whitespace().map(|v| v.parse::<u64>().ok());
            let lo = it.next()??;
            let hi = it.next()??;
            Some(hi.saturating_sub(lo) + 1)
        })
        .unwrap_or(28_232)
}

/// Raises the soft fd limit to the hard limit so thousands of sockets fit;
/// returns the resulting soft limit.
pub fn raise_nofile_limit() -> u64 {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: rl is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return 1024;
    }
    if rl.rlim_cur < rl.rlim_max {
        let want = libc::rlimit {
            rlim_cur: rl.rlim_max,
            rlim_max: rl.rlim_max,
        };
        // SAFETY: want is a valid rlimit; failure leaves the old limit in place.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
            rl.rlim_cur = rl.rlim_max;
        }
    }
    rl.rlim_cur
}

/// CLOCK_MONOTONIC in nanoseconds; the same clock as `std::time::Instant`
/// and timerfd, so schedules computed in it can arm timers directly.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_awkward_comm() {
        let stat = "1234 (a) b (c) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0 12345 1000 200";
        assert!((parse_stat_cpu(stat, 100.0).unwrap() - 3.0).abs() < 1e-9);
        assert!(parse_stat_cpu("garbage", 100.0).is_err());
    }

    #[test]
    fn vmrss() {
        let status = "Name:\tl4relay\nVmPeak:\t  9000 kB\nVmRSS:\t    5120 kB\nThreads:\t2\n";
        assert_eq!(parse_vmrss(status).unwrap(), 5120 * 1024);
        assert!(parse_vmrss("Name: x\n").is_err());
    }

    #[test]
    fn sockstat() {
        let text =
            "sockets: used 22\nTCP: inuse 3 orphan 0 tw 1 alloc 3 mem 345\nUDP: inuse 0 mem 0\n";
        assert_eq!(
            parse_sockstat(text, 4096).unwrap(),
            TcpSockstat {
                inuse: 3,
                mem_bytes: 345 * 4096
            }
        );
    }

    #[test]
    fn live_readings() {
        let pid = std::process::id();
        assert!(cpu_seconds(pid).unwrap() >= 0.0);
        assert!(rss_bytes(pid).unwrap() > 0);
        assert!(fd_count(pid).unwrap() >= 3);
        assert!(mono_ns() > 0);
    }
}
