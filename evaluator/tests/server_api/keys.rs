//! Evaluation keys: registrations survive a restart, a damaged key is quarantined, a key is
//! read once and only after a job's cheap checks, concurrent uploads store one key, and unused
//! keys expire.

use crate::support::{
    app, batch, call, call_as, check_outputs, config, error, job_uri, json, register,
    registrations, shared_client, stored_keys, token, tokens, wait,
};
use actix_web::http::{Method, StatusCode};
use actix_web::test;
use hexray_crypto::ParameterSet;
use hexray_evaluator::server::Config;
use hexray_test_kit::database;
use std::time::Duration;

/// Registers `key` on a server for `config` that then stops, so that the next server on the
/// same storage starts with the key stored and not yet read; returns the key's id.
async fn registered_on_a_stopped_server(config: &Config, key: &[u8]) -> String {
    let app = app(config).await;
    register(&app, key).await
}

#[actix_web::test]
async fn key_registrations_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (client, key) = shared_client();
    let id = registered_on_a_stopped_server(&config(dir.path(), 4), key).await;
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
async fn a_damaged_key_is_quarantined_reported_unknown_and_repaired_by_a_new_upload() {
    let dir = tempfile::tempdir().unwrap();
    let (client, key) = shared_client();
    let config = config(dir.path(), 4);
    let id = registered_on_a_stopped_server(&config, key).await;
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
    let id = registered_on_a_stopped_server(&config, key).await;
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
    let id = registered_on_a_stopped_server(&config, key).await;
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
