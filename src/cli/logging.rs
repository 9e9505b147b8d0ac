//! Logs through tracing on stderr; while progress bars are drawn, log lines go through
//! tracing-indicatif so they do not tear the bars.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

pub(super) fn init_logging(verbose: u8, bars: bool) {
    let default = match verbose {
        0 => "warn",
        1 => "turnout=info",
        _ => "turnout=debug,info",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    if bars {
        let indicatif = tracing_indicatif::IndicatifLayer::new();
        let fmt = tracing_subscriber::fmt::layer()
            .with_writer(indicatif.get_stderr_writer())
            .with_target(false);
        let _ = tracing_subscriber::registry()
            .with(fmt.with_filter(filter))
            .with(indicatif.with_filter(tracing_indicatif::filter::IndicatifFilter::new(false)))
            .try_init();
    } else {
        let fmt = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_target(false);
        let _ = tracing_subscriber::registry()
            .with(fmt.with_filter(filter))
            .try_init();
    }
}
