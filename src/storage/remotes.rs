//! Turning a remote of the `rclone:` config (rclone option names, e.g. `type: s3`,
//! `access_key_id`, `endpoint`) into an opendal operator. Only the option names below are read;
//! rclone options that have no opendal counterpart are ignored.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use opendal::Operator;
use opendal::layers::{HttpClientLayer, RetryLayer, TimeoutLayer};
use opendal::raw::HttpClient;

use super::Error;

/// Whether a remote of this type has buckets (`remote://bucket/path`).
pub fn is_bucketed(kind: &str) -> bool {
    matches!(kind, "s3" | "azureblob" | "google cloud storage" | "gcs")
}

/// The local filesystem, rooted at `/`.
pub fn local() -> Result<Operator, Error> {
    let op = Operator::from_iter::<opendal::services::Fs>([("root".to_string(), "/".to_string())])
        .map_err(|e| backend_error("local filesystem", e))?
        .finish();
    Ok(op)
}

/// A web server, through `client` when given (one that checks the addresses it connects to).
pub fn http(endpoint: &str, client: Option<reqwest::Client>) -> Result<Operator, Error> {
    let mut op = Operator::from_iter::<opendal::services::Http>([(
        "endpoint".to_string(),
        endpoint.to_string(),
    )])
    .map_err(|e| backend_error(endpoint, e))?
    .finish();
    if let Some(client) = client {
        op = op.layer(HttpClientLayer::new(HttpClient::with(client)));
    }
    Ok(op
        .layer(RetryLayer::new().with_max_times(3))
        .layer(TimeoutLayer::new().with_io_timeout(Duration::from_secs(60))))
}

/// The operator of remote `name` (options from the `rclone:` map) for `bucket`.
pub fn remote(
    name: &str,
    options: &BTreeMap<String, String>,
    bucket: &str,
) -> Result<Operator, Error> {
    let kind = options.get("type").map(String::as_str).unwrap_or("");
    let get = |k: &str| {
        options
            .get(k)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let truthy = |k: &str| get(k).is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
    let mut cfg: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: String| cfg.push((k.to_string(), v));
    let built = match kind {
        "s3" => {
            set("bucket", bucket.to_string());
            set("root", "/".into());
            for (ours, theirs) in [
                ("access_key_id", "access_key_id"),
                ("secret_access_key", "secret_access_key"),
                ("session_token", "session_token"),
                ("endpoint", "endpoint"),
                ("default_storage_class", "storage_class"),
                ("default_acl", "acl"),
                ("server_side_encryption", "server_side_encryption"),
                ("server_side_encryption_aws_kms_key_id", "sse_kms_key_id"),
            ] {
                if let Some(v) = get(theirs) {
                    set(ours, v);
                }
            }
            // rclone needs no region for most S3-compatible stores; the signer needs one.
            set(
                "region",
                get("region").unwrap_or_else(|| "us-east-1".into()),
            );
            // rclone's default is path style; `force_path_style: false` asks for virtual hosts.
            if get("force_path_style").is_some_and(|v| v.eq_ignore_ascii_case("false")) {
                set("enable_virtual_host_style", "true".into());
            }
            if !truthy("env_auth") {
                set("disable_config_load", "true".into());
                set("disable_ec2_metadata", "true".into());
                if get("access_key_id").is_none() {
                    set("allow_anonymous", "true".into());
                }
            }
            Operator::from_iter::<opendal::services::S3>(cfg).map(|b| b.finish())
        }
        "azureblob" => {
            set("container", bucket.to_string());
            set("root", "/".into());
            let account = get("account");
            if let Some(a) = &account {
                set("account_name", a.clone());
            }
            if let Some(k) = get("key") {
                set("account_key", k);
            }
            let mut endpoint = get("endpoint");
            if let Some(sas) = get("sas_url") {
                let (url, token) = sas.split_once('?').unwrap_or((&sas, ""));
                if !token.is_empty() {
                    set("sas_token", token.to_string());
                }
                if endpoint.is_none() {
                    // https://account.blob.core.windows.net[/container] → the service endpoint.
                    let scheme_end = url.find("://").map(|i| i + 3).unwrap_or(0);
                    let host_end = url[scheme_end..]
                        .find('/')
                        .map(|i| i + scheme_end)
                        .unwrap_or(url.len());
                    endpoint = Some(url[..host_end].to_string());
                }
            }
            let endpoint = endpoint.or_else(|| {
                account
                    .as_ref()
                    .map(|a| format!("https://{a}.blob.core.windows.net"))
            });
            if let Some(e) = endpoint {
                set("endpoint", e);
            }
            Operator::from_iter::<opendal::services::Azblob>(cfg).map(|b| b.finish())
        }
        "google cloud storage" | "gcs" => {
            set("bucket", bucket.to_string());
            set("root", "/".into());
            if let Some(path) = get("service_account_file") {
                set("credential_path", path);
            }
            if let Some(json) = get("service_account_credentials") {
                set(
                    "credential",
                    base64::engine::general_purpose::STANDARD.encode(json),
                );
            }
            if let Some(e) = get("endpoint") {
                set("endpoint", e);
            }
            if truthy("anonymous") {
                set("allow_anonymous", "true".into());
                set("skip_signature", "true".into());
                set("disable_vm_metadata", "true".into());
                set("disable_config_load", "true".into());
            }
            Operator::from_iter::<opendal::services::Gcs>(cfg).map(|b| b.finish())
        }
        "http" => {
            let url = get("url").ok_or_else(|| Error::BadRemote {
                name: name.to_string(),
                reason: "an http remote needs `url`".into(),
            })?;
            set("endpoint", url);
            Operator::from_iter::<opendal::services::Http>(cfg).map(|b| b.finish())
        }
        "local" => return local(),
        other => {
            return Err(Error::UnsupportedType {
                name: name.to_string(),
                kind: other.to_string(),
            });
        }
    };
    let op = built.map_err(|e| Error::BadRemote {
        name: name.to_string(),
        reason: e.to_string(),
    })?;
    Ok(op
        .layer(RetryLayer::new().with_max_times(3))
        .layer(TimeoutLayer::new().with_io_timeout(Duration::from_secs(120))))
}

fn backend_error(what: &str, source: opendal::Error) -> Error {
    Error::Backend {
        uri: what.to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn builds_each_supported_type() {
        crate::storage::install_crypto_provider();
        let s3 = opts(&[
            ("type", "s3"),
            ("provider", "Minio"),
            ("access_key_id", "ak"),
            ("secret_access_key", "sk"),
            ("endpoint", "http://127.0.0.1:9000"),
        ]);
        assert!(remote("s3", &s3, "bucket").is_ok());
        let az = opts(&[("type", "azureblob"), ("account", "acct"), ("key", "a2V5")]);
        assert!(remote("az", &az, "container").is_ok());
        let gcs = opts(&[("type", "google cloud storage"), ("anonymous", "true")]);
        assert!(remote("gs", &gcs, "bucket").is_ok());
        let web = opts(&[("type", "http"), ("url", "http://127.0.0.1:8080/files")]);
        assert!(remote("web", &web, "").is_ok());
        assert!(remote("disk", &opts(&[("type", "local")]), "").is_ok());
    }

    #[test]
    fn refuses_unknown_types_and_incomplete_remotes() {
        let err = remote("x", &opts(&[("type", "sftp")]), "b").unwrap_err();
        assert!(err.to_string().contains("sftp"), "{err}");
        let err = remote("w", &opts(&[("type", "http")]), "").unwrap_err();
        assert!(err.to_string().contains("url"), "{err}");
    }
}
