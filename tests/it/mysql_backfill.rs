//! MariaDB's backfill: a batch is committed in slices, each with its checkpoint, so a kill
//! between two slices of a batch resumes after the last slice committed (with the slice
//! size forced, and with the untimed first slice's own size); under the concurrent writer
//! the copy in slices is exact. The races of a slice with the application are in
//! `backfill_races.rs`.

use crate::harness::{Kind, TestDb, Writer, finish, ok, spawn, status_json, stderr};
use crate::scenarios::{SEED_ROWS, compare_with_mirror, plan, seed};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_a_kill_between_two_slices_of_a_batch_resumes_after_the_last_one() {
    let db = TestDb::new(Kind::MySql).await;
    seed(&db).await;
    let path = db.plan_file("plan.yaml", &plan(Kind::MySql, "items-slices", 400));
    let plan = path.to_str().expect("utf-8");
    let writer = Writer::start(db.pool.clone(), "items", "mirror", SEED_ROWS, 31);
    writer.wait_for(5).await;
    // Batches of 400 rows in slices of 40, two at a time: the 7th pair is the 2nd of the
    // second batch.
    let child = spawn(
        &db,
        &["run", plan, "--yes"],
        &[
            ("TURNOUT_SLICE_ROWS", "40"),
            ("TURNOUT_FAULT", "mysql.backfill.slice@7"),
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
    // Before any slice is timed a slice is 1,000 rows: with one copier the first batch of
    // 2,000 has two.
    let child = spawn(
        &db,
        &["run", plan, "--yes"],
        &[
            ("TURNOUT_COPIERS", "1"),
            ("TURNOUT_FAULT", "mysql.backfill.slice@1"),
        ],
    );
    let out = finish(child).await;
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
