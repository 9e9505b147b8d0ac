//! Backfill's batch SQL: the bounds of the next batch read without locks, then the copy of
//! exactly that key range, share-locked, into the shadow.

use super::{Gen, list};

impl<'a> Gen<'a> {
    // --- backfill ------------------------------------------------------------------------

    /// The next batch's size and last key, read from the committed rows (no lock): the copy
    /// then takes exactly the range up to that key, so a row whose key an application
    /// changes mid-batch can never push the cursor past rows not yet copied.
    pub(in crate::db::postgres) fn batch_bounds(&self, has_cursor: bool, limit: &str) -> String {
        let key = self.old_key();
        format!(
            "SELECT count(*) OVER (), {} FROM (SELECT {} FROM {} WHERE {} ORDER BY {} LIMIT {limit}) AS b ORDER BY {} LIMIT 1",
            self.cursor_json("b.", &key),
            list(&key),
            self.live(),
            self.range("", &key, has_cursor, false),
            self.order("", &key, false),
            self.order("b.", &key, true)
        )
    }

    /// The live rows of one batch, share-locked: a concurrent update or delete of them
    /// waits for the batch (or the batch waits for it and reads its result).
    fn batch_rows(&self, has_cursor: bool) -> String {
        let key = self.old_key();
        format!(
            "SELECT {} FROM {} WHERE {} ORDER BY {} FOR SHARE",
            list(&self.old_cols()),
            self.live(),
            self.range("", &key, has_cursor, true),
            self.order("", &key, false)
        )
    }

    /// Rows already in the shadow came from the triggers and are newer: DO NOTHING.
    pub(in crate::db::postgres) fn batch_copy(&self, has_cursor: bool) -> String {
        self.upsert(&self.forward(), &self.batch_rows(has_cursor), false)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::migration;
    use super::*;

    #[test]
    fn backfill_sql_reads_a_locked_key_range() {
        let m = migration();
        let g = Gen::new(&m, "public");
        assert_eq!(
            g.batch_copy(true),
            "INSERT INTO \"sales\".\"_orders_new\" (\"id\", \"comment\", \"amount\") SELECT \"id\", \"note\", CAST((amount_cents / 100.0) AS numeric) \
             FROM (SELECT \"id\", \"amount_cents\", \"note\" FROM \"sales\".\"orders\" WHERE (\"id\") > (CAST($1 AS bigint)) AND (\"id\") <= (CAST($2 AS bigint)) \
             ORDER BY \"id\" FOR SHARE) AS t ON CONFLICT (\"id\") DO NOTHING"
        );
        assert_eq!(
            g.batch_bounds(false, "500"),
            "SELECT count(*) OVER (), jsonb_build_array(b.\"id\"::text)::text FROM (SELECT \"id\" FROM \"sales\".\"orders\" WHERE true ORDER BY \"id\" LIMIT 500) AS b ORDER BY b.\"id\" DESC LIMIT 1"
        );
    }
}
