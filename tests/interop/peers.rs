//! Real programs as test peers: each found on the system or the test fails with the line that
//! installs it, started in the foreground with its own config in a scratch directory, its
//! output kept in a log file there, and ended by its own pid when the test ends (pass or fail).

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long a peer may take to start listening.
pub const START_LIMIT: Duration = Duration::from_secs(15);

/// The path of `program`, looked up on PATH and in the sbin directories (where Debian puts
/// haproxy, nginx, dnsmasq and unbound); panics with the command that installs it.
pub fn program(program: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file());
    found.unwrap_or_else(|| {
        panic!(
            "{program} not found: the interop suite runs the programs users run; install it \
             (apt-get install -y {package}, or everything at once: {})",
            INSTALL
        )
    })
}

/// Whether the tests run as root (then nginx and dnsmasq are told to stay root rather than
/// switch to a user that may not read the test's files).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// What `.ci/run` installs for this suite.
pub const INSTALL: &str =
    "apt-get install -y haproxy nginx dnsmasq unbound prometheus curl openssl iperf3";

/// A port on `ip` that was free a moment ago for both TCP and UDP (a DNS server needs both).
pub fn free_port(ip: &str) -> u16 {
    for _ in 0..50 {
        let tcp = TcpListener::bind((ip, 0)).expect("bind a loopback port");
        let port = tcp.local_addr().unwrap().port();
        if UdpSocket::bind((ip, port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both TCP and UDP on {ip}");
}

/// Runs `attempt` up to three times: a peer that could not start (another process took its
/// port between our probe and its bind) gets fresh ports.
pub async fn retrying<T, F, Fut>(what: &str, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let mut last = String::new();
    for _ in 0..3 {
        match attempt().await {
            Ok(value) => return value,
            Err(e) => last = e,
        }
    }
    panic!("{what} did not start:\n{last}");
}

/// A test's scratch directory (configs, logs, data of its peers), removed when the test
/// passes, kept for a look when it fails. Declare it before the peers that write into it, so
/// that it is dropped after them.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        Scratch(crate::support::scratch_dir(name))
    }
}

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept for a look: {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A running program, ended (SIGTERM, then SIGKILL) by its pid when dropped.
pub struct Peer {
    pub name: String,
    child: Child,
    pub log: PathBuf,
}

impl Peer {
    /// Starts `program` with `args`, its stdout and stderr appended to `dir/<name>.log`.
    pub fn spawn<I, S>(name: &str, program: &Path, args: I, dir: &Path) -> Peer
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let err = out.try_clone().unwrap();
        let child = Command::new(program)
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
        Peer {
            name: name.to_string(),
            child,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal by name ("HUP", "TERM") to this process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg("-s")
            .arg(signal)
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -s {signal} {}", self.pid());
    }

    fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(format!(
                "{} exited ({status}):\n{}",
                self.name,
                self.output()
            )),
            _ => None,
        }
    }

    /// Waits until `addr` accepts TCP connections; Err with the program's output if it exits
    /// first or does not listen in time.
    pub async fn wait_listening(&mut self, addr: SocketAddr) -> Result<(), String> {
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if let Some(exit) = self.exited() {
                return Err(exit);
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} not listening on {addr} within {START_LIMIT:?}:\n{}",
                    self.name,
                    self.output()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the program's output contains `text`; Err as `wait_listening`.
    pub async fn wait_output(&mut self, text: &str) -> Result<(), String> {
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if self.output().contains(text) {
                return Ok(());
            }
            if let Some(exit) = self.exited() {
                return Err(exit);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} did not say {text:?} within {START_LIMIT:?}:\n{}",
                    self.name,
                    self.output()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Ends the process now (SIGTERM, then SIGKILL after 3 s) and waits for it.
    pub fn stop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        let _ = Command::new("kill")
            .arg("-s")
            .arg("TERM")
            .arg(self.pid().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            let output = self.output();
            let tail: Vec<&str> = output.lines().rev().take(40).collect();
            eprintln!(
                "--- {} (pid {}), last lines of {}:\n{}",
                self.name,
                self.pid(),
                self.log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}

/// Runs a client program to its end, at most `limit` (then it is killed and the test fails).
pub async fn run(command: Command, limit: Duration) -> Output {
    run_with_input(command, Vec::new(), limit).await
}

/// `run`, writing `input` to the program's stdin and then closing it.
pub async fn run_with_input(mut command: Command, input: Vec<u8>, limit: Duration) -> Output {
    let shown = format!("{command:?}");
    tokio::task::spawn_blocking(move || {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {shown}: {e}"));
        let mut stdin = child.stdin.take().unwrap();
        std::thread::spawn(move || {
            let _ = std::io::Write::write_all(&mut stdin, &input);
        });
        // Drain the pipes on threads so a chatty client never blocks on a full pipe.
        let mut stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let out = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = std::io::Read::read_to_end(&mut stdout, &mut buf);
            buf
        });
        let err = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = std::io::Read::read_to_end(&mut stderr, &mut buf);
            buf
        });
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{shown} did not finish within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Output {
            status,
            stdout: out.join().unwrap(),
            stderr: err.join().unwrap(),
        }
    })
    .await
    .unwrap()
}

/// stdout and stderr of a finished client, for assertions and their messages.
pub fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
#[should_panic(expected = "apt-get install -y no-such-package")]
fn a_missing_program_fails_with_the_line_that_installs_it() {
    program("l4relay-interop-no-such-program", "no-such-package");
}
