//! Spooled requests: their record format ([`envelope`]), their ids
//! ([`id`]), what became of them ([`outcomes`]).

pub mod envelope;
pub mod id;
pub mod outcomes;
