//! Reading SQLite's errors: the message to show, and whether the database was locked
//! (busy) rather than the statement wrong.

pub(super) fn db_message(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(d) => d.message().to_string(),
        other => other.to_string(),
    }
}

pub(super) fn is_busy(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => {
            matches!(d.code().as_deref(), Some("5" | "6" | "261" | "517"))
                || d.message().contains("locked")
        }
        _ => false,
    }
}
