//! The table's furniture on SQLite — foreign keys both ways, the application's triggers,
//! views — read from the catalog, judged by preflight, and moved at cutover and rollback.
//!
//! Why this is correct under concurrent writes (what the application sees):
//!
//! - **Foreign keys from this table.** The shadow repeats them by the parent's name, so
//!   its rows are checked against the same parents as the live table's, and a parent's
//!   `ON DELETE CASCADE`/`SET NULL` reaches both tables in the application's own
//!   statement (the live table's rows also through the forward delete/update trigger,
//!   which agrees). A self-reference names `<table>`: during dual-write that is the live
//!   table (whose rows are the same), after the swap the new table itself. The old table
//!   keeps its clauses as written, so after cutover it too references `<table>`, the new
//!   table, which holds the same keys.
//! - **Foreign keys to this table.** A child's `REFERENCES <table>` is resolved by name
//!   at every statement. Cutover renames with `PRAGMA foreign_keys = OFF` (per
//!   connection, set outside the transaction) and `legacy_alter_table = ON`: with either
//!   on, SQLite would rewrite the children to follow the renamed original. So children
//!   reference the live table before the swap and the new one from the commit on, and
//!   re-pointing costs nothing (no child is read or rewritten; the swap stays a handful
//!   of catalog writes whatever the number of children). Their cascades fire on whichever
//!   table is `<table>`, and the triggers carry the effect to the other one.
//! - **The application's triggers.** They stay on the live table until the swap, so
//!   turnout's copying (which writes only the shadow) never fires them, and an
//!   application write fires them and then the forward trigger copies the result, stamped
//!   `last_update` and all. Inside the cutover transaction they are dropped and re-created
//!   from their own text after the renames, which attaches them to the new `<table>` with
//!   the same names, timing, events and relative order; the old table has none, so the
//!   reverse triggers' writes are never restamped. Rollback does the reverse.
//! - **Views** name `<table>` and are resolved at every statement: they read the live
//!   table until the commit of the swap and the new one after (the other way at rollback).
//! - **What only the table's text declares** (CHECKs, collations, generated columns,
//!   deferrable keys, AUTOINCREMENT; partial and expression indexes) is on the shadow
//!   from prepare, so every write to it, the triggers' and the backfill's included, is
//!   checked as the live table checks it. SQLite keeps AUTOINCREMENT's high-water mark
//!   per table name in `sqlite_sequence`: the swap (and the swap back) raise the mark of
//!   the table taking the name to the other's, in the same transaction.
//!
//! Every moment in between is inside one `BEGIN IMMEDIATE` transaction: the application
//! waits (busy timeout) and then sees the whole swap or none of it.

use sqlx::{Row, SqliteConnection};

use super::errors::db_message;
use super::sql::cutover::swap;
use super::sql::furniture::{ForeignKey, Furniture, carried_as, mentions, words};
use super::sql::keys::judge;
use super::sql::shadow::create_shadow;
use super::sql::table_text::{index_body, read_table};
use super::sql::{names, quote};
use super::{Sqlite, sql};
use crate::error::{Error, Result};
use crate::schema::Migration;

fn ctx(e: sqlx::Error) -> Error {
    Error::db("reading the catalog", e)
}

/// The table's foreign keys, in the order SQLite lists them.
async fn foreign_keys(conn: &mut SqliteConnection, table: &str) -> Result<Vec<ForeignKey>> {
    let rows = sqlx::query(
        "SELECT id, \"table\", \"from\", \"to\", on_update, on_delete FROM pragma_foreign_key_list(?1) ORDER BY id DESC, seq",
    )
    .bind(table)
    .fetch_all(&mut *conn)
    .await
    .map_err(ctx)?;
    // SQLite numbers them from the last declared; read backwards, the shadow lists them
    // in the original order.
    let mut out: Vec<(i64, ForeignKey)> = Vec::new();
    for r in rows {
        let id: i64 = r.get(0);
        let to: Option<String> = r.get(3);
        if out.last().is_none_or(|(last, _)| *last != id) {
            out.push((
                id,
                ForeignKey {
                    columns: Vec::new(),
                    parent: r.get(1),
                    parent_columns: Vec::new(),
                    on_update: r.get(4),
                    on_delete: r.get(5),
                },
            ));
        }
        if let Some((_, fk)) = out.last_mut() {
            fk.columns.push(r.get(2));
            if let Some(to) = to {
                fk.parent_columns.push(to);
            }
        }
    }
    Ok(out.into_iter().map(|(_, fk)| fk).collect())
}

/// The indexes whose own text says more than their columns: partial, on an expression,
/// descending, or with a collation other than BINARY; as (name, text).
async fn index_text(conn: &mut SqliteConnection, table: &str) -> Result<Vec<(String, String)>> {
    sqlx::query_as(
        "SELECT l.name, m.sql FROM pragma_index_list(?1) AS l JOIN sqlite_master AS m ON m.type = 'index' AND m.name = l.name \
         WHERE l.origin = 'c' AND m.sql IS NOT NULL AND (l.partial = 1 OR EXISTS (SELECT 1 FROM pragma_index_xinfo(l.name) AS x \
         WHERE x.key = 1 AND (x.cid = -2 OR x.\"desc\" = 1 OR x.coll <> 'BINARY'))) ORDER BY l.name",
    )
    .bind(table)
    .fetch_all(&mut *conn)
    .await
    .map_err(ctx)
}

/// The application's triggers on `<table>` (turnout's own left out), as (name, text),
/// in creation order, so re-creating them keeps their relative firing order.
pub(super) async fn user_triggers(
    conn: &mut SqliteConnection,
    m: &Migration,
) -> Result<Vec<(String, String)>> {
    let n = names(m);
    let own = n.own();
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND lower(tbl_name) = lower(?1) ORDER BY rowid",
    )
    .bind(&m.table)
    .fetch_all(&mut *conn)
    .await
    .map_err(ctx)?;
    Ok(rows
        .into_iter()
        .filter(|(name, _)| !own.contains(&name.as_str()))
        .collect())
}

/// Drops the application's triggers from `<table>`, runs `renames`, and re-creates the
/// triggers, which then attach to whichever table is `<table>` afterwards.
pub(super) fn move_triggers(triggers: &[(String, String)], renames: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = triggers
        .iter()
        .map(|(name, _)| format!("DROP TRIGGER IF EXISTS {}", quote(name)))
        .collect();
    out.extend(renames);
    out.extend(triggers.iter().map(|(_, text)| text.clone()));
    out
}

/// Tables other than turnout's whose foreign keys reference `<table>`, with the columns
/// they reference (empty: its primary key).
async fn children(
    conn: &mut SqliteConnection,
    m: &Migration,
) -> Result<Vec<(String, Vec<String>)>> {
    let rows: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT s.name, f.\"to\" FROM sqlite_master AS s, pragma_foreign_key_list(s.name) AS f \
         WHERE s.type = 'table' AND lower(f.\"table\") = lower(?1) AND s.name NOT IN (?1, ?2, ?3) ORDER BY s.name, f.id, f.seq",
    )
    .bind(&m.table)
    .bind(&m.shadow)
    .bind(&m.old)
    .fetch_all(&mut *conn)
    .await
    .map_err(ctx)?;
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for (child, to) in rows {
        if out.last().is_none_or(|(c, _)| *c != child) {
            out.push((child, Vec::new()));
        }
        if let (Some((_, cols)), Some(to)) = (out.last_mut(), to) {
            cols.push(to);
        }
    }
    Ok(out)
}

/// Connection settings the swap needs, set outside any transaction and put back after.
pub(super) async fn rename_mode(conn: &mut SqliteConnection, on: bool) -> Result<()> {
    let set = |s: &'static str| sqlx::query(s);
    if on {
        set("PRAGMA foreign_keys = OFF")
            .execute(&mut *conn)
            .await
            .map_err(ctx)?;
        set("PRAGMA legacy_alter_table = ON")
            .execute(&mut *conn)
            .await
            .map_err(ctx)?;
    } else {
        set("PRAGMA legacy_alter_table = OFF")
            .execute(&mut *conn)
            .await
            .map_err(ctx)?;
        // The pool's connections enforce foreign keys (sqlx's default).
        set("PRAGMA foreign_keys = ON")
            .execute(&mut *conn)
            .await
            .map_err(ctx)?;
    }
    Ok(())
}

impl Sqlite {
    pub(super) async fn furniture(&self, table: &str) -> Result<Furniture> {
        let mut conn = self.pool.acquire().await.map_err(ctx)?;
        let options: Option<(i64, i64)> = sqlx::query_as(
            "SELECT strict, wr FROM pragma_table_list WHERE schema = 'main' AND name = ?1",
        )
        .bind(table)
        .fetch_optional(&mut *conn)
        .await
        .map_err(ctx)?;
        let (strict, wr) = options.unwrap_or((0, 0));
        let text: Option<String> =
            sqlx::query_scalar("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?1")
                .bind(table)
                .fetch_optional(&mut *conn)
                .await
                .map_err(ctx)?;
        Ok(Furniture {
            foreign_keys: foreign_keys(&mut conn, table).await?,
            strict: strict == 1,
            without_rowid: wr == 1,
            text: read_table(text.as_deref().unwrap_or_default()),
            index_text: index_text(&mut conn, table).await?,
        })
    }

    /// Everything of the table's furniture turnout cannot carry, named, with why.
    pub(super) async fn furniture_problems(
        &self,
        m: &Migration,
        f: &Furniture,
    ) -> Result<Vec<String>> {
        let t = &m.table;
        let mut problems = Vec::new();
        let mut conn = self.pool.acquire().await.map_err(ctx)?;
        let text: String =
            sqlx::query_scalar("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?1")
                .bind(t)
                .fetch_one(&mut *conn)
                .await
                .map_err(ctx)?;
        let w = words(&text);
        let has = |k: &str| w.iter().any(|x| x == k);
        if text
            .trim_start()
            .to_ascii_uppercase()
            .starts_with("CREATE VIRTUAL")
        {
            problems.push(format!(
                "table {t:?} is a virtual table; turnout migrates ordinary tables only"
            ));
        }
        if has("deferrable") && f.text.deferrals.len() != f.foreign_keys.len() {
            problems.push(format!(
                "table {t:?} has deferrable foreign keys that turnout cannot match with SQLite's list of them ({} in the text, {} listed); it does not carry them. Make this change with ALTER TABLE (SQLite's 12-step rebuild) in a maintenance window instead",
                f.text.deferrals.len(),
                f.foreign_keys.len()
            ));
        }
        // Every CHECK of the text must have been read (those inside a generated column's
        // definition travel with it): one that slipped past the reader would be lost.
        let in_generated: usize = f
            .text
            .generated
            .iter()
            .map(|g| {
                words(&g.definition)
                    .iter()
                    .filter(|x| *x == "check")
                    .count()
            })
            .sum();
        let unread = w
            .iter()
            .filter(|x| *x == "check")
            .count()
            .saturating_sub(in_generated);
        if unread != f.text.checks.len() {
            problems.push(format!(
                "table {t:?} has CHECK constraints turnout cannot read from its text ({unread} written, {} read); it would not carry them. Make this change with SQLite's 12-step ALTER TABLE rebuild instead",
                f.text.checks.len()
            ));
        }
        let gone = m.columns_gone();
        let uses_gone = |text: &str| gone.iter().find(|c| mentions(text, c)).copied();
        for k in &f.text.checks {
            if let Some(c) = uses_gone(&k.expr) {
                problems.push(format!(
                    "{} of {t:?} uses column {c:?}, which the plan drops or renames; turnout does not rewrite constraints on SQLite. Keep the column, or change the constraint first (SQLite's 12-step ALTER TABLE rebuild)",
                    k.label()
                ));
            }
        }
        for g in &f.text.generated {
            if let Some(c) = uses_gone(&g.definition) {
                problems.push(format!(
                    "generated column {:?} of {t:?} uses column {c:?}, which the plan drops or renames; turnout recomputes generated columns from their own expression and does not rewrite it. Keep the column",
                    g.name
                ));
            }
        }
        for (name, text) in &f.index_text {
            if !m.after.indexes.iter().any(|i| &i.name == name) {
                continue;
            }
            if let Some(c) = index_body(text).and_then(|(_, body)| uses_gone(body)) {
                problems.push(format!(
                    "index {name:?} on {t:?} uses column {c:?}, which the plan drops or renames; turnout re-creates such an index from its own text. Drop the index in the plan (drop_index) and add it again after, or keep the column"
                ));
            }
        }
        for fk in &f.foreign_keys {
            if fk.columns.iter().any(|c| carried_as(m, c).is_none()) {
                problems.push(format!(
                    "the foreign key ({}) of {t:?} to {:?} uses a column the plan drops; drop the foreign key first, or keep the column",
                    fk.columns.join(", "),
                    fk.parent
                ));
            }
            if fk.parent.eq_ignore_ascii_case(t) {
                let referenced = if fk.parent_columns.is_empty() {
                    m.old_key().iter().map(|s| s.to_string()).collect()
                } else {
                    fk.parent_columns.clone()
                };
                if let Some(c) = referenced.iter().find(|c| m.after.column(c).is_none()) {
                    problems.push(format!(
                        "the self-referencing foreign key ({}) of {t:?} references column {c:?}, which the plan renames or drops; during dual-write the new table's rows must reference the live table by the same column names"
                    , fk.columns.join(", ")));
                }
            }
        }
        for (child, cols) in children(&mut conn, m).await? {
            let referenced: Vec<String> = if cols.is_empty() {
                m.old_key().iter().map(|s| s.to_string()).collect()
            } else {
                cols
            };
            if let Some(c) = referenced.iter().find(|c| m.after.column(c).is_none()) {
                problems.push(format!(
                    "table {child:?} has a foreign key referencing column {c:?} of {t:?}, which the plan renames or drops; change {child:?} in a separate migration first"
                ));
            }
        }
        let triggers: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'trigger' ORDER BY name",
        )
        .fetch_all(&mut *conn)
        .await
        .map_err(ctx)?;
        for (name, on, text) in &triggers {
            if !on.eq_ignore_ascii_case(t) && !mentions(text, t) {
                continue;
            }
            if let Some(c) = gone.iter().find(|c| mentions(text, c)) {
                problems.push(format!(
                    "trigger {name:?} (on {on:?}) names column {c:?}, which the plan renames or drops from {t:?}; recreate the trigger without it first"
                ));
            }
        }
        let dangling: Vec<sqlx::sqlite::SqliteRow> =
            sqlx::query(sql(format!("PRAGMA foreign_key_check({})", quote(t))))
                .fetch_all(&mut *conn)
                .await
                .map_err(ctx)?;
        if !dangling.is_empty() {
            problems.push(format!(
                "{} rows of {t:?} reference parent rows that do not exist (PRAGMA foreign_key_check); the copy into the new table enforces foreign keys and would fail. Repair them first",
                dangling.len()
            ));
        }
        for k in m.key_type_changes() {
            match judge(&k.from, &k.to, m.key.len() == 1, f.without_rowid) {
                Err(why) => problems.push(format!(
                    "primary key column {:?} of {t:?}: changing its type from {} to {} is refused: {why}",
                    k.column, k.from, k.to
                )),
                Ok(true) => {
                    let old = m.key.iter().find(|kc| kc.new == k.column).map_or(k.column.as_str(), |kc| kc.old.as_str());
                    let odd: i64 = sqlx::query_scalar(sql(format!("SELECT count(*) FROM {} WHERE typeof({}) <> 'integer'", quote(t), quote(old))))
                        .fetch_one(&mut *conn)
                        .await
                        .map_err(ctx)?;
                    if odd > 0 {
                        problems.push(format!(
                            "primary key column {:?} of {t:?}: {odd} keys are not integers, and as {} the key is the rowid, which holds integers only",
                            k.column, k.to
                        ));
                    }
                }
                Ok(false) => {}
            }
        }
        Ok(problems)
    }

    /// The whole cutover, rehearsed in a transaction that is always rolled back: the
    /// shadow's DDL, the swap, the triggers re-created, every view read and every foreign
    /// key to and from the table resolved against the new shape.
    pub(super) async fn dry_run(&self, m: &Migration, f: &Furniture) -> Result<Vec<String>> {
        let t = &m.table;
        let mut conn = self.pool.acquire().await.map_err(ctx)?;
        rename_mode(&mut conn, true).await?;
        let mut problems = Vec::new();
        let run: Result<()> = async {
            sqlx::query("BEGIN").execute(&mut *conn).await.map_err(ctx)?;
            for stmt in create_shadow(m, f) {
                if let Err(e) = sqlx::query(sql(stmt)).execute(&mut *conn).await {
                    problems.push(format!("the new shape of {t:?} cannot be created: {}", db_message(&e)));
                    return Ok(());
                }
            }
            let triggers = user_triggers(&mut conn, m).await?;
            for stmt in move_triggers(&triggers, swap(m, &names(m))) {
                if let Err(e) = sqlx::query(sql(stmt.clone())).execute(&mut *conn).await {
                    problems.push(format!("after the swap, {stmt:?} fails: {}", db_message(&e)));
                    return Ok(());
                }
            }
            let views: Vec<String> = sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'view' ORDER BY name")
                .fetch_all(&mut *conn)
                .await
                .map_err(ctx)?;
            for v in views {
                let probe = format!("SELECT * FROM {} LIMIT 0", quote(&v));
                if let Err(e) = sqlx::query(sql(probe)).fetch_all(&mut *conn).await {
                    problems.push(format!("view {v:?} would not work on the new {t:?}: {}; recreate the view without it first", db_message(&e)));
                }
            }
            let mut tables: Vec<String> = children(&mut conn, m).await?.into_iter().map(|(c, _)| c).collect();
            tables.push(t.clone());
            for table in tables {
                // A key that does not resolve fails when the check is compiled; run, the
                // check would read every row of the table while this transaction holds
                // the write lock (335–434 ms of application stall for three children of
                // 100,000 rows, `bench sqlite 100000 --tables`).
                let probe = format!("EXPLAIN PRAGMA foreign_key_check({})", quote(&table));
                if let Err(e) = sqlx::query(sql(probe)).fetch_all(&mut *conn).await {
                    problems.push(format!("the foreign keys of {table:?} would not resolve against the new {t:?}: {}", db_message(&e)));
                }
            }
            Ok(())
        }
        .await;
        let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
        rename_mode(&mut conn, false).await?;
        run?;
        Ok(problems)
    }
}
