//! What the table is and what stops the migration, read from the catalog: `describe` turns
//! a table into a `TableShape`, and preflight finds what cannot be carried to the new
//! table, names that are taken, and expressions that do not compile.
//!
//! `TableShape` holds the plain btree indexes; CHECK and EXCLUDE constraints and every
//! other index are read and judged by `shape.rs` (refused by name when they use a column
//! the plan drops, computes or retypes to another kind) and compiled here on the new
//! shape. Refused by preflight: disabled or constraint triggers, and any trigger when the
//! plan drops or renames a column; partitioned tables, tables
//! with inheritance children and partitions or children themselves (each named). Foreign
//! keys of other tables referencing this one are carried (re-pointed at cutover) unless
//! they are NOT VALID, on a partitioned child, or reference a column the plan drops or
//! computes; the table's own foreign keys (to other tables and to itself) likewise go to
//! the new table.
//! Primary-key type changes are judged in `sql/keys.rs`. Generated columns are declared
//! again on the new table and never written (`Gen::forward_written`); refused: a plan that
//! alters one, or drops, renames or changes a column its expression reads.
//!
//! Carried at cutover (`carry.rs`), and refused here only where they cannot be: views over
//! the table and views over those (refused: one that uses a column the plan drops or
//! renames, unless the plan's `views` key redefines it; INSTEAD OF triggers or rules on a
//! view that must be re-created), row-level security (refused: a policy using a column the
//! plan drops or renames; row security turnout's role does not bypass), the owner,
//! comments, storage parameters and replica identity (refused: an identity index the new
//! table will not have). Materialized views that read the table are replaced at cleanup
//! (`views.rs`, `sql/matviews.rs`; refused: one using a column the plan drops or renames,
//! one read by a view or materialized view, one reading a view the cutover re-creates).
//! Publication membership moves to the new table at cutover (`publications.rs`; refused:
//! a column list or row filter using a column the plan changes).
//! The table's own rules move to the new table at cutover (`rules.rs`; refused: one using
//! a column the plan changes, a disabled one). Refused outright: a DEFERRABLE primary
//! key (the triggers' and the backfill's `ON CONFLICT` needs it as arbiter).

use sqlx::Row;
use sqlx::postgres::PgConnection;

use super::errors::db_message;
use super::sql::{has_identity_always, list};
use super::{Postgres, sql};
use crate::error::{Error, Result};
use crate::schema::{Column, Generated, Index, Mapped, Migration, TableShape};

impl Postgres {
    pub(super) async fn relation_exists(
        &self,
        conn: &mut PgConnection,
        qualified_name: &str,
    ) -> Result<bool> {
        let oid: Option<i64> = sqlx::query_scalar("SELECT to_regclass($1)::oid::bigint")
            .bind(qualified_name)
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| Error::db("reading the catalog", e))?;
        Ok(oid.is_some())
    }

    pub(super) async fn describe_table(
        &self,
        schema: Option<&str>,
        table: &str,
    ) -> Result<Option<TableShape>> {
        let ctx = |e| Error::db(format!("describing table {table:?}"), e);
        let schema = schema.unwrap_or(&self.home);
        let oid: Option<i64> = sqlx::query_scalar(
            "SELECT c.oid::bigint FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
        )
        .bind(schema)
        .bind(table)
        .fetch_optional(&self.pool)
        .await
        .map_err(ctx)?;
        let Some(oid) = oid else { return Ok(None) };
        let rows = sqlx::query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull, \
             pg_get_expr(d.adbin, d.adrelid), a.attidentity::text, a.attgenerated::text, \
             pg_get_serial_sequence(quote_ident(n.nspname) || '.' || quote_ident(c.relname), a.attname) \
             FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
             LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
             WHERE a.attrelid = $1::oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        )
        .bind(oid)
        .fetch_all(&self.pool)
        .await
        .map_err(ctx)?;
        let columns = rows
            .iter()
            .map(|r| {
                let identity: String = r.get(4);
                let generated_stored: String = r.get(5);
                let default: Option<String> = r.get(3);
                let serial: Option<String> = r.get(6);
                let generated = match identity.as_str() {
                    "a" => Some(Generated::Identity { always: true }),
                    "d" => Some(Generated::Identity { always: false }),
                    // `pg_attrdef` holds a generated column's expression, not a default.
                    _ if !generated_stored.is_empty() => Some(Generated::Computed {
                        expression: default.clone().unwrap_or_default(),
                        stored: generated_stored == "s",
                    }),
                    _ => match (&default, serial) {
                        (Some(d), Some(seq)) if d.starts_with("nextval(") => {
                            Some(Generated::Sequence { sequence: seq })
                        }
                        _ => None,
                    },
                };
                Column {
                    name: r.get(0),
                    sql_type: r.get(1),
                    nullable: !r.get::<bool, _>(2),
                    // A generated column's expression is not a DEFAULT.
                    default: if generated_stored.is_empty() {
                        default
                    } else {
                        None
                    },
                    generated,
                }
            })
            .collect();
        let primary_key: Vec<String> = sqlx::query_scalar(
            "SELECT a.attname::text FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
             WHERE i.indrelid = $1::oid AND i.indisprimary ORDER BY k.ord",
        )
        .bind(oid)
        .fetch_all(&self.pool)
        .await
        .map_err(ctx)?;
        // Only plain btree indexes fit `Index`; the others are carried by `shape.rs`.
        let idx_rows = sqlx::query(
            "SELECT ic.relname::text, i.indisunique, \
             (SELECT array_agg(a.attname::text ORDER BY k.ord) FROM unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) \
              JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum) \
             FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_am am ON am.oid = ic.relam \
             WHERE i.indrelid = $1::oid AND NOT i.indisprimary AND am.amname = 'btree' AND i.indimmediate \
             AND NOT EXISTS (SELECT 1 FROM pg_constraint x WHERE x.conindid = i.indexrelid AND x.conrelid = i.indrelid AND x.contype = 'x') \
             AND ic.reloptions IS NULL AND NOT coalesce((to_jsonb(i) ->> 'indnullsnotdistinct')::boolean, false) AND i.indexprs IS NULL AND i.indpred IS NULL AND i.indnkeyatts = i.indnatts \
             AND NOT EXISTS (SELECT 1 FROM unnest(i.indoption) o WHERE o <> 0) \
             AND NOT EXISTS (SELECT 1 FROM unnest(i.indclass) oc JOIN pg_opclass op ON op.oid = oc WHERE NOT op.opcdefault) \
             AND NOT EXISTS (SELECT 1 FROM unnest(i.indcollation) WITH ORDINALITY AS co(coll, ord) \
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[co.ord - 1] \
                 WHERE co.coll <> 0 AND co.coll <> a.attcollation) \
             ORDER BY ic.relname",
        )
        .bind(oid)
        .fetch_all(&self.pool)
        .await
        .map_err(ctx)?;
        let indexes = idx_rows
            .into_iter()
            .map(|r| Index {
                name: r.get(0),
                unique: r.get(1),
                columns: r.get::<Option<Vec<String>>, _>(2).unwrap_or_default(),
                ..Default::default()
            })
            .collect();
        Ok(Some(TableShape {
            columns,
            primary_key,
            indexes,
        }))
    }

    pub(super) async fn check_migration(&self, m: &Migration) -> Result<Vec<String>> {
        let g = self.gen_for(m);
        let t = &m.table;
        let ctx = |e| Error::db(format!("preflight of {t}"), e);
        let mut problems: Vec<String> = m
            .key_type_changes()
            .iter()
            .filter_map(|k| super::sql::key_type_refusal(t, k))
            .collect();
        let mut conn = self.pool.acquire().await.map_err(ctx)?;
        for (name, rel) in [(&m.shadow, g.shadow()), (&m.old, g.old())] {
            if self.relation_exists(&mut conn, &rel).await? {
                problems.push(format!("a relation {name:?} already exists in schema {:?}; turnout needs that name for {t:?} (drop it, or roll back the migration that left it)", g.schema));
            }
        }
        // What TableShape cannot carry to the new table, found in the catalog.
        let live = g.live();
        let checks: [(&str, &str); 5] = [
            (
                "SELECT conname::text FROM pg_constraint WHERE conrelid = to_regclass($1) AND contype = 'p' AND condeferrable",
                "table {t}: its primary key {x} is DEFERRABLE, and turnout's triggers and backfill write with INSERT … ON CONFLICT on the primary key, which PostgreSQL cannot do over a deferrable one; make the key NOT DEFERRABLE for the migration (drop it and add it again), or change the table with ALTER TABLE",
            ),
            (
                "SELECT coalesce(string_agg(i.inhrelid::regclass::text, ', ' ORDER BY i.inhrelid::regclass::text), 'none yet') \
              FROM pg_class c LEFT JOIN pg_inherits i ON i.inhparent = c.oid WHERE c.oid = to_regclass($1) AND c.relkind = 'p' GROUP BY c.oid",
                "table {t}: it is a partitioned table (partitions: {x}); turnout migrates plain tables only. Change it with ALTER TABLE on the partitioned table, which reaches every partition, or build a new partitioned table and move the partitions across (DETACH / ATTACH PARTITION)",
            ),
            (
                "SELECT string_agg(i.inhrelid::regclass::text, ', ' ORDER BY i.inhrelid::regclass::text) FROM pg_inherits i \
              JOIN pg_class c ON c.oid = i.inhparent AND c.relkind = 'r' WHERE i.inhparent = to_regclass($1) HAVING count(*) > 0",
                "table {t}: tables {x} inherit from it and would stay with the old table at cutover; detach them for the migration (ALTER TABLE … NO INHERIT) and attach them to the new table after, or change the tables with ALTER TABLE",
            ),
            (
                "SELECT string_agg(i.inhparent::regclass::text, ', ') FROM pg_inherits i WHERE i.inhrelid = to_regclass($1) HAVING count(*) > 0",
                "table {t}: it is a partition of (or inherits from) {x}, and the new table would not be; change it through its parent with ALTER TABLE, or detach it first (DETACH PARTITION / NO INHERIT) and attach the new table after",
            ),
            (
                "SELECT tgname::text FROM pg_trigger WHERE tgrelid = to_regclass($1) AND NOT tgisinternal AND (tgenabled <> 'O' OR tgconstraint <> 0)",
                "table {t}: trigger {x} is disabled, replica-only or a constraint trigger, which turnout does not carry; enable it (or drop it) for the migration",
            ),
        ];
        for (query, message) in checks {
            let found: Vec<String> = sqlx::query_scalar(query)
                .bind(&live)
                .fetch_all(&mut *conn)
                .await
                .map_err(ctx)?;
            for x in found {
                problems.push(
                    message
                        .replace("{t}", &format!("{t:?}"))
                        .replace("{x}", &format!("{x:?}")),
                );
            }
        }
        problems.extend(generated_problems(&mut conn, &g).await.map_err(ctx)?);
        // Views are carried at cutover (see `sql/views.rs`); what cannot be is named here.
        problems.extend(super::views::problems(&mut conn, &g).await.map_err(ctx)?);
        problems.extend(super::rls::problems(&mut conn, &g).await.map_err(ctx)?);
        problems.extend(super::carry::problems(&mut conn, &g).await.map_err(ctx)?);
        // Other tables' references are re-pointed at cutover (see `sql/children.rs`).
        for f in super::children::children_of(&mut conn, &live)
            .await
            .map_err(ctx)?
        {
            let (fk, child) = (&f.fk.name, format!("{}.{}", f.fk.schema, f.fk.table));
            if !f.validated {
                problems.push(format!("table {t:?}: foreign key {fk:?} of {child:?} references it and is NOT VALID; run ALTER TABLE … VALIDATE CONSTRAINT (or drop it) first, so turnout can tell its own pending validations apart"));
            } else if let Some(why) = f.unusual {
                problems.push(format!("table {t:?}: foreign key {fk:?} of {child:?} references it, and turnout cannot re-point it because {why}"));
            }
            for c in &f.fk.referenced {
                if g.new_name_of(c).is_none() {
                    problems.push(format!("table {t:?}: foreign key {fk:?} of {child:?} references column {c:?}, which the plan drops or computes; keep that column as it is"));
                }
            }
        }
        // The table's own triggers are re-created on the new table at cutover from their
        // definitions, so they must find every column they may use under its old name.
        let changed: Vec<&str> = m
            .before
            .columns
            .iter()
            .map(|c| c.name.as_str())
            .filter(|c| {
                !m.forward.iter().any(|mp| {
                    mp.target == *c
                        && matches!(&mp.source, crate::schema::Source::Column(s) if s == c)
                })
            })
            .collect();
        if let Some(col) = changed.first() {
            let triggers: Vec<String> = sqlx::query_scalar(sql(format!(
                "SELECT tgname::text FROM pg_trigger WHERE tgrelid = to_regclass($1) AND NOT tgisinternal AND tgname::text NOT LIKE {} ORDER BY 1",
                g.own_names_like()
            )))
            .bind(&live)
            .fetch_all(&mut *conn)
            .await
            .map_err(ctx)?;
            for tg in triggers {
                problems.push(format!("table {t:?}: trigger {tg:?} would be re-created on the new table, but the plan drops or renames column {col:?}, which its function may use; migrate the trigger's function first, or keep the column"));
            }
        }
        // The table's own foreign keys go to the new table at cutover (see `children.rs`).
        for f in super::children::parents_of(&mut conn, &live)
            .await
            .map_err(ctx)?
        {
            let fk = &f.fk.name;
            if !f.validated {
                problems.push(format!("table {t:?}: its foreign key {fk:?} is NOT VALID; run ALTER TABLE … VALIDATE CONSTRAINT (or drop it) first, so turnout can tell its own pending validations apart"));
            } else if let Some(why) = f.unusual {
                problems.push(format!(
                    "table {t:?}: its foreign key {fk:?} cannot be carried because {why}"
                ));
            }
            let to_itself = f.parent.0 == g.schema && f.parent.1 == *t;
            let referenced = f.fk.referenced.iter().filter(|_| to_itself);
            for c in f.fk.columns.iter().chain(referenced) {
                if g.new_name_of(c).is_none() {
                    problems.push(format!("table {t:?}: its foreign key {fk:?} uses column {c:?}, which the plan drops or computes; keep that column as it is"));
                }
            }
        }
        // Index names the new table will take must be free, unless the old table holds them.
        for idx in &m.after.indexes {
            let carried = m.before.indexes.iter().any(|b| b.name == idx.name);
            if !carried && self.relation_exists(&mut conn, &g.rel(&idx.name)).await? {
                problems.push(format!(
                    "index {:?}: the name is taken in schema {:?}; turnout needs it for the new {t:?}",
                    idx.name, g.schema
                ));
            }
        }
        for c in &m.after.columns {
            let mapped = m.forward.iter().any(|mp| mp.target == c.name);
            if !mapped && !c.nullable && c.default.is_none() && c.generated.is_none() {
                problems.push(format!("column {:?}: NOT NULL without a default or `from`; turnout cannot fill it for the rows of {t:?}", c.name));
            }
        }
        // CHECK and EXCLUDE constraints and the indexes `TableShape` does not describe.
        let (refused, furniture) = self.furniture_refusals(&mut conn, &g).await.map_err(ctx)?;
        let carry_ok = refused.is_empty();
        problems.extend(refused);
        drop(conn);

        // The new shape, forward and reverse statements: compiled (EXPLAIN, never run)
        // inside a transaction that is always rolled back.
        let mut tx = self.pool.begin().await.map_err(ctx)?;
        let mut created = true;
        for stmt in g.create_shadow() {
            if let Err(e) = sqlx::raw_sql(sql(stmt)).execute(&mut *tx).await {
                problems.push(format!(
                    "the new shape of {t:?} cannot be created: {}",
                    db_message(&e)
                ));
                created = false;
                break;
            }
        }
        if created && carry_ok {
            sqlx::raw_sql("SAVEPOINT turnout_carry")
                .execute(&mut *tx)
                .await
                .map_err(ctx)?;
            let stmts = g.carry(&furniture);
            for (what, stmt) in stmts.into_iter().chain(g.carry_unvalidated(&furniture)) {
                if let Err(e) = sqlx::raw_sql(sql(stmt)).execute(&mut *tx).await {
                    problems.push(format!(
                        "table {t:?}: {what} cannot be created on the new shape: {}; drop it before the migration and create it again after, or change the plan",
                        db_message(&e)
                    ));
                    sqlx::raw_sql("ROLLBACK TO SAVEPOINT turnout_carry")
                        .execute(&mut *tx)
                        .await
                        .map_err(ctx)?;
                    break;
                }
            }
        }
        // Only this column's expression and its assignment to the target are checked.
        let probe = |target: &str, overriding: bool, mp: &Mapped, rows: &str| {
            format!(
                "EXPLAIN {}",
                g.insert_select(target, std::slice::from_ref(mp), overriding, rows)
            )
        };
        if created {
            let live_rows = format!("SELECT {} FROM {} LIMIT 0", list(&g.old_cols()), g.live());
            let new_rows = format!("SELECT {} FROM {} LIMIT 0", list(&g.new_cols()), g.shadow());
            // Before cutover the old table is still `<table>`.
            let overriding = has_identity_always(&m.before);
            let (forward, reverse) = (g.forward_written(), g.reverse_written());
            let cases: Vec<(String, String, &str)> = forward
                .iter()
                .map(|mp| {
                    (
                        format!("column {:?}: the forward expression", mp.target),
                        probe(&g.shadow(), false, mp, &live_rows),
                        "the live table",
                    )
                })
                .chain(reverse.iter().map(|mp| {
                    (
                        format!("column {:?}: the reverse expression", mp.target),
                        probe(&g.live(), overriding, mp, &new_rows),
                        "the new shape",
                    )
                }))
                .collect();
            for (what, stmt, over) in cases {
                sqlx::raw_sql("SAVEPOINT turnout_probe")
                    .execute(&mut *tx)
                    .await
                    .map_err(ctx)?;
                if let Err(e) = sqlx::raw_sql(sql(stmt)).execute(&mut *tx).await {
                    problems.push(format!(
                        "{what} does not compile over {over} of {t:?}: {}",
                        db_message(&e)
                    ));
                }
                sqlx::raw_sql("ROLLBACK TO SAVEPOINT turnout_probe")
                    .execute(&mut *tx)
                    .await
                    .map_err(ctx)?;
            }
            // The verify comparison casts exactly; it must compile too.
            if problems.is_empty() {
                let stmt = format!("EXPLAIN {}", g.chunk_hashes(false, false));
                if let Err(e) = sqlx::raw_sql(sql(stmt)).execute(&mut *tx).await {
                    problems.push(format!(
                        "table {t:?}: the verification query does not compile: {}",
                        db_message(&e)
                    ));
                }
            }
        }
        tx.rollback().await.map_err(ctx)?;
        Ok(problems)
    }
}

/// A generated column is declared again on the new table with the live table's expression,
/// so the plan must leave it as it is and keep every column the expression reads under
/// its name (a widened one computes the same).
async fn generated_problems(
    conn: &mut PgConnection,
    g: &super::sql::Gen<'_>,
) -> std::result::Result<Vec<String>, sqlx::Error> {
    let t = &g.m.table;
    let mut out = Vec::new();
    for old in &g.m.before.columns {
        let Some(Generated::Computed { .. }) = &old.generated else {
            continue;
        };
        let Some(new) = g.new_name_of(&old.name) else {
            // Dropped: the old table computes it again for a rollback.
            continue;
        };
        let kept = g.m.after.column(&new).is_some_and(|c| {
            c.generated == old.generated && c.sql_type == old.sql_type && c.nullable == old.nullable
        });
        if !kept {
            out.push(format!("table {t:?}: column {:?} is a generated column, which turnout declares again with its expression; the plan cannot alter it (drop it and add it again after the migration, or leave it as it is)", old.name));
        }
    }
    let uses = sqlx::query(
        "SELECT a.attname::text, b.attname::text FROM pg_attrdef ad \
         JOIN pg_attribute a ON a.attrelid = ad.adrelid AND a.attnum = ad.adnum \
         JOIN pg_depend d ON d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid AND d.refobjid = ad.adrelid AND d.refobjsubid > 0 \
         JOIN pg_attribute b ON b.attrelid = ad.adrelid AND b.attnum = d.refobjsubid \
         WHERE ad.adrelid = to_regclass($1) AND a.attgenerated <> '' ORDER BY a.attnum, b.attnum",
    )
    .bind(g.live())
    .fetch_all(&mut *conn)
    .await?;
    for r in uses {
        let (column, used): (String, String) = (r.get(0), r.get(1));
        if column == used || g.new_name_of(&column).is_none() {
            continue;
        }
        if g.new_name_of(&used).as_deref() != Some(used.as_str()) {
            out.push(format!("table {t:?}: generated column {column:?} is computed from column {used:?}, which the plan drops, renames or changes; turnout declares the column again with the same expression, so keep {used:?} as it is (or drop {column:?} in the plan and add it again after)"));
        }
    }
    Ok(out)
}
