//! MariaDB's backfill: a batch is committed in slices, each with its checkpoint, so a kill
//! between two slices of a batch resumes after the last slice committed (with the slice
//! size forced, and with the untimed first slice's own size); under the
//! concurrent writer the copy in slices is exact; the application's deletes, key changes,
//! updates and re-inserts of rows in a slice held open end exactly as written; and rows an
//! open application transaction deleted or re-keyed before the slice read them do not
//! come back (this last one fails if the slice's locking read is taken away).

use std::time::{Duration, Instant};

use crate::harness::{Kind, Pool, TestDb, Writer, finish, ok, spawn, status_json, stderr};
use crate::scenarios::{SEED_ROWS, compare_with_mirror, plan, seed};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_a_kill_between_two_slices_of_a_batch_resumes_after_the_last_one() {
    let db = TestDb::new(Kind::MySql).await;
    seed(&db).await;
    let path = db.plan_file("plan.yaml", &plan(Kind::MySql, "items-slices", 400));
    let plan = path.to_str().expect("utf-8");
    let writer = Writer::start(db.pool.clone(), "items", "mirror", SEED_ROWS, 31);
    writer.wait_for(5).await;
    // Batches of 400 rows in slices of 40: the 14th slice is the 4th of the second batch.
    let child = spawn(
        &db,
        &["run", plan, "--yes"],
        &[
            ("TURNOUT_SLICE_ROWS", "40"),
            ("TURNOUT_FAULT", "mysql.backfill.slice@14"),
        ],
    );
    let out = finish(child).await;
    assert!(stderr(&out).contains("fault injected"), "{}", stderr(&out));
    let st = status_json(&db, plan).await;
    assert_eq!(st["phase"], "dual_writing", "{st}");
    let copied = st["backfill"]["rows_copied"].as_u64().expect("rows_copied");
    assert_eq!(
        copied, 560,
        "the first batch and four slices of the second were saved: {st}"
    );
    assert_eq!(copied % 40, 0, "only whole slices are saved: {st}");
    writer.wait_for(10).await;
    ok(&db.turnout(&["resume", plan, "--yes"], None), "resume");
    writer.wait_for(5).await;
    assert!(writer.stop().await.is_empty());
    compare_with_mirror(&db, true).await;
    let st = status_json(&db, plan).await;
    assert_eq!(st["phase"], "done", "{st}");
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_a_batch_is_sliced_without_any_forced_size() {
    let db = TestDb::new(Kind::MySql).await;
    seed(&db).await;
    let path = db.plan_file("plan.yaml", &plan(Kind::MySql, "items-steered", 2000));
    let plan = path.to_str().expect("utf-8");
    let writer = Writer::start(db.pool.clone(), "items", "mirror", SEED_ROWS, 41);
    writer.wait_for(5).await;
    // Before any slice is timed a slice is 1,000 rows: the first batch of 2,000 has two.
    let out = db.turnout(&["run", plan, "--yes"], Some("mysql.backfill.slice@1"));
    assert!(stderr(&out).contains("fault injected"), "{}", stderr(&out));
    let st = status_json(&db, plan).await;
    assert_eq!(st["backfill"]["rows_copied"], 1000, "{st}");
    writer.wait_for(10).await;
    ok(&db.turnout(&["resume", plan, "--yes"], None), "resume");
    writer.wait_for(5).await;
    assert!(writer.stop().await.is_empty());
    compare_with_mirror(&db, true).await;
    assert_eq!(status_json(&db, plan).await["phase"], "done");
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_the_backfill_in_slices_under_the_writer_is_exact() {
    let db = TestDb::new(Kind::MySql).await;
    seed(&db).await;
    let path = db.plan_file("plan.yaml", &plan(Kind::MySql, "items-sliced", 400));
    let plan = path.to_str().expect("utf-8");
    let writer = Writer::start(db.pool.clone(), "items", "mirror", SEED_ROWS, 37);
    writer.wait_for(5).await;
    // 7 does not divide 400: every batch ends with a shorter slice of one row.
    let out = finish(spawn(
        &db,
        &["run", plan, "--yes"],
        &[("TURNOUT_SLICE_ROWS", "7")],
    ))
    .await;
    ok(&out, "run in slices of 7 rows");
    writer.wait_for(5).await;
    assert!(writer.stop().await.is_empty());
    compare_with_mirror(&db, true).await;
    let st = status_json(&db, plan).await;
    assert_eq!(st["phase"], "done", "{st}");
    let copied = st["backfill"]["rows_copied"].as_u64().expect("rows_copied");
    let batches = st["backfill"]["batches"].as_u64().expect("batches");
    // The slices add up to whole batches of 400: only the last batch is short.
    assert!(
        batches >= 1 && copied >= (batches - 1) * 400 && copied <= batches * 400,
        "{copied} rows in {batches} batches of 400"
    );
    db.drop().await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_writes_to_the_rows_of_a_slice_held_open_end_as_written() {
    let db = TestDb::new(Kind::MySql).await;
    seed(&db).await;
    let path = db.plan_file("plan.yaml", &plan(Kind::MySql, "items-held", 3000));
    let plan = path.to_str().expect("utf-8");
    // The whole table in one slice, held open for 3 s after its copy and checkpoint.
    let child = spawn(
        &db,
        &["run", plan, "--yes"],
        &[
            ("TURNOUT_SLICE_ROWS", "3000"),
            ("TURNOUT_DELAY", "mysql.backfill.slice.open:3000"),
        ],
    );
    // The slice is open once dual-write is on and a row of it cannot be locked without
    // waiting (before, the DDL of prepare and dual-write makes the probe wait too).
    let triggers = "SELECT CAST(count(*) AS CHAR) FROM information_schema.TRIGGERS \
                    WHERE EVENT_OBJECT_SCHEMA = DATABASE() AND EVENT_OBJECT_TABLE = 'items'";
    let mut held = false;
    for _ in 0..1000 {
        if db.one(triggers).await.parse::<u32>().unwrap_or(0) < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        let probe = db
            .pool
            .transaction(&[(
                "SELECT id FROM items WHERE id = ? FOR UPDATE NOWAIT".into(),
                vec![SEED_ROWS],
            )])
            .await;
        if let Err(e) = probe {
            assert!(e.to_string().contains("Lock wait"), "{e}");
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
            async move { write(&pool, &[("DELETE FROM items WHERE id = ?", &[10])]).await }
        }),
        tokio::spawn({
            let pool = pool.clone();
            async move {
                write(
                    &pool,
                    &[("UPDATE items SET id = ? WHERE id = ?", &[9000, 20])],
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
                        &[777, 6, 30],
                    )],
                )
                .await
            }
        }),
        tokio::spawn({
            let pool = pool.clone();
            async move {
                let first = write(&pool, &[("DELETE FROM items WHERE id = ?", &[40])]).await;
                write(
                    &pool,
                    &[(
                        "INSERT INTO items (id, qty, tag) VALUES (?, ?, ?)",
                        &[40, 5, 1],
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
                        ("UPDATE items SET id = ? WHERE id = ?", &[9001, 50]),
                        (
                            "INSERT INTO items (id, qty, tag) VALUES (?, ?, ?)",
                            &[50, 8, 2],
                        ),
                    ],
                )
                .await
            }
        }),
    ];
    for w in writes {
        let waited = w.await.expect("write task");
        // Each write queued behind the open slice, so the race was really run.
        assert!(
            waited >= Duration::from_millis(300),
            "a write to a row of the open slice did not wait for it: {waited:?}"
        );
    }
    let out = finish(child).await;
    ok(&out, "run with a slice held open");
    compare_with_mirror(&db, true).await;
    let st = status_json(&db, plan).await;
    assert_eq!(st["phase"], "done", "{st}");
    let ids = db
        .rows("SELECT CAST(id AS CHAR), CAST(qty AS CHAR) FROM items WHERE id IN (10, 20, 30, 40, 50, 9000, 9001) ORDER BY id")
        .await;
    let ids: Vec<(String, String)> = ids
        .into_iter()
        .map(|r| {
            (
                r[0].clone().unwrap_or_default(),
                r[1].clone().unwrap_or_default(),
            )
        })
        .collect();
    let want = [
        ("30", "777"),
        ("40", "5"),
        ("50", "8"),
        ("9000", "60"),
        ("9001", "150"),
    ];
    assert_eq!(
        ids,
        want.map(|(a, b)| (a.to_string(), b.to_string())).to_vec(),
        "the deleted key is gone, the re-keyed rows moved, the update and re-inserts stayed"
    );
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_rows_deleted_and_rekeyed_before_a_slice_reads_them_stay_gone() {
    let db = TestDb::new(Kind::MySql).await;
    seed(&db).await;
    let Pool::MySql(my) = db.pool.clone() else {
        panic!("a MariaDB pool")
    };
    let path = db.plan_file("plan.yaml", &plan(Kind::MySql, "items-before", 3000));
    let plan = path.to_str().expect("utf-8");
    // Dual-write is on and the copy has not started for 1.5 s: the application's
    // transaction opens in that gap and commits only after the slice has begun reading.
    let mut child = spawn(
        &db,
        &["run", plan, "--yes"],
        &[
            ("TURNOUT_SLICE_ROWS", "3000"),
            ("TURNOUT_DELAY", "phase.backfill.before:1500"),
        ],
    );
    let triggers = "SELECT CAST(count(*) AS CHAR) FROM information_schema.TRIGGERS \
                    WHERE EVENT_OBJECT_SCHEMA = DATABASE() AND EVENT_OBJECT_TABLE = 'items'";
    for _ in 0..1000 {
        if db.one(triggers).await.parse::<u32>().unwrap_or(0) >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut tx = my.begin().await.expect("begin");
    for table in ["items", "mirror"] {
        for (sql, args) in [
            ("DELETE FROM {t} WHERE id = ?", vec![10]),
            ("UPDATE {t} SET id = ? WHERE id = ?", vec![9000, 20]),
            ("UPDATE {t} SET qty = ? WHERE id = ?", vec![777, 30]),
            ("DELETE FROM {t} WHERE id = ?", vec![40]),
            (
                "INSERT INTO {t} (id, qty, tag) VALUES (?, ?, ?)",
                vec![40, 5, 1],
            ),
        ] {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.replace("{t}", table)));
            for a in args {
                q = q.bind(a);
            }
            q.execute(&mut *tx).await.expect("application write");
        }
    }
    // The slice has started by now and waits for these rows, or (without its locking
    // read) has copied them as they were before this transaction.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        child.try_wait().expect("turnout's status").is_none(),
        "turnout finished before the application's transaction committed"
    );
    tx.commit().await.expect("commit");
    let out = finish(child).await;
    ok(&out, "run with the application's transaction open");
    compare_with_mirror(&db, true).await;
    let rows = db
        .rows("SELECT CAST(id AS CHAR), CAST(qty AS CHAR) FROM items WHERE id IN (10, 20, 30, 40, 9000) ORDER BY id")
        .await;
    assert_eq!(
        rows,
        [["30", "777"], ["40", "5"], ["9000", "60"]]
            .map(|r| r.map(|v| Some(v.to_string())).to_vec())
            .to_vec(),
        "the deleted and re-keyed rows did not come back"
    );
    db.drop().await;
}
