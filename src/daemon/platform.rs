//! Adjustments to the platform the daemon makes once, before it starts: today one, glibc's
//! strategy for copying memory on AMD CPUs.
//!
//! glibc before 2.40 copies blocks from about 2 KiB up with `rep movsb` on AMD CPUs, which Zen
//! cores run many times slower than vector loops when the source and destination lie at nearby
//! offsets within their pages (glibc bug 30994; the fix, in 2.40 and some distributions'
//! backports, stops using `rep movsb` there, so setting the threshold on such a host changes
//! nothing). rustls
//! copies each decrypted TLS record (16 KiB, read from an odd offset) this way, so on such a host
//! that one copy was a third of the relay's CPU while decrypting. glibc reads its tunables only
//! when a program starts, so the daemon executes itself again, once, with
//! `glibc.cpu.x86_rep_movsb_threshold` added to `GLIBC_TUNABLES`: the same process id, before any
//! thread, socket or file of its own exists. A threshold the environment already sets is left
//! as it is (that is also how to opt out), and so is every other host.

use std::ffi::OsString;
use std::io;

/// The tunable the daemon sets, and its value: above any AMD L2 cache, so glibc's copies below
/// the size where it streams anyway use vector loops, as glibc 2.40 does on these CPUs.
const TUNABLE: &str = "glibc.cpu.x86_rep_movsb_threshold";
const THRESHOLD: u64 = 4 << 20;

/// Where the copy strategy stands once `tune_copies` returned (it does not return when it
/// executes the daemon again).
#[derive(Debug)]
pub enum Copies {
    /// Nothing to change on this host (not AMD, or glibc 2.40 or later, or not glibc).
    Default,
    /// `GLIBC_TUNABLES` sets the threshold: this text is its value.
    Tuned(String),
    /// The threshold could not be set: executing the daemon again failed.
    Untuned(io::Error),
}

impl Copies {
    /// Says at startup what was done, so the journal tells which strategy a process copies
    /// with.
    pub fn log(&self) {
        match self {
            Copies::Default => {}
            Copies::Tuned(value) => tracing::info!(
                "glibc copies without rep movsb below {value} bytes ({TUNABLE}; glibc bug 30994 \
                 on AMD CPUs)"
            ),
            Copies::Untuned(error) => tracing::warn!(
                "could not start again with {TUNABLE} set ({error}): TLS decryption costs more CPU \
                 on this AMD host; set GLIBC_TUNABLES={TUNABLE}={THRESHOLD} in the environment"
            ),
        }
    }
}

/// Executes the daemon again with the copy threshold set when this host needs it; otherwise
/// returns what holds. Call first thing, while the process is one thread.
pub fn tune_copies() -> Copies {
    let current = std::env::var("GLIBC_TUNABLES").ok();
    if let Some(value) = current.as_deref().and_then(threshold_in) {
        return Copies::Tuned(value.to_string());
    }
    let Some(tunables) = tunables_for(host(), current.as_deref()) else {
        return Copies::Default;
    };
    Copies::Untuned(exec_with(tunables))
}

/// What the host is, as far as the copy strategy goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Host {
    amd: bool,
    /// glibc's (major, minor), or None when the process does not run on glibc.
    glibc: Option<(u32, u32)>,
}

/// The `GLIBC_TUNABLES` to start again with, if this host needs the threshold.
fn tunables_for(host: Host, current: Option<&str>) -> Option<String> {
    let affected = host.amd && host.glibc.is_some_and(|version| version < (2, 40));
    if !affected || current.and_then(threshold_in).is_some() {
        return None;
    }
    let ours = format!("{TUNABLE}={THRESHOLD}");
    Some(match current {
        Some(others) if !others.is_empty() => format!("{others}:{ours}"),
        _ => ours,
    })
}

/// The threshold `tunables` (colon-separated `name=value` pairs) sets, if it sets one.
fn threshold_in(tunables: &str) -> Option<&str> {
    tunables
        .split(':')
        .find_map(|pair| pair.strip_prefix(TUNABLE)?.strip_prefix('='))
}

#[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
fn host() -> Host {
    let vendor = std::arch::x86_64::__cpuid(0);
    let amd = [vendor.ebx, vendor.edx, vendor.ecx]
        .iter()
        .flat_map(|word| word.to_le_bytes())
        .eq(*b"AuthenticAMD");
    // SAFETY: gnu_get_libc_version takes nothing and returns a pointer to a static,
    // NUL-terminated string that lives as long as the process.
    let version = unsafe { std::ffi::CStr::from_ptr(libc::gnu_get_libc_version()) };
    Host {
        amd,
        glibc: version.to_str().ok().and_then(major_minor),
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu")))]
fn host() -> Host {
    Host {
        amd: false,
        glibc: None,
    }
}

/// "2.36" → (2, 36); a third component, if any, is ignored.
fn major_minor(version: &str) -> Option<(u32, u32)> {
    let mut parts = version.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Replaces the process image with this executable, the same arguments and environment, and
/// `GLIBC_TUNABLES` set. Returns only on failure.
fn exec_with(tunables: String) -> io::Error {
    use std::os::unix::process::CommandExt;
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| OsString::from("l4relay"));
    // /proc/self/exe, not argv[0]: it is this very file even when a package upgrade has
    // replaced the one at the path since the process started.
    std::process::Command::new("/proc/self/exe")
        .arg0(arg0)
        .args(args)
        .env("GLIBC_TUNABLES", tunables)
        .exec()
}

#[cfg(test)]
mod tests {
    use super::*;

    const AMD_236: Host = Host {
        amd: true,
        glibc: Some((2, 36)),
    };

    #[test]
    fn only_amd_hosts_on_glibc_before_2_40_need_the_threshold() {
        let ours = format!("{TUNABLE}={THRESHOLD}");
        assert_eq!(tunables_for(AMD_236, None), Some(ours.clone()));
        assert_eq!(tunables_for(AMD_236, Some("")), Some(ours.clone()));
        for glibc in [(2, 34), (2, 39)] {
            let host = Host {
                glibc: Some(glibc),
                ..AMD_236
            };
            assert_eq!(tunables_for(host, None), Some(ours.clone()), "{host:?}");
        }
        for host in [
            Host {
                glibc: Some((2, 40)),
                ..AMD_236
            },
            Host {
                glibc: Some((3, 0)),
                ..AMD_236
            },
            Host {
                amd: false,
                ..AMD_236
            },
            Host {
                glibc: None,
                ..AMD_236
            },
        ] {
            assert_eq!(tunables_for(host, None), None, "{host:?}");
        }
    }

    #[test]
    fn other_tunables_are_kept_and_a_threshold_set_is_respected() {
        assert_eq!(
            tunables_for(AMD_236, Some("glibc.malloc.arena_max=2")).as_deref(),
            Some("glibc.malloc.arena_max=2:glibc.cpu.x86_rep_movsb_threshold=4194304")
        );
        let set = "glibc.malloc.arena_max=2:glibc.cpu.x86_rep_movsb_threshold=2112";
        assert_eq!(tunables_for(AMD_236, Some(set)), None);
        assert_eq!(threshold_in(set), Some("2112"));
        // A longer name that starts with ours is another tunable.
        assert_eq!(
            threshold_in("glibc.cpu.x86_rep_movsb_threshold_extra=1"),
            None
        );
    }

    #[test]
    fn glibc_versions_parse() {
        assert_eq!(major_minor("2.36"), Some((2, 36)));
        assert_eq!(major_minor("2.39.1"), Some((2, 39)));
        assert_eq!(major_minor("2"), None);
        assert_eq!(major_minor("x.y"), None);
    }

    #[test]
    fn this_host_is_read() {
        let host = host();
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        if cfg!(all(target_arch = "x86_64", target_env = "gnu")) && !cpuinfo.is_empty() {
            assert_eq!(host.amd, cpuinfo.contains("AuthenticAMD"));
            assert!(host.glibc.is_some_and(|(major, _)| major == 2), "{host:?}");
        }
    }
}
