//! Typed reading of a spanned TOML document, collecting every error instead of stopping at the first.
//!
//! `Section` wraps one TOML table. Each getter consumes a key, checks its type and value, and on a
//! problem records an error with the key's line and dotted path, then hands back the default so the
//! rest of the file is still validated. `Section::finish` reports the keys nobody consumed (typos).

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;
use std::path::Path;

use super::values::parse_duration;
use std::time::Duration;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// One problem in a config file: where it is, which key, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// Dotted path of the key, e.g. `pool[0].server[1].weight`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.column, self.message
            )
        } else {
            write!(
                f,
                "{}:{}:{}: {}: {}",
                self.file, self.line, self.column, self.key, self.message
            )
        }
    }
}

/// The file being read and the errors found so far.
pub struct Diagnostics<'s> {
    file: String,
    source: &'s str,
    line_starts: Vec<usize>,
    pub errors: Vec<ConfigError>,
    /// Risky but valid settings, printed by `check` and logged at start.
    pub warnings: Vec<ConfigError>,
}

impl<'s> Diagnostics<'s> {
    pub fn new(file: &Path, source: &'s str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(source.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self {
            file: file.display().to_string(),
            source,
            line_starts,
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    fn locate(&self, span: &Range<usize>, key: &str, message: String) -> ConfigError {
        let offset = span.start.min(self.source.len());
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let line_start = self.line_starts[line.saturating_sub(1)];
        let column = self.source[line_start..offset].chars().count() + 1;
        ConfigError {
            file: self.file.clone(),
            line,
            column,
            key: key.to_string(),
            message,
        }
    }

    pub fn error(&mut self, span: &Range<usize>, key: &str, message: impl Into<String>) {
        let error = self.locate(span, key, message.into());
        self.errors.push(error);
    }

    pub fn warn(&mut self, span: &Range<usize>, key: &str, message: impl Into<String>) {
        let warning = self.locate(span, key, message.into());
        self.warnings.push(warning);
    }
}

/// A value with the place it came from, kept for checks that span several keys.
#[derive(Debug, Clone)]
pub struct At<T> {
    pub value: T,
    pub span: Range<usize>,
    pub key: String,
}

/// One TOML table being read.
pub struct Section<'t, 'i> {
    path: String,
    span: Range<usize>,
    table: &'t DeTable<'i>,
    consumed: Vec<&'t str>,
}

impl<'t, 'i> Section<'t, 'i> {
    pub fn root(table: &'t Spanned<DeTable<'i>>) -> Self {
        Self {
            path: String::new(),
            span: table.span(),
            table: table.get_ref(),
            consumed: Vec::new(),
        }
    }

    pub fn span(&self) -> Range<usize> {
        self.span.clone()
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn key_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{}", self.path, key)
        }
    }

    fn take(&mut self, key: &str) -> Option<(&'t str, &'t Spanned<DeValue<'i>>)> {
        let (k, v) = self.table.iter().find(|(k, _)| k.get_ref() == key)?;
        let name: &'t str = k.get_ref().as_ref();
        self.consumed.push(name);
        Some((name, v))
    }

    /// Reports every key that no getter asked for.
    pub fn finish(self, diag: &mut Diagnostics<'_>) {
        for (key, _) in self.table.iter() {
            let name: &str = key.get_ref().as_ref();
            if !self.consumed.contains(&name) {
                let path = self.key_path(name);
                diag.error(&key.span(), &path, "unknown key");
            }
        }
    }

    fn type_error(
        &self,
        diag: &mut Diagnostics<'_>,
        key: &str,
        value: &Spanned<DeValue<'_>>,
        want: &str,
    ) {
        let found = match value.get_ref() {
            DeValue::String(_) => "a string",
            DeValue::Integer(_) => "an integer",
            DeValue::Float(_) => "a float",
            DeValue::Boolean(_) => "a boolean",
            DeValue::Datetime(_) => "a datetime",
            DeValue::Array(_) => "an array",
            DeValue::Table(_) => "a table",
        };
        diag.error(
            &value.span(),
            &self.key_path(key),
            format!("expected {want}, found {found}"),
        );
    }

    /// A string value, with its span; None when absent or of the wrong type (reported).
    pub fn string(&mut self, diag: &mut Diagnostics<'_>, key: &str) -> Option<At<String>> {
        let (_, value) = self.take(key)?;
        match value.get_ref() {
            DeValue::String(s) => Some(At {
                value: s.to_string(),
                span: value.span(),
                key: self.key_path(key),
            }),
            _ => {
                self.type_error(diag, key, value, "a string");
                None
            }
        }
    }

    /// A string that must be present.
    pub fn required_string(&mut self, diag: &mut Diagnostics<'_>, key: &str) -> Option<At<String>> {
        let present = self.table.iter().any(|(k, _)| k.get_ref() == key);
        if !present {
            diag.error(&self.span, &self.key_path(key), "missing required key");
            return None;
        }
        self.string(diag, key)
    }

    pub fn bool(&mut self, diag: &mut Diagnostics<'_>, key: &str, default: bool) -> bool {
        let Some((_, value)) = self.take(key) else {
            return default;
        };
        match value.get_ref() {
            DeValue::Boolean(b) => *b,
            _ => {
                self.type_error(diag, key, value, "true or false");
                default
            }
        }
    }

    /// An integer within `range` (inclusive).
    pub fn integer(
        &mut self,
        diag: &mut Diagnostics<'_>,
        key: &str,
        range: std::ops::RangeInclusive<u64>,
        default: u64,
    ) -> u64 {
        self.integer_at(diag, key, range)
            .map_or(default, |at| at.value)
    }

    pub fn integer_at(
        &mut self,
        diag: &mut Diagnostics<'_>,
        key: &str,
        range: std::ops::RangeInclusive<u64>,
    ) -> Option<At<u64>> {
        let (_, value) = self.take(key)?;
        let DeValue::Integer(int) = value.get_ref() else {
            self.type_error(diag, key, value, "an integer");
            return None;
        };
        let digits = int.as_str().replace('_', "");
        match u64::from_str_radix(&digits, int.radix()) {
            Ok(n) if range.contains(&n) => Some(At {
                value: n,
                span: value.span(),
                key: self.key_path(key),
            }),
            _ => {
                diag.error(
                    &value.span(),
                    &self.key_path(key),
                    format!(
                        "must be an integer from {} to {}",
                        range.start(),
                        range.end()
                    ),
                );
                None
            }
        }
    }

    /// A duration written as a string with a unit: "250ms", "5s", "10m".
    pub fn duration(
        &mut self,
        diag: &mut Diagnostics<'_>,
        key: &str,
        default: Duration,
    ) -> Duration {
        self.parsed(diag, key, parse_duration).unwrap_or(default)
    }

    /// A duration, as `duration` reads it, that must also be greater than zero (a timeout that
    /// would fire at once). Zero is reported at the table, under the key's path, and returned.
    pub fn positive_duration(
        &mut self,
        diag: &mut Diagnostics<'_>,
        key: &str,
        default: Duration,
    ) -> Duration {
        debug_assert!(!default.is_zero(), "{key}: a zero default would be refused");
        let value = self.duration(diag, key, default);
        if value.is_zero() {
            diag.error(&self.span, &self.key_path(key), "must be greater than zero");
        }
        value
    }

    /// A string turned into a value by `parse`, whose error message is reported at the value.
    pub fn parsed<T>(
        &mut self,
        diag: &mut Diagnostics<'_>,
        key: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let at = self.string(diag, key)?;
        match parse(&at.value) {
            Ok(v) => Some(v),
            Err(message) => {
                diag.error(&at.span, &at.key, message);
                None
            }
        }
    }

    /// One of a fixed set of words.
    pub fn choice<T: Copy>(
        &mut self,
        diag: &mut Diagnostics<'_>,
        key: &str,
        choices: &[(&str, T)],
        default: T,
    ) -> T {
        self.parsed(diag, key, |s| {
            choices
                .iter()
                .find(|(name, _)| *name == s)
                .map(|(_, v)| *v)
                .ok_or_else(|| {
                    let names: Vec<String> =
                        choices.iter().map(|(n, _)| format!("\"{n}\"")).collect();
                    format!("\"{s}\" is not one of {}", names.join(", "))
                })
        })
        .unwrap_or(default)
    }

    /// An array of strings, each parsed by `parse`; bad elements are reported one by one.
    pub fn list<T>(
        &mut self,
        diag: &mut Diagnostics<'_>,
        key: &str,
        mut parse: impl FnMut(&str) -> Result<T, String>,
    ) -> Vec<At<T>> {
        let Some((_, value)) = self.take(key) else {
            return Vec::new();
        };
        let DeValue::Array(items) = value.get_ref() else {
            self.type_error(diag, key, value, "an array of strings");
            return Vec::new();
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let path = format!("{}[{i}]", self.key_path(key));
            match item.get_ref() {
                DeValue::String(s) => match parse(s) {
                    Ok(v) => out.push(At {
                        value: v,
                        span: item.span(),
                        key: path,
                    }),
                    Err(message) => diag.error(&item.span(), &path, message),
                },
                _ => diag.error(&item.span(), &path, "expected a string"),
            }
        }
        out
    }

    /// One string or an array of strings (`source = "10.0.1.10"` or `source = ["10.0.1.10",
    /// "10.0.1.11"]`), each parsed by `parse`.
    pub fn one_or_list<T>(
        &mut self,
        diag: &mut Diagnostics<'_>,
        key: &str,
        mut parse: impl FnMut(&str) -> Result<T, String>,
    ) -> Vec<At<T>> {
        let single = self
            .table
            .iter()
            .find(|(k, _)| k.get_ref() == key)
            .is_some_and(|(_, v)| matches!(v.get_ref(), DeValue::String(_)));
        if !single {
            return self.list(diag, key, parse);
        }
        let Some(at) = self.string(diag, key) else {
            return Vec::new();
        };
        match parse(&at.value) {
            Ok(value) => vec![At {
                value,
                span: at.span,
                key: at.key,
            }],
            Err(message) => {
                diag.error(&at.span, &at.key, message);
                Vec::new()
            }
        }
    }

    /// A sub-table (`[a.b]` or an inline table), if present.
    pub fn table(&mut self, diag: &mut Diagnostics<'_>, key: &str) -> Option<Section<'t, 'i>> {
        let (name, value) = self.take(key)?;
        match value.get_ref() {
            DeValue::Table(table) => Some(Section {
                path: self.key_path(name),
                span: value.span(),
                table,
                consumed: Vec::new(),
            }),
            _ => {
                self.type_error(diag, key, value, "a table");
                None
            }
        }
    }

    /// An array of tables (`[[a.b]]`); absent means empty.
    pub fn tables(&mut self, diag: &mut Diagnostics<'_>, key: &str) -> Vec<Section<'t, 'i>> {
        let Some((name, value)) = self.take(key) else {
            return Vec::new();
        };
        let DeValue::Array(items) = value.get_ref() else {
            self.type_error(diag, key, value, "an array of tables");
            return Vec::new();
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let path = format!("{}[{i}]", self.key_path(name));
            match item.get_ref() {
                DeValue::Table(table) => out.push(Section {
                    path,
                    span: item.span(),
                    table,
                    consumed: Vec::new(),
                }),
                _ => diag.error(&item.span(), &path, "expected a table"),
            }
        }
        out
    }
}

/// Turns toml's own syntax error into a located `ConfigError`.
pub fn syntax_error(diag: &mut Diagnostics<'_>, error: &toml::de::Error) {
    let span = error.span().unwrap_or(0..0);
    let message = error.message().trim().to_string();
    diag.error(
        &span,
        "",
        Cow::<str>::Owned(format!("TOML syntax: {message}")),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positive_durations() {
        let text = "[a]\nzero = \"0s\"\nsome = \"5s\"\nbad = \"5\"\n";
        let doc = DeTable::parse(text).unwrap();
        let mut diag = Diagnostics::new(Path::new("f.toml"), text);
        let mut root = Section::root(&doc);
        let mut a = root.table(&mut diag, "a").unwrap();
        let default = Duration::from_secs(3);
        assert_eq!(
            a.positive_duration(&mut diag, "zero", default),
            Duration::ZERO
        );
        assert_eq!(
            a.positive_duration(&mut diag, "some", default),
            Duration::from_secs(5)
        );
        assert_eq!(a.positive_duration(&mut diag, "bad", default), default);
        assert_eq!(a.positive_duration(&mut diag, "absent", default), default);
        a.finish(&mut diag);
        let shown: Vec<String> = diag.errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            shown,
            [
                "f.toml:1:1: a.zero: must be greater than zero",
                "f.toml:4:7: a.bad: \"5\" is not a duration: write a number with a unit, e.g. \"250ms\", \"5s\", \"10m\"",
            ]
        );
    }

    #[test]
    fn errors_carry_line_column_and_key() {
        let text = "[a]\nx = 1\ny = \"no\"\nz = 3\n";
        let doc = DeTable::parse(text).unwrap();
        let mut diag = Diagnostics::new(Path::new("f.toml"), text);
        let mut root = Section::root(&doc);
        let mut a = root.table(&mut diag, "a").unwrap();
        assert_eq!(a.integer(&mut diag, "x", 0..=10, 0), 1);
        assert_eq!(a.integer(&mut diag, "y", 0..=10, 7), 7);
        a.finish(&mut diag);
        root.finish(&mut diag);
        let shown: Vec<String> = diag.errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            shown,
            vec![
                "f.toml:3:5: a.y: expected an integer, found a string".to_string(),
                "f.toml:4:1: a.z: unknown key".to_string(),
            ]
        );
    }
}
