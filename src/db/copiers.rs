//! The backfill's copiers on PostgreSQL and MariaDB: slices go two at a time, each on its
//! own connection, the second over the key range right after the first's. What the two
//! databases share is here (how many copy, the sizes of a pair, the pair's bookkeeping);
//! how a slice copies, and why the pair cannot undo an application write, is each
//! backend's `backfill.rs`.

use std::future::Future;
use std::time::Duration;

use tokio::sync::oneshot;

use super::{BatchDone, Cursor};

/// At most this many slices copy at once.
pub const MAX: usize = 2;

/// How many slices copy at once: `TURNOUT_COPIERS` (1 or 2), else [`MAX`]. Read in release
/// builds too, so the benchmark can compare one with two.
pub fn count() -> usize {
    // Read once: asked before every pair of slices.
    static COUNT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *COUNT.get_or_init(|| {
        std::env::var("TURNOUT_COPIERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(MAX)
            .clamp(1, MAX)
    })
}

/// The second slice's rows beside a first of `want`, with `room` rows left in the batch
/// (`want` ≤ `room`) and `copiers` copying; 0: no second slice.
pub fn second_rows(copiers: usize, want: u64, room: u64) -> u64 {
    match copiers {
        1 => 0,
        _ => want.min(room - want),
    }
}

/// Where the first slice learns the last key of its range (None: it has no rows).
pub type Tell = oneshot::Sender<Option<Cursor>>;

/// Runs the first slice (given the sender of its range's end) and, once it has read that
/// end, the second from there, at the same time. The second does not run when the first
/// has no rows, fails before reading its range, or `second_rows` is 0.
pub async fn pair<T, First, FirstFut, Second, SecondFut>(
    first: First,
    second_rows: u64,
    second: Second,
) -> (T, Option<T>)
where
    First: FnOnce(Tell) -> FirstFut,
    FirstFut: Future<Output = T>,
    Second: FnOnce(Cursor) -> SecondFut,
    SecondFut: Future<Output = T>,
{
    let (tell, told) = oneshot::channel();
    let second = async {
        match told.await {
            Ok(Some(from)) if second_rows > 0 => Some(second(from).await),
            _ => None,
        }
    };
    tokio::join!(first(tell), second)
}

/// A slice's own progress as the batch's, the batch having copied `base` before it.
pub fn within(base: &BatchDone, slice: &BatchDone) -> BatchDone {
    BatchDone {
        rows: base.rows + slice.rows,
        last: slice.last.clone().or_else(|| base.last.clone()),
        rest: Duration::ZERO,
    }
}

/// Adds a committed slice of `want` rows asked to the batch; whether it was full (a slice
/// short of `want` reached the end of the table).
pub fn add(done: &mut BatchDone, slice: &BatchDone, want: u64) -> bool {
    done.rows += slice.rows;
    if slice.last.is_some() {
        done.last = slice.last.clone();
    }
    slice.rows == want
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(rows: u64, last: Option<u64>) -> BatchDone {
        BatchDone {
            rows,
            last: last.map(|k| serde_json::json!([k.to_string()])),
            rest: Duration::ZERO,
        }
    }

    #[test]
    fn a_pair_fills_the_batch_without_passing_its_end() {
        assert_eq!(second_rows(2, 40, 300), 40);
        assert_eq!(second_rows(2, 40, 60), 20);
        assert_eq!(second_rows(2, 300, 300), 0);
        assert_eq!(second_rows(1, 40, 300), 0);
    }

    #[test]
    fn the_batch_counts_each_slice_and_ends_at_the_last_key_copied() {
        let mut done = at(100, Some(100));
        let first = at(40, Some(140));
        assert_eq!(within(&done, &first), at(140, Some(140)));
        assert!(add(&mut done, &first, 40));
        // A second slice past the end of the table: nothing copied, the cursor stays.
        assert!(!add(&mut done, &at(0, None), 40));
        assert_eq!(done, at(140, Some(140)));
    }

    #[tokio::test]
    async fn the_second_slice_starts_from_the_end_the_first_has_read() {
        let (first, second) = pair(
            |tell: Tell| async move {
                let _ = tell.send(Some(serde_json::json!(["40"])));
                "first".to_string()
            },
            40,
            |from: Cursor| async move { format!("second from {from}") },
        )
        .await;
        assert_eq!(first, "first");
        assert_eq!(second.as_deref(), Some("second from [\"40\"]"));
        let (_, none) = pair(
            |tell: Tell| async move {
                let _ = tell.send(None);
                "empty".to_string()
            },
            40,
            |_from: Cursor| async move { "never".to_string() },
        )
        .await;
        assert_eq!(none, None);
    }
}
