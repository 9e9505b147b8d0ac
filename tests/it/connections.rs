//! Lost connections: the server ends turnout's connections mid-backfill, mid-verify and
//! at cutover (`pg_terminate_backend`, `KILL CONNECTION`). turnout either reconnects
//! and carries on, or stops with exit 3 and a message saying to resume; then a resume
//! finishes with the table equal to the writer's mirror.

use std::process::Stdio;
use std::time::Duration;

use crate::harness::{Kind, TestDb, Writer, stderr, stdout};
use crate::scenarios::{SEED_ROWS, compare_with_mirror, plan, seed};

/// Ends every connection of this test's database but the test's own.
async fn kill_turnout_connections(db: &TestDb) -> usize {
    let name = db.url.rsplit('/').next().unwrap_or_default().to_string();
    match db.kind {
        Kind::Postgres => {
            let rows = db
                .rows(&format!(
                    "SELECT CAST(pg_terminate_backend(pid) AS TEXT) FROM pg_stat_activity WHERE datname = '{name}' AND application_name LIKE 'turnout%'"
                ))
                .await;
            rows.len()
        }
        Kind::MySql => {
            let ids = db
                .rows(&format!(
                    "SELECT CAST(ID AS CHAR) FROM information_schema.PROCESSLIST WHERE DB = '{name}' AND ID <> CONNECTION_ID() AND INFO IS NULL OR (DB = '{name}' AND ID <> CONNECTION_ID() AND INFO NOT LIKE '%PROCESSLIST%')"
                ))
                .await;
            let mut killed = 0;
            for id in ids
                .into_iter()
                .filter_map(|r| r.into_iter().next().flatten())
            {
                // The writer's own connections die too; it retries, and its mirror stays exact
                // because each of its writes is one transaction.
                if db
                    .pool
                    .exec(&format!("KILL CONNECTION {id}"), &[])
                    .await
                    .is_ok()
                {
                    killed += 1;
                }
            }
            killed
        }
        Kind::Sqlite => 0,
    }
}

pub async fn lost_connections_are_survived(kind: Kind) {
    // (where, TURNOUT_DELAY that holds turnout there, the phase to run to)
    let cases = [
        ("mid-backfill", "backfill.batch.before:150", "backfilled"),
        ("mid-verify", "verify.chunk:1500", "verified"),
        ("at cutover", "cutover.attempt:1500", "done"),
    ];
    for (what, delay, until) in cases {
        let db = TestDb::new(kind).await;
        seed(&db).await;
        let path = db.plan_file("plan.yaml", &plan(kind, "items-conn", 100));
        let path = path.to_str().expect("utf-8").to_string();
        let writer = Writer::start(db.pool.clone(), "items", "mirror", SEED_ROWS, 23);
        if until == "verified" || until == "done" {
            let before = if until == "verified" {
                "backfilled"
            } else {
                "verified"
            };
            let out = db.turnout(&["run", &path, "--until", before, "--yes"], None);
            assert!(out.status.success(), "{}", stderr(&out));
        }
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_turnout"))
            .args(["run", &path, "--until", until, "--yes"])
            .env("DATABASE_URL", &db.url)
            .env("TURNOUT_DELAY", delay)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        tokio::time::sleep(Duration::from_millis(900)).await;
        let killed = kill_turnout_connections(&db).await;
        assert!(killed > 0, "{what}: no turnout connection to end");
        let out = tokio::task::spawn_blocking(move || child.wait_with_output())
            .await
            .expect("join")
            .expect("wait");
        println!(
            "{kind:?} {what}: killed {killed} connections; turnout exited {:?}",
            out.status.code()
        );
        match out.status.code() {
            Some(0) => {}
            Some(3) => assert!(
                stderr(&out).contains("turnout resume"),
                "{what}: {}",
                stderr(&out)
            ),
            other => panic!("{what}: exit {other:?}\n{}\n{}", stdout(&out), stderr(&out)),
        }
        writer.wait_for(10).await;
        let out = db.turnout(&["resume", &path, "--yes"], None);
        assert!(
            out.status.success(),
            "{what}: resume failed\n{}\n{}",
            stdout(&out),
            stderr(&out)
        );
        writer.wait_for(10).await;
        assert!(writer.stop().await.is_empty());
        compare_with_mirror(&db, true).await;
        db.drop().await;
    }
}
