//! Materialized views over the migrated table. A materialized view binds to the table's
//! OID, so after cutover it still reads the old table, which the reverse triggers keep
//! equal to the new one until cleanup: a `REFRESH` in between gives the right rows, and a
//! rollback has nothing of it to undo. What must follow the table is prepared at cutover
//! and finished at cleanup, before the old table is dropped:
//!
//! - in the cutover transaction, after the renames, a placeholder `WITH NO DATA` is created
//!   from the definition read before them (which names the table, now the new one), under
//!   a name of the migration's (`…_mv<oid of the original>`). It holds the definition
//!   bound to the new table; a rollback drops it;
//! - at cleanup, one transaction fills it and builds the original's indexes on it under
//!   the migration's names (`…_mi<oid of the original index>`): a kill leaves nothing of
//!   it; then one short transaction drops the original, gives the placeholder and its
//!   indexes the original names and restores owner, grants and comments. A kill leaves
//!   either the original or its replacement under its name, and cleanup finishes it.

use super::{Gen, Grant, View, literal, qualified, quote};

/// An index of a materialized view, as the catalog shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(in crate::db::postgres) struct MatviewIndex {
    pub(in crate::db::postgres) oid: i64,
    pub(in crate::db::postgres) name: String,
    /// `pg_get_indexdef`.
    pub(in crate::db::postgres) definition: String,
    /// How `pg_get_indexdef` writes the index's name and its relation (`quote_ident`).
    pub(in crate::db::postgres) printed_name: String,
    pub(in crate::db::postgres) printed_relation: String,
    pub(in crate::db::postgres) tablespace: Option<String>,
    pub(in crate::db::postgres) comment: Option<String>,
}

impl<'a> Gen<'a> {
    /// The placeholder's name for the materialized view of OID `oid`.
    pub(in crate::db::postgres) fn matview_placeholder(&self, oid: i64) -> String {
        format!("{}_mv{oid}", self.n.base)
    }

    /// The placeholder's index for the index of OID `oid`.
    pub(in crate::db::postgres) fn matview_index_placeholder(&self, oid: i64) -> String {
        format!("{}_mi{oid}", self.n.base)
    }

    /// The prefix of the placeholders' names (a `LIKE` pattern's literal part).
    pub(in crate::db::postgres) fn matview_placeholder_prefix(&self) -> String {
        format!("{}_mv", self.n.base)
    }

    /// In the cutover transaction, after the renames: the placeholder for `v` (read before
    /// them), with its storage parameters and tablespace; and the statement that drops it
    /// at rollback.
    pub(in crate::db::postgres) fn matview_prepare(
        &self,
        v: &View,
        tablespace: Option<&str>,
    ) -> (String, String) {
        let q = qualified(&v.schema, &self.matview_placeholder(v.oid));
        let with = if v.options.is_empty() {
            String::new()
        } else {
            let opts: Vec<String> = v
                .options
                .iter()
                .map(|o| match o.split_once('=') {
                    Some((k, val)) => format!("{} = {}", quote(k), literal(val)),
                    None => quote(o),
                })
                .collect();
            format!(" WITH ({})", opts.join(", "))
        };
        let space = tablespace
            .map(|t| format!(" TABLESPACE {}", quote(t)))
            .unwrap_or_default();
        let body = v.definition.trim().trim_end_matches(';').trim_end();
        (
            format!("CREATE MATERIALIZED VIEW {q}{with}{space} AS {body} WITH NO DATA"),
            format!("DROP MATERIALIZED VIEW IF EXISTS {q}"),
        )
    }

    /// At cleanup: the placeholder's copy of the original's index `i`, or `None` when the
    /// catalog's text of it is not in the shape this expects.
    pub(in crate::db::postgres) fn matview_index(
        &self,
        schema: &str,
        placeholder: &str,
        i: &MatviewIndex,
    ) -> Option<Vec<String>> {
        let rest = ["CREATE INDEX ", "CREATE UNIQUE INDEX "]
            .iter()
            .find_map(|head| {
                i.definition
                    .strip_prefix(&format!(
                        "{head}{} ON {} ",
                        i.printed_name, i.printed_relation
                    ))
                    .map(|rest| (*head, rest))
            })?;
        let temp = self.matview_index_placeholder(i.oid);
        let mut out = vec![format!(
            "{}{} ON {} {}",
            rest.0,
            quote(&temp),
            qualified(schema, placeholder),
            rest.1
        )];
        if let Some(t) = &i.tablespace {
            out.push(format!(
                "ALTER INDEX {} SET TABLESPACE {}",
                qualified(schema, &temp),
                quote(t)
            ));
        }
        Some(out)
    }

    /// The short transaction at cleanup: the original `v` goes, its placeholder takes its
    /// name, its indexes' names, its owner, grants and comments.
    pub(in crate::db::postgres) fn matview_swap(
        &self,
        v: &View,
        indexes: &[MatviewIndex],
    ) -> Vec<String> {
        let q = v.qualified();
        let placeholder = qualified(&v.schema, &self.matview_placeholder(v.oid));
        let mut out = vec![
            format!("DROP MATERIALIZED VIEW {q}"),
            format!(
                "ALTER MATERIALIZED VIEW {placeholder} RENAME TO {}",
                quote(&v.name)
            ),
        ];
        for i in indexes {
            out.push(format!(
                "ALTER INDEX {} RENAME TO {}",
                qualified(&v.schema, &self.matview_index_placeholder(i.oid)),
                quote(&i.name)
            ));
            if let Some(c) = &i.comment {
                out.push(format!(
                    "COMMENT ON INDEX {} IS {}",
                    qualified(&v.schema, &i.name),
                    literal(c)
                ));
            }
        }
        out.push(format!(
            "ALTER MATERIALIZED VIEW {q} OWNER TO {}",
            quote(&v.owner)
        ));
        out.extend(v.grants.iter().map(|g: &Grant| g.sql(&q)));
        if let Some(c) = &v.comment {
            out.push(format!(
                "COMMENT ON MATERIALIZED VIEW {q} IS {}",
                literal(c)
            ));
        }
        for (col, c) in &v.column_comments {
            out.push(format!(
                "COMMENT ON COLUMN {q}.{} IS {}",
                quote(col),
                literal(c)
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::migration;
    use super::*;

    fn matview() -> View {
        View {
            oid: 4242,
            schema: "sales".into(),
            name: "order totals".into(),
            definition: " SELECT orders.id\n   FROM orders;".into(),
            options: vec!["fillfactor=70".into()],
            owner: "app owner".into(),
            grants: vec![Grant {
                grantee: Some("reader".into()),
                privilege: "SELECT".into(),
                column: None,
                grantable: false,
            }],
            comment: Some("it's the sum".into()),
            column_comments: vec![("id".into(), "the key".into())],
            direct: true,
            uses: vec!["id".into()],
        }
    }

    #[test]
    fn a_matview_is_prepared_at_cutover_and_swapped_in_at_cleanup() {
        let m = migration();
        let g = Gen::new(&m, "public");
        let v = matview();
        let p = g.matview_placeholder(v.oid);
        assert!(p.starts_with(&g.matview_placeholder_prefix()) && p.ends_with("_mv4242"));
        let (create, drop) = g.matview_prepare(&v, Some("fast"));
        assert_eq!(
            create,
            format!(
                "CREATE MATERIALIZED VIEW \"sales\".\"{p}\" WITH (\"fillfactor\" = E'70') TABLESPACE \"fast\" AS SELECT orders.id\n   FROM orders WITH NO DATA"
            )
        );
        assert_eq!(
            drop,
            format!("DROP MATERIALIZED VIEW IF EXISTS \"sales\".\"{p}\"")
        );
        let i = MatviewIndex {
            oid: 77,
            name: "order totals_id".into(),
            definition: "CREATE UNIQUE INDEX \"order totals_id\" ON sales.\"order totals\" USING btree (id) WHERE (id > 0)".into(),
            printed_name: "\"order totals_id\"".into(),
            printed_relation: "sales.\"order totals\"".into(),
            tablespace: None,
            comment: Some("one row each".into()),
        };
        let mi = g.matview_index_placeholder(77);
        assert_eq!(
            g.matview_index("sales", &p, &i),
            Some(vec![format!(
                "CREATE UNIQUE INDEX \"{mi}\" ON \"sales\".\"{p}\" USING btree (id) WHERE (id > 0)"
            )])
        );
        let odd = MatviewIndex {
            printed_relation: "elsewhere".into(),
            ..i.clone()
        };
        assert_eq!(g.matview_index("sales", &p, &odd), None);
        assert_eq!(
            g.matview_swap(&v, &[i]),
            [
                "DROP MATERIALIZED VIEW \"sales\".\"order totals\"".to_string(),
                format!("ALTER MATERIALIZED VIEW \"sales\".\"{p}\" RENAME TO \"order totals\""),
                format!("ALTER INDEX \"sales\".\"{mi}\" RENAME TO \"order totals_id\""),
                "COMMENT ON INDEX \"sales\".\"order totals_id\" IS E'one row each'".into(),
                "ALTER MATERIALIZED VIEW \"sales\".\"order totals\" OWNER TO \"app owner\"".into(),
                "GRANT SELECT ON TABLE \"sales\".\"order totals\" TO \"reader\"".into(),
                "COMMENT ON MATERIALIZED VIEW \"sales\".\"order totals\" IS E'it''s the sum'"
                    .into(),
                "COMMENT ON COLUMN \"sales\".\"order totals\".\"id\" IS E'the key'".into(),
            ]
        );
    }
}
