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
    /// The one parameter-set refusal ([`hexray_crypto::ParameterSet::require`]), with what
    /// it was about.
    #[error("{context}: {source}")]
    ParameterMismatch {
        context: String,
        source: hexray_crypto::CryptoError,
    },
    /// The bulk path's parameter-set refusal ([`hexray_bulk::BulkError::ParameterMismatch`]).
    #[error("{0}")]
    BulkParameterMismatch(String),
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
    #[error("the server's storage (keys, or the bulk spool) is full; try again later or ask the administrator")]
    StorageFull,
    #[error("this token already has {limit} uploads in progress; wait for them to finish")]
    TooManyUploads { limit: usize },
    #[error("this token already has {limit} jobs queued or running; wait for one to finish")]
    TooManyJobs { limit: usize },
    #[error("this token already has {used} images in bulk jobs kept by the server, of its {limit} per {hours} h; wait for older jobs to expire")]
    ImageQuota {
        limit: usize,
        used: usize,
        hours: f64,
    },
    #[error("this job already has {limit} progress streams open; poll the job instead")]
    TooManyStreams { limit: usize },
    #[error("the request body did not arrive within {seconds} s")]
    BodyTimeout { seconds: u64 },
    #[error("the server's database is busy; retry after {BUSY_RETRY_S} s")]
    Busy,
    #[error("too many requests without a token from this address; retry after {retry_after} s")]
    RateLimited { retry_after: u64 },
    /// A server fault. Its text is for the server's log only: clients get
    /// [`ApiError::public_message`], which names it by a reference.
    #[error("server error: {0}")]
    Internal(String),
    /// The engine refused a job the server had accepted: a server bug, not the client's.
    #[error("the evaluation failed: {0}")]
    Engine(#[from] hexray_engine::EngineError),
}

/// Declares [`ErrorCode`] with its wire names and the list of them all in one place, so that
/// the list the OpenAPI test checks is the one [`ApiError::code`] draws from.
macro_rules! error_codes {
    ($($variant:ident = $name:literal,)*) => {
        /// The stable code of an API error, which clients switch on.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum ErrorCode {
            $($variant,)*
        }

        impl ErrorCode {
            /// Every code, in the order `docs/openapi.json` lists them.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The code as a response's JSON carries it.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $name,)*
                }
            }
        }
    };
}

error_codes! {
    UnknownModel = "unknown_model",
    UnknownKey = "unknown_key",
    UnknownJob = "unknown_job",
    ParameterMismatch = "parameter_mismatch",
    MalformedKey = "malformed_key",
    MalformedCiphertext = "malformed_ciphertext",
    WrongInputCount = "wrong_input_count",
    TooLarge = "too_large",
    BadRequest = "bad_request",
    NotReady = "not_ready",
    JobFailed = "job_failed",
    QueueFull = "queue_full",
    NotFound = "not_found",
    Internal = "internal",
    Unauthorized = "unauthorized",
    UnsupportedMediaType = "unsupported_media_type",
    StaleModel = "stale_model",
    KeyQuota = "key_quota",
    StorageFull = "storage_full",
    TooManyUploads = "too_many_uploads",
    TooManyJobs = "too_many_jobs",
    ImageQuota = "image_quota",
    TooManyStreams = "too_many_streams",
    BodyTimeout = "body_timeout",
    Busy = "busy",
    RateLimited = "rate_limited",
}

/// The JSON body of every error response.
#[derive(Serialize)]
struct Body<'a> {
    code: &'a str,
    message: String,
}

impl ApiError {
    /// The stable code clients switch on. `docs/openapi.json` lists them all.
    pub fn code(&self) -> ErrorCode {
        match self {
            ApiError::UnknownModel(_) => ErrorCode::UnknownModel,
            ApiError::UnknownKey(_) => ErrorCode::UnknownKey,
            ApiError::UnknownJob(_) => ErrorCode::UnknownJob,
            ApiError::ParameterMismatch { .. } | ApiError::BulkParameterMismatch(_) => {
                ErrorCode::ParameterMismatch
            }
            ApiError::MalformedKey(_) => ErrorCode::MalformedKey,
            ApiError::MalformedCiphertext(_) => ErrorCode::MalformedCiphertext,
            ApiError::WrongInputCount(_) => ErrorCode::WrongInputCount,
            ApiError::TooLarge { .. } => ErrorCode::TooLarge,
            ApiError::BadRequest(_) => ErrorCode::BadRequest,
            ApiError::NotReady(_) => ErrorCode::NotReady,
            ApiError::JobFailed { .. } => ErrorCode::JobFailed,
            ApiError::QueueFull { .. } => ErrorCode::QueueFull,
            ApiError::NotFound(_) => ErrorCode::NotFound,
            ApiError::Unauthorized => ErrorCode::Unauthorized,
            ApiError::UnsupportedMediaType => ErrorCode::UnsupportedMediaType,
            ApiError::StaleModel(_) => ErrorCode::StaleModel,
            ApiError::KeyQuota { .. } => ErrorCode::KeyQuota,
            ApiError::StorageFull => ErrorCode::StorageFull,
            ApiError::TooManyUploads { .. } => ErrorCode::TooManyUploads,
            ApiError::TooManyJobs { .. } => ErrorCode::TooManyJobs,
            ApiError::ImageQuota { .. } => ErrorCode::ImageQuota,
            ApiError::TooManyStreams { .. } => ErrorCode::TooManyStreams,
            ApiError::BodyTimeout { .. } => ErrorCode::BodyTimeout,
            ApiError::Busy => ErrorCode::Busy,
            ApiError::RateLimited { .. } => ErrorCode::RateLimited,
            ApiError::Internal(_) | ApiError::Engine(_) => ErrorCode::Internal,
        }
    }
}

/// A bulk upload's refusal in the API's terms: the client's bytes are a 4xx; only a failure of
/// the BFV library itself is the server's.
impl From<hexray_bulk::BulkError> for ApiError {
    fn from(e: hexray_bulk::BulkError) -> Self {
        use hexray_bulk::BulkError;
        match e {
            BulkError::ParameterMismatch { .. } => ApiError::BulkParameterMismatch(e.to_string()),
            BulkError::Count { .. } => ApiError::WrongInputCount(e.to_string()),
            BulkError::Deserialize {
                what: "evaluation key",
                ..
            } => ApiError::MalformedKey(e.to_string()),
            BulkError::Deserialize { .. } | BulkError::Image { .. } => {
                ApiError::MalformedCiphertext(e.to_string())
            }
            BulkError::Scheme(_) => ApiError::Internal(e.to_string()),
        }
    }
}

/// Seconds a client waits before retrying when the database is busy.
const BUSY_RETRY_S: u64 = 1;

impl ApiError {
    /// What a client is told: the error's text, except for a server fault, whose detail (a
    /// database's or the file system's message, a path) is logged here with a random reference
    /// and replaced by that reference, so that clients learn nothing of the server's insides
    /// and an administrator can still find what happened.
    pub fn public_message(&self) -> String {
        match self {
            ApiError::Internal(_) | ApiError::Engine(_) => {
                let mut bytes = [0u8; 6];
                rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
                let reference = hexray_model::file::hex(&bytes);
                log::error!("[{reference}] {self}");
                format!(
                    "server error (reference {reference}); the administrator can find it in \
                     the server's log"
                )
            }
            _ => self.to_string(),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::UnknownModel(_)
            | ApiError::UnknownKey(_)
            | ApiError::UnknownJob(_)
            | ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::ParameterMismatch { .. }
            | ApiError::BulkParameterMismatch(_)
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
            | ApiError::ImageQuota { .. }
            | ApiError::TooManyStreams { .. }
            | ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::StorageFull => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::QueueFull { .. } | ApiError::Busy => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) | ApiError::Engine(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        match self {
            ApiError::QueueFull { retry_after } | ApiError::RateLimited { retry_after } => {
                response.insert_header((header::RETRY_AFTER, retry_after.to_string()));
            }
            ApiError::Busy => {
                response.insert_header((header::RETRY_AFTER, BUSY_RETRY_S.to_string()));
            }
            ApiError::Unauthorized => {
                response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
            }
            _ => {}
        }
        response.json(Body {
            code: self.code().as_str(),
            message: self.public_message(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_fault_reaches_the_client_as_a_reference_never_as_its_detail() {
        let fault = ApiError::Internal(
            "PostgreSQL: connection to 10.0.3.7 refused; /var/lib/hexray/keys unreadable".into(),
        );
        let response = fault.error_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = actix_web::body::to_bytes(response.into_body());
        let body = futures_util::FutureExt::now_or_never(body)
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains("\"code\":\"internal\""), "{text}");
        assert!(text.contains("reference"), "{text}");
        for detail in ["PostgreSQL", "10.0.3.7", "/var/lib"] {
            assert!(
                !text.contains(detail),
                "{detail} reached the client: {text}"
            );
        }
        // Client errors keep their words.
        assert_eq!(
            ApiError::UnknownJob("ab".into()).public_message(),
            ApiError::UnknownJob("ab".into()).to_string()
        );
    }
}
