//! The bulk path through the HTTP API: its spec, switching it off, and a bulk job end to end
//! with every bad upload refused in words.

use crate::support::{
    app, call, call_as, config, error, fresh_app, json, token, tokens, whole_stream,
};
use actix_web::http::{Method, StatusCode};
use actix_web::test;
use hexray_engine::LoadedModel;
use hexray_model::bulk_spec::BulkSpec;
use hexray_test_kit::{database, fixtures};
use std::time::Duration;

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
    // One bulk job's worth: every bulk job is charged its batch's every slot.
    config.queue.bulk_images_per_owner = hexray_bulk::parameters::DEGREE;
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

    // An empty body asks whether there is room now, and takes nothing.
    let (status, _) = call(&app, Method::POST, &uri, vec![]).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        error(&app, Method::POST, &stale, vec![]).await,
        (StatusCode::CONFLICT, "stale_model".to_owned())
    );

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
    // The token's image quota (8192 here) is spent by the job the server keeps, though it
    // declared 3 images: the client can decrypt all 8192 slots of its results, so every bulk
    // job is charged them all. The same batch again is refused; its upload is dropped, file
    // and large object.
    assert_eq!(
        error(&app, Method::POST, &uri, upload).await,
        (StatusCode::TOO_MANY_REQUESTS, "image_quota".to_owned())
    );
    assert_eq!(
        error(&app, Method::POST, &uri, vec![]).await,
        (StatusCode::TOO_MANY_REQUESTS, "image_quota".to_owned()),
        "the room check gives the refusal a batch would get"
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
