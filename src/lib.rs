//! sluice: a peak-shaving sidecar. Per-route token buckets admit what the
//! backend can take; the excess writes are spooled durably and replayed at
//! the backend's pace.
//!
//! Module map. A request on the data port runs top to bottom through
//! [`server`], [`proxy`] and [`upstream`]; the spool and the drainer take
//! what it hands over; the rest serves them all.
//!
//! - [`server`]     listeners for both ports: accept, TLS (data port), HTTP/1.1 and h2, header
//!   limits, per-connection graceful shutdown; the response body both ports use
//! - [`proxy`]      the data port as one tower stack (`proxy::data_stack`); its layers, top to
//!   bottom in request order:
//!   1. observe: access log and metrics; answers and errors become responses here, through
//!      `proxy::error::render` (the one place)
//!   2. status: `GET {status_path_prefix}/requests/{id}`, answered before routing
//!   3. route match: the route and one config snapshot into the extensions (`Matched`)
//!   4. catch panic: a panic below answers 500 under its route; the connection lives
//!   5. body limit: a body over `server.max_body` gets 413 before it costs a token
//!   6. bucket: the route's bucket: go on, wait, 429, or mark for the spool
//!   7. hygiene: hop-by-hop headers out, `X-Forwarded-*` in (forwarded or spooled alike)
//!   8. spool: spool-on-limit: what the bucket marked, or what the upstream stack hands back
//!      unsent, is appended to the spool and answered 202
//!   9. forward: into the live [`upstream`] stack, under the request's deadlines
//! - [`upstream`]   the backend side: pooled client, budget (rate + concurrency), circuit
//!   breaker, adaptive replay limit, timeout, assembled into two stacks:
//!   - live: breaker → budget (live share) → upstream metrics → timeout → client
//!   - replay: breaker → adaptive → budget (replay share) → metrics → timeout → client
//! - [`admission`]  route table, governor buckets with a bounded keyed store, the pure decision;
//!   a `scope = "global"` route asks its [`cluster`] bucket instead
//! - [`cluster`]    limits shared by replicas through Redis: the store (GCRA and heartbeat
//!   scripts), fleet-wide buckets (keyed calls or leased batches), store up/down and fallback
//! - [`spool`]      the durable, partitioned, append-only log (no HTTP): group-commit writer,
//!   partition readers, dead-letter log, offline inspection
//! - [`drain`]      spooled requests: record format, ids, intake and status (spooler), replay
//!   through the replay stack, outcomes and Idempotency-Key dedupe, dead-letter operations
//! - [`jetstream`]  the spool on NATS JetStream (`spool.backend = "jetstream"`): one stream per
//!   partition, shared pull consumers as the drain, key-value buckets for Idempotency-Keys,
//!   status and the fleet's pause flag, the DLQ stream
//! - [`runtime`]    what a reload swaps (`Runtime`: config, route table, route stats) and the
//!   long-lived parts around it (`Shared`: upstream parts, spool intake, metrics)
//! - [`config`]     the TOML file → validated runtime types; errors name file, line, key
//! - [`reload`]     SIGHUP / `/admin/reload`: re-read, keep restart-only keys, swap
//! - [`admin`]      `/healthz`, `/readyz`, `/metrics`, `/admin/*`
//! - [`metrics`]    one Prometheus registry and typed handles
//! - [`app`]        wiring, signals and the shutdown sequence
//! - [`shutdown`]   the shutdown signal type
//! - [`clock`]      the run clock: wall clock at start + monotonic time, so a wall-clock step
//!   never ages (or expires) spooled records; steps over 5 s are logged
//! - [`crash`]      named crash points for the kill -9 fault suite (debug builds only)
//! - [`telemetry`]  tracing setup (text / JSON)
//! - [`accesslog`]  the access log: records handed to a writer thread, written in batches
//! - [`trace`]      W3C `traceparent`: kept through the spool, a new span per delivery attempt
//! - [`otlp`]       optional OTLP/HTTP export of the replay attempts' spans
//! - [`demo`]       `sluice demo`: one burst at a slow built-in backend, straight then through sluice

pub mod accesslog;
pub mod admin;
pub mod admission;
pub mod app;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod crash;
pub mod demo;
pub mod drain;
pub mod jetstream;
pub mod metrics;
pub mod otlp;
pub mod proxy;
pub mod reload;
pub mod runtime;
pub mod server;
pub mod shutdown;
pub mod spool;
pub mod telemetry;
pub mod trace;
pub mod upstream;
