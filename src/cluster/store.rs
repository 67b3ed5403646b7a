//! The Redis side of the cluster: one reconnecting, multiplexed connection
//! (concurrent calls are pipelined on it) and two scripts, loaded once and
//! then run by SHA. Every bucket decision is one script call, so it is
//! atomic on the server whatever the replicas do at the same moment, and
//! every replica measures time by the server's clock (`TIME`), not its own.

use super::ClusterError;
use crate::config::{RedisUrl, Secret};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::time::Duration;

/// GCRA over keys holding each bucket's theoretical arrival time in
/// microseconds of the server's clock. KEYS are the buckets; ARGV holds
/// (interval, tolerance, wanted, reserve) per key: up to `wanted` tokens,
/// granted only while `reserve` tokens would still be free afterwards.
/// Keys are taken in order, so one key twice is two decisions. Returns
/// {granted, free after, wait in µs until one more could be granted} per
/// key, flattened. A key expires once its bucket would be full again, so
/// idle keys vanish. One script serves a lease (one key, many tokens) and
/// a batch of keyed decisions (many keys, one token each).
const GCRA_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {}
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[4 * i - 3])
  local tolerance = tonumber(ARGV[4 * i - 2])
  local wanted = tonumber(ARGV[4 * i - 1])
  local reserve = tonumber(ARGV[4 * i])
  local tat = tonumber(redis.call('GET', key)) or now
  if tat < now then tat = now end
  local free = math.floor((now + tolerance + interval - tat) / interval)
  local granted = math.min(wanted, free - reserve)
  if granted < 1 then
    local wait = tat + reserve * interval - tolerance - now
    if wait < 1 then wait = 1 end
    if free < 0 then free = 0 end
    out[3 * i - 2] = 0
    out[3 * i - 1] = free
    out[3 * i] = wait
  else
    tat = tat + granted * interval
    redis.call('SET', key, string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
    out[3 * i - 2] = granted
    out[3 * i - 1] = free - granted
    out[3 * i] = 0
  end
end
return out
";

/// A replica's heartbeat: its id scored by the server's clock in a sorted
/// set; ids not seen within ARGV[2] ms are dropped; returns how many are
/// alive.
const HEARTBEAT_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('PEXPIRE', KEYS[1], window * 2)
return redis.call('ZCARD', KEYS[1])
";

/// A bucket's shape in the units of the script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcraParams {
    /// One token per this many µs (at least 1).
    pub interval_us: u64,
    /// How far ahead of now the arrival time may run: (burst - 1) intervals.
    pub tolerance_us: u64,
}

/// What the store granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub granted: u32,
    /// Tokens still free in the fleet's bucket after this grant.
    pub free: u32,
    /// With nothing granted: how long until a token could be.
    pub wait: Duration,
}

pub struct Store {
    conn: ConnectionManager,
    gcra: redis::Script,
    heartbeat: redis::Script,
}

impl Store {
    /// Prepares the connection; it is made on first use and remade after
    /// any failure, so a store that is down at start costs nothing until
    /// it comes up.
    pub fn new(url: &RedisUrl, password: Option<&Secret>) -> Result<Store, ClusterError> {
        // Not the driver's message: it can quote pieces of the URL.
        let bad = |e: redis::RedisError| ClusterError::Url {
            url: url.redacted(),
            reason: format!("{:?} error", e.kind()),
        };
        let mut info = redis::IntoConnectionInfo::into_connection_info(url.expose()).map_err(bad)?;
        if let Some(pw) = password {
            let settings = info.redis_settings().clone().set_password(pw.expose());
            info = info.set_redis_settings(settings);
        }
        if url.expose().starts_with("rediss://") {
            // The driver builds its TLS config from the process default.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let client = redis::Client::open(info).map_err(bad)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500))
            .set_number_of_retries(2);
        let conn = ConnectionManager::new_lazy_with_config(client, config).map_err(bad)?;
        Ok(Store {
            conn,
            gcra: redis::Script::new(GCRA_LUA),
            heartbeat: redis::Script::new(HEARTBEAT_LUA),
        })
    }

    /// Takes up to `wanted` tokens from the bucket at `key`, leaving
    /// `reserve` free.
    pub async fn take(&self, key: &str, p: GcraParams, wanted: u32, reserve: u32) -> Result<Grant, ClusterError> {
        let grants = self.take_each(&[(key, p, wanted, reserve)]).await?;
        Ok(grants[0])
    }

    /// From each bucket of `asks` (key, shape, wanted, reserve), in order,
    /// in one call.
    pub async fn take_each<K: AsRef<str>>(
        &self,
        asks: &[(K, GcraParams, u32, u32)],
    ) -> Result<Vec<Grant>, ClusterError> {
        let mut conn = self.conn.clone();
        let mut call = self.gcra.prepare_invoke();
        for (key, p, wanted, reserve) in asks {
            call.key(key.as_ref())
                .arg(p.interval_us.max(1))
                .arg(p.tolerance_us)
                .arg(*wanted)
                .arg(*reserve);
        }
        let flat: Vec<i64> = call.invoke_async(&mut conn).await.map_err(ClusterError::Store)?;
        if flat.len() != asks.len() * 3 {
            return Err(ClusterError::Reply {
                expected: asks.len() * 3,
                got: flat.len(),
            });
        }
        let count = |v: i64| v.clamp(0, i64::from(u32::MAX)) as u32;
        Ok(flat
            .chunks_exact(3)
            .map(|g| Grant {
                granted: count(g[0]),
                free: count(g[1]),
                wait: Duration::from_micros(g[2].max(0) as u64),
            })
            .collect())
    }

    /// Says this replica is alive; returns how many are.
    pub async fn heartbeat(&self, key: &str, id: &str, window: Duration) -> Result<u32, ClusterError> {
        let mut conn = self.conn.clone();
        let n: i64 = self
            .heartbeat
            .key(key)
            .arg(id)
            .arg(window.as_millis() as u64)
            .invoke_async(&mut conn)
            .await
            .map_err(ClusterError::Store)?;
        Ok(n.clamp(0, i64::from(u32::MAX)) as u32)
    }

    /// Takes this replica out of the alive set (clean shutdown), so the
    /// others' fallback divisor drops at once rather than after the window.
    pub async fn leave(&self, key: &str, id: &str) -> Result<(), ClusterError> {
        let mut conn = self.conn.clone();
        redis::cmd("ZREM")
            .arg(key)
            .arg(id)
            .query_async::<i64>(&mut conn)
            .await
            .map(|_| ())
            .map_err(ClusterError::Store)
    }
}
