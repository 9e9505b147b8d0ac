//! SQLite's type matrix: dynamic typing (text in an INTEGER column, a BLOB in a TEXT
//! column), every affinity (and the names that map to one), integers beyond 2^53, REAL
//! edge values, long values; then the same in a STRICT, WITHOUT ROWID table. Values are
//! compared as `typeof(v) || quote(v)`, so a value that changed storage class is a
//! difference.

use crate::harness::Kind;
use crate::types_matrix::{Matrix, every_type_migrates_verifies_and_rolls_back};

const PLAN: &str = "version: 1
name: sqlite-types
table: kinds
changes:
  - add_column: {name: note, type: TEXT, from: \"'copied'\"}
  - add_index: {name: kinds_qty_idx, columns: [qty]}
backfill: {batch_size: 40}
";

/// Each typed column as its storage class and exact literal.
fn exact(cols: &[&str]) -> String {
    let typed: Vec<String> = cols
        .iter()
        .map(|c| format!("typeof({c}) || ':' || quote({c})"))
        .collect();
    format!(
        "SELECT CAST(id AS TEXT), CAST(qty AS TEXT), CAST(tag AS TEXT), {} FROM {{t}} ORDER BY id",
        typed.join(", ")
    )
}

const SHAPE: &str = "SELECT name, type, CAST(\"notnull\" AS TEXT), CAST(pk AS TEXT) FROM pragma_table_info('{t}') ORDER BY cid";

const COLS: &[&str] = &["i", "r", "t", "b", "n", "v", "d", "bo", "dt", "u"];

/// Edge rows at ids 1–8 (the writer's to change, move and delete) and the same at
/// 900001–900008 (left alone, to tamper with), then plain filler rows.
fn seed() -> Vec<String> {
    vec![
        "INSERT INTO kinds (id, qty, tag, i, r, t, b, n, v, d, bo, dt, u) VALUES
         (1, 1, 1, 'text in an INTEGER column', 1e308, x'00ff', x'', '1.50', 'fits', 1.5, 1, '2024-02-29 23:59:59.999', NULL),
         (2, 2, NULL, 9007199254740993, -0.0, '', x'00', 12345678901234567890, 12, -1e999, 0, 1709251199, 1),
         (3, 3, 3, 9223372036854775807, 4.9e-324, 'Ελληνικά русский 中文 日本語 한국어 עברית العربية हिन्दी ไทย 😀👩‍👩‍👧', x'610000', 'abc', 'a much longer text than ten', 2.2250738585072014e-308, 'yes', 'not a date', 'x'),
         (4, 4, 4, -9223372036854775808, 1e999, 'trailing  ', zeroblob(16), 0.1, x'00', 1e-5, NULL, 2460000.5, x'01'),
         (5, 5, 5, 1.5, -1e999, 1, 1, ' 12 ', 3.0, '3.0', 2, x'ff', 1.5),
         (6, 6, 6, x'ff', 0.1, x'feff00', 'text in a BLOB column', 9223372036854775807, NULL, 9007199254740993, 1.0, NULL, 9223372036854775807),
         (7, 7, 7, '0042', 123456789012345678, NULL, NULL, '1e3', '', 0, -0.0, '', ''),
         (8, 8, 8, NULL, NULL, replace(hex(zeroblob(3000)), '0', 'é'), zeroblob(5000), NULL, NULL, NULL, NULL, NULL, NULL)"
            .into(),
        "INSERT INTO kinds SELECT id + 900000, qty, tag, i, r, t, b, n, v, d, bo, dt, u FROM kinds".into(),
        "WITH RECURSIVE s(k) AS (SELECT 9 UNION ALL SELECT k + 1 FROM s WHERE k < 200)
         INSERT INTO kinds (id, qty, tag, i, r, t, b, n) SELECT k, k % 17, k % 5, k * 1000003, k / 7.0, 'row ' || k, randomblob(k % 9), k % 3 FROM s"
            .into(),
    ]
}

fn matrix(create: &str) -> Matrix {
    Matrix {
        create: create.into(),
        seed: seed(),
        rows: 200,
        plan: PLAN.into(),
        during_dual_write: vec![
            "INSERT INTO {t} (id, qty, i, r, t, b, n, u) VALUES (1000001, 1, 'text again', -0.0, x'0000', x'00010203', '007', x'')".into(),
            "INSERT INTO {t} (id, qty, i, t, b, d) VALUES (1000002, 2, 9007199254740993, '😀 emoji', zeroblob(3), 1e999)".into(),
            "UPDATE {t} SET id = 1000003 WHERE id = 900004".into(),
            "DELETE FROM {t} WHERE id = 900005".into(),
        ],
        after_backfill: vec![
            "UPDATE {t} SET t = x'feff', i = 'now text', b = NULL WHERE id = 900003".into(),
            "UPDATE {t} SET id = 1000006, r = -0.0, n = 'x' WHERE id = 900007".into(),
        ],
        after_cutover: vec![
            "INSERT INTO {t} (id, qty, i, r, t, b) VALUES (1000004, 4, 'late text', 1e999, x'00', x'ff00')".into(),
            "UPDATE {t} SET b = x'00000000', r = -1e999, i = 9223372036854775807 WHERE id = 1000001".into(),
            "UPDATE {t} SET id = 1000005 WHERE id = 1000002".into(),
            "DELETE FROM {t} WHERE id = 900002".into(),
        ],
        exact: exact(COLS),
        shape: SHAPE.into(),
        tamper: vec![
            "UPDATE _kinds_new SET b = x'DEADBEEF00' WHERE id = 1000001".into(),
            "UPDATE _kinds_new SET t = substr(t, 1, 4000) || 'Y' || substr(t, 4002) WHERE id = 900008".into(),
            // Same digits, another storage class: text where the live row has an integer.
            "UPDATE _kinds_new SET u = '1' WHERE id = 900002".into(),
        ],
        tampered_shows: vec![
            "row with key [1000001] differs".into(),
            "x'DEADBEEF00'".into(),
            "x'00010203'".into(),
            "row with key [900008] differs".into(),
            "(6,000 chars; from char 3,980:".into(),
            "row with key [900002] differs".into(),
            "+  \"u\": \"1\"".into(),
            "-  \"u\": 1".into(),
        ],
        untamper: vec![
            "UPDATE _kinds_new SET b = x'00010203' WHERE id = 1000001".into(),
            "UPDATE _kinds_new SET t = (SELECT t FROM kinds WHERE id = 900008) WHERE id = 900008".into(),
            "UPDATE _kinds_new SET u = 1 WHERE id = 900002".into(),
        ],
    }
}

const CREATE: &str = "CREATE TABLE {t} (id INTEGER PRIMARY KEY, qty INTEGER, tag INTEGER, i INTEGER, r REAL, t TEXT, b BLOB, n NUMERIC, v VARCHAR(10), d DOUBLE PRECISION, bo BOOLEAN, dt DATETIME, u)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_every_affinity_and_storage_class_migrates_verifies_and_rolls_back() {
    every_type_migrates_verifies_and_rolls_back(Kind::Sqlite, matrix(CREATE)).await;
}

/// STRICT allows only INT, INTEGER, REAL, TEXT, BLOB and ANY; ANY keeps every storage
/// class as dynamic typing does. WITHOUT ROWID: the key is the table's b-tree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_strict_without_rowid_table_migrates_verifies_and_rolls_back() {
    let create = "CREATE TABLE {t} (id INTEGER PRIMARY KEY, qty INTEGER, tag INTEGER, i ANY, r REAL, t ANY, b BLOB, n ANY, v TEXT, d REAL, bo INT, dt ANY, u ANY) STRICT, WITHOUT ROWID";
    let mut m = matrix(create);
    // STRICT refuses a value its column's type cannot hold; ANY columns take the rest.
    m.seed[0] = "INSERT INTO kinds (id, qty, tag, i, r, t, b, n, v, d, bo, dt, u) VALUES
         (1, 1, 1, 'text in an ANY column', 1e308, x'00ff', x'', '1.50', 'fits', 1.5, 1, '2024-02-29 23:59:59.999', NULL),
         (2, 2, NULL, 9007199254740993, -0.0, '', x'00', 12345678901234567890, '12', -1e999, 0, 1709251199, 1),
         (3, 3, 3, 9223372036854775807, 4.9e-324, 'Ελληνικά русский 中文 日本語 😀👩‍👩‍👧', x'610000', 'abc', 'long text', 2.2250738585072014e-308, 1, 'not a date', 'x'),
         (4, 4, 4, -9223372036854775808, 1e999, 'trailing  ', zeroblob(16), 0.1, '', 1e-5, NULL, 2460000.5, x'01'),
         (5, 5, 5, 1.5, -1e999, 1, x'01', ' 12 ', '3.0', 3, 2, x'ff', 1.5),
         (6, 6, 6, x'ff', 0.1, x'feff00', x'74', 9223372036854775807, NULL, 9007199254740993, 1, NULL, 9223372036854775807),
         (7, 7, 7, '0042', 123456789012345678, NULL, NULL, '1e3', '', 0, 0, '', ''),
         (8, 8, 8, NULL, NULL, replace(hex(zeroblob(3000)), '0', 'é'), zeroblob(5000), NULL, NULL, NULL, NULL, NULL, NULL)"
        .into();
    m.seed[2] = "WITH RECURSIVE s(k) AS (SELECT 9 UNION ALL SELECT k + 1 FROM s WHERE k < 200)
         INSERT INTO kinds (id, qty, tag, i, r, t, b, n) SELECT k, k % 17, k % 5, k * 1000003, k / 7.0, 'row ' || k, randomblob(k % 9 + 1), k % 3 FROM s"
        .into();
    every_type_migrates_verifies_and_rolls_back(Kind::Sqlite, m).await;
}

/// A key that is bytes cannot travel between batches (the cursor is JSON): `check` and
/// `run` refuse it by column and type, and nothing is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_key_of_bytes_is_refused_by_check() {
    use crate::harness::{TestDb, stderr, stdout};
    for (create, words) in [
        (
            "CREATE TABLE t (k BLOB PRIMARY KEY, v TEXT);
INSERT INTO t VALUES ('text', 'a'), (2, 'b')",
            &["key column \"k\"", "type BLOB"][..],
        ),
        (
            "CREATE TABLE t (k, v TEXT, PRIMARY KEY (k))",
            &["key column \"k\"", "no type"][..],
        ),
        (
            "CREATE TABLE t (a INTEGER, k TEXT, v TEXT, PRIMARY KEY (a, k));
INSERT INTO t VALUES (1, 'text', 'a'), (1, x'00ff', 'b')",
            &["key column \"k\"", "type TEXT", "holds BLOB values"][..],
        ),
    ] {
        let db = TestDb::new(Kind::Sqlite).await;
        db.exec(create).await;
        let plan = db.plan_file(
            "bytes.yaml",
            "version: 1\nname: bytes-key\ntable: t\nchanges:\n  - add_column: {name: n, type: TEXT, from: v}\n",
        );
        let plan = plan.to_str().expect("utf-8 path");
        for cmd in [vec!["check", plan], vec!["run", plan, "--yes"]] {
            let out = db.turnout(&cmd, None);
            let said = format!("{}{}", stdout(&out), stderr(&out));
            assert_eq!(out.status.code(), Some(2), "{cmd:?}: {said}");
            for w in words {
                assert!(said.contains(w), "{w:?} not in {said}");
            }
        }
        let left = db
            .one("SELECT CAST(count(*) AS TEXT) FROM sqlite_master WHERE name IN ('_t_new', '_t_old') OR type = 'trigger'")
            .await;
        assert_eq!(left, "0", "no shadow table and no trigger may be created");
        db.drop().await;
    }
}
