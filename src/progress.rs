//! What a running migration shows a person: a progress bar per long phase on stderr
//! (when it is a terminal) and one result line per phase on stdout. The command line and
//! the demo both render the engine's [`Observer`] calls through it, so it sits below both.

use std::sync::Mutex;
use std::time::Duration;

use tracing::Span;
use tracing_indicatif::span_ext::IndicatifSpanExt;

use crate::db::RowDiff;
use crate::engine::Observer;

/// Progress bars on stderr (when it is a terminal) and one result line per phase on stdout.
pub struct Progress {
    bars: bool,
    span: Mutex<Option<Span>>,
}

impl Progress {
    pub fn new(bars: bool) -> Progress {
        Progress {
            bars,
            span: Mutex::new(None),
        }
    }

    fn with_span(&self, f: impl FnOnce(&Span)) {
        if let Ok(guard) = self.span.lock()
            && let Some(span) = guard.as_ref()
        {
            f(span);
        }
    }
}

/// The bar of a long phase. indicatif's own `{per_sec}` prints fractions of a row
/// (`138,201.5078/s`), so the rate is a key of ours.
fn bar_style() -> Option<indicatif::ProgressStyle> {
    let style = indicatif::ProgressStyle::with_template(
        "{msg:>9} [{bar:30}] {human_pos}/{human_len} rows  {rows_per_sec}  ETA {eta}",
    )
    .ok()?;
    Some(
        style
            .with_key(
                "rows_per_sec",
                |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = w.write_str(&rows_per_sec(state.per_sec()));
                },
            )
            .progress_chars("=> "),
    )
}

/// A rate as whole rows per second with thousands separators: `138,201 rows/s`.
pub fn rows_per_sec(rate: f64) -> String {
    let whole = if rate.is_finite() && rate > 0.0 {
        rate.floor() as u64
    } else {
        0
    };
    format!("{} rows/s", thousands(whole))
}

/// A count with thousands separators, as the bars print theirs: `1,048,576`.
pub fn thousands(n: u64) -> String {
    indicatif::HumanCount(n).to_string()
}

impl Observer for Progress {
    fn phase_started(&self, phase: &str) {
        if !self.bars || !matches!(phase, "backfill" | "verify") {
            return;
        }
        let span = tracing::info_span!("progress", indicatif.pb_show = tracing::field::Empty);
        if let Some(style) = bar_style() {
            span.pb_set_style(&style);
        }
        span.pb_set_message(phase);
        span.pb_start();
        if let Ok(mut guard) = self.span.lock() {
            *guard = Some(span);
        }
    }

    fn phase_finished(&self, phase: &str, took: Duration, summary: &str) {
        if let Ok(mut guard) = self.span.lock() {
            guard.take();
        }
        println!("{phase:>10}  {:>8.2?}  {summary}", took);
    }

    fn backfill_progress(&self, done: u64, total: u64) {
        self.with_span(|s| {
            s.pb_set_length(total);
            s.pb_set_position(done);
        });
    }

    fn verify_progress(&self, done: u64, total: u64) {
        self.backfill_progress(done, total);
    }

    fn diff(&self, _diff: &RowDiff, rendered: &str) {
        println!("{rendered}");
    }

    fn waiting(&self, why: Option<&str>) {
        match why {
            Some(why) => eprintln!("turnout: {why}"),
            None => eprintln!("turnout: carrying on"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::rows_per_sec;

    #[test]
    fn rates_are_whole_rows_per_second() {
        assert_eq!(rows_per_sec(138_201.507_8), "138,201 rows/s");
        assert_eq!(rows_per_sec(0.4), "0 rows/s");
        assert_eq!(rows_per_sec(999.99), "999 rows/s");
        assert_eq!(rows_per_sec(f64::NAN), "0 rows/s");
        assert_eq!(rows_per_sec(f64::INFINITY), "0 rows/s");
    }

    /// A terminal that keeps what is drawn on it.
    #[derive(Debug, Default, Clone)]
    struct Screen(std::sync::Arc<std::sync::Mutex<String>>);

    impl indicatif::TermLike for Screen {
        fn width(&self) -> u16 {
            120
        }
        fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn write_line(&self, s: &str) -> std::io::Result<()> {
            self.write_str(&format!("{s}\n"))
        }
        fn write_str(&self, s: &str) -> std::io::Result<()> {
            if let Ok(mut screen) = self.0.lock() {
                screen.push_str(s);
            }
            Ok(())
        }
        fn clear_line(&self) -> std::io::Result<()> {
            Ok(())
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The bar as drawn: a whole number of rows per second, never indicatif's fraction.
    #[test]
    fn the_bar_draws_whole_rows_per_second() {
        let screen = Screen::default();
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(10_000_000),
            indicatif::ProgressDrawTarget::term_like(Box::new(screen.clone())),
        );
        bar.set_style(super::bar_style().expect("template"));
        bar.set_message("backfill");
        std::thread::sleep(std::time::Duration::from_millis(30));
        bar.set_position(1_234_567);
        // Finished, the rate is rows over elapsed time: a fraction before rounding.
        bar.finish();
        let drawn = screen.0.lock().expect("screen").clone();
        assert!(drawn.contains("1,234,567/10,000,000 rows"), "{drawn:?}");
        let rate = drawn
            .split("rows  ")
            .last()
            .and_then(|r| r.split(" rows/s").next())
            .unwrap_or_default()
            .to_string();
        assert!(
            !rate.is_empty() && rate.chars().all(|c| c.is_ascii_digit() || c == ','),
            "the rate is not whole rows: {rate:?} in {drawn:?}"
        );
    }
}
