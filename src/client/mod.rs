//! Connecting to a taskqueue server: a channel (plaintext, or TLS with a CA file or without
//! verification) and an interceptor that attaches `authorization: Bearer <token>` to every call,
//! streams included. Used by the worker, the command line, the load tester and the tests.
//! [`connect`] holds the connection flags (`--server`, `--token` …) and the stored login that the
//! worker and the client commands share.

pub mod connect;

use std::sync::Arc;
use std::time::Duration;

use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::proto::task_queue_client::TaskQueueClient;

/// Adds the bearer token to each request.
#[derive(Clone)]
pub struct Bearer(Option<AsciiMetadataValue>);

impl Bearer {
    pub fn new(token: Option<&str>) -> anyhow::Result<Bearer> {
        let value = match token.filter(|t| !t.is_empty()) {
            Some(t) => Some(format!("Bearer {t}").parse().map_err(|_| {
                anyhow::anyhow!("the token contains characters not allowed in a header")
            })?),
            None => None,
        };
        Ok(Bearer(value))
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

/// A client of `taskqueue.TaskQueue` that sends a token.
pub type Client = TaskQueueClient<InterceptedService<Channel, Bearer>>;

/// How to reach a server.
#[derive(Debug, Clone, Default)]
pub struct Target {
    /// `host:port`, `http://host:port` or `https://host:port`.
    pub server: String,
    /// PEM file of the CA (or self-signed certificate) to trust for `https://`.
    pub ca_file: Option<std::path::PathBuf>,
    /// For `https://`: accept any server certificate (encrypted, but not authenticated — only for
    /// a server whose certificate you cannot get, e.g. the original's quick start).
    pub insecure: bool,
}

impl Target {
    pub fn new(server: impl Into<String>) -> Target {
        Target {
            server: server.into(),
            ca_file: None,
            insecure: false,
        }
    }

    fn is_insecure_tls(&self) -> bool {
        self.insecure && self.server.trim().starts_with("https://")
    }

    fn endpoint(&self) -> anyhow::Result<Endpoint> {
        let raw = self.server.trim();
        let mut url = if raw.contains("://") {
            raw.to_string()
        } else {
            format!("http://{raw}")
        };
        if self.is_insecure_tls() {
            // TLS is done by our own connector (see `insecure_connector`): tonic must not add its own.
            url = url.replacen("https://", "http://", 1);
        }
        let mut endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| anyhow::anyhow!("invalid server address {raw:?}: {e}"))?
            .connect_timeout(Duration::from_secs(10))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true);
        if url.starts_with("https://") {
            let mut tls = tonic::transport::ClientTlsConfig::new().with_enabled_roots();
            if let Some(ca) = &self.ca_file {
                let pem = std::fs::read(ca)
                    .map_err(|e| anyhow::anyhow!("cannot read CA file {}: {e}", ca.display()))?;
                tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(pem));
            }
            endpoint = endpoint.tls_config(tls)?;
        }
        Ok(endpoint)
    }

    /// A lazily connected channel (connects on first use, reconnects after failures).
    pub fn channel(&self) -> anyhow::Result<Channel> {
        let endpoint = self.endpoint()?;
        if self.is_insecure_tls() {
            return Ok(endpoint.connect_with_connector_lazy(insecure_connector()));
        }
        Ok(endpoint.connect_lazy())
    }

    /// Connects now, failing if the server cannot be reached.
    pub async fn connect(&self) -> anyhow::Result<Channel> {
        let raw = self.server.clone();
        let endpoint = self.endpoint()?;
        let result = if self.is_insecure_tls() {
            endpoint.connect_with_connector(insecure_connector()).await
        } else {
            endpoint.connect().await
        };
        result.map_err(|e| anyhow::anyhow!("cannot connect to {raw}: {}", error_chain(&e)))
    }
}

/// `e` and its sources on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

type InsecureIo = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// A connector doing TLS (ALPN h2) without verifying the server certificate. Signatures of the
/// handshake are still checked, so the session is encrypted to whoever holds the presented key.
fn insecure_connector() -> impl tower::Service<
    http::Uri,
    Response = InsecureIo,
    Error = std::io::Error,
    Future = futures::future::BoxFuture<'static, std::io::Result<InsecureIo>>,
> + Clone
+ Send
+ 'static {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    tower::service_fn(move |uri: http::Uri| {
        let connector = connector.clone();
        let fut: futures::future::BoxFuture<'static, std::io::Result<InsecureIo>> =
            Box::pin(async move {
                let bad =
                    |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, m.to_string());
                let host = uri
                    .host()
                    .ok_or_else(|| bad("server address without host"))?;
                let host = host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string();
                let port = uri.port_u16().unwrap_or(443);
                let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
                tcp.set_nodelay(true)?;
                let name = rustls::pki_types::ServerName::try_from(host)
                    .map_err(|_| bad("invalid server name"))?;
                let tls = connector.connect(name, tcp).await?;
                Ok(hyper_util::rt::TokioIo::new(tls))
            });
        fut
    })
}

/// Accepts every certificate; verifies handshake signatures with the provider's algorithms.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A client on `channel` that sends `token`.
pub fn with_token(channel: Channel, token: Option<&str>) -> anyhow::Result<Client> {
    Ok(
        TaskQueueClient::with_interceptor(channel, Bearer::new(token)?)
            .max_decoding_message_size(crate::config::defaults::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(crate::config::defaults::MAX_MESSAGE_BYTES),
    )
}
