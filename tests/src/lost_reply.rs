//! A proxy in front of the test PostgreSQL that loses one reply: the database's answer to the
//! first COMMIT of a transaction that sent a given statement. The transaction is committed,
//! and the caller sees its connection drop instead of the answer, as when a network link or
//! the database host fails at the worst moment. What the evaluator does then (retry on a new
//! connection) is what the test checks.
//!
//! The test server speaks TLS only over TCP, and TLS hides the messages, so the proxy takes
//! plain TCP and reaches the server by its Unix socket (in `HEXRAY_TEST_POSTGRES_DIR`, which
//! `scripts/test.sh` sets), where the server trusts local connections.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// The COMMIT that `postgres::Transaction::commit` sends: a simple-protocol query message
/// ('Q', its length 4 + 7, "COMMIT" and its terminating zero), in one write.
const COMMIT: &[u8] = b"Q\0\0\0\x0bCOMMIT\0";

/// The proxy; it serves as long as the test runs.
pub struct LostReply {
    port: u16,
    database: String,
    shared: Arc<Shared>,
}

struct Shared {
    /// Bytes of the statement whose transaction's COMMIT loses its reply.
    statement: Vec<u8>,
    /// Whether the reply is still to be lost: it is lost once.
    armed: AtomicBool,
    /// Replies lost so far.
    lost: AtomicUsize,
}

impl LostReply {
    /// Starts a proxy to the database of `url` (a URL of [`crate::database::fresh`]) that loses
    /// the reply to the COMMIT of the first transaction that sends `statement` (part of its
    /// SQL text).
    pub fn start(url: &str, statement: &str) -> Self {
        let (port, database) = port_and_database(url);
        let socket = PathBuf::from(std::env::var("HEXRAY_TEST_POSTGRES_DIR").expect(
            "HEXRAY_TEST_POSTGRES_DIR is not set: run scripts/test.sh, which starts PostgreSQL",
        ))
        .join(format!(".s.PGSQL.{port}"));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let shared = Arc::new(Shared {
            statement: statement.as_bytes().to_vec(),
            armed: AtomicBool::new(true),
            lost: AtomicUsize::new(0),
        });
        let proxy = LostReply {
            port: listener.local_addr().unwrap().port(),
            database,
            shared: shared.clone(),
        };
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let server = UnixStream::connect(&socket).unwrap();
                relay(client, server, shared.clone());
            }
        });
        proxy
    }

    /// The URL that reaches the database through the proxy: plain TCP, which only this proxy
    /// on 127.0.0.1 ever sees.
    pub fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{}?sslmode=disable",
            self.port, self.database
        )
    }

    /// How many replies the proxy has lost: 1 once the COMMIT came.
    pub fn lost(&self) -> usize {
        self.shared.lost.load(Ordering::SeqCst)
    }
}

/// The port and the database name of a test database's URL.
fn port_and_database(url: &str) -> (u16, String) {
    // Its TLS settings are the evaluator's (`sslrootcert` names a file), which the driver's own
    // parser does not take: they are left out.
    let config: postgres::Config = url.split('?').next().unwrap().parse().unwrap();
    (
        config.get_ports()[0],
        config.get_dbname().unwrap().to_owned(),
    )
}

/// Relays one connection both ways, each on a thread of its own. The client's side watches
/// for the statement and then for the COMMIT; the server's side then drops the reply and
/// closes both connections.
fn relay(client: TcpStream, server: UnixStream, shared: Arc<Shared>) {
    let swallow = Arc::new(AtomicBool::new(false));
    let (mut from_client, mut to_server) =
        (client.try_clone().unwrap(), server.try_clone().unwrap());
    let (watch, watched) = (shared.clone(), swallow.clone());
    std::thread::spawn(move || {
        let mut sent_statement = false;
        let mut buffer = vec![0u8; 64 << 10];
        while let Ok(n @ 1..) = from_client.read(&mut buffer) {
            let chunk = &buffer[..n];
            sent_statement |= contains(chunk, &watch.statement);
            // Set before the COMMIT goes on, so that the next bytes back are its reply.
            if sent_statement
                && contains(chunk, COMMIT)
                && watch.armed.swap(false, Ordering::SeqCst)
            {
                watched.store(true, Ordering::SeqCst);
            }
            if to_server.write_all(chunk).is_err() {
                break;
            }
        }
        let _ = to_server.shutdown(Shutdown::Write);
    });
    let (mut from_server, mut to_client) = (server, client);
    std::thread::spawn(move || {
        let mut buffer = vec![0u8; 64 << 10];
        while let Ok(n @ 1..) = from_server.read(&mut buffer) {
            if swallow.load(Ordering::SeqCst) {
                // The transaction is committed; its caller never hears so.
                shared.lost.fetch_add(1, Ordering::SeqCst);
                let _ = to_client.shutdown(Shutdown::Both);
                let _ = from_server.shutdown(Shutdown::Both);
                return;
            }
            if to_client.write_all(&buffer[..n]).is_err() {
                break;
            }
        }
        let _ = to_client.shutdown(Shutdown::Write);
    });
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
