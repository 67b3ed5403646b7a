//! Which dead letters an operation applies to: a [`Selection`] as the
//! admin API and the CLI take it, checked into the filters that match
//! letters, and how a letter is recognised by its request id.

use super::{DlqError, REPLAY_PAGE_MAX};
use crate::drain::envelope::Envelope;
use crate::drain::id::RequestId;
use crate::spool::DeadLetter;

/// The 16-byte token of the request a dead letter holds, read from the raw
/// payload (an envelope starts with its version byte, then the token). It
/// is there as long as the payload's first 17 bytes are, even when the
/// rest is damaged or cut short (a corrupt record's letter keeps what
/// could be read); `None` for a shorter payload.
pub fn letter_token(d: &DeadLetter) -> Option<[u8; 16]> {
    d.payload.get(1..17)?.try_into().ok()
}

/// Whether dead letter `d` is the request `id`: the same position, and a
/// token read from its raw bytes that matches (in constant time).
pub fn letter_is(id: &RequestId, d: &DeadLetter) -> bool {
    id.partition == d.partition && id.offset == d.offset && letter_token(d).is_some_and(|t| id.token_matches(&t))
}

/// Which dead letters an operation applies to.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selection {
    #[serde(default)]
    pub all: bool,
    /// Request ids (`Sluice-Id`).
    #[serde(default)]
    pub ids: Vec<String>,
    /// Filters, combined: the request's route...
    #[serde(default)]
    pub route: Option<String>,
    /// ...why it died (`max_attempts`, `rejected`, `expired`, `corrupt`,
    /// `undecodable`)...
    #[serde(default)]
    pub reason: Option<String>,
    /// ...and when it died: RFC 3339, `since` inclusive, `until` not.
    #[serde(default)]
    pub since: Option<String>,
    #[serde(default)]
    pub until: Option<String>,
    /// Replay: start at this DLQ offset (the last answer's `next_from`).
    #[serde(default)]
    pub from: Option<u64>,
    /// Replay: at most this many letters per call (default and most: 1000).
    #[serde(default)]
    pub limit: Option<usize>,
    /// Replay: only letters below this DLQ offset — the DLQ's end when the
    /// first page was asked for, answered with it, so that a letter that
    /// dies again while a sweep goes on is not replayed twice by it.
    #[serde(default)]
    pub before: Option<u64>,
}

/// The reasons a letter can have died for.
pub const REASONS: [&str; 5] = ["max_attempts", "rejected", "expired", "corrupt", "undecodable"];

/// A [`Selection`], checked and parsed.
pub(super) struct Chosen {
    all: bool,
    ids: Vec<RequestId>,
    route: Option<String>,
    reason: Option<String>,
    since_ms: Option<u64>,
    until_ms: Option<u64>,
}

impl Chosen {
    fn has_filters(&self) -> bool {
        self.route.is_some() || self.reason.is_some() || self.since_ms.is_some() || self.until_ms.is_some()
    }

    pub(super) fn matches(&self, d: &DeadLetter) -> bool {
        if !self.ids.is_empty() {
            return self.ids.iter().any(|id| letter_is(id, d));
        }
        if !self.has_filters() {
            return self.all;
        }
        if self.reason.as_ref().is_some_and(|r| *r != d.reason)
            || self.since_ms.is_some_and(|t| d.dead_at_ms < t)
            || self.until_ms.is_some_and(|t| d.dead_at_ms >= t)
        {
            return false;
        }
        match &self.route {
            // The route is in the request; a letter that can't be decoded
            // has none and matches no route.
            Some(route) => Envelope::decode(d.payload.clone()).is_ok_and(|e| e.route == *route),
            None => true,
        }
    }
}

/// Unix milliseconds of an RFC 3339 time, in UTC (`Z`) or with a numeric
/// offset (`+01:00`, `-05:30`).
pub fn rfc3339_ms(text: &str) -> Option<u64> {
    let text = text.trim();
    let (local, offset_s): (String, i64) = match text.as_bytes() {
        [.., b'Z' | b'z'] => (text.to_string(), 0),
        [.., sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] if text.len() > 6 => {
            let digits = [*h1, *h2, *m1, *m2];
            if !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let n = |a: u8, b: u8| i64::from(a - b'0') * 10 + i64::from(b - b'0');
            let offset = n(digits[0], digits[1]) * 3600 + n(digits[2], digits[3]) * 60;
            let sign = if *sign == b'+' { 1 } else { -1 };
            (format!("{}Z", &text[..text.len() - 6]), sign * offset)
        }
        _ => return None,
    };
    let at = humantime::parse_rfc3339_weak(&local).ok()?;
    let ms = at.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as i64;
    // Local time minus its offset is UTC.
    u64::try_from(ms - offset_s * 1000).ok()
}

pub(super) fn parse_selection(sel: &Selection) -> Result<Chosen, DlqError> {
    let time = |field: &'static str, v: &Option<String>| -> Result<Option<u64>, DlqError> {
        v.as_ref()
            .map(|text| {
                rfc3339_ms(text).ok_or_else(|| DlqError::BadTime {
                    field,
                    value: text.clone(),
                })
            })
            .transpose()
    };
    let chosen = Chosen {
        all: sel.all,
        ids: sel
            .ids
            .iter()
            .map(|text| RequestId::parse(text).ok_or_else(|| DlqError::BadId(text.clone())))
            .collect::<Result<_, _>>()?,
        route: sel.route.clone(),
        reason: sel.reason.clone(),
        since_ms: time("since", &sel.since)?,
        until_ms: time("until", &sel.until)?,
    };
    if !chosen.ids.is_empty() && chosen.has_filters() {
        return Err(DlqError::IdsWithFilters);
    }
    if !chosen.all && chosen.ids.is_empty() && !chosen.has_filters() {
        return Err(DlqError::EmptySelection);
    }
    if sel.limit.is_some_and(|l| l == 0 || l > REPLAY_PAGE_MAX) {
        return Err(DlqError::BadLimit);
    }
    if let Some(r) = &sel.reason {
        if !REASONS.contains(&r.as_str()) {
            return Err(DlqError::BadReason(r.clone()));
        }
    }
    Ok(chosen)
}
