//! Every fault point, on each database: turnout crashes there (as SIGKILL would) while a
//! writer inserts, updates (primary keys too) and deletes; then resume, or rollback for
//! the points inside rollback, must end with the table equal to the writer's mirror.

use crate::harness::{Kind, TestDb, Writer, ok, stderr, stdout};
use crate::scenarios::{SEED_ROWS, compare_with_mirror, plan, seed};

/// Points on the forward path; `@n` crashes at the n-th visit.
pub const FORWARD: &[&str] = &[
    "phase.prepare.before",
    "phase.prepare.after",
    "phase.dual-write.before",
    "phase.dual-write.after",
    "phase.backfill.before",
    "backfill.batch.before@2",
    "backfill.batch.after@2",
    "phase.backfill.after",
    "phase.verify.before",
    "verify.chunk@1",
    "phase.verify.after",
    "phase.cutover.before",
    "cutover.attempt",
    "cutover.inside",
    "phase.cutover.after",
    "phase.cleanup.before",
    "cleanup.inside",
    "phase.cleanup.after",
];

/// Points only one database has, between the steps of its own cutover and rollback.
fn specific(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::MySql => &[
            "mysql.backfill.slice@2",
            "mysql.backfill.slice.open@2",
            "mysql.backfill.before_indexes",
            "mysql.backfill.after_indexes",
            "mysql.cutover.before_swap",
            "mysql.cutover.after_swap",
        ],
        Kind::Postgres => &["postgres.backfill.before_index@2"],
        _ => &[],
    }
}

/// Points inside rollback, each tried from before and after cutover.
pub const ROLLBACK: &[&str] = &["rollback.before", "rollback.inside", "rollback.after"];

/// Rollback points only one database has, reached from after cutover.
fn specific_rollback(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::MySql => &["mysql.rollback.after_swap_back"],
        _ => &[],
    }
}

fn crashed(out: &std::process::Output, point: &str) {
    assert!(
        !out.status.success() && stderr(out).contains("fault injected"),
        "{point} was not reached:\n{}\n{}",
        stdout(out),
        stderr(out)
    );
}

pub async fn every_fault_point_is_survived(kind: Kind) {
    let mut survived = 0;
    for point in FORWARD.iter().chain(specific(kind)) {
        let db = TestDb::new(kind).await;
        seed(&db).await;
        let path = db.plan_file("plan.yaml", &plan(kind, "items-fault", 400));
        let path = path.to_str().expect("utf-8");
        let writer = Writer::start(db.pool.clone(), "items", "mirror", SEED_ROWS, 17);
        writer.wait_for(5).await;
        crashed(&db.turnout(&["run", path, "--yes"], Some(point)), point);
        writer.wait_for(10).await;
        ok(
            &db.turnout(&["resume", path, "--yes"], None),
            &format!("resume after {point}"),
        );
        writer.wait_for(5).await;
        assert!(writer.stop().await.is_empty());
        compare_with_mirror(&db, true).await;
        survived += 1;
        db.drop().await;
    }
    let rollback_cases = ROLLBACK
        .iter()
        .flat_map(|p| [(*p, "backfilled"), (*p, "cut_over")])
        .chain(specific_rollback(kind).iter().map(|p| (*p, "cut_over")));
    for (point, until) in rollback_cases {
        {
            let db = TestDb::new(kind).await;
            seed(&db).await;
            let path = db.plan_file("plan.yaml", &plan(kind, "items-fault-rb", 400));
            let path = path.to_str().expect("utf-8");
            let writer = Writer::start(db.pool.clone(), "items", "mirror", SEED_ROWS, 19);
            ok(
                &db.turnout(&["run", path, "--until", until, "--yes"], None),
                until,
            );
            writer.wait_for(10).await;
            crashed(
                &db.turnout(&["rollback", path, "--yes"], Some(point)),
                point,
            );
            writer.wait_for(10).await;
            ok(
                &db.turnout(&["rollback", path, "--yes"], None),
                &format!("rollback again after {point} from {until}"),
            );
            writer.wait_for(5).await;
            assert!(writer.stop().await.is_empty());
            compare_with_mirror(&db, false).await;
            survived += 1;
            db.drop().await;
        }
    }
    println!("{kind:?}: survived {survived} fault points with exact equality");
    assert_eq!(
        survived,
        FORWARD.len() + specific(kind).len() + 2 * ROLLBACK.len() + specific_rollback(kind).len()
    );
}
