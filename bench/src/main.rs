//! `hexray-bench`: HEXray's benchmarks. Each prints figures and passes or fails nothing: speed
//! and memory are measured here, not in timed tests. They live outside the `hexray` binary so
//! that the product a hospital installs carries no benchmark code or its dependencies.
//!
//! - `hexray-bench engine`: parameter sets, reference topologies, the simulator's throughput;
//! - `hexray-bench server`: amortised latency per image against batch size, and the server's
//!   overhead above the engine;
//! - `hexray-bench keys`: what storing server keys costs in the embedded store and PostgreSQL;
//! - `hexray-bench cluster`: `hexray serve` nodes sharing PostgreSQL: throughput, recovery from a
//!   killed node, the database's overhead per job;
//! - `hexray-bench load`: many clients, some misbehaving, against a real server over HTTP;
//! - `hexray-bench bulk`: the bulk path (BFV, element-wise packing) on thousands of images
//!   against the interactive path, with the bulk circuit's accuracy and exactness.

mod bulk;
mod cluster;
mod engine;
mod keys;
mod load;
mod server;
mod stats;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// The network the benchmarks time by default, `pneumonia-mlp-64` (64 bootstraps per image):
/// the one the peers in the README were measured on, so that figures compare across releases.
pub const BENCH_MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../models/pneumonia-mlp-64.hexray"
);

#[derive(Parser)]
#[command(
    name = "hexray-bench",
    version,
    about = "HEXray's benchmarks: they print figures"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Benchmark the engine and print the figures.
    Engine(engine::Args),
    /// Benchmark batch inference and the server's overhead above the engine.
    Server(server::Args),
    /// What storing server keys costs in the embedded store and in PostgreSQL.
    Keys(keys::Args),
    /// Throughput of one and two nodes sharing PostgreSQL, recovery from a killed node, and the
    /// database's overhead per job.
    Cluster(cluster::Args),
    /// Load test: clients with their own tokens, some misbehaving, over HTTP; prints p50/p95.
    Load(load::Args),
    /// The bulk path on N images against the interactive path; the last line is JSON.
    Bulk(bulk::Args),
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Engine(args) => engine::run(args),
        Command::Server(args) => server::run(args),
        Command::Keys(args) => keys::run(args),
        Command::Cluster(args) => cluster::run(args),
        Command::Load(args) => load::run(args),
        Command::Bulk(args) => bulk::run(args),
    }
}
