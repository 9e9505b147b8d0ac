//! What a server error means: the MySQL error number behind an sqlx error, whether it
//! is a lock wait that ran out (retry, or report a lock timeout) or a value that does
//! not fit its column (a data error naming the table, key and column, which the
//! `on_error: record` triggers also catch), and the column a server message names.

use crate::error::Error;

use super::MySql;
use super::sql::{Gen, show_key};

/// Server errors that mean "this value does not fit", as opposed to locks or outages.
/// Triggers with `on_error: record` catch exactly these (never deadlocks or timeouts,
/// after which the application's transaction is already gone).
pub(super) const DATA_ERRORS: &[u16] = &[
    1048, 1062, 1264, 1265, 1292, 1365, 1366, 1367, 1406, 1411, 1441, 1690, 3140, 3819, 4025,
];

/// ER_LOCK_WAIT_TIMEOUT: row lock or metadata lock not granted in time.
const LOCK_WAIT_TIMEOUT: &str = "1205";

pub(super) fn sql_err(context: impl Into<String>) -> impl FnOnce(sqlx::Error) -> Error {
    let context = context.into();
    move |e| Error::db(context, e)
}

/// The MySQL error number (`1205`), not the SQLSTATE that `code()` gives.
fn db_code(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(d) => d
            .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
            .map(|m| m.number().to_string()),
        _ => None,
    }
}

/// ER_LOCK_DEADLOCK: the server rolled the transaction back; it can be run again.
pub(super) fn is_deadlock(e: &sqlx::Error) -> bool {
    db_code(e).as_deref() == Some("1213")
}

/// ER_STATEMENT_TIMEOUT: MariaDB's `max_statement_time` ran out — how the cutover bounds
/// its metadata-lock waits below the whole second `lock_wait_timeout` allows.
const STATEMENT_TIMEOUT: &str = "1969";

pub(super) fn is_lock_timeout(e: &sqlx::Error) -> bool {
    matches!(
        db_code(e).as_deref(),
        Some(LOCK_WAIT_TIMEOUT | STATEMENT_TIMEOUT)
    )
}

pub(super) fn is_data_error(e: &sqlx::Error) -> bool {
    db_code(e)
        .and_then(|c| c.parse::<u16>().ok())
        .is_some_and(|c| DATA_ERRORS.contains(&c))
}

/// The column a server data error names (`for column 'x'`, `` column `db`.`t`.`x` ``).
fn column_in_message(msg: &str) -> Option<String> {
    let lower = msg.to_lowercase();
    let at = lower.find("column ")? + "column ".len();
    let rest = &msg[at..];
    let mut parts = Vec::new();
    let mut chars = rest.chars().peekable();
    while let Some(&q) = chars.peek() {
        if q != '\'' && q != '`' {
            break;
        }
        chars.next();
        let mut part = String::new();
        loop {
            match chars.next() {
                Some(c) if c == q => {
                    if chars.peek() == Some(&q) {
                        chars.next();
                        part.push(q);
                    } else {
                        break;
                    }
                }
                Some(c) => part.push(c),
                None => break,
            }
        }
        parts.push(part);
        if chars.peek() == Some(&'.') {
            chars.next();
        } else {
            break;
        }
    }
    parts.pop()
}

impl MySql {
    pub(super) fn data_error(&self, g: &Gen<'_>, key: &[String], e: &sqlx::Error) -> Error {
        let message = match e {
            sqlx::Error::Database(d) => d.message().to_string(),
            other => other.to_string(),
        };
        let pk = g.m.new_key();
        let (column, message) = match column_in_message(&message) {
            // The unique-clash guard of `batch_insert` sets the key to NULL.
            Some(c) if pk.first() == Some(&c.as_str()) && db_code(e).as_deref() == Some("1048") => {
                (
                    "(unique index)".to_string(),
                    "the value clashes with another row on a unique index of the new table"
                        .to_string(),
                )
            }
            Some(c) => (c, message),
            None => ("?".to_string(), message),
        };
        Error::Data {
            table: g.n.table.clone(),
            key: show_key(key),
            column,
            message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_messages_name_the_column() {
        assert_eq!(
            column_in_message("Data too long for column 'code' at row 1").as_deref(),
            Some("code")
        );
        assert_eq!(
            column_in_message(
                "Incorrect integer value: 'x' for column `db`.`t`.`we``ird` at row 1"
            )
            .as_deref(),
            Some("we`ird")
        );
        assert_eq!(column_in_message("Duplicate entry"), None);
    }
}
