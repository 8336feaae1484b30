//! Caddy's admin API, as a deploy host programs it: one HTTP server of its own
//! (`apps.http.servers.<name>`), one route per environment and component,
//! found by its `@id`, matching one hostname and proxying to one upstream.
//! Caddy applies each change gracefully: requests in flight finish on the
//! config they started with.
//!
//! Hostnames are checked before they get here (`DeploySettings::check`), and
//! every value goes in as JSON built by serde, never by text.

use serde_json::{json, Value};

pub(crate) struct Caddy {
    admin: String,
    http: reqwest::Client,
}

impl Caddy {
    pub fn new(admin_url: &str) -> Caddy {
        Caddy {
            admin: admin_url.trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .no_proxy()
                .build()
                .expect("an HTTP client"),
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, String> {
        let url = format!("{}{path}", self.admin);
        let mut request = self.http.request(method.clone(), &url);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|error| {
            format!("Caddy's admin API at {} does not answer ({error}); is Caddy running, and is caddy_admin_url right?", self.admin)
        })?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(format!(
                "Caddy's admin API refused {method} {path} ({status}): {}",
                text.trim()
            ));
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Whether the admin API answers: what `doctor` reports.
    pub async fn answers(&self) -> Result<(), String> {
        self.call(reqwest::Method::GET, "/config/", None)
            .await
            .map(drop)
    }

    /// Makes `apps.http.servers.<name>` listen on `listen` if it is not there,
    /// creating the levels above it that are missing. Kiln's server does no
    /// automatic HTTPS: TLS is the operator's choice of listener.
    pub async fn ensure_server(&self, name: &str, listen: &str) -> Result<(), String> {
        let server = json!({
            "listen": [listen],
            "routes": [],
            "automatic_https": {"disable": true},
        });
        let levels = [
            (
                "/config/apps",
                json!({"http": {"servers": {name: server.clone()}}}),
            ),
            (
                "/config/apps/http",
                json!({"servers": {name: server.clone()}}),
            ),
            ("/config/apps/http/servers", json!({name: server.clone()})),
        ];
        for (path, value) in levels {
            if self.call(reqwest::Method::GET, path, None).await?.is_null() {
                self.call(reqwest::Method::POST, path, Some(&value)).await?;
                return Ok(());
            }
        }
        let path = format!("/config/apps/http/servers/{name}");
        if self
            .call(reqwest::Method::GET, &path, None)
            .await?
            .is_null()
        {
            self.call(reqwest::Method::POST, &path, Some(&server))
                .await?;
        }
        Ok(())
    }

    /// Removes route `id`, if Caddy has it.
    pub async fn remove_route(&self, id: &str) -> Result<(), String> {
        let by_id = format!("/id/{id}");
        let present = self
            .http
            .get(format!("{}{by_id}", self.admin))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if present {
            self.call(reqwest::Method::DELETE, &by_id, None).await?;
        }
        Ok(())
    }

    /// Points route `id` (hostname `host`) at `upstream`, adding it if new.
    pub async fn upsert_route(
        &self,
        server: &str,
        id: &str,
        host: &str,
        upstream: &str,
    ) -> Result<(), String> {
        let route = json!({
            "@id": id,
            "match": [{"host": [host]}],
            "handle": [{"handler": "reverse_proxy", "upstreams": [{"dial": upstream}]}],
            "terminal": true,
        });
        let by_id = format!("/id/{id}");
        if self
            .http
            .get(format!("{}{by_id}", self.admin))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            self.call(reqwest::Method::PATCH, &by_id, Some(&route))
                .await?;
        } else {
            let routes = format!("/config/apps/http/servers/{server}/routes");
            self.call(reqwest::Method::POST, &routes, Some(&route))
                .await?;
        }
        Ok(())
    }
}
