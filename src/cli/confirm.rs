//! The one question asked before a command changes the database.

use std::io::{IsTerminal, Write};

use crate::error::{Error, Result};
use crate::plan::Plan;

/// Asks before touching the database, unless `--yes`; refuses when nobody can answer.
/// Every command that changes the database (`run`, `step`, `resume`, `rollback`) asks
/// here, so the rule is one; `action` is the question's verb ("Run", "Roll back").
pub(super) fn confirm(plan: &Plan, action: &str, yes: bool) -> Result<()> {
    if yes {
        return Ok(());
    }
    let names = plan
        .file
        .specs()
        .iter()
        .map(|t| format!("{:?}", t.table))
        .collect::<Vec<_>>()
        .join(", ");
    let tables = if plan.file.tables.is_empty() {
        "table"
    } else {
        "tables"
    };
    if !std::io::stdin().is_terminal() {
        return Err(Error::Usage(format!(
            "stdin is not a terminal, so turnout cannot ask before changing {names}; pass --yes to {} without asking",
            action.to_lowercase()
        )));
    }
    eprint!(
        "{action} migration {:?} on {tables} {names}? [y/N] ",
        plan.file.name
    );
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    let _ = std::io::stdin().read_line(&mut answer);
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(Error::Usage("not confirmed; nothing was changed".into()))
    }
}
