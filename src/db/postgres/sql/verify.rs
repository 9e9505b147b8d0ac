//! Verify's SQL: where the next chunk ends, one hash per side of a chunk computed in the
//! server, and the differing rows of a chunk with their JSON images.

use super::{Gen, full_cast, list, literal, quote};
use crate::db::render_source;

impl<'a> Gen<'a> {
    // --- verify --------------------------------------------------------------------------

    /// The last key of the next verify chunk (None: the rest of the table is one chunk).
    pub(in crate::db::postgres) fn chunk_end(&self, has_lo: bool, rows: u64) -> String {
        let key = self.old_key();
        format!(
            "SELECT {} FROM {} WHERE {} ORDER BY {} OFFSET {} LIMIT 1",
            self.cursor_json("", &key),
            self.live(),
            self.range("", &key, has_lo, false),
            self.order("", &key, false),
            rows.saturating_sub(1)
        )
    }

    /// The mapped live rows of a range, with the new key, the comparable row text and the
    /// JSON image. Only mapped columns are compared: a column filled by its default alone
    /// (a volatile one included) has nothing on the live side to compare with.
    fn live_images(&self, lo: bool, hi: bool, with_image: bool) -> String {
        let old_key = self.old_key();
        let exprs: Vec<(String, String)> = self
            .m
            .forward
            .iter()
            .map(|mp| {
                (
                    mp.target.clone(),
                    render_source(mp, &|c| quote(c), &full_cast),
                )
            })
            .collect();
        format!(
            "SELECT {}, ROW({})::text AS r{} FROM (SELECT {} FROM {} WHERE {}) AS t",
            old_key
                .iter()
                .enumerate()
                .map(|(i, k)| format!("t.{} AS k{i}", quote(k)))
                .collect::<Vec<_>>()
                .join(", "),
            exprs
                .iter()
                .map(|(_, e)| e.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            if with_image {
                format!(", {} AS img", json_image(&exprs))
            } else {
                String::new()
            },
            list(&self.old_cols()),
            self.live(),
            self.range("", &old_key, lo, hi)
        )
    }

    fn shadow_images(&self, lo: bool, hi: bool, with_image: bool) -> String {
        let new_key = self.new_key();
        let cols: Vec<(String, String)> = self
            .m
            .forward
            .iter()
            .map(|mp| (mp.target.clone(), format!("s.{}", quote(&mp.target))))
            .collect();
        format!(
            "SELECT {}, ROW({})::text AS r{} FROM {} AS s WHERE {}",
            new_key
                .iter()
                .enumerate()
                .map(|(i, k)| format!("s.{} AS k{i}", quote(k)))
                .collect::<Vec<_>>()
                .join(", "),
            cols.iter()
                .map(|(_, e)| e.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            if with_image {
                format!(", {} AS img", json_image(&cols))
            } else {
                String::new()
            },
            self.shadow(),
            self.range("s.", &new_key, lo, hi)
        )
    }

    /// Row count and one hash per side for a key range, computed in the server. A side's
    /// hash is its row count and the XOR of a 64-bit hash of each row's text: order does
    /// not matter (no sort, no concatenated string), and since every row text holds its
    /// key, two sides with the same hash differ only if the hashes of their differing rows
    /// cancel out, about one chance in 2^64 for a chunk that differs. The hash of the
    /// sorted rows' MD5s it replaces (one in 2^128) took three times the server time: 100,000
    /// rows of the benchmark's shadow hash in 155 ms this way, 540 ms that way.
    pub(in crate::db::postgres) fn chunk_hashes(&self, lo: bool, hi: bool) -> String {
        let agg = "concat(count(*), ':', coalesce(bit_xor(hashtextextended(r, 0)), 0))";
        format!(
            "SELECT l.n, l.h, s.h FROM (SELECT count(*) AS n, {agg} AS h FROM ({l}) AS l) AS l, (SELECT {agg} AS h FROM ({s}) AS s) AS s",
            l = self.live_images(lo, hi, false),
            s = self.shadow_images(lo, hi, false)
        )
    }

    /// The differing rows of a range: (key, expected image, shadow image).
    pub(in crate::db::postgres) fn chunk_diffs(&self, lo: bool, hi: bool, limit: u64) -> String {
        let n = self.m.key.len();
        let on = (0..n)
            .map(|i| format!("l.k{i} = s.k{i}"))
            .collect::<Vec<_>>()
            .join(" AND ");
        let key = format!(
            "jsonb_build_array({})::text",
            (0..n)
                .map(|i| format!("coalesce(l.k{i}, s.k{i})"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let order = (0..n)
            .map(|i| format!("coalesce(l.k{i}, s.k{i})"))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "SELECT {key}, l.img::text, s.img::text FROM ({}) AS l FULL JOIN ({}) AS s ON {on} \
             WHERE l.r IS DISTINCT FROM s.r ORDER BY {order} LIMIT {limit}",
            self.live_images(lo, hi, true),
            self.shadow_images(lo, hi, true)
        )
    }
}

/// `jsonb_build_object('a', <a>, …)`, split in groups under the 100-argument limit.
fn json_image(cols: &[(String, String)]) -> String {
    let parts: Vec<String> = cols
        .chunks(40)
        .map(|group| {
            format!(
                "jsonb_build_object({})",
                group
                    .iter()
                    .map(|(name, e)| format!("{}, {e}", literal(name)))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
        .collect();
    if parts.is_empty() {
        "'{}'::jsonb".to_string()
    } else {
        parts.join(" || ")
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::migration;
    use super::*;

    /// Both sides of a chunk are hashed the same way, without sorting the chunk.
    #[test]
    fn a_chunk_is_hashed_on_both_sides_by_count_and_xor_of_row_hashes() {
        let m = migration();
        let g = Gen::new(&m, "public");
        let q = g.chunk_hashes(true, true);
        let agg = "concat(count(*), ':', coalesce(bit_xor(hashtextextended(r, 0)), 0))";
        assert_eq!(q.matches(agg).count(), 2, "{q}");
        assert!(!q.contains("ORDER BY"), "{q}");
        assert!(q.contains(&g.live()) && q.contains(&g.shadow()), "{q}");
    }
}
