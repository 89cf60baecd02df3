//! `GET /v1/usage`: what has been spent, by whom, against which caps.

use axum::extract::State;
use axum::response::IntoResponse;

use super::auth::Identified;
use super::{ApiError, Envelope, RequestId};
use crate::app::AppState;
use crate::auth::Caller;

/// Spend and images of one period, in dollars.
fn tally(t: crate::budget::Tally) -> serde_json::Value {
    serde_json::json!({"usd": crate::budget::usd(t.usd_micros), "images": t.images})
}

/// `GET /v1/usage`: spend and images today and this month (UTC), in total and by key, with
/// the caps and what remains of them. With API keys configured a caller sees the usage of
/// its own key only (and its own caps, under `key`); without, every key's.
pub async fn usage(
    State(state): State<AppState>,
    rid: RequestId,
    Identified(caller): Identified,
) -> Result<axum::response::Response, ApiError> {
    use crate::budget::{Period, usd};
    let generator = state.generator().map_err(ApiError::databases_unavailable)?;
    let u = generator.budget().usage();
    let own = caller.key_name();
    let shown = |name: &str| state.config.api_keys.is_none() || own == Some(name);
    // Whole seconds: the periods start on a second, and `*_ends_in` is rounded up to one.
    let now = std::time::UNIX_EPOCH
        + std::time::Duration::from_secs(
            crate::telemetry::unix_seconds(std::time::SystemTime::now())
                .max(0)
                .unsigned_abs(),
        );
    let keys: serde_json::Map<String, serde_json::Value> = u
        .by_key
        .iter()
        .filter(|(name, _)| shown(name))
        .map(|(name, k)| {
            let usage = serde_json::json!({
                "today": tally(k.day),
                "month": tally(k.month),
                "reserved": tally(k.reserved),
            });
            (name.clone(), usage)
        })
        .collect();
    let key = match &caller {
        Caller::Key { name, limits } => {
            let (caps, mine) = (limits.caps(), u.key(name));
            let (left_usd, left_images) = mine.remaining(caps);
            serde_json::json!({
                "name": &**name,
                "caps": {"dailyUsd": caps.daily_usd.map(usd), "dailyImages": caps.daily_images},
                "remaining": {"dailyUsd": left_usd.map(usd), "dailyImages": left_images},
            })
        }
        _ => serde_json::Value::Null,
    };
    let models: serde_json::Map<String, serde_json::Value> = u
        .models
        .iter()
        .map(|(model, m)| (model.clone(), serde_json::json!(usd(*m))))
        .collect();
    let data = serde_json::json!({
        "day": u.day,
        "month": u.month,
        "dayResetsAt": crate::telemetry::rfc3339(now + u.day_ends_in),
        "monthResetsAt": crate::telemetry::rfc3339(now + u.month_ends_in),
        "mock": state.config.openai.mock_mode(),
        "caps": {
            "dailyUsd": u.caps.daily_usd.map(usd),
            "monthlyUsd": u.caps.monthly_usd.map(usd),
            "dailyImages": u.caps.daily_images,
        },
        "today": tally(u.total.day),
        "thisMonth": tally(u.total.month),
        "reserved": tally(u.total.reserved),
        "remaining": {
            "dailyUsd": u.remaining_usd(Period::Day).map(usd),
            "monthlyUsd": u.remaining_usd(Period::Month).map(usd),
            "dailyImages": u.remaining_images(),
        },
        "monthByModel": models,
        "keys": keys,
        "key": key,
    });
    Ok(Envelope::ok(data, &rid).into_response())
}
