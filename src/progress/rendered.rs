//! Progress snapshots rendered straight to JSON, for the frequent `/dalle` polls.
//!
//! A snapshot is ~12 KB of JSON (mostly the run's dress) and many clients poll it several
//! times a second, yet between two updates of a run only four of its numbers change: percent,
//! ETA, and the current phase's percent and ETA, which move with the clock. So the rest is
//! rendered once per change of the run or of the phase statistics, as the text before and
//! after those four fields, and a poll writes four numbers between the two. The bytes are
//! exactly what serialising the [`Snapshot`] gives (the tests compare them).

use bytes::Bytes;
use tokio::time::Instant;

use super::estimate::Estimator;
use super::snapshot::Run;
use super::{RunKey, Snapshot};

/// The four clock-driven fields with the values [`split`] renders them with.
const CLOCK_FIELDS: &str =
    r#""percent":0.0,"etaSeconds":0.0,"phasePercent":0.0,"phaseETASeconds":0.0,"#;

/// A run's snapshot JSON without its clock-driven fields, for one version of the run and of
/// the phase statistics.
#[derive(Debug)]
pub(super) struct Rendered {
    run_version: u64,
    stats_version: u64,
    /// The queue position is read from the queue, not pushed as a change of the run.
    queue_position: Option<usize>,
    /// Shared by every poll of this version: a poll clones the handle, not the bytes.
    before: Bytes,
    after: Bytes,
}

/// A run's snapshot as served to a poller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolledSnapshot {
    /// The snapshot's JSON, byte for byte what serialising [`Snapshot`] gives.
    pub json: SnapshotJson,
    pub done: bool,
    /// Finished with an error.
    pub failed: bool,
}

/// A snapshot's JSON in three parts, so a poll writes the ~12 KB that did not change from
/// shared buffers (one `writev`) instead of copying them into a new one: the rendering before
/// the clock-driven fields, those fields, and the rendering after them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotJson {
    pub before: Bytes,
    pub clock: Bytes,
    pub after: Bytes,
}

impl SnapshotJson {
    /// The parts, in order.
    pub fn parts(&self) -> [&Bytes; 3] {
        [&self.before, &self.clock, &self.after]
    }

    /// The whole JSON in one buffer (tests, and callers that need it contiguous).
    pub fn to_vec(&self) -> Vec<u8> {
        [&self.before[..], &self.clock[..], &self.after[..]].concat()
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.parts().iter().map(|p| p.len()).sum()
    }

    /// Whether it is empty (never, for a rendered snapshot).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The snapshot of `run` at `now` as JSON, reusing (or first making) its rendering.
pub(super) fn render(
    run: &mut Run,
    key: &RunKey,
    estimator: Estimator<'_>,
    stats_version: u64,
    now: Instant,
) -> PolledSnapshot {
    let (done, failed) = (run.done, run.failed());
    let position = run.queue_position();
    let current = run.rendered.as_ref().is_some_and(|r| {
        r.run_version == run.version
            && r.stats_version == stats_version
            && r.queue_position == position
    });
    if !current {
        let mut snapshot = run.snapshot(key, estimator, now);
        snapshot.queue_position = position;
        run.rendered = split(&snapshot, run.version, stats_version);
    }
    let json = match &run.rendered {
        Some(rendered) => {
            let (phase_percent, phase_eta) = run.phase_progress(estimator, now);
            let (percent, eta) = run.overall_progress(estimator, now);
            let mut clock = Vec::with_capacity(128);
            for (name, value) in [
                ("\"percent\":", percent),
                (",\"etaSeconds\":", eta),
                (",\"phasePercent\":", phase_percent),
                (",\"phaseETASeconds\":", phase_eta),
            ] {
                clock.extend_from_slice(name.as_bytes());
                // serde_json's own number formatting, so the bytes match a full serialisation.
                if serde_json::to_writer(&mut clock, &value).is_err() {
                    clock.extend_from_slice(b"null");
                }
            }
            clock.push(b',');
            SnapshotJson {
                before: rendered.before.clone(),
                clock: Bytes::from(clock),
                after: rendered.after.clone(),
            }
        }
        // Only if the markers were not found (see `split`): serialise it all.
        None => SnapshotJson {
            before: Bytes::from(
                serde_json::to_vec(&run.snapshot(key, estimator, now)).unwrap_or_default(),
            ),
            clock: Bytes::new(),
            after: Bytes::new(),
        },
    };
    PolledSnapshot { json, done, failed }
}

/// `snapshot`'s JSON cut around its clock-driven fields. A quote inside a JSON string is
/// always escaped, so the bare-quoted field names can only match the fields themselves.
fn split(snapshot: &Snapshot, run_version: u64, stats_version: u64) -> Option<Rendered> {
    let mut snapshot = snapshot.clone();
    snapshot.percent = 0.0;
    snapshot.eta_seconds = 0.0;
    snapshot.phase_percent = 0.0;
    snapshot.phase_eta_seconds = 0.0;
    let json = serde_json::to_string(&snapshot).ok()?;
    let at = json.find(CLOCK_FIELDS)?;
    Some(Rendered {
        run_version,
        stats_version,
        queue_position: snapshot.queue_position,
        before: Bytes::copy_from_slice(json.get(..at)?.as_bytes()),
        after: Bytes::copy_from_slice(json.get(at + CLOCK_FIELDS.len()..)?.as_bytes()),
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::key;
    use super::super::{Phase, Progress, RetryWait, StartOutcome};
    use crate::attributes::dress::DalleDress;
    use std::time::Duration;
    use tokio::time::advance;

    /// The polled JSON equals the serialised snapshot at every step of a run.
    async fn same_bytes(p: &Progress, k: &super::RunKey) {
        let polled = p.poll(k).unwrap();
        let snapshot = p.snapshot(k).unwrap();
        assert_eq!(
            String::from_utf8(polled.json.to_vec()).unwrap(),
            serde_json::to_string(&snapshot).unwrap()
        );
        assert_eq!(polled.done, snapshot.done);
        assert_eq!(polled.failed, snapshot.done && !snapshot.error.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn polls_render_exactly_the_snapshot() {
        let p = Progress::in_memory(Duration::from_secs(60));
        let k = key("simple", 1);
        assert!(p.poll(&k).is_none());
        assert_eq!(p.start(&k, "req-1"), StartOutcome::Started);
        same_bytes(&p, &k).await;
        p.set_dress(
            &k,
            DalleDress {
                prompt: "a \"quoted\" \"percent\":0.0, prompt".into(),
                ..DalleDress::default()
            },
        );
        same_bytes(&p, &k).await;
        for phase in [Phase::BasePrompts, Phase::EnhancePrompt, Phase::ImageWait] {
            advance(Duration::from_millis(1234)).await;
            p.transition(&k, phase);
            same_bytes(&p, &k).await;
            // The clock moves the percentages without any update of the run.
            advance(Duration::from_millis(777)).await;
            same_bytes(&p, &k).await;
        }
        p.set_queue_position(&k, Some(3));
        same_bytes(&p, &k).await;
        let wait = RetryWait {
            operation: "image",
            attempt: 2,
            attempts: 3,
            wait: Duration::from_secs(4),
            reason: "a \"quoted\" reason".into(),
        };
        p.set_retrying(&k, Some(&wait));
        same_bytes(&p, &k).await;
        advance(Duration::from_millis(1500)).await;
        same_bytes(&p, &k).await;
        p.complete(&k);
        same_bytes(&p, &k).await;

        // Another run's completion changes the averages every snapshot shows.
        let other = key("simple", 2);
        assert_eq!(p.start(&other, "req-2"), StartOutcome::Started);
        p.transition(&other, Phase::ImageWait);
        advance(Duration::from_secs(5)).await;
        assert_eq!(p.start(&k, "req-3"), StartOutcome::Started);
        same_bytes(&p, &k).await;
        p.set_queue_position(&k, Some(2));
        same_bytes(&p, &k).await;
        advance(Duration::from_millis(900)).await;
        same_bytes(&p, &k).await;
        p.set_queue_position(&k, None);
        same_bytes(&p, &k).await;
        p.complete(&other);
        same_bytes(&p, &k).await;
        p.fail(&k, "boom".into(), "internal");
        same_bytes(&p, &k).await;
        assert!(p.poll(&k).unwrap().failed);
    }
}
