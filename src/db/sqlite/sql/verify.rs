//! Chunk SQL of verify: a chunk's upper bound, its counts (rows, rows that differ, shadow
//! rows no live row explains) and the images of the rows that differ. SQLite's own
//! equality decides, on the live rows mapped as the backfill maps them.

use super::furniture::mentions;
use super::table_text::GeneratedColumn;
use super::{cast, key_json, list, literal, quote, range};
use crate::db::render_source;
use crate::schema::{Migration, Source};

/// The generated columns verify compares, live value against shadow value: those whose
/// expression reads only columns the plan carries unchanged (same name, no cast), so
/// the new table must compute what the live one holds. The others (reading a column the
/// plan converts or adds, or another generated column) are left to SQLite, which
/// computes them on the shadow all the same.
pub(in crate::db::sqlite) fn comparable<'g>(
    m: &Migration,
    generated: &'g [GeneratedColumn],
) -> Vec<&'g GeneratedColumn> {
    let unchanged = |c: &str| {
        m.forward.iter().any(|mp| {
            mp.target == c && mp.cast.is_none() && matches!(&mp.source, Source::Column(o) if o == c)
        })
    };
    generated
        .iter()
        .filter(|g| {
            let other_generated = generated
                .iter()
                .any(|o| o.name != g.name && mentions(&g.expr, &o.name));
            let converted = m
                .after
                .columns
                .iter()
                .any(|c| mentions(&g.expr, &c.name) && !unchanged(&c.name));
            !other_generated && !converted
        })
        .collect()
}

/// A value as `json_object` can hold it: JSON has no bytes, so a BLOB (in any column,
/// SQLite's typing being the value's own) is shown as its SQL literal, `x'00FF'`.
fn json_value(v: &str) -> String {
    format!("CASE WHEN typeof({v}) = 'blob' THEN 'x''' || hex({v}) || '''' ELSE {v} END")
}

/// The statements of one verify, built once from the migration.
pub(in crate::db::sqlite) struct ChunkSql<'a> {
    m: &'a Migration,
    old_key: Vec<&'a str>,
    new_key: Vec<&'a str>,
    old_cols: Vec<&'a str>,
    mapped_targets: Vec<&'a str>,
    live: String,
    shadow: String,
    on: String,
    k0: String,
    mismatch: String,
    /// The generated columns compared.
    generated: Vec<&'a str>,
}

impl<'a> ChunkSql<'a> {
    /// `generated`: the live table's generated columns, which the shadow declares too.
    pub(in crate::db::sqlite) fn new(
        m: &'a Migration,
        generated: &'a [GeneratedColumn],
    ) -> ChunkSql<'a> {
        let old_key = m.old_key();
        let new_key = m.new_key();
        let old_cols: Vec<&str> = m.before.columns.iter().map(|c| c.name.as_str()).collect();
        let generated: Vec<&str> = comparable(m, generated)
            .into_iter()
            .map(|g| g.name.as_str())
            .collect();
        let mut mapped_targets: Vec<&str> = m.forward.iter().map(|mp| mp.target.as_str()).collect();
        mapped_targets.extend(&generated);
        // Columns the mapping does not fill (new columns with only a default) are compared
        // on the shadow side by their default, evaluated the same way.
        let live = quote(&m.table);
        let shadow = quote(&m.shadow);
        // SQLite's own equality (`IS`, so NULLs match) decides, as the stored values would:
        // 109 and 109.0 are equal, '109' and 109 are not.
        // The live chunk joined to the shadow by key (the shadow's primary key index does the
        // lookups), plus shadow rows in the same key range that no live row explains.
        let on = new_key
            .iter()
            .map(|k| format!("l.{q} = s.{q}", q = quote(k)))
            .collect::<Vec<_>>()
            .join(" AND ");
        let k0 = quote(new_key[0]);
        let same = mapped_targets
            .iter()
            .map(|c| format!("l.{q} IS s.{q}", q = quote(c)))
            .collect::<Vec<_>>()
            .join(" AND ");
        let mismatch = format!("(s.{k0} IS NULL OR NOT ({same}))");
        ChunkSql {
            m,
            old_key,
            new_key,
            old_cols,
            mapped_targets,
            live,
            shadow,
            on,
            k0,
            mismatch,
            generated,
        }
    }

    /// The last key of the chunk after `?1` (when `lo`), `chunk_rows` rows on.
    pub(in crate::db::sqlite) fn upper_bound(&self, lo: bool, chunk_rows: u64) -> String {
        let (old_key, live) = (&self.old_key, &self.live);
        format!(
            "SELECT {} FROM {live} WHERE {} ORDER BY {} LIMIT 1 OFFSET {}",
            key_json(old_key, ""),
            range(old_key, lo, false),
            list(old_key),
            chunk_rows.saturating_sub(1)
        )
    }

    fn render_live(&self, lo: bool, hi: bool) -> String {
        let (m, live) = (self.m, &self.live);
        let mut read = self.old_cols.clone();
        read.extend(&self.generated);
        let rows = format!(
            "SELECT {} FROM {live} WHERE {}",
            list(&read),
            range(&self.old_key, lo, hi)
        );
        let exprs = m
            .forward
            .iter()
            .map(|mp| {
                format!(
                    "{} AS {}",
                    render_source(mp, &|c| quote(c), &cast),
                    quote(&mp.target)
                )
            })
            .chain(
                self.generated
                    .iter()
                    .map(|g| format!("{} AS {}", quote(g), quote(g))),
            )
            .collect::<Vec<_>>()
            .join(", ");
        format!("SELECT {exprs} FROM ({rows}) AS t")
    }

    fn orphans(&self, lo: bool, hi: bool) -> String {
        let (m, live, shadow) = (self.m, &self.live, &self.shadow);
        let match_live = m
            .key
            .iter()
            .map(|k| format!("o.{} = s.{}", quote(&k.old), quote(&k.new)))
            .collect::<Vec<_>>()
            .join(" AND ");
        format!(
            "FROM {shadow} AS s WHERE {} AND NOT EXISTS (SELECT 1 FROM {live} AS o WHERE {match_live})",
            range(&self.new_key, lo, hi)
        )
    }

    /// Rows of the chunk, rows that differ, shadow rows no live row explains.
    pub(in crate::db::sqlite) fn counts(&self, lo: bool, hi: bool) -> String {
        let (shadow, on, mismatch) = (&self.shadow, &self.on, &self.mismatch);
        format!(
            "SELECT count(*), coalesce(sum(CASE WHEN {mismatch} THEN 1 ELSE 0 END), 0), (SELECT count(*) {}) FROM ({}) AS l LEFT JOIN {shadow} AS s ON {on}",
            self.orphans(lo, hi),
            self.render_live(lo, hi)
        )
    }

    fn side_image(&self, side: &str) -> String {
        let k0 = &self.k0;
        let mut sorted = self.mapped_targets.clone();
        sorted.sort();
        let parts = sorted
            .iter()
            .map(|c| {
                format!(
                    "{}, {}",
                    literal(c),
                    json_value(&format!("{side}.{}", quote(c)))
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        format!("CASE WHEN {side}.{k0} IS NULL THEN NULL ELSE json_object({parts}) END")
    }

    /// Key, expected image and shadow image of at most `limit` rows that differ.
    pub(in crate::db::sqlite) fn differing(&self, lo: bool, hi: bool, limit: u64) -> String {
        let (new_key, shadow, on, mismatch) =
            (&self.new_key, &self.shadow, &self.on, &self.mismatch);
        format!(
            "SELECT {}, {}, {} FROM ({}) AS l LEFT JOIN {shadow} AS s ON {on} WHERE {mismatch} \
             UNION ALL SELECT {}, NULL, {} {} LIMIT {limit}",
            key_json(new_key, "l."),
            self.side_image("l"),
            self.side_image("s"),
            self.render_live(lo, hi),
            key_json(new_key, "s."),
            self.side_image("s"),
            self.orphans(lo, hi)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::sqlite::sql::table_text::read_table;

    /// A generated column over columns carried unchanged is compared, live against
    /// shadow; one that reads another generated column, or a column the plan converts
    /// or adds, is not.
    #[test]
    fn generated_columns_are_compared_as_their_expression_over_the_mapped_row() {
        let before = crate::schema::fixtures::orders(["INTEGER", "INTEGER", "TEXT"], false);
        let plan = crate::plan::parse(
            "version: 1\nname: m\ntable: orders\nchanges:\n  - add_column: {name: extra, type: INTEGER, default: '1'}\n  - alter_column: {name: note, type: 'varchar(9)'}\n",
            "p.yaml",
        )
        .expect("plan");
        let m = Migration::derive(&plan, &before).expect("derive");
        let text = read_table(
            "CREATE TABLE orders (id INTEGER PRIMARY KEY, amount_cents INTEGER, note TEXT, \
             twice INT AS (amount_cents * 2), again INT AS (twice + 1) STORED, more INT AS (extra + 1), \
             short TEXT AS (substr(note, 1, 2)))",
        );
        let names: Vec<&str> = comparable(&m, &text.generated)
            .iter()
            .map(|g| g.name.as_str())
            .collect();
        assert_eq!(names, ["twice"]);
        insta::assert_snapshot!(ChunkSql::new(&m, &text.generated).counts(true, true));
    }
}
