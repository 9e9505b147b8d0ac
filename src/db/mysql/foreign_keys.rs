//! Foreign keys in both directions, carried through the swap. Every step is one atomic
//! `ALTER TABLE … DROP FOREIGN KEY a, ADD CONSTRAINT b …` run with
//! `foreign_key_checks = 0` in turnout's session only, which MariaDB and MySQL do
//! INPLACE: no table is copied and no row re-checked, and each statement holds the
//! child's metadata lock for milliseconds. Each step reads the catalog and does only what
//! is missing, so a crash between two of them is repaired by running again.
//!
//! # From this table to others (`t.parent_id → parent`)
//! The shadow is created with each of them under `_tn_<name>` (names are unique per
//! database), with the same actions. So a parent delete that cascades (or sets NULL)
//! into the live table also cascades into the shadow in the same statement: InnoDB's
//! cascades fire no triggers, so turnout's triggers could not carry them, but the
//! constraint does. After the swap the old table's constraint moves to `_to_<name>`
//! and the new table's to `<name>`; both tables keep one constraint each at every
//! moment, so cascades keep reaching the old table (which a rollback returns to) too.
//! At rollback the old table takes `<name>` back once the shadow is dropped.
//!
//! # From other tables to this one (`child.t_id → t`)
//! A reference follows its parent through `RENAME TABLE` (tested on MariaDB 10.11:
//! `RENAME TABLE t TO _t_old` leaves the children pointing at `_t_old`). So just before
//! the swap each child is pointed at the shadow (through `_tc_<name>`, since a
//! constraint cannot be dropped and added under one name in one statement), and the swap
//! itself then carries the reference to the new `t`; a rollback points the children at
//! `_t_old` before it swaps back. What a child insert or a parent delete sees between
//! the statements:
//! - children pointing at the shadow, before the swap: the backfill is complete and the
//!   forward triggers write the shadow in the application's own transaction, so the
//!   shadow holds exactly the live rows. A child insert checks its parent there and finds
//!   it exactly when the live table has it. A parent delete on the live table deletes
//!   the shadow's row in its trigger, and *that* delete cascades into (or is refused by)
//!   the children; a key change moves the shadow's row with an UPDATE, so ON UPDATE
//!   acts. Children not yet re-pointed still reference the live table, whose own
//!   cascades reach them: each child sees exactly one parent at every moment.
//! - after the swap the children reference the new table directly; the reverse
//!   triggers keep `_t_old` whole without touching any child.
//! - at rollback, children pointing at `_t_old` before the swap back: the reverse
//!   triggers keep it exact, and their deletes and key moves cascade into the children.
//!
//! # A table referencing itself (`t.manager_id → t`)
//! While the shadow is filled it references the *live* table, under `_tc_<name>` (the
//! shadow is then one more child of `t`), with the same actions; just before the swap
//! it is pointed at itself (`_tn_<name>`), and from the swap on each table references
//! itself: `RENAME TABLE` carries the old table's self-reference to `_t_old` and the
//! shadow's to the new `t`, which then takes `<name>` as above. Why the live table and
//! not the shadow from the start, and not "no constraint until the copy is done":
//! - a self-reference on the shadow from the start would refuse rows whose parent is
//!   not copied yet. For turnout's copy, `foreign_key_checks = 0` in its own session
//!   would do, but the application's writes reach the shadow through the triggers, in
//!   the application's session: an insert of a row whose manager the backfill has not
//!   copied yet (any row at the start of the backfill) would fail the application's
//!   statement. The live table holds every parent the application can name (its own
//!   constraint just checked it), so referencing it never refuses a copy or a trigger.
//!   And with checks relaxed for the copy alone, a row copied before its parent keeps
//!   that parent's id even when the parent is deleted before it is copied: the live
//!   table sets the row's manager NULL, but in the shadow there was no parent row for a
//!   cascade to act from (seen in this module's test: verify found the row differing).
//! - no constraint until after the copy loses the cascades: InnoDB's cascades fire no
//!   triggers, so a live delete of a manager that cascades (or sets NULL) into its
//!   reports would reach the shadow's copy of the manager only, and leave its reports
//!   stale. Referencing the live table, the shadow's copies of the reports are cascaded
//!   by the same statement, exactly as the live ones (and a RESTRICT that refuses on the
//!   shadow refuses on the live table too, which holds the same rows).
//! - pointing it at the shadow needs the shadow to hold every parent: after the
//!   backfill, when it holds exactly the live rows, and the forward triggers keep it so
//!   in the application's own transactions; from then on a delete on the live table
//!   deletes the shadow's row in its trigger, and that delete cascades within the shadow.
//!   The move is one INPLACE statement with `foreign_key_checks = 0` that checks no row,
//!   and no row can lack its parent: the shadow's rows equal the live table's, whose own
//!   constraint holds. A rollback needs nothing more: the old table's self-reference
//!   never left it, and the new table's goes with the dropped shadow.
//!
//! A constraint that crosses databases or whose name is too long for a prefix is refused.

use sqlx::mysql::MySqlConnection;

use crate::error::Result;

use super::MySql;
use super::errors::{is_lock_timeout, sql_err};
use super::sql::foreign_keys::{
    CHILD_PREFIX, ForeignKey, OLD_PREFIX, SHADOW_PREFIX, add, original, replace,
};
use super::sql::{Bound, Gen, quote};

impl MySql {
    /// Every foreign key of the tables of `schema`, columns in order.
    pub(super) async fn foreign_keys(
        conn: &mut MySqlConnection,
        schema: &str,
    ) -> Result<Vec<ForeignKey>> {
        let rows = Self::rows(conn, &Bound {
            sql: "SELECT CAST(r.CONSTRAINT_NAME AS CHAR), CAST(r.TABLE_NAME AS CHAR), CAST(r.REFERENCED_TABLE_NAME AS CHAR), \
                  CAST(r.UPDATE_RULE AS CHAR), CAST(r.DELETE_RULE AS CHAR), CAST(k.COLUMN_NAME AS CHAR), CAST(k.REFERENCED_COLUMN_NAME AS CHAR) \
                  FROM information_schema.REFERENTIAL_CONSTRAINTS r JOIN information_schema.KEY_COLUMN_USAGE k \
                  ON k.CONSTRAINT_SCHEMA = r.CONSTRAINT_SCHEMA AND k.CONSTRAINT_NAME = r.CONSTRAINT_NAME AND k.TABLE_NAME = r.TABLE_NAME \
                  AND k.REFERENCED_TABLE_NAME IS NOT NULL \
                  WHERE r.CONSTRAINT_SCHEMA = ? ORDER BY r.CONSTRAINT_NAME, k.ORDINAL_POSITION"
                .into(),
            binds: vec![schema.to_string()],
        })
        .await
        .map_err(sql_err("reading foreign keys"))?;
        let mut out: Vec<ForeignKey> = Vec::new();
        for r in rows {
            let get = |i: usize| r.get(i).cloned().flatten().unwrap_or_default();
            let (name, table) = (get(0), get(1));
            match out.last_mut() {
                Some(fk) if fk.name == name && fk.table == table => {
                    fk.columns.push(get(5));
                    fk.ref_columns.push(get(6));
                }
                _ => out.push(ForeignKey {
                    name,
                    table,
                    ref_table: get(2),
                    on_update: get(3),
                    on_delete: get(4),
                    columns: vec![get(5)],
                    ref_columns: vec![get(6)],
                }),
            }
        }
        Ok(out)
    }

    /// The live table's foreign keys to other tables, for the shadow (prepare).
    pub(super) async fn outgoing_foreign_keys(
        &self,
        conn: &mut MySqlConnection,
        g: &Gen<'_>,
    ) -> Result<Vec<ForeignKey>> {
        let schema = g.n.schema.clone().unwrap_or_default();
        Ok(Self::foreign_keys(conn, &schema)
            .await?
            .into_iter()
            .filter(|fk| fk.table == g.n.table)
            .collect())
    }

    /// The foreign keys from the plan's other tables to this one: the forward triggers
    /// carry their cascades to those tables' shadows until cutover.
    pub(super) async fn plan_children(
        &self,
        conn: &mut MySqlConnection,
        g: &Gen<'_>,
    ) -> Result<Vec<ForeignKey>> {
        let schema = g.n.schema.clone().unwrap_or_default();
        Ok(Self::foreign_keys(conn, &schema)
            .await?
            .into_iter()
            .filter(|fk| fk.ref_table == g.n.table && g.m.together.contains(&fk.table))
            .collect())
    }

    /// Just before the swap, every table's copy done and the forward triggers keeping
    /// each shadow exact: the shadow takes its foreign keys to the plan's other tables,
    /// referencing their shadows, so that the swap carries each to the new parent (and
    /// the old tables keep theirs to each other). `false`: the lock was not granted.
    pub(super) async fn point_shadow_at_plan_parents(
        &self,
        conn: &mut MySqlConnection,
        g: &Gen<'_>,
    ) -> Result<bool> {
        let n = &g.n;
        let schema = n.schema.clone().unwrap_or_default();
        let fks = Self::foreign_keys(conn, &schema).await?;
        let context = "cutover: giving the shadow its foreign keys to the plan's tables";
        for fk in fks.iter().filter(|fk| {
            fk.table == n.table && fk.ref_table != n.table && g.m.together.contains(&fk.ref_table)
        }) {
            let name = format!("{SHADOW_PREFIX}{}", fk.original());
            if fks.iter().any(|f| f.table == n.shadow && f.name == name) {
                continue;
            }
            let sql = add(
                &n.q(&n.shadow),
                fk,
                &name,
                &n.q(&crate::schema::shadow_name(&fk.ref_table)),
            );
            self.exec(conn, "SET SESSION foreign_key_checks = 0", context)
                .await?;
            let r = self.nowait_retry(conn, &sql, context).await;
            self.exec(conn, "SET SESSION foreign_key_checks = 1", context)
                .await?;
            if !r? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Just before the swap, once the backfill is complete and the forward triggers keep
    /// the shadow exact: the shadow's self-reference, which referenced the live table
    /// while the shadow was filled (`_tc_<name>`), is pointed at the shadow itself under
    /// `_tn_<name>` (module documentation). `false`: the lock was not granted (not patient).
    pub(super) async fn point_shadow_at_itself(
        &self,
        conn: &mut MySqlConnection,
        g: &Gen<'_>,
        patient: bool,
    ) -> Result<bool> {
        let n = &g.n;
        let schema = n.schema.clone().unwrap_or_default();
        let fks = Self::foreign_keys(conn, &schema).await?;
        for fk in fks.iter().filter(|fk| {
            fk.table == n.shadow && fk.ref_table == n.table && fk.name.starts_with(CHILD_PREFIX)
        }) {
            let sql = replace(
                &n.q(&n.shadow),
                &fk.name,
                fk,
                &format!("{SHADOW_PREFIX}{}", fk.original()),
                &n.q(&n.shadow),
            );
            if !self
                .move_constraint(
                    conn,
                    (&schema, &n.shadow),
                    &sql,
                    patient,
                    "cutover: pointing the shadow's self-reference at the shadow",
                )
                .await?
            {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Runs one constraint move on `table` with `foreign_key_checks = 0` (see the
    /// module doc). `patient`: retried on a metadata-lock timeout (cleanup, rollback,
    /// after the swap); otherwise one attempt, and `false` when the lock was not granted.
    ///
    /// MariaDB renames an index it generated for a foreign key after the constraint
    /// that replaces it (metadata only: the index keeps its id, nothing is rebuilt), so
    /// a renamed index takes its name back at once (a crash in between leaves it under
    /// the constraint's name).
    async fn move_constraint(
        &self,
        conn: &mut MySqlConnection,
        (schema, table): (&str, &str),
        sql: &str,
        patient: bool,
        context: &str,
    ) -> Result<bool> {
        let before = Self::index_names(conn, schema, table).await?;
        // The child's statement locks its parent too: never wait holding one of them
        // (see `MySql::lock_tables`), but fail and try again (both retries ask NOWAIT on
        // MariaDB).
        self.exec(conn, "SET SESSION foreign_key_checks = 0", context)
            .await?;
        let done = if patient {
            self.ddl_retry(conn, sql, context).await.map(|_| true)
        } else if self.mariadb {
            self.nowait_retry(conn, sql, context).await
        } else {
            match sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
                .execute(&mut *conn)
                .await
            {
                Ok(_) => Ok(true),
                Err(e) if is_lock_timeout(&e) => Ok(false),
                Err(e) => Err(crate::error::Error::db(context.to_string(), e)),
            }
        };
        self.exec(conn, "SET SESSION foreign_key_checks = 1", context)
            .await?;
        if !done? {
            return Ok(false);
        }
        let after = Self::index_names(conn, schema, table).await?;
        let gone: Vec<&String> = before.iter().filter(|i| !after.contains(i)).collect();
        let new: Vec<&String> = after.iter().filter(|i| !before.contains(i)).collect();
        if let ([was], [now]) = (gone.as_slice(), new.as_slice()) {
            let sql = format!(
                "ALTER TABLE {}.{} RENAME INDEX {} TO {}, ALGORITHM=INPLACE",
                quote(schema),
                quote(table),
                quote(now),
                quote(was)
            );
            if patient {
                self.ddl_retry(conn, &sql, context).await?;
            } else {
                match sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                    .execute(&mut *conn)
                    .await
                {
                    Ok(_) => {}
                    Err(e) if is_lock_timeout(&e) => return Ok(false),
                    Err(e) => return Err(crate::error::Error::db(context.to_string(), e)),
                }
            }
        }
        Ok(true)
    }

    /// Points every child constraint that references one of `from` at `to`, in two
    /// steps each (`<name>` → `_tc_<name>` on `to` → `<name>` on `to`), finishing any
    /// child a crash left between them. `false`: a lock was not granted (not patient).
    pub(super) async fn repoint_children(
        &self,
        conn: &mut MySqlConnection,
        g: &Gen<'_>,
        from: &[&str],
        to: &str,
        patient: bool,
    ) -> Result<bool> {
        let n = &g.n;
        let schema = n.schema.clone().unwrap_or_default();
        // The plan's tables keep their references to each other through the swap.
        let mut ours = vec![n.table.clone(), n.shadow.clone(), n.old.clone()];
        for t in &g.m.together {
            ours.extend([
                t.clone(),
                crate::schema::shadow_name(t),
                crate::schema::old_name(t),
            ]);
        }
        let fks = Self::foreign_keys(conn, &schema).await?;
        let children = fks.iter().filter(|fk| {
            !ours.contains(&fk.table)
                && (from.contains(&fk.ref_table.as_str())
                    || (fk.name.starts_with(CHILD_PREFIX) && fk.ref_table == to))
        });
        for fk in children {
            let child = n.q(&fk.table);
            let name = fk.original().to_string();
            let temp = format!("{CHILD_PREFIX}{name}");
            if !fk.name.starts_with(CHILD_PREFIX) {
                let sql = replace(&child, &fk.name, fk, &temp, &n.q(to));
                if !self
                    .move_constraint(
                        conn,
                        (&schema, &fk.table),
                        &sql,
                        patient,
                        "pointing a child table's foreign key at its new parent",
                    )
                    .await?
                {
                    return Ok(false);
                }
            }
            crate::fault::point("mysql.foreign_keys.child_halfway");
            let sql = replace(&child, &temp, fk, &name, &n.q(to));
            if !self
                .move_constraint(
                    conn,
                    (&schema, &fk.table),
                    &sql,
                    patient,
                    "giving a child table's foreign key its name back",
                )
                .await?
            {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// After the swap: the old table's `<name>` becomes `_to_<name>`, then the new
    /// table's `_tn_<name>` becomes `<name>`.
    pub(super) async fn name_new_foreign_keys(
        &self,
        conn: &mut MySqlConnection,
        g: &Gen<'_>,
    ) -> Result<()> {
        let n = &g.n;
        let schema = n.schema.clone().unwrap_or_default();
        let fks = Self::foreign_keys(conn, &schema).await?;
        for fk in fks
            .iter()
            .filter(|fk| fk.table == n.table && fk.name.starts_with(SHADOW_PREFIX))
        {
            let name = fk.original();
            if let Some(old) = fks.iter().find(|o| o.table == n.old && o.name == name) {
                let sql = replace(
                    &n.q(&n.old),
                    &old.name,
                    old,
                    &format!("{OLD_PREFIX}{name}"),
                    &n.q(&old.ref_table),
                );
                self.move_constraint(
                    conn,
                    (&schema, &n.old),
                    &sql,
                    true,
                    "cutover: renaming the old table's foreign key",
                )
                .await?;
            }
            crate::fault::point("mysql.foreign_keys.outgoing_halfway");
            let sql = replace(&n.q(&n.table), &fk.name, fk, name, &n.q(&fk.ref_table));
            self.move_constraint(
                conn,
                (&schema, &n.table),
                &sql,
                true,
                "cutover: naming the new table's foreign key",
            )
            .await?;
        }
        Ok(())
    }

    /// At rollback, once the shadow is gone: the live table's `_to_<name>` (a constraint
    /// moved aside at cutover) takes `<name>` back.
    pub(super) async fn restore_old_foreign_keys(
        &self,
        conn: &mut MySqlConnection,
        g: &Gen<'_>,
    ) -> Result<()> {
        let n = &g.n;
        let schema = n.schema.clone().unwrap_or_default();
        let fks = Self::foreign_keys(conn, &schema).await?;
        for fk in fks
            .iter()
            .filter(|fk| fk.table == n.table && fk.name.starts_with(OLD_PREFIX))
        {
            let sql = replace(
                &n.q(&n.table),
                &fk.name,
                fk,
                original(&fk.name),
                &n.q(&fk.ref_table),
            );
            self.move_constraint(
                conn,
                (&schema, &n.table),
                &sql,
                true,
                "rollback: giving the table's foreign key its name back",
            )
            .await?;
        }
        Ok(())
    }

    /// Refusals for foreign keys turnout cannot carry (module documentation).
    pub(super) async fn foreign_key_problems(
        &self,
        conn: &mut MySqlConnection,
        m: &crate::schema::Migration,
        plan: &[crate::schema::Migration],
        schema: &str,
    ) -> Result<Vec<String>> {
        let t = m.table.as_str();
        let mut problems = Vec::new();
        let fks = Self::foreign_keys(conn, schema).await?;
        let changed = |col: &str| -> Option<&'static str> {
            let Some(after) = m.after.column(col) else {
                return Some("drops or renames");
            };
            let before = m.before.column(col)?;
            if after.sql_type != before.sql_type {
                return Some("changes the type of");
            }
            let plain = m.forward.iter().any(|mp| {
                mp.target == col
                    && mp.source == crate::schema::Source::Column(col.to_string())
                    && mp.cast.is_none()
            });
            (!plain).then_some("transforms")
        };
        for fk in &fks {
            let prefixed = [SHADOW_PREFIX, OLD_PREFIX, CHILD_PREFIX]
                .iter()
                .any(|p| fk.name.starts_with(p));
            // turnout's own tables (a migration in progress) are not the application's.
            let ours =
                (fk.table == t || fk.ref_table == t) && fk.table != m.shadow && fk.table != m.old;
            if !ours {
                continue;
            }
            if prefixed {
                problems.push(format!(
                    "foreign key {} of {} has a name turnout uses for its own temporary constraints ({SHADOW_PREFIX}, {OLD_PREFIX}, {CHILD_PREFIX}); a migration of {t} may have been interrupted: finish or roll it back, or rename the constraint",
                    fk.name, fk.table
                ));
            }
            if fk.name.chars().count() > super::sql::foreign_keys::MAX_NAME {
                problems.push(format!(
                    "foreign key {} of {} has a name longer than {} characters, too long for turnout's temporary name; give it a shorter name",
                    fk.name,
                    fk.table,
                    super::sql::foreign_keys::MAX_NAME
                ));
            }
            if fk.table == t {
                let parent = plan
                    .iter()
                    .find(|p| p.table == fk.ref_table && fk.ref_table != t);
                for (col, ref_col) in fk.columns.iter().zip(&fk.ref_columns) {
                    let widened = m.after.column(col).map(|c| c.sql_type.as_str());
                    if let (Some(p), Some(what)) = (parent, changed(col)) {
                        // Both ends in the plan: carried at the swap when the types agree.
                        let theirs = p.after.column(ref_col).map(|c| c.sql_type.as_str());
                        match (what, widened, theirs) {
                            ("changes the type of", Some(a), Some(b))
                                if super::furniture::same_integer(a, b) => {}
                            ("changes the type of", Some(a), Some(b)) => problems.push(format!(
                                "foreign key {} of {t}: the plan makes {t}.{col} {a} and {}.{ref_col} {b}, and MySQL/MariaDB require exactly the same integer type on both; give both the same type",
                                fk.name, fk.ref_table
                            )),
                            _ => problems.push(format!(
                                "foreign key {} of {t} uses column {col}, which the plan {what}: a foreign key between two tables of the plan is carried when its columns only widen together; keep the column's name and values",
                                fk.name
                            )),
                        }
                        continue;
                    }
                    if let Some(what) = changed(col) {
                        if what == "changes the type of" && fk.ref_table != t {
                            problems.push(format!(
                                "foreign key {} of {t} uses column {col}, which the plan changes the type of: MySQL/MariaDB require it to have exactly the type of {}.{ref_col}; change both in one plan (add `- table: {}` to the plan's tables with {ref_col} changed to the same type), or keep the column as it is",
                                fk.name, fk.ref_table, fk.ref_table
                            ));
                            continue;
                        }
                        problems.push(format!(
                            "foreign key {} of {t} uses column {col}, which the plan {what}: the new table could not carry the constraint; keep the column as it is, or drop the constraint first",
                            fk.name
                        ));
                    }
                }
                let covered = m.after.primary_key.starts_with(&fk.columns)
                    || m.after
                        .indexes
                        .iter()
                        .any(|i| i.columns.starts_with(&fk.columns));
                if !covered {
                    problems.push(format!(
                        "foreign key {} of {t} needs an index on ({}), which the plan drops; keep the index",
                        fk.name,
                        fk.columns.join(", ")
                    ));
                }
                // A self-reference: the new table references its own key columns too.
                if fk.ref_table == t {
                    for col in &fk.ref_columns {
                        if let Some(what) = changed(col) {
                            problems.push(format!(
                                "foreign key {} of {t} references {t} itself through column {col}, which the plan {what}: the new table could not reference itself the same way; keep the column as it is, or drop the constraint first",
                                fk.name
                            ));
                        }
                    }
                }
            } else {
                let int_key_change = |col: &str| {
                    m.key_type_changes().iter().any(|c| {
                        c.column == col
                            && matches!(
                                super::key_types::parse(&c.from),
                                super::key_types::KeyType::Int { .. }
                            )
                    })
                };
                for col in fk.ref_columns.iter().filter(|c| !int_key_change(c)) {
                    if let Some(what) = changed(col) {
                        problems.push(format!(
                            "column {col} of {t} is referenced by foreign key {} of {}, and the plan {what} it: the child could not reference the new table; keep the column as it is",
                            fk.name, fk.table
                        ));
                    }
                }
            }
        }
        if plan.len() > 1 {
            let together: Vec<&str> = plan.iter().map(|p| p.table.as_str()).collect();
            problems.extend(cascade_chains(&fks, t, &together));
        }
        // Constraints from or to other databases: the catalog is read one database at a time.
        let across = Self::rows(conn, &Bound {
            sql: "SELECT CAST(CONSTRAINT_NAME AS CHAR), CAST(TABLE_SCHEMA AS CHAR), CAST(TABLE_NAME AS CHAR), CAST(REFERENCED_TABLE_SCHEMA AS CHAR), CAST(REFERENCED_TABLE_NAME AS CHAR) \
                  FROM information_schema.KEY_COLUMN_USAGE WHERE REFERENCED_TABLE_NAME IS NOT NULL AND TABLE_SCHEMA <> REFERENCED_TABLE_SCHEMA \
                  AND ((TABLE_SCHEMA = ? AND TABLE_NAME = ?) OR (REFERENCED_TABLE_SCHEMA = ? AND REFERENCED_TABLE_NAME = ?))"
                .into(),
            binds: vec![schema.into(), t.into(), schema.into(), t.into()],
        })
        .await
        .map_err(sql_err("preflight: foreign keys across databases"))?;
        let mut seen = std::collections::BTreeSet::new();
        for r in &across {
            let get = |i: usize| r.get(i).cloned().flatten().unwrap_or_default();
            let mine = (get(1) == schema && get(2) == t) || (get(3) == schema && get(4) == t);
            if mine && seen.insert(get(0)) {
                problems.push(format!(
                    "foreign key {} links {}.{} to {}.{}, across databases, which turnout does not carry yet; drop it for the migration and add it again after",
                    get(0),
                    get(1),
                    get(2),
                    get(3),
                    get(4)
                ));
            }
        }
        Ok(problems)
    }
}

fn sets(rule: &str) -> bool {
    matches!(rule, "SET NULL" | "SET DEFAULT")
}

/// Whether a change that `into` makes to `t` (deleting its rows, or setting its
/// columns) makes `from`, a child of `t`, act in turn.
fn chained(into: &ForeignKey, from: &ForeignKey) -> bool {
    let deletes = into.on_delete == "CASCADE";
    let sets_referenced =
        (sets(&into.on_delete) || into.on_update == "CASCADE" || sets(&into.on_update))
            && into.columns.iter().any(|c| from.ref_columns.contains(c));
    (deletes && (from.on_delete == "CASCADE" || sets(&from.on_delete)))
        || (sets_referenced && (from.on_update == "CASCADE" || sets(&from.on_update)))
}

/// Refusals for a chain of two cascades through `t` inside a plan of several tables:
/// a cascade (from any parent) changes `t`'s rows, and a table of the plan references
/// `t` with an action that the change sets off. InnoDB's cascades fire no triggers, so
/// the second link reaches the live child but not its shadow: the shadow cannot
/// reference `t`'s shadow before cutover (a child row copied before its parent would
/// be refused) nor `t` (the column types differ), and no trigger of `t` runs to do it
/// instead. One link is carried: the parent's triggers (or the shadow's own
/// constraint) do it.
fn cascade_chains(fks: &[ForeignKey], t: &str, plan: &[&str]) -> Vec<String> {
    let into: Vec<&ForeignKey> = fks
        .iter()
        .filter(|fk| fk.table == t && fk.ref_table != t)
        .collect();
    fks.iter()
        .filter(|fk| fk.ref_table == t && fk.table != t && plan.contains(&fk.table.as_str()))
        .filter_map(|fk| Some((fk, *into.iter().find(|i| chained(i, fk))?)))
        .map(|(fk, into)| {
            format!(
                "foreign key {} of {} acts on {t}'s changes (ON DELETE {} ON UPDATE {}), and a cascade from {} changes {t}'s rows (foreign key {}): a plan carries one cascading link between its tables, not a chain of two, since InnoDB's cascades fire no triggers and the second would reach {} but not its copy; migrate {} in a plan without {}, or make one of the two constraints RESTRICT or NO ACTION first",
                fk.name,
                fk.table,
                fk.on_delete,
                fk.on_update,
                into.ref_table,
                into.name,
                fk.table,
                fk.table,
                t
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fk(name: &str, table: &str, ref_table: &str, on_delete: &str) -> ForeignKey {
        ForeignKey {
            name: name.into(),
            table: table.into(),
            columns: vec!["p".into()],
            ref_table: ref_table.into(),
            ref_columns: vec!["id".into()],
            on_update: "RESTRICT".into(),
            on_delete: on_delete.into(),
        }
    }

    #[test]
    fn a_chain_of_two_cascades_inside_the_plan_is_refused_naming_both_links() {
        let fks = [
            fk("b_a", "b", "a", "CASCADE"),
            fk("c_b", "c", "b", "SET NULL"),
        ];
        let refused = cascade_chains(&fks, "b", &["a", "b", "c"]);
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert!(
            refused[0].contains("foreign key c_b of c"),
            "{}",
            refused[0]
        );
        assert!(refused[0].contains("foreign key b_a"), "{}", refused[0]);
    }

    #[test]
    fn one_cascading_link_or_a_child_outside_the_plan_is_carried() {
        let fks = [
            fk("b_a", "b", "a", "CASCADE"),
            fk("c_b", "c", "b", "CASCADE"),
            fk("d_b", "d", "b", "RESTRICT"),
        ];
        assert!(cascade_chains(&fks, "b", &["a", "b", "d"]).is_empty());
        assert!(cascade_chains(&fks, "a", &["a", "b", "c"]).is_empty());
        let quiet = [
            fk("b_a", "b", "a", "RESTRICT"),
            fk("c_b", "c", "b", "CASCADE"),
        ];
        assert!(cascade_chains(&quiet, "b", &["a", "b", "c"]).is_empty());
    }
}
