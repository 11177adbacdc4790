//! Attack 4 of issue 12: a route that answers 401 for its own reasons (Medusa v1
//! `GET /store/customers/me` when `/store/` is allowed, any plugin route) must not cost the
//! proxy its token: before the fix, one such request a second kept every caller at 503
//! `no_token`. And a credential rotation must cost a login, not a 503.
//!
//! Against the binary and the fake Medusa in both shapes. The tests count what Medusa saw
//! (logins, token checks) rather than timing anything.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::fake_medusa::{self, ALWAYS_401, FakeMedusa, Mode};
use crate::common::harness::{
    HttpClient, client, config_text, fetch as get, login_auth, password_file, wait_200,
};
use crate::common::process::Proc;

/// The proxy binary in front of a fake Medusa of `mode`, `/store/` allowed, logging in with
/// the fake's password from a file (`pw`, so a test can rotate it); already answering 200.
/// Bind `_p` and `_dir` when destructuring (`..` would drop the proxy and its folder at once).
struct Served {
    fake: FakeMedusa,
    base: String,
    pw: PathBuf,
    c: HttpClient,
    _p: Proc,
    _dir: tempfile::TempDir,
}

async fn served(mode: Mode) -> Served {
    let fake = FakeMedusa::start_mode(mode).await;
    let dir = tempfile::tempdir().unwrap();
    let pw = password_file(dir.path());
    let auth = format!("{}login_timeout = \"2s\"\n", login_auth(mode.flavor(), &pw));
    let text = config_text(
        &fake.url(),
        "",
        &auth,
        "[policy]\nallow_paths = [\"/admin/\", \"/store/\"]\n",
    );
    let cfg = dir.path().join("proxy.toml");
    std::fs::write(&cfg, text).unwrap();
    let p = Proc::start(&cfg, &[]);
    let (base, _) = p.urls().await;
    let c = client();
    wait_200(&c, &format!("{base}/admin/products")).await;
    Served {
        fake,
        base,
        pw,
        c,
        _p: p,
        _dir: dir,
    }
}

/// Medusa's own 401 body on admin and store routes, per shape.
fn medusa_401(mode: Mode) -> &'static [u8] {
    match mode {
        Mode::V1 => b"Unauthorized",
        Mode::V2 => br#"{"message":"Unauthorized"}"#,
    }
}

/// One mode of the lockout attack: `ALWAYS_401` once a second for 30 s while another client
/// sends `/admin/products` every 100 ms.
async fn a_401_route_every_second(mode: Mode) {
    let Served {
        fake,
        base,
        c,
        _p,
        _dir,
        ..
    } = served(mode).await;
    assert_eq!(fake.logins(), 1);

    let began = Instant::now();
    let attacker = {
        let (c, url) = (c.clone(), format!("{base}{ALWAYS_401}"));
        tokio::spawn(async move {
            for i in 0..30 {
                let (status, body) = get(&c, &url).await;
                assert_eq!(status, 401, "{mode:?} attack {i}: {body:?}");
                // Medusa's 401, unchanged: not a proxy error, not a replay's answer.
                assert_eq!(body.as_ref(), medusa_401(mode), "{mode:?} attack {i}");
                // The attack's rate, not synchronisation.
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };
    let mut served = 0;
    while !attacker.is_finished() {
        let (status, body) = get(&c, &format!("{base}/admin/products?n={served}")).await;
        assert_eq!(
            status, 200,
            "{mode:?} request {served} during the attack: {body:?}"
        );
        served += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    attacker.await.unwrap();
    let took = began.elapsed();
    assert!(
        served >= 100,
        "{mode:?}: only {served} requests during the attack"
    );
    assert_eq!(fake.always_401_requests(), 30, "{mode:?}");
    assert_eq!(fake.logins(), 1, "{mode:?}: the attack cost no login");
    // At most one check per 5 s over the attack (plus one for a window boundary): 7 for the
    // 30 s it takes on an idle machine. The rate is the behaviour, so the bound follows the
    // time the attack really took, which a loaded machine stretches.
    let checks = fake.token_checks();
    let most = took.as_secs() as usize / 5 + 1;
    assert!(
        (1..=most).contains(&checks),
        "{mode:?}: {checks} token checks for 30 attacks in {took:?} (at most {most})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_route_hit_every_second_for_30s_costs_no_login_and_no_503() {
    // Both shapes at once: the attack takes 30 s of wall time either way.
    tokio::join!(
        a_401_route_every_second(Mode::V1),
        a_401_route_every_second(Mode::V2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_401s_cost_one_check_and_no_login() {
    for mode in [Mode::V1, Mode::V2] {
        let Served {
            fake,
            base,
            c,
            _p,
            _dir,
            ..
        } = served(mode).await;
        let url = Arc::new(format!("{base}{ALWAYS_401}"));
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let (c, url) = (c.clone(), url.clone());
                tokio::spawn(async move { get(&c, &url).await })
            })
            .collect();
        for t in tasks {
            let (status, body) = t.await.unwrap();
            assert_eq!(status, 401, "{mode:?}: {body:?}");
            assert_eq!(body.as_ref(), medusa_401(mode), "{mode:?}");
        }
        assert_eq!(fake.always_401_requests(), 50, "{mode:?}: each sent once");
        assert_eq!(fake.token_checks(), 1, "{mode:?}: one check, single flight");
        assert_eq!(fake.logins(), 1, "{mode:?}: no login");
        let (status, _) = get(&c, &format!("{base}/admin/products")).await;
        assert_eq!(status, 200, "{mode:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_rotated_before_the_new_password_token_served_a_request_is_a_relogin() {
    for mode in [Mode::V1, Mode::V2] {
        let Served {
            fake,
            base,
            c,
            pw,
            _p,
            _dir,
            ..
        } = served(mode).await;
        // The password is rotated: the proxy notices the file and logs in with the new one.
        fake.set_credentials(fake_medusa::DEFAULT_EMAIL, "rotated-password-456");
        std::fs::write(&pw, "rotated-password-456\n").unwrap();
        fake.wait_until(|f| f.logins() == 2).await;
        // Medusa's secret rotates before that token served a single request.
        fake.rotate_secret();
        let (status, body) = get(&c, &format!("{base}/admin/products")).await;
        assert_eq!(status, 200, "{mode:?}: a re-login, not a 503: {body:?}");
        assert_eq!(fake.logins(), 3, "{mode:?}");
        assert_eq!(fake.token_checks(), 1, "{mode:?}: the 401 was checked once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_token_rejected_too_backs_off() {
    for mode in [Mode::V1, Mode::V2] {
        let Served {
            fake,
            base,
            c,
            _p,
            _dir,
            ..
        } = served(mode).await;
        // Medusa issues tokens and rejects every one of them.
        fake.set_reject_all(true);
        let (status, _) = get(&c, &format!("{base}/admin/products?n=1")).await;
        assert_eq!(status, 401, "{mode:?}: the replay's 401 is passed on");
        assert_eq!(
            fake.logins(),
            2,
            "{mode:?}: one login at once after the rejection"
        );
        assert_eq!(
            fake.token_checks(),
            2,
            "{mode:?}: the old token and the fresh one"
        );
        let (status, body) = get(&c, &format!("{base}/admin/products?n=2")).await;
        assert_eq!(status, 503, "{mode:?}: {body:?}");
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["error"], "no_token", "{mode:?}");
        assert_eq!(
            fake.logins(),
            2,
            "{mode:?}: backing off, no third login yet"
        );
    }
}
