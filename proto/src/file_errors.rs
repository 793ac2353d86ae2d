//! Errors that point into a configuration file (policy, reflector and endpoint configs,
//! scenarios): every one names the file, the line and the key, in one format:
//! `reflector.toml line 4: cache_size "12 parsecs" is not a size (...)`.

use std::ops::Range;

use toml::de::DeTable;

/// The 1-based line of byte `offset` of `text` (the end of `text` when past it).
pub fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
}

/// `"{origin} line {n}: {key} {problem}"`, where `n` is the line `span` starts on in `text`.
pub fn at_line(origin: &str, text: &str, span: &Range<usize>, key: &str, problem: &str) -> String {
    format!("{origin} line {}: {key} {problem}", line_of(text, span.start))
}

/// A TOML reader's error, located: the one form every configuration reader reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TomlProblem {
    /// 1-based line, when toml gave a position.
    pub line: Option<usize>,
    /// 1-based column in characters, when toml gave a position.
    pub column: Option<usize>,
    /// toml's description, with a short excerpt of the text it points at.
    pub message: String,
    /// The text is not TOML at all (rather than TOML whose values the reader refused).
    pub syntax: bool,
}

impl TomlProblem {
    /// Locates `err`, an error of `toml` on `text` (from `DeTable::parse` or `toml::from_str`).
    pub fn of(text: &str, err: &toml::de::Error) -> TomlProblem {
        let span = err.span();
        let (line, column) = match &span {
            Some(span) => {
                let at = span.start.min(text.len());
                let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
                (Some(line_of(text, at)), Some(text[line_start..at].chars().count() + 1))
            }
            None => (None, None),
        };
        let syntax = DeTable::parse(text).is_err();
        // A syntax error points at the offending token; a refused value at the value, so the
        // whole line shows its key too.
        let shown = if syntax {
            span
        } else {
            span.map(|s| {
                let at = s.start.min(text.len());
                let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
                let end = text[at..].find('\n').map_or(text.len(), |i| at + i);
                start..end
            })
        };
        TomlProblem {
            line,
            column,
            message: with_excerpt(err.message().trim(), text, shown),
            syntax,
        }
    }

    /// ` line L, column C` (empty without a position).
    pub fn position(&self) -> String {
        position(self.line, self.column)
    }

    /// `{origin} line L, column C: not valid TOML: {message}`, or without "not valid TOML"
    /// for values the reader refused.
    pub fn describe(&self, origin: &str) -> String {
        let what = if self.syntax { "not valid TOML: " } else { "" };
        format!("{origin}{}: {what}{}", self.position(), self.message)
    }
}

/// ` line L, column C`, ` line L`, or nothing, as the position of an error in a file.
pub fn position(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(" line {l}, column {c}"),
        (Some(l), None) => format!(" line {l}"),
        _ => String::new(),
    }
}

/// toml's message, with the text it points at when that is short and not already quoted.
fn with_excerpt(message: &str, text: &str, span: Option<Range<usize>>) -> String {
    let excerpt = span.and_then(|s| text.get(s)).map(str::trim).unwrap_or("");
    if excerpt.is_empty()
        || excerpt.len() > 60
        || excerpt.contains('\n')
        || message.contains(excerpt)
    {
        message.to_string()
    } else {
        format!("{message} (at `{excerpt}`)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_count_from_one_and_stop_at_the_end() {
        let text = "a = 1\nb = 2\n";
        assert_eq!(line_of(text, 0), 1);
        assert_eq!(line_of(text, 6), 2);
        assert_eq!(line_of(text, 1000), 3);
        assert_eq!(at_line("x.toml", text, &(6..11), "b", "is wrong"), "x.toml line 2: b is wrong");
    }

    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Conf {
        rate: Option<u32>,
    }

    #[test]
    fn syntax_errors_and_refused_values_read_alike() {
        let bad = "rate = 1\nrate = 2\n";
        let e = toml::from_str::<Conf>(bad).err().unwrap();
        let p = TomlProblem::of(bad, &e);
        assert!(p.syntax);
        assert_eq!(
            p.describe("a.toml"),
            "a.toml line 2, column 1: not valid TOML: duplicate key (at `rate`)"
        );

        let refused = "rate = 1\nrat = 2\n";
        let e = toml::from_str::<Conf>(refused).err().unwrap();
        let p = TomlProblem::of(refused, &e);
        assert!(!p.syntax, "valid TOML, an unknown key");
        let d = p.describe("a.toml");
        assert!(d.starts_with("a.toml line 2, column 1: unknown field `rat`"), "{d}");
        assert!(d.ends_with("(at `rat = 2`)"), "the line, key and all: {d}");
        assert!(!d.contains('\n'), "one line: {d}");
    }
}
