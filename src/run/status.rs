//! The status printer: every 2 seconds, one aligned log line per generation in flight.
//! Unlike the Go printer it only reads — it never prunes finished runs.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::progress::{Progress, Snapshot};

/// How often the printer looks.
pub const INTERVAL: Duration = Duration::from_secs(2);

/// Spawns the printer on the current runtime.
pub fn spawn(progress: Arc<Progress>, interval: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        tracing::info!("status printer started (interval={interval:?})");
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let running: Vec<Snapshot> = progress.in_flight();
            for row in rows(&running, SystemTime::now()) {
                tracing::info!(target: "dalleserver::status", "{row}");
            }
        }
    })
}

/// Formats runs as aligned rows: phase, address, percent, ETA, elapsed, series, cache, error.
pub fn rows(runs: &[Snapshot], now: SystemTime) -> Vec<String> {
    let now_ns = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    let cells: Vec<[String; 8]> = runs
        .iter()
        .map(|s| {
            let eta = if !s.done && s.eta_seconds > 0.0 {
                short_duration(s.eta_seconds as u64)
            } else {
                String::new()
            };
            let elapsed =
                short_duration((now_ns.saturating_sub(s.started_ns).max(0) / 1_000_000_000) as u64);
            [
                phase(s),
                shorten(&s.address),
                format!("{:5.1}%", s.percent),
                eta,
                elapsed,
                s.series.clone(),
                if s.cache_hit {
                    "yes".into()
                } else {
                    "no".into()
                },
                s.error.clone(),
            ]
        })
        .collect();
    let mut widths = [0usize; 8];
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    cells
        .iter()
        .map(|row| {
            let parts: Vec<String> = row
                .iter()
                .enumerate()
                .map(|(i, cell)| {
                    if i == 3 {
                        format!("{cell:>w$}", w = widths[i])
                    } else {
                        format!("{cell:<w$}", w = widths[i])
                    }
                })
                .collect();
            parts.join("  ").trim_end().to_string()
        })
        .collect()
}

/// The phase cell: `queued #3` while the run waits for a slot (it is in `setup`, but doing
/// nothing), and the retry the run waits for, if any.
fn phase(s: &Snapshot) -> String {
    let name = match s.queue_position {
        Some(position) => format!("queued #{position}"),
        None => s.current_phase.as_str().to_string(),
    };
    match &s.retrying {
        Some(r) => format!("{name} (retry {}/{})", r.attempt, r.attempts),
        None => name,
    }
}

/// `0xf503…179b` for long addresses.
fn shorten(address: &str) -> String {
    let chars: Vec<char> = address.chars().collect();
    if chars.len() <= 12 {
        return address.to_string();
    }
    let head: String = chars[..6].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}…{tail}")
}

/// Go-style whole-second durations: `45s`, `1m5s`, `2h0m3s`.
fn short_duration(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Address, SeriesName};
    use crate::progress::{Estimates, Phase, Priors, RetryWait, RunKey};

    fn key(n: u8) -> RunKey {
        let address = Address::parse(&format!("0x{n:040x}")).unwrap();
        RunKey::new(SeriesName::normalize("simple"), address)
    }

    #[tokio::test(start_paused = true)]
    async fn queued_runs_and_retry_waits_are_shown_as_such() {
        let p = Progress::in_memory(Duration::from_secs(60))
            .with_estimates(Estimates::new(Priors::live("dall-e-3", false), 1));
        let (running, queued) = (key(1), key(2));
        let _ = p.start(&running, "r1");
        p.transition(&running, Phase::ImageWait);
        let wait = RetryWait {
            operation: "image",
            attempt: 2,
            attempts: 3,
            wait: Duration::from_secs(8),
            reason: "OpenAI API error (status 503): busy".into(),
        };
        p.set_retrying(&running, Some(&wait));
        let _ = p.start(&queued, "r2");
        p.set_queue_position(&queued, Some(1));
        let now = SystemTime::now();
        let rows = rows(&p.in_flight(), now);
        // dall-e-3 without chat: 16.276 s a run; the queued one waits one run, then runs.
        assert!(
            rows[0].starts_with("image_wait (retry 2/3)  0x0000…0001"),
            "{rows:?}"
        );
        assert!(
            rows[0].contains("  24s  "),
            "8 s of waiting, then 16 s: {rows:?}"
        );
        assert!(
            rows[1].starts_with("queued #1               0x0000…0002"),
            "{rows:?}"
        );
        assert!(rows[1].contains("  0.0%  32s  "), "{rows:?}");
    }

    #[test]
    fn durations_and_addresses_are_compact() {
        assert_eq!(short_duration(45), "45s");
        assert_eq!(short_duration(65), "1m5s");
        assert_eq!(short_duration(7203), "2h0m3s");
        assert_eq!(
            shorten("0xf503017d7baf7fbc0fff7492b751025c6a78179b"),
            "0xf503…179b"
        );
        assert_eq!(shorten("short"), "short");
    }
}
