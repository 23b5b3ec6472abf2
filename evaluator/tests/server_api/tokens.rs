//! Access tokens and quotas: the routes a client works with need a token (the health check
//! answers anyone, with less), each token sees only its own keys and jobs, and quotas hold
//! under load and races.

use crate::support::{
    app, batch, call, call_as, client, config, error, fresh_app, job_uri, json, on_postgres,
    register, registrations, shared_client, tokens, wait,
};
use actix_web::dev::{Service, ServiceResponse};
use actix_web::http::header::HeaderValue;
use actix_web::http::{Method, StatusCode};
use actix_web::test;
use hexray_evaluator::server::client_address::TrustedProxies;

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
    let health = |_| {
        test::TestRequest::get()
            .uri("/api/v1/health")
            .peer_addr("127.0.0.1:40000".parse().unwrap())
            .to_request()
    };
    answered_until_refused(&app, health).await;
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
    // A proxy on this machine connects from loopback: what it relays is not a local scrape.
    for (name, value) in [
        ("x-forwarded-for", "192.0.2.7"),
        ("x-real-ip", "192.0.2.7"),
        ("forwarded", "for=192.0.2.7"),
    ] {
        let relayed = test::TestRequest::get()
            .uri("/metrics")
            .peer_addr("127.0.0.1:40000".parse().unwrap())
            .insert_header((name, value))
            .to_request();
        assert_eq!(
            test::call_service(&app, relayed).await.status(),
            StatusCode::UNAUTHORIZED,
            "{name}"
        );
    }
    let local = test::TestRequest::get()
        .uri("/metrics")
        .peer_addr("127.0.0.1:40000".parse().unwrap())
        .to_request();
    assert_eq!(
        test::call_service(&app, local).await.status(),
        StatusCode::OK
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

/// Behind a reverse proxy every request comes from the proxy's address. With the proxy named
/// trusted, requests without a token are limited per caller it relays for (the last address
/// in `X-Forwarded-For`, the one the proxy appended), so one caller spending its burst leaves
/// the others theirs; what the caller wrote in the header itself, and the header from a peer
/// that is not trusted, change nothing.
#[actix_web::test]
async fn behind_a_trusted_proxy_anonymous_requests_are_limited_per_caller() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), 4);
    config.trusted_proxies = TrustedProxies::new(vec!["127.0.0.0/8".parse().unwrap()]);
    let app = app(&config).await;
    let health = |peer: &str, forwarded_for: Vec<u8>| {
        let mut request = test::TestRequest::get()
            .uri("/api/v1/health")
            .peer_addr(format!("{peer}:40000").parse().unwrap());
        if !forwarded_for.is_empty() {
            let value = HeaderValue::from_bytes(&forwarded_for).unwrap();
            request = request.insert_header(("x-forwarded-for", value));
        }
        request.to_request()
    };
    // One caller, forging a new first entry each time, and a byte that is not ASCII on the line
    // the proxy appends to, spends its own burst.
    let forged = |i: usize| {
        let mut line = format!("203.0.113.{}, caf", i % 250).into_bytes();
        line.extend(b"\xe9, 198.51.100.4");
        health("127.0.0.1", line)
    };
    assert!(answered_until_refused(&app, forged).await > 0);
    // Not the proxy's, which its own requests (no header) spend.
    let own = test::call_service(&app, health("127.0.0.1", Vec::new())).await;
    assert_eq!(own.status(), StatusCode::OK);
    // Another caller through the same proxy still has its own.
    let other = test::call_service(&app, health("127.0.0.1", b"198.51.100.5".to_vec())).await;
    assert_eq!(other.status(), StatusCode::OK);
    // A peer that is no trusted proxy is limited as itself, whatever its header says.
    let claimed = |i: usize| health("192.0.2.7", format!("198.51.100.{}", i % 250).into_bytes());
    answered_until_refused(&app, claimed).await;
}

/// Sends `request(0)`, `request(1)`… at once until one is refused with 429; returns how many
/// were answered before it. Fails when 300 are all answered: the anonymous limit's burst is 30,
/// and it refills at 10 a second.
async fn answered_until_refused<S>(
    app: &S,
    mut request: impl FnMut(usize) -> actix_http::Request,
) -> usize
where
    S: Service<actix_http::Request, Response = ServiceResponse, Error = actix_web::Error>,
{
    for i in 0..300 {
        let status = test::call_service(app, request(i)).await.status();
        if status == StatusCode::TOO_MANY_REQUESTS {
            return i;
        }
        assert_eq!(status, StatusCode::OK);
    }
    panic!("300 anonymous requests at once were all answered");
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
    // Forgetting a key frees its place at once. Another token cannot delete it, and a key
    // deleted is unknown.
    let first_id = hexray_evaluator::server::keys::key_id(first);
    let first_uri = format!("/api/v1/keys/{first_id}");
    let (status, _) = call_as(&app, other, Method::DELETE, &first_uri, vec![]).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "another token's key");
    let (status, _) = call(&app, Method::DELETE, &first_uri, vec![]).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        error(&app, Method::GET, &first_uri, vec![]).await,
        (StatusCode::NOT_FOUND, "unknown_key".to_owned())
    );
    assert_eq!(
        error(&app, Method::DELETE, &first_uri, vec![]).await,
        (StatusCode::NOT_FOUND, "unknown_key".to_owned())
    );
    let (status, _) = call(&app, Method::POST, "/api/v1/keys", second.clone()).await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "the freed place takes a new key"
    );
    // The other token's copy of that key is its own, and stays.
    let second_uri = format!(
        "/api/v1/keys/{}",
        hexray_evaluator::server::keys::key_id(&second)
    );
    let (status, _) = call(&app, Method::DELETE, &second_uri, vec![]).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = call_as(&app, other, Method::GET, &second_uri, vec![]).await;
    assert_eq!(status, StatusCode::OK);

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
