//! Views over the migrated table, carried in the cutover transaction. A view binds to the
//! table's OID, so after the renames it would still read the old table; it is given its
//! own definition again, which now resolves the table's name to the new table. Where no
//! column a view reads changes type, `CREATE OR REPLACE VIEW` does it and the view keeps
//! its OID, owner, grants and comments; views over that view need nothing. Where a
//! column's type changes (or the plan gives a view a new definition) the view's columns
//! may change type, which `CREATE OR REPLACE` does not allow: every view over the table,
//! directly or through other views, is dropped (dependents first) and created again
//! (dependencies first) with its options, owner, grants and comments.
//!
//! The way back is written by the same transaction: the definitions as the catalog prints
//! them once the old table has its temporary name, so a rollback can point the views at it
//! before the new table is dropped (the old table's rename back then makes them print as
//! they did before the migration).

use super::{Gen, Grant, literal, qualified, quote};
use crate::schema::Source;

/// One view over the table (directly, or through other views), as the catalog shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(in crate::db::postgres) struct View {
    pub(in crate::db::postgres) oid: i64,
    pub(in crate::db::postgres) schema: String,
    pub(in crate::db::postgres) name: String,
    /// `pg_get_viewdef`, naming relations as the current search path sees them.
    pub(in crate::db::postgres) definition: String,
    /// `reloptions`: `security_barrier=true`, `check_option=local`, `security_invoker=…`.
    pub(in crate::db::postgres) options: Vec<String>,
    pub(in crate::db::postgres) owner: String,
    /// Privileges others hold on the view and its columns.
    pub(in crate::db::postgres) grants: Vec<Grant>,
    pub(in crate::db::postgres) comment: Option<String>,
    /// (column, comment) for the view's commented columns.
    pub(in crate::db::postgres) column_comments: Vec<(String, String)>,
    /// It reads the table itself, not only through other views.
    pub(in crate::db::postgres) direct: bool,
    /// The table's columns it reads (for a view that reads the table itself).
    pub(in crate::db::postgres) uses: Vec<String>,
}

impl View {
    pub(in crate::db::postgres) fn qualified(&self) -> String {
        qualified(&self.schema, &self.name)
    }

    fn with_options(&self) -> String {
        if self.options.is_empty() {
            return String::new();
        }
        let opts: Vec<String> = self
            .options
            .iter()
            .map(|o| match o.split_once('=') {
                Some((k, v)) => format!("{} = {}", quote(k), literal(v)),
                None => quote(o),
            })
            .collect();
        format!(" WITH ({})", opts.join(", "))
    }

    fn replace(&self, definition: &str) -> String {
        format!(
            "CREATE OR REPLACE VIEW {}{} AS {}",
            self.qualified(),
            self.with_options(),
            body(definition)
        )
    }

    fn create(&self, definition: &str) -> Vec<String> {
        let q = self.qualified();
        let mut out = vec![
            format!(
                "CREATE VIEW {q}{} AS {}",
                self.with_options(),
                body(definition)
            ),
            format!("ALTER VIEW {q} OWNER TO {}", quote(&self.owner)),
        ];
        out.extend(self.grants.iter().map(|g| g.sql(&q)));
        if let Some(c) = &self.comment {
            out.push(format!("COMMENT ON VIEW {q} IS {}", literal(c)));
        }
        for (col, c) in &self.column_comments {
            out.push(format!(
                "COMMENT ON COLUMN {q}.{} IS {}",
                quote(col),
                literal(c)
            ));
        }
        out
    }
}

/// `pg_get_viewdef` ends with a semicolon, which cannot stand inside a statement.
fn body(definition: &str) -> &str {
    definition.trim().trim_end_matches(';').trim_end()
}

impl<'a> Gen<'a> {
    /// The plan's definition for this view, if it gives one.
    pub(in crate::db::postgres) fn planned_view(&self, v: &View) -> Option<&'a str> {
        self.m
            .views
            .iter()
            .find(|p| p.name == v.name && p.schema.as_deref().unwrap_or(&self.schema) == v.schema)
            .map(|p| p.definition.as_str())
    }

    /// The new table's column filled from old column `old` under the same name, if any:
    /// what a view that names `old` still finds after cutover.
    fn kept_as(&self, old: &str) -> Option<&'a crate::schema::Column> {
        self.m
            .forward
            .iter()
            .find(|mp| mp.target == old && matches!(&mp.source, Source::Column(c) if c == old))
            .and_then(|mp| self.m.after.column(&mp.target))
    }

    /// The columns a view reads that the new table no longer has under that name.
    pub(in crate::db::postgres) fn view_lost_columns<'v>(&self, v: &'v View) -> Vec<&'v str> {
        self.columns_lost(&v.uses)
    }

    /// Of the old columns `uses`, those the new table no longer has under that name.
    pub(in crate::db::postgres) fn columns_lost<'v>(&self, uses: &'v [String]) -> Vec<&'v str> {
        uses.iter()
            .filter(|c| self.kept_as(c).is_none())
            .map(String::as_str)
            .collect()
    }

    /// Whether the views must be dropped and created again (see the module doc).
    pub(in crate::db::postgres) fn views_recreated(&self, views: &[View]) -> bool {
        views.iter().any(|v| {
            self.planned_view(v).is_some()
                || v.uses.iter().any(|c| {
                    let before = self.m.before.column(c).map(|b| &b.sql_type);
                    let after = self.kept_as(c).map(|a| &a.sql_type);
                    before.is_some() && after.is_some() && before != after
                })
        })
    }

    /// The statements that give `views` (in creation order) the definitions `defs`.
    pub(in crate::db::postgres) fn carry_views(
        &self,
        views: &[View],
        defs: &[&str],
        recreate: bool,
    ) -> Vec<String> {
        if !recreate {
            return views
                .iter()
                .zip(defs)
                .filter(|(v, _)| v.direct)
                .map(|(v, d)| v.replace(d))
                .collect();
        }
        let mut out: Vec<String> = views
            .iter()
            .rev()
            .map(|v| format!("DROP VIEW {}", v.qualified()))
            .collect();
        for (v, d) in views.iter().zip(defs) {
            out.extend(v.create(d));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::migration;
    use super::*;

    fn view(name: &str, direct: bool, uses: &[&str]) -> View {
        View {
            oid: 1,
            schema: "sales".into(),
            name: name.into(),
            definition: " SELECT orders.id\n   FROM orders;".into(),
            options: vec!["security_barrier=true".into(), "check_option=local".into()],
            owner: "app owner".into(),
            grants: vec![Grant {
                grantee: Some("reader".into()),
                privilege: "SELECT".into(),
                column: None,
                grantable: false,
            }],
            comment: Some("it's the list".into()),
            column_comments: vec![("id".into(), "the key".into())],
            direct,
            uses: uses.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn views_are_replaced_in_place_unless_a_column_they_read_changes_type() {
        let m = migration();
        let g = Gen::new(&m, "public");
        let (v, w) = (view("v", true, &["id"]), view("w", false, &[]));
        assert!(!g.views_recreated(&[v.clone(), w.clone()]));
        // The plan renames `note` and computes `amount` from `amount_cents`.
        assert_eq!(
            g.view_lost_columns(&view("x", true, &["id", "note", "amount_cents"])),
            ["note", "amount_cents"]
        );
        let views = [v.clone(), w.clone()];
        let defs: Vec<&str> = views.iter().map(|v| v.definition.as_str()).collect();
        assert_eq!(
            g.carry_views(&views, &defs, false),
            [
                "CREATE OR REPLACE VIEW \"sales\".\"v\" WITH (\"security_barrier\" = E'true', \"check_option\" = E'local') AS SELECT orders.id\n   FROM orders"
            ]
        );
        let again = g.carry_views(&views, &defs, true);
        assert_eq!(again[0], "DROP VIEW \"sales\".\"w\"");
        assert_eq!(again[1], "DROP VIEW \"sales\".\"v\"");
        assert_eq!(
            &again[2..7],
            [
                "CREATE VIEW \"sales\".\"v\" WITH (\"security_barrier\" = E'true', \"check_option\" = E'local') AS SELECT orders.id\n   FROM orders",
                "ALTER VIEW \"sales\".\"v\" OWNER TO \"app owner\"",
                "GRANT SELECT ON TABLE \"sales\".\"v\" TO \"reader\"",
                "COMMENT ON VIEW \"sales\".\"v\" IS E'it''s the list'",
                "COMMENT ON COLUMN \"sales\".\"v\".\"id\" IS E'the key'",
            ]
        );
    }
}
