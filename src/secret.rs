//! The secret type and where secrets come from.
//!
//! A [`Secret`] never prints its value: `Debug` and `Display` show a mask, and the bytes are
//! zeroized when the last copy is dropped. The only way to read it is [`Secret::expose`], which
//! keeps every use easy to find with grep.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use zeroize::Zeroizing;

/// A credential (password, API key, token). Cheap to clone; zeroized on drop of the last clone.
///
/// ```
/// use medusa_auth_proxy::secret::Secret;
///
/// let s = Secret::new("hunter2".to_owned());
/// assert_eq!(format!("{s:?} {s}"), r#"Secret("***") ***"#);
/// assert_eq!(s.expose(), "hunter2");
/// ```
#[derive(Clone)]
pub struct Secret(Arc<Zeroizing<String>>);

impl Secret {
    /// Take ownership of `value`; its bytes are zeroized when the last clone is dropped (a
    /// copy the caller made before, e.g. the `String` it was read into, is not).
    pub fn new(value: String) -> Self {
        Secret(Arc::new(Zeroizing::new(value)))
    }

    /// The clear value. Call only where the secret is sent to Medusa.
    pub fn expose(&self) -> &str {
        self.0.as_str()
    }

    /// Whether the secret is the empty string (refused wherever a secret is loaded).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(\"***\")")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl PartialEq for Secret {
    /// Constant-time in the length of the shorter value: used to notice a changed credential,
    /// never to authenticate a caller.
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (self.expose().as_bytes(), other.expose().as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

/// Where a secret is read from, as configured (`auth.password_env`, `auth.password_file`,
/// `auth.api_key_env`, `auth.api_key_file`). Holds the variable's name or the file's path,
/// never the secret: an embedding program hands this over and never sees the password.
///
/// ```
/// use medusa_auth_proxy::secret::{SecretError, SecretSource};
///
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("medusa-password");
/// std::fs::write(&path, "hunter2\n").unwrap();
/// let source = SecretSource::File(path.clone());
/// assert_eq!(source.load().unwrap().expose(), "hunter2"); // one trailing newline trimmed
/// assert_eq!(source.describe(), format!("file {}", path.display()));
///
/// let unset = SecretSource::Env("SURELY_NOT_SET_MEDUSA_PASSWORD".into());
/// assert!(matches!(unset.load(), Err(SecretError::EnvMissing(_))));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// An environment variable, read once at start-up.
    Env(String),
    /// A file; one trailing newline (`\n` or `\r\n`) is trimmed.
    File(PathBuf),
}

/// Why a secret could not be loaded. Names the variable or the path, never the value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The environment variable (named) is not set in the process's environment.
    #[error("environment variable {0} is not set")]
    EnvMissing(String),
    /// The environment variable (named) holds bytes that are not UTF-8.
    #[error("environment variable {0} is not valid UTF-8")]
    EnvNotUnicode(String),
    /// The environment variable (named) is set to the empty string.
    #[error("environment variable {0} is empty")]
    EnvEmpty(String),
    /// The file cannot be read (missing, no permission, a directory); the I/O error is the
    /// source.
    #[error("cannot read secret file {path}: {source}", path = .0.display(), source = .1)]
    FileUnreadable(PathBuf, #[source] std::io::Error),
    /// The file's content is not UTF-8.
    #[error("secret file {} is not valid UTF-8", .0.display())]
    FileNotUnicode(PathBuf),
    /// The file is empty, or holds nothing but one trailing newline.
    #[error("secret file {} is empty", .0.display())]
    FileEmpty(PathBuf),
}

impl SecretSource {
    /// Read the secret now. An environment variable is taken as is; a file loses exactly one
    /// trailing newline (`\n` or `\r\n`: what `echo` and Kubernetes' `stringData` leave),
    /// anything else being part of the secret. Empty is an error, as is anything not UTF-8;
    /// errors name the variable or the path, never the content.
    pub fn load(&self) -> Result<Secret, SecretError> {
        match self {
            SecretSource::Env(name) => match std::env::var(name) {
                Ok(v) if v.is_empty() => Err(SecretError::EnvEmpty(name.clone())),
                Ok(v) => Ok(Secret::new(v)),
                Err(std::env::VarError::NotPresent) => Err(SecretError::EnvMissing(name.clone())),
                Err(std::env::VarError::NotUnicode(_)) => {
                    Err(SecretError::EnvNotUnicode(name.clone()))
                }
            },
            SecretSource::File(path) => load_file(path),
        }
    }

    /// Where the value comes from, for messages: the variable's name or the file's path, never
    /// the value.
    pub fn describe(&self) -> String {
        match self {
            SecretSource::Env(name) => format!("environment variable {name}"),
            SecretSource::File(path) => format!("file {}", path.display()),
        }
    }

    /// The file to watch for rotation, if any.
    pub fn file(&self) -> Option<&Path> {
        match self {
            SecretSource::File(p) => Some(p),
            SecretSource::Env(_) => None,
        }
    }
}

fn load_file(path: &Path) -> Result<Secret, SecretError> {
    let bytes = Zeroizing::new(
        std::fs::read(path).map_err(|e| SecretError::FileUnreadable(path.to_path_buf(), e))?,
    );
    let text =
        std::str::from_utf8(&bytes).map_err(|_| SecretError::FileNotUnicode(path.to_path_buf()))?;
    // Exactly one trailing newline is what `echo pw > file` and Kubernetes' `stringData` leave;
    // anything else (spaces, a second newline) may be part of the secret.
    let text = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(text);
    if text.is_empty() {
        return Err(SecretError::FileEmpty(path.to_path_buf()));
    }
    Ok(Secret::new(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_are_masked() {
        let s = Secret::new("hunter2-very-secret".into());
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(!format!("{s}").contains("hunter2"));
        assert!(!format!("{:?}", Some(s.clone())).contains("hunter2"));
        assert_eq!(s.expose(), "hunter2-very-secret");
    }

    #[test]
    fn file_trims_exactly_one_newline() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "abc \n\n").unwrap();
        assert_eq!(
            SecretSource::File(p.clone()).load().unwrap().expose(),
            "abc \n"
        );
        std::fs::write(&p, "abc\r\n").unwrap();
        assert_eq!(
            SecretSource::File(p.clone()).load().unwrap().expose(),
            "abc"
        );
        std::fs::write(&p, "\n").unwrap();
        assert!(matches!(
            SecretSource::File(p).load(),
            Err(SecretError::FileEmpty(_))
        ));
    }

    #[test]
    fn errors_name_the_source_not_the_value() {
        let e = SecretSource::Env("MAP_TEST_SURELY_UNSET_VAR".into())
            .load()
            .unwrap_err();
        assert!(e.to_string().contains("MAP_TEST_SURELY_UNSET_VAR"));
        let e = SecretSource::File("/nonexistent/pw".into())
            .load()
            .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/pw"));
    }

    #[test]
    fn equality_compares_values() {
        assert_eq!(Secret::new("a".into()), Secret::new("a".into()));
        assert_ne!(Secret::new("a".into()), Secret::new("ab".into()));
        assert_ne!(Secret::new("ab".into()), Secret::new("ac".into()));
    }
}
