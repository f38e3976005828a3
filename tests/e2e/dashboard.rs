//! The Grafana dashboard (deploy/grafana/l4relay.json) against the real relay: every metric its
//! queries name is one the relay exports (and every one it exports is on the dashboard), every
//! panel has a title, a description and the `${datasource}` datasource, panel ids are unique;
//! every query and the README's alert rules parse as PromQL (with promtool: `--ignored`).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/l4relay.json");
const README: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/README.md");

fn dashboard() -> Value {
    let text = std::fs::read_to_string(DASHBOARD).expect("read the dashboard");
    serde_json::from_str(&text).expect("the dashboard is valid JSON")
}

/// Every panel: the top-level ones and those inside collapsed rows.
fn all_panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("a panels array") {
        out.push(panel);
        if let Some(nested) = panel["panels"].as_array() {
            out.extend(nested);
        }
    }
    out
}

/// Every `expr` string anywhere in the JSON: panel targets and annotation queries.
fn exprs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr", Value::String(s)) => out.push(s.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

/// The template variables' queries (label_values(...), not PromQL, but they name metrics too).
fn variable_queries(dashboard: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for var in dashboard["templating"]["list"].as_array().unwrap() {
        for q in [&var["definition"], &var["query"]["query"]] {
            if let Some(s) = q.as_str() {
                out.push(s.to_string());
            }
        }
    }
    out
}

/// A histogram's series name without its _bucket/_sum/_count suffix.
fn family(name: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(name)
}

/// Every `l4relay_[a-z0-9_]+` in `text`, as metric families.
fn metric_names(text: &str) -> BTreeSet<String> {
    let is_name_byte = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_';
    let bytes = text.as_bytes();
    let mut names = BTreeSet::new();
    let mut from = 0;
    while let Some(at) = text[from..].find("l4relay_").map(|i| from + i) {
        let mut end = at + "l4relay_".len();
        while end < bytes.len() && is_name_byte(bytes[end]) {
            end += 1;
        }
        // Part of a longer identifier (e.g. "xl4relay_..."): not a metric name.
        let standalone =
            at == 0 || !(bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_');
        if standalone && end > at + "l4relay_".len() {
            names.insert(family(&text[at..end]).to_string());
        }
        from = end;
    }
    names
}

/// The metric families in a Prometheus text exposition: HELP and TYPE lines and samples.
fn exported_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter_map(|line| {
            let name = match line
                .strip_prefix("# HELP ")
                .or(line.strip_prefix("# TYPE "))
            {
                Some(rest) => rest.split(' ').next()?,
                None if line.starts_with('#') || line.is_empty() => return None,
                None => line.split(['{', ' ']).next()?,
            };
            Some(family(name).to_string())
        })
        .filter(|name| name.starts_with("l4relay_"))
        .collect()
}

/// GET `path` from `addr`: (status, body).
async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    raw_request(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes(),
    )
    .await
}

/// Grafana's variables made concrete for promtool: intervals become durations, every other
/// `$name` / `${name}` (they only appear inside `=~"..."` matchers) becomes `.*`.
fn substitute_variables(expr: &str) -> String {
    let expr = expr
        .replace("$__rate_interval", "1m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h");
    let mut out = String::with_capacity(expr.len());
    let mut chars = expr.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '$' {
            out.push(c);
            continue;
        }
        if chars.peek() == Some(&'{') {
            for c in chars.by_ref() {
                if c == '}' {
                    break;
                }
            }
        } else {
            while chars
                .peek()
                .is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_')
            {
                chars.next();
            }
        }
        out.push_str(".*");
    }
    out
}

/// Runs `promtool check rules` on `rules`; panics with its output if it rejects them.
fn promtool_check_rules(rules: &str, what: &str) {
    let dir = scratch_dir("dashboard-rules");
    let path: PathBuf = dir.join("rules.yml");
    std::fs::write(&path, rules).unwrap();
    let out = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(&path)
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool rejected {what}:\n{}{}\n{rules}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The README's alert rules: its fenced yaml blocks that are Prometheus rule files.
fn readme_rule_files() -> Vec<String> {
    let readme = std::fs::read_to_string(README).expect("read deploy/grafana/README.md");
    readme
        .split("```yaml\n")
        .skip(1)
        .filter_map(|rest| rest.split_once("\n```").map(|(block, _)| block.to_string()))
        .filter(|block| block.starts_with("groups:"))
        .collect()
}

#[test]
fn every_panel_has_a_title_a_description_and_the_datasource_and_a_unique_id() {
    let dashboard = dashboard();
    assert!(dashboard["schemaVersion"].as_u64().unwrap_or(0) >= 36);
    assert_eq!(dashboard["uid"], "l4relay");
    let panels = all_panels(&dashboard);
    assert!(panels.len() > 20, "only {} panels", panels.len());

    let mut ids = BTreeSet::new();
    for panel in &panels {
        let title = panel["title"].as_str().unwrap_or_default();
        assert!(!title.trim().is_empty(), "a panel without a title: {panel}");
        let id = panel["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("panel {title:?} has no numeric id"));
        assert!(ids.insert(id), "panel id {id} is used twice ({title:?})");
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "panel {title:?} does not use the ${{datasource}} variable"
        );
        assert!(
            panel["gridPos"].is_object(),
            "panel {title:?} has no gridPos"
        );
        if panel["type"] == "row" {
            continue;
        }
        assert!(
            panel["description"].as_str().is_some_and(|d| d.len() > 40),
            "panel {title:?} needs a description saying what a bad value means"
        );
        let targets = panel["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        assert!(!targets.is_empty(), "panel {title:?} has no query");
        let mut ref_ids = BTreeSet::new();
        for target in targets {
            assert_eq!(
                target["datasource"]["uid"], "${datasource}",
                "a query of {title:?} does not use the ${{datasource}} variable"
            );
            assert!(
                target["expr"]
                    .as_str()
                    .is_some_and(|e| e.contains("l4relay_")),
                "a query of {title:?} has no l4relay expression"
            );
            let ref_id = target["refId"].as_str().unwrap_or_default();
            assert!(
                ref_ids.insert(ref_id),
                "refId {ref_id:?} twice in {title:?}"
            );
        }
    }
}

#[test]
fn the_variables_are_datasource_instance_listener_and_pool() {
    let dashboard = dashboard();
    let vars = dashboard["templating"]["list"].as_array().unwrap();
    let var = |name: &str| -> &Value {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no variable {name:?}"))
    };
    assert_eq!(var("datasource")["type"], "datasource");
    assert_eq!(var("datasource")["query"], "prometheus");
    assert_eq!(
        var("instance")["definition"],
        "label_values(l4relay_connections_active, instance)"
    );
    for name in ["instance", "listener", "pool"] {
        let v = var(name);
        assert_eq!(v["type"], "query", "{name}");
        assert_eq!(v["multi"], true, "{name} is not multi-value");
        assert_eq!(v["includeAll"], true, "{name} has no All");
        assert_eq!(v["datasource"]["uid"], "${datasource}", "{name}");
    }
    // Every query that can be narrowed by instance is.
    let mut all = Vec::new();
    exprs(&dashboard, &mut all);
    for expr in &all {
        assert!(
            expr.contains("instance=~\"$instance\""),
            "not filtered by $instance: {expr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_on_the_dashboard_is_exported_by_the_relay() {
    let dashboard = dashboard();
    let mut queries = Vec::new();
    exprs(&dashboard, &mut queries);
    queries.extend(variable_queries(&dashboard));
    let on_dashboard: BTreeSet<String> = queries.iter().flat_map(|q| metric_names(q)).collect();
    let on_readme: BTreeSet<String> = readme_rule_files()
        .iter()
        .flat_map(|rules| metric_names(rules))
        .collect();

    // The real relay, with one relayed connection (so the histograms have samples), one reload
    // (config_reloads_total appears only then), health checks, a server given by name,
    // resolved through a test DNS server (the DNS metrics exist only for such servers), and a
    // pool that originates TLS (the TLS handshake metrics exist only for such pools).
    let (server, _) = echo_server().await;
    let dns = dns_server(zone(Mode::Answer, &["127.0.0.1"], 60)).await;
    let (mut relay, [listen, admin]) = start_relay(|[listen, admin]| {
        // A client from 127.0.0.2 is denied, so refusals by reason are exported too.
        let mut text = config_with_admin(
            admin,
            listen,
            &[server],
            "deny = [\"127.0.0.2/32\"]",
            &format!(
                "nameservers = [\"{dns}\"]\n  [pool.health]\n  check = \"tcp\"\n  \
                 interval = \"100ms\"\n  timeout = \"1s\""
            ),
        );
        text.push_str(&format!(
            "  [[pool.server]]\n  name = \"by-name\"\n  address = \"svc.test:{}\"\n",
            server.port()
        ));
        // A pool that originates TLS (never connected to): its handshake counters exist.
        text.push_str(&format!(
            "\n[[pool]]\nname = \"tls\"\n  [pool.tls]\n  verify = false\n  [[pool.server]]\n  address = \"{server}\"\n"
        ));
        text
    });
    // Both servers checked and up; the named one resolved.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = get_status(admin).await;
        let up = |name| {
            servers_json(&status, "p", name)
                .first()
                .map(|s| s["state"] == "up")
        };
        if up("s0") == Some(true) && up("by-name") == Some(true) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "servers not up and resolved: {status}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let denied = tokio::net::TcpSocket::new_v4().unwrap();
    denied.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    if let Ok(mut refused) = denied.connect(listen).await {
        let mut buf = [0u8; 1];
        let _ = refused.read(&mut buf).await;
    }
    let mut stream = TcpStream::connect(listen).await.unwrap();
    stream.write_all(b"hello").await.unwrap();
    stream.shutdown().await.unwrap();
    let mut echoed = Vec::new();
    stream.read_to_end(&mut echoed).await.unwrap();
    assert_eq!(echoed, b"hello");
    relay.wait_for_log_lines(2, Duration::from_secs(5)).await;
    relay.signal("HUP");
    relay.wait_for_stderr("reload: done", Duration::from_secs(5));

    let (status, exposition) = http_get(admin, "/metrics").await;
    assert_eq!(status, 200, "{exposition}");
    let exported = exported_names(&exposition);
    assert!(
        exposition.contains("l4relay_session_duration_seconds_count{listener=\"test\"} 1"),
        "the relayed connection is not in the histograms:\n{exposition}"
    );

    let missing: Vec<&String> = on_dashboard
        .union(&on_readme)
        .filter(|name| !exported.contains(*name))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard or its README's alert rules query metrics the relay does not export: \
         {missing:?}\nexported: {exported:?}"
    );
    let not_shown: Vec<&String> = exported.difference(&on_dashboard).collect();
    assert!(
        not_shown.is_empty(),
        "the relay exports metrics no dashboard panel shows: {not_shown:?}; add panels for them \
         to deploy/grafana/l4relay.json"
    );
}

#[test]
#[ignore = "needs promtool (apt-get install prometheus): run with --ignored"]
fn every_query_and_alert_rule_parses_as_promql() {
    require_promtool();
    let mut queries = Vec::new();
    exprs(&dashboard(), &mut queries);
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in queries.iter().enumerate() {
        // A JSON string is a valid YAML double-quoted scalar.
        let quoted = serde_json::to_string(&substitute_variables(expr)).unwrap();
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {quoted}\n"
        ));
    }
    promtool_check_rules(&rules, "a dashboard query");

    let readme_rules = readme_rule_files();
    assert!(
        !readme_rules.is_empty(),
        "deploy/grafana/README.md has no ```yaml block starting with groups:"
    );
    for block in &readme_rules {
        promtool_check_rules(block, "the README's alert rules");
    }
}

#[test]
fn metric_names_are_found_and_histogram_suffixes_dropped() {
    let names = metric_names(
        "histogram_quantile(0.9, sum by (le) (rate(l4relay_session_bytes_bucket{a=\"b\"}[5m]))) \
         / l4relay_process_open_fds + xl4relay_no + l4relay_connections_total",
    );
    let expected: BTreeSet<String> = [
        "l4relay_session_bytes",
        "l4relay_process_open_fds",
        "l4relay_connections_total",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(names, expected);
    assert_eq!(
        substitute_variables("rate(x{instance=~\"$instance\", p=~\"${pool}\"}[$__rate_interval])"),
        "rate(x{instance=~\".*\", p=~\".*\"}[1m])"
    );
    assert!(Path::new(DASHBOARD).exists());
}
