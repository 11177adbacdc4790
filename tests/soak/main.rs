//! Soak (issue 7): the proxy binary under steady mixed load against the fake Medusa with
//! short tokens and periodic outages, for a bounded time. Not part of `cargo test`: the test
//! is `#[ignore]`d; `tests/soak/run.sh` runs it in release mode.
//!
//! Every `SOAK_REPORT_EVERY` seconds it prints the requests, failures by kind (inside and
//! outside the injected outages), logins, and the proxy's RSS and open file descriptors; at
//! the end a verdict: no failure outside an outage, RSS and fds flat after warm-up (the mean of
//! the last third of the samples against the mean of the second third).
//!
//! Knobs (environment): `SOAK_SECONDS` (600), `SOAK_CLIENTS` (8), `SOAK_PAUSE_MS` (2, per
//! client between requests), `SOAK_TOKEN_SECONDS` (5), `SOAK_RESTART_EVERY` (60),
//! `SOAK_OUTAGE_SECONDS` (2: how long Medusa stays down per restart), `SOAK_RECOVERY_SECONDS`
//! (3: after Medusa is back, failures still count as the outage's while the proxy logs in
//! again), `SOAK_REPORT_EVERY` (10), `SOAK_MEDUSA_IDLE_MS` (5000: Medusa closes idle
//! keep-alive connections like Node; 0 = never), `SOAK_FLAVOR` (`v1` or `v2`).

#[path = "../common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::fake_medusa::{FakeMedusa, Mode};
use common::harness::{HttpClient, client, login_auth, password_file, proxy_config};
use common::process::Proc;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number")),
        Err(_) => default,
    }
}

/// An outage: Medusa down from `down` until `up`, plus the recovery grace.
#[derive(Clone, Copy)]
struct Outage {
    down: Instant,
    /// When Medusa was back (`None` while it is still down).
    up: Option<Instant>,
    /// `up` plus the recovery grace.
    until: Option<Instant>,
    /// The last failure attributed to this outage.
    last_failure: Option<Instant>,
}

#[derive(Default)]
struct Stats {
    requests: u64,
    ok: u64,
    /// Failures by kind, for requests that overlapped an outage (incl. its recovery grace).
    inside: BTreeMap<String, u64>,
    /// Failures by kind, for requests that did not.
    outside: BTreeMap<String, u64>,
    by_method: BTreeMap<&'static str, u64>,
}

struct Shared {
    stats: Mutex<Stats>,
    outages: Mutex<Vec<Outage>>,
    stop: AtomicBool,
    seq: AtomicU64,
}

impl Shared {
    /// Whether a failed request overlapped an outage (then it is noted as that outage's).
    fn in_outage(&self, started: Instant, ended: Instant) -> bool {
        let mut outages = self.outages.lock().unwrap();
        let hit = outages
            .iter_mut()
            .find(|o| ended >= o.down && o.until.is_none_or(|u| started <= u));
        hit.map(|o| o.last_failure = Some(ended)).is_some()
    }

    fn record(&self, method: &'static str, started: Instant, failure: Option<String>) {
        let ended = Instant::now();
        let inside = failure.is_some() && self.in_outage(started, ended);
        let mut s = self.stats.lock().unwrap();
        s.requests += 1;
        *s.by_method.entry(method).or_insert(0) += 1;
        match failure {
            None => s.ok += 1,
            Some(kind) if inside => *s.inside.entry(kind).or_insert(0) += 1,
            Some(kind) => *s.outside.entry(kind).or_insert(0) += 1,
        }
    }
}

/// One request of the mix; `None` on success, else the failure's kind.
async fn one(c: &HttpClient, base: &str, n: u64) -> (&'static str, Option<String>) {
    // GET 50 %, POST 25 %, DELETE 15 %, a 256 KiB download 5 %, a 100 KiB upload 5 %.
    let (method, label, path, body): (Method, &'static str, String, Bytes) = match n % 20 {
        0..=9 => (
            Method::GET,
            "GET",
            format!("/admin/products?n={n}"),
            Bytes::new(),
        ),
        10..=14 => (
            Method::POST,
            "POST",
            format!("/admin/products?n={n}"),
            Bytes::from(format!("{{\"title\":\"soak {n}\"}}")),
        ),
        15..=17 => (
            Method::DELETE,
            "DELETE",
            format!("/admin/products/prod_{n}"),
            Bytes::new(),
        ),
        18 => (
            Method::GET,
            "GET download",
            "/admin/download?bytes=262144".to_owned(),
            Bytes::new(),
        ),
        _ => (
            Method::POST,
            "POST upload",
            "/admin/upload".to_owned(),
            Bytes::from(vec![b'u'; 100 * 1024]),
        ),
    };
    let req = Request::builder()
        .method(method)
        .uri(format!("{base}{path}"))
        .header("content-type", "application/json")
        .body(Full::new(body))
        .unwrap();
    let attempt = async {
        let resp = c
            .request(req)
            .await
            .map_err(|e| format!("transport: {}", short(&e)))?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("{status} body broke: {}", short(&e)))?
            .to_bytes();
        if !(200..300).contains(&status) {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            return Err(format!("{status} {}", v["error"].as_str().unwrap_or("-")));
        }
        if label == "GET download" && body.len() != 262_144 {
            return Err(format!("short download: {} bytes", body.len()));
        }
        Ok(())
    };
    match tokio::time::timeout(Duration::from_secs(30), attempt).await {
        Ok(Ok(())) => (label, None),
        Ok(Err(kind)) => (label, Some(kind)),
        Err(_) => (label, Some("no answer within 30 s".to_owned())),
    }
}

fn short(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s = inner.to_string();
        cur = inner.source();
    }
    s.chars().take(80).collect()
}

fn mean(v: &[u64]) -> f64 {
    v.iter().sum::<u64>() as f64 / v.len().max(1) as f64
}

/// The proxy binary in front of `fake_url`, its log in `dir/proxy.log`; its address.
async fn start_proxy(dir: &Path, fake_url: &str, flavor: &str) -> (Proc, String) {
    let pw = password_file(dir);
    let cfg = dir.join("proxy.toml");
    let auth = format!("{}login_timeout = \"2s\"", login_auth(flavor, &pw));
    let text = proxy_config(
        "shutdown_grace = \"10s\"",
        fake_url,
        "request_timeout = \"20s\"",
        &auth,
        "[log]\naccess = false",
    );
    std::fs::write(&cfg, text).unwrap();
    let p = Proc::start_logging_to(&cfg, &[], &dir.join("proxy.log"));
    let addr = p.addr().await;
    (p, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak: minutes long; run by tests/soak/run.sh"]
async fn soak() {
    let seconds = env_u64("SOAK_SECONDS", 600);
    let clients = env_u64("SOAK_CLIENTS", 8);
    let pause = Duration::from_millis(env_u64("SOAK_PAUSE_MS", 2));
    let token = Duration::from_secs(env_u64("SOAK_TOKEN_SECONDS", 5));
    let restart_every = Duration::from_secs(env_u64("SOAK_RESTART_EVERY", 60));
    let outage = Duration::from_secs(env_u64("SOAK_OUTAGE_SECONDS", 2));
    let recovery = Duration::from_secs(env_u64("SOAK_RECOVERY_SECONDS", 3));
    let report_every = Duration::from_secs(env_u64("SOAK_REPORT_EVERY", 10));
    let idle_ms = env_u64("SOAK_MEDUSA_IDLE_MS", 5000);
    let flavor = std::env::var("SOAK_FLAVOR").unwrap_or_else(|_| "v1".into());
    let mode = match flavor.as_str() {
        "v1" => Mode::V1,
        "v2" => Mode::V2,
        other => panic!("SOAK_FLAVOR={other:?}: v1 or v2"),
    };

    let fake = Arc::new(FakeMedusa::start_mode(mode).await);
    fake.set_record_requests(false);
    fake.set_token_lifetime(token);
    if idle_ms > 0 {
        fake.set_idle_timeout(Some(Duration::from_millis(idle_ms)));
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr) = start_proxy(dir.path(), &fake.url(), &flavor).await;
    let pid = child.pid();
    let base = format!("http://{addr}");
    println!(
        "soak: {seconds} s, {clients} clients (pause {pause:?}), {flavor} tokens of {token:?}, \
         Medusa down {outage:?} every {restart_every:?} (+{recovery:?} recovery), Medusa idle \
         close {idle_ms} ms; proxy pid {pid} at {base}, log {}",
        dir.path().join("proxy.log").display()
    );

    let shared = Arc::new(Shared {
        stats: Mutex::default(),
        outages: Mutex::default(),
        stop: AtomicBool::new(false),
        seq: AtomicU64::new(0),
    });
    let load: Vec<_> = (0..clients)
        .map(|_| {
            let (shared, base) = (shared.clone(), base.clone());
            tokio::spawn(async move {
                let c = client();
                while !shared.stop.load(SeqCst) {
                    let n = shared.seq.fetch_add(1, SeqCst);
                    let started = Instant::now();
                    let (method, failure) = one(&c, &base, n).await;
                    shared.record(method, started, failure);
                    if !pause.is_zero() {
                        tokio::time::sleep(pause).await;
                    }
                }
            })
        })
        .collect();

    // Outages.
    let chaos = {
        let (shared, fake) = (shared.clone(), fake.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(restart_every).await;
                let down = Instant::now();
                shared.outages.lock().unwrap().push(Outage {
                    down,
                    up: None,
                    until: None,
                    last_failure: None,
                });
                fake.stop().await;
                tokio::time::sleep(outage).await;
                fake.restart().await;
                let up = Instant::now();
                if let Some(o) = shared.outages.lock().unwrap().last_mut() {
                    (o.up, o.until) = (Some(up), Some(up + recovery));
                }
            }
        })
    };

    let t0 = Instant::now();
    let mut rss = Vec::new();
    let mut fds = Vec::new();
    let mut last_requests = 0;
    println!(
        "{:>6} {:>9} {:>7} {:>7} {:>8} {:>9} {:>6} {:>6}  failures inside outages | outside",
        "t_s", "requests", "req/s", "logins", "restarts", "rss_kib", "fds", "conns"
    );
    while t0.elapsed() < Duration::from_secs(seconds) {
        let left = Duration::from_secs(seconds).saturating_sub(t0.elapsed());
        tokio::time::sleep(report_every.min(left)).await;
        let r = child.try_status_kib("VmRSS").unwrap_or(0);
        let f = child.try_open_fds().unwrap_or(0) as u64;
        rss.push(r);
        fds.push(f);
        let s = shared.stats.lock().unwrap();
        let restarts = shared.outages.lock().unwrap().len();
        let rate = (s.requests - last_requests) as f64 / report_every.as_secs_f64();
        last_requests = s.requests;
        println!(
            "{:>6.0} {:>9} {:>7.0} {:>7} {:>8} {:>9} {:>6} {:>6}  {:?} | {:?}",
            t0.elapsed().as_secs_f64(),
            s.requests,
            rate,
            fake.logins() + fake.refreshes(),
            restarts,
            r,
            f,
            fake.connections(),
            s.inside,
            s.outside
        );
        let _ = std::io::stdout().flush();
    }
    shared.stop.store(true, SeqCst);
    chaos.abort();
    for t in load {
        let _ = t.await;
    }
    // Medusa back up if the run ended inside an outage, then a clean stop.
    let _ = fake.restart().await;
    child.signal("TERM");
    let exit = child.try_wait_exit(Duration::from_secs(15)).await;

    let s = shared.stats.lock().unwrap();
    let outside: u64 = s.outside.values().sum();
    let inside: u64 = s.inside.values().sum();
    let third = rss.len() / 3;
    let (rss2, rss3, fd2, fd3) = if third >= 1 {
        (
            mean(&rss[third..2 * third]),
            mean(&rss[rss.len() - third..]),
            mean(&fds[third..2 * third]),
            mean(&fds[fds.len() - third..]),
        )
    } else {
        (0.0, 0.0, 0.0, 0.0)
    };
    // Flat: the last third's mean within 10 % (+2 MiB) of the second third's; fds within one
    // per client (each client's connection to the proxy and the proxy's to Medusa come and
    // go with the load; a leak grows without bound).
    let rss_flat = third >= 1 && rss3 <= rss2 * 1.10 + 2048.0;
    let fds_flat = third >= 1 && fd3 <= fd2 + clients as f64;
    let clean_exit = exit.is_some_and(|e| e.success());
    println!();
    println!(
        "soak summary: {} requests in {} s ({:.0}/s) {:?}, ok {}, failures inside outages {inside} \
         {:?}, outside {outside} {:?}; {} logins/refreshes, {} restarts",
        s.requests,
        seconds,
        s.requests as f64 / seconds as f64,
        s.by_method,
        s.ok,
        s.inside,
        s.outside,
        fake.logins() + fake.refreshes(),
        shared.outages.lock().unwrap().len()
    );
    println!(
        "  RSS KiB: min {} max {} mean 2nd third {rss2:.0} last third {rss3:.0} -> {}",
        rss.iter().min().unwrap_or(&0),
        rss.iter().max().unwrap_or(&0),
        if rss_flat { "flat" } else { "GROWING" }
    );
    println!(
        "  fds: min {} max {} mean 2nd third {fd2:.1} last third {fd3:.1} -> {}",
        fds.iter().min().unwrap_or(&0),
        fds.iter().max().unwrap_or(&0),
        if fds_flat { "flat" } else { "GROWING" }
    );
    for (i, o) in shared.outages.lock().unwrap().iter().enumerate() {
        let Some(up) = o.up else { continue };
        let last = o.last_failure.map_or("none".to_owned(), |l| {
            if l > up {
                format!("{:.2} s after Medusa was back", (l - up).as_secs_f64())
            } else {
                "while Medusa was down".to_owned()
            }
        });
        println!(
            "  outage {} at {:.0} s: Medusa down {:.2} s, last failure {last}",
            i + 1,
            (o.down - t0).as_secs_f64(),
            (up - o.down).as_secs_f64()
        );
    }
    println!(
        "  proxy exit after SIGTERM: {}",
        exit.map_or("did not exit within 15 s".to_owned(), |e| e.to_string())
    );
    let pass = outside == 0 && rss_flat && fds_flat && clean_exit && s.ok > 0;
    println!("VERDICT: {}", if pass { "PASS" } else { "FAIL" });
    assert!(
        pass,
        "soak failed: outside failures {outside}, rss flat {rss_flat}, fds flat {fds_flat}, \
         clean exit {clean_exit} (log {})",
        dir.path().join("proxy.log").display()
    );
}
