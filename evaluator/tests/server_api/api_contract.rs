//! The API's contract: every error path answers JSON with a stable code, random and truncated
//! bodies never get a 5xx, bodies of the wrong type are refused unread, and the OpenAPI
//! description matches the routes.

use crate::support::{
    app, batch, call, config, error, fresh_app, job_uri, json, model, register, registrations,
    shared_client, token, wait,
};
use actix_web::dev::{Service, ServiceResponse};
use actix_web::http::{Method, StatusCode};
use actix_web::test;
use hexray_crypto::{batch_body, ClientKey, ParameterSet};
use hexray_evaluator::server::error::ErrorCode;
use hexray_evaluator::server::routes::ROUTES;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[actix_web::test]
async fn every_error_path_answers_json_with_a_stable_code() {
    let (_dir, app) = fresh_app().await;
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
    let (_other, app) = fresh_app().await;
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
