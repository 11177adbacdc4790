//! The running identities: each one's token manager (its login driver running) and client to
//! its upstream, over one pooled client per upstream. Built at start; a reload builds the next
//! roster from the new configuration in place:
//!
//! - an identity whose name, upstream settings, flavor and token timings did not change is
//!   **kept**: its token manager, token and driver stay (a changed email, password or key is
//!   handed to its login, and only then its token is dropped and it logs in again);
//! - a new identity, or one whose upstream, flavor or timings changed, is **started**: a new
//!   token manager whose driver logs in at once (each in its own task, so several new ones log
//!   in concurrently and none waits for another);
//! - an identity the new configuration no longer names is **stopped**: its driver ends, its
//!   expiry gauge leaves `/metrics`; requests already in flight with its token finish.
//!
//! An upstream client (its pool of connections) is kept while its settings are unchanged.

use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::auth::TokenManager;
use crate::auth::login::Login;
use crate::config::{ConfigError, IdentitySettings, Settings, UpstreamSettings};
use crate::identity::Identity;
use crate::metrics::Metrics;
use crate::proxy::limit::ProxyBody;
use crate::secret::Secret;
use crate::upstream::{TlsSetupError, Upstream};

/// Why a roster could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RosterError {
    /// An identity names an upstream the configuration does not have.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// An upstream's client could not be set up (`ca_file`, `url`).
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
}

/// The identities and upstream clients in force. See the module documentation.
pub struct Roster {
    pools: Vec<Pool>,
    members: Vec<Member>,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
}

/// One upstream's pooled client.
struct Pool {
    settings: UpstreamSettings,
    client: Upstream<ProxyBody>,
}

/// One running identity.
struct Member {
    settings: IdentitySettings,
    upstream: UpstreamSettings,
    identity: Identity,
    /// Its client to Medusa (its own session cookie over the upstream's pool).
    route: Upstream<ProxyBody>,
    driver: JoinHandle<()>,
}

/// What [`Roster::next`] did, by identity name.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Started: new, or their upstream, flavor or timings changed (they log in now).
    pub started: Vec<String>,
    /// Stopped: no longer in the configuration.
    pub stopped: Vec<String>,
    /// Kept with a new email, password or key: their token was dropped. (The others kept
    /// their token; their policy may have changed.)
    pub credential_changed: Vec<String>,
}

impl Changes {
    /// Anything about the accounts changed (not counting policies).
    pub fn any(&self) -> bool {
        !(self.started.is_empty() && self.stopped.is_empty() && self.credential_changed.is_empty())
    }
}

impl Roster {
    /// Start every identity of `settings` (`secrets[i]` the loaded secret of identity `i`):
    /// one pooled client per upstream, and a token manager per identity whose driver logs in
    /// at once. Drivers stop when `shutdown` becomes true, or when a reload removes them.
    pub fn start(
        settings: &Settings,
        secrets: Vec<Secret>,
        metrics: Arc<Metrics>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Roster, RosterError> {
        let mut roster = Roster::prepare(settings, metrics, shutdown)?;
        roster.next(settings, secrets)?;
        Ok(roster)
    }

    /// Every fallible step of [`Roster::start`] (each upstream's client, each identity's
    /// upstream), no identity started yet: [`Roster::next`] with the same `settings` then
    /// starts them and cannot fail. Start-up logs its `started` line in between, so the
    /// drivers' lines (`ready`) come after it.
    pub fn prepare(
        settings: &Settings,
        metrics: Arc<Metrics>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Roster, RosterError> {
        let mut roster = Roster {
            pools: Vec::new(),
            members: Vec::new(),
            metrics,
            shutdown,
        };
        roster.pools = roster.plan(settings)?.0;
        Ok(roster)
    }

    /// Make the roster that of `settings` (see the module documentation). On an error nothing
    /// changed.
    pub fn next(
        &mut self,
        settings: &Settings,
        mut secrets: Vec<Secret>,
    ) -> Result<Changes, RosterError> {
        // Every fallible step first.
        let (pools, placed) = self.plan(settings)?;
        let mut changes = Changes::default();
        let mut old: Vec<Option<Member>> = std::mem::take(&mut self.members)
            .into_iter()
            .map(Some)
            .collect();
        let lone = settings.identities.len() == 1;
        secrets.truncate(settings.identities.len());
        for (index, ((id, at), secret)) in settings
            .identities
            .iter()
            .zip(placed)
            .zip(secrets)
            .enumerate()
        {
            let pool = &pools[at];
            let same = old.iter().position(|m| {
                m.as_ref()
                    .is_some_and(|m| same_lifecycle(m, id, &pool.settings))
            });
            let member = match same.and_then(|i| old[i].take()) {
                Some(m) => {
                    let login = m.identity.tokens().login();
                    login.set_secret_source(&id.auth.secret);
                    if login.set_credentials(id.auth.email.clone(), secret) {
                        changes.credential_changed.push(id.name.clone());
                        let tokens = m.identity.tokens().clone();
                        // The token held belongs to the old credential (it may be revoked).
                        tokio::spawn(async move { tokens.invalidate().await });
                    }
                    Member {
                        identity: Identity::new(
                            index,
                            &id.name,
                            m.identity.tokens().clone(),
                            id.policy.clone(),
                        ),
                        settings: id.clone(),
                        ..m
                    }
                }
                None => {
                    changes.started.push(id.name.clone());
                    self.member(index, id, pool, secret, lone)
                }
            };
            self.members.push(member);
        }
        for gone in old.into_iter().flatten() {
            changes.stopped.push(gone.settings.name.clone());
            gone.driver.abort();
            self.metrics.forget_identity(&gone.settings.name);
        }
        self.pools = pools;
        Ok(changes)
    }

    /// The pools of `settings`' upstreams (a kept client where its settings are unchanged, a
    /// new one where not) and each identity's upstream's index among them.
    fn plan(&self, settings: &Settings) -> Result<(Vec<Pool>, Vec<usize>), RosterError> {
        let mut pools = Vec::with_capacity(settings.upstreams.len());
        for u in &settings.upstreams {
            let kept = self.pools.iter().find(|p| p.settings == u.settings);
            let client = match kept {
                Some(p) => p.client.clone(),
                None => {
                    let resent = self.metrics.upstream_error_counter("resent");
                    Upstream::counting(&u.settings, move || {
                        resent.inc();
                    })?
                }
            };
            pools.push(Pool {
                settings: u.settings.clone(),
                client,
            });
        }
        let mut placed = Vec::with_capacity(settings.identities.len());
        for id in &settings.identities {
            let Some(at) = settings
                .upstreams
                .iter()
                .position(|u| u.name == id.upstream)
            else {
                return Err(ConfigError::Invalid {
                    key: format!("identities.{}.upstream", id.name).into(),
                    problem: "names no upstream".into(),
                }
                .into());
            };
            placed.push(at);
        }
        Ok((pools, placed))
    }

    fn member(
        &self,
        index: usize,
        id: &IdentitySettings,
        pool: &Pool,
        secret: Secret,
        lone: bool,
    ) -> Member {
        // The single form shares the pool's session cookie with its login (as always); with
        // several identities each has its own Medusa session over the shared pool.
        let route = if lone {
            pool.client.clone()
        } else {
            pool.client.with_own_session()
        };
        let login = Login::new(
            route.for_body(),
            id.auth.flavor,
            id.auth.email.clone(),
            secret,
        )
        .with_secret_source(&id.auth.secret);
        let events = crate::ops::IdentityEvents::new(&id.name, self.metrics.clone(), index == 0);
        let tokens = TokenManager::new(login, id.auth.clone(), events);
        let driver = tokens.spawn_driver(self.shutdown.clone());
        Member {
            settings: id.clone(),
            upstream: pool.settings.clone(),
            identity: Identity::new(index, &id.name, tokens, id.policy.clone()),
            route,
            driver,
        }
    }

    /// The identities, in the configuration's order.
    pub fn identities(&self) -> Vec<Identity> {
        self.members.iter().map(|m| m.identity.clone()).collect()
    }

    /// Each identity's client to Medusa, in the same order.
    pub fn routes(&self) -> Vec<Upstream<ProxyBody>> {
        self.members.iter().map(|m| m.route.clone()).collect()
    }

    /// Stop every driver (at shutdown).
    pub fn stop(&self) {
        for m in &self.members {
            m.driver.abort();
        }
    }
}

/// Whether `m` can go on serving identity `id` on an upstream with `upstream` settings: same
/// name, upstream, flavor and timings. Email and secret may differ (handed to its login).
fn same_lifecycle(m: &Member, id: &IdentitySettings, upstream: &UpstreamSettings) -> bool {
    let (old, new) = (&m.settings.auth, &id.auth);
    m.settings.name == id.name
        && m.upstream == *upstream
        && old.flavor == new.flavor
        && old.refresh_before_expiry == new.refresh_before_expiry
        && old.login_timeout == new.login_timeout
        && old.default_token_lifetime == new.default_token_lifetime
        && old.key_check_interval == new.key_check_interval
}
