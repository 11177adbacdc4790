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
#[derive(Clone)]
pub struct Secret(Arc<Zeroizing<String>>);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(Arc::new(Zeroizing::new(value)))
    }

    /// The clear value. Call only where the secret is sent to Medusa.
    pub fn expose(&self) -> &str {
        self.0.as_str()
    }

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

/// Where a secret is read from, as configured.
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
    #[error("environment variable {0} is not set")]
    EnvMissing(String),
    #[error("environment variable {0} is not valid UTF-8")]
    EnvNotUnicode(String),
    #[error("environment variable {0} is empty")]
    EnvEmpty(String),
    #[error("cannot read secret file {path}: {source}", path = .0.display(), source = .1)]
    FileUnreadable(PathBuf, #[source] std::io::Error),
    #[error("secret file {} is not valid UTF-8", .0.display())]
    FileNotUnicode(PathBuf),
    #[error("secret file {} is empty", .0.display())]
    FileEmpty(PathBuf),
}

impl SecretSource {
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
