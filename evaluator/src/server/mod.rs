//! The self-hosted HTTP server: the clinician page, the wasm client, and the encrypted
//! inference API, in one actix-web binary.
//!
//! - [`models`]: the models served (a directory of `*.hexray` files, or the bundled default);
//!   clients get only their public client specs;
//! - [`auth`]: bearer tokens, and who owns which key and job;
//! - [`keys`]: clients' server keys, persisted durably, checked and cached expanded, in the data
//!   directory or, shared between nodes, in PostgreSQL ([`postgres`]);
//! - [`jobs`]: the bounded job queue and its workers, in memory or, shared between nodes, in
//!   PostgreSQL;
//! - [`state`]: a server's configuration and what its routes share (storage, limits, slots);
//!   [`defaults`]: the limits a server starts with unless told otherwise;
//! - [`evaluation`]: the pool of threads both job back ends evaluate on;
//! - [`store_error`]: what storage and its workers report, with no HTTP in it;
//! - [`routes`]: the API; [`error`]: its JSON errors, and the one mapping of storage's errors
//!   to them; [`metrics`]: Prometheus counters;
//!   [`rate_limit`]: the per-address limit on the routes that need no token, and
//!   [`client_address`]: whose address that is behind a trusted reverse proxy.
//!
//! The server only ever holds server keys (which cannot decrypt), encrypted images and
//! encrypted outputs. Its logs hold request lines and ids, never a body.

pub mod auth;
pub mod client_address;
pub mod defaults;
pub mod error;
pub mod evaluation;
pub mod jobs;
pub mod keys;
pub mod metrics;
pub mod models;
pub mod postgres;
pub mod rate_limit;
pub mod routes;
pub mod state;
pub mod store_error;

use std::path::Path;

use actix_web::http::header;
use actix_web::middleware::DefaultHeaders;
use actix_web::web;

use self::error::ApiError;

pub use self::state::{node_name, AppState, BodyLimits, Config, Limits, Slot, StartError};

/// The page's Content-Security-Policy: scripts and wasm only from this origin, no framing, no
/// plug-ins, and requests only to `connect` (this origin, plus the evaluator when the page is
/// hosted elsewhere).
pub fn content_security_policy() -> String {
    "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; \
     img-src 'self' blob: data:; connect-src 'self'; worker-src 'self'; \
     frame-ancestors 'none'; base-uri 'none'; form-action 'none'; object-src 'none'"
        .into()
}

/// Security headers on every response: the CSP, no framing, no MIME sniffing, no referrer,
/// and a browsing context of its own.
pub fn security_headers() -> DefaultHeaders {
    DefaultHeaders::new()
        .add((header::CONTENT_SECURITY_POLICY, content_security_policy()))
        .add((header::X_FRAME_OPTIONS, "DENY"))
        .add((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .add((header::REFERRER_POLICY, "no-referrer"))
        .add(("Cross-Origin-Opener-Policy", "same-origin"))
}

/// Registers the API, and the page from `web_dir` when given, on an actix app.
pub fn configure(
    state: web::Data<AppState>,
    web_dir: Option<&Path>,
) -> impl Fn(&mut web::ServiceConfig) + Clone {
    let web_dir = web_dir.map(Path::to_path_buf);
    move |cfg: &mut web::ServiceConfig| {
        cfg.app_data(state.clone())
            .app_data(
                web::PathConfig::default()
                    .error_handler(|e, _| ApiError::BadRequest(format!("path: {e}")).into()),
            )
            .configure(routes::configure);
        if let Some(dir) = &web_dir {
            cfg.service(actix_files::Files::new("/", dir).index_file("index.html"));
        }
        cfg.default_service(web::to(routes::not_found));
    }
}
