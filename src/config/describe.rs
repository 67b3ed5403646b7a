//! `sluice check`'s summary of a config: the routes as understood.

use super::Config;

impl Config {
    /// The routes as understood, for `sluice check`.
    pub fn describe(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "listen {}  admin {}  upstream {}",
            self.server.listen, self.server.admin_listen, self.upstream.url
        );
        let cap = self
            .upstream
            .capacity
            .map(|c| format!("{c} (burst {})", self.upstream.capacity_burst))
            .unwrap_or_else(|| "unset".into());
        let _ = writeln!(
            s,
            "upstream budget: capacity {cap}{fleet}, max_concurrency {}, adaptive {}",
            self.upstream.max_concurrency,
            self.upstream.adaptive,
            fleet = if self.upstream.scope == super::Scope::Global {
                " for the whole fleet"
            } else {
                ""
            },
        );
        if let Some(url) = &self.cluster.redis_url {
            // Redacted: `check` output ends up in CI logs and tickets.
            let _ = writeln!(
                s,
                "cluster: {url} namespace {:?} timeout {} replicas {} on_store_error {:?}{}",
                self.cluster.namespace,
                humantime::format_duration(self.cluster.timeout),
                self.cluster
                    .replicas
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "as seen alive".into()),
                self.cluster.on_store_error,
                if self.cluster.password.is_some() {
                    " (password set)"
                } else {
                    ""
                },
            );
        }
        match self.spool.backend.jetstream() {
            None => {
                let _ = writeln!(
                    s,
                    "spool {} ({} partitions, fsync {:?}, max {} bytes)",
                    self.spool.dir.display(),
                    self.spool.partitions,
                    self.spool.fsync,
                    self.spool.max_bytes
                );
            }
            Some(js) => {
                let _ = writeln!(
                    s,
                    "spool jetstream {} (streams {}-0..{}, subjects {}.<p>, {} partitions, R={}, max {} bytes over all partitions, max_age {}, ack_wait {})",
                    js.servers.join(","),
                    js.stream,
                    self.spool.partitions - 1,
                    js.subject_prefix,
                    self.spool.partitions,
                    js.replicas,
                    js.max_bytes,
                    humantime::format_duration(js.max_age),
                    humantime::format_duration(js.ack_wait),
                );
            }
        }
        let _ = writeln!(s, "routes (first match wins):");
        for (i, r) in self.routes.iter().enumerate() {
            let mut m = Vec::new();
            if let Some(p) = &r.matcher.path_prefix {
                m.push(format!("path_prefix={p}"));
            }
            if let Some(p) = &r.matcher.path {
                m.push(format!("path={p}"));
            }
            if let Some(h) = &r.matcher.host {
                m.push(format!("host={h}"));
            }
            if let Some(ms) = &r.matcher.methods {
                let ms: Vec<_> = ms.iter().map(|m| m.as_str()).collect();
                m.push(format!("methods={}", ms.join(",")));
            }
            if m.is_empty() {
                m.push("everything".into());
            }
            let _ = writeln!(
                s,
                "  {i}. {name:<12} match {m:<40} rate {rate} burst {burst} key {key} on_limit {on:?}{wait}{scope}",
                name = r.name,
                m = m.join(" "),
                rate = r.rate,
                burst = r.burst,
                key = r.key,
                on = r.on_limit,
                wait = if r.max_wait.is_zero() {
                    String::new()
                } else {
                    format!(" max_wait {}", humantime::format_duration(r.max_wait))
                },
                scope = if r.scope == super::Scope::Global {
                    " scope global"
                } else {
                    ""
                },
            );
        }
        s
    }
}

impl Config {
    /// Where `spool.segment_bytes`, `spool.max_bytes` and the free space
    /// on the spool's filesystem don't fit together: printed by `sluice
    /// check` and logged at startup. Warnings, not errors: the spool runs,
    /// but it will refuse with `spool_full` sooner than the quota says.
    pub fn spool_fit_warnings(&self) -> Vec<String> {
        let sp = &self.spool;
        let mut out = Vec::new();
        if sp.backend.jetstream().is_some() {
            return out; // no local disk to fit
        }
        // Retention frees whole segments; with fewer than four in the
        // quota, the active one plus one a lagging partition pins are most
        // of it.
        if sp.max_bytes < 4 * sp.segment_bytes {
            out.push(format!(
                "spool.max_bytes ({}) holds fewer than 4 segments of spool.segment_bytes ({}): space is reclaimed a whole segment at a time, so one partition behind the others keeps most of the quota",
                sp.max_bytes, sp.segment_bytes
            ));
        }
        if let Some((fs_dir, free)) = free_space(&sp.dir) {
            let used = dir_bytes(&sp.dir);
            if free + used < sp.max_bytes {
                out.push(format!(
                    "spool.max_bytes ({}) is more than the spool can get on {}'s filesystem ({} free + {} in use): the device fills before the quota (503 spool_full, cause no_space)",
                    sp.max_bytes,
                    fs_dir.display(),
                    free,
                    used
                ));
            }
            if free + used < 2 * sp.segment_bytes {
                out.push(format!(
                    "the spool's filesystem has room for fewer than 2 segments of spool.segment_bytes ({}): lower it",
                    sp.segment_bytes
                ));
            }
        }
        out
    }
}

/// Free bytes (for an unprivileged writer) on the filesystem holding
/// `dir`, or its nearest existing ancestor.
fn free_space(dir: &std::path::Path) -> Option<(std::path::PathBuf, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let mut at = if dir.as_os_str().is_empty() {
        std::path::PathBuf::from(".")
    } else {
        dir.to_owned()
    };
    while !at.exists() {
        at = match at.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => std::path::PathBuf::from("."),
        };
    }
    let c = std::ffi::CString::new(at.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path, `st` a valid out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some((at, st.f_bavail as u64 * st.f_frsize as u64))
}

/// Bytes of the regular files under `dir` (what the spool already holds).
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
    rd.filter_map(Result::ok)
        .filter_map(|e| Some((e.path(), e.metadata().ok()?)))
        .map(|(p, m)| if m.is_dir() { dir_bytes(&p) } else { m.len() })
        .sum()
}
