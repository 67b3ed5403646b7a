//! Spooled requests: their record format ([`envelope`]), their ids
//! ([`id`]), intake and status ([`spooler`]), replay to the backend
//! ([`replay`]) and what became of them ([`outcomes`]).

pub mod dlq;
pub mod envelope;
pub mod eta;
pub mod id;
pub mod outcomes;
pub mod replay;
pub mod signing;
pub mod spooler;
