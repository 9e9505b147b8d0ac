//! Hostile names and every kind of value: a table whose schema, table and column names
//! hold spaces, quotes, reserved words, mixed case and non-ASCII, with a composite key,
//! NULLs and the database's awkward types, migrated to done and rolled back after cutover.

use crate::harness::{Kind, TestDb, ok};

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
    ok(&db.turnout(&["rollback", plan, "--yes"], None), "rollback");
    let (got, want) = (db.rows(&case.original).await, db.rows(&case.snapshot).await);
    assert!(
        got == want,
        "rolled back rows differ: first {:?}",
        got.iter().zip(&want).find(|(a, b)| a != b)
    );
    db.drop().await;
}

pub fn postgres() -> Case {
    let t = r#""My ""Schema"""."Order ""Items"" ☃""#;
    let typed = r#""Key Part", "select"::text, "prix €"::text, "名前", encode("blob col", 'hex'), num::text, "MixedCase", ts::text, doc::text, u::text, arr::text"#;
    Case {
        setup: format!(
            r#"CREATE SCHEMA "My ""Schema""";
CREATE TABLE {t} ("Key Part" text NOT NULL, "select" integer NOT NULL, "prix €" numeric(10,2), "名前" text, "blob col" bytea, num integer, "MixedCase" text DEFAULT 'x', ts timestamptz, doc jsonb, u uuid, arr integer[], PRIMARY KEY ("Key Part", "select"));
INSERT INTO {t} SELECT 'k ' || (i % 7) || ' "q''', i, CASE WHEN i % 5 = 0 THEN NULL ELSE i * 1.25 END, CASE WHEN i % 3 = 0 THEN NULL ELSE '名前 ' || i || ' 😀' END, CASE WHEN i % 4 = 0 THEN NULL ELSE decode(md5(i::text), 'hex') END, CASE WHEN i % 6 = 0 THEN NULL ELSE i * 10 END, 'Mixed ' || i, CASE WHEN i % 8 = 0 THEN NULL ELSE timestamptz '2024-01-01 00:00:00+00' + i * interval '37 minutes 0.123456 seconds' END, CASE WHEN i % 9 = 0 THEN NULL ELSE jsonb_build_object('i', i, 'tags', jsonb_build_array('a', i)) END, md5(i::text)::uuid, ARRAY[i, NULL, -i] FROM generate_series(1, 600) AS i;
CREATE INDEX "idx ""prix""" ON {t} ("prix €");
CREATE TABLE snap AS SELECT * FROM {t}"#
        ),
        plan: r#"version: 1
name: 'hostile "names" ☃'
schema: My "Schema"
table: Order "Items" ☃
changes:
  - rename_column: {from: 名前, to: new "name"}
  - alter_column: {name: num, type: bigint, using: num * 2, reverse: num / 2}
  - add_column: {name: "from", type: numeric, from: '"prix €" * 10'}
  - drop_column: {name: MixedCase, reverse: "'x'"}
  - add_index: {name: "ix; DROP TABLE snap --", columns: ["select", "from"]}
backfill: {batch_size: 64}
"#
        .into(),
        migrated: format!(
            r#"SELECT "Key Part", "select"::text, "prix €"::text, "new ""name""", encode("blob col", 'hex'), num::text, "from"::text, ts::text, doc::text, u::text, arr::text FROM {t} ORDER BY "Key Part", "select""#
        ),
        expected: r#"SELECT "Key Part", "select"::text, "prix €"::text, "名前", encode("blob col", 'hex'), (num * 2)::bigint::text, CAST("prix €" * 10 AS numeric)::text, ts::text, doc::text, u::text, arr::text FROM snap ORDER BY "Key Part", "select""#.into(),
        original: format!(r#"SELECT {typed} FROM {t} ORDER BY "Key Part", "select""#),
        snapshot: format!(r#"SELECT {typed} FROM snap ORDER BY "Key Part", "select""#),
    }
}

pub fn mysql() -> Case {
    let t = "`Order ``Items`` ☃`";
    let typed = "`Key Part`, CAST(`select` AS CHAR), CAST(`prix €` AS CHAR), `名前`, HEX(`blob col`), CAST(num AS CHAR), `MixedCase`, CAST(ts AS CHAR), CAST(doc AS CHAR)";
    Case {
        setup: format!(
            "CREATE TABLE {t} (`Key Part` VARCHAR(32) NOT NULL, `select` INT NOT NULL, `prix €` DECIMAL(10,2), `名前` VARCHAR(64), `blob col` BLOB, num INT, `MixedCase` VARCHAR(16) DEFAULT 'x', ts DATETIME(6), doc JSON, PRIMARY KEY (`Key Part`, `select`)) DEFAULT CHARSET utf8mb4;
INSERT INTO {t} WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 600) SELECT CONCAT('k ', i % 7, ' \"q''`'), i, IF(i % 5 = 0, NULL, i * 1.25), IF(i % 3 = 0, NULL, CONCAT('名前 ', i, ' 😀')), IF(i % 4 = 0, NULL, UNHEX(MD5(i))), IF(i % 6 = 0, NULL, i * 10), CONCAT('Mixed ', i), IF(i % 8 = 0, NULL, TIMESTAMP('2024-01-01 00:00:00.123456') + INTERVAL i * 37 MINUTE), IF(i % 9 = 0, NULL, JSON_OBJECT('i', i, 'tags', JSON_ARRAY('a', i))) FROM n;
CREATE INDEX `idx \"prix\"` ON {t} (`prix €`);
CREATE TABLE snap AS SELECT * FROM {t}"
        ),
        plan: r#"version: 1
name: 'hostile `names` ☃'
table: Order `Items` ☃
changes:
  - rename_column: {from: 名前, to: new `name`}
  - alter_column: {name: num, type: BIGINT, using: num * 2, reverse: num DIV 2}
  - add_column: {name: "from", type: 'DECIMAL(12,2)', from: '`prix €` * 10'}
  - drop_column: {name: MixedCase, reverse: "'x'"}
  - add_index: {name: "ix; DROP TABLE snap --", columns: ["select", "from"]}
backfill: {batch_size: 64}
"#
        .into(),
        migrated: format!(
            "SELECT `Key Part`, CAST(`select` AS CHAR), CAST(`prix €` AS CHAR), `new ``name```, HEX(`blob col`), CAST(num AS CHAR), CAST(`from` AS CHAR), CAST(ts AS CHAR), CAST(doc AS CHAR) FROM {t} ORDER BY `Key Part`, `select`"
        ),
        expected: "SELECT `Key Part`, CAST(`select` AS CHAR), CAST(`prix €` AS CHAR), `名前`, HEX(`blob col`), CAST(num * 2 AS CHAR), CAST(CAST(`prix €` * 10 AS DECIMAL(12,2)) AS CHAR), CAST(ts AS CHAR), CAST(doc AS CHAR) FROM snap ORDER BY `Key Part`, `select`".into(),
        original: format!("SELECT {typed} FROM {t} ORDER BY `Key Part`, `select`"),
        snapshot: format!("SELECT {typed} FROM snap ORDER BY `Key Part`, `select`"),
    }
}
