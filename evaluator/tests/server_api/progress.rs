//! Progress streams: capped per job, and each runs to its job's end and then ends.

use crate::support::{
    app, batch, call, config, fresh_app, job_uri, json, model, register, shared_client,
    status_events, token, wait, whole_stream,
};
use actix_web::http::{Method, StatusCode};
use actix_web::test;
use serde_json::Value;

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
    // The node that evaluated it, as health names the node that answers.
    let (_, health) = call(&app, Method::GET, "/api/v1/health", vec![]).await;
    assert_eq!(last["node"], json(&health)["node"]);
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
