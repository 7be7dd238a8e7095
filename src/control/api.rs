//! The control socket's API: HTTP/1.1 with JSON bodies on the Unix socket
//! (mode 0600), the only place that changes a running op25b. `op25b stats`,
//! `top`, `quarantine`, `release`, `reload` and `events` are its clients;
//! `curl --unix-socket /run/op25b/op25b.sock http://op25b/v1/stats` works too.
//!
//! | endpoint | answer |
//! |---|---|
//! | `GET /v1/stats` | the counters and the config's figures |
//! | `GET /v1/top?n=20&by=attempts` | the heaviest subscribers, and every one in quarantine |
//! | `POST /v1/subscribers` `{"subscribers": [..]}` | a row as `top`'s for each of them this op25b holds (in its table or in quarantine) |
//! | `POST /v1/quarantine` `{"subscriber": .., "seconds": ..}` | the quarantine started |
//! | `POST /v1/release` `{"subscriber": ..}` | the quarantine ended |
//! | `POST /v1/reload` | the reload's outcome: accepted (and what was kept) or refused (why) |
//! | `GET /v1/events` | blocked, abuse and reload events as they happen, one JSON object a line |
//!
//! Every error is `{"error": "one line"}` with 400 (a bad request: the
//! client's usage error), 404, 405, 409 (refused: the request was understood
//! and op25b said no) or 503 (op25b cannot answer it now).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{json, Value};

use super::{abuse, ReloadOutcome, ReloadRequest, Shared};
use crate::state::abuse::{parse_subscriber, subscriber_name, AbuseEvent};

/// The longest quarantine the socket starts: 30 days.
const MAX_QUARANTINE: f64 = 30.0 * 86_400.0;

/// Most rows `top` returns.
const MAX_TOP: usize = 10_000;

/// Most subscribers one lookup asks for (a merged `top` of several
/// instances asks each for the others' rows).
const MAX_LOOKUP: usize = 65_536;

/// The API's routes.
pub(super) fn router(shared: Shared) -> axum::Router {
    axum::Router::new()
        .route("/v1/stats", get(stats))
        .route("/v1/top", get(top))
        .route("/v1/subscribers", post(subscribers))
        .route("/v1/quarantine", post(quarantine))
        .route("/v1/release", post(release))
        .route("/v1/reload", post(reload))
        .route("/v1/events", get(events))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "no such endpoint; see /v1/stats, /v1/top, /v1/subscribers, /v1/quarantine, /v1/release, /v1/reload, /v1/events",
            )
        })
        .method_not_allowed_fallback(|| async { error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here") })
        .with_state(shared)
}

fn answer(status: StatusCode, body: &Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], format!("{body}\n")).into_response()
}

fn ok(body: &Value) -> Response {
    answer(StatusCode::OK, body)
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    answer(status, &json!({ "error": message.to_string() }))
}

/// An error answer: its status and its one line.
struct ApiError(StatusCode, String);

impl ApiError {
    fn bad(message: impl std::fmt::Display) -> ApiError {
        ApiError(StatusCode::BAD_REQUEST, message.to_string())
    }

    fn refused(message: impl std::fmt::Display) -> ApiError {
        ApiError(StatusCode::CONFLICT, message.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error(self.0, self.1)
    }
}

fn abuse_off() -> ApiError {
    ApiError::refused("abuse handling is off: the running config has no [abuse] section")
}

async fn stats(State(shared): State<Shared>) -> Response {
    ok(&shared.stats_json())
}

/// `n` and `by` of `/v1/top`.
fn top_params(query: Option<&str>) -> Result<(usize, bool), String> {
    let (mut n, mut by_destinations) = (20, false);
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("n", v)) => match v.parse::<usize>() {
                Ok(v) if v <= MAX_TOP => n = v,
                _ => return Err(format!("n: {v:?} is not a count from 0 to {MAX_TOP}")),
            },
            Some(("by", "attempts")) => by_destinations = false,
            Some(("by", "destinations")) => by_destinations = true,
            Some(("by", v)) => return Err(format!("by: {v:?} is neither attempts nor destinations")),
            _ => return Err(format!("unknown parameter {pair:?}; /v1/top takes n and by")),
        }
    }
    Ok((n, by_destinations))
}

async fn top(State(shared): State<Shared>, RawQuery(query): RawQuery) -> Result<Response, ApiError> {
    let (n, by_destinations) = top_params(query.as_deref()).map_err(ApiError::bad)?;
    let a = shared.stats.abuse().ok_or_else(abuse_off)?;
    Ok(ok(&abuse::top_json(a, n, by_destinations)))
}

/// Which of the subscribers asked for this op25b holds (`op25b top` and
/// `quarantine` over several instances ask each).
async fn subscribers(State(shared): State<Shared>, body: Bytes) -> Result<Response, ApiError> {
    let body = body_object(&body)?;
    let Some(list) = body.get("subscribers").and_then(Value::as_array) else {
        return Err(ApiError::bad("the body needs \"subscribers\": a list of addresses"));
    };
    if list.len() > MAX_LOOKUP {
        return Err(ApiError::bad(format!("subscribers: {} asked, at most {MAX_LOOKUP} at once", list.len())));
    }
    let keys = list
        .iter()
        .map(|v| {
            let text = v.as_str().unwrap_or_default();
            parse_subscriber(text).ok_or_else(|| {
                ApiError::bad(format!("{v} is not a subscriber (an IPv4 address, or an IPv6 address or /64)"))
            })
        })
        .collect::<Result<Vec<u64>, ApiError>>()?;
    let a = shared.stats.abuse().ok_or_else(abuse_off)?;
    Ok(ok(&abuse::subscribers_json(a, &keys)))
}

/// The JSON object of a request body.
fn body_object(body: &[u8]) -> Result<serde_json::Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::bad("the body must be a JSON object")),
        Err(e) => Err(ApiError::bad(format!("the body is not JSON: {e}"))),
    }
}

/// The `subscriber` of a request body, as its key.
fn subscriber(body: &serde_json::Map<String, Value>) -> Result<u64, ApiError> {
    let Some(text) = body.get("subscriber").and_then(Value::as_str) else {
        return Err(ApiError::bad("the body needs \"subscriber\": an address"));
    };
    parse_subscriber(text).ok_or_else(|| {
        ApiError::bad(format!("{text:?} is not a subscriber (an IPv4 address, or an IPv6 address or /64)"))
    })
}

/// The address a subscriber key stands for: the IPv4 address, or the /64's first.
fn key_addr(key: u64) -> IpAddr {
    if key >> 32 == 0xffff_ffff {
        IpAddr::V4((key as u32).into())
    } else {
        IpAddr::V6((u128::from(key) << 64).into())
    }
}

async fn quarantine(State(shared): State<Shared>, body: Bytes) -> Result<Response, ApiError> {
    let body = body_object(&body)?;
    let key = subscriber(&body)?;
    let duration = match body.get("seconds") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_f64() {
            Some(s) if s > 0.0 && s <= MAX_QUARANTINE => Some(Duration::from_secs_f64(s)),
            _ => return Err(ApiError::bad(format!("seconds: {v} is not from 0 to {MAX_QUARANTINE}"))),
        },
    };
    let a = shared.stats.abuse().ok_or_else(abuse_off)?;
    let policy = shared.stats.policy();
    let prefixes = &policy.subscriber_prefixes;
    if !prefixes.contains(key_addr(key)) {
        let nets: Vec<String> = prefixes.nets().iter().map(ToString::to_string).collect();
        return Err(ApiError::refused(format!(
            "{} is not a subscriber here: not in subscriber.prefixes ({})",
            subscriber_name(key),
            nets.join(", ")
        )));
    }
    let e = a.quarantine(key, Instant::now(), duration);
    let response = match &e {
        AbuseEvent::QuarantineStarted { duration, .. } => {
            Ok(ok(&json!({"quarantined": subscriber_name(key), "seconds": duration.as_secs_f64()})))
        }
        _ => Err(ApiError::refused(format!("{} not quarantined: the quarantine set is full", subscriber_name(key)))),
    };
    abuse::report(e, shared.events.as_ref());
    response
}

async fn release(State(shared): State<Shared>, body: Bytes) -> Result<Response, ApiError> {
    let key = subscriber(&body_object(&body)?)?;
    let a = shared.stats.abuse().ok_or_else(abuse_off)?;
    let e =
        a.release(key).ok_or_else(|| ApiError::refused(format!("{} is not in quarantine", subscriber_name(key))))?;
    abuse::report(e, shared.events.as_ref());
    Ok(ok(&json!({"released": subscriber_name(key)})))
}

/// Hands the request to the thread that reloads on SIGHUP too (one at a
/// time, in the order they came) and answers with its outcome.
async fn reload(State(shared): State<Shared>) -> Response {
    let Some(tx) = &shared.reloads else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "this op25b does not reload over the socket");
    };
    let (request, outcome) = ReloadRequest::new();
    if tx.send(request).is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "op25b is stopping");
    }
    match outcome.await {
        Ok(ReloadOutcome::Accepted { file, kept }) => ok(&json!({
            "result": "accepted",
            "file": file,
            "kept": {
                "reply_buckets": kept.reply_buckets,
                "flows": kept.flows,
                "sessions": kept.sessions,
                "rule_buckets": kept.rule_buckets,
                "programs": kept.programs,
            },
        })),
        Ok(ReloadOutcome::Refused { reason }) => {
            answer(StatusCode::CONFLICT, &json!({"result": "refused", "error": reason}))
        }
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "op25b is stopping"),
    }
}

/// The events as they happen, one JSON object a line, until the client goes.
async fn events(State(shared): State<Shared>) -> Response {
    let Some(stream) = &shared.stream else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "this op25b has no events stream");
    };
    let follower = stream.follow();
    let lines = futures_util::stream::unfold(follower, |mut f| async move {
        f.next().await.map(|line| (Ok::<_, std::convert::Infallible>(line), f))
    });
    ([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(lines)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_parameters_are_checked() {
        assert_eq!(top_params(None), Ok((20, false)));
        assert_eq!(top_params(Some("n=5&by=destinations")), Ok((5, true)));
        assert!(top_params(Some("n=-1")).unwrap_err().starts_with("n: "));
        assert!(top_params(Some("by=size")).unwrap_err().starts_with("by: "));
        assert!(top_params(Some("x=1")).unwrap_err().starts_with("unknown parameter"));
    }

    #[test]
    fn a_key_stands_for_its_address() {
        for (text, addr) in [("100.64.1.10", "100.64.1.10"), ("2001:db8:100:1::10", "2001:db8:100:1::")] {
            let key = parse_subscriber(text).unwrap();
            assert_eq!(key_addr(key), addr.parse::<IpAddr>().unwrap(), "{text}");
        }
    }
}
