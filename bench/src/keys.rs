//! `hexray-bench keys`: what storing 30 MB server keys costs in each back end, the embedded
//! data directory and PostgreSQL (`bytea`). It prints figures; nothing here passes or fails.
//!
//! For each of `--keys` fresh keys: registering it (validation, hashing and a durable write),
//! checking a stored copy (read and hash, as a job submission does), and a node's first use of
//! it (read, hash and expansion into the cache), then a cached use.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hexray_crypto::{ClientKey, ParameterSet};
use hexray_evaluator::server::auth::Owner;
use hexray_evaluator::server::keys::{DirectoryKeys, KeyLimits, KeyStorage};
use hexray_evaluator::server::postgres::{Database, PgKeys};
use hexray_evaluator::server::Config;

use crate::stats::median_ms;

#[derive(clap::Args)]
pub struct Args {
    /// A PostgreSQL database to measure besides the embedded store (it gets HEXRAY's tables).
    #[arg(long, env = "HEXRAY_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Keys to register and read in each back end.
    #[arg(long, default_value_t = 3)]
    keys: usize,
}

pub fn run(args: Args) -> Result<()> {
    let keys: Vec<Vec<u8>> = (0..args.keys.max(1) as u128)
        .map(|seed| {
            ClientKey::generate_deterministic(ParameterSet::Ks32, 1000 + seed)
                .1
                .to_bytes()
        })
        .collect::<Result<_, _>>()?;
    let megabytes = keys[0].len() as f64 / 1e6;
    let limits = KeyLimits {
        per_owner: keys.len(),
        storage_bytes: u64::MAX,
        expiry: Duration::from_secs(86_400),
    };
    let data = std::env::temp_dir().join(format!("hexray-bench-keys-{}", std::process::id()));
    let mut stores: Vec<(&str, Box<dyn KeyStorage>)> = vec![(
        "embedded",
        Box::new(DirectoryKeys::open(&data, 1 << 30, limits)?),
    )];
    if let Some(url) = &args.database_url {
        let database = Database::open(url, None, Config::defaults(&data, 1).database_pool)
            .context("opening the database")?;
        stores.push(("postgres", Box::new(PgKeys::new(database, 1 << 30, limits))));
    }
    println!(
        "{} keys of {megabytes:.1} MB each; medians in ms\n{:<10} {:>10} {:>8} {:>10} {:>8}",
        keys.len(),
        "back end",
        "register",
        "check",
        "first use",
        "cached"
    );
    for (name, store) in &stores {
        // Each back end gets its own owner, so a shared database starts empty for it.
        let owner = Owner(format!("bench-{}", std::process::id()));
        let mut times: [Vec<Duration>; 4] = Default::default();
        for bytes in &keys {
            let start = Instant::now();
            let (id, _) = store.register(&owner, bytes)?;
            times[0].push(start.elapsed());
            let start = Instant::now();
            store.check(&owner, &id)?;
            times[1].push(start.elapsed());
            for slot in &mut times[2..] {
                let start = Instant::now();
                store.server_key(&owner, &id)?;
                slot.push(start.elapsed());
            }
        }
        let [register, check, first, cached] = times.map(median_ms);
        println!("{name:<10} {register:>10.0} {check:>8.0} {first:>10.0} {cached:>8.2}");
    }
    std::fs::remove_dir_all(&data)?;
    Ok(())
}
