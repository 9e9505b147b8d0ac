//! Cutover, cleanup and rollback, and what the catalog shows of a migration, so that
//! each of them, repeated after a crash, does only what is missing. The swap itself is
//! one `RENAME TABLE` that also turns the gate (the gate is explained in `mod.rs`).
//!
//! The RENAME takes its metadata locks in name order, `_t_new` before `t`, so a second
//! session holds `LOCK TABLES t READ` until the RENAME queues for `t` (see
//! `MySql::sentry`): otherwise a writer holding `t` while it waits for `_t_new` is the
//! deadlock victim, and its statement fails with 1146.

use std::time::Duration;

use sqlx::mysql::MySqlConnection;
use sqlx::{AssertSqlSafe, Connection};

use crate::db::{CutoverOutcome, StateRow};
use crate::error::{Error, Result};
use crate::schema::{Generated, Migration};

use super::MySql;
use super::errors::{is_lock_timeout, sql_err};
use super::sql::{Bound, Gen, quote};

/// Tries of the rollback's swap back (about a minute with the backoff).
const ROLLBACK_SWAP_ATTEMPTS: u32 = 40;

/// What the catalog shows of one migration (used to reconcile after a crash).
#[derive(Debug, Default)]
pub(super) struct Catalog {
    table: bool,
    shadow: bool,
    pub(super) old: bool,
    /// The gate's current value (`f` before cutover, `r` after), if the gate exists.
    pub(super) gate: Option<String>,
    triggers: Vec<(String, String)>,
}

impl Catalog {
    pub(super) fn has_trigger(&self, name: &str) -> bool {
        self.triggers.iter().any(|(t, _)| t == name)
    }
}

impl MySql {
    pub(super) async fn catalog(&self, conn: &mut MySqlConnection, g: &Gen<'_>) -> Result<Catalog> {
        let n = &g.n;
        let schema = n.schema.clone().unwrap_or_default();
        let tables = Self::rows(conn, &Bound {
            sql: "SELECT CAST(TABLE_NAME AS CHAR) FROM information_schema.TABLES WHERE TABLE_SCHEMA = ?".into(),
            binds: vec![schema.clone()],
        })
        .await
        .map_err(sql_err("reading the catalog"))?;
        let names: Vec<String> = tables
            .into_iter()
            .filter_map(|r| r.into_iter().next().flatten())
            .collect();
        let has = |t: &str| names.iter().any(|x| x == t);
        let mut c = Catalog {
            table: has(&n.table),
            shadow: has(&n.shadow),
            old: has(&n.old),
            ..Default::default()
        };
        if has(&n.gate) {
            let b = Bound {
                sql: format!("SELECT CAST(d AS CHAR) FROM {} LIMIT 1", n.q(&n.gate)),
                binds: vec![],
            };
            c.gate = Self::rows(conn, &b)
                .await
                .map_err(sql_err("reading the gate"))?
                .into_iter()
                .next()
                .and_then(|r| r.into_iter().next().flatten());
        }
        let trig = Self::rows(conn, &Bound {
            sql: "SELECT CAST(TRIGGER_NAME AS CHAR), CAST(EVENT_OBJECT_TABLE AS CHAR) FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = ?".into(),
            binds: vec![schema],
        })
        .await
        .map_err(sql_err("reading triggers"))?;
        c.triggers = trig
            .into_iter()
            .filter_map(
                |r| match (r.first().cloned().flatten(), r.get(1).cloned().flatten()) {
                    (Some(a), Some(b)) if n.triggers().any(|t| *t == a) => Some((a, b)),
                    _ => None,
                },
            )
            .collect();
        Ok(c)
    }

    /// Cutover of every table of the plan (one, for a plan of one table) in one
    /// `RENAME TABLE`: all are swapped or none.
    pub(super) async fn swap_tables(
        &self,
        ms: &[Migration],
        lock_timeout: Duration,
        save: &StateRow,
    ) -> Result<CutoverOutcome> {
        let gs: Vec<Gen<'_>> = ms.iter().map(|m| self.sql(m)).collect();
        let mut conn = self.conn().await?;
        let mut cats = Vec::new();
        for g in &gs {
            cats.push(self.catalog(&mut conn, g).await?);
        }
        let swapped = |c: &Catalog| c.old && c.table && c.gate.as_deref() == Some("r");
        if cats.iter().all(swapped) {
            // Swapped already (a crash after the RENAME): the foreign keys' names, the
            // triggers' names and the state may be missing.
            for g in &gs {
                self.name_new_foreign_keys(&mut conn, g).await?;
                self.rename_own_triggers(&mut conn, g).await?;
            }
            Self::save_on(&mut conn, save)
                .await
                .map_err(sql_err("cutover: saving the state"))?;
            return Ok(CutoverOutcome::Swapped);
        }
        for (g, cat) in gs.iter().zip(&cats) {
            let n = &g.n;
            if !(cat.table && cat.shadow && cat.gate.as_deref() == Some("f")) {
                return Err(Error::State(format!(
                    "cutover needs {}, {} and the forward gate; the catalog shows table={} shadow={} gate={:?}",
                    n.table, n.shadow, cat.table, cat.shadow, cat.gate
                )));
            }
            for name in n.forward.iter() {
                if !cat.has_trigger(name) {
                    return Err(Error::State(format!(
                        "the dual-write trigger {name} is missing; run rollback and start again"
                    )));
                }
            }
            self.exec(
                &mut conn,
                &format!("ANALYZE TABLE {}", n.q(&n.shadow)),
                "cutover: analyzing the shadow",
            )
            .await?;
        }
        let secs = lock_timeout.as_secs().max(1);
        self.exec(
            &mut conn,
            &format!("SET SESSION lock_wait_timeout = {secs}, innodb_lock_wait_timeout = {secs}"),
            "cutover",
        )
        .await?;
        let outcome = async {
            for ((m, g), cat) in ms.iter().zip(&gs).zip(&cats) {
                if !self.ready_to_swap(&mut conn, m, g, cat).await? {
                    return Ok(CutoverOutcome::LockTimeout);
                }
            }
            crate::fault::point("mysql.cutover.before_swap");
            let all: Vec<&Gen<'_>> = gs.iter().collect();
            let context = "cutover: swapping the tables";
            if !self
                .rename_behind_sentry(
                    &mut conn,
                    &all,
                    &Gen::swap_all(&gs),
                    (secs, lock_timeout),
                    context,
                )
                .await?
            {
                return Ok(CutoverOutcome::LockTimeout);
            }
            crate::fault::point("mysql.cutover.after_swap");
            crate::fault::point("cutover.inside");
            for g in &gs {
                self.name_new_foreign_keys(&mut conn, g).await?;
                self.rename_own_triggers(&mut conn, g).await?;
            }
            Ok(CutoverOutcome::Swapped)
        }
        .await;
        let _ = sqlx::raw_sql(
            "SET SESSION lock_wait_timeout = DEFAULT, innodb_lock_wait_timeout = DEFAULT",
        )
        .execute(&mut *conn)
        .await;
        if let Ok(CutoverOutcome::Swapped) = outcome {
            Self::save_on(&mut conn, save)
                .await
                .map_err(sql_err("cutover: saving the state"))?;
        }
        outcome
    }

    /// Everything one table needs before the swap, each step bounded like the swap:
    /// false when a lock was not granted in time.
    async fn ready_to_swap(
        &self,
        conn: &mut MySqlConnection,
        m: &Migration,
        g: &Gen<'_>,
        cat: &Catalog,
    ) -> Result<bool> {
        let n = &g.n;
        // Reverse triggers, inert until the gate turns.
        let missing: Vec<String> = n
            .reverse
            .iter()
            .zip(g.reverse_triggers())
            .filter(|(name, _)| !cat.has_trigger(name))
            .map(|(_, sql)| sql)
            .collect();
        let context = "cutover: creating the reverse triggers";
        if !self
            .trigger_ddl_once(conn, &n.q(&n.shadow), &missing, context)
            .await?
        {
            return Ok(false);
        }
        // The table's own triggers, silent until the gate turns (own_triggers.rs).
        if !self.copy_own_triggers_to_shadow(conn, g).await? {
            return Ok(false);
        }
        // New ids continue above every id the live table ever handed out, not only
        // above the ones still present (InnoDB keeps the larger of this and max+1).
        if m.before
            .columns
            .iter()
            .any(|c| matches!(c.generated, Some(Generated::AutoIncrement)))
        {
            if !self.mariadb {
                let _ = sqlx::raw_sql("SET SESSION information_schema_stats_expiry = 0")
                    .execute(&mut *conn)
                    .await;
            }
            let r = Self::rows(conn, &Bound {
                sql: "SELECT CAST(AUTO_INCREMENT AS CHAR), CAST(TABLE_NAME AS CHAR) FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?".into(),
                binds: vec![n.schema.clone().unwrap_or_default(), n.table.clone()],
            })
            .await
            .map_err(sql_err("cutover: reading AUTO_INCREMENT"))?;
            let next = r
                .into_iter()
                .find(|r| r[1].as_deref() == Some(n.table.as_str()))
                .and_then(|r| r[0].clone());
            if let Some(next) = next.and_then(|s| s.parse::<u64>().ok()) {
                let sql = format!("ALTER TABLE {} AUTO_INCREMENT = {next}", n.q(&n.shadow));
                match sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut *conn).await {
                    Err(e) if is_lock_timeout(&e) => return Ok(false),
                    r => {
                        r.map_err(sql_err("cutover: carrying AUTO_INCREMENT over"))?;
                    }
                }
            }
        }
        // A self-reference of the shadow points at the shadow from here on (the copy
        // is complete), so each table references itself through the swap; likewise a
        // reference to another table of the plan points at that table's shadow.
        if !self.point_shadow_at_itself(conn, g, false).await? {
            return Ok(false);
        }
        if !self.point_shadow_at_plan_parents(conn, g).await? {
            return Ok(false);
        }
        // The children reference the shadow from here on, so the swap carries their
        // references to the new table (foreign_keys.rs says why every moment is right).
        self.repoint_children(conn, g, &[n.table.as_str()], &n.shadow, false)
            .await
    }

    pub(super) async fn clean_up_after_cutover(
        &self,
        m: &Migration,
        keep_old: bool,
        save: &StateRow,
    ) -> Result<()> {
        let g = self.sql(m);
        let n = &g.n;
        let mut conn = self.conn().await?;
        // Reverse triggers first: after that nothing writes the old table.
        let context = "cleanup: dropping the triggers";
        self.drop_turnout_triggers(&mut conn, &g, &n.reverse, context)
            .await?;
        self.drop_turnout_triggers(&mut conn, &g, &n.forward, context)
            .await?;
        crate::fault::point("cleanup.inside");
        // Normally nothing to do: only an interrupted rollback leaves a child on the old
        // table, and dropping it would then fail.
        self.repoint_children(
            &mut conn,
            &g,
            &[n.old.as_str(), n.shadow.as_str()],
            &n.table,
            true,
        )
        .await?;
        self.name_new_foreign_keys(&mut conn, &g).await?;
        // Before the gate goes: every copy reads it.
        self.rename_own_triggers(&mut conn, &g).await?;
        self.restore_own_triggers(&mut conn, &g).await?;
        if !keep_old {
            self.drop_plan_table(&mut conn, &g, &n.old, "cleanup: dropping the old table")
                .await?;
        }
        self.ddl_retry(&mut conn, &g.drop_gates(), "cleanup: dropping the gate")
            .await?;
        Self::save_on(&mut conn, save)
            .await
            .map_err(sql_err("cleanup: saving the state"))
    }

    /// Rollback of every table of the plan (one, for a plan of one table): after cutover
    /// one `RENAME TABLE` swaps them all back, then each is put back as before prepare.
    pub(super) async fn roll_back_tables(&self, ms: &[Migration], save: &StateRow) -> Result<()> {
        let gs: Vec<Gen<'_>> = ms.iter().map(|m| self.sql(m)).collect();
        let mut conn = self.conn().await?;
        let mut back = Vec::new();
        for g in &gs {
            let n = &g.n;
            let cat = self.catalog(&mut conn, g).await?;
            if !cat.old {
                continue;
            }
            if cat.gate.as_deref() != Some("r") {
                return Err(Error::State(format!(
                    "{} exists but the migration's gate is gone: cleanup has started, so the old table may be behind; rollback is refused",
                    n.old
                )));
            }
            for name in n.reverse.iter() {
                if !cat.has_trigger(name) {
                    return Err(Error::State(format!(
                        "the reverse trigger {name} is gone (cleanup has started): {} may miss recent writes; rollback is refused",
                        n.old
                    )));
                }
            }
            back.push(g);
        }
        if !back.is_empty() {
            for g in &back {
                let n = &g.n;
                self.own_triggers_before_swap_back(&mut conn, g).await?;
                // Children follow the old table through the swap back.
                self.repoint_children(&mut conn, g, &[n.table.as_str()], &n.old, true)
                    .await?;
            }
            // The mirror image of cutover: the old tables take the names back and the
            // gates turn to forward in the same atomic statement, so no write falls
            // between; behind the sentry like the swap, or an application transaction
            // that holds one of the tables and wants another would be the victim of a
            // deadlock with the RENAME.
            let context = "rollback: swapping the tables back";
            let wait = Duration::from_millis(50);
            self.exec(&mut conn, "SET SESSION lock_wait_timeout = 2", context)
                .await?;
            let mut delay = Duration::from_millis(50);
            for attempt in 1.. {
                if self
                    .rename_behind_sentry(
                        &mut conn,
                        &back,
                        &Gen::swap_back_all(&back),
                        (2, wait),
                        context,
                    )
                    .await?
                {
                    break;
                }
                if attempt == ROLLBACK_SWAP_ATTEMPTS {
                    return Err(Error::State(format!(
                        "{context}: the tables were never free for the swap in {ROLLBACK_SWAP_ATTEMPTS} tries; run the rollback again when they are quieter"
                    )));
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            self.exec(
                &mut conn,
                "SET SESSION lock_wait_timeout = DEFAULT",
                context,
            )
            .await?;
            crate::fault::point("mysql.rollback.after_swap_back");
        }
        // Every table's triggers before any shadow: a forward trigger writes the shadows
        // of the plan's tables that reference its table.
        for g in &gs {
            self.stop_dual_write(&mut conn, g).await?;
        }
        for g in &gs {
            self.drop_shadow(&mut conn, g).await?;
        }
        Self::save_on(&mut conn, save)
            .await
            .map_err(sql_err("rollback: saving the state"))
    }

    /// One table of a rollback, its old table live again (or never swapped): no trigger
    /// of turnout's left on it, no child referencing the shadow.
    async fn stop_dual_write(&self, conn: &mut MySqlConnection, g: &Gen<'_>) -> Result<()> {
        let n = &g.n;
        // Before the gate goes: every copy reads it.
        self.own_triggers_after_swap_back(conn, g).await?;
        // While the forward triggers still keep the shadow exact: a child that a failed
        // cutover left on the shadow (or an interrupted rollback on the old table) goes
        // back to the live table.
        self.repoint_children(
            conn,
            g,
            &[n.shadow.as_str(), n.old.as_str()],
            &n.table,
            true,
        )
        .await?;
        // Forward triggers first, so application writes stop touching the shadow before
        // it is dropped (a trigger writing a missing table would fail the write).
        let context = "rollback: dropping the triggers";
        self.drop_turnout_triggers(conn, g, &n.forward, context)
            .await?;
        self.drop_turnout_triggers(conn, g, &n.reverse, context)
            .await?;
        crate::fault::point("rollback.inside");
        Ok(())
    }

    /// The last of one table's rollback: its shadow and gate go, and the constraints the
    /// shadow held free their names.
    async fn drop_shadow(&self, conn: &mut MySqlConnection, g: &Gen<'_>) -> Result<()> {
        let n = &g.n;
        self.drop_plan_table(conn, g, &n.shadow, "rollback: dropping the shadow")
            .await?;
        // The shadow's constraints are gone with it: the names are free again.
        self.restore_old_foreign_keys(conn, g).await?;
        self.ddl_retry(conn, &g.drop_gates(), "rollback: dropping the gate")
            .await
    }

    /// Drops `name` (a shadow or an old table), which only the same kind of table of
    /// the plan's other tables may still reference, as the tables they stand for do: those
    /// constraints go first, since the other table may still be written until its own
    /// turn (by the forward or reverse triggers) and a constraint to a missing table would
    /// fail every write. Any other reference is a child the swap steps left behind, and
    /// the drop is refused rather than leave it dangling.
    async fn drop_plan_table(
        &self,
        conn: &mut MySqlConnection,
        g: &Gen<'_>,
        name: &str,
        context: &str,
    ) -> Result<()> {
        let schema = g.n.schema.clone().unwrap_or_default();
        let kin: Vec<String> =
            g.m.together
                .iter()
                .flat_map(|t| [crate::schema::shadow_name(t), crate::schema::old_name(t)])
                .collect();
        let fks = Self::foreign_keys(conn, &schema).await?;
        if let Some(fk) = fks
            .iter()
            .find(|fk| fk.ref_table == name && fk.table != name && !kin.contains(&fk.table))
        {
            return Err(Error::State(format!(
                "{context}: {name} is still referenced by foreign key {} of {}; run the command again to re-point it first",
                fk.name, fk.table
            )));
        }
        for fk in fks
            .iter()
            .filter(|fk| fk.ref_table == name && kin.contains(&fk.table))
        {
            let sql = format!(
                "ALTER TABLE {} DROP FOREIGN KEY {}, ALGORITHM=INPLACE",
                g.n.q(&fk.table),
                quote(&fk.name)
            );
            self.ddl_retry(conn, &sql, context).await?;
        }
        self.ddl_retry(
            conn,
            &format!("DROP TABLE IF EXISTS {}", g.n.q(name)),
            context,
        )
        .await
    }

    /// Drops those of turnout's `names` the catalog shows, wherever they are, each under
    /// its table's lock (see [`MySql::trigger_ddl`]); repeated after a crash, it drops
    /// what is left.
    async fn drop_turnout_triggers(
        &self,
        conn: &mut MySqlConnection,
        g: &Gen<'_>,
        names: &[String],
        context: &str,
    ) -> Result<()> {
        let cat = self.catalog(conn, g).await?;
        let mut by_table: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
        for (name, table) in &cat.triggers {
            if names.contains(name) {
                by_table.entry(table).or_default().push(name.clone());
            }
        }
        for (table, names) in by_table {
            self.trigger_ddl(conn, &g.n.q(table), &g.drop_triggers(&names), context)
                .await?;
        }
        Ok(())
    }

    pub(super) async fn recorded_failures(&self, m: &Migration) -> Result<Vec<String>> {
        let mut conn = self.conn().await?;
        let r = Self::rows(&mut conn, &Bound {
            sql: "SELECT CONCAT(direction, ' ', COALESCE(key_text, '?'), ': ', COALESCE(error, '?')) FROM turnout_failures WHERE migration = ? ORDER BY id".into(),
            binds: vec![m.name.clone()],
        })
        .await
        .map_err(sql_err("reading trigger failures"))?;
        Ok(r.into_iter()
            .filter_map(|r| r.into_iter().next().flatten())
            .collect())
    }

    /// Runs `rename` (the swap, or the swap back, of `gs`) while a second session holds
    /// every live table (see [`MySql::sentry`]). False: the sentry's lock was not granted,
    /// a reader is left behind it, or the RENAME timed out; nothing was renamed.
    async fn rename_behind_sentry(
        &self,
        conn: &mut MySqlConnection,
        gs: &[&Gen<'_>],
        rename: &str,
        (secs, wait): (u64, Duration),
        context: &str,
    ) -> Result<bool> {
        let Some(mut sentry) = self.sentry(gs, secs, wait).await? else {
            return Ok(false);
        };
        let swapper: u64 = sqlx::query_scalar("SELECT CONNECTION_ID()")
            .fetch_one(&mut *conn)
            .await
            .map_err(sql_err("naming the swapping session"))?;
        for g in gs {
            if self.readers_left(&mut sentry, g, swapper).await? {
                let _ = sqlx::raw_sql("UNLOCK TABLES").execute(&mut sentry).await;
                let _ = sentry.close().await;
                return Ok(false);
            }
        }
        let over = std::sync::atomic::AtomicBool::new(false);
        // The RENAME itself is bounded by lock_wait_timeout only: MariaDB 10.11 cut
        // short by max_statement_time mid-RENAME leaves the tables' trigger files empty
        // (every later write to the table fails). The look-out keeps it from waiting.
        let (renamed, _) = tokio::join!(
            async {
                let r = sqlx::raw_sql(AssertSqlSafe(rename.to_string()))
                    .execute(&mut *conn)
                    .await;
                over.store(true, std::sync::atomic::Ordering::SeqCst);
                r
            },
            Self::release_sentry(&mut sentry, swapper, &over),
        );
        let _ = sentry.close().await;
        match renamed {
            Err(e) if is_lock_timeout(&e) => Ok(false),
            r => r.map(|_| true).map_err(sql_err(context.to_string())),
        }
    }

    /// A session holding `LOCK TABLES <table> READ` while the swap queues behind it, so
    /// that the swap takes `<table>` before any writer does. Without it the RENAME locks
    /// `_<table>_new` first (its name sorts first), a writer that already holds
    /// `<table>` and waits for `_<table>_new` (its trigger writes there) is chosen as
    /// the deadlock victim, and MariaDB's retry of its statement fails with 1146: 3-8
    /// statements per swap with eight writers, none with the sentry (measured on
    /// MariaDB 10.11). None: the lock was not granted.
    ///
    /// `READ`, not `WRITE`: a write lock also takes the tables the triggers write
    /// (`_<table>_new`, the gate), so the RENAME would queue at its first table, the
    /// sentry would let go, and writers would take the live tables while the RENAME
    /// still took the others: the very cycle it is there to prevent (a four-table plan
    /// lost a parent delete to 1213 in each of two runs). But a `READ` sentry is
    /// granted beside a transaction that has only read the table, and when the look-out
    /// could not see that reader (no metadata_lock_info, or younger than its grace) the
    /// RENAME queued behind it for its whole-second `lock_wait_timeout` with every
    /// writer behind it (1,047 ms in the benchmark's blocker run). So on MariaDB the
    /// sentry first probes with `WRITE ... NOWAIT` (asked again in quick succession),
    /// granted only when no session holds the tables at all, readers included, lets go,
    /// and takes `READ` at once: for one table waiting at most `wait` for it, as before
    /// (NOWAIT there too, with the shadow's AUTO_INCREMENT asked NOWAIT as well, failed
    /// a busy table's attempts so often that the retries stalled writes for up to
    /// 567 ms in the three-child-table stall test, against 19–38 ms like this); for
    /// several, NOWAIT, since a request that waited holding some tables could close a
    /// cycle with an application transaction that holds one and wants another, where
    /// MariaDB would end the application's. MySQL 8 has no NOWAIT here: a `READ`
    /// bounded by `lock_wait_timeout`, and [`MySql::readers_left`] after.
    async fn sentry(
        &self,
        gs: &[&Gen<'_>],
        secs: u64,
        wait: Duration,
    ) -> Result<Option<MySqlConnection>> {
        let Some(g) = gs.first() else {
            return Ok(None);
        };
        let mut sentry = self.conn().await?.detach();
        self.exec(
            &mut sentry,
            &format!("SET SESSION lock_wait_timeout = {secs}"),
            "cutover",
        )
        .await?;
        let lock = |mode: &str| {
            let tables: Vec<String> = gs
                .iter()
                .map(|g| format!("{} {mode}", g.n.q(&g.n.table)))
                .collect();
            format!("LOCK TABLES {}", tables.join(", "))
        };
        let context = "cutover: locking the tables for the swap";
        if self.mariadb {
            // Free of readers a moment ago (the probe), then held.
            let probe = format!("{} NOWAIT", lock("WRITE"));
            if !self.nowait_retry(&mut sentry, &probe, context).await? {
                let _ = sentry.close().await;
                return Ok(None);
            }
            self.exec(&mut sentry, "UNLOCK TABLES", context).await?;
        }
        if self.mariadb && gs.len() > 1 {
            let held = format!("{} NOWAIT", lock("READ"));
            if self.nowait_retry(&mut sentry, &held, context).await? {
                return Ok(Some(sentry));
            }
            let _ = sentry.close().await;
            return Ok(None);
        }
        match Self::bounded(&mut sentry, &g.statement_bound(wait), &lock("READ")).await {
            Ok(_) => Ok(Some(sentry)),
            Err(e) if is_lock_timeout(&e) => {
                let _ = sentry.close().await;
                Ok(None)
            }
            Err(e) => Err(Error::db(context, e)),
        }
    }

    /// True when a reader the look-out did not see (its transaction younger than the
    /// grace) still holds the table behind the sentry; the attempt then gives way rather
    /// than RENAME behind it. Without metadata_lock_info the server cannot say: false.
    async fn readers_left(
        &self,
        sentry: &mut MySqlConnection,
        g: &Gen<'_>,
        swapper: u64,
    ) -> Result<bool> {
        let known: i64 = sqlx::query_scalar(Gen::lock_info_available())
            .fetch_one(&mut *sentry)
            .await
            .map_err(sql_err(
                "cutover: asking whether metadata_lock_info is installed",
            ))?;
        if known == 0 {
            return Ok(false);
        }
        let left: String = sqlx::query_scalar(AssertSqlSafe(g.readers_besides(swapper)))
            .fetch_one(&mut *sentry)
            .await
            .map_err(sql_err("cutover: looking for readers behind the sentry"))?;
        Ok(left != "0")
    }

    /// Runs `stmt` under the session bound (sql/cutover.rs), lifted again after.
    async fn bounded(
        conn: &mut MySqlConnection,
        bound: &Option<(String, String)>,
        stmt: &str,
    ) -> std::result::Result<(), sqlx::Error> {
        if let Some((set, _)) = bound {
            sqlx::raw_sql(AssertSqlSafe(set.clone()))
                .execute(&mut *conn)
                .await?;
        }
        let r = sqlx::raw_sql(AssertSqlSafe(stmt.to_string()))
            .execute(&mut *conn)
            .await
            .map(|_| ());
        if let Some((_, lift)) = bound {
            sqlx::raw_sql(AssertSqlSafe(lift.clone()))
                .execute(&mut *conn)
                .await?;
        }
        r
    }

    /// Unlocks once the swap waits for the table (or after a second regardless: the
    /// swap is then waiting for something else, and goes on without the sentry's help;
    /// or at once when the swap has already ended, in error).
    async fn release_sentry(
        sentry: &mut MySqlConnection,
        swapper: u64,
        over: &std::sync::atomic::AtomicBool,
    ) {
        for _ in 0..500 {
            if over.load(std::sync::atomic::Ordering::SeqCst) {
                break;
            }
            let state: Option<String> = sqlx::query_scalar(
                "SELECT CAST(STATE AS CHAR) FROM information_schema.PROCESSLIST WHERE ID = ?",
            )
            .bind(swapper)
            .fetch_optional(&mut *sentry)
            .await
            .ok()
            .flatten()
            .flatten();
            if state.is_some_and(|s| s.contains("metadata lock")) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let _ = sqlx::raw_sql("UNLOCK TABLES").execute(&mut *sentry).await;
    }
}
