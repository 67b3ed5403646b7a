//! Configuration: the file as written ([`file`]) is parsed with
//! `deny_unknown_fields`, then validated ([`validate`]) into the runtime
//! types ([`types`]). Every error names the file, the line and the key
//! path ([`error`]). Which keys a reload can't change is [`restart`].
//!
//! Command-line flags override the file after validation; they are parsed
//! into typed values by clap, so they never produce a file error.

mod describe;
mod error;
mod file;
mod restart;
mod types;
pub mod units;
mod validate;

pub use error::ConfigError;
pub use types::{
    AdminConfig, ClusterConfig, Config, DrainConfig, EscapedSlashes, FsyncPolicy, JetStreamConfig, KeySource,
    LogConfig, LogFormat, NatsAuth, OnLimit, OnStoreError, Ordering, PathPolicy, RedisUrl, RouteConfig, RouteMatch,
    Scope, Secret, ServerConfig, SpoolBackend, SpoolConfig, TlsConfig, UpstreamConfig,
};
pub use units::Rate;
pub use validate::parse_upstream_flag;

use error::Source;
use file::FileConfig;
use http::Uri;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use validate::validate;

/// The embedded default (SPEC §3): one `default` route that spools the
/// excess. The upstream comes from `--upstream`.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../config/default.toml");
const EMBEDDED_NAME: &str = "<embedded default>";

/// Name under which requests that match no route are counted.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Values given on the command line; they win over the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
    pub upstream: Option<Uri>,
    pub spool_dir: Option<PathBuf>,
    /// Applies to the route named `default`.
    pub rate: Option<Rate>,
    pub burst: Option<u32>,
    /// `--log-format`, over `log.format`.
    pub log_format: Option<LogFormat>,
}

impl Config {
    /// Loads `path`, or the embedded default when `None`, and applies the
    /// command-line overrides.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    file: p.display().to_string(),
                    source,
                })?;
                let mut cfg = Config::parse(&p.display().to_string(), &text, overrides)?;
                cfg.source_path = Some(p.to_path_buf());
                Ok(cfg)
            }
            None => {
                if overrides.upstream.is_none() {
                    return Err(ConfigError::Usage(
                        "no config given: pass `-c FILE`, or `--upstream URL` to run on the embedded default \
                         (for example `sluice run --upstream http://127.0.0.1:3000`)"
                            .into(),
                    ));
                }
                Config::parse(EMBEDDED_NAME, EMBEDDED_DEFAULT, overrides)
            }
        }
    }

    /// Parses and validates config text; `file` is only used in errors.
    pub fn parse(file: &str, text: &str, overrides: &Overrides) -> Result<Config, ConfigError> {
        let src = Source::new(file, text);
        let raw: FileConfig = toml::from_str(text).map_err(|e| src.toml_error(&e))?;
        let mut cfg = validate(&src, raw, overrides.upstream.is_some())?;
        cfg.apply(overrides, &src)?;
        Ok(cfg)
    }

    fn apply(&mut self, o: &Overrides, src: &Source<'_>) -> Result<(), ConfigError> {
        if let Some(a) = o.listen {
            self.server.listen = a;
        }
        if let Some(a) = o.admin_listen {
            self.server.admin_listen = a;
        }
        if let Some(u) = &o.upstream {
            self.upstream.url = u.clone();
        }
        if let Some(d) = &o.spool_dir {
            self.spool.dir = d.clone();
        }
        if let Some(f) = o.log_format {
            self.log.format = f;
        }
        if o.rate.is_some() || o.burst.is_some() {
            let route = self.routes.iter_mut().find(|r| r.name == "default").ok_or_else(|| {
                ConfigError::Usage(format!(
                    "--rate/--burst apply to the route named \"default\", and {} has none",
                    src.file
                ))
            })?;
            if let Some(r) = o.rate {
                route.rate = r;
                route.burst = r.one_second_burst();
            }
            if let Some(b) = o.burst {
                if b == 0 {
                    return Err(ConfigError::Usage("--burst must be at least 1".into()));
                }
                route.burst = b;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
