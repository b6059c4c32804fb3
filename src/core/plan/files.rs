//! Files netloom writes (hosts, resolv.conf), with unified diffs.

use super::*;

pub(super) fn diff_files(d: &State, o: &State, out: &mut Vec<Change>) {
    for (path, want) in d.files.iter() {
        let have = o.files.get(path);
        if model::is_digest(want) {
            // Only the digest of this content is known (a state taken from
            // the record, e.g. the one a rollback returns to, for a file
            // whose text could not be recovered): there is nothing to write,
            // so the file stays as it is rather than receive the digest.
            continue;
        }
        // The text compared without joining it: most files are as wanted.
        if have.is_some_and(|h| model::with_user_block_is(want, h, h)) {
            continue;
        }
        let want_full = model::with_user_block(want, have.map(|h| &**h));
        match have {
            None => {
                let mut c = change(
                    format!("file.{path}"),
                    Action::Create,
                    P_FILE,
                    format!("{} lines", want_full.lines().count()),
                    vec![Op::WriteFile {
                        path: path.clone(),
                        content: want_full.clone(),
                    }],
                );
                c.diff = Some(unified("/dev/null", path, "", &want_full));
                out.push(c);
            }
            Some(h) => {
                let mut c = change(
                    format!("file.{path}"),
                    Action::Update,
                    P_FILE,
                    format!("{} lines", want_full.lines().count()),
                    vec![Op::WriteFile {
                        path: path.clone(),
                        content: want_full.clone(),
                    }],
                );
                c.diff = Some(unified(path, path, h, &want_full));
                out.push(c);
            }
        }
    }
    for (path, have) in o.files.iter() {
        if !d.files.contains_key(path) {
            let mut c = change(
                format!("file.{path}"),
                Action::Delete,
                P_FILE,
                format!("{} lines", have.lines().count()),
                vec![Op::RemoveFile { path: path.clone() }],
            );
            c.diff = Some(unified(path, "/dev/null", have, ""));
            out.push(c);
        }
    }
}

/// Lines of context around a change in a hunk.
const CONTEXT: usize = 3;

/// A unified diff with 3 lines of context.
///
/// The lines both texts share at their start and at their end, beyond a
/// hunk's context, are left out before diffing: adding a container
/// changes a line in each of a hundred hosts files of a hundred lines,
/// and the diff library hashes every line of a text over a hundred lines
/// before it compares any. The hunks are those of the whole texts, with
/// the whole texts' line numbers.
pub fn unified(from: &str, to: &str, old: &str, new: &str) -> String {
    use std::fmt::Write as _;
    let (skip, old, new) = middle(old, new);
    let diff = similar::TextDiff::from_lines(old, new);
    let mut out = String::new();
    for hunk in diff.unified_diff().context_radius(CONTEXT).iter_hunks() {
        if out.is_empty() {
            let _ = write!(out, "--- {from}\n+++ {to}\n");
        }
        // The hunk as the library writes it, its header renumbered.
        let text = hunk.to_string();
        let body = text.split_once('\n').map_or("", |(_, body)| body);
        let ops = hunk.ops();
        let (first, last) = (ops[0], ops[ops.len() - 1]);
        let old_range = hunk_range(skip, first.old_range().start, last.old_range().end);
        let new_range = hunk_range(skip, first.new_range().start, last.new_range().end);
        let _ = writeln!(out, "@@ -{old_range} +{new_range} @@");
        out.push_str(body);
    }
    out
}

/// A hunk's range of lines `start..end` (counted from 0, `skip` lines
/// after the start of the text) as a unified diff writes it: the first
/// line counted from 1 and the length unless it is 1; an empty range
/// starts at the line before it.
fn hunk_range(skip: usize, start: usize, end: usize) -> String {
    let len = end - start;
    let first = skip + start + 1;
    match len {
        1 => first.to_string(),
        0 => format!("{},0", first - 1),
        _ => format!("{first},{len}"),
    }
}

/// `old` and `new` without the lines they share at their start and at
/// their end beyond [`CONTEXT`] lines, with the number of lines left out
/// at the start.
fn middle<'a>(old: &'a str, new: &'a str) -> (usize, &'a str, &'a str) {
    let (a, b) = (lines(old), lines(new));
    let prefix = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let suffix = a[prefix..]
        .iter()
        .rev()
        .zip(b[prefix..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let skip = prefix.saturating_sub(CONTEXT);
    let cut = suffix.saturating_sub(CONTEXT);
    let start: usize = a[..skip].iter().map(|l| l.len()).sum();
    let end: usize = a[a.len() - cut..].iter().map(|l| l.len()).sum();
    (
        skip,
        &old[start..old.len() - end],
        &new[start..new.len() - end],
    )
}

/// The lines of `s` with their endings, split where the diff library
/// splits them: after `\n`, `\r\n` or a lone `\r`.
fn lines(s: &str) -> Vec<&str> {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        let end = match bytes[i] {
            b'\n' => i + 1,
            b'\r' if bytes.get(i + 1) == Some(&b'\n') => i + 2,
            b'\r' => i + 1,
            _ => {
                i += 1;
                continue;
            }
        };
        // Both endings are ASCII: `end` is a character boundary.
        out.push(&s[start..end]);
        start = end;
        i = end;
    }
    if start < s.len() {
        out.push(&s[start..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The library's unified diff of the whole texts: what [`unified`]
    /// must write.
    fn whole(from: &str, to: &str, old: &str, new: &str) -> String {
        similar::TextDiff::from_lines(old, new)
            .unified_diff()
            .context_radius(CONTEXT)
            .header(from, to)
            .to_string()
    }

    /// Texts of lines from a few, so that they share many lines, with
    /// every kind of ending and sometimes none at the end.
    fn text() -> impl Strategy<Value = String> {
        let line = prop::sample::select(vec![
            "a\n",
            "b\n",
            "c\n",
            "10.0.0.2\tc2\n",
            "d\r\n",
            "e\r",
            "\n",
            "é\n",
        ]);
        (
            prop::collection::vec(line, 0..160),
            prop::sample::select(vec!["", "z", "\r"]),
        )
            .prop_map(|(lines, tail)| lines.concat() + tail)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn the_diff_is_the_whole_texts_diff(old in text(), new in text()) {
            prop_assert_eq!(unified("a", "b", &old, &new), whole("a", "b", &old, &new));
        }

        #[test]
        fn a_few_lines_changed_in_a_long_text_diff_as_in_the_whole(
            base in prop::collection::vec(0u8..4, 0..150),
            edits in prop::collection::vec((0usize..150, 0u8..3), 0..4),
        ) {
            let old: Vec<String> = base.iter().map(|i| format!("10.0.0.{i}\tc{i}\n")).collect();
            let mut new = old.clone();
            for (at, how) in edits {
                let at = at.min(new.len());
                match how {
                    0 => new.insert(at, "10.0.9.9\tnewbie\n".into()),
                    1 if at < new.len() => { new.remove(at); }
                    _ if at < new.len() => new[at] = "10.0.8.8\tmoved\n".into(),
                    _ => {}
                }
            }
            let (old, new) = (old.concat(), new.concat());
            prop_assert_eq!(unified("a", "b", &old, &new), whole("a", "b", &old, &new));
        }
    }

    #[test]
    fn a_line_added_to_a_hosts_file_is_one_hunk_numbered_in_the_whole_file() {
        let old: String = (0..120)
            .map(|i| format!("10.0.{}.{}\tc{i}\n", i / 250, i % 250 + 2))
            .collect();
        let new = old.replace("\tc60\n", "\tc60\n10.0.9.9\tnewbie\n");
        let d = unified("/h", "/h", &old, &new);
        assert_eq!(d, whole("/h", "/h", &old, &new));
        assert!(d.contains("@@ -59,6 +59,7 @@"), "{d}");
        assert_eq!(unified("/h", "/h", &old, &old), "");
    }
}
