//! curl and `openssl s_client`, run to their end with a time limit, their output kept for the
//! assertions.

use std::process::Command;
use std::time::Duration;

use crate::peers::{program, run, run_with_input, text};

/// Longer than any one client call should take (curl's own `--max-time` is below it).
const LIMIT: Duration = Duration::from_secs(30);

/// What a client printed and how it ended.
pub struct Ran {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// Both outputs, for assertion messages.
    pub fn shown(&self) -> String {
        format!(
            "exit {:?}\n--- stdout:\n{}\n--- stderr:\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// `curl -sS --max-time 10` with `args`.
pub async fn curl(args: &[&str]) -> Ran {
    let mut command = Command::new(program("curl", "curl"));
    command.args(["-sS", "--max-time", "10"]).args(args);
    let output = run(command, LIMIT).await;
    let (stdout, stderr) = text(&output);
    Ran {
        code: output.status.code(),
        stdout,
        stderr,
    }
}

/// `openssl s_client` with `args`, `input` on its stdin; `-ign_eof` keeps it reading until
/// the peer closes.
pub async fn s_client(args: &[&str], input: &[u8]) -> Ran {
    let mut command = Command::new(program("openssl", "openssl"));
    command.arg("s_client").args(args);
    let output = run_with_input(command, input.to_vec(), LIMIT).await;
    let (stdout, stderr) = text(&output);
    Ran {
        code: output.status.code(),
        stdout,
        stderr,
    }
}

/// The TLS version curl reports in its verbose output ("SSL connection using TLSv1.3 / ...").
pub fn curl_tls_version(stderr: &str) -> Option<&str> {
    stderr
        .lines()
        .find_map(|l| l.split("SSL connection using ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
}
