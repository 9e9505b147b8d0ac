//! Publication membership carried at cutover: in the cutover transaction, after the
//! renames, each publication that lists the old table drops it and adds the new one, with
//! the same column list (renamed columns under their new names) and row filter (which
//! preflight requires to use only columns the plan keeps under their names, so its text
//! reads the same over the new table). The undo, run by a rollback before the names are
//! swapped back, does the reverse with the old table's own list. Publications `FOR ALL
//! TABLES` or `FOR TABLES IN SCHEMA` name no table and need nothing.

use super::{Gen, list, quote};

/// One publication listing the table, as the catalog showed it before the cutover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(in crate::db::postgres) struct Membership {
    pub(in crate::db::postgres) publication: String,
    /// The old table's columns, when the publication lists some (PostgreSQL 15+).
    pub(in crate::db::postgres) columns: Option<Vec<String>>,
    /// `pg_get_expr` of the row filter (PostgreSQL 15+).
    pub(in crate::db::postgres) filter: Option<String>,
}

fn add(publication: &str, table: &str, columns: Option<&[String]>, filter: Option<&str>) -> String {
    let mut s = format!("ALTER PUBLICATION {} ADD TABLE {table}", quote(publication));
    if let Some(c) = columns {
        s.push_str(&format!(" ({})", list(c)));
    }
    if let Some(f) = filter {
        s.push_str(&format!(" WHERE ({f})"));
    }
    s
}

fn drop(publication: &str, table: &str) -> String {
    format!(
        "ALTER PUBLICATION {} DROP TABLE {table}",
        quote(publication)
    )
}

impl<'a> Gen<'a> {
    /// After the cutover's renames: the statements that move each membership to the new
    /// table, and the undo a rollback runs. A column the plan does not keep is left out
    /// of the list (preflight refuses such a plan).
    pub(in crate::db::postgres) fn carry_publications(
        &self,
        memberships: &[Membership],
    ) -> (Vec<String>, Vec<String>) {
        let (mut carry, mut undo) = (Vec::new(), Vec::new());
        for p in memberships {
            let new_cols: Option<Vec<String>> = p
                .columns
                .as_ref()
                .map(|cs| cs.iter().filter_map(|c| self.new_name_of(c)).collect());
            carry.push(drop(&p.publication, &self.old()));
            carry.push(add(
                &p.publication,
                &self.live(),
                new_cols.as_deref(),
                p.filter.as_deref(),
            ));
            undo.push(drop(&p.publication, &self.live()));
            undo.push(add(
                &p.publication,
                &self.old(),
                p.columns.as_deref(),
                p.filter.as_deref(),
            ));
        }
        (carry, undo)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::migration;
    use super::*;

    #[test]
    fn memberships_move_to_the_new_table_and_back() {
        let m = migration();
        let g = Gen::new(&m, "public");
        let ms = [
            Membership {
                publication: "feed".into(),
                columns: None,
                filter: None,
            },
            Membership {
                publication: "part \"of\" it".into(),
                columns: Some(vec!["id".into(), "note".into()]),
                filter: Some("(id > 10)".into()),
            },
        ];
        let (carry, undo) = g.carry_publications(&ms);
        insta::assert_snapshot!(carry.join(";\n"), @r#"
        ALTER PUBLICATION "feed" DROP TABLE "sales"."_orders_old";
        ALTER PUBLICATION "feed" ADD TABLE "sales"."orders";
        ALTER PUBLICATION "part ""of"" it" DROP TABLE "sales"."_orders_old";
        ALTER PUBLICATION "part ""of"" it" ADD TABLE "sales"."orders" ("id", "comment") WHERE ((id > 10))
        "#);
        insta::assert_snapshot!(undo.join(";\n"), @r#"
        ALTER PUBLICATION "feed" DROP TABLE "sales"."orders";
        ALTER PUBLICATION "feed" ADD TABLE "sales"."_orders_old";
        ALTER PUBLICATION "part ""of"" it" DROP TABLE "sales"."orders";
        ALTER PUBLICATION "part ""of"" it" ADD TABLE "sales"."_orders_old" ("id", "note") WHERE ((id > 10))
        "#);
    }
}
