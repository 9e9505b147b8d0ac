//! The type matrix's one scenario, run per database by types_sqlite.rs, types_postgres.rs
//! and types_mysql.rs: a table with a column per type holding its edge values, migrated
//! under the concurrent writer while typed rows are written during dual-write (forward
//! triggers) and after cutover (reverse triggers); verify passes on the exact copy, finds
//! and shows a tampered value, passes again once it is put back; the data ends equal to a
//! mirror written in the same transactions, once at done and once rolled back from
//! cut_over.

use crate::harness::{Kind, TestDb, Writer, ok, stderr, stdout};

/// One database's matrix. `{t}` in a statement stands for the table written: each write
/// runs once on `kinds` and once on `mirror`, in one transaction.
pub struct Matrix {
    /// Creates `{t}`; run for `kinds` and for `mirror`.
    pub create: String,
    /// Fills `kinds` (the mirror is then copied from it, so even generated values match).
    /// Rows with ids 1..=`rows` are the writer's to change; higher ids are left alone.
    pub seed: Vec<String>,
    pub rows: i64,
    /// The plan, on table `kinds`; it keeps every typed column as it is.
    pub plan: String,
    /// Typed writes while the forward triggers carry them to the shadow.
    pub during_dual_write: Vec<String>,
    /// Typed writes once the backfill is done (the triggers alone carry them).
    pub after_backfill: Vec<String>,
    /// Typed writes on the new table while the reverse triggers keep the old one.
    pub after_cutover: Vec<String>,
    /// Every original column of `{t}` as exact text (hex for bytes), ordered by id.
    pub exact: String,
    /// The table's columns and types from the catalog (`{t}` too), to compare across rollback.
    pub shape: String,
    /// Changes one value in the shadow (`_kinds_new`) of a row the writer never touches…
    pub tamper: Vec<String>,
    /// …which verify's report must show in these words (a hex value, the key)…
    pub tampered_shows: Vec<String>,
    /// …and puts it back.
    pub untamper: Vec<String>,
}

fn on(sql: &str, table: &str) -> String {
    sql.replace("{t}", table)
}

/// Each write (statements split at a `;` ending a line, to set a session variable first)
/// on `kinds`, then on `mirror`, in one transaction.
async fn write_both(db: &TestDb, writes: &[String]) {
    for w in writes {
        let stmts: Vec<(String, Vec<i64>)> = ["kinds", "mirror"]
            .iter()
            .flat_map(|t| w.split(";\n").map(|s| (on(s, t), vec![])))
            .collect();
        db.pool
            .transaction(&stmts)
            .await
            .unwrap_or_else(|e| panic!("{w}: {e}"));
    }
}

async fn set_up(kind: Kind, m: &Matrix) -> (TestDb, String) {
    let db = TestDb::new(kind).await;
    for table in ["kinds", "mirror"] {
        db.exec(&on(&m.create, table)).await;
    }
    for s in &m.seed {
        db.exec(s).await;
    }
    db.exec("INSERT INTO mirror SELECT * FROM kinds").await;
    let plan = db.plan_file("types.yaml", &m.plan);
    let plan = plan.to_str().expect("utf-8 path").to_string();
    (db, plan)
}

async fn assert_like_the_mirror(db: &TestDb, m: &Matrix, when: &str) {
    let (got, want) = (
        db.rows(&on(&m.exact, "kinds")).await,
        db.rows(&on(&m.exact, "mirror")).await,
    );
    assert_eq!(got.len(), want.len(), "{when}: row counts differ");
    if let Some((g, w)) = got.iter().zip(&want).find(|(g, w)| g != w) {
        panic!("{when}: the table differs from the mirror:\n table  {g:?}\n mirror {w:?}");
    }
}

fn verify(db: &TestDb, plan: &str) -> (Option<i32>, String) {
    let out = db.turnout(&["verify", plan], None);
    (
        out.status.code(),
        format!("{}\n{}", stdout(&out), stderr(&out)),
    )
}

pub async fn every_type_migrates_verifies_and_rolls_back(kind: Kind, m: Matrix) {
    // To done, with a tampered shadow value found and shown on the way.
    let (db, plan) = set_up(kind, &m).await;
    ok(&db.turnout(&["check", &plan], None), "check");
    let writer = Writer::start(db.pool.clone(), "kinds", "mirror", m.rows, 41);
    ok(
        &db.turnout(&["run", &plan, "--until", "dual_writing", "--yes"], None),
        "run to dual_writing",
    );
    writer.wait_for(10).await;
    write_both(&db, &m.during_dual_write).await;
    ok(
        &db.turnout(&["run", &plan, "--until", "backfilled", "--yes"], None),
        "run to backfilled",
    );
    writer.wait_for(10).await;
    write_both(&db, &m.after_backfill).await;
    let (code, report) = verify(&db, &plan);
    assert_eq!(code, Some(0), "equal rows must verify equal:\n{report}");

    for s in &m.tamper {
        db.exec(s).await;
    }
    let (code, report) = verify(&db, &plan);
    assert_eq!(code, Some(1), "a tampered value must be found:\n{report}");
    for words in &m.tampered_shows {
        assert!(
            report.contains(words.as_str()),
            "{words:?} not in:\n{report}"
        );
    }
    assert!(
        report.contains("turnout: verification found"),
        "the diff must be shown, not a database error:\n{report}"
    );
    assert!(
        report.len() < 20_000,
        "long values must be shortened:\n{report}"
    );
    for s in &m.untamper {
        db.exec(s).await;
    }
    let (code, report) = verify(&db, &plan);
    assert_eq!(code, Some(0), "the value put back must verify:\n{report}");

    ok(
        &db.turnout(&["run", &plan, "--until", "cut_over", "--yes"], None),
        "run to cut_over",
    );
    writer.wait_for(10).await;
    write_both(&db, &m.after_cutover).await;
    writer.wait_for(10).await;
    ok(&db.turnout(&["run", &plan, "--yes"], None), "run to done");
    let errors = writer.stop().await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_like_the_mirror(&db, &m, "at done").await;
    db.drop().await;

    // Rolled back from cut_over: the old table, its types and every write are back.
    let (db, plan) = set_up(kind, &m).await;
    let shape_before = db.rows(&on(&m.shape, "kinds")).await;
    let writer = Writer::start(db.pool.clone(), "kinds", "mirror", m.rows, 43);
    ok(
        &db.turnout(&["run", &plan, "--until", "dual_writing", "--yes"], None),
        "run to dual_writing",
    );
    write_both(&db, &m.during_dual_write).await;
    ok(
        &db.turnout(&["run", &plan, "--until", "backfilled", "--yes"], None),
        "run to backfilled",
    );
    write_both(&db, &m.after_backfill).await;
    ok(
        &db.turnout(&["run", &plan, "--until", "cut_over", "--yes"], None),
        "run to cut_over",
    );
    writer.wait_for(10).await;
    write_both(&db, &m.after_cutover).await;
    writer.wait_for(10).await;
    ok(&db.turnout(&["rollback", &plan, "--yes"], None), "rollback");
    writer.wait_for(10).await;
    let errors = writer.stop().await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(db.rows(&on(&m.shape, "kinds")).await, shape_before);
    assert_like_the_mirror(&db, &m, "rolled back").await;
    db.drop().await;
}
