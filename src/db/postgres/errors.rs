//! Classifying PostgreSQL errors: the SQLSTATE codes turnout acts on (a lock not granted,
//! a deadlock or serialization failure worth retrying) and the server's own message for
//! reports. What a data error in a batch means is narrowed in `backfill.rs`.

pub(super) fn sqlstate(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(d) => d.code().map(|c| c.to_string()),
        _ => None,
    }
}

pub(super) fn db_message(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(d) => d.message().to_string(),
        other => other.to_string(),
    }
}

pub(super) fn is_lock_timeout(e: &sqlx::Error) -> bool {
    sqlstate(e).as_deref() == Some("55P03")
}

pub(super) fn is_conflict(e: &sqlx::Error) -> bool {
    matches!(sqlstate(e).as_deref(), Some("40P01" | "40001"))
}
