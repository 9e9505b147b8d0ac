//! Backfill's slice SQL: the slice's opening (its barrier, see `backfill.rs`), the bounds
//! of the next slice, then the copy of exactly that key range, read without locks, into
//! the shadow.

use super::{Gen, LOCK_CLASS, list, literal, lock_wait, quote};

/// How long the copy waits for an application transaction that holds a shadow row it is
/// copying, at most (see [`lock_wait`]): the slice gives way and is retried.
const SLICE_LOCK_WAIT: std::time::Duration = std::time::Duration::from_millis(200);

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

    /// The advisory lock key of copier `copier`'s backfill barrier: its slice holds it
    /// exclusively, the forward trigger's deletes take every copier's shared.
    pub(in crate::db::postgres) fn barrier_key(&self, copier: usize) -> String {
        // The first copier's key is the one a single copier always had.
        let name = match copier {
            0 => format!("turnout backfill {}", self.shadow()),
            n => format!("turnout backfill {} {n}", self.shadow()),
        };
        format!("{LOCK_CLASS}, hashtext({})", literal(&name))
    }

    /// The first statements of a slice's transaction: commits that a crash may lose (only
    /// whole slices with their checkpoints, which resume copies again; phase changes keep
    /// the server's setting), the copier's barrier, waited for as long as it takes (an
    /// application transaction that deleted a row holds it), then the bound on every later
    /// wait.
    pub(in crate::db::postgres) fn slice_opening(&self, copier: usize) -> String {
        format!(
            "SET LOCAL synchronous_commit = off; SELECT pg_advisory_xact_lock({}); {}",
            self.barrier_key(copier),
            lock_wait(SLICE_LOCK_WAIT)
        )
    }

    /// The live rows of one slice, read without locks: no application write waits on the
    /// live table for the backfill. `also`: a further condition on them, or "".
    fn batch_rows(&self, has_cursor: bool, also: &str) -> String {
        let key = self.old_key();
        format!(
            "SELECT {} FROM {} WHERE {}{also} ORDER BY {}",
            list(&self.old_cols()),
            self.live(),
            self.range("", &key, has_cursor, true),
            self.order("", &key, false)
        )
    }

    /// Rows already in the shadow came from the triggers and are newer: DO NOTHING.
    pub(in crate::db::postgres) fn batch_copy(&self, has_cursor: bool) -> String {
        self.upsert(&self.forward(), &self.batch_rows(has_cursor, ""), false)
    }

    /// The same copy without `ON CONFLICT`, which costs about two thirds more per row: the
    /// rows the slice's snapshot already sees in the shadow are left out by their key (a
    /// key keeps its values, see `keys`), each looked up in the shadow's key index by a
    /// scalar subquery (as `NOT EXISTS`, with the range's bounds as parameters, the planner
    /// may hash the whole shadow for every slice instead). A trigger's row committed after
    /// that snapshot makes it fail on the shadow's key, and the slice is then copied again
    /// with [`Gen::batch_copy`].
    pub(in crate::db::postgres) fn batch_copy_absent(&self, has_cursor: bool) -> String {
        let live = self.live();
        let absent = self
            .new_key()
            .iter()
            .zip(self.old_key())
            .map(|(new, old)| format!("s.{} = {live}.{}", quote(new), quote(old)))
            .collect::<Vec<_>>()
            .join(" AND ");
        let rows = self.batch_rows(
            has_cursor,
            &format!(
                " AND (SELECT 1 FROM {} AS s WHERE {absent}) IS NULL",
                self.shadow()
            ),
        );
        // As the forward direction writes: no identity on the shadow while rows are copied.
        self.insert_select(&self.shadow(), &self.forward_written(), false, &rows)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::migration;
    use super::*;

    #[test]
    fn backfill_sql_reads_a_key_range_without_locks_behind_its_barrier() {
        let m = migration();
        let g = Gen::new(&m, "public");
        assert_eq!(
            g.batch_copy(true),
            "INSERT INTO \"sales\".\"_orders_new\" (\"id\", \"comment\", \"amount\") SELECT \"id\", \"note\", CAST((amount_cents / 100.0) AS numeric) \
             FROM (SELECT \"id\", \"amount_cents\", \"note\" FROM \"sales\".\"orders\" WHERE (\"id\") > (CAST($1 AS bigint)) AND (\"id\") <= (CAST($2 AS bigint)) \
             ORDER BY \"id\") AS t ON CONFLICT (\"id\") DO NOTHING"
        );
        assert_eq!(
            g.batch_copy_absent(true),
            "INSERT INTO \"sales\".\"_orders_new\" (\"id\", \"comment\", \"amount\") SELECT \"id\", \"note\", CAST((amount_cents / 100.0) AS numeric) \
             FROM (SELECT \"id\", \"amount_cents\", \"note\" FROM \"sales\".\"orders\" WHERE (\"id\") > (CAST($1 AS bigint)) AND (\"id\") <= (CAST($2 AS bigint)) \
             AND (SELECT 1 FROM \"sales\".\"_orders_new\" AS s WHERE s.\"id\" = \"sales\".\"orders\".\"id\") IS NULL \
             ORDER BY \"id\") AS t"
        );
        assert_eq!(
            g.slice_opening(1),
            "SET LOCAL synchronous_commit = off; \
             SELECT pg_advisory_xact_lock(1953854062, hashtext(E'turnout backfill \"sales\".\"_orders_new\" 1')); \
             SELECT set_config('lock_timeout', greatest(1, least(200, extract(epoch FROM current_setting('deadlock_timeout')::interval) * 500))::int || 'ms', true)"
        );
        assert_eq!(
            g.batch_bounds(false, "500"),
            "SELECT count(*) OVER (), jsonb_build_array(b.\"id\"::text)::text FROM (SELECT \"id\" FROM \"sales\".\"orders\" WHERE true ORDER BY \"id\" LIMIT 500) AS b ORDER BY b.\"id\" DESC LIMIT 1"
        );
    }
}
