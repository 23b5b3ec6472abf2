//! Clients that misbehave on purpose, written once for the tests that hold the server's limits
//! to them and for the load benchmark that measures them.

use std::io::Write;
use std::net::TcpStream;

/// Starts a key upload on `127.0.0.1:port` that sends its headers and a few bytes of a body
/// announced as 1 MB, then stalls: the slow client an upload deadline and per-token upload
/// slots exist for.
pub fn stalled_upload(port: u16, token: &str) -> std::io::Result<TcpStream> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    write!(
        stream,
        "POST /api/v1/keys HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: 1000000\r\n\r\nHXB"
    )?;
    Ok(stream)
}
