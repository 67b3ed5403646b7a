//! One `[[route]]`.

use super::scope;
use crate::config::error::Source;
use crate::config::file::{OnLimitFile, RouteFile};
use crate::config::types::{KeySource, OnLimit, RouteConfig, RouteMatch};
use crate::config::units::{parse_duration, parse_rate};
use crate::config::{ConfigError, UNMATCHED_ROUTE};
use http::{HeaderName, Method};
use std::time::Duration;

fn parse_key_source(s: &str) -> Result<KeySource, String> {
    match s {
        "global" => Ok(KeySource::Global),
        "client_ip" => Ok(KeySource::ClientIp),
        _ => match s.strip_prefix("header:") {
            Some(name) => HeaderName::from_bytes(name.trim().to_ascii_lowercase().as_bytes())
                .map(KeySource::Header)
                .map_err(|_| format!("{name:?} is not a valid header name")),
            None => Err(format!(
                "invalid key {s:?}; expected \"global\", \"client_ip\" or \"header:NAME\""
            )),
        },
    }
}

fn parse_method(s: &str) -> Result<Method, String> {
    let up = s.to_ascii_uppercase();
    Method::from_bytes(up.as_bytes()).map_err(|_| format!("{s:?} is not an HTTP method"))
}

pub(super) fn validate_route(src: &Source<'_>, i: usize, r: &RouteFile) -> Result<RouteConfig, ConfigError> {
    let p = |k: &str| format!("route[{i}].{k}");
    let name = r.name.clone().ok_or_else(|| src.invalid(&p("name"), "required"))?;
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
    {
        return Err(src.invalid(
            &p("name"),
            "must be 1-64 characters of [A-Za-z0-9_.-] (it becomes a metric label and a header token)",
        ));
    }
    if name == UNMATCHED_ROUTE {
        return Err(src.invalid(&p("name"), "\"unmatched\" is reserved for requests that match no route"));
    }
    let m = &r.matcher;
    if m.path.is_some() && m.path_prefix.is_some() {
        return Err(src.invalid(&p("match"), "give either path or path_prefix, not both"));
    }
    for (k, v) in [("path", &m.path), ("path_prefix", &m.path_prefix)] {
        if let Some(v) = v {
            if !v.starts_with('/') {
                return Err(src.invalid(&p(&format!("match.{k}")), format!("{v:?} must start with '/'")));
            }
        }
    }
    let methods = match &m.methods {
        Some(list) => {
            let mut out = Vec::new();
            for (j, s) in list.iter().enumerate() {
                out.push(parse_method(s).map_err(|msg| src.invalid(&p(&format!("match.methods[{j}]")), msg))?);
            }
            Some(out)
        }
        None => None,
    };
    let rate_text = r
        .rate
        .as_ref()
        .ok_or_else(|| src.invalid(&p("rate"), "required, e.g. rate = \"50/s\""))?;
    let rate = parse_rate(rate_text).map_err(|m| src.invalid(&p("rate"), m))?;
    let burst = match r.burst {
        Some(0) => return Err(src.invalid(&p("burst"), "must be at least 1")),
        Some(b) => b,
        None => rate.one_second_burst(),
    };
    let key = match &r.key {
        Some(k) => parse_key_source(k).map_err(|m| src.invalid(&p("key"), m))?,
        None => KeySource::Global,
    };
    let max_keys = r.max_keys.unwrap_or(100_000);
    if max_keys == 0 {
        return Err(src.invalid(&p("max_keys"), "must be at least 1"));
    }
    let on_limit = match r.on_limit.unwrap_or(OnLimitFile::Reject) {
        OnLimitFile::Spool => OnLimit::Spool,
        OnLimitFile::Reject => OnLimit::Reject,
        OnLimitFile::Wait => OnLimit::Wait,
    };
    let max_wait = match &r.max_wait {
        Some(s) => parse_duration(s).map_err(|m| src.invalid(&p("max_wait"), m))?,
        None => Duration::ZERO,
    };
    if on_limit == OnLimit::Wait && max_wait.is_zero() {
        return Err(src.invalid(&p("max_wait"), "on_limit = \"wait\" needs a max_wait above zero"));
    }
    let prefer_wait_max = match &r.prefer_wait_max {
        Some(s) => parse_duration(s).map_err(|m| src.invalid(&p("prefer_wait_max"), m))?,
        None => Duration::ZERO,
    };
    let partition_key = match &r.partition_key {
        Some(k) => Some(parse_key_source(k).map_err(|m| src.invalid(&p("partition_key"), m))?),
        None => None,
    };
    let spool_methods = match &r.spool_methods {
        Some(list) => {
            let mut out = Vec::new();
            for (j, s) in list.iter().enumerate() {
                let m = parse_method(s).map_err(|msg| src.invalid(&p(&format!("spool_methods[{j}]")), msg))?;
                if matches!(
                    m,
                    Method::GET | Method::HEAD | Method::OPTIONS | Method::CONNECT | Method::TRACE
                ) {
                    return Err(src.invalid(
                        &p(&format!("spool_methods[{j}]")),
                        format!("{m} can't be spooled: its answer can't be deferred"),
                    ));
                }
                out.push(m);
            }
            out
        }
        None => vec![Method::POST, Method::PUT, Method::PATCH, Method::DELETE],
    };
    Ok(RouteConfig {
        name,
        matcher: RouteMatch {
            path_prefix: m.path_prefix.clone(),
            path: m.path.clone(),
            methods,
            host: m.host.as_ref().map(|h| h.to_ascii_lowercase()),
            ignore_case: m.ignore_case.unwrap_or(false),
        },
        rate,
        burst,
        key,
        max_keys,
        on_limit,
        max_wait,
        partition_key,
        ordered: r.ordered.unwrap_or(false),
        spool_methods,
        scope: scope(r.scope),
        prefer_wait_max,
    })
}
