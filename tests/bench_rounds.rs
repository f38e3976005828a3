//! The benches' rule for rounds (benches/support): which runs of the load tool count, and that
//! medians, marks and JSON come from the good rounds only. Bench binaries run without the test
//! harness (`harness = false`), so `cargo test --benches` would not run tests inside them; the
//! shared module is compiled here instead.

#[path = "../benches/support/mod.rs"]
mod support;

use serde_json::json;
use support::{bench_tool, free_port, judge, Round, Rounds};

fn clean(result: serde_json::Value) -> serde_json::Value {
    json!({
        "mode": "rate", "interrupted": false,
        "errors": {"total": 0, "refused": 0, "reset": 0, "timeout": 0, "short": 0, "other": 0, "samples": {}},
        "result": result,
    })
}

fn run(exit: Option<i32>, report: &serde_json::Value) -> Round<serde_json::Value> {
    judge(exit, report.to_string().as_bytes(), b"")
}

#[test]
fn a_clean_report_counts() {
    let r = clean(json!({"conn_per_s": 1234.0}));
    assert_eq!(run(Some(0), &r).unwrap()["result"]["conn_per_s"], 1234.0);
}

#[test]
fn a_failed_load_tool_does_not_count() {
    let r = clean(json!({"conn_per_s": 1234.0}));
    let why = judge(
        Some(1),
        r.to_string().as_bytes(),
        b"table\nl4relay-bench: error: boom\n",
    )
    .unwrap_err();
    assert!(
        why.contains("exited with status 1") && why.contains("boom"),
        "{why}"
    );
    let why = run(None, &r).unwrap_err();
    assert!(why.contains("signal"), "{why}");
    let why = judge(Some(0), b"not json", b"").unwrap_err();
    assert!(why.contains("no JSON report"), "{why}");
}

#[test]
fn a_report_with_errors_or_lost_work_does_not_count() {
    let mut r = clean(json!({"conn_per_s": 1234.0}));
    r["errors"]["total"] = 3.into();
    r["errors"]["refused"] = 2.into();
    r["errors"]["reset"] = 1.into();
    r["errors"]["samples"] = json!({"refused": "connect: refused"});
    let why = run(Some(0), &r).unwrap_err();
    assert_eq!(
        why,
        "3 errors (refused 2, reset 1); first refused: connect: refused"
    );

    let mut r = clean(json!({}));
    r["interrupted"] = true.into();
    assert!(run(Some(0), &r).unwrap_err().contains("interrupted"));

    let cases = [
        (
            json!({"streams": 8, "streams_connected": 8, "streams_failed": 2}),
            "2 streams failed",
        ),
        (
            json!({"streams": 8, "streams_connected": 7, "streams_failed": 0}),
            "7 of 8 streams connected",
        ),
        (json!({"requests": 10, "lost": 4}), "4 requests lost"),
        (
            json!({"count": 100, "opened": 90, "closed_during_hold": 0}),
            "90 of 100 connections opened",
        ),
        (
            json!({"count": 100, "opened": 100, "closed_during_hold": 5}),
            "5 connections closed during the hold",
        ),
    ];
    for (result, expected) in cases {
        assert_eq!(run(Some(0), &clean(result)).unwrap_err(), expected);
    }
    let fine = json!({"streams": 8, "streams_connected": 8, "streams_failed": 0, "lost": 0});
    assert!(run(Some(0), &clean(fine)).is_ok());
}

#[test]
fn medians_come_from_good_rounds_and_say_what_was_dropped() {
    let mut r: Rounds<f64> = Rounds::default();
    let fig = |v: &f64| Some(*v);
    let fmt = |v: f64| format!("{v:.1}");
    assert_eq!(r.show(fig, fmt), "–", "nothing run");
    r.push(Ok(10.0));
    r.push(Err("load tool exited with status 1".into()));
    r.push(Ok(30.0));
    r.push(Ok(20.0));
    // A failed round's figure (here it would have been 0) never drags the median.
    assert_eq!(r.median(fig), Some(20.0));
    assert_eq!((r.good(), r.total()), (3, 4));
    assert_eq!(
        r.show(fig, fmt),
        "20.0 (10.0–30.0) * (3 of 4 rounds; 1 failed dropped: load tool exited with status 1)"
    );
    let j = r.json(fig);
    assert_eq!(j["samples"], json!([10.0, 30.0, 20.0]));
    assert_eq!(j["median"], 20.0);
    assert_eq!(
        (j["rounds"].as_u64(), j["good_rounds"].as_u64()),
        (Some(4), Some(3))
    );
    assert_eq!(j["dropped"], json!(["load tool exited with status 1"]));

    let mut all_good: Rounds<f64> = Rounds::default();
    all_good.push(Ok(5.0));
    assert_eq!(all_good.mark(), "");
    assert_eq!(all_good.show(fig, fmt), "5.0");

    let mut none: Rounds<f64> = Rounds::default();
    none.push(Err("2 errors (reset 2)".into()));
    none.push(Err("2 errors (reset 2)".into()));
    assert_eq!(none.median(fig), None);
    assert_eq!(
        none.show(fig, fmt),
        "— (no good round of 2: 2 errors (reset 2) (×2))"
    );
    assert_eq!(none.json(fig)["median"], serde_json::Value::Null);
}

/// The real load tool against a port nothing listens on: the round is dropped, with the reason.
#[test]
fn a_run_against_a_dead_target_is_dropped() {
    let port = free_port();
    let round = bench_tool(
        "rate",
        port,
        None,
        &["--duration", "1s", "--warmup", "100ms"],
    );
    let why = round.expect_err("a run with every connection refused must not count");
    assert!(why.contains("refused") || why.contains("exited"), "{why}");
    eprintln!("dropped: {why}");
}
