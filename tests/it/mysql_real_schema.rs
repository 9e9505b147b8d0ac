//! MariaDB tables as applications have them: an `INT` key widened to `BIGINT` under the
//! concurrent writer with a kill and resume (ids above 2^31 after done, AUTO_INCREMENT
//! carried), rollback from cut_over, a view and table grants carried by name, and the
//! refusals by name of what turnout does not carry yet (a child column that must widen
//! with the key, a view using a dropped column, the table's own triggers). Foreign keys
//! and CHECK constraints are carried: see mysql_fixture.rs.

use crate::harness::{Kind, TestDb, Writer, ok, stderr, stdout};

const ROWS: i64 = 600;

/// `items` with an INT AUTO_INCREMENT key, its `mirror` (BIGINT, so it can hold anything
/// the table can after the migration) and a view over `items`.
async fn seed(db: &TestDb) {
    db.exec("CREATE TABLE items (id INT NOT NULL AUTO_INCREMENT PRIMARY KEY, qty INT NOT NULL, tag INT, name VARCHAR(100))").await;
    db.exec("CREATE TABLE mirror (id BIGINT NOT NULL PRIMARY KEY, qty INT NOT NULL, tag INT, name VARCHAR(100))").await;
    db.exec("CREATE INDEX items_tag ON items (tag)").await;
    let values: Vec<String> = (1..=ROWS)
        .map(|i| {
            let tag = if i % 4 == 0 {
                "NULL".into()
            } else {
                (i % 7).to_string()
            };
            format!("({i}, {}, {tag}, 'item {i}')", i * 3 % 1000)
        })
        .collect();
    for t in ["items", "mirror"] {
        db.exec(&format!(
            "INSERT INTO {t} (id, qty, tag, name) VALUES {}",
            values.join(", ")
        ))
        .await;
    }
    db.exec("CREATE VIEW tagged AS SELECT id, qty, tag FROM items WHERE tag IS NOT NULL")
        .await;
}

fn widen_plan(name: &str) -> String {
    format!(
        "version: 1
name: {name}
table: items
changes:
  - alter_column: {{name: id, type: BIGINT}}
  - add_index: {{name: items_qty, columns: [qty]}}
backfill:
  batch_size: 100
cutover:
  lock_timeout: 2s
  attempts: 10
  retry_delay: 50ms
"
    )
}

async fn key_type(db: &TestDb) -> String {
    db.one("SELECT CAST(COLUMN_TYPE AS CHAR) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'items' AND COLUMN_NAME = 'id'").await
}

async fn view_key_type(db: &TestDb) -> String {
    db.one("SELECT CAST(COLUMN_TYPE AS CHAR) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'tagged' AND COLUMN_NAME = 'id'").await
}

/// The table's rows against the mirror, and the view against a query over the table.
async fn rows_match(db: &TestDb) {
    let q = |t: &str| {
        format!(
            "SELECT CAST(id AS CHAR), CAST(qty AS CHAR), CAST(tag AS CHAR), name FROM {t} ORDER BY id"
        )
    };
    let (live, mirror) = (db.rows(&q("items")).await, db.rows(&q("mirror")).await);
    assert_eq!(
        live.len(),
        mirror.len(),
        "row counts differ from the mirror"
    );
    assert!(
        live == mirror,
        "the table differs from what the writer wrote"
    );
    let view = db
        .rows(
            "SELECT CAST(id AS CHAR), CAST(qty AS CHAR), CAST(tag AS CHAR) FROM tagged ORDER BY id",
        )
        .await;
    let direct = db.rows("SELECT CAST(id AS CHAR), CAST(qty AS CHAR), CAST(tag AS CHAR) FROM items WHERE tag IS NOT NULL ORDER BY id").await;
    assert!(
        !view.is_empty() && view == direct,
        "the view does not read the table"
    );
}

/// A per-test user with grants on `items`, and the grants as the catalog holds them.
async fn grant(db: &TestDb) -> String {
    let user = format!("tu_{:08x}", rand::random::<u32>());
    db.exec(&format!("CREATE USER '{user}'@'localhost'")).await;
    db.exec(&format!(
        "GRANT SELECT, UPDATE ON items TO '{user}'@'localhost'"
    ))
    .await;
    db.exec(&format!(
        "GRANT SELECT (id, qty) ON tagged TO '{user}'@'localhost'"
    ))
    .await;
    user
}

async fn grants(db: &TestDb, user: &str) -> Vec<Vec<Option<String>>> {
    db.rows(&format!(
        "SELECT CAST(Table_name AS CHAR), CAST(Table_priv AS CHAR), CAST(Column_priv AS CHAR) FROM mysql.tables_priv WHERE Db = DATABASE() AND User = '{user}' ORDER BY Table_name"
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_int_key_widened_to_bigint_under_writes_with_a_kill_and_resume() {
    let db = TestDb::new(Kind::MySql).await;
    seed(&db).await;
    let user = grant(&db).await;
    let before_grants = grants(&db, &user).await;
    assert_eq!(before_grants.len(), 2);
    let plan = db.plan_file("plan.yaml", &widen_plan("widen-key"));
    let plan = plan.to_str().expect("utf-8 path");
    let check = db.turnout(&["check", plan], None);
    ok(&check, "check");
    let writer = Writer::start(db.pool.clone(), "items", "mirror", ROWS, 29);
    writer.wait_for(10).await;
    let killed = db.turnout(&["run", plan, "--yes"], Some("backfill.batch.after@2"));
    assert!(
        !killed.status.success(),
        "the fault was never reached: {}",
        stdout(&killed)
    );
    writer.wait_for(20).await;
    ok(
        &db.turnout(&["run", plan, "--until", "verified", "--yes"], None),
        "resume",
    );
    writer.wait_for(10).await;
    ok(&db.turnout(&["verify", plan], None), "verify");
    ok(
        &db.turnout(&["run", plan, "--yes"], None),
        "cutover and cleanup",
    );
    writer.wait_for(20).await;
    let disagreements = writer.stop().await;
    assert!(disagreements.is_empty(), "{disagreements:?}");
    rows_match(&db).await;
    assert_eq!(key_type(&db).await, "bigint(20)");
    assert_eq!(grants(&db, &user).await, before_grants, "grants changed");
    // Above 2^31, explicitly and from AUTO_INCREMENT, which carries on above every id.
    let max: i64 = db
        .one("SELECT CAST(MAX(id) AS CHAR) FROM items")
        .await
        .parse()
        .expect("max id");
    db.exec("INSERT INTO items (qty, name) VALUES (1, 'next')")
        .await;
    let next_by_name: i64 = db
        .one("SELECT CAST(id AS CHAR) FROM items WHERE name = 'next'")
        .await
        .parse()
        .expect("id");
    assert!(
        next_by_name > max,
        "AUTO_INCREMENT gave {next_by_name}, max was {max}"
    );
    db.exec("INSERT INTO items (id, qty, name) VALUES (3000000000, 1, 'big')")
        .await;
    db.exec("INSERT INTO items (qty, name) VALUES (1, 'bigger')")
        .await;
    let bigger: i64 = db
        .one("SELECT CAST(id AS CHAR) FROM items WHERE name = 'bigger'")
        .await
        .parse()
        .expect("id");
    assert_eq!(bigger, 3000000001);
    db.exec(&format!("DROP USER '{user}'@'localhost'")).await;
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_widened_key_rolls_back_from_cut_over_with_its_view() {
    let db = TestDb::new(Kind::MySql).await;
    seed(&db).await;
    let plan = db.plan_file("plan.yaml", &widen_plan("widen-back"));
    let plan = plan.to_str().expect("utf-8 path");
    let writer = Writer::start(db.pool.clone(), "items", "mirror", ROWS, 31);
    writer.wait_for(10).await;
    ok(
        &db.turnout(&["run", plan, "--until", "cut_over", "--yes"], None),
        "to cut_over",
    );
    assert_eq!(key_type(&db).await, "bigint(20)");
    writer.wait_for(20).await;
    // The view reads the new table now (its column has the new type), and in one
    // statement (one read view) it returns what a query over the table returns.
    assert_eq!(view_key_type(&db).await, "bigint(20)");
    let same = db.one("SELECT CAST((SELECT COUNT(*) FROM tagged) = (SELECT COUNT(*) FROM items WHERE tag IS NOT NULL) AS CHAR)",
    )
    .await;
    assert_eq!(same, "1");
    ok(&db.turnout(&["rollback", plan, "--yes"], None), "rollback");
    writer.wait_for(10).await;
    let disagreements = writer.stop().await;
    assert!(disagreements.is_empty(), "{disagreements:?}");
    assert_eq!(key_type(&db).await, "int(11)");
    assert_eq!(view_key_type(&db).await, "int(11)");
    rows_match(&db).await;
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_an_id_the_old_key_cannot_hold_is_recorded_and_rollback_asks_to_accept_the_loss() {
    let db = TestDb::new(Kind::MySql).await;
    seed(&db).await;
    let plan = db.plan_file("plan.yaml", &widen_plan("widen-big"));
    let plan = plan.to_str().expect("utf-8 path");
    ok(
        &db.turnout(&["run", plan, "--until", "cut_over", "--yes"], None),
        "to cut_over",
    );
    db.exec("INSERT INTO items (id, qty, name) VALUES (3000000000, 1, 'big')")
        .await;
    let refused = db.turnout(&["rollback", plan, "--yes"], None);
    assert!(!refused.status.success(), "{}", stdout(&refused));
    assert!(
        stderr(&refused).contains("--accept-loss"),
        "{}",
        stderr(&refused)
    );
    ok(
        &db.turnout(&["rollback", plan, "--yes", "--accept-loss"], None),
        "rollback",
    );
    assert_eq!(key_type(&db).await, "int(11)");
    assert_eq!(
        db.one("SELECT CAST(COUNT(*) AS CHAR) FROM items WHERE name = 'big'")
            .await,
        "0"
    );
    db.drop().await;
}

/// `turnout check` exits 2 with every `needles` in its message, and nothing was created.
async fn refused(db: &TestDb, yaml: &str, needles: &[&str]) {
    let plan = db.plan_file("refused.yaml", yaml);
    let out = db.turnout(&["check", plan.to_str().expect("utf-8")], None);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for n in needles {
        assert!(err.contains(n), "{n:?} not in:\n{err}");
    }
    let shadow = db.rows("SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME LIKE '\\_%'").await;
    assert!(shadow.is_empty(), "check created {shadow:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_what_is_not_carried_is_refused_by_name() {
    let db = TestDb::new(Kind::MySql).await;
    seed(&db).await;
    db.exec("CREATE TABLE notes (id INT PRIMARY KEY, item_id INT, CONSTRAINT notes_item FOREIGN KEY (item_id) REFERENCES items (id) ON DELETE CASCADE)").await;
    refused(
        &db,
        &widen_plan("widen-child"),
        &[
            "column notes.item_id references items.id (foreign key notes_item)",
            "must change to BIGINT too",
        ],
    )
    .await;
    db.exec("DROP TABLE notes").await;
    refused(
        &db,
        "version: 1\nname: drop-qty\ntable: items\nchanges:\n  - drop_column: {name: qty, reverse: 0}\n",
        &["view tagged uses column qty of items"],
    )
    .await;
    refused(
        &db,
        "version: 1\nname: rename-tag\ntable: items\nchanges:\n  - rename_column: {from: tag, to: label}\n",
        &["view tagged uses column tag of items"],
    )
    .await;
    refused(&db, "version: 1\nname: narrow\ntable: items\nchanges:\n  - alter_column: {name: id, type: SMALLINT}\n", &[
        "primary key column id of items",
        "narrows",
    ])
    .await;
    db.exec(
        "CREATE TRIGGER items_stamp BEFORE UPDATE ON items FOR EACH ROW SET NEW.name = NEW.name",
    )
    .await;
    refused(
        &db,
        "version: 1\nname: rename-triggered\ntable: items\nchanges:\n  - rename_column: {from: tag, to: label}\n",
        &["table items has its own trigger items_stamp, and the plan drops or renames column tag"],
    )
    .await;
    db.drop().await;
}

/// Each fault point of the cutover (then resume to done) and of a rollback from cut_over
/// (then rollback again), with the widened key and the view present, under the writer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_widened_key_survives_every_cutover_and_rollback_fault() {
    let cutover = [
        "cutover.attempt",
        "cutover.inside",
        "mysql.cutover.before_swap",
        "mysql.cutover.after_swap",
        "phase.cutover.after",
        "cleanup.inside",
    ];
    let rollback = [
        "rollback.before",
        "rollback.inside",
        "mysql.rollback.after_swap_back",
        "rollback.after",
    ];
    for (point, is_rollback) in cutover
        .iter()
        .map(|p| (*p, false))
        .chain(rollback.iter().map(|p| (*p, true)))
    {
        let db = TestDb::new(Kind::MySql).await;
        seed(&db).await;
        let plan = db.plan_file("plan.yaml", &widen_plan("widen-fault"));
        let plan = plan.to_str().expect("utf-8 path");
        let writer = Writer::start(db.pool.clone(), "items", "mirror", ROWS, 37);
        writer.wait_for(10).await;
        let crashed = if is_rollback {
            ok(
                &db.turnout(&["run", plan, "--until", "cut_over", "--yes"], None),
                "to cut_over",
            );
            writer.wait_for(10).await;
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
        let disagreements = writer.stop().await;
        assert!(disagreements.is_empty(), "{point}: {disagreements:?}");
        rows_match(&db).await;
        let want = if is_rollback { "int(11)" } else { "bigint(20)" };
        assert_eq!(key_type(&db).await, want, "{point}");
        db.drop().await;
    }
}
