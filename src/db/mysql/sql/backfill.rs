//! Backfill slice SQL: the keys of the next slice in key order (locking reads that hold
//! the slice's range until it commits, see `db/mysql/backfill.rs` for why) and the
//! INSERT … SELECT that copies a key range through the forward mapping.

use super::{Bound, Gen, key_cmp, quote};

impl<'a> Gen<'a> {
    /// Locks the next slice of live rows (shared, so a concurrent update or delete waits
    /// for this slice to commit and its trigger then rewrites or deletes the copy).
    pub(in crate::db::mysql) fn batch_keys(&self, after: Option<&[String]>, limit: u64) -> Bound {
        let mut b = self.keys_after(after, "LIMIT ? LOCK IN SHARE MODE");
        b.binds.push(limit.to_string());
        b
    }

    /// Live keys after `after` (all when None) in key order, as key JSON, then `tail`.
    pub(in crate::db::mysql) fn keys_after(&self, after: Option<&[String]>, tail: &str) -> Bound {
        let cols = self.old_key_cols();
        let cond = after.map(|a| key_cmp(&cols, a, ">", false));
        Bound {
            sql: format!(
                "SELECT {} FROM {}{} ORDER BY {} {tail}",
                self.key_json(&cols),
                self.n.q(&self.n.table),
                cond.as_ref()
                    .map(|c| format!(" WHERE {}", c.sql))
                    .unwrap_or_default(),
                Self::order_by(&cols)
            ),
            binds: cond.map(|c| c.binds).unwrap_or_default(),
        }
    }

    /// The key `limit` rows on, read with a locking read that takes the same next-key
    /// locks over the slice as reading every key, without shipping them.
    ///
    /// The slice's size is bound, not written in: the text stays the same from slice to
    /// slice, so it is prepared once. A new text per slice overflowed sqlx's cache of
    /// prepared statements, and the close of the one evicted, sent alone and not
    /// answered, held the next statement ~40 ms in TCP (Nagle against delayed ACK) while
    /// the slice held its locks.
    pub(in crate::db::mysql) fn batch_last_key(
        &self,
        after: Option<&[String]>,
        limit: u64,
    ) -> Bound {
        let mut b = self.keys_after(after, "LIMIT 1 OFFSET ? LOCK IN SHARE MODE");
        b.binds.push(limit.saturating_sub(1).to_string());
        b
    }

    /// Copies live rows in `(after, last]` through the forward mapping. A key already in
    /// the shadow was written by a trigger and is newer: keep it. A clash on another
    /// unique index is not that, and setting the key to NULL turns it into an error
    /// instead of a silently skipped row (INSERT IGNORE would also swallow truncation).
    pub(in crate::db::mysql) fn batch_insert(
        &self,
        after: Option<&[String]>,
        last: &[String],
    ) -> Bound {
        let cols = self.old_key_cols();
        let mut conds = Vec::new();
        let mut binds = Vec::new();
        if let Some(a) = after {
            let b = key_cmp(&cols, a, ">", false);
            conds.push(b.sql);
            binds.extend(b.binds);
        }
        let b = key_cmp(&cols, last, "<", true);
        conds.push(b.sql);
        binds.extend(b.binds);
        let src = format!(
            "(SELECT {} FROM {} WHERE {}) AS turnout_src",
            self.old_columns(),
            self.n.q(&self.n.table),
            conds.join(" AND ")
        );
        // Qualified: the derived table has columns of the same names.
        let shadow = self.n.q(&self.n.shadow);
        let new_key = self.m.new_key();
        let same: Vec<String> = new_key
            .iter()
            .map(|k| format!("{shadow}.{q} <=> VALUES({shadow}.{q})", q = quote(k)))
            .collect();
        let k0 = format!("{shadow}.{}", quote(new_key[0]));
        let sql = format!(
            "{} ON DUPLICATE KEY UPDATE {k0} = IF({}, {k0}, NULL)",
            self.insert_mapped(&self.n.q(&self.n.shadow), &self.forward_written(), &src),
            same.join(" AND ")
        );
        Bound { sql, binds }
    }
}
