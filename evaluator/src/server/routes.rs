//! The HTTP API, under `/api/v1`. `docs/openapi.json` describes it, and a test keeps the two
//! in step.
//!
//! Every route but health and the OpenAPI document needs a token when the server has them
//! ([`super::auth`]). Request bodies are read by hand, after every cheaper check (token,
//! Content-Type, declared length, the token's upload slots), with a size limit derived from the
//! served models and a deadline, so an oversized, slow or unwanted body gets the same JSON error
//! as any other and is never buffered whole first.

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::Stream;
use futures_util::StreamExt;
use hexray_crypto::{batch_body, CryptoError, EncryptedImage};
use serde::Deserialize;
use serde_json::json;

use super::auth::Owner;
use super::error::ApiError;
use super::jobs::{
    spool_error, Depth, JobInputs, JobKind, JobState, JobStorage, NewJob, Progress, Status,
};
use super::keys::KEY_ID_HEADER;
use super::metrics::Gauges;
use super::models::ServedModel;
use super::store_error::StoreError;
use super::{AppState, Slot};

/// The OpenAPI description served at `/api/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("../../../docs/openapi.json");

/// Declares the routes once: [`configure`] registers them and [`ROUTES`] lists them, so the
/// test that holds `docs/openapi.json` to the server compares it with what is actually served.
macro_rules! api_routes {
    ($($method:ident $path:literal => $handler:ident,)*) => {
        /// Every route the server answers, as (method, path) with OpenAPI's `{id}` parameters.
        pub const ROUTES: &[(&str, &str)] = &[$((stringify!($method), $path),)*];

        /// Registers every route of [`ROUTES`] with its handler.
        pub fn configure(cfg: &mut web::ServiceConfig) {
            $(cfg.route($path, web::$method().to($handler));)*
        }
    };
}

api_routes! {
    get "/api/v1/health" => health,
    get "/api/v1/openapi.json" => openapi,
    get "/api/v1/models" => list_models,
    get "/api/v1/models/{id}" => client_spec,
    get "/api/v1/models/{id}/card" => model_card,
    get "/api/v1/models/{id}/bulk-spec" => bulk_spec,
    post "/api/v1/keys" => register_key,
    get "/api/v1/keys/{id}" => key_status,
    delete "/api/v1/keys/{id}" => forget_key,
    post "/api/v1/jobs" => submit_job,
    post "/api/v1/bulk-jobs" => submit_bulk_job,
    get "/api/v1/jobs/{id}" => job_status,
    get "/api/v1/jobs/{id}/events" => job_events,
    get "/api/v1/jobs/{id}/outputs" => job_outputs,
    get "/metrics" => metrics,
}

/// Answers requests no route matched, in the API's error format.
pub async fn not_found(request: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound(format!(
        "{} {}",
        request.method(),
        request.path()
    )))
}

/// Runs storage work (disk, database, hashing) on a blocking thread, off the async workers.
async fn blocking<T: Send + 'static, E: Into<ApiError> + Send + 'static>(
    work: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, ApiError> {
    web::block(work)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(Into::into)
}

/// The queue depth every node sees, read from storage at most once a second.
async fn queue_depth(state: &AppState) -> Result<Depth, ApiError> {
    if let Some(depth) = state.recent_depth() {
        return Ok(depth);
    }
    let jobs = state.jobs.clone();
    let depth = blocking(move || jobs.depth()).await?;
    state.remember_depth(depth);
    Ok(depth)
}

/// Whether the server can serve: it answers 200 once its storage answers (which a load
/// balancer's readiness probe relies on), and what a client needs to know of its limits. The
/// queue and this node's name are for those with a token (and `/metrics`): anyone may ask for
/// health, and they tell how busy the service is and what its pods are called. Requests
/// without a token are rate-limited per address.
async fn health(
    state: web::Data<AppState>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let insider = state.access.owner(&request).is_ok();
    if !insider {
        limit_anonymous(&state, &request)?;
    }
    let depth = queue_depth(&state).await?;
    let mut health = json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "auth": state.access.name(),
        "models": state.models.len(),
        "batch_images": state.limits.batch_images,
        "storage": state.storage,
    });
    if insider {
        health["queue_depth"] = depth.queued.into();
        health["jobs_running"] = depth.running.into();
        health["node"] = state.node.clone().into();
    }
    Ok(HttpResponse::Ok().json(health))
}

/// Takes one request without a token from its client's bucket: the peer's address, or, from a
/// trusted reverse proxy, the caller's it relays for ([`client_address`](super::client_address)).
fn limit_anonymous(state: &AppState, request: &HttpRequest) -> Result<(), ApiError> {
    // Read lossily: a byte the caller wrote that is not ASCII spoils its own entry only, not
    // the address the proxy appended to the same line.
    let forwarded_for: Vec<_> = request
        .headers()
        .get_all("x-forwarded-for")
        .map(|value| String::from_utf8_lossy(value.as_bytes()))
        .collect();
    let client = state.proxies.client(
        request.peer_addr().map(|a| a.ip()),
        forwarded_for.iter().map(|line| line.as_ref()),
    );
    state.anonymous.take(client)
}

async fn openapi(
    state: web::Data<AppState>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    limit_anonymous(&state, &request)?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(OPENAPI))
}

async fn list_models(
    state: web::Data<AppState>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    state.access.clinician(&request)?;
    let seconds = state.seconds_per_bootstrap();
    let models: Vec<_> = state
        .models
        .iter()
        .map(|m| m.summary(seconds, state.serves_bulk(m)))
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "models": models })))
}

/// A served model's public document (`what`), for a clinician's token: `document` picks it
/// from the model (`None` when the model has none), and it is sent as `content_type`,
/// revalidated on every use so that a replaced model is never shown stale.
fn model_document(
    state: &AppState,
    request: &HttpRequest,
    (id, what): (&str, &str),
    content_type: &str,
    document: impl FnOnce(&ServedModel) -> Option<Vec<u8>>,
) -> Result<HttpResponse, ApiError> {
    state.access.clinician(request)?;
    let model = state
        .models
        .get(id)
        .ok_or_else(|| ApiError::UnknownModel(id.to_owned()))?;
    let body = document(model).ok_or_else(|| ApiError::NotFound(format!("the {what} of {id}")))?;
    Ok(HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body))
}

/// The model's client spec: all a client needs to preprocess, encrypt and decode, and nothing
/// of the network. The model file itself never leaves the server.
async fn client_spec(
    state: web::Data<AppState>,
    request: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    model_document(
        &state,
        &request,
        (&id, "client spec"),
        "application/json",
        |model| Some(model.loaded.spec().to_json()),
    )
}

/// The model's card (Markdown): intended use and users, training data and its population,
/// measured figures and failure modes. Public facts about the model, never its weights.
async fn model_card(
    state: web::Data<AppState>,
    request: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    model_document(
        &state,
        &request,
        (&id, "model card"),
        "text/markdown; charset=utf-8",
        |model| model.card.clone().map(String::into_bytes),
    )
}

/// The model's bulk spec (`docs/bulk.md`): the BFV parameters, the input spec and the output
/// decoding, and nothing of the network; 404 for a model that does not take the bulk path, or
/// on a node that takes no bulk jobs.
async fn bulk_spec(
    state: web::Data<AppState>,
    request: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    model_document(
        &state,
        &request,
        (&id, "bulk spec"),
        "application/json",
        |model| state.bulk_spec(model).map(|spec| spec.to_json()),
    )
}

async fn register_key(
    state: web::Data<AppState>,
    request: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let owner = state.access.clinician(&request)?;
    let upload = admit_body(&state, &owner, &request, state.bodies.key)?;
    // A token at its quota, or a full store, is refused before 30 MB are read.
    let named = named_key(&request)?;
    let (store, declared, admitted_owner) = (state.keys.clone(), upload.declared, owner.clone());
    blocking(move || store.admit(&admitted_owner, named.as_deref(), declared)).await?;
    let bytes = upload.receive(&state, body).await?;
    let store = state.keys.clone();
    let registered_owner = owner.0.clone();
    let (id, registration) = blocking(move || store.register(&owner, &bytes)).await?;
    let mut response = if registration.created {
        log::info!(
            "token {registered_owner} registered server key {id} ({})",
            registration.parameter_set.name()
        );
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
    request: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let owner = state.access.clinician(&request)?;
    let (store, wanted) = (state.keys.clone(), id.clone());
    let set = blocking(move || store.lookup(&owner, &wanted))
        .await?
        .ok_or_else(|| StoreError::UnknownKey(id.clone()))?;
    Ok(HttpResponse::Ok().json(json!({ "key_id": *id, "parameter_set": set.name() })))
}

/// Deletes the token's registration of a key: what a browser's "Forget my keys" asks, so that
/// the key's place under the token's quota is free at once rather than after the expiry.
async fn forget_key(
    state: web::Data<AppState>,
    request: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let owner = state.access.clinician(&request)?;
    let (store, wanted, who) = (state.keys.clone(), id.clone(), owner.clone());
    if !blocking(move || store.remove(&who, &wanted)).await? {
        return Err(StoreError::UnknownKey(id.into_inner()).into());
    }
    log::info!("token {} deleted key {id}", owner.0);
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobQuery {
    model: String,
    key: String,
    /// The fingerprint of the client spec the images were encrypted for.
    fingerprint: String,
}

/// Accepts a batch: the body packs one encrypted image per blob ([`batch_body`]).
async fn submit_job(
    state: web::Data<AppState>,
    request: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let owner = state.access.clinician(&request)?;
    let JobQuery {
        model,
        key,
        fingerprint,
    } = query(&request)?;
    let model = served(&state, model)?;
    if fingerprint != model.loaded.spec().fingerprint {
        return Err(ApiError::StaleModel(model.id.clone()));
    }
    // The checks that cost nothing come before the key's, which may read and hash 30 MB.
    let upload = admit_body(&state, &owner, &request, state.bodies.job)?;
    let store = state.keys.clone();
    let (checked_owner, checked_key) = (owner.clone(), key.clone());
    let key_set = blocking(move || store.check(&checked_owner, &checked_key)).await?;
    let set = model.loaded.parameter_set();
    set.require_set("server key", key_set)
        .map_err(|source| ApiError::ParameterMismatch {
            context: format!("key {key} for model {}", model.id),
            source,
        })?;
    // Refuse a token at its share of the queue before reading its body.
    check_room(&state, &owner, JobKind::Interactive, 0).await?;
    let body = upload.receive(&state, body).await?;
    let max_images = state.limits.batch_images;
    let inputs_len = model.loaded.circuit().input_len();
    let inputs = blocking(move || {
        let blobs = batch_body::unpack(&body, max_images).map_err(|e| match e {
            CryptoError::BatchSize { .. } => ApiError::WrongInputCount(e.to_string()),
            e => ApiError::MalformedCiphertext(e.to_string()),
        })?;
        let images = blobs
            .iter()
            .enumerate()
            .map(|(i, blob)| {
                EncryptedImage::from_bytes(blob, set, inputs_len).map_err(|e| match e {
                    CryptoError::ParameterMismatch { .. } => ApiError::ParameterMismatch {
                        context: format!("image {i}"),
                        source: e,
                    },
                    CryptoError::Count { .. } => {
                        ApiError::WrongInputCount(format!("image {i}: {e}"))
                    }
                    _ => ApiError::MalformedCiphertext(format!("image {i}: {e}")),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let blobs = blobs.into_iter().map(<[u8]>::to_vec).collect();
        Ok::<_, ApiError>((images, blobs))
    })
    .await?;
    let inputs = JobInputs::Images {
        key_id: key,
        images: inputs.0,
        blobs: inputs.1,
    };
    accepted(
        &state,
        NewJob {
            model,
            owner,
            inputs,
        },
    )
    .await
}

/// A job route's query string. Routes parse it after the token check, so an anonymous request
/// learns nothing of the API.
fn query<T: serde::de::DeserializeOwned>(request: &HttpRequest) -> Result<T, ApiError> {
    web::Query::<T>::from_query(request.query_string())
        .map(web::Query::into_inner)
        .map_err(|e| ApiError::BadRequest(format!("query string: {e}")))
}

/// The served model `id`, or 404 `unknown_model`.
fn served(state: &AppState, id: String) -> Result<Arc<ServedModel>, ApiError> {
    state
        .models
        .get(&id)
        .cloned()
        .ok_or(ApiError::UnknownModel(id))
}

/// Refuses a job of `kind` for `owner` when the queue has no room for it, counting `pending`
/// bulk uploads still arriving ([`JobStorage::check_room`]): run before its body is read.
async fn check_room(
    state: &AppState,
    owner: &Owner,
    kind: JobKind,
    pending: usize,
) -> Result<(), ApiError> {
    let (jobs, owner) = (state.jobs.clone(), owner.clone());
    blocking(move || jobs.check_room(&owner, kind, pending)).await
}

/// Queues a checked job, answering 202 with its status and where to follow it.
async fn accepted(state: &AppState, job: NewJob) -> Result<HttpResponse, ApiError> {
    let jobs = state.jobs.clone();
    let owner = job.owner.0.clone();
    let status = blocking(move || jobs.submit(job)).await?;
    // The operator's record of who asked for what (never of the images or results): the
    // threat model's answer to a token that fits a copy of the model.
    log::info!(
        "token {owner} queued job {}: {} image(s), model {}",
        status.job_id,
        status.images,
        status.model
    );
    Ok(HttpResponse::Accepted()
        .insert_header((header::LOCATION, format!("/api/v1/jobs/{}", status.job_id)))
        .json(status))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BulkJobQuery {
    model: String,
    /// The fingerprint of the bulk spec the images were encrypted for.
    fingerprint: String,
}

/// Accepts a bulk job ([`hexray_bulk::upload`]: the evaluation key, then one packed batch of up
/// to 8192 images). The body, up to a few hundred MB, is streamed to a file and read through
/// once before the job is queued, so a malformed, foreign or truncated upload is refused here,
/// in words, and never reaches a worker. Status, progress and outputs are the interactive
/// job's routes.
async fn submit_bulk_job(
    state: web::Data<AppState>,
    request: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let owner = state.access.clinician(&request)?;
    let BulkJobQuery { model, fingerprint } = query(&request)?;
    let model = served(&state, model)?;
    let spec = state
        .bulk_spec(&model)
        .ok_or_else(|| ApiError::NotFound(format!("the bulk path of {}", model.id)))?;
    if fingerprint != spec.fingerprint {
        return Err(ApiError::StaleModel(model.id.clone()));
    }
    let inputs = spec.input.shape().len();
    let upload = admit_body(&state, &owner, &request, hexray_bulk::upload::limit(inputs))?;
    // Held until the job is queued or refused: the node's other uploads still arriving count
    // as bulk jobs in the room check, so uploads in flight cannot pass the limit together.
    let (_receiving, pending) = state.begin_bulk_upload()?;
    check_room(&state, &owner, JobKind::Bulk, pending).await?;
    // An empty body is a room check: 204 when a batch would be taken now, else the refusal it
    // would get, so that a client waiting on a full queue or its image quota asks without
    // sending a few hundred MB each time (a refusal sent mid-upload may also reach it only as
    // a broken connection).
    if request
        .headers()
        .get(header::CONTENT_LENGTH)
        .is_some_and(|length| length == "0")
    {
        return Ok(HttpResponse::NoContent().finish());
    }
    let file = upload.spool(&state, body).await?;
    let (file, images) = blocking(move || {
        let reader = std::fs::File::open(&file).map_err(spool_error)?;
        let images = hexray_bulk::upload::check(std::io::BufReader::new(reader), inputs)?;
        Ok::<_, ApiError>((file, images))
    })
    .await?;
    accepted(
        &state,
        NewJob {
            model,
            owner,
            inputs: JobInputs::Bulk { file, images },
        },
    )
    .await
}

/// The status of job `id`, if it is `owner`'s.
async fn status_of(
    jobs: Arc<dyn JobStorage>,
    owner: Owner,
    id: String,
) -> Result<Status, ApiError> {
    blocking(move || jobs.status(&owner, &id)).await
}

async fn job_status(
    state: web::Data<AppState>,
    request: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let owner = state.access.clinician(&request)?;
    let status = status_of(state.jobs.clone(), owner, id.into_inner()).await?;
    Ok(HttpResponse::Ok().json(status))
}

/// How often an idle progress stream says it is still alive, so proxies keep it open and
/// clients notice a dead one.
const HEARTBEAT: Duration = Duration::from_secs(15);

/// How often a progress stream looks at its job: at most five events a second, however fast
/// the bootstraps go.
const STREAM_PERIOD: Duration = Duration::from_millis(200);

/// An open progress stream: the job it follows, and its slot, freed when the stream ends or
/// the client leaves.
struct Follow {
    jobs: Arc<dyn JobStorage>,
    owner: Owner,
    id: String,
    _slot: Slot,
}

/// Server-sent events: a `status` event at once, then whenever the state or the progress
/// (bootstraps, or a bulk job's neurons) has changed (at most five a second), ending after the
/// final one; a comment line every [`HEARTBEAT`] while nothing changes. Each job allows a few streams at once on each node.
/// Any node can follow any job of a shared queue.
async fn job_events(
    state: web::Data<AppState>,
    request: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let owner = state.access.clinician(&request)?;
    // The job must exist and be the token's before a slot is spent on it.
    status_of(state.jobs.clone(), owner.clone(), id.clone()).await?;
    let follow = Follow {
        jobs: state.jobs.clone(),
        owner,
        _slot: state.begin_stream(&id)?,
        id: id.into_inner(),
    };
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .streaming(progress_events(follow)))
}

fn progress_events(follow: Follow) -> impl Stream<Item = Result<web::Bytes, actix_web::Error>> {
    // The stream's state: what it follows and the (state, progress) last sent; None
    // before the first event. The stream ends after a final status, or when the job can no
    // longer be read (expired, or the storage failed).
    futures_util::stream::unfold(Some((follow, None)), |state| async move {
        let (follow, last): (Follow, Option<(JobState, Progress)>) = state?;
        if last.is_some() {
            tokio::time::sleep(STREAM_PERIOD).await;
        }
        let mut quiet = Duration::ZERO;
        loop {
            let status =
                status_of(follow.jobs.clone(), follow.owner.clone(), follow.id.clone()).await;
            let Ok(status) = status else {
                return None;
            };
            let progress = (status.state, status.progress);
            if last != Some(progress) {
                let event = format!(
                    "event: status\ndata: {}\n\n",
                    serde_json::to_string(&status).expect("a status serializes")
                );
                let next = (!status.is_final()).then_some((follow, Some(progress)));
                return Some((Ok(web::Bytes::from(event)), next));
            }
            if quiet >= HEARTBEAT {
                return Some((
                    Ok(web::Bytes::from_static(b": alive\n\n")),
                    Some((follow, last)),
                ));
            }
            tokio::time::sleep(STREAM_PERIOD).await;
            quiet += STREAM_PERIOD;
        }
    })
}

/// The encrypted outputs: for an interactive job, packed ([`batch_body`]), one per input image, in
/// order; for a bulk job, the encrypted results ([`hexray_bulk::batch`]).
async fn job_outputs(
    state: web::Data<AppState>,
    request: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let owner = state.access.clinician(&request)?;
    let jobs = state.jobs.clone();
    let outputs = blocking(move || jobs.outputs(&owner, &id)).await?;
    Ok(HttpResponse::Ok()
        .content_type("application/octet-stream")
        .body(outputs))
}

async fn metrics(
    state: web::Data<AppState>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    state.access.metrics(&request)?;
    let depth = queue_depth(&state).await?;
    let keys = state.keys.clone();
    let keys_registered = blocking(move || Ok::<_, ApiError>(keys.registered())).await?;
    let (keys_cached, key_cache_bytes) = state.keys.cached();
    let gauges = Gauges {
        node: &state.node,
        storage: state.storage,
        queue_depth: depth.queued,
        running: depth.running,
        keys_registered,
        keys_cached,
        key_cache_bytes,
        models: state.models.len(),
    };
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render(&gauges)))
}

/// A request body admitted for reading: it passed the checks that cost nothing, and holds one
/// of its token's upload slots until it has been read.
struct Upload {
    limit: usize,
    /// The length the request declares, or 0 for a body sent in chunks.
    declared: u64,
    _slot: Slot,
}

/// The key id a key upload names in [`KEY_ID_HEADER`], if it names one.
fn named_key(request: &HttpRequest) -> Result<Option<String>, ApiError> {
    let Some(value) = request.headers().get(KEY_ID_HEADER) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .filter(|v| v.len() == 32 && v.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(|v| Some(v.to_ascii_lowercase()))
        .ok_or_else(|| ApiError::BadRequest(format!("{KEY_ID_HEADER}: not a key id")))
}

/// Admits a body of at most `limit` bytes for `owner` after the checks that cost nothing: the
/// Content-Type must be `application/octet-stream` (which also keeps other web pages from
/// posting simple cross-site requests), a declared length must fit, and the token must have an
/// upload slot free. Routes run it before any check that costs storage work.
fn admit_body(
    state: &AppState,
    owner: &Owner,
    request: &HttpRequest,
    limit: usize,
) -> Result<Upload, ApiError> {
    let octets = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/octet-stream"))
        });
    if !octets {
        return Err(ApiError::UnsupportedMediaType);
    }
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::TooLarge { limit });
    }
    Ok(Upload {
        limit,
        declared: declared.unwrap_or(0) as u64,
        _slot: state.begin_upload(owner)?,
    })
}

/// How much of a spooled body is gathered in memory before it is written out.
const SPOOL_CHUNK: usize = 4 << 20;

impl Upload {
    /// Streams the body to a new file in the server's spool directory, in writes of
    /// [`SPOOL_CHUNK`] on a blocking thread, under the same limit and deadline as
    /// [`receive`](Self::receive). The file is removed when the returned path is dropped, and
    /// at once if the body is refused.
    async fn spool(
        self,
        state: &AppState,
        mut payload: web::Payload,
    ) -> Result<tempfile::TempPath, ApiError> {
        let dir = state.spool.clone();
        let (file, path) = blocking(move || {
            tempfile::Builder::new()
                .prefix("bulk-")
                .tempfile_in(&dir)
                .map_err(spool_error)
        })
        .await?
        .into_parts();
        let write = |mut file: std::fs::File, bytes: web::Bytes| {
            blocking(move || {
                std::io::Write::write_all(&mut file, &bytes)
                    .map(|()| file)
                    .map_err(spool_error)
            })
        };
        let read = async {
            let (mut file, mut buffer, mut received) = (file, web::BytesMut::new(), 0);
            while let Some(chunk) = self.next_chunk(&mut payload, &mut received).await? {
                buffer.extend_from_slice(&chunk);
                if buffer.len() >= SPOOL_CHUNK {
                    file = write(file, buffer.split().freeze()).await?;
                }
            }
            write(file, buffer.freeze()).await.map(drop)
        };
        within_body_deadline(state, read).await?;
        Ok(path)
    }

    /// Reads the body. A larger body than the limit is refused as soon as the bytes received
    /// pass it, and a body that does not arrive within the deadline is dropped.
    async fn receive(
        self,
        state: &AppState,
        mut payload: web::Payload,
    ) -> Result<web::Bytes, ApiError> {
        let read = async {
            let (mut body, mut received) = (web::BytesMut::new(), 0);
            while let Some(chunk) = self.next_chunk(&mut payload, &mut received).await? {
                body.extend_from_slice(&chunk);
            }
            Ok(body.freeze())
        };
        within_body_deadline(state, read).await
    }

    /// The body's next chunk, or `None` at its end. The body is refused as soon as the bytes
    /// received, counted in `received`, pass the limit: a client that lied in its
    /// Content-Length (or sent none) is stopped as early as one that told the truth.
    async fn next_chunk(
        &self,
        payload: &mut web::Payload,
        received: &mut usize,
    ) -> Result<Option<web::Bytes>, ApiError> {
        let Some(chunk) = payload.next().await else {
            return Ok(None);
        };
        let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("reading the body: {e}")))?;
        *received += chunk.len();
        if *received > self.limit {
            return Err(ApiError::TooLarge { limit: self.limit });
        }
        Ok(Some(chunk))
    }
}

/// `read`, the reading of a body, under the server's body deadline: a body that has not
/// arrived within it is dropped, so a slow client cannot hold an upload slot for ever.
async fn within_body_deadline<T>(
    state: &AppState,
    read: impl std::future::Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    let seconds = state.limits.body_timeout.as_secs();
    tokio::time::timeout(state.limits.body_timeout, read)
        .await
        .map_err(|_| ApiError::BodyTimeout { seconds })?
}
