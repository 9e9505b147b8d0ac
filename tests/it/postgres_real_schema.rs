//! PostgreSQL on the tables real applications have: a primary key widened from `integer`
//! to `bigint` under the concurrent writer, killed inside the cutover and resumed, with
//! ids above 2^31 inserted through the serial sequence afterwards; a rollback from
//! `cut_over` giving the old table and its `integer` sequence back; a rollback refused by
//! name once the new table holds an id the old key type cannot; narrowing refused by check.
//! Then the same widening with three child tables referencing `items` (cascade, set null,
//! deferrable) and `items` referencing a parent: after done, after a rollback from
//! `cut_over` and after every cutover, cleanup and rollback fault, every reference is as
//! the catalog showed it before (name, definition, validated), cascades reached the right
//! table, and a probe notes the longest wait of a child-table write across the cutover.

use crate::harness::{Kind, TestDb, Writer, ok, stderr, stdout};
use crate::scenarios::SEED_ROWS;

/// `items` with a serial (integer) key, and the writer's `mirror`, seeded alike.
async fn seed_serial(db: &TestDb) {
    db.exec(
        "CREATE TABLE items (id serial PRIMARY KEY, qty integer NOT NULL, tag integer, name text);\n\
         CREATE TABLE mirror (id integer PRIMARY KEY, qty integer NOT NULL, tag integer, name text);\n\
         CREATE INDEX items_name_idx ON items (name)",
    )
    .await;
    for table in ["items", "mirror"] {
        db.exec(&format!(
            "INSERT INTO {table} (id, qty, tag, name) SELECT i, i * 3 % 1000, NULLIF(i % 7, 0), 'item ' || i \
             FROM generate_series(1, {SEED_ROWS}) AS i"
        ))
        .await;
    }
    // The application's own inserts drew from the sequence up to here.
    db.exec(&format!("SELECT setval('items_id_seq', {SEED_ROWS})"))
        .await;
}

fn widen_plan(name: &str) -> String {
    format!(
        "version: 1
name: {name}
table: items
changes:
  - alter_column: {{name: id, type: bigint}}
  - add_index: {{name: items_tag_idx, columns: [tag]}}
backfill:
  batch_size: 300
cutover:
  lock_timeout: 2s
  attempts: 10
  retry_delay: 50ms
"
    )
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

async fn key_and_sequence_types(db: &TestDb) -> (String, String) {
    (
        db.one("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'items'::regclass AND attname = 'id'",
        )
        .await,
        db.one("SELECT format_type(seqtypid, NULL) FROM pg_sequence WHERE seqrelid = pg_get_serial_sequence('items', 'id')::regclass",
        )
        .await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_int_key_widens_to_bigint_killed_in_cutover_and_resumed() {
    let db = TestDb::new(Kind::Postgres).await;
    seed_serial(&db).await;
    let plan = db.plan_file("plan.yaml", &widen_plan("items-widen"));
    let plan = plan.to_str().expect("utf-8 path");
    ok(&db.turnout(&["check", plan], None), "check");
    let writer = Writer::start(db.pool.clone(), "items", "mirror", SEED_ROWS, 23);
    writer.wait_for(10).await;
    let killed = db.turnout(&["run", plan, "--yes"], Some("cutover.inside"));
    assert!(
        !killed.status.success() && stderr(&killed).contains("fault injected"),
        "{}",
        stderr(&killed)
    );
    // The killed transaction changed nothing: the key is still an integer.
    assert_eq!(
        key_and_sequence_types(&db).await,
        ("integer".into(), "integer".into())
    );
    writer.wait_for(20).await;
    ok(&db.turnout(&["resume", plan, "--yes"], None), "resume");
    writer.wait_for(20).await;
    assert!(writer.stop().await.is_empty());
    same_as_mirror(&db).await;
    assert_eq!(
        key_and_sequence_types(&db).await,
        ("bigint".into(), "bigint".into())
    );
    // The application's next ids come from the same sequence, now past 2^31.
    db.exec("SELECT setval('items_id_seq', 2147483647)").await;
    db.exec("INSERT INTO items (qty) VALUES (1), (2)").await;
    assert_eq!(
        db.one("SELECT max(id)::text FROM items").await,
        "2147483649"
    );
    let owner = db.one("SELECT d.refobjid::regclass::text FROM pg_depend d WHERE d.objid = 'items_id_seq'::regclass AND d.deptype = 'a'",
    )
    .await;
    assert_eq!(owner, "items");
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_widened_key_rolls_back_from_cut_over_and_refuses_what_would_be_lost() {
    let db = TestDb::new(Kind::Postgres).await;
    seed_serial(&db).await;
    let plan = db.plan_file("plan.yaml", &widen_plan("items-widen-back"));
    let plan = plan.to_str().expect("utf-8 path");
    let writer = Writer::start(db.pool.clone(), "items", "mirror", SEED_ROWS, 29);
    writer.wait_for(10).await;
    ok(
        &db.turnout(&["run", plan, "--until", "cut_over", "--yes"], None),
        "cutover",
    );
    assert_eq!(
        key_and_sequence_types(&db).await,
        ("bigint".into(), "bigint".into())
    );
    writer.wait_for(30).await;
    // A row the old key cannot hold: the reverse trigger records it, and the rollback is
    // refused naming it, even when the recorded losses are accepted.
    db.exec("INSERT INTO items (id, qty) VALUES (3000000000, 5)")
        .await;
    for args in [
        vec!["rollback", plan, "--yes"],
        vec!["rollback", plan, "--yes", "--accept-loss"],
    ] {
        let refused = db.turnout(&args, None);
        assert!(!refused.status.success(), "{}", stdout(&refused));
        assert!(
            stderr(&refused).contains("[3000000000]"),
            "{args:?}: {}",
            stderr(&refused)
        );
    }
    assert!(
        stderr(&db.turnout(&["rollback", plan, "--yes", "--accept-loss"], None))
            .contains("does not fit the old table's key type")
    );
    db.exec("DELETE FROM items WHERE id = 3000000000").await;
    writer.wait_for(10).await;
    ok(
        &db.turnout(&["rollback", plan, "--yes", "--accept-loss"], None),
        "rollback",
    );
    writer.wait_for(10).await;
    assert!(writer.stop().await.is_empty());
    same_as_mirror(&db).await;
    assert_eq!(
        key_and_sequence_types(&db).await,
        ("integer".into(), "integer".into())
    );
    // The writer chose its own ids; the application's sequence carries on above them.
    db.exec("SELECT setval('items_id_seq', (SELECT max(id) FROM items))")
        .await;
    db.exec("INSERT INTO items (qty) VALUES (7)").await;
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_narrowing_or_retyping_a_key_is_refused_by_check() {
    let db = TestDb::new(Kind::Postgres).await;
    db.exec("CREATE TABLE items (id bigint PRIMARY KEY, code varchar(20) NOT NULL UNIQUE)")
        .await;
    for (to, why) in [("integer", "narrow"), ("text", "not a widening")] {
        let plan = db.plan_file(
            "plan.yaml",
            &format!(
                "version: 1\nname: items-narrow\ntable: items\nchanges:\n  - alter_column: {{name: id, type: {to}}}\n"
            ),
        );
        let out = db.turnout(&["check", plan.to_str().expect("utf-8")], None);
        assert!(!out.status.success());
        let said = format!("{}{}", stdout(&out), stderr(&out));
        assert!(
            said.contains("primary key column \"id\"") && said.contains(why),
            "{said}"
        );
    }
    db.drop().await;
}

/// Three child tables referencing `items` (cascade, set null, deferrable), and a parent
/// `categories` that `items` references (set null), seeded.
async fn seed_children(db: &TestDb) {
    db.exec(
        "CREATE TABLE categories (id integer PRIMARY KEY, label text);\n\
         INSERT INTO categories SELECT i, 'c' || i FROM generate_series(1, 10) AS i;\n\
         ALTER TABLE items ADD COLUMN category_id integer CONSTRAINT items_category_fk REFERENCES categories ON DELETE SET NULL;\n\
         UPDATE items SET category_id = id % 10 + 1;\n\
         CREATE TABLE lines (id serial PRIMARY KEY, item_id integer NOT NULL, qty integer NOT NULL DEFAULT 1, \
           CONSTRAINT lines_item_fk FOREIGN KEY (item_id) REFERENCES items (id) ON DELETE CASCADE ON UPDATE CASCADE);\n\
         CREATE TABLE notes (id serial PRIMARY KEY, item_id integer, body text, \
           CONSTRAINT notes_item_fk FOREIGN KEY (item_id) REFERENCES items ON DELETE SET NULL ON UPDATE CASCADE);\n\
         CREATE TABLE audits (id serial PRIMARY KEY, item_id bigint, \
           CONSTRAINT audits_item_fk FOREIGN KEY (item_id) REFERENCES items MATCH FULL ON DELETE CASCADE ON UPDATE CASCADE DEFERRABLE INITIALLY DEFERRED);\n\
         INSERT INTO lines (item_id, qty) SELECT i, i % 9 FROM generate_series(1, 600) AS i;\n\
         INSERT INTO notes (item_id, body) SELECT i, 'note ' || i FROM generate_series(1, 600, 2) AS i;\n\
         INSERT INTO audits (item_id) SELECT i FROM generate_series(1, 600, 3) AS i",
    )
    .await;
}

/// The references to and from `items` as the catalog states them: names, definitions,
/// validity.
async fn references(db: &TestDb) -> Vec<Vec<Option<String>>> {
    db.rows(
        "SELECT conrelid::regclass::text, conname::text, pg_get_constraintdef(oid), convalidated::text \
         FROM pg_constraint WHERE contype = 'f' AND 'items'::regclass IN (confrelid, conrelid) ORDER BY 1, 2",
    )
    .await
}

/// Every child row references an item that exists, and the cascades kept pace.
async fn children_consistent(db: &TestDb) {
    for (child, nullable) in [("lines", false), ("notes", true), ("audits", false)] {
        let orphans = db.one(&format!(
                "SELECT count(*)::text FROM {child} c WHERE c.item_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM items i WHERE i.id = c.item_id)"
            ),
        )
        .await;
        assert_eq!(orphans, "0", "{child} has rows whose item is gone");
        if !nullable {
            assert_eq!(
                db.one(&format!(
                    "SELECT count(*)::text FROM {child} WHERE item_id IS NULL"
                ))
                .await,
                "0"
            );
        }
    }
    let nulled = db
        .one("SELECT count(*)::text FROM notes WHERE item_id IS NULL")
        .await;
    let deleted = db
        .one("SELECT (300 - count(*))::text FROM notes n WHERE n.item_id IS NOT NULL")
        .await;
    assert_eq!(
        nulled, deleted,
        "a note lost its row instead of its reference"
    );
}

/// Deletes a category: `items` (whichever table has the name) loses its references to it.
async fn delete_category(db: &TestDb, id: i64) {
    db.exec(&format!("DELETE FROM categories WHERE id = {id}"))
        .await;
    assert_eq!(
        db.one(&format!(
            "SELECT count(*)::text FROM items WHERE category_id = {id}"
        ))
        .await,
        "0"
    );
}

/// A probe that updates one child row in a loop: the longest it ever waited.
fn probe(
    db: &TestDb,
) -> (
    tokio::task::JoinHandle<std::time::Duration>,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (pool, stop2) = (db.pool.clone(), stop.clone());
    let task = tokio::spawn(async move {
        let mut longest = std::time::Duration::ZERO;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            let t = std::time::Instant::now();
            let _ = pool
                .exec(
                    "UPDATE lines SET qty = qty + 1 WHERE id = (SELECT max(id) FROM lines)",
                    &[],
                )
                .await;
            longest = longest.max(t.elapsed());
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        longest
    });
    (task, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_referenced_key_widens_with_three_children_under_the_writer() {
    let db = TestDb::new(Kind::Postgres).await;
    seed_serial(&db).await;
    seed_children(&db).await;
    let before = references(&db).await;
    assert_eq!(before.len(), 4);
    let plan = db.plan_file("plan.yaml", &widen_plan("items-children"));
    let plan = plan.to_str().expect("utf-8 path");
    ok(&db.turnout(&["check", plan], None), "check");
    let writer = Writer::start(db.pool.clone(), "items", "mirror", SEED_ROWS, 31);
    let (prober, stop) = probe(&db);
    writer.wait_for(10).await;
    let killed = db.turnout(&["run", plan, "--yes"], Some("cutover.inside"));
    assert!(
        stderr(&killed).contains("fault injected"),
        "{}",
        stderr(&killed)
    );
    assert_eq!(
        references(&db).await,
        before,
        "a killed cutover changed the references"
    );
    writer.wait_for(20).await;
    ok(&db.turnout(&["resume", plan, "--yes"], None), "resume");
    writer.wait_for(20).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let longest = prober.await.expect("probe");
    eprintln!("longest wait of a child-table write across cutover with 3 children: {longest:?}");
    assert!(writer.stop().await.is_empty());
    same_as_mirror(&db).await;
    // Same names, same definitions, validated again.
    assert_eq!(references(&db).await, before);
    children_consistent(&db).await;
    delete_category(&db, 4).await;
    let refused = db
        .exec_err("INSERT INTO items (id, qty, category_id) VALUES (2999999999, 1, 99)")
        .await;
    assert!(refused.contains("items_category_fk"), "{refused}");
    // A cascade from the new table reaches the children; an id above 2^31 is referenced.
    db.exec("SELECT setval('items_id_seq', 3000000000)").await;
    db.exec(
        "INSERT INTO items (qty) VALUES (1);\nINSERT INTO audits (item_id) VALUES (3000000001)",
    )
    .await;
    db.exec("DELETE FROM items WHERE id = 3000000001").await;
    assert_eq!(
        db.one("SELECT count(*)::text FROM audits WHERE item_id = 3000000001")
            .await,
        "0"
    );
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_children_point_back_at_the_old_table_after_rollback_at_every_fault() {
    for point in [
        None,
        Some("rollback.before"),
        Some("rollback.inside"),
        Some("rollback.after"),
    ] {
        let db = TestDb::new(Kind::Postgres).await;
        seed_serial(&db).await;
        seed_children(&db).await;
        let before = references(&db).await;
        let plan = db.plan_file("plan.yaml", &widen_plan("items-children-back"));
        let plan = plan.to_str().expect("utf-8 path");
        let writer = Writer::start(db.pool.clone(), "items", "mirror", SEED_ROWS, 37);
        writer.wait_for(10).await;
        ok(
            &db.turnout(&["run", plan, "--until", "cut_over", "--yes"], None),
            "cutover",
        );
        writer.wait_for(20).await;
        if let Some(p) = point {
            let killed = db.turnout(&["rollback", plan, "--yes"], Some(p));
            assert!(
                stderr(&killed).contains("fault injected"),
                "{p}: {}",
                stderr(&killed)
            );
            writer.wait_for(10).await;
        }
        ok(
            &db.turnout(&["rollback", plan, "--yes"], None),
            &format!("rollback after {point:?}"),
        );
        writer.wait_for(10).await;
        assert!(writer.stop().await.is_empty());
        same_as_mirror(&db).await;
        assert_eq!(references(&db).await, before, "after rollback ({point:?})");
        children_consistent(&db).await;
        assert_eq!(
            db.one("SELECT count(*)::text FROM pg_class WHERE relname LIKE '\\_items\\_%'")
                .await,
            "0"
        );
        db.drop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_every_cutover_and_cleanup_fault_is_survived_with_references() {
    for point in [
        "phase.cutover.before",
        "cutover.attempt",
        "phase.cutover.after",
        "phase.cleanup.before",
        "cleanup.inside",
        "phase.cleanup.after",
    ] {
        let db = TestDb::new(Kind::Postgres).await;
        seed_serial(&db).await;
        seed_children(&db).await;
        let before = references(&db).await;
        let plan = db.plan_file("plan.yaml", &widen_plan("items-children-faults"));
        let plan = plan.to_str().expect("utf-8 path");
        let writer = Writer::start(db.pool.clone(), "items", "mirror", SEED_ROWS, 41);
        writer.wait_for(10).await;
        let killed = db.turnout(&["run", plan, "--yes"], Some(point));
        assert!(
            stderr(&killed).contains("fault injected"),
            "{point}: {}",
            stderr(&killed)
        );
        writer.wait_for(10).await;
        ok(
            &db.turnout(&["resume", plan, "--yes"], None),
            &format!("resume after {point}"),
        );
        writer.wait_for(10).await;
        assert!(writer.stop().await.is_empty());
        same_as_mirror(&db).await;
        assert_eq!(references(&db).await, before, "after {point}");
        children_consistent(&db).await;
        db.drop().await;
    }
}

/// `items` gets the application's own triggers: BEFORE UPDATE stamping `last_update`, and
/// AFTER INSERT writing an audit row.
async fn seed_triggers(db: &TestDb) {
    db.exec(
        "ALTER TABLE items ADD COLUMN last_update timestamptz NOT NULL DEFAULT '2000-01-01'\n;\n\
         CREATE TABLE item_log (item_id bigint, at timestamptz DEFAULT now())\n;\n\
         CREATE FUNCTION stamp() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.last_update := clock_timestamp(); RETURN NEW; END $$\n;\n\
         CREATE FUNCTION log_insert() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN INSERT INTO item_log (item_id) VALUES (NEW.id); RETURN NULL; END $$\n;\n\
         CREATE TRIGGER items_stamp BEFORE UPDATE ON items FOR EACH ROW EXECUTE FUNCTION stamp()\n;\n\
         CREATE TRIGGER items_log AFTER INSERT ON items FOR EACH ROW EXECUTE FUNCTION log_insert()",
    )
    .await;
}

async fn triggers(db: &TestDb) -> Vec<Vec<Option<String>>> {
    db.rows(
        "SELECT tgname::text, pg_get_triggerdef(oid), tgenabled::text FROM pg_trigger \
         WHERE tgrelid = 'items'::regclass AND NOT tgisinternal ORDER BY 1",
    )
    .await
}

/// Rows no one updated keep their stamp through every copy; the triggers still fire.
async fn stamps_kept_and_triggers_fire(db: &TestDb, untouched: &[Vec<Option<String>>]) {
    let ids: Vec<String> = untouched.iter().filter_map(|r| r[0].clone()).collect();
    let now = db
        .rows(&format!(
            "SELECT id::text, last_update::text FROM items WHERE id IN ({}) ORDER BY id",
            ids.join(", ")
        ))
        .await;
    assert_eq!(now, untouched, "a copy restamped rows no one updated");
    let logged = db.one("SELECT count(*)::text FROM item_log").await;
    db.exec("INSERT INTO items (id, qty) VALUES (1999999990, 1);\nUPDATE items SET qty = 2 WHERE id = 1999999990")
        .await;
    assert_ne!(
        db.one("SELECT last_update::text FROM items WHERE id = 1999999990")
            .await,
        "2000-01-01 00:00:00+00"
    );
    assert_eq!(
        db.one("SELECT (count(*) - 1)::text FROM item_log").await,
        logged,
        "the AFTER INSERT trigger did not fire once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_the_tables_own_triggers_follow_it_and_come_back_at_rollback() {
    for rollback in [false, true] {
        let db = TestDb::new(Kind::Postgres).await;
        seed_serial(&db).await;
        seed_triggers(&db).await;
        let before = triggers(&db).await;
        assert_eq!(before.len(), 2);
        // Rows above the writer's reach, which nobody updates.
        for t in ["items", "mirror"] {
            db.exec(&format!(
                "INSERT INTO {t} (id, qty) SELECT i, 1 FROM generate_series(2000000001, 2000000050) AS i"
            ))
            .await;
        }
        let untouched = db
            .rows("SELECT id::text, last_update::text FROM items WHERE id > 2000000000 ORDER BY id")
            .await;
        let plan = db.plan_file("plan.yaml", &widen_plan("items-triggers"));
        let plan = plan.to_str().expect("utf-8 path");
        ok(&db.turnout(&["check", plan], None), "check");
        let writer = Writer::start(db.pool.clone(), "items", "mirror", SEED_ROWS, 43);
        writer.wait_for(10).await;
        let until = if rollback { "cut_over" } else { "done" };
        ok(
            &db.turnout(&["run", plan, "--until", until, "--yes"], None),
            until,
        );
        writer.wait_for(20).await;
        let mut untouched = untouched;
        if rollback {
            // A row updated on the new table: its stamp is copied back, never restamped.
            db.exec("UPDATE items SET qty = 9 WHERE id = 2000000001;\nUPDATE mirror SET qty = 9 WHERE id = 2000000001")
                .await;
            let stamped = db
                .rows("SELECT id::text, last_update::text FROM items WHERE id = 2000000001")
                .await;
            assert_ne!(stamped, untouched[..1]);
            untouched[0] = stamped[0].clone();
            ok(&db.turnout(&["rollback", plan, "--yes"], None), "rollback");
            writer.wait_for(10).await;
        }
        assert!(writer.stop().await.is_empty());
        same_as_mirror(&db).await;
        assert_eq!(triggers(&db).await, before, "rollback: {rollback}");
        // After done the new table, after rollback the old one: stamps exactly as they were.
        stamps_kept_and_triggers_fire(&db, &untouched).await;
        db.drop().await;
    }
}

/// Every privilege others hold on `items` and its columns, from the catalog.
async fn grants(db: &TestDb) -> Vec<Vec<Option<String>>> {
    db.rows(
        "SELECT coalesce(pg_get_userbyid(NULLIF(a.grantee, 0))::text, 'PUBLIC'), a.privilege_type::text, \
         NULL::text, a.is_grantable::text \
         FROM pg_class c, aclexplode(c.relacl) a WHERE c.oid = 'items'::regclass AND a.grantee <> c.relowner \
         UNION ALL \
         SELECT coalesce(pg_get_userbyid(NULLIF(a.grantee, 0))::text, 'PUBLIC'), a.privilege_type::text, \
         att.attname::text, a.is_grantable::text \
         FROM pg_attribute att, aclexplode(att.attacl) a \
         WHERE att.attrelid = 'items'::regclass AND att.attnum > 0 AND NOT att.attisdropped \
         ORDER BY 1, 2, 3 NULLS FIRST",
    )
    .await
}

/// The application's role keeps its table and column privileges on the table it reaches
/// after cutover, and finds them unchanged after a rollback from `cut_over`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_grants_follow_the_table_and_come_back_at_rollback() {
    let db = TestDb::new(Kind::Postgres).await;
    seed_serial(&db).await;
    let role = format!("turnout_app_{:08x}", rand::random::<u32>());
    db.exec(&format!(
        "CREATE ROLE {role};\n\
         GRANT SELECT, INSERT, DELETE ON items TO {role};\n\
         GRANT UPDATE (qty, name) ON items TO {role} WITH GRANT OPTION;\n\
         GRANT SELECT ON items TO PUBLIC"
    ))
    .await;
    let before = grants(&db).await;
    assert_eq!(before.len(), 6, "{before:?}");
    let writer = Writer::start(db.pool.clone(), "items", "mirror", SEED_ROWS, 31);
    writer.wait_for(10).await;

    let plan = db.plan_file("plan.yaml", &widen_plan("items-grants"));
    let plan = plan.to_str().expect("utf-8 path");
    ok(
        &db.turnout(&["run", plan, "--until", "cut_over", "--yes"], None),
        "run to cut_over",
    );
    assert_eq!(grants(&db).await, before, "the new table's grants");
    ok(&db.turnout(&["rollback", plan, "--yes"], None), "rollback");
    assert_eq!(
        grants(&db).await,
        before,
        "the old table's grants after rollback"
    );

    let again = db.plan_file("again.yaml", &widen_plan("items-grants-again"));
    let again = again.to_str().expect("utf-8 path");
    ok(&db.turnout(&["run", again, "--yes"], None), "run to done");
    writer.wait_for(10).await;
    assert!(writer.stop().await.is_empty());
    assert_eq!(grants(&db).await, before, "the grants after done");
    same_as_mirror(&db).await;
    db.exec(&format!("REVOKE ALL ON items FROM {role}")).await;
    db.drop().await;
    let admin = sqlx::PgPool::connect(crate::harness::PG_ADMIN)
        .await
        .expect("admin");
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP ROLE IF EXISTS {role}")))
        .execute(&admin)
        .await;
}
