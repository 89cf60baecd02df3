//! The snapshot's estimates and fields, step by step on a paused clock.

use super::super::tests::{generate, key};
use super::super::{Priors, Progress, StartOutcome};
use super::*;
use crate::attributes::dress::DalleDress;
use tokio::time::advance;

const RETENTION: Duration = Duration::from_secs(60);
/// Work-phase durations (seconds) of the reference run: the averages sum to 20 s.
const REFERENCE: [u64; 7] = [1, 1, 2, 1, 10, 2, 3];

const PHASE_NAMES: &str = r#"["setup","base_prompts","enhance_prompt","image_prep","image_wait","image_download","annotate","failed","completed"]"#;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[tokio::test(start_paused = true)]
async fn the_first_run_moves_with_the_priors_instead_of_jumping_to_99_percent() {
    // The default priors (gpt-image-2 with enhancement), in ms: setup 5, base prompts 20,
    // enhance 5 000, image prep 1, image wait 30 000, download 10, annotate 250.
    let p = Progress::in_memory(RETENTION);
    let k = key("simple", 3);
    let _ = p.start(&k, "r");
    // Setup ends at once (a zero duration is no sample); base prompts takes 1 s, which
    // becomes its average. Without priors the run then had every phase with an average
    // behind it: 99 % here (100 % upstream) for the whole image request.
    p.transition(&k, Phase::BasePrompts);
    advance(secs(1)).await;
    p.transition(&k, Phase::ImageWait);
    advance(secs(3)).await;
    let snap = p.snapshot(&k).unwrap();
    assert!(!snap.done);
    // 5 + 1 000 + 3 000 of 5 + 1 000 + 5 000 + 1 + 30 000 + 10 + 250 ms
    assert_eq!(snap.percent, 11.0, "{snap:?}");
    assert!((snap.eta_seconds - 32.261).abs() < 1e-9, "{snap:?}");
    assert_eq!((snap.phase_percent, snap.phase_eta_seconds), (10.0, 27.0));
    assert_eq!(
        snap.phase_averages.keys().collect::<Vec<_>>(),
        [&Phase::BasePrompts],
        "priors are estimates, not averages"
    );
    advance(secs(60)).await;
    let late = p.snapshot(&k).unwrap();
    assert_eq!(
        late.percent, 85.5,
        "an overrun phase counts its prior, no more"
    );
    p.complete(&k);
    assert_eq!(p.snapshot(&k).unwrap().percent, 100.0);
}

#[tokio::test(start_paused = true)]
async fn a_run_in_flight_never_reads_100_percent() {
    let p = Progress::in_memory(RETENTION);
    generate(&p, &key("simple", 1), REFERENCE).await;
    let k = key("simple", 2);
    let _ = p.start(&k, "r");
    for (phase, s) in Phase::WORK.into_iter().zip(REFERENCE) {
        p.transition(&k, phase);
        advance(secs(s)).await;
    }
    advance(secs(5)).await;
    // Every phase's average is behind it, but it has not completed.
    let snap = p.snapshot(&k).unwrap();
    assert_eq!((snap.current_phase, snap.percent), (Phase::Annotate, 99.0));
    p.complete(&k);
    assert_eq!(p.snapshot(&k).unwrap().percent, 100.0);
}

#[tokio::test(start_paused = true)]
async fn a_queued_run_reads_zero_percent_and_its_eta_includes_the_wait() {
    let p = Progress::in_memory(RETENTION).with_estimates(Estimates::new(Priors::mock(), 2));
    generate(&p, &key("simple", 1), REFERENCE).await; // 20 s a run
    let k = key("simple", 2);
    let _ = p.start(&k, "r");
    p.set_queue_position(&k, Some(3));
    advance(secs(30)).await;
    // Upstream counted the wait as setup time: 30 s of a 1 s setup read 5 % here, and a
    // setup average grown by queue waits read 60–70 %, with the ETA of one run.
    let queued = p.snapshot(&k).unwrap();
    assert_eq!(queued.queue_position, Some(3));
    // 3 places ÷ 2 slots × 20 s, then its own 20 s
    assert_eq!((queued.percent, queued.eta_seconds), (0.0, 50.0));
    let polled: serde_json::Value =
        serde_json::from_slice(&p.poll(&k).unwrap().json.to_vec()).unwrap();
    assert_eq!(
        (&polled["percent"], &polled["etaSeconds"]),
        (&0.0.into(), &50.0.into())
    );
    p.set_queue_position(&k, Some(1));
    assert_eq!(p.snapshot(&k).unwrap().eta_seconds, 30.0);

    // Its slot comes: the 30 s in the queue are not setup work, for the estimate or for
    // setup's average.
    p.set_queue_position(&k, None);
    advance(secs(1)).await;
    let running = p.snapshot(&k).unwrap();
    assert_eq!(running.queue_position, None);
    assert_eq!((running.percent, running.eta_seconds), (5.0, 19.0));
    p.transition(&k, Phase::BasePrompts);
    assert_eq!(p.stats().avg_ns(Phase::Setup), Some(1_000_000_000));
}

#[tokio::test(start_paused = true)]
async fn a_failed_run_keeps_the_percent_it_reached() {
    let p = Progress::in_memory(RETENTION);
    generate(&p, &key("simple", 1), REFERENCE).await;
    let k = key("simple", 2);
    let _ = p.start(&k, "r");
    for (phase, s) in Phase::WORK.into_iter().zip(REFERENCE).take(4) {
        p.transition(&k, phase);
        advance(secs(s)).await;
    }
    p.transition(&k, Phase::ImageWait);
    advance(secs(5)).await;
    assert_eq!(p.snapshot(&k).unwrap().percent, 50.0);
    p.fail(
        &k,
        "OpenAI API error (status 500): no".into(),
        "provider_failed",
    );
    // Upstream counted the phase it failed in as done: 75 % here, 100 % when it was the
    // last phase with an average.
    let failed = p.snapshot(&k).unwrap();
    assert_eq!((failed.percent, failed.eta_seconds), (50.0, 0.0));
    let polled: serde_json::Value =
        serde_json::from_slice(&p.poll(&k).unwrap().json.to_vec()).unwrap();
    assert_eq!(polled["percent"], 50.0);
    // Later history does not move it either.
    generate(&p, &key("simple", 3), [3; 7]).await;
    assert_eq!(p.snapshot(&k).unwrap().percent, 50.0);
}

#[tokio::test(start_paused = true)]
async fn percentages_are_rounded_to_one_decimal() {
    let p = Progress::in_memory(RETENTION);
    generate(&p, &key("simple", 1), REFERENCE).await;
    let k = key("simple", 2);
    let _ = p.start(&k, "r");
    advance(Duration::from_nanos(333_333_333)).await;
    // A third of setup's 1 s, of 20 s: 1.666… % overall, 33.333… % of the phase.
    let snap = p.snapshot(&k).unwrap();
    assert_eq!((snap.percent, snap.phase_percent), (1.7, 33.3));
    let json = String::from_utf8(p.poll(&k).unwrap().json.to_vec()).unwrap();
    assert!(
        json.contains(r#""percent":1.7,"#) && json.contains(r#""phasePercent":33.3,"#),
        "{json}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_run_waiting_to_retry_says_so_until_its_next_attempt() {
    let p = Progress::in_memory(RETENTION);
    generate(&p, &key("simple", 1), REFERENCE).await;
    let k = key("simple", 2);
    let _ = p.start(&k, "r");
    p.transition(&k, Phase::ImageWait);
    advance(secs(2)).await;
    let before = p.snapshot(&k).unwrap();
    let wait = RetryWait {
        operation: "image",
        attempt: 2,
        attempts: 3,
        wait: secs(4),
        reason: "OpenAI API error (status 503): busy".into(),
    };
    p.set_retrying(&k, Some(&wait));
    let snap = p.snapshot(&k).unwrap();
    let started = &snap.phases[Phase::ImageWait as usize];
    let expected = Retrying {
        operation: "image",
        attempt: 2,
        attempts: 3,
        until_ns: started.started_ns + 6_000_000_000,
        wait_seconds: 4.0,
        reason: wait.reason.clone(),
    };
    assert_eq!(snap.retrying.as_ref(), Some(&expected));
    assert!((snap.eta_seconds - before.eta_seconds - 4.0).abs() < 1e-9);
    let json = serde_json::to_value(&snap).unwrap();
    let keys = sorted_keys(&json["retrying"]);
    assert_eq!(
        keys,
        "attempt attempts operation reason untilNs waitSeconds"
    );
    advance(secs(1)).await;
    let later = p.snapshot(&k).unwrap();
    assert!((later.eta_seconds - (before.eta_seconds - 1.0) - 3.0).abs() < 1e-9);

    p.set_retrying(&k, None);
    assert_eq!(
        p.snapshot(&k).unwrap().retrying,
        None,
        "the attempt started"
    );
    p.set_retrying(&k, Some(&wait));
    p.transition(&k, Phase::ImageDownload);
    assert_eq!(p.snapshot(&k).unwrap().retrying, None, "a new phase");
    p.set_retrying(&k, Some(&wait));
    p.fail(&k, wait.reason.clone(), "provider_failed");
    assert_eq!(p.snapshot(&k).unwrap().retrying, None, "the end");
    p.set_retrying(&k, Some(&wait));
    assert_eq!(
        p.snapshot(&k).unwrap().retrying,
        None,
        "a finished run waits no more"
    );
}

#[tokio::test(start_paused = true)]
async fn percent_and_eta_in_the_middle_of_a_phase() {
    let p = Progress::in_memory(RETENTION);
    generate(&p, &key("simple", 1), REFERENCE).await;
    let k = key("simple", 2);
    let _ = p.start(&k, "r");
    let at_start = p.snapshot(&k).unwrap();
    assert_eq!((at_start.percent, at_start.eta_seconds), (0.0, 20.0));
    // Same durations as the reference, so the averages stay exact while we go.
    for (phase, s) in Phase::WORK.into_iter().zip(REFERENCE).take(4) {
        p.transition(&k, phase);
        advance(secs(s)).await;
    }
    p.transition(&k, Phase::ImageWait);
    advance(secs(5)).await;
    let snap = p.snapshot(&k).unwrap();
    assert_eq!(snap.current_phase, Phase::ImageWait);
    assert_eq!((snap.phase_index, snap.phase_count), (5, 7));
    assert_eq!((snap.phase_percent, snap.phase_eta_seconds), (50.0, 5.0));
    // done = 1 + 1 + 2 + 1 + 5 of 20 s
    assert_eq!((snap.percent, snap.eta_seconds), (50.0, 10.0));
    assert_eq!(snap.phase_averages.len(), 7);
    let json = serde_json::to_value(&snap).unwrap();
    assert_eq!(json["phaseAverages"]["image_wait"], 10_000_000_000_i64);

    // Overrunning the average caps the phase at 100 % and its share of the total.
    advance(secs(10)).await;
    let late = p.snapshot(&k).unwrap();
    assert_eq!((late.phase_percent, late.phase_eta_seconds), (100.0, 0.0));
    assert_eq!((late.percent, late.eta_seconds), (75.0, 5.0));
}

#[tokio::test(start_paused = true)]
async fn phase_index_counts_work_phases_from_one_and_is_zero_when_finished() {
    let p = Progress::in_memory(RETENTION);
    let k = key("simple", 1);
    let _ = p.start(&k, "r");
    for (i, phase) in Phase::WORK.into_iter().enumerate() {
        p.transition(&k, phase);
        assert_eq!(p.snapshot(&k).unwrap().phase_index, i + 1);
    }
    p.complete(&k);
    let done = p.snapshot(&k).unwrap();
    assert_eq!((done.phase_index, done.percent), (0, 100.0));

    let failed = key("simple", 2);
    let _ = p.start(&failed, "r");
    p.transition(&failed, Phase::ImageWait);
    advance(secs(3)).await;
    p.fail(
        &failed,
        "OpenAI API error (status 400): no".into(),
        "provider_failed",
    );
    p.transition(&failed, Phase::Annotate); // ignored: the run is over
    p.complete(&failed);
    let snap = p.snapshot(&failed).unwrap();
    assert_eq!((snap.phase_index, snap.current_phase), (0, Phase::Failed));
    assert!(snap.done && !snap.cache_hit && snap.error == "OpenAI API error (status 400): no");
    let wait = &snap.phases[Phase::ImageWait as usize];
    assert!(wait.ended_ns - wait.started_ns == 3_000_000_000 && wait.error == snap.error);
    let later = &snap.phases[Phase::Annotate as usize];
    assert!(
        later.started_ns == 0 && !later.skipped,
        "not run; not skipped"
    );
}

fn sorted_keys(value: &serde_json::Value) -> String {
    let mut keys: Vec<&str> = value.as_object().unwrap().keys().map(|k| &**k).collect();
    keys.sort_unstable();
    keys.join(" ")
}

#[tokio::test(start_paused = true)]
async fn snapshot_json_has_exactly_the_documented_keys() {
    let p = Progress::in_memory(RETENTION);
    let k = key("simple", 1);
    assert_eq!(p.start(&k, "req-1"), StartOutcome::Started);
    let json = |p: &Progress| serde_json::to_value(p.snapshot(&k).unwrap()).unwrap();
    let documented = "address cacheHit currentPhase dalleDress done error etaSeconds \
                      percent phaseAverages phaseCount phaseETASeconds phaseIndex \
                      phasePercent phases requestId series startedNs";
    assert_eq!(sorted_keys(&json(&p)), documented);

    p.set_queue_position(&k, Some(2));
    let value = json(&p);
    assert!(value["queuePosition"] == 2 && value["currentPhase"] == "setup");
    assert!(value["dalleDress"].is_null() && value["error"] == "");
    assert_eq!(value["phases"].to_string().matches("\"name\"").count(), 9);
    assert_eq!(serde_json::to_string(&Phase::ALL).unwrap(), PHASE_NAMES);
    assert!(
        Phase::ALL
            .into_iter()
            .all(|p| Phase::from_name(p.as_str()) == Some(p))
    );
    let phase_keys = sorted_keys(&value["phases"][0]);
    assert_eq!(phase_keys, "endedNs error name skipped startedNs");
    assert_eq!(value["phases"][0]["startedNs"], value["startedNs"]);

    p.set_queue_position(&k, None);
    assert_eq!(sorted_keys(&json(&p)), documented);
    p.set_queue_position(&k, Some(1));
    p.transition(&k, Phase::BasePrompts);
    assert_eq!(
        sorted_keys(&json(&p)),
        documented,
        "left setup, left the queue"
    );
    p.set_dress(&k, DalleDress::default());
    p.update_dress(&k, |d| d.image_url = "https://x/y.png".into());
    assert_eq!(json(&p)["dalleDress"]["imageUrl"], "https://x/y.png");
}

#[tokio::test(start_paused = true)]
async fn unstarted_work_phases_are_skipped_at_completion() {
    let p = Progress::in_memory(RETENTION);
    let k = key("simple", 1);
    let _ = p.start(&k, "r");
    advance(secs(1)).await;
    p.transition(&k, Phase::BasePrompts);
    p.skip(&k, Phase::EnhancePrompt);
    advance(secs(1)).await;
    p.transition(&k, Phase::Annotate);
    advance(secs(1)).await;
    p.complete(&k);
    let snap = p.snapshot(&k).unwrap();
    for t in &snap.phases {
        let ran = matches!(t.name, Phase::Setup | Phase::BasePrompts | Phase::Annotate);
        let took = t.ended_ns - t.started_ns;
        match t.name {
            _ if ran => assert!(!t.skipped && took == 1_000_000_000, "{}", t.name),
            Phase::Completed => assert!(!t.skipped && t.ended_ns > 0),
            Phase::Failed => assert!(!t.skipped && t.started_ns == 0),
            _ => assert!(t.skipped && t.started_ns > 0 && took == 0, "{}", t.name),
        }
    }
    assert_eq!(snap.percent, 100.0, "skipped phases count as done");
}
