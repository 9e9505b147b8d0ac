//! The benchmark behind the README's figures. For each table size it builds the `orders`
//! table of `shared/design/anchors.md` (id key, customer_id with an index, amount_cents,
//! status varchar(16), a ~100-character note, created_at), then, in one run on the same
//! table, change and writer:
//!
//! 1. the bulk-copy ceiling: `INSERT … SELECT` of the changed rows into a table with only
//!    its primary key, the secondary indexes built afterwards;
//! 2. turnout, phase by phase (the release binary under `/usr/bin/time -v` for its peak
//!    memory), while a writer makes 200 single-row transactions a second (50 % updates,
//!    30 % inserts, 20 % deletes) and records how long each one waited and whether it failed
//!    (the writer runs alone for 3 s first: its longest wait then is the floor the
//!    migration's waits are read against);
//! 3. the anchor tool on a fresh copy of the table with the same writer: pg_repack on
//!    PostgreSQL, pt-online-schema-change on MariaDB (installed with apt-get when missing).
//!
//! The change: widen `status` to 64 characters and add `amount` decimal(12,2) filled from
//! `amount_cents / 100.0` (the anchors cannot compute it; pg_repack changes nothing).
//! Only ratios within one run mean anything on a shared machine.
//!
//! cargo build --release --bins --examples
//! ./target/release/examples/bench postgres 1000000 4000000
//! ./target/release/examples/bench mysql 1000000
//! ./target/release/examples/bench sqlite 1000000          (no anchor on SQLite)
//! TURNOUT_COPIERS=1 before it: the backfill's slices one at a time instead of two;
//! BENCH_TARGET_BATCH_TIME=50ms: that batch time for a plan without one (SQLite's, PostgreSQL's)
//! add --no-anchor to skip the anchor tool, --blocker to run turnout a second time on a
//! fresh table with another session holding a read of it for 3 s from the start of the
//! cutover (the scenario of the blocker-aware cutover), --instant to run, on a fresh table
//! under the same writer, the change the database can make in place (the same widening
//! and a nullable `amount` with no `from`; on SQLite the added column alone) with
//! `strategy: auto`; --tables to measure,
//! instead, a plan of one table and then a plan of four tables (a key widened with every
//! reference to it) on a parent and three children of the given size each

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sqlx::{AssertSqlSafe, MySqlPool, PgPool, SqlitePool};
use tokio::sync::Mutex;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Postgres,
    MySql,
    Sqlite,
}

impl Kind {
    fn parse(s: &str) -> Kind {
        match s {
            "postgres" => Kind::Postgres,
            "mysql" | "mariadb" => Kind::MySql,
            _ => Kind::Sqlite,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Postgres => "postgres",
            Kind::MySql => "mysql",
            Kind::Sqlite => "sqlite",
        }
    }
}

#[derive(Clone)]
enum Pool {
    Pg(PgPool),
    My(MySqlPool),
    Lite(SqlitePool),
}

impl Pool {
    /// Unprepared: the writer's statements are each new text, and through sqlx's cache of
    /// prepared statements every one past its hundredth evicts another, whose close the
    /// MariaDB client sends on its own (no reply), which stalls the next prepare about
    /// 40 ms in TCP (measured: worst 41.9 ms against 1.2 ms unprepared) — a client's
    /// stall, not the server's.
    async fn exec(&self, sql: &str) -> Result<u64, sqlx::Error> {
        let s = || AssertSqlSafe(sql.to_string());
        Ok(match self {
            Pool::Pg(p) => sqlx::raw_sql(s()).execute(p).await?.rows_affected(),
            Pool::My(p) => sqlx::raw_sql(s()).execute(p).await?.rows_affected(),
            Pool::Lite(p) => sqlx::raw_sql(s()).execute(p).await?.rows_affected(),
        })
    }

    /// Another application's transaction that has read the table and stays open for
    /// `hold`: it holds PostgreSQL's ACCESS SHARE lock or MariaDB's shared metadata lock,
    /// which the cutover's exclusive lock must wait for.
    async fn hold_a_read(&self, hold: Duration) {
        let read = "SELECT amount_cents FROM orders WHERE id = 1";
        let result = match self {
            Pool::Pg(p) => {
                async {
                    let mut tx = p.begin().await?;
                    sqlx::query(read).execute(&mut *tx).await?;
                    tokio::time::sleep(hold).await;
                    tx.commit().await
                }
                .await
            }
            Pool::My(p) => {
                async {
                    let mut tx = p.begin().await?;
                    sqlx::query(read).execute(&mut *tx).await?;
                    tokio::time::sleep(hold).await;
                    tx.commit().await
                }
                .await
            }
            // SQLite has no lock queue for a reader to hold the cutover in.
            Pool::Lite(_) => Ok(()),
        };
        result.expect("the blocker's transaction");
    }

    async fn run_all(&self, statements: &[String]) {
        for stmt in statements {
            self.exec(stmt)
                .await
                .unwrap_or_else(|e| panic!("{stmt}: {e}"));
        }
    }
}

struct Db {
    url: String,
    pool: Pool,
    dir: PathBuf,
}

const BENCH_DB: &str = "turnout_bench";

/// A fresh, empty database for one measurement.
async fn open(kind: Kind) -> Db {
    let dir = std::env::temp_dir().join("turnout-bench");
    let _ = std::fs::create_dir_all(&dir);
    match kind {
        Kind::Postgres => {
            let admin = PgPool::connect("postgres://postgres@127.0.0.1:5432/test")
                .await
                .expect("postgres");
            let _ = sqlx::query(AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)"
            )))
            .execute(&admin)
            .await;
            sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {BENCH_DB}")))
                .execute(&admin)
                .await
                .expect("create db");
            let url = format!("postgres://postgres@127.0.0.1:5432/{BENCH_DB}");
            let pool = PgPool::connect(&url).await.expect("connect");
            Db {
                url,
                pool: Pool::Pg(pool),
                dir,
            }
        }
        Kind::MySql => {
            let admin = MySqlPool::connect("mysql://root@127.0.0.1:3306/test")
                .await
                .expect("mariadb");
            for sql in [
                format!("DROP DATABASE IF EXISTS {BENCH_DB}"),
                format!("CREATE DATABASE {BENCH_DB}"),
            ] {
                sqlx::query(AssertSqlSafe(sql))
                    .execute(&admin)
                    .await
                    .expect("recreate db");
            }
            let url = format!("mysql://root@127.0.0.1:3306/{BENCH_DB}");
            let pool = MySqlPool::connect(&url).await.expect("connect");
            Db {
                url,
                pool: Pool::My(pool),
                dir,
            }
        }
        Kind::Sqlite => {
            let path = dir.join("bench.db");
            for ext in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{ext}", path.display()));
            }
            let url = format!("sqlite://{}", path.display());
            let opts: sqlx::sqlite::SqliteConnectOptions = url.parse().expect("url");
            let pool = sqlx::sqlite::SqlitePoolOptions::new()
                .max_connections(2)
                .connect_with(
                    opts.create_if_missing(true)
                        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                        .busy_timeout(Duration::from_secs(30)),
                )
                .await
                .expect("sqlite");
            Db {
                url,
                pool: Pool::Lite(pool),
                dir,
            }
        }
    }
}

/// The table, how it is filled, the bulk copy of the same change, and the plan.
struct Shape {
    create: Vec<String>,
    fill: Vec<String>,
    /// The new table with only its primary key, filled, then its secondary indexes.
    bulk_table: Vec<String>,
    bulk_copy: String,
    bulk_indexes: Vec<String>,
    plan_changes: &'static str,
}

fn shape(kind: Kind, rows: u64) -> Shape {
    let note = "rpad('order ' || i, 100, '.')";
    match kind {
        Kind::Postgres => Shape {
            create: vec![
                "CREATE TABLE orders (id bigserial PRIMARY KEY, customer_id integer NOT NULL, amount_cents integer NOT NULL, status varchar(16) NOT NULL, note text, created_at timestamptz NOT NULL)".into(),
                "CREATE INDEX orders_customer ON orders (customer_id)".into(),
            ],
            fill: vec![
                format!("INSERT INTO orders (customer_id, amount_cents, status, note, created_at) SELECT (random() * 50000)::int, (random() * 100000)::int, (ARRAY['new','paid','shipped'])[1 + i % 3], {note}, now() - (i || ' minutes')::interval FROM generate_series(1, {rows}) AS i"),
                "VACUUM ANALYZE orders".into(),
            ],
            bulk_table: vec!["CREATE TABLE orders_copy (id bigint PRIMARY KEY, customer_id integer NOT NULL, amount_cents integer NOT NULL, status varchar(64) NOT NULL, note text, created_at timestamptz NOT NULL, amount numeric(12,2))".into()],
            bulk_copy: "INSERT INTO orders_copy SELECT id, customer_id, amount_cents, status, note, created_at, amount_cents / 100.0 FROM orders".into(),
            bulk_indexes: vec!["CREATE INDEX orders_copy_customer ON orders_copy (customer_id)".into()],
            plan_changes: "  - alter_column: {name: status, type: varchar(64)}\n  - add_column: {name: amount, type: 'numeric(12,2)', from: amount_cents / 100.0}\n",
        },
        Kind::MySql => Shape {
            create: vec!["CREATE TABLE orders (id BIGINT AUTO_INCREMENT PRIMARY KEY, customer_id INT NOT NULL, amount_cents INT NOT NULL, status VARCHAR(16) NOT NULL, note VARCHAR(128), created_at DATETIME(6) NOT NULL, KEY orders_customer (customer_id)) ENGINE=InnoDB".into()],
            fill: std::iter::once("CREATE TABLE nums (i INT PRIMARY KEY)".to_string())
                .chain(std::iter::once(format!(
                    "INSERT INTO nums VALUES {}",
                    (0..10_000).map(|i| format!("({i})")).collect::<Vec<_>>().join(",")
                )))
                .chain((0..rows.div_ceil(10_000)).map(|a| {
                    format!("INSERT INTO orders (id, customer_id, amount_cents, status, note, created_at) SELECT {a} * 10000 + i + 1, FLOOR(RAND() * 50000), FLOOR(RAND() * 100000), ELT(1 + i % 3, 'new', 'paid', 'shipped'), RPAD(CONCAT('order ', i), 100, '.'), NOW(6) - INTERVAL i MINUTE FROM nums WHERE {a} * 10000 + i + 1 <= {rows}")
                }))
                .chain(["DROP TABLE nums".to_string(), "ANALYZE TABLE orders".to_string()])
                .collect(),
            bulk_table: vec!["CREATE TABLE orders_copy (id BIGINT AUTO_INCREMENT PRIMARY KEY, customer_id INT NOT NULL, amount_cents INT NOT NULL, status VARCHAR(64) NOT NULL, note VARCHAR(128), created_at DATETIME(6) NOT NULL, amount DECIMAL(12,2)) ENGINE=InnoDB".into()],
            bulk_copy: "INSERT INTO orders_copy SELECT id, customer_id, amount_cents, status, note, created_at, amount_cents / 100.0 FROM orders".into(),
            bulk_indexes: vec!["ALTER TABLE orders_copy ADD KEY orders_copy_customer (customer_id)".into()],
            // Batches of 0.5 s, as pt-online-schema-change's default --chunk-time.
            plan_changes: "  - alter_column: {name: status, type: VARCHAR(64)}\n  - add_column: {name: amount, type: 'DECIMAL(12,2)', from: amount_cents / 100.0}\nbackfill:\n  target_batch_time: 500ms\n",
        },
        Kind::Sqlite => Shape {
            create: vec![
                "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL, amount_cents INTEGER NOT NULL, status VARCHAR(16) NOT NULL, note TEXT, created_at TEXT NOT NULL)".into(),
                "CREATE INDEX orders_customer ON orders (customer_id)".into(),
            ],
            fill: vec![
                format!("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows}) INSERT INTO orders SELECT i, abs(random()) % 50000, abs(random()) % 100000, 'new', substr('order ' || i || '{}', 1, 100), datetime('now', '-' || i || ' minutes') FROM n", ".".repeat(100)),
                "PRAGMA wal_checkpoint(TRUNCATE)".into(),
            ],
            bulk_table: vec!["CREATE TABLE orders_copy (id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL, amount_cents INTEGER NOT NULL, status VARCHAR(64) NOT NULL, note TEXT, created_at TEXT NOT NULL, amount NUMERIC)".into()],
            bulk_copy: "INSERT INTO orders_copy SELECT id, customer_id, amount_cents, status, note, created_at, amount_cents / 100.0 FROM orders".into(),
            bulk_indexes: vec!["CREATE INDEX orders_copy_customer ON orders_copy (customer_id)".into()],
            plan_changes: "  - alter_column: {name: status, type: VARCHAR(64)}\n  - add_column: {name: amount, type: NUMERIC, from: amount_cents / 100.0}\n",
        },
    }
}

/// One application write: when it started (since the epoch), how long it took, and the
/// database's error when it failed.
#[derive(Clone)]
struct Sample {
    at: Duration,
    took: Duration,
    error: Option<String>,
}

type Samples = Arc<Mutex<Vec<Sample>>>;

/// The application: 200 single-row transactions a second (one every 5 ms), 50 % updates,
/// 30 % inserts, 20 % deletes of rows spread over the whole table.
fn start_writer(
    kind: Kind,
    pool: Pool,
    rows: u64,
    epoch: Instant,
    stop: Arc<AtomicBool>,
    samples: Samples,
) -> tokio::task::JoinHandle<()> {
    let now = match kind {
        Kind::Postgres => "now()",
        Kind::MySql => "NOW(6)",
        Kind::Sqlite => "datetime('now')",
    };
    paced_writer(pool, epoch, stop, samples, move |n| {
        let id = spread(n, rows);
        match n % 10 {
            0..=4 => format!(
                "UPDATE orders SET status = 'paid', amount_cents = amount_cents + 1 WHERE id = {id}"
            ),
            5..=7 => format!(
                "INSERT INTO orders (customer_id, amount_cents, status, note, created_at) VALUES ({}, 100, 'new', 'written by the application', {now})",
                n % 50_000
            ),
            _ => format!("DELETE FROM orders WHERE id = {id}"),
        }
    })
}

/// The `n`th write's row, in 1..=rows, spread over the whole table.
fn spread(n: u64, rows: u64) -> u64 {
    1 + (n.wrapping_mul(2_654_435_761) % rows)
}

/// One statement every 5 ms (`statement(n)` for the `n`th), each timed into `samples`
/// until `stop`.
fn paced_writer(
    pool: Pool,
    epoch: Instant,
    stop: Arc<AtomicBool>,
    samples: Samples,
    statement: impl Fn(u64) -> String + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut n: u64 = 0;
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            n += 1;
            let sql = statement(n);
            let t = Instant::now();
            let error = pool.exec(&sql).await.err().map(|e| e.to_string());
            samples.lock().await.push(Sample {
                at: t - epoch,
                took: t.elapsed(),
                error,
            });
        }
    })
}

/// The writes that were waiting at some moment of `[from, to]`.
fn window(samples: &[Sample], from: Duration, to: Duration) -> Vec<Sample> {
    samples
        .iter()
        .filter(|s| s.at + s.took >= from && s.at <= to)
        .cloned()
        .collect()
}

fn longest_ms(samples: &[Sample]) -> f64 {
    samples
        .iter()
        .map(|s| s.took.as_secs_f64() * 1000.0)
        .fold(0.0, f64::max)
}

/// How many writes failed, and the first failures' errors.
fn failures(samples: &[Sample]) -> String {
    let errors: Vec<&str> = samples.iter().filter_map(|s| s.error.as_deref()).collect();
    let first: Vec<&str> = errors.iter().take(3).copied().collect();
    if first.is_empty() {
        "0".to_string()
    } else {
        format!("{} ({})", errors.len(), first.join("; "))
    }
}

/// Runs the turnout binary under /usr/bin/time; returns (seconds, peak RSS in MiB).
fn turnout(db: &Db, args: &[&str]) -> (f64, f64) {
    let bin = std::env::current_dir()
        .expect("cwd")
        .join("target/release/turnout");
    let t = Instant::now();
    let out = Command::new("/usr/bin/time")
        .arg("-v")
        .arg(&bin)
        .args(args)
        .env("DATABASE_URL", &db.url)
        .output()
        .expect("run turnout");
    let secs = t.elapsed().as_secs_f64();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "turnout {args:?} failed:\n{}\n{err}",
        String::from_utf8_lossy(&out.stdout)
    );
    (secs, peak_rss_mib(&err))
}

fn peak_rss_mib(time_v: &str) -> f64 {
    time_v
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Maximum resident set size (kbytes): ")
        })
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

async fn build_table(kind: Kind, rows: u64) -> (Db, Shape) {
    let db = open(kind).await;
    let s = shape(kind, rows);
    let t = Instant::now();
    db.pool.run_all(&s.create).await;
    db.pool.run_all(&s.fill).await;
    println!(
        "[{} {rows}] table built in {:.1?}",
        kind.name(),
        t.elapsed()
    );
    (db, s)
}

/// The ceiling: copy into a bare table, then build its index. Returns seconds.
async fn bulk_copy(db: &Db, s: &Shape) -> f64 {
    db.pool.run_all(&s.bulk_table).await;
    let t = Instant::now();
    db.pool.exec(&s.bulk_copy).await.expect("bulk copy");
    db.pool.run_all(&s.bulk_indexes).await;
    let took = t.elapsed().as_secs_f64();
    db.pool
        .exec("DROP TABLE orders_copy")
        .await
        .expect("drop copy");
    took
}

/// How long the writer runs before turnout starts.
const WRITER_ALONE: Duration = Duration::from_secs(3);

/// How long the blocker of `--blocker` holds its read.
const BLOCKER_HOLD: Duration = Duration::from_secs(3);

const STEPS: [&str; 6] = [
    "prepared",
    "dual_writing",
    "backfilled",
    "verified",
    "cut_over",
    "done",
];

/// One phase of a run: its step, when it started and ended (since the writer's epoch)
/// and turnout's own time in seconds.
type Step = (&'static str, Duration, Duration, f64);

/// `run --until` each step in turn; returns the steps and the peak RSS. With `blocker`,
/// that pool's session holds a read of `orders` for [`BLOCKER_HOLD`] from the start of
/// the cutover.
async fn step_through(
    db: &Db,
    plan: &str,
    epoch: Instant,
    blocker: Option<Pool>,
) -> (Vec<Step>, f64) {
    let mut steps = Vec::new();
    let mut peak: f64 = 0.0;
    for step in STEPS {
        let from = epoch.elapsed();
        let held = blocker
            .clone()
            .filter(|_| step == "cut_over")
            .map(|pool| tokio::spawn(async move { pool.hold_a_read(BLOCKER_HOLD).await }));
        let (secs, mem) = turnout(db, &["run", plan, "--until", step, "--yes"]);
        if let Some(held) = held {
            held.await.expect("blocker task");
        }
        steps.push((step, from, epoch.elapsed(), secs));
        peak = peak.max(mem);
    }
    (steps, peak)
}

/// `step 1.23s (wait 4.5 ms), …`: each step's time and the writer's longest wait in it.
fn per_step(steps: &[Step], all: &[Sample]) -> String {
    steps
        .iter()
        .map(|(step, from, to, secs)| {
            format!(
                "{step} {secs:.2}s (wait {:.1} ms)",
                longest_ms(&window(all, *from, *to))
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// With `blocker`, another session holds a read of the table for [`BLOCKER_HOLD`] from
/// the moment the cutover starts, and the cutover may retry for longer than that.
async fn bench_turnout(kind: Kind, rows: u64, db: &Db, s: &Shape, bulk_s: f64, blocker: bool) {
    let plan = db.dir.join(format!("bench-{}.yaml", kind.name()));
    let cutover = if blocker {
        "cutover:\n  lock_timeout: 2s\n  attempts: 30\n  retry_delay: 200ms\n"
    } else {
        ""
    };
    // `BENCH_TARGET_BATCH_TIME=50ms`: the backfill's batch time for a plan that sets none
    // (SQLite's batch holds the write lock, so this is its trade-off of speed for waits).
    let batch_time = match std::env::var("BENCH_TARGET_BATCH_TIME") {
        Ok(t) if !s.plan_changes.contains("backfill:") => {
            format!("backfill:\n  target_batch_time: {t}\n")
        }
        _ => String::new(),
    };
    std::fs::write(
        &plan,
        format!(
            "version: 1\nname: bench\ntable: orders\nchanges:\n{}{batch_time}{cutover}",
            s.plan_changes
        ),
    )
    .expect("plan");
    let plan = plan.to_str().expect("utf-8");

    let stop = Arc::new(AtomicBool::new(false));
    let samples: Samples = Arc::default();
    let epoch = Instant::now();
    let writer = start_writer(
        kind,
        db.pool.clone(),
        rows,
        epoch,
        stop.clone(),
        samples.clone(),
    );
    // The writer alone first: its longest wait with nothing of turnout's running is the
    // floor the waits below are to be read against.
    tokio::time::sleep(WRITER_ALONE).await;
    let held = blocker.then(|| db.pool.clone());
    let (steps, peak) = step_through(db, plan, epoch, held).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let _ = writer.await;
    let all = samples.lock().await.clone();
    let name = kind.name();
    let (start, end) = (steps[0].1, steps[steps.len() - 1].2);
    let whole = window(&all, start, end);
    let per_step = per_step(&steps, &all);
    let backfill_s = steps[2].3;
    let total = (end - start).as_secs_f64();
    let with = if blocker {
        format!(" (a reader holding the table {BLOCKER_HOLD:?} at cutover)")
    } else {
        String::new()
    };
    let alone = window(
        &all,
        Duration::ZERO,
        start.saturating_sub(Duration::from_millis(100)),
    );
    println!(
        "[{name} {rows}] writer alone for {WRITER_ALONE:?}: longest wait {:.1} ms, {} writes",
        longest_ms(&alone),
        alone.len()
    );
    println!(
        "[{name} {rows}] turnout{with}: whole migration {total:.2}s | {per_step} | backfill {:.0} rows/s = {:.2}x the bulk copy | longest application wait over the whole migration {:.1} ms | {} writes, {} failed | peak RSS {peak:.1} MiB",
        rows as f64 / backfill_s,
        bulk_s / backfill_s,
        longest_ms(&whole),
        whole.len(),
        failures(&whole),
    );
}

/// The instant path: the benchmark's change without the computed fill, which PostgreSQL
/// and MariaDB make without a copy; on SQLite (whose column types do not change in
/// place) the added column alone.
async fn bench_instant(kind: Kind, rows: u64, db: &Db, s: &Shape) {
    let plan = db.dir.join(format!("bench-instant-{}.yaml", kind.name()));
    let changes = s.plan_changes.replace(", from: amount_cents / 100.0", "");
    let changes = changes.split("backfill:").next().unwrap_or_default();
    // SQLite changes no declared type in place: its instant change is the added column.
    let (changes, what) = if kind == Kind::Sqlite {
        let added: String = changes
            .lines()
            .filter(|l| !l.contains("alter_column"))
            .map(|l| format!("{l}\n"))
            .collect();
        (added, "the added column alone")
    } else {
        (changes.to_string(), "the change without `from`")
    };
    std::fs::write(
        &plan,
        format!(
            "version: 1\nname: bench-instant\ntable: orders\nstrategy: auto\nchanges:\n{changes}"
        ),
    )
    .expect("plan");
    let plan = plan.to_str().expect("utf-8");
    let stop = Arc::new(AtomicBool::new(false));
    let samples: Samples = Arc::default();
    let epoch = Instant::now();
    let writer = start_writer(
        kind,
        db.pool.clone(),
        rows,
        epoch,
        stop.clone(),
        samples.clone(),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let from = epoch.elapsed();
    let (secs, _) = turnout(db, &["run", plan, "--yes"]);
    let to = epoch.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let _ = writer.await;
    let status = Command::new(
        std::env::current_dir()
            .expect("cwd")
            .join("target/release/turnout"),
    )
    .args(["status", plan, "--json"])
    .env("DATABASE_URL", &db.url)
    .output()
    .expect("status");
    // One plan's status is an array of one, as a directory's is of many.
    let st: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap_or_default();
    let st = &st[0];
    let all = samples.lock().await.clone();
    let whole = window(&all, from, to);
    println!(
        "[{} {rows}] turnout, strategy auto, {what}: path {} | whole migration {secs:.2}s | longest application wait {:.1} ms | {} writes, {} failed",
        kind.name(),
        st["path"].as_str().unwrap_or("?"),
        longest_ms(&whole),
        whole.len(),
        failures(&whole),
    );
}

/// `--tables`: a parent and three children referencing it (one with a composite key, one
/// `ON DELETE CASCADE`), `rows` rows each. In one run, under a writer updating rows of all
/// four and inserting children: first a plan of one table (a child's column changed), then
/// the plan of four (the parent's key and every reference to it widened to bigint), each
/// phase by phase, so their cutovers' stalls compare in the same run.
async fn bench_tables(kind: Kind, rows: u64) {
    let name = kind.name();
    if kind == Kind::MySql {
        println!(
            "[{name} {rows}] four tables: not measured, MariaDB refuses plans of several tables (README)"
        );
        return;
    }
    let db = open(kind).await;
    let series = |select: &str| match kind {
        Kind::Postgres => format!("{select} FROM generate_series(1, {rows}) AS i"),
        _ => format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows}) {select} FROM n"
        ),
    };
    let mut build: Vec<String> = [
        "CREATE TABLE users (id INT PRIMARY KEY, name TEXT NOT NULL)",
        "CREATE TABLE orders (id INT PRIMARY KEY, user_id INT NOT NULL REFERENCES users (id), amount INTEGER NOT NULL)",
        "CREATE INDEX orders_user_idx ON orders (user_id)",
        "CREATE TABLE memberships (user_id INT NOT NULL REFERENCES users (id), team INTEGER NOT NULL, PRIMARY KEY (user_id, team))",
        "CREATE TABLE sessions (id INT PRIMARY KEY, user_id INT REFERENCES users (id) ON DELETE CASCADE, token TEXT)",
    ]
    .map(String::from)
    .to_vec();
    for (table, select) in [
        ("users", "SELECT i, 'user ' || i"),
        ("orders", "SELECT i, i, i * 3"),
        ("memberships", "SELECT i, i % 4"),
        ("sessions", "SELECT i, i, 'tok ' || i"),
    ] {
        build.push(format!("INSERT INTO {table} {}", series(select)));
    }
    build.push(
        if kind == Kind::Postgres {
            "VACUUM ANALYZE"
        } else {
            "ANALYZE"
        }
        .into(),
    );
    let t = Instant::now();
    db.pool.run_all(&build).await;
    println!("[{name} {rows}] four tables built in {:.1?}", t.elapsed());
    let one = "version: 1\nname: bench-one-table\ntable: sessions\nstrategy: copy\nchanges:\n  - alter_column: {name: token, type: VARCHAR(128)}\n";
    let four = "version: 1\nname: bench-four-tables\ntables:\n  - table: users\n    changes: [{alter_column: {name: id, type: BIGINT}}]\n  - table: orders\n    changes: [{alter_column: {name: user_id, type: BIGINT}}]\n  - table: memberships\n    changes: [{alter_column: {name: user_id, type: BIGINT}}]\n  - table: sessions\n    changes: [{alter_column: {name: user_id, type: BIGINT}}]\n";
    let stop = Arc::new(AtomicBool::new(false));
    let samples: Samples = Arc::default();
    let epoch = Instant::now();
    let writer = paced_writer(
        db.pool.clone(),
        epoch,
        stop.clone(),
        samples.clone(),
        move |n| {
            let id = spread(n, rows);
            match n % 5 {
                0 => format!("UPDATE users SET name = 'user {n}' WHERE id = {id}"),
                1 => format!("UPDATE orders SET amount = amount + 1 WHERE id = {id}"),
                2 => format!("UPDATE memberships SET team = team + 4 WHERE user_id = {id}"),
                3 => format!("UPDATE sessions SET token = 'tok {n}' WHERE id = {id}"),
                _ => format!("INSERT INTO orders VALUES ({}, {id}, 1)", rows + n),
            }
        },
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut runs = Vec::new();
    for (what, file, text) in [
        ("one table (sessions)", "bench-one.yaml", one),
        ("four tables", "bench-four.yaml", four),
    ] {
        let text = if kind == Kind::Postgres {
            text.replace("BIGINT", "bigint")
                .replace("VARCHAR", "varchar")
        } else {
            text.to_string()
        };
        let plan = db.dir.join(file);
        std::fs::write(&plan, text).expect("plan");
        let (steps, _) = step_through(&db, plan.to_str().expect("utf-8"), epoch, None).await;
        runs.push((what, steps));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let _ = writer.await;
    let all = samples.lock().await.clone();
    for (what, steps) in runs {
        let (start, end) = (steps[0].1, steps[steps.len() - 1].2);
        let whole = window(&all, start, end);
        println!(
            "[{name} {rows}] {what}: whole migration {:.2}s | {} | longest application wait over the whole migration {:.1} ms | {} writes, {} failed",
            (end - start).as_secs_f64(),
            per_step(&steps, &all),
            longest_ms(&whole),
            whole.len(),
            failures(&whole),
        );
    }
}

/// Installs a Debian package when its command is missing.
fn ensure_command(command: &str, package: &str) {
    let have = Command::new("sh")
        .args(["-c", &format!("command -v {command}")])
        .output()
        .map(|o| o.status.success());
    if have.ok() != Some(true) {
        println!("installing {package} for {command}");
        let _ = Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", package])
            .status();
    }
}

async fn bench_anchor(kind: Kind, rows: u64) {
    let (tool, args): (&str, Vec<String>) = match kind {
        Kind::Postgres => {
            let major = Command::new("sh")
                .args(["-c", "ls /usr/lib/postgresql | sort -n | tail -n1"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_else(|_| "15".into());
            ensure_command("pg_repack", &format!("postgresql-{major}-repack"));
            (
                "pg_repack",
                [
                    "-h",
                    "127.0.0.1",
                    "-U",
                    "postgres",
                    "--no-order",
                    "-t",
                    "orders",
                    "-d",
                    BENCH_DB,
                ]
                .map(String::from)
                .to_vec(),
            )
        }
        Kind::MySql => {
            ensure_command("pt-online-schema-change", "percona-toolkit");
            (
                "pt-online-schema-change",
                vec![
                    "--alter".into(),
                    "MODIFY status VARCHAR(64) NOT NULL, ADD COLUMN amount DECIMAL(12,2)".into(),
                    "--execute".into(),
                    "--no-check-alter".into(),
                    "--recursion-method=none".into(),
                    format!("h=127.0.0.1,P=3306,u=root,D={BENCH_DB},t=orders"),
                ],
            )
        }
        Kind::Sqlite => return,
    };
    let (db, _) = build_table(kind, rows).await;
    if kind == Kind::Postgres {
        db.pool
            .exec("CREATE EXTENSION IF NOT EXISTS pg_repack")
            .await
            .expect("CREATE EXTENSION pg_repack");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let samples: Samples = Arc::default();
    let epoch = Instant::now();
    let writer = start_writer(
        kind,
        db.pool.clone(),
        rows,
        epoch,
        stop.clone(),
        samples.clone(),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let from = epoch.elapsed();
    let out = Command::new(tool)
        .args(&args)
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    let to = epoch.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let _ = writer.await;
    assert!(
        out.status.success(),
        "{tool} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let all = samples.lock().await.clone();
    let whole = window(&all, from, to);
    println!(
        "[{} {rows}] {tool}: whole migration {:.2}s | longest application wait {:.1} ms | {} writes, {} failed",
        kind.name(),
        (to - from).as_secs_f64(),
        longest_ms(&whole),
        whole.len(),
        failures(&whole),
    );
}

async fn bench(kind: Kind, rows: u64, anchor: bool, blocker: bool, instant: bool, tables: bool) {
    if tables {
        bench_tables(kind, rows).await;
        return;
    }
    let (db, s) = build_table(kind, rows).await;
    let bulk_s = bulk_copy(&db, &s).await;
    println!(
        "[{} {rows}] bulk copy, index built after: {bulk_s:.2}s ({:.0} rows/s)",
        kind.name(),
        rows as f64 / bulk_s
    );
    bench_turnout(kind, rows, &db, &s, bulk_s, false).await;
    if blocker {
        // Again on a fresh table, with the blocker at cutover.
        let (db, s) = build_table(kind, rows).await;
        bench_turnout(kind, rows, &db, &s, bulk_s, true).await;
    }
    if instant {
        let (db, s) = build_table(kind, rows).await;
        bench_instant(kind, rows, &db, &s).await;
    }
    if anchor {
        bench_anchor(kind, rows).await;
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let kind = Kind::parse(args.first().map(String::as_str).unwrap_or("sqlite"));
    let anchor = !args.iter().any(|a| a == "--no-anchor");
    let blocker = args.iter().any(|a| a == "--blocker");
    let instant = args.iter().any(|a| a == "--instant");
    let tables = args.iter().any(|a| a == "--tables");
    let sizes: Vec<u64> = args.iter().skip(1).filter_map(|a| a.parse().ok()).collect();
    let sizes = if sizes.is_empty() {
        vec![1_000_000]
    } else {
        sizes
    };
    for rows in sizes {
        bench(kind, rows, anchor, blocker, instant, tables).await;
    }
}
