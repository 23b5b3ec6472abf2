//! What every test of the suite shares: the bundled model, seeded clients, tokens, a server
//! on a fresh data directory (on the back end under test), requests, and checks of results.

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceResponse};
use actix_web::http::{Method, StatusCode};
use actix_web::{test, web, App};
use hexray_crypto::{batch_body, ClientKey, EncryptedOutput, ParameterSet};
use hexray_engine::LoadedModel;
use hexray_evaluator::server::auth::{Access, Scope, Tokens};
use hexray_evaluator::server::keys::{key_id, KEY_ID_HEADER};
use hexray_evaluator::server::{configure, AppState, Config};
use hexray_model::simulate;
use hexray_test_kit::{database, fixtures};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::Value;
use std::sync::OnceLock;
use std::time::Duration;

/// The bundled model, as the server serves it by default.
pub(crate) fn model() -> &'static LoadedModel {
    static MODEL: OnceLock<LoadedModel> = OnceLock::new();
    MODEL.get_or_init(|| {
        LoadedModel::from_file(&fixtures::repo().join("models/pneumonia-a.hexray")).unwrap()
    })
}

/// A client: its key and its compressed server key's bytes. Seeded, so tests are repeatable.
pub(crate) fn client(seed: u128) -> (ClientKey, Vec<u8>) {
    let (client, server) = ClientKey::generate_deterministic(ParameterSet::Ks32, seed);
    (client, server.to_bytes().unwrap())
}

pub(crate) fn shared_client() -> &'static (ClientKey, Vec<u8>) {
    static CLIENT: OnceLock<(ClientKey, Vec<u8>)> = OnceLock::new();
    CLIENT.get_or_init(|| client(1))
}

pub(crate) fn config(data_dir: &std::path::Path, capacity: usize) -> Config {
    let mut config = Config::defaults(data_dir, 2);
    config.queue.capacity = capacity;
    config.queue.retention = Duration::from_secs(600);
    config.limits.batch_images = 4;
    config.database_url = database(data_dir);
    config
}

/// Whether the back end under test is PostgreSQL (`HEXRAY_TEST_STORAGE=postgres`) rather than
/// the embedded one.
pub(crate) fn on_postgres() -> bool {
    match std::env::var("HEXRAY_TEST_STORAGE").as_deref() {
        Ok("postgres") => true,
        Ok("embedded") | Err(_) => false,
        Ok(other) => panic!("HEXRAY_TEST_STORAGE is `{other}`: `embedded` or `postgres`"),
    }
}

/// On PostgreSQL, the database that stands for `data_dir`: made fresh the first time, and the
/// same one when a test restarts a server on the same directory.
pub(crate) fn database(data_dir: &std::path::Path) -> Option<String> {
    static MADE: std::sync::Mutex<Vec<(std::path::PathBuf, String)>> =
        std::sync::Mutex::new(Vec::new());
    if !on_postgres() {
        return None;
    }
    let mut made = MADE.lock().unwrap();
    if let Some((_, url)) = made.iter().find(|(dir, _)| dir == data_dir) {
        return Some(url.clone());
    }
    let url = database::fresh(&format!("api{}", made.len()));
    made.push((data_dir.to_path_buf(), url.clone()));
    Some(url)
}

/// Two clinicians' tokens and the tokens file that holds them, made once.
pub(crate) fn tokens() -> &'static (std::path::PathBuf, [String; 2]) {
    static TOKENS: OnceLock<(std::path::PathBuf, [String; 2])> = OnceLock::new();
    TOKENS.get_or_init(|| {
        // Cargo's scratch folder for integration tests, inside the target directory.
        let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("hexray-tokens-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let new = |label| Tokens::create(&path, label, Scope::Clinician).unwrap();
        let tokens = [new("ward a"), new("ward b")];
        (path, tokens)
    })
}

/// The first clinician's token: what [`call`] sends.
pub(crate) fn token() -> &'static str {
    &tokens().1[0]
}

pub(crate) async fn app(
    config: &Config,
) -> impl Service<actix_http::Request, Response = ServiceResponse, Error = actix_web::Error> {
    let access = Access::Tokens(Tokens::load(&tokens().0).unwrap());
    let state = web::Data::new(AppState::start(config, access).unwrap());
    test::init_service(App::new().configure(configure(state, None))).await
}

/// A server with the test configuration (queue capacity 4) on a fresh data directory, which
/// the caller keeps for as long as it uses the server.
pub(crate) async fn fresh_app() -> (
    tempfile::TempDir,
    impl Service<actix_http::Request, Response = ServiceResponse, Error = actix_web::Error>,
) {
    let dir = tempfile::tempdir().unwrap();
    let app = app(&config(dir.path(), 4)).await;
    (dir, app)
}

/// Sends a request as `token` (none: anonymous), with POST bodies as octet streams and from a
/// loopback address; returns the status and the body.
pub(crate) async fn call_as<S>(
    app: &S,
    token: Option<&str>,
    method: Method,
    uri: &str,
    body: Vec<u8>,
) -> (StatusCode, web::Bytes)
where
    S: Service<actix_http::Request, Response = ServiceResponse, Error = actix_web::Error>,
{
    let mut request = test::TestRequest::default()
        .method(method.clone())
        .uri(uri)
        .peer_addr("127.0.0.1:40000".parse().unwrap());
    if let Some(token) = token {
        request = request.insert_header(("authorization", format!("Bearer {token}")));
    }
    if method == Method::POST {
        request = request.insert_header(("content-type", "application/octet-stream"));
    }
    let response = test::call_service(app, request.set_payload(body).to_request()).await;
    let status = response.status();
    (status, response.into_body().try_into_bytes().unwrap())
}

/// Sends a request with the first clinician's token.
pub(crate) async fn call<S>(
    app: &S,
    method: Method,
    uri: &str,
    body: Vec<u8>,
) -> (StatusCode, web::Bytes)
where
    S: Service<actix_http::Request, Response = ServiceResponse, Error = actix_web::Error>,
{
    call_as(app, Some(token()), method, uri, body).await
}

/// The URI that submits a job for the bundled model with key `key`.
pub(crate) fn job_uri(key: &str) -> String {
    format!(
        "/api/v1/jobs?model=pneumonia-a&key={key}&fingerprint={}",
        model().spec().fingerprint
    )
}

/// An error's status and code, checking the body is the API's JSON error.
pub(crate) async fn error<S>(
    app: &S,
    method: Method,
    uri: &str,
    body: Vec<u8>,
) -> (StatusCode, String)
where
    S: Service<actix_http::Request, Response = ServiceResponse, Error = actix_web::Error>,
{
    let (status, bytes) = call(app, method, uri, body).await;
    let json: Value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| panic!("{uri}: not JSON: {}", String::from_utf8_lossy(&bytes)));
    assert!(json["message"].as_str().is_some_and(|m| !m.is_empty()));
    (status, json["code"].as_str().unwrap().to_owned())
}

pub(crate) fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

/// Registers a key, naming it in its upload as `hexray analyze` does; returns its id.
pub(crate) async fn register<S>(app: &S, key: &[u8]) -> String
where
    S: Service<actix_http::Request, Response = ServiceResponse, Error = actix_web::Error>,
{
    let request = test::TestRequest::post()
        .uri("/api/v1/keys")
        .insert_header(("authorization", format!("Bearer {}", token())))
        .insert_header(("content-type", "application/octet-stream"))
        .insert_header((KEY_ID_HEADER, key_id(key)))
        .set_payload(key.to_vec());
    let response = test::call_service(app, request.to_request()).await;
    let status = response.status();
    let body = response.into_body().try_into_bytes().unwrap();
    assert!(status.is_success(), "{status}: {body:?}");
    json(&body)["key_id"].as_str().unwrap().to_owned()
}

/// Encrypts sample images into one batch body, with randomness seeded by each image's place,
/// so that a failing test fails the same way when run again.
pub(crate) fn batch(client: &ClientKey, names: &[&str]) -> Vec<u8> {
    let blobs: Vec<Vec<u8>> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let input = fixtures::sample(model(), name);
            client
                .encrypt_deterministic(model().spec(), input.view(), i as u128)
                .unwrap()
                .to_bytes()
                .unwrap()
        })
        .collect();
    batch_body::pack(&blobs)
}

/// Polls a job until it ends; returns its final status.
pub(crate) async fn wait<S>(app: &S, job: &str) -> Value
where
    S: Service<actix_http::Request, Response = ServiceResponse, Error = actix_web::Error>,
{
    // A stuck job fails the test instead of hanging CI.
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "job {job} did not finish"
        );
        let (status, body) = call(app, Method::GET, &format!("/api/v1/jobs/{job}"), vec![]).await;
        assert_eq!(status, StatusCode::OK);
        let status = json(&body);
        if matches!(status["state"].as_str(), Some("done" | "failed")) {
            return status;
        }
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Decrypts a finished job's outputs and checks each against the simulator: within its noise,
/// and the same class wherever noise never changes it.
pub(crate) async fn check_outputs<S>(app: &S, job: &str, client: &ClientKey, names: &[&str])
where
    S: Service<actix_http::Request, Response = ServiceResponse, Error = actix_web::Error>,
{
    let (status, body) = call(
        app,
        Method::GET,
        &format!("/api/v1/jobs/{job}/outputs"),
        vec![],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let circuit = &model().circuit();
    let blobs = batch_body::unpack(&body, names.len()).unwrap();
    assert_eq!(blobs.len(), names.len());
    for (blob, name) in blobs.into_iter().zip(names) {
        let output =
            EncryptedOutput::from_bytes(blob, model().parameter_set(), circuit.output_len())
                .unwrap();
        let decrypted = client.decrypt_prediction(circuit, &output).unwrap();
        let input = fixtures::sample(model(), name);
        // TFHE's noise, as the simulator draws it: each decrypted accumulator must lie within
        // 6 standard deviations of the noisy runs' mean (a false alarm is a 1-in-10^9 event).
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let runs: Vec<_> = (0..200)
            .map(|_| simulate::noisy(circuit, input.view(), &mut rng).unwrap())
            .collect();
        for (k, &value) in decrypted.accumulators.iter().enumerate() {
            let mean = runs.iter().map(|r| r.accumulators[k]).sum::<f64>() / runs.len() as f64;
            let sd = (runs
                .iter()
                .map(|r| (r.accumulators[k] - mean).powi(2))
                .sum::<f64>()
                / (runs.len() - 1) as f64)
                .sqrt();
            assert!(
                (value - mean).abs() <= 6.0 * sd + 1e-9,
                "{name}: output {k} is {value}, the simulator gives {mean} ± {sd}"
            );
        }
        let exact = simulate::exact(circuit, input.view()).unwrap();
        if runs.iter().all(|r| r.class() == exact.class()) {
            assert_eq!(decrypted.class(), exact.class(), "{name}");
        }
    }
}

/// The data directory's stored key files, wherever their owner's folder is.
pub(crate) fn stored_keys(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for owner in std::fs::read_dir(dir.join("keys")).unwrap() {
        for entry in std::fs::read_dir(owner.unwrap().path()).unwrap() {
            found.push(entry.unwrap().path());
        }
    }
    found
}

/// Key registrations stored for `config`'s server, all tokens together: its data directory's
/// key files, or its database's rows.
pub(crate) fn registrations(config: &Config) -> usize {
    match &config.database_url {
        Some(url) => database::number(url, "SELECT count(*) FROM key_owners") as usize,
        None => stored_keys(&config.data_dir).len(),
    }
}

/// The status events of a progress stream, read whole: it ends by itself after the final
/// event, or the deadline fails the test.
pub(crate) async fn whole_stream(response: ServiceResponse) -> Vec<Value> {
    let body = actix_web::rt::time::timeout(
        Duration::from_secs(600),
        actix_web::body::to_bytes(response.into_body()),
    )
    .await
    .expect("the stream ends when the job does")
    .unwrap();
    status_events(std::str::from_utf8(&body).unwrap())
}

/// The `data` of every `status` event in a server-sent event stream, in order.
pub(crate) fn status_events(stream: &str) -> Vec<Value> {
    stream
        .split("\n\n")
        .filter_map(|event| {
            let mut lines = event.lines();
            if lines.next() != Some("event: status") {
                return None;
            }
            Some(json(lines.next()?.strip_prefix("data: ")?.as_bytes()))
        })
        .collect()
}
