//! Outbound webhooks: made per project; each event a delivery row written in the
//! transaction of the status change that caused it, so none is lost to a crash;
//! every attempt recorded for the delivery log. The courier (`crate::webhooks`)
//! sends them.

use kiln_protocol::{
    CreateWebhook, DeliveryState, DeploymentStatus, Webhook, WebhookAttempt, WebhookDelivery,
    WEBHOOK_EVENTS,
};

use super::values::{json_list, new_id, now_ms, time, to_json};
use crate::db::sql::{params, Connection, OptionalExtension, Row, Transaction};
use crate::error::ApiError;

const MAX_WEBHOOKS_PER_PROJECT: i64 = 20;
const MAX_URL: usize = 2048;
/// A delivery with no 2xx is tried again for this long after its event.
pub const GIVE_UP_AFTER_MS: i64 = 24 * 3600 * 1000;
/// Deliveries listed at most, newest first.
const LISTED: i64 = 100;

/// The event a status change is, if any: `from` is `None` when the deployment
/// was just made.
pub fn event_of(from: Option<DeploymentStatus>, to: DeploymentStatus) -> Option<&'static str> {
    use DeploymentStatus::*;
    match (from, to) {
        (None, Queued) => Some("build.created"),
        (_, BuildFailed) => Some("build.failed"),
        (_, BuildCanceled) => Some("build.canceled"),
        (Some(Building), AwaitingDeployment | Deploying | Live | Ready) => Some("build.succeeded"),
        (_, Live) => Some("deployment.live"),
        (_, DeployFailed) => Some("deployment.failed"),
        _ => None,
    }
}

fn webhook_from_row(row: &Row) -> crate::db::sql::Result<Webhook> {
    Ok(Webhook {
        id: row.get("id")?,
        project_id: row.get("project_id")?,
        url: row.get("url")?,
        events: json_list(&row.get::<_, String>("events")?),
        created_at: time(row.get("created_at")?),
        secret: None,
    })
}

fn check_url(url: &str) -> Result<(), ApiError> {
    let refuse = |why: &str| Err(ApiError::invalid_field("url", why.to_owned()));
    if url.len() > MAX_URL {
        return refuse("is longer than 2048 bytes");
    }
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return refuse("is not a URL; give one such as https://hooks.example.com/kiln");
    };
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return refuse("must be an http:// or https:// URL with a host");
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return refuse(
            "carries a user name or password; the signature proves the sender, so leave them out",
        );
    }
    Ok(())
}

fn check_events(events: &[String]) -> Result<Vec<String>, ApiError> {
    if events.is_empty() {
        return Err(ApiError::invalid_field(
            "events",
            format!(
                "is empty; name one or more of {}",
                WEBHOOK_EVENTS.join(", ")
            ),
        ));
    }
    let mut kept: Vec<String> = Vec::new();
    for event in events {
        if !WEBHOOK_EVENTS.contains(&event.as_str()) {
            return Err(ApiError::invalid_field(
                "events",
                format!(
                    "names {event:?}, which is no event; use {}",
                    WEBHOOK_EVENTS.join(", ")
                ),
            ));
        }
        if !kept.contains(event) {
            kept.push(event.clone());
        }
    }
    Ok(kept)
}

/// Makes a webhook with `secret`, which the answer carries this once.
pub fn create_webhook(
    conn: &mut Connection,
    project_id: &str,
    request: CreateWebhook,
    secret: &str,
) -> Result<Webhook, ApiError> {
    check_url(&request.url)?;
    let events = check_events(&request.events)?;
    let tx = conn.transaction()?;
    super::projects::get_project_in(&tx, project_id)?;
    let count: i64 = tx.query_row(
        "SELECT COUNT(*) FROM webhooks WHERE project_id = ?1",
        [project_id],
        |row| row.get(0),
    )?;
    if count >= MAX_WEBHOOKS_PER_PROJECT {
        return Err(ApiError::InvalidParameter(format!(
            "project {project_id} has {count} webhooks, the most it may; delete one first"
        )));
    }
    let id = new_id("whk");
    tx.execute(
        "INSERT INTO webhooks (id, project_id, url, events, secret, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            id,
            project_id,
            request.url,
            to_json(&events),
            secret,
            now_ms()
        ],
    )?;
    let mut webhook = webhook_in(&tx, project_id, &id)?;
    tx.commit()?;
    webhook.secret = Some(secret.to_owned());
    Ok(webhook)
}

fn webhook_in(conn: &Connection, project_id: &str, id: &str) -> Result<Webhook, ApiError> {
    conn.query_row(
        "SELECT * FROM webhooks WHERE id = ?1 AND project_id = ?2",
        [id, project_id],
        webhook_from_row,
    )
    .optional()?
    .ok_or_else(|| ApiError::not_found("webhook", id))
}

pub fn list_webhooks(conn: &mut Connection, project_id: &str) -> Result<Vec<Webhook>, ApiError> {
    super::projects::get_project_in(conn, project_id)?;
    let mut stmt =
        conn.prepare("SELECT * FROM webhooks WHERE project_id = ?1 ORDER BY created_at")?;
    let webhooks = stmt
        .query_map([project_id], webhook_from_row)?
        .collect::<Result<_, _>>()?;
    Ok(webhooks)
}

/// Deletes a webhook with its deliveries: none is sent after this.
pub fn delete_webhook(conn: &mut Connection, project_id: &str, id: &str) -> Result<(), ApiError> {
    let tx = conn.transaction()?;
    webhook_in(&tx, project_id, id)?;
    tx.execute(
        "DELETE FROM webhook_attempts WHERE delivery_id IN (SELECT id FROM webhook_deliveries WHERE webhook_id = ?1)",
        [id],
    )?;
    tx.execute("DELETE FROM webhook_deliveries WHERE webhook_id = ?1", [id])?;
    tx.execute("DELETE FROM webhooks WHERE id = ?1", [id])?;
    tx.commit()?;
    Ok(())
}

/// Queues a delivery to each of the deployment's project's webhooks that asks
/// for the event `from` → `to` is, in the caller's transaction.
pub(super) fn enqueue(
    tx: &Transaction,
    deployment_id: &str,
    from: Option<DeploymentStatus>,
    to: DeploymentStatus,
    now: i64,
) -> Result<(), ApiError> {
    let Some(event) = event_of(from, to) else {
        return Ok(());
    };
    let mut stmt = tx.prepare_cached(
        "SELECT w.id, w.events FROM webhooks w
         JOIN deployments d ON d.project_id = w.project_id
         WHERE d.id = ?1",
    )?;
    let listening: Vec<String> = stmt
        .query_map([deployment_id], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
        })?
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .filter(|(_, events)| json_list(events).iter().any(|e| e == event))
        .map(|(id, _)| id)
        .collect();
    if listening.is_empty() {
        return Ok(());
    }
    let deployment = super::rows::get_deployment_in(tx, deployment_id)?;
    let environment: Option<String> = tx
        .query_row(
            "SELECT name FROM environments WHERE id = ?1",
            [&deployment.environment_id],
            |row| row.get(0),
        )
        .optional()?;
    for webhook_id in listening {
        let id = new_id("whd");
        let body = serde_json::json!({
            "id": id,
            "event": event,
            "created_at": time(now),
            "project": {"id": deployment.project_id},
            "environment": {"id": deployment.environment_id, "name": environment},
            "deployment": deployment,
        });
        tx.execute(
            "INSERT INTO webhook_deliveries (id, webhook_id, event, deployment_id, body, next_attempt_at, give_up_at, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?6)",
            params![id, webhook_id, event, deployment_id, body.to_string(), now, now + GIVE_UP_AFTER_MS],
        )?;
    }
    Ok(())
}

/// A delivery whose time has come, with what sending it needs.
#[derive(Debug, Clone)]
pub struct DueDelivery {
    pub id: String,
    pub event: String,
    pub url: String,
    pub secret: String,
    pub body: String,
    pub give_up_at: i64,
    pub attempts: i64,
}

pub fn due_webhook_deliveries(
    conn: &mut Connection,
    limit: i64,
) -> Result<Vec<DueDelivery>, ApiError> {
    let mut stmt = conn.prepare_cached(
        "SELECT d.id, d.event, w.url, w.secret, d.body, d.give_up_at,
                (SELECT COUNT(*) FROM webhook_attempts a WHERE a.delivery_id = d.id)
         FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id
         WHERE d.next_attempt_at IS NOT NULL AND d.next_attempt_at <= ?1
         ORDER BY d.next_attempt_at, d.id LIMIT ?2",
    )?;
    let due = stmt
        .query_map(params![now_ms(), limit], |row| {
            Ok(DueDelivery {
                id: row.get(0)?,
                event: row.get(1)?,
                url: row.get(2)?,
                secret: row.get(3)?,
                body: row.get(4)?,
                give_up_at: row.get(5)?,
                attempts: row.get(6)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(due)
}

/// When the courier next has something to send.
pub fn next_webhook_due_at(conn: &mut Connection) -> Result<Option<i64>, ApiError> {
    Ok(conn.query_row(
        "SELECT MIN(next_attempt_at) FROM webhook_deliveries WHERE next_attempt_at IS NOT NULL",
        [],
        |row| row.get(0),
    )?)
}

/// Records one attempt; `next_attempt_at` is `None` once delivered or given up.
pub fn record_webhook_attempt(
    conn: &mut Connection,
    delivery_id: &str,
    attempt: &WebhookAttempt,
    delivered: bool,
    next_attempt_at: Option<i64>,
) -> Result<(), ApiError> {
    let tx = conn.transaction()?;
    tx.execute(
        "INSERT INTO webhook_attempts (delivery_id, at, status, answer, took_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            delivery_id,
            attempt.at.timestamp_millis(),
            attempt.status.map(i64::from),
            attempt.answer,
            attempt.took_ms as i64
        ],
    )?;
    tx.execute(
        "UPDATE webhook_deliveries SET delivered = ?1, next_attempt_at = ?2 WHERE id = ?3",
        params![delivered, next_attempt_at, delivery_id],
    )?;
    tx.commit()?;
    Ok(())
}

fn delivery_from_row(row: &Row) -> crate::db::sql::Result<WebhookDelivery> {
    let next: Option<i64> = row.get("next_attempt_at")?;
    let delivered: bool = row.get("delivered")?;
    Ok(WebhookDelivery {
        id: row.get("id")?,
        webhook_id: row.get("webhook_id")?,
        event: row.get("event")?,
        deployment_id: row.get("deployment_id")?,
        state: match (next, delivered) {
            (Some(_), _) => DeliveryState::Pending,
            (None, true) => DeliveryState::Delivered,
            (None, false) => DeliveryState::Failed,
        },
        created_at: time(row.get("created_at")?),
        next_attempt_at: next.map(time),
        attempts: Vec::new(),
        body: serde_json::from_str(&row.get::<_, String>("body")?).unwrap_or_default(),
    })
}

fn attempts_of(conn: &Connection, delivery_id: &str) -> Result<Vec<WebhookAttempt>, ApiError> {
    let mut stmt = conn.prepare_cached(
        "SELECT at, status, answer, took_ms FROM webhook_attempts WHERE delivery_id = ?1 ORDER BY at",
    )?;
    let attempts = stmt
        .query_map([delivery_id], |row| attempt_from_row(row, 0))?
        .collect::<Result<_, _>>()?;
    Ok(attempts)
}

/// A webhook's deliveries, newest first, each with its attempts.
pub fn list_webhook_deliveries(
    conn: &mut Connection,
    project_id: &str,
    webhook_id: &str,
) -> Result<Vec<WebhookDelivery>, ApiError> {
    webhook_in(conn, project_id, webhook_id)?;
    let mut stmt = conn.prepare(
        "SELECT * FROM webhook_deliveries WHERE webhook_id = ?1 ORDER BY created_at DESC, id DESC LIMIT ?2",
    )?;
    let mut deliveries: Vec<WebhookDelivery> = stmt
        .query_map(params![webhook_id, LISTED], delivery_from_row)?
        .collect::<Result<_, _>>()?;
    // Every listed delivery's attempts in one read, not one read each.
    let mut attempts = conn.prepare(
        "SELECT a.delivery_id, a.at, a.status, a.answer, a.took_ms FROM webhook_attempts a
         WHERE a.delivery_id IN (SELECT id FROM webhook_deliveries WHERE webhook_id = ?1
                                 ORDER BY created_at DESC, id DESC LIMIT ?2)
         ORDER BY a.at",
    )?;
    let mut by_delivery: std::collections::HashMap<String, Vec<WebhookAttempt>> =
        std::collections::HashMap::new();
    let rows = attempts.query_map(params![webhook_id, LISTED], |row| {
        Ok((row.get::<_, String>(0)?, attempt_from_row(row, 1)?))
    })?;
    for row in rows {
        let (delivery, attempt) = row?;
        by_delivery.entry(delivery).or_default().push(attempt);
    }
    for delivery in &mut deliveries {
        delivery.attempts = by_delivery.remove(&delivery.id).unwrap_or_default();
    }
    Ok(deliveries)
}

/// An attempt from a row whose columns from `first` on are at, status,
/// answer and took_ms.
fn attempt_from_row(row: &Row, first: usize) -> crate::db::sql::Result<WebhookAttempt> {
    Ok(WebhookAttempt {
        at: time(row.get(first)?),
        status: row
            .get::<_, Option<i64>>(first + 1)?
            .and_then(|status| u16::try_from(status).ok()),
        answer: row.get(first + 2)?,
        took_ms: row.get::<_, i64>(first + 3)?.max(0) as u64,
    })
}

fn delivery_in(
    conn: &Connection,
    webhook_id: &str,
    delivery_id: &str,
) -> Result<WebhookDelivery, ApiError> {
    let mut delivery = conn
        .query_row(
            "SELECT * FROM webhook_deliveries WHERE id = ?1 AND webhook_id = ?2",
            [delivery_id, webhook_id],
            delivery_from_row,
        )
        .optional()?
        .ok_or_else(|| ApiError::not_found("webhook delivery", delivery_id))?;
    delivery.attempts = attempts_of(conn, delivery_id)?;
    Ok(delivery)
}

/// Sends a delivery once more, now, whatever became of it; one that had failed
/// gets this one try.
pub fn retry_webhook_delivery(
    conn: &mut Connection,
    project_id: &str,
    webhook_id: &str,
    delivery_id: &str,
) -> Result<WebhookDelivery, ApiError> {
    let tx = conn.transaction()?;
    webhook_in(&tx, project_id, webhook_id)?;
    delivery_in(&tx, webhook_id, delivery_id)?;
    tx.execute(
        "UPDATE webhook_deliveries SET next_attempt_at = ?1 WHERE id = ?2",
        params![now_ms(), delivery_id],
    )?;
    let delivery = delivery_in(&tx, webhook_id, delivery_id)?;
    tx.commit()?;
    Ok(delivery)
}

/// Forgets deliveries that ended (delivered or given up) before `before`,
/// with their attempts.
pub fn prune_webhook_deliveries(conn: &mut Connection, before: i64) -> Result<(), ApiError> {
    let tx = conn.transaction()?;
    tx.execute(
        "DELETE FROM webhook_attempts WHERE delivery_id IN
           (SELECT id FROM webhook_deliveries WHERE next_attempt_at IS NULL AND created_at < ?1)",
        [before],
    )?;
    tx.execute(
        "DELETE FROM webhook_deliveries WHERE next_attempt_at IS NULL AND created_at < ?1",
        [before],
    )?;
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_protocol::DeploymentStatus::*;

    #[test]
    fn status_changes_are_the_documented_events() {
        assert_eq!(event_of(None, Queued), Some("build.created"));
        assert_eq!(
            event_of(Some(Building), AwaitingDeployment),
            Some("build.succeeded")
        );
        assert_eq!(event_of(Some(Building), Deploying), Some("build.succeeded"));
        assert_eq!(event_of(Some(Building), BuildFailed), Some("build.failed"));
        assert_eq!(
            event_of(Some(Queued), BuildCanceled),
            Some("build.canceled")
        );
        assert_eq!(event_of(Some(Deploying), Live), Some("deployment.live"));
        assert_eq!(
            event_of(Some(Deploying), DeployFailed),
            Some("deployment.failed")
        );
        // Not news: a claim, a deploy's start, the previous live one replaced.
        assert_eq!(event_of(Some(Queued), Building), None);
        assert_eq!(event_of(Some(AwaitingDeployment), Deploying), None);
        assert_eq!(event_of(Some(Live), Ready), None);
    }
}
