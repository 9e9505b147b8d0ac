//! Replica-aware throttling against real replicas the tests start themselves, each pair
//! on ports of its own under /tmp (never the shared servers on 5432/3306): a PostgreSQL
//! primary with a streaming standby made by `pg_basebackup -R`, and a MariaDB primary
//! with its binary log on and a replica of it. A replica made to lag on purpose (replay
//! paused) holds the backfill back, named in `status`, and the backfill carries on once
//! it catches up; a replica that goes away stops the backfill, and `resume` carries on.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{
    self, Kind, TestDb, Writer, finish, ok, plain, status_json as status, stderr,
};
use crate::scenarios::{SEED_ROWS, compare_with_mirror, plan, seed};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
const DB: &str = "turnout_it_replicas";

/// A port nothing listens on now (the OS picks it).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn run(cmd: &mut Command, what: &str) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|r| r.split_whitespace().next() == Some("0"))
        })
        .unwrap_or(false)
}

/// PostgreSQL refuses to run as root: as root the tests run it as the `postgres` user.
fn as_postgres(program: &str) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", &format!("{PG_BIN}/{program}")]);
        c
    } else {
        Command::new(format!("{PG_BIN}/{program}"))
    }
}

/// A PostgreSQL primary and its streaming standby, stopped (and their data removed) when
/// the test ends, passed or failed.
struct PgPair {
    dir: PathBuf,
    primary: u16,
    standby: u16,
}

impl PgPair {
    fn start() -> PgPair {
        let dir = PathBuf::from(format!(
            "/tmp/turnout_replicas_pg_{}_{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).expect("data dir");
        if is_root() {
            run(
                Command::new("chown").args(["postgres", &dir.display().to_string()]),
                "chown",
            );
        }
        let pair = PgPair {
            dir,
            primary: free_port(),
            standby: free_port(),
        };
        let primary = pair.dir.join("primary");
        run(
            as_postgres("initdb").args([
                "-D",
                &s(&primary),
                "-U",
                "postgres",
                "--auth=trust",
                "-N",
            ]),
            "initdb",
        );
        append(
            &primary.join("postgresql.conf"),
            &format!(
                "listen_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\nwal_level = replica\nmax_wal_senders = 4\nfsync = off\n",
                pair.primary,
                pair.dir.display()
            ),
        );
        append(
            &primary.join("pg_hba.conf"),
            "host replication all 127.0.0.1/32 trust\n",
        );
        pair.pg_ctl("primary", "start");
        let standby = pair.dir.join("standby");
        run(
            as_postgres("pg_basebackup").args([
                "-h",
                "127.0.0.1",
                "-p",
                &pair.primary.to_string(),
                "-U",
                "postgres",
                "-D",
                &s(&standby),
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
            ]),
            "pg_basebackup",
        );
        append(
            &standby.join("postgresql.conf"),
            &format!("port = {}\n", pair.standby),
        );
        pair.pg_ctl("standby", "start");
        pair
    }

    fn pg_ctl(&self, node: &str, what: &str) {
        let data = s(&self.dir.join(node));
        let log = s(&self.dir.join(format!("{node}.log")));
        let mut c = as_postgres("pg_ctl");
        c.args(["-D", &data, "-l", &log, "-w", "-m", "immediate", what]);
        run(&mut c, &format!("pg_ctl {what} {node}"));
    }

    fn url(&self, port: u16) -> String {
        format!("postgres://postgres@127.0.0.1:{port}/{DB}")
    }
}

impl Drop for PgPair {
    fn drop(&mut self) {
        for node in ["standby", "primary"] {
            let _ = as_postgres("pg_ctl")
                .args([
                    "-D",
                    &s(&self.dir.join(node)),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ])
                .output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A MariaDB primary (binary log on) and a replica of it, stopped (and their data removed)
/// when the test ends, passed or failed.
struct MyPair {
    dir: PathBuf,
    primary: u16,
    replica: u16,
    servers: Vec<Child>,
}

impl MyPair {
    fn start() -> MyPair {
        let dir = PathBuf::from(format!(
            "/tmp/turnout_replicas_my_{}_{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).expect("data dir");
        let mut pair = MyPair {
            dir,
            primary: free_port(),
            replica: free_port(),
            servers: Vec::new(),
        };
        let log = |node: &str| pair.dir.join(format!("{node}-install.log"));
        let installs: Vec<(&str, Child)> = ["primary", "replica"]
            .into_iter()
            .map(|node| {
                let out = std::fs::File::create(log(node)).expect("install log");
                let child = Command::new("mariadb-install-db")
                    .env("TMPDIR", pair.tmp(node))
                    .args([
                        "--no-defaults",
                        &format!("--datadir={}", s(&pair.dir.join(node))),
                        "--user=root",
                        "--auth-root-authentication-method=normal",
                        "--skip-test-db",
                    ])
                    .stdout(out.try_clone().expect("log"))
                    .stderr(out)
                    .spawn()
                    .expect("mariadb-install-db");
                (node, child)
            })
            .collect();
        for (node, mut i) in installs {
            let done = i.wait().expect("install");
            assert!(
                done.success(),
                "mariadb-install-db {node}: {done}\n{}",
                std::fs::read_to_string(log(node)).unwrap_or_default()
            );
        }
        for (node, port, id) in [("primary", pair.primary, 1), ("replica", pair.replica, 2)] {
            let mut args = vec![
                "--no-defaults".to_string(),
                "--user=root".into(),
                format!("--datadir={}", s(&pair.dir.join(node))),
                format!("--port={port}"),
                "--bind-address=127.0.0.1".into(),
                format!("--socket={}", s(&pair.dir.join(format!("{node}.sock")))),
                format!("--pid-file={}", s(&pair.dir.join(format!("{node}.pid")))),
                format!("--log-error={}", s(&pair.dir.join(format!("{node}.err")))),
                format!("--server-id={id}"),
                "--skip-name-resolve".into(),
                "--innodb-buffer-pool-size=32M".into(),
            ];
            if node == "primary" {
                args.push(format!("--log-bin={}", s(&pair.dir.join("primary/bin"))));
            }
            let child = Command::new("mariadbd")
                .args(&args)
                .env("TMPDIR", pair.tmp(node))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("mariadbd");
            pair.servers.push(child);
        }
        pair
    }

    /// A temporary directory of the node's own: two servers bootstrapping at once in
    /// the shared /tmp can clash on their temporary tables' names.
    fn tmp(&self, node: &str) -> PathBuf {
        let dir = self.dir.join(format!("{node}-tmp"));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        dir
    }

    fn url(&self, port: u16, db: &str) -> String {
        format!("mysql://root@127.0.0.1:{port}/{db}")
    }
}

impl Drop for MyPair {
    fn drop(&mut self) {
        for c in &mut self.servers {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn append(file: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(file)
        .expect("open conf");
    f.write_all(text.as_bytes()).expect("append conf");
}

/// Runs statements on a server until it answers (it may still be starting).
async fn on_server(kind: Kind, url: &str, stmts: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r: Result<(), sqlx::Error> = async {
            use sqlx::Connection;
            match kind {
                Kind::Postgres => {
                    let mut c = sqlx::PgConnection::connect(url).await?;
                    for st in stmts {
                        sqlx::raw_sql(sqlx::AssertSqlSafe(st.to_string()))
                            .execute(&mut c)
                            .await?;
                    }
                    c.close().await
                }
                _ => {
                    let mut c = sqlx::MySqlConnection::connect(url).await?;
                    for st in stmts {
                        sqlx::raw_sql(sqlx::AssertSqlSafe(st.to_string()))
                            .execute(&mut c)
                            .await?;
                    }
                    c.close().await
                }
            }
        }
        .await;
        match r {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => panic!("{url}: {stmts:?}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// The first value a query returns on a server, as text.
async fn one(kind: Kind, url: &str, sql: &str) -> Option<String> {
    use sqlx::{Connection, Row};
    let q = sqlx::AssertSqlSafe(sql.to_string());
    match kind {
        Kind::Postgres => {
            let mut c = sqlx::PgConnection::connect(url).await.ok()?;
            let r = sqlx::query(q).fetch_optional(&mut c).await.ok()??;
            r.try_get::<Option<String>, _>(0).ok()?
        }
        _ => {
            let mut c = sqlx::MySqlConnection::connect(url).await.ok()?;
            let r = sqlx::query(q).fetch_optional(&mut c).await.ok()??;
            r.try_get::<Option<String>, _>(0).ok()?
        }
    }
}

/// turnout with its info log on stderr, which the tests read.
fn spawn(db: &TestDb, args: &[&str], env: &[(&str, &str)]) -> Child {
    let logged = [("RUST_LOG", "turnout=info")];
    harness::spawn(db, args, &[&logged[..], env].concat())
}

/// Polls `status` until `what` holds, for at most `secs` seconds, while the turnout
/// `child` runs (one that ended first fails the test with what it said).
async fn until(
    db: &TestDb,
    plan: &str,
    child: &mut Child,
    secs: u64,
    what: &str,
    cond: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let st = status(db, plan).await;
        if cond(&st) {
            return st;
        }
        if let Ok(Some(code)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            panic!("turnout ended ({code}) before {what}:\n{err}\n{st:#}");
        }
        assert!(Instant::now() < deadline, "never {what}: {st:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn copied(st: &serde_json::Value) -> u64 {
    st["backfill"]["rows_copied"].as_u64().unwrap_or(0)
}

/// The standard plan, in small batches so the backfill lasts a few seconds, throttled by
/// one replica.
fn replica_plan(kind: Kind, name: &str, replica: &str) -> String {
    plan(kind, name, 50).replace(
        "  batch_size: 50\n",
        &format!(
            "  batch_size: 50\n  pause: 40ms\n  throttle:\n    replicas: [\"{replica}\"]\n    max_lag: 500ms\n"
        ),
    )
}

/// A "replica" that is no replica (here the primary itself) would never hold anything
/// back: the backfill refuses to run unwatched, exit 3, naming it; rolled back after.
async fn a_replica_that_is_not_one_stops_the_backfill(db: &TestDb, url: &str, shown: &str) {
    let path = db.plan_file("self.yaml", &replica_plan(db.kind, "items-self", url));
    let plan = path.to_str().expect("utf-8");
    let out = db.turnout(&["run", plan, "--yes"], None);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains(&format!("replica {shown}")), "{err}");
    assert!(err.contains("it is not a"), "{err}");
    let st = status(db, plan).await;
    assert_eq!(st["phase"], "dual_writing", "{st:#}");
    assert_eq!(copied(&st), 0, "nothing copied unwatched: {st:#}");
    ok(&db.turnout(&["rollback", plan, "--yes"], None), "rollback");
}

/// The scenario on either database: the replica lags on purpose (`lag`), the backfill
/// waits naming it and its lag, copies nothing meanwhile; once it catches up (`catch_up`)
/// the backfill finishes. Made to lag again, verify waits for it the same way; once it
/// catches up the run goes on to done, and the table is exactly what the writer wrote.
async fn a_lagging_replica_holds_the_backfill_back(
    db: &TestDb,
    replica_url: &str,
    replica_shown: &str,
    lag: &[&str],
    catch_up: &[&str],
) {
    let path = db.plan_file(
        "plan.yaml",
        &replica_plan(db.kind, "items-replicas", replica_url),
    );
    let plan = path.to_str().expect("utf-8");
    let writer = Writer::start(db.pool.clone(), "items", "mirror", SEED_ROWS, 23);
    let mut child = spawn(db, &["run", plan, "--until", "backfilled", "--yes"], &[]);
    until(db, plan, &mut child, 60, "copied 200 rows", |st| {
        copied(st) >= 200
    })
    .await;

    on_server(db.kind, replica_url, lag).await;
    let st = until(db, plan, &mut child, 30, "waiting for the replica", |st| {
        st["waiting"]["reason"] == "replica lag"
    })
    .await;
    assert_eq!(st["phase"], "dual_writing", "{st:#}");
    assert_eq!(st["waiting"]["replica"], replica_shown, "{st:#}");
    let lag_ms = st["waiting"]["lag_ms"].as_u64().expect("lag_ms");
    // Above 500 ms, shown in whole milliseconds: 500.4 ms reads 500.
    assert!(lag_ms >= 500, "a lag above max_lag: {st:#}");
    let detail = st["waiting"]["detail"].as_str().expect("detail");
    assert!(detail.contains(replica_shown), "{detail}");
    assert!(
        !detail.contains("://"),
        "the replica's URL is not shown: {detail}"
    );
    let rows_then = copied(&st);
    assert!(rows_then < SEED_ROWS as u64, "it finished first: {st:#}");

    // While the replica stays behind, nothing is copied, the lag shown grows, and the
    // application writes on.
    writer.wait_for(50).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let st = status(db, plan).await;
    assert_eq!(
        copied(&st),
        rows_then,
        "a batch was copied while the replica lagged: {st:#}"
    );
    assert_eq!(st["waiting"]["reason"], "replica lag", "{st:#}");
    assert!(
        st["waiting"]["lag_ms"].as_u64().unwrap_or(0) > lag_ms,
        "the lag shown is the latest: {st:#}"
    );

    on_server(db.kind, replica_url, catch_up).await;
    let out = finish(child).await;
    ok(&out, "the backfill once the replica caught up");
    let log = stderr(&out);
    assert!(
        log.contains("replica lag") && log.contains(replica_shown),
        "the log says why it waited:\n{log}"
    );
    assert!(log.contains("carrying on after waiting"), "{log}");
    let st = status(db, plan).await;
    assert_eq!(st["phase"], "backfilled", "{st:#}");
    assert!(st["waiting"].is_null(), "{st:#}");

    // A replica that falls behind mid-verify stops the comparison at its next chunk (it
    // lets its snapshot go), verify waits, and compares again once it catches up.
    // About twenty chunks of 100 rows, each taking 250 ms: five seconds of verify.
    writer.wait_for(20).await;
    let mut child = spawn(
        db,
        &["run", plan, "--yes"],
        &[
            ("TURNOUT_VERIFY_CHUNK_ROWS", "100"),
            ("TURNOUT_DELAY", "verify.chunk:250"),
        ],
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    on_server(db.kind, replica_url, lag).await;
    let st = until(
        db,
        plan,
        &mut child,
        30,
        "verify waiting for the replica",
        |st| st["waiting"]["reason"] == "replica lag",
    )
    .await;
    assert_eq!(st["phase"], "backfilled", "verify finished first: {st:#}");
    assert_eq!(st["waiting"]["replica"], replica_shown, "{st:#}");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let st = status(db, plan).await;
    assert_eq!(st["phase"], "backfilled", "verify went on: {st:#}");
    assert!(st["verify"]["passed"].is_null(), "{st:#}");
    on_server(db.kind, replica_url, catch_up).await;
    let out = finish(child).await;
    ok(&out, "the run once the replica caught up again");
    let log = plain(&stderr(&out));
    let compared: u64 = log
        .lines()
        .find(|l| l.contains("verify stopped for replica lag"))
        .and_then(|l| l.split("rows=").nth(1))
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the lag did not stop verify mid-way:\n{log}"));
    // Mid-way through the table as it stood (the writer inserts meanwhile, so the seed's
    // size is not the end).
    let total: u64 = log
        .lines()
        .find(|l| l.contains("rows identical in"))
        .and_then(|l| l.split(" rows identical").next())
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("verify never finished:\n{log}"));
    assert!(
        compared < total,
        "verify stopped at a chunk, not the end:\n{log}"
    );
    writer.wait_for(20).await;
    let disagreements = writer.stop().await;
    assert!(disagreements.is_empty(), "{disagreements:?}");
    compare_with_mirror(db, true).await;
    let st = status(db, plan).await;
    assert_eq!(st["phase"], "done", "{st:#}");
    assert!(st["waiting"].is_null(), "{st:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_paused_standby_holds_the_backfill_back_until_it_replays_again() {
    let pair = PgPair::start();
    on_server(
        Kind::Postgres,
        &format!("postgres://postgres@127.0.0.1:{}/postgres", pair.primary),
        &[&format!("CREATE DATABASE {DB}")],
    )
    .await;
    // The standby answers once it has replayed the new database.
    on_server(Kind::Postgres, &pair.url(pair.standby), &["SELECT 1"]).await;
    let db = TestDb::on_own_server(Kind::Postgres, &pair.url(pair.primary)).await;
    let standby = pair.url(pair.standby);
    seed(&db).await;
    a_lagging_replica_holds_the_backfill_back(
        &db,
        &standby,
        &format!("127.0.0.1:{}", pair.standby),
        &["SELECT pg_wal_replay_pause()"],
        &["SELECT pg_wal_replay_resume()"],
    )
    .await;
    // The standby replays everything, the new table included.
    let count = "SELECT count(*)::text FROM items";
    let on_primary = one(Kind::Postgres, &db.url, count).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while one(Kind::Postgres, &standby, count).await != on_primary {
        assert!(Instant::now() < deadline, "the standby never caught up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_a_replica_with_its_sql_thread_stopped_holds_the_backfill_back() {
    let pair = MyPair::start();
    let (primary, replica) = (pair.url(pair.primary, ""), pair.url(pair.replica, ""));
    on_server(Kind::MySql, &primary, &["SELECT 1"]).await;
    let (file, pos) = {
        use sqlx::{Connection, Row};
        let mut c = sqlx::MySqlConnection::connect(&primary)
            .await
            .expect("primary");
        let r = sqlx::raw_sql("SHOW MASTER STATUS")
            .fetch_one(&mut c)
            .await
            .expect("the primary logs");
        let file: String = r.try_get(0).expect("file");
        let pos: u64 = r.try_get(1).expect("position");
        (file, pos)
    };
    let change = format!(
        "CHANGE MASTER TO MASTER_HOST = '127.0.0.1', MASTER_PORT = {}, MASTER_USER = 'root', MASTER_USE_GTID = no, MASTER_LOG_FILE = '{file}', MASTER_LOG_POS = {pos}",
        pair.primary
    );
    on_server(Kind::MySql, &replica, &[&change, "START SLAVE"]).await;
    on_server(Kind::MySql, &primary, &[&format!("CREATE DATABASE {DB}")]).await;
    let replica_db = pair.url(pair.replica, DB);
    on_server(Kind::MySql, &replica_db, &["SELECT 1"]).await;
    let db = TestDb::on_own_server(Kind::MySql, &pair.url(pair.primary, DB)).await;
    seed(&db).await;
    a_replica_that_is_not_one_stops_the_backfill(
        &db,
        &db.url.clone(),
        &format!("127.0.0.1:{}", pair.primary),
    )
    .await;
    a_lagging_replica_holds_the_backfill_back(
        &db,
        &replica_db,
        &format!("127.0.0.1:{}", pair.replica),
        &["STOP SLAVE SQL_THREAD"],
        &["START SLAVE SQL_THREAD"],
    )
    .await;
}

/// A standby that goes away mid-backfill stops it (exit 3, the replica named, what to
/// run next); the state is where the last batch left it; once the standby is back,
/// `resume` finishes the migration exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_an_unreachable_standby_stops_the_backfill_and_resume_carries_on() {
    let pair = PgPair::start();
    on_server(
        Kind::Postgres,
        &format!("postgres://postgres@127.0.0.1:{}/postgres", pair.primary),
        &[&format!("CREATE DATABASE {DB}")],
    )
    .await;
    // The standby answers once it has replayed the new database.
    on_server(Kind::Postgres, &pair.url(pair.standby), &["SELECT 1"]).await;
    let db = TestDb::on_own_server(Kind::Postgres, &pair.url(pair.primary)).await;
    seed(&db).await;
    a_replica_that_is_not_one_stops_the_backfill(
        &db,
        &db.url.clone(),
        &format!("127.0.0.1:{}", pair.primary),
    )
    .await;
    let shown = format!("127.0.0.1:{}", pair.standby);
    let path = db.plan_file(
        "plan.yaml",
        &replica_plan(
            Kind::Postgres,
            "items-gone",
            &format!("postgres://postgres:s3cret@127.0.0.1:{}/{DB}", pair.standby),
        ),
    );
    let plan = path.to_str().expect("utf-8");
    let writer = Writer::start(db.pool.clone(), "items", "mirror", SEED_ROWS, 29);
    let mut child = spawn(&db, &["run", plan, "--yes"], &[]);
    until(&db, plan, &mut child, 60, "copied 200 rows", |st| {
        copied(st) >= 200
    })
    .await;
    pair.pg_ctl("standby", "stop");

    let out = finish(child).await;
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(3),
        "exit 3 when a replica is gone:\n{err}"
    );
    assert!(err.contains(&format!("replica {shown}")), "{err}");
    assert!(err.contains("backfill.throttle.replicas[0]"), "{err}");
    assert!(
        err.contains("turnout resume"),
        "it says what to run next:\n{err}"
    );
    assert!(
        !err.contains("s3cret"),
        "the password is never shown:\n{err}"
    );
    let st = status(&db, plan).await;
    assert_eq!(st["phase"], "dual_writing", "{st:#}");
    assert!(
        st["waiting"].is_null(),
        "a stopped run waits for nothing: {st:#}"
    );
    let events = st["events"].to_string();
    assert!(events.contains(&shown), "{events}");
    assert!(!events.contains("s3cret"), "{events}");
    let stopped_at = copied(&st);
    assert!(stopped_at < SEED_ROWS as u64, "{st:#}");

    // Still gone: resume refuses the same way, copying nothing.
    let again = db.turnout(&["resume", plan, "--yes"], None);
    assert_eq!(again.status.code(), Some(3), "{}", stderr(&again));
    assert_eq!(copied(&status(&db, plan).await), stopped_at);

    pair.pg_ctl("standby", "start");
    writer.wait_for(30).await;
    ok(&db.turnout(&["resume", plan, "--yes"], None), "resume");
    writer.wait_for(20).await;
    let disagreements = writer.stop().await;
    assert!(disagreements.is_empty(), "{disagreements:?}");
    compare_with_mirror(&db, true).await;
    assert_eq!(status(&db, plan).await["phase"], "done");
}

/// `turnout check` refuses replicas where they cannot be: SQLite has none, and a
/// PostgreSQL database has no MariaDB replica. Exit 2, nothing touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_that_cannot_be_are_refused_by_check() {
    for (kind, replica, culprit) in [
        (
            Kind::Sqlite,
            "postgres://u@127.0.0.1:5433/app",
            "backfill.throttle.replicas: SQLite has no replicas",
        ),
        (
            Kind::Postgres,
            "mysql://root:pw@127.0.0.1:3307/app",
            "backfill.throttle.replicas[0]: 127.0.0.1:3307 is a mysql:// URL, which cannot be a replica of this postgres database",
        ),
    ] {
        let db = TestDb::new(kind).await;
        seed(&db).await;
        let path = db.plan_file("plan.yaml", &replica_plan(kind, "items-nowhere", replica));
        let plan = path.to_str().expect("utf-8");
        for cmd in [vec!["check", plan], vec!["run", plan, "--yes"]] {
            let out = db.turnout(&cmd, None);
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(2), "{kind:?} {cmd:?}:\n{err}");
            assert!(err.contains(culprit), "{kind:?} {cmd:?}:\n{err}");
            assert!(!err.contains(":pw@"), "{err}");
        }
        let left = db
            .rows("SELECT name FROM turnout_state")
            .await
            .into_iter()
            .flatten()
            .flatten()
            .filter(|n| n == "items-nowhere")
            .count();
        assert_eq!(left, 0, "{kind:?}: a refused plan left no state");
        db.drop().await;
    }
}
