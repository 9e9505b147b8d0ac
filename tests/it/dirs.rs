//! A directory of plans on one table, run per database: in file-name order under the
//! concurrent writer, a second run that does nothing, a plan added later run alone, an
//! edited done plan and a gap refused without touching anything, and a directory run
//! killed in its third plan that `run DIR` resumes.

use std::path::Path;

use crate::bad_plans::catalog;
use crate::harness::{Kind, TestDb, Writer, ok, stderr, stdout};
use crate::scenarios::{SEED_ROWS, compare_with_mirror, seed};

fn plan(name: &str, change: &str) -> String {
    format!(
        "version: 1
name: {name}
table: items
changes:
  - {change}
backfill:
  batch_size: 300
cutover:
  lock_timeout: 2s
  attempts: 10
  retry_delay: 50ms
"
    )
}

const ADD: (&str, &str, &str) = (
    "0001-add-total.yaml",
    "items-add-total",
    "add_column: {name: total, type: BIGINT, from: qty * 2}",
);
const INDEX: (&str, &str, &str) = (
    "0002-index-tag.yaml",
    "items-index-tag",
    "add_index: {name: items_tag_idx, columns: [tag]}",
);
const WIDEN: (&str, &str, &str) = (
    "0003-widen-qty.yaml",
    "items-widen-qty",
    "alter_column: {name: qty, type: BIGINT}",
);
const RENAME: (&str, &str, &str) = (
    "0004-rename-name.yaml",
    "items-rename-name",
    "rename_column: {from: name, to: label}",
);
const DROP: (&str, &str, &str) = (
    "0005-drop-note.yaml",
    "items-drop-note",
    "drop_column: {name: note, reverse: label}",
);

fn write(dir: &Path, (file, name, change): (&str, &str, &str)) {
    std::fs::write(dir.join(file), plan(name, change)).expect("write plan");
}

fn plans_dir(db: &TestDb, plans: &[(&str, &str, &str)]) -> std::path::PathBuf {
    let dir = db.dir.path().join("migrations");
    std::fs::create_dir_all(&dir).expect("mkdir");
    for p in plans {
        write(&dir, *p);
    }
    dir
}

async fn status(db: &TestDb, dir: &str) -> Vec<serde_json::Value> {
    let out = db.turnout(&["status", dir, "--json"], None);
    ok(&out, "status DIR --json");
    serde_json::from_str(&stdout(&out)).expect("status DIR --json is a JSON array")
}

fn phases(status: &[serde_json::Value]) -> Vec<String> {
    status
        .iter()
        .map(|e| e["phase"].as_str().unwrap_or("?").to_string())
        .collect()
}

/// The saved states, timestamps included: equal before and after means nothing was saved.
async fn states(db: &TestDb) -> Vec<Vec<Option<String>>> {
    db.rows("SELECT name, phase, body FROM turnout_state ORDER BY name")
        .await
}

/// The columns of `items` as the catalog has them: name and lower-case type, by name.
async fn columns(db: &TestDb) -> Vec<(String, String)> {
    let sql = match db.kind {
        Kind::Sqlite => "SELECT name, lower(type) FROM pragma_table_info('items') ORDER BY name",
        Kind::Postgres => {
            "SELECT column_name::text, data_type::text FROM information_schema.columns WHERE table_name = 'items' AND table_schema = 'public' ORDER BY 1"
        }
        Kind::MySql => {
            "SELECT CAST(COLUMN_NAME AS CHAR), CAST(DATA_TYPE AS CHAR) FROM information_schema.COLUMNS WHERE TABLE_NAME = 'items' AND TABLE_SCHEMA = DATABASE() ORDER BY 1"
        }
    };
    db.pairs(sql).await
}

fn names(cols: &[(String, String)]) -> Vec<&str> {
    cols.iter().map(|(n, _)| n.as_str()).collect()
}

pub async fn a_directory_of_plans_runs_in_order_under_the_writer(kind: Kind) {
    let db = TestDb::new(kind).await;
    seed(&db).await;
    let dir = plans_dir(&db, &[ADD, INDEX, WIDEN, RENAME]);
    let dir_s = dir.to_str().expect("utf-8");

    // Before anything runs: check chains the plans, plan prints all four in order.
    let checked = db.turnout(&["check", dir_s], None);
    ok(&checked, "check DIR");
    let text = stdout(&checked);
    assert_eq!(text.matches("can be applied").count(), 4, "{text}");
    assert!(
        text.contains("checked against the shape 0003-widen-qty.yaml leaves"),
        "{text}"
    );
    let planned = stdout(&db.turnout(&["plan", dir_s], None));
    let at = |f: &str| {
        planned
            .find(f)
            .unwrap_or_else(|| panic!("plan DIR lacks {f}"))
    };
    assert!(at(ADD.0) < at(INDEX.0) && at(INDEX.0) < at(WIDEN.0) && at(WIDEN.0) < at(RENAME.0));
    assert_eq!(phases(&status(&db, dir_s).await), ["pending"; 4]);

    let writer = Writer::start(db.pool.clone(), "items", "mirror", SEED_ROWS, 23);
    writer.wait_for(10).await;
    let first = db.turnout(&["run", dir_s, "--yes"], None);
    ok(&first, "run DIR");
    assert!(stdout(&first).contains("all 4 plans"), "{}", stdout(&first));
    writer.wait_for(10).await;
    let after_first = status(&db, dir_s).await;
    assert_eq!(phases(&after_first), ["done"; 4]);
    for e in &after_first {
        assert_eq!(e["pending"], false, "{e}");
        assert!(
            e["started_at"].is_string() && e["finished_at"].is_string(),
            "{e}"
        );
        assert!(e["problem"].is_null(), "{e}");
    }
    let finished: Vec<_> = after_first
        .iter()
        .map(|e| e["finished_at"].clone())
        .collect();
    let order: Vec<_> = finished
        .iter()
        .map(|f| f.as_str().unwrap_or("").to_string())
        .collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted, "the plans did not finish in file order");
    let cols = columns(&db).await;
    assert_eq!(names(&cols), ["id", "label", "note", "qty", "tag", "total"]);
    assert!(
        cols.iter().any(|(n, t)| n == "qty" && t == "bigint"),
        "{cols:?}"
    );

    // A second run does nothing and says so.
    let saved = states(&db).await;
    let second = db.turnout(&["run", dir_s, "--yes"], None);
    ok(&second, "second run DIR");
    assert!(
        stdout(&second).contains("nothing to run: all 4 plans"),
        "{}",
        stdout(&second)
    );
    assert_eq!(states(&db).await, saved, "a second run changed a state");

    // A plan added later is the only one run.
    write(&dir, DROP);
    writer.wait_for(10).await;
    let third = db.turnout(&["run", dir_s, "--yes"], None);
    ok(&third, "run DIR with a new plan");
    let text = stdout(&third);
    assert_eq!(text.matches(": starting").count(), 1, "{text}");
    assert!(text.contains(&format!("{}: migration", DROP.0)), "{text}");
    writer.wait_for(10).await;
    let last = status(&db, dir_s).await;
    assert_eq!(phases(&last), ["done"; 5]);
    let again: Vec<_> = last
        .iter()
        .take(4)
        .map(|e| e["finished_at"].clone())
        .collect();
    assert_eq!(again, finished, "a done plan ran again");
    assert_eq!(
        names(&columns(&db).await),
        ["id", "label", "qty", "tag", "total"]
    );

    assert!(writer.stop().await.is_empty());
    compare_with_mirror(&db, true).await;
    db.drop().await;
}

pub async fn an_edited_done_plan_and_a_gap_are_refused(kind: Kind) {
    let db = TestDb::new(kind).await;
    seed(&db).await;
    let dir = plans_dir(&db, &[ADD, WIDEN]);
    let dir_s = dir.to_str().expect("utf-8");
    ok(&db.turnout(&["run", dir_s, "--yes"], None), "run DIR");
    let snapshot = async || (catalog(&db).await, states(&db).await);
    let before = snapshot().await;

    // An edited done plan: refused by run and check, with the diff; nothing changes.
    std::fs::write(
        dir.join(ADD.0),
        plan(ADD.1, &ADD.2.replace("qty * 2", "qty * 3")),
    )
    .expect("edit");
    for args in [&["run", dir_s, "--yes"][..], &["check", dir_s]] {
        let out = db.turnout(args, None);
        let (cmd, err) = (args[0], stderr(&out));
        assert_eq!(out.status.code(), Some(2), "{cmd}: {err}");
        for needle in [
            ADD.0,
            "- ",
            "qty * 2",
            "qty * 3",
            "--allow-edited",
            "nothing was changed",
        ] {
            assert!(err.contains(needle), "{cmd} lacks {needle:?}: {err}");
        }
    }
    let listed = status(&db, dir_s).await;
    assert_eq!(phases(&listed), ["done", "done"]);
    assert!(
        listed[0]["problem"]
            .as_str()
            .is_some_and(|p| p.contains("changed"))
    );
    assert_eq!(snapshot().await, before, "a refused run changed something");
    // Taken as done when the user says so: nothing to run.
    let allowed = db.turnout(&["run", dir_s, "--allow-edited", "--yes"], None);
    ok(&allowed, "run DIR --allow-edited");
    assert!(
        stdout(&allowed).contains("nothing to run"),
        "{}",
        stdout(&allowed)
    );
    assert_eq!(snapshot().await, before);
    write(&dir, ADD);

    // A gap: a new plan sorted before one already done.
    write(&dir, INDEX);
    let out = db.turnout(&["run", dir_s, "--yes"], None);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for needle in [INDEX.0, WIDEN.0, "--allow-out-of-order"] {
        assert!(
            err.contains(needle),
            "the gap refusal lacks {needle:?}: {err}"
        );
    }
    let listed = status(&db, dir_s).await;
    assert_eq!(phases(&listed), ["done", "pending", "done"]);
    assert_eq!(listed[1]["pending"], true);
    assert!(
        listed[1]["problem"]
            .as_str()
            .is_some_and(|p| p.contains(WIDEN.0))
    );
    assert_eq!(snapshot().await, before, "a refused gap changed something");
    let table = stdout(&db.turnout(&["status", dir_s], None));
    assert!(
        table
            .lines()
            .nth(2)
            .is_some_and(|l| l.contains(INDEX.0) && l.contains("pending")),
        "{table}"
    );
    ok(
        &db.turnout(&["run", dir_s, "--allow-out-of-order", "--yes"], None),
        "run DIR --allow-out-of-order",
    );
    assert_eq!(phases(&status(&db, dir_s).await), ["done"; 3]);

    // Two plans with one migration name are refused by check, naming both files.
    write(&dir, ("0009-again.yaml", ADD.1, RENAME.2));
    let dup = db.turnout(&["check", dir_s], None);
    assert_eq!(dup.status.code(), Some(2), "{}", stderr(&dup));
    assert!(
        stderr(&dup).contains("0009-again.yaml") && stderr(&dup).contains(ADD.0),
        "{}",
        stderr(&dup)
    );
    db.drop().await;
}

pub async fn a_directory_run_killed_in_its_third_plan_resumes(kind: Kind) {
    let db = TestDb::new(kind).await;
    seed(&db).await;
    let dir = plans_dir(&db, &[ADD, INDEX, WIDEN]);
    let dir_s = dir.to_str().expect("utf-8");
    let writer = Writer::start(db.pool.clone(), "items", "mirror", SEED_ROWS, 29);
    writer.wait_for(10).await;
    // Each copied plan's cutover visits this point once. The index plan takes the instant
    // path (no cutover), so the second visit is the third plan's.
    let killed = db.turnout(&["run", dir_s, "--yes"], Some("cutover.inside@2"));
    assert!(
        !killed.status.success() && stderr(&killed).contains("fault injected"),
        "{}\n{}",
        stdout(&killed),
        stderr(&killed)
    );
    let listed = status(&db, dir_s).await;
    assert_eq!(phases(&listed)[..2], ["done", "done"]);
    assert_ne!(listed[2]["phase"], "done");
    assert_eq!(listed[2]["pending"], true);
    writer.wait_for(20).await;
    let resumed = db.turnout(&["run", dir_s, "--yes"], None);
    ok(&resumed, "run DIR after the crash");
    let text = stdout(&resumed);
    assert!(
        text.contains(&format!("{}: migration", WIDEN.0)) && text.contains("resuming from"),
        "{text}"
    );
    assert!(
        !text.contains(ADD.0),
        "a done plan was touched again: {text}"
    );
    assert_eq!(phases(&status(&db, dir_s).await), ["done"; 3]);
    writer.wait_for(10).await;
    assert!(writer.stop().await.is_empty());
    compare_with_mirror(&db, false).await;
    db.drop().await;
}
