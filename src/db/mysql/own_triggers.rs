//! The table's own triggers on MariaDB (a `last_update` stamp, an audit trigger): on the
//! new table after cutover and on the old one after a rollback, under their own names,
//! timing, events, definer, sql_mode and order, and never run by turnout's copying.
//!
//! What makes it hard: `RENAME TABLE` moves a trigger with its table, trigger names are
//! unique per database, and a trigger can be neither renamed nor disabled. A DROP on one
//! table and a CREATE on the other would leave the application's writes without the
//! trigger for a moment (or, the other way round, run it twice).
//!
//! The design: every copy's body is gated, like turnout's own triggers, on the one-row
//! gate table the swap turns (`f` while the old table is live, `r` once the new one is),
//! so that exactly one copy runs for each application write, in every phase:
//! - dual-write: the originals are saved (`_turnout_…_ts`) and replaced on the old
//!   table by copies that run while the gate says `f` (`CREATE OR REPLACE TRIGGER` is
//!   atomic): the application sees no change, and after the swap they stay silent while
//!   the reverse triggers write the old table, so a stamp is never stamped again and an
//!   audit row never written twice.
//! - cutover, just before the swap and like the reverse triggers: copies on the shadow
//!   under temporary names, silent until the gate turns. They are created here and not
//!   at prepare, so the backfill and the forward triggers, which write every row of the
//!   shadow, pay nothing for them; a backfilled row keeps its `last_update`, because
//!   nothing runs on the shadow before the swap.
//! - the swap makes the temporary copies run on the new table. The names then move:
//!   the old table's copies (silent) are dropped, copies under the original names are
//!   created on the new table, silent while a second one-row table (the name flag) says
//!   `t`, the flag turns to `o` in one transaction — from then on the original names run
//!   and the temporary ones not — and the temporary ones are dropped. Each copy reads the
//!   flag under a shared lock, so a transaction never sees both run or neither; each
//!   step is idempotent, so a resume after a crash finishes it. The move costs the
//!   application two brief metadata locks per trigger on the new table (CREATE, DROP)
//!   and one row lock wait, after the swap, outside the cutover's stall.
//! - cleanup (after the reverse triggers are gone) gives each trigger its exact original
//!   definition again, in order, since `CREATE OR REPLACE` puts a trigger last in its
//!   (timing, event) group; then the gate and the saved definitions go.
//! - a rollback after cutover does the mirror image: temporary copies on the old table
//!   (silent until the swap back), the swap back, copies under the original names there,
//!   the flag turned to `b`, the temporaries dropped, the originals restored. A rollback
//!   before cutover only restores the originals (the shadow's copies go with it).
//!
//! MySQL 8 has no `CREATE OR REPLACE TRIGGER`, so there the table's triggers stay
//! refused (catalog.rs).

use sqlx::mysql::MySqlConnection;

use crate::error::Result;

use super::errors::sql_err;
use super::sql::own_triggers::{Copy, OwnTrigger};
use super::sql::{Bound, Gen, lit};
use super::{MySql, SQL_MODE};

impl MySql {
    /// Every trigger of the schema as (name, table).
    async fn schema_triggers(
        conn: &mut MySqlConnection,
        schema: &str,
    ) -> Result<Vec<(String, String)>> {
        let rows = Self::rows(conn, &Bound {
            sql: "SELECT CAST(TRIGGER_NAME AS CHAR), CAST(EVENT_OBJECT_TABLE AS CHAR) FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = ?".into(),
            binds: vec![schema.to_string()],
        })
        .await
        .map_err(sql_err("reading the triggers"))?;
        Ok(rows
            .into_iter()
            .filter_map(
                |r| match (r.first().cloned().flatten(), r.get(1).cloned().flatten()) {
                    (Some(a), Some(b)) => Some((a, b)),
                    _ => None,
                },
            )
            .collect())
    }

    /// The table's own triggers as the catalog shows them now, in order, leaving out
    /// turnout's.
    pub(super) async fn own_triggers_in_catalog(
        conn: &mut MySqlConnection,
        g: &Gen<'_>,
        schema: &str,
    ) -> Result<Vec<OwnTrigger>> {
        let n = &g.n;
        let rows = Self::rows(conn, &Bound {
            sql: "SELECT CAST(TRIGGER_NAME AS CHAR), CAST(ACTION_TIMING AS CHAR), CAST(EVENT_MANIPULATION AS CHAR), CAST(ACTION_STATEMENT AS CHAR), \
                  CAST(SQL_MODE AS CHAR), CAST(DEFINER AS CHAR), CAST(EVENT_OBJECT_TABLE AS CHAR) FROM information_schema.TRIGGERS \
                  WHERE TRIGGER_SCHEMA = ? AND EVENT_OBJECT_TABLE = ? ORDER BY ACTION_TIMING, EVENT_MANIPULATION, ACTION_ORDER"
                .into(),
            binds: vec![schema.to_string(), n.table.clone()],
        })
        .await
        .map_err(sql_err("reading the table's triggers"))?;
        Ok(rows
            .into_iter()
            .filter(|r| r[6].as_deref() == Some(n.table.as_str()))
            .filter_map(|r| {
                let name = r[0].clone()?;
                let turnouts = n.triggers().any(|t| *t == name) || name.starts_with(&n.own_prefix);
                (!turnouts).then_some((name, r))
            })
            .enumerate()
            .map(|(i, (name, r))| OwnTrigger {
                ord: i as i64,
                name,
                timing: r[1].clone().unwrap_or_default(),
                event: r[2].clone().unwrap_or_default(),
                body: r[3].clone().unwrap_or_default(),
                sql_mode: r[4].clone().unwrap_or_default(),
                definer: r[5].clone().unwrap_or_default(),
            })
            .collect())
    }

    /// The definitions saved at dual-write; none when there is no saved table (the
    /// migration never reached dual-write, or its cleanup or rollback is over).
    async fn saved_own_triggers(
        &self,
        conn: &mut MySqlConnection,
        g: &Gen<'_>,
    ) -> Result<Vec<OwnTrigger>> {
        let schema = g.n.schema.clone().unwrap_or_default();
        let has = Self::rows(conn, &Bound {
            sql: "SELECT CAST(TABLE_NAME AS CHAR) FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?".into(),
            binds: vec![schema, g.n.own_saved.clone()],
        })
        .await
        .map_err(sql_err("looking for the saved triggers"))?;
        if !has
            .iter()
            .any(|r| r[0].as_deref() == Some(g.n.own_saved.as_str()))
        {
            return Ok(vec![]);
        }
        let rows = Self::rows(
            conn,
            &Bound {
                sql: g.read_own_triggers(),
                binds: vec![],
            },
        )
        .await
        .map_err(sql_err("reading the saved triggers"))?;
        Ok(rows
            .into_iter()
            .map(|r| OwnTrigger {
                ord: r[0]
                    .as_deref()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_default(),
                name: r[1].clone().unwrap_or_default(),
                timing: r[2].clone().unwrap_or_default(),
                event: r[3].clone().unwrap_or_default(),
                body: r[4].clone().unwrap_or_default(),
                sql_mode: r[5].clone().unwrap_or_default(),
                definer: r[6].clone().unwrap_or_default(),
            })
            .collect())
    }

    /// A trigger's DDL under the sql_mode the original was created with (a trigger
    /// keeps its creator's), retried like any DDL on a busy table.
    async fn own_ddl(
        &self,
        conn: &mut MySqlConnection,
        (sql, table): (&str, &str),
        t: &OwnTrigger,
        context: &str,
    ) -> Result<()> {
        self.exec(
            conn,
            &format!("SET SESSION sql_mode = {}", lit(&t.sql_mode)),
            context,
        )
        .await?;
        let r = self
            .trigger_ddl(conn, table, &[sql.to_string()], context)
            .await;
        self.exec(
            conn,
            &format!("SET SESSION sql_mode = '{SQL_MODE}'"),
            context,
        )
        .await?;
        r
    }

    /// Turns the name flag, its row lock bounded like the DDL around it.
    async fn turn_own_flag(&self, conn: &mut MySqlConnection, g: &Gen<'_>, v: char) -> Result<()> {
        let context = "moving the table's triggers: turning the name flag";
        self.exec(conn, "SET SESSION innodb_lock_wait_timeout = 2", context)
            .await?;
        let r = self.ddl_retry(conn, &g.set_own_flag(v), context).await;
        self.exec(
            conn,
            "SET SESSION innodb_lock_wait_timeout = DEFAULT",
            context,
        )
        .await?;
        r
    }

    /// Dual-write: saves the table's triggers and gates them on the old table being
    /// live. Before the forward triggers, which need the gate these copies read.
    pub(super) async fn gate_own_triggers(
        &self,
        conn: &mut MySqlConnection,
        g: &Gen<'_>,
    ) -> Result<()> {
        let schema = g.n.schema.clone().unwrap_or_default();
        let now = Self::own_triggers_in_catalog(conn, g, &schema).await?;
        if now.is_empty() && self.saved_own_triggers(conn, g).await?.is_empty() {
            return Ok(());
        }
        for sql in g.own_trigger_tables() {
            self.exec(conn, &sql, "dual-write: saving the table's triggers")
                .await?;
        }
        if let Some(sql) = g.save_own_triggers(&now) {
            self.exec(conn, &sql, "dual-write: saving the table's triggers")
                .await?;
        }
        for t in self.saved_own_triggers(conn, g).await? {
            let sql = g.gated_trigger(&t, &t.name, &g.n.table, Copy::Live);
            let on = g.n.q(&g.n.table);
            self.own_ddl(
                conn,
                (&sql, &on),
                &t,
                "dual-write: gating the table's trigger",
            )
            .await?;
        }
        Ok(())
    }

    /// Cutover, before the swap: the shadow's silent copies under temporary names.
    /// False: a metadata lock was not granted in time (the caller's lock_wait_timeout).
    pub(super) async fn copy_own_triggers_to_shadow(
        &self,
        conn: &mut MySqlConnection,
        g: &Gen<'_>,
    ) -> Result<bool> {
        let saved = self.saved_own_triggers(conn, g).await?;
        if saved.is_empty() {
            return Ok(true);
        }
        let schema = g.n.schema.clone().unwrap_or_default();
        let cat = Self::schema_triggers(conn, &schema).await?;
        let context = "cutover: copying the table's triggers to the shadow";
        for t in &saved {
            let name = g.own_trigger_temp_name('n', t.ord);
            if cat.iter().any(|(a, b)| *a == name && *b == g.n.shadow) {
                continue;
            }
            let sql = g.gated_trigger(t, &name, &g.n.shadow, Copy::Temporary);
            self.exec(
                conn,
                &format!("SET SESSION sql_mode = {}", lit(&t.sql_mode)),
                context,
            )
            .await?;
            let r = self
                .trigger_ddl_once(conn, &g.n.q(&g.n.shadow), &[sql], context)
                .await;
            self.exec(
                conn,
                &format!("SET SESSION sql_mode = '{SQL_MODE}'"),
                context,
            )
            .await?;
            if !r? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// After the swap (and again at cleanup, in case a crash interrupted it): the
    /// triggers' original names move from the old table to the new one.
    pub(super) async fn rename_own_triggers(
        &self,
        conn: &mut MySqlConnection,
        g: &Gen<'_>,
    ) -> Result<()> {
        let saved = self.saved_own_triggers(conn, g).await?;
        if saved.is_empty() {
            return Ok(());
        }
        let from = g.n.old.clone();
        let names = NameMove {
            from: &from,
            copy: Copy::Renamed,
            flag: 'o',
            temps: 'n',
            context: "cutover: moving the table's triggers",
        };
        self.move_names_to_live(conn, g, &saved, &names).await
    }

    /// The original names onto the live table, off `from`; then the flag turns to the
    /// copies under them and the temporary copies go. Each step checks the catalog, so
    /// a crash anywhere is finished by running it again.
    async fn move_names_to_live(
        &self,
        conn: &mut MySqlConnection,
        g: &Gen<'_>,
        saved: &[OwnTrigger],
        names: &NameMove<'_>,
    ) -> Result<()> {
        let n = &g.n;
        let cat = Self::schema_triggers(conn, &n.schema.clone().unwrap_or_default()).await?;
        let on = |name: &str, table: &str| cat.iter().any(|(a, b)| a == name && b == table);
        let off: Vec<String> = saved
            .iter()
            .filter(|t| on(&t.name, names.from))
            .map(|t| t.name.clone())
            .collect();
        self.trigger_ddl(
            conn,
            &n.q(names.from),
            &g.drop_triggers(&off),
            names.context,
        )
        .await?;
        let live = n.q(&n.table);
        for t in saved.iter().filter(|t| !on(&t.name, &n.table)) {
            let sql = g.gated_trigger(t, &t.name, &n.table, names.copy);
            self.own_ddl(conn, (&sql, &live), t, names.context).await?;
        }
        self.turn_own_flag(conn, g, names.flag).await?;
        let temps: Vec<String> = saved
            .iter()
            .map(|t| g.own_trigger_temp_name(names.temps, t.ord))
            .filter(|name| on(name, &n.table))
            .collect();
        self.trigger_ddl(conn, &live, &g.drop_triggers(&temps), names.context)
            .await
    }

    /// Each trigger exactly as it was, in order, on `table`: the gate and the flag
    /// can go after this.
    pub(super) async fn restore_own_triggers(
        &self,
        conn: &mut MySqlConnection,
        g: &Gen<'_>,
    ) -> Result<()> {
        for t in self.saved_own_triggers(conn, g).await? {
            let sql = g.original_trigger(&t, &g.n.table);
            let on = g.n.q(&g.n.table);
            self.own_ddl(conn, (&sql, &on), &t, "restoring the table's trigger")
                .await?;
        }
        Ok(())
    }

    /// Rollback after cutover, before the swap back: the old table's silent copies
    /// under temporary names, for each trigger whose name it no longer has.
    pub(super) async fn own_triggers_before_swap_back(
        &self,
        conn: &mut MySqlConnection,
        g: &Gen<'_>,
    ) -> Result<()> {
        let saved = self.saved_own_triggers(conn, g).await?;
        if saved.is_empty() {
            return Ok(());
        }
        let n = &g.n;
        let cat = Self::schema_triggers(conn, &n.schema.clone().unwrap_or_default()).await?;
        for t in saved
            .iter()
            .filter(|t| !cat.iter().any(|(a, b)| *a == t.name && *b == n.old))
        {
            let sql = g.gated_trigger(t, &g.own_trigger_temp_name('o', t.ord), &n.old, Copy::Back);
            let on = n.q(&n.old);
            self.own_ddl(
                conn,
                (&sql, &on),
                t,
                "rollback: copying the table's triggers back",
            )
            .await?;
        }
        Ok(())
    }

    /// Rollback, once the old table is live again (or was never swapped): the original
    /// names back on it, then the original definitions.
    pub(super) async fn own_triggers_after_swap_back(
        &self,
        conn: &mut MySqlConnection,
        g: &Gen<'_>,
    ) -> Result<()> {
        let saved = self.saved_own_triggers(conn, g).await?;
        if saved.is_empty() {
            return Ok(());
        }
        let from = g.n.shadow.clone();
        let names = NameMove {
            from: &from,
            copy: Copy::Returned,
            flag: 'b',
            temps: 'o',
            context: "rollback: moving the table's triggers back",
        };
        self.move_names_to_live(conn, g, &saved, &names).await?;
        self.restore_own_triggers(conn, g).await
    }
}

/// Which move of the original trigger names [`MySql::move_names_to_live`] makes: after the
/// swap (off the old table) or after the swap back (off the shadow).
struct NameMove<'a> {
    from: &'a str,
    copy: Copy,
    flag: char,
    temps: char,
    context: &'a str,
}
