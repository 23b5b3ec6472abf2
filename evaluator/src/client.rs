//! A blocking client of the HTTP API: the command line's client side, and what the load
//! benchmark and the durability tests drive a real server with.
//!
//! Like the page, it knows a model only by its client spec: it fetches the spec, encrypts for
//! it, and names its fingerprint when it submits a job.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hexray_model::bulk_spec::BulkSpec;
use hexray_model::ClientSpec;
use rustls::pki_types::CertificateDer;
use serde::de::DeserializeOwned;
use serde_json::Value;
use thiserror::Error;
use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};

use crate::server::jobs::Status;
use crate::server::keys::{key_id, KEY_ID_HEADER};
use crate::trusted_cas::{read_cas, CaFileError, SYSTEM_CAS};

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("HTTP: {0}")]
    Http(#[from] ureq::Error),
    #[error("the server answered {status} `{code}`: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("the server's answer is not what the API describes: {0}")]
    Protocol(String),
    /// An error answered by something before the server (a proxy's error page, say), not in
    /// the API's format: its start is shown, as the status alone rarely says what to do.
    #[error("the answer was {status}, not from HEXray's API (a proxy in between?): {excerpt}")]
    NotTheApi { status: u16, excerpt: String },
    #[error("job {0} did not finish in time")]
    Timeout(String),
    /// A job the server took but could not evaluate; `code` is the API's code for why, where
    /// the client can act on it (`unknown_key`: upload the key again).
    #[error("the server could not evaluate job {job}: {error}")]
    Failed {
        job: String,
        error: String,
        code: Option<String>,
    },
    #[error(transparent)]
    Cas(#[from] CaFileError),
}

impl ClientError {
    /// The API's error code, when the server refused the request or failed the job for a
    /// reason it names.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            ClientError::Failed { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    /// Whether the same request may well succeed a little later: the connection failed, broke
    /// or timed out (a node or proxy restarting), a proxy answered 502, 503 or 504 for a server
    /// it could not reach, or the server's database was busy. A refusal of the request itself
    /// (401, 404, a quota) is not.
    ///
    /// ```
    /// use hexray_evaluator::client::ClientError;
    ///
    /// let api = |status, code: &str| ClientError::Api { status, code: code.into(), message: String::new() };
    /// assert!(api(503, "busy").is_transient());
    /// assert!(!api(404, "unknown_job").is_transient());
    /// let gateway = ClientError::NotTheApi { status: 502, excerpt: "Bad Gateway".into() };
    /// assert!(gateway.is_transient());
    /// assert!(ClientError::Http(ureq::Error::ConnectionFailed).is_transient());
    /// ```
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Http(e) => matches!(
                e,
                ureq::Error::Io(_) | ureq::Error::ConnectionFailed | ureq::Error::Timeout(_)
            ),
            ClientError::Api { code, .. } => code == "busy",
            ClientError::NotTheApi { status, .. } => matches!(status, 502..=504),
            _ => false,
        }
    }
}

/// How long a client following a job keeps asking through [transient](ClientError::is_transient)
/// errors before it gives up: long enough for a node to restart, since a job given up on is
/// lost to its client, who holds the only key that decrypts it.
const PATIENCE: Duration = Duration::from_secs(300);

/// Asks `ask` until it succeeds or fails for good, waiting through transient errors for up to
/// [`PATIENCE`], half a second at first and at most 15 s between tries.
fn patiently<T>(mut ask: impl FnMut() -> Result<T, ClientError>) -> Result<T, ClientError> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(500);
    loop {
        match ask() {
            Err(e) if e.is_transient() && start.elapsed() < PATIENCE => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(15));
            }
            answer => return answer,
        }
    }
}

/// An answer: its status and body.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as JSON, if the status is a success; the API's error otherwise, or, when the
    /// error is not in the API's format (a proxy answered), what it says.
    ///
    /// ```
    /// use hexray_evaluator::client::{ClientError, Reply};
    ///
    /// let refused = br#"{"code":"image_quota","message":"this token's image quota is used up"}"#;
    /// let api = Reply { status: 429, body: refused.to_vec() }.json().unwrap_err();
    /// assert_eq!(api.code(), Some("image_quota"));
    ///
    /// let page = b"<html>\r\n<head><title>413 Request Entity Too Large</title></head>";
    /// let proxy = Reply { status: 413, body: page.to_vec() }.json().unwrap_err();
    /// assert!(matches!(proxy, ClientError::NotTheApi { status: 413, .. }));
    /// assert!(proxy.to_string().contains("<title>413 Request Entity Too Large</title>"));
    /// ```
    pub fn json(self) -> Result<Value, ClientError> {
        let value: Result<Value, _> = serde_json::from_slice(&self.body);
        match (self.status, value) {
            (200..=299, Ok(v)) => Ok(v),
            (200..=299, Err(e)) => Err(ClientError::Protocol(e.to_string())),
            (status, Ok(v)) if v["code"].is_string() => Err(ClientError::Api {
                status,
                code: v["code"].as_str().unwrap_or_default().to_owned(),
                message: v["message"].as_str().unwrap_or_default().to_owned(),
            }),
            (status, _) => Err(ClientError::NotTheApi {
                status,
                excerpt: String::from_utf8_lossy(&self.body[..self.body.len().min(300)])
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" "),
            }),
        }
    }

    /// The body as `T`, if the status is a success; the API's error otherwise.
    pub fn parse<T: DeserializeOwned>(self) -> Result<T, ClientError> {
        serde_json::from_value(self.json()?).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// The body, if the status is a success.
    pub fn bytes(self) -> Result<Vec<u8>, ClientError> {
        if (200..300).contains(&self.status) {
            Ok(self.body)
        } else {
            self.json().map(|_| Vec::new())
        }
    }
}

/// One client of one server, with its token.
pub struct ApiClient {
    agent: ureq::Agent,
    base: String,
    token: Option<String>,
}

impl ApiClient {
    /// A client of the server at `base`, e.g. `https://hexray.hospital.example`. An `https://`
    /// server's certificate is verified against the CAs in `ca_file` (PEM), else the system's:
    /// hospitals often sign their servers with a CA of their own, whose file is then named.
    pub fn connect(
        base: &str,
        token: Option<&str>,
        ca_file: Option<&Path>,
    ) -> Result<Self, ClientError> {
        let cas = match base.starts_with("https://") {
            true => read_cas(ca_file.unwrap_or(Path::new(SYSTEM_CAS)))?,
            false => Vec::new(),
        };
        Ok(Self::trusting(base, token, cas))
    }

    /// A client of a server on plain HTTP, as the launcher, tests and benchmarks reach theirs
    /// on loopback (e.g. `http://127.0.0.1:8080`); it trusts no CA, so it refuses `https://`.
    pub fn new(base: &str, token: Option<&str>) -> Self {
        Self::trusting(base, token, Vec::new())
    }

    fn trusting(base: &str, token: Option<&str>, cas: Vec<CertificateDer<'static>>) -> Self {
        let roots: Vec<_> = cas
            .iter()
            .map(|ca| Certificate::from_der(ca.as_ref()).to_owned())
            .collect();
        let tls = TlsConfig::builder()
            .provider(TlsProvider::Rustls)
            .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .root_certs(RootCerts::from(roots))
            .build();
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(600)))
            .tls_config(tls)
            .build()
            .into();
        ApiClient {
            agent,
            base: base.trim_end_matches('/').to_owned(),
            token: token.map(str::to_owned),
        }
    }

    /// Sends one request; a body goes as `application/octet-stream`.
    pub fn request(&self, path: &str, body: Option<&[u8]>) -> Result<Reply, ClientError> {
        self.request_with(path, body, None)
    }

    /// Sends one request with one more header.
    fn request_with(
        &self,
        path: &str,
        body: Option<&[u8]>,
        header: Option<(&str, &str)>,
    ) -> Result<Reply, ClientError> {
        let url = format!("{}{path}", self.base);
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let mut response = match body {
            Some(body) => {
                let mut request = self.agent.post(&url);
                if let Some(auth) = &auth {
                    request = request.header("Authorization", auth);
                }
                if let Some((name, value)) = header {
                    request = request.header(name, value);
                }
                request
                    .content_type("application/octet-stream")
                    .send(body)?
            }
            None => {
                let mut request = self.agent.get(&url);
                if let Some(auth) = &auth {
                    request = request.header("Authorization", auth);
                }
                if let Some((name, value)) = header {
                    request = request.header(name, value);
                }
                request.call()?
            }
        };
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_vec()?;
        Ok(Reply { status, body })
    }

    /// The most images the server takes in one job (`--max-batch`), from its health answer.
    pub fn batch_images(&self) -> Result<usize, ClientError> {
        let health = self.request("/api/v1/health", None)?.json()?;
        health["batch_images"]
            .as_u64()
            .filter(|&n| n > 0)
            .map(|n| n as usize)
            .ok_or_else(|| ClientError::Protocol("the health answer has no batch_images".into()))
    }

    /// The id of the server's default model: the first it lists.
    pub fn default_model(&self) -> Result<String, ClientError> {
        let models = self.request("/api/v1/models", None)?.json()?;
        models["models"][0]["id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| ClientError::Protocol("the server lists no model".into()))
    }

    /// A served model's client spec.
    pub fn spec(&self, model: &str) -> Result<ClientSpec, ClientError> {
        let bytes = self
            .request(&format!("/api/v1/models/{}", escaped(model)), None)?
            .bytes()?;
        ClientSpec::from_json(&bytes).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// Registers a compressed server key; returns its id. The upload names the key, so that
    /// the server can refuse it at the token's quota before reading it, yet let a key the
    /// token already has through (a repair).
    pub fn register_key(&self, key: &[u8]) -> Result<String, ClientError> {
        let id = key_id(key);
        let reply = self
            .request_with("/api/v1/keys", Some(key), Some((KEY_ID_HEADER, &id)))?
            .json()?;
        string(&reply, "key_id")
    }

    /// Submits a batch under the compressed server key `key`, the whole key lifecycle a client
    /// needs: the key is uploaded first if the server does not have it (asked by its id, a hash
    /// of its bytes), and again, once, if the server answers `unknown_key` when the batch
    /// arrives (it expired or was lost in between). `uploading` is told the key's size before
    /// each upload, which takes a while at 30 MB. Returns the job id.
    pub fn submit_under_key(
        &self,
        model: &str,
        spec: &ClientSpec,
        batch: &[u8],
        key: &[u8],
        uploading: impl Fn(usize),
    ) -> Result<String, ClientError> {
        let id = key_id(key);
        let upload = || {
            uploading(key.len());
            self.register_key(key)
        };
        let known = self.request(&format!("/api/v1/keys/{id}"), None)?;
        match known.status {
            404 => drop(upload()?),
            // Any other refusal (a token, a limit, the server) is the caller's to see.
            _ => drop(known.json()?),
        }
        match self.submit(model, &id, spec, batch) {
            Err(e) if e.code() == Some("unknown_key") => {
                upload()?;
                self.submit(model, &id, spec, batch)
            }
            submitted => submitted,
        }
    }

    /// Submits a packed batch of images encrypted for `spec`; returns the job id.
    pub fn submit(
        &self,
        model: &str,
        key: &str,
        spec: &ClientSpec,
        batch: &[u8],
    ) -> Result<String, ClientError> {
        let path = format!(
            "/api/v1/jobs?model={}&key={key}&fingerprint={}",
            escaped(model),
            spec.fingerprint
        );
        let reply = self.request(&path, Some(batch))?.json()?;
        string(&reply, "job_id")
    }

    /// A served model's bulk spec; `not_found` for a model that does not take the bulk path.
    pub fn bulk_spec(&self, model: &str) -> Result<BulkSpec, ClientError> {
        let bytes = self
            .request(
                &format!("/api/v1/models/{}/bulk-spec", escaped(model)),
                None,
            )?
            .bytes()?;
        BulkSpec::from_json(&bytes).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// Submits a bulk upload ([`hexray_bulk::upload`]) encrypted for `spec`; returns the job id.
    pub fn submit_bulk(
        &self,
        model: &str,
        spec: &BulkSpec,
        upload: &[u8],
    ) -> Result<String, ClientError> {
        let reply = self
            .request(&bulk_jobs_path(model, spec), Some(upload))?
            .json()?;
        string(&reply, "job_id")
    }

    /// Whether the server would take a bulk batch for `model` now: asked with an empty upload,
    /// which it answers with 204, or with the refusal a batch would get (a full queue, the
    /// token's image quota, a stale spec), so that no batch is sent in vain.
    pub fn bulk_room(&self, model: &str, spec: &BulkSpec) -> Result<(), ClientError> {
        self.request(&bulk_jobs_path(model, spec), Some(&[]))?
            .bytes()
            .map(drop)
    }

    /// A job's status, as the server reports it now.
    pub fn status(&self, job: &str) -> Result<Status, ClientError> {
        self.request(&format!("/api/v1/jobs/{job}"), None)?.parse()
    }

    /// Polls a job until it is done or failed; returns its last status.
    pub fn wait(&self, job: &str, timeout: Duration) -> Result<Status, ClientError> {
        self.follow(job, timeout, |_| {})
    }

    /// [`wait`](Self::wait), showing each status polled to `seen` (for a progress bar). Errors
    /// that may pass (the node restarting, a busy database) are waited through for a few
    /// minutes rather than ending the wait.
    pub fn follow(
        &self,
        job: &str,
        timeout: Duration,
        mut seen: impl FnMut(&Status),
    ) -> Result<Status, ClientError> {
        let start = Instant::now();
        loop {
            let status = patiently(|| self.status(job))?;
            seen(&status);
            if status.is_final() {
                return Ok(status);
            }
            if start.elapsed() > timeout {
                return Err(ClientError::Timeout(job.into()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A finished job's packed encrypted outputs, waiting through errors that may pass as
    /// [`follow`](Self::follow) does.
    pub fn outputs(&self, job: &str) -> Result<Vec<u8>, ClientError> {
        patiently(|| {
            self.request(&format!("/api/v1/jobs/{job}/outputs"), None)?
                .bytes()
        })
    }
}

/// Where bulk batches for `model`, encrypted for `spec`, are sent.
fn bulk_jobs_path(model: &str, spec: &BulkSpec) -> String {
    format!(
        "/api/v1/bulk-jobs?model={}&fingerprint={}",
        escaped(model),
        spec.fingerprint
    )
}

/// `text` as one URL path segment or query value: a model's id is its file's name on the
/// server, which may hold spaces, `&` or `#`.
///
/// ```
/// # use hexray_evaluator::client::escaped;
/// assert_eq!(escaped("screen-mlp-32"), "screen-mlp-32");
/// assert_eq!(escaped("ward 3 & ICU#2"), "ward%203%20%26%20ICU%232");
/// assert_eq!(escaped("ré"), "r%C3%A9");
/// ```
pub fn escaped(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn string(value: &Value, field: &str) -> Result<String, ClientError> {
    value[field]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| ClientError::Protocol(format!("no `{field}` in {value}")))
}
