//! Reading what the new table must carry beyond `TableShape` (column collations, CHECK and
//! EXCLUDE constraints, every index `Index` cannot describe) from the live table's catalog, in
//! parts the statements of `sql/shape.rs` are composed from; and judging, for preflight,
//! whether each still means the same over the new columns.
//!
//! An object whose column the plan drops or computes (`using`) is refused by name: its
//! definition would have to be rewritten, and turnout does not guess how. A renamed column
//! is followed (see `sql/shape.rs`). A retyped column is kept when the new type is of the
//! same kind (`pg_type.typcategory`: numbers stay numbers, strings stay strings), so
//! `CHECK (qty >= 0)` survives `integer` → `bigint`, and refused otherwise: the operators
//! the definition uses would resolve to other functions. What is kept is then compiled
//! against the new shape by preflight, and any that does not compile is refused by name.

use sqlx::Row;
use sqlx::postgres::PgConnection;

use super::Postgres;
use super::sql::{ChildFk, Furniture, Gen, IndexParts, KeyPart, qualified};
use crate::schema::Source;

type Sql<T> = std::result::Result<T, sqlx::Error>;

const CONSTRAINTS_SQL: &str = "SELECT c.conname::text, pg_get_constraintdef(c.oid), c.contype::text, c.convalidated, \
     ARRAY(SELECT a.attname::text FROM pg_depend d JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid \
           WHERE ((d.classid = 'pg_constraint'::regclass AND d.objid = c.oid) OR (d.classid = 'pg_class'::regclass AND d.objid = c.conindid AND c.contype IN ('x', 'u'))) \
           AND d.refobjid = c.conrelid AND d.refobjsubid > 0 ORDER BY a.attnum) \
     FROM pg_constraint c WHERE c.conrelid = to_regclass($1) AND (c.contype IN ('c', 'x') OR (c.contype = 'u' AND c.condeferrable)) ORDER BY c.conname";

/// The live table's indexes that `TableShape` does not describe (`$2`: the ones it does),
/// except those of EXCLUDE and DEFERRABLE UNIQUE constraints, which come with their
/// constraint (a deferrable index can only be made by its constraint).
const INDEXES_SQL: &str = "SELECT ic.relname::text, i.indisunique, coalesce((to_jsonb(i) ->> 'indnullsnotdistinct')::boolean, false), \
     am.amname::text, i.indnkeyatts::int, pg_get_expr(i.indpred, i.indrelid), coalesce(ic.reloptions, '{}')::text[], \
     i.indexrelid::bigint, \
     ARRAY(SELECT a.attname::text FROM pg_depend d JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid \
           WHERE d.classid = 'pg_class'::regclass AND d.objid = i.indexrelid AND d.refobjid = i.indrelid AND d.refobjsubid > 0 ORDER BY a.attnum) \
     FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_am am ON am.oid = ic.relam \
     WHERE i.indrelid = to_regclass($1) AND NOT i.indisprimary AND ic.relname::text <> ALL($2::text[]) \
     AND NOT EXISTS (SELECT 1 FROM pg_constraint x WHERE x.conindid = i.indexrelid AND x.conrelid = i.indrelid \
                     AND (x.contype = 'x' OR (x.contype = 'u' AND x.condeferrable))) \
     ORDER BY ic.relname";

/// One column or expression of an index, with its collation, operator class (when not the
/// default) and ordering; INCLUDE columns have none of these.
const KEYS_SQL: &str = "SELECT pg_get_indexdef(i.indexrelid, k, false), i.indkey[k - 1] = 0, \
     cn.nspname::text, co.collname::text, \
     CASE WHEN NOT op.opcdefault THEN opn.nspname::text END, CASE WHEN NOT op.opcdefault THEN op.opcname::text END, \
     coalesce((i.indoption[k - 1] & 1) <> 0, false), coalesce((i.indoption[k - 1] & 2) <> 0, false) \
     FROM pg_index i CROSS JOIN generate_series(1, i.indnatts) AS k \
     LEFT JOIN pg_collation co ON co.oid = i.indcollation[k - 1] LEFT JOIN pg_namespace cn ON cn.oid = co.collnamespace \
     LEFT JOIN pg_opclass op ON op.oid = i.indclass[k - 1] LEFT JOIN pg_namespace opn ON opn.oid = op.opcnamespace \
     WHERE i.indexrelid = $1::oid ORDER BY k";

/// Columns whose collation is not their type's.
const COLLATIONS_SQL: &str = "SELECT a.attname::text, cn.nspname::text, co.collname::text \
     FROM pg_attribute a JOIN pg_type ty ON ty.oid = a.atttypid JOIN pg_collation co ON co.oid = a.attcollation \
     JOIN pg_namespace cn ON cn.oid = co.collnamespace \
     WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped \
     AND a.attcollation <> 0 AND a.attcollation <> ty.typcollation ORDER BY a.attnum";

/// One object of the furniture with the live table's columns it uses.
struct Used {
    what: String,
    columns: Vec<String>,
}

/// The furniture and, for preflight, what each object is and which columns it uses.
struct Read {
    furniture: Furniture,
    used: Vec<Used>,
}

impl Postgres {
    /// What the live table carries for the new table (read at prepare, from the live table).
    pub(super) async fn furniture(&self, conn: &mut PgConnection, g: &Gen<'_>) -> Sql<Furniture> {
        Ok(read(conn, g).await?.furniture)
    }

    /// At cutover, before the renames: the live table's CHECK constraints the shadow does
    /// not have (those NOT VALID at prepare, or added since), with the renames their
    /// definitions need (only these, to keep the lock short). Each is added NOT VALID: the
    /// shadow holds rows the constraint has never checked.
    pub(super) async fn unvalidated_checks(
        &self,
        conn: &mut PgConnection,
        g: &Gen<'_>,
    ) -> Sql<Furniture> {
        let mut f = Furniture::default();
        let on_shadow: Vec<String> = sqlx::query_scalar(
            "SELECT conname::text FROM pg_constraint WHERE conrelid = to_regclass($1) AND contype = 'c'",
        )
        .bind(g.shadow())
        .fetch_all(&mut *conn)
        .await?;
        for r in sqlx::query(CONSTRAINTS_SQL)
            .bind(g.live())
            .fetch_all(&mut *conn)
            .await?
        {
            let (name, def, kind, validated): (String, String, String, bool) =
                (r.get(0), r.get(1), r.get(2), r.get(3));
            if kind == "c" && !on_shadow.contains(&name) {
                let def = if validated {
                    format!("{def} NOT VALID")
                } else {
                    def
                };
                f.unvalidated_checks.push((name, def));
            }
        }
        f.renamed = renamed(g);
        Ok(f)
    }

    /// Preflight's refusals for the furniture, and the furniture to compile.
    pub(super) async fn furniture_refusals(
        &self,
        conn: &mut PgConnection,
        g: &Gen<'_>,
    ) -> Sql<(Vec<String>, Furniture)> {
        let Read { furniture, used } = read(conn, g).await?;
        let mut refusals = Vec::new();
        let t = &g.m.table;
        for u in &used {
            for c in &u.columns {
                let Some(old) = g.m.before.column(c) else {
                    continue;
                };
                let mapped = g.m.forward.iter().find(|mp| match &mp.source {
                    Source::Column(s) => s == c,
                    Source::Expr(_) => false,
                });
                let Some(mp) = mapped else {
                    refusals.push(format!("table {t:?}: {} uses column {c:?}, which the plan drops or computes anew, so it cannot be carried to the new table; drop it before the migration and create it again after, or keep the column as it is", u.what));
                    continue;
                };
                let Some(new_type) = mp.cast.as_deref() else {
                    continue;
                };
                let same_kind: Option<bool> = sqlx::query_scalar(
                    "SELECT (SELECT typcategory FROM pg_type WHERE oid = to_regtype($1)) = \
                     (SELECT typcategory FROM pg_type WHERE oid = to_regtype($2))",
                )
                .bind(&old.sql_type)
                .bind(new_type)
                .fetch_one(&mut *conn)
                .await?;
                if same_kind != Some(true) {
                    refusals.push(format!("table {t:?}: {} uses column {c:?}, whose type the plan changes from {} to {new_type}, a different kind of value, so it may no longer mean the same; drop it before the migration and create it again after, or keep the column's type", u.what, old.sql_type));
                }
            }
        }
        Ok((refusals, furniture))
    }

    /// The original names of the indexes (and EXCLUDE constraints) of `table` whose
    /// temporary name `temp` gives an existing index in the schema.
    pub(super) async fn carried_names(
        &self,
        conn: &mut PgConnection,
        g: &Gen<'_>,
        table: &str,
        temp: &dyn Fn(&str) -> String,
    ) -> Sql<Vec<String>> {
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT ic.relname::text FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid \
             WHERE i.indrelid = to_regclass($1) AND NOT i.indisprimary ORDER BY 1",
        )
        .bind(table)
        .fetch_all(&mut *conn)
        .await?;
        let mut out = Vec::new();
        for n in names {
            if self.relation_exists_sql(conn, &g.rel(&temp(&n))).await? {
                out.push(n);
            }
        }
        Ok(out)
    }

    /// At rollback after cutover: the new table's references to itself, naming the old
    /// table's columns, for the old table (cutover dropped its own; see `sql/shape.rs`).
    pub(super) async fn self_references_back(
        &self,
        conn: &mut PgConnection,
        g: &Gen<'_>,
    ) -> Sql<Vec<ChildFk>> {
        let live = g.live();
        let mut out = Vec::new();
        for f in super::children::parents_of(conn, &live).await? {
            if qualified(&f.parent.0, &f.parent.1) != live {
                continue;
            }
            let still: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = to_regclass($1) AND conname = $2)",
            )
            .bind(g.old())
            .bind(&f.fk.name)
            .fetch_one(&mut *conn)
            .await?;
            if still {
                continue;
            }
            let mut fk = f.fk;
            let old_names = |cols: &[String]| {
                cols.iter()
                    .map(|c| g.old_name_of(c))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| {
                        sqlx::Error::Protocol(format!(
                            "foreign key {} names a column the old table does not have",
                            fk.name
                        ))
                    })
            };
            let (columns, referenced) = (old_names(&fk.columns)?, old_names(&fk.referenced)?);
            fk.columns = columns;
            fk.referenced = referenced;
            out.push(fk);
        }
        Ok(out)
    }

    async fn relation_exists_sql(&self, conn: &mut PgConnection, name: &str) -> Sql<bool> {
        let oid: Option<i64> = sqlx::query_scalar("SELECT to_regclass($1)::oid::bigint")
            .bind(name)
            .fetch_one(&mut *conn)
            .await?;
        Ok(oid.is_some())
    }
}

/// The DEFERRABLE INITIALLY IMMEDIATE unique constraints of `relation`, by name (see
/// `Gen::deferring` for why the triggers defer them on their target).
pub(super) async fn deferrable_immediate(
    conn: &mut PgConnection,
    relation: &str,
) -> Sql<Vec<String>> {
    sqlx::query_scalar(
        "SELECT conname::text FROM pg_constraint WHERE conrelid = to_regclass($1) AND contype = 'u' \
         AND condeferrable AND NOT condeferred ORDER BY 1",
    )
    .bind(relation)
    .fetch_all(&mut *conn)
    .await
}

async fn read(conn: &mut PgConnection, g: &Gen<'_>) -> Sql<Read> {
    let live = g.live();
    let mut f = Furniture::default();
    let mut used = Vec::new();
    for r in sqlx::query(CONSTRAINTS_SQL)
        .bind(&live)
        .fetch_all(&mut *conn)
        .await?
    {
        let (name, def, kind, validated): (String, String, String, bool) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        let columns: Vec<String> = r.get(4);
        if kind == "c" {
            used.push(Used {
                what: format!("check constraint {name:?}"),
                columns,
            });
            // Some old rows may break it, so the shadow only takes it at cutover, when
            // every row is copied; `pg_get_constraintdef` ends it with NOT VALID.
            if validated {
                f.checks.push((name, def));
            } else {
                f.unvalidated_checks.push((name, def));
            }
        } else if kind == "u" {
            used.push(Used {
                what: format!("unique constraint {name:?}"),
                columns,
            });
            f.deferrable_uniques.push((name, def));
        } else {
            used.push(Used {
                what: format!("exclusion constraint {name:?}"),
                columns,
            });
            f.excludes.push((name, def));
        }
    }
    let described: Vec<String> = g.m.before.indexes.iter().map(|i| i.name.clone()).collect();
    for r in sqlx::query(INDEXES_SQL)
        .bind(&live)
        .bind(&described)
        .fetch_all(&mut *conn)
        .await?
    {
        let name: String = r.get(0);
        let key_count: i32 = r.get(4);
        let oid: i64 = r.get(7);
        let mut keys = Vec::new();
        let mut include = Vec::new();
        for (k, p) in sqlx::query(KEYS_SQL)
            .bind(oid)
            .fetch_all(&mut *conn)
            .await?
            .into_iter()
            .enumerate()
        {
            let expr: String = p.get(0);
            if k as i32 >= key_count {
                include.push(expr);
                continue;
            }
            let (cn, co, on, oc): (
                Option<String>,
                Option<String>,
                Option<String>,
                Option<String>,
            ) = (p.get(2), p.get(3), p.get(4), p.get(5));
            keys.push(KeyPart {
                expr,
                is_expression: p.get(1),
                collation: cn.zip(co).map(|(n, c)| qualified(&n, &c)),
                opclass: on.zip(oc).map(|(n, c)| qualified(&n, &c)),
                desc: p.get(6),
                nulls_first: p.get(7),
            });
        }
        used.push(Used {
            what: format!("index {name:?}"),
            columns: r.get(8),
        });
        f.indexes.push(IndexParts {
            name,
            unique: r.get(1),
            nulls_not_distinct: r.get(2),
            method: r.get(3),
            keys,
            include,
            options: r.get(6),
            predicate: r.get(5),
        });
    }
    // A copied column keeps its collation, whatever its new name or (collatable) type.
    for r in sqlx::query(COLLATIONS_SQL)
        .bind(&live)
        .fetch_all(&mut *conn)
        .await?
    {
        let (col, schema, name): (String, String, String) = (r.get(0), r.get(1), r.get(2));
        let new = g.m.forward.iter().find_map(|mp| match &mp.source {
            Source::Column(s) if *s == col => Some(mp.target.clone()),
            _ => None,
        });
        if let Some(new) = new {
            f.collations.push((new, qualified(&schema, &name)));
        }
    }
    f.unique_constraints = sqlx::query_scalar(
        "SELECT conname::text FROM pg_constraint WHERE conrelid = to_regclass($1) AND contype = 'u' AND NOT condeferrable ORDER BY 1",
    )
    .bind(&live)
    .fetch_all(&mut *conn)
    .await?;
    // Every rename, old → new: the furniture names the old columns (`sql/shape.rs`).
    f.renamed = renamed(g);
    Ok(Read { furniture: f, used })
}

fn renamed(g: &Gen<'_>) -> Vec<(String, String)> {
    g.m.forward
        .iter()
        .filter_map(|mp| match &mp.source {
            Source::Column(old) if *old != mp.target => Some((old.clone(), mp.target.clone())),
            _ => None,
        })
        .collect()
}
