//! Two evaluator nodes in one process, on one PostgreSQL database, share their registered keys
//! and their job queue: a key uploaded to one node is usable on the other, a job submitted to
//! one is answered for by both, one key uploaded to both at once is stored once, and a node
//! reconnects after the database restarts, or when its connection drops before the reply to
//! a submission's COMMIT. `hexray-evaluator`'s `cluster` tests run nodes as
//! separate processes and kill one.
//!
//! The databases come from [`fixtures::database`].

// Each test holds `SERVER` across its awaits on purpose: each runs on its own thread and
// runtime, so the lock orders whole tests and cannot deadlock.
#![allow(clippy::await_holding_lock)]

use hexray_test_kit::lost_reply::LostReply;
use hexray_test_kit::{database, fixtures};

use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceResponse};
use actix_web::http::{Method, StatusCode};
use actix_web::{test, web, App};
use hexray_crypto::{batch_body, ClientKey, EncryptedOutput, ParameterSet};
use hexray_engine::LoadedModel;
use hexray_evaluator::server::auth::Access;
use hexray_evaluator::server::{configure, AppState, Config};
use serde_json::Value;

use database::{fresh, number as count};

/// Held shared by every test, and alone by the one that restarts the database server.
static SERVER: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// A node: its own data directory, the shared database.
async fn node(
    url: &str,
    data: &std::path::Path,
    name: &str,
) -> impl Service<actix_http::Request, Response = ServiceResponse, Error = actix_web::Error> {
    node_with(url, data, name, |_| {}).await
}

/// [`node`], with its configuration adjusted.
async fn node_with(
    url: &str,
    data: &std::path::Path,
    name: &str,
    adjust: impl FnOnce(&mut Config),
) -> impl Service<actix_http::Request, Response = ServiceResponse, Error = actix_web::Error> {
    let mut config = Config::defaults(data, 2);
    config.database_url = Some(url.to_owned());
    config.node = name.to_owned();
    adjust(&mut config);
    // A proxy in front authenticates: every request is one clinician's.
    let state = web::Data::new(AppState::start(&config, Access::Proxied).unwrap());
    test::init_service(App::new().configure(configure(state, None))).await
}

async fn call<S>(app: &S, method: Method, uri: &str, body: Vec<u8>) -> (StatusCode, Value, Vec<u8>)
where
    S: Service<actix_http::Request, Response = ServiceResponse, Error = actix_web::Error>,
{
    let request = test::TestRequest::default()
        .method(method)
        .uri(uri)
        .insert_header(("content-type", "application/octet-stream"))
        .peer_addr("127.0.0.1:40000".parse().unwrap())
        .set_payload(body)
        .to_request();
    let response = test::call_service(app, request).await;
    let status = response.status();
    let bytes = response.into_body().try_into_bytes().unwrap().to_vec();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, json, bytes)
}

/// Two nodes, `a` and `b`, on a fresh database, holding the test server shared.
/// Each test binds every field: the directories and the guard must live as long as the test.
struct Nodes<S> {
    url: String,
    dirs: [tempfile::TempDir; 2],
    a: S,
    b: S,
    shared: std::sync::RwLockReadGuard<'static, ()>,
}

async fn two_nodes(
    test: &str,
) -> Nodes<impl Service<actix_http::Request, Response = ServiceResponse, Error = actix_web::Error>>
{
    let shared = SERVER.read().unwrap_or_else(|e| e.into_inner());
    let url = fresh(test);
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let a = node(&url, dirs[0].path(), "a").await;
    let b = node(&url, dirs[1].path(), "b").await;
    Nodes {
        url,
        dirs,
        a,
        b,
        shared,
    }
}

/// Registers a fresh key (from `seed`) on `app`; returns its client key and id.
async fn register<S>(app: &S, seed: u128) -> (ClientKey, String)
where
    S: Service<actix_http::Request, Response = ServiceResponse, Error = actix_web::Error>,
{
    let (client, server_key) = ClientKey::generate_deterministic(ParameterSet::Ks32, seed);
    let upload = server_key.to_bytes().unwrap();
    let (status, body, _) = call(app, Method::POST, "/api/v1/keys", upload).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    (client, body["key_id"].as_str().unwrap().to_owned())
}

fn model() -> LoadedModel {
    LoadedModel::from_file(&fixtures::repo().join("models/pneumonia-mlp-64.hexray")).unwrap()
}

/// Submits one encrypted sample to `submit`, follows it on `ask` until it is done, and checks
/// that its output decrypts within the simulator's spread; returns its final status.
async fn run_job<S, T>(
    submit: &S,
    ask: &T,
    client: &ClientKey,
    key: &str,
    model: &LoadedModel,
) -> Value
where
    S: Service<actix_http::Request, Response = ServiceResponse, Error = actix_web::Error>,
    T: Service<actix_http::Request, Response = ServiceResponse, Error = actix_web::Error>,
{
    let input = fixtures::sample(model, "pneumoniamnist/test-0000-pneumonia.png");
    let image = client
        .encrypt_deterministic(model.spec(), input.view(), 1)
        .unwrap();
    let uri = format!(
        "/api/v1/jobs?model=pneumonia-mlp-64&key={key}&fingerprint={}",
        model.spec().fingerprint
    );
    let batch = batch_body::pack(&[image.to_bytes().unwrap()]);
    let (status, body, _) = call(submit, Method::POST, &uri, batch).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let job = body["job_id"].as_str().unwrap().to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    let status = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "job {job} did not finish"
        );
        let (_, status, _) = call(ask, Method::GET, &format!("/api/v1/jobs/{job}"), vec![]).await;
        if status["state"] == "done" {
            break status;
        }
        assert_ne!(status["state"], "failed", "{status}");
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    };
    let (_, _, outputs) = call(
        ask,
        Method::GET,
        &format!("/api/v1/jobs/{job}/outputs"),
        vec![],
    )
    .await;
    let output = batch_body::unpack(&outputs, 1).unwrap()[0];
    let output = EncryptedOutput::from_bytes(output, ParameterSet::Ks32, 2).unwrap();
    let shown = client.decrypt(model.spec(), &output).unwrap();
    let prediction = client.decrypt_prediction(model.circuit(), &output).unwrap();
    let spread = hexray_model::simulate::spread(
        model.circuit(),
        input.view(),
        200,
        &mut <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(1),
    )
    .unwrap();
    assert!(spread.contains(&prediction, 0.25), "{prediction:?}");
    assert!(shown.class < 2);
    status
}

#[actix_web::test]
#[ignore = "needs PostgreSQL: scripts/test.sh starts one and runs it"]
async fn a_key_registered_on_one_node_runs_a_job_on_the_other() {
    let Nodes {
        url: _,
        dirs,
        a,
        b,
        shared: _shared,
    } = two_nodes("handover").await;
    let model = model();
    let (client, key) = register(&a, 3).await;
    // Each node says who it is and where keys live.
    for (app, name) in [(&a, "a"), (&b, "b")] {
        let (_, health, _) = call(app, Method::GET, "/api/v1/health", vec![]).await;
        assert_eq!(
            (health["node"].as_str(), health["storage"].as_str()),
            (Some(name), Some("postgres"))
        );
    }
    // Node B never saw the upload, and its data directory holds no key.
    let (status, _, _) = call(&b, Method::GET, &format!("/api/v1/keys/{key}"), vec![]).await;
    assert_eq!(status, StatusCode::OK);
    // Either node may take it from the shared queue, and node A answers for it too.
    let status = run_job(&b, &a, &client, &key, &model).await;
    assert!(
        ["a", "b"].contains(&status["node"].as_str().unwrap()),
        "the node that ran it says so: {status}"
    );
    assert!(
        !dirs[1].path().join("keys").exists(),
        "node B keeps no key on disk"
    );
}

#[actix_web::test]
#[ignore = "needs PostgreSQL: scripts/test.sh starts one and runs it"]
async fn one_key_uploaded_to_both_nodes_at_once_is_stored_once() {
    let Nodes {
        url,
        dirs: _dirs,
        a,
        b,
        shared: _shared,
    } = two_nodes("race").await;
    let (_, server_key) = ClientKey::generate_deterministic(ParameterSet::Ks32, 4);
    let bytes = server_key.to_bytes().unwrap();
    let (on_a, on_b) = futures_util::future::join(
        call(&a, Method::POST, "/api/v1/keys", bytes.clone()),
        call(&b, Method::POST, "/api/v1/keys", bytes.clone()),
    )
    .await;
    assert!(
        on_a.0.is_success() && on_b.0.is_success(),
        "{:?} {:?}",
        on_a.1,
        on_b.1
    );
    assert_eq!(on_a.1["key_id"], on_b.1["key_id"]);
    let created = [&on_a.1, &on_b.1]
        .iter()
        .filter(|b| b["created"] == true)
        .count();
    assert_eq!(created, 1, "exactly one upload created it");
    assert_eq!(count(&url, "SELECT count(*) FROM key_blobs"), 1);
    assert_eq!(count(&url, "SELECT count(*) FROM key_owners"), 1);

    // A copy damaged in the database is repaired by uploading the key again.
    let intact = "SELECT count(*) FROM key_blobs WHERE sha256(bytes) = decode(checksum, 'hex')";
    count(
        &url,
        "WITH d AS (UPDATE key_blobs SET bytes = bytes || '\\x01'::bytea \
         RETURNING 1) SELECT count(*) FROM d",
    );
    assert_eq!(count(&url, intact), 0, "the copy is damaged");
    let (status, body, _) = call(&a, Method::POST, "/api/v1/keys", bytes).await;
    assert_eq!(
        (status, &body["created"]),
        (StatusCode::OK, &Value::Bool(false))
    );
    assert_eq!(count(&url, intact), 1, "the upload repaired it");
}

#[actix_web::test]
#[ignore = "needs PostgreSQL: scripts/test.sh starts one and runs it"]
async fn a_node_reconnects_after_the_database_restarts_between_two_jobs() {
    let _alone = SERVER.write().unwrap_or_else(|e| e.into_inner());
    let url = fresh("restart");
    let cluster = std::env::var("HEXRAY_TEST_POSTGRES_DIR")
        .expect("HEXRAY_TEST_POSTGRES_DIR is not set: run scripts/test.sh");
    let dir = tempfile::tempdir().unwrap();
    let a = node(&url, dir.path(), "a").await;
    let model = model();
    let (client, key) = register(&a, 5).await;
    run_job(&a, &a, &client, &key, &model).await;
    let restart = std::process::Command::new("bash")
        .arg(fixtures::repo().join("scripts/postgres.sh"))
        .args(["restart", &cluster])
        .status()
        .unwrap();
    assert!(restart.success());
    // The pooled connection broke with the restart; the node reconnects by itself.
    for _ in 0..3 {
        let (status, body, _) = call(&a, Method::GET, &format!("/api/v1/keys/{key}"), vec![]).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    // Its workers claim from the database again.
    run_job(&a, &a, &client, &key, &model).await;
}

#[actix_web::test]
#[ignore = "needs PostgreSQL: scripts/test.sh starts one and runs it"]
async fn a_submission_whose_commit_reply_is_lost_is_queued_once_and_answered() {
    let _shared = SERVER.read().unwrap_or_else(|e| e.into_inner());
    let url = fresh("lost_reply");
    // The database commits the job, and the node's connection drops before it hears so: the
    // node retries on a new connection, and must find the job queued rather than insert it
    // again (which answered 500 for a queued job).
    let proxy = LostReply::start(&url, "INSERT INTO jobs ");
    let dir = tempfile::tempdir().unwrap();
    let a = node(&proxy.url(), dir.path(), "a").await;
    let model = model();
    let (client, key) = register(&a, 6).await;
    run_job(&a, &a, &client, &key, &model).await;
    assert_eq!(proxy.lost(), 1, "the reply to the job's COMMIT was lost");
    assert_eq!(
        count(&url, "SELECT count(*) FROM jobs"),
        1,
        "the job was queued once"
    );
}

/// Submits a two-image batch of the bundled sample to `app`; returns the job id.
async fn submit_two<S>(app: &S, client: &ClientKey, key: &str, model: &LoadedModel) -> String
where
    S: Service<actix_http::Request, Response = ServiceResponse, Error = actix_web::Error>,
{
    let input = fixtures::sample(model, "pneumoniamnist/test-0000-pneumonia.png");
    let image = client
        .encrypt_deterministic(model.spec(), input.view(), 1)
        .unwrap()
        .to_bytes()
        .unwrap();
    let uri = format!(
        "/api/v1/jobs?model=pneumonia-mlp-64&key={key}&fingerprint={}",
        model.spec().fingerprint
    );
    let (status, body, _) =
        call(app, Method::POST, &uri, batch_body::pack(&[&image, &image])).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    body["job_id"].as_str().unwrap().to_owned()
}

#[actix_web::test]
#[ignore = "needs PostgreSQL: scripts/test.sh starts one and runs it"]
async fn a_job_that_fails_on_a_worker_fails_whole_and_a_job_nobody_serves_fails_as_stale() {
    let _shared = SERVER.read().unwrap_or_else(|e| e.into_inner());
    let url = fresh("failures");
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    // A node that answers the API but evaluates nothing, with a short retention.
    let front = node_with(&url, dirs[0].path(), "front", |config| {
        config.queue.workers = 0;
        config.queue.retention = Duration::from_secs(3);
    })
    .await;
    let model = model();
    let (client, key) = register(&front, 6).await;
    let job = submit_two(&front, &client, &key, &model).await;
    // Beside it, a job of the same owner for a model version no node serves, queued an hour
    // ago (checked at the end).
    count(
        &url,
        "WITH s AS (INSERT INTO jobs (id, owner, model, fingerprint, key_id, images, \
         bootstraps_total, submitted) SELECT 'stale', owner, model, 'retired', key_id, 1, 1, \
         now() - interval '1 hour' FROM jobs LIMIT 1 RETURNING id), \
         i AS (INSERT INTO job_images (job_id, image, input) SELECT id, 0, '\\x00' FROM s \
         RETURNING 1) SELECT count(*) FROM i",
    );
    // The key's registration goes before any worker claims the job: the worker that does
    // fails it, with the code that tells the page to upload its key again.
    count(
        &url,
        "WITH d AS (DELETE FROM key_owners RETURNING 1) SELECT count(*) FROM d",
    );
    let _worker = node(&url, dirs[1].path(), "worker").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        let (_, status, _) =
            call(&front, Method::GET, &format!("/api/v1/jobs/{job}"), vec![]).await;
        if status["state"] == "failed" {
            break status;
        }
        assert_ne!(status["state"], "done", "{status}");
        assert!(std::time::Instant::now() < deadline, "{status}");
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status["error_code"], "unknown_key", "{status}");
    assert!(
        status.get("seconds").is_none(),
        "as the embedded queue: {status}"
    );
    let (code, body, _) = call(
        &front,
        Method::GET,
        &format!("/api/v1/jobs/{job}/outputs"),
        vec![],
    )
    .await;
    assert_eq!(
        (code, &body["code"]),
        (StatusCode::CONFLICT, &Value::from("job_failed"))
    );
    // Neither image can be claimed again, and no input is kept.
    assert_eq!(
        count(
            &url,
            "SELECT count(*) FROM job_images \
             WHERE job_id <> 'stale' AND state = 'failed' AND input IS NULL"
        ),
        2
    );

    // It fails as stale, having waited longer than the retention, which frees its owner's
    // share of the queue.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        let (_, status, _) = call(&front, Method::GET, "/api/v1/jobs/stale", vec![]).await;
        if status["state"] == "failed" {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "{status}");
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status["error_code"], "stale_model", "{status}");
}

/// Inserts a one-image job for pneumonia-mlp-64, as a node that accepted it stores it, with no
/// upload and, for an interactive job, a key no node has: whichever node claims it fails it.
fn insert_job(url: &str, id: &str, kind: &str, age: &str) {
    let fingerprint = model().spec().fingerprint.clone();
    let key = match kind {
        "bulk" => "NULL",
        _ => "'unregistered'",
    };
    count(
        url,
        &format!(
            "WITH s AS (INSERT INTO jobs (id, owner, model, fingerprint, kind, key_id, images, \
             bootstraps_total, submitted) VALUES ('{id}', 'a clinician', 'pneumonia-mlp-64', \
             '{fingerprint}', '{kind}', {key}, 1, 1, now() - interval '{age}') RETURNING id), \
             i AS (INSERT INTO job_images (job_id, image, input) SELECT id, 0, '\\x00' FROM s \
             RETURNING 1) SELECT count(*) FROM i"
        ),
    );
}

/// Waits until `done`, asking every 100 ms, and fails with `what` after 30 s.
async fn eventually(what: &str, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Claims made so far on job `id`'s image.
fn claims(url: &str, id: &str) -> i64 {
    count(
        url,
        &format!("SELECT coalesce(sum(attempt), 0) FROM job_images WHERE job_id = '{id}'"),
    )
}

/// A node started with `--bulk-queue-limit 0` claims no bulk job that another node accepted
/// (it would copy a few hundred MB into its own spool), though it claims interactive jobs,
/// while a node that takes bulk jobs claims it.
#[actix_web::test]
#[ignore = "needs PostgreSQL: scripts/test.sh starts one and runs it"]
async fn a_node_with_the_bulk_path_off_claims_no_bulk_job() {
    let _shared = SERVER.read().unwrap_or_else(|e| e.into_inner());
    let url = fresh("bulk_off");
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    // The node that starts first creates the schema.
    let _off = node_with(&url, dirs[0].path(), "off", |config| {
        config.queue.bulk_capacity = 0;
    })
    .await;
    insert_job(&url, "bulk", "bulk", "0 s");
    insert_job(&url, "interactive", "interactive", "0 s");
    eventually("no node claimed the interactive job", || {
        claims(&url, "interactive") > 0
    })
    .await;
    // A worker looks for work every 250 ms: a dozen more chances to claim the bulk job.
    actix_web::rt::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        claims(&url, "bulk"),
        0,
        "the node with the bulk path off claimed a bulk job"
    );
    let _on = node(&url, dirs[1].path(), "on").await;
    eventually("no node claimed the bulk job", || claims(&url, "bulk") > 0).await;
}

/// A bulk job that no node will claim, because the node sweeping has its bulk path off, fails
/// once it has waited the retention, as a job for a retired model does, rather than holding
/// its owner's share of the queue for ever.
#[actix_web::test]
#[ignore = "needs PostgreSQL: scripts/test.sh starts one and runs it"]
async fn a_bulk_job_no_node_takes_fails_after_the_retention() {
    let _shared = SERVER.read().unwrap_or_else(|e| e.into_inner());
    let url = fresh("bulk_stale");
    let dir = tempfile::tempdir().unwrap();
    let _off = node_with(&url, dir.path(), "off", |config| {
        config.queue.bulk_capacity = 0;
        config.queue.retention = Duration::from_secs(3);
    })
    .await;
    insert_job(&url, "waited", "bulk", "1 hour");
    let failed = "SELECT count(*) FROM jobs WHERE id = 'waited' AND state = 'failed' \
                  AND error_code = 'stale_model' AND error LIKE 'no node takes bulk jobs%'";
    eventually("the bulk job nobody takes still waits", || {
        count(&url, failed) > 0
    })
    .await;
    assert_eq!(claims(&url, "waited"), 0);
}
