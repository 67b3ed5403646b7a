//! Config errors, each naming the file, the line and the key path, plus the
//! span lookups that find the line for a key path and the key path for a
//! span.

use std::ops::Range;
use toml_edit::{ImDocument, Item};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read the config file: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key, a value of the
    /// wrong type, or a value that fails validation.
    #[error("{file}:{line}: {key}: {message}")]
    Invalid {
        file: String,
        line: usize,
        key: String,
        message: String,
    },
    /// A problem with the command line rather than the file.
    #[error("{0}")]
    Usage(String),
}

impl ConfigError {
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }
}

/// Source text of a config file plus what is needed to point into it.
pub struct Source<'a> {
    pub file: &'a str,
    pub text: &'a str,
    doc: Option<ImDocument<&'a str>>,
}

impl<'a> Source<'a> {
    pub fn new(file: &'a str, text: &'a str) -> Self {
        Source {
            file,
            text,
            doc: ImDocument::parse(text).ok(),
        }
    }

    pub fn line_of_offset(&self, offset: usize) -> usize {
        let offset = offset.min(self.text.len());
        self.text.as_bytes()[..offset].iter().filter(|&&b| b == b'\n').count() + 1
    }

    /// An error about the key at `path` (like `route[1].match.path`): the
    /// line is that key's, or its nearest enclosing table's when the key is
    /// absent (a missing required key).
    pub fn invalid(&self, path: &str, message: impl Into<String>) -> ConfigError {
        let line = self
            .doc
            .as_ref()
            .and_then(|doc| span_of_path(doc.as_item(), path))
            .map(|span| self.line_of_offset(span.start))
            .unwrap_or(1);
        ConfigError::Invalid {
            file: self.file.to_string(),
            line,
            key: path.to_string(),
            message: message.into(),
        }
    }

    /// Turns a TOML syntax or serde error into one naming its key path.
    pub fn toml_error(&self, err: &toml::de::Error) -> ConfigError {
        let span = err.span();
        let line = span.clone().map(|s| self.line_of_offset(s.start)).unwrap_or(1);
        let key = match (&self.doc, span) {
            (Some(doc), Some(span)) => {
                let mut path = String::new();
                path_at(doc.as_item(), span.start, &mut path);
                if path.is_empty() {
                    "(top level)".to_string()
                } else {
                    path
                }
            }
            _ => "(syntax)".to_string(),
        };
        ConfigError::Invalid {
            file: self.file.to_string(),
            line,
            key,
            message: err.message().trim().to_string(),
        }
    }
}

enum Segment<'p> {
    Key(&'p str),
    Index(usize),
}

fn parse_path(path: &str) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        match part.split_once('[') {
            Some((key, rest)) => {
                if !key.is_empty() {
                    out.push(Segment::Key(key));
                }
                for idx in rest.split('[') {
                    if let Ok(i) = idx.trim_end_matches(']').parse() {
                        out.push(Segment::Index(i));
                    }
                }
            }
            None => out.push(Segment::Key(part)),
        }
    }
    out
}

fn item_span(item: &Item) -> Option<Range<usize>> {
    match item {
        Item::Table(t) => t.span(),
        Item::ArrayOfTables(a) => a.iter().next().and_then(|t| t.span()).or(a.span()),
        Item::Value(v) => v.span(),
        Item::None => None,
    }
}

/// The span of the deepest existing item along `path`, preferring the key's
/// own span so the line is where the key is written.
fn span_of_path(root: &Item, path: &str) -> Option<Range<usize>> {
    let mut item = root;
    let mut best = None;
    for seg in parse_path(path) {
        let next = match seg {
            Segment::Key(k) => {
                let table = item.as_table_like()?;
                match table.get_key_value(k) {
                    Some((key, child)) => {
                        best = key.span().or_else(|| item_span(child)).or(best);
                        Some(child)
                    }
                    None => None,
                }
            }
            Segment::Index(i) => {
                let child = item.get(i);
                if let Some(c) = child {
                    best = item_span(c).or(best);
                }
                child
            }
        };
        match next {
            Some(n) => item = n,
            None => break,
        }
    }
    best
}

/// Builds the key path of the deepest key whose span holds `offset`.
fn path_at(item: &Item, offset: usize, path: &mut String) {
    if let Some(aot) = item.as_array_of_tables() {
        // Each [[x]] table's span is its header only; the body runs until
        // the next header, so pick the last table starting before offset.
        let mut chosen = None;
        for (i, t) in aot.iter().enumerate() {
            if t.span().is_some_and(|s| s.start <= offset) {
                chosen = Some((i, t));
            }
        }
        if let Some((i, t)) = chosen {
            path.push_str(&format!("[{i}]"));
            let as_item = Item::Table(t.clone());
            path_at(&as_item, offset, path);
        }
        return;
    }
    let Some(table) = item.as_table_like() else {
        return;
    };
    let mut chosen: Option<(&str, &Item, usize)> = None;
    for (k, child) in table.iter() {
        let key_span = table.get_key_value(k).and_then(|(key, _)| key.span());
        let child_span = item_span(child);
        let contains = |s: &Option<Range<usize>>| s.as_ref().is_some_and(|s| s.contains(&offset));
        if contains(&key_span) || contains(&child_span) {
            path_push(path, k);
            path_at(child, offset, path);
            return;
        }
        // Sub-tables ([server] etc.) span only their header: take the last
        // one that starts before the offset.
        if matches!(child, Item::Table(_) | Item::ArrayOfTables(_)) {
            if let Some(s) = child_span.or(key_span) {
                if s.start <= offset && chosen.is_none_or(|(_, _, start)| s.start >= start) {
                    chosen = Some((k, child, s.start));
                }
            }
        }
    }
    if let Some((k, child, _)) = chosen {
        path_push(path, k);
        path_at(child, offset, path);
    }
}

fn path_push(path: &mut String, key: &str) {
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(key);
}
