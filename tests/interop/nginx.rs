//! nginx as an upstream: one process (`master_process off`, so its pid is all there is to
//! end), in the foreground, every path it writes in the test's directory.

use std::net::SocketAddr;
use std::path::Path;

use crate::peers::{program, retrying, Peer};

/// Starts nginx with `servers` (the `server { ... }` blocks of its `http` section, given the
/// listen addresses picked for them, `count` of them on 127.0.0.1) and waits until every one
/// accepts connections.
pub async fn start(
    dir: &Path,
    count: usize,
    servers: impl Fn(&[SocketAddr]) -> String,
) -> (Peer, Vec<SocketAddr>) {
    let nginx = program("nginx", "nginx");
    retrying("nginx", || {
        let addrs: Vec<SocketAddr> = (0..count).map(|_| crate::support::listen_addr()).collect();
        let config = dir.join("nginx.conf");
        std::fs::write(&config, config_text(dir, &servers(&addrs))).unwrap();
        let mut peer = Peer::spawn(
            "nginx",
            &nginx,
            [
                "-p".as_ref(),
                dir.as_os_str(),
                "-e".as_ref(),
                "stderr".as_ref(),
                "-c".as_ref(),
                config.as_os_str(),
            ],
            dir,
        );
        async move {
            for addr in &addrs {
                peer.wait_listening(*addr).await?;
            }
            Ok((peer, addrs))
        }
    })
    .await
}

fn config_text(dir: &Path, servers: &str) -> String {
    let dir = dir.display();
    // As root, the worker code would otherwise switch to "nobody" and lose the test's files.
    let user = if crate::peers::is_root() {
        "user root;\n"
    } else {
        ""
    };
    format!(
        "{user}master_process off;
daemon off;
pid {dir}/nginx.pid;
error_log stderr info;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    default_type text/plain;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
{servers}
}}
"
    )
}

/// nginx's version as (major, minor, patch), from `nginx -v`.
pub async fn version() -> (u32, u32, u32) {
    let mut command = std::process::Command::new(program("nginx", "nginx"));
    command.arg("-v");
    let output = crate::peers::run(command, std::time::Duration::from_secs(10)).await;
    let (_, stderr) = crate::peers::text(&output);
    let version = stderr
        .split("nginx/")
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .unwrap_or_else(|| panic!("no version in `nginx -v`: {stderr}"));
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}
