//! PostgreSQL carries the furniture preflight used to refuse. NOT VALID CHECK constraints
//! stay NOT VALID on the new table (and still check new writes; one renamed follows its
//! column; one added mid-migration arrives NOT VALID). DEFERRABLE unique constraints keep
//! their deferral, and a statement passing through a duplicate of an INITIALLY IMMEDIATE
//! one works during dual-write and after cutover; a DEFERRABLE primary key is refused.
//! Publications list the new table with the same column list and row filter, the old one
//! again after a rollback (a renamed listed column followed; a filter on a changed column
//! refused). Generated columns are recomputed, never written, and exact (a plan altering
//! one or its inputs refused). Rules move to the new table and back, act once per write
//! (an insert log compared with the mirror's), and are refused over a changed column.
//! Each is migrated to done and rolled back from `cut_over` under the concurrent writer,
//! the catalog compared before and after, the table equal to the writer's mirror; then all
//! of them together through kills inside the cutover and the rollback transactions.

use crate::harness::{Kind, TestDb, Writer, ok, stderr, stdout};
use crate::scenarios::SEED_ROWS;

/// `items` (serial key) and the writer's `mirror`, seeded alike; `extra` runs before the
/// seed rows (for what must exist when they are written).
async fn seed(db: &TestDb, columns: &str, extra: &str) {
    db.exec(&format!(
        "CREATE TABLE items (id serial PRIMARY KEY, qty integer NOT NULL, tag integer, name text{columns});\n\
         CREATE TABLE mirror (id integer PRIMARY KEY, qty integer NOT NULL, tag integer, name text)"
    ))
    .await;
    if !extra.is_empty() {
        db.exec(extra).await;
    }
    for table in ["items", "mirror"] {
        db.exec(&format!(
            "INSERT INTO {table} (id, qty, tag, name) SELECT i, i * 3 % 1000, NULLIF(i % 7, 0), 'item ' || i \
             FROM generate_series(1, {SEED_ROWS}) AS i"
        ))
        .await;
    }
    db.exec(&format!("SELECT setval('items_id_seq', {SEED_ROWS})"))
        .await;
}

/// `items`'s constraints and indexes as the catalog states them.
async fn constraints(db: &TestDb) -> Vec<Vec<Option<String>>> {
    let mut out = db
        .rows(
            "SELECT conname::text, contype::text, pg_get_constraintdef(oid), convalidated::text, \
             condeferrable::text, condeferred::text FROM pg_constraint WHERE conrelid = 'items'::regclass ORDER BY 1",
        )
        .await;
    out.extend(
        db.rows("SELECT indexname::text, indexdef FROM pg_indexes WHERE schemaname = 'public' AND tablename = 'items' ORDER BY 1")
            .await,
    );
    out
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

fn plan(name: &str, changes: &str) -> String {
    format!(
        "version: 1\nname: {name}\ntable: items\nchanges:\n{changes}backfill:\n  batch_size: 300\n\
         cutover:\n  lock_timeout: 2s\n  attempts: 10\n  retry_delay: 50ms\n"
    )
}

/// Widens a column no furniture of these tests uses.
const WIDEN_TAG: &str = "  - alter_column: {name: tag, type: bigint}\n";

/// Checks, then runs `plan` to done (or to `cut_over` and rolls back) under the concurrent
/// writer, verifying on the way.
async fn migrate(db: &TestDb, plan: &str, rollback: bool, seed: u64) {
    migrate_probed(db, plan, rollback, seed, "").await
}

/// `migrate`, with `probe` run during dual-write (before verify) and after the cutover.
async fn migrate_probed(db: &TestDb, plan: &str, rollback: bool, seed: u64, probe: &str) {
    ok(&db.turnout(&["check", plan], None), "check");
    let writer = Writer::start(db.pool.clone(), "items", "mirror", SEED_ROWS, seed);
    writer.wait_for(10).await;
    ok(
        &db.turnout(&["run", plan, "--until", "verified", "--yes"], None),
        "run to verified",
    );
    if !probe.is_empty() {
        db.exec(probe).await;
    }
    ok(&db.turnout(&["verify", plan], None), "verify");
    let until = if rollback { "cut_over" } else { "done" };
    ok(
        &db.turnout(&["run", plan, "--until", until, "--yes"], None),
        until,
    );
    writer.wait_for(20).await;
    if !probe.is_empty() {
        db.exec(probe).await;
    }
    if rollback {
        ok(&db.turnout(&["rollback", plan, "--yes"], None), "rollback");
        writer.wait_for(10).await;
    }
    assert!(writer.stop().await.is_empty());
    same_as_mirror(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_not_valid_checks_stay_not_valid_to_done_and_back() {
    for rollback in [false, true] {
        let db = TestDb::new(Kind::Postgres).await;
        seed(&db, "", "").await;
        // Rows that break the constraints, which the user has not validated: the writer
        // never writes `name`, and a renamed column's check follows it.
        db.exec(
            "UPDATE items SET name = 'bad' WHERE id % 50 = 0;\n\
             ALTER TABLE items ADD CONSTRAINT items_name_ok CHECK (name <> 'bad') NOT VALID;\n\
             ALTER TABLE items ADD CONSTRAINT items_qty_ok CHECK (qty >= 0) NOT VALID;\n\
             ALTER TABLE items ADD CONSTRAINT items_tag_ok CHECK (tag IS NULL OR tag < 100)",
        )
        .await;
        let before = constraints(&db).await;
        assert!(
            before
                .iter()
                .any(|r| r[0].as_deref() == Some("items_name_ok")
                    && r[3].as_deref() == Some("false"))
        );
        let name = format!("items-not-valid-{rollback}");
        let p = db.plan_file("plan.yaml", &plan(&name, WIDEN_TAG));
        let p = p.to_str().expect("utf-8 path");
        migrate(&db, p, rollback, 71).await;
        assert_eq!(constraints(&db).await, before, "rollback {rollback}");
        let bad = db
            .one("SELECT count(*)::text FROM items WHERE name = 'bad'")
            .await;
        assert_ne!(bad, "0", "the rows breaking the check are gone");
        // Still enforced for every new write, whichever table has the name.
        let refused = db
            .exec_err("INSERT INTO items (id, qty, name) VALUES (1999999901, 1, 'bad')")
            .await;
        assert!(refused.contains("items_name_ok"), "{refused}");
        let tag = db
            .one("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'items'::regclass AND attname = 'tag'")
            .await;
        assert_eq!(tag, if rollback { "integer" } else { "bigint" });
        db.drop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_check_added_during_the_migration_reaches_the_new_table_not_valid() {
    let db = TestDb::new(Kind::Postgres).await;
    seed(&db, "", "").await;
    let p = db.plan_file("plan.yaml", &plan("items-check-added", WIDEN_TAG));
    let p = p.to_str().expect("utf-8 path");
    ok(
        &db.turnout(&["run", p, "--until", "verified", "--yes"], None),
        "run to verified",
    );
    db.exec("ALTER TABLE items ADD CONSTRAINT items_qty_late CHECK (qty >= 0)")
        .await;
    ok(&db.turnout(&["run", p, "--yes"], None), "run to done");
    // Not lost; NOT VALID, since the new table's rows were copied before it existed.
    assert_eq!(
        db.rows("SELECT pg_get_constraintdef(oid), convalidated::text FROM pg_constraint WHERE conrelid = 'items'::regclass AND conname = 'items_qty_late'")
            .await,
        vec![vec![
            Some("CHECK ((qty >= 0)) NOT VALID".to_string()),
            Some("false".to_string())
        ]]
    );
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_not_valid_check_follows_a_renamed_column() {
    let db = TestDb::new(Kind::Postgres).await;
    seed(&db, "", "").await;
    db.exec(
        "UPDATE items SET name = 'bad' WHERE id % 50 = 0;\n\
         ALTER TABLE items ADD CONSTRAINT items_name_ok CHECK (name <> 'bad') NOT VALID",
    )
    .await;
    let p = db.plan_file(
        "plan.yaml",
        &plan(
            "items-not-valid-rename",
            "  - rename_column: {from: name, to: label}\n",
        ),
    );
    let p = p.to_str().expect("utf-8 path");
    let out = db.turnout(&["run", p, "--yes"], None);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert_eq!(
        db.rows("SELECT pg_get_constraintdef(oid), convalidated::text FROM pg_constraint WHERE conrelid = 'items'::regclass AND conname = 'items_name_ok'")
            .await,
        vec![vec![
            Some("CHECK ((label <> 'bad'::text)) NOT VALID".to_string()),
            Some("false".to_string())
        ]]
    );
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_deferrable_unique_constraints_keep_their_deferral_to_done_and_back() {
    for rollback in [false, true] {
        let db = TestDb::new(Kind::Postgres).await;
        seed(
            &db,
            ", rank integer,\n CONSTRAINT items_name_key UNIQUE (name) DEFERRABLE INITIALLY DEFERRED,\n \
             CONSTRAINT items_rank_key UNIQUE (rank) DEFERRABLE INITIALLY IMMEDIATE",
            "",
        )
        .await;
        db.exec(
            "INSERT INTO items (id, qty, rank) VALUES (1999999911, 1, 1), (1999999912, 1, 2);\n\
                 INSERT INTO mirror (id, qty) VALUES (1999999911, 1), (1999999912, 1)",
        )
        .await;
        let before = constraints(&db).await;
        assert_eq!(
            before
                .iter()
                .filter(|r| r.len() > 4 && r[4].as_deref() == Some("true"))
                .count(),
            2,
            "{before:?}"
        );
        let name = format!("items-deferrable-{rollback}");
        let p = db.plan_file("plan.yaml", &plan(&name, WIDEN_TAG));
        let p = p.to_str().expect("utf-8 path");
        // Each statement passes through a duplicate rank in one order or the other, which
        // the constraint allows until the statement's end, on the table and its copy alike.
        let shift = "UPDATE items SET rank = rank + 1 WHERE id IN (1999999911, 1999999912);\n\
                     UPDATE items SET rank = rank - 1 WHERE id IN (1999999911, 1999999912)";
        migrate_probed(&db, p, rollback, 73, shift).await;
        assert_eq!(constraints(&db).await, before, "rollback {rollback}");
        assert_eq!(
            db.rows(
                "SELECT rank::text FROM items WHERE id IN (1999999911, 1999999912) ORDER BY id"
            )
            .await,
            vec![vec![Some("1".to_string())], vec![Some("2".to_string())]]
        );
        // Deferred: two rows may swap names within a transaction, but not keep one name.
        db.exec(
            "INSERT INTO items (id, qty, name) VALUES (1999999901, 1, 'x1'), (1999999902, 1, 'x2')",
        )
        .await;
        let swap = |to: &str, id: i64| {
            (
                format!("UPDATE items SET name = '{to}' WHERE id = {id}"),
                vec![],
            )
        };
        db.pool
            .transaction(&[swap("x2", 1999999901), swap("x1", 1999999902)])
            .await
            .expect("a deferred swap of names");
        let refused = db
            .exec_err("UPDATE items SET name = 'x1' WHERE id = 1999999901")
            .await;
        assert!(refused.contains("items_name_key"), "{refused}");
        db.drop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_deferrable_primary_key_is_refused_by_name() {
    let db = TestDb::new(Kind::Postgres).await;
    db.exec("CREATE TABLE items (id integer, qty integer NOT NULL, tag integer, name text, CONSTRAINT items_pk PRIMARY KEY (id) DEFERRABLE)")
        .await;
    let p = db.plan_file("plan.yaml", &plan("items-deferrable-pk", WIDEN_TAG));
    let out = db.turnout(&["check", p.to_str().expect("utf-8 path")], None);
    assert!(!out.status.success(), "a deferrable key was accepted");
    let said = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        said.contains("primary key \"items_pk\" is DEFERRABLE"),
        "{said}"
    );
    db.drop().await;
}

/// Every publication's tables with their column lists and row filters.
async fn publications(db: &TestDb) -> Vec<Vec<Option<String>>> {
    db.rows(
        "SELECT p.pubname::text, r.prrelid::regclass::text, (r.prattrs IS NOT NULL)::text, pt.attnames::text, pt.rowfilter \
         FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid JOIN pg_class c ON c.oid = r.prrelid \
         JOIN pg_publication_tables pt ON pt.pubname = p.pubname AND pt.tablename = c.relname AND pt.schemaname = 'public' \
         ORDER BY 1, 2",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_publications_follow_the_table_to_done_and_back() {
    for rollback in [false, true] {
        let db = TestDb::new(Kind::Postgres).await;
        seed(&db, "", "").await;
        db.exec(
            "CREATE PUBLICATION items_feed FOR TABLE items, mirror;\n\
             CREATE PUBLICATION items_part FOR TABLE items (id, qty, tag) WHERE (qty > 100);\n\
             CREATE PUBLICATION items_none",
        )
        .await;
        let before = publications(&db).await;
        assert_eq!(before.len(), 3, "{before:?}");
        let name = format!("items-publications-{rollback}");
        let p = db.plan_file("plan.yaml", &plan(&name, WIDEN_TAG));
        let p = p.to_str().expect("utf-8 path");
        migrate(&db, p, rollback, 79).await;
        // The name `items` is the new table (or the old one again): the same rows, and the
        // OID-keyed membership is the table's that has the name.
        assert_eq!(publications(&db).await, before, "rollback {rollback}");
        let members = db
            .one("SELECT count(*)::text FROM pg_publication_rel WHERE prrelid = 'items'::regclass")
            .await;
        assert_eq!(members, "2");
        let strays = db
            .one("SELECT count(*)::text FROM pg_publication_rel r JOIN pg_class c ON c.oid = r.prrelid WHERE c.relname NOT IN ('items', 'mirror')")
            .await;
        assert_eq!(strays, "0", "a publication still lists turnout's tables");
        db.drop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_publication_lists_follow_a_rename_and_filters_on_changed_columns_are_refused() {
    let db = TestDb::new(Kind::Postgres).await;
    seed(&db, "", "").await;
    db.exec("CREATE PUBLICATION items_named FOR TABLE items (id, name)")
        .await;
    let p = db.plan_file(
        "plan.yaml",
        &plan(
            "items-publication-rename",
            "  - rename_column: {from: name, to: label}\n",
        ),
    );
    let out = db.turnout(&["run", p.to_str().expect("utf-8 path"), "--yes"], None);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert_eq!(
        db.one("SELECT attnames::text FROM pg_publication_tables WHERE pubname = 'items_named'")
            .await,
        "{id,label}"
    );
    db.exec("CREATE PUBLICATION items_filtered FOR TABLE items WHERE (tag > 2)")
        .await;
    let p = db.plan_file(
        "plan2.yaml",
        &plan(
            "items-publication-refused",
            "  - rename_column: {from: tag, to: kind}\n  - drop_column: {name: label}\n",
        ),
    );
    let out = db.turnout(&["check", p.to_str().expect("utf-8 path")], None);
    assert!(!out.status.success(), "the plan was accepted");
    let said = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        said.contains("the row filter of publication \"items_filtered\" uses column \"tag\""),
        "{said}"
    );
    assert!(
        said.contains("publication \"items_named\" publishes column \"label\""),
        "{said}"
    );
    db.drop().await;
}

/// `items`'s columns: name, type (but `tag`'s, which the plan widens), generated kind,
/// expression or default.
async fn columns(db: &TestDb) -> Vec<Vec<Option<String>>> {
    db.rows(
        "SELECT a.attname::text, CASE WHEN a.attname <> 'tag' THEN format_type(a.atttypid, a.atttypmod) END, \
         a.attgenerated::text, a.attnotnull::text, pg_get_expr(d.adbin, d.adrelid) \
         FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
         WHERE a.attrelid = 'items'::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
    )
    .await
}

const GENERATED: &str = ",\n qty2 integer NOT NULL GENERATED ALWAYS AS (qty * 2) STORED,\n \
     tag_k integer GENERATED ALWAYS AS (tag * 1000) STORED,\n \
     label text GENERATED ALWAYS AS (upper(name) || '/' || qty) STORED";

/// Every row's generated values are what their expressions compute now.
async fn generated_are_computed(db: &TestDb) {
    let wrong = db
        .one("SELECT count(*)::text FROM items WHERE qty2 <> qty * 2 OR tag_k IS DISTINCT FROM tag * 1000 \
              OR label IS DISTINCT FROM upper(name) || '/' || qty")
        .await;
    assert_eq!(
        wrong, "0",
        "generated columns differ from their expressions"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_generated_columns_are_recomputed_to_done_and_back() {
    for rollback in [false, true] {
        let db = TestDb::new(Kind::Postgres).await;
        seed(&db, GENERATED, "").await;
        db.exec("CREATE INDEX items_qty2_idx ON items (qty2)").await;
        let before = (columns(&db).await, constraints(&db).await);
        assert_eq!(
            before
                .0
                .iter()
                .filter(|c| c[2].as_deref() == Some("s"))
                .count(),
            3
        );
        let name = format!("items-generated-{rollback}");
        let p = db.plan_file("plan.yaml", &plan(&name, WIDEN_TAG));
        let p = p.to_str().expect("utf-8 path");
        migrate(&db, p, rollback, 83).await;
        assert_eq!(
            (columns(&db).await, constraints(&db).await),
            before,
            "rollback {rollback}"
        );
        generated_are_computed(&db).await;
        // The table's later writes are computed too.
        db.exec("UPDATE items SET qty = qty + 1, tag = 3 WHERE id % 10 = 0")
            .await;
        generated_are_computed(&db).await;
        let tag = db
            .one("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'items'::regclass AND attname = 'tag'")
            .await;
        assert_eq!(tag, if rollback { "integer" } else { "bigint" });
        db.drop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_generated_columns_a_plan_would_break_are_refused_by_name() {
    let db = TestDb::new(Kind::Postgres).await;
    seed(&db, GENERATED, "").await;
    let check = |file: &str, changes: &str| {
        let p = db.plan_file(file, &plan("items-generated-refused", changes));
        let out = db.turnout(&["check", p.to_str().expect("utf-8 path")], None);
        assert!(!out.status.success(), "{changes} was accepted");
        format!("{}{}", stdout(&out), stderr(&out))
    };
    let said = check(
        "a.yaml",
        "  - rename_column: {from: qty, to: amount}\n  - drop_column: {name: name}\n",
    );
    for (column, used) in [("qty2", "qty"), ("label", "qty"), ("label", "name")] {
        assert!(
            said.contains(&format!(
                "generated column \"{column}\" is computed from column \"{used}\""
            )),
            "{column}/{used}: {said}"
        );
    }
    let said = check("b.yaml", "  - alter_column: {name: qty2, type: bigint}\n");
    assert!(
        said.contains("column \"qty2\" is a generated column") && said.contains("cannot alter it"),
        "{said}"
    );
    // Dropping the generated column itself, or renaming it, is fine.
    let p = db.plan_file(
        "c.yaml",
        &plan(
            "items-generated-ok",
            "  - drop_column: {name: label}\n  - rename_column: {from: qty2, to: twice}\n",
        ),
    );
    let out = db.turnout(&["run", p.to_str().expect("utf-8 path"), "--yes"], None);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert_eq!(
        db.rows(
            "SELECT attgenerated::text, pg_get_expr(d.adbin, d.adrelid) FROM pg_attribute a \
                 JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
                 WHERE a.attrelid = 'items'::regclass AND a.attname = 'twice'"
        )
        .await,
        vec![vec![Some("s".to_string()), Some("(qty * 2)".to_string())]]
    );
    let wrong = db
        .one("SELECT count(*)::text FROM items WHERE twice <> qty * 2")
        .await;
    assert_eq!(wrong, "0");
    db.drop().await;
}

/// The rules on `items`, and whether any other table of the schema has one.
async fn rules(db: &TestDb) -> Vec<Vec<Option<String>>> {
    let mut out = db
        .rows("SELECT rulename::text, pg_get_ruledef(oid), ev_enabled::text FROM pg_rewrite WHERE ev_class = 'items'::regclass ORDER BY 1")
        .await;
    out.extend(
        db.rows(
            "SELECT c.relname::text, r.rulename::text FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class \
             WHERE c.relname NOT IN ('items', 'mirror') AND c.relkind = 'r' ORDER BY 1, 2",
        )
        .await,
    );
    out
}

/// The same rules on `items` and on the writer's `mirror`: an INSTEAD NOTHING for some
/// deletes, and a log of every insert.
const RULES: &str = "CREATE TABLE items_log (id bigint, qty integer);\n\
     CREATE TABLE mirror_log (id bigint, qty integer);\n\
     CREATE RULE items_keep_big AS ON DELETE TO items WHERE old.qty > 900 DO INSTEAD NOTHING;\n\
     CREATE RULE mirror_keep_big AS ON DELETE TO mirror WHERE old.qty > 900 DO INSTEAD NOTHING;\n\
     CREATE RULE items_logged AS ON INSERT TO items DO ALSO INSERT INTO items_log (id, qty) VALUES (new.id, new.qty);\n\
     CREATE RULE mirror_logged AS ON INSERT TO mirror DO ALSO INSERT INTO mirror_log (id, qty) VALUES (new.id, new.qty)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_rules_move_with_the_table_to_done_and_back() {
    for rollback in [false, true] {
        let db = TestDb::new(Kind::Postgres).await;
        seed(&db, "", "").await;
        db.exec(RULES).await;
        let before = rules(&db).await;
        assert_eq!(before.len(), 2, "{before:?}");
        let name = format!("items-rules-{rollback}");
        let p = db.plan_file("plan.yaml", &plan(&name, WIDEN_TAG));
        let p = p.to_str().expect("utf-8 path");
        migrate(&db, p, rollback, 89).await;
        assert_eq!(rules(&db).await, before, "rollback {rollback}");
        // Every insert of the application logged once, none of turnout's copies.
        let log = |t: &str| format!("SELECT id::text, qty::text FROM {t} ORDER BY id, qty");
        let (items_log, mirror_log) = (
            db.rows(&log("items_log")).await,
            db.rows(&log("mirror_log")).await,
        );
        assert!(!mirror_log.is_empty());
        assert!(
            items_log == mirror_log,
            "items_log has {} rows, mirror_log {}",
            items_log.len(),
            mirror_log.len()
        );
        // The rules act on the table that has the name.
        let big = db
            .one("SELECT min(id)::text FROM items WHERE qty > 900")
            .await;
        db.exec(&format!("DELETE FROM items WHERE id = {big}"))
            .await;
        assert_eq!(
            db.one(&format!(
                "SELECT count(*)::text FROM items WHERE id = {big}"
            ))
            .await,
            "1"
        );
        db.drop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_rules_on_a_changed_column_are_refused_by_name() {
    let db = TestDb::new(Kind::Postgres).await;
    seed(&db, "", "").await;
    db.exec(RULES).await;
    let p = db.plan_file(
        "plan.yaml",
        &plan(
            "items-rules-refused",
            "  - rename_column: {from: qty, to: amount}\n",
        ),
    );
    let out = db.turnout(&["check", p.to_str().expect("utf-8 path")], None);
    assert!(!out.status.success(), "the plan was accepted");
    let said = format!("{}{}", stdout(&out), stderr(&out));
    for rule in ["items_keep_big", "items_logged"] {
        assert!(
            said.contains(&format!("rule \"{rule}\" uses column \"qty\"")),
            "{rule}: {said}"
        );
    }
    db.drop().await;
}

/// All of the above on one table, killed inside the cutover transaction and resumed, and
/// inside a rollback and rolled back again: the furniture is whole at every step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_all_this_furniture_survives_kills_in_cutover_and_rollback() {
    for (point, rollback) in [("cutover.inside", false), ("rollback.inside", true)] {
        let db = TestDb::new(Kind::Postgres).await;
        let columns_sql = format!(
            "{GENERATED}, rank integer,\n CONSTRAINT items_rank_key UNIQUE (rank) DEFERRABLE INITIALLY IMMEDIATE"
        );
        seed(&db, &columns_sql, "").await;
        db.exec(&format!(
            "UPDATE items SET name = 'bad' WHERE id % 50 = 0;\n\
             ALTER TABLE items ADD CONSTRAINT items_name_ok CHECK (name <> 'bad') NOT VALID;\n\
             CREATE PUBLICATION items_part FOR TABLE items (id, qty, tag) WHERE (qty > 100);\n\
             {RULES}"
        ))
        .await;
        let catalog = || async {
            (
                constraints(&db).await,
                columns(&db).await,
                publications(&db).await,
                rules(&db).await,
            )
        };
        let before = catalog().await;
        let p = db.plan_file(
            "plan.yaml",
            &plan(&format!("items-all-kill-{rollback}"), WIDEN_TAG),
        );
        let p = p.to_str().expect("utf-8 path");
        let writer = Writer::start(db.pool.clone(), "items", "mirror", SEED_ROWS, 97);
        writer.wait_for(10).await;
        let args: Vec<&str> = if rollback {
            ok(
                &db.turnout(&["run", p, "--until", "cut_over", "--yes"], None),
                "cut_over",
            );
            vec!["rollback", p, "--yes"]
        } else {
            vec!["run", p, "--yes"]
        };
        let killed = db.turnout(&args, Some(point));
        assert!(
            stderr(&killed).contains("fault injected"),
            "{point}: {}",
            stderr(&killed)
        );
        assert_eq!(catalog().await, before, "after the kill at {point}");
        writer.wait_for(10).await;
        let again = if rollback {
            args.clone()
        } else {
            vec!["resume", p, "--yes"]
        };
        ok(&db.turnout(&again, None), &format!("after {point}"));
        writer.wait_for(10).await;
        assert!(writer.stop().await.is_empty());
        same_as_mirror(&db).await;
        assert_eq!(catalog().await, before, "{point}");
        generated_are_computed(&db).await;
        let log = |t: &str| format!("SELECT id::text, qty::text FROM {t} ORDER BY id, qty");
        assert!(db.rows(&log("items_log")).await == db.rows(&log("mirror_log")).await);
        db.drop().await;
    }
}
