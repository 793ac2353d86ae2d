//! Layer names and versions: what a label may hold, and how versions of one layer are ordered.

/// Layer names and versions: 1..=128 chars of [A-Za-z0-9._+-], not starting with '.'.
pub fn validate_label(what: &str, s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 128
        && !s.starts_with('.')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} {s:?}: use 1 to 128 letters, digits or . _ + - (not starting with '.')"
        ))
    }
}

/// The order of two versions of one layer: runs of digits compare as numbers ("1.10" after
/// "1.9", "2026.12.01" after "2026.11.30"), other runs byte by byte, and a version that is a
/// prefix of another comes first ("1" before "1a" and "1.1"). Publishing keeps each name's
/// versions increasing in this order, so "latest" is also the highest, and an endpoint can
/// tell an older version from a newer one. Equal only for equal strings.
pub fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let (da, db) = (a[i].is_ascii_digit(), b[j].is_ascii_digit());
        let ord = if da && db {
            let run = |s: &[u8], mut k: usize| {
                let start = k;
                while k < s.len() && s[k].is_ascii_digit() {
                    k += 1;
                }
                (start, k)
            };
            let ((sa, ea), (sb, eb)) = (run(a, i), run(b, j));
            // Leading zeros do not change the number; a longer run of significant digits is
            // the larger number; equal numbers with more leading zeros come first, so that
            // only equal strings compare equal.
            let za = a[sa..ea].iter().take_while(|&&c| c == b'0').count();
            let zb = b[sb..eb].iter().take_while(|&&c| c == b'0').count();
            let (na, nb) = (&a[sa + za..ea], &b[sb + zb..eb]);
            let ord = na.len().cmp(&nb.len()).then_with(|| na.cmp(nb)).then(zb.cmp(&za));
            (i, j) = (ea, eb);
            ord
        } else {
            let ord = a[i].cmp(&b[j]);
            (i, j) = (i + 1, j + 1);
            ord
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    (a.len() - i).cmp(&(b.len() - j))
}
