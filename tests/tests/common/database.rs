//! Databases for the tests of the shared (PostgreSQL) back end, on the private server that
//! `scripts/test.sh` starts (`scripts/postgres.sh`) and names in `HEXRAY_TEST_DATABASE_URL`.
//! Each test makes a database of its own. Without the server, the tests say so and pass, as on
//! a machine where PostgreSQL cannot be installed.
//!
//! The blocking driver runs on a thread of its own, away from any async test runtime.
// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

/// The variable that names the test server.
pub const SERVER_URL: &str = "HEXRAY_TEST_DATABASE_URL";

/// A fresh, empty database `hexray_<name>_<pid>` on the test server, or `None` (said on
/// stderr) without one.
pub fn fresh(name: &str) -> Option<String> {
    let Ok(admin) = std::env::var(SERVER_URL) else {
        eprintln!("skipped: {SERVER_URL} is not set (scripts/test.sh starts PostgreSQL)");
        return None;
    };
    let name = format!("hexray_{name}_{}", std::process::id());
    // One statement each: neither may run in the implicit transaction of a batch.
    for sql in [
        format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        format!("CREATE DATABASE {name}"),
    ] {
        on_thread(&admin, move |client| {
            client.simple_query(&sql).unwrap();
        });
    }
    let (base, _) = admin.rsplit_once('/').unwrap();
    Some(format!("{base}/{name}"))
}

/// The one `bigint` that `sql` answers on `url`.
pub fn number(url: &str, sql: &str) -> i64 {
    let sql = sql.to_owned();
    on_thread(url, move |client| {
        client.query_one(&sql, &[]).unwrap().get(0)
    })
}

/// Runs `sql` (one or more statements) on `url`.
pub fn execute(url: &str, sql: &str) {
    let sql = sql.to_owned();
    on_thread(url, move |client| client.batch_execute(&sql).unwrap());
}

fn on_thread<T: Send + 'static>(
    url: &str,
    work: impl FnOnce(&mut postgres::Client) -> T + Send + 'static,
) -> T {
    let url = url.to_owned();
    std::thread::spawn(move || {
        let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        work(&mut client)
    })
    .join()
    .unwrap()
}
