//! Helpers for the data layers' unit tests: a real [`Shared`] over a
//! temporary spool, and a request carrying its [`Matched`].
