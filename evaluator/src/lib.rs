//! HEXray's evaluator: the server and the `hexray` command line, on top of `hexray-engine`,
//! which loads models and runs the encrypted inference.
//!
//! - [`server`]: the actix-web server: page, API, key store and job queue;
//! - [`client`]: a blocking client of that API, knowing models only by their client specs;
//! - [`durable_file`]: files written whole or not at all, readable by whom they should be;
//! - [`launch`]: starting a `hexray serve` process and waiting until it answers, for the tests
//!   and benchmarks;
//! - [`progress`]: the progress bar the command lines show over bootstraps;
//! - [`remote_job`]: a job on a remote server, from its submission to its outputs, submitted
//!   again when the server lost it;
//! - [`trusted_cas`]: the CA files that TLS peers (the database, the server) are verified against.

pub mod client;
pub mod durable_file;
pub mod launch;
pub mod progress;
pub mod remote_job;
pub mod server;
pub mod trusted_cas;
