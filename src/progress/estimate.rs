//! What percent and ETA are estimated from: each work phase's moving average once it has one,
//! and before that a prior duration for the configured image source; plus the number of
//! concurrency slots, which turns a queue position into an expected wait.
//!
//! Upstream had no priors: a phase without history counted for nothing, so the first live run
//! read 99 % (here) or 100 % (upstream) as soon as the phases mock-fast setup had measured
//! were behind it, and stayed there for the whole image request. The first real sample of a
//! phase replaces its prior (the moving average starts at its first sample).

use std::time::Duration;

use super::{Phase, PhaseStats};

const NS_PER_SECOND: f64 = 1e9;

/// Expected duration of each work phase before any run has measured it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Priors {
    /// Indexed like [`Phase::WORK`]; zero means "no estimate" (a phase that does not run).
    durations: [Duration; 7],
}

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

impl Priors {
    /// The in-process mock picture: no chat call and no download. Setup, prompts, the mock
    /// picture and the caption are the averages a release build measured on a 2-core machine
    /// (0.7 ms, 10 ms, 24 ms and 46 ms; the book's progress page has the command), rounded up.
    pub fn mock() -> Priors {
        Priors {
            durations: [ms(5), ms(20), ms(0), ms(1), ms(50), ms(0), ms(100)],
        }
    }

    /// OpenAI with `image_model`, and the chat enhancement unless `enhance` is false. The image
    /// wait is the model's typical latency at the size and quality this server asks for
    /// (`openai::image_params`); the chat call a few seconds; the download of a URL answer
    /// (the DALL·E models) about a second, of a base64 answer nothing; the caption and PNG
    /// encode of a full-size image ~52 ms of CPU plus two fsynced writes.
    pub fn live(image_model: &str, enhance: bool) -> Priors {
        let (image, download) = match image_model {
            "gpt-image-2" | "gpt-image-1" | "gpt-image-1.5" => (30_000, 10),
            "gpt-image-1-mini" => (12_000, 10),
            "dall-e-3" => (15_000, 1_000),
            "dall-e-2" => (8_000, 1_000),
            _ => (20_000, 500),
        };
        let chat = if enhance { 5_000 } else { 0 };
        Priors {
            durations: [
                ms(5),
                ms(20),
                ms(chat),
                ms(1),
                ms(image),
                ms(download),
                ms(250),
            ],
        }
    }

    /// The prior of `phase` (zero for `failed`, `completed` and phases that do not run).
    pub fn get(&self, phase: Phase) -> Duration {
        Phase::WORK
            .iter()
            .position(|&p| p == phase)
            .map_or(Duration::ZERO, |i| self.durations[i])
    }
}

impl Default for Priors {
    /// OpenAI with the default image model and the chat enhancement.
    fn default() -> Priors {
        Priors::live("gpt-image-2", true)
    }
}

/// The configuration behind estimates: priors and how many runs work at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Estimates {
    pub priors: Priors,
    /// Concurrency slots (`--max-concurrent`), at least 1.
    pub slots: usize,
}

impl Estimates {
    /// Estimates from `priors` for a server running `slots` runs at once.
    pub fn new(priors: Priors, slots: usize) -> Estimates {
        Estimates {
            priors,
            slots: slots.max(1),
        }
    }
}

impl Default for Estimates {
    fn default() -> Estimates {
        Estimates::new(Priors::default(), 1)
    }
}

/// Phase durations as the estimates use them: history first, then the prior.
#[derive(Debug, Clone, Copy)]
pub(super) struct Estimator<'a> {
    pub(super) stats: &'a PhaseStats,
    pub(super) estimates: &'a Estimates,
}

impl Estimator<'_> {
    /// `phase`'s expected duration in nanoseconds, if it has a positive one.
    pub(super) fn phase_ns(&self, phase: Phase) -> Option<f64> {
        let measured = self.stats.avg_ns(phase).filter(|&avg| avg > 0);
        let ns = measured.map_or_else(
            || self.estimates.priors.get(phase).as_nanos() as f64,
            |avg| avg as f64,
        );
        (ns > 0.0).then_some(ns)
    }

    /// A whole run's expected duration in nanoseconds: the sum over the work phases.
    pub(super) fn run_ns(&self) -> f64 {
        Phase::WORK.iter().filter_map(|&p| self.phase_ns(p)).sum()
    }

    /// Expected wait of the run at 1-based `position` in the queue: every slot finishes about
    /// one run per mean run time, so position ÷ slots mean run times.
    pub(super) fn queue_wait_seconds(&self, position: usize) -> f64 {
        position as f64 / self.estimates.slots as f64 * self.run_ns() / NS_PER_SECOND
    }
}

/// Rounded to one decimal, as percentages are served.
pub(super) fn one_decimal(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priors_follow_the_image_source() {
        let gpt = Priors::live("gpt-image-2", true);
        assert_eq!(gpt.get(Phase::ImageWait), Duration::from_secs(30));
        assert_eq!(gpt.get(Phase::EnhancePrompt), Duration::from_secs(5));
        assert!(gpt.get(Phase::Annotate) < Duration::from_secs(1));
        assert_eq!(gpt.get(Phase::Failed), Duration::ZERO);
        let dalle = Priors::live("dall-e-3", false);
        assert_eq!(dalle.get(Phase::ImageWait), Duration::from_secs(15));
        assert_eq!(dalle.get(Phase::EnhancePrompt), Duration::ZERO, "no chat");
        let mock = Priors::mock();
        assert!(mock.get(Phase::ImageWait) < Duration::from_secs(1));
        assert_eq!(mock.get(Phase::ImageDownload), Duration::ZERO);
        assert_eq!(Estimates::new(mock, 0).slots, 1, "at least one slot");
    }

    #[test]
    fn without_history_the_priors_give_the_run_time_and_queue_wait() {
        let stats = PhaseStats::default();
        let estimates = Estimates::new(Priors::live("dall-e-3", false), 4);
        let e = Estimator {
            stats: &stats,
            estimates: &estimates,
        };
        assert_eq!(e.phase_ns(Phase::ImageWait), Some(15e9));
        assert_eq!(e.phase_ns(Phase::EnhancePrompt), None);
        // 5 + 20 + 1 + 15 000 + 1 000 + 250 ms
        assert_eq!(e.run_ns(), 16_276e6);
        assert!((e.queue_wait_seconds(8) - 2.0 * 16.276).abs() < 1e-9);
        assert_eq!(one_decimal(100.0 / 3.0), 33.3);
        assert_eq!(one_decimal(12.345), 12.3);
        assert_eq!(one_decimal(99.96), 100.0);
        assert_eq!(one_decimal(0.04), 0.0);
    }
}
