//! Parsing of the human-friendly literals the config file takes: sizes
//! (`"64MiB"`), durations (`"250ms"`) and rates (`"100/s"`).
//!
//! Sizes and durations go through maintained crates (`parse-size`,
//! `humantime`); the rate grammar is small and ours.

use serde::Deserialize;
use std::time::Duration;

/// A size literal as written in the file: a string such as `"64MiB"` or a
/// bare integer number of bytes.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum SizeLit {
    Bytes(u64),
    Text(String),
}

impl SizeLit {
    pub fn parse(&self) -> Result<u64, String> {
        match self {
            SizeLit::Bytes(n) => Ok(*n),
            SizeLit::Text(s) => parse_size::Config::new()
                .with_binary()
                .parse_size(s.trim())
                .map_err(|e| format!("invalid size {s:?} ({e}); expected e.g. \"64MiB\" or \"1MB\"")),
        }
    }
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(t)
        .map_err(|e| format!("invalid duration {s:?} ({e}); expected e.g. \"250ms\", \"30s\", \"24h\""))
}

/// A rate: `count` events per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub per: Duration,
}

impl Rate {
    pub fn per_second(self) -> f64 {
        f64::from(self.count) / self.per.as_secs_f64()
    }

    /// The spacing between two tokens, the GCRA emission interval.
    pub fn interval(self) -> Duration {
        self.per / self.count
    }

    /// One second's worth of tokens, at least one: the default burst.
    pub fn one_second_burst(self) -> u32 {
        (self.per_second().floor() as u32).max(1)
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = match self.per.as_secs() {
            1 => "s".to_string(),
            60 => "min".to_string(),
            3600 => "h".to_string(),
            _ => format!("{}", humantime::format_duration(self.per)),
        };
        write!(f, "{}/{}", self.count, unit)
    }
}

pub fn parse_rate(s: &str) -> Result<Rate, String> {
    let bad = || format!("invalid rate {s:?}; expected COUNT/UNIT such as \"100/s\", \"6000/min\" or \"10/h\"");
    let (count, unit) = s.trim().split_once('/').ok_or_else(bad)?;
    let count: u32 = count.trim().parse().map_err(|_| bad())?;
    if count == 0 {
        return Err(format!("rate {s:?} must be above zero"));
    }
    let unit = unit.trim();
    let per = match unit {
        "s" | "sec" | "second" => Duration::from_secs(1),
        "m" | "min" | "minute" => Duration::from_secs(60),
        "h" | "hour" => Duration::from_secs(3600),
        other => {
            // Also accept "100/10s"-style windows.
            humantime::parse_duration(other).map_err(|_| bad())?
        }
    };
    if per.is_zero() {
        return Err(bad());
    }
    Ok(Rate { count, per })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("100/s").unwrap().per_second(), 100.0);
        assert_eq!(parse_rate("6000/min").unwrap().per_second(), 100.0);
        assert_eq!(parse_rate("50/10s").unwrap().per_second(), 5.0);
        assert_eq!(parse_rate("1/min").unwrap().one_second_burst(), 1);
        assert!(parse_rate("0/s").is_err());
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("10/fortnight").is_err());
        assert_eq!(parse_rate("6000/min").unwrap().to_string(), "6000/min");
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(SizeLit::Text("64MiB".into()).parse().unwrap(), 64 << 20);
        assert_eq!(SizeLit::Text("1KiB".into()).parse().unwrap(), 1024);
        assert_eq!(SizeLit::Bytes(7).parse().unwrap(), 7);
        assert!(SizeLit::Text("lots".into()).parse().is_err());
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert!(parse_duration("soon").is_err());
    }
}
