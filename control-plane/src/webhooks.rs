//! The webhook courier: on the leader, sends each due delivery, signed, to its
//! webhook's URL. A 2xx within 10 s delivers it; anything else is tried again
//! after a growing wait (from `Config::webhook_retry`, at most an hour) until 24
//! hours after its event. It reads the deliveries from the database, so what was
//! due when the server stopped goes out when it starts.

use std::time::{Duration, Instant};

use futures::StreamExt;
use hmac::{Hmac, Mac};
use kiln_protocol::{WebhookAttempt, SIGNATURE_HEADER};
use sha2::Sha256;

use crate::store::{self, DueDelivery};
use crate::AppState;

/// The time a receiver has to answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);
/// Deliveries sent at once.
const IN_FLIGHT: usize = 8;
/// The most of an answer kept for the delivery log.
const ANSWER_KEPT: usize = 1024;
const MAX_WAIT: Duration = Duration::from_secs(3600);
/// Ended deliveries stay in the log this long.
const KEEP: Duration = Duration::from_secs(30 * 24 * 3600);

/// `t=<unix>,v1=<hex HMAC-SHA256 of "t.body">`, the `X-Kiln-Signature` value.
pub fn signature(secret: &str, unix_seconds: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(format!("{unix_seconds}.").as_bytes());
    mac.update(body);
    format!(
        "t={unix_seconds},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// The wait before the next try, after `attempts` tries: the base, tripled each
/// time, at most an hour.
fn backoff(base: Duration, attempts: i64) -> Duration {
    let factor = 3u32.saturating_pow(attempts.clamp(0, 12) as u32);
    base.saturating_mul(factor).min(MAX_WAIT)
}

pub async fn run(state: AppState) {
    let http = crate::outbound::client(
        state.config.allow_private_webhooks,
        "--allow-private-webhooks",
        ANSWER_WITHIN,
    );
    let mut pruned: Option<Instant> = None;
    loop {
        if !crate::leader::until_leading(&state).await {
            return;
        }
        if pruned.is_none_or(|at| at.elapsed() > Duration::from_secs(3600)) {
            pruned = Some(Instant::now());
            let before = store::now_ms() - KEEP.as_millis() as i64;
            if let Err(error) = state
                .db
                .call(move |conn| store::prune_webhook_deliveries(conn, before))
                .await
            {
                tracing::warn!(message = "Cannot prune old webhook deliveries.", %error);
            }
        }
        match state
            .db
            .call(|conn| store::due_webhook_deliveries(conn, 64))
            .await
        {
            Ok(due) if !due.is_empty() => {
                futures::stream::iter(due)
                    .for_each_concurrent(IN_FLIGHT, |delivery| deliver(&state, &http, delivery))
                    .await;
                continue;
            }
            Ok(_) => {}
            Err(error) => tracing::error!(message = "Cannot read webhook deliveries.", %error),
        }
        let next = state
            .db
            .call(store::next_webhook_due_at)
            .await
            .ok()
            .flatten();
        if !crate::leader::until_due(&state, next).await {
            return;
        }
    }
}

async fn deliver(state: &AppState, http: &reqwest::Client, delivery: DueDelivery) {
    let started = Instant::now();
    let at = chrono::Utc::now();
    let request = http
        .post(&delivery.url)
        .header("content-type", "application/json")
        .header(
            SIGNATURE_HEADER,
            signature(&delivery.secret, at.timestamp(), delivery.body.as_bytes()),
        )
        .header("X-Kiln-Event", &delivery.event)
        .header("X-Kiln-Delivery", &delivery.id)
        .body(delivery.body.clone());
    // A literal address is not resolved, so the resolver cannot refuse it.
    let private = !state.config.allow_private_webhooks
        && crate::outbound::names_private_address(&delivery.url);
    let sent = async {
        if private {
            return (None, "the URL names a loopback, link-local or private address; webhooks go there only when the server runs with --allow-private-webhooks".to_owned());
        }
        send(request).await
    };
    let (status, answer) = sent.await;
    let delivered = status.is_some_and(|status| (200..300).contains(&status));
    let attempts = delivery.attempts + 1;
    let next = (!delivered && !private)
        .then(|| {
            store::now_ms() + backoff(state.config.webhook_retry, attempts - 1).as_millis() as i64
        })
        .filter(|&next| next <= delivery.give_up_at);
    let attempt = WebhookAttempt {
        at,
        status,
        answer: answer.chars().take(ANSWER_KEPT).collect(),
        took_ms: started.elapsed().as_millis() as u64,
    };
    if !delivered {
        tracing::warn!(message = "A webhook delivery was not accepted.", delivery = %delivery.id, url = %delivery.url, status = ?status, answer = %attempt.answer, retry = next.is_some());
    }
    let id = delivery.id.clone();
    if let Err(error) = state
        .db
        .call(move |conn| store::record_webhook_attempt(conn, &id, &attempt, delivered, next))
        .await
    {
        tracing::error!(message = "Cannot record a webhook attempt.", delivery = %delivery.id, %error);
    }
}

/// Sends one attempt: the answer's status and body, or why none came.
async fn send(request: reqwest::RequestBuilder) -> (Option<u16>, String) {
    match request.send().await {
        Ok(mut response) => {
            let status = response.status();
            // Only the start is kept, so only the start is read.
            let mut bytes = Vec::new();
            while bytes.len() < ANSWER_KEPT * 4 {
                match response.chunk().await {
                    Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
                    _ => break,
                }
            }
            (
                Some(status.as_u16()),
                String::from_utf8_lossy(&bytes).into_owned(),
            )
        }
        Err(error) if error.is_timeout() => (
            None,
            format!(
                "no answer within {} s; answer at once and do the work after",
                ANSWER_WITHIN.as_secs()
            ),
        ),
        Err(error) => (None, format!("no answer: {error}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_time_dot_body() {
        // Computed apart: printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac s3cret
        assert_eq!(
            signature("s3cret", 1_700_000_000, br#"{"a":1}"#),
            "t=1700000000,v1=1698a50bc74d1ff1db85c4e0a5297c2ad9fdba245d5737cdb789e4cc6e098940"
        );
    }

    #[test]
    fn waits_grow_to_an_hour() {
        let base = Duration::from_secs(10);
        assert_eq!(backoff(base, 0), Duration::from_secs(10));
        assert_eq!(backoff(base, 1), Duration::from_secs(30));
        assert_eq!(backoff(base, 2), Duration::from_secs(90));
        assert_eq!(backoff(base, 9), MAX_WAIT);
        assert_eq!(backoff(base, 1000), MAX_WAIT);
    }
}
