//! The instant path (`strategy: auto | copy | instant`) on the real databases: each
//! change the database makes in place is taken in place under the concurrent writer
//! (proven by the table's storage: PostgreSQL's relfilenode, InnoDB's table id, SQLite's
//! root page and page count), a change that rewrites takes the copy path, `instant` refuses it, `copy`
//! forces the copy, rollback runs the reverse statements (refusing a lossy one without
//! `--accept-loss`), and an index build cut short on PostgreSQL is rebuilt by resume.

use std::time::Duration;

use crate::harness::{Kind, TestDb, Writer, finish, ok, spawn, status_json, stderr, stdout};

const ROWS: i64 = 300;

/// `items` with the writer's columns and the ones the plans change; `mirror` for the writer.
async fn seed(db: &TestDb) {
    let (status, big) = match db.kind {
        Kind::Postgres => ("varchar(16)", "bigint"),
        _ => ("VARCHAR(16)", "INTEGER"),
    };
    db.exec(&format!(
        "CREATE TABLE items (id {big} PRIMARY KEY, qty INTEGER, tag INTEGER, status {status} NOT NULL DEFAULT 'new', note TEXT, legacy INTEGER);\n\
         CREATE TABLE mirror (id {big} PRIMARY KEY, qty INTEGER, tag INTEGER)"
    ))
    .await;
    let values: Vec<String> = (1..=ROWS)
        // A long note, so the table's pages outweigh turnout's own (SQLite's page count).
        .map(|i| {
            format!(
                "({i}, {}, {}, 'n{}', 'note {i} {}', {i})",
                i * 3,
                i % 7,
                i % 5,
                "x".repeat(1000)
            )
        })
        .collect();
    let mirror: Vec<String> = (1..=ROWS)
        .map(|i| format!("({i}, {}, {})", i * 3, i % 7))
        .collect();
    db.exec(&format!(
        "INSERT INTO items (id, qty, tag, status, note, legacy) VALUES {};\nINSERT INTO mirror (id, qty, tag) VALUES {}",
        values.join(", "),
        mirror.join(", ")
    ))
    .await;
}

async fn same_as_mirror(db: &TestDb) {
    let cols = |t: &str| {
        format!(
            "SELECT {}, {}, {} FROM {t} ORDER BY id",
            db.text("id"),
            db.text("qty"),
            db.text("tag")
        )
    };
    let live = db.rows(&cols("items")).await;
    let mirror = db.rows(&cols("mirror")).await;
    assert!(
        live.len() as i64 > ROWS / 2,
        "rows vanished: {}",
        live.len()
    );
    assert_eq!(live, mirror, "items differ from the writer's mirror");
}

/// What says the table was not rewritten: PostgreSQL's relfilenode; SQLite's root page.
async fn storage(db: &TestDb) -> String {
    match db.kind {
        Kind::Postgres => {
            db.one("SELECT pg_relation_filenode('items')::text")
                .await
        }
        // InnoDB gives a rebuilt table a new id.
        Kind::MySql => {
            db.one("SELECT CAST(TABLE_ID AS CHAR) FROM information_schema.INNODB_SYS_TABLES WHERE NAME = CONCAT(DATABASE(), '/items')")
                .await
        }
        Kind::Sqlite => {
            db.one("SELECT CAST(rootpage AS TEXT) FROM sqlite_master WHERE type = 'table' AND name = 'items'")
                .await
        }
    }
}

async fn columns(db: &TestDb) -> Vec<String> {
    let sql = match db.kind {
        Kind::Postgres => "SELECT column_name::text || ' ' || data_type::text || ' ' || coalesce(character_maximum_length::text, '-') || ' ' || is_nullable::text FROM information_schema.columns WHERE table_name = 'items' ORDER BY ordinal_position".to_string(),
        Kind::MySql => "SELECT CAST(CONCAT(COLUMN_NAME, ' ', COLUMN_TYPE, ' ', IS_NULLABLE) AS CHAR) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'items' ORDER BY ORDINAL_POSITION".to_string(),
        Kind::Sqlite => "SELECT name || ' ' || type || ' ' || CAST(\"notnull\" AS TEXT) FROM pragma_table_info('items') ORDER BY cid".to_string(),
    };
    db.rows(&sql)
        .await
        .into_iter()
        .map(|r| r[0].clone().unwrap_or_default())
        .collect()
}

async fn page_count(db: &TestDb) -> i64 {
    db.one("SELECT CAST(page_count AS TEXT) FROM pragma_page_count")
        .await
        .parse()
        .expect("a page count")
}

fn instant_plan(kind: Kind, name: &str) -> String {
    let widen = match kind {
        Kind::Postgres => {
            "  - alter_column: {name: status, type: varchar(64), nullable: true}\n  - add_column: {name: flag, type: boolean, default: \"false\", nullable: false}\n"
        }
        // InnoDB rebuilds for a change of nullability, so this plan keeps it.
        Kind::MySql => {
            "  - alter_column: {name: status, type: varchar(60)}\n  - add_column: {name: flag, type: INTEGER, default: \"0\", nullable: false}\n"
        }
        Kind::Sqlite => {
            "  - add_column: {name: flag, type: INTEGER, default: \"0\", nullable: false}\n"
        }
    };
    // MariaDB builds an index with ALGORITHM=INPLACE, which one ALTER cannot share with
    // INSTANT changes: its index is a plan of its own (index_plan).
    let index = if kind == Kind::MySql {
        ""
    } else {
        "  - add_index: {name: items_tag_idx, columns: [tag]}\n"
    };
    format!(
        "version: 1\nname: {name}\ntable: items\nchanges:\n  - add_column: {{name: amount, type: \"numeric(12,2)\"}}\n{widen}  - rename_column: {{from: note, to: comment}}\n  - drop_column: {{name: legacy}}\n{index}"
    )
}

const INDEX_PLAN: &str = "version: 1\nname: items-index\ntable: items\nchanges:\n  - add_index: {name: items_tag_idx, columns: [tag]}\n";

pub async fn every_instant_change_is_made_in_place_under_writes(kind: Kind) {
    let db = TestDb::new(kind).await;
    seed(&db).await;
    let before = storage(&db).await;
    let pages = if kind == Kind::Sqlite {
        page_count(&db).await
    } else {
        0
    };
    let plan = db.plan_file("plan.yaml", &instant_plan(kind, "items-instant"));
    let plan = plan.to_str().expect("utf-8 path");
    let shown = db.turnout(&["plan", plan], None);
    ok(&shown, "plan");
    assert!(
        stdout(&shown).contains("path: instant"),
        "{}",
        stdout(&shown)
    );
    let writer = Writer::start(db.pool.clone(), "items", "mirror", ROWS, 11);
    writer.wait_for(30).await;
    ok(&db.turnout(&["run", plan, "--yes"], None), "instant run");
    writer.wait_for(30).await;
    if kind == Kind::MySql {
        let index = db.plan_file("index.yaml", INDEX_PLAN);
        let index = index.to_str().expect("utf-8 path");
        ok(&db.turnout(&["run", index, "--yes"], None), "index run");
        assert_eq!(status_json(&db, index).await["path"], "instant");
        writer.wait_for(20).await;
    }
    let disagreements = writer.stop().await;
    assert!(disagreements.is_empty(), "{disagreements:?}");
    same_as_mirror(&db).await;
    assert_eq!(storage(&db).await, before, "the table was rewritten");
    if kind == Kind::Sqlite {
        assert!(
            page_count(&db).await < pages * 2,
            "the database doubled: {pages} pages before"
        );
    }
    let cols = columns(&db).await;
    let names: Vec<&str> = cols
        .iter()
        .map(|c| c.split(' ').next().unwrap_or_default())
        .collect();
    assert_eq!(
        names,
        ["id", "qty", "tag", "status", "comment", "amount", "flag"],
        "{cols:?}"
    );
    if kind == Kind::MySql {
        assert!(
            cols.contains(&"status varchar(60) NO".to_string()),
            "{cols:?}"
        );
        assert_eq!(
            db.one("SELECT CAST(COUNT(*) AS CHAR) FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'items' AND INDEX_NAME = 'items_tag_idx'")
                .await,
            "1"
        );
    } else if kind == Kind::Postgres {
        assert!(
            cols.contains(&"status character varying 64 YES".to_string()),
            "{cols:?}"
        );
        assert_eq!(
            db.one("SELECT i.indisvalid::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = 'items_tag_idx'")
                .await,
            "true"
        );
    } else {
        assert_eq!(
            db.one("SELECT CAST(count(*) AS TEXT) FROM sqlite_master WHERE type = 'index' AND name = 'items_tag_idx'")
                .await,
            "1"
        );
    }
    let st = status_json(&db, plan).await;
    assert_eq!(st["phase"], "done", "{st}");
    assert_eq!(st["path"], "instant", "{st}");
    let events = st["events"].to_string();
    assert!(
        events.contains("instant: items changed in place"),
        "{events}"
    );
    let text = stdout(&db.turnout(&["status", plan], None));
    assert!(text.contains("path: instant"), "{text}");
    db.drop().await;
}

pub async fn a_rewrite_copies_under_auto_and_instant_refuses_it(kind: Kind) {
    let db = TestDb::new(kind).await;
    seed(&db).await;
    let change = match kind {
        Kind::Postgres => "  - alter_column: {name: qty, type: bigint}\n",
        _ => "  - alter_column: {name: qty, type: BIGINT}\n",
    };
    let refused = db.plan_file(
        "instant.yaml",
        &format!(
            "version: 1\nname: qty-instant\ntable: items\nstrategy: instant\nchanges:\n{change}"
        ),
    );
    let refused = refused.to_str().expect("utf-8 path");
    for cmd in ["run", "plan"] {
        let out = db.turnout(
            &[cmd, refused, "--yes"][..if cmd == "run" { 3 } else { 2 }],
            None,
        );
        assert_eq!(out.status.code(), Some(2), "{cmd}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("changes[0].alter_column"),
            "{}",
            stderr(&out)
        );
    }
    assert_eq!(
        db.one(&format!(
            "SELECT {} FROM turnout_state WHERE name = 'qty-instant'",
            db.text("count(*)")
        ))
        .await,
        "0",
        "a refused plan left a state row"
    );
    let before = storage(&db).await;
    let auto = db.plan_file(
        "auto.yaml",
        &format!("version: 1\nname: qty-auto\ntable: items\nchanges:\n{change}"),
    );
    let auto = auto.to_str().expect("utf-8 path");
    let shown = stdout(&db.turnout(&["plan", auto], None));
    assert!(
        shown.contains("path: copy, because changes[0].alter_column"),
        "{shown}"
    );
    let writer = Writer::start(db.pool.clone(), "items", "mirror", ROWS, 5);
    writer.wait_for(20).await;
    ok(&db.turnout(&["run", auto, "--yes"], None), "copy run");
    writer.wait_for(20).await;
    let disagreements = writer.stop().await;
    assert!(disagreements.is_empty(), "{disagreements:?}");
    same_as_mirror(&db).await;
    let st = status_json(&db, auto).await;
    assert_eq!(
        (st["phase"].as_str(), st["path"].as_str()),
        (Some("done"), Some("copy")),
        "{st}"
    );
    assert!(
        st["events"].to_string().contains("copy path, because"),
        "{st}"
    );
    assert_ne!(storage(&db).await, before, "the copy path made a new table");

    // An instant-capable plan with `strategy: copy` copies.
    let before = storage(&db).await;
    let forced = db.plan_file(
        "copy.yaml",
        "version: 1\nname: rename-copied\ntable: items\nstrategy: copy\nchanges:\n  - rename_column: {from: note, to: remark}\n",
    );
    let forced = forced.to_str().expect("utf-8 path");
    ok(&db.turnout(&["run", forced, "--yes"], None), "forced copy");
    let st = status_json(&db, forced).await;
    assert_eq!(
        (st["phase"].as_str(), st["path"].as_str()),
        (Some("done"), Some("copy")),
        "{st}"
    );
    assert_ne!(
        storage(&db).await,
        before,
        "strategy: copy made a new table"
    );
    db.drop().await;
}

pub async fn rollback_runs_the_reverse_and_refuses_a_lossy_one(kind: Kind) {
    let db = TestDb::new(kind).await;
    seed(&db).await;
    let shape = columns(&db).await;
    let plan = db.plan_file(
        "plan.yaml",
        "version: 1\nname: add-rename\ntable: items\nchanges:\n  - add_column: {name: amount, type: \"numeric(12,2)\"}\n  - rename_column: {from: note, to: comment}\n",
    );
    let plan = plan.to_str().expect("utf-8 path");
    let writer = Writer::start(db.pool.clone(), "items", "mirror", ROWS, 3);
    ok(&db.turnout(&["run", plan, "--yes"], None), "instant run");
    assert_ne!(columns(&db).await, shape);
    writer.wait_for(20).await;
    ok(&db.turnout(&["rollback", plan, "--yes"], None), "rollback");
    writer.wait_for(20).await;
    let disagreements = writer.stop().await;
    assert!(disagreements.is_empty(), "{disagreements:?}");
    assert_eq!(
        columns(&db).await,
        shape,
        "rollback did not restore the shape"
    );
    same_as_mirror(&db).await;
    assert_eq!(status_json(&db, plan).await["phase"], "rolled_back");

    let drop = db.plan_file(
        "drop.yaml",
        "version: 1\nname: drop-legacy\ntable: items\nchanges:\n  - drop_column: {name: legacy}\n",
    );
    let drop = drop.to_str().expect("utf-8 path");
    ok(&db.turnout(&["run", drop, "--yes"], None), "instant drop");
    assert_eq!(status_json(&db, drop).await["path"], "instant");
    let out = db.turnout(&["rollback", drop, "--yes"], None);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the values of column \"legacy\" are gone")
            && stderr(&out).contains("--accept-loss"),
        "{}",
        stderr(&out)
    );
    assert_eq!(status_json(&db, drop).await["phase"], "done");
    ok(
        &db.turnout(&["rollback", drop, "--accept-loss", "--yes"], None),
        "rollback accepting the loss",
    );
    assert_eq!(columns(&db).await.len(), shape.len());
    assert_eq!(
        db.one(&format!(
            "SELECT {} FROM items WHERE legacy IS NOT NULL",
            db.text("count(*)")
        ))
        .await,
        "0",
        "the dropped values cannot be back"
    );
    db.drop().await;
}

/// A concurrent index build waits for transactions that write the table; killing turnout
/// there and ending its build leaves an INVALID index, which `run` again drops and rebuilds.
pub async fn an_index_build_cut_short_is_rebuilt_on_resume() {
    let db = TestDb::new(Kind::Postgres).await;
    seed(&db).await;
    let plan = db.plan_file(
        "plan.yaml",
        "version: 1\nname: index-tag\ntable: items\nchanges:\n  - add_index: {name: items_tag_idx, columns: [tag]}\n",
    );
    let plan = plan.to_str().expect("utf-8 path");
    let crate::harness::Pool::Postgres(pool) = &db.pool else {
        unreachable!("a PostgreSQL database")
    };
    let mut holder = pool.begin().await.expect("begin");
    sqlx::query("UPDATE items SET qty = qty + 1 WHERE id = 1")
        .execute(&mut *holder)
        .await
        .expect("hold a write");
    let mut child = spawn(&db, &["run", plan, "--yes"], &[]);
    let mut invalid = false;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if db
            .one("SELECT CAST(count(*) AS TEXT) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = 'items_tag_idx' AND NOT i.indisvalid")
            .await
            == "1"
        {
            invalid = true;
            break;
        }
    }
    assert!(invalid, "the build never reached its wait");
    child.kill().expect("kill turnout");
    let _ = finish(child).await;
    // Its server session carries on without it; end it as a crash of the server would.
    db.exec("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'CREATE INDEX CONCURRENTLY%' AND pid <> pg_backend_pid()")
        .await;
    holder.rollback().await.expect("rollback the holder");
    for _ in 0..100 {
        if db
            .one("SELECT CAST(count(*) AS TEXT) FROM pg_stat_activity WHERE query LIKE 'CREATE INDEX CONCURRENTLY%' AND pid <> pg_backend_pid()")
            .await
            == "0"
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        db.one("SELECT i.indisvalid::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = 'items_tag_idx'")
            .await,
        "false",
        "the cut-short build should have left an INVALID index"
    );
    assert_eq!(status_json(&db, plan).await["phase"], "planned");
    let writer = Writer::start(db.pool.clone(), "items", "mirror", ROWS, 9);
    writer.wait_for(20).await;
    ok(&db.turnout(&["run", plan, "--yes"], None), "resume");
    let disagreements = writer.stop().await;
    assert!(disagreements.is_empty(), "{disagreements:?}");
    assert_eq!(
        db.one("SELECT i.indisvalid::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = 'items_tag_idx'")
            .await,
        "true"
    );
    let st = status_json(&db, plan).await;
    assert_eq!(
        (st["phase"].as_str(), st["path"].as_str()),
        (Some("done"), Some("instant")),
        "{st}"
    );
    db.drop().await;
}

/// Killed just after the instant statements ran and before their state row was saved
/// (inside the transaction on PostgreSQL and SQLite; after the auto-committed ALTER on
/// MariaDB): `run` again finds where the table stands and finishes, under the writer.
pub async fn killed_inside_the_instant_change_then_resumed(kind: Kind) {
    let db = TestDb::new(kind).await;
    seed(&db).await;
    let plan = db.plan_file(
        "plan.yaml",
        "version: 1\nname: add-killed\ntable: items\nchanges:\n  - add_column: {name: amount, type: \"numeric(12,2)\"}\n  - rename_column: {from: note, to: comment}\n",
    );
    let plan = plan.to_str().expect("utf-8 path");
    let writer = Writer::start(db.pool.clone(), "items", "mirror", ROWS, 17);
    writer.wait_for(10).await;
    let killed = db.turnout(&["run", plan, "--yes"], Some("instant.inside"));
    assert!(
        stderr(&killed).contains("fault injected"),
        "{}",
        stderr(&killed)
    );
    assert_eq!(status_json(&db, plan).await["phase"], "planned");
    writer.wait_for(10).await;
    ok(&db.turnout(&["run", plan, "--yes"], None), "resume");
    writer.wait_for(10).await;
    let disagreements = writer.stop().await;
    assert!(disagreements.is_empty(), "{disagreements:?}");
    same_as_mirror(&db).await;
    let names: Vec<String> = columns(&db)
        .await
        .iter()
        .map(|c| c.split(' ').next().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        names,
        ["id", "qty", "tag", "status", "comment", "legacy", "amount"]
    );
    let st = status_json(&db, plan).await;
    assert_eq!(
        (st["phase"].as_str(), st["path"].as_str()),
        (Some("done"), Some("instant")),
        "{st}"
    );
    db.drop().await;
}

/// A session whose open transaction read the table holds the instant change back as it
/// holds a cutover: turnout names it in the events and waits, the application's writes
/// go on meanwhile, and once it ends the change is made.
pub async fn a_blocker_holds_the_instant_change_back_while_writes_go_on() {
    use sqlx::Connection;
    let db = TestDb::new(Kind::Postgres).await;
    seed(&db).await;
    let mut holder = sqlx::PgConnection::connect(&db.url).await.expect("connect");
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut holder)
        .await
        .expect("pid");
    sqlx::raw_sql("BEGIN; SELECT count(*) FROM items")
        .execute(&mut holder)
        .await
        .expect("the holder reads the table");
    let plan = db.plan_file(
        "plan.yaml",
        "version: 1\nname: add-held\ntable: items\nchanges:\n  - add_column: {name: amount, type: \"numeric(12,2)\"}\ncutover:\n  attempts: 100\n  retry_delay: 100ms\n",
    );
    let plan = plan.to_str().expect("utf-8 path");
    let writer = Writer::start(db.pool.clone(), "items", "mirror", ROWS, 13);
    writer.wait_for(10).await;
    writer.reset_longest();
    let child = spawn(&db, &["run", plan, "--yes"], &[]);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let st = status_json(&db, plan).await;
    assert_eq!(st["phase"], "planned", "{st}");
    let events = st["events"].to_string();
    assert!(
        events.contains("instant change attempt") && events.contains(&format!("session {pid}")),
        "{events}"
    );
    assert!(
        writer.longest() < Duration::from_millis(1000),
        "a write waited {:?} behind the held change",
        writer.longest()
    );
    sqlx::raw_sql("COMMIT")
        .execute(&mut holder)
        .await
        .expect("the holder ends");
    let out = finish(child).await;
    ok(&out, "instant run after the blocker");
    writer.wait_for(10).await;
    let disagreements = writer.stop().await;
    assert!(disagreements.is_empty(), "{disagreements:?}");
    same_as_mirror(&db).await;
    let st = status_json(&db, plan).await;
    assert_eq!(
        (st["phase"].as_str(), st["path"].as_str()),
        (Some("done"), Some("instant")),
        "{st}"
    );
    db.drop().await;
}

macro_rules! instant_tests {
    ($db:ident, $kind:expr) => {
        mod $db {
            use crate::harness::Kind;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn every_instant_change_is_made_in_place_under_writes() {
                super::every_instant_change_is_made_in_place_under_writes($kind).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_rewrite_copies_under_auto_and_instant_refuses_it() {
                super::a_rewrite_copies_under_auto_and_instant_refuses_it($kind).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn killed_inside_the_instant_change_then_resumed() {
                super::killed_inside_the_instant_change_then_resumed($kind).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn rollback_runs_the_reverse_and_refuses_a_lossy_one() {
                super::rollback_runs_the_reverse_and_refuses_a_lossy_one($kind).await;
            }
        }
    };
}

instant_tests!(postgres, Kind::Postgres);
instant_tests!(sqlite, Kind::Sqlite);
instant_tests!(mysql, Kind::MySql);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_blocker_holds_the_instant_change_back_while_writes_go_on() {
    a_blocker_holds_the_instant_change_back_while_writes_go_on().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_an_index_build_cut_short_is_rebuilt_on_resume() {
    an_index_build_cut_short_is_rebuilt_on_resume().await;
}
