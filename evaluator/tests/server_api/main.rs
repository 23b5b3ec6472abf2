//! The HTTP API, through actix's test utilities: every error path, concurrent clients, restart
//! survival, random bodies, and the OpenAPI description.
//!
//! The suite runs against the embedded back end, and against PostgreSQL when
//! `HEXRAY_TEST_STORAGE=postgres` (`scripts/test.sh` runs it both ways): each data directory
//! then gets a database of its own, and the few checks that look inside storage look in it.
//!
//! One file per concern; `support.rs` holds what they share.

mod api_contract;
mod bulk;
mod jobs;
mod keys;
mod models;
mod progress;
mod support;
mod tokens;
