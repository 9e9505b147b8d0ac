//! Per-test databases on the real servers (and SQLite files), a concurrent writer that
//! keeps a mirror in the same transactions as its writes, and row comparisons.

use std::path::PathBuf;
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use sqlx::{MySqlPool, PgPool, Row, SqlitePool};

pub const PG_ADMIN: &str = "postgres://postgres@127.0.0.1:5432/test";
pub const MY_ADMIN: &str = "mysql://root@127.0.0.1:3306/test";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
    MySql,
}

#[derive(Clone)]
pub enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
    MySql(MySqlPool),
}

pub struct TestDb {
    pub kind: Kind,
    pub url: String,
    pub pool: Pool,
    name: String,
    pub dir: tempfile::TempDir,
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

impl TestDb {
    pub async fn new(kind: Kind) -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        let name = unique("turnout_it");
        let (url, pool) = match kind {
            Kind::Sqlite => {
                let path = dir.path().join("test.db");
                let url = format!("sqlite://{}", path.display());
                let opts: sqlx::sqlite::SqliteConnectOptions = url.parse().expect("sqlite url");
                let pool = sqlx::sqlite::SqlitePoolOptions::new()
                    .max_connections(3)
                    .connect_with(
                        opts.create_if_missing(true)
                            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                            .busy_timeout(Duration::from_secs(20)),
                    )
                    .await
                    .expect("open sqlite");
                (url, Pool::Sqlite(pool))
            }
            Kind::Postgres => {
                let admin = PgPool::connect(PG_ADMIN).await.expect("postgres is up");
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&admin)
                    .await
                    .expect("create db");
                admin.close().await;
                let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
                (
                    url.clone(),
                    Pool::Postgres(PgPool::connect(&url).await.expect("connect")),
                )
            }
            Kind::MySql => {
                let admin = MySqlPool::connect(MY_ADMIN).await.expect("mariadb is up");
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&admin)
                    .await
                    .expect("create db");
                admin.close().await;
                let url = format!("mysql://root@127.0.0.1:3306/{name}");
                (
                    url.clone(),
                    Pool::MySql(MySqlPool::connect(&url).await.expect("connect")),
                )
            }
        };
        TestDb {
            kind,
            url,
            pool,
            name,
            dir,
        }
    }

    /// A database on a server the test started itself (tests/it/replicas.rs): it goes
    /// with that server, so it is never dropped from the shared ones.
    pub async fn on_own_server(kind: Kind, url: &str) -> TestDb {
        let pool = match kind {
            Kind::Postgres => Pool::Postgres(PgPool::connect(url).await.expect("connect")),
            Kind::MySql => Pool::MySql(MySqlPool::connect(url).await.expect("connect")),
            Kind::Sqlite => panic!("SQLite has no server of its own"),
        };
        TestDb {
            kind,
            url: url.to_string(),
            pool,
            name: String::new(),
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub async fn drop(self) {
        match &self.pool {
            Pool::Sqlite(p) => p.close().await,
            Pool::Postgres(p) => {
                p.close().await;
                if let Ok(admin) = PgPool::connect(PG_ADMIN).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                        self.name
                    )))
                    .execute(&admin)
                    .await;
                }
            }
            Pool::MySql(p) => {
                p.close().await;
                if let Ok(admin) = MySqlPool::connect(MY_ADMIN).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {}",
                        self.name
                    )))
                    .execute(&admin)
                    .await;
                }
            }
        }
    }

    /// Runs statements (no parameters) one after the other.
    pub async fn exec(&self, sql: &str) {
        for stmt in sql.split(";\n").map(str::trim).filter(|s| !s.is_empty()) {
            self.pool
                .exec(stmt, &[])
                .await
                .unwrap_or_else(|e| panic!("{stmt}: {e}"));
        }
    }

    /// Every row of a query, each value rendered as text by the database.
    pub async fn rows(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        self.pool.rows(sql).await
    }

    /// The first two columns of every row of a query, as text ("" for NULL).
    pub async fn pairs(&self, sql: &str) -> Vec<(String, String)> {
        self.rows(sql)
            .await
            .into_iter()
            .map(|r| {
                (
                    r[0].clone().unwrap_or_default(),
                    r[1].clone().unwrap_or_default(),
                )
            })
            .collect()
    }

    /// `CAST(expr AS text)` in this dialect.
    /// The first column of the first row a query returns, as text ("" for NULL).
    pub async fn one(&self, sql: &str) -> String {
        self.rows(sql).await[0][0].clone().unwrap_or_default()
    }

    /// The error a statement fails with (it must fail).
    pub async fn exec_err(&self, sql: &str) -> String {
        match self.pool.exec(sql, &[]).await {
            Ok(_) => panic!("{sql} succeeded"),
            Err(e) => e.to_string(),
        }
    }

    pub fn text(&self, expr: &str) -> String {
        match self.kind {
            Kind::MySql => format!("CAST({expr} AS CHAR)"),
            _ => format!("CAST({expr} AS TEXT)"),
        }
    }

    pub fn plan_file(&self, name: &str, yaml: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, yaml).expect("write plan");
        path
    }

    /// Runs the turnout binary against this database.
    pub fn turnout(&self, args: &[&str], fault: Option<&str>) -> Output {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_turnout"));
        cmd.args(args)
            .env("DATABASE_URL", &self.url)
            .env_remove("RUST_LOG");
        match fault {
            Some(f) => cmd.env("TURNOUT_FAULT", f),
            None => cmd.env_remove("TURNOUT_FAULT"),
        };
        cmd.output().expect("run turnout")
    }
}

impl Pool {
    pub async fn exec(&self, sql: &str, args: &[i64]) -> Result<u64, sqlx::Error> {
        match self {
            Pool::Sqlite(p) => {
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.to_string()));
                for a in args {
                    q = q.bind(*a);
                }
                Ok(q.execute(p).await?.rows_affected())
            }
            Pool::Postgres(p) => {
                let mut q = sqlx::query(sqlx::AssertSqlSafe(dollars(sql)));
                for a in args {
                    q = q.bind(*a);
                }
                Ok(q.execute(p).await?.rows_affected())
            }
            Pool::MySql(p) => {
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.to_string()));
                for a in args {
                    q = q.bind(*a);
                }
                Ok(q.execute(p).await?.rows_affected())
            }
        }
    }

    /// Runs the statements in one transaction; returns the rows each one affected.
    pub async fn transaction(&self, stmts: &[(String, Vec<i64>)]) -> Result<Vec<u64>, sqlx::Error> {
        self.transaction_held(stmts, std::time::Duration::ZERO)
            .await
    }

    /// Runs the statements in one transaction that stays open `hold` after the last one
    /// before it commits; returns the rows each one affected.
    pub async fn transaction_held(
        &self,
        stmts: &[(String, Vec<i64>)],
        hold: std::time::Duration,
    ) -> Result<Vec<u64>, sqlx::Error> {
        macro_rules! run {
            ($pool:expr, $fix:expr) => {{
                let mut tx = $pool.begin().await?;
                let mut affected = Vec::new();
                for (sql, args) in stmts {
                    let mut q = sqlx::query(sqlx::AssertSqlSafe($fix(sql)));
                    for a in args {
                        q = q.bind(*a);
                    }
                    match q.execute(&mut *tx).await {
                        Ok(r) => affected.push(r.rows_affected()),
                        Err(e) => {
                            // The caller sees the transaction fail; this says which statement.
                            eprintln!("transaction failed at {sql}: {e}");
                            // Now, not when the pool next hands the connection out: until
                            // then the open transaction holds the table's metadata lock,
                            // which a cutover waits for.
                            let _ = tx.rollback().await;
                            return Err(e);
                        }
                    }
                }
                tokio::time::sleep(hold).await;
                tx.commit().await?;
                Ok(affected)
            }};
        }
        match self {
            Pool::Sqlite(p) => run!(p, |s: &String| s.clone()),
            Pool::Postgres(p) => run!(p, |s: &String| dollars(s)),
            Pool::MySql(p) => run!(p, |s: &String| s.clone()),
        }
    }

    pub async fn rows(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        macro_rules! fetch {
            ($pool:expr) => {{
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
                    .fetch_all($pool)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
                rows.iter()
                    .map(|r| {
                        (0..r.len())
                            .map(|i| r.get::<Option<String>, _>(i))
                            .collect()
                    })
                    .collect()
            }};
        }
        match self {
            Pool::Sqlite(p) => fetch!(p),
            Pool::Postgres(p) => fetch!(p),
            Pool::MySql(p) => fetch!(p),
        }
    }
}

/// `?` placeholders to PostgreSQL's `$n`.
fn dollars(sql: &str) -> String {
    let mut out = String::new();
    let mut n = 0;
    for ch in sql.chars() {
        if ch == '?' {
            n += 1;
            out.push_str(&format!("${n}"));
        } else {
            out.push(ch);
        }
    }
    out
}

/// A writer that plays the application: inserts, updates (primary keys too) and deletes
/// on `table`, each applied to `mirror` in the same transaction. It only names columns
/// every phase keeps (`id`, `qty`, `tag`), so it runs unchanged across cutover.
pub struct Writer {
    stop: Arc<AtomicBool>,
    pub writes: Arc<AtomicU64>,
    #[allow(dead_code)]
    pub failures: Arc<AtomicU64>,
    /// The longest any one of its transactions took since the last [`Writer::reset_longest`], in µs.
    longest_us: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Writer {
    pub fn start(pool: Pool, table: &str, mirror: &str, first_new_id: i64, seed: u64) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let writes = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(AtomicU64::new(0));
        let longest_us = Arc::new(AtomicU64::new(0));
        let (t, m) = (table.to_string(), mirror.to_string());
        let (stop2, writes2, failures2) = (stop.clone(), writes.clone(), failures.clone());
        let longest2 = longest_us.clone();
        let task = tokio::spawn(async move {
            let mut errors = Vec::new();
            let mut rng = seed;
            let mut next_id = first_new_id;
            let mut step = |bound: i64| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                (rng % bound.max(1) as u64) as i64
            };
            while !stop2.load(Ordering::Relaxed) {
                let id = 1 + step(next_id);
                let op = step(10);
                let value = step(1000);
                let stmts: Vec<(String, Vec<i64>)> = match op {
                    0..=2 => {
                        next_id += 1;
                        let tag = if value % 3 == 0 {
                            None
                        } else {
                            Some(value % 7)
                        };
                        let (cols, args) = match tag {
                            Some(tg) => {
                                ("(id, qty, tag) VALUES (?, ?, ?)", vec![next_id, value, tg])
                            }
                            None => ("(id, qty) VALUES (?, ?)", vec![next_id, value]),
                        };
                        vec![
                            (format!("INSERT INTO {t} {cols}"), args.clone()),
                            (format!("INSERT INTO {m} {cols}"), args),
                        ]
                    }
                    3..=5 => vec![
                        (
                            format!("UPDATE {t} SET qty = ?, tag = ? WHERE id = ?"),
                            vec![value, value % 5, id],
                        ),
                        (
                            format!("UPDATE {m} SET qty = ?, tag = ? WHERE id = ?"),
                            vec![value, value % 5, id],
                        ),
                    ],
                    6..=7 => {
                        next_id += 1;
                        vec![
                            (
                                format!("UPDATE {t} SET id = ? WHERE id = ?"),
                                vec![next_id, id],
                            ),
                            (
                                format!("UPDATE {m} SET id = ? WHERE id = ?"),
                                vec![next_id, id],
                            ),
                        ]
                    }
                    _ => vec![
                        (format!("DELETE FROM {t} WHERE id = ?"), vec![id]),
                        (format!("DELETE FROM {m} WHERE id = ?"), vec![id]),
                    ],
                };
                let began = std::time::Instant::now();
                let done = pool.transaction(&stmts).await;
                longest2.fetch_max(began.elapsed().as_micros() as u64, Ordering::Relaxed);
                match done {
                    Ok(affected) => {
                        if affected[0] != affected[1] {
                            errors.push(format!(
                                "{stmts:?} affected {affected:?}: table and mirror disagree"
                            ));
                        }
                        writes2.fetch_add(1, Ordering::Relaxed);
                    }
                    // A failed transaction changed neither table: that is fine for the mirror,
                    // but counted, since an application write should rarely fail.
                    Err(e) => {
                        let k = failures2.fetch_add(1, Ordering::Relaxed);
                        if k < 3 || k % 50 == 0 {
                            let t = std::time::SystemTime::now()
                                .duration_since(std::time::UNIX_EPOCH)
                                .unwrap_or_default();
                            eprintln!("writer@{:.3}: #{k} {stmts:?} failed: {e}", t.as_secs_f64());
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            errors
        });
        Writer {
            stop,
            writes,
            failures,
            longest_us,
            task,
        }
    }

    /// Starts measuring the longest write afresh (from the phase a test looks at).
    #[allow(dead_code)]
    pub fn reset_longest(&self) {
        self.longest_us.store(0, Ordering::Relaxed);
    }

    /// The longest one write took since the last reset.
    #[allow(dead_code)]
    pub fn longest(&self) -> Duration {
        Duration::from_micros(self.longest_us.load(Ordering::Relaxed))
    }

    /// Stops the writer and returns the disagreements it saw (none expected).
    pub async fn stop(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("writer task")
    }

    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// Waits until the writer has made `n` more writes, so each phase sees some.
    pub async fn wait_for(&self, n: u64) {
        let target = self.writes() + n;
        for _ in 0..2000 {
            if self.writes() >= target {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the writer made no progress");
    }
}

/// Application statements run in a loop, one task each, every millisecond, timed: the
/// longest any of them took since the last [`Probes::reset`], and how many failed.
/// Each statement takes one id, cycling through `1..=ids`.
pub struct Probes {
    stop: Arc<AtomicBool>,
    worst_us: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Probes {
    /// Started and warmed up: the first statements, which include the pool's
    /// connecting, are not counted.
    pub async fn start(pool: &Pool, stmts: &[&'static str], ids: i64) -> Probes {
        let stop = Arc::new(AtomicBool::new(false));
        let worst_us = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let tasks = stmts
            .iter()
            .enumerate()
            .map(|(i, sql)| {
                let (pool, stop, worst, failed) =
                    (pool.clone(), stop.clone(), worst_us.clone(), failed.clone());
                let sql = *sql;
                tokio::spawn(async move {
                    let mut id = 1 + i as i64 % ids;
                    while !stop.load(Ordering::Relaxed) {
                        let start = std::time::Instant::now();
                        if pool.exec(sql, &[id]).await.is_err() {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                        worst.fetch_max(start.elapsed().as_micros() as u64, Ordering::Relaxed);
                        id = id % ids + 1;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                })
            })
            .collect();
        let probes = Probes {
            stop,
            worst_us,
            failed,
            tasks,
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        probes.reset();
        probes
    }

    /// The longest statement since the last reset, and a new start.
    pub fn reset(&self) -> Duration {
        Duration::from_micros(self.worst_us.swap(0, Ordering::Relaxed))
    }

    /// Stopped: the longest statement since the last reset, and the failures overall.
    pub async fn stop(self) -> (Duration, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        (
            Duration::from_micros(self.worst_us.load(Ordering::Relaxed)),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts a turnout run succeeded, showing its output when it did not.
pub fn ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({:?}):\n{}\n{}",
        out.status.code(),
        stdout(out),
        stderr(out)
    );
}

/// Starts the turnout binary against `db` without waiting for it (output piped), with no
/// fault and no log filter of the caller's, and `env` set.
pub fn spawn(db: &TestDb, args: &[&str], env: &[(&str, &str)]) -> std::process::Child {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_turnout"));
    cmd.args(args)
        .env("DATABASE_URL", &db.url)
        .env_remove("RUST_LOG")
        .env_remove("TURNOUT_FAULT")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn turnout")
}

/// Waits for a spawned turnout without blocking the runtime.
pub async fn finish(child: std::process::Child) -> Output {
    tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("wait")
}

/// The plan's migration as `turnout status --json` shows it.
pub async fn status_json(db: &TestDb, plan: &str) -> serde_json::Value {
    let out = db.turnout(&["status", plan, "--json"], None);
    ok(&out, "status");
    let all: serde_json::Value =
        serde_json::from_str(&stdout(&out)).expect("status --json is JSON");
    all[0].clone()
}

/// Log text without its colour codes.
pub fn plain(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for e in chars.by_ref() {
                if e.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
