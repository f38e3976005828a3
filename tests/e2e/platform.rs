//! The daemon's adjustment to the platform at startup: on AMD CPUs with glibc before 2.40 it
//! executes itself again with glibc's `rep movsb` threshold raised (glibc bug 30994), keeps its
//! process id while doing so, does it once at most, and leaves a threshold the environment sets
//! alone.

use std::net::SocketAddr;
use std::process::Command;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

/// Whether this host is one the daemon tunes, judged apart from its code: the CPU vendor from
/// /proc/cpuinfo and glibc's version from getconf.
fn host_needs_the_threshold() -> bool {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let amd = cpuinfo
        .lines()
        .any(|line| line.starts_with("vendor_id") && line.ends_with("AuthenticAMD"));
    let glibc = Command::new("getconf")
        .arg("GNU_LIBC_VERSION")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .unwrap_or_default();
    // "glibc 2.36"
    let version: Vec<u32> = glibc
        .trim()
        .trim_start_matches("glibc ")
        .split('.')
        .filter_map(|part| part.parse().ok())
        .collect();
    amd && cfg!(target_arch = "x86_64") && version.len() >= 2 && (version[0], version[1]) < (2, 40)
}

/// The process the test started is the one relaying: the executable behind its pid is l4relay.
fn is_l4relay(pid: u32) -> bool {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|exe| exe.file_name().is_some_and(|name| name == "l4relay"))
        .unwrap_or(false)
}

/// Sends `bytes` through the relay to the echo server and reads the answer to the end.
async fn echoed(listen: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut client = tokio::net::TcpStream::connect(listen).await.unwrap();
    client.write_all(bytes).await.unwrap();
    client.shutdown().await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        client.read_to_end(&mut answer),
    )
    .await
    .expect("the echo within 10 s")
    .unwrap();
    answer
}

/// The relay, started as `launch` says, in front of an echo server: the process and its listen
/// address.
async fn relay_before_echo(launch: Launch<'_>) -> (RelayProcess, SocketAddr) {
    let (upstream, _accepted) = echo_server().await;
    let (relay, [listen]) =
        start_relay_with(launch, |[listen]| config(listen, &[upstream], "", ""));
    (relay, listen)
}

#[tokio::test]
async fn on_affected_hosts_the_daemon_restarts_itself_once_with_the_copy_threshold() {
    let (relay, listen) = relay_before_echo(Launch::default()).await;
    let said = relay.stderr();
    let tuned = said.contains("glibc copies without rep movsb below 4194304 bytes");
    assert_eq!(
        tuned,
        host_needs_the_threshold(),
        "tuned as the host needs:\n{said}"
    );
    assert!(is_l4relay(relay.pid()), "the started pid is still l4relay");
    assert_eq!(
        said.matches("relaying on").count(),
        1,
        "one start is said, not two:\n{said}"
    );
    // And it relays, as the same process.
    assert_eq!(
        echoed(listen, b"after the restart").await,
        b"after the restart"
    );
}

#[tokio::test]
async fn a_threshold_set_in_the_environment_is_left_as_it_is() {
    let launch = Launch {
        envs: &[(
            "GLIBC_TUNABLES",
            "glibc.malloc.arena_max=4:glibc.cpu.x86_rep_movsb_threshold=8192",
        )],
        ..Launch::default()
    };
    let (relay, listen) = relay_before_echo(launch).await;
    let said = relay.stderr();
    assert!(
        said.contains("glibc copies without rep movsb below 8192 bytes"),
        "the operator's threshold is the one said:\n{said}"
    );
    assert!(!said.contains("4194304"), "{said}");
    assert_eq!(echoed(listen, b"untouched").await, b"untouched");
}

/// A second start that finds no threshold (as under a glibc that drops the tunable) says so and
/// runs on: it never executes itself a third time.
#[tokio::test]
async fn a_second_start_without_the_threshold_runs_on_and_says_so() {
    let launch = Launch {
        envs: &[("L4RELAY_REEXECUTED_FOR_COPIES", "1")],
        ..Launch::default()
    };
    let (relay, listen) = relay_before_echo(launch).await;
    let said = relay.stderr();
    assert_eq!(
        said.contains("glibc did not keep it"),
        host_needs_the_threshold(),
        "{said}"
    );
    assert!(!said.contains("glibc copies without rep movsb"), "{said}");
    assert!(is_l4relay(relay.pid()));
    assert_eq!(said.matches("relaying on").count(), 1, "{said}");
    assert_eq!(echoed(listen, b"once").await, b"once");
}

/// A daemon given file capabilities (to bind port 443 without root) runs in secure-execution
/// mode, where glibc ignores GLIBC_TUNABLES: it must not start again, once or in a loop.
#[tokio::test]
#[ignore = "needs root, setcap (libcap2-bin) and setpriv (util-linux): run with --ignored"]
async fn with_file_capabilities_it_does_not_start_again() {
    require(
        "root, setcap (libcap2-bin) and setpriv (util-linux)",
        runs(
            "sh",
            &[
                "-c",
                "test \"$(id -u)\" = 0 && command -v setcap && command -v setpriv",
            ],
        ),
    );
    // A copy with a file capability, where an unprivileged user can run it.
    let dir = scratch_dir("capabilities");
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let copy = dir.join("l4relay");
    std::fs::copy(BIN, &copy).unwrap();
    require(
        "setcap on a file in the temp dir",
        runs(
            "setcap",
            &["cap_net_bind_service+ep", copy.to_str().unwrap()],
        ),
    );
    // The prefix ends by executing the copy as nobody; the launcher's own exec never runs.
    let prefix = format!(
        "exec setpriv --reuid=65534 --regid=65534 --clear-groups {} run --config \"$1\"",
        copy.display()
    );
    let launch = Launch {
        shell_prefix: Some(&prefix),
        ..Launch::default()
    };
    let (relay, listen) = relay_before_echo(launch).await;
    let said = relay.stderr();
    assert!(!said.contains("glibc copies"), "{said}");
    assert!(!said.contains("did not keep it"), "{said}");
    assert_eq!(said.matches("relaying on").count(), 1, "{said}");
    let exe = std::fs::read_link(format!("/proc/{}/exe", relay.pid())).unwrap();
    assert_eq!(
        exe, copy,
        "the capable copy is what runs, as the pid started"
    );
    assert_eq!(echoed(listen, b"capable").await, b"capable");
    drop(relay);
    let _ = std::fs::remove_dir_all(&dir);
}
