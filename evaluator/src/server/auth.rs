//! Bearer tokens: who may use the API, and whose keys and jobs are whose.
//!
//! A tokens file holds one line per token: `<SHA-256 of the token, hex> <scope> <label>`. The
//! token itself is printed once when created (`hexray token new`) and never stored, so the file
//! grants nothing to whoever reads it. A `clinician` token uses the API; a `metrics` token can
//! only read `/metrics`. Every key and job belongs to the token that created it, named by a
//! prefix of the token's hash ([`Owner`]); another token gets 404 for them.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use actix_web::http::header;
use actix_web::HttpRequest;
use hexray_model::hex;
use rand::RngCore;
use sha2::{Digest, Sha256};
use thiserror::Error;

use super::error::ApiError;
use crate::durable_file::{write_durably, Readers};

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The inference API: models, keys, jobs.
    Clinician,
    /// `GET /metrics` only, for a Prometheus scraper.
    Metrics,
}

impl Scope {
    /// The scope as `hexray token new --scope` and the tokens file write it.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Clinician => "clinician",
            Scope::Metrics => "metrics",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [Scope::Clinician, Scope::Metrics]
            .into_iter()
            .find(|s| s.name() == name)
    }
}

/// Who owns a key or a job: the first 64 bits of the token's hash in hex, or `open` when the
/// server runs without tokens. Safe as a directory name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Owner(pub String);

impl Owner {
    pub fn open() -> Self {
        Owner("open".into())
    }
}

/// The owner of the token whose SHA-256 (hex) is `hash`.
fn owner_of(hash: &str) -> Owner {
    Owner(hash[..16].to_owned())
}

#[derive(Debug, Error)]
pub enum TokensError {
    #[error("cannot read or write the tokens file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("tokens file {path}, line {line}: {reason}")]
    Line {
        path: String,
        line: usize,
        reason: String,
    },
    #[error(
        "tokens file {path} has no token of owner id {owner} (`hexray token list` shows them)"
    )]
    Unknown { path: String, owner: String },
}

/// The tokens a server accepts, by hash.
#[derive(Debug)]
pub struct Tokens(HashMap<String, Scope>);

/// One line of a tokens file: a token's hash, its scope and who it is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenEntry {
    pub hash: String,
    pub scope: Scope,
    pub label: String,
}

impl TokenEntry {
    /// The owner id that the token's keys, jobs and log lines carry (see [`Owner`]).
    pub fn owner(&self) -> Owner {
        owner_of(&self.hash)
    }
}

impl Tokens {
    /// Reads a tokens file. A malformed line stops the server rather than being skipped, so a
    /// typo never silently locks someone out or lets someone in.
    pub fn load(path: &Path) -> Result<Self, TokensError> {
        let entries = Self::entries(path)?;
        Ok(Tokens(
            entries.into_iter().map(|e| (e.hash, e.scope)).collect(),
        ))
    }

    /// Every token of a tokens file, in its order (comments and blank lines left out), or the
    /// first malformed line.
    pub fn entries(path: &Path) -> Result<Vec<TokenEntry>, TokensError> {
        Ok(Self::parse(path, &Self::read(path)?)?
            .into_iter()
            .map(|(_, entry)| entry)
            .collect())
    }

    fn read(path: &Path) -> Result<String, TokensError> {
        std::fs::read_to_string(path).map_err(|source| TokensError::Io {
            path: path.display().to_string(),
            source,
        })
    }

    /// The tokens in `text` (the file at `path`), each with the index of its line.
    fn parse(path: &Path, text: &str) -> Result<Vec<(usize, TokenEntry)>, TokensError> {
        let mut entries = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |reason: &str| TokensError::Line {
                path: path.display().to_string(),
                line: i + 1,
                reason: reason.into(),
            };
            let mut fields = line.splitn(3, ' ');
            let hash = fields.next().unwrap_or_default();
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad("expected `<sha-256 hex> <scope> <label>`"));
            }
            let scope = fields
                .next()
                .and_then(Scope::from_name)
                .ok_or_else(|| bad("the scope must be `clinician` or `metrics`"))?;
            let entry = TokenEntry {
                hash: hash.to_ascii_lowercase(),
                scope,
                label: fields.next().unwrap_or_default().to_owned(),
            };
            entries.push((i, entry));
        }
        Ok(entries)
    }

    /// Removes the token whose owner id is `owner` from `path`, keeping every other line as it
    /// was; returns what it removed. The file is rewritten whole or not at all, readable by
    /// whoever could read it before (the server's user, say).
    pub fn revoke(path: &Path, owner: &str) -> Result<TokenEntry, TokensError> {
        let text = Self::read(path)?;
        let (line, entry) = Self::parse(path, &text)?
            .into_iter()
            .find(|(_, e)| e.owner().0 == owner.to_ascii_lowercase())
            .ok_or_else(|| TokensError::Unknown {
                path: path.display().to_string(),
                owner: owner.to_owned(),
            })?;
        let kept: String = text
            .lines()
            .enumerate()
            .filter(|&(i, _)| i != line)
            .map(|(_, l)| format!("{l}\n"))
            .collect();
        let io = |source| TokensError::Io {
            path: path.display().to_string(),
            source,
        };
        let old = std::fs::metadata(path).map_err(io)?;
        write_durably(path, kept.as_bytes(), Readers::As(&old)).map_err(io)?;
        Ok(entry)
    }

    /// Creates a token, appends its hash to `path` (creating the file), and returns the token.
    pub fn create(path: &Path, label: &str, scope: Scope) -> Result<String, TokensError> {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let token = format!("hxr_{}", hex::encode(&bytes));
        let label: String = label
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let io = |source| TokensError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        writeln!(file, "{} {} {label}", hash(&token), scope.name()).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(token)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The owner a request acts for, if it carries a token of `scope`.
    fn check(&self, request: &HttpRequest, scope: Scope) -> Result<Owner, ApiError> {
        let token = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(ApiError::Unauthorized)?;
        let digest = hash(token.trim());
        match self.0.get(&digest) {
            Some(&s) if s == scope => Ok(owner_of(&digest)),
            _ => Err(ApiError::Unauthorized),
        }
    }
}

/// How the server decides who a request is.
#[derive(Debug)]
pub enum Access {
    /// No tokens, bound to loopback: every request acts as [`Owner::open`], and must name a
    /// loopback host and come from a loopback page (or from the page origin the operator
    /// allowed with `--cors-origin`), so that a web page cannot reach the server by DNS
    /// rebinding.
    Loopback {
        /// The one other origin whose pages may call the API.
        cors_origin: Option<String>,
    },
    /// No tokens, behind a reverse proxy that authenticates every request (`--allow-open`):
    /// every request acts as [`Owner::open`].
    Proxied,
    Tokens(Tokens),
}

impl Access {
    /// The owner of a clinician request; 401 without a valid token, 403 for a loopback-only
    /// server reached otherwise (logged the first time: [`not_local`]).
    pub fn clinician(&self, request: &HttpRequest) -> Result<Owner, ApiError> {
        self.owner(request).map_err(|e| match e {
            ApiError::NotLocal => not_local(request),
            e => e,
        })
    }

    /// [`clinician`](Self::clinician) without logging a refusal: for a route that answers
    /// anyone and only shows a clinician more (health), where nothing is refused.
    pub fn owner(&self, request: &HttpRequest) -> Result<Owner, ApiError> {
        match self {
            Access::Loopback { cors_origin } if !names_loopback(request, cors_origin) => {
                Err(ApiError::NotLocal)
            }
            Access::Loopback { .. } | Access::Proxied => Ok(Owner::open()),
            Access::Tokens(tokens) => tokens.check(request, Scope::Clinician),
        }
    }

    /// Whether `/metrics` may answer: a loopback peer that no proxy relayed, or a metrics token.
    ///
    /// A reverse proxy on the same machine connects from loopback too, so a request that
    /// carries a forwarding header (which such proxies add) is taken to come from outside:
    /// leaving `/metrics` off the proxy is then a second guard, not the only one.
    pub fn metrics(&self, request: &HttpRequest) -> Result<(), ApiError> {
        let loopback = request
            .peer_addr()
            .is_some_and(|addr| addr.ip().is_loopback())
            && !FORWARDING_HEADERS
                .iter()
                .any(|name| request.headers().contains_key(*name));
        match self {
            Access::Loopback { cors_origin }
                if loopback && names_loopback(request, cors_origin) =>
            {
                Ok(())
            }
            Access::Proxied | Access::Tokens(_) if loopback => Ok(()),
            Access::Tokens(tokens) => tokens.check(request, Scope::Metrics).map(drop),
            Access::Loopback { .. } => Err(not_local(request)),
            Access::Proxied => Err(ApiError::Unauthorized),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Access::Loopback { .. } | Access::Proxied => "open",
            Access::Tokens(_) => "token",
        }
    }
}

/// The refusal of a request to a loopback-only server that names it otherwise, or comes from
/// another site's page. The first is logged with what the request named: it is what an operator
/// who put a proxy in front of an open server sees, and needs to read about.
fn not_local(request: &HttpRequest) -> ApiError {
    static LOGGED: std::sync::Once = std::sync::Once::new();
    LOGGED.call_once(|| {
        let header = |name| {
            request
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("none")
                .to_owned()
        };
        log::warn!(
            "refused a request naming host {} from origin {}: without tokens this server answers \
             only localhost; behind a proxy, give it --tokens-file or --allow-open (logged once)",
            header(header::HOST),
            header(header::ORIGIN)
        );
    });
    ApiError::NotLocal
}

/// The headers a reverse proxy adds to say whom it relays (nginx's `X-Real-IP` and
/// `X-Forwarded-For`, RFC 7239's `Forwarded`).
const FORWARDING_HEADERS: [&str; 3] = ["forwarded", "x-forwarded-for", "x-real-ip"];

/// Whether the request names this server by a loopback name, and comes from a loopback page
/// if it comes from a page at all. A page on another site that rebinds its own name to
/// 127.0.0.1 still sends its own name as `Host`, and its own origin as `Origin`.
///
/// Only the raw `Host` header counts (or, in HTTP/2, the request's authority). Forwarding
/// headers (`Forwarded`, `X-Forwarded-Host`) are written by whoever sends the request, so a
/// loopback server has no proxy whose word they could be: a rebinding page would name
/// `localhost` in them and pass. This is why actix's `connection_info().host()`, which
/// prefers them, is not used.
fn names_loopback(request: &HttpRequest, cors_origin: &Option<String>) -> bool {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| request.uri().authority().map(|a| a.as_str().to_owned()));
    let origin = request
        .headers()
        .get(header::ORIGIN)
        .map(|v| v.to_str().unwrap_or_default());
    let allowed = |origin: &str| {
        cors_origin.as_deref() == Some(origin) || origin_host(origin).is_some_and(is_loopback_host)
    };
    host.is_some_and(|host| is_loopback_host(&host)) && origin.is_none_or(allowed)
}

/// The `host[:port]` of an `Origin` header (`http://localhost:8080`); `None` for an opaque
/// origin (`null`) or anything else that is not a web origin.
fn origin_host(origin: &str) -> Option<&str> {
    let (scheme, rest) = origin.split_once("://")?;
    (scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https"))
        .then_some(rest)
        .filter(|rest| !rest.contains('/'))
}

/// Whether `host[:port]` names this machine: `localhost`, `127.0.0.1`, `[::1]`, any port.
fn is_loopback_host(host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default().to_owned(),
        None => host
            .rsplit_once(':')
            .map_or(host.clone(), |(name, _)| name.to_owned()),
    };
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn hash(token: &str) -> String {
    hex::encode(&Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    /// Whether a request with these headers names a loopback host.
    fn loopback(headers: &[(&str, &str)]) -> bool {
        let request = headers
            .iter()
            .fold(TestRequest::default(), |r, &h| r.insert_header(h));
        names_loopback(
            &request.to_http_request(),
            &Some("https://pages.hospital.example".into()),
        )
    }

    #[test]
    fn only_the_raw_host_counts_and_a_foreign_origin_is_refused() {
        assert!(loopback(&[("host", "localhost:8080")]));
        assert!(loopback(&[("host", "127.0.0.1")]));
        assert!(loopback(&[("host", "[::1]:8080")]));
        assert!(loopback(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080")
        ]));
        assert!(loopback(&[
            ("host", "localhost"),
            ("origin", "https://pages.hospital.example")
        ]));
        assert!(!loopback(&[("host", "attacker.example")]));
        assert!(!loopback(&[]), "no Host at all");
        // A rebinding page cannot vouch for itself with forwarding headers.
        for forwarded in [
            ("x-forwarded-host", "localhost"),
            ("forwarded", "host=localhost"),
            ("forwarded", "for=127.0.0.1;host=127.0.0.1:8080"),
        ] {
            assert!(
                !loopback(&[("host", "attacker.example"), forwarded]),
                "{forwarded:?}"
            );
        }
        // Nor can a page of another origin that names the server as it is.
        for origin in ["https://attacker.example", "null", "file://"] {
            assert!(
                !loopback(&[("host", "localhost:8080"), ("origin", origin)]),
                "{origin}"
            );
        }
    }
}
