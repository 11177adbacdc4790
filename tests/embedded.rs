//! The library's showcase, `examples/embedded_client.rs`, compiled as a module here and run
//! in-process against the fake Medusa (v1 and v2) on 127.0.0.1:0. The test drives the same
//! functions `main` calls: hyper-util's `Client` behind `CredentialLayer`, a `TokenManager`
//! from the builder.
//!
//! The password reaches the library through a file here (`SecretSource::File`). `main` uses
//! an environment variable. That keeps the tests from calling `std::env::set_var` while other
//! tests run in parallel threads. The environment parsing is tested on its own, through the
//! example's lookup function.

mod common;
#[allow(dead_code)]
#[path = "../examples/embedded_client.rs"]
mod embedded_client;

use std::collections::HashMap;

use common::fake_medusa::{DEFAULT_EMAIL, DEFAULT_PASSWORD, FakeMedusa, Mode};
use embedded_client::{Config, ExampleError, describe, get, medusa_client, run};
use medusa_auth_proxy::auth::{Flavor, SecretSource, TokenManager};

/// The fake's products answer.
const PRODUCTS: &str = r#"{"count":0,"products":[]}"#;

/// The example's config for `fake`, the password in a file of `dir`.
fn config(fake: &FakeMedusa, flavor: Flavor, password: &str, dir: &tempfile::TempDir) -> Config {
    let path = dir.path().join("password");
    std::fs::write(&path, format!("{password}\n")).unwrap();
    Config {
        url: fake.url(),
        email: DEFAULT_EMAIL.into(),
        secret: SecretSource::File(path),
        flavor,
    }
}

fn flavor_of(mode: Mode) -> Flavor {
    match mode {
        Mode::V1 => Flavor::V1,
        Mode::V2 => Flavor::V2,
    }
}

/// A token manager whose driver runs until the returned sender is dropped.
fn started(config: &Config) -> (TokenManager, tokio::sync::watch::Sender<bool>) {
    let tokens = config.token_manager().expect("token manager");
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    tokens.spawn_driver(stop_rx);
    (tokens, stop)
}

/// What `main` does: 2xx, the products body, one login, both flavors and `auto`.
#[tokio::test]
async fn the_example_gets_products_from_v1_and_v2() {
    for mode in [Mode::V1, Mode::V2] {
        let fake = FakeMedusa::start_mode(mode).await;
        for flavor in [flavor_of(mode), Flavor::Auto] {
            let dir = tempfile::tempdir().unwrap();
            let before = fake.logins();
            let answer = run(&config(&fake, flavor, DEFAULT_PASSWORD, &dir))
                .await
                .unwrap_or_else(|e| panic!("{mode:?} {flavor:?}: {}", describe(&e)));
            assert_eq!(answer.status, 200, "{mode:?} {flavor:?}");
            let body: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
            assert_eq!(
                body,
                serde_json::from_str::<serde_json::Value>(PRODUCTS).unwrap()
            );
            assert!(!answer.replayed);
            assert_eq!(fake.logins() - before, 1, "{mode:?} {flavor:?}: one login");
        }
    }
}

/// Several requests, concurrent and sequential, through one layer: one login in all.
#[tokio::test]
async fn many_requests_share_one_login() {
    for mode in [Mode::V1, Mode::V2] {
        let fake = FakeMedusa::start_mode(mode).await;
        let dir = tempfile::tempdir().unwrap();
        let config = config(&fake, flavor_of(mode), DEFAULT_PASSWORD, &dir);
        let (tokens, _stop) = started(&config);
        let client = medusa_client(tokens);
        let uri = config.uri("/admin/products").unwrap();
        // A burst before any token exists: every request waits for the driver's one login.
        let burst = (0..8).map(|_| get(&client, uri.clone()));
        for answer in futures_util::future::join_all(burst).await {
            assert_eq!(answer.unwrap().status, 200, "{mode:?}");
        }
        for _ in 0..4 {
            assert_eq!(get(&client, uri.clone()).await.unwrap().status, 200);
        }
        assert_eq!(
            fake.login_attempts(),
            1,
            "{mode:?}: one login for 12 requests"
        );
        assert_eq!(fake.logins(), 1, "{mode:?}");
        assert_eq!(fake.requests_to("/admin/products").len(), 12, "{mode:?}");
    }
}

/// Medusa's JWT secret changes under a valid token: the next request gets a 401, the layer
/// checks the token once (rejected), the driver logs in once, the request is replayed once
/// and succeeds.
#[tokio::test]
async fn a_rotated_secret_costs_one_check_one_login_one_replay() {
    for mode in [Mode::V1, Mode::V2] {
        let fake = FakeMedusa::start_mode(mode).await;
        let dir = tempfile::tempdir().unwrap();
        let config = config(&fake, flavor_of(mode), DEFAULT_PASSWORD, &dir);
        let (tokens, _stop) = started(&config);
        let client = medusa_client(tokens);
        let uri = config.uri("/admin/products").unwrap();
        assert_eq!(get(&client, uri.clone()).await.unwrap().status, 200);
        assert_eq!(fake.logins(), 1);
        let checks = fake.token_checks();

        fake.rotate_secret();
        let answer = get(&client, uri.clone()).await.unwrap();
        assert_eq!(answer.status, 200, "{mode:?}: the replay succeeds");
        assert!(answer.replayed, "{mode:?}: answered by the replay");
        assert_eq!(fake.token_checks() - checks, 1, "{mode:?}: one check");
        assert_eq!(fake.logins(), 2, "{mode:?}: one login after the rejection");
        // The warm-up, the rejected request and its one replay.
        assert_eq!(fake.requests_to("/admin/products").len(), 3, "{mode:?}");

        // The new token is cached: no further check, login or replay.
        let answer = get(&client, uri).await.unwrap();
        assert_eq!((answer.status.as_u16(), answer.replayed), (200, false));
        assert_eq!(fake.token_checks() - checks, 1);
        assert_eq!(fake.logins(), 2);
    }
}

/// A refused login: the request fails with the login's summary, naming the account and
/// where the password came from, never the password; the exit status is 1.
#[tokio::test]
async fn a_refused_login_is_reported_without_the_password() {
    const WRONG: &str = "wrong-password-embedded-7f3a";
    for mode in [Mode::V1, Mode::V2] {
        let fake = FakeMedusa::start_mode(mode).await;
        let dir = tempfile::tempdir().unwrap();
        let err = run(&config(&fake, flavor_of(mode), WRONG, &dir))
            .await
            .expect_err("the fake refuses that password");
        assert!(matches!(err, ExampleError::Login(_)), "{err:?}");
        assert_eq!(err.exit_code(), 1);
        let text = describe(&err);
        assert!(
            text.starts_with("login to Medusa failed: invalid credentials"),
            "{text}"
        );
        assert!(text.contains(DEFAULT_EMAIL), "names the account: {text}");
        assert!(
            text.contains("came from file"),
            "says where it came from: {text}"
        );
        assert!(!text.contains(WRONG), "{text}");
        assert!(!format!("{err:?}").contains(WRONG));
        assert_eq!(fake.logins(), 0);
    }
}

/// The environment the example reads: every missing variable is named, `MEDUSA_FLAVOR`
/// defaults to auto, and only the *name* of the password's variable is read.
#[test]
fn the_environment_is_read_and_missing_variables_are_named() {
    let full = HashMap::from([
        ("MEDUSA_URL", "http://127.0.0.1:9000/prefix/"),
        ("MEDUSA_EMAIL", "admin@example.com"),
        ("MEDUSA_PASSWORD_ENV", "EMBEDDED_TEST_PASSWORD_VAR"),
    ]);
    let read = |env: &HashMap<&str, &str>| {
        let env = env.clone();
        Config::from_lookup(move |k| env.get(k).map(|v| v.to_string()))
    };
    let config = read(&full).unwrap();
    assert_eq!(config.flavor, Flavor::Auto);
    assert_eq!(
        config.secret,
        SecretSource::Env("EMBEDDED_TEST_PASSWORD_VAR".into())
    );
    assert_eq!(
        config.uri("/admin/products").unwrap(),
        "http://127.0.0.1:9000/prefix/admin/products"
    );

    for name in ["MEDUSA_URL", "MEDUSA_EMAIL", "MEDUSA_PASSWORD_ENV"] {
        for env in [
            full.iter()
                .filter(|(k, _)| **k != name)
                .map(|(k, v)| (*k, *v))
                .collect(),
            full.iter()
                .map(|(k, v)| (*k, if *k == name { " " } else { *v }))
                .collect(),
        ] {
            let err = read(&env).unwrap_err();
            assert_eq!(err.exit_code(), 2);
            let text = err.to_string();
            assert!(text.starts_with(&format!("{name} is not set")), "{text}");
        }
    }

    for (value, flavor) in [
        ("v1", Flavor::V1),
        ("v2", Flavor::V2),
        ("auto", Flavor::Auto),
    ] {
        let mut env = full.clone();
        env.insert("MEDUSA_FLAVOR", value);
        assert_eq!(read(&env).unwrap().flavor, flavor);
    }
    let mut env = full.clone();
    env.insert("MEDUSA_FLAVOR", "v2-secret-key");
    let err = read(&env).unwrap_err();
    assert!(err.to_string().contains("v1, v2 or auto"), "{err}");

    // The password's variable is read by the library, at build: unset, it is named.
    let mut env = full.clone();
    env.insert("MEDUSA_PASSWORD_ENV", "EMBEDDED_TEST_SURELY_UNSET_7c1e");
    let err = read(&env).unwrap().token_manager().unwrap_err();
    assert!(
        err.to_string().contains("EMBEDDED_TEST_SURELY_UNSET_7c1e"),
        "{err}"
    );

    // The example's client speaks plain http only, and says so.
    let mut env = full.clone();
    env.insert("MEDUSA_URL", "https://medusa.example");
    let err = read(&env).unwrap().uri("/admin/products").unwrap_err();
    assert!(matches!(err, ExampleError::NotHttp(_)), "{err:?}");
}
