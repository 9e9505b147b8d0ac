//! `turnout pause`, `unpause` and `tune`: write the migration's control record, which
//! the running turnout (on any machine) reads before its next batch or verify chunk.

use std::time::Duration;

use crate::db::Database;
use crate::engine::control::{self, InForce, Tuning};
use crate::error::{Error, Result};
use crate::plan::{BatchSize, Plan};
use crate::with_backend;

pub(super) async fn pause(db: &Database, plan: &Plan) -> Result<()> {
    let p = with_backend!(db, b => control::pause(b, plan).await)?;
    println!(
        "migration {:?} paused since {} by {}: a running turnout stops after the batch in hand and waits; `turnout unpause {}` lets it carry on",
        plan.file.name,
        p.at.to_rfc3339(),
        p.by,
        plan.path
    );
    Ok(())
}

pub(super) async fn unpause(db: &Database, plan: &Plan) -> Result<()> {
    match with_backend!(db, b => control::unpause(b, plan).await)? {
        Some(p) => println!(
            "migration {:?} unpaused (paused since {} by {}): a waiting turnout carries on",
            plan.file.name,
            p.at.to_rfc3339(),
            p.by
        ),
        None => println!("migration {:?} is not paused", plan.file.name),
    }
    Ok(())
}

pub(super) async fn tune(db: &Database, plan: &Plan, t: &Tuning) -> Result<()> {
    if t.batch_size.is_none() && t.pause.is_none() && t.target_batch_time.is_none() && !t.reset {
        return Err(Error::Usage(
            "tune: give at least one of --batch-size N|auto, --pause DURATION, --target-batch-time DURATION or --reset".into(),
        ));
    }
    let f = with_backend!(db, b => control::tune(b, plan, t).await)?;
    println!(
        "migration {:?}: {} (in force from the next batch)",
        plan.file.name,
        in_force_text(&f)
    );
    Ok(())
}

/// `--batch-size`: a positive number of rows or `auto`.
pub(super) fn parse_batch_size(s: &str) -> std::result::Result<BatchSize, String> {
    if s == "auto" {
        return Ok(BatchSize::Auto);
    }
    match s.parse::<u64>() {
        Ok(0) => Err("expected at least 1 row, or auto; found 0".into()),
        Ok(n) => Ok(BatchSize::Rows(n)),
        Err(_) => Err(format!(
            "expected a positive whole number of rows, or auto; found {s:?}"
        )),
    }
}

/// `--pause`: any duration, zero included.
pub(super) fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("expected a duration such as 200ms, 2s or 1m; {s:?}: {e}"))
}

/// `--target-batch-time`: a duration above zero.
pub(super) fn parse_positive_duration(s: &str) -> std::result::Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err("expected a duration above zero, such as 200ms".into()),
        d => Ok(d),
    }
}

/// The settings in force, in words: `batch_size auto, pause 0s, …`.
pub(super) fn in_force_text(f: &InForce) -> String {
    let ms = |n: u64| humantime::format_duration(Duration::from_millis(n)).to_string();
    let batch = match f.batch_size {
        BatchSize::Auto => "auto".to_string(),
        BatchSize::Rows(n) => n.to_string(),
    };
    let mut out = format!(
        "batch_size {batch}, pause {}, target_batch_time {}",
        ms(f.pause_ms),
        ms(f.target_batch_time_ms)
    );
    match &f.tuned {
        Some(t) => out.push_str(&format!(" (tuned at {} by {})", t.at.to_rfc3339(), t.by)),
        None => out.push_str(" (the plan's)"),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_sizes_and_durations_are_checked_in_the_users_words() {
        assert_eq!(parse_batch_size("auto"), Ok(BatchSize::Auto));
        assert_eq!(parse_batch_size("250"), Ok(BatchSize::Rows(250)));
        assert!(parse_batch_size("0").unwrap_err().contains("at least 1"));
        assert!(parse_batch_size("-3").unwrap_err().contains("\"-3\""));
        assert_eq!(parse_duration("0ms"), Ok(Duration::ZERO));
        assert!(parse_positive_duration("0s").is_err());
        assert_eq!(
            parse_positive_duration("1s 500ms"),
            Ok(Duration::from_millis(1500))
        );
    }
}
