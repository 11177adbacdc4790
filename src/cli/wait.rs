//! `wait`: poll a running proxy's readiness, for scripts and clusters without native
//! sidecars.

use std::process::ExitCode;

/// Poll `{ops}/readyz` until it answers 200.
pub async fn wait(ops: &str, timeout: std::time::Duration) -> ExitCode {
    use http_body_util::BodyExt;
    let url = format!("{}/readyz", ops.trim_end_matches('/'));
    let uri: http::Uri = match url.parse() {
        Ok(u) => u,
        Err(e) => {
            eprintln!("error: --ops {ops:?} is not a URL: {e}");
            return ExitCode::from(2);
        }
    };
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last: String;
    loop {
        let attempt =
            tokio::time::timeout(std::time::Duration::from_secs(2), client.get(uri.clone())).await;
        match attempt {
            Ok(Ok(resp)) if resp.status() == http::StatusCode::OK => {
                println!("ready");
                return ExitCode::SUCCESS;
            }
            Ok(Ok(resp)) => {
                let status = resp.status();
                let body = resp
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                last = format!("{status}: {}", String::from_utf8_lossy(&body));
            }
            Ok(Err(e)) => last = format!("cannot reach {url}: {e}"),
            Err(_) => last = format!("{url} did not answer within 2s"),
        }
        if tokio::time::Instant::now() >= deadline {
            eprintln!(
                "error: not ready after {}: {last}",
                humantime::format_duration(timeout)
            );
            return ExitCode::FAILURE;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
