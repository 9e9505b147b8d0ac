//! The table's own furniture carried to the new table in the cutover transaction: its
//! owner (given to the shadow before the renames, because a serial's sequence can only be
//! owned by a table of the same owner), its comments (a renamed column's follows it, a
//! dropped column's goes), its storage parameters (the TOAST table's included) and its
//! replica identity (an index by the name it takes in the renames). The old
//! table keeps its own, which is all a rollback needs.

use super::{Gen, literal, quote};
use crate::schema::Source;

/// The live table's owner, comments and storage parameters, as the catalog shows them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(in crate::db::postgres) struct TableAttributes {
    pub(in crate::db::postgres) owner: String,
    pub(in crate::db::postgres) comment: Option<String>,
    /// (old column, comment).
    pub(in crate::db::postgres) column_comments: Vec<(String, String)>,
    /// `reloptions` of the table (`fillfactor=70`) and of its TOAST table.
    pub(in crate::db::postgres) options: Vec<String>,
    pub(in crate::db::postgres) toast_options: Vec<String>,
    /// `relreplident`: `d` default, `f` full, `n` nothing, `i` an index, named here.
    pub(in crate::db::postgres) replica_identity: String,
    pub(in crate::db::postgres) replica_index: Option<String>,
}

fn options(prefix: &str, opts: &[String]) -> Vec<String> {
    opts.iter()
        .filter_map(|o| o.split_once('='))
        .map(|(k, v)| format!("{prefix}{} = {}", quote(k), literal(v)))
        .collect()
}

impl<'a> Gen<'a> {
    /// Before the renames: the shadow takes the live table's owner.
    pub(in crate::db::postgres) fn furniture_before_renames(
        &self,
        f: &TableAttributes,
    ) -> Vec<String> {
        vec![format!(
            "ALTER TABLE {} OWNER TO {}",
            self.shadow(),
            quote(&f.owner)
        )]
    }

    /// After the renames: the new table (now `<table>`) gets the comments and parameters.
    pub(in crate::db::postgres) fn carry_furniture(&self, f: &TableAttributes) -> Vec<String> {
        let t = self.live();
        let mut out = Vec::new();
        if let Some(c) = &f.comment {
            out.push(format!("COMMENT ON TABLE {t} IS {}", literal(c)));
        }
        for (old, c) in &f.column_comments {
            let new = self.m.forward.iter().find_map(|mp| match &mp.source {
                Source::Column(s) if s == old => Some(&mp.target),
                _ => None,
            });
            if let Some(new) = new {
                out.push(format!(
                    "COMMENT ON COLUMN {t}.{} IS {}",
                    quote(new),
                    literal(c)
                ));
            }
        }
        let mut opts = options("", &f.options);
        opts.extend(options("toast.", &f.toast_options));
        if !opts.is_empty() {
            out.push(format!("ALTER TABLE {t} SET ({})", opts.join(", ")));
        }
        // The index took its final name in the renames before this.
        match (f.replica_identity.as_str(), &f.replica_index) {
            ("f", _) => out.push(format!("ALTER TABLE {t} REPLICA IDENTITY FULL")),
            ("n", _) => out.push(format!("ALTER TABLE {t} REPLICA IDENTITY NOTHING")),
            ("i", Some(idx)) => out.push(format!(
                "ALTER TABLE {t} REPLICA IDENTITY USING INDEX {}",
                quote(idx)
            )),
            _ => {}
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::migration;
    use super::*;

    #[test]
    fn comments_follow_renamed_columns_and_parameters_are_set() {
        let m = migration();
        let g = Gen::new(&m, "public");
        let f = TableAttributes {
            owner: "app".into(),
            comment: Some("the orders".into()),
            column_comments: vec![
                ("note".into(), "free text".into()),
                ("amount_cents".into(), "gone with its column".into()),
            ],
            options: vec!["fillfactor=70".into()],
            toast_options: vec!["autovacuum_enabled=false".into()],
            replica_identity: "i".into(),
            replica_index: Some("orders_note".into()),
        };
        assert_eq!(
            g.furniture_before_renames(&f),
            ["ALTER TABLE \"sales\".\"_orders_new\" OWNER TO \"app\""]
        );
        assert_eq!(
            g.carry_furniture(&f),
            [
                "COMMENT ON TABLE \"sales\".\"orders\" IS E'the orders'",
                "COMMENT ON COLUMN \"sales\".\"orders\".\"comment\" IS E'free text'",
                "ALTER TABLE \"sales\".\"orders\" SET (\"fillfactor\" = E'70', toast.\"autovacuum_enabled\" = E'false')",
                "ALTER TABLE \"sales\".\"orders\" REPLICA IDENTITY USING INDEX \"orders_note\"",
            ]
        );
    }
}
