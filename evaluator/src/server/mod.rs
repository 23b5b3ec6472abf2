//! The self-hosted HTTP server: the clinician page, the wasm client, and the encrypted
//! inference API, in one actix-web binary.
//!
//! - [`models`]: the models served (a directory of `*.hexray` files, or the bundled default);
//! - [`keys`]: clients' server keys, persisted and cached expanded;
//! - [`jobs`]: the bounded job queue and its workers;
//! - [`routes`]: the API; [`error`]: its JSON errors; [`metrics`]: Prometheus counters.
//!
//! The server only ever holds server keys (which cannot decrypt), encrypted images and
//! encrypted outputs. Its logs hold request lines and ids, never a body.

pub mod error;
pub mod jobs;
pub mod keys;
pub mod metrics;
pub mod models;
pub mod routes;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use actix_web::web;
use thiserror::Error;

use self::error::ApiError;
use self::jobs::{JobQueue, QueueConfig};
use self::keys::KeyStore;
use self::metrics::Metrics;
use self::models::Models;
use crate::model::LoadError;

/// Everything a server needs to start.
#[derive(Clone, Debug)]
pub struct Config {
    /// `*.hexray` files to serve; `None` serves the bundled default model.
    pub models_dir: Option<PathBuf>,
    /// Where registered keys are persisted.
    pub data_dir: PathBuf,
    pub queue: QueueConfig,
    /// Memory for expanded server keys.
    pub key_cache_bytes: usize,
    pub limits: Limits,
}

/// Request limits, per route.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest `POST /keys` body.
    pub key_bytes: usize,
    /// Most images in one job.
    pub batch_images: usize,
}

#[derive(Debug, Error)]
pub enum StartError {
    #[error(transparent)]
    Models(#[from] LoadError),
    #[error("cannot open the data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
}

/// What every request handler shares.
pub struct AppState {
    pub models: Models,
    pub keys: Arc<KeyStore>,
    pub jobs: JobQueue,
    pub limits: Limits,
}

impl AppState {
    /// Loads the models, opens the key store and starts the job workers.
    pub fn start(config: &Config) -> Result<Self, StartError> {
        let models = match &config.models_dir {
            Some(dir) => Models::from_dir(dir)?,
            None => Models::bundled()?,
        };
        let keys = Arc::new(
            KeyStore::open(&config.data_dir, config.key_cache_bytes).map_err(|source| {
                StartError::DataDir {
                    path: config.data_dir.display().to_string(),
                    source,
                }
            })?,
        );
        let jobs = JobQueue::start(&config.queue, keys.clone(), Arc::new(Metrics::default()));
        Ok(AppState {
            models,
            keys,
            jobs,
            limits: config.limits,
        })
    }
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
                web::QueryConfig::default().error_handler(|e, _| {
                    ApiError::BadRequest(format!("query string: {e}")).into()
                }),
            )
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
