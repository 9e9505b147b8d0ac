//! PostgreSQL's backfill under the concurrent writer: a batch is committed in slices, each
//! with its checkpoint, so a kill between two slices of a batch resumes after the last
//! slice committed; the shadow's plain indexes are built after the copy, concurrently, and
//! a build a crash cut short (an INVALID index, which `CREATE INDEX … IF NOT EXISTS` would
//! keep as it is) is found at resume and built again.

use crate::harness::{Kind, TestDb, Writer, ok, stderr, stdout};
use crate::scenarios::{SEED_ROWS, compare_with_mirror, plan, seed};

/// The live table's indexes: name, definition, and whether the planner may use them.
async fn indexes(db: &TestDb) -> Vec<Vec<Option<String>>> {
    db.rows(
        "SELECT c.relname::text, pg_get_indexdef(i.indexrelid), i.indisvalid::text FROM pg_index i \
         JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = 'items'::regclass ORDER BY 1",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_an_index_a_crash_left_invalid_is_built_again() {
    let db = TestDb::new(Kind::Postgres).await;
    seed(&db).await;
    let path = db.plan_file("plan.yaml", &plan(Kind::Postgres, "items-invalid", 300));
    let plan = path.to_str().expect("utf-8");
    let writer = Writer::start(db.pool.clone(), "items", "mirror", SEED_ROWS, 29);
    writer.wait_for(5).await;

    // The copy is done and the first deferred index built when turnout dies.
    let out = db.turnout(
        &["run", plan, "--yes"],
        Some("postgres.backfill.before_index@2"),
    );
    assert!(
        stderr(&out).contains("fault injected"),
        "the second index build was not reached: {}",
        stderr(&out)
    );
    let plain = "SELECT count(*)::text FROM pg_index WHERE indrelid = '_items_new'::regclass AND NOT indisunique";
    assert_eq!(
        db.one(plain).await,
        "1",
        "one deferred index built before the crash"
    );
    // What a build cut short leaves: the index in the catalog, marked not valid.
    db.exec("UPDATE pg_index SET indisvalid = false WHERE indrelid = '_items_new'::regclass AND NOT indisunique")
        .await;

    writer.wait_for(10).await;
    ok(&db.turnout(&["resume", plan, "--yes"], None), "resume");
    writer.wait_for(5).await;
    assert!(writer.stop().await.is_empty());
    compare_with_mirror(&db, true).await;
    let after = indexes(&db).await;
    let names: Vec<&str> = after.iter().filter_map(|r| r[0].as_deref()).collect();
    assert!(
        names.contains(&"items_name_idx") && names.contains(&"items_tag_idx"),
        "{after:?}"
    );
    assert!(
        after.iter().all(|r| r[2].as_deref() == Some("true")),
        "every index of the new table is valid: {after:?}"
    );
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_kill_between_two_slices_of_a_batch_resumes_after_the_last_one() {
    let db = TestDb::new(Kind::Postgres).await;
    seed(&db).await;
    let path = db.plan_file("plan.yaml", &plan(Kind::Postgres, "items-slices", 300));
    let plan = path.to_str().expect("utf-8");
    let writer = Writer::start(db.pool.clone(), "items", "mirror", SEED_ROWS, 31);
    writer.wait_for(5).await;
    // Batches of 300 rows in slices of 40, two at a time (40 + 40, … , 40 + 20): the 6th
    // pair is the 2nd of the second batch.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_turnout"))
        .args(["run", plan, "--yes"])
        .env("DATABASE_URL", &db.url)
        .env_remove("RUST_LOG")
        .env("TURNOUT_SLICE_ROWS", "40")
        .env("TURNOUT_FAULT", "postgres.backfill.slice@6")
        .output()
        .expect("run turnout");
    assert!(stderr(&out).contains("fault injected"), "{}", stderr(&out));
    let st = db.turnout(&["status", plan, "--json"], None);
    let st: serde_json::Value = serde_json::from_str(&stdout(&st)).expect("status is JSON");
    assert_eq!(st[0]["phase"], "dual_writing", "{st}");
    assert_eq!(
        st[0]["backfill"]["rows_copied"], 460,
        "the first batch and four slices of the second were saved: {st}"
    );
    writer.wait_for(10).await;
    ok(&db.turnout(&["resume", plan, "--yes"], None), "resume");
    writer.wait_for(5).await;
    assert!(writer.stop().await.is_empty());
    compare_with_mirror(&db, true).await;
    db.drop().await;
}
