//! Databases for the tests of the shared (PostgreSQL) back end, on the private server that
//! `scripts/test.sh` starts (`scripts/postgres.sh`) and names in `HEXRAY_TEST_DATABASE_URL`:
//! a TLS-only server with a CA of its own, reached as the evaluator reaches it (verified TLS).
//! Each test makes a database of its own.
//!
//! The tests that need the server are `#[ignore = "needs PostgreSQL…"]`: a plain `cargo test`
//! lists them as ignored, and `scripts/test.sh` runs them with `--include-ignored`. Run without
//! the server, they fail: they never pass by skipping.
//!
//! The blocking driver runs on a thread of its own, away from any async test runtime.

use hexray_evaluator::server::postgres::connection::other_database;
use hexray_evaluator::server::postgres::Connection;

/// The variable that names the test server.
pub const SERVER_URL: &str = "HEXRAY_TEST_DATABASE_URL";

/// The test server's URL; panics, saying how to get one, when there is none.
pub fn server() -> String {
    std::env::var(SERVER_URL).unwrap_or_else(|_| {
        panic!("{SERVER_URL} is not set: run scripts/test.sh, which starts PostgreSQL")
    })
}

/// A fresh, empty database `hexray_<name>_<pid>` on the test server; its URL keeps the
/// server's TLS settings.
pub fn fresh(name: &str) -> String {
    let admin = server();
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
    other_database(&admin, &name)
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
        let mut client = Connection::parse(&url, None).unwrap().connect().unwrap();
        work(&mut client)
    })
    .join()
    .unwrap()
}
