//! Reading the references other tables hold to the migrated table (re-pointed inside the
//! cutover and rollback transactions, see `sql/children.rs` for why that is safe under
//! concurrent writes) and the ones it holds to other tables (added to the new table in the
//! cutover transaction), and validating them after the commit.
//!
//! The table's own foreign keys under concurrent writes: until cutover the live table
//! enforces them and the shadow only receives rows the live table accepted. In the cutover
//! transaction they are added to the new table `NOT VALID` under their own names (names
//! are per table), so from the first write after the swap the new table enforces them;
//! the old table keeps its own until cleanup drops it, so a parent's `ON DELETE CASCADE` or
//! `SET NULL` reaches both tables alike while the reverse trigger runs, and a rollback
//! (which drops the new table) leaves the old table exactly as it was. A reference of the
//! table to itself goes the same way: the new table's references the new table, the old
//! table's keeps referencing the old one, whose rows mirror the new table's.
//!
//! Validation pending is read from the catalog, not remembered: preflight refuses a
//! reference that is `NOT VALID` before the migration, so every `NOT VALID` reference to
//! the table after a cutover or rollback is one turnout re-pointed. Cutover and rollback
//! validate right after their commit; cleanup validates again first, so a crash between
//! the commit and the validation is finished by `resume`. A crash between a rollback's
//! commit and its validation leaves the references `NOT VALID` (still enforced for every
//! write); the engine does not revisit a rolled-back migration, so the next `check` names
//! them and asks for `VALIDATE CONSTRAINT`.

use sqlx::Row;
use sqlx::postgres::PgConnection;

use super::sql::{ChildFk, Gen};
use super::{Postgres, sql};
use crate::error::{Error, Result};

/// The references to `relation` from other tables, its columns named as it names them;
/// with `{dir}` = `conrelid` instead, the references `relation` holds to other tables.
const REFERENCES_SQL: &str = "SELECT cn.nspname::text, cc.relname::text, c.conname::text, \
     (SELECT array_agg(a.attname::text ORDER BY k.ord) FROM unnest(c.conkey) WITH ORDINALITY AS k(n, ord) \
      JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n), \
     (SELECT array_agg(a.attname::text ORDER BY k.ord) FROM unnest(c.confkey) WITH ORDINALITY AS k(n, ord) \
      JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n), \
     c.confmatchtype::text, c.confupdtype::text, c.confdeltype::text, c.condeferrable, c.condeferred, \
     c.convalidated, cc.relkind::text, c.conparentid <> 0, to_jsonb(c) ->> 'confdelsetcols', \
     pn.nspname::text, pc.relname::text \
     FROM pg_constraint c JOIN pg_class cc ON cc.oid = c.conrelid JOIN pg_namespace cn ON cn.oid = cc.relnamespace \
     JOIN pg_class pc ON pc.oid = c.confrelid JOIN pg_namespace pn ON pn.oid = pc.relnamespace \
     WHERE c.contype = 'f' AND c.{dir} = to_regclass($1) {self} \
     ORDER BY cn.nspname, cc.relname, c.conname";

/// One reference as the catalog shows it, with what preflight needs to judge it.
pub(super) struct Found {
    pub(super) fk: ChildFk,
    /// The referenced table: (schema, name).
    pub(super) parent: (String, String),
    pub(super) validated: bool,
    /// The child is partitioned, a partition, or the reference names SET NULL columns.
    pub(super) unusual: Option<&'static str>,
}

pub(super) async fn children_of(
    conn: &mut PgConnection,
    relation: &str,
) -> std::result::Result<Vec<Found>, sqlx::Error> {
    references(conn, relation, "confrelid", "AND c.conrelid <> c.confrelid").await
}

/// The foreign keys `relation` itself holds, to other tables and to itself.
pub(super) async fn parents_of(
    conn: &mut PgConnection,
    relation: &str,
) -> std::result::Result<Vec<Found>, sqlx::Error> {
    references(conn, relation, "conrelid", "").await
}

async fn references(
    conn: &mut PgConnection,
    relation: &str,
    dir: &str,
    also: &str,
) -> std::result::Result<Vec<Found>, sqlx::Error> {
    let rows = sqlx::query(sql(REFERENCES_SQL
        .replace("{dir}", dir)
        .replace("{self}", also)))
    .bind(relation)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let relkind: String = r.get(11);
            let inherited: bool = r.get(12);
            let set_cols: Option<String> = r.get(13);
            let unusual = if relkind == "p" || inherited {
                Some("its table is partitioned or a partition")
            } else if set_cols.is_some() {
                Some("its ON DELETE action names columns")
            } else {
                None
            };
            Found {
                fk: ChildFk {
                    schema: r.get(0),
                    table: r.get(1),
                    name: r.get(2),
                    columns: r.get::<Option<Vec<String>>, _>(3).unwrap_or_default(),
                    referenced: r.get::<Option<Vec<String>>, _>(4).unwrap_or_default(),
                    match_type: r.get(5),
                    on_update: r.get(6),
                    on_delete: r.get(7),
                    deferrable: r.get(8),
                    deferred: r.get(9),
                },
                parent: (r.get(14), r.get(15)),
                validated: r.get(10),
                unusual,
            }
        })
        .collect())
}

/// The foreign keys `relation` holds, re-created on the new table (named `table` by then)
/// under the same names with its column names: (foreign key, qualified parent).
pub(super) async fn carried_parents(
    conn: &mut PgConnection,
    g: &Gen<'_>,
) -> std::result::Result<Vec<(ChildFk, String)>, sqlx::Error> {
    parents_of(conn, &g.live())
        .await?
        .into_iter()
        .map(|f| {
            let mut fk = f.fk;
            fk.columns = fk
                .columns
                .iter()
                .map(|c| g.new_name_of(c))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    sqlx::Error::Protocol(format!(
                        "foreign key {} of {} names a column the new table does not copy",
                        fk.name, fk.table
                    ))
                })?;
            let parent = super::sql::qualified(&f.parent.0, &f.parent.1);
            // A reference to the table itself: the new table references itself, by the
            // new column names (the name `parent` is the new table's at cutover).
            if parent == g.live() {
                fk.referenced = fk
                    .referenced
                    .iter()
                    .map(|c| g.new_name_of(c))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| {
                        sqlx::Error::Protocol(format!(
                            "foreign key {} of {} references a column the new table does not copy",
                            fk.name, fk.table
                        ))
                    })?;
            }
            Ok((fk, parent))
        })
        .collect()
}

/// The references of `relation`, their referenced columns renamed by `rename`; an
/// unmapped column is an error (preflight refuses such a reference).
pub(super) async fn renamed_children(
    conn: &mut PgConnection,
    relation: &str,
    rename: &dyn Fn(&str) -> Option<String>,
) -> std::result::Result<Vec<ChildFk>, sqlx::Error> {
    children_of(conn, relation)
        .await?
        .into_iter()
        .map(|f| {
            let mut fk = f.fk;
            fk.referenced = fk
                .referenced
                .iter()
                .map(|c| rename(c))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    sqlx::Error::Protocol(format!(
                        "foreign key {} of {} references a column the new table does not copy",
                        fk.name, fk.table
                    ))
                })?;
            Ok(fk)
        })
        .collect()
}

impl Postgres {
    /// `VALIDATE CONSTRAINT` for every re-pointed reference still pending (module doc).
    pub(super) async fn validate_children(&self, g: &Gen<'_>) -> Result<()> {
        let ctx = |e| Error::db(format!("validating the foreign keys to {}", g.m.table), e);
        let mut conn = self.pool.acquire().await.map_err(ctx)?;
        let mut found = children_of(&mut conn, &g.live()).await.map_err(ctx)?;
        found.extend(parents_of(&mut conn, &g.live()).await.map_err(ctx)?);
        let pending: Vec<ChildFk> = found
            .into_iter()
            .filter(|f| !f.validated)
            .map(|f| f.fk)
            .collect();
        for fk in pending {
            sqlx::raw_sql(sql(fk.validate()))
                .execute(&mut *conn)
                .await
                .map_err(ctx)?;
        }
        Ok(())
    }
}
