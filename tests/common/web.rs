//! A client of the web listener for tests: HTTP/1.1 and HTTP/2 (prior knowledge) requests, and
//! the gRPC-Web framing (`application/grpc-web+proto` and `application/grpc-web-text`) written and
//! read by hand, as a browser's transport does it.

use std::collections::HashMap;
use std::net::SocketAddr;

use base64::Engine as _;
use bytes::{Buf as _, Bytes};
use http::{Request, Response, Version};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use prost::Message;

/// HTTP/1.1 or HTTP/2 to one web listener.
#[derive(Clone)]
pub struct Web {
    pub addr: SocketAddr,
    h1: Client<HttpConnector, Full<Bytes>>,
    h2: Client<HttpConnector, Full<Bytes>>,
}

impl Web {
    pub fn new(addr: SocketAddr) -> Web {
        Web {
            addr,
            h1: Client::builder(TokioExecutor::new()).build_http(),
            h2: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build_http(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sends `request` (its URI a path) over HTTP/1.1 or, with `Version::HTTP_2`, HTTP/2.
    pub async fn send(
        &self,
        version: Version,
        mut request: Request<Full<Bytes>>,
    ) -> Response<Incoming> {
        let uri = self.url(&request.uri().to_string());
        *request.uri_mut() = uri.parse().unwrap();
        let client = if version == Version::HTTP_2 {
            &self.h2
        } else {
            &self.h1
        };
        client
            .request(request)
            .await
            .expect("the web listener answers")
    }

    /// Sends and reads the whole answer.
    pub async fn fetch(
        &self,
        version: Version,
        request: Request<Full<Bytes>>,
    ) -> (http::response::Parts, Bytes) {
        let (parts, body) = self.send(version, request).await.into_parts();
        let body = body.collect().await.expect("a complete body").to_bytes();
        (parts, body)
    }

    pub async fn get(&self, path: &str) -> (http::response::Parts, Bytes) {
        self.fetch(
            Version::HTTP_11,
            Request::get(path).body(Full::new(Bytes::new())).unwrap(),
        )
        .await
    }

    /// A gRPC-Web unary call of `method` (e.g. "ListUsers") with `token`.
    pub async fn grpc_web<M: Message>(
        &self,
        version: Version,
        mode: Mode,
        method: &str,
        token: Option<&str>,
        message: &M,
    ) -> GrpcWebReply {
        let request = grpc_web_request(mode, method, token, frame(0, &message.encode_to_vec()));
        let (parts, body) = self.fetch(version, request).await;
        GrpcWebReply::parse(parts, &body, mode)
    }
}

/// The two gRPC-Web encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `application/grpc-web+proto`: binary frames.
    Binary,
    /// `application/grpc-web-text`: base64 frames (the UI's default).
    Text,
}

impl Mode {
    pub fn content_type(self) -> &'static str {
        match self {
            Mode::Binary => "application/grpc-web+proto",
            Mode::Text => "application/grpc-web-text",
        }
    }
}

/// A gRPC-Web request of `method` carrying `frames` (already framed, not yet base64).
pub fn grpc_web_request(
    mode: Mode,
    method: &str,
    token: Option<&str>,
    frames: Vec<u8>,
) -> Request<Full<Bytes>> {
    let body = match mode {
        Mode::Binary => frames,
        Mode::Text => base64::engine::general_purpose::STANDARD
            .encode(frames)
            .into_bytes(),
    };
    let mut builder = Request::post(format!("/taskqueue.TaskQueue/{method}"))
        .header("content-type", mode.content_type())
        .header("accept", mode.content_type())
        .header("x-grpc-web", "1")
        .header("x-user-agent", "grpc-web-javascript/0.1");
    if let Some(token) = token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    builder.body(Full::new(Bytes::from(body))).unwrap()
}

/// One gRPC frame: flag byte, big-endian length, payload.
pub fn frame(flag: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + payload.len());
    out.push(flag);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Decodes a grpc-web-text body: base64 chunks, each padded, one after another.
pub fn decode_text(body: &[u8]) -> Vec<u8> {
    let text: Vec<u8> = body
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let mut out = Vec::new();
    for group in text.chunks(4) {
        out.extend(
            base64::engine::general_purpose::STANDARD
                .decode(group)
                .expect("valid base64 in a grpc-web-text answer"),
        );
    }
    out
}

/// Splits decoded frames into messages and the trailer frame; returns what is left incomplete.
pub fn split_frames(
    mut data: &[u8],
    messages: &mut Vec<Bytes>,
    trailers: &mut HashMap<String, String>,
) -> usize {
    while data.len() >= 5 {
        let flag = data[0];
        let len = (&data[1..5]).get_u32() as usize;
        if data.len() < 5 + len {
            break;
        }
        let payload = &data[5..5 + len];
        if flag & 0x80 != 0 {
            for line in String::from_utf8_lossy(payload).split("\r\n") {
                if let Some((k, v)) = line.split_once(':') {
                    trailers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                }
            }
        } else {
            messages.push(Bytes::copy_from_slice(payload));
        }
        data = &data[5 + len..];
    }
    data.len()
}

/// A gRPC-Web answer, read whole.
#[derive(Debug)]
pub struct GrpcWebReply {
    pub http: http::response::Parts,
    pub messages: Vec<Bytes>,
    /// The trailer frame's fields, or (for a trailers-only answer) the status headers.
    pub trailers: HashMap<String, String>,
}

impl GrpcWebReply {
    pub fn parse(http: http::response::Parts, body: &[u8], mode: Mode) -> GrpcWebReply {
        let data = match mode {
            Mode::Binary => body.to_vec(),
            Mode::Text => decode_text(body),
        };
        let mut messages = Vec::new();
        let mut trailers = HashMap::new();
        let left = split_frames(&data, &mut messages, &mut trailers);
        assert_eq!(left, 0, "a truncated grpc-web frame in the answer");
        for key in ["grpc-status", "grpc-message"] {
            if let Some(v) = http.headers.get(key) {
                trailers
                    .entry(key.to_string())
                    .or_insert_with(|| v.to_str().unwrap().to_string());
            }
        }
        GrpcWebReply {
            http,
            messages,
            trailers,
        }
    }

    /// The call's gRPC status code (0 = OK).
    pub fn status(&self) -> i32 {
        self.trailers
            .get("grpc-status")
            .expect("a grpc-status")
            .parse()
            .unwrap()
    }

    pub fn message(&self) -> String {
        self.trailers
            .get("grpc-message")
            .cloned()
            .unwrap_or_default()
    }

    /// The one answer message, decoded.
    pub fn decode<M: Message + Default>(&self) -> M {
        assert_eq!(self.status(), 0, "call failed: {}", self.message());
        assert_eq!(self.messages.len(), 1, "one answer message");
        M::decode(self.messages[0].clone()).unwrap()
    }
}
