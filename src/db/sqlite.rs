//! SQLite answers the engine's questions. What differs from the server databases:
//! one writer at a time (every write transaction is `BEGIN IMMEDIATE` under a busy
//! timeout, and batches stay short so the application never waits long), no advisory
//! locks (a lease row with holder, pid and heartbeat instead), `ALTER TABLE … RENAME`
//! rewrites references inside triggers and views (so cutover renames with
//! `legacy_alter_table` on and installs the reverse triggers after the swap), index
//! names cannot be changed (carried-over indexes alternate between `x` and `x_new`),
//! and triggers cannot catch errors (a write the mapping cannot store fails, whatever
//! `dual_write.on_error` says).

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{AssertSqlSafe, ConnectOptions, Row, SqlitePool};
use tokio::sync::Mutex;

use crate::db::{
    Backend, BatchDone, Cursor, CutoverOutcome, PhaseSql, RowDiff, StateRow, VerifyReport,
    VerifyRequest, render_source,
};
use crate::error::{Error, Result};
use crate::schema::{Column, Generated, Index, Migration, TableShape};

/// How long a lease lives without a heartbeat before another turnout may take it over.
const LEASE_STALE_AFTER: Duration = Duration::from_secs(30);
const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);
/// SQLite has one writer, and a waiting application polls for the lock with growing
/// sleeps (SQLite's busy handler: steps of at most 25 ms during the first ~128 ms of a
/// wait, then 50 ms, then 100 ms). A gap after each batch at least as long as the poll
/// step the waiter has reached guarantees it gets in before the next batch: then no
/// application write waits much longer than one batch.
fn gap_after(batch: Duration) -> Duration {
    match batch.as_millis() {
        0..=100 => Duration::from_millis(30),
        101..=300 => Duration::from_millis(55),
        _ => Duration::from_millis(105),
    }
}

pub struct Sqlite {
    pub pool: SqlitePool,
    holder: String,
    heartbeat: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// The one quoting function of this dialect.
pub fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn sql(s: String) -> AssertSqlSafe<String> {
    AssertSqlSafe(s)
}

impl Sqlite {
    pub async fn connect(url: &str) -> Result<Sqlite> {
        let shown = crate::db::redact(url);
        let opts = SqliteConnectOptions::from_str(url)
            .map_err(|e| Error::Unreachable(format!("{shown}: {e}")))?
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .disable_statement_logging();
        Self::with_options(opts, &shown).await
    }

    pub async fn with_options(opts: SqliteConnectOptions, shown: &str) -> Result<Sqlite> {
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(opts)
            .await
            .map_err(|e| Error::Unreachable(format!("{shown}: {e}")))?;
        let host = std::fs::read_to_string("/etc/hostname")
            .unwrap_or_default()
            .trim()
            .to_string();
        let holder = format!(
            "pid {} on {}",
            std::process::id(),
            if host.is_empty() { "localhost" } else { &host }
        );
        Ok(Sqlite {
            pool,
            holder,
            heartbeat: Mutex::new(None),
        })
    }

    fn table(&self, name: &str) -> String {
        quote(name)
    }

    /// A write transaction. The busy timeout already waits for the application's writes;
    /// past it, a few more tries with a pause, as an application would retry.
    async fn begin_immediate(
        &self,
    ) -> std::result::Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
        let mut tries = 0;
        loop {
            match self.pool.begin_with("BEGIN IMMEDIATE").await {
                Err(e) if is_busy(&e) && tries < 3 => {
                    tries += 1;
                    tracing::warn!(
                        "the database stayed locked through the busy timeout; trying again"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                other => return other,
            }
        }
    }

    async fn exists(&self, kind: &str, name: &str) -> Result<bool> {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM sqlite_master WHERE type = ?1 AND name = ?2")
                .bind(kind)
                .bind(name)
                .fetch_one(&self.pool)
                .await
                .map_err(|e| Error::db("reading the catalog", e))?;
        Ok(n > 0)
    }
}

/// Deterministic names of the objects a migration creates.
struct Names {
    fwd_insert: String,
    fwd_update: String,
    fwd_delete: String,
    rev_insert: String,
    rev_update: String,
    rev_delete: String,
}

fn names(m: &Migration) -> Names {
    let base = format!("turnout_{}", short_hash(&format!("{}/{}", m.name, m.table)));
    Names {
        fwd_insert: format!("{base}_fwd_ins"),
        fwd_update: format!("{base}_fwd_upd"),
        fwd_delete: format!("{base}_fwd_del"),
        rev_insert: format!("{base}_rev_ins"),
        rev_update: format!("{base}_rev_upd"),
        rev_delete: format!("{base}_rev_del"),
    }
}

fn short_hash(s: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(s.as_bytes())
        .iter()
        .take(5)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One direction of dual-write: rows of `source` copied into `target`.
struct Direction {
    source: String,
    target: String,
    mapped: Vec<crate::schema::Mapped>,
    source_key: Vec<String>,
    target_key: Vec<String>,
    source_columns: Vec<String>,
    triggers: [String; 3],
}

fn forward(m: &Migration, n: &Names) -> Direction {
    Direction {
        source: m.table.clone(),
        target: m.shadow.clone(),
        mapped: m.forward.clone(),
        source_key: m.key.iter().map(|k| k.old.clone()).collect(),
        target_key: m.key.iter().map(|k| k.new.clone()).collect(),
        source_columns: m.before.columns.iter().map(|c| c.name.clone()).collect(),
        triggers: [
            n.fwd_insert.clone(),
            n.fwd_update.clone(),
            n.fwd_delete.clone(),
        ],
    }
}

fn reverse(m: &Migration, n: &Names) -> Direction {
    Direction {
        source: m.table.clone(),
        target: m.old.clone(),
        mapped: m.reverse.clone(),
        source_key: m.key.iter().map(|k| k.new.clone()).collect(),
        target_key: m.key.iter().map(|k| k.old.clone()).collect(),
        source_columns: m.after.columns.iter().map(|c| c.name.clone()).collect(),
        triggers: [
            n.rev_insert.clone(),
            n.rev_update.clone(),
            n.rev_delete.clone(),
        ],
    }
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn list(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| quote(n))
        .collect::<Vec<_>>()
        .join(", ")
}

fn cast(value: &str, t: &str) -> String {
    format!("CAST({value} AS {t})")
}

/// `SELECT <mapped> FROM (<rows>) AS t`: the plan's expressions read the source row's
/// columns unqualified, whatever the rows come from.
fn mapped_select(mapped: &[crate::schema::Mapped], rows: &str) -> String {
    let exprs = mapped
        .iter()
        .map(|mp| render_source(mp, &|c| quote(c), &cast))
        .collect::<Vec<_>>()
        .join(", ");
    format!("SELECT {exprs} FROM ({rows}) AS t")
}

fn upsert(d: &Direction, rows: &str, on_conflict_update: bool) -> String {
    let targets: Vec<&str> = d.mapped.iter().map(|mp| mp.target.as_str()).collect();
    let updates: Vec<String> = targets
        .iter()
        .filter(|t| !d.target_key.iter().any(|k| k == *t))
        .map(|t| format!("{} = excluded.{}", quote(t), quote(t)))
        .collect();
    let action = if on_conflict_update && !updates.is_empty() {
        format!("DO UPDATE SET {}", updates.join(", "))
    } else {
        "DO NOTHING".to_string()
    };
    // `WHERE true` keeps SQLite from reading ON CONFLICT as part of the SELECT's join.
    format!(
        "INSERT INTO {} ({}) {} WHERE true ON CONFLICT ({}) {action}",
        quote(&d.target),
        list(&targets),
        mapped_select(&d.mapped, rows),
        list(&strs(&d.target_key))
    )
}

fn row_of(prefix: &str, columns: &[&str]) -> String {
    let cols = columns
        .iter()
        .map(|c| format!("{prefix}.{} AS {}", quote(c), quote(c)))
        .collect::<Vec<_>>()
        .join(", ");
    format!("SELECT {cols}")
}

fn key_match(target_key: &[&str], source_key: &[&str], prefix: &str) -> String {
    target_key
        .iter()
        .zip(source_key)
        .map(|(t, s)| format!("{} = {prefix}.{}", quote(t), quote(s)))
        .collect::<Vec<_>>()
        .join(" AND ")
}

fn key_changed(source_key: &[&str]) -> String {
    source_key
        .iter()
        .map(|k| format!("NEW.{} IS NOT OLD.{}", quote(k), quote(k)))
        .collect::<Vec<_>>()
        .join(" OR ")
}

fn triggers(d: &Direction) -> Vec<String> {
    let src = quote(&d.source);
    let tgt = quote(&d.target);
    let new_row = row_of("NEW", &strs(&d.source_columns));
    let (sk, tk) = (strs(&d.source_key), strs(&d.target_key));
    vec![
        format!(
            "CREATE TRIGGER IF NOT EXISTS {} AFTER INSERT ON {src} BEGIN {}; END",
            quote(&d.triggers[0]),
            upsert(d, &new_row, true)
        ),
        format!(
            "CREATE TRIGGER IF NOT EXISTS {} AFTER UPDATE ON {src} BEGIN DELETE FROM {tgt} WHERE ({}) AND ({}); {}; END",
            quote(&d.triggers[1]),
            key_match(&tk, &sk, "OLD"),
            key_changed(&sk),
            upsert(d, &new_row, true)
        ),
        format!(
            "CREATE TRIGGER IF NOT EXISTS {} AFTER DELETE ON {src} BEGIN DELETE FROM {tgt} WHERE {}; END",
            quote(&d.triggers[2]),
            key_match(&tk, &sk, "OLD")
        ),
    ]
}

fn drop_triggers(d: &Direction) -> Vec<String> {
    d.triggers
        .iter()
        .map(|t| format!("DROP TRIGGER IF EXISTS {}", quote(t)))
        .collect()
}

fn column_def(c: &Column, single_integer_key: bool) -> String {
    let mut def = format!("{} {}", quote(&c.name), c.sql_type);
    if single_integer_key {
        return def;
    }
    if !c.nullable {
        def.push_str(" NOT NULL");
    }
    if let Some(d) = &c.default {
        def.push_str(&format!(" DEFAULT ({d})"));
    }
    def
}

/// Carried-over indexes alternate between `x` and `x_new`, since SQLite cannot rename
/// an index and the live table's index keeps `x` until cleanup.
fn shadow_index_name(index: &Index, carried: bool) -> String {
    if !carried {
        return index.name.clone();
    }
    match index.name.strip_suffix("_new") {
        Some(base) if !base.is_empty() => base.to_string(),
        _ => format!("{}_new", index.name),
    }
}

fn create_shadow(m: &Migration) -> Vec<String> {
    let single_integer_key = m.after.primary_key.len() == 1
        && m.after
            .column(&m.after.primary_key[0])
            .is_some_and(|c| c.sql_type.eq_ignore_ascii_case("integer"));
    let mut cols: Vec<String> = m
        .after
        .columns
        .iter()
        .map(|c| column_def(c, single_integer_key && c.name == m.after.primary_key[0]))
        .collect();
    cols.push(format!("PRIMARY KEY ({})", list(&m.new_key())));
    let mut out = vec![format!(
        "CREATE TABLE IF NOT EXISTS {} ({})",
        quote(&m.shadow),
        cols.join(", ")
    )];
    for idx in &m.after.indexes {
        let carried = m.before.indexes.iter().any(|b| b.name == idx.name);
        let cols: Vec<&str> = idx.columns.iter().map(String::as_str).collect();
        out.push(format!(
            "CREATE {}INDEX IF NOT EXISTS {} ON {} ({})",
            if idx.unique { "UNIQUE " } else { "" },
            quote(&shadow_index_name(idx, carried)),
            quote(&m.shadow),
            list(&cols)
        ));
    }
    out
}

fn save_sql() -> &'static str {
    "INSERT INTO turnout_state (name, plan_hash, phase, body, updated_at) VALUES (?1, ?2, ?3, ?4, strftime('%Y-%m-%dT%H:%M:%fZ','now')) \
     ON CONFLICT (name) DO UPDATE SET plan_hash = excluded.plan_hash, phase = excluded.phase, body = excluded.body, updated_at = excluded.updated_at"
}

async fn save_in<'c, E>(e: E, row: &StateRow) -> Result<()>
where
    E: sqlx::Executor<'c, Database = sqlx::Sqlite>,
{
    sqlx::query(save_sql())
        .bind(&row.name)
        .bind(&row.plan_hash)
        .bind(&row.phase)
        .bind(&row.body)
        .execute(e)
        .await
        .map_err(|e| Error::db("saving the checkpoint", e))?;
    Ok(())
}

/// Keys as JSON arrays so keyset pagination binds them back with their storage class.
fn key_json(cols: &[&str], prefix: &str) -> String {
    let parts = cols
        .iter()
        .map(|c| format!("{prefix}{}", quote(c)))
        .collect::<Vec<_>>()
        .join(", ");
    format!("json_array({parts})")
}

fn after_cursor(cols: &[&str], param: &str) -> String {
    let vals = (0..cols.len())
        .map(|i| format!("json_extract({param}, '$[{i}]')"))
        .collect::<Vec<_>>()
        .join(", ");
    format!("({}) > ({vals})", list(cols))
}

fn at_or_before(cols: &[&str], param: &str) -> String {
    let vals = (0..cols.len())
        .map(|i| format!("json_extract({param}, '$[{i}]')"))
        .collect::<Vec<_>>()
        .join(", ");
    format!("({}) <= ({vals})", list(cols))
}

impl Backend for Sqlite {
    fn dialect(&self) -> &'static str {
        "sqlite"
    }

    fn quote(&self, ident: &str) -> String {
        quote(ident)
    }

    async fn default_schema(&self) -> Result<Option<String>> {
        Ok(None)
    }

    async fn ensure_state_table(&self) -> Result<()> {
        for stmt in [
            "CREATE TABLE IF NOT EXISTS turnout_state (name TEXT PRIMARY KEY, plan_hash TEXT NOT NULL, phase TEXT NOT NULL, body TEXT NOT NULL, updated_at TEXT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS turnout_lease (name TEXT PRIMARY KEY, holder TEXT NOT NULL, pid INTEGER NOT NULL, host TEXT NOT NULL, heartbeat REAL NOT NULL)",
        ] {
            sqlx::query(stmt)
                .execute(&self.pool)
                .await
                .map_err(|e| Error::db("creating turnout_state", e))?;
        }
        Ok(())
    }

    async fn load_state(&self, name: &str) -> Result<Option<StateRow>> {
        let exists = self.exists("table", "turnout_state").await?;
        if !exists {
            return Ok(None);
        }
        let row =
            sqlx::query("SELECT name, plan_hash, phase, body FROM turnout_state WHERE name = ?1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| Error::db("reading turnout_state", e))?;
        Ok(row.as_ref().map(StateRow::from_sql))
    }

    async fn list_states(&self) -> Result<Vec<StateRow>> {
        let rows =
            sqlx::query("SELECT name, plan_hash, phase, body FROM turnout_state ORDER BY name")
                .fetch_all(&self.pool)
                .await
                .map_err(|e| Error::db("reading turnout_state", e))?;
        Ok(rows.into_iter().map(|r| StateRow::from_sql(&r)).collect())
    }

    async fn save_state(&self, row: &StateRow) -> Result<()> {
        let mut tx = self
            .begin_immediate()
            .await
            .map_err(|e| Error::db("saving the checkpoint", e))?;
        save_in(&mut *tx, row).await?;
        tx.commit()
            .await
            .map_err(|e| Error::db("saving the checkpoint", e))
    }

    async fn lock(&self, migration: &str) -> Result<()> {
        let host = self
            .holder
            .rsplit(" on ")
            .next()
            .unwrap_or_default()
            .to_string();
        let mut tx = self
            .begin_immediate()
            .await
            .map_err(|e| Error::db("taking the lease", e))?;
        let current = sqlx::query(
            "SELECT holder, pid, host, (julianday('now') - julianday(heartbeat, 'unixepoch')) * 86400.0 FROM turnout_lease WHERE name = ?1",
        )
        .bind(migration)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| Error::db("reading the lease", e))?;
        if let Some(r) = current {
            let (holder, pid, their_host, age): (String, i64, String, f64) =
                (r.get(0), r.get(1), r.get(2), r.get(3));
            let gone =
                their_host == host && !std::path::Path::new(&format!("/proc/{pid}")).exists();
            let stale = age > LEASE_STALE_AFTER.as_secs_f64();
            if holder != self.holder && !gone && !stale {
                return Err(Error::LockHeld {
                    name: migration.to_string(),
                    holder: format!("{holder}, heartbeat {age:.0}s ago"),
                });
            }
        }
        sqlx::query(
            "INSERT INTO turnout_lease (name, holder, pid, host, heartbeat) VALUES (?1, ?2, ?3, ?4, unixepoch('subsec')) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, pid = excluded.pid, host = excluded.host, heartbeat = excluded.heartbeat",
        )
        .bind(migration)
        .bind(&self.holder)
        .bind(i64::from(std::process::id()))
        .bind(&host)
        .execute(&mut *tx)
        .await
        .map_err(|e| Error::db("taking the lease", e))?;
        tx.commit()
            .await
            .map_err(|e| Error::db("taking the lease", e))?;

        let pool = self.pool.clone();
        let name = migration.to_string();
        let holder = self.holder.clone();
        let beat = tokio::spawn(async move {
            loop {
                tokio::time::sleep(HEARTBEAT_EVERY).await;
                let _ = sqlx::query("UPDATE turnout_lease SET heartbeat = unixepoch('subsec') WHERE name = ?1 AND holder = ?2")
                    .bind(&name)
                    .bind(&holder)
                    .execute(&pool)
                    .await;
            }
        });
        if let Some(old) = self.heartbeat.lock().await.replace(beat) {
            old.abort();
        }
        Ok(())
    }

    async fn keep_lock(&self, migration: &str) -> Result<()> {
        let holder: Option<String> =
            sqlx::query_scalar("SELECT holder FROM turnout_lease WHERE name = ?1")
                .bind(migration)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| Error::db("reading the lease", e))?;
        match holder {
            Some(h) if h == self.holder => Ok(()),
            // Taken over after our heartbeat went stale: the other turnout owns it now.
            Some(h) => Err(Error::LockHeld {
                name: migration.to_string(),
                holder: h,
            }),
            None => self.lock(migration).await,
        }
    }

    async fn unlock(&self, migration: &str) -> Result<()> {
        if let Some(beat) = self.heartbeat.lock().await.take() {
            beat.abort();
        }
        sqlx::query("DELETE FROM turnout_lease WHERE name = ?1 AND holder = ?2")
            .bind(migration)
            .bind(&self.holder)
            .execute(&self.pool)
            .await
            .map_err(|e| Error::db("releasing the lease", e))?;
        Ok(())
    }

    async fn describe(&self, schema: Option<&str>, table: &str) -> Result<Option<TableShape>> {
        if schema.is_some_and(|s| s != "main") || !self.exists("table", table).await? {
            return Ok(None);
        }
        let ctx = |e| Error::db(format!("describing table {table:?}"), e);
        let rows = sqlx::query("SELECT name, type, \"notnull\", dflt_value, pk FROM pragma_table_info(?1) ORDER BY cid")
            .bind(table)
            .fetch_all(&self.pool)
            .await
            .map_err(ctx)?;
        let mut pk: Vec<(i64, String)> = Vec::new();
        let mut columns = Vec::new();
        for r in &rows {
            let name: String = r.get(0);
            let sql_type: String = r.get(1);
            let notnull: i64 = r.get(2);
            let default: Option<String> = r.get(3);
            let pk_pos: i64 = r.get(4);
            if pk_pos > 0 {
                pk.push((pk_pos, name.clone()));
            }
            columns.push(Column {
                name,
                sql_type,
                nullable: notnull == 0,
                default,
                generated: None,
            });
        }
        pk.sort();
        let primary_key: Vec<String> = pk.into_iter().map(|(_, n)| n).collect();
        if primary_key.len() == 1
            && let Some(c) = columns.iter_mut().find(|c| c.name == primary_key[0])
            && c.sql_type.eq_ignore_ascii_case("integer")
        {
            // INTEGER PRIMARY KEY is the rowid: never NULL, filled by SQLite.
            c.nullable = false;
            c.generated = Some(Generated::AutoIncrement);
        }
        let idx_rows =
            sqlx::query("SELECT name, \"unique\", origin FROM pragma_index_list(?1) ORDER BY name")
                .bind(table)
                .fetch_all(&self.pool)
                .await
                .map_err(ctx)?;
        let mut indexes = Vec::new();
        for r in idx_rows {
            let name: String = r.get(0);
            let unique: i64 = r.get(1);
            let origin: String = r.get(2);
            if origin == "pk" {
                continue;
            }
            let cols = sqlx::query("SELECT name FROM pragma_index_info(?1) ORDER BY seqno")
                .bind(&name)
                .fetch_all(&self.pool)
                .await
                .map_err(ctx)?;
            let columns: Vec<String> = cols
                .iter()
                .map(|c| c.get::<Option<String>, _>(0).unwrap_or_default())
                .collect();
            indexes.push(Index {
                name,
                columns,
                unique: unique == 1,
            });
        }
        Ok(Some(TableShape {
            columns,
            primary_key,
            indexes,
        }))
    }

    async fn preflight(&self, m: &Migration) -> Result<Vec<String>> {
        let mut problems = Vec::new();
        let t = &m.table;
        if m.schema.as_deref().is_some_and(|s| s != "main") {
            problems.push(format!(
                "schema: SQLite migrations run on the main database; found {:?}",
                m.schema
            ));
        }
        for name in [&m.shadow, &m.old] {
            if self.exists("table", name).await? {
                problems.push(format!("a table {name:?} already exists; turnout needs that name for {t:?} (drop it, or roll back the migration that left it)"));
            }
        }
        let user_triggers: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ?1",
        )
        .bind(t)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| Error::db("reading triggers", e))?;
        if !user_triggers.is_empty() {
            problems.push(format!(
                "table {t:?} has triggers ({}); turnout would not carry them to the new table. Drop them for the migration and recreate them after",
                user_triggers.join(", ")
            ));
        }
        for idx in &m.after.indexes {
            let carried = m.before.indexes.iter().any(|b| b.name == idx.name);
            let name = shadow_index_name(idx, carried);
            if self.exists("index", &name).await? && (!carried || name != idx.name) {
                problems.push(format!(
                    "index name {name:?} is taken; turnout needs it for the new {t:?}"
                ));
            }
        }
        let before_cols: Vec<&str> = m.before.columns.iter().map(|c| c.name.as_str()).collect();
        for mp in &m.forward {
            let rows = format!(
                "SELECT {} FROM {} LIMIT 0",
                list(&before_cols),
                self.table(t)
            );
            let probe = mapped_select(std::slice::from_ref(mp), &rows);
            if let Err(e) = sqlx::query(sql(probe)).fetch_all(&self.pool).await {
                problems.push(format!(
                    "column {:?}: the forward expression does not compile against {t:?}: {}",
                    mp.target,
                    db_message(&e)
                ));
            }
        }
        let typed_nulls = m
            .after
            .columns
            .iter()
            .map(|c| format!("CAST(NULL AS {}) AS {}", c.sql_type, quote(&c.name)))
            .collect::<Vec<_>>()
            .join(", ");
        for mp in &m.reverse {
            let probe = mapped_select(
                std::slice::from_ref(mp),
                &format!("SELECT {typed_nulls} LIMIT 0"),
            );
            if let Err(e) = sqlx::query(sql(probe)).fetch_all(&self.pool).await {
                problems.push(format!("column {:?}: the reverse expression does not compile against the new shape: {}", mp.target, db_message(&e)));
            }
        }
        // The whole shadow DDL, in a transaction that is always rolled back.
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| Error::db("preflight", e))?;
        for stmt in create_shadow(m) {
            if let Err(e) = sqlx::query(sql(stmt)).execute(&mut *tx).await {
                problems.push(format!(
                    "the new shape of {t:?} cannot be created: {}",
                    db_message(&e)
                ));
                break;
            }
        }
        tx.rollback().await.map_err(|e| Error::db("preflight", e))?;
        Ok(problems)
    }

    fn preview(&self, m: &Migration) -> Vec<PhaseSql> {
        let n = names(m);
        let f = forward(m, &n);
        let r = reverse(m, &n);
        let old_cols: Vec<&str> = m.before.columns.iter().map(|c| c.name.as_str()).collect();
        let key = m.old_key();
        let last_key = format!(
            "SELECT {} FROM {} WHERE {} ORDER BY {} LIMIT 1 OFFSET :batch_size - 1",
            key_json(&key, ""),
            quote(&m.table),
            after_cursor(&key, ":cursor"),
            list(&key)
        );
        let batch_rows = format!(
            "SELECT {} FROM {} WHERE {} AND {}",
            list(&old_cols),
            quote(&m.table),
            after_cursor(&key, ":cursor"),
            at_or_before(&key, ":last_key")
        );
        let mut cutover = vec!["BEGIN IMMEDIATE".to_string()];
        cutover.extend(drop_triggers(&f));
        cutover.push(format!(
            "ALTER TABLE {} RENAME TO {}",
            quote(&m.table),
            quote(&m.old)
        ));
        cutover.push(format!(
            "ALTER TABLE {} RENAME TO {}",
            quote(&m.shadow),
            quote(&m.table)
        ));
        cutover.extend(triggers(&r));
        cutover.push("COMMIT".into());
        let mut cleanup = drop_triggers(&r);
        cleanup.push(format!("DROP TABLE IF EXISTS {}", quote(&m.old)));
        vec![
            PhaseSql {
                phase: "prepare",
                statements: create_shadow(m),
            },
            PhaseSql {
                phase: "dual-write",
                statements: triggers(&f),
            },
            PhaseSql {
                phase: "backfill (each batch)",
                statements: vec![
                    "BEGIN IMMEDIATE".into(),
                    last_key,
                    upsert(&f, &batch_rows, false),
                    "-- save the checkpoint".into(),
                    "COMMIT".into(),
                ],
            },
            PhaseSql {
                phase: "cutover",
                statements: cutover,
            },
            PhaseSql {
                phase: "cleanup",
                statements: cleanup,
            },
        ]
    }

    async fn prepare(&self, m: &Migration, save: &StateRow) -> Result<()> {
        let mut tx = self
            .begin_immediate()
            .await
            .map_err(|e| Error::db("prepare", e))?;
        for stmt in create_shadow(m) {
            sqlx::query(sql(stmt))
                .execute(&mut *tx)
                .await
                .map_err(|e| Error::db(format!("prepare: creating {}", m.shadow), e))?;
        }
        save_in(&mut *tx, save).await?;
        tx.commit().await.map_err(|e| Error::db("prepare", e))
    }

    async fn start_dual_write(&self, m: &Migration, save: &StateRow) -> Result<()> {
        let f = forward(m, &names(m));
        let mut tx = self
            .begin_immediate()
            .await
            .map_err(|e| Error::db("dual-write", e))?;
        for stmt in triggers(&f) {
            sqlx::query(sql(stmt))
                .execute(&mut *tx)
                .await
                .map_err(|e| Error::db("dual-write: creating triggers", e))?;
        }
        save_in(&mut *tx, save).await?;
        tx.commit().await.map_err(|e| Error::db("dual-write", e))
    }

    async fn estimate_rows(&self, m: &Migration) -> Result<u64> {
        let n: i64 = sqlx::query_scalar(sql(format!("SELECT count(*) FROM {}", quote(&m.table))))
            .fetch_one(&self.pool)
            .await
            .map_err(|e| Error::db("counting rows", e))?;
        Ok(n.max(0) as u64)
    }

    async fn copy_batch(
        &self,
        m: &Migration,
        after: Option<&Cursor>,
        limit: u64,
        checkpoint: &(dyn Fn(&BatchDone) -> StateRow + Sync),
    ) -> Result<BatchDone> {
        let f = forward(m, &names(m));
        let key = m.old_key();
        let old_cols: Vec<&str> = m.before.columns.iter().map(|c| c.name.as_str()).collect();
        let cursor = after.map(|c| c.to_string());
        let filter = if cursor.is_some() {
            format!("WHERE {}", after_cursor(&key, "?1"))
        } else {
            String::new()
        };
        let live = quote(&m.table);
        let ctx = |e| Error::db(format!("backfill of {}", m.table), e);

        let began = std::time::Instant::now();
        let mut tx = self.begin_immediate().await.map_err(ctx)?;
        // The batch's last key, found on the primary key alone; the copy is then a range.
        let hi: Option<String> = sqlx::query_scalar(sql(format!(
            "SELECT {} FROM {live} {filter} ORDER BY {} LIMIT 1 OFFSET {}",
            key_json(&key, ""),
            list(&key),
            limit.saturating_sub(1)
        )))
        .bind(cursor.as_deref())
        .fetch_optional(&mut *tx)
        .await
        .map_err(ctx)?;
        let mut range = Vec::new();
        if cursor.is_some() {
            range.push(after_cursor(&key, "?1"));
        }
        if hi.is_some() {
            range.push(at_or_before(&key, "?2"));
        }
        let range = if range.is_empty() {
            "true".to_string()
        } else {
            range.join(" AND ")
        };
        let rows = format!("SELECT {} FROM {live} WHERE {range}", list(&old_cols));
        let (count, last) = match &hi {
            Some(h) => (limit, Some(h.clone())),
            None => {
                let tail = sqlx::query(sql(format!(
                    "SELECT count(*), (SELECT {} FROM {live} WHERE {range} ORDER BY {} LIMIT 1) FROM {live} WHERE {range}",
                    key_json(&key, ""),
                    key.iter().map(|k| format!("{} DESC", quote(k))).collect::<Vec<_>>().join(", ")
                )))
                .bind(cursor.as_deref())
                .bind(hi.as_deref())
                .fetch_one(&mut *tx)
                .await
                .map_err(ctx)?;
                (
                    tail.get::<i64, _>(0).max(0) as u64,
                    tail.get::<Option<String>, _>(1),
                )
            }
        };
        if count > 0
            && let Err(e) = sqlx::query(sql(upsert(&f, &rows, false)))
                .bind(cursor.as_deref())
                .bind(hi.as_deref())
                .execute(&mut *tx)
                .await
        {
            drop(tx);
            return Err(self
                .explain_batch_error(m, &rows, cursor.as_deref(), hi.as_deref(), e)
                .await);
        }
        let done = BatchDone {
            rows: count,
            last: last.and_then(|l| serde_json::from_str(&l).ok()),
            rest: gap_after(began.elapsed()),
        };
        save_in(&mut *tx, &checkpoint(&done)).await?;
        tx.commit().await.map_err(ctx)?;
        // Fold this batch's pages back into the database file now, on turnout's time, so
        // the WAL stays small and no application commit inherits a long checkpoint.
        let _ = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&self.pool)
            .await;
        Ok(done)
    }

    async fn finish_backfill(&self, m: &Migration) -> Result<()> {
        sqlx::query(sql(format!(
            "PRAGMA analysis_limit = 1000; ANALYZE {}",
            quote(&m.shadow)
        )))
        .execute(&self.pool)
        .await
        .map_err(|e| Error::db("analyzing the shadow table", e))?;
        Ok(())
    }

    async fn verify(
        &self,
        m: &Migration,
        req: &VerifyRequest,
        progress: &(dyn Fn(u64) + Sync),
        stop: &(dyn Fn() -> bool + Sync),
    ) -> Result<VerifyReport> {
        let ctx = |e| Error::db(format!("verify of {}", m.table), e);
        let old_key = m.old_key();
        let new_key = m.new_key();
        let old_cols: Vec<&str> = m.before.columns.iter().map(|c| c.name.as_str()).collect();
        let mapped_targets: Vec<&str> = m.forward.iter().map(|mp| mp.target.as_str()).collect();
        // Columns the mapping does not fill (new columns with only a default) are compared
        // on the shadow side by their default, evaluated the same way.
        let live = quote(&m.table);
        let shadow = quote(&m.shadow);
        let range = |cols: &[&str], lo: bool, hi: bool| {
            let mut w = Vec::new();
            if lo {
                w.push(after_cursor(cols, "?1"));
            }
            if hi {
                w.push(at_or_before(cols, "?2"));
            }
            if w.is_empty() {
                "true".to_string()
            } else {
                w.join(" AND ")
            }
        };
        let render_live = |lo: bool, hi: bool| {
            let rows = format!(
                "SELECT {} FROM {live} WHERE {}",
                list(&old_cols),
                range(&old_key, lo, hi)
            );
            let exprs = m
                .forward
                .iter()
                .map(|mp| {
                    format!(
                        "{} AS {}",
                        render_source(mp, &|c| quote(c), &cast),
                        quote(&mp.target)
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            format!("SELECT {exprs} FROM ({rows}) AS t")
        };
        // SQLite's own equality (`IS`, so NULLs match) decides, as the stored values would:
        // 109 and 109.0 are equal, '109' and 109 are not.
        // The live chunk joined to the shadow by key (the shadow's primary key index does the
        // lookups), plus shadow rows in the same key range that no live row explains.
        let on = new_key
            .iter()
            .map(|k| format!("l.{q} = s.{q}", q = quote(k)))
            .collect::<Vec<_>>()
            .join(" AND ");
        let k0 = quote(new_key[0]);
        let same = mapped_targets
            .iter()
            .map(|c| format!("l.{q} IS s.{q}", q = quote(c)))
            .collect::<Vec<_>>()
            .join(" AND ");
        let mismatch = format!("(s.{k0} IS NULL OR NOT ({same}))");
        let orphans = |lo: bool, hi: bool| {
            let match_live = m
                .key
                .iter()
                .map(|k| format!("o.{} = s.{}", quote(&k.old), quote(&k.new)))
                .collect::<Vec<_>>()
                .join(" AND ");
            format!(
                "FROM {shadow} AS s WHERE {} AND NOT EXISTS (SELECT 1 FROM {live} AS o WHERE {match_live})",
                range(&new_key, lo, hi)
            )
        };
        let counts = |lo: bool, hi: bool| {
            format!(
                "SELECT count(*), coalesce(sum(CASE WHEN {mismatch} THEN 1 ELSE 0 END), 0), (SELECT count(*) {}) FROM ({}) AS l LEFT JOIN {shadow} AS s ON {on}",
                orphans(lo, hi),
                render_live(lo, hi)
            )
        };
        let side_image = |side: &str| {
            let mut sorted = mapped_targets.clone();
            sorted.sort();
            let parts = sorted
                .iter()
                .map(|c| format!("{}, {side}.{}", literal(c), quote(c)))
                .collect::<Vec<_>>()
                .join(", ");
            format!("CASE WHEN {side}.{k0} IS NULL THEN NULL ELSE json_object({parts}) END")
        };
        let differing = |lo: bool, hi: bool, limit: u64| {
            format!(
                "SELECT {}, {}, {} FROM ({}) AS l LEFT JOIN {shadow} AS s ON {on} WHERE {mismatch} \
                 UNION ALL SELECT {}, NULL, {} {} LIMIT {limit}",
                key_json(&new_key, "l."),
                side_image("l"),
                side_image("s"),
                render_live(lo, hi),
                key_json(&new_key, "s."),
                side_image("s"),
                orphans(lo, hi)
            )
        };

        // One read transaction: in WAL mode it reads one snapshot from its first SELECT on,
        // while the application keeps writing.
        let mut conn = self.pool.acquire().await.map_err(ctx)?;
        sqlx::query("BEGIN")
            .execute(&mut *conn)
            .await
            .map_err(ctx)?;
        let mut report = VerifyReport::default();
        let mut lo: Option<String> = None;
        let result: Result<()> = async {
            loop {
                if stop() {
                    return Ok(());
                }
                let hi: Option<String> = sqlx::query_scalar(sql(format!(
                    "SELECT {} FROM {live} WHERE {} ORDER BY {} LIMIT 1 OFFSET {}",
                    key_json(&old_key, ""),
                    range(&old_key, lo.is_some(), false),
                    list(&old_key),
                    req.chunk_rows.saturating_sub(1)
                )))
                .bind(lo.as_deref())
                .fetch_optional(&mut *conn)
                .await
                .map_err(ctx)?;
                let (has_lo, has_hi) = (lo.is_some(), hi.is_some());
                let skip = req.sample_rate.is_some_and(|r| rand::random::<f64>() >= r);
                if skip {
                    report.chunks_skipped += 1;
                } else {
                    let c = sqlx::query(sql(counts(has_lo, has_hi)))
                        .bind(lo.as_deref())
                        .bind(hi.as_deref())
                        .fetch_one(&mut *conn)
                        .await
                        .map_err(ctx)?;
                    let (rows, bad): (i64, i64) =
                        (c.get(0), c.get::<i64, _>(1) + c.get::<i64, _>(2));
                    report.rows += rows.max(0) as u64;
                    report.chunks += 1;
                    let room = req.max_diffs.saturating_sub(report.diffs.len() as u64);
                    if bad > 0 && room > 0 {
                        let found = sqlx::query(sql(differing(has_lo, has_hi, room)))
                            .bind(lo.as_deref())
                            .bind(hi.as_deref())
                            .fetch_all(&mut *conn)
                            .await
                            .map_err(ctx)?;
                        for r in found {
                            report.diffs.push(RowDiff {
                                key: r.get(0),
                                expected: r.get(1),
                                shadow: r.get(2),
                            });
                        }
                    }
                }
                progress(report.rows);
                match hi {
                    Some(h) => lo = Some(h),
                    None => return Ok(()),
                }
                if report.diffs.len() as u64 >= req.max_diffs {
                    return Ok(());
                }
            }
        }
        .await;
        let _ = sqlx::query("COMMIT").execute(&mut *conn).await;
        result?;
        Ok(report)
    }

    async fn cutover(
        &self,
        m: &Migration,
        lock_timeout: Duration,
        save: &StateRow,
    ) -> Result<CutoverOutcome> {
        let n = names(m);
        let ctx = |e| Error::db(format!("cutover of {}", m.table), e);
        sqlx::query(sql(format!(
            "PRAGMA analysis_limit = 1000; ANALYZE {}",
            quote(&m.shadow)
        )))
        .execute(&self.pool)
        .await
        .ok();
        let mut conn = self.pool.acquire().await.map_err(ctx)?;
        let ms = lock_timeout.as_millis().max(1);
        sqlx::query(sql(format!("PRAGMA busy_timeout = {ms}")))
            .execute(&mut *conn)
            .await
            .map_err(ctx)?;
        // Views that name the table must keep naming `<table>`, i.e. follow the new table.
        sqlx::query("PRAGMA legacy_alter_table = ON")
            .execute(&mut *conn)
            .await
            .map_err(ctx)?;
        let outcome: Result<CutoverOutcome> = async {
            if let Err(e) = sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await {
                if is_busy(&e) {
                    return Ok(CutoverOutcome::LockTimeout);
                }
                return Err(ctx(e));
            }
            let swapped =
                self.exists("table", &m.old).await? && !self.exists("table", &m.shadow).await?;
            let mut stmts = Vec::new();
            if !swapped {
                stmts.extend(drop_triggers(&forward(m, &n)));
                stmts.push(format!(
                    "ALTER TABLE {} RENAME TO {}",
                    quote(&m.table),
                    quote(&m.old)
                ));
                stmts.push(format!(
                    "ALTER TABLE {} RENAME TO {}",
                    quote(&m.shadow),
                    quote(&m.table)
                ));
            }
            stmts.extend(triggers(&reverse(m, &n)));
            for stmt in stmts {
                if let Err(e) = sqlx::query(sql(stmt)).execute(&mut *conn).await {
                    let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
                    return Err(ctx(e));
                }
            }
            crate::fault::point("cutover.inside");
            if let Err(e) = save_in(&mut *conn, save).await {
                let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
                return Err(e);
            }
            sqlx::query("COMMIT")
                .execute(&mut *conn)
                .await
                .map_err(ctx)?;
            Ok(CutoverOutcome::Swapped)
        }
        .await;
        let _ = sqlx::query("PRAGMA legacy_alter_table = OFF")
            .execute(&mut *conn)
            .await;
        let _ = sqlx::query("PRAGMA busy_timeout = 10000")
            .execute(&mut *conn)
            .await;
        outcome
    }

    async fn cleanup(&self, m: &Migration, keep_old: bool, save: &StateRow) -> Result<()> {
        let ctx = |e| Error::db(format!("cleanup of {}", m.table), e);
        let mut tx = self.begin_immediate().await.map_err(ctx)?;
        let mut stmts = drop_triggers(&reverse(m, &names(m)));
        if !keep_old {
            stmts.push(format!("DROP TABLE IF EXISTS {}", quote(&m.old)));
        }
        for stmt in stmts {
            sqlx::query(sql(stmt))
                .execute(&mut *tx)
                .await
                .map_err(ctx)?;
        }
        crate::fault::point("cleanup.inside");
        save_in(&mut *tx, save).await?;
        tx.commit().await.map_err(ctx)
    }

    async fn rollback(&self, m: &Migration, save: &StateRow) -> Result<()> {
        let n = names(m);
        let ctx = |e| Error::db(format!("rollback of {}", m.table), e);
        let mut conn = self.pool.acquire().await.map_err(ctx)?;
        sqlx::query("PRAGMA legacy_alter_table = ON")
            .execute(&mut *conn)
            .await
            .map_err(ctx)?;
        let result: Result<()> = async {
            sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await.map_err(ctx)?;
            let mut stmts = drop_triggers(&reverse(m, &n));
            stmts.extend(drop_triggers(&forward(m, &n)));
            if self.exists("table", &m.old).await? {
                // After cutover: `<table>` is the new table; put the original back.
                if self.exists("table", &m.shadow).await? {
                    return Err(Error::State(format!(
                        "both {} and {} exist next to {}; turnout cannot tell which is the original. Inspect them and drop the wrong one",
                        m.old, m.shadow, m.table
                    )));
                }
                stmts.push(format!("ALTER TABLE {} RENAME TO {}", quote(&m.table), quote(&m.shadow)));
                stmts.push(format!("ALTER TABLE {} RENAME TO {}", quote(&m.old), quote(&m.table)));
            }
            stmts.push(format!("DROP TABLE IF EXISTS {}", quote(&m.shadow)));
            for stmt in stmts {
                if let Err(e) = sqlx::query(sql(stmt)).execute(&mut *conn).await {
                    let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
                    return Err(ctx(e));
                }
            }
            crate::fault::point("rollback.inside");
            if let Err(e) = save_in(&mut *conn, save).await {
                let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
                return Err(e);
            }
            sqlx::query("COMMIT").execute(&mut *conn).await.map_err(ctx)?;
            Ok(())
        }
        .await;
        let _ = sqlx::query("PRAGMA legacy_alter_table = OFF")
            .execute(&mut *conn)
            .await;
        result
    }

    async fn trigger_failures(&self, _m: &Migration) -> Result<Vec<String>> {
        // SQLite triggers cannot catch errors: a failing mapping fails the application's
        // statement itself, so nothing is ever recorded.
        Ok(Vec::new())
    }

    async fn throttle_value(&self, query: &str) -> Result<f64> {
        let row = sqlx::query(sql(query.to_string()))
            .fetch_one(&self.pool)
            .await
            .map_err(|e| Error::db("running the throttle query", e))?;
        row.try_get::<f64, _>(0)
            .or_else(|_| row.try_get::<i64, _>(0).map(|v| v as f64))
            .map_err(|e| Error::db("reading the throttle query's value", e))
    }
}

impl Sqlite {
    /// Names the key and column of the row that made a batch fail.
    async fn explain_batch_error(
        &self,
        m: &Migration,
        rows: &str,
        cursor: Option<&str>,
        hi: Option<&str>,
        e: sqlx::Error,
    ) -> Error {
        let message = db_message(&e);
        let column = message
            .rsplit_once(&format!("{}.", m.shadow))
            .map(|(_, c)| c.trim().to_string())
            .or_else(|| {
                m.forward
                    .iter()
                    .find(|mp| message.contains(&mp.target))
                    .map(|mp| mp.target.clone())
            });
        let Some(column) = column else {
            return Error::db(format!("backfill of {}", m.table), e);
        };
        let key = match m.forward.iter().find(|mp| mp.target == column) {
            Some(mp) => {
                let expr = render_source(mp, &|c| quote(c), &cast);
                let keys = key_json(&m.old_key(), "");
                sqlx::query_scalar::<_, String>(sql(format!(
                    "SELECT {keys} FROM ({rows}) AS t WHERE ({expr}) IS NULL LIMIT 1"
                )))
                .bind(cursor)
                .bind(hi)
                .fetch_optional(&self.pool)
                .await
                .ok()
                .flatten()
            }
            None => None,
        };
        Error::Data {
            table: m.table.clone(),
            key: key.unwrap_or_else(|| "(in the batch after the saved cursor)".into()),
            column,
            message,
        }
    }
}

fn db_message(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(d) => d.message().to_string(),
        other => other.to_string(),
    }
}

fn is_busy(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => {
            matches!(d.code().as_deref(), Some("5" | "6" | "261" | "517"))
                || d.message().contains("locked")
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn migration() -> Migration {
        let before = crate::schema::fixtures::orders(["INTEGER", "INTEGER", "TEXT"], false);
        let plan = crate::plan::parse(
            "version: 1\nname: m\ntable: orders\nchanges:\n  - add_column: {name: amount, type: NUMERIC, from: amount_cents / 100.0}\n  - drop_column: {name: amount_cents, reverse: 'CAST(round(amount * 100) AS INTEGER)'}\n  - rename_column: {from: note, to: comment}\n",
            "p.yaml",
        )
        .expect("plan");
        Migration::derive(&plan, &before).expect("derive")
    }

    /// The SQL of every phase, reviewed as a snapshot: a change to it is deliberate.
    #[tokio::test]
    async fn the_sql_of_every_phase() {
        let db = Sqlite::connect("sqlite::memory:")
            .await
            .expect("in-memory sqlite");
        let phases = db.preview(&migration());
        let text: String = phases
            .iter()
            .map(|p| format!("-- {}\n{}\n", p.phase, p.statements.join(";\n")))
            .collect();
        insta::assert_snapshot!(text);
    }
}
