//! A tower layer that records the go-grpc-prometheus server metrics for every RPC: started, handled
//! (by gRPC status code, read from the response headers or trailers) and handling time until the
//! last message was sent. Health and reflection RPCs are counted too; unknown paths are labelled
//! `unknown` so label values stay bounded.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use http_body::{Body, Frame, SizeHint};
use metrics::{counter, histogram};
use pin_project_lite::pin_project;

use super::metrics::{GRPC_HANDLED, GRPC_HANDLING_SECONDS, GRPC_STARTED};
use crate::rpcs;

#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcMetricsLayer;

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics { inner }
    }
}

#[derive(Debug, Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
}

/// Static labels of one RPC.
#[derive(Debug, Clone, Copy)]
struct Labels {
    service: &'static str,
    method: &'static str,
    kind: &'static str,
}

impl Labels {
    fn of(path: &str) -> Labels {
        if let Some(rpc) = rpcs::lookup(path) {
            return Labels {
                service: rpcs::SERVICE,
                method: rpc.name,
                kind: rpc.kind.label(),
            };
        }
        let known: &[(&str, &str, &str, &str)] = &[
            (
                "/grpc.health.v1.Health/Check",
                "grpc.health.v1.Health",
                "Check",
                "unary",
            ),
            (
                "/grpc.health.v1.Health/Watch",
                "grpc.health.v1.Health",
                "Watch",
                "server_stream",
            ),
            (
                "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                "grpc.reflection.v1.ServerReflection",
                "ServerReflectionInfo",
                "bidi_stream",
            ),
            (
                "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                "grpc.reflection.v1alpha.ServerReflection",
                "ServerReflectionInfo",
                "bidi_stream",
            ),
        ];
        for (p, service, method, kind) in known {
            if *p == path {
                return Labels {
                    service,
                    method,
                    kind,
                };
            }
        }
        Labels {
            service: "unknown",
            method: "unknown",
            kind: "unknown",
        }
    }

    fn started(&self) {
        counter!(GRPC_STARTED, "grpc_type" => self.kind, "grpc_service" => self.service, "grpc_method" => self.method)
            .increment(1);
    }

    fn handled(&self, code: tonic::Code, start: Instant) {
        counter!(GRPC_HANDLED, "grpc_type" => self.kind, "grpc_service" => self.service,
            "grpc_method" => self.method, "grpc_code" => code_name(code))
        .increment(1);
        histogram!(GRPC_HANDLING_SECONDS, "grpc_type" => self.kind, "grpc_service" => self.service,
            "grpc_method" => self.method)
        .record(start.elapsed().as_secs_f64());
    }
}

/// The code names go-grpc-prometheus uses (Go's `codes.Code.String()`).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "Canceled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

fn status_in(headers: &http::HeaderMap) -> Option<tonic::Code> {
    headers
        .get("grpc-status")
        .map(|v| tonic::Code::from_bytes(v.as_bytes()))
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for GrpcMetrics<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<MeteredBody<ResBody>>;
    type Error = S::Error;
    type Future = MeteredFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let labels = Labels::of(req.uri().path());
        labels.started();
        MeteredFuture {
            inner: self.inner.call(req),
            labels: Some(labels),
            start: Instant::now(),
        }
    }
}

pin_project! {
    pub struct MeteredFuture<F> {
        #[pin]
        inner: F,
        labels: Option<Labels>,
        start: Instant,
    }
}

impl<F, ResBody, E> Future for MeteredFuture<F>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
{
    type Output = Result<http::Response<MeteredBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        let labels = this.labels.take().expect("polled after completion");
        let start = *this.start;
        Poll::Ready(match result {
            Ok(response) => {
                // A trailers-only response (most errors) carries its status in the headers.
                let pending = match status_in(response.headers()) {
                    Some(code) => {
                        labels.handled(code, start);
                        None
                    }
                    None => Some((labels, start)),
                };
                Ok(response.map(|body| MeteredBody {
                    inner: body,
                    pending,
                }))
            }
            Err(e) => {
                labels.handled(tonic::Code::Internal, start);
                Err(e)
            }
        })
    }
}

pin_project! {
    /// Records the RPC when its trailers go out, or as `Canceled` if the body is dropped first.
    pub struct MeteredBody<B> {
        #[pin]
        inner: B,
        pending: Option<(Labels, Instant)>,
    }
    impl<B> PinnedDrop for MeteredBody<B> {
        fn drop(this: Pin<&mut Self>) {
            if let Some((labels, start)) = this.project().pending.take() {
                labels.handled(tonic::Code::Cancelled, start);
            }
        }
    }
}

impl<B: Body> Body for MeteredBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(trailers) = f.trailers_ref()
                    && let Some((labels, start)) = this.pending.take()
                {
                    labels.handled(status_in(trailers).unwrap_or(tonic::Code::Unknown), start);
                }
            }
            Some(Err(_)) => {
                if let Some((labels, start)) = this.pending.take() {
                    labels.handled(tonic::Code::Internal, start);
                }
            }
            None => {
                if let Some((labels, start)) = this.pending.take() {
                    labels.handled(tonic::Code::Unknown, start);
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
