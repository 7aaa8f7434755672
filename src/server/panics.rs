//! Handler panics: a panic while handling an RPC (a bug, never an expected outcome) is caught by a
//! `CatchPanicLayer` around the services and answered with INTERNAL, so the connection and the
//! other RPCs on it carry on. Each one is logged at ERROR, counted in `taskqueue_grpc_panics_total`
//! and in [`caught`] (tests fail when it is not zero). Panics in the body of a streaming answer
//! after its first message are not caught here: the stream is reset.

use std::any::Any;
use std::sync::atomic::{AtomicU64, Ordering};

use tower_http::catch_panic::{CatchPanicLayer, ResponseForPanic};

use crate::telemetry::metrics as m;

static CAUGHT: AtomicU64 = AtomicU64::new(0);

/// Handler panics caught in this process since it started.
pub fn caught() -> u64 {
    CAUGHT.load(Ordering::Relaxed)
}

/// The layer to put around the gRPC services.
pub fn layer() -> CatchPanicLayer<AnswerInternal> {
    CatchPanicLayer::custom(AnswerInternal)
}

/// Answers a caught panic with gRPC status INTERNAL (a trailers-only response).
#[derive(Debug, Clone, Copy, Default)]
pub struct AnswerInternal;

impl ResponseForPanic for AnswerInternal {
    type ResponseBody = tonic::body::Body;

    fn response_for_panic(
        &mut self,
        err: Box<dyn Any + Send + 'static>,
    ) -> http::Response<Self::ResponseBody> {
        CAUGHT.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(m::GRPC_PANICS).increment(1);
        tracing::error!(panic = %panic_message(err.as_ref()), "an RPC handler panicked; answered INTERNAL");
        tonic::Status::internal(
            "internal error: the server hit a bug handling this request (logged)",
        )
        .into_http()
    }
}

fn panic_message(err: &(dyn Any + Send)) -> &str {
    if let Some(s) = err.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = err.downcast_ref::<String>() {
        s
    } else {
        "(no message)"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::{Layer as _, ServiceExt as _};

    /// A tiny service that panics on `/boom`, answers OK otherwise.
    async fn handler(
        req: http::Request<tonic::body::Body>,
    ) -> Result<http::Response<tonic::body::Body>, Infallible> {
        if req.uri().path() == "/boom" {
            panic!("handler bug");
        }
        Ok(tonic::Status::ok("").into_http())
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_internal_and_the_service_carries_on() {
        let service = layer().layer(tower::service_fn(handler));
        let before = caught();
        let request = |path: &str| {
            http::Request::builder()
                .uri(path)
                .body(tonic::body::Body::empty())
                .unwrap()
        };
        let answer = service.oneshot(request("/boom")).await.unwrap();
        assert_eq!(answer.status(), http::StatusCode::OK);
        let status = tonic::Status::from_header_map(answer.headers()).expect("a grpc-status");
        assert_eq!(status.code(), tonic::Code::Internal);
        assert!(status.message().contains("bug"), "{}", status.message());
        assert_eq!(caught(), before + 1);

        let answer = service.oneshot(request("/fine")).await.unwrap();
        let status = tonic::Status::from_header_map(answer.headers()).expect("a grpc-status");
        assert_eq!(status.code(), tonic::Code::Ok);
    }
}
