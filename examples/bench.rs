//! The benchmark behind the README's figures. For each table size it builds a table,
//! times a plain `INSERT INTO … SELECT` of the same change as the baseline, then runs
//! the release `turnout` binary phase by phase while a writer updates and inserts rows
//! and records how long each of its writes took; `/usr/bin/time -v` gives turnout's
//! peak memory. On MySQL it can also run pt-online-schema-change on the same table and
//! change, with the same writer.
//!
//! cargo build --release && cargo run --release --example bench -- postgres 1000000 4000000
//! cargo run --release --example bench -- mysql 1000000 --pt-osc
//! cargo run --release --example bench -- sqlite 1000000

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sqlx::{AssertSqlSafe, MySqlPool, PgPool, SqlitePool};
use tokio::sync::Mutex;

#[derive(Clone)]
enum Pool {
    Pg(PgPool),
    My(MySqlPool),
    Lite(SqlitePool),
}

impl Pool {
    async fn exec(&self, sql: &str) -> Result<u64, sqlx::Error> {
        let s = || AssertSqlSafe(sql.to_string());
        Ok(match self {
            Pool::Pg(p) => sqlx::query(s()).execute(p).await?.rows_affected(),
            Pool::My(p) => sqlx::query(s()).execute(p).await?.rows_affected(),
            Pool::Lite(p) => sqlx::query(s()).execute(p).await?.rows_affected(),
        })
    }
}

struct Db {
    url: String,
    pool: Pool,
    dir: PathBuf,
}

async fn open(kind: &str) -> Db {
    let dir = std::env::temp_dir().join("turnout-bench");
    let _ = std::fs::create_dir_all(&dir);
    match kind {
        "postgres" => {
            let admin = PgPool::connect("postgres://postgres@127.0.0.1:5432/test")
                .await
                .expect("postgres");
            let _ = sqlx::query("DROP DATABASE IF EXISTS turnout_bench WITH (FORCE)")
                .execute(&admin)
                .await;
            sqlx::query("CREATE DATABASE turnout_bench")
                .execute(&admin)
                .await
                .expect("create db");
            let url = "postgres://postgres@127.0.0.1:5432/turnout_bench".to_string();
            let pool = PgPool::connect(&url).await.expect("connect");
            Db {
                url,
                pool: Pool::Pg(pool),
                dir,
            }
        }
        "mysql" => {
            let admin = MySqlPool::connect("mysql://root@127.0.0.1:3306/test")
                .await
                .expect("mariadb");
            let _ = sqlx::query("DROP DATABASE IF EXISTS turnout_bench")
                .execute(&admin)
                .await;
            sqlx::query("CREATE DATABASE turnout_bench")
                .execute(&admin)
                .await
                .expect("create db");
            let url = "mysql://root@127.0.0.1:3306/turnout_bench".to_string();
            let pool = MySqlPool::connect(&url).await.expect("connect");
            Db {
                url,
                pool: Pool::My(pool),
                dir,
            }
        }
        _ => {
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

/// DDL of the table, its fill, the plain copy baseline, the plan's changes.
struct Shape {
    create: String,
    fill: Vec<String>,
    copy_table: String,
    copy: String,
    plan_changes: &'static str,
    pt_alter: &'static str,
}

fn shape(kind: &str, rows: u64) -> Shape {
    match kind {
        "postgres" => Shape {
            create: "CREATE TABLE bench (id bigserial PRIMARY KEY, customer_id integer NOT NULL, amount_cents integer NOT NULL, status text NOT NULL, note text, created_at timestamptz NOT NULL); CREATE INDEX bench_customer ON bench (customer_id)".into(),
            fill: vec![format!("INSERT INTO bench (customer_id, amount_cents, status, note, created_at) SELECT (random() * 50000)::int, (random() * 100000)::int, (ARRAY['new','paid','shipped'])[1 + i % 3], CASE WHEN i % 5 = 0 THEN NULL ELSE 'order ' || i END, now() - (i || ' minutes')::interval FROM generate_series(1, {rows}) AS i"), "ANALYZE bench".into()],
            copy_table: "CREATE TABLE bench_copy (id bigint PRIMARY KEY, customer_id bigint NOT NULL, amount_cents integer NOT NULL, status text NOT NULL, note text, created_at timestamptz NOT NULL, amount numeric(12,2)); CREATE INDEX bench_copy_customer ON bench_copy (customer_id); CREATE INDEX bench_copy_created ON bench_copy (created_at)".into(),
            copy: "INSERT INTO bench_copy SELECT id, customer_id, amount_cents, status, note, created_at, amount_cents / 100.0 FROM bench".into(),
            plan_changes: "  - alter_column: {name: customer_id, type: bigint}\n  - add_column: {name: amount, type: 'numeric(12,2)', from: amount_cents / 100.0}\n  - add_index: {name: bench_created, columns: [created_at]}\n",
            pt_alter: "",
        },
        "mysql" => Shape {
            create: "CREATE TABLE bench (id BIGINT AUTO_INCREMENT PRIMARY KEY, customer_id INT NOT NULL, amount_cents INT NOT NULL, status VARCHAR(16) NOT NULL, note VARCHAR(64), created_at DATETIME(6) NOT NULL, KEY bench_customer (customer_id)) ENGINE=InnoDB".into(),
            fill: std::iter::once("CREATE TABLE nums (i INT PRIMARY KEY)".to_string())
                .chain(std::iter::once(format!(
                    "INSERT INTO nums VALUES {}",
                    (0..10_000).map(|i| format!("({i})")).collect::<Vec<_>>().join(",")
                )))
                .chain((0..rows.div_ceil(10_000)).map(|a| {
                    format!("INSERT INTO bench (id, customer_id, amount_cents, status, note, created_at) SELECT {a} * 10000 + i + 1, FLOOR(RAND() * 50000), FLOOR(RAND() * 100000), ELT(1 + i % 3, 'new', 'paid', 'shipped'), IF(i % 5 = 0, NULL, CONCAT('order ', i)), NOW(6) - INTERVAL i MINUTE FROM nums WHERE {a} * 10000 + i + 1 <= {rows}")
                }))
                .chain(["DROP TABLE nums".to_string(), "ANALYZE TABLE bench".to_string()])
                .collect(),
            copy_table: "CREATE TABLE bench_copy (id BIGINT AUTO_INCREMENT PRIMARY KEY, customer_id BIGINT NOT NULL, amount_cents INT NOT NULL, status VARCHAR(16) NOT NULL, note VARCHAR(64), created_at DATETIME(6) NOT NULL, KEY bench_copy_customer (customer_id), KEY bench_copy_created (created_at)) ENGINE=InnoDB".into(),
            copy: "INSERT INTO bench_copy SELECT id, customer_id, amount_cents, status, note, created_at FROM bench".into(),
            // Batches of 0.5 s, as pt-online-schema-change's default --chunk-time.
            plan_changes: "  - alter_column: {name: customer_id, type: BIGINT}\n  - add_index: {name: bench_created, columns: [created_at]}\nbackfill:\n  target_batch_time: 500ms\n",
            pt_alter: "MODIFY customer_id BIGINT NOT NULL, ADD KEY bench_created (created_at)",
        },
        _ => Shape {
            create: "CREATE TABLE bench (id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL, amount_cents INTEGER NOT NULL, status TEXT NOT NULL, note TEXT, created_at TEXT NOT NULL); CREATE INDEX bench_customer ON bench (customer_id)".into(),
            fill: vec![format!("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows}) INSERT INTO bench SELECT i, abs(random()) % 50000, abs(random()) % 100000, 'new', 'order ' || i, datetime('now', '-' || i || ' minutes') FROM n"), "PRAGMA wal_checkpoint(TRUNCATE)".into()],
            copy_table: "CREATE TABLE bench_copy (id INTEGER PRIMARY KEY, customer_id BIGINT NOT NULL, amount_cents INTEGER NOT NULL, status TEXT NOT NULL, note TEXT, created_at TEXT NOT NULL, amount NUMERIC); CREATE INDEX bench_copy_customer ON bench_copy (customer_id); CREATE INDEX bench_copy_created ON bench_copy (created_at)".into(),
            copy: "INSERT INTO bench_copy SELECT id, customer_id, amount_cents, status, note, created_at, amount_cents / 100.0 FROM bench".into(),
            plan_changes: "  - alter_column: {name: customer_id, type: BIGINT}\n  - add_column: {name: amount, type: NUMERIC, from: amount_cents / 100.0}\n  - add_index: {name: bench_created, columns: [created_at]}\n",
            pt_alter: "",
        },
    }
}

async fn run_all(pool: &Pool, sql: &str) {
    for stmt in sql.split("; ").filter(|s| !s.trim().is_empty()) {
        pool.exec(stmt)
            .await
            .unwrap_or_else(|e| panic!("{stmt}: {e}"));
    }
}

/// Latencies (start offset, duration) of every write the writer made.
type Samples = Arc<Mutex<Vec<(Duration, Duration)>>>;

fn start_writer(
    pool: Pool,
    rows: u64,
    epoch: Instant,
    stop: Arc<AtomicBool>,
    samples: Samples,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut n: u64 = 0;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let id = 1 + (n.wrapping_mul(2_654_435_761) % rows);
            let sql = if n.is_multiple_of(4) {
                format!(
                    "INSERT INTO bench (customer_id, amount_cents, status, note, created_at) VALUES ({}, 100, 'new', 'w', {})",
                    n % 50_000,
                    now_sql(&pool)
                )
            } else {
                format!("UPDATE bench SET status = 'paid' WHERE id = {id}")
            };
            let t = Instant::now();
            let _ = pool.exec(&sql).await;
            samples.lock().await.push((t - epoch, t.elapsed()));
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
}

fn now_sql(pool: &Pool) -> &'static str {
    match pool {
        Pool::Pg(_) => "now()",
        Pool::My(_) => "NOW(6)",
        Pool::Lite(_) => "datetime('now')",
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
    let rss_kb: f64 = err
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Maximum resident set size (kbytes): ")
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    (secs, rss_kb / 1024.0)
}

fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    v[((v.len() - 1) as f64 * p) as usize]
}

fn window(samples: &[(Duration, Duration)], from: Duration, to: Duration) -> Vec<Duration> {
    samples
        .iter()
        .filter(|(at, took)| *at + *took >= from && *at <= to)
        .map(|(_, took)| *took)
        .collect()
}

async fn bench(kind: &str, rows: u64, pt_osc: bool) {
    let db = open(kind).await;
    let s = shape(kind, rows);
    run_all(&db.pool, &s.create).await;
    let t = Instant::now();
    for f in &s.fill {
        db.pool.exec(f).await.expect("fill");
    }
    println!("[{kind} {rows}] table filled in {:.1?}", t.elapsed());

    run_all(&db.pool, &s.copy_table).await;
    let t = Instant::now();
    db.pool.exec(&s.copy).await.expect("plain copy");
    let plain = t.elapsed().as_secs_f64();
    db.pool
        .exec("DROP TABLE bench_copy")
        .await
        .expect("drop copy");
    let plain_rate = rows as f64 / plain;

    let plan = db.dir.join(format!("bench-{kind}.yaml"));
    std::fs::write(
        &plan,
        format!(
            "version: 1\nname: bench\ntable: bench\nchanges:\n{}",
            s.plan_changes
        ),
    )
    .expect("plan");
    let plan = plan.to_str().expect("utf-8");

    let stop = Arc::new(AtomicBool::new(false));
    let samples: Samples = Arc::default();
    let epoch = Instant::now();
    let writer = start_writer(db.pool.clone(), rows, epoch, stop.clone(), samples.clone());
    let started = epoch.elapsed();
    let (_, mem_prep) = turnout(&db, &["run", plan, "--until", "dual_writing", "--yes"]);
    let (backfill_s, mem_backfill) = turnout(&db, &["run", plan, "--until", "backfilled", "--yes"]);
    let (verify_s, mem_verify) = turnout(&db, &["run", plan, "--until", "verified", "--yes"]);
    let cut_from = epoch.elapsed();
    let (cutover_s, mem_cut) = turnout(&db, &["run", plan, "--until", "cut_over", "--yes"]);
    let cut_to = epoch.elapsed();
    let (_, mem_clean) = turnout(&db, &["run", plan, "--yes"]);
    let ended = epoch.elapsed();
    stop.store(true, Ordering::Relaxed);
    let _ = writer.await;
    let all = samples.lock().await.clone();
    let during_cutover = window(&all, cut_from, cut_to);
    let whole = window(&all, started, ended);
    let peak = [mem_prep, mem_backfill, mem_verify, mem_cut, mem_clean]
        .into_iter()
        .fold(0.0, f64::max);
    println!(
        "[{kind} {rows}] plain INSERT…SELECT {plain:.2}s ({plain_rate:.0} rows/s) | turnout backfill {backfill_s:.2}s ({:.0} rows/s, ratio {:.2}) | verify {verify_s:.2}s ({:.0} rows/s) | cutover step {cutover_s:.2}s, longest writer stall during it {:.1} ms | whole migration {:.1}s, writer p99 {:.1} ms, max {:.1} ms, {} writes | peak RSS {peak:.1} MiB",
        rows as f64 / backfill_s,
        (rows as f64 / backfill_s) / plain_rate,
        rows as f64 / verify_s,
        percentile(during_cutover, 1.0).as_secs_f64() * 1000.0,
        (ended - started).as_secs_f64(),
        percentile(whole.clone(), 0.99).as_secs_f64() * 1000.0,
        percentile(whole.clone(), 1.0).as_secs_f64() * 1000.0,
        whole.len(),
    );

    if pt_osc && kind == "mysql" {
        let have = Command::new("sh")
            .args(["-c", "command -v pt-online-schema-change"])
            .output()
            .map(|o| o.status.success());
        if have.ok() != Some(true) {
            println!("installing percona-toolkit for pt-online-schema-change");
            let _ = Command::new("apt-get")
                .args([
                    "install",
                    "-y",
                    "--no-install-recommends",
                    "percona-toolkit",
                ])
                .status();
        }
        let db = open(kind).await;
        run_all(&db.pool, &s.create).await;
        for f in &s.fill {
            db.pool.exec(f).await.expect("fill");
        }
        let stop = Arc::new(AtomicBool::new(false));
        let samples: Samples = Arc::default();
        let epoch = Instant::now();
        let writer = start_writer(db.pool.clone(), rows, epoch, stop.clone(), samples.clone());
        let t = Instant::now();
        let out = Command::new("pt-online-schema-change")
            .args([
                "--alter",
                s.pt_alter,
                "--execute",
                "--no-check-alter",
                "--recursion-method=none",
                "h=127.0.0.1,P=3306,u=root,D=turnout_bench,t=bench",
            ])
            .output()
            .expect("pt-online-schema-change (apt-get install percona-toolkit)");
        let took = t.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        let _ = writer.await;
        assert!(
            out.status.success(),
            "pt-osc failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let all: Vec<Duration> = samples.lock().await.iter().map(|(_, d)| *d).collect();
        println!(
            "[{kind} {rows}] pt-online-schema-change {took:.1}s, writer p99 {:.1} ms, max {:.1} ms, {} writes",
            percentile(all.clone(), 0.99).as_secs_f64() * 1000.0,
            percentile(all.clone(), 1.0).as_secs_f64() * 1000.0,
            all.len()
        );
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let kind = args
        .first()
        .map(String::as_str)
        .unwrap_or("sqlite")
        .to_string();
    let pt_osc = args.iter().any(|a| a == "--pt-osc");
    let sizes: Vec<u64> = args.iter().skip(1).filter_map(|a| a.parse().ok()).collect();
    let sizes = if sizes.is_empty() {
        vec![1_000_000]
    } else {
        sizes
    };
    for rows in sizes {
        bench(&kind, rows, pt_osc).await;
    }
}
