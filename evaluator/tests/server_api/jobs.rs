//! Jobs: a full queue answers 503 and every accepted job finishes, concurrent clients get
//! correct results, and finished jobs are removed after their retention.

use crate::support::{
    app, batch, call, check_outputs, client, config, job_uri, json, register, shared_client, token,
    wait,
};
use actix_web::body::MessageBody;
use actix_web::http::{Method, StatusCode};
use actix_web::test;
use std::time::Duration;

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
