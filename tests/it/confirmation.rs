//! One confirmation rule for every command that changes the database: `run`, `step`,
//! `resume` and `rollback` ask on a terminal and, when nobody can answer (stdin is not a
//! terminal, as under a test or in CI), refuse with exit 2 unless given `--yes`.

use crate::bad_plans::snapshot;
use crate::harness::{Kind, ok, stderr, stdout};
use crate::scenarios::seeded_with_plan;

/// The phase `turnout status --json PLAN` reports.
fn phase(db: &crate::harness::TestDb, path: &str) -> String {
    let out = db.turnout(&["status", path, "--json"], None);
    ok(&out, "status");
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("status json");
    json[0]["phase"].as_str().unwrap_or_default().to_string()
}

fn refused_without_yes(db: &crate::harness::TestDb, args: &[&str]) {
    let out = db.turnout(args, None);
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(2),
        "`turnout {}` without --yes should exit 2:\n{err}",
        args.join(" ")
    );
    assert!(
        err.contains("pass --yes"),
        "`turnout {}` should say to pass --yes:\n{err}",
        args.join(" ")
    );
}

pub async fn every_changing_command_needs_yes_without_a_terminal(kind: Kind) {
    let (db, path) = seeded_with_plan(kind, "items-confirm", 200).await;
    let path = path.to_str().expect("utf-8");
    let before = snapshot(&db).await;
    for cmd in ["run", "step", "resume"] {
        refused_without_yes(&db, &[cmd, path]);
    }
    assert_eq!(
        snapshot(&db).await,
        before,
        "a refused run, step or resume changed the database"
    );
    ok(
        &db.turnout(&["run", path, "--until", "dual_writing", "--yes"], None),
        "run --until dual_writing",
    );
    let started = snapshot(&db).await;
    refused_without_yes(&db, &["rollback", path]);
    assert_eq!(
        snapshot(&db).await,
        started,
        "a refused rollback changed the database"
    );
    assert_eq!(phase(&db, path), "dual_writing");
    ok(
        &db.turnout(&["rollback", path, "--yes"], None),
        "rollback --yes",
    );
    assert_eq!(phase(&db, path), "rolled_back");
    db.drop().await;
}
