//! SQLite has no blockers to name or end: its locks belong to no session it can list, and
//! it keeps no queue of lock requests — a waiting writer retries in its own busy handler —
//! so a cutover waiting for the write lock holds no application write back behind it.
//! The cutover's wait is bounded by the busy timeout alone.

use std::time::Duration;

use super::Sqlite;
use crate::db::Blocker;
use crate::error::{Error, Result};
use crate::schema::Migration;

impl Sqlite {
    pub(super) async fn find_blockers(
        &self,
        _m: &Migration,
        _grace: Duration,
    ) -> Result<Vec<Blocker>> {
        Ok(Vec::new())
    }

    pub(super) fn end(&self, session: &str) -> Result<()> {
        Err(Error::State(format!(
            "SQLite cannot end another connection ({session}); stop the program that holds the database's write lock"
        )))
    }
}
