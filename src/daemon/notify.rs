//! systemd's notification protocol (sd_notify): READY, RELOADING, STOPPING, WATCHDOG, ...
//!
//! A datagram to the socket named in `$NOTIFY_SOCKET`; without it (not under systemd) every call
//! does nothing. Written by hand: it is one sendto(2), and the address may be in the abstract
//! namespace ("@name"), which std supports directly.

use std::io;
#[cfg(target_os = "linux")]
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    pub fn from_env() -> Notifier {
        let target = std::env::var_os("NOTIFY_SOCKET").and_then(|path| {
            let path = path.to_string_lossy().into_owned();
            let addr = match path.strip_prefix('@') {
                #[cfg(target_os = "linux")]
                Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name.as_bytes()),
                #[cfg(not(target_os = "linux"))]
                Some(_) => Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "abstract sockets are Linux's",
                )),
                None => SocketAddr::from_pathname(&path),
            };
            match (UnixDatagram::unbound(), addr) {
                (Ok(socket), Ok(addr)) => Some((socket, addr)),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!("NOTIFY_SOCKET={path} unusable: {e}");
                    None
                }
            }
        });
        Notifier { target }
    }

    pub fn send(&self, message: &str) {
        if let Some((socket, addr)) = &self.target {
            if let Err(e) = socket.send_to_addr(message.as_bytes(), addr) {
                tracing::warn!("sd_notify {message:?}: {e}");
            }
        }
    }

    pub fn ready(&self) {
        self.send("READY=1\nSTATUS=relaying");
    }

    pub fn reloading(&self) {
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
    }

    pub fn stopping(&self, status: &str) {
        self.send(&format!("STOPPING=1\nSTATUS={status}"));
    }

    /// Asks systemd for more time to stop (while draining).
    pub fn extend_timeout(&self, by: Duration) {
        self.send(&format!("EXTEND_TIMEOUT_USEC={}", by.as_micros()));
    }

    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }
}

/// The watchdog interval systemd expects, if it set one for this process.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// CLOCK_MONOTONIC in microseconds, as systemd wants in MONOTONIC_USEC.
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid, exclusively borrowed `ts`.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        tracing::warn!("clock_gettime: {}", io::Error::last_os_error());
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}
