//! The shadow table's DDL: the new shape created empty next to the live table, with its
//! primary key and indexes under temporary names (they take the final names at cutover).

use super::{Gen, list, quote};
use crate::schema::Column;

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
}

/// A shadow column: no identity while rows are copied (it is attached at cutover).
fn column_def(c: &Column) -> String {
    let mut def = format!("{} {}", quote(&c.name), c.sql_type);
    if !c.nullable {
        def.push_str(" NOT NULL");
    }
    if let Some(d) = &c.default {
        def.push_str(&format!(" DEFAULT ({d})"));
    }
    def
}
