//! Building a [`TokenManager`] for a program that embeds the credential, without the proxy's
//! config file or its Prometheus registry.
//!
//! The builder's values are validated by the same rules, and take the same defaults, as the
//! `[upstream]` and `[auth]` tables of the config file (one validation, defaults written
//! once): an error names the config key a value stands for (`upstream.url`, `auth.email`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::backoff::Backoff;
use super::login::Login;
use super::{Flavor, NoEvents, SecretSource, TokenEvents, TokenManager};
use crate::config::{ConfigError, Settings};
use crate::secret::SecretError;
use crate::upstream::{TlsSetupError, Upstream};

/// Why [`TokenManagerBuilder::build`] failed. Names the setting or the secret's source,
/// never a secret.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A value is invalid or missing (the URL, the email, a duration), named by the config
    /// key it stands for.
    #[error("{0}")]
    Settings(#[source] ConfigError),
    /// The secret could not be read from its source.
    #[error("cannot load the secret: {0}")]
    Secret(#[source] SecretError),
    /// No secret source was given ([`TokenManagerBuilder::secret`]).
    #[error("no secret source: call .secret(SecretSource::Env(\"NAME\".into())) or a file")]
    NoSecret,
    /// The client for Medusa could not be set up (TLS roots, `ca_file`).
    #[error("{0}")]
    Upstream(#[source] TlsSetupError),
}

/// Builds a [`TokenManager`]: Medusa's URL and flavor, the account's email and where its
/// password (or, for a static flavor, its API key) comes from. Start with
/// [`TokenManager::builder`].
///
/// ```no_run
/// use std::time::Duration;
/// use medusa_auth_proxy::auth::{Flavor, SecretSource, TokenManager};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let tokens = TokenManager::builder("https://medusa.internal/shop", Flavor::V2)
///     .email("robot@example.com")
///     .secret(SecretSource::File("/run/secrets/medusa-password".into()))
///     .login_timeout(Duration::from_secs(5))
///     .build()?;
/// let (_stop, stop_rx) = tokio::sync::watch::channel(false);
/// tokens.spawn_driver(stop_rx);
/// # Ok(()) }
/// ```
pub struct TokenManagerBuilder {
    url: String,
    flavor: Flavor,
    email: Option<String>,
    secret: Option<SecretSource>,
    /// `[auth]` and `[upstream]` keys set explicitly, as config values.
    auth: toml::Table,
    upstream: toml::Table,
    backoff: Backoff,
    events: Arc<dyn TokenEvents>,
}

impl std::fmt::Debug for TokenManagerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenManagerBuilder")
            .field("url", &self.url)
            .field("flavor", &self.flavor)
            .field("email", &self.email)
            .field("secret", &self.secret)
            .finish_non_exhaustive()
    }
}

/// A duration as a config value ("1m 30s"), read back exactly by the config's parser.
fn duration(d: Duration) -> toml::Value {
    toml::Value::String(humantime::format_duration(d).to_string())
}

impl TokenManagerBuilder {
    pub(super) fn new(url: String, flavor: Flavor) -> TokenManagerBuilder {
        TokenManagerBuilder {
            url,
            flavor,
            email: None,
            secret: None,
            auth: toml::Table::new(),
            upstream: toml::Table::new(),
            backoff: Backoff::default(),
            events: Arc::new(NoEvents),
        }
    }

    /// The account's email (required by the login flavors `v1`, `v2`, `auto`; refused by the
    /// static ones).
    ///
    /// ```
    /// # use medusa_auth_proxy::auth::{Flavor, TokenManager};
    /// let b = TokenManager::builder("http://127.0.0.1:9000", Flavor::V1).email("admin@example.com");
    /// ```
    pub fn email(mut self, email: impl Into<String>) -> Self {
        self.email = Some(email.into());
        self
    }

    /// Where the password (login flavors) or the API key (static flavors) is read from, once,
    /// at [`build`](TokenManagerBuilder::build). The secret itself never passes through the
    /// embedding program.
    ///
    /// ```
    /// # use medusa_auth_proxy::auth::{Flavor, SecretSource, TokenManager};
    /// let b = TokenManager::builder("http://127.0.0.1:9000", Flavor::V2)
    ///     .secret(SecretSource::Env("MEDUSA_PASSWORD".into()));
    /// ```
    pub fn secret(mut self, source: SecretSource) -> Self {
        self.secret = Some(source);
        self
    }

    /// How long one login may take (default 10 s; also bounds a 401 check).
    ///
    /// ```
    /// # use medusa_auth_proxy::auth::{Flavor, TokenManager};
    /// let b = TokenManager::builder("http://127.0.0.1:9000", Flavor::V1)
    ///     .login_timeout(std::time::Duration::from_secs(5));
    /// ```
    pub fn login_timeout(mut self, timeout: Duration) -> Self {
        self.auth.insert("login_timeout".into(), duration(timeout));
        self
    }

    /// Stop using a token this long before it expires (default 60 s; see
    /// [`schedule`](super::schedule)).
    ///
    /// ```
    /// # use medusa_auth_proxy::auth::{Flavor, TokenManager};
    /// let b = TokenManager::builder("http://127.0.0.1:9000", Flavor::V2)
    ///     .refresh_before_expiry(std::time::Duration::from_secs(120));
    /// ```
    pub fn refresh_before_expiry(mut self, margin: Duration) -> Self {
        self.auth
            .insert("refresh_before_expiry".into(), duration(margin));
        self
    }

    /// How long a TCP connect to Medusa may take (default 5 s).
    ///
    /// ```
    /// # use medusa_auth_proxy::auth::{Flavor, TokenManager};
    /// let b = TokenManager::builder("http://127.0.0.1:9000", Flavor::V2)
    ///     .connect_timeout(std::time::Duration::from_secs(2));
    /// ```
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.upstream
            .insert("connect_timeout".into(), duration(timeout));
        self
    }

    /// A PEM file of CA certificates to trust for an `https://` Medusa (a private CA).
    ///
    /// ```
    /// # use medusa_auth_proxy::auth::{Flavor, TokenManager};
    /// let b = TokenManager::builder("https://medusa.internal", Flavor::V2)
    ///     .ca_file("/etc/medusa/ca.pem");
    /// ```
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        let path: PathBuf = path.into();
        self.upstream.insert(
            "ca_file".into(),
            toml::Value::String(path.to_string_lossy().into_owned()),
        );
        self
    }

    /// The backoff schedule after failed logins (default: 1 s doubling to 5 min; 30 s first
    /// after refused credentials).
    ///
    /// ```
    /// # use medusa_auth_proxy::auth::{Flavor, TokenManager, backoff::Backoff};
    /// let b = TokenManager::builder("http://127.0.0.1:9000", Flavor::V2)
    ///     .backoff(Backoff { max: std::time::Duration::from_secs(60), ..Backoff::default() });
    /// ```
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Where logins, the credential's expiry and 401 checks are reported (default: nowhere).
    ///
    /// ```
    /// # use medusa_auth_proxy::auth::{Flavor, NoEvents, TokenManager};
    /// let b = TokenManager::builder("http://127.0.0.1:9000", Flavor::V2)
    ///     .events(std::sync::Arc::new(NoEvents));
    /// ```
    pub fn events(mut self, events: Arc<dyn TokenEvents>) -> Self {
        self.events = events;
        self
    }

    /// Validate, read the secret, set up the client for Medusa. Logging in starts with
    /// [`TokenManager::spawn_driver`].
    ///
    /// ```
    /// use medusa_auth_proxy::auth::{BuildError, Flavor, SecretSource, TokenManager};
    ///
    /// # fn main() -> Result<(), BuildError> {
    /// let dir = tempfile::tempdir().unwrap();
    /// let key = dir.path().join("medusa-api-token");
    /// std::fs::write(&key, "my-v1-api-token\n").unwrap();
    /// let tokens = TokenManager::builder("http://127.0.0.1:9000", Flavor::V1ApiToken)
    ///     .secret(SecretSource::File(key))
    ///     .build()?;
    /// // Nothing is sent to Medusa until `tokens.spawn_driver(..)`.
    /// # let _ = tokens;
    ///
    /// let e = TokenManager::builder("http://127.0.0.1:9000", Flavor::V2)
    ///     .email("admin@example.com")
    ///     .build()
    ///     .unwrap_err();
    /// assert!(matches!(e, BuildError::NoSecret));
    ///
    /// let e = TokenManager::builder("ftp://127.0.0.1", Flavor::V1ApiToken)
    ///     .secret(SecretSource::Env("MEDUSA_API_TOKEN".into()))
    ///     .build()
    ///     .unwrap_err();
    /// assert!(e.to_string().contains("upstream.url"), "{e}");
    /// # Ok(()) }
    /// ```
    pub fn build(self) -> Result<TokenManager, BuildError> {
        let source = self.secret.ok_or(BuildError::NoSecret)?;
        let mut upstream = self.upstream;
        upstream.insert("url".into(), toml::Value::String(self.url));
        let mut auth = self.auth;
        auth.insert(
            "flavor".into(),
            toml::Value::String(self.flavor.as_str().into()),
        );
        if let Some(email) = self.email {
            auth.insert("email".into(), toml::Value::String(email));
        }
        let kind = if self.flavor.is_static() {
            "api_key"
        } else {
            "password"
        };
        let (key, value) = match &source {
            SecretSource::Env(name) => (format!("{kind}_env"), name.clone()),
            SecretSource::File(path) => {
                (format!("{kind}_file"), path.to_string_lossy().into_owned())
            }
        };
        auth.insert(key, toml::Value::String(value));
        let mut table = toml::Table::new();
        table.insert("upstream".into(), toml::Value::Table(upstream));
        table.insert("auth".into(), toml::Value::Table(auth));
        let text = toml::to_string(&table).map_err(|e| {
            BuildError::Settings(ConfigError::Syntax {
                path: PathBuf::from("<builder>"),
                message: e.to_string(),
            })
        })?;
        let settings = Settings::from_toml(&text).map_err(BuildError::Settings)?;
        let secret = settings.auth.secret.load().map_err(BuildError::Secret)?;
        let upstream = Upstream::new(&settings.upstream).map_err(BuildError::Upstream)?;
        let login = Login::new(
            upstream,
            settings.auth.flavor,
            settings.auth.email.clone(),
            secret,
        )
        .with_secret_source(&settings.auth.secret);
        Ok(TokenManager::with_backoff(
            login,
            settings.auth,
            self.backoff,
            self.events,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::super::jwt;
    use super::*;

    fn error(b: TokenManagerBuilder) -> String {
        b.build().unwrap_err().to_string()
    }

    #[test]
    fn values_are_validated_like_the_config_file() {
        let b = || TokenManager::builder("http://127.0.0.1:9", Flavor::V2);
        assert!(error(b().email("a@b")).contains("no secret source"));
        let e = error(b().secret(SecretSource::Env("MAP_BUILDER_TEST_UNSET".into())));
        assert!(e.contains("auth.email"), "{e}");
        let e = error(
            b().email("a@b")
                .secret(SecretSource::Env("MAP_BUILDER_TEST_UNSET".into())),
        );
        assert!(
            e.contains("MAP_BUILDER_TEST_UNSET") && e.contains("not set"),
            "{e}"
        );
        let e = error(
            TokenManager::builder("ftp://x", Flavor::V1)
                .email("a@b")
                .secret(SecretSource::Env("X".into())),
        );
        assert!(e.contains("upstream.url"), "{e}");
        let e = error(
            b().email("a@b")
                .secret(SecretSource::Env("X".into()))
                .login_timeout(Duration::ZERO),
        );
        assert!(e.contains("auth.login_timeout"), "{e}");
        // A static flavor takes a key, not an email.
        let e = error(
            TokenManager::builder("http://127.0.0.1:9", Flavor::V2SecretKey)
                .email("a@b")
                .secret(SecretSource::Env("X".into())),
        );
        assert!(e.contains("auth.email"), "{e}");
    }

    #[tokio::test]
    async fn builds_from_a_secret_file_with_defaults_and_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "hunter2\n").unwrap();
        let tokens = TokenManager::builder("http://127.0.0.1:9/prefix", Flavor::V1)
            .email("a@b")
            .secret(SecretSource::File(pw))
            .login_timeout(Duration::from_millis(1500))
            .build()
            .unwrap();
        assert_eq!(tokens.login().flavor(), Flavor::V1);
        assert_eq!(
            tokens.inner.settings.login_timeout,
            Duration::from_millis(1500)
        );
        // Untouched values take the config file's defaults.
        assert_eq!(
            tokens.inner.settings.refresh_before_expiry,
            Duration::from_secs(60)
        );
        assert!(!format!("{tokens:?}").contains("hunter2"));
    }

    /// A one-route Medusa v1 on 127.0.0.1:0: answers every request with a fresh JWT for
    /// `usr_1` and counts the requests.
    async fn v1_login_server() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let logins = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = logins.clone();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let count = count.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    // The head, then a body of Content-Length bytes.
                    loop {
                        let Ok(n) = tcp.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buf).to_ascii_lowercase();
                        if let Some(end) = text.find("\r\n\r\n") {
                            let len = text
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse::<usize>().ok())
                                .unwrap_or(0);
                            if buf.len() >= end + 4 + len {
                                break;
                            }
                        }
                    }
                    count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let exp = jwt::unix_now() as u64 + 3600;
                    let token = jsonwebtoken::encode(
                        &jsonwebtoken::Header::default(),
                        &serde_json::json!({"user_id": "usr_1", "exp": exp}),
                        &jsonwebtoken::EncodingKey::from_secret(b"k"),
                    )
                    .unwrap();
                    let body = serde_json::json!({ "access_token": token }).to_string();
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tcp.write_all(resp.as_bytes()).await;
                });
            }
        });
        (url, logins)
    }

    #[tokio::test]
    async fn a_built_manager_logs_in_once_for_a_burst() {
        let (url, logins) = v1_login_server().await;
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "hunter2").unwrap();
        let tokens = TokenManager::builder(url, Flavor::V1)
            .email("admin@example.com")
            .secret(SecretSource::File(pw))
            .build()
            .unwrap();
        let (_stop, stop_rx) = tokio::sync::watch::channel(false);
        let _driver = tokens.spawn_driver(stop_rx);
        let burst: Vec<_> = (0..20)
            .map(|_| {
                let tokens = tokens.clone();
                tokio::spawn(async move { tokens.token().await })
            })
            .collect();
        let mut ids = std::collections::HashSet::new();
        for t in burst {
            let token = t.await.unwrap().unwrap();
            assert_eq!(token.header_name, http::header::AUTHORIZATION);
            assert!(token.header.to_str().unwrap().starts_with("Bearer "));
            assert!(token.header.is_sensitive());
            ids.insert(token.id);
        }
        assert_eq!(ids.len(), 1, "one token for the burst");
        assert_eq!(
            logins.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "one login"
        );
        assert_eq!(
            tokens.user_id_hint().as_deref().map(String::as_str),
            Some("usr_1")
        );
        assert!(tokens.readiness().await.is_ok());
    }
}
