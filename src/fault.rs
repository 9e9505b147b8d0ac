//! Named crash points for the fault-injection tests. When the environment variable
//! `TURNOUT_FAULT` names a point (and this is a debug build), reaching that point ends
//! the process at once, as SIGKILL would: no destructor, no goodbye to the database.
//! Release builds ignore the variable.

/// Crashes here if `TURNOUT_FAULT` names `point`; sleeps here if `TURNOUT_DELAY` is
/// `point:milliseconds` (debug builds only; the delay gives tests a window to act in).
pub fn point(point: &str) {
    if !cfg!(debug_assertions) {
        return;
    }
    if let Ok(delay) = std::env::var("TURNOUT_DELAY")
        && let Some((name, ms)) = delay.split_once(':')
        && name == point
        && let Ok(ms) = ms.parse::<u64>()
    {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
    if let Ok(wanted) = std::env::var("TURNOUT_FAULT") {
        // `name` crashes at the first visit; `name@3` at the third.
        let (name, nth) = wanted
            .split_once('@')
            .map_or((wanted.as_str(), 1), |(n, k)| (n, k.parse().unwrap_or(1)));
        if name == point && visit(point) >= nth {
            eprintln!("turnout: fault injected at {point}");
            std::process::abort();
        }
    }
}

/// A test's override of an internal size, from the environment variable `name` (debug
/// builds only), so small test tables still exercise loops of many rounds.
pub fn knob(name: &str, default: u64) -> u64 {
    if !cfg!(debug_assertions) {
        return default;
    }
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn visit(point: &str) -> u32 {
    use std::collections::HashMap;
    use std::sync::Mutex;
    static VISITS: Mutex<Option<HashMap<String, u32>>> = Mutex::new(None);
    let mut guard = VISITS.lock().unwrap_or_else(|e| e.into_inner());
    let map = guard.get_or_insert_with(HashMap::new);
    let n = map.entry(point.to_string()).or_insert(0);
    *n += 1;
    *n
}
