//! How a node reaches PostgreSQL: over verified TLS, never in clear by accident, through a
//! pool whose bounds hold however many callers wait, and never on a schema a newer release
//! made. On the test server of
//! [`fixtures::database`], which takes TLS only.

use hexray_test_kit::database;

use std::time::Duration;

use hexray_evaluator::server::postgres::{Connection, Database, DatabaseError, PoolLimits};
use hexray_evaluator::server::Config;

use database::fresh;

/// The test server's URL with its `sslmode` and `sslrootcert` replaced by `settings`.
fn with_tls_settings(settings: &str) -> String {
    let url = database::server();
    let (base, _) = url.split_once('?').unwrap_or((&url, ""));
    format!("{base}?{settings}")
}

#[test]
#[ignore = "needs PostgreSQL: scripts/test.sh starts one and runs it"]
fn the_database_is_reached_over_verified_tls_and_never_in_clear_by_accident() {
    let url = fresh("tls");
    // The evaluator's own connection is encrypted, as the server sees it.
    let database = Database::open(
        &url,
        None,
        Config::defaults(std::path::Path::new("."), 1).database_pool,
    )
    .unwrap();
    let ssl: bool = database
        .with(|c| {
            c.query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
        })
        .unwrap()
        .get(0);
    assert!(ssl);
    // A certificate that no trusted CA signed is refused: the system's CAs did not sign the
    // test server's.
    let untrusted = with_tls_settings("sslmode=verify-full&sslrootcert=system");
    let refused = Connection::parse(&untrusted, None).unwrap().connect();
    assert!(
        refused.is_err(),
        "a certificate of an unknown CA was accepted"
    );
    // The test server takes no plain TCP, like a production database: a link in clear is
    // possible only when the URL says so, and then this server refuses it.
    let plain = Connection::parse(&with_tls_settings("sslmode=disable"), None).unwrap();
    assert!(!plain.encrypted());
    assert!(plain.connect().is_err());
    let Err(fallback) = Connection::parse(&with_tls_settings("sslmode=prefer"), None) else {
        panic!("sslmode=prefer, which may fall back to plain text, was accepted");
    };
    assert!(fallback.to_string().contains("falls back"), "{fallback}");
}

#[test]
#[ignore = "needs PostgreSQL: scripts/test.sh starts one and runs it"]
fn a_node_never_opens_more_connections_than_its_pool_allows_however_many_callers_wait() {
    let url = fresh("pool");
    let limits = PoolLimits {
        max: 2,
        wait: Duration::from_secs(30),
        idle: Duration::from_millis(500),
    };
    let database = Database::open(&url, None, limits).unwrap();
    let name = url.split('?').next().unwrap().rsplit('/').next().unwrap();
    let in_database = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{name}' \
         AND backend_type = 'client backend'"
    );
    // Sixteen callers at once, each holding its connection for a while.
    let most = std::thread::scope(|scope| {
        let callers: Vec<_> = (0..16)
            .map(|_| {
                scope.spawn(|| {
                    database
                        .with(|c| {
                            c.query_one(&format!("SELECT ({in_database}), pg_sleep(0.1)"), &[])
                        })
                        .unwrap()
                        .get::<_, i64>(0)
                })
            })
            .collect();
        callers.into_iter().map(|c| c.join().unwrap()).max()
    });
    assert!(
        most.is_some_and(|n| (1..=2).contains(&n)),
        "the database saw {most:?} connections at once, over the pool's maximum of 2"
    );
    assert!(database.connections() <= 2);
    // Idle connections are closed: after the idle time, the next caller finds them gone.
    std::thread::sleep(Duration::from_millis(700));
    let seen: i64 = database
        .with(|c| c.query_one(&in_database, &[]))
        .unwrap()
        .get(0);
    assert_eq!(seen, 1, "idle connections were kept open");
    // A caller that cannot get a connection in time is told the database is busy.
    let impatient = Database::open(
        &url,
        None,
        PoolLimits {
            max: 1,
            wait: Duration::from_millis(50),
            ..limits
        },
    )
    .unwrap();
    let answers = std::thread::scope(|scope| {
        let callers: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| impatient.with(|c| c.batch_execute("SELECT pg_sleep(0.3)"))))
            .collect();
        callers
            .into_iter()
            .map(|c| c.join().unwrap())
            .collect::<Vec<_>>()
    });
    assert!(answers.iter().any(Result::is_ok));
    assert!(answers
        .iter()
        .any(|a| matches!(a, Err(DatabaseError::Busy))));
}

#[test]
#[ignore = "needs PostgreSQL: scripts/test.sh starts one and runs it"]
fn a_node_refuses_a_database_that_a_newer_release_migrated() {
    let url = fresh("newer_schema");
    let pool = Config::defaults(std::path::Path::new("."), 1).database_pool;
    drop(Database::open(&url, None, pool).unwrap());
    // A newer release's migration, as a rolled-back node would find it.
    database::execute(&url, "INSERT INTO hexray_migrations (version) VALUES (99)");
    let Err(refused) = Database::open(&url, None, pool) else {
        panic!("a node started on a schema it does not know");
    };
    assert!(
        matches!(refused, DatabaseError::NewerSchema { found: 99, .. }),
        "{refused}"
    );
    assert!(
        refused.to_string().contains("Run that release"),
        "{refused}"
    );
}
