//! Live control from a second process: `turnout pause`, `tune` and `unpause` run as
//! separate commands against a turnout that is backfilling or verifying under the
//! concurrent writer; and a migration killed while paused stays paused after `resume`.

use std::time::{Duration, Instant};

use sqlx::Connection;

use crate::harness::{
    Kind, TestDb, Writer, finish, ok, plain, spawn, status_json as status, stderr, stdout,
};
use crate::scenarios::{SEED_ROWS, compare_with_mirror, plan, seed};

/// Polls `status` until `what` holds, for at most `secs` seconds.
async fn until(
    db: &TestDb,
    plan: &str,
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
        assert!(Instant::now() < deadline, "never {what}: {st:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn copied(st: &serde_json::Value) -> u64 {
    st["backfill"]["rows_copied"].as_u64().expect("rows_copied")
}

/// Takes and releases the strongest lock on `items` from a connection of its own: it is
/// granted only when no other session holds any lock on the table (no transaction that
/// read or wrote it is open), so it fails while a paused turnout would hold one.
async fn table_lock_is_free(db: &TestDb) -> Duration {
    let t0 = Instant::now();
    let r: Result<(), sqlx::Error> = async {
        match db.kind {
            Kind::Postgres => {
                let mut c = sqlx::PgConnection::connect(&db.url).await?;
                let mut tx = c.begin().await?;
                sqlx::raw_sql(
                    "SET LOCAL lock_timeout = '2s'; LOCK TABLE items IN ACCESS EXCLUSIVE MODE",
                )
                .execute(&mut *tx)
                .await?;
                tx.rollback().await?;
                c.close().await
            }
            Kind::MySql => {
                let mut c = sqlx::MySqlConnection::connect(&db.url).await?;
                sqlx::raw_sql("SET SESSION lock_wait_timeout = 2")
                    .execute(&mut c)
                    .await?;
                sqlx::raw_sql("LOCK TABLES items WRITE")
                    .execute(&mut c)
                    .await?;
                sqlx::raw_sql("UNLOCK TABLES").execute(&mut c).await?;
                c.close().await
            }
            Kind::Sqlite => {
                let opts: sqlx::sqlite::SqliteConnectOptions = db.url.parse()?;
                let mut c = sqlx::SqliteConnection::connect_with(
                    &opts.busy_timeout(Duration::from_secs(2)),
                )
                .await?;
                sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut c).await?;
                sqlx::raw_sql("ROLLBACK").execute(&mut c).await?;
                c.close().await
            }
        }
    }
    .await;
    let took = t0.elapsed();
    if let Err(e) = r {
        panic!("the table is held while paused ({took:?}): {e}");
    }
    assert!(
        took < Duration::from_millis(1500),
        "the table lock took {took:?}"
    );
    took
}

/// A write of the application's, timed: it must not queue behind a paused turnout.
async fn a_write_is_prompt(db: &TestDb) {
    let t0 = Instant::now();
    db.pool
        .transaction(&[
            (
                "UPDATE items SET qty = qty WHERE id = 7".to_string(),
                vec![],
            ),
            (
                "UPDATE mirror SET qty = qty WHERE id = 7".to_string(),
                vec![],
            ),
        ])
        .await
        .expect("a write while paused");
    assert!(
        t0.elapsed() < Duration::from_millis(1000),
        "a write took {:?} while paused",
        t0.elapsed()
    );
}

/// Pause a running backfill from another process; it stops copying while the writer
/// goes on and holds nothing; tune the batch size; unpause; it finishes exact.
pub async fn pause_tune_unpause_a_running_backfill(kind: Kind) {
    let db = TestDb::new(kind).await;
    seed(&db).await;
    let path = db.plan_file(
        "plan.yaml",
        &plan(kind, "items-control", 50)
            .replace("batch_size: 50", "batch_size: 50\n  pause: 100ms"),
    );
    let plan = path.to_str().expect("utf-8");
    let writer = Writer::start(db.pool.clone(), "items", "mirror", SEED_ROWS, 41);
    let child = spawn(&db, &["run", plan, "--yes"], &[]);
    until(&db, plan, 30, "copied 200 rows", |st| {
        st["backfill"]["rows_copied"].as_u64().unwrap_or(0) >= 200
    })
    .await;

    let paused = db.turnout(&["pause", plan], None);
    ok(&paused, "pause");
    assert!(stdout(&paused).contains("paused"), "{}", stdout(&paused));
    let st = until(&db, plan, 10, "waiting paused", |st| {
        st["waiting"]["reason"] == "paused"
    })
    .await;
    assert!(
        st["paused"]["by"]
            .as_str()
            .is_some_and(|by| by.contains("pid")),
        "{st}"
    );
    assert_eq!(st["phase"], "dual_writing");
    let (rows_then, batches_then) = (
        copied(&st),
        st["backfill"]["batches"].as_u64().expect("batches"),
    );
    assert!(
        rows_then < SEED_ROWS as u64,
        "it finished before the pause: {st}"
    );
    writer.wait_for(50).await;
    table_lock_is_free(&db).await;
    a_write_is_prompt(&db).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let st = status(&db, plan).await;
    assert_eq!(copied(&st), rows_then, "it kept copying while paused: {st}");
    let text = stdout(&db.turnout(&["status", plan], None));
    assert!(
        text.contains("PAUSED since") && text.contains("waiting since"),
        "{text}"
    );

    let tuned = db.turnout(
        &["tune", plan, "--batch-size", "300", "--pause", "20ms"],
        None,
    );
    ok(&tuned, "tune");
    let st = status(&db, plan).await;
    assert_eq!(st["in_force"]["batch_size"], 300, "{st}");
    assert_eq!(st["in_force"]["pause_ms"], 20, "{st}");
    assert!(st["in_force"]["tuned"]["by"].is_string(), "{st}");
    assert!(
        stdout(&db.turnout(&["status", plan], None)).contains("batch_size 300, pause 20ms"),
        "status text shows the tuned values"
    );
    let bad = db.turnout(&["tune", plan, "--batch-size", "0"], None);
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    assert!(stderr(&bad).contains("at least 1 row"), "{}", stderr(&bad));

    ok(&db.turnout(&["unpause", plan], None), "unpause");
    let out = finish(child).await;
    ok(&out, "the paused run, once unpaused");
    assert!(stderr(&out).contains("paused by"), "{}", stderr(&out));
    assert!(writer.stop().await.is_empty());
    compare_with_mirror(&db, true).await;
    let st = status(&db, plan).await;
    assert_eq!(st["phase"], "done");
    assert!(st["waiting"].is_null(), "{st}");
    // Every batch after the pause was of 300 rows but the last.
    assert_eq!(st["backfill"]["batch_size"], 300, "{st}");
    let (rows, batches) = (
        copied(&st) - rows_then,
        st["backfill"]["batches"].as_u64().expect("batches") - batches_then,
    );
    assert!(
        batches >= 1 && rows > (batches - 1) * 300 && rows <= batches * 300,
        "{rows} rows in {batches} batches after the tune to 300: {st}"
    );
    let events = st["events"].to_string();
    assert!(events.contains("unpaused after"), "{events}");
    db.drop().await;
}

/// Pause during verify: the comparison stops at its next chunk and lets its snapshot go;
/// once unpaused it compares again and the migration finishes exact.
pub async fn pause_during_verify(kind: Kind) {
    let db = TestDb::new(kind).await;
    seed(&db).await;
    let path = db.plan_file("plan.yaml", &plan(kind, "items-verify-pause", 500));
    let plan = path.to_str().expect("utf-8");
    let writer = Writer::start(db.pool.clone(), "items", "mirror", SEED_ROWS, 43);
    ok(
        &db.turnout(&["run", plan, "--until", "backfilled", "--yes"], None),
        "backfill",
    );
    // About twenty chunks of 100 rows, each taking 250 ms: five seconds of verify.
    let child = spawn(
        &db,
        &["-v", "run", plan, "--until", "verified", "--yes"],
        &[
            ("TURNOUT_VERIFY_CHUNK_ROWS", "100"),
            ("TURNOUT_DELAY", "verify.chunk:250"),
        ],
    );
    // Late enough that the comparison has begun even when the process takes a couple of
    // seconds to get there on a loaded machine (1 s was not, in one CI run: the pause
    // then held verify before its first chunk), early enough that about half remains.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    ok(&db.turnout(&["pause", plan], None), "pause");
    let st = until(&db, plan, 10, "waiting paused", |st| {
        st["waiting"]["reason"] == "paused"
    })
    .await;
    assert_eq!(
        st["phase"], "backfilled",
        "verify finished before the pause"
    );
    writer.wait_for(30).await;
    table_lock_is_free(&db).await;
    a_write_is_prompt(&db).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let st = status(&db, plan).await;
    assert_eq!(
        st["phase"], "backfilled",
        "verify went on while paused: {st}"
    );
    assert!(st["verify"]["passed"].is_null(), "{st}");
    ok(&db.turnout(&["unpause", plan], None), "unpause");
    let out = finish(child).await;
    ok(&out, "verify once unpaused");
    // The comparison stopped at its next chunk, well before the table's end.
    let log = plain(&stderr(&out));
    let compared: u64 = log
        .lines()
        .find(|l| l.contains("verify paused"))
        .and_then(|l| l.split("rows=").nth(1))
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the pause did not come mid-verify:\n{log}"));
    let total: u64 = db
        .rows(&format!("SELECT {} FROM items", db.text("count(*)")))
        .await[0][0]
        .as_deref()
        .and_then(|n| n.parse().ok())
        .expect("count");
    assert!(
        compared + 500 < total,
        "verify went on to compare {compared} of {total} rows after the pause:\n{log}"
    );
    assert_eq!(status(&db, plan).await["phase"], "verified");
    ok(&db.turnout(&["run", plan, "--yes"], None), "to done");
    assert!(writer.stop().await.is_empty());
    compare_with_mirror(&db, true).await;
    db.drop().await;
}

/// Killed (SIGKILL) while paused: `resume` says it is paused and waits, copying nothing,
/// until `unpause`; then it finishes exact.
pub async fn killed_while_paused_resume_stays_paused(kind: Kind) {
    let db = TestDb::new(kind).await;
    seed(&db).await;
    let path = db.plan_file(
        "plan.yaml",
        &plan(kind, "items-kill-paused", 50)
            .replace("batch_size: 50", "batch_size: 50\n  pause: 100ms"),
    );
    let plan = path.to_str().expect("utf-8");
    let writer = Writer::start(db.pool.clone(), "items", "mirror", SEED_ROWS, 47);
    let mut child = spawn(&db, &["run", plan, "--yes"], &[]);
    until(&db, plan, 30, "copied 100 rows", |st| {
        st["backfill"]["rows_copied"].as_u64().unwrap_or(0) >= 100
    })
    .await;
    ok(&db.turnout(&["pause", plan], None), "pause");
    let st = until(&db, plan, 10, "waiting paused", |st| {
        st["waiting"]["reason"] == "paused"
    })
    .await;
    let rows_then = copied(&st);
    let since = st["waiting"]["since"].clone();
    child.kill().expect("SIGKILL");
    let _ = finish(child).await;

    writer.wait_for(20).await;
    let mut resumed = spawn(&db, &["resume", plan, "--yes"], &[]);
    let st = until(&db, plan, 10, "the resumed turnout waiting", |st| {
        st["waiting"]["reason"] == "paused" && st["waiting"]["since"] != since
    })
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let st2 = status(&db, plan).await;
    assert!(
        resumed.try_wait().expect("try_wait").is_none(),
        "resume did not wait"
    );
    assert_eq!(copied(&st), rows_then, "{st}");
    assert_eq!(copied(&st2), rows_then, "resume copied while paused: {st2}");
    assert_eq!(st2["phase"], "dual_writing");
    table_lock_is_free(&db).await;
    ok(&db.turnout(&["unpause", plan], None), "unpause");
    let out = finish(resumed).await;
    ok(&out, "resume once unpaused");
    assert!(stderr(&out).contains("paused by"), "{}", stderr(&out));
    assert!(writer.stop().await.is_empty());
    compare_with_mirror(&db, true).await;
    assert_eq!(status(&db, plan).await["phase"], "done");
    db.drop().await;
}

/// The plan's throttle query holds the backfill back and `status` says so; a pause
/// while throttled is shown as the reason instead; once the query reads low again the
/// backfill carries on and finishes exact.
pub async fn the_throttle_query_holds_the_backfill_and_status_says_why(kind: Kind) {
    let db = TestDb::new(kind).await;
    seed(&db).await;
    db.exec("CREATE TABLE knob (v BIGINT NOT NULL);\nINSERT INTO knob (v) VALUES (5)")
        .await;
    let path = db.plan_file(
        "plan.yaml",
        &plan(kind, "items-throttled", 100).replace(
            "batch_size: 100",
            "batch_size: 100\n  throttle: {query: 'SELECT v FROM knob', max: 1}",
        ),
    );
    let plan = path.to_str().expect("utf-8");
    let writer = Writer::start(db.pool.clone(), "items", "mirror", SEED_ROWS, 53);
    let child = spawn(&db, &["run", plan, "--yes"], &[]);
    let st = until(&db, plan, 20, "waiting throttled", |st| {
        st["waiting"]["reason"] == "throttled"
    })
    .await;
    assert!(
        st["waiting"]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("throttle.query reads 5")),
        "{st}"
    );
    writer.wait_for(30).await;
    let st = status(&db, plan).await;
    assert_eq!(copied(&st), 0, "it copied while throttled: {st}");
    let text = stdout(&db.turnout(&["status", plan], None));
    assert!(text.contains("throttled"), "{text}");

    ok(&db.turnout(&["pause", plan], None), "pause");
    until(&db, plan, 10, "waiting paused", |st| {
        st["waiting"]["reason"] == "paused"
    })
    .await;
    ok(&db.turnout(&["unpause", plan], None), "unpause");
    until(&db, plan, 10, "throttled again", |st| {
        st["waiting"]["reason"] == "throttled"
    })
    .await;
    db.exec("UPDATE knob SET v = 0").await;
    let out = finish(child).await;
    ok(&out, "the throttled run");
    assert!(writer.stop().await.is_empty());
    compare_with_mirror(&db, true).await;
    let st = status(&db, plan).await;
    assert_eq!(st["phase"], "done");
    assert!(st["waiting"].is_null(), "{st}");
    db.drop().await;
}

/// A pause does not hold back `rollback`, which clears it and every tuning: the
/// migration started again runs on its plan's settings without waiting.
pub async fn rollback_clears_the_pause_and_the_tuning(kind: Kind) {
    let db = TestDb::new(kind).await;
    seed(&db).await;
    let path = db.plan_file("plan.yaml", &plan(kind, "items-forget", 400));
    let plan = path.to_str().expect("utf-8");
    let refused = db.turnout(&["pause", plan], None);
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("has not started"),
        "{}",
        stderr(&refused)
    );
    ok(
        &db.turnout(&["run", plan, "--until", "dual_writing", "--yes"], None),
        "dual-write",
    );
    ok(&db.turnout(&["pause", plan], None), "pause");
    ok(
        &db.turnout(&["tune", plan, "--batch-size", "77"], None),
        "tune",
    );
    let st = status(&db, plan).await;
    assert!(
        st["paused"].is_object() && st["in_force"]["batch_size"] == 77,
        "{st}"
    );
    ok(
        &db.turnout(&["rollback", plan, "--yes"], None),
        "rollback while paused",
    );
    let st = status(&db, plan).await;
    assert_eq!(st["phase"], "rolled_back");
    assert!(st["paused"].is_null(), "{st}");
    let again = db.turnout(&["run", plan, "--yes"], None);
    ok(&again, "run again after the rollback");
    assert!(!stderr(&again).contains("paused"), "{}", stderr(&again));
    let st = status(&db, plan).await;
    assert_eq!(st["phase"], "done");
    assert_eq!(
        st["backfill"]["batch_size"], 400,
        "the plan's batch size: {st}"
    );
    compare_with_mirror(&db, true).await;
    db.drop().await;
}
