//! The shadow table's DDL: the new shape created empty next to the live table, with its
//! primary key and indexes under temporary names (they take the final names at cutover).
//!
//! The plain non-unique indexes are deferred until the copy is done: every copied row
//! would otherwise update them one by one, and the triggers' writes with them. They are
//! then built with `CREATE INDEX CONCURRENTLY`, which takes no lock the triggers' inserts
//! wait for. Unique indexes stay up front: the copy's and the triggers' `ON CONFLICT`
//! rely on the key's, and the others check every row as it arrives, as the live table's do.

use super::{Gen, list, quote};
use crate::schema::{Column, Generated};

impl<'a> Gen<'a> {
    // --- prepare -------------------------------------------------------------------------

    pub(in crate::db::postgres) fn create_shadow(&self) -> Vec<String> {
        let mut cols: Vec<String> = self.m.after.columns.iter().map(column_def).collect();
        cols.push(format!(
            "CONSTRAINT {} PRIMARY KEY ({})",
            quote(&self.n.new_pk()),
            list(&self.new_key())
        ));
        let mut out = vec![format!(
            "CREATE TABLE IF NOT EXISTS {} ({})",
            self.shadow(),
            cols.join(", ")
        )];
        // The table is empty: building its indexes now stalls nobody.
        for (i, idx) in self.m.after.indexes.iter().enumerate() {
            if !idx.unique {
                continue;
            }
            out.push(format!(
                "CREATE {}INDEX IF NOT EXISTS {} ON {} ({})",
                if idx.unique { "UNIQUE " } else { "" },
                quote(&self.n.new_index(i)),
                self.shadow(),
                list(&idx.columns)
            ));
        }
        out
    }

    /// The indexes built once the copy is done: their temporary names (as the catalog
    /// stores them) with the statement that builds each.
    pub(in crate::db::postgres) fn deferred_indexes(&self) -> Vec<(String, String)> {
        self.m
            .after
            .indexes
            .iter()
            .enumerate()
            .filter(|(_, idx)| !idx.unique)
            .map(|(i, idx)| {
                let name = self.n.new_index(i);
                let build = format!(
                    "CREATE INDEX CONCURRENTLY IF NOT EXISTS {} ON {} ({})",
                    quote(&name),
                    self.shadow(),
                    list(&idx.columns)
                );
                (name, build)
            })
            .collect()
    }

    /// An index a crash left half-built (INVALID): `IF NOT EXISTS` would keep it as it is.
    pub(in crate::db::postgres) fn drop_invalid_index(&self, name: &str) -> String {
        format!("DROP INDEX CONCURRENTLY IF EXISTS {}", self.rel(name))
    }
}

/// Whether each of the shadow's indexes is valid, by name (`$1` schema, `$2` table).
pub(in crate::db::postgres) const SHADOW_INDEX_VALIDITY: &str = "SELECT c.relname::text, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_class t ON t.oid = i.indrelid JOIN pg_namespace n ON n.oid = t.relnamespace WHERE n.nspname = $1 AND t.relname = $2";

/// A shadow column: no identity while rows are copied (it is attached at cutover). A
/// generated column is declared with the live table's expression and computes its own
/// values: nothing turnout writes goes into it (see `written`).
fn column_def(c: &Column) -> String {
    let mut def = format!("{} {}", quote(&c.name), c.sql_type);
    if let Some(Generated::Computed { expression, stored }) = &c.generated {
        let kind = if *stored { "STORED" } else { "VIRTUAL" };
        def.push_str(&format!(" GENERATED ALWAYS AS ({expression}) {kind}"));
    }
    if !c.nullable {
        def.push_str(" NOT NULL");
    }
    if let Some(d) = &c.default {
        def.push_str(&format!(" DEFAULT ({d})"));
    }
    def
}

#[cfg(test)]
mod tests {
    use super::super::tests::migration;
    use super::*;

    #[test]
    fn a_generated_column_is_declared_with_its_expression_and_never_written() {
        let c = Column {
            name: "twice".into(),
            sql_type: "integer".into(),
            nullable: false,
            default: None,
            generated: Some(Generated::Computed {
                expression: "(qty * 2)".into(),
                stored: true,
            }),
        };
        assert_eq!(
            column_def(&c),
            "\"twice\" integer GENERATED ALWAYS AS ((qty * 2)) STORED NOT NULL"
        );
        let mut m = migration();
        m.after.columns.push(c.clone());
        m.before.columns.push(c);
        m.forward.push(crate::schema::Mapped {
            target: "twice".into(),
            source: crate::schema::Source::Column("twice".into()),
            cast: None,
        });
        let g = Gen::new(&m, "public");
        assert!(g.forward_written().iter().all(|mp| mp.target != "twice"));
        assert!(
            !g.upsert(&g.forward(), "SELECT 1", true)
                .contains("\"twice\"")
        );
    }

    #[test]
    fn the_plain_index_is_built_after_the_copy_concurrently() {
        let m = migration();
        let g = Gen::new(&m, "public");
        assert!(
            g.create_shadow().iter().all(|s| !s.contains("INDEX")),
            "{:?}",
            g.create_shadow()
        );
        let deferred = g.deferred_indexes();
        assert_eq!(deferred.len(), 1);
        let (name, build) = &deferred[0];
        assert_eq!(
            build,
            &format!(
                "CREATE INDEX CONCURRENTLY IF NOT EXISTS \"{name}\" ON \"sales\".\"_orders_new\" (\"comment\")"
            )
        );
        assert_eq!(
            g.drop_invalid_index(name),
            format!("DROP INDEX CONCURRENTLY IF EXISTS \"sales\".\"{name}\"")
        );
    }
}
