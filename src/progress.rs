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

impl Observer for Progress {
    fn phase_started(&self, phase: &str) {
        if !self.bars || !matches!(phase, "backfill" | "verify") {
            return;
        }
        let span = tracing::info_span!("progress", indicatif.pb_show = tracing::field::Empty);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{msg:>9} [{bar:30}] {human_pos}/{human_len} rows  {per_sec}  ETA {eta}",
        ) {
            span.pb_set_style(&style.progress_chars("=> "));
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
}
