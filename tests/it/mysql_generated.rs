//! MariaDB generated columns and a self-referencing foreign key, carried: `staff` has a
//! VIRTUAL and a STORED (indexed) generated column, a `manager_id` referencing the
//! table itself ON DELETE SET NULL and a `mentor_id` ON DELETE CASCADE, seeded so that
//! many rows reference a parent with a higher id (copied later by the key-ordered
//! backfill). It is migrated under the concurrent writer plus a writer of its own that
//! inserts reports of random managers and deletes managers (so SET NULL and the
//! cascade fire), to done (with a kill mid-backfill and a resume) and back from
//! cut_over, and through each fault point of the cutover and the rollback; the catalog (COLUMNS with
//! GENERATION_EXPRESSION and EXTRA, STATISTICS, REFERENTIAL_CONSTRAINTS,
//! KEY_COLUMN_USAGE) is compared before and after, the data with the mirror (which has
//! the same self-references, so the database performs the same cascades on it), and
//! the constraints are shown to act. Then what is refused, by name.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::harness::{Kind, Pool, TestDb, Writer, ok, stderr, stdout};

const ROWS: i64 = 400;
/// The first id the second writer inserts, far above the first writer's.
const TEAM_IDS: i64 = 1_000_000;

async fn seed(db: &TestDb) {
    for (t, fk) in [("staff", "staff"), ("mirror", "mirror")] {
        let generated = if t == "staff" {
            "qty_twice INT AS (qty * 2) VIRTUAL, label VARCHAR(20) AS (CONCAT('t', COALESCE(tag, 'none'))) PERSISTENT, KEY staff_label (label),"
        } else {
            ""
        };
        db.exec(&format!(
            "CREATE TABLE {t} (id INT NOT NULL PRIMARY KEY, qty INT NOT NULL, tag INT NULL, manager_id INT NULL, mentor_id INT NULL, {generated} \
             KEY {t}_manager (manager_id), KEY {t}_mentor (mentor_id), \
             CONSTRAINT {fk}_manager_fk FOREIGN KEY (manager_id) REFERENCES {t} (id) ON DELETE SET NULL, \
             CONSTRAINT {fk}_mentor_fk FOREIGN KEY (mentor_id) REFERENCES {t} (id) ON DELETE CASCADE)"
        ))
        .await;
        let values: Vec<String> = (1..=ROWS)
            .map(|i| {
                let tag = if i % 4 == 0 {
                    "NULL".into()
                } else {
                    (i % 7).to_string()
                };
                format!("({i}, {}, {tag})", i * 3 % 1000)
            })
            .collect();
        db.exec(&format!(
            "INSERT INTO {t} (id, qty, tag) VALUES {}",
            values.join(", ")
        ))
        .await;
        // Every parent exists by now; two thirds of the managers and every mentor have
        // a higher id than their report, so the backfill copies the report first.
        db.exec(&format!(
            "UPDATE {t} SET manager_id = IF(id % 3 = 0, NULL, 1 + (id * 7) % {ROWS}), mentor_id = IF(id % 10 = 1 AND id < {ROWS}, id + 1, NULL)"
        ))
        .await;
    }
}

fn plan(name: &str) -> String {
    format!(
        "version: 1
name: {name}
table: staff
changes:
  - alter_column: {{name: qty, type: BIGINT}}
  - add_index: {{name: staff_qty, columns: [qty]}}
backfill:
  batch_size: 25
  pause: 10ms
cutover:
  lock_timeout: 2s
  attempts: 10
  retry_delay: 50ms
"
    )
}

/// The catalog's account of `staff`: columns (type, nullability, default, EXTRA,
/// GENERATION_EXPRESSION), indexes, foreign keys and their columns.
async fn catalog(db: &TestDb) -> BTreeMap<&'static str, Vec<String>> {
    let queries = [
        (
            "columns",
            "SELECT CONCAT_WS(' | ', ORDINAL_POSITION, COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE, COALESCE(COLUMN_DEFAULT, '-'), EXTRA, IS_GENERATED, COALESCE(GENERATION_EXPRESSION, '-')) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'staff'",
        ),
        (
            "indexes",
            "SELECT CONCAT_WS(' ', INDEX_NAME, SEQ_IN_INDEX, COLUMN_NAME, COALESCE(SUB_PART, '-'), INDEX_TYPE, NON_UNIQUE) FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'staff'",
        ),
        (
            "foreign keys",
            "SELECT CONCAT_WS(' ', CONSTRAINT_NAME, TABLE_NAME, REFERENCED_TABLE_NAME, UPDATE_RULE, DELETE_RULE) FROM information_schema.REFERENTIAL_CONSTRAINTS WHERE CONSTRAINT_SCHEMA = DATABASE()",
        ),
        (
            "foreign key columns",
            "SELECT CONCAT_WS(' ', CONSTRAINT_NAME, TABLE_NAME, COLUMN_NAME, ORDINAL_POSITION, REFERENCED_TABLE_NAME, REFERENCED_COLUMN_NAME) FROM information_schema.KEY_COLUMN_USAGE WHERE TABLE_SCHEMA = DATABASE() AND REFERENCED_TABLE_NAME IS NOT NULL",
        ),
        (
            "tables",
            "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME NOT LIKE 'turnout%'",
        ),
    ];
    let mut out = BTreeMap::new();
    for (what, sql) in queries {
        let mut rows: Vec<String> = db
            .rows(sql)
            .await
            .into_iter()
            .map(|r| r[0].clone().unwrap_or_default())
            .collect();
        rows.sort();
        out.insert(what, rows);
    }
    out
}

/// What the plan changes, applied to the catalog as it was: `qty` is BIGINT and has an index.
fn migrated(
    mut before: BTreeMap<&'static str, Vec<String>>,
) -> BTreeMap<&'static str, Vec<String>> {
    if let Some(cols) = before.get_mut("columns") {
        for c in cols.iter_mut() {
            *c = c.replace("| qty | int(11) |", "| qty | bigint(20) |");
        }
    }
    if let Some(idx) = before.get_mut("indexes") {
        idx.push("staff_qty 1 qty - BTREE 1".into());
        idx.sort();
    }
    before
}

/// The application's other writes on `staff` (each applied to `mirror` in the same
/// transaction): new reports of a random manager and mentor (refused by both tables
/// alike when the parent is gone), managers reassigned, and deletes, whose SET NULL and
/// CASCADE the database performs on both tables.
struct Team {
    stop: Arc<AtomicBool>,
    writes: Arc<AtomicU64>,
    /// Writes refused by one of turnout's tables: a write the application could make
    /// without turnout must never fail because of it.
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Team {
    fn start(pool: Pool, seed: u64) -> Team {
        let stop = Arc::new(AtomicBool::new(false));
        let writes = Arc::new(AtomicU64::new(0));
        let (stop2, writes2) = (stop.clone(), writes.clone());
        let task = tokio::spawn(async move {
            let mut rng = seed;
            let mut next = || {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng
            };
            let mut id = TEAM_IDS;
            let mut refused = Vec::new();
            while !stop2.load(Ordering::Relaxed) {
                let r = next();
                // Parents among the seeded rows and the team's own.
                let parent = |x: u64| {
                    if x.is_multiple_of(3) && id > TEAM_IDS {
                        TEAM_IDS + 1 + (x >> 4) as i64 % (id - TEAM_IDS)
                    } else {
                        1 + (x >> 4) as i64 % ROWS
                    }
                };
                let (manager, mentor) = (parent(r >> 8), parent(r >> 24));
                let both = |sql: &str, args: Vec<i64>| {
                    vec![
                        (sql.replace("{t}", "staff"), args.clone()),
                        (sql.replace("{t}", "mirror"), args),
                    ]
                };
                let stmts = match r % 8 {
                    0..=3 => {
                        id += 1;
                        both(
                            "INSERT INTO {t} (id, qty, tag, manager_id, mentor_id) VALUES (?, ?, ?, ?, ?)",
                            vec![id, (r % 1000) as i64, (r % 7) as i64, manager, mentor],
                        )
                    }
                    4..=5 => both(
                        "UPDATE {t} SET manager_id = ? WHERE id = ?",
                        vec![manager, parent(r >> 40)],
                    ),
                    _ => both("DELETE FROM {t} WHERE id = ?", vec![parent(r >> 40)]),
                };
                match pool.transaction(&stmts).await {
                    Ok(_) => {
                        writes2.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e)
                        if ["`_staff_new`", "`_staff_old`"]
                            .iter()
                            .any(|t| e.to_string().contains(t)) =>
                    {
                        refused.push(format!("{stmts:?}: {e}"));
                    }
                    // A parent deleted meanwhile: refused by both tables alike.
                    Err(_) => {}
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            refused
        });
        Team { stop, writes, task }
    }

    async fn stop(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let refused = self.task.await.expect("team writer task");
        (self.writes.load(Ordering::Relaxed), refused)
    }
}

/// `staff` equals the mirror, its generated columns hold what their expressions
/// compute, and no row lacks its manager or mentor.
async fn data_matches(db: &TestDb) {
    let q = |t: &str| {
        format!(
            "SELECT CAST(id AS CHAR), CAST(qty AS CHAR), CAST(tag AS CHAR), CAST(manager_id AS CHAR), CAST(mentor_id AS CHAR) FROM {t} ORDER BY id"
        )
    };
    let (live, mirror) = (db.rows(&q("staff")).await, db.rows(&q("mirror")).await);
    assert_eq!(
        live.len(),
        mirror.len(),
        "row counts differ from the mirror"
    );
    assert!(live == mirror, "staff differs from what the writers wrote");
    let wrong = db
        .one("SELECT CAST(COUNT(*) AS CHAR) FROM staff WHERE NOT (qty_twice <=> qty * 2) OR NOT (label <=> CONCAT('t', COALESCE(tag, 'none')))")
        .await;
    assert_eq!(
        wrong, "0",
        "generated columns that do not hold their expression"
    );
    let by_index = db
        .one("SELECT CAST(COUNT(*) AS CHAR) FROM staff FORCE INDEX (staff_label) WHERE label = 'tnone'")
        .await;
    let by_scan = db
        .one("SELECT CAST(COUNT(*) AS CHAR) FROM staff IGNORE INDEX (staff_label) WHERE label = 'tnone'")
        .await;
    assert_eq!(by_index, by_scan, "the index on the STORED column");
    let orphans = db
        .one("SELECT CAST(COUNT(*) AS CHAR) FROM staff s LEFT JOIN staff m ON m.id = s.manager_id LEFT JOIN staff n ON n.id = s.mentor_id WHERE (s.manager_id IS NOT NULL AND m.id IS NULL) OR (s.mentor_id IS NOT NULL AND n.id IS NULL)")
        .await;
    assert_eq!(orphans, "0", "rows whose manager or mentor is missing");
}

/// The self-references act on whichever table is `staff`: a missing manager is refused,
/// deleting a manager sets the report's manager NULL and deletes the mentee.
async fn constraints_act(db: &TestDb) {
    let err = db
        .exec_err("INSERT INTO staff (id, qty, manager_id) VALUES (9000001, 1, 987654321)")
        .await;
    assert!(err.contains("foreign key constraint fails"), "{err}");
    assert!(err.contains("staff_manager_fk"), "{err}");
    db.exec(
        "INSERT INTO staff (id, qty) VALUES (9000001, 1);
INSERT INTO staff (id, qty, manager_id) VALUES (9000002, 2, 9000001);
INSERT INTO staff (id, qty, mentor_id) VALUES (9000003, 3, 9000001);
DELETE FROM staff WHERE id = 9000001",
    )
    .await;
    assert_eq!(
        db.one(
            "SELECT CAST(COUNT(*) AS CHAR) FROM staff WHERE id = 9000002 AND manager_id IS NULL"
        )
        .await,
        "1",
        "ON DELETE SET NULL"
    );
    assert_eq!(
        db.one("SELECT CAST(COUNT(*) AS CHAR) FROM staff WHERE id = 9000003")
            .await,
        "0",
        "ON DELETE CASCADE"
    );
    db.exec("DELETE FROM staff WHERE id = 9000002").await;
}

/// Runs the migration under both writers, `until` a phase (None: to done).
async fn migrate_under_writers(db: &TestDb, plan: &str, until: Option<&str>) -> (Writer, Team) {
    let writer = Writer::start(db.pool.clone(), "staff", "mirror", ROWS, 41);
    let team = Team::start(db.pool.clone(), 43);
    writer.wait_for(10).await;
    let mut args = vec!["run", plan, "--yes"];
    if let Some(u) = until {
        args.extend(["--until", u]);
    }
    let out = db.turnout(&args, None);
    ok(&out, until.unwrap_or("run to done"));
    writer.wait_for(20).await;
    (writer, team)
}

async fn stop_writers(writer: Writer, team: Team) {
    let disagreements = writer.stop().await;
    assert!(disagreements.is_empty(), "{disagreements:?}");
    let (team_writes, refused) = team.stop().await;
    assert!(
        team_writes > 10,
        "the team writer made {team_writes} writes"
    );
    assert!(
        refused.is_empty(),
        "writes refused because of turnout: {refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_generated_columns_and_a_self_reference_are_carried_to_done_under_writes() {
    let db = TestDb::new(Kind::MySql).await;
    seed(&db).await;
    let before = catalog(&db).await;
    let plan = db.plan_file("plan.yaml", &plan("staff-qty"));
    let plan = plan.to_str().expect("utf-8 path");
    ok(&db.turnout(&["check", plan], None), "check");
    // Killed after the third batch's commit, then resumed: the copy carries on from its
    // cursor with the shadow referencing the live table.
    let (writer, team) = migrate_under_writers(&db, plan, Some("dual_writing")).await;
    let killed = db.turnout(&["run", plan, "--yes"], Some("backfill.batch.after@3"));
    assert!(
        !killed.status.success() && stderr(&killed).contains("fault injected"),
        "the fault was never reached: {}",
        stdout(&killed)
    );
    writer.wait_for(20).await;
    ok(
        &db.turnout(&["run", plan, "--until", "verified", "--yes"], None),
        "resume to verified",
    );
    // While dual-writing, the shadow references the live table, never itself.
    let shadow_refs = db
        .rows("SELECT CONCAT_WS(' ', CONSTRAINT_NAME, REFERENCED_TABLE_NAME) FROM information_schema.REFERENTIAL_CONSTRAINTS WHERE CONSTRAINT_SCHEMA = DATABASE() AND TABLE_NAME = '_staff_new' ORDER BY 1")
        .await;
    let shadow_refs: Vec<String> = shadow_refs
        .into_iter()
        .filter_map(|r| r[0].clone())
        .collect();
    assert_eq!(
        shadow_refs,
        ["_tc_staff_manager_fk staff", "_tc_staff_mentor_fk staff"]
    );
    ok(&db.turnout(&["verify", plan], None), "verify");
    let until_verified = writer.longest();
    writer.reset_longest();
    ok(
        &db.turnout(&["run", plan, "--yes"], None),
        "cutover and cleanup",
    );
    let cutover = writer.longest();
    // Shown with --nocapture: what the self-references' moves cost the application.
    eprintln!(
        "longest application write: {until_verified:?} from prepare to verified, {cutover:?} during cutover and cleanup"
    );
    writer.wait_for(20).await;
    stop_writers(writer, team).await;
    assert_eq!(
        catalog(&db).await,
        migrated(before),
        "the catalog after done"
    );
    data_matches(&db).await;
    constraints_act(&db).await;
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_generated_columns_and_a_self_reference_roll_back_from_cut_over() {
    let db = TestDb::new(Kind::MySql).await;
    seed(&db).await;
    let before = catalog(&db).await;
    let plan = db.plan_file("plan.yaml", &plan("staff-back"));
    let plan = plan.to_str().expect("utf-8 path");
    let (writer, team) = migrate_under_writers(&db, plan, Some("cut_over")).await;
    let swapped = migrated(before.clone());
    let now = catalog(&db).await;
    assert_eq!(
        now["columns"], swapped["columns"],
        "the new table at cut_over"
    );
    assert_eq!(now["indexes"], swapped["indexes"]);
    // The old table, kept current by the reverse triggers, references itself as `_to_<name>`.
    assert!(
        now["foreign keys"].contains(&"staff_manager_fk staff staff RESTRICT SET NULL".to_string())
            && now["foreign keys"].contains(
                &"_to_staff_manager_fk _staff_old _staff_old RESTRICT SET NULL".to_string()
            ),
        "{:?}",
        now["foreign keys"]
    );
    // The writers are still writing: the data is compared once they stop.
    constraints_act(&db).await;
    ok(&db.turnout(&["rollback", plan, "--yes"], None), "rollback");
    writer.wait_for(20).await;
    stop_writers(writer, team).await;
    assert_eq!(catalog(&db).await, before, "the catalog after the rollback");
    data_matches(&db).await;
    constraints_act(&db).await;
    db.drop().await;
}

/// `turnout check` exits 2 with every `needles` in its message, and nothing was created.
async fn refused(db: &TestDb, yaml: &str, needles: &[&str]) {
    let plan = db.plan_file("refused.yaml", yaml);
    let out = db.turnout(&["check", plan.to_str().expect("utf-8")], None);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}\n{}", stdout(&out));
    for n in needles {
        assert!(err.contains(n), "{n:?} not in:\n{err}");
    }
    let made = db.rows("SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME LIKE '\\_%'").await;
    assert!(made.is_empty(), "check created {made:?}");
}

fn one_change(name: &str, change: &str) -> String {
    format!("version: 1\nname: {name}\ntable: staff\nchanges:\n  - {change}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_what_generated_columns_and_self_references_cannot_carry_is_refused_by_name() {
    let db = TestDb::new(Kind::MySql).await;
    seed(&db).await;
    refused(
        &db,
        &one_change("drop-qty", "drop_column: {name: qty, reverse: 0}"),
        &["generated column qty_twice of staff is computed from column qty, which the plan drops or renames"],
    )
    .await;
    refused(
        &db,
        &one_change("rename-tag", "rename_column: {from: tag, to: team}"),
        &["generated column label of staff is computed from column tag, which the plan drops or renames"],
    )
    .await;
    refused(
        &db,
        &one_change("scale-qty", "alter_column: {name: qty, type: BIGINT, using: qty * 10, reverse: qty DIV 10}"),
        &["generated column qty_twice of staff is computed from column qty, whose values the plan transforms"],
    )
    .await;
    refused(
        &db,
        &one_change("alter-gen", "alter_column: {name: qty_twice, type: BIGINT}"),
        &["column qty_twice of staff is a generated column, and the plan alters it"],
    )
    .await;
    refused(
        &db,
        &one_change("alter-manager", "alter_column: {name: manager_id, type: BIGINT}"),
        &["foreign key staff_manager_fk of staff uses column manager_id, which the plan changes the type of"],
    )
    .await;
    refused(
        &db,
        &one_change("widen-id", "alter_column: {name: id, type: BIGINT}"),
        &[
            "column staff.manager_id references staff.id (foreign key staff_manager_fk)",
            "column staff.mentor_id references staff.id (foreign key staff_mentor_fk)",
        ],
    )
    .await;
    // Dropping a generated column loses nothing a rollback needs: the old table computes
    // it again, so no --accept-loss is asked for.
    let plan = db.plan_file(
        "drop-gen.yaml",
        &one_change("drop-gen", "drop_column: {name: qty_twice}"),
    );
    let plan = plan.to_str().expect("utf-8 path");
    ok(
        &db.turnout(&["run", plan, "--until", "cut_over", "--yes"], None),
        "drop a generated column, to cut_over",
    );
    ok(&db.turnout(&["rollback", plan, "--yes"], None), "rollback");
    assert_eq!(
        db.one("SELECT CAST(COUNT(*) AS CHAR) FROM staff WHERE qty_twice = qty * 2")
            .await,
        ROWS.to_string()
    );
    db.drop().await;
}

/// Each fault point of the cutover (then resume to done) and of a rollback from cut_over
/// (then rollback again), with the self-references and generated columns present, under
/// both writers: the catalog ends exactly as it must and the data equals the mirror.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_self_references_survive_every_cutover_and_rollback_fault() {
    let cutover = [
        "cutover.attempt",
        "mysql.cutover.before_swap",
        "mysql.cutover.after_swap",
        "mysql.foreign_keys.outgoing_halfway",
        "mysql.foreign_keys.outgoing_halfway@2",
        "cleanup.inside",
    ];
    let rollback = [
        "rollback.before",
        "mysql.rollback.after_swap_back",
        "rollback.inside",
    ];
    for (point, is_rollback) in cutover
        .iter()
        .map(|p| (*p, false))
        .chain(rollback.iter().map(|p| (*p, true)))
    {
        let db = TestDb::new(Kind::MySql).await;
        seed(&db).await;
        let before = catalog(&db).await;
        let plan = db.plan_file("plan.yaml", &plan("staff-fault"));
        let plan = plan.to_str().expect("utf-8 path");
        let (writer, team) = migrate_under_writers(
            &db,
            plan,
            Some(if is_rollback { "cut_over" } else { "verified" }),
        )
        .await;
        let crashed = if is_rollback {
            db.turnout(&["rollback", plan, "--yes"], Some(point))
        } else {
            db.turnout(&["run", plan, "--yes"], Some(point))
        };
        assert!(
            !crashed.status.success() && stderr(&crashed).contains("fault injected"),
            "{point} was not reached:\n{}\n{}",
            stdout(&crashed),
            stderr(&crashed)
        );
        writer.wait_for(10).await;
        if is_rollback {
            ok(&db.turnout(&["rollback", plan, "--yes"], None), point);
        } else {
            ok(&db.turnout(&["resume", plan, "--yes"], None), point);
        }
        writer.wait_for(10).await;
        stop_writers(writer, team).await;
        let want = if is_rollback {
            before
        } else {
            migrated(before)
        };
        assert_eq!(catalog(&db).await, want, "{point}");
        data_matches(&db).await;
        constraints_act(&db).await;
        db.drop().await;
    }
}
