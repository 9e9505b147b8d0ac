//! Hostile names and every kind of value: a table whose schema, table and column names
//! hold spaces, quotes, reserved words, mixed case and non-ASCII, with a composite key,
//! NULLs and the database's awkward types, migrated to done and rolled back after cutover.

use crate::harness::{Kind, TestDb, stderr, stdout};

pub struct Case {
    /// Creates the hostile table and fills it, plus a `snap` copy of it.
    pub setup: String,
    pub plan: String,
    /// The migrated table's rows, every value as text, in key order.
    pub migrated: String,
    /// The same, computed from `snap` by the plan's mapping.
    pub expected: String,
    /// The table's rows in the original shape, and `snap`'s.
    pub original: String,
    pub snapshot: String,
}

pub fn sqlite() -> Case {
    let t = r#""My ""odd"" table""#;
    let cols = r#""Key Part", "select", "prix €", "名前", "blob col", "num", "MixedCase""#;
    let typed = r#""Key Part", CAST("select" AS TEXT), CAST("prix €" AS TEXT), "名前", hex("blob col"), CAST("num" AS TEXT), "MixedCase""#;
    Case {
        setup: format!(
            r#"CREATE TABLE {t} ("Key Part" TEXT NOT NULL, "select" INTEGER NOT NULL, "prix €" REAL, "名前" TEXT, "blob col" BLOB, "num" NUMERIC, "MixedCase" TEXT DEFAULT 'x', PRIMARY KEY ("Key Part", "select"));
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 600) INSERT INTO {t} ({cols}) SELECT 'k ' || (i % 7) || ' "q''', i, CASE WHEN i % 5 = 0 THEN NULL ELSE i * 1.25 END, CASE WHEN i % 3 = 0 THEN NULL ELSE '名前 ' || i || ' 😀' END, CASE WHEN i % 4 = 0 THEN NULL ELSE randomblob(8) END, CASE WHEN i % 6 = 0 THEN NULL ELSE i * 10 END, 'Mixed ' || i FROM n;
CREATE INDEX "idx ""prix""" ON {t} ("prix €");
CREATE TABLE snap AS SELECT * FROM {t}"#
        ),
        plan: r#"version: 1
name: 'hostile "names" ☃'
table: My "odd" table
changes:
  - rename_column: {from: 名前, to: new "name"}
  - alter_column: {name: num, type: NUMERIC, using: num * 2, reverse: num / 2}
  - add_column: {name: "from", type: REAL, from: '"prix €" * 10'}
  - drop_column: {name: MixedCase, reverse: "'x'"}
  - add_index: {name: "ix; DROP TABLE snap --", columns: ["select", "from"]}
backfill: {batch_size: 64}
"#
        .into(),
        migrated: format!(
            r#"SELECT "Key Part", CAST("select" AS TEXT), CAST("prix €" AS TEXT), "new ""name""", hex("blob col"), CAST("num" AS TEXT), CAST("from" AS TEXT) FROM {t} ORDER BY "Key Part", "select""#
        ),
        expected: r#"SELECT "Key Part", CAST("select" AS TEXT), CAST("prix €" AS TEXT), "名前", hex("blob col"), CAST(CAST("num" * 2 AS NUMERIC) AS TEXT), CAST(CAST("prix €" * 10 AS REAL) AS TEXT) FROM snap ORDER BY "Key Part", "select""#.into(),
        original: format!(r#"SELECT {typed} FROM {t} ORDER BY "Key Part", "select""#),
        snapshot: format!(r#"SELECT {typed} FROM snap ORDER BY "Key Part", "select""#),
    }
}

fn ok(out: &std::process::Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({:?}):\n{}\n{}",
        out.status.code(),
        stdout(out),
        stderr(out)
    );
}

pub async fn hostile_names_migrate_and_roll_back(kind: Kind, case: Case) {
    // Forward to done: the data is the old data through the mapping.
    let db = TestDb::new(kind).await;
    db.exec(&case.setup).await;
    let plan = db.plan_file("hostile.yaml", &case.plan);
    let plan = plan.to_str().expect("utf-8");
    ok(&db.turnout(&["check", plan], None), "check");
    ok(&db.turnout(&["run", plan, "--yes"], None), "run");
    let (got, want) = (db.rows(&case.migrated).await, db.rows(&case.expected).await);
    assert_eq!(got.len(), want.len());
    assert!(
        got == want,
        "migrated rows differ: first {:?} vs {:?}",
        got.iter().zip(&want).find(|(a, b)| a != b),
        ()
    );
    db.drop().await;

    // To cutover and back: the table is exactly its snapshot again.
    let db = TestDb::new(kind).await;
    db.exec(&case.setup).await;
    let plan = db.plan_file("hostile.yaml", &case.plan);
    let plan = plan.to_str().expect("utf-8");
    ok(
        &db.turnout(&["run", plan, "--until", "cut_over", "--yes"], None),
        "run to cutover",
    );
    ok(&db.turnout(&["rollback", plan], None), "rollback");
    let (got, want) = (db.rows(&case.original).await, db.rows(&case.snapshot).await);
    assert!(
        got == want,
        "rolled back rows differ: first {:?}",
        got.iter().zip(&want).find(|(a, b)| a != b)
    );
    db.drop().await;
}
