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
            "upstream budget: capacity {cap}, max_concurrency {}, adaptive {}",
            self.upstream.max_concurrency, self.upstream.adaptive
        );
        let _ = writeln!(
            s,
            "spool {} ({} partitions, fsync {:?}, max {} bytes)",
            self.spool.dir.display(),
            self.spool.partitions,
            self.spool.fsync,
            self.spool.max_bytes
        );
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
                "  {i}. {name:<12} match {m:<40} rate {rate} burst {burst} key {key} on_limit {on:?}{wait}",
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
            );
        }
        s
    }
}
