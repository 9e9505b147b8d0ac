//! The MySQL/MariaDB backend against a real server, through the `Backend` trait alone.
//! Each test makes its own database and drops it at the end. A concurrent writer keeps a
//! mirror table in the same transaction as each write, so "no write lost or doubled"
//! is checked as exact equality with the mirror.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use sqlx::mysql::{MySqlPool, MySqlPoolOptions};
use sqlx::{AssertSqlSafe, Row};
use turnout::Error;
use turnout::db::mysql::MySql;
use turnout::db::{Backend, BatchDone, CutoverOutcome, StateRow, VerifyRequest};
use turnout::schema::Migration;

const SERVER: &str = "mysql://root@127.0.0.1:3306";

struct TestDb {
    name: String,
    url: String,
    admin: MySqlPool,
}

impl TestDb {
    async fn new() -> TestDb {
        let name = format!("turnout_t_{:016x}", rand::random::<u64>());
        let admin = MySqlPoolOptions::new()
            .max_connections(2)
            .connect(&format!("{SERVER}/test"))
            .await
            .expect("server");
        exec(
            &admin,
            &format!("CREATE DATABASE `{name}` CHARACTER SET utf8mb4"),
        )
        .await;
        TestDb {
            url: format!("{SERVER}/{name}"),
            name,
            admin,
        }
    }

    async fn pool(&self) -> MySqlPool {
        MySqlPoolOptions::new()
            .max_connections(4)
            .connect(&self.url)
            .await
            .expect("pool")
    }

    async fn drop(self) {
        exec(&self.admin, &format!("DROP DATABASE `{}`", self.name)).await;
    }
}

async fn exec(pool: &MySqlPool, sql: &str) {
    sqlx::raw_sql(AssertSqlSafe(sql.to_string()))
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

async fn strings(pool: &MySqlPool, sql: &str) -> Vec<String> {
    sqlx::query(AssertSqlSafe(sql.to_string()))
        .fetch_all(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| {
            r.try_get::<Option<String>, _>(0)
                .expect("text")
                .unwrap_or_default()
        })
        .collect()
}

fn state(m: &Migration, phase: &str) -> StateRow {
    StateRow {
        name: m.name.clone(),
        plan_hash: "h".into(),
        phase: phase.into(),
        body: "{}".into(),
    }
}

async fn migration(b: &MySql, yaml: &str) -> Migration {
    let plan = turnout::plan::parse(yaml, "plan.yaml").expect("plan parses");
    let before = b
        .describe(None, &plan.file.table)
        .await
        .expect("describe")
        .expect("table exists");
    let m = Migration::derive(&plan, &before).expect("derives");
    let problems = b.preflight(&m).await.expect("preflight runs");
    assert!(problems.is_empty(), "preflight: {problems:?}");
    m
}

async fn backfill(b: &MySql, m: &Migration, batch: u64, max_batches: Option<usize>) {
    let mut cursor = None;
    let mut n = 0;
    loop {
        let done: BatchDone = b
            .copy_batch(m, cursor.as_ref(), batch, &|_d| state(m, "dual_writing"))
            .await
            .expect("batch");
        n += 1;
        if done.rows == 0 || max_batches.is_some_and(|x| n >= x) {
            break;
        }
        cursor = done.last;
    }
    if max_batches.is_none() {
        b.finish_backfill(m).await.expect("finish");
    }
}

async fn verify(b: &MySql, m: &Migration) -> turnout::db::VerifyReport {
    let req = VerifyRequest {
        chunk_rows: 97,
        sample_rate: None,
        max_diffs: 20,
        workers: 3,
    };
    b.verify(m, &req, &|_| {}, &|| false).await.expect("verify")
}

async fn cutover(b: &MySql, m: &Migration) {
    for _ in 0..20 {
        match b
            .cutover(m, Duration::from_secs(1), &state(m, "cut_over"))
            .await
            .expect("cutover")
        {
            CutoverOutcome::Swapped => return,
            CutoverOutcome::LockTimeout => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    panic!("cutover never got its lock");
}

/// Nothing of turnout's is left but its own state tables.
async fn assert_clean(db: &TestDb, pool: &MySqlPool, keep: &[&str]) {
    let tables = strings(
        pool,
        &format!(
            "SELECT CAST(TABLE_NAME AS CHAR) FROM information_schema.TABLES WHERE TABLE_SCHEMA = '{}' ORDER BY 1",
            db.name
        ),
    )
    .await;
    let extra: Vec<_> = tables
        .iter()
        .filter(|t| !keep.contains(&t.as_str()) && !t.starts_with("turnout_"))
        .collect();
    assert!(extra.is_empty(), "left behind: {extra:?}");
    let triggers = strings(
        pool,
        &format!("SELECT CAST(TRIGGER_NAME AS CHAR) FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = '{}'", db.name),
    )
    .await;
    assert!(triggers.is_empty(), "triggers left: {triggers:?}");
}

// ---------------------------------------------------------------------------------------
// The writer: random inserts, updates (key changes included) and deletes on `t`, each in
// one transaction with the same change to `mirror`. It writes whichever shape `t` has
// (an unknown column flips it), so it runs straight through cutover and rollback.

const ORDERS_PLAN: &str = r#"
version: 1
name: orders-reshape
table: t
changes:
  - add_column: {name: amount, type: "decimal(12,2)", nullable: true, from: "amount_cents / 100"}
  - drop_column: {name: amount_cents, reverse: "CAST(amount * 100 AS SIGNED)"}
  - alter_column: {name: status, type: "varchar(64)", using: "upper(status)", reverse: "lower(status)"}
  - rename_column: {from: note, to: comment}
  - add_index: {name: t_status_idx, columns: [status]}
"#;

async fn orders_table(pool: &MySqlPool, rows: usize) {
    exec(pool, "CREATE TABLE t (id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, amount_cents INT NOT NULL, status VARCHAR(20) NOT NULL, note TEXT NULL) ENGINE=InnoDB").await;
    exec(pool, "CREATE TABLE mirror (id BIGINT NOT NULL PRIMARY KEY, amount_cents INT NOT NULL, status VARCHAR(20) NOT NULL, note TEXT NULL) ENGINE=InnoDB").await;
    let mut values = Vec::new();
    for i in 1..=rows {
        let note = if i % 7 == 0 {
            "NULL".to_string()
        } else {
            format!("'note {i}'")
        };
        values.push(format!(
            "({i}, {}, '{}', {note})",
            i * 37 % 100_000,
            ["new", "paid", "shipped"][i % 3]
        ));
    }
    for chunk in values.chunks(500) {
        let v = chunk.join(", ");
        exec(
            pool,
            &format!("INSERT INTO t (id, amount_cents, status, note) VALUES {v}"),
        )
        .await;
        exec(
            pool,
            &format!("INSERT INTO mirror (id, amount_cents, status, note) VALUES {v}"),
        )
        .await;
    }
}

/// A table of `rows` orders, its migration prepared and dual-writing.
async fn orders_in_dual_write(rows: usize) -> (TestDb, MySqlPool, MySql, Migration) {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    orders_table(&pool, rows).await;
    let b = MySql::connect(&db.url).await.expect("connect");
    b.ensure_state_table().await.expect("state table");
    let m = migration(&b, ORDERS_PLAN).await;
    prepare_and_dual_write(&b, &m).await;
    (db, pool, b, m)
}

async fn prepare_and_dual_write(b: &MySql, m: &Migration) {
    b.prepare(m, &state(m, "prepared")).await.expect("prepare");
    b.start_dual_write(m, &state(m, "dual_writing"))
        .await
        .expect("dual-write");
}

/// Rolls back and checks the live table holds exactly what the writers committed.
async fn rollback_to_the_mirror(b: &MySql, m: &Migration, pool: &MySqlPool) {
    b.rollback(m, &state(m, "rolled_back"))
        .await
        .expect("rollback");
    assert_same(
        "after rollback",
        &strings(pool, T_OLD).await,
        &strings(pool, MIRROR_OLD).await,
    );
}

async fn eight_writers(db: &TestDb) -> Vec<Writer> {
    let mut writers = Vec::new();
    for i in 0..8 {
        writers.push(Writer::start(db.pool().await, 1 + i));
    }
    writers
}

/// Stops the writers; what they did, summed.
async fn finish_all(writers: Vec<Writer>) -> BTreeMap<String, u64> {
    let mut total: BTreeMap<String, u64> = BTreeMap::new();
    for w in writers {
        for (k, v) in w.finish().await {
            *total.entry(k).or_default() += v;
        }
    }
    total
}

struct Writer {
    stop: Arc<AtomicBool>,
    pause: Arc<tokio::sync::Mutex<()>>,
    /// Transactions ended so far (committed or not), for waiting on a number of them.
    ended: Arc<AtomicU64>,
    handle: tokio::task::JoinHandle<BTreeMap<String, u64>>,
}

impl Writer {
    fn start(pool: MySqlPool, seed: u64) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let pause = Arc::new(tokio::sync::Mutex::new(()));
        let ended = Arc::new(AtomicU64::new(0));
        let (s, p, e) = (stop.clone(), pause.clone(), ended.clone());
        let handle = tokio::spawn(async move { write_loop(pool, s, p, e, seed).await });
        Writer {
            stop,
            pause,
            ended,
            handle,
        }
    }

    async fn finish(self) -> BTreeMap<String, u64> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.await.expect("writer")
    }
}

async fn write_loop(
    pool: MySqlPool,
    stop: Arc<AtomicBool>,
    pause: Arc<tokio::sync::Mutex<()>>,
    ended: Arc<AtomicU64>,
    seed: u64,
) -> BTreeMap<String, u64> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut ids: Vec<i64> = strings(&pool, "SELECT CAST(id AS CHAR) FROM mirror")
        .await
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect();
    let mut stats: BTreeMap<String, u64> = BTreeMap::new();
    let mut new_shape = false;
    // Key changes go to negative ids, a range AUTO_INCREMENT never hands out.
    let mut next_key = -(seed as i64) * 1_000_000_000;
    while !stop.load(Ordering::SeqCst) {
        let _guard = pause.lock().await;
        let op = rng.random_range(0..10);
        let cents: i64 = rng.random_range(0..1_000_000);
        let status = ["new", "paid", "shipped", "returned"][rng.random_range(0..4)];
        let note: Option<String> = rng
            .random_bool(0.8)
            .then(|| format!("n{}", rng.random_range(0..1000)));
        let pick = (!ids.is_empty()).then(|| rng.random_range(0..ids.len()));
        let mut tx = pool.begin().await.expect("begin");
        let r: Result<(&str, Option<i64>, Option<i64>), sqlx::Error> = async {
            match (op, pick) {
                (0..=3, _) | (_, None) => {
                    let q = if new_shape {
                        "INSERT INTO t (amount, status, comment) VALUES (? / 100, UPPER(?), ?)"
                    } else {
                        "INSERT INTO t (amount_cents, status, note) VALUES (?, ?, ?)"
                    };
                    sqlx::query(q)
                        .bind(cents)
                        .bind(status)
                        .bind(&note)
                        .execute(&mut *tx)
                        .await?;
                    let id: i64 = sqlx::query_scalar("SELECT CAST(LAST_INSERT_ID() AS SIGNED)")
                        .fetch_one(&mut *tx)
                        .await?;
                    sqlx::query(
                        "INSERT INTO mirror (id, amount_cents, status, note) VALUES (?, ?, ?, ?)",
                    )
                    .bind(id)
                    .bind(cents)
                    .bind(status)
                    .bind(&note)
                    .execute(&mut *tx)
                    .await?;
                    Ok(("insert", Some(id), None))
                }
                (4..=6, Some(i)) => {
                    let q = if new_shape {
                        "UPDATE t SET amount = ? / 100, status = UPPER(?), comment = ? WHERE id = ?"
                    } else {
                        "UPDATE t SET amount_cents = ?, status = ?, note = ? WHERE id = ?"
                    };
                    sqlx::query(q)
                        .bind(cents)
                        .bind(status)
                        .bind(&note)
                        .bind(ids[i])
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query(
                        "UPDATE mirror SET amount_cents = ?, status = ?, note = ? WHERE id = ?",
                    )
                    .bind(cents)
                    .bind(status)
                    .bind(&note)
                    .bind(ids[i])
                    .execute(&mut *tx)
                    .await?;
                    Ok(("update", None, None))
                }
                (7, Some(i)) => {
                    let to = next_key - 1;
                    sqlx::query("UPDATE t SET id = ? WHERE id = ?")
                        .bind(to)
                        .bind(ids[i])
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query("UPDATE mirror SET id = ? WHERE id = ?")
                        .bind(to)
                        .bind(ids[i])
                        .execute(&mut *tx)
                        .await?;
                    Ok(("key change", Some(to), Some(ids[i])))
                }
                (_, Some(i)) => {
                    sqlx::query("DELETE FROM t WHERE id = ?")
                        .bind(ids[i])
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query("DELETE FROM mirror WHERE id = ?")
                        .bind(ids[i])
                        .execute(&mut *tx)
                        .await?;
                    Ok(("delete", None, Some(ids[i])))
                }
            }
        }
        .await;
        match r {
            Ok((what, added, removed)) => match tx.commit().await {
                Ok(()) => {
                    *stats.entry(what.to_string()).or_default() += 1;
                    if what == "key change" {
                        next_key -= 1;
                    }
                    if let Some(r) = removed {
                        ids.retain(|x| *x != r);
                    }
                    if let Some(a) = added {
                        ids.push(a);
                    }
                }
                Err(e) => *stats.entry(format!("commit error: {e}")).or_default() += 1,
            },
            Err(e) => {
                let _ = tx.rollback().await;
                let code = match &e {
                    sqlx::Error::Database(d) => d
                        .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                        .map(|m| m.number().to_string())
                        .unwrap_or_default(),
                    _ => String::new(),
                };
                if code == "1054" {
                    new_shape = !new_shape;
                    *stats.entry("shape flip".into()).or_default() += 1;
                } else {
                    *stats.entry(format!("error {code}")).or_default() += 1;
                }
            }
        }
        ended.fetch_add(1, Ordering::SeqCst);
        drop(_guard);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    stats
}

const MIRROR_OLD: &str = "SELECT CONCAT_WS('|', id, amount_cents, status, COALESCE(note, '<null>')) FROM mirror ORDER BY id";
const T_OLD: &str =
    "SELECT CONCAT_WS('|', id, amount_cents, status, COALESCE(note, '<null>')) FROM t ORDER BY id";
const OLD_OLD: &str = "SELECT CONCAT_WS('|', id, amount_cents, status, COALESCE(note, '<null>')) FROM _t_old ORDER BY id";
const MIRROR_NEW: &str = "SELECT CONCAT_WS('|', id, CAST(amount_cents / 100 AS DECIMAL(12,2)), UPPER(status), COALESCE(note, '<null>')) FROM mirror ORDER BY id";
const T_NEW: &str =
    "SELECT CONCAT_WS('|', id, amount, status, COALESCE(comment, '<null>')) FROM t ORDER BY id";

fn assert_same(what: &str, a: &[String], b: &[String]) {
    if a != b {
        let only_a: Vec<_> = a.iter().filter(|x| !b.contains(x)).take(5).collect();
        let only_b: Vec<_> = b.iter().filter(|x| !a.contains(x)).take(5).collect();
        panic!(
            "{what}: {} vs {} rows; only left: {only_a:?}; only right: {only_b:?}",
            a.len(),
            b.len()
        );
    }
}

/// (1) The whole migration under a concurrent writer, cutover included and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_migration_under_concurrent_writes_loses_nothing() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    orders_table(&pool, 3000).await;
    let b = MySql::connect(&db.url).await.expect("connect");
    b.ensure_state_table().await.expect("state table");
    b.lock("orders-reshape").await.expect("lock");
    let m = migration(&b, ORDERS_PLAN).await;
    let writer = Writer::start(db.pool().await, 1);

    b.prepare(&m, &state(&m, "prepared"))
        .await
        .expect("prepare");
    b.prepare(&m, &state(&m, "prepared"))
        .await
        .expect("prepare is repeatable");
    tokio::time::sleep(Duration::from_millis(200)).await;
    b.start_dual_write(&m, &state(&m, "dual_writing"))
        .await
        .expect("dual-write");
    b.start_dual_write(&m, &state(&m, "dual_writing"))
        .await
        .expect("dual-write is repeatable");
    tokio::time::sleep(Duration::from_millis(200)).await;
    backfill(&b, &m, 250, None).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Verify in a quiet moment must find nothing; under writes it must not error.
    {
        let _quiet = writer.pause.lock().await;
        let report = verify(&b, &m).await;
        assert!(report.diffs.is_empty(), "verify: {:?}", report.diffs);
        assert!(report.rows > 2000, "{report:?}");
    }
    cutover(&b, &m).await;
    cutover(&b, &m).await; // a repeat after success changes nothing
    tokio::time::sleep(Duration::from_millis(400)).await;
    {
        // After cutover the old table is kept whole through the reverse mapping.
        let _quiet = writer.pause.lock().await;
        assert_same(
            "new table vs mirror",
            &strings(&pool, T_NEW).await,
            &strings(&pool, MIRROR_NEW).await,
        );
        assert_same(
            "old table vs mirror",
            &strings(&pool, OLD_OLD).await,
            &strings(&pool, MIRROR_OLD).await,
        );
    }
    b.cleanup(&m, false, &state(&m, "done"))
        .await
        .expect("cleanup");
    b.cleanup(&m, false, &state(&m, "done"))
        .await
        .expect("cleanup is repeatable");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stats = writer.finish().await;
    eprintln!("writer: {stats:?}");
    assert!(stats.get("insert").copied().unwrap_or(0) > 20, "{stats:?}");
    assert!(
        stats.get("key change").copied().unwrap_or(0) > 2,
        "{stats:?}"
    );
    assert_same(
        "final table vs mirror",
        &strings(&pool, T_NEW).await,
        &strings(&pool, MIRROR_NEW).await,
    );
    let idx = strings(&pool, &format!("SELECT CAST(INDEX_NAME AS CHAR) FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = '{}' AND TABLE_NAME = 't' AND INDEX_NAME = 't_status_idx'", db.name)).await;
    assert_eq!(idx.len(), 1);
    assert!(b.trigger_failures(&m).await.expect("failures").is_empty());
    assert_clean(&db, &pool, &["t", "mirror"]).await;
    b.unlock(&m.name).await.expect("unlock");
    db.drop().await;
}

/// The cutover swap itself under eight concurrent writers (one mirror, one transaction
/// each): every committed write is in the new table and, via the reverse triggers, in
/// the old one, and no writer's statement fails, not even one in flight at the swap.
#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn cutover_under_eight_writers_loses_nothing() {
    let (db, pool, b, m) = orders_in_dual_write(2000).await;
    let writers = eight_writers(&db).await;
    backfill(&b, &m, 500, None).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    cutover(&b, &m).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let total = finish_all(writers).await;
    eprintln!("8 writers: {total:?}");
    assert!(
        total.get("shape flip").copied().unwrap_or(0) >= 8,
        "writers never saw the new shape: {total:?}"
    );
    // No statement in flight at the swap fails (without the sentry: error 1146 for up
    // to 22 of them in about half the runs).
    let failed: Vec<_> = total.keys().filter(|k| k.contains("error")).collect();
    assert!(failed.is_empty(), "writers saw errors: {total:?}");
    assert_same(
        "new table vs mirror",
        &strings(&pool, T_NEW).await,
        &strings(&pool, MIRROR_NEW).await,
    );
    assert_same(
        "old table vs mirror",
        &strings(&pool, OLD_OLD).await,
        &strings(&pool, MIRROR_OLD).await,
    );
    rollback_to_the_mirror(&b, &m, &pool).await;
    assert_clean(&db, &pool, &["t", "mirror"]).await;
    db.drop().await;
}

/// (2) Rollback from every phase, with writes in between: the live table equals what
/// the writer wrote and nothing of turnout's remains.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rollback_from_every_phase_is_lossless() {
    for (i, stop_at) in [
        "prepared",
        "dual_writing",
        "mid_backfill",
        "backfilled",
        "verified",
        "cut_over",
    ]
    .iter()
    .enumerate()
    {
        let db = TestDb::new().await;
        let pool = db.pool().await;
        orders_table(&pool, 800).await;
        let b = MySql::connect(&db.url).await.expect("connect");
        b.ensure_state_table().await.expect("state table");
        let m = migration(&b, ORDERS_PLAN).await;
        let writer = Writer::start(db.pool().await, 100 + i as u64);
        let pause = || tokio::time::sleep(Duration::from_millis(150));
        b.prepare(&m, &state(&m, "prepared"))
            .await
            .expect("prepare");
        pause().await;
        if *stop_at != "prepared" {
            b.start_dual_write(&m, &state(&m, "dual_writing"))
                .await
                .expect("dual-write");
            pause().await;
        }
        match *stop_at {
            "mid_backfill" => backfill(&b, &m, 100, Some(3)).await,
            "backfilled" | "verified" | "cut_over" => backfill(&b, &m, 300, None).await,
            _ => {}
        }
        pause().await;
        if matches!(*stop_at, "verified" | "cut_over") {
            let _quiet = writer.pause.lock().await;
            assert!(verify(&b, &m).await.diffs.is_empty());
        }
        if *stop_at == "cut_over" {
            cutover(&b, &m).await;
            pause().await;
        }
        b.rollback(&m, &state(&m, "rolled_back"))
            .await
            .unwrap_or_else(|e| panic!("rollback from {stop_at}: {e}"));
        b.rollback(&m, &state(&m, "rolled_back"))
            .await
            .expect("rollback is repeatable");
        pause().await;
        let stats = writer.finish().await;
        eprintln!("{stop_at}: writer {stats:?}");
        assert_same(
            &format!("rollback from {stop_at}"),
            &strings(&pool, T_OLD).await,
            &strings(&pool, MIRROR_OLD).await,
        );
        assert_clean(&db, &pool, &["t", "mirror"]).await;
        db.drop().await;
    }
}

/// (3) Hostile names, a composite key and awkward types survive the whole round trip.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_names_composite_keys_and_awkward_types() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    exec(&pool, "CREATE TABLE `ta``blé order` (`key part` INT NOT NULL, `select` VARCHAR(20) NOT NULL, `doc` JSON NULL, `bin` BLOB NULL, `amt` DECIMAL(20,6) NULL, `at` DATETIME(6) NULL, `tëxt` TEXT NULL, PRIMARY KEY (`key part`, `select`)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4").await;
    exec(&pool, "INSERT INTO `ta``blé order` VALUES (1, 'a', '{\"k\": [1, 2]}', X'00FF10', 12345678901234.123456, '2024-02-29 23:59:59.123456', 'emoji 🙂🚀 ok'), (1, 'b', NULL, NULL, NULL, NULL, NULL), (2, 'a`b', '[]', X'', -0.000001, '1970-01-01 00:00:01.000000', '')").await;
    let b = MySql::connect(&db.url).await.expect("connect");
    b.ensure_state_table().await.expect("state");
    let plan = r#"
version: 1
name: "hostile `name` ünïcode"
table: "ta`blé order"
changes:
  - rename_column: {from: "tëxt", to: "the `text`"}
  - add_column: {name: "from", type: "varchar(80)", nullable: true, from: "CONCAT(`select`, '#', `key part`)"}
  - add_index: {name: "idx ``x", columns: ["from"], unique: true}
"#;
    let m = migration(&b, plan).await;
    prepare_and_dual_write(&b, &m).await;
    exec(&pool, "INSERT INTO `ta``blé order` VALUES (3, 'z', '{\"e\": \"🙂\"}', X'AB', 1.5, NULL, 'née 🙂')").await;
    backfill(&b, &m, 1, None).await;
    exec(&pool, "UPDATE `ta``blé order` SET `key part` = 9, `tëxt` = NULL WHERE `key part` = 1 AND `select` = 'b'").await;
    exec(&pool, "DELETE FROM `ta``blé order` WHERE `select` = 'a`b'").await;
    let report = verify(&b, &m).await;
    assert!(report.diffs.is_empty(), "{:?}", report.diffs);
    assert_eq!(report.rows, 3);
    cutover(&b, &m).await;
    exec(&pool, "INSERT INTO `ta``blé order` (`key part`, `select`, `the ``text```) VALUES (4, 'q', 'after 🚀')").await;
    let old = strings(&pool, "SELECT CONCAT_WS('|', `key part`, `select`, `tëxt`) FROM `_ta``blé order_old` WHERE `key part` = 4").await;
    assert_eq!(old, ["4|q|after 🚀"]);
    b.cleanup(&m, true, &state(&m, "done"))
        .await
        .expect("cleanup");
    let rows = strings(&pool, "SELECT CONCAT_WS('|', `key part`, `select`, COALESCE(JSON_EXTRACT(doc, '$'), '-'), COALESCE(HEX(`bin`), '-'), COALESCE(amt, '-'), COALESCE(`at`, '-'), COALESCE(`the ``text```, '-'), `from`) FROM `ta``blé order` ORDER BY 1").await;
    assert_eq!(
        rows,
        [
            "1|a|{\"k\": [1, 2]}|00FF10|12345678901234.123456|2024-02-29 23:59:59.123456|emoji 🙂🚀 ok|a#1",
            "3|z|{\"e\": \"🙂\"}|AB|1.500000|-|née 🙂|z#3",
            "4|q|-|-|-|-|after 🚀",
            "9|b|-|-|-|-|-|b#9",
        ]
    );
    // keep_old_table: the old table stays, without triggers.
    assert_clean(&db, &pool, &["ta`blé order", "_ta`blé order_old"]).await;
    db.drop().await;
}

/// (4) A value that does not fit stops the backfill naming key and column.
#[tokio::test(flavor = "multi_thread")]
async fn a_value_that_does_not_fit_stops_backfill_with_its_key() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    exec(
        &pool,
        "CREATE TABLE t (id INT PRIMARY KEY, code VARCHAR(10) NOT NULL) ENGINE=InnoDB",
    )
    .await;
    exec(
        &pool,
        "INSERT INTO t VALUES (1, 'ab'), (2, 'abc'), (3, 'abcdef'), (4, 'x')",
    )
    .await;
    let b = MySql::connect(&db.url).await.expect("connect");
    b.ensure_state_table().await.expect("state");
    let m = migration(&b, "version: 1\nname: narrow\ntable: t\nchanges:\n  - alter_column: {name: code, type: 'varchar(3)'}\n").await;
    prepare_and_dual_write(&b, &m).await;
    let err = b
        .copy_batch(&m, None, 100, &|_| state(&m, "checkpointed"))
        .await
        .expect_err("must stop");
    match &err {
        Error::Data { key, column, .. } => {
            assert_eq!(key, "3");
            assert_eq!(column, "code");
        }
        other => panic!("expected Error::Data, got {other}"),
    }
    // Nothing of the failed batch was kept, and the checkpoint did not move.
    assert_eq!(
        strings(&pool, "SELECT CAST(COUNT(*) AS CHAR) FROM _t_new").await,
        ["0"]
    );
    assert_eq!(
        b.load_state("narrow")
            .await
            .expect("load")
            .expect("state")
            .phase,
        "dual_writing"
    );
    // The trigger refuses such a write too (on_error: reject is not the default; record
    // is): the application's write is kept and the failure recorded.
    exec(&pool, "INSERT INTO t VALUES (5, 'toolong')").await;
    let failures = b.trigger_failures(&m).await.expect("failures");
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(failures[0].contains('5'), "{failures:?}");
    b.rollback(&m, &state(&m, "rolled_back"))
        .await
        .expect("rollback");
    assert_clean(&db, &pool, &["t"]).await;
    db.drop().await;
}

/// (5) Verify reports a planted difference with its key, and a missing and an extra row.
#[tokio::test(flavor = "multi_thread")]
async fn verify_reports_planted_differences() {
    let (db, pool, b, m) = orders_in_dual_write(500).await;
    backfill(&b, &m, 200, None).await;
    assert!(verify(&b, &m).await.diffs.is_empty());
    exec(&pool, "UPDATE _t_new SET status = 'WRONG' WHERE id = 7").await;
    exec(&pool, "DELETE FROM _t_new WHERE id = 300").await;
    // A decimal a cent off and a NULL turned into an empty string: columns verify
    // hashes as they are, without a cast.
    exec(
        &pool,
        "UPDATE _t_new SET amount = amount + 0.01 WHERE id = 150",
    )
    .await;
    exec(&pool, "UPDATE _t_new SET comment = '' WHERE id = 14").await;
    exec(
        &pool,
        "INSERT INTO _t_new (id, status, amount) VALUES (99999, 'GHOST', 1)",
    )
    .await;
    let report = verify(&b, &m).await;
    let keys: Vec<&str> = report.diffs.iter().map(|d| d.key.as_str()).collect();
    assert_eq!(
        keys,
        ["7", "14", "150", "300", "99999"],
        "{:?}",
        report.diffs
    );
    let d7 = &report.diffs[0];
    assert!(
        d7.expected.as_deref().is_some_and(|e| !e.contains("WRONG")),
        "{d7:?}"
    );
    assert!(
        d7.shadow.as_deref().is_some_and(|e| e.contains("WRONG")),
        "{d7:?}"
    );
    assert!(report.diffs[3].shadow.is_none() && report.diffs[4].expected.is_none());
    // A sample checks fewer chunks; stop() ends early.
    let req = VerifyRequest {
        chunk_rows: 50,
        sample_rate: Some(0.0),
        max_diffs: 5,
        workers: 2,
    };
    let sampled = b
        .verify(&m, &req, &|_| {}, &|| false)
        .await
        .expect("sample");
    assert_eq!(sampled.chunks, 0);
    assert!(sampled.chunks_skipped > 5);
    b.rollback(&m, &state(&m, "rolled_back"))
        .await
        .expect("rollback");
    db.drop().await;
}

/// (6) A second turnout on the same migration is refused, naming the holder.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_lock_is_refused_with_the_holder() {
    let db = TestDb::new().await;
    let a = MySql::connect(&db.url).await.expect("connect");
    let b = MySql::connect(&db.url).await.expect("connect");
    a.lock("m").await.expect("first lock");
    a.lock("m").await.expect("the holder may ask again");
    match b.lock("m").await {
        Err(Error::LockHeld { name, holder }) => {
            assert_eq!(name, "m");
            assert!(
                holder.contains("connection") && holder.contains("root"),
                "{holder}"
            );
        }
        other => panic!("expected LockHeld, got {:?}", other.err()),
    }
    a.unlock("m").await.expect("unlock");
    b.lock("m").await.expect("free again");
    b.unlock("m").await.expect("unlock");
    db.drop().await;
}

/// (7) Cutover while another session holds the table: LockTimeout, the names unchanged,
/// and a later attempt succeeds.
#[tokio::test(flavor = "multi_thread")]
async fn cutover_times_out_cleanly_behind_a_long_transaction() {
    let (db, pool, b, m) = orders_in_dual_write(100).await;
    backfill(&b, &m, 1000, None).await;
    let mut holder = pool.acquire().await.expect("conn");
    sqlx::raw_sql("START TRANSACTION; SELECT COUNT(*) FROM t;")
        .execute(&mut *holder)
        .await
        .expect("hold");
    let started = std::time::Instant::now();
    let outcome = b
        .cutover(&m, Duration::from_secs(1), &state(&m, "cut_over"))
        .await
        .expect("cutover");
    assert_eq!(outcome, CutoverOutcome::LockTimeout);
    assert!(started.elapsed() < Duration::from_secs(10));
    let tables = strings(&pool, &format!("SELECT CAST(TABLE_NAME AS CHAR) FROM information_schema.TABLES WHERE TABLE_SCHEMA = '{}' AND TABLE_NAME IN ('t', '_t_new', '_t_old')", db.name)).await;
    let mut tables = tables;
    tables.sort();
    assert_eq!(tables, ["_t_new", "t"]);
    assert_eq!(strings(&pool, "SELECT CAST(COUNT(*) AS CHAR) FROM information_schema.COLUMNS WHERE TABLE_NAME = 't' AND COLUMN_NAME = 'amount_cents' AND TABLE_SCHEMA = DATABASE()").await, ["1"]);
    // Writes still reach the shadow (the forward direction is still the active one).
    exec(
        &pool,
        "INSERT INTO t (amount_cents, status) VALUES (5, 'new')",
    )
    .await;
    sqlx::raw_sql("COMMIT")
        .execute(&mut *holder)
        .await
        .expect("release");
    drop(holder);
    assert!(verify(&b, &m).await.diffs.is_empty());
    cutover(&b, &m).await;
    b.rollback(&m, &state(&m, "rolled_back"))
        .await
        .expect("rollback");
    db.drop().await;
}

/// (8) AUTO_INCREMENT continues above every id the live table ever handed out.
#[tokio::test(flavor = "multi_thread")]
async fn auto_increment_continues_above_existing_ids() {
    let (db, pool, b, m) = orders_in_dual_write(100).await;
    exec(&pool, "DELETE FROM t WHERE id > 90").await; // counter stays at 101
    backfill(&b, &m, 1000, None).await;
    cutover(&b, &m).await;
    b.cleanup(&m, false, &state(&m, "done"))
        .await
        .expect("cleanup");
    exec(&pool, "INSERT INTO t (amount, status) VALUES (1.00, 'NEW')").await;
    let id = strings(&pool, "SELECT CAST(MAX(id) AS CHAR) FROM t").await;
    let id: i64 = id[0].parse().expect("id");
    assert!(id >= 101, "new id {id} reuses a handed-out id");
    db.drop().await;
}

/// (9) The triggers add no deadlocks: eight writers on a table in dual-write, most of
/// its rows not copied yet, deadlock no more than one transaction in a hundred (the
/// same writers without triggers: none; with DELETE-then-INSERT triggers: about 15 %).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dual_write_triggers_add_no_deadlocks() {
    let (db, pool, b, m) = orders_in_dual_write(2000).await;
    let writers = eight_writers(&db).await;
    // A first batch, so writes fall both on copied rows and on rows not copied yet.
    backfill(&b, &m, 500, Some(1)).await;
    // A number of transactions rather than a time, so a loaded machine tests as much.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while writers
        .iter()
        .map(|w| w.ended.load(Ordering::SeqCst))
        .sum::<u64>()
        < 1500
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let total = finish_all(writers).await;
    let deadlocks = total.get("error 1213").copied().unwrap_or(0);
    let done: u64 = ["insert", "update", "key change", "delete"]
        .iter()
        .map(|k| total.get(*k).copied().unwrap_or(0))
        .sum();
    assert!(done > 500, "the writers hardly wrote: {total:?}");
    assert!(deadlocks * 100 <= done, "{deadlocks} deadlocks: {total:?}");
    rollback_to_the_mirror(&b, &m, &pool).await;
    db.drop().await;
}

/// (10) A write that clashes on a unique index only the new shape has, on a row not
/// copied yet: the upsert in the update trigger never rewrites the other row. `record` keeps the application's
/// write and records the clash by name; `reject` fails the application's statement.
#[tokio::test(flavor = "multi_thread")]
async fn a_unique_clash_in_the_new_shape_never_rewrites_the_other_row() {
    for on_error in ["record", "reject"] {
        let db = TestDb::new().await;
        let pool = db.pool().await;
        exec(&pool, "CREATE TABLE u (id INT NOT NULL PRIMARY KEY, email VARCHAR(40) NOT NULL, note VARCHAR(40) NULL) ENGINE=InnoDB").await;
        exec(
            &pool,
            "INSERT INTO u VALUES (1, 'a@x', 'first'), (2, 'b@x', 'second')",
        )
        .await;
        let b = MySql::connect(&db.url).await.expect("connect");
        b.ensure_state_table().await.expect("state table");
        let plan = format!(
            "version: 1\nname: unique-email\ntable: u\nchanges:\n  - add_index: {{name: u_email, columns: [email], unique: true}}\ndual_write:\n  on_error: {on_error}\n"
        );
        let m = migration(&b, &plan).await;
        prepare_and_dual_write(&b, &m).await;
        // Row 1 copied, row 2 not yet: the update trigger inserts row 2, and its email
        // clashes with row 1's.
        backfill(&b, &m, 1, Some(1)).await;
        let clash = sqlx::query("UPDATE u SET email = 'a@x', note = 'clash' WHERE id = 2")
            .execute(&pool)
            .await;
        let shadow = strings(
            &pool,
            "SELECT CONCAT_WS('|', id, email, COALESCE(note, '-')) FROM _u_new ORDER BY id",
        )
        .await;
        assert_eq!(shadow[0], "1|a@x|first", "{on_error}: {shadow:?}");
        let failures = b.trigger_failures(&m).await.expect("failures");
        match on_error {
            "record" => {
                clash.expect("record keeps the application's write");
                assert_eq!(shadow.len(), 1, "the clashing row is left out: {shadow:?}");
                assert!(
                    failures.len() == 1
                        && failures[0].contains("forward 2")
                        && failures[0].contains("clashes with another row on a unique index"),
                    "{failures:?}"
                );
            }
            _ => {
                assert!(clash.is_err(), "reject fails the application's statement");
                assert_eq!(shadow, ["1|a@x|first"]);
                assert!(failures.is_empty(), "{failures:?}");
            }
        }
        b.rollback(&m, &state(&m, "rolled_back"))
            .await
            .expect("rollback");
        db.drop().await;
    }
}

/// (11) Building the deferred indexes picks up where a killed turnout left off: an
/// index already there is kept, and finishing twice changes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn the_index_build_resumes_where_it_stopped() {
    let (db, pool, b, m) = orders_in_dual_write(300).await;
    assert!(
        !index_names(&pool, "_t_new")
            .await
            .contains(&"t_status_idx".to_string()),
        "a non-unique index waits for the end of the copy"
    );
    backfill(&b, &m, 100, Some(3)).await;
    // What the server leaves when it finishes the ALTER of a turnout killed meanwhile.
    exec(&pool, "ALTER TABLE _t_new ADD KEY t_status_idx (status)").await;
    backfill(&b, &m, 100, None).await;
    b.finish_backfill(&m).await.expect("finishing again");
    let idx = index_names(&pool, "_t_new").await;
    assert_eq!(idx, ["PRIMARY", "t_status_idx"], "{idx:?}");
    assert!(verify(&b, &m).await.diffs.is_empty());
    b.rollback(&m, &state(&m, "rolled_back"))
        .await
        .expect("rollback");
    db.drop().await;
}

async fn index_names(pool: &MySqlPool, table: &str) -> Vec<String> {
    strings(
        pool,
        &format!(
            "SELECT DISTINCT CAST(INDEX_NAME AS CHAR) FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = '{table}' ORDER BY 1"
        ),
    )
    .await
}

/// (12) A build left running by a killed turnout: the server goes on with its ALTER.
/// Here another session's ALTER adds the same index and is held up by a reader; turnout
/// waits for it (bounded, retried) and then finds the index built instead of failing.
#[tokio::test(flavor = "multi_thread")]
async fn an_index_build_left_running_is_waited_for() {
    let (db, pool, b, m) = orders_in_dual_write(300).await;
    backfill(&b, &m, 100, Some(100)).await;
    let mut reader = pool.acquire().await.expect("conn");
    sqlx::raw_sql("START TRANSACTION; SELECT COUNT(*) FROM _t_new;")
        .execute(&mut *reader)
        .await
        .expect("reader");
    let left_running = {
        let pool = pool.clone();
        tokio::spawn(async move {
            sqlx::raw_sql(
                "ALTER TABLE _t_new ADD KEY t_status_idx (status), ALGORITHM=INPLACE, LOCK=NONE",
            )
            .execute(&pool)
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let finishing = {
        let b = MySql::connect(&db.url).await.expect("connect");
        let m = m.clone();
        tokio::spawn(async move { b.finish_backfill(&m).await })
    };
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        !finishing.is_finished(),
        "turnout waits for the build in flight"
    );
    sqlx::raw_sql("COMMIT")
        .execute(&mut *reader)
        .await
        .expect("commit");
    left_running.await.expect("join").expect("the other ALTER");
    finishing
        .await
        .expect("join")
        .expect("turnout finds the index built");
    assert_eq!(
        index_names(&pool, "_t_new").await,
        ["PRIMARY", "t_status_idx"]
    );
    assert!(verify(&b, &m).await.diffs.is_empty());
    b.rollback(&m, &state(&m, "rolled_back"))
        .await
        .expect("rollback");
    db.drop().await;
}
