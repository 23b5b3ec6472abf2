//! Two evaluator nodes on one PostgreSQL database share their registered keys: a key uploaded
//! to one node is usable on the other, one key uploaded to both at once is stored once, and a
//! node reconnects after the database restarts.
//!
//! `scripts/test.sh` starts a private PostgreSQL (`scripts/postgres.sh`) and passes its URL in
//! `HEXRAY_TEST_DATABASE_URL`; each test makes a database of its own. Without it, the tests
//! say so and pass, as on a machine where PostgreSQL cannot be installed.

// Each test holds `SERVER` across its awaits on purpose: each runs on its own thread and
// runtime, so the lock orders whole tests and cannot deadlock.
#![allow(clippy::await_holding_lock)]

mod common;

use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceResponse};
use actix_web::http::{Method, StatusCode};
use actix_web::{test, web, App};
use hexray_crypto::{frames, ClientKey, EncryptedOutput, ParameterSet};
use hexray_engine::LoadedModel;
use hexray_evaluator::server::auth::Access;
use hexray_evaluator::server::{configure, AppState, Config};
use serde_json::Value;

/// Held shared by every test, and alone by the one that restarts the database server.
static SERVER: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// A fresh database on the test server, or `None` (said on stderr) without one.
fn database(name: &str) -> Option<String> {
    let Ok(admin) = std::env::var("HEXRAY_TEST_DATABASE_URL") else {
        eprintln!(
            "skipped: HEXRAY_TEST_DATABASE_URL is not set (scripts/test.sh starts PostgreSQL)"
        );
        return None;
    };
    let name = format!("hexray_{name}_{}", std::process::id());
    // The blocking driver runs on a thread of its own, away from the test's async runtime.
    let url = std::thread::spawn(move || {
        let mut client = postgres::Client::connect(&admin, postgres::NoTls).unwrap();
        // One statement each: neither may run in the implicit transaction of a batch.
        for sql in [
            format!("DROP DATABASE IF EXISTS {name}"),
            format!("CREATE DATABASE {name}"),
        ] {
            client.simple_query(&sql).unwrap();
        }
        let (base, _) = admin.rsplit_once('/').unwrap();
        format!("{base}/{name}")
    })
    .join()
    .unwrap();
    Some(url)
}

/// Runs one query on `url`, away from the async runtime.
fn count(url: &str, sql: &'static str) -> i64 {
    let url = url.to_owned();
    std::thread::spawn(move || {
        let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        client.query_one(sql, &[]).unwrap().get(0)
    })
    .join()
    .unwrap()
}

/// A node: its own data directory, the shared database.
async fn node(
    url: &str,
    data: &std::path::Path,
    name: &str,
) -> impl Service<actix_http::Request, Response = ServiceResponse, Error = actix_web::Error> {
    let mut config = Config::defaults(data, 2);
    config.database_url = Some(url.to_owned());
    config.node = name.to_owned();
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
) -> Option<
    Nodes<impl Service<actix_http::Request, Response = ServiceResponse, Error = actix_web::Error>>,
> {
    let shared = SERVER.read().unwrap_or_else(|e| e.into_inner());
    let url = database(test)?;
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let a = node(&url, dirs[0].path(), "a").await;
    let b = node(&url, dirs[1].path(), "b").await;
    Some(Nodes {
        url,
        dirs,
        a,
        b,
        shared,
    })
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
    LoadedModel::from_file(&common::repo().join("models/pneumonia-mlp-64.hexray")).unwrap()
}

#[actix_web::test]
async fn a_key_registered_on_one_node_runs_a_job_on_the_other() {
    let Some(Nodes {
        url: _,
        dirs,
        a,
        b,
        shared: _shared,
    }) = two_nodes("handover").await
    else {
        return;
    };
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
    let input = common::sample(&model, "pneumoniamnist/test-0000-pneumonia.png");
    let image = client
        .encrypt_deterministic(model.spec(), input.view(), 1)
        .unwrap();
    let uri = format!(
        "/api/v1/jobs?model=pneumonia-mlp-64&key={key}&fingerprint={}",
        model.spec().fingerprint
    );
    let batch = frames::pack(&[image.to_bytes().unwrap()]);
    let (status, body, _) = call(&b, Method::POST, &uri, batch).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let job = body["job_id"].as_str().unwrap().to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "job {job} did not finish"
        );
        let (_, status, _) = call(&b, Method::GET, &format!("/api/v1/jobs/{job}"), vec![]).await;
        if status["state"] == "done" {
            assert_eq!(status["node"], "b", "the node that ran it says so");
            break;
        }
        assert_ne!(status["state"], "failed", "{status}");
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, _, outputs) = call(
        &b,
        Method::GET,
        &format!("/api/v1/jobs/{job}/outputs"),
        vec![],
    )
    .await;
    let output = frames::unpack(&outputs, 1).unwrap()[0];
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
    assert!(spread.contains(&prediction, 0.05), "{prediction:?}");
    assert!(shown.class < 2);
    assert!(
        !dirs[1].path().join("keys").exists(),
        "node B keeps no key on disk"
    );
}

#[actix_web::test]
async fn one_key_uploaded_to_both_nodes_at_once_is_stored_once() {
    let Some(Nodes {
        url,
        dirs: _dirs,
        a,
        b,
        shared: _shared,
    }) = two_nodes("race").await
    else {
        return;
    };
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
async fn a_node_reconnects_after_the_database_restarts() {
    let _alone = SERVER.write().unwrap_or_else(|e| e.into_inner());
    let Some(url) = database("restart") else {
        return;
    };
    let Ok(cluster) = std::env::var("HEXRAY_TEST_POSTGRES_DIR") else {
        eprintln!("skipped: HEXRAY_TEST_POSTGRES_DIR is not set (scripts/test.sh sets it)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let a = node(&url, dir.path(), "a").await;
    let (_, key) = register(&a, 5).await;
    let restart = std::process::Command::new("bash")
        .arg(common::repo().join("scripts/postgres.sh"))
        .args(["restart", &cluster])
        .status()
        .unwrap();
    assert!(restart.success());
    // The pooled connection broke with the restart; the node reconnects by itself.
    for _ in 0..3 {
        let (status, body, _) = call(&a, Method::GET, &format!("/api/v1/keys/{key}"), vec![]).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
}
