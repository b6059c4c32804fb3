//! A file's text as the states hold it: shared, and hashed at most once.
//!
//! An apply of a large host checks every file netloom owns against a
//! digest several times: the reading matches the digests it kept, drift
//! matches the record's, the record and the agent's view digest the texts
//! again. The texts themselves are shared between those states (the
//! observed copy of a file as wanted is the desired one), so the hash is
//! kept with the text: the first check computes it, the others read it.

use std::fmt;
use std::ops::Deref;
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::core::hash::{fnv64, fnv64_many};

/// A file's text. Cloning shares it; the [`fnv64`] of the whole text is
/// computed the first time it is asked for, by any of the copies.
#[derive(Clone)]
pub struct FileText(Arc<Inner>);

struct Inner {
    hash: OnceLock<u64>,
    text: Box<str>,
}

impl FileText {
    /// Whether `a` and `b` are the same shared text (not only equal ones).
    pub fn ptr_eq(a: &FileText, b: &FileText) -> bool {
        Arc::ptr_eq(&a.0, &b.0)
    }

    /// The [`fnv64`] of the whole text.
    pub fn hash(&self) -> u64 {
        *self.0.hash.get_or_init(|| fnv64(self.0.text.as_bytes()))
    }

    /// [`FileText::hash`] of each of `texts`, in order: those not hashed
    /// yet are hashed together ([`fnv64_many`]), a host's files by the
    /// thousand at once.
    pub fn hashes(texts: &[&FileText]) -> Vec<u64> {
        let unknown: Vec<&FileText> = texts
            .iter()
            .copied()
            .filter(|t| t.0.hash.get().is_none())
            .collect();
        let bytes: Vec<&[u8]> = unknown.iter().map(|t| t.as_bytes()).collect();
        for (t, h) in unknown.iter().zip(fnv64_many(&bytes)) {
            // Another copy may have set it meanwhile: to the same value.
            let _ = t.0.hash.set(h);
        }
        texts.iter().map(|t| t.hash()).collect()
    }
}

impl Deref for FileText {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0.text
    }
}

impl PartialEq for FileText {
    fn eq(&self, other: &FileText) -> bool {
        if FileText::ptr_eq(self, other) {
            return true;
        }
        // Two hashes already known tell different texts apart without
        // reading them.
        if let (Some(a), Some(b)) = (self.0.hash.get(), other.0.hash.get())
            && a != b
        {
            return false;
        }
        **self == **other
    }
}

impl Eq for FileText {}

impl PartialEq<str> for FileText {
    fn eq(&self, other: &str) -> bool {
        **self == *other
    }
}

impl fmt::Debug for FileText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl fmt::Display for FileText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self)
    }
}

impl From<Box<str>> for FileText {
    fn from(text: Box<str>) -> FileText {
        FileText(Arc::new(Inner {
            hash: OnceLock::new(),
            text,
        }))
    }
}

impl From<String> for FileText {
    fn from(text: String) -> FileText {
        text.into_boxed_str().into()
    }
}

impl From<&str> for FileText {
    fn from(text: &str) -> FileText {
        Box::<str>::from(text).into()
    }
}

impl From<&String> for FileText {
    fn from(text: &String) -> FileText {
        text.as_str().into()
    }
}

/// As the string it is: the record and the JSON output are unchanged.
impl Serialize for FileText {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self)
    }
}

impl<'de> Deserialize<'de> for FileText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<FileText, D::Error> {
        Ok(Box::<str>::deserialize(d)?.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_is_the_texts_whether_asked_alone_or_together() {
        let texts: Vec<FileText> = (0..9)
            .map(|i| format!("# netloom\n10.0.0.{i}\tc{i}\n{}", "z".repeat(i * 3)).into())
            .collect();
        // One asked for alone first, the rest together, one twice.
        assert_eq!(texts[4].hash(), fnv64(texts[4].as_bytes()));
        let mut asked: Vec<&FileText> = texts.iter().collect();
        asked.push(&texts[0]);
        let got = FileText::hashes(&asked);
        for (t, h) in asked.iter().zip(got) {
            assert_eq!(h, fnv64(t.as_bytes()), "{t:?}");
        }
    }

    #[test]
    fn a_copy_shares_the_hash_and_equality_is_the_texts() {
        let a: FileText = "# netloom\n10.0.0.1\ta\n".into();
        let b = a.clone();
        assert!(FileText::ptr_eq(&a, &b));
        a.hash();
        assert_eq!(b.0.hash.get(), Some(&fnv64(a.as_bytes())));
        // Equal texts apart, hashed or not, are equal; different ones are
        // not, hashed or not.
        let c: FileText = String::from(&*a).into();
        assert_eq!(a, c);
        c.hash();
        assert_eq!(a, c);
        let d: FileText = "# netloom\n10.0.0.2\ta\n".into();
        assert_ne!(a, d);
        d.hash();
        assert_ne!(a, d);
    }

    #[test]
    fn it_is_kept_as_its_string() {
        let a: FileText = "line\n\"quoted\"\n".into();
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(json, serde_json::to_string("line\n\"quoted\"\n").unwrap());
        let back: FileText = serde_json::from_str(&json).unwrap();
        assert_eq!(back, a);
    }
}
