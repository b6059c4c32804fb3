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

/// A unified diff with 3 lines of context.
pub fn unified(from: &str, to: &str, old: &str, new: &str) -> String {
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(from, to)
        .to_string()
}
