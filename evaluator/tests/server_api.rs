//! The HTTP API, through actix's test utilities: every error path, concurrent clients, restart
//! survival, random bodies, and the OpenAPI description.
//!
//! The suite runs against the embedded back end, and against PostgreSQL when
//! `HEXRAY_TEST_STORAGE=postgres` (`scripts/test.sh` runs it both ways): each data directory
//! then gets a database of its own, and the few checks that look inside storage look in it.

use hexray_test_kit::{database, fixtures};

use hexray_model::bulk_spec::BulkSpec;
use hexray_model::simulate;
use std::sync::OnceLock;
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceResponse};
use actix_web::http::{Method, StatusCode};
use actix_web::{test, web, App};
use hexray_crypto::{batch_body, ClientKey, EncryptedOutput, ParameterSet};
use hexray_engine::LoadedModel;
use hexray_evaluator::server::auth::{Access, Scope, Tokens};
use hexray_evaluator::server::error::ErrorCode;
use hexray_evaluator::server::keys::{key_id, KEY_ID_HEADER};
use hexray_evaluator::server::models::card_summary;
use hexray_evaluator::server::routes::ROUTES;
use hexray_evaluator::server::{configure, AppState, Config};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

/// The bundled model, as the server serves it by default.
fn model() -> &'static LoadedModel {
    static MODEL: OnceLock<LoadedModel> = OnceLock::new();
    MODEL.get_or_init(|| {
        LoadedModel::from_file(&fixtures::repo().join("models/pneumonia-a.hexray")).unwrap()
    })
}

/// A client: its key and its compressed server key's bytes. Seeded, so tests are repeatable.
fn client(seed: u128) -> (ClientKey, Vec<u8>) {
    let (client, server) = ClientKey::generate_deterministic(ParameterSet::Ks32, seed);
    (client, server.to_bytes().unwrap())
}

fn shared_client() -> &'static (ClientKey, Vec<u8>) {
    static CLIENT: OnceLock<(ClientKey, Vec<u8>)> = OnceLock::new();
    CLIENT.get_or_init(|| client(1))
}

fn config(data_dir: &std::path::Path, capacity: usize) -> Config {
    let mut config = Config::defaults(data_dir, 2);
    config.queue.capacity = capacity;
    config.queue.retention = Duration::from_secs(600);
    config.limits.batch_images = 4;
    config.database_url = database(data_dir);
    config
}

/// The back end under test: `Some("postgres")` from `HEXRAY_TEST_STORAGE`, or the embedded one.
fn on_postgres() -> bool {
    match std::env::var("HEXRAY_TEST_STORAGE").as_deref() {
        Ok("postgres") => true,
        Ok("embedded") | Err(_) => false,
        Ok(other) => panic!("HEXRAY_TEST_STORAGE is `{other}`: `embedded` or `postgres`"),
    }
}

/// On PostgreSQL, the database that stands for `data_dir`: made fresh the first time, and the
/// same one when a test restarts a server on the same directory.
fn database(data_dir: &std::path::Path) -> Option<String> {
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
fn tokens() -> &'static (std::path::PathBuf, [String; 2]) {
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
fn token() -> &'static str {
    &tokens().1[0]
}

async fn app(
    config: &Config,
) -> impl Service<actix_http::Request, Response = ServiceResponse, Error = actix_web::Error> {
    let access = Access::Tokens(Tokens::load(&tokens().0).unwrap());
    let state = web::Data::new(AppState::start(config, access).unwrap());
    test::init_service(App::new().configure(configure(state, None))).await
}

/// A server with the test configuration (queue capacity 4) on a fresh data directory, which
/// the caller keeps for as long as it uses the server.
async fn fresh_app() -> (
    tempfile::TempDir,
    impl Service<actix_http::Request, Response = ServiceResponse, Error = actix_web::Error>,
) {
    let dir = tempfile::tempdir().unwrap();
    let app = app(&config(dir.path(), 4)).await;
    (dir, app)
}

/// Sends a request as `token` (none: anonymous), with POST bodies as octet streams and from a
/// loopback address; returns the status and the body.
async fn call_as<S>(
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
async fn call<S>(app: &S, method: Method, uri: &str, body: Vec<u8>) -> (StatusCode, web::Bytes)
where
    S: Service<actix_http::Request, Response = ServiceResponse, Error = actix_web::Error>,
{
    call_as(app, Some(token()), method, uri, body).await
}

/// The URI that submits a job for the bundled model with key `key`.
fn job_uri(key: &str) -> String {
    format!(
        "/api/v1/jobs?model=pneumonia-a&key={key}&fingerprint={}",
        model().spec().fingerprint
    )
}

/// An error's status and code, checking the body is the API's JSON error.
async fn error<S>(app: &S, method: Method, uri: &str, body: Vec<u8>) -> (StatusCode, String)
where
    S: Service<actix_http::Request, Response = ServiceResponse, Error = actix_web::Error>,
{
    let (status, bytes) = call(app, method, uri, body).await;
    let json: Value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| panic!("{uri}: not JSON: {}", String::from_utf8_lossy(&bytes)));
    assert!(json["message"].as_str().is_some_and(|m| !m.is_empty()));
    (status, json["code"].as_str().unwrap().to_owned())
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

/// Registers a key, naming it in its upload as `hexray analyze` does; returns its id.
async fn register<S>(app: &S, key: &[u8]) -> String
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
fn batch(client: &ClientKey, names: &[&str]) -> Vec<u8> {
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
async fn wait<S>(app: &S, job: &str) -> Value
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
async fn check_outputs<S>(app: &S, job: &str, client: &ClientKey, names: &[&str])
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

#[actix_web::test]
async fn every_error_path_answers_json_with_a_stable_code() {
    let (dir, app) = fresh_app().await;
    let (client, key) = shared_client();
    /// Each case: what is sent, and the status and stable code it must be refused with.
    async fn refused<S>(app: &S, cases: Vec<(Method, String, Vec<u8>, u16, &str)>)
    where
        S: Service<actix_http::Request, Response = ServiceResponse, Error = actix_web::Error>,
    {
        for (method, uri, body, status, code) in cases {
            let expected = (StatusCode::from_u16(status).unwrap(), code.to_owned());
            let what = format!("{method} {uri}");
            assert_eq!(error(app, method, &uri, body).await, expected, "{what}");
        }
    }
    let get = |uri: &str| (Method::GET, uri.to_owned(), vec![]);
    let post = |uri: &str, body: Vec<u8>| (Method::POST, uri.to_owned(), body);
    let case = |(method, uri, body): (Method, String, Vec<u8>), status, code| {
        (method, uri, body, status, code)
    };
    let mut oversized = key.clone();
    oversized.push(0);
    refused(
        &app,
        vec![
            case(get("/api/v1/models/nope"), 404, "unknown_model"),
            case(get("/api/v1/keys/00ff"), 404, "unknown_key"),
            case(get("/api/v1/jobs/00ff"), 404, "unknown_job"),
            case(get("/api/v1/jobs/00ff/events"), 404, "unknown_job"),
            case(get("/api/v1/jobs/00ff/outputs"), 404, "unknown_job"),
            case(get("/nowhere"), 404, "not_found"),
            case(
                (Method::DELETE, "/api/v1/models".into(), vec![]),
                404,
                "not_found",
            ),
            case(
                post("/api/v1/keys", b"garbage".to_vec()),
                422,
                "malformed_key",
            ),
            case(post("/api/v1/keys", oversized), 413, "too_large"),
            case(post("/api/v1/jobs", vec![]), 400, "bad_request"),
            case(
                post(&format!("{}&extra=1", job_uri("00ff")), vec![]),
                400,
                "bad_request",
            ),
        ],
    )
    .await;

    // A well-formed key of a parameter set no served model uses is larger than any key
    // body the server accepts.
    let app = self::app(&config(dir.path(), 4)).await;
    let (_, foreign) = ClientKey::generate_deterministic(ParameterSet::Ks64, 9);
    refused(
        &app,
        vec![case(
            post("/api/v1/keys", foreign.to_bytes().unwrap()),
            413,
            "too_large",
        )],
    )
    .await;
    let id = register(&app, key).await;
    let fingerprint = &model().spec().fingerprint;
    let submit = |model: &str, key: &str| {
        format!("/api/v1/jobs?model={model}&key={key}&fingerprint={fingerprint}")
    };
    let one = batch(client, &["pneumoniamnist/test-0000-pneumonia.png"]);
    let job = submit("pneumonia-a", &id);
    let mut truncated = one.clone();
    truncated.truncate(one.len() - 100);
    // Five images do not fit the body limit of a batch of four, so they are refused before
    // being read whole.
    let five = batch(client, &["pneumoniamnist/test-0000-pneumonia.png"; 5]);
    refused(
        &app,
        vec![
            case(
                post(&submit("nope", &id), one.clone()),
                404,
                "unknown_model",
            ),
            case(
                post(&submit("pneumonia-a", "00ff"), one.clone()),
                404,
                "unknown_key",
            ),
            case(post(&job, b"HXB1".to_vec()), 422, "malformed_ciphertext"),
            case(
                post(&job, batch_body::pack(&[b"not a ciphertext"])),
                422,
                "malformed_ciphertext",
            ),
            case(
                post(&job, batch_body::pack::<Vec<u8>>(&[])),
                422,
                "wrong_input_count",
            ),
            case(post(&job, five), 413, "too_large"),
            case(post(&job, truncated), 422, "malformed_ciphertext"),
        ],
    )
    .await;

    // A job that has not finished has no outputs yet.
    let (status, body) = call(&app, Method::POST, &job, one).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let job_id = json(&body)["job_id"].as_str().unwrap().to_owned();
    let outputs = format!("/api/v1/jobs/{job_id}/outputs");
    refused(&app, vec![case(get(&outputs), 409, "not_ready")]).await;
    assert_eq!(wait(&app, &job_id).await["state"], "done");
}

#[actix_web::test]
async fn a_full_queue_answers_503_and_every_accepted_job_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(&config(dir.path(), 1)).await;
    let (client, key) = shared_client();
    let id = register(&app, key).await;
    let body = batch(client, &["pneumoniamnist/test-0234-normal.png"]);
    let uri = job_uri(&id);
    let mut accepted = Vec::new();
    let mut refused = false;
    // One job runs and one waits; by the fourth submission the queue must be full.
    for _ in 0..4 {
        let request = test::TestRequest::post()
            .uri(&uri)
            .insert_header(("authorization", format!("Bearer {}", token())))
            .insert_header(("content-type", "application/octet-stream"))
            .set_payload(body.clone())
            .to_request();
        let response = test::call_service(&app, request).await;
        match response.status() {
            StatusCode::ACCEPTED => {
                let body = response.into_body().try_into_bytes().unwrap();
                accepted.push(json(&body)["job_id"].as_str().unwrap().to_owned());
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                let retry = response
                    .headers()
                    .get("retry-after")
                    .unwrap()
                    .to_str()
                    .unwrap();
                assert!(retry.parse::<u64>().unwrap() > 0);
                let body = response.into_body().try_into_bytes().unwrap();
                assert_eq!(json(&body)["code"], "queue_full");
                refused = true;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(refused, "four jobs fit in a queue of one");
    assert!(!accepted.is_empty());
    for job in &accepted {
        let status = wait(&app, job).await;
        assert_eq!(status["state"], "done", "{status}");
        check_outputs(&app, job, client, &["pneumoniamnist/test-0234-normal.png"]).await;
    }
    let (_, metrics) = call(&app, Method::GET, "/metrics", vec![]).await;
    let metrics = String::from_utf8(metrics.to_vec()).unwrap();
    assert!(metrics.contains("hexray_jobs_rejected_total "), "{metrics}");
    assert!(metrics.contains(&format!("hexray_jobs_completed_total {}", accepted.len())));
}

#[actix_web::test]
async fn eight_clients_with_two_images_each_all_get_correct_results() {
    let dir = tempfile::tempdir().unwrap();
    let mut shared = config(dir.path(), 16);
    // The eight clients share one token here, so its limits must fit eight browsers.
    shared.queue.per_owner = 8;
    shared.keys.per_owner = 8;
    shared.limits.uploads_per_owner = 8;
    let app = app(&shared).await;
    let images = [
        "pneumoniamnist/test-0000-pneumonia.png",
        "pneumoniamnist/test-0001-pneumonia.png",
        "pneumoniamnist/test-0002-pneumonia.png",
        "pneumoniamnist/test-0003-pneumonia.png",
        "pneumoniamnist/test-0234-normal.png",
        "pneumoniamnist/test-0235-normal.png",
        "pneumoniamnist/test-0236-normal.png",
        "pneumoniamnist/test-0237-normal.png",
        "covid-cxr-actualmed/covid-1.png",
        "covid-cxr-actualmed/normal-1.png",
    ];
    let clients: Vec<_> = (0..8u128).map(|i| client(100 + i)).collect();
    let app = &app;
    let runs = clients
        .iter()
        .enumerate()
        .map(|(i, (client, key))| async move {
            let names = [images[i % images.len()], images[(i + 3) % images.len()]];
            let id = register(app, key).await;
            let (status, body) =
                call(app, Method::POST, &job_uri(&id), batch(client, &names)).await;
            assert_eq!(status, StatusCode::ACCEPTED, "{body:?}");
            let job = json(&body)["job_id"].as_str().unwrap().to_owned();
            let end = wait(app, &job).await;
            assert_eq!(end["state"], "done", "{end}");
            assert_eq!(end["bootstraps_done"], end["bootstraps_total"]);
            check_outputs(app, &job, client, &names).await;
            job
        });
    let jobs = futures_util::future::join_all(runs).await;
    let distinct: std::collections::BTreeSet<_> = jobs.iter().collect();
    assert_eq!(distinct.len(), 8);
}

#[actix_web::test]
async fn key_registrations_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (client, key) = shared_client();
    let id = {
        let app = app(&config(dir.path(), 4)).await;
        register(&app, key).await
    };
    let app = app(&config(dir.path(), 4)).await;
    let (status, body) = call(&app, Method::GET, &format!("/api/v1/keys/{id}"), vec![]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&body)["parameter_set"], ParameterSet::Ks32.name());
    // Registering again is recognised, not stored twice.
    let (status, body) = call(&app, Method::POST, "/api/v1/keys", key.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&body)["created"], false);
    let names = ["covid-cxr-actualmed/covid-1.png"];
    let (status, body) = call(&app, Method::POST, &job_uri(&id), batch(client, &names)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let job = json(&body)["job_id"].as_str().unwrap().to_owned();
    assert_eq!(wait(&app, &job).await["state"], "done");
    check_outputs(&app, &job, client, &names).await;
}

#[actix_web::test]
async fn random_and_truncated_bodies_never_get_a_5xx() {
    let (_dir, app) = fresh_app().await;
    let (client, key) = shared_client();
    let id = register(&app, key).await;
    let image = batch(client, &["pneumoniamnist/test-0000-pneumonia.png"]);
    let mut rng = ChaCha8Rng::seed_from_u64(2024);
    let routes = [
        (Method::POST, "/api/v1/keys".to_owned()),
        (Method::POST, job_uri(&id)),
        (Method::GET, "/api/v1/health".to_owned()),
        (Method::GET, "/api/v1/models".to_owned()),
        (Method::GET, "/api/v1/models/pneumonia-a".to_owned()),
        (Method::GET, format!("/api/v1/keys/{id}")),
        (Method::GET, "/api/v1/jobs/x/events".to_owned()),
        (Method::GET, "/metrics".to_owned()),
    ];
    for round in 0..60 {
        for (method, uri) in &routes {
            let body = match round % 3 {
                0 => (0..rng.gen_range(0..4096)).map(|_| rng.gen()).collect(),
                1 => key[..rng.gen_range(0..key.len())].to_vec(),
                _ => {
                    let mut b = image[..rng.gen_range(0..image.len())].to_vec();
                    if let Some(byte) = b.get_mut(rng.gen_range(0..image.len().max(1))) {
                        *byte ^= 0x5a;
                    }
                    b
                }
            };
            let (status, _) = call(&app, method.clone(), uri, body).await;
            assert!(
                !status.is_server_error(),
                "{method} {uri}: {status} in round {round}"
            );
        }
    }
    let (status, _) = call(&app, Method::GET, "/api/v1/health", vec![]).await;
    assert_eq!(status, StatusCode::OK);
}

#[actix_web::test]
async fn the_openapi_description_matches_the_server() {
    let (_dir, app) = fresh_app().await;
    let (status, body) = call(&app, Method::GET, "/api/v1/openapi.json", vec![]).await;
    assert_eq!(status, StatusCode::OK);
    let spec = json(&body);

    // The documented operations are exactly the routes the server registers…
    let documented: std::collections::BTreeSet<(String, String)> = spec["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |method| (method.clone(), path.clone()))
        })
        .collect();
    let served: std::collections::BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|&(method, path)| (method.to_owned(), path.to_owned()))
        .collect();
    assert_eq!(
        documented, served,
        "docs/openapi.json and the router differ"
    );

    // …and each one answers something other than "no such route", with a documented error.
    let mut operations = 0;
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let uri = path.replace("{id}", "0000");
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let (status, body) = call(&app, method.clone(), &uri, vec![]).await;
            if !status.is_success() {
                let code = json(&body)["code"].as_str().unwrap().to_owned();
                assert_ne!(
                    code, "not_found",
                    "{method} {path} is documented but not served"
                );
                // And the error it gave is one the operation documents.
                let documented = operation["responses"][status.as_str()]["description"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{method} {path}: {status} is not documented"));
                assert!(
                    documented.contains(&code),
                    "{method} {path}: {code} not in {documented}"
                );
            }
            operations += 1;
        }
    }
    assert_eq!(operations, ROUTES.len());

    // The error codes are exactly the server's.
    let codes: Vec<&str> = spec["components"]["schemas"]["Error"]["properties"]["code"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let served: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(codes, served);
}

/// The data directory's stored key files, wherever their owner's folder is.
fn stored_keys(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
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
fn registrations(config: &Config) -> usize {
    match &config.database_url {
        Some(url) => database::number(url, "SELECT count(*) FROM key_owners") as usize,
        None => stored_keys(&config.data_dir).len(),
    }
}

#[actix_web::test]
async fn tokens_are_required_and_each_token_sees_only_its_own_keys_and_jobs() {
    let (_dir, app) = fresh_app().await;
    let (client, key) = shared_client();
    let other = Some(tokens().1[1].as_str());
    for (method, uri) in [
        (Method::GET, "/api/v1/models"),
        (Method::GET, "/api/v1/models/pneumonia-a"),
        (Method::GET, "/api/v1/models/pneumonia-a/card"),
        (Method::GET, "/api/v1/models/screen-mlp-32/bulk-spec"),
        (Method::POST, "/api/v1/keys"),
        (Method::GET, "/api/v1/keys/00ff"),
        (Method::POST, "/api/v1/jobs"),
        (Method::GET, "/api/v1/jobs/00ff"),
        (Method::GET, "/api/v1/jobs/00ff/events"),
        (Method::GET, "/api/v1/jobs/00ff/outputs"),
    ] {
        for token in [None, Some("hxr_not-a-token")] {
            let (status, body) = call_as(&app, token, method.clone(), uri, vec![]).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {uri}");
            assert_eq!(json(&body)["code"], "unauthorized");
        }
    }
    let (status, body) = call_as(&app, None, Method::GET, "/api/v1/health", vec![]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&body)["auth"], "token");
    let storage = if on_postgres() {
        "postgres"
    } else {
        "embedded"
    };
    assert_eq!(json(&body)["storage"], storage);
    // Anyone may ask for health; how busy the service is, and its node's name, are for tokens.
    for field in ["queue_depth", "jobs_running", "node"] {
        assert!(
            json(&body).get(field).is_none(),
            "anonymous health tells {field}"
        );
    }
    let (status, body) = call(&app, Method::GET, "/api/v1/health", vec![]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!json(&body)["node"].as_str().unwrap().is_empty());
    assert_eq!(json(&body)["queue_depth"], 0);
    // Anonymous requests are limited per address; a token's are not.
    let mut anonymous = Vec::new();
    for _ in 0..40 {
        anonymous.push(
            call_as(&app, None, Method::GET, "/api/v1/health", vec![])
                .await
                .0,
        );
    }
    assert!(
        anonymous.contains(&StatusCode::TOO_MANY_REQUESTS),
        "40 anonymous requests at once were all answered"
    );
    let (status, _) = call(&app, Method::GET, "/api/v1/health", vec![]).await;
    assert_eq!(status, StatusCode::OK);
    // Metrics answer loopback peers only (or a metrics token).
    let remote = test::TestRequest::get()
        .uri("/metrics")
        .peer_addr("192.0.2.7:40000".parse().unwrap())
        .to_request();
    assert_eq!(
        test::call_service(&app, remote).await.status(),
        StatusCode::UNAUTHORIZED
    );

    let id = register(&app, key).await;
    let key_uri = format!("/api/v1/keys/{id}");
    let (status, _) = call_as(&app, other, Method::GET, &key_uri, vec![]).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "another token's key is unknown to it"
    );
    let one = batch(client, &["pneumoniamnist/test-0000-pneumonia.png"]);
    let (status, body) = call_as(&app, other, Method::POST, &job_uri(&id), one.clone()).await;
    assert_eq!(
        (status, json(&body)["code"].clone()),
        (StatusCode::NOT_FOUND, "unknown_key".into())
    );
    let (status, body) = call(&app, Method::POST, &job_uri(&id), one).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let job = json(&body)["job_id"].as_str().unwrap().to_owned();
    for suffix in ["", "/events", "/outputs"] {
        let uri = format!("/api/v1/jobs/{job}{suffix}");
        let (status, body) = call_as(&app, other, Method::GET, &uri, vec![]).await;
        assert_eq!(
            (status, json(&body)["code"].clone()),
            (StatusCode::NOT_FOUND, "unknown_job".into())
        );
    }
    assert_eq!(wait(&app, &job).await["state"], "done");
}

#[actix_web::test]
async fn each_model_is_listed_with_its_cards_summary_and_its_card_is_served() {
    let (_dir, app) = fresh_app().await;
    let (status, body) = call(&app, Method::GET, "/api/v1/models", vec![]).await;
    assert_eq!(status, StatusCode::OK);
    let listing = json(&body);
    let models = listing["models"].as_array().unwrap();
    assert_eq!(models.len(), 4);
    for listed in models {
        let id = listed["id"].as_str().unwrap();
        let (status, card) = call(
            &app,
            Method::GET,
            &format!("/api/v1/models/{id}/card"),
            vec![],
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{id}");
        let card = String::from_utf8(card.to_vec()).unwrap();
        assert!(card.starts_with(&format!("# Model card: `{id}`")), "{card}");
        let summary = listed["card_summary"].as_str().expect("a summary");
        assert_eq!(Some(summary), card_summary(&card));
        assert!(
            !card.contains("HEXRAY-MODEL"),
            "the card is not the model file"
        );
    }
    assert_eq!(
        error(&app, Method::GET, "/api/v1/models/nope/card", vec![]).await,
        (StatusCode::NOT_FOUND, "unknown_model".to_owned())
    );
}

/// The bulk spec is served for the models that take the bulk path (the three MLPs), with the
/// client spec's fingerprint, and refused in words for one that does not.
#[actix_web::test]
async fn the_bulk_spec_is_served_for_the_models_that_take_the_bulk_path() {
    let (_dir, app) = fresh_app().await;
    let (_, body) = call(&app, Method::GET, "/api/v1/models", vec![]).await;
    let listing = json(&body);
    for listed in listing["models"].as_array().unwrap() {
        let id = listed["id"].as_str().unwrap();
        let uri = format!("/api/v1/models/{id}/bulk-spec");
        if id == "pneumonia-a" {
            assert_eq!(listed["bulk"], false);
            assert_eq!(
                error(&app, Method::GET, &uri, vec![]).await,
                (StatusCode::NOT_FOUND, "not_found".to_owned())
            );
            continue;
        }
        assert_eq!(listed["bulk"], true, "{id}");
        let (status, body) = call(&app, Method::GET, &uri, vec![]).await;
        assert_eq!(status, StatusCode::OK, "{id}");
        let spec = BulkSpec::from_json(&body).unwrap();
        assert_eq!(spec.fingerprint, listed["fingerprint"].as_str().unwrap());
        assert_eq!(spec.parameters, hexray_bulk::parameters::contract());
    }
}

/// `--bulk-queue-limit 0` switches the bulk path off: no model is listed with it, and its
/// routes answer 404 rather than a 503 that asks the client to retry forever.
#[actix_web::test]
async fn a_bulk_queue_limit_of_zero_switches_the_bulk_path_off() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), 4);
    config.queue.bulk_capacity = 0;
    let app = app(&config).await;
    let (_, body) = call(&app, Method::GET, "/api/v1/models", vec![]).await;
    let listing = json(&body);
    let models = listing["models"].as_array().unwrap();
    // The default is listed (that it takes the bulk path on a server that takes bulk jobs is
    // `the_bulk_spec_is_served_for_the_models_that_take_the_bulk_path`), so the loop is not empty.
    assert!(models.iter().any(|m| m["id"] == "screen-mlp-32"));
    let not_found = (StatusCode::NOT_FOUND, "not_found".to_owned());
    for listed in models {
        let id = listed["id"].as_str().unwrap();
        assert_eq!(listed["bulk"], false, "{id}");
        let uri = format!("/api/v1/models/{id}/bulk-spec");
        assert_eq!(error(&app, Method::GET, &uri, vec![]).await, not_found);
        let fingerprint = listed["fingerprint"].as_str().unwrap();
        let uri = format!("/api/v1/bulk-jobs?model={id}&fingerprint={fingerprint}");
        assert_eq!(
            error(&app, Method::POST, &uri, vec![0; 64]).await,
            not_found
        );
    }
    assert_eq!(spooled(dir.path()), 0, "a refused upload left its file");
}

/// Every file in a data directory's bulk spool: what uploads leave behind.
fn spooled(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir.join("spool")).unwrap().count()
}

/// A bulk job through the HTTP API, on the back end under test: real X-rays packed and
/// encrypted as a bulk client does, refused in words when the upload is cut short, foreign,
/// damaged, oversized, stale, for a model without the bulk path or without a token; then
/// accepted, followed on the event stream, hidden from another token, decrypted to the packed
/// circuit's exact outputs, and counted in the token's image quota. Refused and finished
/// uploads leave nothing behind: no spooled file and, on PostgreSQL, no large object once the
/// sweeper has run.
#[actix_web::test]
async fn a_bulk_job_round_trips_and_bad_uploads_are_refused_in_words() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), 4);
    // The sweeper runs every quarter of the retention: uploads are unlinked within seconds.
    config.queue.retention = Duration::from_secs(20);
    config.queue.bulk_images_per_owner = 5;
    let app = app(&config).await;
    let model_id = "screen-mlp-32";
    let (status, body) = call(
        &app,
        Method::GET,
        &format!("/api/v1/models/{model_id}/bulk-spec"),
        vec![],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let spec = BulkSpec::from_json(&body).unwrap();
    let loaded =
        LoadedModel::from_file(&fixtures::repo().join(format!("models/{model_id}.hexray")))
            .unwrap();
    let circuit = hexray_model::packed::compile(
        &loaded.model().network,
        &hexray_bulk::parameters::contract(),
    )
    .unwrap();
    let pixels: Vec<Vec<i64>> = [
        "covid-cxr-actualmed/covid-1.png",
        "pneumoniamnist/test-0235-normal.png",
        "pneumoniamnist/test-0000-pneumonia.png",
    ]
    .iter()
    .map(|name| fixtures::sample(&loaded, name).iter().copied().collect())
    .collect();
    let client = hexray_bulk::ClientKey::generate();
    let batch = client.encrypt(&spec.input, &pixels).unwrap();
    let mut upload = Vec::new();
    hexray_bulk::upload::write(&mut upload, &client.evaluation_key().unwrap(), &batch).unwrap();
    let uri = format!(
        "/api/v1/bulk-jobs?model={model_id}&fingerprint={}",
        spec.fingerprint
    );

    let unprocessable = |code: &str| (StatusCode::UNPROCESSABLE_ENTITY, code.to_owned());
    let truncated = upload[..upload.len() - 1000].to_vec();
    assert_eq!(
        error(&app, Method::POST, &uri, truncated).await,
        unprocessable("malformed_ciphertext")
    );
    let mut trailing = upload.clone();
    trailing.push(0);
    assert_eq!(
        error(&app, Method::POST, &uri, trailing).await,
        unprocessable("malformed_ciphertext")
    );
    let name = hexray_bulk::parameters::NAME.as_bytes();
    let at = upload.windows(name.len()).position(|w| w == name).unwrap();
    let mut foreign = upload.clone();
    foreign[at + name.len() - 2..at + name.len()].copy_from_slice(b"99");
    assert_eq!(
        error(&app, Method::POST, &uri, foreign).await,
        unprocessable("parameter_mismatch")
    );
    // The key's length prefix one byte short: the key is cut, and the batch misread after it.
    let mut damaged = upload.clone();
    let key_length = u32::from_le_bytes(damaged[..4].try_into().unwrap());
    damaged[..4].copy_from_slice(&(key_length - 1).to_le_bytes());
    assert_eq!(
        error(&app, Method::POST, &uri, damaged).await,
        unprocessable("malformed_key")
    );
    let oversized = vec![0u8; hexray_bulk::upload::limit(circuit.input_len()) + 1];
    assert_eq!(
        error(&app, Method::POST, &uri, oversized).await,
        (StatusCode::PAYLOAD_TOO_LARGE, "too_large".to_owned())
    );
    let stale = format!(
        "/api/v1/bulk-jobs?model={model_id}&fingerprint={}",
        "0".repeat(64)
    );
    assert_eq!(
        error(&app, Method::POST, &stale, upload.clone()).await,
        (StatusCode::CONFLICT, "stale_model".to_owned())
    );
    let interactive_only = "/api/v1/bulk-jobs?model=pneumonia-a&fingerprint=00";
    assert_eq!(
        error(&app, Method::POST, interactive_only, upload.clone()).await,
        (StatusCode::NOT_FOUND, "not_found".to_owned())
    );
    let (status, _) = call_as(&app, None, Method::POST, &uri, upload.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(spooled(dir.path()), 0, "a refused upload left its file");

    // The server goes on serving: the real upload is accepted and evaluated.
    let (status, body) = call(&app, Method::POST, &uri, upload.clone()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body:?}");
    let accepted = json(&body);
    assert_eq!(accepted["kind"], "bulk");
    assert_eq!(accepted["images"], 3);
    let neurons = hexray_bulk::evaluate::neurons(&circuit);
    assert_eq!(accepted["neurons_total"], neurons);
    let job = accepted["job_id"].as_str().unwrap();
    // Followed on the interactive jobs' event stream, which ends with the finished job.
    let request = test::TestRequest::get()
        .uri(&format!("/api/v1/jobs/{job}/events"))
        .insert_header(("authorization", format!("Bearer {}", token())))
        .to_request();
    let response = test::call_service(&app, request).await;
    assert_eq!(response.status(), StatusCode::OK);
    let events = whole_stream(response).await;
    let done = events.last().unwrap();
    assert_eq!(done["state"], "done", "{events:?}");
    assert_eq!(done["kind"], "bulk", "{done}");
    assert_eq!(done["neurons_done"], neurons, "{done}");
    assert!(done.get("bootstraps_done").is_none(), "{done}");
    for path in [
        format!("/api/v1/jobs/{job}"),
        format!("/api/v1/jobs/{job}/outputs"),
    ] {
        let (status, _) = call_as(&app, Some(&tokens().1[1]), Method::GET, &path, vec![]).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "another token sees {path}");
    }
    let (status, body) = call(
        &app,
        Method::GET,
        &format!("/api/v1/jobs/{job}/outputs"),
        vec![],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let results = hexray_bulk::EncryptedOutputs::read_from(&body[..], spec.classes.len()).unwrap();
    let decrypted = client.decrypt(&results).unwrap();
    let exact: Vec<Vec<i64>> = pixels.iter().map(|p| circuit.evaluate(p)).collect();
    assert_eq!(decrypted, exact);
    // The token's image quota (5 here) holds the 3 images of the job the server keeps: the
    // same batch again passes the check made before the body (3 + 1 images), and is refused
    // once its 3 images are counted; its upload is dropped, file and large object.
    assert_eq!(
        error(&app, Method::POST, &uri, upload).await,
        (StatusCode::TOO_MANY_REQUESTS, "image_quota".to_owned())
    );

    assert_eq!(spooled(dir.path()), 0, "a finished job left its file");
    if let Some(url) = &config.database_url {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while database::number(url, "SELECT count(*) FROM pg_largeobject_metadata") > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the finished job's upload is still stored"
            );
            actix_web::rt::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

#[actix_web::test]
async fn the_client_spec_holds_no_weights_and_a_stale_fingerprint_is_refused() {
    let (_dir, app) = fresh_app().await;
    let (status, body) = call(&app, Method::GET, "/api/v1/models/pneumonia-a", vec![]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.len() < 4096, "the spec is {} bytes", body.len());
    assert!(!body.windows(12).any(|w| w == b"HEXRAY-MODEL"));
    let spec = hexray_model::ClientSpec::from_json(&body).unwrap();
    assert_eq!(&spec, model().spec());
    let text = String::from_utf8(body.to_vec()).unwrap();
    for secret in [
        "weights",
        "bias",
        "functions",
        "input_scales",
        "acc_min",
        "sigma",
        "layers",
    ] {
        assert!(!text.contains(secret), "the spec mentions {secret}");
    }
    let (_, key) = shared_client();
    let id = register(&app, key).await;
    let stale = format!(
        "/api/v1/jobs?model=pneumonia-a&key={id}&fingerprint={}",
        "0".repeat(64)
    );
    assert_eq!(
        error(&app, Method::POST, &stale, vec![]).await,
        (StatusCode::CONFLICT, "stale_model".to_owned())
    );
}

#[actix_web::test]
async fn bodies_that_are_not_octet_streams_are_refused_before_they_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), 4);
    let app = app(&config).await;
    let (_, key) = shared_client();
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let mut request = test::TestRequest::post()
            .uri("/api/v1/keys")
            .insert_header(("authorization", format!("Bearer {}", token())));
        if let Some(t) = content_type {
            request = request.insert_header(("content-type", t));
        }
        let response =
            test::call_service(&app, request.set_payload(key.clone()).to_request()).await;
        assert_eq!(
            response.status(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{content_type:?}"
        );
    }
    assert_eq!(registrations(&config), 0);
    register(&app, key).await;
}

#[actix_web::test]
async fn a_token_over_its_key_quota_or_a_full_store_is_refused_and_the_server_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut limited = config(dir.path(), 4);
    limited.keys.per_owner = 1;
    let app = app(&limited).await;
    let (_, first) = shared_client();
    let (_, second) = client(2);
    register(&app, first).await;
    assert_eq!(
        error(&app, Method::POST, "/api/v1/keys", second.clone()).await,
        (StatusCode::TOO_MANY_REQUESTS, "key_quota".to_owned())
    );
    // The refusal comes before the body is read: bytes that are no key at all get the quota's
    // answer, not the parser's, and so does the token's own key when its upload does not
    // name it.
    for unread in [b"no key at all".to_vec(), first.clone()] {
        assert_eq!(
            error(&app, Method::POST, "/api/v1/keys", unread).await,
            (StatusCode::TOO_MANY_REQUESTS, "key_quota".to_owned())
        );
    }
    // The same key again, named, is no new key, and another token has its own quota.
    register(&app, first).await;
    let other = Some(tokens().1[1].as_str());
    let (status, _) = call_as(&app, other, Method::POST, "/api/v1/keys", second.clone()).await;
    assert_eq!(status, StatusCode::CREATED);

    let dir = tempfile::tempdir().unwrap();
    let mut small = config(dir.path(), 4);
    small.keys.storage_bytes = first.len() as u64 + 1000;
    let app = self::app(&small).await;
    register(&app, first).await;
    // Refused on the length it declares, before a byte of it is parsed.
    for unread in [second.clone(), vec![0; second.len()]] {
        assert_eq!(
            error(&app, Method::POST, "/api/v1/keys", unread).await,
            (StatusCode::INSUFFICIENT_STORAGE, "storage_full".to_owned())
        );
    }
    assert_eq!(
        registrations(&small),
        1,
        "nothing of the refused key is left"
    );
    let (status, _) = call(&app, Method::GET, "/api/v1/health", vec![]).await;
    assert_eq!(status, StatusCode::OK);
}

#[actix_web::test]
async fn a_token_hogging_the_queue_gets_429_while_another_tokens_job_runs() {
    let dir = tempfile::tempdir().unwrap();
    let mut limited = config(dir.path(), 8);
    limited.queue.per_owner = 1;
    let app = app(&limited).await;
    let (client, key) = shared_client();
    let id = register(&app, key).await;
    let other = Some(tokens().1[1].as_str());
    let (status, body) = call_as(&app, other, Method::POST, "/api/v1/keys", key.clone()).await;
    assert!(status.is_success(), "{body:?}");
    let names = ["pneumoniamnist/test-0234-normal.png"];
    let one = batch(client, &names);
    let (status, body) = call(&app, Method::POST, &job_uri(&id), one.clone()).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let hog = json(&body)["job_id"].as_str().unwrap().to_owned();
    for _ in 0..3 {
        assert_eq!(
            error(&app, Method::POST, &job_uri(&id), one.clone()).await,
            (StatusCode::TOO_MANY_REQUESTS, "too_many_jobs".to_owned())
        );
    }
    let (status, body) = call_as(&app, other, Method::POST, &job_uri(&id), one).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body:?}");
    let polite = json(&body)["job_id"].as_str().unwrap().to_owned();
    assert_eq!(wait(&app, &hog).await["state"], "done");
    let (status, body) = call_as(
        &app,
        other,
        Method::GET,
        &format!("/api/v1/jobs/{polite}"),
        vec![],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_ne!(json(&body)["state"], "failed");
}

#[actix_web::test]
async fn quotas_hold_when_two_requests_race_for_the_last_place() {
    let dir = tempfile::tempdir().unwrap();
    let mut limited = config(dir.path(), 8);
    limited.keys.per_owner = 1;
    limited.queue.per_owner = 1;
    let app = app(&limited).await;
    // Two different keys at once, with room for one.
    let clients = [shared_client().clone(), client(2)];
    let uploads = clients
        .iter()
        .map(|(_, bytes)| call(&app, Method::POST, "/api/v1/keys", bytes.clone()));
    let answers = futures_util::future::join_all(uploads).await;
    let mut statuses: Vec<StatusCode> = answers.iter().map(|(status, _)| *status).collect();
    statuses.sort();
    assert_eq!(
        statuses,
        [StatusCode::CREATED, StatusCode::TOO_MANY_REQUESTS],
        "{answers:?}"
    );
    assert_eq!(registrations(&limited), 1);
    // Two jobs at once, with room for one, under the key that won.
    let won = answers
        .iter()
        .position(|(status, _)| *status == StatusCode::CREATED)
        .unwrap();
    let id = json(&answers[won].1)["key_id"].as_str().unwrap().to_owned();
    let one = batch(&clients[won].0, &["pneumoniamnist/test-0234-normal.png"]);
    let uri = job_uri(&id);
    let jobs = [0, 1].map(|_| call(&app, Method::POST, &uri, one.clone()));
    let answers = futures_util::future::join_all(jobs).await;
    let mut statuses: Vec<StatusCode> = answers.iter().map(|(status, _)| *status).collect();
    statuses.sort();
    assert_eq!(
        statuses,
        [StatusCode::ACCEPTED, StatusCode::TOO_MANY_REQUESTS],
        "{answers:?}"
    );
    let accepted = answers
        .iter()
        .find(|(s, _)| *s == StatusCode::ACCEPTED)
        .unwrap();
    let job = json(&accepted.1)["job_id"].as_str().unwrap().to_owned();
    assert_eq!(wait(&app, &job).await["state"], "done");
}

#[actix_web::test]
async fn progress_streams_are_capped_per_job_and_ten_thousand_more_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut limited = config(dir.path(), 4);
    limited.limits.streams_per_job = 2;
    let app = app(&limited).await;
    let (client, key) = shared_client();
    let id = register(&app, key).await;
    let one = batch(client, &["pneumoniamnist/test-0234-normal.png"]);
    let (_, body) = call(&app, Method::POST, &job_uri(&id), one).await;
    let job = json(&body)["job_id"].as_str().unwrap().to_owned();
    let events = format!("/api/v1/jobs/{job}/events");
    let open = |_| {
        test::TestRequest::get()
            .uri(&events)
            .insert_header(("authorization", format!("Bearer {}", token())))
            .to_request()
    };
    // Two streams stay open (their responses are held, unread).
    let mut held = Vec::new();
    for i in 0..2 {
        let response = test::call_service(&app, open(i)).await;
        assert_eq!(response.status(), StatusCode::OK);
        held.push(response);
    }
    let mut refused = 0;
    for i in 0..10_000 {
        let response = test::call_service(&app, open(i)).await;
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            refused += 1;
        }
    }
    assert_eq!(refused, 10_000);
    // Closing one frees its slot.
    held.pop();
    assert_eq!(
        test::call_service(&app, open(0)).await.status(),
        StatusCode::OK
    );
    drop(held);
    assert_eq!(wait(&app, &job).await["state"], "done");
}

#[actix_web::test]
async fn a_damaged_key_is_quarantined_reported_unknown_and_repaired_by_a_new_upload() {
    let dir = tempfile::tempdir().unwrap();
    let (client, key) = shared_client();
    let config = config(dir.path(), 4);
    let id = {
        let app = app(&config).await;
        register(&app, key).await
    };
    damage_stored_key(&config);
    if config.database_url.is_none() {
        // A stray file and a crash's leftover do not stop a start.
        let stored = stored_keys(dir.path());
        std::fs::write(stored[0].with_file_name("notes.txt"), "x").unwrap();
        std::fs::write(stored[0].with_file_name(".x.partial"), "x").unwrap();
    }

    let app = app(&config).await;
    let names = ["covid-cxr-actualmed/covid-1.png"];
    assert_eq!(
        error(&app, Method::POST, &job_uri(&id), batch(client, &names)).await,
        (StatusCode::NOT_FOUND, "unknown_key".to_owned())
    );
    match &config.database_url {
        // The damaged copy is deleted.
        Some(_) => assert_eq!(registrations(&config), 0),
        None => assert_eq!(
            std::fs::read_dir(dir.path().join("quarantine"))
                .unwrap()
                .count(),
            1
        ),
    }
    let (status, body) = call(&app, Method::POST, "/api/v1/keys", key.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{body:?}");
    let (status, body) = call(&app, Method::POST, &job_uri(&id), batch(client, &names)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body:?}");
    let job = json(&body)["job_id"].as_str().unwrap().to_owned();
    assert_eq!(wait(&app, &job).await["state"], "done");
    check_outputs(&app, &job, client, &names).await;
}

/// Flips one bit in the middle of the one stored key's bytes, in either back end.
fn damage_stored_key(config: &Config) {
    match &config.database_url {
        Some(url) => database::execute(
            url,
            "UPDATE key_blobs SET bytes = set_byte(bytes, length(bytes) / 2, \
             get_byte(bytes, length(bytes) / 2) # 1)",
        ),
        None => {
            let stored = stored_keys(&config.data_dir);
            assert_eq!(stored.len(), 1);
            let mut bytes = std::fs::read(&stored[0]).unwrap();
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x01;
            std::fs::write(&stored[0], bytes).unwrap();
        }
    }
}

#[actix_web::test]
async fn a_job_is_refused_on_its_cheap_checks_before_its_key_is_read_and_a_key_is_read_once() {
    let dir = tempfile::tempdir().unwrap();
    let (_, key) = shared_client();
    let config = config(dir.path(), 4);
    let id = {
        let app = app(&config).await;
        register(&app, key).await
    };
    // A node that has not seen the key yet: neither expanded nor checked.
    let app = app(&config).await;
    damage_stored_key(&config);
    let bare = |content_type: &str, length: usize| {
        test::TestRequest::post()
            .uri(&job_uri(&id))
            .insert_header(("authorization", format!("Bearer {}", token())))
            .insert_header(("content-type", content_type.to_owned()))
            .insert_header(("content-length", length.to_string()))
            .to_request()
    };
    for (request, refusal) in [
        (bare("text/plain", 0), StatusCode::UNSUPPORTED_MEDIA_TYPE),
        (
            bare("application/octet-stream", usize::MAX / 2),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
    ] {
        assert_eq!(test::call_service(&app, request).await.status(), refusal);
    }
    assert_eq!(
        registrations(&config),
        1,
        "a refused request read the stored key and found it damaged"
    );
    // The first real look at the key finds the damage and forgets the key.
    assert_eq!(
        error(&app, Method::POST, &job_uri(&id), vec![1, 2, 3]).await,
        (StatusCode::NOT_FOUND, "unknown_key".to_owned())
    );
    assert_eq!(registrations(&config), 0);

    // Repaired, the key is read and hashed once per node: later submissions do not read it.
    register(&app, key).await;
    assert_eq!(
        error(&app, Method::POST, &job_uri(&id), vec![1, 2, 3]).await,
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            "malformed_ciphertext".to_owned()
        )
    );
    damage_stored_key(&config);
    assert_eq!(
        error(&app, Method::POST, &job_uri(&id), vec![1, 2, 3]).await,
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            "malformed_ciphertext".to_owned()
        ),
        "the checked key was read again"
    );
}

#[actix_web::test]
async fn concurrent_uploads_of_one_key_store_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), 4);
    let app = app(&config).await;
    let (_, key) = shared_client();
    let other = Some(tokens().1[1].as_str());
    // Each token has two upload slots: two at once from one token both go through.
    let uploads = (0..2).map(|_| call(&app, Method::POST, "/api/v1/keys", key.clone()));
    let answers = futures_util::future::join_all(uploads).await;
    let created: Vec<bool> = answers
        .iter()
        .map(|(status, body)| {
            assert!(status.is_success(), "{status}: {body:?}");
            json(body)["created"].as_bool().unwrap()
        })
        .collect();
    assert_eq!(created.iter().filter(|&&c| c).count(), 1, "{created:?}");
    let (status, _) = call_as(&app, other, Method::POST, "/api/v1/keys", key.clone()).await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "the other token stores its own copy"
    );
    assert_eq!(registrations(&config), 2);
    match &config.database_url {
        Some(url) => assert_eq!(
            database::number(url, "SELECT count(*) FROM key_blobs"),
            1,
            "the database keeps the bytes once for both tokens"
        ),
        None => assert!(stored_keys(dir.path())
            .iter()
            .all(|f| f.extension().is_some_and(|e| e == "key"))),
    }
}

#[actix_web::test]
async fn keys_unused_for_longer_than_the_expiry_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (_, key) = shared_client();
    let config = config(dir.path(), 4);
    let id = {
        let app = app(&config).await;
        register(&app, key).await
    };
    match &config.database_url {
        Some(url) => database::execute(
            url,
            "UPDATE key_owners SET last_used = now() - interval '91 days'",
        ),
        None => {
            let stored = stored_keys(dir.path());
            let long_ago = std::time::SystemTime::now() - Duration::from_secs(91 * 86_400);
            std::fs::File::options()
                .append(true)
                .open(&stored[0])
                .unwrap()
                .set_modified(long_ago)
                .unwrap();
        }
    }
    let app = app(&config).await;
    let (status, _) = call(&app, Method::GET, &format!("/api/v1/keys/{id}"), vec![]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(registrations(&config), 0, "the expired key is deleted");
}

#[actix_web::test]
async fn finished_jobs_are_removed_on_a_timer_after_their_retention() {
    let dir = tempfile::tempdir().unwrap();
    let mut short = config(dir.path(), 4);
    short.queue.retention = Duration::from_secs(1);
    let app = app(&short).await;
    let (client, key) = shared_client();
    let id = register(&app, key).await;
    let one = batch(client, &["pneumoniamnist/test-0234-normal.png"]);
    let (_, body) = call(&app, Method::POST, &job_uri(&id), one).await;
    let job = json(&body)["job_id"].as_str().unwrap().to_owned();
    assert_eq!(wait(&app, &job).await["state"], "done");
    // No other request arrives: only the timer can remove it.
    actix_web::rt::time::sleep(Duration::from_secs(2)).await;
    let (status, body) = call(&app, Method::GET, &format!("/api/v1/jobs/{job}"), vec![]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(json(&body)["code"], "unknown_job");
}

/// The status events of a progress stream, read whole: it ends by itself after the final
/// event, or the deadline fails the test.
async fn whole_stream(response: ServiceResponse) -> Vec<Value> {
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
fn status_events(stream: &str) -> Vec<Value> {
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

#[actix_web::test]
async fn the_progress_stream_runs_to_the_finished_job_and_then_ends() {
    let (_dir, app) = fresh_app().await;
    let (client, key) = shared_client();
    let id = register(&app, key).await;
    let two = batch(
        client,
        &[
            "pneumoniamnist/test-0234-normal.png",
            "pneumoniamnist/test-0000-pneumonia.png",
        ],
    );
    let (_, body) = call(&app, Method::POST, &job_uri(&id), two).await;
    let job = json(&body)["job_id"].as_str().unwrap().to_owned();
    let open = || {
        test::TestRequest::get()
            .uri(&format!("/api/v1/jobs/{job}/events"))
            .insert_header(("authorization", format!("Bearer {}", token())))
            .to_request()
    };
    let response = test::call_service(&app, open()).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers().get("content-type").unwrap(),
        "text/event-stream"
    );
    let events = whole_stream(response).await;
    assert!(events.len() >= 2, "{events:?}");
    let total = 2 * model().circuit().bootstrap_count();
    let order = |state: &Value| {
        ["queued", "running", "done"]
            .iter()
            .position(|s| state == s)
    };
    for pair in events.windows(2) {
        assert!(
            order(&pair[0]["state"]) <= order(&pair[1]["state"]),
            "{pair:?}"
        );
        let done = |e: &Value| e["bootstraps_done"].as_u64().unwrap();
        assert!(done(&pair[0]) <= done(&pair[1]), "progress never goes back");
    }
    let last = events.last().unwrap();
    assert_eq!(last["state"], "done");
    assert_eq!(
        last["node"].as_str(),
        Some(hexray_evaluator::server::node_name().as_str())
    );
    assert!(events
        .iter()
        .all(|e| (e["state"] == "queued") == e["node"].is_null()));
    assert_eq!(last["bootstraps_done"], total);
    assert!(
        events[..events.len() - 1]
            .iter()
            .all(|e| e["state"] != "done"),
        "one final event, last"
    );
    // A stream opened after the end sends the final status at once and ends.
    let late = test::call_service(&app, open()).await;
    let late = actix_web::body::to_bytes(late.into_body()).await.unwrap();
    let late = status_events(std::str::from_utf8(&late).unwrap());
    assert_eq!(late.len(), 1);
    assert_eq!(late[0]["state"], "done");
}
