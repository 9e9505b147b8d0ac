//! PostgreSQL carries what hangs off the table at cutover. Views: a view over `items` with
//! options, a grant to a second role and comments, a view over that view owned by the
//! role, and an aggregate view, under the concurrent writer, to done and back by a
//! rollback from `cut_over`, once with a plan that widens a column they read (views
//! dropped and created again) and once with one that does not (replaced in place). After
//! each, the catalog shows every view as before (definition, options, owner, privileges,
//! comments), each view returns what its query over the table returns, and follows the
//! table's later writes. A view that reads a column the plan drops is refused by check,
//! naming both; the plan's `views` key gives its new definition, which a rollback undoes.
//! Kills inside the cutover and the rollback transactions leave the views whole. Row-level
//! security (policies and flags) is on the new table after cutover and unchanged on the old
//! one after a rollback, and holds for the role; a table owned by that role keeps its
//! owner, comments (a renamed column's under its new name), storage parameters and replica
//! identity index. Materialized views (one with indexes, comments and grants, one over a
//! plain view) read the old table until cleanup replaces them, are exact at done, untouched
//! by a rollback, and whole after kills inside cleanup. Rules, publications, a policy using
//! a dropped column, a materialized view using one or read by a view are refused by name.

use crate::harness::{Kind, TestDb, Writer, ok, stderr, stdout};
use crate::scenarios::SEED_ROWS;

/// `items` (serial key) and the writer's `mirror`, seeded alike.
async fn seed(db: &TestDb) {
    db.exec(
        "CREATE TABLE items (id serial PRIMARY KEY, qty integer NOT NULL, tag integer, name text);\n\
         CREATE TABLE mirror (id integer PRIMARY KEY, qty integer NOT NULL, tag integer, name text)",
    )
    .await;
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

/// A role of this test's own (roles are server-wide).
async fn new_role(db: &TestDb) -> String {
    let role = format!("turnout_view_{:08x}", rand::random::<u32>());
    db.exec(&format!("CREATE ROLE {role}")).await;
    role
}

async fn drop_role(db: TestDb, role: &str) {
    db.drop().await;
    let admin = sqlx::PgPool::connect(crate::harness::PG_ADMIN)
        .await
        .expect("admin");
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP ROLE IF EXISTS {role}")))
        .execute(&admin)
        .await;
}

/// Three views: one with options, comments and grants to `role`, one over it owned by
/// `role`, one aggregating the table.
async fn seed_views(db: &TestDb, role: &str) {
    db.exec(&format!(
        "CREATE VIEW items_stocked WITH (security_barrier) AS SELECT id, qty, tag, name FROM items WHERE qty >= 100 WITH LOCAL CHECK OPTION;\n\
         COMMENT ON VIEW items_stocked IS 'items worth showing';\n\
         COMMENT ON COLUMN items_stocked.qty IS 'on hand';\n\
         GRANT SELECT, UPDATE ON items_stocked TO {role};\n\
         GRANT INSERT (qty) ON items_stocked TO {role} WITH GRANT OPTION;\n\
         CREATE VIEW items_tagged WITH (security_invoker = true) AS SELECT id, tag FROM items_stocked WHERE tag IS NOT NULL;\n\
         ALTER VIEW items_tagged OWNER TO {role};\n\
         CREATE VIEW tag_totals AS SELECT tag, count(*) AS n, sum(qty) AS qty FROM items GROUP BY tag"
    ))
    .await;
}

/// The views as the catalog states them: definition, options, owner, privileges, comments.
async fn views(db: &TestDb) -> Vec<Vec<Option<String>>> {
    db.rows(
        "SELECT c.relname::text, pg_get_viewdef(c.oid), c.reloptions::text, pg_get_userbyid(c.relowner)::text, \
         c.relacl::text, obj_description(c.oid, 'pg_class'), \
         (SELECT string_agg(a.attname || ':' || coalesce(a.attacl::text, '') || ':' || coalesce(col_description(c.oid, a.attnum), ''), ',' ORDER BY a.attnum) \
          FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0) \
         FROM pg_class c WHERE c.relkind = 'v' AND c.relnamespace = 'public'::regnamespace ORDER BY 1",
    )
    .await
}

/// Each view returns what its query over `items` returns, and reads `items` itself.
async fn views_read_the_table(db: &TestDb) {
    // Each pair in one statement, so one snapshot while the writer runs.
    let pairs = [
        (
            "SELECT id, qty, tag FROM items_stocked",
            "SELECT id, qty, tag FROM items WHERE qty >= 100",
        ),
        (
            "SELECT id, tag FROM items_tagged",
            "SELECT id, tag FROM items WHERE qty >= 100 AND tag IS NOT NULL",
        ),
        (
            "SELECT tag, n, qty FROM tag_totals",
            "SELECT tag, count(*), sum(qty) FROM items GROUP BY tag",
        ),
    ];
    for (view, table) in pairs {
        let compared = db
            .rows(&format!(
                "SELECT (SELECT count(*) FROM ({view}) v)::text, \
                 (SELECT count(*) FROM (({view} EXCEPT ALL {table}) UNION ALL ({table} EXCEPT ALL {view})) d)::text"
            ))
            .await;
        let (rows, differing) = (compared[0][0].clone(), compared[0][1].clone());
        assert_ne!(rows.as_deref(), Some("0"), "{view} is empty");
        assert_eq!(
            differing.as_deref(),
            Some("0"),
            "{view} differs from {table}"
        );
    }
    for view in ["items_stocked", "tag_totals"] {
        let reads = db
            .one(&format!(
                "SELECT EXISTS (SELECT 1 FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid \
                 WHERE r.ev_class = '{view}'::regclass AND d.refobjid = 'items'::regclass)::text"
            ))
            .await;
        assert_eq!(reads, "true", "{view} does not read the table named items");
    }
    // A write to the table through the view's check option, seen through both views.
    db.exec("INSERT INTO items_stocked (id, qty, tag) VALUES (1999999901, 500, 3)")
        .await;
    assert_eq!(
        db.one("SELECT tag::text FROM items_tagged WHERE id = 1999999901")
            .await,
        "3"
    );
    let refused = db
        .exec_err("INSERT INTO items_stocked (id, qty) VALUES (1999999902, 5)")
        .await;
    assert!(refused.contains("check option"), "{refused}");
    db.exec("DELETE FROM items WHERE id = 1999999901").await;
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

/// These tests follow what the copy path carries from the old table to the new one, so
/// their plans copy even where the instant path would take them (`ADD`).
fn plan(name: &str, changes: &str, extra: &str) -> String {
    format!(
        "version: 1\nname: {name}\ntable: items\nstrategy: copy\nchanges:\n{changes}backfill:\n  batch_size: 300\n\
         cutover:\n  lock_timeout: 2s\n  attempts: 10\n  retry_delay: 50ms\n{extra}"
    )
}

/// Widening `qty` changes the views' column types: they are dropped and created again.
const WIDEN: &str = "  - alter_column: {name: qty, type: bigint}\n";
/// A new column no view reads: the views are replaced in place.
const ADD: &str = "  - add_column: {name: note, type: text}\n  - add_index: {name: items_tag_idx, columns: [tag]}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_views_follow_the_table_to_done_and_back_at_rollback() {
    for (changes, what) in [(WIDEN, "widen"), (ADD, "add")] {
        for rollback in [false, true] {
            let db = TestDb::new(Kind::Postgres).await;
            seed(&db).await;
            let role = new_role(&db).await;
            seed_views(&db, &role).await;
            let before = views(&db).await;
            assert_eq!(before.len(), 3);
            let name = format!("items-views-{what}-{rollback}");
            let plan = db.plan_file("plan.yaml", &plan(&name, changes, ""));
            let plan = plan.to_str().expect("utf-8 path");
            ok(&db.turnout(&["check", plan], None), "check");
            let writer = Writer::start(db.pool.clone(), "items", "mirror", SEED_ROWS, 47);
            writer.wait_for(10).await;
            ok(
                &db.turnout(&["run", plan, "--until", "verified", "--yes"], None),
                "run to verified",
            );
            ok(&db.turnout(&["verify", plan], None), "verify");
            let until = if rollback { "cut_over" } else { "done" };
            ok(
                &db.turnout(&["run", plan, "--until", until, "--yes"], None),
                until,
            );
            writer.wait_for(20).await;
            assert_eq!(views(&db).await, before, "{what}: views after cutover");
            if rollback {
                views_read_the_table(&db).await;
                ok(&db.turnout(&["rollback", plan, "--yes"], None), "rollback");
                writer.wait_for(10).await;
            }
            assert!(writer.stop().await.is_empty());
            same_as_mirror(&db).await;
            assert_eq!(views(&db).await, before, "{what}, rollback {rollback}");
            views_read_the_table(&db).await;
            if what == "widen" {
                let t = db
                    .one("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'items_stocked'::regclass AND attname = 'qty'")
                    .await;
                assert_eq!(t, if rollback { "integer" } else { "bigint" });
            }
            assert_eq!(
                db.one("SELECT count(*)::text FROM turnout_rollback").await,
                "0",
                "the way back outlived the migration"
            );
            drop_role(db, &role).await;
        }
    }
}

const DROP_NAME: &str = "  - drop_column: {name: name, reverse: \"'gone'\"}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_view_using_a_dropped_column_is_refused_unless_the_plan_redefines_it() {
    let db = TestDb::new(Kind::Postgres).await;
    seed(&db).await;
    let role = new_role(&db).await;
    seed_views(&db, &role).await;
    let before = views(&db).await;
    let refused = db.plan_file("refused.yaml", &plan("items-drop-name", DROP_NAME, ""));
    let out = db.turnout(&["check", refused.to_str().expect("utf-8")], None);
    assert!(!out.status.success(), "{}", stdout(&out));
    let said = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        said.contains("view \"public.items_stocked\" uses column \"name\""),
        "{said}"
    );
    assert!(said.contains("views:"), "{said}");
    // A name the plan gives that is no view over the table is refused too.
    let stray = db.plan_file(
        "stray.yaml",
        &plan(
            "items-drop-name",
            DROP_NAME,
            "views:\n  - {name: no_such_view, definition: SELECT 1}\n",
        ),
    );
    let out = db.turnout(&["check", stray.to_str().expect("utf-8")], None);
    let said = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        !out.status.success() && said.contains("no_such_view"),
        "{said}"
    );
    assert_eq!(views(&db).await, before, "check changed a view");

    let redefined = "views:\n  - name: items_stocked\n    definition: SELECT id, qty, tag FROM items WHERE qty >= 100\n";
    for rollback in [true, false] {
        let name = format!("items-drop-name-{rollback}");
        let p = db.plan_file("plan.yaml", &plan(&name, DROP_NAME, redefined));
        let p = p.to_str().expect("utf-8 path");
        ok(
            &db.turnout(&["check", p], None),
            "check with the new definition",
        );
        let writer = Writer::start(db.pool.clone(), "items", "mirror", SEED_ROWS, 53);
        writer.wait_for(10).await;
        let until = if rollback { "cut_over" } else { "done" };
        ok(
            &db.turnout(&["run", p, "--until", until, "--yes"], None),
            until,
        );
        writer.wait_for(20).await;
        let now = views(&db).await;
        assert!(
            now[0][1].as_deref().is_some_and(|d| !d.contains("name")),
            "{now:?}"
        );
        // Options, owner, privileges and comments stay; the other views are as they were.
        assert_eq!(now[0][2..6], before[0][2..6]);
        assert_eq!(now[1..], before[1..]);
        views_read_the_table(&db).await;
        if rollback {
            ok(&db.turnout(&["rollback", p, "--yes"], None), "rollback");
            writer.wait_for(10).await;
            assert_eq!(views(&db).await, before, "the original definition is back");
        }
        assert!(writer.stop().await.is_empty());
        same_as_mirror(&db).await;
        views_read_the_table(&db).await;
    }
    drop_role(db, &role).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_rules_publications_and_views_over_materialized_views_are_refused_by_name() {
    let db = TestDb::new(Kind::Postgres).await;
    seed(&db).await;
    db.exec(
        "CREATE VIEW items_big AS SELECT id, qty FROM items WHERE qty > 900;\n\
         CREATE MATERIALIZED VIEW big_counts AS SELECT count(*) AS n FROM items_big;\n\
         CREATE VIEW big_counts_shown AS SELECT n FROM big_counts;\n\
         CREATE RULE items_no_delete AS ON DELETE TO items WHERE old.qty > 990 DO INSTEAD NOTHING;\n\
         CREATE PUBLICATION items_feed FOR TABLE items",
    )
    .await;
    let p = db.plan_file("plan.yaml", &plan("items-refused", ADD, ""));
    let out = db.turnout(&["check", p.to_str().expect("utf-8")], None);
    assert!(!out.status.success());
    let said = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        said.contains("materialized view \"public.big_counts\" reads it and is read by \"public.big_counts_shown\""),
        "{said}"
    );
    // Rules and publications are carried (see `postgres_furniture.rs`).
    assert!(!said.contains("rule \"items_no_delete\""), "{said}");
    assert!(!said.contains("publication \"items_feed\""), "{said}");
    assert!(!said.contains("\"public.items_big\""), "{said}");
    db.drop().await;
}

/// The table's row security as the catalog states it: flags, then each policy.
async fn row_security(db: &TestDb) -> Vec<Vec<Option<String>>> {
    let mut out = db
        .rows("SELECT relrowsecurity::text, relforcerowsecurity::text FROM pg_class WHERE oid = 'items'::regclass")
        .await;
    out.extend(
        db.rows(
            "SELECT policyname::text, permissive, roles::text, cmd, qual, with_check FROM pg_policies \
             WHERE schemaname = 'public' AND tablename = 'items' ORDER BY 1",
        )
        .await,
    );
    out
}

/// What `role` sees is what the policy lets it see (one snapshot), and a write the
/// restrictive policy forbids is refused, on whichever table is `items` now.
async fn policies_hold(db: &TestDb, role: &str) {
    let crate::harness::Pool::Postgres(pg) = &db.pool else {
        panic!("a PostgreSQL test")
    };
    let mut tx = pg.begin().await.expect("begin");
    let run = |s: String| sqlx::raw_sql(sqlx::AssertSqlSafe(s));
    run("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ".into())
        .execute(&mut *tx)
        .await
        .expect("isolation");
    run(format!("SET LOCAL ROLE {role}"))
        .execute(&mut *tx)
        .await
        .expect("role");
    let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM items")
        .fetch_one(&mut *tx)
        .await
        .expect("count as the role");
    run("SAVEPOINT untagged".into())
        .execute(&mut *tx)
        .await
        .expect("savepoint");
    let refused = run("INSERT INTO items (id, qty) VALUES (1999999903, 500)".into())
        .execute(&mut *tx)
        .await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("row-level security")),
        "{refused:?}"
    );
    run("ROLLBACK TO SAVEPOINT untagged; RESET ROLE".into())
        .execute(&mut *tx)
        .await
        .expect("reset");
    let allowed: i64 = sqlx::query_scalar("SELECT count(*) FROM items WHERE qty >= 100")
        .fetch_one(&mut *tx)
        .await
        .expect("count");
    let all: i64 = sqlx::query_scalar("SELECT count(*) FROM items")
        .fetch_one(&mut *tx)
        .await
        .expect("count");
    tx.rollback().await.expect("rollback");
    assert!(seen > 0 && all > seen, "seen {seen} of {all}");
    assert_eq!(
        seen, allowed,
        "the role sees other rows than its policy allows"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_row_security_follows_the_table_and_stays_at_rollback() {
    for rollback in [false, true] {
        let db = TestDb::new(Kind::Postgres).await;
        seed(&db).await;
        let role = new_role(&db).await;
        db.exec(&format!(
            "GRANT SELECT, INSERT ON items TO {role};\n\
             CREATE POLICY items_read ON items FOR SELECT TO {role} USING (qty >= 100);\n\
             CREATE POLICY items_insert ON items FOR INSERT TO {role}, PUBLIC WITH CHECK (true);\n\
             CREATE POLICY items_tagged_only ON items AS RESTRICTIVE FOR INSERT TO {role} WITH CHECK (tag IS NOT NULL);\n\
             ALTER TABLE items ENABLE ROW LEVEL SECURITY;\n\
             ALTER TABLE items FORCE ROW LEVEL SECURITY"
        ))
        .await;
        let before = row_security(&db).await;
        assert_eq!(before.len(), 4);
        policies_hold(&db, &role).await;
        let name = format!("items-rls-{rollback}");
        let p = db.plan_file("plan.yaml", &plan(&name, WIDEN, ""));
        let p = p.to_str().expect("utf-8 path");
        ok(&db.turnout(&["check", p], None), "check");
        let writer = Writer::start(db.pool.clone(), "items", "mirror", SEED_ROWS, 59);
        writer.wait_for(10).await;
        let until = if rollback { "cut_over" } else { "done" };
        ok(
            &db.turnout(&["run", p, "--until", until, "--yes"], None),
            until,
        );
        writer.wait_for(20).await;
        assert_eq!(row_security(&db).await, before, "after cutover");
        policies_hold(&db, &role).await;
        if rollback {
            ok(&db.turnout(&["rollback", p, "--yes"], None), "rollback");
            writer.wait_for(10).await;
        }
        assert!(writer.stop().await.is_empty());
        same_as_mirror(&db).await;
        assert_eq!(row_security(&db).await, before, "rollback: {rollback}");
        policies_hold(&db, &role).await;
        db.exec(&format!("REVOKE ALL ON items FROM {role}")).await;
        for policy in ["items_read", "items_insert", "items_tagged_only"] {
            db.exec(&format!("DROP POLICY {policy} ON items")).await;
        }
        drop_role(db, &role).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_policy_using_a_dropped_column_is_refused() {
    let db = TestDb::new(Kind::Postgres).await;
    seed(&db).await;
    db.exec("CREATE POLICY items_named ON items USING (name IS NOT NULL);\nALTER TABLE items ENABLE ROW LEVEL SECURITY")
        .await;
    let p = db.plan_file("plan.yaml", &plan("items-rls-drop", DROP_NAME, ""));
    let out = db.turnout(&["check", p.to_str().expect("utf-8")], None);
    let said = format!("{}{}", stdout(&out), stderr(&out));
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("policy \"items_named\" uses column \"name\""),
        "{said}"
    );
    db.drop().await;
}

/// The table's owner, comments (table and columns) and storage parameters, from the catalog.
async fn furniture(db: &TestDb) -> Vec<Vec<Option<String>>> {
    db.rows(
        "SELECT pg_get_userbyid(c.relowner)::text, obj_description(c.oid, 'pg_class'), c.reloptions::text, t.reloptions::text, \
         (SELECT string_agg(a.attname || '=' || col_description(c.oid, a.attnum), ',' ORDER BY a.attname) \
          FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND col_description(c.oid, a.attnum) IS NOT NULL), \
         c.relreplident::text, \
         (SELECT ic.relname::text FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid WHERE i.indrelid = c.oid AND i.indisreplident) \
         FROM pg_class c LEFT JOIN pg_class t ON t.oid = c.reltoastrelid WHERE c.oid = 'items'::regclass",
    )
    .await
}

/// A table owned by the application's role, with comments, storage parameters and a
/// replica identity index: after
/// done the new table has them (the renamed column's comment under its new name), after a
/// rollback from `cut_over` the old table has them as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_owner_comments_and_storage_parameters_follow_the_table() {
    for rollback in [false, true] {
        let db = TestDb::new(Kind::Postgres).await;
        seed(&db).await;
        let role = new_role(&db).await;
        db.exec(&format!(
            "ALTER TABLE items OWNER TO {role};\n\
             COMMENT ON TABLE items IS 'what we sell';\n\
             COMMENT ON COLUMN items.qty IS 'on hand';\n\
             COMMENT ON COLUMN items.name IS 'shown to customers';\n\
             ALTER TABLE items SET (fillfactor = 70, autovacuum_vacuum_scale_factor = 0.05, toast.autovacuum_enabled = false);\n\
             CREATE UNIQUE INDEX items_ident ON items (id, qty);\n\
             ALTER TABLE items REPLICA IDENTITY USING INDEX items_ident"
        ))
        .await;
        let before = furniture(&db).await;
        let changes = format!("{WIDEN}  - rename_column: {{from: name, to: label}}\n");
        let p = db.plan_file(
            "plan.yaml",
            &plan(&format!("items-furniture-{rollback}"), &changes, ""),
        );
        let p = p.to_str().expect("utf-8 path");
        ok(&db.turnout(&["check", p], None), "check");
        let writer = Writer::start(db.pool.clone(), "items", "mirror", SEED_ROWS, 61);
        writer.wait_for(10).await;
        let until = if rollback { "cut_over" } else { "done" };
        ok(
            &db.turnout(&["run", p, "--until", until, "--yes"], None),
            until,
        );
        writer.wait_for(20).await;
        let mut renamed = before.clone();
        renamed[0][4] = Some("label=shown to customers,qty=on hand".into());
        assert_eq!(furniture(&db).await, renamed, "after cutover");
        if rollback {
            ok(&db.turnout(&["rollback", p, "--yes"], None), "rollback");
            writer.wait_for(10).await;
            assert_eq!(furniture(&db).await, before, "after rollback");
        }
        assert!(writer.stop().await.is_empty());
        same_as_mirror(&db).await;
        // The serial's sequence belongs to the table's owner, as before.
        assert_eq!(
            db.one("SELECT pg_get_userbyid(relowner)::text FROM pg_class WHERE oid = 'items_id_seq'::regclass").await,
            role
        );
        db.exec(
            "ALTER TABLE items OWNER TO postgres;\nALTER SEQUENCE items_id_seq OWNER TO postgres",
        )
        .await;
        drop_role(db, &role).await;
    }
}

/// Killed inside the cutover transaction and resumed, killed inside a rollback and rolled
/// back again: the views are whole at every step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_views_survive_kills_in_cutover_and_rollback() {
    for (point, rollback) in [("cutover.inside", false), ("rollback.inside", true)] {
        let db = TestDb::new(Kind::Postgres).await;
        seed(&db).await;
        let role = new_role(&db).await;
        seed_views(&db, &role).await;
        let before = views(&db).await;
        let p = db.plan_file(
            "plan.yaml",
            &plan(&format!("items-views-kill-{rollback}"), WIDEN, ""),
        );
        let p = p.to_str().expect("utf-8 path");
        let writer = Writer::start(db.pool.clone(), "items", "mirror", SEED_ROWS, 67);
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
        assert_eq!(views(&db).await, before, "after the kill at {point}");
        views_read_the_table(&db).await;
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
        assert_eq!(views(&db).await, before, "{point}");
        views_read_the_table(&db).await;
        drop_role(db, &role).await;
    }
}

/// A materialized view over `items` with storage parameters, a unique and a partial index,
/// comments and grants to `role`; and one over a plain view of the table.
async fn seed_matviews(db: &TestDb, role: &str) {
    db.exec(&format!(
        "CREATE MATERIALIZED VIEW item_stock WITH (fillfactor = 80) AS SELECT id, qty, tag FROM items WHERE qty >= 100;\n\
         CREATE UNIQUE INDEX item_stock_id ON item_stock (id);\n\
         CREATE INDEX item_stock_tag ON item_stock (tag) WHERE tag IS NOT NULL;\n\
         COMMENT ON INDEX item_stock_id IS 'one row per item';\n\
         COMMENT ON MATERIALIZED VIEW item_stock IS 'stock worth counting';\n\
         COMMENT ON COLUMN item_stock.qty IS 'on hand';\n\
         GRANT SELECT ON item_stock TO {role};\n\
         GRANT SELECT (qty) ON item_stock TO {role} WITH GRANT OPTION;\n\
         CREATE VIEW items_big AS SELECT id, qty FROM items WHERE qty > 900;\n\
         CREATE MATERIALIZED VIEW big_counts AS SELECT count(*) AS n FROM items_big"
    ))
    .await;
}

/// The materialized views as the catalog states them: definition, options, owner,
/// privileges, comments, whether filled, and their indexes with their comments.
async fn matviews(db: &TestDb) -> Vec<Vec<Option<String>>> {
    db.rows(
        "SELECT c.relname::text, pg_get_viewdef(c.oid), c.reloptions::text, pg_get_userbyid(c.relowner)::text, \
         c.relacl::text, obj_description(c.oid, 'pg_class'), c.relispopulated::text, \
         (SELECT string_agg(a.attname || ':' || coalesce(a.attacl::text, '') || ':' || coalesce(col_description(c.oid, a.attnum), ''), ',' ORDER BY a.attnum) \
          FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0), \
         (SELECT string_agg(pg_get_indexdef(i.indexrelid) || ':' || coalesce(obj_description(i.indexrelid, 'pg_class'), ''), ',' ORDER BY i.indexrelid::regclass::text) \
          FROM pg_index i WHERE i.indrelid = c.oid) \
         FROM pg_class c WHERE c.relkind = 'm' AND c.relnamespace = 'public'::regnamespace ORDER BY 1",
    )
    .await
}

/// Which table `item_stock` reads, by its name now.
async fn item_stock_reads(db: &TestDb) -> String {
    db.one(
        "SELECT string_agg(DISTINCT d.refobjid::regclass::text, ',') FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid \
         WHERE r.ev_class = 'item_stock'::regclass AND d.refclassid = 'pg_class'::regclass AND d.refobjid <> r.ev_class",
    )
    .await
}

/// Refreshed (the writer stopped), each materialized view holds what its query over
/// `items` returns, and a concurrent refresh works through the unique index.
async fn matviews_match_the_table(db: &TestDb) {
    db.exec(
        "REFRESH MATERIALIZED VIEW CONCURRENTLY item_stock;\nREFRESH MATERIALIZED VIEW big_counts",
    )
    .await;
    for (view, table) in [
        (
            "SELECT id, qty, tag FROM item_stock",
            "SELECT id, qty, tag FROM items WHERE qty >= 100",
        ),
        (
            "SELECT n FROM big_counts",
            "SELECT count(*) FROM items WHERE qty > 900",
        ),
    ] {
        let compared = db
            .rows(&format!(
                "SELECT (SELECT count(*) FROM ({view}) v)::text, \
                 (SELECT count(*) FROM (({view} EXCEPT ALL {table}) UNION ALL ({table} EXCEPT ALL {view})) d)::text"
            ))
            .await;
        assert_ne!(compared[0][0].as_deref(), Some("0"), "{view} is empty");
        assert_eq!(
            compared[0][1].as_deref(),
            Some("0"),
            "{view} differs from {table}"
        );
    }
}

/// No object of the migration's is left over.
async fn no_placeholders(db: &TestDb) {
    assert_eq!(
        db.one("SELECT count(*)::text FROM pg_class WHERE relname ~ '^turnout_.*_m[vi][0-9]+$'")
            .await,
        "0",
        "turnout's placeholders outlived the migration"
    );
}

/// Materialized views stay on the old table (kept equal by the reverse triggers) until
/// cleanup replaces them: after done each is under its name with its indexes, owner,
/// grants and comments, reads the new table and refreshes to what its query returns; a
/// rollback from `cut_over` leaves them as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_materialized_views_follow_the_table_at_cleanup_and_stay_at_rollback() {
    for rollback in [false, true] {
        let db = TestDb::new(Kind::Postgres).await;
        seed(&db).await;
        let role = new_role(&db).await;
        seed_matviews(&db, &role).await;
        let before = matviews(&db).await;
        assert_eq!(before.len(), 2);
        let p = db.plan_file(
            "plan.yaml",
            &plan(&format!("items-matviews-{rollback}"), ADD, ""),
        );
        let p = p.to_str().expect("utf-8 path");
        ok(&db.turnout(&["check", p], None), "check");
        let original: String = db.one("SELECT 'item_stock'::regclass::oid::text").await;
        let writer = Writer::start(db.pool.clone(), "items", "mirror", SEED_ROWS, 71);
        writer.wait_for(10).await;
        ok(
            &db.turnout(&["run", p, "--until", "verified", "--yes"], None),
            "run to verified",
        );
        ok(&db.turnout(&["verify", p], None), "verify");
        ok(
            &db.turnout(&["run", p, "--until", "cut_over", "--yes"], None),
            "cut_over",
        );
        writer.wait_for(10).await;
        // Until cleanup it reads the old table, which the reverse triggers keep equal.
        assert_ne!(item_stock_reads(&db).await, "items");
        if rollback {
            ok(&db.turnout(&["rollback", p, "--yes"], None), "rollback");
            writer.wait_for(10).await;
            assert_eq!(
                db.one("SELECT 'item_stock'::regclass::oid::text").await,
                original,
                "the original materialized view is the one there"
            );
        } else {
            ok(&db.turnout(&["run", p, "--yes"], None), "done");
            writer.wait_for(10).await;
        }
        assert!(writer.stop().await.is_empty());
        same_as_mirror(&db).await;
        assert_eq!(matviews(&db).await, before, "rollback {rollback}");
        assert_eq!(item_stock_reads(&db).await, "items");
        matviews_match_the_table(&db).await;
        no_placeholders(&db).await;
        drop_role(db, &role).await;
    }
}

/// Killed after the replacement is built and inside the short transaction that swaps it
/// in, then resumed: done, with the materialized views exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_materialized_views_survive_kills_in_cleanup() {
    for point in ["cleanup.matview.built", "cleanup.matview.inside"] {
        let db = TestDb::new(Kind::Postgres).await;
        seed(&db).await;
        let role = new_role(&db).await;
        seed_matviews(&db, &role).await;
        let before = matviews(&db).await;
        let p = db.plan_file(
            "plan.yaml",
            &plan(&format!("items-mv-{point}"), WIDEN_NOTHING, ""),
        );
        let p = p.to_str().expect("utf-8 path");
        let writer = Writer::start(db.pool.clone(), "items", "mirror", SEED_ROWS, 73);
        writer.wait_for(10).await;
        ok(
            &db.turnout(&["run", p, "--until", "verified", "--yes"], None),
            "run to verified",
        );
        ok(&db.turnout(&["verify", p], None), "verify");
        let killed = db.turnout(&["run", p, "--yes"], Some(point));
        assert!(
            stderr(&killed).contains("fault injected"),
            "{point}: {}",
            stderr(&killed)
        );
        // Either the original or its replacement is there under its name.
        assert_eq!(
            db.one("SELECT count(*)::text FROM pg_matviews WHERE matviewname = 'item_stock'")
                .await,
            "1"
        );
        writer.wait_for(10).await;
        ok(
            &db.turnout(&["resume", p, "--yes"], None),
            &format!("after {point}"),
        );
        assert!(writer.stop().await.is_empty());
        same_as_mirror(&db).await;
        assert_eq!(matviews(&db).await, before, "{point}");
        assert_eq!(item_stock_reads(&db).await, "items");
        matviews_match_the_table(&db).await;
        no_placeholders(&db).await;
        drop_role(db, &role).await;
    }
}

/// A column no view reads widened: the plain view over the table is replaced in place.
const WIDEN_NOTHING: &str = "  - alter_column: {name: name, type: varchar(200)}\n";

/// A materialized view that reads a column the plan drops, and one read by a view, are
/// refused by check, each named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_materialized_views_turnout_cannot_carry_are_refused_by_name() {
    let db = TestDb::new(Kind::Postgres).await;
    seed(&db).await;
    db.exec(
        "CREATE MATERIALIZED VIEW item_names AS SELECT id, name FROM items;\n\
         CREATE MATERIALIZED VIEW tag_counts AS SELECT tag, count(*) AS n FROM items GROUP BY tag;\n\
         CREATE VIEW tag_counts_shown AS SELECT tag FROM tag_counts",
    )
    .await;
    let p = db.plan_file("plan.yaml", &plan("items-mv-refused", DROP_NAME, ""));
    let out = db.turnout(&["check", p.to_str().expect("utf-8")], None);
    assert!(!out.status.success());
    let said = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        said.contains("materialized view \"public.item_names\" uses column \"name\""),
        "{said}"
    );
    assert!(
        said.contains("materialized view \"public.tag_counts\" reads it and is read by \"public.tag_counts_shown\""),
        "{said}"
    );
    db.drop().await;
}
