//! Issue 16, "idle means asleep": with no request in flight and no connection open, the
//! proxy process wakes at most once a second on average. Counted from /proc (voluntary
//! context switches of every thread), not timed. `IDLE_SECONDS` sets the window (default 5;
//! the README's figure is 60 s on a release build: `MEDUSA_AUTH_PROXY_BIN=...`).
//!
//! It also prints, without asserting them (figures are the benchmark's, `bench/sidecar-cost.sh`),
//! the time from exec to `/readyz` 200 with a fake Medusa on loopback and the resident memory
//! when idle.

mod common;

use std::time::Duration;

use common::fake_medusa::FakeMedusa;
use common::harness::{self, client, fetch};
use common::process::Proc;

/// Voluntary context switches summed over the threads of `pid`.
fn wakeups(pid: u32) -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let status =
            std::fs::read_to_string(task.unwrap().path().join("status")).unwrap_or_default();
        total += status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    total
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_proxy_sleeps() {
    let fake = FakeMedusa::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pw = harness::password_file(dir.path());
    let cfg = dir.path().join("proxy.toml");
    let text = harness::config_text(
        &fake.url(),
        "pool_idle_timeout = \"300ms\"",
        &harness::login_auth("v1", &pw),
        "",
    );
    std::fs::write(&cfg, text).unwrap();
    let started = std::time::Instant::now();
    let p = Proc::start(&cfg, &[]);
    // Start to ready, polled every millisecond (a figure to print, not to assert).
    while p.count_lines("medusa-auth-proxy started") == 0 {
        assert!(
            started.elapsed() < common::wait::LONG,
            "no start line:\n{}",
            p.log()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let (proxy, ops) = p.urls().await;
    let c = client();
    while fetch(&c, &format!("{ops}/readyz")).await.0 != 200 {
        assert!(
            started.elapsed() < common::wait::LONG,
            "never ready:\n{}",
            p.log()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    println!(
        "start to ready: {:.1} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );
    drop(c);
    // Traffic first: a request (an access line, a pooled connection), then nothing.
    assert_eq!(
        fetch(&client(), &format!("{proxy}/admin/products")).await.0,
        200
    );
    // The client's connection is gone with its client (the proxy closes its side on the EOF,
    // at once); the pooled ones to Medusa close after 300 ms idle. Idle from then on.
    fake.wait_until(|f| f.connections() >= 1 && f.open_connections() == 0)
        .await;
    let secs: u64 = std::env::var("IDLE_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let before = wakeups(p.pid());
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let woke = wakeups(p.pid()) - before;
    println!(
        "idle RSS: {:.1} MiB (peak so far {:.1} MiB)",
        p.status_kib("VmRSS") as f64 / 1024.0,
        p.status_kib("VmHWM") as f64 / 1024.0
    );
    println!(
        "idle proxy: {woke} wake-ups in {secs} s ({:.2}/s)",
        woke as f64 / secs as f64
    );
    assert!(woke <= secs, "{woke} wake-ups in {secs} s with no traffic");
}
