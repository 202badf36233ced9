//! A small client for the hub's REST API: trusts only the hub's server CA, sends the API token, and turns
//! the API's JSON errors into readable messages.

use anyhow::{Context as _, Result, bail};

use crate::HubArgs;

/// API client. Cheap to clone.
#[derive(Clone)]
pub struct HubClient {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl HubClient {
    /// A client for the hub described by `args`.
    pub fn new(args: &HubArgs) -> Result<HubClient> {
        let pem = std::fs::read(&args.ca).with_context(|| {
            format!("while reading the hub's CA certificate {} (set --ca or HEARTH_HUB_CA)", args.ca.display())
        })?;
        let ca = reqwest::Certificate::from_pem(&pem).context("while parsing the hub's CA certificate")?;
        let http = reqwest::Client::builder()
            .tls_certs_only([ca])
            .timeout(std::time::Duration::from_secs(60))
            .build()
            .context("while building the HTTPS client")?;
        Ok(HubClient { http, base: args.hub.trim_end_matches('/').to_owned(), token: args.token.clone() })
    }

    fn auth(&self, req: reqwest::RequestBuilder) -> Result<reqwest::RequestBuilder> {
        let token = self.token.as_deref().context("an API token is needed: set --token or HEARTH_TOKEN")?;
        Ok(req.bearer_auth(token))
    }

    /// GETs `path` as text (no token needed).
    pub async fn text(&self, path: &str) -> Result<String> {
        let resp = self.http.get(format!("{}{path}", self.base)).send().await?;
        if !resp.status().is_success() {
            bail!("{path}: HTTP {}", resp.status());
        }
        Ok(resp.text().await?)
    }

    /// GET with the API token.
    pub async fn get(&self, path: &str) -> Result<serde_json::Value> {
        let req = self.auth(self.http.get(format!("{}{path}", self.base)))?;
        answer(req.send().await.with_context(|| format!("while contacting {}", self.base))?).await
    }

    /// POST JSON with the API token.
    pub async fn post(&self, path: &str, body: serde_json::Value) -> Result<serde_json::Value> {
        let req = self.auth(self.http.post(format!("{}{path}", self.base)).json(&body))?;
        answer(req.send().await.with_context(|| format!("while contacting {}", self.base))?).await
    }

    /// POST a file (`application/octet-stream`) with the API token; an hour at most.
    pub async fn upload(&self, path: &str, bytes: Vec<u8>) -> Result<serde_json::Value> {
        let req = self.auth(
            self.http
                .post(format!("{}{path}", self.base))
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .timeout(std::time::Duration::from_secs(3600))
                .body(bytes),
        )?;
        answer(req.send().await.with_context(|| format!("while contacting {}", self.base))?).await
    }

    /// Completes owner setup (or, once an owner exists, recovers the owner's access with the owner's email):
    /// creates the owner account with `email` and `password`; returns the owner's API token.
    pub async fn setup(&self, setup_token: &str, email: &str, password: &str) -> Result<String> {
        let resp = self
            .http
            .post(format!("{}/api/v1/setup", self.base))
            .json(&serde_json::json!({ "setup_token": setup_token, "email": email, "password": password }))
            .send()
            .await
            .with_context(|| format!("while contacting {}", self.base))?;
        let body = answer(resp).await?;
        Ok(body["token"].as_str().context("no token in the answer")?.to_owned())
    }

    /// Enrols a device (no API token needed: the bootstrap token authenticates).
    pub async fn enrol(
        &self,
        req: &hearth_proto::enrol::EnrolRequest,
    ) -> Result<hearth_proto::enrol::CertificateResponse> {
        let resp = self
            .http
            .post(format!("{}/api/v1/enrol", self.base))
            .json(req)
            .send()
            .await
            .with_context(|| format!("while contacting {}", self.base))?;
        serde_json::from_value(answer(resp).await?).context("while reading the enrolment answer")
    }

    /// Manufactures devices.
    pub async fn manufacture(&self, model: &str, count: usize) -> Result<hearth_proto::enrol::ManufactureResponse> {
        let body = self.post("/api/v1/devices", serde_json::json!({ "model": model, "count": count })).await?;
        serde_json::from_value(body).context("while reading the manufacturing answer")
    }
}

async fn answer(resp: reqwest::Response) -> Result<serde_json::Value> {
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap_or(serde_json::Value::Null);
    if !status.is_success() {
        let code = body["error"]["code"].as_str().unwrap_or("unknown");
        let message = body["error"]["message"].as_str().unwrap_or("no details");
        bail!("the hub answered {status}: {message} ({code})");
    }
    Ok(body)
}
