//! Adjustments to the platform the daemon makes once, before it starts: today one, glibc's
//! strategy for copying memory on AMD CPUs.
//!
//! glibc before 2.40 copies blocks from about 2 KiB up with `rep movsb` on AMD CPUs, which Zen
//! cores run many times slower than vector loops when the source and destination lie at nearby
//! offsets within their pages (glibc bug 30994; the fix, in 2.40 and some distributions'
//! backports, stops using `rep movsb` there, so setting the threshold on such a host changes
//! nothing). rustls copies each decrypted TLS record (16 KiB, read from an odd offset) this way,
//! so on such a host that one copy was a third of the relay's CPU while decrypting. glibc reads
//! its tunables only when a program starts, so the daemon executes itself again, once, with
//! `glibc.cpu.x86_rep_movsb_threshold` added to `GLIBC_TUNABLES`: the same process id, before any
//! thread, socket or file of its own exists. A threshold the environment already sets is left
//! as it is (that is also how to opt out), and so is every other host.
//!
//! Once means once: the new image is told it is the second start (`REEXECUTED` in its
//! environment, removed as soon as it is read), so a glibc that hides or drops the tunable
//! cannot make the daemon execute itself in a loop. A process in secure-execution mode (a
//! binary with file capabilities, or setuid) is not even tried: glibc ignores the tunable there.

use std::ffi::OsString;
use std::io;

/// The tunable the daemon sets, and its value: above any AMD L2 cache, so glibc's copies below
/// the size where it streams anyway use vector loops, as glibc 2.40 does on these CPUs.
const TUNABLE: &str = "glibc.cpu.x86_rep_movsb_threshold";
const THRESHOLD: u64 = 4 << 20;

/// The environment variable that tells the second start it is one.
const REEXECUTED: &str = "L4RELAY_REEXECUTED_FOR_COPIES";

/// Where the copy strategy stands once `tune_copies` returned (it does not return when it
/// executes the daemon again).
#[derive(Debug)]
pub enum Copies {
    /// Nothing to change on this host (not AMD, or glibc 2.40 or later, or not glibc), or
    /// nothing glibc would take (secure-execution mode).
    Default,
    /// `GLIBC_TUNABLES` sets the threshold: this text is its value.
    Tuned(String),
    /// The daemon started again with the threshold set, and glibc did not keep it.
    Dropped,
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
            Copies::Dropped => tracing::warn!(
                "started again with {TUNABLE} set, but glibc did not keep it: TLS decryption \
                 costs more CPU on this AMD host"
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
    let second_start = std::env::var_os(REEXECUTED).is_some();
    if second_start {
        // Nothing this process starts should inherit it. Still one thread here, so nothing
        // reads the environment concurrently.
        std::env::remove_var(REEXECUTED);
    }
    match decide(host(), current.as_deref(), second_start) {
        Decision::Keep(copies) => copies,
        Decision::Exec(tunables) => Copies::Untuned(exec_with(tunables)),
    }
}

/// What `tune_copies` does.
#[derive(Debug)]
enum Decision {
    Keep(Copies),
    /// Execute the daemon again with this `GLIBC_TUNABLES`.
    Exec(String),
}

/// The whole decision, from what the host is, the `GLIBC_TUNABLES` this process sees, and
/// whether it is already the second start.
fn decide(host: Host, current: Option<&str>, second_start: bool) -> Decision {
    if let Some(value) = current.and_then(threshold_in) {
        return Decision::Keep(Copies::Tuned(value.to_string()));
    }
    if second_start {
        return Decision::Keep(Copies::Dropped);
    }
    match tunables_for(host, current) {
        Some(tunables) => Decision::Exec(tunables),
        None => Decision::Keep(Copies::Default),
    }
}

/// What the host is, as far as the copy strategy goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Host {
    amd: bool,
    /// glibc's (major, minor), or None when the process does not run on glibc.
    glibc: Option<(u32, u32)>,
    /// The process runs in secure-execution mode (AT_SECURE): glibc ignores GLIBC_TUNABLES.
    secure: bool,
}

/// The `GLIBC_TUNABLES` to start again with, if this host needs the threshold and glibc would
/// take it (not in secure-execution mode).
fn tunables_for(host: Host, current: Option<&str>) -> Option<String> {
    let affected = host.amd && !host.secure && host.glibc.is_some_and(|version| version < (2, 40));
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
    // SAFETY: getauxval reads the auxiliary vector the kernel gave the process; it takes a
    // plain integer and returns 0 for an entry that is not there.
    let secure = unsafe { libc::getauxval(libc::AT_SECURE) } != 0;
    Host {
        amd,
        glibc: version.to_str().ok().and_then(major_minor),
        secure,
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu")))]
fn host() -> Host {
    Host {
        amd: false,
        glibc: None,
        secure: false,
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
        .env(REEXECUTED, "1")
        .exec()
}

#[cfg(test)]
mod tests {
    use super::*;

    const AMD_236: Host = Host {
        amd: true,
        glibc: Some((2, 36)),
        secure: false,
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
    fn the_daemon_executes_itself_once_at_most() {
        let ours = format!("{TUNABLE}={THRESHOLD}");
        assert!(matches!(decide(AMD_236, None, false), Decision::Exec(t) if t == ours));
        // The second start finds the threshold and keeps it.
        assert!(matches!(
            decide(AMD_236, Some(&ours), true),
            Decision::Keep(Copies::Tuned(v)) if v == "4194304"
        ));
        // A glibc that dropped it from the environment does not start a third time.
        assert!(matches!(
            decide(AMD_236, None, true),
            Decision::Keep(Copies::Dropped)
        ));
        assert!(matches!(
            decide(AMD_236, Some("glibc.malloc.arena_max=2"), true),
            Decision::Keep(Copies::Dropped)
        ));
        // Secure-execution mode: glibc would ignore it, so no second start at all.
        let secure = Host {
            secure: true,
            ..AMD_236
        };
        assert!(matches!(
            decide(secure, None, false),
            Decision::Keep(Copies::Default)
        ));
        let intel = Host {
            amd: false,
            ..AMD_236
        };
        assert!(matches!(
            decide(intel, None, false),
            Decision::Keep(Copies::Default)
        ));
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
            assert!(
                !host.secure,
                "the test runs without file capabilities or setuid"
            );
            assert!(host.glibc.is_some_and(|(major, _)| major == 2), "{host:?}");
        }
    }
}
