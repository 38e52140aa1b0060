//! The floor of nestdock's benchmark: what a webhook costs when it does
//! nothing but terminate TLS, read the body, parse it into a
//! `serde_json::Value` and answer a small fixed AdmissionReview that allows
//! the pod (the request's uid spliced in, so that it is an answer the API
//! server would accept).
//!
//! The transport is nestdock's, setting for setting
//! (`nestdock_bench::transport`): any difference the benchmark shows between
//! this server and `nestdock serve` is in the request path.

use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use nestdock_bench::transport::{self, Args, MAX_BODY_BYTES};
use serde_json::Value;

fn main() -> std::process::ExitCode {
    let args = Args::from_env("nestdock-floor");
    let router = Router::new()
        .route("/mutate", post(mutate))
        .route("/healthz", get(|| async { "ok\n" }))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES));
    match transport::run(args, router) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn mutate(body: Bytes) -> Response {
    let review: Value = match serde_json::from_slice(&body) {
        Ok(review) => review,
        Err(e) => {
            return (StatusCode::BAD_REQUEST, format!("malformed JSON: {e}\n")).into_response()
        }
    };
    let uid = review
        .pointer("/request/uid")
        .and_then(Value::as_str)
        .unwrap_or("");
    // The uid as a JSON string (escaped), in a fixed answer.
    let uid = Value::from(uid).to_string();
    let answer = format!(
        r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{{"uid":{uid},"allowed":true}}}}"#
    );
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        answer,
    )
        .into_response()
}
