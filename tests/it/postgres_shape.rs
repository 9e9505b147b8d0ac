//! PostgreSQL builds the new table with everything the old one has: UNIQUE, CHECK,
//! EXCLUDE and self-referencing FOREIGN KEY constraints, NOT NULL, column collations,
//! expression / partial / descending / operator-class / collated / INCLUDE /
//! storage-parameter / NULLS NOT DISTINCT indexes and GIN, GiST, BRIN, hash and SP-GiST
//! ones, on a table with enum, domain, range, jsonb and point columns. Under the
//! concurrent writer, a migration that widens a column the constraints use and renames one
//! the indexes use runs to done (its cutover killed once and resumed), and the catalog
//! then shows exactly what PostgreSQL's own `ALTER TABLE` gives a twin table; a rollback
//! from `cut_over` (killed once) gives back the catalog as it was, names included.
//! A row the new table's constraint refuses stops the backfill naming constraint and key;
//! what cannot be carried is refused by `check`, each object named.

use crate::harness::{Kind, TestDb, Writer, ok, stderr, stdout};
use crate::scenarios::SEED_ROWS;

/// `t` with every kind of furniture, every object's name starting with `t`.
async fn create_items(db: &TestDb, t: &str) {
    db.exec(&format!(
        "CREATE TABLE {t} (id serial PRIMARY KEY, qty integer NOT NULL CHECK (qty >= 0), tag integer, \
           name text NOT NULL DEFAULT 'item', note text DEFAULT '', slot int4range, doc jsonb DEFAULT '{{}}', \
           feel mood NOT NULL DEFAULT 'ok', weight posint DEFAULT 1, pos point DEFAULT point(0, 0), parent_id integer, code text COLLATE \"C\" DEFAULT 'a', \
           CONSTRAINT {t}_parent_fk FOREIGN KEY (parent_id) REFERENCES {t} (id) ON DELETE SET NULL ON UPDATE CASCADE, \
           CONSTRAINT {t}_tag_range CHECK (tag IS NULL OR tag BETWEEN 0 AND 6), \
           CONSTRAINT {t}_short_name CHECK (length(name) < 100), \
           CONSTRAINT {t}_code_key UNIQUE (code, id), \
           CONSTRAINT {t}_light CHECK (qty + weight < 100000 AND feel <> 'sad'), \
           CONSTRAINT {t}_no_overlap EXCLUDE USING gist (slot WITH &&) WHERE (slot IS NOT NULL));\n\
         CREATE INDEX {t}_lower_name ON {t} (lower(name) COLLATE \"C\" text_pattern_ops);\n\
         CREATE INDEX {t}_big_qty ON {t} (qty DESC NULLS LAST, name) WHERE qty > 500;\n\
         CREATE INDEX {t}_doc ON {t} USING gin (doc jsonb_path_ops);\n\
         CREATE INDEX {t}_pos ON {t} USING gist (pos);\n\
         CREATE INDEX {t}_id_brin ON {t} USING brin (id) WITH (pages_per_range = 16);\n\
         CREATE INDEX {t}_note_hash ON {t} USING hash (note);\n\
         CREATE INDEX {t}_tag_incl ON {t} (tag NULLS FIRST) INCLUDE (name) WITH (fillfactor = 80);\n\
         CREATE UNIQUE INDEX {t}_name_id ON {t} (name, id);\n\
         CREATE INDEX {t}_name_c ON {t} (name COLLATE \"C\");\n\
         CREATE INDEX {t}_code ON {t} (code);\n\
         CREATE INDEX {t}_code_default ON {t} (code COLLATE \"default\");\n\
         CREATE INDEX {t}_note_spgist ON {t} USING spgist (note);\n\
         CREATE UNIQUE INDEX {t}_note_id ON {t} (note, id) NULLS NOT DISTINCT"
    ))
    .await;
}

async fn seed(db: &TestDb) {
    db.exec(
        "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');\n\
         CREATE DOMAIN posint AS integer CHECK (VALUE > 0)",
    )
    .await;
    create_items(db, "items").await;
    db.exec("CREATE TABLE mirror (id integer PRIMARY KEY, qty integer NOT NULL, tag integer)")
        .await;
    db.exec(&format!(
        "INSERT INTO items (id, qty, tag, name, note, slot, doc, feel, weight, pos, parent_id) \
         SELECT i, i * 3 % 1000, NULLIF(i % 7, 0), 'item ' || i, 'n' || (i % 50), int4range(i * 10, i * 10 + 5), \
         jsonb_build_object('k', i % 9), (ARRAY['ok', 'happy']::mood[])[1 + i % 2], 1 + i % 4, point(i, -i), NULLIF(i / 2, 0) \
         FROM generate_series(1, {SEED_ROWS}) AS i;\n\
         INSERT INTO mirror SELECT id, qty, tag FROM items;\n\
         SELECT setval('items_id_seq', {SEED_ROWS})"
    ))
    .await;
}

fn plan(name: &str) -> String {
    format!(
        "version: 1
name: {name}
table: items
changes:
  - alter_column: {{name: qty, type: bigint}}
  - rename_column: {{from: name, to: title}}
  - add_column: {{name: extra, type: text, nullable: true}}
backfill:
  batch_size: 300
cutover:
  lock_timeout: 2s
  attempts: 10
  retry_delay: 50ms
"
    )
}

/// The furniture of `t` as the catalog states it: constraints (definition, validated),
/// indexes (`pg_get_indexdef`, valid), columns (type, NOT NULL, default, collation), with
/// `ref_items` read as `items` so a twin table compares.
async fn furniture(db: &TestDb, t: &str) -> Vec<Vec<Option<String>>> {
    db.rows(&format!(
        "SELECT * FROM (\
         SELECT 'constraint' AS k, replace(conname::text, 'ref_items', 'items') AS n, \
           replace(pg_get_constraintdef(oid), 'ref_items', 'items') AS d, convalidated::text AS v \
           FROM pg_constraint WHERE conrelid = '{t}'::regclass \
         UNION ALL SELECT 'index', replace(ic.relname::text, 'ref_items', 'items'), \
           replace(pg_get_indexdef(i.indexrelid), 'ref_items', 'items'), (i.indisvalid AND i.indisready)::text \
           FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid WHERE i.indrelid = '{t}'::regclass \
         UNION ALL SELECT 'column', a.attname::text, format_type(a.atttypid, a.atttypmod) || ' ' || a.attnotnull::text \
           || ' ' || coalesce(replace(pg_get_expr(d.adbin, d.adrelid), 'ref_items', 'items'), '-'), co.collname::text \
           FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
           LEFT JOIN pg_collation co ON co.oid = a.attcollation \
           WHERE a.attrelid = '{t}'::regclass AND a.attnum > 0 AND NOT a.attisdropped) AS f ORDER BY 1, 2"
    ))
    .await
}

async fn same_as_mirror(db: &TestDb) {
    let q = |t: &str| format!("SELECT id::text, qty::text, tag::text FROM {t} ORDER BY id");
    let (live, mirror) = (db.rows(&q("items")).await, db.rows(&q("mirror")).await);
    assert!(!mirror.is_empty());
    assert!(
        live == mirror,
        "items ({} rows) differs from the writer's mirror ({} rows)",
        live.len(),
        mirror.len()
    );
}

/// The carried constraints still refuse what they refused, on whichever table has the name.
async fn constraints_enforced(db: &TestDb) {
    for (bad, name) in [
        (
            "INSERT INTO items (id, qty) VALUES (-1, -1)",
            "items_qty_check",
        ),
        (
            "INSERT INTO items (id, qty, tag) VALUES (-2, 1, 9)",
            "items_tag_range",
        ),
        (
            "INSERT INTO items (id, qty, feel) VALUES (-3, 1, 'sad')",
            "items_light",
        ),
        (
            "INSERT INTO items (id, qty, weight) VALUES (-4, 1, 0)",
            "posint",
        ),
        (
            "INSERT INTO items (id, qty, slot) VALUES (-5, 1, int4range(12, 13))",
            "items_no_overlap",
        ),
        (
            "INSERT INTO items (id, qty, parent_id) VALUES (-6, 1, -7)",
            "items_parent_fk",
        ),
    ] {
        let err = db.exec_err(bad).await;
        assert!(err.contains(name), "{bad}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_new_table_has_every_constraint_and_index_after_done() {
    let db = TestDb::new(Kind::Postgres).await;
    seed(&db).await;
    // What PostgreSQL itself makes of the same change on a twin table.
    create_items(&db, "ref_items").await;
    db.exec(
        "ALTER TABLE ref_items ALTER COLUMN qty TYPE bigint;\n\
         ALTER TABLE ref_items RENAME COLUMN name TO title;\n\
         ALTER TABLE ref_items ADD COLUMN extra text",
    )
    .await;
    let expected = furniture(&db, "ref_items").await;
    let before = furniture(&db, "items").await;
    let plan = db.plan_file("plan.yaml", &plan("items-shape"));
    let plan = plan.to_str().expect("utf-8 path");
    ok(&db.turnout(&["check", plan], None), "check");
    let writer = Writer::start(db.pool.clone(), "items", "mirror", SEED_ROWS, 41);
    writer.wait_for(10).await;
    ok(
        &db.turnout(&["run", plan, "--until", "verified", "--yes"], None),
        "to verified",
    );
    writer.wait_for(10).await;
    ok(&db.turnout(&["verify", plan], None), "verify");
    let killed = db.turnout(&["run", plan, "--yes"], Some("cutover.inside"));
    assert!(
        stderr(&killed).contains("fault injected"),
        "{}",
        stderr(&killed)
    );
    assert_eq!(
        furniture(&db, "items").await,
        before,
        "a killed cutover changed the table"
    );
    writer.wait_for(10).await;
    ok(&db.turnout(&["resume", plan, "--yes"], None), "to done");
    writer.wait_for(20).await;
    let disagreements = writer.stop().await;
    assert!(disagreements.is_empty(), "{disagreements:?}");
    same_as_mirror(&db).await;
    let after = furniture(&db, "items").await;
    assert_eq!(after, expected, "the new table's furniture differs");
    constraints_enforced(&db).await;
    self_reference_cascades(&db).await;
    // The carried indexes serve queries.
    assert_eq!(
        db.one("SELECT count(*)::text FROM items WHERE doc @> '{\"k\": 3}'")
            .await,
        db.one("SELECT count(*)::text FROM items WHERE (doc ->> 'k') = '3'")
            .await
    );
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_rollback_from_cut_over_gives_back_every_constraint_and_index() {
    let db = TestDb::new(Kind::Postgres).await;
    seed(&db).await;
    let before = furniture(&db, "items").await;
    let plan = db.plan_file("plan.yaml", &plan("items-shape-back"));
    let plan = plan.to_str().expect("utf-8 path");
    let writer = Writer::start(db.pool.clone(), "items", "mirror", SEED_ROWS, 43);
    writer.wait_for(10).await;
    ok(
        &db.turnout(&["run", plan, "--until", "cut_over", "--yes"], None),
        "to cut_over",
    );
    writer.wait_for(20).await;
    // Cut over: the new table holds the original index and constraint names.
    let names = |f: &[Vec<Option<String>>]| -> Vec<Option<String>> {
        f.iter()
            .filter(|r| r[0].as_deref() != Some("column"))
            .map(|r| r[1].clone())
            .collect()
    };
    assert_eq!(names(&furniture(&db, "items").await), names(&before));
    constraints_enforced(&db).await;
    let killed = db.turnout(&["rollback", plan, "--yes"], Some("rollback.inside"));
    assert!(
        stderr(&killed).contains("fault injected"),
        "{}",
        stderr(&killed)
    );
    assert_eq!(names(&furniture(&db, "items").await), names(&before));
    ok(&db.turnout(&["rollback", plan, "--yes"], None), "rollback");
    writer.wait_for(20).await;
    let disagreements = writer.stop().await;
    assert!(disagreements.is_empty(), "{disagreements:?}");
    same_as_mirror(&db).await;
    assert_eq!(
        furniture(&db, "items").await,
        before,
        "rollback changed them"
    );
    constraints_enforced(&db).await;
    self_reference_cascades(&db).await;
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_row_the_new_constraint_refuses_stops_the_backfill_naming_it() {
    let db = TestDb::new(Kind::Postgres).await;
    db.exec(
        "CREATE TABLE prices (id integer PRIMARY KEY, price numeric(10, 2) NOT NULL CONSTRAINT prices_positive CHECK (price > 0));\n\
         INSERT INTO prices SELECT i, 1 + i % 10 FROM generate_series(1, 500) AS i;\n\
         UPDATE prices SET price = 0.4 WHERE id = 321",
    )
    .await;
    let plan = db.plan_file(
        "plan.yaml",
        "version: 1\nname: prices-int\ntable: prices\nchanges:\n  - alter_column: {name: price, type: integer}\nbackfill:\n  batch_size: 100\n",
    );
    let plan = plan.to_str().expect("utf-8 path");
    ok(&db.turnout(&["check", plan], None), "check");
    let out = db.turnout(&["run", plan, "--yes"], None);
    assert!(!out.status.success(), "{}", stdout(&out));
    let said = stderr(&out);
    assert!(
        said.contains("[321]") && said.contains("prices_positive"),
        "{said}"
    );
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_furniture_that_cannot_be_carried_is_refused_by_check_by_name() {
    let db = TestDb::new(Kind::Postgres).await;
    db.exec(
        "CREATE TABLE items (id integer PRIMARY KEY, qty integer NOT NULL, code text, note text);\n\
         ALTER TABLE items ADD CONSTRAINT items_qty_code CHECK (qty > 0 OR code IS NOT NULL);\n\
         ALTER TABLE items ADD CONSTRAINT items_later CHECK (qty < 1000) NOT VALID;\n\
         CREATE INDEX items_lower_note ON items (lower(note));\n\
         CREATE INDEX items_code_part ON items (id) WHERE code <> ''",
    )
    .await;
    let check = |changes: &str| {
        let plan = db.plan_file(
            "plan.yaml",
            &format!("version: 1\nname: items-refused\ntable: items\nchanges:\n{changes}"),
        );
        let out = db.turnout(&["check", plan.to_str().expect("utf-8")], None);
        assert!(!out.status.success(), "{changes} was accepted");
        format!("{}{}", stdout(&out), stderr(&out))
    };
    let said = check(
        "  - drop_column: {name: note}\n  - alter_column: {name: code, type: integer, using: length(code)}\n",
    );
    for (object, column) in [
        ("check constraint \"items_qty_code\"", "\"code\""),
        ("index \"items_lower_note\"", "\"note\""),
        ("index \"items_code_part\"", "\"code\""),
    ] {
        assert!(
            said.contains(&format!("{object} uses column {column}")),
            "{object}: {said}"
        );
    }
    // NOT VALID is carried as it is, and it uses no column the plan changes.
    assert!(!said.contains("items_later"), "{said}");
    let said = check("  - alter_column: {name: qty, type: text}\n");
    assert!(
        said.contains("check constraint \"items_qty_code\" uses column \"qty\", whose type the plan changes from integer to text"),
        "{said}"
    );
    db.drop().await;
}

/// After the furniture comparisons: changing a parent's key still reaches its children
/// through the table's reference to itself, on whichever table has the name.
async fn self_reference_cascades(db: &TestDb) {
    let parent = db
        .one("SELECT min(parent_id)::text FROM items WHERE parent_id > 0")
        .await;
    let children = db
        .one(&format!(
            "SELECT count(*)::text FROM items WHERE parent_id = {parent}"
        ))
        .await;
    db.exec(&format!(
        "UPDATE items SET id = -{parent} WHERE id = {parent}"
    ))
    .await;
    assert_eq!(
        db.one(&format!(
            "SELECT count(*)::text FROM items WHERE parent_id = -{parent}"
        ))
        .await,
        children
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_partitioned_and_inheriting_tables_are_refused_naming_the_others() {
    let db = TestDb::new(Kind::Postgres).await;
    db.exec(
        "CREATE TABLE events (id integer, at date NOT NULL, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);\n\
         CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');\n\
         CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');\n\
         CREATE TABLE base (id integer PRIMARY KEY, v integer);\n\
         CREATE TABLE special (extra text) INHERITS (base);\n\
         ALTER TABLE special ADD PRIMARY KEY (id)",
    )
    .await;
    for (table, says) in [
        ("events", "partitions: \"events_2025, events_2026\""),
        ("base", "tables \"special\" inherit from it"),
        ("special", "inherits from) \"base\""),
        ("events_2025", "inherits from) \"events\""),
    ] {
        let plan = db.plan_file(
            "plan.yaml",
            &format!(
                "version: 1\nname: {table}-wider\ntable: {table}\nchanges:\n  - add_column: {{name: note, type: text}}\n"
            ),
        );
        let out = db.turnout(&["check", plan.to_str().expect("utf-8")], None);
        assert!(!out.status.success(), "{table} was accepted");
        let said = format!("{}{}", stdout(&out), stderr(&out));
        assert!(said.contains(says), "{table}: {said}");
    }
    db.drop().await;
}
