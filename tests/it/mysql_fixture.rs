//! An application schema on MariaDB, ten tables deep: `items` has a foreign key to
//! `tags` (SET NULL) and two children, `notes` (CASCADE) and `holds` (SET NULL), each
//! with a mirror table whose constraints point at the writer's `mirror`, so every
//! cascade the database performs on the real tables it performs on the mirrors too; a
//! self-referencing `shelves`, `tags` with a BEFORE and an AFTER trigger writing
//! `audit`, `items` (and its mirror) with a BEFORE UPDATE trigger counting updates in
//! `touched` and two ordered AFTER INSERT ones, one writing `audit`, CHECK constraints
//! (and the `json_valid` one MariaDB adds to a JSON column), an ENUM, a generated
//! column, FULLTEXT and prefix indexes (on `items` too, with a SPATIAL one), two views
//! and grants to a second user. `items` is migrated under the writer while a second
//! writer inserts children and deletes parent rows so cascades fire; after done and
//! after a rollback from cut_over the catalog (information_schema and SHOW CREATE) is as before, the
//! data equals the mirrors (the `touched` counts and the audit rows too, so the
//! triggers ran once per application write and never for turnout's copies), and
//! `turnout verify` is exact.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::harness::{Kind, Pool, Probes, TestDb, Writer, ok, stderr, stdout};

const ROWS: i64 = 400;

async fn seed(db: &TestDb) {
    db.exec(
        "CREATE TABLE tags (id INT PRIMARY KEY, label VARCHAR(20) NOT NULL, touched INT NOT NULL DEFAULT 0);
CREATE TABLE audit (id INT AUTO_INCREMENT PRIMARY KEY, tag_id INT NOT NULL, what VARCHAR(10) NOT NULL);
CREATE TABLE items (id INT NOT NULL AUTO_INCREMENT PRIMARY KEY, qty INT NOT NULL, tag INT NULL, name VARCHAR(100), state ENUM('new','used') NOT NULL DEFAULT 'new', doc JSON NULL, touched INT NOT NULL DEFAULT 0, spot POINT NOT NULL DEFAULT (POINT(0, 0)), KEY items_tag (tag), KEY items_name_start (name(10)), FULLTEXT KEY items_name_words (name), SPATIAL KEY items_spot (spot), CONSTRAINT items_tag_fk FOREIGN KEY (tag) REFERENCES tags (id) ON DELETE SET NULL ON UPDATE CASCADE, CONSTRAINT qty_sane CHECK (qty >= 0));
CREATE TABLE mirror (id INT NOT NULL PRIMARY KEY, qty INT NOT NULL, tag INT NULL, name VARCHAR(100), state ENUM('new','used') NOT NULL DEFAULT 'new', doc JSON NULL, touched INT NOT NULL DEFAULT 0, KEY mirror_tag (tag), CONSTRAINT mirror_tag_fk FOREIGN KEY (tag) REFERENCES tags (id) ON DELETE SET NULL ON UPDATE CASCADE);
CREATE TABLE notes (id INT PRIMARY KEY, item_id INT NOT NULL, body VARCHAR(200) NOT NULL, CONSTRAINT notes_item FOREIGN KEY (item_id) REFERENCES items (id) ON DELETE CASCADE ON UPDATE CASCADE, FULLTEXT KEY notes_body (body));
CREATE TABLE notes_mirror (id INT PRIMARY KEY, item_id INT NOT NULL, body VARCHAR(200) NOT NULL, CONSTRAINT notes_mirror_item FOREIGN KEY (item_id) REFERENCES mirror (id) ON DELETE CASCADE ON UPDATE CASCADE);
CREATE TABLE holds (id INT PRIMARY KEY, item_id INT NULL, who VARCHAR(100) NOT NULL, who_len INT AS (CHAR_LENGTH(who)) VIRTUAL, KEY holds_who (who(8)), FOREIGN KEY (item_id) REFERENCES items (id) ON DELETE SET NULL ON UPDATE CASCADE);
CREATE TABLE holds_mirror (id INT PRIMARY KEY, item_id INT NULL, who VARCHAR(100) NOT NULL, CONSTRAINT holds_mirror_item FOREIGN KEY (item_id) REFERENCES mirror (id) ON DELETE SET NULL ON UPDATE CASCADE);
CREATE TABLE shelves (id INT PRIMARY KEY, parent_id INT NULL, CONSTRAINT shelves_parent FOREIGN KEY (parent_id) REFERENCES shelves (id) ON DELETE CASCADE)",
    )
    .await;
    let tags: Vec<String> = (0..7).map(|i| format!("({i}, 'tag {i}')")).collect();
    db.exec(&format!(
        "INSERT INTO tags (id, label) VALUES {}",
        tags.join(", ")
    ))
    .await;
    let items: Vec<String> = (1..=ROWS)
        .map(|i| {
            let tag = if i % 4 == 0 {
                "NULL".into()
            } else {
                (i % 7).to_string()
            };
            let doc = if i % 3 == 0 {
                format!("'{{\"n\": {i}}}'")
            } else {
                "NULL".into()
            };
            format!(
                "({i}, {}, {tag}, 'item {i}', '{}', {doc})",
                i * 3 % 1000,
                if i % 2 == 0 { "new" } else { "used" }
            )
        })
        .collect();
    for t in ["items", "mirror"] {
        db.exec(&format!(
            "INSERT INTO {t} (id, qty, tag, name, state, doc) VALUES {}",
            items.join(", ")
        ))
        .await;
    }
    let children: Vec<String> = (1..=ROWS)
        .map(|i| format!("({i}, {}, 'child {i}')", 1 + i * 7 % ROWS))
        .collect();
    for t in ["notes", "notes_mirror"] {
        db.exec(&format!(
            "INSERT INTO {t} (id, item_id, body) VALUES {}",
            children.join(", ")
        ))
        .await;
    }
    for t in ["holds", "holds_mirror"] {
        db.exec(&format!(
            "INSERT INTO {t} (id, item_id, who) VALUES {}",
            children.join(", ")
        ))
        .await;
    }
    db.exec(
        "INSERT INTO shelves VALUES (1, NULL), (2, 1);
CREATE TRIGGER tags_touch BEFORE UPDATE ON tags FOR EACH ROW SET NEW.touched = OLD.touched + 1;
CREATE TRIGGER tags_gone AFTER DELETE ON tags FOR EACH ROW INSERT INTO audit (tag_id, what) VALUES (OLD.id, 'deleted');
CREATE TRIGGER items_touch BEFORE UPDATE ON items FOR EACH ROW SET NEW.touched = OLD.touched + 1;
CREATE TRIGGER items_log AFTER INSERT ON items FOR EACH ROW INSERT INTO audit (tag_id, what) VALUES (NEW.id, 'item');
CREATE TRIGGER items_first AFTER INSERT ON items FOR EACH ROW PRECEDES items_log BEGIN SET @fixture_last_item = NEW.id; END;
CREATE TRIGGER mirror_touch BEFORE UPDATE ON mirror FOR EACH ROW SET NEW.touched = OLD.touched + 1;
CREATE TRIGGER mirror_log AFTER INSERT ON mirror FOR EACH ROW INSERT INTO audit (tag_id, what) VALUES (NEW.id, 'mirror');
CREATE VIEW tagged AS SELECT i.id, i.qty, t.label FROM items i JOIN tags t ON t.id = i.tag;
CREATE VIEW item_notes AS SELECT n.id, n.item_id, n.body FROM notes n",
    )
    .await;
}

/// The catalog's account of every table but turnout's: SHOW CREATE TABLE (lines sorted,
/// AUTO_INCREMENT counters left out) per table, and the information_schema rows of
/// foreign keys, triggers, views, CHECK constraints, indexes and grants.
async fn furniture(db: &TestDb, user: &str) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    let tables = db
        .rows("SELECT CAST(TABLE_NAME AS CHAR) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_TYPE = 'BASE TABLE' AND TABLE_NAME NOT LIKE '\\_%' AND TABLE_NAME NOT LIKE 'turnout%'")
        .await;
    for t in tables.into_iter().filter_map(|r| r[0].clone()) {
        let create = db.rows(&format!("SHOW CREATE TABLE `{t}`")).await;
        let text = create[0][1].clone().unwrap_or_default();
        let mut lines: Vec<String> = text
            .lines()
            .map(|l| {
                let l = l.trim().trim_end_matches(',');
                match l.find(" AUTO_INCREMENT=") {
                    Some(at) => {
                        let rest = &l[at + 1..];
                        let end = rest.find(' ').unwrap_or(rest.len());
                        format!("{}{}", &l[..at], &rest[end..])
                    }
                    None => l.to_string(),
                }
            })
            .collect();
        lines.sort();
        out.insert(format!("create {t}"), lines);
    }
    let queries = [
        (
            "foreign keys",
            "SELECT CONCAT_WS(' ', CONSTRAINT_NAME, TABLE_NAME, REFERENCED_TABLE_NAME, UPDATE_RULE, DELETE_RULE) FROM information_schema.REFERENTIAL_CONSTRAINTS WHERE CONSTRAINT_SCHEMA = DATABASE() ORDER BY 1",
        ),
        (
            "foreign key columns",
            "SELECT CONCAT_WS(' ', CONSTRAINT_NAME, TABLE_NAME, COLUMN_NAME, ORDINAL_POSITION, REFERENCED_TABLE_NAME, REFERENCED_COLUMN_NAME) FROM information_schema.KEY_COLUMN_USAGE WHERE TABLE_SCHEMA = DATABASE() AND REFERENCED_TABLE_NAME IS NOT NULL ORDER BY 1",
        ),
        (
            "triggers",
            "SELECT CONCAT_WS(' | ', TRIGGER_NAME, EVENT_OBJECT_TABLE, ACTION_TIMING, EVENT_MANIPULATION, ACTION_ORDER, ACTION_STATEMENT, SQL_MODE, DEFINER) FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = DATABASE() ORDER BY 1",
        ),
        (
            "views",
            "SELECT CONCAT_WS(' | ', TABLE_NAME, VIEW_DEFINITION) FROM information_schema.VIEWS WHERE TABLE_SCHEMA = DATABASE() ORDER BY 1",
        ),
        (
            "checks",
            "SELECT CONCAT_WS(' | ', TABLE_NAME, CONSTRAINT_NAME, LEVEL, CHECK_CLAUSE) FROM information_schema.CHECK_CONSTRAINTS WHERE CONSTRAINT_SCHEMA = DATABASE() ORDER BY 1",
        ),
        (
            "indexes",
            "SELECT CONCAT_WS(' ', TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX, COLUMN_NAME, SUB_PART, INDEX_TYPE, NON_UNIQUE) FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME NOT LIKE '\\_%' AND TABLE_NAME NOT LIKE 'turnout%' ORDER BY 1",
        ),
    ];
    for (what, sql) in queries {
        let mut rows: Vec<String> = db
            .rows(sql)
            .await
            .into_iter()
            .map(|r| r[0].clone().unwrap_or_default())
            .collect();
        rows.sort();
        out.insert(what.to_string(), rows);
    }
    let grants = db
        .rows(&format!("SELECT CONCAT_WS(' ', Table_name, Table_priv, Column_priv) FROM mysql.tables_priv WHERE Db = DATABASE() AND User = '{user}' UNION ALL SELECT CONCAT_WS(' ', Table_name, Column_name, Column_priv) FROM mysql.columns_priv WHERE Db = DATABASE() AND User = '{user}' ORDER BY 1"))
        .await;
    out.insert(
        "grants".into(),
        grants
            .into_iter()
            .map(|r| r[0].clone().unwrap_or_default())
            .collect(),
    );
    out
}

/// What the migration of `items` below changes, applied to the catalog as it was.
fn widened(mut before: BTreeMap<String, Vec<String>>) -> BTreeMap<String, Vec<String>> {
    if let Some(lines) = before.get_mut("create items") {
        for l in lines.iter_mut() {
            *l = l.replace("`name` varchar(100)", "`name` varchar(200)");
        }
        lines.push("KEY `items_qty` (`qty`)".into());
        lines.sort();
    }
    if let Some(rows) = before.get_mut("indexes") {
        rows.push("items items_qty 1 qty BTREE 1".into());
        rows.sort();
    }
    before
}

async fn grant(db: &TestDb) -> String {
    let user = format!("tf_{:08x}", rand::random::<u32>());
    db.exec(&format!("CREATE USER '{user}'@'localhost'")).await;
    db.exec(&format!(
        "GRANT SELECT, UPDATE ON items TO '{user}'@'localhost'"
    ))
    .await;
    db.exec(&format!(
        "GRANT SELECT (id, qty) ON items TO '{user}'@'localhost'"
    ))
    .await;
    db.exec(&format!(
        "GRANT SELECT, INSERT ON notes TO '{user}'@'localhost'"
    ))
    .await;
    db.exec(&format!("GRANT SELECT ON tagged TO '{user}'@'localhost'"))
        .await;
    user
}

fn plan(name: &str) -> String {
    format!(
        "version: 1
name: {name}
table: items
changes:
  - alter_column: {{name: name, type: VARCHAR(200)}}
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

/// The application's other writes: children inserted for random items (into the
/// table and its mirror in one transaction), tags deleted (their SET NULL cascades
/// into `items` and `mirror` alike) and put back, children deleted.
struct Family {
    stop: Arc<AtomicBool>,
    pub tag_deletes: Arc<AtomicU64>,
    pub children: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Family {
    fn start(pool: Pool, seed: u64) -> Family {
        let stop = Arc::new(AtomicBool::new(false));
        let tag_deletes = Arc::new(AtomicU64::new(0));
        let children = Arc::new(AtomicU64::new(0));
        let (stop2, deletes2, children2) = (stop.clone(), tag_deletes.clone(), children.clone());
        let task = tokio::spawn(async move {
            let mut rng = seed;
            let mut next = || {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng
            };
            let mut child_id = 10 * ROWS;
            while !stop2.load(Ordering::Relaxed) {
                let r = next();
                let item = 1 + (r >> 8) as i64 % (ROWS + 200);
                let stmts: Vec<(String, Vec<i64>)> = match r % 10 {
                    0..=3 => {
                        child_id += 1;
                        let t = if r % 2 == 0 { "notes" } else { "holds" };
                        let col = if t == "notes" { "body" } else { "who" };
                        vec![
                            (
                                format!(
                                    "INSERT INTO {t} (id, item_id, {col}) VALUES (?, ?, 'new child')"
                                ),
                                vec![child_id, item],
                            ),
                            (
                                format!(
                                    "INSERT INTO {t}_mirror (id, item_id, {col}) VALUES (?, ?, 'new child')"
                                ),
                                vec![child_id, item],
                            ),
                        ]
                    }
                    4..=5 => {
                        let tag = (r >> 16) as i64 % 7;
                        if let Ok(1) = pool.exec("DELETE FROM tags WHERE id = ?", &[tag]).await {
                            deletes2.fetch_add(1, Ordering::Relaxed);
                        }
                        vec![(
                            "INSERT IGNORE INTO tags (id, label) VALUES (?, 'back')".into(),
                            vec![tag],
                        )]
                    }
                    6 => vec![(
                        "UPDATE tags SET label = 'renamed' WHERE id = ?".into(),
                        vec![(r >> 16) as i64 % 7],
                    )],
                    _ => {
                        let id = 1 + (r >> 8) as i64 % child_id;
                        let t = if r % 2 == 0 { "notes" } else { "holds" };
                        vec![
                            (format!("DELETE FROM {t} WHERE id = ?"), vec![id]),
                            (format!("DELETE FROM {t}_mirror WHERE id = ?"), vec![id]),
                        ]
                    }
                };
                if pool.transaction(&stmts).await.is_ok() && stmts[0].0.starts_with("INSERT INTO") {
                    children2.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        Family {
            stop,
            tag_deletes,
            children,
            task,
        }
    }

    async fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        (
            self.tag_deletes.load(Ordering::Relaxed),
            self.children.load(Ordering::Relaxed),
        )
    }
}

/// Every table against its mirror, the views against queries over their tables.
async fn data_matches(db: &TestDb) {
    let items = |t: &str| {
        format!(
            "SELECT CAST(id AS CHAR), CAST(qty AS CHAR), CAST(tag AS CHAR), name, CAST(state AS CHAR), doc, CAST(touched AS CHAR) FROM {t} ORDER BY id"
        )
    };
    assert!(
        db.rows(&items("items")).await == db.rows(&items("mirror")).await,
        "items differ from the mirror"
    );
    for (t, col) in [("notes", "body"), ("holds", "who")] {
        let q = |t: &str| {
            format!("SELECT CAST(id AS CHAR), CAST(item_id AS CHAR), {col} FROM {t} ORDER BY id")
        };
        let (live, mirror) = (
            db.rows(&q(t)).await,
            db.rows(&q(&format!("{t}_mirror"))).await,
        );
        assert_eq!(
            live.len(),
            mirror.len(),
            "{t}: row counts differ from its mirror"
        );
        assert!(live == mirror, "{t} differs from its mirror");
    }
    // The table's own triggers ran once for each of the application's writes and never
    // for turnout's copies: every update stamped both tables alike, every insert wrote
    // one audit row for each.
    let stamped = db
        .one("SELECT CAST(COUNT(*) AS CHAR) FROM items WHERE touched > 0")
        .await;
    assert_ne!(stamped, "0", "no update stamped an item");
    let logged =
        |what: &str| format!("SELECT CAST(COUNT(*) AS CHAR) FROM audit WHERE what = '{what}'");
    let (items_logged, mirror_logged) = (
        db.one(&logged("item")).await,
        db.one(&logged("mirror")).await,
    );
    assert_eq!(
        items_logged, mirror_logged,
        "audit rows of items and of the mirror"
    );
    assert_ne!(items_logged, "0", "no insert was audited");
    let orphans = db.one("SELECT CAST(COUNT(*) AS CHAR) FROM notes n LEFT JOIN items i ON i.id = n.item_id WHERE i.id IS NULL").await;
    assert_eq!(orphans, "0", "notes without their item");
    let view = db
        .rows("SELECT CAST(id AS CHAR), CAST(qty AS CHAR), label FROM tagged ORDER BY id")
        .await;
    let direct = db.rows("SELECT CAST(i.id AS CHAR), CAST(i.qty AS CHAR), t.label FROM items i JOIN tags t ON t.id = i.tag ORDER BY i.id").await;
    assert!(
        !view.is_empty() && view == direct,
        "the view does not read the table"
    );
}

/// The foreign keys still act on the new table: a child of a missing item is refused,
/// deleting an item cascades into `notes` and sets `holds` to NULL.
async fn constraints_act(db: &TestDb) {
    let err = db
        .exec_err("INSERT INTO notes (id, item_id, body) VALUES (999999, 987654321, 'orphan')")
        .await;
    assert!(err.contains("foreign key constraint fails"), "{err}");
    let err = db
        .exec_err("INSERT INTO items (id, qty, tag) VALUES (999999, 1, 99)")
        .await;
    assert!(err.contains("foreign key constraint fails"), "{err}");
    let err = db
        .exec_err("INSERT INTO items (id, qty) VALUES (999999, -1)")
        .await;
    assert!(err.contains("qty_sane"), "{err}");
    let err = db
        .exec_err("INSERT INTO items (id, qty, doc) VALUES (999999, 1, 'not json')")
        .await;
    assert!(err.to_lowercase().contains("doc"), "{err}");
    db.exec(
        "INSERT INTO items (id, qty) VALUES (999999, 1);
INSERT INTO notes (id, item_id, body) VALUES (999999, 999999, 'x');
INSERT INTO holds (id, item_id, who) VALUES (999999, 999999, 'x');
DELETE FROM items WHERE id = 999999",
    )
    .await;
    assert_eq!(
        db.one("SELECT CAST(COUNT(*) AS CHAR) FROM notes WHERE id = 999999")
            .await,
        "0"
    );
    assert_eq!(
        db.one("SELECT CAST(COUNT(*) AS CHAR) FROM holds WHERE id = 999999 AND item_id IS NULL")
            .await,
        "1"
    );
    db.exec("DELETE FROM holds WHERE id = 999999").await;
    // The item's own AFTER INSERT trigger audited it, once: the writer's mirror has no
    // such row, so it goes.
    let audited = db
        .one("SELECT CAST(COUNT(*) AS CHAR) FROM audit WHERE what = 'item' AND tag_id = 999999")
        .await;
    assert_eq!(audited, "1", "the insert into items was not audited once");
    db.exec("DELETE FROM audit WHERE what = 'item' AND tag_id = 999999")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_fixture_items_migrates_to_done_and_back_with_every_constraint_kept() {
    for rollback in [false, true] {
        let db = TestDb::new(Kind::MySql).await;
        seed(&db).await;
        let user = grant(&db).await;
        let before = furniture(&db, &user).await;
        let path = db.plan_file(
            "plan.yaml",
            &plan(if rollback { "fixture-back" } else { "fixture" }),
        );
        let path = path.to_str().expect("utf-8 path");
        ok(&db.turnout(&["check", path], None), "check");
        let writer = Writer::start(db.pool.clone(), "items", "mirror", ROWS, 41);
        let family = Family::start(db.pool.clone(), 43);
        writer.wait_for(10).await;
        ok(
            &db.turnout(&["run", path, "--until", "backfilled", "--yes"], None),
            "to backfilled",
        );
        writer.wait_for(10).await;
        ok(&db.turnout(&["verify", path], None), "verify");
        ok(
            &db.turnout(&["run", path, "--until", "cut_over", "--yes"], None),
            "to cut_over",
        );
        writer.wait_for(20).await;
        constraints_act(&db).await;
        if rollback {
            ok(&db.turnout(&["rollback", path, "--yes"], None), "rollback");
        } else {
            ok(&db.turnout(&["run", path, "--yes"], None), "cleanup");
        }
        writer.wait_for(20).await;
        let (tag_deletes, children) = family.stop().await;
        let disagreements = writer.stop().await;
        assert!(disagreements.is_empty(), "{disagreements:?}");
        assert!(
            tag_deletes > 0 && children > 0,
            "the family writer made no cascades: {tag_deletes} tag deletes, {children} children"
        );
        data_matches(&db).await;
        let after = furniture(&db, &user).await;
        let want = if rollback {
            before.clone()
        } else {
            widened(before.clone())
        };
        for (what, rows) in &want {
            assert_eq!(
                after.get(what),
                Some(rows),
                "{what} changed (rollback: {rollback})"
            );
        }
        assert_eq!(after.len(), want.len());
        constraints_act(&db).await;
        db.exec(&format!("DROP USER '{user}'@'localhost'")).await;
        db.drop().await;
    }
}

/// `turnout check` exits 2 naming each thing, and creates nothing.
async fn refused(db: &TestDb, yaml: &str, needles: &[&str]) {
    let plan = db.plan_file("refused.yaml", yaml);
    let out = db.turnout(&["check", plan.to_str().expect("utf-8")], None);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for n in needles {
        assert!(err.contains(n), "{n:?} not in:\n{err}");
    }
    let made = db.rows("SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME LIKE '\\_%'").await;
    assert!(made.is_empty(), "check created {made:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_fixture_what_is_not_carried_is_refused_by_name() {
    let db = TestDb::new(Kind::MySql).await;
    seed(&db).await;
    let widen = |table: &str, col: &str| {
        format!(
            "version: 1\nname: w-{table}\ntable: {table}\nchanges:\n  - alter_column: {{name: {col}, type: VARCHAR(300)}}\n"
        )
    };
    refused(
        &db,
        &widen("shelves", "parent_id"),
        &["foreign key shelves_parent of shelves uses column parent_id, which the plan changes the type of"],
    )
    .await;
    refused(
        &db,
        "version: 1\nname: rename-label\ntable: tags\nchanges:\n  - rename_column: {from: label, to: title}\n",
        &[
            "table tags has its own trigger tags_touch, and the plan drops or renames column label",
            "own trigger tags_gone, and the plan",
        ],
    )
    .await;
    refused(
        &db,
        "version: 1\nname: rename-who\ntable: holds\nchanges:\n  - rename_column: {from: who, to: holder}\n",
        &["generated column who_len of holds is computed from column who, which the plan drops or renames"],
    )
    .await;
    refused(
        &db,
        "version: 1\nname: drop-tag\ntable: items\nchanges:\n  - drop_column: {name: tag}\n",
        &["foreign key items_tag_fk of items uses column tag, which the plan drops or renames"],
    )
    .await;
    refused(
        &db,
        "version: 1\nname: narrow-qty\ntable: items\nchanges:\n  - rename_column: {from: qty, to: amount}\n",
        &["CHECK constraint qty_sane of items uses column qty"],
    )
    .await;
    db.drop().await;
}

/// Each fault point of the cutover (and the new ones between two steps of a constraint
/// move), with the foreign keys present, under both writers: resume ends with the
/// catalog and the data as they must be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_fixture_survives_every_cutover_fault() {
    walk_faults(
        &[
            "mysql.cutover.before_swap",
            "mysql.foreign_keys.child_halfway@2",
            "mysql.cutover.after_swap",
            "mysql.foreign_keys.outgoing_halfway",
            "cutover.inside",
            "phase.cutover.after",
            "cleanup.inside",
        ],
        false,
    )
    .await;
}

/// The same for each fault point of a rollback from cut_over: rollback again ends with
/// every constraint back on the old table under its own name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_fixture_survives_every_rollback_fault() {
    walk_faults(
        &[
            "rollback.before",
            "mysql.foreign_keys.child_halfway",
            "mysql.rollback.after_swap_back",
            "rollback.inside",
            "rollback.after",
        ],
        true,
    )
    .await;
}

async fn walk_faults(points: &[&str], is_rollback: bool) {
    for &point in points {
        let db = TestDb::new(Kind::MySql).await;
        seed(&db).await;
        let before = furniture(&db, "nobody").await;
        // GET_LOCK names are server-wide: the two walks run at once under their own names.
        let name = if is_rollback {
            "fixture-fault-back"
        } else {
            "fixture-fault"
        };
        let path = db.plan_file("plan.yaml", &plan(name));
        let path = path.to_str().expect("utf-8 path");
        let writer = Writer::start(db.pool.clone(), "items", "mirror", ROWS, 47);
        let family = Family::start(db.pool.clone(), 53);
        writer.wait_for(10).await;
        let crashed = if is_rollback {
            ok(
                &db.turnout(&["run", path, "--until", "cut_over", "--yes"], None),
                "to cut_over",
            );
            writer.wait_for(10).await;
            db.turnout(&["rollback", path, "--yes"], Some(point))
        } else {
            db.turnout(&["run", path, "--yes"], Some(point))
        };
        assert!(
            !crashed.status.success() && stderr(&crashed).contains("fault injected"),
            "{point} was not reached:\n{}\n{}",
            stdout(&crashed),
            stderr(&crashed)
        );
        writer.wait_for(10).await;
        let again: &[&str] = if is_rollback {
            &["rollback", path, "--yes"]
        } else {
            &["resume", path, "--yes"]
        };
        let out = db.turnout(again, None);
        ok(&out, point);
        writer.wait_for(10).await;
        family.stop().await;
        let disagreements = writer.stop().await;
        assert!(disagreements.is_empty(), "{point}: {disagreements:?}");
        data_matches(&db).await;
        let want = if is_rollback { before } else { widened(before) };
        assert_eq!(furniture(&db, "nobody").await, want, "{point}");
        db.drop().await;
    }
}

/// The cutover's stall with three child tables: the longest time an application
/// statement on `items` or a child waited while `run` did the cutover. Printed (run
/// with --nocapture to read it) and bounded loosely, so a regression that copies a
/// child table (seconds) fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_fixture_cutover_stall_with_three_child_tables() {
    let db = TestDb::new(Kind::MySql).await;
    seed(&db).await;
    db.exec("CREATE TABLE lots (id INT PRIMARY KEY, item_id INT NOT NULL, CONSTRAINT lots_item FOREIGN KEY (item_id) REFERENCES items (id) ON DELETE CASCADE)").await;
    let lots: Vec<String> = (1..=5000)
        .map(|i| format!("({i}, {})", 1 + i % ROWS))
        .collect();
    db.exec(&format!("INSERT INTO lots VALUES {}", lots.join(", ")))
        .await;
    let path = db.plan_file("plan.yaml", &plan("fixture-stall"));
    let path = path.to_str().expect("utf-8 path");
    ok(
        &db.turnout(&["run", path, "--until", "verified", "--yes"], None),
        "to verified",
    );
    let probes = Probes::start(
        &db.pool,
        &[
            "UPDATE items SET qty = qty + 1 WHERE id = ?",
            "UPDATE notes SET body = 'probe' WHERE id = ?",
            "UPDATE lots SET item_id = item_id WHERE id = ?",
        ],
        300,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let quiet = probes.reset();
    let start = Instant::now();
    ok(
        &db.turnout(&["run", path, "--until", "cut_over", "--yes"], None),
        "cutover",
    );
    let took = start.elapsed();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (stall, _) = probes.stop().await;
    println!(
        "cutover with three child tables: longest application statement {:.1} ms during the cutover ({:.1} ms before it), whole `run --until cut_over` {:.0} ms",
        stall.as_secs_f64() * 1000.0,
        quiet.as_secs_f64() * 1000.0,
        took.as_secs_f64() * 1000.0
    );
    let children = db.one("SELECT CAST(COUNT(*) AS CHAR) FROM information_schema.REFERENTIAL_CONSTRAINTS WHERE CONSTRAINT_SCHEMA = DATABASE() AND REFERENCED_TABLE_NAME = 'items'").await;
    assert_eq!(children, "3");
    assert!(
        stall < Duration::from_millis(1500),
        "an application statement waited {stall:?}"
    );
    ok(&db.turnout(&["run", path, "--yes"], None), "cleanup");
    db.drop().await;
}

/// A child table of the fixture migrated both ways: `lots.tag` references `tags` with
/// ON DELETE CASCADE (and `lots_mirror` the same), so every tag the family writer
/// deletes removes rows from the live table, the shadow and the mirror alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_fixture_a_child_with_a_cascading_foreign_key_migrates_to_done_and_back() {
    for rollback in [false, true] {
        let db = TestDb::new(Kind::MySql).await;
        seed(&db).await;
        for t in ["lots", "lots_mirror"] {
            db.exec(&format!("CREATE TABLE {t} (id INT NOT NULL PRIMARY KEY, qty INT NOT NULL, tag INT NOT NULL DEFAULT 0, CONSTRAINT {t}_tag FOREIGN KEY (tag) REFERENCES tags (id) ON DELETE CASCADE)")).await;
            let rows: Vec<String> = (1..=ROWS)
                .map(|i| format!("({i}, {i}, {})", i % 7))
                .collect();
            db.exec(&format!("INSERT INTO {t} VALUES {}", rows.join(", ")))
                .await;
        }
        let before = furniture(&db, "nobody").await;
        let name = if rollback { "lots-back" } else { "lots" };
        let yaml = format!(
            "version: 1\nname: {name}\ntable: lots\nchanges:\n  - alter_column: {{name: qty, type: BIGINT}}\nbackfill:\n  batch_size: 100\ncutover:\n  retry_delay: 50ms\n"
        );
        let path = db.plan_file("plan.yaml", &yaml);
        let path = path.to_str().expect("utf-8 path");
        let writer = Writer::start(db.pool.clone(), "lots", "lots_mirror", ROWS, 59);
        let family = Family::start(db.pool.clone(), 61);
        writer.wait_for(10).await;
        ok(
            &db.turnout(&["run", path, "--until", "backfilled", "--yes"], None),
            "to backfilled",
        );
        ok(&db.turnout(&["verify", path], None), "verify");
        ok(
            &db.turnout(&["run", path, "--until", "cut_over", "--yes"], None),
            "to cut_over",
        );
        writer.wait_for(20).await;
        if rollback {
            ok(&db.turnout(&["rollback", path, "--yes"], None), "rollback");
        } else {
            ok(&db.turnout(&["run", path, "--yes"], None), "cleanup");
        }
        writer.wait_for(10).await;
        let (tag_deletes, _) = family.stop().await;
        assert!(writer.stop().await.is_empty());
        assert!(
            tag_deletes > 0,
            "no tag was deleted, so no cascade was tried"
        );
        let q = |t: &str| {
            format!(
                "SELECT CAST(id AS CHAR), CAST(qty AS CHAR), CAST(tag AS CHAR) FROM {t} ORDER BY id"
            )
        };
        let (live, mirror) = (db.rows(&q("lots")).await, db.rows(&q("lots_mirror")).await);
        assert_eq!(
            live.len(),
            mirror.len(),
            "lots: row counts differ from the mirror"
        );
        assert!(live == mirror, "lots differs from its mirror");
        let mut after = furniture(&db, "nobody").await;
        let mut want = before;
        if !rollback {
            for m in [&mut want, &mut after] {
                m.remove("create lots");
            }
            let qty = db.one("SELECT CAST(COLUMN_TYPE AS CHAR) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'lots' AND COLUMN_NAME = 'qty'").await;
            assert_eq!(qty, "bigint(20)");
        }
        assert_eq!(after, want, "rollback: {rollback}");
        let err = db
            .exec_err("INSERT INTO lots (id, qty, tag) VALUES (999999, 1, 99)")
            .await;
        assert!(err.contains("foreign key constraint fails"), "{err}");
        db.drop().await;
    }
}
