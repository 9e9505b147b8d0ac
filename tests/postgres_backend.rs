//! The PostgreSQL backend driven through the `Backend` trait alone, against the real
//! server: each test in its own database, so they run in parallel. A writer task keeps a
//! mirror table in the same transaction as each write to the migrated table, so at the end
//! the table must equal the mirror exactly, whatever phase the writes landed in.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use sqlx::{AssertSqlSafe, PgPool};
use turnout::db::postgres::Postgres;
use turnout::db::{Backend, CutoverOutcome, StateRow, VerifyRequest};
use turnout::schema::Migration;

const ADMIN: &str = "postgres://postgres@127.0.0.1:5432/test";

struct TestDb {
    name: String,
    url: String,
    pool: PgPool,
}

impl TestDb {
    async fn new() -> TestDb {
        let name = format!("turnout_t_{:016x}", rand::random::<u64>());
        let admin = PgPool::connect(ADMIN).await.expect("postgres is up");
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .expect("create database");
        admin.close().await;
        let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
        let pool = PgPool::connect(&url).await.expect("connect");
        TestDb { name, url, pool }
    }

    async fn backend(&self) -> Postgres {
        let b = Postgres::connect(&self.url)
            .await
            .expect("backend connects");
        b.ensure_state_table().await.expect("state table");
        b
    }

    async fn exec(&self, sql: &str) {
        sqlx::raw_sql(AssertSqlSafe(sql.to_string()))
            .execute(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// Every row of a query, each value as text, for comparisons.
    async fn rows(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        // json (not jsonb) keeps the columns' order and duplicate names.
        let wrapped = format!(
            "SELECT (SELECT json_agg(e.value ORDER BY e.n) FROM json_each(row_to_json(q)) WITH ORDINALITY AS e(key, value, n))::text FROM ({sql}) AS q"
        );
        let rows: Vec<String> = sqlx::query_scalar(AssertSqlSafe(wrapped))
            .fetch_all(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        rows.into_iter()
            .map(|r| {
                let v: serde_json::Value = serde_json::from_str(&r).expect("json row");
                v.as_array()
                    .expect("array")
                    .iter()
                    .map(|x| match x {
                        serde_json::Value::Null => None,
                        serde_json::Value::String(s) => Some(s.clone()),
                        other => Some(other.to_string()),
                    })
                    .collect()
            })
            .collect()
    }

    async fn scalar(&self, sql: &str) -> i64 {
        sqlx::query_scalar::<_, i64>(AssertSqlSafe(sql.to_string()))
            .fetch_one(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    async fn drop(self) {
        self.pool.close().await;
        if let Ok(admin) = PgPool::connect(ADMIN).await {
            let _ = sqlx::raw_sql(AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            )))
            .execute(&admin)
            .await;
        }
    }
}

type Rows = Vec<Vec<Option<String>>>;

/// Equal row sets, or a panic showing the first difference (not thousands of rows).
#[track_caller]
fn assert_same(actual: &Rows, expected: &Rows, what: &str) {
    if actual == expected {
        return;
    }
    let at = actual
        .iter()
        .zip(expected)
        .position(|(a, e)| a != e)
        .unwrap_or(actual.len().min(expected.len()));
    panic!(
        "{what}: {} rows vs {} expected; first difference at row {at}:\n  actual:   {:?}\n  expected: {:?}",
        actual.len(),
        expected.len(),
        actual.get(at),
        expected.get(at)
    );
}

fn state(m: &str, phase: &str) -> StateRow {
    StateRow {
        name: m.to_string(),
        plan_hash: "test".into(),
        phase: phase.into(),
        body: "{}".into(),
    }
}

async fn derive(b: &Postgres, yaml: &str) -> Migration {
    let plan = turnout::plan::parse(yaml, "test.yaml").expect("plan parses");
    turnout::engine::derive(b, &plan)
        .await
        .unwrap_or_else(|e| panic!("derive/preflight: {e}"))
}

async fn backfill(b: &Postgres, m: &Migration, batch: u64, max_batches: Option<usize>) -> u64 {
    let mut cursor = None;
    let mut total = 0;
    let mut n = 0;
    loop {
        let d = b
            .copy_batch(m, cursor.as_ref(), batch, &|_| {
                state(&m.name, "dual_writing")
            })
            .await
            .expect("batch");
        if d.rows == 0 {
            break;
        }
        total += d.rows;
        cursor = d.last;
        n += 1;
        if max_batches.is_some_and(|max| n >= max) {
            break;
        }
    }
    // The copy is done: the indexes deferred until then (as the engine does).
    if max_batches.is_none() {
        b.finish_backfill(m).await.expect("finish");
    }
    total
}

async fn verify(b: &Postgres, m: &Migration) -> turnout::db::VerifyReport {
    b.verify(
        m,
        &VerifyRequest {
            chunk_rows: 97,
            sample_rate: None,
            max_diffs: 20,
            workers: 1,
        },
        &|_| {},
        &|| false,
    )
    .await
    .expect("verify")
}

async fn cutover(b: &Postgres, m: &Migration) {
    for _ in 0..50 {
        match b
            .cutover(m, Duration::from_millis(500), &state(&m.name, "cut_over"))
            .await
            .expect("cutover")
        {
            CutoverOutcome::Swapped => return,
            CutoverOutcome::LockTimeout => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    panic!("cutover never got its lock");
}

/// Nothing turnout created is left but its state tables.
async fn assert_clean(db: &TestDb, schema: &str, table: &str) {
    let left = db
        .rows(&format!(
            "SELECT proname::text FROM pg_proc WHERE proname LIKE 'turnout\\_%' \
             UNION ALL SELECT tgname::text FROM pg_trigger WHERE NOT tgisinternal \
             UNION ALL SELECT relname::text FROM pg_class WHERE relname LIKE 'turnout\\_%' \
               AND relname NOT IN ('turnout_state', 'turnout_failures', 'turnout_state_pkey', 'turnout_rollback', 'turnout_rollback_pkey') \
             UNION ALL SELECT relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
               WHERE n.nspname = '{}' AND relname IN ('_{t}_new', '_{t}_old')",
            schema.replace('\'', "''"),
            t = table.replace('\'', "''")
        ))
        .await;
    assert!(left.is_empty(), "turnout objects left behind: {left:?}");
}

// ---------------------------------------------------------------------------------------
// The writer: random inserts, updates (primary-key changes included) and deletes, each in
// one transaction with the same change to the mirror.
// ---------------------------------------------------------------------------------------

struct Writer {
    stop: Arc<AtomicBool>,
    writes: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

/// The orders table is written in its old shape (amount_cents, note, lower-case status)
/// until cutover and in its new one (amount, comment, upper-case status) after; the writer
/// follows whichever the table has, and the mirror keeps the old shape's values.
const OLD_SQL: [&str; 3] = [
    "INSERT INTO \"sales\".\"orders\" (customer_id, amount_cents, status, note) VALUES ($1, $2, $3, $4) RETURNING id",
    "UPDATE \"sales\".\"orders\" SET amount_cents = $2, status = $3, note = $4 WHERE id = $1",
    "UPDATE \"sales\".\"orders\" SET customer_id = $2 WHERE id = $1",
];
const NEW_SQL: [&str; 3] = [
    "INSERT INTO \"sales\".\"orders\" (customer_id, amount, status, comment) VALUES ($1, $2 / 100.0, upper($3), $4) RETURNING id",
    "UPDATE \"sales\".\"orders\" SET amount = $2 / 100.0, status = upper($3), comment = $4 WHERE id = $1",
    "UPDATE \"sales\".\"orders\" SET customer_id = $2 WHERE id = $1",
];

impl Writer {
    fn start(pool: PgPool) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let writes = Arc::new(AtomicU64::new(0));
        let (s, w) = (stop.clone(), writes.clone());
        let task = tokio::spawn(async move {
            let mut errors = Vec::new();
            let mut new_shape = false;
            let mut i: u64 = 0;
            while !s.load(Ordering::Relaxed) {
                i += 1;
                match write_once(&pool, new_shape, i).await {
                    Ok(()) => {
                        w.fetch_add(1, Ordering::Relaxed);
                    }
                    // The table changed shape under us (cutover or rollback): switch.
                    Err(e) if matches!(code(&e).as_deref(), Some("42703" | "42804")) => {
                        new_shape = !new_shape;
                    }
                    // Lock waits and deadlocks against turnout's DDL: the write is retried.
                    Err(e) if matches!(code(&e).as_deref(), Some("40P01" | "55P03" | "40001")) => {}
                    Err(e) => errors.push(e.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            errors
        });
        Writer { stop, writes, task }
    }

    async fn wait_for(&self, more: u64) {
        let target = self.writes.load(Ordering::Relaxed) + more;
        while self.writes.load(Ordering::Relaxed) < target {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let errors = self.task.await.expect("writer task");
        assert!(errors.is_empty(), "writer errors: {errors:?}");
    }
}

fn code(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(d) => d.code().map(|c| c.to_string()),
        _ => None,
    }
}

async fn write_once(pool: &PgPool, new_shape: bool, i: u64) -> Result<(), sqlx::Error> {
    let sqls = if new_shape { NEW_SQL } else { OLD_SQL };
    let mut tx = pool.begin().await?;
    let pick: Option<i64> = sqlx::query_scalar("SELECT id FROM mirror ORDER BY random() LIMIT 1")
        .fetch_optional(&mut *tx)
        .await?;
    let cents = (rand::random::<u32>() % 100_000) as i32;
    let status = ["new", "paid", "shipped", "void"][(i % 4) as usize];
    let note = (!i.is_multiple_of(5)).then(|| format!("note {i}"));
    let customer = (rand::random::<u32>() % 1000) as i32;
    let roll = rand::random::<u32>() % 100;
    match (pick, roll) {
        (None, _) | (_, 0..40) => {
            let id: i64 = sqlx::query_scalar(sqls[0])
                .bind(customer)
                .bind(cents)
                .bind(status)
                .bind(&note)
                .fetch_one(&mut *tx)
                .await?;
            sqlx::query("INSERT INTO mirror VALUES ($1, $2, $3, $4, $5)")
                .bind(id)
                .bind(i64::from(customer))
                .bind(cents)
                .bind(status)
                .bind(&note)
                .execute(&mut *tx)
                .await?;
        }
        (Some(id), 40..65) => {
            sqlx::query(sqls[1])
                .bind(id)
                .bind(cents)
                .bind(status)
                .bind(&note)
                .execute(&mut *tx)
                .await?;
            sqlx::query("UPDATE mirror SET cents = $2, status = $3, note = $4 WHERE id = $1")
                .bind(id)
                .bind(cents)
                .bind(status)
                .bind(&note)
                .execute(&mut *tx)
                .await?;
        }
        (Some(id), 65..72) => {
            sqlx::query(sqls[2])
                .bind(id)
                .bind(customer)
                .execute(&mut *tx)
                .await?;
            sqlx::query("UPDATE mirror SET customer_id = $2 WHERE id = $1")
                .bind(id)
                .bind(i64::from(customer))
                .execute(&mut *tx)
                .await?;
        }
        (Some(id), 72..82) => {
            // A primary-key change.
            sqlx::query("UPDATE \"sales\".\"orders\" SET id = id + 1000000 WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("UPDATE mirror SET id = id + 1000000 WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        (Some(id), _) => {
            sqlx::query("DELETE FROM \"sales\".\"orders\" WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM mirror WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
    }
    tx.commit().await
}

const ORDERS_PLAN: &str = r#"
version: 1
name: orders-reshape
schema: sales
table: orders
changes:
  - add_column: {name: amount, type: "numeric(12,2)", from: amount_cents / 100.0}
  - drop_column: {name: amount_cents, reverse: "CAST(round(amount * 100) AS integer)"}
  - alter_column: {name: customer_id, type: bigint}
  - alter_column: {name: status, type: "varchar(16)", using: upper(status), reverse: lower(status)}
  - rename_column: {from: note, to: comment}
  - add_index: {name: orders_customer_idx, columns: [customer_id]}
"#;

async fn orders_db(rows: i64) -> TestDb {
    let db = TestDb::new().await;
    db.exec(
        "CREATE SCHEMA sales; \
         CREATE TABLE sales.orders (id bigserial PRIMARY KEY, customer_id integer NOT NULL, amount_cents integer NOT NULL DEFAULT 0, \
           status text NOT NULL DEFAULT 'new', note text); \
         CREATE INDEX orders_note_idx ON sales.orders (note); \
         CREATE TABLE mirror (id bigint PRIMARY KEY, customer_id bigint, cents integer, status text, note text);",
    )
    .await;
    db.exec(&format!(
        "INSERT INTO sales.orders (customer_id, amount_cents, status, note) \
         SELECT g % 1000, g * 7, (ARRAY['new','paid','shipped','void'])[1 + g % 4], CASE WHEN g % 3 = 0 THEN NULL ELSE 'n' || g END \
         FROM generate_series(1, {rows}) g; \
         INSERT INTO mirror SELECT id, customer_id, amount_cents, status, note FROM sales.orders;"
    ))
    .await;
    db
}

const MIRROR: &str = "SELECT id, customer_id, cents, status, note FROM mirror ORDER BY id";
const AS_OLD: &str =
    "SELECT id, customer_id, amount_cents AS cents, status, note FROM sales.orders ORDER BY id";
const AS_NEW: &str = "SELECT id, customer_id, CAST(amount * 100 AS integer) AS cents, lower(status) AS status, comment AS note FROM sales.orders ORDER BY id";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_migration_under_concurrent_writes() {
    let db = orders_db(3000).await;
    let b = db.backend().await;
    let m = derive(&b, ORDERS_PLAN).await;
    assert!(b.preview(&m).iter().all(|p| !p.statements.is_empty()));
    let writer = Writer::start(db.pool.clone());
    writer.wait_for(20).await;
    b.prepare(&m, &state(&m.name, "prepared"))
        .await
        .expect("prepare");
    writer.wait_for(20).await;
    b.start_dual_write(&m, &state(&m.name, "dual_writing"))
        .await
        .expect("dual-write");
    writer.wait_for(20).await;
    assert!(b.estimate_rows(&m).await.expect("estimate") > 2000);
    let copied = backfill(&b, &m, 211, None).await;
    assert!(copied >= 2900, "copied {copied}");
    b.finish_backfill(&m).await.expect("finish");
    writer.wait_for(20).await;
    let report = verify(&b, &m).await;
    assert!(report.diffs.is_empty(), "{:?}", report.diffs);
    assert!(report.rows > 2000 && report.chunks > 20, "{report:?}");
    cutover(&b, &m).await;
    writer.wait_for(50).await;
    b.cleanup(&m, false, &state(&m.name, "done"))
        .await
        .expect("cleanup");
    writer.wait_for(30).await;
    writer.stop().await;

    assert_same(
        &db.rows(AS_NEW).await,
        &db.rows(MIRROR).await,
        "table vs mirror",
    );
    assert!(b.trigger_failures(&m).await.expect("failures").is_empty());
    assert_clean(&db, "sales", "orders").await;
    // The new table took the old names: key, indexes, the serial sequence.
    let names = db
        .rows("SELECT relname::text FROM pg_class WHERE relnamespace = 'sales'::regnamespace ORDER BY relname")
        .await;
    let names: Vec<_> = names.into_iter().flatten().flatten().collect();
    assert_eq!(
        names,
        [
            "orders",
            "orders_customer_idx",
            "orders_id_seq",
            "orders_note_idx",
            "orders_pkey"
        ]
    );
    let ty = db.rows("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'sales.orders'::regclass AND attname = 'customer_id'").await;
    assert_eq!(ty[0][0].as_deref(), Some("bigint"));
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rollback_from_every_phase_loses_nothing() {
    let db = orders_db(1500).await;
    let b = db.backend().await;
    let original_indexes = db
        .rows("SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = 'sales.orders'::regclass ORDER BY 1")
        .await;
    for stop_after in [
        "prepared",
        "dual_writing",
        "mid_backfill",
        "backfilled",
        "verified",
        "cut_over",
    ] {
        let m = derive(&b, ORDERS_PLAN).await;
        let writer = Writer::start(db.pool.clone());
        let phases = [
            "prepared",
            "dual_writing",
            "mid_backfill",
            "backfilled",
            "verified",
            "cut_over",
        ];
        for phase in phases {
            writer.wait_for(10).await;
            match phase {
                "prepared" => b
                    .prepare(&m, &state(&m.name, phase))
                    .await
                    .expect("prepare"),
                "dual_writing" => b
                    .start_dual_write(&m, &state(&m.name, phase))
                    .await
                    .expect("dual-write"),
                "mid_backfill" => {
                    backfill(&b, &m, 100, Some(3)).await;
                }
                "backfilled" => {
                    backfill(&b, &m, 100, None).await;
                }
                "verified" => assert!(verify(&b, &m).await.diffs.is_empty()),
                _ => cutover(&b, &m).await,
            }
            if phase == stop_after {
                break;
            }
        }
        writer.wait_for(20).await;
        b.rollback(&m, &state(&m.name, "rolled_back"))
            .await
            .expect("rollback");
        // A second rollback (a resumed one) finds nothing to do.
        b.rollback(&m, &state(&m.name, "rolled_back"))
            .await
            .expect("rollback again");
        writer.wait_for(20).await;
        writer.stop().await;
        assert_same(
            &db.rows(AS_OLD).await,
            &db.rows(MIRROR).await,
            &format!("after rollback from {stop_after}"),
        );
        assert_clean(&db, "sales", "orders").await;
        let indexes = db
            .rows("SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = 'sales.orders'::regclass ORDER BY 1")
            .await;
        assert_eq!(
            indexes, original_indexes,
            "after rollback from {stop_after}"
        );
        let owner = db
            .rows("SELECT pg_get_serial_sequence('sales.orders', 'id')")
            .await;
        assert_eq!(owner[0][0].as_deref(), Some("sales.orders_id_seq"));
    }
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_names_and_types_migrate_roll_back_and_migrate_again() {
    let db = TestDb::new().await;
    db.exec(
        r#"CREATE SCHEMA "My ""Schema"" ü";
        CREATE TABLE "My ""Schema"" ü"."Order Table ""x""" (
          "Région" text NOT NULL, "order" integer NOT NULL,
          "select" numeric(10,2), "Mixed Case" timestamptz, "naïve col" jsonb,
          "b y t e s" bytea, "uuid" uuid DEFAULT gen_random_uuid(), "ints" int[],
          "found" text,
          PRIMARY KEY ("Région", "order"));
        CREATE UNIQUE INDEX "Weird ""Idx""" ON "My ""Schema"" ü"."Order Table ""x""" ("order", "Région");
        INSERT INTO "My ""Schema"" ü"."Order Table ""x"""
          SELECT (ARRAY['Zürich','Ørsted','east "side"', 'ñ'])[1 + g % 4], g,
            CASE WHEN g % 5 = 0 THEN NULL ELSE g * 1.25 END,
            CASE WHEN g % 7 = 0 THEN NULL ELSE timestamptz '2024-01-01 00:00:00+00' + g * interval '1 hour' END,
            CASE WHEN g % 3 = 0 THEN NULL ELSE jsonb_build_object('k', g, 'nested', jsonb_build_array(g, 'x')) END,
            CASE WHEN g % 4 = 0 THEN NULL ELSE decode(lpad(to_hex(g), 8, '0'), 'hex') END,
            gen_random_uuid(),
            CASE WHEN g % 6 = 0 THEN NULL ELSE ARRAY[g, g + 1, NULL] END,
            CASE WHEN g % 2 = 0 THEN 'f' || g END
          FROM generate_series(1, 800) g;
        CREATE TABLE snapshot AS SELECT * FROM "My ""Schema"" ü"."Order Table ""x""";"#,
    )
    .await;
    let plan = r#"
version: 1
name: "hostile \"names\" ü"
schema: 'My "Schema" ü'
table: 'Order Table "x"'
changes:
  - rename_column: {from: "Mixed Case", to: "When \"exactly\""}
  - alter_column: {name: "select", type: "numeric(14,4)", using: '"select" * 2', reverse: '"select" / 2'}
  - add_column: {name: "Größe", type: integer, from: 'coalesce(array_length("ints", 1), 0) + length("found")'}
  - add_index: {name: "idx \"größe\"", columns: ["Größe"]}
"#;
    let t = r#""My ""Schema"" ü"."Order Table ""x""""#;
    let b = db.backend().await;
    for (round, o) in [("rollback", 0), ("forward", 10)] {
        let m = derive(&b, plan).await;
        assert_eq!(m.key.len(), 2);
        b.prepare(&m, &state(&m.name, "prepared"))
            .await
            .expect("prepare");
        b.start_dual_write(&m, &state(&m.name, "dual_writing"))
            .await
            .expect("dual-write");
        let (n1, n2, k3, k4, k5, k6) = (100000 + o, 200000 + o, 3 + o, 4 + o, 5 + o, 6 + o);
        db.exec(&format!(
            r#"INSERT INTO {t} ("Région", "order", "select", "found") VALUES ('new "one"', {n1}, 3.5, NULL);
               UPDATE {t} SET "order" = "order" + 50000 WHERE "order" = {k3};
               UPDATE {t} SET "naïve col" = '{{"a": null}}', "select" = NULL WHERE "order" = {k4};
               DELETE FROM {t} WHERE "order" = {k5};
               INSERT INTO snapshot ("Région", "order", "select", "found", "uuid") SELECT 'new "one"', {n1}, 3.5, NULL, "uuid" FROM {t} WHERE "order" = {n1};
               UPDATE snapshot SET "order" = "order" + 50000 WHERE "order" = {k3};
               UPDATE snapshot SET "naïve col" = '{{"a": null}}', "select" = NULL WHERE "order" = {k4};
               DELETE FROM snapshot WHERE "order" = {k5};"#
        ))
        .await;
        backfill(&b, &m, 64, None).await;
        let report = verify(&b, &m).await;
        assert!(report.diffs.is_empty(), "{:?}", report.diffs);
        assert_eq!(report.rows, 800 + o / 10);
        cutover(&b, &m).await;
        // Writes in the new shape, which the reverse triggers carry back.
        db.exec(&format!(
            r#"INSERT INTO {t} ("Région", "order", "select", "When ""exactly""") VALUES ('after', {n2}, 8, '2025-01-01');
               UPDATE {t} SET "select" = "select" + 2 WHERE "order" = {k6};
               INSERT INTO snapshot ("Région", "order", "select", "Mixed Case", "uuid") SELECT 'after', {n2}, 4, '2025-01-01', "uuid" FROM {t} WHERE "order" = {n2};
               UPDATE snapshot SET "select" = "select" + 1 WHERE "order" = {k6};"#
        ))
        .await;
        if round == "rollback" {
            b.rollback(&m, &state(&m.name, "rolled_back"))
                .await
                .expect("rollback");
            let cols = r#""Région", "order", "select", "Mixed Case", "naïve col", "b y t e s", "uuid", "ints", "found""#;
            assert_same(
                &db.rows(&format!("SELECT {cols} FROM {t} ORDER BY 1, 2"))
                    .await,
                &db.rows(&format!("SELECT {cols} FROM snapshot ORDER BY 1, 2"))
                    .await,
                "after rollback",
            );
            assert_clean(&db, r#"My "Schema" ü"#, r#"Order Table "x""#).await;
        } else {
            b.cleanup(&m, false, &state(&m.name, "done"))
                .await
                .expect("cleanup");
            assert_same(
                &db.rows(&format!(
                    r#"SELECT "Région", "order", "select" / 2, "When ""exactly""", "naïve col", "b y t e s", "uuid", "ints", "found",
                       "Größe" IS NOT DISTINCT FROM (coalesce(array_length("ints", 1), 0) + length("found")) FROM {t} ORDER BY 1, 2"#
                ))
                .await,
                &db.rows(
                    r#"SELECT "Région", "order", "select", "Mixed Case", "naïve col", "b y t e s", "uuid", "ints", "found", true FROM snapshot ORDER BY 1, 2"#
                )
                .await,
                "after the migration",
            );
            assert_clean(&db, r#"My "Schema" ü"#, r#"Order Table "x""#).await;
            let idx = db
                .rows(&format!(
                    "SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = '{}'::regclass ORDER BY 1",
                    t.replace('\'', "''")
                ))
                .await;
            assert_eq!(idx.len(), 3, "{idx:?}");
        }
    }
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_planted_differences_by_key() {
    let db = orders_db(500).await;
    let b = db.backend().await;
    let m = derive(&b, ORDERS_PLAN).await;
    b.prepare(&m, &state(&m.name, "prepared"))
        .await
        .expect("prepare");
    b.start_dual_write(&m, &state(&m.name, "dual_writing"))
        .await
        .expect("dual-write");
    backfill(&b, &m, 100, None).await;
    assert!(verify(&b, &m).await.diffs.is_empty());
    db.exec(
        "UPDATE sales._orders_new SET comment = 'planted' WHERE id = 42; \
         DELETE FROM sales._orders_new WHERE id = 77; \
         INSERT INTO sales._orders_new (id, customer_id, status, amount) VALUES (9999, 1, 'X', 1);",
    )
    .await;
    let report = verify(&b, &m).await;
    let keys: Vec<&str> = report.diffs.iter().map(|d| d.key.as_str()).collect();
    assert_eq!(keys, ["[42]", "[77]", "[9999]"], "{:?}", report.diffs);
    let changed = &report.diffs[0];
    assert!(
        changed
            .shadow
            .as_deref()
            .is_some_and(|s| s.contains("planted"))
    );
    assert!(
        changed
            .expected
            .as_deref()
            .is_some_and(|s| !s.contains("planted"))
    );
    assert!(report.diffs[1].shadow.is_none() && report.diffs[1].expected.is_some());
    assert!(report.diffs[2].expected.is_none() && report.diffs[2].shadow.is_some());
    // Sampling skips chunks but still walks the whole table.
    let sampled = b
        .verify(
            &m,
            &VerifyRequest {
                chunk_rows: 50,
                sample_rate: Some(0.0),
                max_diffs: 5,
                workers: 1,
            },
            &|_| {},
            &|| false,
        )
        .await
        .expect("verify");
    assert_eq!(sampled.chunks, 0);
    // Ten full chunks, and the open-ended one after the last live key.
    assert_eq!(sampled.chunks_skipped, 11);
    b.rollback(&m, &state(&m.name, "rolled_back"))
        .await
        .expect("rollback");
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutover_against_a_held_lock_times_out_and_changes_nothing() {
    let db = orders_db(200).await;
    let b = db.backend().await;
    let m = derive(&b, ORDERS_PLAN).await;
    b.prepare(&m, &state(&m.name, "prepared"))
        .await
        .expect("prepare");
    b.start_dual_write(&m, &state(&m.name, "dual_writing"))
        .await
        .expect("dual-write");
    backfill(&b, &m, 100, None).await;
    b.save_state(&state(&m.name, "verified"))
        .await
        .expect("save");
    let catalog = "SELECT relname::text FROM pg_class WHERE relnamespace = 'sales'::regnamespace \
                   UNION ALL SELECT tgname::text FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1";
    let before = db.rows(catalog).await;

    let mut holder = db.pool.begin().await.expect("begin");
    sqlx::query("SELECT count(*) FROM sales.orders")
        .execute(&mut *holder)
        .await
        .expect("read");
    let outcome = b
        .cutover(&m, Duration::from_millis(200), &state(&m.name, "cut_over"))
        .await
        .expect("cutover");
    assert_eq!(outcome, CutoverOutcome::LockTimeout);
    assert_eq!(db.rows(catalog).await, before);
    let row = b.load_state(&m.name).await.expect("load").expect("row");
    assert_eq!(row.phase, "verified");
    holder.rollback().await.expect("release");

    cutover(&b, &m).await;
    assert_eq!(
        b.load_state(&m.name)
            .await
            .expect("load")
            .expect("row")
            .phase,
        "cut_over"
    );
    // Cutover again (a resume after a crash past the commit) only saves the state.
    assert_eq!(
        b.cutover(&m, Duration::from_millis(200), &state(&m.name, "cut_over"))
            .await
            .expect("cutover"),
        CutoverOutcome::Swapped
    );
    b.rollback(&m, &state(&m.name, "rolled_back"))
        .await
        .expect("rollback");
    assert_same(
        &db.rows(AS_OLD).await,
        &db.rows(MIRROR).await,
        "after rollback",
    );
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_backend_gets_lock_held_with_the_holder() {
    let db = TestDb::new().await;
    let first = db.backend().await;
    let second = db.backend().await;
    first.lock("m1").await.expect("first lock");
    match second.lock("m1").await {
        Err(turnout::Error::LockHeld { name, holder }) => {
            assert_eq!(name, "m1");
            assert!(
                holder.contains("pid") && holder.contains("turnout"),
                "{holder}"
            );
        }
        other => panic!("expected LockHeld, got {other:?}"),
    }
    // Another migration is not blocked.
    second.lock("m2").await.expect("other migration");
    first.unlock("m1").await.expect("unlock");
    second.lock("m1").await.expect("lock after unlock");
    // Dropping a backend ends its session and frees its locks.
    drop(second);
    let third = db.backend().await;
    for _ in 0..50 {
        if third.lock("m1").await.is_ok() {
            db.drop().await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the lock outlived its backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_and_identity_keys_keep_counting_after_cutover_and_rollback() {
    let db = TestDb::new().await;
    db.exec(
        "CREATE TABLE s (id serial PRIMARY KEY, v text); \
         CREATE TABLE i (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text); \
         INSERT INTO s (v) SELECT 'v' || g FROM generate_series(1, 300) g; \
         INSERT INTO i (v) SELECT 'v' || g FROM generate_series(1, 300) g;",
    )
    .await;
    let b = db.backend().await;
    for (table, finish) in [
        ("s", "cleanup"),
        ("i", "cleanup"),
        ("s", "rollback"),
        ("i", "rollback"),
    ] {
        let plan = format!(
            "version: 1\nname: keys-{table}-{finish}\ntable: {table}\nchanges:\n  - add_column: {{name: w, type: text, from: upper(v)}}\n"
        );
        let m = derive(&b, &plan).await;
        b.prepare(&m, &state(&m.name, "prepared"))
            .await
            .expect("prepare");
        b.start_dual_write(&m, &state(&m.name, "dual_writing"))
            .await
            .expect("dual-write");
        db.exec(&format!("INSERT INTO {table} (v) VALUES ('during')"))
            .await;
        backfill(&b, &m, 70, None).await;
        assert!(verify(&b, &m).await.diffs.is_empty());
        cutover(&b, &m).await;
        let max = db
            .scalar(&format!("SELECT max(id)::bigint FROM {table}"))
            .await;
        let new_id = db
            .scalar(&format!(
                "INSERT INTO {table} (v) VALUES ('after') RETURNING id::bigint"
            ))
            .await;
        assert!(new_id > max, "{table}: new id {new_id} after max {max}");
        if finish == "cleanup" {
            b.cleanup(&m, false, &state(&m.name, "done"))
                .await
                .expect("cleanup");
            // The sequence survived the old table.
            let next = db
                .scalar(&format!(
                    "INSERT INTO {table} (v, w) VALUES ('later', 'L') RETURNING id::bigint"
                ))
                .await;
            assert!(next > new_id);
            // Later migrations drop the column again; keep the test's plan valid.
            db.exec(&format!("ALTER TABLE {table} DROP COLUMN w")).await;
        } else {
            b.rollback(&m, &state(&m.name, "rolled_back"))
                .await
                .expect("rollback");
            let max = db
                .scalar(&format!("SELECT max(id)::bigint FROM {table}"))
                .await;
            let next = db
                .scalar(&format!(
                    "INSERT INTO {table} (v) VALUES ('rolled back') RETURNING id::bigint"
                ))
                .await;
            assert!(next > max, "{table}: id {next} after rollback, max {max}");
            assert_clean(&db, "public", table).await;
        }
    }
    let kind = db
        .rows("SELECT attidentity::text FROM pg_attribute WHERE attrelid = 'i'::regclass AND attname = 'id'")
        .await;
    assert_eq!(kind[0][0].as_deref(), Some("a"));
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_that_do_not_fit_are_named_rejected_or_recorded() {
    let db = TestDb::new().await;
    db.exec(
        "CREATE TABLE t (id integer PRIMARY KEY, code text); \
         INSERT INTO t SELECT g, CASE WHEN g = 37 THEN 'toolong' ELSE 'ok' || (g % 10) END FROM generate_series(1, 100) g;",
    )
    .await;
    let b = db.backend().await;
    let plan = |on_error: &str| {
        format!(
            "version: 1\nname: narrow-{on_error}\ntable: t\nchanges:\n  - alter_column: {{name: code, type: 'varchar(3)'}}\ndual_write:\n  on_error: {on_error}\n"
        )
    };
    // Backfill names the row and the column.
    let m = derive(&b, &plan("reject")).await;
    b.prepare(&m, &state(&m.name, "prepared"))
        .await
        .expect("prepare");
    b.start_dual_write(&m, &state(&m.name, "dual_writing"))
        .await
        .expect("dual-write");
    let err = b
        .copy_batch(&m, None, 1000, &|_| state(&m.name, "dual_writing"))
        .await
        .expect_err("the long value does not fit");
    match err {
        turnout::Error::Data { key, column, .. } => {
            assert_eq!(key, "[37]");
            assert_eq!(column, "code");
        }
        other => panic!("expected Data, got {other}"),
    }
    // reject: the application's write fails.
    assert!(
        sqlx::query("INSERT INTO t VALUES (500, 'much too long')")
            .execute(&db.pool)
            .await
            .is_err()
    );
    b.rollback(&m, &state(&m.name, "rolled_back"))
        .await
        .expect("rollback");

    // record: the write stands, the failure is recorded, verify flags the row.
    db.exec("UPDATE t SET code = 'ok' WHERE id = 37").await;
    let m = derive(&b, &plan("record")).await;
    b.prepare(&m, &state(&m.name, "prepared"))
        .await
        .expect("prepare");
    b.start_dual_write(&m, &state(&m.name, "dual_writing"))
        .await
        .expect("dual-write");
    backfill(&b, &m, 30, None).await;
    db.exec("UPDATE t SET code = 'much too long' WHERE id = 12")
        .await;
    let failures = b.trigger_failures(&m).await.expect("failures");
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(
        failures[0].starts_with("forward") && failures[0].contains("[12]"),
        "{failures:?}"
    );
    let report = verify(&b, &m).await;
    assert_eq!(report.diffs.len(), 1);
    assert_eq!(report.diffs[0].key, "[12]");
    b.rollback(&m, &state(&m.name, "rolled_back"))
        .await
        .expect("rollback");
    assert_clean(&db, "public", "t").await;
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_refuses_what_it_cannot_carry() {
    let db = TestDb::new().await;
    db.exec(
        "CREATE TABLE p (id integer PRIMARY KEY, a integer CHECK (a > 0), b text); \
         CREATE INDEX p_lower ON p (lower(b)); \
         CREATE MATERIALIZED VIEW pv AS SELECT * FROM p;",
    )
    .await;
    let b = db.backend().await;
    let plan = turnout::plan::parse(
        "version: 1\nname: refuse\ntable: p\nchanges:\n  - add_column: {name: c, type: integer, from: no_such_column + 1}\n  - drop_column: {name: b}\n",
        "p.yaml",
    )
    .expect("plan");
    match turnout::engine::derive(&b, &plan).await {
        Err(turnout::Error::Refused { problems, .. }) => {
            let all = problems.join("\n");
            // The index uses the dropped column; the CHECK is carried.
            for needle in [
                "index \"p_lower\" uses column \"b\"",
                "pv",
                "no_such_column",
            ] {
                assert!(all.contains(needle), "{needle} missing from:\n{all}");
            }
            assert!(!all.contains("p_a_check"), "{all}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    db.drop().await;
}
