//! TLS of the gRPC port and of the web listener (README.md#security): certificate files, or a
//! self-signed certificate generated at first start into `<data_dir>/tls/` and reused after, so
//! clients can be handed `cert.pem` to trust.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use tonic::transport::{Identity, ServerTlsConfig};

use crate::config::{Config, TlsMode};

/// The server TLS settings for `config`, or `None` for plaintext.
pub fn server_tls(config: &Config) -> anyhow::Result<Option<ServerTlsConfig>> {
    let Some((cert, key)) = certificate_files(config)? else {
        return Ok(None);
    };
    let cert_pem = std::fs::read(&cert)
        .with_context(|| format!("cannot read TLS certificate {}", cert.display()))?;
    let key_pem =
        std::fs::read(&key).with_context(|| format!("cannot read TLS key {}", key.display()))?;
    Ok(Some(
        ServerTlsConfig::new().identity(Identity::from_pem(cert_pem, key_pem)),
    ))
}

/// The certificate and key files of `config` (generated first when self-signed), or `None` for
/// plaintext. The web listener uses the same.
pub fn certificate_files(config: &Config) -> anyhow::Result<Option<(PathBuf, PathBuf)>> {
    Ok(match &config.tls {
        TlsMode::Plain => None,
        TlsMode::Files { cert, key } => Some((cert.clone(), key.clone())),
        TlsMode::SelfSigned => Some(self_signed(
            &config.data_dir,
            config.listen,
            config.server_fqdn.as_deref(),
        )?),
    })
}

/// Paths of the self-signed certificate and key, generated if missing.
pub fn self_signed(
    data_dir: &Path,
    listen: SocketAddr,
    fqdn: Option<&str>,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let dir = data_dir.join("tls");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    if !listen.ip().is_unspecified() && !names.contains(&listen.ip().to_string()) {
        names.push(listen.ip().to_string());
    }
    if let Some(fqdn) = fqdn.filter(|f| !f.is_empty()) {
        names.push(fqdn.to_string());
    }
    let generated = rcgen::generate_simple_self_signed(names.clone())
        .context("cannot generate a certificate")?;
    std::fs::write(&cert, generated.cert.pem())
        .with_context(|| format!("cannot write {}", cert.display()))?;
    crate::secret_files::write_private(&key, generated.signing_key.serialize_pem().as_bytes())
        .with_context(|| format!("cannot write {}", key.display()))?;
    tracing::info!(cert = %cert.display(), names = ?names, "generated a self-signed TLS certificate; give clients this file to trust");
    Ok((cert, key))
}
