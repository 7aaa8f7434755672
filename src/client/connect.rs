//! How client commands and the worker reach a server: `--server` / `TASKQUEUE_SERVER`,
//! `--token` / `TASKQUEUE_TOKEN`, `--ca-file`, `--insecure`, falling back to what `taskqueue login`
//! stored in `$XDG_CONFIG_HOME/taskqueue/login.yaml` (or `~/.config/taskqueue/login.yaml`; file mode
//! 0600). A stored token is only sent to the server it was issued by.

use std::path::PathBuf;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::client::{self, Client, Target};

/// The address used when neither a flag nor a stored login names a server (`serve`'s default).
pub const DEFAULT_SERVER: &str = "127.0.0.1:50051";

/// Connection flags, shared by every client command and the worker.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConnectArgs {
    /// Server address: host:port (plaintext), http://host:port or https://host:port
    /// [default: the stored login's, else 127.0.0.1:50051].
    #[arg(long, env = "TASKQUEUE_SERVER", global = true)]
    pub server: Option<String>,
    /// Token: a session token from `taskqueue login`, or the worker token [default: the stored login's].
    #[arg(long, env = "TASKQUEUE_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// PEM file of the CA (or the server's self-signed certificate) to trust for https://.
    #[arg(long, env = "TASKQUEUE_CA_FILE", global = true)]
    pub ca_file: Option<PathBuf>,
    /// Do not verify the server certificate (https:// only): encrypted but not authenticated.
    #[arg(long, env = "TASKQUEUE_INSECURE", global = true)]
    pub insecure: bool,
}

/// What `taskqueue login` stores.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredLogin {
    pub server: String,
    pub token: String,
    #[serde(default)]
    pub username: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub insecure: bool,
}

/// Folder of the client configuration.
pub fn config_dir() -> anyhow::Result<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(x).join("taskqueue"));
    }
    let home = std::env::var_os("HOME").filter(|v| !v.is_empty()).context(
        "cannot locate the configuration folder: neither XDG_CONFIG_HOME nor HOME is set",
    )?;
    Ok(PathBuf::from(home).join(".config").join("taskqueue"))
}

pub fn login_file() -> anyhow::Result<PathBuf> {
    Ok(config_dir()?.join("login.yaml"))
}

impl StoredLogin {
    /// The stored login, if any.
    pub fn load() -> anyhow::Result<Option<StoredLogin>> {
        let path = login_file()?;
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let login = serde_yaml::from_str(&text)
            .with_context(|| format!("{} is not a valid login file", path.display()))?;
        Ok(Some(login))
    }

    /// Writes the login, readable by its owner only (folder 0700, file 0600).
    pub fn save(&self) -> anyhow::Result<PathBuf> {
        use std::os::unix::fs::DirBuilderExt as _;
        let path = login_file()?;
        let dir = path.parent().expect("login file has a folder");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        crate::secret_files::write_private(&path, serde_yaml::to_string(self)?.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(path)
    }

    /// Removes the stored login; true if there was one.
    pub fn remove() -> anyhow::Result<bool> {
        let path = login_file()?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).with_context(|| format!("cannot remove {}", path.display())),
        }
    }
}

/// Where to connect and with which token, after flags, environment and the stored login.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub target: Target,
    pub token: Option<String>,
}

impl ConnectArgs {
    pub fn resolve(&self) -> anyhow::Result<Resolved> {
        let stored = StoredLogin::load()?;
        Ok(self.resolve_with(stored.as_ref()))
    }

    /// Flags first; the stored login fills what they leave open, for its own server only.
    pub fn resolve_with(&self, stored: Option<&StoredLogin>) -> Resolved {
        let server = self
            .server
            .clone()
            .filter(|s| !s.trim().is_empty())
            .or_else(|| stored.map(|l| l.server.clone()))
            .unwrap_or_else(|| DEFAULT_SERVER.to_string());
        let same_server = stored.filter(|l| same_address(&l.server, &server));
        let token = self
            .token
            .clone()
            .filter(|t| !t.is_empty())
            .or_else(|| same_server.map(|l| l.token.clone()));
        let target = Target {
            server,
            ca_file: self
                .ca_file
                .clone()
                .or_else(|| same_server.and_then(|l| l.ca_file.clone())),
            insecure: self.insecure || same_server.is_some_and(|l| l.insecure),
        };
        Resolved { target, token }
    }
}

/// Two spellings of one address (`host:port` is `http://host:port`).
fn same_address(a: &str, b: &str) -> bool {
    let norm = |s: &str| {
        let s = s.trim().trim_end_matches('/');
        if s.contains("://") {
            s.to_string()
        } else {
            format!("http://{s}")
        }
    };
    norm(a) == norm(b)
}

impl Resolved {
    /// A client (the channel connects on first use).
    pub fn client(&self) -> anyhow::Result<Client> {
        client::with_token(self.target.channel()?, self.token.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored() -> StoredLogin {
        StoredLogin {
            server: "https://tq.example.org:50051".into(),
            token: "stored-token".into(),
            username: "alice".into(),
            ca_file: Some("/etc/tq.pem".into()),
            insecure: false,
        }
    }

    #[test]
    fn flags_win_and_stored_fills_the_rest() {
        let none = ConnectArgs::default().resolve_with(None);
        assert_eq!(none.target.server, DEFAULT_SERVER);
        assert_eq!(none.token, None);

        let s = stored();
        let from_login = ConnectArgs::default().resolve_with(Some(&s));
        assert_eq!(from_login.target.server, s.server);
        assert_eq!(from_login.token.as_deref(), Some("stored-token"));
        assert_eq!(from_login.target.ca_file, s.ca_file);

        let flags = ConnectArgs {
            token: Some("flag-token".into()),
            ..Default::default()
        };
        assert_eq!(
            flags.resolve_with(Some(&s)).token.as_deref(),
            Some("flag-token")
        );
    }

    #[test]
    fn a_stored_token_never_goes_to_another_server() {
        let other = ConnectArgs {
            server: Some("other:50051".into()),
            ..Default::default()
        };
        let r = other.resolve_with(Some(&stored()));
        assert_eq!(r.token, None);
        assert_eq!(r.target.ca_file, None);
        let mut plain = stored();
        plain.server = "127.0.0.1:50051".into();
        let same = ConnectArgs {
            server: Some("http://127.0.0.1:50051/".into()),
            ..Default::default()
        };
        assert_eq!(
            same.resolve_with(Some(&plain)).token.as_deref(),
            Some("stored-token")
        );
    }
}
