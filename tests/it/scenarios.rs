//! The scenarios every database must pass, written once and run per database by the
//! `scenarios!` macro in main.rs: a migration under a concurrent writer, SIGKILL and
//! resume, rollback from every phase, a second turnout refused, an edited plan refused.

use crate::harness::{Kind, TestDb, Writer, ok, status_json, stderr, stdout};

pub const SEED_ROWS: i64 = 2000;

fn types(kind: Kind) -> (&'static str, &'static str, &'static str) {
    // (key, small int, big int)
    match kind {
        Kind::Sqlite => ("INTEGER", "INTEGER", "BIGINT"),
        Kind::Postgres => ("bigint", "integer", "bigint"),
        Kind::MySql => ("BIGINT", "INT", "BIGINT"),
    }
}

fn text_type(kind: Kind) -> &'static str {
    match kind {
        Kind::MySql => "VARCHAR(100)",
        _ => "TEXT",
    }
}

/// `items` and its `mirror`, seeded alike: note = name on every seeded row, so the
/// plan's reverse expression for the dropped `note` restores it exactly.
pub async fn seed(db: &TestDb) {
    let (key, small, _) = types(db.kind);
    let text = text_type(db.kind);
    for table in ["items", "mirror"] {
        db.exec(&format!(
            "CREATE TABLE {table} (id {key} PRIMARY KEY, qty {small} NOT NULL, tag {small}, name {text}, note {text})"
        ))
        .await;
    }
    db.exec("CREATE INDEX items_name_idx ON items (name)").await;
    let mut values = Vec::new();
    for i in 1..=SEED_ROWS {
        let tag = if i % 4 == 0 {
            "NULL".to_string()
        } else {
            (i % 7).to_string()
        };
        let name = if i % 5 == 0 {
            "NULL".to_string()
        } else {
            format!("'item {i}'")
        };
        values.push(format!("({i}, {}, {tag}, {name}, {name})", i * 3 % 1000));
        if values.len() == 500 || i == SEED_ROWS {
            for table in ["items", "mirror"] {
                db.exec(&format!(
                    "INSERT INTO {table} (id, qty, tag, name, note) VALUES {}",
                    values.join(", ")
                ))
                .await;
            }
            values.clear();
        }
    }
}

/// A fresh database with `items` and `mirror` seeded, and the standard plan written.
pub async fn seeded_with_plan(kind: Kind, name: &str, batch: u64) -> (TestDb, std::path::PathBuf) {
    let db = TestDb::new(kind).await;
    seed(&db).await;
    let path = db.plan_file("plan.yaml", &plan(kind, name, batch));
    (db, path)
}

pub fn plan(kind: Kind, name: &str, batch: u64) -> String {
    let (_, _, big) = types(kind);
    format!(
        "version: 1
name: {name}
table: items
changes:
  - add_column: {{name: total, type: {big}, from: qty * 2}}
  - drop_column: {{name: note, reverse: label}}
  - rename_column: {{from: name, to: label}}
  - alter_column: {{name: qty, type: {big}}}
  - add_index: {{name: items_tag_idx, columns: [tag]}}
backfill:
  batch_size: {batch}
cutover:
  lock_timeout: 2s
  attempts: 10
  retry_delay: 50ms
"
    )
}

/// Rows of the live table in the writer's terms, next to the mirror's.
pub async fn compare_with_mirror(db: &TestDb, migrated: bool) {
    let t = |c: &str| db.text(c);
    let live = if migrated {
        format!(
            "SELECT {}, {}, {}, {} FROM items ORDER BY id",
            t("id"),
            t("qty"),
            t("tag"),
            t("label")
        )
    } else {
        format!(
            "SELECT {}, {}, {}, {}, {} FROM items ORDER BY id",
            t("id"),
            t("qty"),
            t("tag"),
            t("name"),
            t("note")
        )
    };
    let mirror = if migrated {
        format!(
            "SELECT {}, {}, {}, {} FROM mirror ORDER BY id",
            t("id"),
            t("qty"),
            t("tag"),
            t("name")
        )
    } else {
        format!(
            "SELECT {}, {}, {}, {}, {} FROM mirror ORDER BY id",
            t("id"),
            t("qty"),
            t("tag"),
            t("name"),
            t("note")
        )
    };
    let (live, mirror) = (db.rows(&live).await, db.rows(&mirror).await);
    assert!(!mirror.is_empty(), "the mirror is empty");
    if live != mirror {
        let first = live.iter().zip(&mirror).position(|(a, b)| a != b);
        panic!(
            "the table differs from what the writer wrote: {} rows vs {} in the mirror; first difference at {:?}: {:?} vs {:?}",
            live.len(),
            mirror.len(),
            first,
            first.map(|i| &live[i]),
            first.map(|i| &mirror[i])
        );
    }
}

/// The shadow's computed column matches its source in one consistent read.
async fn shadow_is_mapped(db: &TestDb) {
    let wrong = db
        .rows(&format!(
            "SELECT {} FROM _items_new WHERE total IS NULL OR NOT (total = qty * 2)",
            db.text("count(*)")
        ))
        .await;
    assert_eq!(
        wrong[0][0].as_deref(),
        Some("0"),
        "shadow rows whose total is not qty * 2"
    );
}

async fn turnout_tables(db: &TestDb) -> Vec<String> {
    let sql = match db.kind {
        Kind::Sqlite => "SELECT name FROM sqlite_master WHERE name LIKE '\\_items\\_%' ESCAPE '\\' OR type = 'trigger' ORDER BY name".to_string(),
        Kind::Postgres => "SELECT tgname::text FROM pg_trigger WHERE NOT tgisinternal UNION ALL SELECT relname::text FROM pg_class WHERE relname LIKE '\\_items\\_%' AND relkind = 'r'".to_string(),
        Kind::MySql => "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = DATABASE() UNION ALL SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME LIKE '\\_items\\_%'".to_string(),
    };
    db.rows(&sql)
        .await
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
        .collect()
}

pub async fn full_migration_under_concurrent_writes(kind: Kind) {
    let db = TestDb::new(kind).await;
    seed(&db).await;
    let plan = db.plan_file("plan.yaml", &plan(kind, "items-reshape", 150));
    let plan = plan.to_str().expect("utf-8 path");
    let writer = Writer::start(db.pool.clone(), "items", "mirror", SEED_ROWS, 7);
    for phase in ["prepared", "dual_writing", "backfilled", "verified"] {
        writer.wait_for(15).await;
        ok(
            &db.turnout(&["run", plan, "--until", phase, "--yes"], None),
            phase,
        );
        assert_eq!(status_json(&db, plan).await["phase"], phase);
    }
    shadow_is_mapped(&db).await;
    writer.wait_for(15).await;
    ok(
        &db.turnout(&["run", plan, "--until", "cut_over", "--yes"], None),
        "cutover",
    );
    writer.wait_for(30).await;
    ok(&db.turnout(&["run", plan, "--yes"], None), "cleanup");
    writer.wait_for(15).await;
    let disagreements = writer.stop().await;
    assert!(disagreements.is_empty(), "{disagreements:?}");
    compare_with_mirror(&db, true).await;
    assert_eq!(status_json(&db, plan).await["phase"], "done");
    assert_eq!(
        turnout_tables(&db).await,
        Vec::<String>::new(),
        "turnout left objects behind"
    );
    db.drop().await;
}

pub async fn rollback_from_every_phase(kind: Kind) {
    for phase in [
        "prepared",
        "dual_writing",
        "backfilled",
        "verified",
        "cut_over",
    ] {
        let db = TestDb::new(kind).await;
        seed(&db).await;
        let plan = db.plan_file("plan.yaml", &plan(kind, "items-rollback", 300));
        let plan = plan.to_str().expect("utf-8 path");
        let writer = Writer::start(db.pool.clone(), "items", "mirror", SEED_ROWS, 11);
        writer.wait_for(10).await;
        ok(
            &db.turnout(&["run", plan, "--until", phase, "--yes"], None),
            phase,
        );
        writer.wait_for(25).await;
        ok(
            &db.turnout(&["rollback", plan, "--yes"], None),
            &format!("rollback from {phase}"),
        );
        writer.wait_for(10).await;
        let disagreements = writer.stop().await;
        assert!(disagreements.is_empty(), "{disagreements:?}");
        compare_with_mirror(&db, false).await;
        assert_eq!(
            status_json(&db, plan).await["phase"],
            "rolled_back",
            "after rollback from {phase}"
        );
        assert_eq!(
            turnout_tables(&db).await,
            Vec::<String>::new(),
            "rollback from {phase} left objects behind"
        );
        db.drop().await;
    }
}

/// SIGKILL at a fault point (the process aborts there), then resume to the end.
pub async fn killed_then_resumed(kind: Kind, fault: &str) {
    let db = TestDb::new(kind).await;
    seed(&db).await;
    let plan = db.plan_file("plan.yaml", &plan(kind, "items-kill", 200));
    let plan = plan.to_str().expect("utf-8 path");
    let writer = Writer::start(db.pool.clone(), "items", "mirror", SEED_ROWS, 13);
    writer.wait_for(10).await;
    let killed = db.turnout(&["run", plan, "--yes"], Some(fault));
    assert!(
        !killed.status.success(),
        "the fault {fault} was never reached:\n{}",
        stdout(&killed)
    );
    assert!(
        stderr(&killed).contains("fault injected"),
        "{}",
        stderr(&killed)
    );
    let st = status_json(&db, plan).await;
    if let Some(n) = fault.strip_prefix("backfill.batch.after@") {
        // The batch that committed is in the checkpoint, exactly.
        let n: u64 = n.parse().expect("batch number");
        assert_eq!(st["backfill"]["batches"], n);
        assert_eq!(st["backfill"]["rows_copied"], n * 200);
    }
    if let Some(n) = fault.strip_prefix("backfill.batch.before@") {
        let n: u64 = n.parse().expect("batch number");
        assert_eq!(st["backfill"]["batches"], n - 1);
        assert_eq!(st["backfill"]["rows_copied"], (n - 1) * 200);
    }
    writer.wait_for(20).await;
    ok(&db.turnout(&["resume", plan, "--yes"], None), "resume");
    writer.wait_for(10).await;
    let disagreements = writer.stop().await;
    assert!(disagreements.is_empty(), "{disagreements:?}");
    compare_with_mirror(&db, true).await;
    let st = status_json(&db, plan).await;
    assert_eq!(st["phase"], "done");
    // The counters add up: every batch but the last read a full 200 rows. (That no batch
    // was repeated is shown above: the checkpoint held exactly the committed batches.)
    let copied = st["backfill"]["rows_copied"].as_u64().expect("rows_copied");
    let batches = st["backfill"]["batches"].as_u64().expect("batches");
    assert!(
        batches >= 1 && copied >= (batches - 1) * 200 && copied <= batches * 200,
        "{copied} rows in {batches} batches of 200"
    );
    db.drop().await;
}

pub async fn an_edited_plan_is_refused_with_what_changed(kind: Kind) {
    let (db, path) = seeded_with_plan(kind, "items-twice", 100).await;
    let plan_path = path.to_str().expect("utf-8 path");
    ok(
        &db.turnout(
            &["run", plan_path, "--until", "dual_writing", "--yes"],
            None,
        ),
        "start",
    );

    // An edited plan: the migration was started with batch_size 100.
    let edited_path = db.plan_file(
        "edited.yaml",
        &plan(kind, "items-twice", 100).replace("items_tag_idx", "items_tag_ix"),
    );
    let edited = db.turnout(
        &["run", edited_path.to_str().expect("utf-8"), "--yes"],
        None,
    );
    assert_eq!(edited.status.code(), Some(2), "{}", stderr(&edited));
    assert!(
        stderr(&edited).contains("items_tag_ix") && stderr(&edited).contains("different plan"),
        "{}",
        stderr(&edited)
    );
    db.drop().await;
}

/// Holds the migration's lock with the library while the binary tries to run it.
pub async fn a_second_turnout_is_refused_while_the_first_holds_the_lock(kind: Kind) {
    use turnout::db::{Backend, Database};
    let (db, path) = seeded_with_plan(kind, "items-locked", 100).await;
    let holder = Database::connect(&db.url).await.expect("connect");
    turnout::with_backend!(&holder, b => {
        b.ensure_state_table().await.expect("state table");
        b.lock("items-locked").await.expect("first lock");
    });
    let second = db.turnout(&["run", path.to_str().expect("utf-8"), "--yes"], None);
    assert_eq!(second.status.code(), Some(3), "{}", stderr(&second));
    assert!(
        stderr(&second).contains("another turnout"),
        "{}",
        stderr(&second)
    );
    assert!(
        turnout_tables(&db).await.is_empty(),
        "the refused run changed the database"
    );
    turnout::with_backend!(&holder, b => b.unlock("items-locked").await.expect("unlock"));
    ok(
        &db.turnout(&["run", path.to_str().expect("utf-8"), "--yes"], None),
        "run after the lock is free",
    );
    db.drop().await;
}

/// A planted difference in the shadow is reported as a row diff with its key, exit 1.
pub async fn verify_reports_a_planted_difference(kind: Kind) {
    let (db, path) = seeded_with_plan(kind, "items-verify", 500).await;
    let plan = path.to_str().expect("utf-8");
    ok(
        &db.turnout(&["run", plan, "--until", "backfilled", "--yes"], None),
        "backfill",
    );
    db.exec("UPDATE _items_new SET total = total + 1 WHERE id = 42")
        .await;
    db.exec("DELETE FROM _items_new WHERE id = 1999").await;
    let out = db.turnout(&["verify", plan], None);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    let report = stdout(&out);
    assert!(report.contains("row with key [42] differs"), "{report}");
    assert!(
        report.contains("row with key [1999] is missing from the shadow table"),
        "{report}"
    );
    let cutover = db.turnout(&["run", plan, "--yes"], None);
    assert_eq!(
        cutover.status.code(),
        Some(1),
        "cutover must be refused after a failed verify"
    );
    assert_eq!(status_json(&db, plan).await["phase"], "backfilled");
    db.drop().await;
}

/// A value that does not fit its new column stops the backfill with the table, the
/// row's key and the column, instead of vanishing or being stored wrong.
pub async fn a_value_that_does_not_fit_stops_the_backfill(kind: Kind) {
    let db = TestDb::new(kind).await;
    seed(&db).await;
    let yaml = "version: 1\nname: items-notnull\ntable: items\nchanges:\n  - alter_column: {name: note, nullable: false}\nbackfill: {batch_size: 3}\n";
    let path = db.plan_file("plan.yaml", yaml);
    let out = db.turnout(&["run", path.to_str().expect("utf-8"), "--yes"], None);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{}{err}", stdout(&out));
    // Seeded notes are NULL on every fifth row: the first is key 5, in the second batch.
    assert!(
        err.contains("items") && err.contains("note") && err.contains('5'),
        "{err}"
    );
    let st = status_json(&db, path.to_str().expect("utf-8")).await;
    assert_eq!(st["phase"], "dual_writing");
    assert_eq!(
        st["backfill"]["rows_copied"], 3,
        "the batch with the bad row must not be committed"
    );
    db.drop().await;
}

/// Ctrl-C finishes the batch in hand, saves the checkpoint, says how to resume, exits 130.
pub async fn ctrl_c_stops_after_the_batch_and_resumes(kind: Kind) {
    let db = TestDb::new(kind).await;
    seed(&db).await;
    let path = db.plan_file(
        "plan.yaml",
        &plan(kind, "items-ctrl-c", 50).replace("batch_size: 50", "batch_size: 50\n  pause: 100ms"),
    );
    let path = path.to_str().expect("utf-8").to_string();
    let writer = Writer::start(db.pool.clone(), "items", "mirror", SEED_ROWS, 29);
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_turnout"))
        .args(["run", &path, "--yes"])
        .env("DATABASE_URL", &db.url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let sent = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(sent.success());
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("wait");
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(stderr(&out).contains("turnout resume"), "{}", stderr(&out));
    let st = status_json(&db, &path).await;
    assert_eq!(st["phase"], "dual_writing");
    let batches = st["backfill"]["batches"].as_u64().expect("batches");
    assert!(
        batches > 0 && st["backfill"]["rows_copied"] == batches * 50,
        "{st}"
    );
    ok(&db.turnout(&["resume", &path, "--yes"], None), "resume");
    assert!(writer.stop().await.is_empty());
    compare_with_mirror(&db, true).await;
    db.drop().await;
}

/// `turnout step` runs exactly one phase at a time, in the contract's order.
pub async fn step_runs_one_phase_at_a_time(kind: Kind) {
    let (db, path) = seeded_with_plan(kind, "items-step", 500).await;
    let path = path.to_str().expect("utf-8");
    for phase in [
        "prepared",
        "dual_writing",
        "backfilled",
        "verified",
        "cut_over",
        "done",
    ] {
        ok(&db.turnout(&["step", path, "--yes"], None), phase);
        assert_eq!(status_json(&db, path).await["phase"], phase);
    }
    let again = db.turnout(&["rollback", path, "--yes"], None);
    assert_eq!(
        again.status.code(),
        Some(1),
        "rollback after done must be refused"
    );
    assert!(stderr(&again).contains("is done"), "{}", stderr(&again));
    db.drop().await;
}

/// A mapping that fails for a row the application writes: `record` keeps the write and
/// reports it (verify and cutover refuse, rollback restores); `reject` fails the write.
pub async fn a_failing_mapping_is_recorded_or_rejected(kind: Kind) {
    let db = TestDb::new(kind).await;
    seed(&db).await;
    let yaml = |on_error: &str| {
        format!(
            "version: 1\nname: items-{on_error}\ntable: items\nchanges:\n  - add_column: {{name: x, type: BIGINT, from: 'CASE WHEN id > 4000 THEN qty / 0 ELSE qty END'}}\ndual_write: {{on_error: {on_error}}}\n"
        )
    };
    let record = db.plan_file("record.yaml", &yaml("record"));
    let record = record.to_str().expect("utf-8");
    ok(
        &db.turnout(&["run", record, "--until", "dual_writing", "--yes"], None),
        "dual-write",
    );
    db.exec("INSERT INTO items (id, qty) VALUES (5000, 7)")
        .await;
    let st = status_json(&db, record).await;
    assert_eq!(
        st["trigger_failures"].as_array().map(Vec::len),
        Some(1),
        "{st}"
    );
    // The backfill reaches the same row and stops there, naming it.
    let run = db.turnout(&["run", record, "--yes"], None);
    assert_eq!(
        run.status.code(),
        Some(1),
        "the migration must stop:\n{}{}",
        stdout(&run),
        stderr(&run)
    );
    assert!(stderr(&run).contains("5000"), "{}", stderr(&run));
    ok(
        &db.turnout(&["rollback", record, "--yes"], None),
        "rollback",
    );
    assert_eq!(
        db.rows(&format!(
            "SELECT {} FROM items WHERE id = 5000",
            db.text("qty")
        ))
        .await,
        vec![vec![Some("7".to_string())]]
    );

    // After the backfill: an update the mapping cannot store is kept and recorded, its
    // shadow row is left out, and verify fails naming it.
    let late = db.plan_file(
        "late.yaml",
        "version: 1\nname: items-late\ntable: items\nchanges:\n  - add_column: {name: x, type: BIGINT, from: 'CASE WHEN qty = 4242 THEN qty / 0 ELSE qty END'}\n",
    );
    let late = late.to_str().expect("utf-8");
    ok(
        &db.turnout(&["run", late, "--until", "backfilled", "--yes"], None),
        "backfill",
    );
    db.exec("UPDATE items SET qty = 4242 WHERE id = 17").await;
    let verify = db.turnout(&["run", late, "--yes"], None);
    assert_eq!(
        verify.status.code(),
        Some(1),
        "{}{}",
        stdout(&verify),
        stderr(&verify)
    );
    assert!(
        stdout(&verify).contains("row with key [17]") || stderr(&verify).contains("17"),
        "{}{}",
        stdout(&verify),
        stderr(&verify)
    );
    assert_eq!(status_json(&db, late).await["phase"], "backfilled");
    ok(&db.turnout(&["rollback", late, "--yes"], None), "rollback");
    assert_eq!(
        db.rows(&format!(
            "SELECT {} FROM items WHERE id = 17",
            db.text("qty")
        ))
        .await,
        vec![vec![Some("4242".to_string())]]
    );

    let reject = db.plan_file("reject.yaml", &yaml("reject"));
    let reject = reject.to_str().expect("utf-8");
    ok(
        &db.turnout(&["run", reject, "--until", "dual_writing", "--yes"], None),
        "dual-write",
    );
    let refused = db
        .pool
        .exec("INSERT INTO items (id, qty) VALUES (5001, 7)", &[])
        .await;
    assert!(refused.is_err(), "reject must fail the application's write");
    ok(
        &db.turnout(&["rollback", reject, "--yes"], None),
        "rollback",
    );
    db.drop().await;
}
