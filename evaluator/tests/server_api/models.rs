//! Models: each listed with its card's summary, its card served, and a client spec that holds
//! no weights, with a stale fingerprint refused.

use crate::support::{call, error, fresh_app, json, model, register, shared_client};
use actix_web::http::{Method, StatusCode};
use hexray_evaluator::server::models::card_summary;

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
