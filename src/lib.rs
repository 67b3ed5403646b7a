//! sluice: a peak-shaving sidecar. Per-route token buckets admit what the
//! backend can take; the excess writes are spooled durably and replayed at
//! the backend's pace.
//!
//! Module map (one request's path runs top to bottom):
//!
//! - [`config`]     the TOML file → validated runtime types; errors name file, line, key
//! - [`proxy`]      data port: listener, request path, forwarding client, header hygiene,
//!   error → response in one place
//! - [`admission`]  route table, governor buckets with a bounded keyed store, the pure decision
//! - [`upstream`]   the shared upstream budget (rate + concurrency)
//! - [`admin`]      `/healthz`, `/readyz`, `/metrics`, `/admin/*`
//! - [`metrics`]    one Prometheus registry and typed handles
//! - [`reload`]     SIGHUP / `/admin/reload`: re-read, keep restart-only keys, swap
//! - [`app`]        wiring, signals and the shutdown sequence
//! - [`shutdown`]   the shutdown signal type
//! - [`telemetry`]  tracing setup (text / JSON)

pub mod admin;
pub mod admission;
pub mod app;
pub mod config;
pub mod demo;
pub mod drain;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod runtime;
pub mod server;
pub mod shutdown;
pub mod spool;
pub mod telemetry;
pub mod upstream;
