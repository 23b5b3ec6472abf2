//! Every error the API returns: an HTTP status, a stable machine-readable code and a sentence a
//! person can read. Bad input is always a 4xx; 5xx means the server itself failed (a full
//! queue, a disk error), never the client's bytes.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use thiserror::Error;

use super::store_error::{StoreError, BUSY_RETRY_S};

#[derive(Debug, Error)]
pub enum ApiError {
    #[error("no model has id `{0}`")]
    UnknownModel(String),
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
    /// This node's bulk upload slots are all taken (the queue's own refusals are
    /// [`StoreError::QueueFull`]).
    #[error("the job queue is full; retry after {retry_after} s")]
    QueueFull { retry_after: u64 },
    #[error("no route for {0}")]
    NotFound(String),
    #[error("this server needs an access token: send `Authorization: Bearer <token>` (ask your HEXray administrator for one)")]
    Unauthorized,
    /// An open server on loopback was reached by another name or from another site's page:
    /// no token would help, so the answer says what the operator must change instead.
    #[error("this server runs without access tokens, so it answers only requests that name it as localhost, from its own pages; behind a reverse proxy its administrator must give it a tokens file, or --allow-open if the proxy signs users in")]
    NotLocal,
    #[error("send the body as `Content-Type: application/octet-stream`")]
    UnsupportedMediaType,
    #[error(
        "model `{0}` has changed since its spec was fetched: fetch the spec again and re-encrypt"
    )]
    StaleModel(String),
    #[error("this token already has {limit} uploads in progress; wait for them to finish")]
    TooManyUploads { limit: usize },
    #[error("this job already has {limit} progress streams open; poll the job instead")]
    TooManyStreams { limit: usize },
    #[error("the request body did not arrive within {seconds} s")]
    BodyTimeout { seconds: u64 },
    #[error("too many requests without a token from this address; retry after {retry_after} s")]
    RateLimited { retry_after: u64 },
    /// A server fault. Its text is for the server's log only: clients get
    /// [`ApiError::public_message`], which names it by a reference.
    #[error("server error: {0}")]
    Internal(String),
    /// What storage or a worker reported, mapped to HTTP by this file's `store_status`.
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            // A bulk upload's refusal reads the same from a worker as from the route.
            StoreError::Bulk(e) => ApiError::from(e),
            e => ApiError::Store(e),
        }
    }
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
    NotLocal = "not_local",
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
            ApiError::ParameterMismatch { .. } | ApiError::BulkParameterMismatch(_) => {
                ErrorCode::ParameterMismatch
            }
            ApiError::MalformedKey(_) => ErrorCode::MalformedKey,
            ApiError::MalformedCiphertext(_) => ErrorCode::MalformedCiphertext,
            ApiError::WrongInputCount(_) => ErrorCode::WrongInputCount,
            ApiError::TooLarge { .. } => ErrorCode::TooLarge,
            ApiError::BadRequest(_) => ErrorCode::BadRequest,
            ApiError::QueueFull { .. } => ErrorCode::QueueFull,
            ApiError::NotFound(_) => ErrorCode::NotFound,
            ApiError::Unauthorized => ErrorCode::Unauthorized,
            ApiError::NotLocal => ErrorCode::NotLocal,
            ApiError::UnsupportedMediaType => ErrorCode::UnsupportedMediaType,
            ApiError::StaleModel(_) => ErrorCode::StaleModel,
            ApiError::TooManyUploads { .. } => ErrorCode::TooManyUploads,
            ApiError::TooManyStreams { .. } => ErrorCode::TooManyStreams,
            ApiError::BodyTimeout { .. } => ErrorCode::BodyTimeout,
            ApiError::RateLimited { .. } => ErrorCode::RateLimited,
            ApiError::Internal(_) => ErrorCode::Internal,
            ApiError::Store(e) => store_status(e).0,
        }
    }

    /// Seconds a client should wait before it retries, for the refusals that say so.
    fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::QueueFull { retry_after }
            | ApiError::RateLimited { retry_after }
            | ApiError::Store(StoreError::QueueFull { retry_after }) => Some(*retry_after),
            ApiError::Store(StoreError::Busy) => Some(BUSY_RETRY_S),
            _ => None,
        }
    }
}

/// The one place where storage's errors meet HTTP: each [`StoreError`]'s code and status.
/// The bytes a client sent are a 4xx; the store's own faults are a 500, whose detail stays
/// in the server's log.
fn store_status(e: &StoreError) -> (ErrorCode, StatusCode) {
    use hexray_crypto::CryptoError;
    match e {
        StoreError::UnknownKey(_) => (ErrorCode::UnknownKey, StatusCode::NOT_FOUND),
        StoreError::UnknownJob(_) => (ErrorCode::UnknownJob, StatusCode::NOT_FOUND),
        StoreError::NotReady(_) => (ErrorCode::NotReady, StatusCode::CONFLICT),
        StoreError::JobFailed { .. } => (ErrorCode::JobFailed, StatusCode::CONFLICT),
        StoreError::RejectedKey(CryptoError::ParameterMismatch { .. }) => (
            ErrorCode::ParameterMismatch,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        StoreError::RejectedKey(_) => (ErrorCode::MalformedKey, StatusCode::UNPROCESSABLE_ENTITY),
        StoreError::QueueFull { .. } => (ErrorCode::QueueFull, StatusCode::SERVICE_UNAVAILABLE),
        StoreError::TooManyJobs { .. } => (ErrorCode::TooManyJobs, StatusCode::TOO_MANY_REQUESTS),
        StoreError::OverQuota { .. } => {
            (ErrorCode::WrongInputCount, StatusCode::UNPROCESSABLE_ENTITY)
        }
        StoreError::ImageQuota { .. } => (ErrorCode::ImageQuota, StatusCode::TOO_MANY_REQUESTS),
        StoreError::KeyQuota { .. } => (ErrorCode::KeyQuota, StatusCode::TOO_MANY_REQUESTS),
        StoreError::StorageFull => (ErrorCode::StorageFull, StatusCode::INSUFFICIENT_STORAGE),
        StoreError::Busy => (ErrorCode::Busy, StatusCode::SERVICE_UNAVAILABLE),
        // `Bulk` never reaches here: `From<StoreError>` gives it the route's mapping.
        StoreError::Internal(_) | StoreError::Engine(_) | StoreError::Bulk(_) => {
            (ErrorCode::Internal, StatusCode::INTERNAL_SERVER_ERROR)
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

/// How a failed job is shown to its client, settled once when a worker records the failure:
/// its code, and the public message (a server fault's detail goes to the log).
pub(crate) fn job_failure(error: StoreError) -> (ErrorCode, String) {
    let error = ApiError::from(error);
    (error.code(), error.public_message())
}

impl ApiError {
    /// What a client is told: the error's text, except for a server fault, whose detail (a
    /// database's or the file system's message, a path) is logged here with a random reference
    /// and replaced by that reference, so that clients learn nothing of the server's insides
    /// and an administrator can still find what happened.
    pub fn public_message(&self) -> String {
        match self.status_code() {
            StatusCode::INTERNAL_SERVER_ERROR => {
                let mut bytes = [0u8; 6];
                rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
                let reference = hexray_model::hex::encode(&bytes);
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
            ApiError::UnknownModel(_) | ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::ParameterMismatch { .. }
            | ApiError::BulkParameterMismatch(_)
            | ApiError::MalformedKey(_)
            | ApiError::MalformedCiphertext(_)
            | ApiError::WrongInputCount(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::StaleModel(_) => StatusCode::CONFLICT,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotLocal => StatusCode::FORBIDDEN,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::TooManyUploads { .. }
            | ApiError::TooManyStreams { .. }
            | ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::QueueFull { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Store(e) => store_status(e).1,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        if let Some(seconds) = self.retry_after() {
            response.insert_header((header::RETRY_AFTER, seconds.to_string()));
        }
        if let ApiError::Unauthorized = self {
            response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
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

    /// The body of `error`'s response, as a client reads it.
    fn body(error: ApiError) -> (StatusCode, String) {
        let response = error.error_response();
        let status = response.status();
        let body = actix_web::body::to_bytes(response.into_body());
        let body = futures_util::FutureExt::now_or_never(body)
            .unwrap()
            .unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[test]
    fn a_server_fault_reaches_the_client_as_a_reference_never_as_its_detail() {
        let detail = "PostgreSQL: connection to 10.0.3.7 refused; /var/lib/hexray/keys unreadable";
        // A route's fault and a store's fault alike.
        for fault in [
            ApiError::Internal(detail.into()),
            StoreError::Internal(detail.into()).into(),
        ] {
            let (status, text) = body(fault);
            assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
            assert!(text.contains("\"code\":\"internal\""), "{text}");
            assert!(text.contains("reference"), "{text}");
            for detail in ["PostgreSQL", "10.0.3.7", "/var/lib"] {
                assert!(
                    !text.contains(detail),
                    "{detail} reached the client: {text}"
                );
            }
        }
        // Client errors keep their words.
        let unknown = || ApiError::from(StoreError::UnknownJob("ab".into()));
        assert_eq!(unknown().public_message(), unknown().to_string());
    }

    #[test]
    fn storage_refusals_keep_their_code_status_and_retry_advice() {
        let (status, text) = body(StoreError::QueueFull { retry_after: 5 }.into());
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(text.contains("\"code\":\"queue_full\""), "{text}");
        let busy = ApiError::from(StoreError::Busy).error_response();
        assert_eq!(busy.headers().get(header::RETRY_AFTER).unwrap(), "1");
        let (status, text) = body(StoreError::StorageFull.into());
        assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE);
        assert!(text.contains("\"code\":\"storage_full\""), "{text}");
        let (code, message) = job_failure(StoreError::OverQuota {
            images: 9,
            limit: 8,
        });
        assert_eq!(code, ErrorCode::WrongInputCount);
        assert!(message.contains("--max-bulk-images-per-token"), "{message}");
        // A bulk upload a worker cannot read is refused as the route refuses it.
        let count = hexray_bulk::BulkError::Count {
            what: "encrypted batch",
            unit: "ciphertexts",
            expected: 784,
            found: 3,
        };
        let (code, message) = job_failure(StoreError::Bulk(count));
        assert_eq!(code, ErrorCode::WrongInputCount);
        assert!(message.contains("784"), "{message}");
    }
}
