//! What a reload changes in the running proxy, in one place: the [`Roster`] of identities,
//! the request path every listener serves (a new [`Stack`] generation stored in each
//! listener's [`Swappable`](crate::stack::swap::Swappable)), the rules the accept loop asks
//! about peers, and the identities `/readyz` reports.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::config::{Rules, Settings};
use crate::ops::Ops;
use crate::proxy::limit::ProxyBody;
use crate::roster::{Changes, Roster, RosterError};
use crate::secret::Secret;
use crate::stack::{Generation, Handles, Stack};
use crate::upstream::{TargetService, Upstream};

/// The proxy's request path over the pooled clients to Medusa.
pub type ProxyStack = Stack<TargetService<Upstream<ProxyBody>>>;

/// Stores a new generation's service in every listener: given the stack and, for each
/// `[[listeners]]` entry in order, the index of the identity it serves.
pub type Rebuild = Box<dyn Fn(&ProxyStack, &[usize]) + Send + Sync>;

/// The running proxy's reloadable state. Built by `app`, driven by the reloader.
pub struct Live {
    state: Mutex<State>,
    handles: ArcSwap<Handles>,
    rebuild: Rebuild,
    ops: Arc<Ops>,
}

struct State {
    roster: Roster,
    stack: ProxyStack,
}

impl Live {
    /// The proxy as started: its roster, the stack built over it and its handles, how to
    /// store a new stack in the listeners, and the ops handler to tell about identities.
    pub fn new(
        roster: Roster,
        stack: ProxyStack,
        handles: Handles,
        rebuild: Rebuild,
        ops: Arc<Ops>,
    ) -> Live {
        Live {
            state: Mutex::new(State { roster, stack }),
            handles: ArcSwap::from_pointee(handles),
            rebuild,
            ops,
        }
    }

    /// The handles of the stack in force (peer rules at accept, the access log switch).
    pub fn handles(&self) -> arc_swap::Guard<Arc<Handles>> {
        self.handles.load()
    }

    /// Make `settings` (validated, restart-only values already kept as they run) the running
    /// configuration: the roster first (nothing changes when that fails), then a new stack
    /// generation with `rules`, stored in every listener. `secrets[i]` is identity `i`'s.
    pub fn apply(
        &self,
        settings: &Settings,
        rules: Rules,
        secrets: Vec<Secret>,
    ) -> Result<Changes, RosterError> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let changes = state.roster.next(settings, secrets)?;
        let identities = state.roster.identities();
        let (stack, handles) = state.stack.next_proxy(
            Generation {
                identities: identities.clone(),
                main: settings.main_identity,
                rules,
                body_timeout: body_timeout(settings),
            },
            state.roster.routes(),
        );
        let fixed: Vec<usize> = settings.listeners.iter().map(|l| l.identity).collect();
        (self.rebuild)(&stack, &fixed);
        self.handles.store(Arc::new(handles));
        state.stack = stack;
        self.ops.set_identities(identities);
        Ok(changes)
    }

    /// Stop every identity's driver (at shutdown).
    pub fn stop(&self) {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .roster
            .stop();
    }

    /// The identities in force, in the configuration's order.
    pub fn identities(&self) -> Vec<crate::identity::Identity> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .roster
            .identities()
    }
}

/// How long a buffered request body may take: the longest `request_timeout` of the upstreams.
pub fn body_timeout(settings: &Settings) -> Duration {
    settings
        .upstreams
        .iter()
        .map(|u| u.settings.request_timeout)
        .max()
        .unwrap_or(settings.upstream.request_timeout)
}
