//! Compact forms of what thousands of cached objects hold: [`Words`], the strings they repeat
//! (condition types and reasons, the operator's label and annotation keys, its field manager)
//! held once for the process — a cached object keeps a shared handle (`Arc<str>`, 16 bytes,
//! no allocation) where it would otherwise own a copy —, and [`Numbers`], a few optional
//! counters without an `Option` tag each.

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

    /// The position of `s` in the set, if it is one of the words and the set's first 256.
    pub fn index(&self, s: &str) -> Option<u8> {
        let i = self.0.iter().position(|w| &**w == s)?;
        u8::try_from(i).ok()
    }

    /// The word at position `i` of [`Words::index`] (empty past the end).
    pub fn at(&self, i: u8) -> &str {
        self.0.get(usize::from(i)).map_or("", |w| w)
    }
}

/// Up to eight optional numbers: the values and a bit per known one (`8 × N + 1` bytes where
/// `N` `Option<i64>` take `16 × N`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Numbers<const N: usize> {
    values: [i64; N],
    /// Bit `i` set: `values[i]` is known.
    known: u8,
}

impl<const N: usize> Numbers<N> {
    /// The numbers, `None` for an unknown one.
    pub fn new(numbers: [Option<i64>; N]) -> Self {
        const { assert!(N <= 8, "one bit per number in a u8") };
        let mut n = Numbers {
            values: [0; N],
            known: 0,
        };
        for (i, v) in numbers.into_iter().enumerate() {
            if let Some(v) = v {
                n.values[i] = v;
                n.known |= 1 << i;
            }
        }
        n
    }

    /// Number `i`, if known (`None` also past the end).
    pub fn get(&self, i: usize) -> Option<i64> {
        (i < N && self.known & (1 << i) != 0).then(|| self.values[i])
    }

    /// Every number, as given to [`Numbers::new`].
    pub fn all(&self) -> [Option<i64>; N] {
        std::array::from_fn(|i| self.get(i))
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
        assert_eq!((words.index("True"), words.index("mine")), (Some(1), None));
        assert_eq!(
            (words.at(0), words.at(1), words.at(2)),
            ("Ready", "True", "")
        );
    }

    #[test]
    fn numbers_keep_which_are_known() {
        let given = [Some(3), None, Some(0), Some(-7), None];
        let n = Numbers::new(given);
        assert_eq!(n.all(), given);
        assert_eq!((n.get(2), n.get(1), n.get(9)), (Some(0), None, None));
        assert_ne!(n, Numbers::new([Some(3), Some(0), Some(0), Some(-7), None]));
        assert_eq!(
            (size_of::<Numbers<7>>(), size_of::<[Option<i64>; 7]>()),
            (64, 112)
        );
    }
}
