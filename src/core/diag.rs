//! Diagnostics that point at `FILE:LINE:COL` of the offending value.

use std::fmt;
use std::ops::Range;

/// One error about the file, located by byte offsets into its text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diag {
    /// Byte range of the offending value in the file's text; its start is
    /// what `FILE:LINE:COL` points at.
    pub span: Range<usize>,
    /// One line, without the location.
    pub message: String,
}

impl Diag {
    /// A diagnostic at `span`.
    pub fn new(span: Range<usize>, message: impl Into<String>) -> Self {
        Diag {
            span,
            message: message.into(),
        }
    }
}

/// All the errors of one file, ready to print as `FILE:LINE:COL: message`.
#[derive(Clone, Debug)]
pub struct Diagnostics {
    /// `FILE:LINE:COL: message`, in file order, duplicates removed.
    pub lines: Vec<String>,
}

impl Diagnostics {
    /// Locates each diagnostic in `text` (the file read from `path`) and
    /// formats it; LINE and COL count from 1, COL in characters.
    pub fn render(path: &str, text: &str, mut diags: Vec<Diag>) -> Self {
        diags.sort_by_key(|d| d.span.start);
        diags.dedup();
        // One pass over the text for all diagnostics (they are sorted), so
        // that a file with an error on every line stays linear.
        let mut cursor = Cursor::default();
        let lines = diags
            .iter()
            .map(|d| {
                let (line, col) = cursor.advance(text, d.span.start);
                format!("{path}:{line}:{col}: {}", d.message)
            })
            .collect();
        Diagnostics { lines }
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        for l in &self.lines {
            writeln!(f, "{l}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// Walks the text forward, counting lines, for offsets given in order.
#[derive(Default)]
struct Cursor {
    offset: usize,
    line: usize,
    line_start: usize,
}

impl Cursor {
    fn advance(&mut self, text: &str, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        if offset < self.offset {
            return line_col(text, offset);
        }
        let seen = &text[self.offset..offset];
        self.line += seen.matches('\n').count();
        if let Some(i) = seen.rfind('\n') {
            self.line_start = self.offset + i + 1;
        }
        self.offset = offset;
        (
            self.line + 1,
            text[self.line_start..offset].chars().count() + 1,
        )
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let col = text[line_start..offset].chars().count() + 1;
    (line, col)
}

/// Levenshtein distance, for "did you mean" hints.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The closest candidate within a small distance, if any.
pub fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, c)| *d > 0 && *d <= (c.len().max(word.len()) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Adds "did you mean" to serde's unknown-field message, whose form is
/// "unknown field `x`, expected one of `a`, `b`" (or "expected `a`").
pub fn hint_unknown_field(message: &str) -> String {
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return message.to_string();
    };
    let Some((field, expected)) = rest.split_once('`') else {
        return message.to_string();
    };
    let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    match suggest(field, candidates.iter().copied()) {
        Some(s) => format!("unknown key `{field}`; did you mean `{s}`?"),
        None if candidates.is_empty() => format!("unknown key `{field}`"),
        None => format!(
            "unknown key `{field}` (expected one of: {})",
            candidates.join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions() {
        let t = "a\nbcd\né=1";
        assert_eq!(line_col(t, 0), (1, 1));
        assert_eq!(line_col(t, 3), (2, 2));
        assert_eq!(line_col(t, 8), (3, 2));
        assert_eq!(line_col(t, 999), (3, 4));
    }

    #[test]
    fn hints() {
        assert_eq!(
            hint_unknown_field("unknown field `port`, expected one of `ports`, `links`"),
            "unknown key `port`; did you mean `ports`?"
        );
        assert_eq!(suggest("zzzz", ["ports"]), None);
    }
}
