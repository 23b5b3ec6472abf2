//! HEXray's evaluator: the server and the `hexray` command line, on top of `hexray-engine`,
//! which loads models and runs the encrypted inference.
//!
//! - [`server`]: the actix-web server: page, API, key store and job queue;
//! - [`client`]: a blocking client of that API, knowing models only by their client specs.

pub mod client;
pub mod server;
