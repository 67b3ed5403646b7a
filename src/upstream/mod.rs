//! The backend side: the pooled [`client`], the one [`budget`] (rate +
//! concurrency) that guards the backend, the circuit [`breaker`], the
//! [`adaptive`] replay limit, and a timeout — parts that live traffic and
//! replay each assemble into their own stack ([`UpstreamParts::live_stack`],
//! [`UpstreamParts::replay_stack`]).
//!
//! Every upstream stack is a `tower::Service<Outbound>` answering
//! `Response<UpstreamBody>` or [`Failed`]; a request that certainly never
//! reached the backend comes back inside the failure, so the live path can
//! spool it instead.

pub mod adaptive;
pub mod body;
pub mod breaker;
mod budget;
pub mod client;
pub mod error;
pub mod layer;
mod retry_after;
#[cfg(test)]
pub(crate) mod testing;

pub use budget::{Budget, BudgetError, BudgetPermit, BudgetSpec};
pub use error::{Failed, UpstreamError};
pub use retry_after::retry_after;

use crate::metrics::UpstreamMetrics;
use adaptive::AdaptiveLimit;
use body::RequestBody;
use breaker::{Breaker, Role};
use client::{Client, UpstreamClient};
use http::Request;
use layer::{AdaptiveLayer, BreakerLayer, BudgetLayer, ObserveLayer, Share, TimeoutLayer};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tower::ServiceBuilder;

/// A request on its way to the backend, with the limits it must keep.
pub struct Outbound {
    pub request: Request<RequestBody>,
    /// How long a live request may wait for budget (its route's
    /// `max_wait`); replay (`None`) waits as long as it takes.
    pub wait_until: Option<Instant>,
    /// The response head must arrive within this.
    pub timeout: Duration,
    /// A replayed record's second or later attempt: its result doesn't
    /// count toward opening the breaker.
    pub retry: bool,
}

/// The live stack: breaker → live share of the budget → metrics → timeout → client.
pub type LiveStack = layer::BreakerService<layer::BudgetService<Observed>>;
/// The replay stack: breaker → adaptive limit → replay share of the budget
/// → metrics → timeout → client.
pub type ReplayStack = layer::BreakerService<layer::AdaptiveService<layer::BudgetService<Observed>>>;
type Observed = layer::ObserveService<layer::TimeoutService<Client>>;

/// The parts both stacks are built from, shared for the life of the process.
pub struct UpstreamParts {
    pub client: UpstreamClient,
    /// Resized in place on reload, so requests in flight stay counted.
    pub budget: Arc<Budget>,
    pub breaker: Arc<Breaker>,
    pub adaptive: Arc<AdaptiveLimit>,
    pub live_metrics: Arc<UpstreamMetrics>,
    pub replay_metrics: Arc<UpstreamMetrics>,
}

impl UpstreamParts {
    pub fn live_stack(&self) -> LiveStack {
        ServiceBuilder::new()
            // The breaker first: a request it refuses must not spend a
            // budget token or slot. Live traffic takes the half-open probe.
            .layer(BreakerLayer::new(self.breaker.clone(), Role::Live))
            .layer(BudgetLayer::new(self.budget.clone(), Share::Live))
            .service(self.observed(&self.live_metrics))
    }

    pub fn replay_stack(&self) -> ReplayStack {
        ServiceBuilder::new()
            // Replay probes only when no live request came within a
            // cooldown, and a record's retries don't open the breaker.
            .layer(BreakerLayer::new(self.breaker.clone(), Role::Replay))
            // The adaptive limit before the budget: a replay that may not
            // go yet holds no budget slot while it waits.
            .layer(AdaptiveLayer::new(self.adaptive.clone()))
            .layer(BudgetLayer::new(self.budget.clone(), Share::Replay))
            .service(self.observed(&self.replay_metrics))
    }

    fn observed(&self, metrics: &Arc<UpstreamMetrics>) -> Observed {
        ServiceBuilder::new()
            // Metrics outside the timeout, so a timed-out exchange is counted.
            .layer(ObserveLayer::new(metrics.clone()))
            .layer(TimeoutLayer)
            .service(Client(self.client.clone()))
    }
}
