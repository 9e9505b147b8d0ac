//! What the commands print: output piped into a reader that has gone (`turnout status |
//! head -1`) ends quietly instead of in a panic, and the phase summary prints its figures
//! with thousands separators, as the progress bars do.

use std::process::{Command, Stdio};

use crate::harness::{Kind, TestDb, ok, stderr, stdout};
use crate::scenarios::{plan, seed};

/// Runs turnout with its stdout on a pipe whose reading end is already closed.
fn into_a_closed_pipe(db: &TestDb, args: &[&str]) -> std::process::Output {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    Command::new(env!("CARGO_BIN_EXE_turnout"))
        .args(args)
        .env("DATABASE_URL", &db.url)
        .env_remove("RUST_LOG")
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .output()
        .expect("run turnout")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_into_a_closed_pipe_ends_quietly() {
    let db = TestDb::new(Kind::Sqlite).await;
    seed(&db).await;
    let path = db.plan_file("plan.yaml", &plan(Kind::Sqlite, "items-piped", 500));
    let path = path.to_str().expect("utf-8 path");
    ok(
        &db.turnout(&["run", path, "--until", "backfilled", "--yes"], None),
        "run",
    );
    for args in [
        vec!["status"],
        vec!["status", path],
        vec!["status", path, "--json"],
        vec!["plan", path],
        vec!["schema"],
        vec!["verify", path],
    ] {
        let out = into_a_closed_pipe(&db, &args);
        let err = stderr(&out);
        assert!(!err.contains("panicked"), "turnout {args:?}: {err}");
        assert!(err.trim().is_empty(), "turnout {args:?} said: {err}");
        assert_eq!(out.status.code(), Some(141), "turnout {args:?}: {err}");
    }
    // The state is untouched by the reader going away: verify still passes.
    ok(&db.turnout(&["verify", path], None), "verify");
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_phase_summary_prints_counts_and_rates_with_separators() {
    let db = TestDb::new(Kind::Sqlite).await;
    seed(&db).await;
    let path = db.plan_file("plan.yaml", &plan(Kind::Sqlite, "items-summary", 500));
    let path = path.to_str().expect("utf-8 path");
    let out = db.turnout(&["run", path, "--until", "backfilled", "--yes"], None);
    ok(&out, "run");
    let said = stdout(&out);
    let line = said
        .lines()
        .find(|l| l.contains("copied "))
        .unwrap_or_else(|| panic!("no backfill summary in:\n{said}"));
    let rows = crate::scenarios::SEED_ROWS;
    let shown = format!("copied {},{:03} rows", rows / 1000, rows % 1000);
    assert!(line.contains(&shown), "{shown:?} not in {line:?}");
    let rate = line
        .rsplit('(')
        .next()
        .and_then(|r| r.strip_suffix(" rows/s)"))
        .unwrap_or_else(|| panic!("no rate in {line:?}"));
    let digits: String = rate.chars().filter(char::is_ascii_digit).collect();
    let grouped = digits
        .as_bytes()
        .rchunks(3)
        .rev()
        .map(|c| std::str::from_utf8(c).expect("digits"))
        .collect::<Vec<_>>()
        .join(",");
    assert_eq!(
        rate, grouped,
        "the rate is not whole rows grouped by thousands"
    );
    db.drop().await;
}
