//! The publications that list the migrated table, read from the catalog for the cutover
//! (`sql/publications.rs` says how they are carried), and what preflight refuses of them.
//! Column lists and row filters exist from PostgreSQL 15: read through `to_jsonb` so the
//! same query runs on older servers, where they are absent.

use sqlx::Row;
use sqlx::postgres::PgConnection;

use super::sql::{Gen, Membership};

type Sql<T> = std::result::Result<T, sqlx::Error>;

/// Each membership of `relation`, with the columns its list and filter use.
async fn read_with_columns(
    conn: &mut PgConnection,
    relation: &str,
) -> Sql<Vec<(Membership, Vec<String>)>> {
    let rows = sqlx::query(
        "SELECT p.pubname::text, (to_jsonb(r) ->> 'prattrs') IS NOT NULL, \
         ARRAY(SELECT jsonb_array_elements_text(to_jsonb(pt) -> 'attnames')), to_jsonb(pt) ->> 'rowfilter', \
         ARRAY(SELECT a.attname::text FROM pg_depend d JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid \
               WHERE d.classid = 'pg_publication_rel'::regclass AND d.objid = r.oid AND d.refobjid = r.prrelid AND d.refobjsubid > 0 ORDER BY a.attnum) \
         FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid \
         JOIN pg_class c ON c.oid = r.prrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
         JOIN pg_publication_tables pt ON pt.pubname = p.pubname AND pt.schemaname = n.nspname AND pt.tablename = c.relname \
         WHERE r.prrelid = to_regclass($1) ORDER BY 1",
    )
    .bind(relation)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let listed: bool = r.get(1);
            let m = Membership {
                publication: r.get(0),
                columns: listed.then(|| r.get::<Vec<String>, _>(2)),
                filter: r.get(3),
            };
            (m, r.get(4))
        })
        .collect())
}

pub(super) async fn read(conn: &mut PgConnection, relation: &str) -> Sql<Vec<Membership>> {
    Ok(read_with_columns(conn, relation)
        .await?
        .into_iter()
        .map(|(m, _)| m)
        .collect())
}

/// A listed column must reach the new table (a rename is followed); a filter's columns
/// must keep their names and values, since its text is carried as it is.
pub(super) async fn problems(conn: &mut PgConnection, g: &Gen<'_>) -> Sql<Vec<String>> {
    let t = &g.m.table;
    let mut out = Vec::new();
    for (m, used) in read_with_columns(conn, &g.live()).await? {
        let p = &m.publication;
        for c in m.columns.iter().flatten() {
            if g.new_name_of(c).is_none() {
                out.push(format!("table {t:?}: publication {p:?} publishes column {c:?}, which the plan drops or computes anew; remove the column from the publication's list for the migration (ALTER PUBLICATION … SET TABLE), or keep the column"));
            }
        }
        if m.filter.is_none() {
            continue;
        }
        // The catalog's dependencies do not tell the filter's columns from the list's, so
        // every column either uses is held to the filter's rule.
        for c in &used {
            if g.new_name_of(c).as_deref() != Some(c.as_str()) {
                out.push(format!("table {t:?}: the row filter of publication {p:?} uses column {c:?}, which the plan drops, renames or computes anew, so the filter cannot be carried as it is; change the filter for the migration (ALTER PUBLICATION … SET TABLE … WHERE), or keep the column"));
            }
        }
    }
    Ok(out)
}
