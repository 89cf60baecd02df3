//! What a run notes down as it goes, for its provenance record ([`crate::provenance`]): how the
//! prompt was enhanced (or why not), what the image request asked and got back, what it cost,
//! and how long each phase took.

use std::time::Instant;

use crate::cid::Cid;
use crate::progress::Phase;
use crate::provenance::{
    Build, Cost, Enhancement, ImageRequest, Making, PhaseTiming, Prompt, Record, timestamp_now,
};

/// The notes of one run.
#[derive(Debug)]
pub(super) struct Trace {
    pub request_id: String,
    pub started_at: String,
    pub enhancement: Enhancement,
    pub image: ImageRequest,
    pub cost: Cost,
    pub prompts: Vec<Prompt>,
    phases: Vec<PhaseTiming>,
    current: Option<(Phase, Instant)>,
    /// Phases skipped while `current` runs: listed after it, in the order they were skipped.
    skipped: Vec<PhaseTiming>,
}

impl Trace {
    /// A run starting now.
    pub fn new(request_id: &str) -> Trace {
        Trace {
            request_id: request_id.to_string(),
            started_at: timestamp_now(),
            enhancement: Enhancement {
                ran: false,
                model: None,
                request_id: None,
                skipped: None,
            },
            image: ImageRequest {
                source: "mock".into(),
                model: None,
                size: None,
                quality: None,
                download: "mock".into(),
                revised_prompt: None,
                response_id: None,
                created: None,
            },
            cost: Cost {
                usd_micros: 0,
                model: None,
            },
            prompts: Vec::new(),
            phases: Vec::new(),
            current: None,
            skipped: Vec::new(),
        }
    }

    /// `phase` starts now; the one before it ends.
    pub fn enter(&mut self, phase: Phase) {
        self.close();
        self.current = Some((phase, Instant::now()));
    }

    /// `phase` was not run.
    pub fn skip(&mut self, phase: Phase) {
        self.skipped.push(PhaseTiming {
            phase: phase.as_str().to_string(),
            skipped: true,
            duration_ms: 0.0,
        });
    }

    /// Ends the phase in progress (the record is written from inside the last one).
    fn close(&mut self) {
        if let Some((phase, since)) = self.current.take() {
            self.phases.push(PhaseTiming {
                phase: phase.as_str().to_string(),
                skipped: false,
                duration_ms: since.elapsed().as_secs_f64() * 1000.0,
            });
        }
        self.phases.append(&mut self.skipped);
    }

    /// Notes one prompt text.
    pub fn prompt(&mut self, kind: &str, text: &str) {
        self.prompts.push(Prompt::new(kind, text));
    }

    /// What made the image, before the annotation (which the annotate step adds).
    pub fn making(&self, inputs: Inputs) -> Making {
        Making {
            schema: crate::provenance::SCHEMA_VERSION,
            series: inputs.series,
            series_cid: inputs.series_cid,
            databases_cid: inputs.databases_cid,
            subject: inputs.subject,
            dress_cid: inputs.dress_cid,
            dress: inputs.dress,
            prompts: self.prompts.clone(),
            enhancement: self.enhancement.clone(),
            image: self.image.clone(),
            // Filled in once the image is stored as PNG.
            raw_cid: Cid::of(b""),
            annotation: None,
            server: Build::current(),
        }
    }

    /// The full record, the phase in progress ending now.
    pub fn record(&mut self, making: Making, annotated: Option<Cid>) -> Record {
        self.close();
        Record {
            making,
            annotated_cid: annotated,
            request_id: self.request_id.clone(),
            phases: self.phases.clone(),
            cost: self.cost.clone(),
            started_at: self.started_at.clone(),
            finished_at: timestamp_now(),
        }
    }
}

/// The inputs of a run that are not notes: what it was made from.
#[derive(Debug)]
pub(super) struct Inputs {
    pub series: String,
    pub series_cid: Cid,
    pub databases_cid: Cid,
    pub subject: String,
    pub dress_cid: Option<Cid>,
    pub dress: serde_json::Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_are_listed_in_the_order_they_ran_or_were_skipped() {
        let mut trace = Trace::new("r");
        trace.enter(Phase::Setup);
        trace.enter(Phase::BasePrompts);
        trace.skip(Phase::EnhancePrompt);
        trace.enter(Phase::ImagePrep);
        trace.skip(Phase::ImageDownload);
        let making = trace.making(Inputs {
            series: "s".into(),
            series_cid: Cid::of(b"s"),
            databases_cid: Cid::of(b"d"),
            subject: "x".into(),
            dress_cid: None,
            dress: serde_json::Value::Null,
        });
        let record = trace.record(making, None);
        let listed: Vec<_> = record
            .phases
            .iter()
            .map(|p| (p.phase.as_str(), p.skipped))
            .collect();
        assert_eq!(
            listed,
            [
                ("setup", false),
                ("base_prompts", false),
                ("enhance_prompt", true),
                ("image_prep", false),
                ("image_download", true),
            ]
        );
    }
}
