//! SQLite on a real application schema: a small rental-shop fixture of nine tables with
//! foreign keys both ways (CASCADE, SET NULL, self-references), the application's own
//! BEFORE/AFTER triggers (one stamping `last_update`, audit ones), views, CHECK
//! constraints, an enum as a CHECK, generated columns, partial and expression indexes.
//! Migrations run under the concurrent writer plus a second one that deletes parents (so
//! cascades fire) and inserts children; the furniture is compared from the catalog.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::faults::{FORWARD, ROLLBACK};
use crate::harness::{Kind, Pool, TestDb, Writer, ok, stderr, stdout};

const ITEMS: i64 = 400;
const OLD_STAMP: &str = "2000-01-01 00:00:00";

const FIXTURE: &str = "
CREATE TABLE categories (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,
  parent_id INTEGER REFERENCES categories (id) ON DELETE SET NULL);
CREATE TABLE stores (id INTEGER PRIMARY KEY, city TEXT NOT NULL, opened TEXT DEFAULT (date('now')));
CREATE TABLE items (id INT PRIMARY KEY, qty INTEGER NOT NULL, tag INTEGER, name TEXT,
  category_id INTEGER REFERENCES categories (id) ON DELETE SET NULL,
  store_id INTEGER REFERENCES stores (id) ON DELETE CASCADE,
  parent_id INT REFERENCES items (id) ON DELETE SET NULL ON UPDATE CASCADE,
  last_update TEXT NOT NULL DEFAULT '2000-01-01 00:00:00',
  UNIQUE (name, store_id));
CREATE INDEX items_category_idx ON items (category_id);
CREATE TABLE mirror (id INTEGER PRIMARY KEY, qty INTEGER NOT NULL, tag INTEGER);
CREATE TABLE rentals (id INTEGER PRIMARY KEY,
  item_id INT NOT NULL REFERENCES items (id) ON DELETE CASCADE ON UPDATE CASCADE,
  status TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'returned', 'lost')),
  days INTEGER NOT NULL DEFAULT 1 CHECK (days > 0),
  price_cents INTEGER GENERATED ALWAYS AS (days * 150) VIRTUAL);
CREATE INDEX rentals_open_idx ON rentals (item_id) WHERE status = 'open';
CREATE TABLE reviews (id INTEGER PRIMARY KEY, item_id INT REFERENCES items ON DELETE SET NULL, body TEXT);
CREATE INDEX reviews_body_idx ON reviews (lower(body));
CREATE TABLE staff (id INTEGER PRIMARY KEY, store_id INTEGER NOT NULL REFERENCES stores (id) ON DELETE CASCADE,
  manager_id INTEGER REFERENCES staff (id) ON DELETE SET NULL, email TEXT NOT NULL,
  login TEXT GENERATED ALWAYS AS (lower(email)) STORED);
CREATE TABLE payments (id INTEGER PRIMARY KEY, rental_id INTEGER REFERENCES rentals (id) ON DELETE CASCADE,
  amount_cents INTEGER NOT NULL CHECK (amount_cents >= 0));
CREATE TABLE item_audit (id INTEGER PRIMARY KEY, item_id INT, op TEXT NOT NULL);
CREATE TRIGGER items_qty_guard BEFORE INSERT ON items WHEN NEW.qty < 0
  BEGIN SELECT RAISE(ABORT, 'qty must not be negative'); END;
CREATE TRIGGER items_stamp AFTER UPDATE ON items WHEN NEW.last_update IS OLD.last_update
  BEGIN UPDATE items SET last_update = strftime('%Y-%m-%d %H:%M:%f', 'now') WHERE id = NEW.id; END;
CREATE TRIGGER items_audit_upd AFTER UPDATE ON items WHEN NEW.last_update IS OLD.last_update
  BEGIN INSERT INTO item_audit (item_id, op) VALUES (NEW.id, 'update'); END;
CREATE TRIGGER items_audit_del AFTER DELETE ON items
  BEGIN INSERT INTO item_audit (item_id, op) VALUES (OLD.id, 'delete'); END;
CREATE TRIGGER stores_audit AFTER DELETE ON stores
  BEGIN INSERT INTO item_audit (item_id, op) VALUES (NULL, 'store ' || OLD.id); END;
CREATE VIEW item_stock AS SELECT i.id, i.qty, i.tag, c.name AS category
  FROM items AS i LEFT JOIN categories AS c ON c.id = i.category_id;
CREATE VIEW open_rentals AS SELECT r.id, r.item_id, i.qty FROM rentals AS r JOIN items AS i ON i.id = r.item_id
  WHERE r.status = 'open';
";

fn sqlite(db: &TestDb) -> &sqlx::SqlitePool {
    match &db.pool {
        Pool::Sqlite(p) => p,
        _ => unreachable!("SQLite tests only"),
    }
}

/// Rows as text whatever each value's storage class (the harness reads text only).
async fn rows(db: &TestDb, sql: &str) -> Vec<Vec<Option<String>>> {
    use sqlx::Row;
    let fetched = sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_all(sqlite(db))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    fetched
        .iter()
        .map(|r| {
            (0..r.len())
                .map(|i| {
                    r.try_get::<Option<String>, _>(i)
                        .or_else(|_| {
                            r.try_get::<Option<i64>, _>(i)
                                .map(|v| v.map(|v| v.to_string()))
                        })
                        .or_else(|_| {
                            r.try_get::<Option<f64>, _>(i)
                                .map(|v| v.map(|v| v.to_string()))
                        })
                        .unwrap_or_else(|e| panic!("{sql}: {e}"))
                })
                .collect()
        })
        .collect()
}

async fn fixture(db: &TestDb) {
    let pool = sqlite(db);
    sqlx::raw_sql(sqlx::AssertSqlSafe(FIXTURE.to_string()))
        .execute(pool)
        .await
        .expect("fixture");
    let mut stmts = Vec::new();
    for c in 1..=8 {
        let parent = if c > 2 {
            (c / 2).to_string()
        } else {
            "NULL".into()
        };
        stmts.push(format!(
            "INSERT INTO categories VALUES ({c}, 'cat {c}', {parent})"
        ));
    }
    for s in 1..=6 {
        stmts.push(format!(
            "INSERT INTO stores (id, city) VALUES ({s}, 'city {s}')"
        ));
        stmts.push(format!(
            "INSERT INTO staff (id, store_id, manager_id, email) VALUES ({s}, {s}, NULL, 'Boss{s}@Shop')"
        ));
    }
    for i in 1..=ITEMS {
        let parent = if i > 10 {
            (i / 10).to_string()
        } else {
            "NULL".into()
        };
        let tag = if i % 4 == 0 {
            "NULL".into()
        } else {
            (i % 7).to_string()
        };
        stmts.push(format!(
            "INSERT INTO items (id, qty, tag, name, category_id, store_id, parent_id) VALUES ({i}, {}, {tag}, 'item {i}', {}, {}, {parent})",
            i * 3 % 100,
            1 + i % 8,
            1 + i % 6
        ));
        stmts.push(format!(
            "INSERT INTO mirror VALUES ({i}, {}, {tag})",
            i * 3 % 100
        ));
        if i % 3 == 0 {
            stmts.push(format!(
                "INSERT INTO rentals (item_id, days) VALUES ({i}, {})",
                1 + i % 9
            ));
            stmts.push(format!(
                "INSERT INTO payments (rental_id, amount_cents) VALUES (last_insert_rowid(), {})",
                i * 10
            ));
        }
        if i % 5 == 0 {
            stmts.push(format!(
                "INSERT INTO reviews (item_id, body) VALUES ({i}, 'Fine item {i}')"
            ));
        }
    }
    stmts.push("DELETE FROM item_audit".into());
    sqlx::raw_sql(sqlx::AssertSqlSafe(stmts.join(";\n")))
        .execute(pool)
        .await
        .expect("fixture rows");
}

/// Every object of the database as SQLite's catalog describes it, one line each: each
/// table's columns, foreign keys, indexes and options from the pragmas, each trigger's
/// and view's text, and each table's text except `skip`'s (its CREATE TABLE is written
/// by turnout, the rest is compared through the pragmas).
async fn catalog(db: &TestDb, skip: &str) -> Vec<String> {
    let q = |sql: String| async move { rows(db, &sql).await };
    let mut out = Vec::new();
    let objects = q("SELECT type, name, tbl_name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' AND name NOT LIKE 'turnout%' AND name NOT LIKE '\\_%' ESCAPE '\\' ORDER BY type, name".into()).await;
    for o in &objects {
        let (kind, name) = (
            o[0].clone().unwrap_or_default(),
            o[1].clone().unwrap_or_default(),
        );
        let on = o[2].clone().unwrap_or_default();
        if kind == "index" && on == skip {
            // SQLite cannot rename an index: a carried one is `x_new` on the new table,
            // and turnout writes its CREATE INDEX; what follows the table's name (columns,
            // expressions, order, collations, WHERE) is the same, quotes aside.
            let name = name.strip_suffix("_new").unwrap_or(&name);
            let text = o[3].clone().unwrap_or_default();
            let body = text.find('(').map_or("", |at| &text[at..]).replace('"', "");
            out.push(format!("{kind} {name} on {on} {body}"));
        } else if kind == "table" && name == skip {
            out.push(format!("{kind} {name} on {on}"));
        } else {
            // `ALTER TABLE … RENAME` writes the new name quoted into the renamed table's
            // and its indexes' text; the same name either way.
            let text = o[3]
                .clone()
                .unwrap_or_default()
                .replace("\"items\"", "items")
                .replace("\"gear\"", "gear");
            out.push(format!("{kind} {name}: {text}"));
        }
        if kind != "table" {
            continue;
        }
        for c in q(format!("SELECT name, type, \"notnull\", dflt_value, pk, hidden FROM pragma_table_xinfo('{name}') ORDER BY cid")).await {
            out.push(format!("  column {name}.{c:?}"));
        }
        for f in q(format!("SELECT \"table\", \"from\", \"to\", on_update, on_delete, \"match\" FROM pragma_foreign_key_list('{name}') ORDER BY id, seq")).await {
            out.push(format!("  foreign key {name} {f:?}"));
        }
        for i in q(format!("SELECT l.name, l.\"unique\", l.origin, l.partial, (SELECT group_concat(coalesce(x.name, '<expr>') || ' ' || x.\"desc\" || ' ' || x.coll, ', ') FROM pragma_index_xinfo(l.name) AS x WHERE x.key = 1) FROM pragma_index_list('{name}') AS l ORDER BY l.name")).await {
            // A UNIQUE constraint's index is named after its table by SQLite itself.
            let raw = i[0].clone().unwrap_or_default();
            let shown = raw.strip_suffix("_new").unwrap_or(&raw);
            out.push(format!("  index {name} {shown} {:?}", &i[1..]));
        }
        for t in q(format!(
            "SELECT strict, wr FROM pragma_table_list WHERE name = '{name}'"
        ))
        .await
        {
            out.push(format!("  options {name} {t:?}"));
        }
    }
    out
}

/// Deletes parents (cascading into the migrated table and its children) and inserts
/// children, keeping the mirror in step in the same transaction; measures its longest
/// transaction, which is the application's longest wait.
struct Parents {
    stop: Arc<AtomicBool>,
    longest_ms: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<u64>,
}

impl Parents {
    fn start(pool: sqlx::SqlitePool) -> Parents {
        let stop = Arc::new(AtomicBool::new(false));
        let longest_ms = Arc::new(AtomicU64::new(0));
        let (stop2, longest2) = (stop.clone(), longest_ms.clone());
        let task = tokio::spawn(async move {
            let mut n: u64 = 0;
            let mut store = 100;
            while !stop2.load(Ordering::Relaxed) {
                n += 1;
                let stmts: Vec<String> = match n % 6 {
                    // A store goes: its items cascade away (and their rentals and payments),
                    // the mirror follows them. The store is the newest one, which the last
                    // cycle moved an item into: deleting the seeded stores would empty the
                    // table within a second, before the backfill has anything to copy.
                    0 => vec![
                        format!(
                            "DELETE FROM mirror WHERE id IN (SELECT id FROM items WHERE store_id = {store})"
                        ),
                        format!("DELETE FROM stores WHERE id = {store}"),
                    ],
                    1 => {
                        store += 1;
                        vec![format!(
                            "INSERT INTO stores (id, city) VALUES ({store}, 'new {store}')"
                        )]
                    }
                    2 => vec![format!("DELETE FROM categories WHERE id = {}", 3 + n % 6)],
                    3 => vec![format!(
                        "INSERT INTO rentals (item_id, days) SELECT id, 2 FROM items ORDER BY id LIMIT 1 OFFSET {}",
                        n % 50
                    )],
                    4 => vec![format!(
                        "INSERT INTO reviews (item_id, body) SELECT id, 'ok' FROM items ORDER BY id DESC LIMIT 1 OFFSET {}",
                        n % 30
                    )],
                    _ => vec![format!(
                        "UPDATE items SET store_id = {store} WHERE id = (SELECT min(id) FROM items WHERE store_id IS NULL)"
                    )],
                };
                let started = Instant::now();
                let mut tx = match pool.begin().await {
                    Ok(tx) => tx,
                    Err(_) => continue,
                };
                let mut failed = false;
                for s in &stmts {
                    if sqlx::query(sqlx::AssertSqlSafe(s.clone()))
                        .execute(&mut *tx)
                        .await
                        .is_err()
                    {
                        failed = true;
                        break;
                    }
                }
                if !failed {
                    let _ = tx.commit().await;
                }
                let ms = started.elapsed().as_millis() as u64;
                longest2.fetch_max(ms, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            n
        });
        Parents {
            stop,
            longest_ms,
            task,
        }
    }

    async fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let n = self.task.await.expect("parents task");
        (n, self.longest_ms.load(Ordering::Relaxed))
    }
}

fn items_plan(name: &str) -> String {
    format!(
        "version: 1
name: {name}
table: items
changes:
  - alter_column: {{name: id, type: BIGINT}}
  - add_column: {{name: total, type: BIGINT, from: qty * 2}}
  - add_index: {{name: items_tag_idx, columns: [tag]}}
backfill:
  batch_size: 60
"
    )
}

async fn mirror_is_exact(db: &TestDb) {
    let live = rows(db, "SELECT id, qty, tag FROM items ORDER BY id").await;
    let mirror = rows(db, "SELECT id, qty, tag FROM mirror ORDER BY id").await;
    assert_eq!(
        live.len(),
        mirror.len(),
        "row counts differ from the mirror"
    );
    assert!(live == mirror, "items differ from the writer's mirror");
}

/// Foreign keys hold everywhere, the views read `items`, and the triggers fired exactly
/// for the application's writes (never for turnout's copying).
async fn furniture_works(db: &TestDb) {
    assert_eq!(
        rows(db, "PRAGMA foreign_key_check").await,
        Vec::<Vec<Option<String>>>::new()
    );
    assert_eq!(
        rows(db, "SELECT * FROM item_stock ORDER BY id").await,
        rows(db, "SELECT i.id, i.qty, i.tag, c.name FROM items AS i LEFT JOIN categories AS c ON c.id = i.category_id ORDER BY i.id").await
    );
    assert_eq!(
        rows(db, "SELECT * FROM open_rentals ORDER BY id").await,
        rows(db, "SELECT r.id, r.item_id, i.qty FROM rentals AS r JOIN items AS i ON i.id = r.item_id WHERE r.status = 'open' ORDER BY r.id").await
    );
    // A row is stamped exactly when the application updated it (the audit trigger saw it).
    let wrong = db
        .rows(&format!(
            "SELECT id, last_update FROM items WHERE (last_update <> '{OLD_STAMP}') <> EXISTS (SELECT 1 FROM item_audit AS a WHERE a.item_id = items.id AND a.op = 'update')"
        ))
        .await;
    assert!(
        wrong.is_empty(),
        "rows stamped by something other than an application update: {wrong:?}"
    );
    let untouched: i64 = rows(
        db,
        &format!("SELECT count(*) FROM items WHERE last_update = '{OLD_STAMP}'"),
    )
    .await[0][0]
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(untouched > 0, "every row was restamped");
    // The triggers still fire on `items`, whichever table it is.
    let id = 5_000_000_000i64 + rand::random::<u32>() as i64;
    db.exec(&format!("INSERT INTO items (id, qty) VALUES ({id}, 1)"))
        .await;
    db.exec(&format!("UPDATE items SET qty = 2 WHERE id = {id}"))
        .await;
    let row = rows(db, &format!("SELECT last_update <> '{OLD_STAMP}', (SELECT count(*) FROM item_audit WHERE item_id = {id}) FROM items WHERE id = {id}")).await;
    assert_eq!(row, vec![vec![Some("1".into()), Some("1".into())]]);
    let refused = sqlx::query("INSERT INTO items (id, qty) VALUES (-1, -5)")
        .execute(sqlite(db))
        .await;
    assert!(refused.is_err_and(|e| e.to_string().contains("qty must not be negative")));
    db.exec(&format!("DELETE FROM items WHERE id = {id}")).await;
}

fn strip_items_changes(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| {
            !l.contains("column items.[Some(\"id\")")
                && !l.contains("\"total\"")
                && !l.contains("items_tag_idx")
        })
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_int_to_bigint_on_a_referenced_key_under_writers_with_a_kill() {
    let db = TestDb::new(Kind::Sqlite).await;
    fixture(&db).await;
    let before = catalog(&db, "items").await;
    let path = db.plan_file("plan.yaml", &items_plan("items-bigint"));
    let path = path.to_str().expect("utf-8");
    let check = db.turnout(&["check", path], None);
    ok(&check, "check");
    let writer = Writer::start(db.pool.clone(), "items", "mirror", ITEMS, 23);
    let parents = Parents::start(sqlite(&db).clone());
    writer.wait_for(10).await;
    let out = db.turnout(
        &["run", path, "--until", "backfilled", "--yes"],
        Some("backfill.batch.after@3"),
    );
    assert!(
        !out.status.success() && stderr(&out).contains("fault injected"),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    writer.wait_for(10).await;
    ok(
        &db.turnout(&["resume", path, "--until", "backfilled", "--yes"], None),
        "resume",
    );
    writer.wait_for(10).await;
    ok(&db.turnout(&["verify", path], None), "verify");
    ok(
        &db.turnout(&["run", path, "--until", "cut_over", "--yes"], None),
        "cutover",
    );
    writer.wait_for(20).await;
    // Ids above 2^31 go into the widened key, and a child can reference them.
    db.exec("INSERT INTO items (id, qty, tag) VALUES (3000000000, 7, 1); INSERT INTO mirror VALUES (3000000000, 7, 1)").await;
    db.exec("INSERT INTO rentals (item_id) VALUES (3000000000)")
        .await;
    ok(&db.turnout(&["run", path, "--yes"], None), "cleanup");
    writer.wait_for(10).await;
    assert!(writer.stop().await.is_empty());
    let (parent_writes, longest) = parents.stop().await;
    println!("parent writer: {parent_writes} transactions, longest {longest} ms");
    mirror_is_exact(&db).await;
    furniture_works(&db).await;
    let after = catalog(&db, "items").await;
    assert_eq!(strip_items_changes(&after), strip_items_changes(&before));
    assert!(
        after
            .iter()
            .any(|l| l.contains("column items.[Some(\"id\"), Some(\"BIGINT\")")),
        "{after:#?}"
    );
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_rollback_from_cut_over_restores_every_object() {
    let db = TestDb::new(Kind::Sqlite).await;
    fixture(&db).await;
    let before = catalog(&db, "").await;
    let path = db.plan_file("plan.yaml", &items_plan("items-back"));
    let path = path.to_str().expect("utf-8");
    let writer = Writer::start(db.pool.clone(), "items", "mirror", ITEMS, 29);
    let parents = Parents::start(sqlite(&db).clone());
    writer.wait_for(10).await;
    ok(
        &db.turnout(&["run", path, "--until", "cut_over", "--yes"], None),
        "cutover",
    );
    writer.wait_for(20).await;
    ok(&db.turnout(&["rollback", path, "--yes"], None), "rollback");
    writer.wait_for(10).await;
    assert!(writer.stop().await.is_empty());
    parents.stop().await;
    mirror_is_exact(&db).await;
    furniture_works(&db).await;
    assert_eq!(catalog(&db, "").await, before);
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_parents_of_the_fixture_migrate_with_their_children() {
    for (table, change) in [
        (
            "categories",
            "add_column: {name: slug, type: TEXT, from: lower(name)}",
        ),
        ("stores", "alter_column: {name: city, type: 'varchar(200)'}"),
        // CHECKs, a generated column and a partial index; an expression index.
        (
            "rentals",
            "add_column: {name: note, type: TEXT, from: status}",
        ),
        (
            "reviews",
            "alter_column: {name: body, type: 'varchar(500)'}",
        ),
    ] {
        let db = TestDb::new(Kind::Sqlite).await;
        fixture(&db).await;
        let before = catalog(&db, table).await;
        let plan = format!(
            "version: 1\nname: {table}-m\ntable: {table}\nchanges:\n  - {change}\nbackfill:\n  batch_size: 2\n"
        );
        let path = db.plan_file("plan.yaml", &plan);
        let path = path.to_str().expect("utf-8");
        let writer = Writer::start(db.pool.clone(), "items", "mirror", ITEMS, 31);
        let parents = Parents::start(sqlite(&db).clone());
        writer.wait_for(10).await;
        ok(&db.turnout(&["run", path, "--yes"], None), table);
        writer.wait_for(10).await;
        assert!(writer.stop().await.is_empty());
        parents.stop().await;
        mirror_is_exact(&db).await;
        furniture_works(&db).await;
        let after = catalog(&db, table).await;
        let unchanged = |v: &[String]| -> Vec<String> {
            v.iter()
                .filter(|l| !l.contains(&format!("column {table}.")))
                .cloned()
                .collect()
        };
        assert_eq!(unchanged(&after), unchanged(&before), "{table}");
        db.drop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_what_cannot_be_carried_is_refused_by_name() {
    let db = TestDb::new(Kind::Sqlite).await;
    fixture(&db).await;
    let before = catalog(&db, "").await;
    let cases: [(&str, &str, &[&str]); 6] = [
        (
            "rentals",
            "drop_column: {name: days, reverse: '1'}",
            &[
                "CHECK (days > 0) of \"rentals\" uses column \"days\"",
                "generated column \"price_cents\" of \"rentals\" uses column \"days\"",
            ],
        ),
        (
            "rentals",
            "rename_column: {from: status, to: state}",
            &[
                "CHECK (status IN ('open', 'returned', 'lost')) of \"rentals\" uses column \"status\"",
                "index \"rentals_open_idx\" on \"rentals\" uses column \"status\"",
            ],
        ),
        (
            "reviews",
            "rename_column: {from: body, to: text}",
            &["index \"reviews_body_idx\" on \"reviews\" uses column \"body\""],
        ),
        (
            "items",
            "drop_column: {name: qty, reverse: '0'}",
            &["view \"item_stock\"", "trigger \"items_qty_guard\""],
        ),
        (
            "categories",
            "alter_column: {name: id, type: BIGINT}",
            &["INTEGER PRIMARY KEY is the rowid"],
        ),
        (
            "items",
            "alter_column: {name: id, type: TEXT}",
            &["affinity from INTEGER to TEXT"],
        ),
    ];
    for (table, change, expected) in cases {
        let plan = format!("version: 1\nname: refused\ntable: {table}\nchanges:\n  - {change}\n");
        let path = db.plan_file("plan.yaml", &plan);
        let out = db.turnout(&["check", path.to_str().expect("utf-8")], None);
        let text = format!("{}{}", stdout(&out), stderr(&out));
        assert!(!out.status.success(), "{table}: {change} was accepted");
        for e in expected {
            assert!(text.contains(e), "{table}: {change}: {e:?} not in\n{text}");
        }
    }
    assert_eq!(catalog(&db, "").await, before, "check changed the database");
    db.drop().await;
}

/// A child's foreign key must still find a unique key in the new parent: the rehearsal
/// of the cutover compiles each child's check against the new shape (without reading the
/// child's rows, which it would do under the write lock) and the refusal names the child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_plan_dropping_the_key_a_child_references_is_refused_naming_the_child() {
    let db = TestDb::new(Kind::Sqlite).await;
    db.exec(
        "CREATE TABLE shops (id INTEGER PRIMARY KEY, code TEXT NOT NULL);
         CREATE UNIQUE INDEX shops_code ON shops (code);
         CREATE TABLE tills (id INTEGER PRIMARY KEY, shop_code TEXT REFERENCES shops (code));
         INSERT INTO shops VALUES (1, 'north');
         INSERT INTO tills VALUES (1, 'north')",
    )
    .await;
    let schema = "SELECT name, sql FROM sqlite_master ORDER BY name";
    let before = rows(&db, schema).await;
    let plan =
        "version: 1\nname: untie\ntable: shops\nchanges:\n  - drop_index: {name: shops_code}\n";
    let path = db.plan_file("plan.yaml", plan);
    let out = db.turnout(&["check", path.to_str().expect("utf-8")], None);
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(!out.status.success(), "accepted:\n{text}");
    assert!(
        text.contains("the foreign keys of \"tills\" would not resolve against the new \"shops\""),
        "{text}"
    );
    assert_eq!(
        rows(&db, schema).await,
        before,
        "check changed the database"
    );
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_every_fault_point_with_foreign_keys_views_and_triggers() {
    let mut walked = 0;
    for point in FORWARD {
        let db = TestDb::new(Kind::Sqlite).await;
        fixture(&db).await;
        let path = db.plan_file("plan.yaml", &items_plan("items-faults"));
        let path = path.to_str().expect("utf-8");
        let writer = Writer::start(db.pool.clone(), "items", "mirror", ITEMS, 37);
        writer.wait_for(5).await;
        let out = db.turnout(&["run", path, "--yes"], Some(point));
        assert!(
            !out.status.success() && stderr(&out).contains("fault injected"),
            "{point}: {}",
            stderr(&out)
        );
        writer.wait_for(5).await;
        ok(&db.turnout(&["resume", path, "--yes"], None), point);
        assert!(writer.stop().await.is_empty());
        mirror_is_exact(&db).await;
        furniture_works(&db).await;
        walked += 1;
        db.drop().await;
    }
    for point in ROLLBACK {
        for until in ["backfilled", "cut_over"] {
            let db = TestDb::new(Kind::Sqlite).await;
            fixture(&db).await;
            let before = catalog(&db, "").await;
            let path = db.plan_file("plan.yaml", &items_plan("items-faults-rb"));
            let path = path.to_str().expect("utf-8");
            let writer = Writer::start(db.pool.clone(), "items", "mirror", ITEMS, 41);
            ok(
                &db.turnout(&["run", path, "--until", until, "--yes"], None),
                until,
            );
            writer.wait_for(5).await;
            let out = db.turnout(&["rollback", path, "--yes"], Some(point));
            assert!(
                !out.status.success() && stderr(&out).contains("fault injected"),
                "{point}: {}",
                stderr(&out)
            );
            ok(&db.turnout(&["rollback", path, "--yes"], None), point);
            assert!(writer.stop().await.is_empty());
            mirror_is_exact(&db).await;
            furniture_works(&db).await;
            assert_eq!(catalog(&db, "").await, before, "{point} from {until}");
            walked += 1;
            db.drop().await;
        }
    }
    assert_eq!(walked, FORWARD.len() + 2 * ROLLBACK.len());
}

/// A table carrying what only its text declares: CHECKs (column and table, named or
/// not), a collation, AUTOINCREMENT, a deferrable foreign key, generated columns
/// (VIRTUAL and STORED, one indexed), and partial, expression, descending and collated
/// indexes.
const GEAR: &str = "
CREATE TABLE gear_owners (id INTEGER PRIMARY KEY);
CREATE TABLE gear (id INTEGER PRIMARY KEY AUTOINCREMENT,
  qty INTEGER NOT NULL CONSTRAINT gear_qty_range CHECK (qty BETWEEN 0 AND 999),
  tag INTEGER CHECK (tag IS NULL OR tag < 10),
  code TEXT COLLATE NOCASE DEFAULT 'a,b',
  owner_id INTEGER REFERENCES gear_owners (id) ON DELETE SET NULL DEFERRABLE INITIALLY DEFERRED,
  double_qty INTEGER GENERATED ALWAYS AS (qty * 2) VIRTUAL,
  label TEXT AS ('g' || id) STORED,
  CONSTRAINT gear_tag_qty CHECK (tag IS NULL OR qty >= tag - 1000),
  CHECK (id > 0));
CREATE INDEX gear_tagged_idx ON gear (qty) WHERE tag IS NOT NULL;
CREATE INDEX gear_lower_code_idx ON gear (lower(code));
CREATE INDEX gear_qty_desc_idx ON gear (qty DESC, tag);
CREATE INDEX gear_code_rtrim_idx ON gear (code COLLATE RTRIM);
CREATE INDEX gear_label_idx ON gear (label);
CREATE TABLE gear_mirror (id INTEGER PRIMARY KEY, qty INTEGER NOT NULL, tag INTEGER);
";

/// An id far above the writer's, used once and deleted: AUTOINCREMENT must never hand
/// it out again, though no copied row tells the new table about it.
const SPENT_ID: i64 = 9_000_000;

async fn gear(db: &TestDb) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(GEAR.to_string()))
        .execute(sqlite(db))
        .await
        .expect("gear");
    let mut stmts = Vec::new();
    for i in 1..=ITEMS {
        let tag = if i % 4 == 0 {
            "NULL".into()
        } else {
            (i % 7).to_string()
        };
        let qty = i * 3 % 100;
        stmts.push(format!(
            "INSERT INTO gear (id, qty, tag, code) VALUES ({i}, {qty}, {tag}, 'Code {i}  ')"
        ));
        stmts.push(format!(
            "INSERT INTO gear_mirror VALUES ({i}, {qty}, {tag})"
        ));
    }
    stmts.push(format!(
        "INSERT INTO gear (id, qty) VALUES ({SPENT_ID}, 1); DELETE FROM gear WHERE id = {SPENT_ID}"
    ));
    sqlx::raw_sql(sqlx::AssertSqlSafe(stmts.join(";\n")))
        .execute(sqlite(db))
        .await
        .expect("gear rows");
}

/// The `CHECK (…)` clauses of a CREATE TABLE text, as written.
fn checks_of(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("CHECK (") {
        let mut depth = 0;
        let mut end = rest.len();
        for (i, c) in rest[at..].char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        end = at + i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        out.push(rest[at..end].to_string());
        rest = &rest[end..];
    }
    out
}

async fn table_text(db: &TestDb, table: &str) -> String {
    rows(
        db,
        &format!("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = '{table}'"),
    )
    .await[0][0]
        .clone()
        .unwrap_or_default()
}

/// Whatever table `gear` is now: its CHECKs refuse bad writes, its generated columns
/// hold their expressions' values, its collation compares as declared, its foreign key
/// is checked at commit, and AUTOINCREMENT hands out an id above every id ever used.
async fn gear_works(db: &TestDb) {
    let pool = sqlite(db);
    let mut tx = pool.begin().await.expect("begin");
    for stmt in [
        "INSERT INTO gear (id, qty, owner_id) VALUES (8000000, 1, 77)",
        "INSERT INTO gear_owners VALUES (77)",
    ] {
        sqlx::query(stmt)
            .execute(&mut *tx)
            .await
            .expect("the owner may come later in the transaction");
    }
    tx.commit().await.expect("the deferred key holds at commit");
    db.exec("DELETE FROM gear WHERE id = 8000000;\nDELETE FROM gear_owners")
        .await;
    let mut tx = pool.begin().await.expect("begin");
    sqlx::query("INSERT INTO gear (id, qty, owner_id) VALUES (8000001, 1, 78)")
        .execute(&mut *tx)
        .await
        .expect("deferred");
    let refused = tx.commit().await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("FOREIGN KEY")),
        "{refused:?}"
    );
    for (bad, constraint) in [
        ("INSERT INTO gear (qty) VALUES (5000)", "gear_qty_range"),
        (
            "INSERT INTO gear (qty, tag) VALUES (1, 50)",
            "tag IS NULL OR tag < 10",
        ),
        (
            "UPDATE gear SET id = -id WHERE id = (SELECT min(id) FROM gear)",
            "id > 0",
        ),
    ] {
        let refused = sqlx::query(sqlx::AssertSqlSafe(bad.to_string()))
            .execute(pool)
            .await;
        assert!(
            refused
                .as_ref()
                .is_err_and(|e| e.to_string().contains(constraint)),
            "{bad}: {refused:?}"
        );
    }
    assert_eq!(
        rows(
            db,
            "SELECT count(*) FROM gear WHERE double_qty IS NOT qty * 2 OR label IS NOT 'g' || id"
        )
        .await,
        vec![vec![Some("0".into())]]
    );
    let nocase = rows(db, "SELECT count(*) FROM gear WHERE code = 'CODE 1  '").await;
    let id1 = rows(db, "SELECT count(*) FROM gear WHERE id = 1").await;
    assert_eq!(nocase, id1, "code compares without case");
    sqlx::query("INSERT INTO gear (qty) VALUES (3)")
        .execute(pool)
        .await
        .expect("insert without an id");
    let fresh = rows(db, "SELECT max(id) FROM gear").await[0][0]
        .as_deref()
        .and_then(|v| v.parse::<i64>().ok())
        .unwrap_or_default();
    assert!(fresh > SPENT_ID, "AUTOINCREMENT reused an id: {fresh}");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM gear WHERE id = {fresh}"
    )))
    .execute(pool)
    .await
    .expect("delete");
}

async fn gear_is_exact(db: &TestDb) {
    let live = rows(db, "SELECT id, qty, tag FROM gear ORDER BY id").await;
    let mirror = rows(db, "SELECT id, qty, tag FROM gear_mirror ORDER BY id").await;
    assert_eq!(
        live.len(),
        mirror.len(),
        "row counts differ from the mirror"
    );
    assert!(live == mirror, "gear differs from the writer's mirror");
}

fn gear_plan(name: &str) -> String {
    format!(
        "version: 1
name: {name}
table: gear
changes:
  - add_column: {{name: total, type: BIGINT, from: qty * 2}}
  - alter_column: {{name: code, type: 'varchar(40)'}}
  - add_index: {{name: gear_total_idx, columns: [total]}}
backfill:
  batch_size: 50
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_checks_collations_autoincrement_deferrable_keys_generated_columns_and_odd_indexes_are_carried()
 {
    for until in ["done", "cut_over"] {
        let db = TestDb::new(Kind::Sqlite).await;
        gear(&db).await;
        let before = catalog(&db, "gear").await;
        let whole = catalog(&db, "").await;
        let text = table_text(&db, "gear").await;
        let path = db.plan_file("plan.yaml", &gear_plan(&format!("gear-{until}")));
        let path = path.to_str().expect("utf-8");
        ok(&db.turnout(&["check", path], None), "check");
        let writer = Writer::start(db.pool.clone(), "gear", "gear_mirror", ITEMS, 43);
        writer.wait_for(10).await;
        let args: &[&str] = if until == "done" {
            &["run", path, "--yes"]
        } else {
            &["run", path, "--until", "cut_over", "--yes"]
        };
        ok(&db.turnout(args, None), until);
        writer.wait_for(20).await;
        if until == "cut_over" {
            gear_works(&db).await;
            ok(&db.turnout(&["rollback", path, "--yes"], None), "rollback");
            writer.wait_for(10).await;
        }
        println!(
            "gear to {until}: {} writes, longest {:?}",
            writer.writes(),
            writer.longest()
        );
        assert!(writer.stop().await.is_empty());
        gear_is_exact(&db).await;
        gear_works(&db).await;
        if until == "done" {
            let after = catalog(&db, "gear").await;
            let unchanged = |v: &[String]| -> Vec<String> {
                v.iter()
                    .filter(|l| {
                        !l.contains("\"total\"")
                            && !l.contains("gear_total_idx")
                            && !l.contains("column gear.[Some(\"code\")")
                    })
                    .cloned()
                    .collect()
            };
            assert_eq!(unchanged(&after), unchanged(&before));
            assert!(
                after
                    .iter()
                    .any(|l| l.contains("column gear.[Some(\"code\"), Some(\"varchar(40)\")")),
                "{after:#?}"
            );
            let new_text = table_text(&db, "gear").await;
            assert_eq!(checks_of(&new_text), checks_of(&text), "{new_text}");
            assert_eq!(checks_of(&text).len(), 4);
            for carried in [
                "COLLATE NOCASE",
                "GENERATED ALWAYS AS (qty * 2) VIRTUAL",
                "AS ('g' || id) STORED",
                "AUTOINCREMENT",
                "DEFERRABLE INITIALLY DEFERRED",
            ] {
                assert!(new_text.contains(carried), "{carried}: {new_text}");
            }
            // A second migration reads the text turnout wrote (the key's AUTOINCREMENT in
            // the PRIMARY KEY constraint, the indexes named `x_new`) and carries it all again.
            let again = db.plan_file(
                "again.yaml",
                "version: 1\nname: gear-again\ntable: gear\nchanges:\n  - drop_index: {name: gear_total_idx}\n",
            );
            ok(
                &db.turnout(&["run", again.to_str().expect("utf-8"), "--yes"], None),
                "again",
            );
            gear_works(&db).await;
            let third = table_text(&db, "gear").await;
            assert_eq!(checks_of(&third), checks_of(&text), "{third}");
            assert!(
                third.contains("AUTOINCREMENT")
                    && third.contains("DEFERRABLE INITIALLY DEFERRED")
                    && third.contains("COLLATE NOCASE"),
                "{third}"
            );
            assert_eq!(unchanged(&catalog(&db, "gear").await), unchanged(&before));
        } else {
            assert_eq!(
                catalog(&db, "").await,
                whole,
                "rollback changed the catalog"
            );
        }
        db.drop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_row_the_carried_check_refuses_stops_the_backfill_naming_it() {
    let db = TestDb::new(Kind::Sqlite).await;
    db.exec(
        "CREATE TABLE prices (id INTEGER PRIMARY KEY, price REAL NOT NULL CONSTRAINT prices_positive CHECK (price > 0));\n\
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500) INSERT INTO prices SELECT i, 1 + i % 10 FROM n;\n\
         UPDATE prices SET price = 0.4 WHERE id = 321",
    )
    .await;
    let plan = db.plan_file(
        "plan.yaml",
        "version: 1\nname: prices-int\ntable: prices\nchanges:\n  - alter_column: {name: price, type: INTEGER}\nbackfill:\n  batch_size: 100\n",
    );
    let plan = plan.to_str().expect("utf-8 path");
    ok(&db.turnout(&["check", plan], None), "check");
    let out = db.turnout(&["run", plan, "--yes"], None);
    assert!(!out.status.success(), "{}", stdout(&out));
    let said = stderr(&out);
    assert!(
        said.contains("[321]") && said.contains("prices_positive"),
        "{said}"
    );
    // The batch before it was copied; the one holding the row was not.
    assert_eq!(
        rows(&db, "SELECT count(*), max(id) FROM _prices_new").await,
        vec![vec![Some("300".into()), Some("300".into())]]
    );
    // Mended as the message says (321 was 2, now 4: the sum is 2750 + 2), it resumes
    // from its checkpoint to done, the CHECK on the new table.
    db.exec("UPDATE prices SET price = 4 WHERE id = 321").await;
    ok(&db.turnout(&["resume", plan, "--yes"], None), "resume");
    assert_eq!(
        rows(
            &db,
            "SELECT count(*), sum(price), typeof(max(price)) FROM prices"
        )
        .await,
        vec![vec![
            Some("500".into()),
            Some("2752".into()),
            Some("integer".into())
        ]]
    );
    let refused = db.exec_err("INSERT INTO prices VALUES (501, 0)").await;
    assert!(refused.contains("prices_positive"), "{refused}");
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_check_generated_column_or_index_text_naming_a_gone_column_is_refused_by_name() {
    let db = TestDb::new(Kind::Sqlite).await;
    gear(&db).await;
    let before = catalog(&db, "").await;
    let data = rows(&db, "SELECT * FROM gear ORDER BY id").await;
    let cases: [(&str, &[&str]); 3] = [
        (
            "drop_column: {name: qty, reverse: '0'}",
            &[
                "CHECK constraint \"gear_qty_range\" of \"gear\" uses column \"qty\"",
                "CHECK constraint \"gear_tag_qty\" of \"gear\" uses column \"qty\"",
                "generated column \"double_qty\" of \"gear\" uses column \"qty\"",
                "index \"gear_qty_desc_idx\" on \"gear\" uses column \"qty\"",
            ],
        ),
        (
            "rename_column: {from: tag, to: kind}",
            &[
                "CHECK (tag IS NULL OR tag < 10) of \"gear\" uses column \"tag\"",
                "index \"gear_tagged_idx\" on \"gear\" uses column \"tag\"",
            ],
        ),
        (
            "rename_column: {from: code, to: name}",
            &[
                "index \"gear_lower_code_idx\" on \"gear\" uses column \"code\"",
                "index \"gear_code_rtrim_idx\" on \"gear\" uses column \"code\"",
            ],
        ),
    ];
    for (change, expected) in cases {
        let plan = format!("version: 1\nname: gear-refused\ntable: gear\nchanges:\n  - {change}\n");
        let path = db.plan_file("plan.yaml", &plan);
        let path = path.to_str().expect("utf-8");
        for cmd in [vec!["check", path], vec!["run", path, "--yes"]] {
            let out = db.turnout(&cmd, None);
            let text = stderr(&out);
            assert_eq!(out.status.code(), Some(2), "{change}: {cmd:?}\n{text}");
            for e in expected {
                assert!(text.contains(e), "{change}: {e:?} not in\n{text}");
            }
        }
    }
    assert_eq!(
        catalog(&db, "").await,
        before,
        "a refused plan changed the catalog"
    );
    assert_eq!(rows(&db, "SELECT * FROM gear ORDER BY id").await, data);
    db.drop().await;
}

/// Killed inside the swap (before the sequence is carried, and after) and inside the
/// rollback, then resumed: the table ends whole, its CHECKs, deferral, generated columns
/// and AUTOINCREMENT intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_gear_killed_inside_the_swap_and_the_rollback_resumes_whole() {
    // The cutover's statements: three forward triggers dropped, two renames, the
    // sequence carried (two), the reverse triggers; the rollback's: six triggers
    // dropped, two renames, the sequence carried, the shadow dropped.
    for point in ["cutover.between@5", "cutover.between@6", "cutover.inside"] {
        let db = TestDb::new(Kind::Sqlite).await;
        gear(&db).await;
        let path = db.plan_file("plan.yaml", &gear_plan("gear-kill"));
        let path = path.to_str().expect("utf-8");
        let writer = Writer::start(db.pool.clone(), "gear", "gear_mirror", ITEMS, 47);
        writer.wait_for(5).await;
        let out = db.turnout(&["run", path, "--yes"], Some(point));
        assert!(
            !out.status.success() && stderr(&out).contains("fault injected"),
            "{point}: {}",
            stderr(&out)
        );
        writer.wait_for(5).await;
        ok(&db.turnout(&["resume", path, "--yes"], None), point);
        assert!(writer.stop().await.is_empty());
        gear_is_exact(&db).await;
        gear_works(&db).await;
        db.drop().await;
    }
    for point in [
        "rollback.between@8",
        "rollback.between@9",
        "rollback.inside",
    ] {
        let db = TestDb::new(Kind::Sqlite).await;
        gear(&db).await;
        let before = catalog(&db, "").await;
        let path = db.plan_file("plan.yaml", &gear_plan("gear-kill-back"));
        let path = path.to_str().expect("utf-8");
        let writer = Writer::start(db.pool.clone(), "gear", "gear_mirror", ITEMS, 53);
        ok(
            &db.turnout(&["run", path, "--until", "cut_over", "--yes"], None),
            "cutover",
        );
        writer.wait_for(5).await;
        let out = db.turnout(&["rollback", path, "--yes"], Some(point));
        assert!(
            !out.status.success() && stderr(&out).contains("fault injected"),
            "{point}: {}",
            stderr(&out)
        );
        ok(&db.turnout(&["rollback", path, "--yes"], None), point);
        assert!(writer.stop().await.is_empty());
        gear_is_exact(&db).await;
        gear_works(&db).await;
        assert_eq!(catalog(&db, "").await, before, "{point}");
        db.drop().await;
    }
}
