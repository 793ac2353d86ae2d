//! Errors that point into a configuration file (policy, reflector and endpoint configs,
//! scenarios): every one names the file, the line and the key, in one format:
//! `reflector.toml line 4: cache_size "12 parsecs" is not a size (...)`.

use std::ops::Range;

/// The 1-based line of byte `offset` of `text` (the end of `text` when past it).
pub fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
}

/// `"{origin} line {n}: {key} {problem}"`, where `n` is the line `span` starts on in `text`.
pub fn at_line(origin: &str, text: &str, span: &Range<usize>, key: &str, problem: &str) -> String {
    format!("{origin} line {}: {key} {problem}", line_of(text, span.start))
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
}
