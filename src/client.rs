//! Connecting to a taskqueue server: a channel (plaintext, or TLS with a CA file or without
//! verification) and an interceptor that attaches `authorization: Bearer <token>` to every call,
//! streams included. Used by the worker, the command line, the load tester and the tests.

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
}

impl Target {
    pub fn new(server: impl Into<String>) -> Target {
        Target {
            server: server.into(),
            ca_file: None,
        }
    }

    fn endpoint(&self) -> anyhow::Result<Endpoint> {
        let raw = self.server.trim();
        let url = if raw.contains("://") {
            raw.to_string()
        } else {
            format!("http://{raw}")
        };
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
        Ok(self.endpoint()?.connect_lazy())
    }

    /// Connects now, failing if the server cannot be reached.
    pub async fn connect(&self) -> anyhow::Result<Channel> {
        let raw = self.server.clone();
        self.endpoint()?
            .connect()
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to {raw}: {e}"))
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
