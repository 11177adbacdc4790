//! Command-line values over the file's: written into the parsed TOML table before the one
//! validation, so a flag is checked exactly like the key it stands for.

use std::path::PathBuf;

/// Values given on the command line (`run --upstream URL --email E --password-env NAME`):
/// they win over the file's, or stand in for a file altogether (the laptop case).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `--upstream`: `upstream.url`.
    pub upstream_url: Option<String>,
    /// `--flavor`: `auth.flavor` (without a file, "auto" when not given).
    pub flavor: Option<String>,
    /// `--email`: `auth.email`.
    pub email: Option<String>,
    /// `--password-env`: `auth.password_env`, replacing whatever secret the file names.
    pub password_env: Option<String>,
    /// `--password-file`: `auth.password_file`, replacing whatever secret the file names.
    pub password_file: Option<PathBuf>,
    /// `--listen`: `proxy.listen`.
    pub listen: Option<String>,
    /// `--ops-listen`: `ops.listen`.
    pub ops_listen: Option<String>,
}

impl Overrides {
    /// No flag given: the file alone decides.
    pub fn is_empty(&self) -> bool {
        *self == Overrides::default()
    }

    /// The flag that gave config key `key` its value, if one did: errors about that key then
    /// name the flag the user typed.
    pub(super) fn flag_for(&self, key: &str) -> Option<&'static str> {
        let given = [
            ("upstream.url", "--upstream", self.upstream_url.is_some()),
            ("auth.flavor", "--flavor", self.flavor.is_some()),
            ("auth.email", "--email", self.email.is_some()),
            (
                "auth.password_env",
                "--password-env",
                self.password_env.is_some(),
            ),
            (
                "auth.password_file",
                "--password-file",
                self.password_file.is_some(),
            ),
            ("proxy.listen", "--listen", self.listen.is_some()),
            ("ops.listen", "--ops-listen", self.ops_listen.is_some()),
        ];
        given
            .into_iter()
            .find(|(k, _, set)| *set && *k == key)
            .map(|(_, flag, _)| flag)
    }

    /// Write the flags into a parsed config file's table, so that one validation covers both.
    pub(super) fn apply(&self, table: &mut toml::Table, file_given: bool) {
        fn set(table: &mut toml::Table, section: &str, key: &str, value: toml::Value) {
            let entry = table
                .entry(section)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if !entry.is_table() {
                // A file with `auth = 3` is refused by validation anyway; the flag wins here.
                *entry = toml::Value::Table(toml::Table::new());
            }
            if let toml::Value::Table(t) = entry {
                t.insert(key.to_owned(), value);
            }
        }
        let text = |v: &str| toml::Value::String(v.to_owned());
        if let Some(v) = &self.upstream_url {
            set(table, "upstream", "url", text(v));
        }
        match &self.flavor {
            Some(v) => set(table, "auth", "flavor", text(v)),
            // Without a file there is no version to keep: detect it.
            None if !file_given => set(table, "auth", "flavor", text("auto")),
            None => {}
        }
        if let Some(v) = &self.email {
            set(table, "auth", "email", text(v));
        }
        if self.password_env.is_some() || self.password_file.is_some() {
            // A password flag replaces whatever secret the file names.
            if let Some(toml::Value::Table(auth)) = table.get_mut("auth") {
                for key in [
                    "password_env",
                    "password_file",
                    "api_key_env",
                    "api_key_file",
                ] {
                    auth.remove(key);
                }
            }
        }
        if let Some(v) = &self.password_env {
            set(table, "auth", "password_env", text(v));
        }
        if let Some(v) = &self.password_file {
            set(table, "auth", "password_file", text(&v.to_string_lossy()));
        }
        if let Some(v) = &self.listen {
            set(table, "proxy", "listen", text(v));
        }
        if let Some(v) = &self.ops_listen {
            set(table, "ops", "listen", text(v));
        }
    }
}
