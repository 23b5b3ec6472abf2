//! Every error the API returns: an HTTP status, a stable machine-readable code and a sentence a
//! person can read. Bad input is always a 4xx; 5xx means the server itself failed (a full
//! queue, a disk error), never the client's bytes.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ApiError {
    #[error("no model has id `{0}`")]
    UnknownModel(String),
    #[error("no server key is registered under id `{0}`; upload it first")]
    UnknownKey(String),
    #[error("no job has id `{0}` (finished jobs are kept for a limited time)")]
    UnknownJob(String),
    #[error("{0}")]
    ParameterMismatch(String),
    #[error("{0}")]
    MalformedKey(String),
    #[error("{0}")]
    MalformedCiphertext(String),
    #[error("{0}")]
    WrongInputCount(String),
    #[error("the request body is larger than this route's limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("{0}")]
    BadRequest(String),
    #[error("job `{0}` has not finished yet")]
    NotReady(String),
    #[error("job `{id}` failed: {message}")]
    JobFailed { id: String, message: String },
    #[error("the job queue is full; retry after {retry_after} s")]
    QueueFull { retry_after: u64 },
    #[error("no route for {0}")]
    NotFound(String),
    #[error("this server needs an access token: send `Authorization: Bearer <token>` (ask your HEXray administrator for one)")]
    Unauthorized,
    #[error("send the body as `Content-Type: application/octet-stream`")]
    UnsupportedMediaType,
    #[error(
        "model `{0}` has changed since its spec was fetched: fetch the spec again and re-encrypt"
    )]
    StaleModel(String),
    #[error("this token already has {limit} keys registered; forget an old one or wait for it to expire")]
    KeyQuota { limit: usize },
    #[error("the server's key storage is full; try again later or ask the administrator")]
    StorageFull,
    #[error("this token already has {limit} uploads in progress; wait for them to finish")]
    TooManyUploads { limit: usize },
    #[error("this token already has {limit} jobs queued or running; wait for one to finish")]
    TooManyJobs { limit: usize },
    #[error("this job already has {limit} progress streams open; poll the job instead")]
    TooManyStreams { limit: usize },
    #[error("the request body did not arrive within {seconds} s")]
    BodyTimeout { seconds: u64 },
    #[error("server error: {0}")]
    Internal(String),
}

/// The JSON body of every error response.
#[derive(Serialize)]
struct Body<'a> {
    code: &'a str,
    message: String,
}

impl ApiError {
    /// The stable code clients switch on. `docs/openapi.json` lists them all.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::UnknownModel(_) => "unknown_model",
            ApiError::UnknownKey(_) => "unknown_key",
            ApiError::UnknownJob(_) => "unknown_job",
            ApiError::ParameterMismatch(_) => "parameter_mismatch",
            ApiError::MalformedKey(_) => "malformed_key",
            ApiError::MalformedCiphertext(_) => "malformed_ciphertext",
            ApiError::WrongInputCount(_) => "wrong_input_count",
            ApiError::TooLarge { .. } => "too_large",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::NotReady(_) => "not_ready",
            ApiError::JobFailed { .. } => "job_failed",
            ApiError::QueueFull { .. } => "queue_full",
            ApiError::NotFound(_) => "not_found",
            ApiError::Unauthorized => "unauthorized",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::StaleModel(_) => "stale_model",
            ApiError::KeyQuota { .. } => "key_quota",
            ApiError::StorageFull => "storage_full",
            ApiError::TooManyUploads { .. } => "too_many_uploads",
            ApiError::TooManyJobs { .. } => "too_many_jobs",
            ApiError::TooManyStreams { .. } => "too_many_streams",
            ApiError::BodyTimeout { .. } => "body_timeout",
            ApiError::Internal(_) => "internal",
        }
    }

    /// Every code, for the test that keeps the OpenAPI description true.
    pub const CODES: [&'static str; 23] = [
        "unknown_model",
        "unknown_key",
        "unknown_job",
        "parameter_mismatch",
        "malformed_key",
        "malformed_ciphertext",
        "wrong_input_count",
        "too_large",
        "bad_request",
        "not_ready",
        "job_failed",
        "queue_full",
        "not_found",
        "internal",
        "unauthorized",
        "unsupported_media_type",
        "stale_model",
        "key_quota",
        "storage_full",
        "too_many_uploads",
        "too_many_jobs",
        "too_many_streams",
        "body_timeout",
    ];
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::UnknownModel(_)
            | ApiError::UnknownKey(_)
            | ApiError::UnknownJob(_)
            | ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::ParameterMismatch(_)
            | ApiError::MalformedKey(_)
            | ApiError::MalformedCiphertext(_)
            | ApiError::WrongInputCount(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotReady(_) | ApiError::JobFailed { .. } | ApiError::StaleModel(_) => {
                StatusCode::CONFLICT
            }
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::KeyQuota { .. }
            | ApiError::TooManyUploads { .. }
            | ApiError::TooManyJobs { .. }
            | ApiError::TooManyStreams { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::StorageFull => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::QueueFull { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        match self {
            ApiError::QueueFull { retry_after } => {
                response.insert_header((header::RETRY_AFTER, retry_after.to_string()));
            }
            ApiError::Unauthorized => {
                response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
            }
            _ => {}
        }
        response.json(Body {
            code: self.code(),
            message: self.to_string(),
        })
    }
}
