//! The HTTP API, under `/api/v1`. `docs/openapi.json` describes it, and a test keeps the two
//! in step. Request bodies are read by hand, so every route has its own size limit and an
//! oversized body gets the same JSON error as any other.

use std::time::Duration;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use hexray_crypto::{frames, CryptoError, EncryptedImage};
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::metrics::Gauges;
use super::AppState;

/// The OpenAPI description served at `/api/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("../../../docs/openapi.json");

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/api/v1")
            .route("/health", web::get().to(health))
            .route("/openapi.json", web::get().to(openapi))
            .route("/models", web::get().to(list_models))
            .route("/models/{id}", web::get().to(model_file))
            .route("/keys", web::post().to(register_key))
            .route("/keys/{id}", web::get().to(key_status))
            .route("/jobs", web::post().to(submit_job))
            .route("/jobs/{id}", web::get().to(job_status))
            .route("/jobs/{id}/events", web::get().to(job_events))
            .route("/jobs/{id}/outputs", web::get().to(job_outputs)),
    )
    .route("/metrics", web::get().to(metrics));
}

/// Answers requests no route matched, in the API's error format.
pub async fn not_found(request: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound(format!(
        "{} {}",
        request.method(),
        request.path()
    )))
}

async fn health(state: web::Data<AppState>) -> HttpResponse {
    let (queued, running) = state.jobs.depth();
    HttpResponse::Ok().json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "models": state.models.len(),
        "queue_depth": queued,
        "jobs_running": running,
    }))
}

async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(OPENAPI)
}

async fn list_models(state: web::Data<AppState>) -> HttpResponse {
    let models: Vec<_> = state.models.iter().map(|m| m.summary()).collect();
    HttpResponse::Ok().json(json!({ "models": models }))
}

/// The model file itself: the client needs it to preprocess, encrypt and decode.
async fn model_file(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let model = state
        .models
        .get(&id)
        .ok_or_else(|| ApiError::UnknownModel(id.clone()))?;
    Ok(HttpResponse::Ok()
        .content_type("application/octet-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(model.file.clone()))
}

async fn register_key(
    state: web::Data<AppState>,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let bytes = read_body(body, state.limits.key_bytes).await?;
    let store = state.keys.clone();
    let (id, registration) = web::block(move || store.register(&bytes))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    let mut response = if registration.created {
        HttpResponse::Created()
    } else {
        HttpResponse::Ok()
    };
    Ok(response.json(json!({
        "key_id": id,
        "parameter_set": registration.parameter_set.name(),
        "created": registration.created,
    })))
}

async fn key_status(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let set = state
        .keys
        .lookup(&id)
        .ok_or_else(|| ApiError::UnknownKey(id.clone()))?;
    Ok(HttpResponse::Ok().json(json!({ "key_id": *id, "parameter_set": set.name() })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobQuery {
    model: String,
    key: String,
}

/// Accepts a batch: the body packs one encrypted image per blob ([`frames`]).
async fn submit_job(
    state: web::Data<AppState>,
    query: web::Query<JobQuery>,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let JobQuery { model, key } = query.into_inner();
    let model = state
        .models
        .get(&model)
        .cloned()
        .ok_or(ApiError::UnknownModel(model))?;
    let key_set = state
        .keys
        .lookup(&key)
        .ok_or_else(|| ApiError::UnknownKey(key.clone()))?;
    let set = model.loaded.parameter_set;
    if key_set != set {
        return Err(ApiError::ParameterMismatch(format!(
            "key {key} uses {}, but model {} needs {}",
            key_set.name(),
            model.id,
            set.name()
        )));
    }
    let limit = state.limits.batch_images * (hexray_crypto::ciphertext::IMAGE_LIMIT as usize + 4);
    let body = read_body(body, limit).await?;
    let max_images = state.limits.batch_images;
    let inputs_len = model.loaded.circuit.input_len();
    let inputs = web::block(move || {
        let blobs = frames::unpack(&body, max_images).map_err(|e| match e {
            CryptoError::BatchSize { .. } => ApiError::WrongInputCount(e.to_string()),
            e => ApiError::MalformedCiphertext(e.to_string()),
        })?;
        blobs
            .into_iter()
            .enumerate()
            .map(|(i, blob)| {
                EncryptedImage::from_bytes(blob, set, inputs_len).map_err(|e| {
                    let message = format!("image {i}: {e}");
                    match e {
                        CryptoError::ParameterMismatch { .. } => {
                            ApiError::ParameterMismatch(message)
                        }
                        CryptoError::Count { .. } => ApiError::WrongInputCount(message),
                        _ => ApiError::MalformedCiphertext(message),
                    }
                })
            })
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))??;
    let status = state.jobs.submit(model, key, inputs)?;
    Ok(HttpResponse::Accepted()
        .insert_header((header::LOCATION, format!("/api/v1/jobs/{}", status.job_id)))
        .json(status))
}

async fn job_status(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(state.jobs.get(&id)?.status()))
}

/// Server-sent events: a `status` event at once, then whenever the state or the bootstrap
/// count has changed (at most five a second), ending after the final one.
async fn job_events(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let job = state.jobs.get(&id)?;
    // The stream's state: the (state, bootstraps done) last sent; None before the first event.
    let stream = futures_util::stream::unfold(Some(None), move |last| {
        let job = job.clone();
        async move {
            let last: Option<(&str, usize)> = last?;
            if last.is_some() {
                // At most five events a second, however fast the bootstraps go.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            loop {
                let status = job.status();
                let progress = (status.state, status.bootstraps_done);
                if last != Some(progress) {
                    let event = format!(
                        "event: status\ndata: {}\n\n",
                        serde_json::to_string(&status).expect("a status serializes")
                    );
                    let next = (!status.is_final()).then_some(Some(progress));
                    return Some((Ok::<_, actix_web::Error>(web::Bytes::from(event)), next));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .streaming(stream))
}

/// The packed encrypted outputs ([`frames`]), one per input image, in order.
async fn job_outputs(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let outputs = state.jobs.get(&id)?.outputs()?;
    Ok(HttpResponse::Ok()
        .content_type("application/octet-stream")
        .body(outputs.to_vec()))
}

async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let (queue_depth, running) = state.jobs.depth();
    let (keys_cached, key_cache_bytes) = state.keys.cached();
    let gauges = Gauges {
        queue_depth,
        running,
        keys_registered: state.keys.registered(),
        keys_cached,
        key_cache_bytes,
        models: state.models.len(),
    };
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.jobs.metrics.render(&gauges))
}

/// Reads a request body of at most `limit` bytes, refusing a larger one as soon as the bytes
/// received pass the limit, before the rest is read.
async fn read_body(mut payload: web::Payload, limit: usize) -> Result<web::Bytes, ApiError> {
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("reading the body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}
