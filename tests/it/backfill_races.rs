//! The races a backfill slice runs with the application, on PostgreSQL and MariaDB: the
//! application's deletes, key changes, updates and re-inserts of rows in a slice held open
//! end exactly as written; and rows an open application transaction deleted or re-keyed
//! before the slice read them do not come back. MariaDB's slice closes these races with a
//! locking read; PostgreSQL's reads without locks behind a barrier that the forward
//! trigger's deletes wait for (both tests fail on PostgreSQL if the trigger's wait is taken
//! away: the deleted rows come back and verify refuses the cutover). On PostgreSQL, a row
//! the triggers write while a slice's copy statement runs is kept, not overwritten and not
//! a failed backfill (the copy without `ON CONFLICT` fails on it and is done again with it).
//! Slices go two at a time: the second copier's slice held open is raced the same way, and
//! a kill between the pair's commits and its checkpoint resumes exactly.

use std::time::{Duration, Instant};

use crate::harness::{Kind, Pool, TestDb, Writer, finish, ok, spawn, status_json, stderr};
use crate::scenarios::{SEED_ROWS, compare_with_mirror, plan, seed};

/// The fault point inside a slice's transaction, after its copy and checkpoint.
fn slice_open_point(kind: Kind) -> &'static str {
    match kind {
        Kind::MySql => "mysql.backfill.slice.open",
        _ => "postgres.backfill.slice.open",
    }
}

/// Dual-write is on: the triggers on `items` are in place.
async fn dual_writing(db: &TestDb) -> bool {
    let count = match db.kind {
        Kind::MySql => {
            "SELECT CAST(count(*) AS CHAR) FROM information_schema.TRIGGERS \
             WHERE EVENT_OBJECT_SCHEMA = DATABASE() AND EVENT_OBJECT_TABLE = 'items'"
        }
        _ => {
            "SELECT count(*)::text FROM pg_trigger \
             WHERE tgrelid = 'items'::regclass AND tgname LIKE 'turnout%fwd'"
        }
    };
    let want = if db.kind == Kind::MySql { 3 } else { 1 };
    db.one(count).await.parse::<u32>().unwrap_or(0) >= want
}

/// Copier `copier`'s slice is open: the last seeded row cannot be locked without waiting
/// (MariaDB; both copiers' ranges reach it, one slice of the whole table or the second of
/// a pair), or the copier's barrier is held by a slice idle in its transaction
/// (PostgreSQL).
async fn slice_is_open(db: &TestDb, copier: usize) -> bool {
    match db.kind {
        Kind::MySql => {
            let probe = db
                .pool
                .transaction(&[(
                    "SELECT id FROM items WHERE id = ? FOR UPDATE NOWAIT".into(),
                    vec![SEED_ROWS],
                )])
                .await;
            match probe {
                Err(e) => {
                    assert!(e.to_string().contains("Lock wait"), "{e}");
                    true
                }
                Ok(_) => false,
            }
        }
        _ => {
            let name = match copier {
                0 => "turnout backfill \"public\".\"_items_new\"".to_string(),
                n => format!("turnout backfill \"public\".\"_items_new\" {n}"),
            };
            // Held by a slice that has copied (its last statement the copy or its
            // checkpoint, both inserts) and sits idle before its commit: a slice still
            // copying takes an update of a row it has not reached without a wait.
            db.one(&format!(
                "SELECT count(*)::text FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
                 WHERE l.locktype = 'advisory' AND l.granted AND l.mode = 'ExclusiveLock' \
                 AND l.classid = 1953854062 \
                 AND l.objid::bigint = (hashtext('{name}')::bigint + 4294967296) % 4294967296 \
                 AND a.state = 'idle in transaction' AND a.query LIKE 'INSERT INTO%'"
            ))
            .await
                == "1"
        }
    }
}

/// One application transaction on `items` and the same on `mirror`; how long it took.
async fn write(pool: &Pool, stmts: &[(&str, &[i64])]) -> Duration {
    let both: Vec<(String, Vec<i64>)> = stmts
        .iter()
        .flat_map(|(sql, args)| {
            [
                (sql.to_string(), args.to_vec()),
                (sql.replace("items", "mirror"), args.to_vec()),
            ]
        })
        .collect();
    let began = Instant::now();
    let affected = pool.transaction(&both).await.expect("application write");
    assert!(
        affected.chunks(2).all(|p| p[0] == p[1] && p[0] == 1),
        "{stmts:?} affected {affected:?}"
    );
    began.elapsed()
}

/// `(id, qty)` of the given rows of `items`, in key order.
async fn ids_and_qty(db: &TestDb, ids: &str) -> Vec<(String, String)> {
    db.pairs(&format!(
        "SELECT {}, {} FROM items WHERE id IN ({ids}) ORDER BY id",
        db.text("id"),
        db.text("qty")
    ))
    .await
}

/// The slice held open is copier `copier`'s: the first (the whole table in one slice) or
/// the second (slices of 1,000, two at a time, so the second copies keys 1001–2000).
async fn writes_to_the_rows_of_a_slice_held_open_end_as_written(kind: Kind, copier: usize) {
    let (slice_rows, b) = match copier {
        0 => ("3000", 0),
        _ => ("1000", 1000),
    };
    let db = TestDb::new(kind).await;
    seed(&db).await;
    let path = db.plan_file("plan.yaml", &plan(kind, "items-held", 3000));
    let plan = path.to_str().expect("utf-8");
    // Each slice held open for 3 s after its copy and checkpoint.
    let delay = format!("{}:3000", slice_open_point(kind));
    let child = spawn(
        &db,
        // Up to verify, which compares the shadow with the live table row by row: no
        // cutover, which on MariaDB without `metadata_lock_info` would wait for other
        // tests' transactions held open against their own slices.
        &["run", plan, "--until", "verified", "--yes"],
        &[
            ("TURNOUT_SLICE_ROWS", slice_rows),
            ("TURNOUT_DELAY", &delay),
        ],
    );
    // The probe is taken only once dual-write is on: before, the DDL of prepare and
    // dual-write makes it wait too.
    let mut held = false;
    for _ in 0..1000 {
        if dual_writing(&db).await && slice_is_open(&db, copier).await {
            held = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if !held {
        let out = finish(child).await;
        panic!("the slice was never seen open: {}", stderr(&out));
    }
    let pool = db.pool.clone();
    let writes = [
        tokio::spawn({
            let pool = pool.clone();
            async move { write(&pool, &[("DELETE FROM items WHERE id = ?", &[b + 10])]).await }
        }),
        tokio::spawn({
            let pool = pool.clone();
            async move {
                write(
                    &pool,
                    &[("UPDATE items SET id = ? WHERE id = ?", &[9000, b + 20])],
                )
                .await
            }
        }),
        tokio::spawn({
            let pool = pool.clone();
            async move {
                write(
                    &pool,
                    &[(
                        "UPDATE items SET qty = ?, tag = ? WHERE id = ?",
                        &[777, 6, b + 30],
                    )],
                )
                .await
            }
        }),
        tokio::spawn({
            let pool = pool.clone();
            async move {
                let first = write(&pool, &[("DELETE FROM items WHERE id = ?", &[b + 40])]).await;
                write(
                    &pool,
                    &[(
                        "INSERT INTO items (id, qty, tag) VALUES (?, ?, ?)",
                        &[b + 40, 5, 1],
                    )],
                )
                .await;
                first
            }
        }),
        tokio::spawn({
            let pool = pool.clone();
            // The key a re-keyed row leaves is taken again.
            async move {
                write(
                    &pool,
                    &[
                        ("UPDATE items SET id = ? WHERE id = ?", &[9001, b + 50]),
                        (
                            "INSERT INTO items (id, qty, tag) VALUES (?, ?, ?)",
                            &[b + 50, 8, 2],
                        ),
                    ],
                )
                .await
            }
        }),
    ];
    let mut waits = Vec::new();
    for w in writes {
        waits.push(w.await.expect("write task"));
    }
    // The deletes and re-keys queued behind the open slice, so the race was really run.
    // The update (the third) waits only once the slice has inserted its row, which the
    // probe cannot see for the second copier: its slice runs in the same task as the
    // first's, which a fault delay stops too.
    let must_wait = match copier {
        0 => vec![0, 1, 2, 3, 4],
        _ => vec![0, 1, 3, 4],
    };
    assert!(
        must_wait
            .iter()
            .all(|&i| waits[i] >= Duration::from_millis(300)),
        "a write to a row of the open slice did not wait for it: {waits:?}"
    );
    let out = finish(child).await;
    ok(&out, "run with a slice held open");
    compare_with_mirror(&db, false).await;
    let st = status_json(&db, plan).await;
    assert_eq!(st["phase"], "verified", "{st}");
    assert_eq!(st["verify"]["passed"], true, "{st}");
    let want = [
        (b + 30, 777),
        (b + 40, 5),
        (b + 50, 8),
        (9000, 60),
        (9001, 150),
    ];
    let ids = [10, 20, 30, 40, 50].map(|i| (b + i).to_string()).join(", ");
    assert_eq!(
        ids_and_qty(&db, &format!("{ids}, 9000, 9001")).await,
        want.map(|(a, b)| (a.to_string(), b.to_string())).to_vec(),
        "the deleted key is gone, the re-keyed rows moved, the update and re-inserts stayed"
    );
    db.drop().await;
}

async fn rows_deleted_and_rekeyed_before_a_slice_reads_them_stay_gone(kind: Kind) {
    let db = TestDb::new(kind).await;
    seed(&db).await;
    let path = db.plan_file("plan.yaml", &plan(kind, "items-before", 3000));
    let plan = path.to_str().expect("utf-8");
    // Dual-write is on and the copy has not started for 1.5 s: the application's
    // transaction opens in that gap and commits only after the slice has begun.
    let mut child = spawn(
        &db,
        // Up to verify: see the held-open test above.
        &["run", plan, "--until", "verified", "--yes"],
        &[
            ("TURNOUT_SLICE_ROWS", "3000"),
            ("TURNOUT_DELAY", "phase.backfill.before:1500"),
        ],
    );
    for _ in 0..1000 {
        if dual_writing(&db).await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let stmts: Vec<(String, Vec<i64>)> = ["items", "mirror"]
        .into_iter()
        .flat_map(|table| {
            [
                ("DELETE FROM {t} WHERE id = ?", vec![10]),
                ("UPDATE {t} SET id = ? WHERE id = ?", vec![9000, 20]),
                ("UPDATE {t} SET qty = ? WHERE id = ?", vec![777, 30]),
                ("DELETE FROM {t} WHERE id = ?", vec![40]),
                (
                    "INSERT INTO {t} (id, qty, tag) VALUES (?, ?, ?)",
                    vec![40, 5, 1],
                ),
            ]
            .map(|(sql, args)| (sql.replace("{t}", table), args))
        })
        .collect();
    let pool = db.pool.clone();
    let application = tokio::spawn(async move {
        pool.transaction_held(&stmts, Duration::from_millis(2500))
            .await
            .expect("application transaction")
    });
    // The slice has started by now and waits for this transaction, or (without its
    // locking read or barrier) has copied its rows as they were before it.
    tokio::time::sleep(Duration::from_millis(2300)).await;
    assert!(
        child.try_wait().expect("turnout's status").is_none(),
        "turnout finished before the application's transaction committed"
    );
    application.await.expect("application task");
    let out = finish(child).await;
    ok(&out, "run with the application's transaction open");
    compare_with_mirror(&db, false).await;
    assert_eq!(status_json(&db, plan).await["verify"]["passed"], true);
    assert_eq!(
        ids_and_qty(&db, "10, 20, 30, 40, 9000").await,
        [("30", "777"), ("40", "5"), ("9000", "60")]
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .to_vec(),
        "the deleted and re-keyed rows did not come back"
    );
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_row_the_triggers_write_while_a_slice_copies_is_kept() {
    let db = TestDb::new(Kind::Postgres).await;
    seed(&db).await;
    // Row 1's mapping sleeps, so the slice's copy statement (its snapshot taken) is still
    // running when the application updates row 2000 of the same slice.
    let path = db.plan_file(
        "plan.yaml",
        "version: 1
name: items-sleepy
table: items
changes:
  - add_column: {name: total, type: bigint, from: 'CASE WHEN id = 1 THEN (SELECT qty * 2 FROM pg_sleep(1.5)) ELSE qty * 2 END'}
backfill:
  batch_size: 3000
",
    );
    let plan = path.to_str().expect("utf-8");
    let child = spawn(
        &db,
        &["run", plan, "--yes"],
        &[("TURNOUT_SLICE_ROWS", "3000")],
    );
    let sleeping = "SELECT count(*)::text FROM pg_stat_activity \
                    WHERE wait_event = 'PgSleep' AND query LIKE 'INSERT INTO \"public\".\"_items_new\"%'";
    let mut copying = false;
    for _ in 0..2000 {
        if db.one(sleeping).await != "0" {
            copying = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if !copying {
        let out = finish(child).await;
        panic!("the slice's copy was never seen running: {}", stderr(&out));
    }
    let waited = write(
        &db.pool,
        &[("UPDATE items SET qty = ? WHERE id = ?", &[777, SEED_ROWS])],
    )
    .await;
    assert!(
        db.one(sleeping).await != "0",
        "the copy statement ended before the application's write ({waited:?}), so the race was not run"
    );
    let out = finish(child).await;
    ok(&out, "run with a trigger's row written under the copy");
    let pairs = |table: &str| format!("SELECT id::text, qty::text FROM {table} ORDER BY id");
    assert_eq!(
        db.rows(&pairs("items")).await,
        db.rows(&pairs("mirror")).await
    );
    assert_eq!(
        db.one(&format!(
            "SELECT total::text FROM items WHERE id = {SEED_ROWS}"
        ))
        .await,
        "1554"
    );
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_writes_to_the_rows_of_a_slice_held_open_end_as_written() {
    writes_to_the_rows_of_a_slice_held_open_end_as_written(Kind::MySql, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_writes_to_the_rows_of_the_second_copiers_slice_held_open_end_as_written() {
    writes_to_the_rows_of_a_slice_held_open_end_as_written(Kind::MySql, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_writes_to_the_rows_of_a_slice_held_open_end_as_written() {
    writes_to_the_rows_of_a_slice_held_open_end_as_written(Kind::Postgres, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_writes_to_the_rows_of_the_second_copiers_slice_held_open_end_as_written() {
    writes_to_the_rows_of_a_slice_held_open_end_as_written(Kind::Postgres, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_rows_deleted_and_rekeyed_before_a_slice_reads_them_stay_gone() {
    rows_deleted_and_rekeyed_before_a_slice_reads_them_stay_gone(Kind::MySql).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_rows_deleted_and_rekeyed_before_a_slice_reads_them_stay_gone() {
    rows_deleted_and_rekeyed_before_a_slice_reads_them_stay_gone(Kind::Postgres).await;
}

/// Killed after both slices of a pair committed and before the pair's checkpoint: the
/// checkpoint is the first slice's, so resume copies the second slice's range again (its
/// rows already in the shadow are left as they are) and the table ends as the writer
/// wrote it.
async fn a_kill_before_a_pairs_checkpoint_resumes_exactly(kind: Kind) {
    let db = TestDb::new(kind).await;
    seed(&db).await;
    let path = db.plan_file("plan.yaml", &plan(kind, "items-pair", 400));
    let plan = path.to_str().expect("utf-8");
    let writer = Writer::start(db.pool.clone(), "items", "mirror", SEED_ROWS, 37);
    writer.wait_for(5).await;
    let point = match kind {
        Kind::MySql => "mysql.backfill.pair.unsaved@3",
        _ => "postgres.backfill.pair.unsaved@3",
    };
    // Slices of 40, two at a time: the third pair copies keys 161–240.
    let child = spawn(
        &db,
        &["run", plan, "--yes"],
        &[("TURNOUT_SLICE_ROWS", "40"), ("TURNOUT_FAULT", point)],
    );
    let out = finish(child).await;
    assert!(stderr(&out).contains("fault injected"), "{}", stderr(&out));
    let st = status_json(&db, plan).await;
    assert_eq!(
        st["backfill"]["rows_copied"], 200,
        "two whole pairs and the first slice of the third were saved: {st}"
    );
    let beyond = db
        .one(&format!(
            "SELECT {} FROM _items_new WHERE id > 200 AND id <= 240",
            db.text("count(*)")
        ))
        .await;
    assert!(
        beyond.parse::<u32>().unwrap_or(0) >= 30,
        "the second slice of the third pair had committed: {beyond} rows"
    );
    writer.wait_for(10).await;
    // Up to verify, which compares the shadow with the live table row by row (the cutover,
    // as in the held-open test above, is not what this checks).
    ok(
        &db.turnout(&["resume", plan, "--until", "verified", "--yes"], None),
        "resume",
    );
    writer.wait_for(5).await;
    assert!(writer.stop().await.is_empty());
    compare_with_mirror(&db, false).await;
    let st = status_json(&db, plan).await;
    assert_eq!(st["verify"]["passed"], true, "{st}");
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_a_kill_before_a_pairs_checkpoint_resumes_exactly() {
    a_kill_before_a_pairs_checkpoint_resumes_exactly(Kind::MySql).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_kill_before_a_pairs_checkpoint_resumes_exactly() {
    a_kill_before_a_pairs_checkpoint_resumes_exactly(Kind::Postgres).await;
}
