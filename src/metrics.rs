//! Prometheus metrics (prometheus-client, OpenMetrics text on `GET /metrics`).
//!
//! Label sets that the request path touches are resolved once at start-up into plain counters,
//! so recording a request is a few atomic adds: no hashing, no locks, no allocation. The
//! per-request series carry the `identity` the request was served as: each identity's are
//! resolved once into an [`IdentityMetrics`] handle ([`Metrics::identity`]); a request refused
//! before its client key named an identity counts under `identity=""` ([`NO_IDENTITY`]).

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    identity: Arc<str>,
    method: &'static str,
    status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    identity: Arc<str>,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeniedLabels {
    identity: Arc<str>,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplayLabels {
    identity: Arc<str>,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckLabels {
    identity: Arc<str>,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LoginLabels {
    kind: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IdentityLoginLabels {
    identity: String,
    kind: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IdentityLabel {
    identity: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// Outcomes of a token check after a 401 (`error`: Medusa could not say; the token was kept).
pub const TOKEN_CHECK_OUTCOMES: [&str; 3] = ["accepted", "rejected", "error"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE", "other",
];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Upstream error kinds (`retried`: a broken keep-alive connection, an idempotent request sent
/// again; `resent`: a pooled connection closed before taking the request, which went out on
/// another one, nothing of it having been written). Each is counted per identity but
/// `resent`: an upstream's connection pool counts it, shared by its identities and their
/// logins, under `identity=""`.
pub const UPSTREAM_ERROR_KINDS: [&str; 6] = [
    "unreachable",
    "timeout",
    "certificate",
    "encoded",
    "retried",
    "resent",
];

/// The `identity` label of requests refused before their client key named an identity (peer,
/// host, origin, a missing or unknown key on a listener that picks the identity by key), and of
/// `upstream_errors_total{kind="resent"}`. Prometheus reads an empty label as no label.
pub const NO_IDENTITY: &str = "";

/// The duration histogram of one identity: 0.5 ms .. ~16 s, a proxy's own overhead and
/// Medusa's slow exports both fit.
fn duration_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0005, 2.0, 16,
    ))
}

/// Connection-level counters the accept loop updates (`server` knows nothing else of metrics).
#[derive(Clone, Debug, Default)]
pub struct ConnMetrics {
    /// Client connections open now on the proxy listener.
    pub open: Gauge,
    /// Closed at accept: the peer is outside `access.allow_cidrs`.
    pub refused_peer: Counter,
    /// Closed at accept: `proxy.max_connections` were open.
    pub refused_full: Counter,
    /// Closed at accept: the peer held `proxy.max_connections_per_peer`.
    pub refused_per_peer: Counter,
    /// Closed by the proxy: no request head within `proxy.header_read_timeout`.
    pub closed_header_timeout: Counter,
    /// Closed by the proxy: no request in flight for `proxy.idle_timeout`.
    pub closed_idle: Counter,
    /// Closed by the proxy: the client accepted no response bytes for `proxy.send_timeout`.
    pub closed_send_timeout: Counter,
    /// Closed by the proxy: the TLS handshake failed (plain HTTP, no common protocol, an
    /// alert from the client). A handshake not done in `proxy.header_read_timeout` counts as
    /// `closed_header_timeout`.
    pub closed_tls_handshake: Counter,
}

/// The proxy's Prometheus registry: every metric it exports, under the prefix
/// `medusa_auth_proxy_`, and the handles the request path, the token manager, the reloader and
/// the accept loop record through. Shared as `Arc<Metrics>`; it implements
/// [`TokenEvents`](crate::auth::TokenEvents), so it can be handed to a
/// [`TokenManager`](crate::auth::TokenManager) as is.
///
/// ```
/// use medusa_auth_proxy::metrics::Metrics;
///
/// let metrics = Metrics::new();
/// let reporting = metrics.identity("reporting");
/// reporting.request(&http::Method::GET, 200, 0.004);
/// reporting.denied("route_denied");
/// let text = metrics.encode();
/// assert!(text.contains(
///     r#"medusa_auth_proxy_requests_total{identity="reporting",method="GET",status_class="2xx"} 1"#
/// ));
/// assert!(text.contains(
///     r#"medusa_auth_proxy_denied_requests_total{identity="reporting",reason="route_denied"} 1"#
/// ));
/// ```
pub struct Metrics {
    registry: Registry,
    conns: ConnMetrics,
    requests: Family<RequestLabels, Counter>,
    duration: Family<IdentityLabel, Histogram, fn() -> Histogram>,
    in_flight: Gauge,
    upstream_errors: Family<KindLabels, Counter>,
    logins: Family<LoginLabels, Counter>,
    replays: Family<ReplayLabels, Counter>,
    denied: Family<DeniedLabels, Counter>,
    token_expiry: Gauge<f64, AtomicU64>,
    reloads: Family<ResultLabel, Counter>,
    token_checks: Family<CheckLabels, Counter>,
    identity_logins: Family<IdentityLoginLabels, Counter>,
    identity_token_expiry: Family<IdentityLabel, Gauge<f64, AtomicU64>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// A registry with every metric registered and `medusa_auth_proxy_build_info{version}`
    /// set to 1. The label sets of an identity are created by [`Metrics::identity`] (so each
    /// is exported as 0 before its first event).
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("medusa_auth_proxy");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by identity, method and status class",
            requests.clone(),
        );
        let duration = Family::<IdentityLabel, Histogram, fn() -> Histogram>::new_with_constructor(
            duration_histogram,
        );
        registry.register_with_unit(
            "request_duration",
            "Time from request head to the end of the response body, by identity",
            prometheus_client::registry::Unit::Seconds,
            duration.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "requests_in_flight",
            "Requests being handled",
            in_flight.clone(),
        );
        let upstream_errors = Family::<KindLabels, Counter>::default();
        registry.register(
            "upstream_errors",
            "Requests that failed towards Medusa, by identity and kind",
            upstream_errors.clone(),
        );
        // Exported (as 0) before its first error; the other kinds come with each identity.
        drop(upstream_errors.get_or_create(&KindLabels {
            identity: NO_IDENTITY.into(),
            kind: "resent",
        }));
        let logins = Family::<LoginLabels, Counter>::default();
        registry.register(
            "logins",
            "Credential acquisitions (login, refresh, key_check) by result",
            logins.clone(),
        );
        let replays = Family::<ReplayLabels, Counter>::default();
        registry.register(
            "replays",
            "Requests replayed after Medusa rejected the token, by identity and the replay's result",
            replays.clone(),
        );
        let denied = Family::<DeniedLabels, Counter>::default();
        registry.register(
            "denied_requests",
            "Requests refused by the proxy itself, by identity and reason",
            denied.clone(),
        );
        let token_expiry = Gauge::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "token_expiry_timestamp",
            "When the current credential stops being used (Unix time; 0 = none held)",
            prometheus_client::registry::Unit::Seconds,
            token_expiry.clone(),
        );
        let identity_logins = Family::<IdentityLoginLabels, Counter>::default();
        registry.register(
            "identity_logins",
            "Credential acquisitions (login, refresh, key_check) by identity and result",
            identity_logins.clone(),
        );
        let identity_token_expiry = Family::<IdentityLabel, Gauge<f64, AtomicU64>>::default();
        registry.register_with_unit(
            "identity_token_expiry_timestamp",
            "When each identity's current credential stops being used (Unix time; 0 = none held)",
            prometheus_client::registry::Unit::Seconds,
            identity_token_expiry.clone(),
        );
        let reloads = Family::<ResultLabel, Counter>::default();
        registry.register(
            "config_reloads",
            "Configuration reloads by result",
            reloads.clone(),
        );
        let token_checks = Family::<CheckLabels, Counter>::default();
        registry.register(
            "token_checks",
            "Checks of the token after a 401 from Medusa, by identity and outcome",
            token_checks.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("build_info", "Build information", build);
        let conns = ConnMetrics::default();
        registry.register(
            "connections_open",
            "Client connections open on the proxy listener",
            conns.open.clone(),
        );
        let refused = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "connections_refused",
            "Client connections closed at accept, by reason (peer_not_allowed, max_connections, max_connections_per_peer)",
            refused.clone(),
        );
        let closed = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "connections_closed",
            "Client connections the proxy closed, by reason (header_read_timeout, idle_timeout, send_timeout, tls_handshake)",
            closed.clone(),
        );
        // One statement each: a `get_or_create` guard held across another would deadlock.
        let counter = |family: &Family<ReasonLabel, Counter>, reason| {
            family.get_or_create(&ReasonLabel { reason }).clone()
        };
        let conns = ConnMetrics {
            refused_peer: counter(&refused, "peer_not_allowed"),
            refused_full: counter(&refused, "max_connections"),
            refused_per_peer: counter(&refused, "max_connections_per_peer"),
            closed_header_timeout: counter(&closed, "header_read_timeout"),
            closed_idle: counter(&closed, "idle_timeout"),
            closed_send_timeout: counter(&closed, "send_timeout"),
            closed_tls_handshake: counter(&closed, "tls_handshake"),
            ..conns
        };
        Arc::new(Metrics {
            registry,
            conns,
            requests,
            duration,
            in_flight,
            upstream_errors,
            logins,
            replays,
            denied,
            token_expiry,
            reloads,
            token_checks,
            identity_logins,
            identity_token_expiry,
        })
    }

    /// The per-request series of identity `name` ([`NO_IDENTITY`] for requests refused
    /// before one was known), resolved once: every `requests_total` label set and the
    /// duration histogram are created now (exported as 0), and for a named identity each
    /// `upstream_errors_total` kind it can count and each `token_checks_total` outcome.
    /// Asking twice for one name gives handles on the same series. Label values come from
    /// the configuration's identity names, so the label set stays bounded.
    pub fn identity(&self, name: &str) -> IdentityMetrics {
        let identity: Arc<str> = name.into();
        let requests = std::array::from_fn(|m| {
            std::array::from_fn(|c| {
                self.requests
                    .get_or_create(&RequestLabels {
                        identity: identity.clone(),
                        method: METHODS[m],
                        status_class: CLASSES[c],
                    })
                    .clone()
            })
        });
        let duration = self
            .duration
            .get_or_create(&IdentityLabel {
                identity: identity.clone(),
            })
            .clone();
        if name != NO_IDENTITY {
            for kind in UPSTREAM_ERROR_KINDS.into_iter().filter(|k| *k != "resent") {
                drop(self.upstream_errors.get_or_create(&KindLabels {
                    identity: identity.clone(),
                    kind,
                }));
            }
            for outcome in TOKEN_CHECK_OUTCOMES {
                drop(self.token_checks.get_or_create(&CheckLabels {
                    identity: identity.clone(),
                    outcome,
                }));
            }
        }
        IdentityMetrics(Arc::new(Series {
            identity,
            requests,
            duration,
            replays: self.replays.clone(),
            denied: self.denied.clone(),
            upstream_errors: self.upstream_errors.clone(),
        }))
    }

    /// The proxy listener's connection counters.
    pub fn connections(&self) -> &ConnMetrics {
        &self.conns
    }

    /// `medusa_auth_proxy_requests_in_flight`: requests between their head and the end of
    /// their response body. Whoever increments it decrements it when the request ends.
    pub fn in_flight(&self) -> &Gauge {
        &self.in_flight
    }

    /// The counter of one upstream error kind under `identity=""`, for code below the
    /// identities that counts without a `Metrics` (an upstream's pool counting `resent`).
    pub fn upstream_error_counter(&self, kind: &'static str) -> Counter {
        self.upstream_errors
            .get_or_create(&KindLabels {
                identity: NO_IDENTITY.into(),
                kind,
            })
            .clone()
    }

    /// Count one credential acquisition in `medusa_auth_proxy_logins_total`: `kind` is `login`,
    /// `refresh` or `key_check`, `ok` gives the `result` label (`success` or `failure`).
    pub fn login(&self, kind: &'static str, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.logins
            .get_or_create(&LoginLabels { kind, result })
            .inc();
    }

    /// Set `medusa_auth_proxy_token_expiry_timestamp_seconds`: when the credential held stops
    /// being used, in seconds since the Unix epoch; 0 when none is held.
    pub fn token_expiry(&self, unix_seconds: f64) {
        self.token_expiry.set(unix_seconds);
    }

    /// A login attempt of one identity ended (counted in `logins` too, by the caller).
    pub fn identity_login(&self, identity: &str, kind: &'static str, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.identity_logins
            .get_or_create(&IdentityLoginLabels {
                identity: identity.to_owned(),
                kind,
                result,
            })
            .inc();
    }

    /// When one identity's credential stops being used (Unix time; 0: none held).
    pub fn identity_token_expiry(&self, identity: &str, unix_seconds: f64) {
        self.identity_token_expiry
            .get_or_create(&IdentityLabel {
                identity: identity.into(),
            })
            .set(unix_seconds);
    }

    /// An identity was removed by a reload: its expiry gauge leaves the export (its counters
    /// stay: they only ever count up).
    pub fn forget_identity(&self, identity: &str) {
        self.identity_token_expiry.remove(&IdentityLabel {
            identity: identity.into(),
        });
    }

    /// Count one configuration reload in `medusa_auth_proxy_config_reloads_total` (`result`:
    /// `success` or `failure`; a failed reload keeps the running configuration).
    pub fn reload(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.reloads.get_or_create(&ResultLabel { result }).inc();
    }

    /// Count one check of `identity`'s token after a 401 from Medusa in
    /// `medusa_auth_proxy_token_checks_total`; `outcome` is one of [`TOKEN_CHECK_OUTCOMES`].
    pub fn token_check(&self, identity: &str, outcome: &'static str) {
        self.token_checks
            .get_or_create(&CheckLabels {
                identity: identity.into(),
                outcome,
            })
            .inc();
    }

    /// Every metric in the OpenMetrics text format (what `GET /metrics` on the ops listener
    /// answers).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The per-request series of one identity ([`Metrics::identity`]): `requests_total` and the
/// duration histogram resolved into plain counters, so counting a request is a few atomic
/// adds (no hashing, no lock, no allocation); replays, denials and upstream errors, rarer,
/// look their label set up when they happen. Cheap to clone: one `Arc`.
///
/// ```
/// use medusa_auth_proxy::metrics::Metrics;
///
/// let metrics = Metrics::new();
/// let catalog = metrics.identity("catalog");
/// catalog.request(&http::Method::POST, 502, 0.25);
/// catalog.upstream_error("unreachable");
/// let text = metrics.encode();
/// assert!(text.contains(
///     r#"medusa_auth_proxy_requests_total{identity="catalog",method="POST",status_class="5xx"} 1"#
/// ));
/// assert!(text.contains(
///     r#"medusa_auth_proxy_upstream_errors_total{identity="catalog",kind="unreachable"} 1"#
/// ));
/// ```
#[derive(Clone)]
pub struct IdentityMetrics(Arc<Series>);

struct Series {
    identity: Arc<str>,
    requests: [[Counter; CLASSES.len()]; METHODS.len()],
    duration: Histogram,
    replays: Family<ReplayLabels, Counter>,
    denied: Family<DeniedLabels, Counter>,
    upstream_errors: Family<KindLabels, Counter>,
}

impl std::fmt::Debug for IdentityMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("IdentityMetrics")
            .field(&self.0.identity)
            .finish()
    }
}

impl IdentityMetrics {
    /// The `identity` label value of its series.
    pub fn name(&self) -> &str {
        &self.0.identity
    }

    /// Record a finished request: one in `medusa_auth_proxy_requests_total` by method (a
    /// method outside the nine standard ones counts as `other`) and status class, and
    /// `seconds` (from the request head to the end of the response body) in
    /// `medusa_auth_proxy_request_duration_seconds`.
    pub fn request(&self, method: &http::Method, status: u16, seconds: f64) {
        let m = METHODS
            .iter()
            .position(|m| *m == method.as_str())
            .unwrap_or(METHODS.len() - 1);
        let c = usize::from((status / 100).clamp(1, 5) - 1);
        self.0.requests[m][c].inc();
        self.0.duration.observe(seconds);
    }

    /// Count one request replayed with a new token after Medusa rejected the first, in
    /// `medusa_auth_proxy_replays_total`: `status` is the replay's answer, 401 counting as
    /// `rejected` and anything else as `success`.
    pub fn replay(&self, status: u16) {
        let result = if status == 401 { "rejected" } else { "success" };
        self.0
            .replays
            .get_or_create(&ReplayLabels {
                identity: self.0.identity.clone(),
                result,
            })
            .inc();
    }

    /// Count one request the proxy refused itself, in
    /// `medusa_auth_proxy_denied_requests_total`; `reason` is the JSON `error` code of the
    /// answer (`route_denied`, `peer_not_allowed`, ..., see [`crate::error`]).
    pub fn denied(&self, reason: &'static str) {
        self.0
            .denied
            .get_or_create(&DeniedLabels {
                identity: self.0.identity.clone(),
                reason,
            })
            .inc();
    }

    /// Count one failure towards Medusa in `medusa_auth_proxy_upstream_errors_total`; `kind`
    /// is one of [`UPSTREAM_ERROR_KINDS`] (another value makes a new label).
    pub fn upstream_error(&self, kind: &'static str) {
        self.0
            .upstream_errors
            .get_or_create(&KindLabels {
                identity: self.0.identity.clone(),
                kind,
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        let m = Metrics::new();
        let default = m.identity("default");
        default.request(&http::Method::GET, 200, 0.001);
        default.request(&http::Method::from_bytes(b"PROPFIND").unwrap(), 503, 0.2);
        m.login("login", true);
        default.replay(200);
        default.denied("route_denied");
        m.token_expiry(1.8e9);
        m.reload(false);
        m.token_check("default", "accepted");
        default.upstream_error("timeout");
        m.upstream_error_counter("resent").inc();
        let text = m.encode();
        for needle in [
            "medusa_auth_proxy_requests_total{identity=\"default\",method=\"GET\",status_class=\"2xx\"} 1",
            "medusa_auth_proxy_requests_total{identity=\"default\",method=\"other\",status_class=\"5xx\"} 1",
            "medusa_auth_proxy_request_duration_seconds_bucket{le=\"+Inf\",identity=\"default\"} 2",
            "medusa_auth_proxy_request_duration_seconds_count{identity=\"default\"} 2",
            "medusa_auth_proxy_requests_in_flight 0",
            "medusa_auth_proxy_upstream_errors_total{identity=\"default\",kind=\"timeout\"} 1",
            "medusa_auth_proxy_upstream_errors_total{identity=\"default\",kind=\"unreachable\"} 0",
            // Every kind the proxy counts is exported from the start (README lists them).
            "medusa_auth_proxy_upstream_errors_total{identity=\"default\",kind=\"retried\"} 0",
            // Counted by the pool, below the identities.
            "medusa_auth_proxy_upstream_errors_total{identity=\"\",kind=\"resent\"} 1",
            "medusa_auth_proxy_logins_total{kind=\"login\",result=\"success\"} 1",
            "medusa_auth_proxy_replays_total{identity=\"default\",result=\"success\"} 1",
            "medusa_auth_proxy_denied_requests_total{identity=\"default\",reason=\"route_denied\"} 1",
            "medusa_auth_proxy_token_expiry_timestamp_seconds 1800000000",
            "medusa_auth_proxy_config_reloads_total{result=\"failure\"} 1",
            "medusa_auth_proxy_token_checks_total{identity=\"default\",outcome=\"accepted\"} 1",
            "medusa_auth_proxy_token_checks_total{identity=\"default\",outcome=\"error\"} 0",
            "medusa_auth_proxy_build_info{version=\"",
            "medusa_auth_proxy_connections_open 0",
            "medusa_auth_proxy_connections_refused_total{reason=\"max_connections\"} 0",
            "medusa_auth_proxy_connections_closed_total{reason=\"send_timeout\"} 0",
            "medusa_auth_proxy_connections_closed_total{reason=\"tls_handshake\"} 0",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }

    #[test]
    fn each_identity_counts_in_its_own_series_and_a_name_maps_to_one() {
        let m = Metrics::new();
        let reporting = m.identity("reporting");
        let catalog = m.identity("catalog");
        let none = m.identity(NO_IDENTITY);
        reporting.request(&http::Method::GET, 200, 0.001);
        reporting.request(&http::Method::GET, 204, 0.001);
        catalog.request(&http::Method::GET, 200, 0.001);
        none.request(&http::Method::GET, 407, 0.0001);
        none.denied("proxy_auth_required");
        reporting.denied("route_denied");
        // A second handle of a name is the same series (a listener per identity and the
        // by-key listener both ask).
        m.identity("catalog")
            .request(&http::Method::GET, 200, 0.001);
        let text = m.encode();
        let count = |series: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
                .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        };
        let get = |id: &str, class: &str| {
            count(&format!(
                "medusa_auth_proxy_requests_total{{identity=\"{id}\",method=\"GET\",status_class=\"{class}\"}}"
            ))
        };
        assert_eq!(get("reporting", "2xx"), 2.0);
        assert_eq!(get("catalog", "2xx"), 2.0);
        assert_eq!(get("", "4xx"), 1.0);
        assert_eq!(get("reporting", "4xx"), 0.0);
        assert_eq!(
            count(
                "medusa_auth_proxy_denied_requests_total{identity=\"\",reason=\"proxy_auth_required\"}"
            ),
            1.0
        );
        assert_eq!(
            count(
                "medusa_auth_proxy_denied_requests_total{identity=\"reporting\",reason=\"route_denied\"}"
            ),
            1.0
        );
        assert_eq!(
            count("medusa_auth_proxy_request_duration_seconds_count{identity=\"catalog\"}"),
            2.0
        );
        // Nothing upstream is ever counted under the unknown identity but `resent`.
        assert!(!text.contains("upstream_errors_total{identity=\"\",kind=\"timeout\""));
        assert!(!text.contains("token_checks_total{identity=\"\""));
        assert_eq!(format!("{catalog:?}"), "IdentityMetrics(\"catalog\")");
    }
}
