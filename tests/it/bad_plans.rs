//! The bad-input corpus: malformed, hostile and impossible plans. Each must exit 2 with a
//! message naming the culprit, never panic, and leave the catalog and data as they were.

use crate::harness::{Kind, TestDb, stderr};
use crate::scenarios::seed;

const HEAD: &str = "version: 1\nname: bad\ntable: items\n";

/// (what it is, the plan, a piece of the message that names the culprit)
pub fn corpus() -> Vec<(&'static str, String, &'static str)> {
    let with = |changes: &str| format!("{HEAD}changes:\n{changes}");
    let ok_change = "  - add_column: {name: extra, type: INTEGER}\n";
    let tail = |yaml: &str| format!("{HEAD}changes:\n{ok_change}{yaml}");
    vec![
        (
            "not YAML at all",
            "version: 1\nname: [unclosed\n".into(),
            "bad.yaml:",
        ),
        (
            "a tab-indented document",
            "version: 1\n\tname: x\n".into(),
            "bad.yaml:",
        ),
        (
            "an empty file",
            String::new(),
            "bad.yaml:1:1: the plan file is empty",
        ),
        (
            "a file of comments only",
            "# the plan, to come\n\n".into(),
            "bad.yaml:1:1: the plan file is empty",
        ),
        (
            "a list instead of a map",
            "- version: 1\n".into(),
            "bad.yaml:1:1: the plan must be a mapping of keys: version, name, table, changes",
        ),
        (
            "a scalar instead of a map",
            "just a table please\n".into(),
            "bad.yaml:1:1: the plan must be a mapping of keys: version, name, table, changes",
        ),
        (
            "an unquoted comma inside a flow mapping",
            with("  - add_column: {name: amount, type: numeric(12,2)}\n"),
            "quote the value: `type: \"numeric(12,2)\"`",
        ),
        (
            "a change given as a list",
            with("  - [add_column, extra]\n"),
            "bad.yaml:5:5: changes[0]: expected a change: a mapping with one key naming its kind",
        ),
        (
            "two kinds in one change",
            with("  - add_column: {name: x, type: INTEGER}\n    drop_column: {name: note}\n"),
            "changes[0]: expected a change",
        ),
        (
            "a change's keys given as text",
            with("  - drop_column: note\n"),
            "changes[0].drop_column: expected a mapping of keys: name (required)",
        ),
        (
            "a section given as a list",
            tail("verify: [full]\n"),
            "verify: expected a mapping of keys",
        ),
        (
            "a key given twice",
            with(ok_change).replace("table: items\n", "table: items\ntable: other\n"),
            "bad.yaml:4:1: table: the key `table` is given twice",
        ),
        (
            "a choice given as a list",
            tail("dual_write:\n  on_error: [record]\n"),
            "dual_write.on_error: expected one of `record`, `reject`",
        ),
        (
            "version 2",
            with(ok_change).replace("version: 1", "version: 2"),
            "version: expected 1",
        ),
        (
            "version as a string",
            with(ok_change).replace("version: 1", "version: one"),
            "bad.yaml:1:10: version: expected a whole number",
        ),
        (
            "missing name",
            format!("version: 1\ntable: items\nchanges:\n{ok_change}"),
            "name",
        ),
        (
            "missing table",
            format!("version: 1\nname: x\nchanges:\n{ok_change}"),
            "table",
        ),
        (
            "a name reserved for control records",
            with(ok_change).replace("name: bad", "name: \"bad#control\""),
            "reserved for turnout's control records",
        ),
        ("missing changes", HEAD.into(), "changes"),
        (
            "both a top-level table and a tables list",
            format!("{HEAD}tables:\n  - table: items\n    changes: [{{add_column: {{name: extra, type: INTEGER}}}}]\n"),
            "bad.yaml:3:1: table: a plan with `tables` gives `table` inside each entry",
        ),
        (
            "a table listed twice in tables",
            "version: 1\nname: bad\ntables:\n  - table: items\n    changes: [{add_column: {name: extra, type: INTEGER}}]\n  - table: items\n    changes: [{add_column: {name: more, type: INTEGER}}]\n".into(),
            "bad.yaml:6:5: tables[1].table: table \"items\" is listed twice",
        ),
        (
            "empty changes",
            format!("{HEAD}changes: []\n"),
            "changes: expected at least one change",
        ),
        (
            "an unknown top-level key",
            format!("{}colour: red\n", with(ok_change)),
            "colour",
        ),
        (
            "an unknown change",
            with("  - add_coloumn: {name: x, type: INTEGER}\n"),
            "add_coloumn",
        ),
        (
            "an unknown key in a change",
            with("  - add_column: {name: x, type: INTEGER, nulable: true}\n"),
            "nulable",
        ),
        (
            "add_column without a type",
            with("  - add_column: {name: x}\n"),
            "changes[0].add_column.type: the required key `type` is missing",
        ),
        (
            "nullable as a word",
            with("  - add_column: {name: x, type: INTEGER, nullable: maybe}\n"),
            "changes[0].add_column.nullable: expected `true` or `false`; found the text \"maybe\"",
        ),
        (
            "a bad duration",
            tail("backfill:\n  target_batch_time: soon\n"),
            "backfill.target_batch_time",
        ),
        (
            "a negative batch size",
            tail("backfill:\n  batch_size: -5\n"),
            "batch_size",
        ),
        (
            "a zero batch size",
            tail("backfill:\n  batch_size: 0\n"),
            "backfill.batch_size",
        ),
        (
            "an absurd batch size",
            tail("backfill:\n  batch_size: 99999999999\n"),
            "backfill.batch_size",
        ),
        (
            "batch size as a word",
            tail("backfill:\n  batch_size: lots\n"),
            "batch_size",
        ),
        (
            "an absurd sample rate",
            tail("verify:\n  mode: sample\n  sample_rate: 7\n"),
            "verify.sample_rate",
        ),
        (
            "an unknown verify mode",
            tail("verify:\n  mode: sometimes\n"),
            "sometimes",
        ),
        (
            "zero cutover attempts",
            tail("cutover:\n  attempts: 0\n"),
            "cutover.attempts",
        ),
        (
            "a zero lock timeout",
            tail("cutover:\n  lock_timeout: 0s\n"),
            "cutover.lock_timeout",
        ),
        (
            "a replica URL that is not one",
            tail("backfill:\n  throttle:\n    replicas: [\"not a url\"]\n    max_lag: 1s\n"),
            "bad.yaml:8:5: backfill.throttle.replicas[0]: expected a database URL",
        ),
        (
            "a replica of another kind of database",
            tail("backfill:\n  throttle:\n    replicas: [\"http://u:hunter2@h/x\"]\n    max_lag: 1s\n"),
            "bad.yaml:8:5: backfill.throttle.replicas[0]: expected a postgres:// or mysql:// URL",
        ),
        (
            "replicas without a max_lag",
            tail("backfill:\n  throttle:\n    replicas: [\"postgres://u@replica:5433/app\"]\n"),
            "bad.yaml:7:3: backfill.throttle.max_lag: expected the replay lag",
        ),
        (
            "a max_lag of zero",
            tail("backfill:\n  throttle:\n    replicas: [\"postgres://u@replica:5433/app\"]\n    max_lag: 0s\n"),
            "bad.yaml:9:5: backfill.throttle.max_lag: expected a duration between 10ms and 1h",
        ),
        (
            "a max_lag without replicas",
            tail("backfill:\n  throttle: {query: SELECT 0, max: 1, max_lag: 1s}\n"),
            "bad.yaml:7:39: backfill.throttle.max_lag: bounds the lag of `replicas`",
        ),
        (
            "a throttle of nothing",
            tail("backfill:\n  throttle: {}\n"),
            "bad.yaml:7:3: backfill.throttle: expected `query` with `max`, or `replicas` with `max_lag`",
        ),
        (
            "a throttle query without its max",
            tail("backfill:\n  throttle: {query: SELECT 1}\n"),
            "bad.yaml:7:3: backfill.throttle.max: expected the number above which",
        ),
        (
            "blockers ended after no time at all",
            tail("cutover:\n  kill_blockers_after: 0s\n"),
            "cutover.kill_blockers_after",
        ),
        (
            "blockers ended after a duration that is not one",
            tail("cutover:\n  kill_blockers_after: soon\n"),
            "kill_blockers_after",
        ),
        (
            "an hour-long lock timeout",
            tail("cutover:\n  lock_timeout: 1h\n"),
            "cutover.lock_timeout",
        ),
        (
            "an unknown on_error",
            tail("dual_write:\n  on_error: shrug\n"),
            "shrug",
        ),
        (
            "an empty table name",
            with(ok_change).replace("table: items", "table: \"\""),
            "table",
        ),
        (
            "an empty migration name",
            with(ok_change).replace("name: bad", "name: \"\""),
            "name",
        ),
        (
            "the same column changed twice",
            with("  - add_column: {name: x, type: INTEGER}\n  - drop_column: {name: x}\n"),
            "already changed",
        ),
        (
            "a rename onto itself",
            with("  - rename_column: {from: name, to: name}\n"),
            "onto itself",
        ),
        (
            "an index without columns",
            with("  - add_index: {name: i, columns: []}\n"),
            "at least one column",
        ),
        (
            "an index listing a column twice",
            with("  - add_index: {name: i, columns: [qty, qty]}\n"),
            "listed twice",
        ),
        (
            "alter_column changing nothing",
            with("  - alter_column: {name: qty}\n"),
            "at least one of",
        ),
        (
            "a NOT NULL column with nothing to fill it",
            with("  - add_column: {name: x, type: INTEGER, nullable: false}\n"),
            "needs `from` or `default`",
        ),
        (
            "an expression that ends the statement",
            with("  - add_column: {name: x, type: INTEGER, from: \"1; DROP TABLE items\"}\n"),
            "would end the statement",
        ),
        // Impossible against the live table (preflight):
        (
            "a table that does not exist",
            with(ok_change).replace("table: items", "table: nosuch"),
            "no table \"nosuch\"",
        ),
        (
            "an injection in the table name",
            with(ok_change).replace("table: items", "table: \"items; DROP TABLE mirror; --\""),
            "no table",
        ),
        (
            "a misspelt type (SQLite would make it NUMERIC by accident)",
            with("  - add_column: {name: amount, type: \"numbr(12,2)\"}\n"),
            "numbr",
        ),
        (
            "a table without a primary key",
            with(ok_change).replace("table: items", "table: nokey"),
            "no primary key",
        ),
        (
            "dropping a column that does not exist",
            with("  - drop_column: {name: nosuch}\n"),
            "no column \"nosuch\"",
        ),
        (
            "adding a column that exists",
            with("  - add_column: {name: qty, type: INTEGER}\n"),
            "already has a column \"qty\"",
        ),
        (
            "a rename onto an existing column",
            with("  - rename_column: {from: name, to: note}\n"),
            "already has a column \"note\"",
        ),
        (
            "dropping the primary key column",
            with("  - drop_column: {name: id}\n"),
            "primary key",
        ),
        (
            "changing the primary key's type",
            with("  - alter_column: {name: id, type: TEXT}\n"),
            "primary key",
        ),
        (
            "an expression naming a missing column",
            with("  - add_column: {name: x, type: INTEGER, from: nosuch + 1}\n"),
            "column \"x\"",
        ),
        (
            "an expression that does not parse",
            with("  - add_column: {name: x, type: INTEGER, from: \"qty +* 2\"}\n"),
            "column \"x\"",
        ),
        (
            "an injection through an expression",
            with(
                "  - add_column: {name: x, type: INTEGER, from: \"(SELECT 1) ) ; DELETE FROM items --\"}\n",
            ),
            "x",
        ),
        (
            "a reverse naming a missing column",
            with("  - drop_column: {name: note, reverse: nosuch}\n"),
            "column \"note\"",
        ),
        (
            "an index on a missing column",
            with("  - add_index: {name: i, columns: [nosuch]}\n"),
            "nosuch",
        ),
        (
            "dropping an index that does not exist",
            with("  - drop_index: {name: nosuch}\n"),
            "no index \"nosuch\"",
        ),
        (
            "adding an index that exists",
            with("  - add_index: {name: items_name_idx, columns: [qty]}\n"),
            "already has an index",
        ),
        (
            "a column name with an embedded quote that does not exist",
            with("  - drop_column: {name: \"qty\\\"; DROP TABLE items; --\"}\n"),
            "no column",
        ),
    ]
}

/// serde's words for what it expected, which name Rust types the user never wrote.
const RUST_WORDS: &[&str] = &[
    "struct ",
    "enum ",
    "variant",
    "missing field",
    "unknown field",
    "duplicate field",
    "invalid type:",
    "expected u32",
    "expected u64",
    "expected f64",
    "unit value",
    "YAML tag starting",
];

/// The database's tables (with their triggers), as text.
pub async fn catalog(db: &TestDb) -> Vec<Vec<Option<String>>> {
    let catalog = match db.kind {
        Kind::Sqlite => "SELECT type, name, sql FROM sqlite_master ORDER BY name".to_string(),
        Kind::Postgres => "SELECT c.relname::text, c.relkind::text, (SELECT count(*) FROM pg_trigger t WHERE t.tgrelid = c.oid)::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' ORDER BY 1".to_string(),
        Kind::MySql => "SELECT TABLE_NAME, TABLE_TYPE, CAST(NULL AS CHAR) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() UNION ALL SELECT TRIGGER_NAME, 'trigger', ACTION_STATEMENT FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = DATABASE() ORDER BY 1".to_string(),
    };
    db.rows(&catalog).await
}

/// Everything a plan could have touched: the catalog and the data, as text.
pub(crate) async fn snapshot(db: &TestDb) -> Vec<Vec<Option<String>>> {
    let mut out = catalog(db).await;
    let t = |c: &str| db.text(c);
    out.extend(
        db.rows(&format!(
            "SELECT {}, {}, {}, {}, {} FROM items ORDER BY id",
            t("id"),
            t("qty"),
            t("tag"),
            t("name"),
            t("note")
        ))
        .await,
    );
    out
}

pub async fn every_bad_plan_is_refused_and_touches_nothing(kind: Kind) {
    let db = TestDb::new(kind).await;
    seed(&db).await;
    db.exec("CREATE TABLE nokey (a INTEGER, b INTEGER)").await;
    let before = snapshot(&db).await;
    let cases = corpus();
    let mut refused = 0;
    for (what, yaml, culprit) in &cases {
        let path = db.plan_file("bad.yaml", yaml);
        let path = path.to_str().expect("utf-8");
        for cmd in [
            vec!["check", path],
            vec!["run", path, "--yes"],
            vec!["plan", path],
        ] {
            let out = db.turnout(&cmd, None);
            let err = stderr(&out);
            assert_eq!(
                out.status.code(),
                Some(2),
                "{what}: `turnout {}` should exit 2:\n{err}",
                cmd[0]
            );
            assert!(
                err.contains(culprit),
                "{what}: `turnout {}` should name {culprit:?}:\n{err}",
                cmd[0]
            );
            assert!(!err.contains("panicked"), "{what}: panic:\n{err}");
            for rust in RUST_WORDS {
                assert!(
                    !err.contains(rust),
                    "{what}: `turnout {}` speaks Rust ({rust:?}):\n{err}",
                    cmd[0]
                );
            }
        }
        refused += 1;
    }
    let after = snapshot(&db).await;
    // `run` may create turnout's own bookkeeping tables; nothing else may change.
    let strip = |rows: Vec<Vec<Option<String>>>| -> Vec<Vec<Option<String>>> {
        rows.into_iter()
            .filter(|r| !r.iter().flatten().any(|v| v.contains("turnout_")))
            .collect()
    };
    let (before, after) = (strip(before), strip(after));
    let gone: Vec<_> = before
        .iter()
        .filter(|r| !after.contains(r))
        .take(5)
        .collect();
    let new: Vec<_> = after
        .iter()
        .filter(|r| !before.contains(r))
        .take(5)
        .collect();
    assert!(
        gone.is_empty() && new.is_empty(),
        "a refused plan changed the database: gone {gone:?}, new {new:?}"
    );
    println!("{kind:?}: {refused} bad plans refused with exit 2, database unchanged");
    db.drop().await;
}

/// On SQLite a type name nothing in SQLite recognises is refused with SQLite's names and
/// the way to insist; the insisting spelling passes and migrates.
pub async fn sqlite_a_misspelt_type_is_refused_and_the_affinity_can_be_insisted_on() {
    let db = TestDb::new(Kind::Sqlite).await;
    seed(&db).await;
    let before = snapshot(&db).await;
    let typo = db.plan_file(
        "typo.yaml",
        &format!("{HEAD}changes:\n  - add_column: {{name: amount, type: \"numbr(12,2)\"}}\n"),
    );
    let out = db.turnout(&["check", typo.to_str().expect("utf-8")], None);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for part in [
        "column \"amount\"",
        "\"numbr(12,2)\"",
        "DOUBLE PRECISION",
        "`numbr NUMERIC(12,2)`",
    ] {
        assert!(
            err.contains(part),
            "the refusal should say {part:?}:\n{err}"
        );
    }
    assert_eq!(
        snapshot(&db).await,
        before,
        "a refused check changed the database"
    );
    let insist = db.plan_file(
        "insist.yaml",
        &format!(
            "{HEAD}changes:\n  - add_column: {{name: amount, type: \"numbr NUMERIC(12,2)\", from: qty * 1.5}}\n"
        ),
    );
    let insist = insist.to_str().expect("utf-8");
    crate::harness::ok(&db.turnout(&["check", insist], None), "check insisting");
    crate::harness::ok(
        &db.turnout(&["run", insist, "--yes"], None),
        "run insisting",
    );
    let declared = db
        .rows("SELECT type FROM pragma_table_info('items') WHERE name = 'amount'")
        .await;
    assert_eq!(
        declared,
        vec![vec![Some("numbr NUMERIC(12,2)".to_string())]]
    );
    // NUMERIC affinity, as insisted: 1.5 * an even qty is stored as an integer.
    let stored = db
        .rows("SELECT DISTINCT typeof(amount) FROM items WHERE qty % 2 = 0 AND amount IS NOT NULL")
        .await;
    assert_eq!(stored, vec![vec![Some("integer".to_string())]]);
    db.drop().await;
}

pub fn wrong_urls_exit_3() {
    for url in [
        "postgres://postgres:hunter2@127.0.0.1:1/test",
        "mysql://root:hunter2@127.0.0.1:1/test",
        "sqlite:///nonexistent/dir/x.db",
        "postgres://postgres:hunter2@127.0.0.1:5432/no_such_database_here",
    ] {
        let dir = tempfile::tempdir().expect("tmp");
        let plan = dir.path().join("p.yaml");
        std::fs::write(
            &plan,
            format!("{HEAD}changes:\n  - add_column: {{name: x, type: INTEGER}}\n"),
        )
        .expect("write");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_turnout"))
            .args(["status", "--database-url", url])
            .output()
            .expect("run");
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(3), "{url}: {err}");
        assert!(!err.contains("hunter2"), "the password leaked: {err}");
        assert!(err.contains("cannot reach"), "{url}: {err}");
    }
}
