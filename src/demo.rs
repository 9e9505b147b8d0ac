//! `turnout demo`: the whole story on an embedded SQLite file, with nothing to install.
//! It builds a realistic `orders` table, starts a writer that plays the application
//! (inserts, updates, primary-key changes, deletes) and runs a real migration through
//! every phase while timing how long the application's writes ever had to wait.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, Row, SqlitePool};
use tokio_util::sync::CancellationToken;

use crate::db::sqlite::Sqlite;
use crate::engine::{self, Phase, RunOptions, Session};
use crate::error::{Error, Result};
use crate::progress::Progress;

pub const DEMO_PLAN: &str = r#"# The demo's migration: money in cents becomes a decimal amount, status values are
# upper-cased, a column is renamed, and a new index is added, all while the
# application keeps writing.
version: 1
name: orders-amount-decimal
table: orders
changes:
  - add_column:
      name: amount
      type: NUMERIC
      default: "0"
      from: amount_cents / 100.0
  - drop_column:
      name: amount_cents
      reverse: CAST(round(amount * 100) AS INTEGER)
  - alter_column:
      name: status
      type: TEXT
      using: upper(status)
      reverse: lower(status)
  - rename_column: {from: note, to: comment}
  - add_index: {name: orders_created_at_idx, columns: [created_at]}
backfill:
  batch_size: auto
  target_batch_time: 50ms
verify:
  mode: full
cutover:
  lock_timeout: 2s
  attempts: 10
  retry_delay: 200ms
"#;

/// Latency of every write the simulated application made, kept as a running maximum.
#[derive(Default)]
struct WriterStats {
    writes: AtomicU64,
    failed: AtomicU64,
    longest_us: AtomicU64,
}

pub async fn run(file: &Path, rows: u64, cancel: CancellationToken, bars: bool) -> Result<()> {
    let plan_path = file.with_extension("yaml");
    let url = format!("sqlite://{}", file.display());
    let shown = file.display().to_string();
    let opts = SqliteConnectOptions::from_str(&url)
        .map_err(|e| Error::Usage(format!("{shown}: {e}")))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(10))
        .disable_statement_logging();
    let app = SqlitePoolOptions::new()
        .max_connections(2)
        .connect_with(opts.clone())
        .await
        .map_err(|e| Error::Unreachable(format!("{shown}: {e}")))?;

    let t0 = Instant::now();
    let reused = prepare_table(&app, rows).await?;
    println!(
        "{} {shown}: table orders with {rows} rows ({:.1?})",
        if reused { "reusing" } else { "created" },
        t0.elapsed()
    );
    std::fs::write(&plan_path, DEMO_PLAN).map_err(|e| {
        Error::Usage(format!(
            "cannot write the demo plan {}: {e}",
            plan_path.display()
        ))
    })?;
    let plan = crate::plan::load(&plan_path)?;
    println!(
        "plan: {} (the demo's migration; read it to see the plan format)\n",
        plan_path.display()
    );
    println!("before:\n  {}\n", table_sql(&app).await?);

    let stats = Arc::new(WriterStats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(application(app.clone(), stats.clone(), stop.clone(), rows));

    let backend = Sqlite::with_options(opts, &shown).await?;
    let observer = Progress::new(bars);
    let session = Session {
        plan: &plan,
        cancel,
        observer: &observer,
    };
    let started = Instant::now();
    let outcome = engine::run(&backend, &session, &RunOptions::default()).await;
    stop.store(true, Ordering::Relaxed);
    let _ = writer.await;
    let st = outcome?;

    println!("\nafter:\n  {}\n", table_sql(&app).await?);
    let rate = st.backfill.rows_copied as f64
        / st.backfill
            .finished_at
            .zip(st.backfill.started_at)
            .map(|(e, s)| (e - s).num_milliseconds() as f64 / 1000.0)
            .unwrap_or(1.0)
            .max(0.001);
    println!(
        "migration {:?} is {} after {:.1?}",
        st.name,
        st.phase,
        started.elapsed()
    );
    println!(
        "  backfill: {} rows in {} batches, {}",
        st.backfill.rows_copied,
        st.backfill.batches,
        crate::progress::rows_per_sec(rate)
    );
    println!(
        "  verify:   {} rows compared, {} differences",
        st.verify.rows_checked, st.verify.mismatches
    );
    println!(
        "  the application made {} writes meanwhile ({} failed); the longest any of them waited: {:.1} ms",
        stats.writes.load(Ordering::Relaxed),
        stats.failed.load(Ordering::Relaxed),
        stats.longest_us.load(Ordering::Relaxed) as f64 / 1000.0
    );
    if st.phase == Phase::Done {
        println!("\nTry next:");
        println!("  turnout status --database-url sqlite://{shown}");
        println!("  turnout status --json --database-url sqlite://{shown}");
        println!("  run the demo again (it starts over), then try a rollback at any phase:");
        println!(
            "    turnout run {} --until verified --yes --database-url sqlite://{shown}",
            plan_path.display()
        );
        println!(
            "    turnout rollback {} --database-url sqlite://{shown}",
            plan_path.display()
        );
        println!("  write a plan of your own (see plans/ and the README) and `turnout check` it");
    }
    Ok(())
}

/// Builds the demo table unless an untouched one is already there. Returns whether it was reused.
async fn prepare_table(app: &SqlitePool, rows: u64) -> Result<bool> {
    let ctx = |e| Error::db("building the demo table", e);
    let pristine: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM pragma_table_info('orders') WHERE name = 'amount_cents')
              + (SELECT count(*) FROM sqlite_master WHERE name IN ('turnout_state', '_orders_new', '_orders_old')) * 10",
    )
    .fetch_one(app)
    .await
    .map_err(ctx)?;
    if pristine == 1 {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
            .fetch_one(app)
            .await
            .map_err(ctx)?;
        if n as u64 >= rows {
            return Ok(true);
        }
    }
    for stmt in [
        "DROP TABLE IF EXISTS orders",
        "DROP TABLE IF EXISTS _orders_new",
        "DROP TABLE IF EXISTS _orders_old",
        "DROP TABLE IF EXISTS turnout_state",
        "DROP TABLE IF EXISTS turnout_lease",
        "CREATE TABLE orders (
            id INTEGER PRIMARY KEY,
            customer_id INTEGER NOT NULL,
            amount_cents INTEGER NOT NULL DEFAULT 0,
            status TEXT NOT NULL DEFAULT 'new',
            note TEXT,
            created_at TEXT NOT NULL
        )",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(stmt))
            .execute(app)
            .await
            .map_err(ctx)?;
    }
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
         INSERT INTO orders (id, customer_id, amount_cents, status, note, created_at)
         SELECT i, abs(random()) % 50000, abs(random()) % 100000,
                CASE abs(random()) % 4 WHEN 0 THEN 'new' WHEN 1 THEN 'paid' WHEN 2 THEN 'shipped' ELSE 'returned' END,
                CASE WHEN i % 5 = 0 THEN NULL ELSE 'order ' || i END,
                strftime('%Y-%m-%dT%H:%M:%S', '2024-01-01', '+' || (i / 10) || ' minutes')
         FROM n",
    )
    .bind(rows as i64)
    .execute(app)
    .await
    .map_err(ctx)?;
    sqlx::query("CREATE INDEX orders_customer_idx ON orders (customer_id)")
        .execute(app)
        .await
        .map_err(ctx)?;
    Ok(false)
}

async fn table_sql(app: &SqlitePool) -> Result<String> {
    let rows = sqlx::query("SELECT sql FROM sqlite_master WHERE tbl_name = 'orders' AND sql IS NOT NULL ORDER BY type DESC, name")
        .fetch_all(app)
        .await
        .map_err(|e| Error::db("reading the schema", e))?;
    Ok(rows
        .iter()
        .map(|r| {
            r.get::<String, _>(0)
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join(";\n  "))
}

/// The simulated application: a steady mix of writes that work on the table in either
/// shape (they name only columns the migration keeps).
async fn application(pool: SqlitePool, stats: Arc<WriterStats>, stop: Arc<AtomicBool>, rows: u64) {
    let mut next_id = rows as i64 + 10_000_000;
    let mut n: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let id = 1 + (n.wrapping_mul(2_654_435_761) % rows.max(1)) as i64;
        let started = Instant::now();
        let result = match n % 10 {
            0..=3 => {
                next_id += 1;
                sqlx::query("INSERT INTO orders (id, customer_id, status, created_at) VALUES (?1, ?2, 'new', strftime('%Y-%m-%dT%H:%M:%S','now'))")
                    .bind(next_id)
                    .bind((n % 50_000) as i64)
                    .execute(&pool)
                    .await
            }
            4..=6 => {
                sqlx::query("UPDATE orders SET status = 'paid' WHERE id = ?1")
                    .bind(id)
                    .execute(&pool)
                    .await
            }
            7 => {
                next_id += 1;
                sqlx::query("UPDATE orders SET id = ?1 WHERE id = ?2")
                    .bind(next_id)
                    .bind(id)
                    .execute(&pool)
                    .await
            }
            _ => {
                sqlx::query("DELETE FROM orders WHERE id = ?1")
                    .bind(id)
                    .execute(&pool)
                    .await
            }
        };
        let us = started.elapsed().as_micros() as u64;
        stats.longest_us.fetch_max(us, Ordering::Relaxed);
        stats.writes.fetch_add(1, Ordering::Relaxed);
        if result.is_err() {
            stats.failed.fetch_add(1, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
