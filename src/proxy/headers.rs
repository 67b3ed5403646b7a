//! Header hygiene between client and backend: hop-by-hop removal,
//! X-Forwarded-*, and who the client is when proxies sit in front of us.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;
use std::net::IpAddr;

/// Headers that describe one connection, never the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// True when the request asks to switch protocols (WebSocket and the like).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_has(headers, "upgrade")
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Removes hop-by-hop headers: Connection and every header it names, the
/// fixed list above and every `Proxy-*`. With `keep_upgrade`, an upgrade
/// handshake keeps `Connection: upgrade` and `Upgrade` so it can reach the
/// other side.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One look at the names first: most messages carry none of these but
    // Connection, and comparing the few names a message has costs far
    // less than a hash lookup (and a name parse) per candidate.
    let (mut connection, mut fixed, mut proxy) = (false, false, false);
    for name in headers.keys() {
        if *name == header::CONNECTION {
            connection = true;
        } else if HOP_BY_HOP[1..].contains(name) {
            fixed = true;
        } else if name.as_str().starts_with("proxy-") {
            proxy = true;
        }
    }
    if !(connection || fixed || proxy) {
        return;
    }
    let upgrade = if keep_upgrade {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    };
    // The headers Connection names go too. The usual single Connection
    // value is walked in place (a cheap clone of the value; a name is
    // removed only if the message has it); several values are rare.
    let mut values = headers.get_all(header::CONNECTION).iter();
    match (values.next().cloned(), values.next().is_some()) {
        (Some(only), false) => {
            if let Ok(list) = only.to_str() {
                for token in list.split(',').map(str::trim) {
                    let present = headers.keys().find(|k| k.as_str().eq_ignore_ascii_case(token)).cloned();
                    if let Some(name) = present {
                        headers.remove(&name);
                    }
                }
            }
        }
        (Some(_), true) => {
            let named: Vec<HeaderName> = headers
                .get_all(header::CONNECTION)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
                .collect();
            for name in &named {
                headers.remove(name);
            }
        }
        (None, _) => {}
    }
    if connection {
        headers.remove(header::CONNECTION);
    }
    if fixed {
        for name in HOP_BY_HOP[1..].iter() {
            headers.remove(name);
        }
    }
    if proxy {
        let proxy: Vec<HeaderName> = headers
            .keys()
            .filter(|k| k.as_str().starts_with("proxy-"))
            .cloned()
            .collect();
        for name in proxy {
            headers.remove(&name);
        }
    }
    if let Some(u) = upgrade {
        headers.insert(header::UPGRADE, u);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Appends `peer` to X-Forwarded-For (joining repeated headers into one).
pub fn append_forwarded_for(headers: &mut HeaderMap, peer: &HeaderValue) {
    let mut existing = headers.get_all(&X_FORWARDED_FOR).iter().peekable();
    if existing.peek().is_none() {
        headers.insert(&X_FORWARDED_FOR, peer.clone());
        return;
    }
    let mut value: Vec<u8> = Vec::with_capacity(64);
    for v in existing {
        let trimmed = v.as_bytes().trim_ascii();
        if trimmed.is_empty() {
            continue;
        }
        if !value.is_empty() {
            value.extend_from_slice(b", ");
        }
        value.extend_from_slice(trimmed);
    }
    if !value.is_empty() {
        value.extend_from_slice(b", ");
    }
    value.extend_from_slice(peer.as_bytes());
    if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(value)) {
        headers.insert(&X_FORWARDED_FOR, v);
    }
}

/// The client's address: the TCP peer, or, when the peer is a trusted
/// proxy, the right-most X-Forwarded-For entry that is not one.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if trusted.is_empty() || !is_trusted(&peer) {
        return peer;
    }
    let mut hops: Vec<IpAddr> = Vec::new();
    for v in headers.get_all(&X_FORWARDED_FOR).iter() {
        let Ok(s) = v.to_str() else { return peer };
        for part in s.split(',') {
            match part.trim().parse::<IpAddr>() {
                Ok(ip) => hops.push(ip),
                // An unparseable hop means we can't tell who is behind it:
                // stop believing the chain there.
                Err(_) => hops.clear(),
            }
        }
    }
    let mut client = peer;
    for ip in hops.iter().rev() {
        client = *ip;
        if !is_trusted(ip) {
            break;
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn strips_connection_named_and_fixed_hop_by_hop() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("trailer", "x"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("proxy-connection", "keep-alive"),
            ("x-keep", "yes"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-keep"], "yes");
    }

    #[test]
    fn upgrade_survives_when_asked() {
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket"), ("keep-alive", "1")]);
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        assert!(!h.contains_key("keep-alive"));
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = map(&[("x-forwarded-for", "1.1.1.1"), ("x-forwarded-for", "2.2.2.2")]);
        append_forwarded_for(&mut h, &HeaderValue::from_static("10.0.0.1"));
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 10.0.0.1");
        let mut empty = HeaderMap::new();
        append_forwarded_for(&mut empty, &HeaderValue::from_static("::1"));
        assert_eq!(empty["x-forwarded-for"], "::1");
    }

    #[test]
    fn client_ip_believes_only_trusted_peers() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let h = map(&[("x-forwarded-for", "6.6.6.6, 7.7.7.7, 10.1.1.1")]);
        let untrusted_peer: IpAddr = "8.8.8.8".parse().unwrap();
        assert_eq!(client_ip(untrusted_peer, &h, &trusted), untrusted_peer);
        let proxy: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(client_ip(proxy, &h, &trusted), "7.7.7.7".parse::<IpAddr>().unwrap());
        assert_eq!(client_ip(proxy, &HeaderMap::new(), &trusted), proxy);
        assert_eq!(client_ip(proxy, &h, &[]), proxy);
    }
}
