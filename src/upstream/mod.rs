//! The upstream side of admission: the one budget (rate + concurrency)
//! that guards the backend for live and replayed traffic alike.

mod budget;

pub use budget::{Budget, BudgetError, BudgetPermit, BudgetSpec};

pub mod adaptive;
pub mod breaker;
