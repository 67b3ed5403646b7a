//! The layers of an upstream stack, one concern each.

mod adaptive;
mod breaker;
mod budget;
mod observe;
mod timeout;

pub use adaptive::{AdaptiveLayer, AdaptiveService};
pub use breaker::{BreakerLayer, BreakerService};
pub use budget::{BudgetLayer, BudgetService, Share};
pub use observe::{ObserveLayer, ObserveService};
pub use timeout::{TimeoutLayer, TimeoutService};
