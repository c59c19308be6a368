//! Strings that thousands of cached objects repeat (condition types and reasons, the
//! operator's label and annotation keys, its field manager), held once for the process: a
//! cached object keeps a shared handle (`Arc<str>`, 16 bytes, no allocation) where it would
//! otherwise own a copy.

use std::sync::Arc;

/// A fixed set of shared words.
pub struct Words(Vec<Arc<str>>);

impl Words {
    /// The set of `words` (a short list: a lookup compares with each).
    pub fn new(words: impl IntoIterator<Item = impl AsRef<str>>) -> Words {
        Words(words.into_iter().map(|w| Arc::from(w.as_ref())).collect())
    }

    /// `s` as a shared word when it is one of the set, else a string of its own.
    pub fn get(&self, s: &str) -> Arc<str> {
        self.0
            .iter()
            .find(|w| &***w == s)
            .cloned()
            .unwrap_or_else(|| Arc::from(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_word_of_the_set_is_shared_and_any_other_string_is_its_own() {
        let words = Words::new(["Ready", "True"]);
        assert!(Arc::ptr_eq(&words.get("Ready"), &words.get("Ready")));
        assert_eq!(&*words.get("True"), "True");
        let (a, b) = (words.get("mine"), words.get("mine"));
        assert_eq!(a, b);
        assert!(!Arc::ptr_eq(&a, &b));
    }
}
