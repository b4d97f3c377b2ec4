//! `Name`: an immutable, shared string for the values a mesh repeats across its resources
//! (namespaces, label keys and values, object names and the keys built from them).
//!
//! Why: at 100,000 pods every pod carries its namespace and labels, and the control plane's
//! indexes hold each pod's namespace and name five to nine times over. As `String`s, each copy
//! was its own allocation; a `Name` clone is a reference-count bump, and names read from YAML
//! are interned, so one namespace or label is one allocation however many pods carry it.
//!
//! The interner holds strings only while something else does: when it has doubled since its
//! last sweep, entries no resource holds any more are dropped, so churn (pod-template hashes,
//! deleted namespaces) does not grow it without bound. The sweep is amortised O(1) per intern.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::ops::Deref;
use std::sync::{Arc, LazyLock, Mutex};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A shared, immutable string. Compares, hashes and orders as the `str` it holds, so maps
/// keyed by `Name` are looked up with a `&str`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(Arc<str>);

impl Name {
    /// The shared copy of `s`: every `Name` interned with the same text points at one allocation.
    pub fn intern(s: &str) -> Name {
        INTERNER.intern(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True when both point at the same allocation (tests check that interning shares).
    pub fn ptr_eq(a: &Name, b: &Name) -> bool {
        Arc::ptr_eq(&a.0, &b.0)
    }
}

impl Default for Name {
    fn default() -> Self {
        static EMPTY: LazyLock<Name> = LazyLock::new(|| Name(Arc::from("")));
        EMPTY.clone()
    }
}

impl Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Name {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl From<&str> for Name {
    fn from(s: &str) -> Name {
        Name::intern(s)
    }
}

impl From<&String> for Name {
    fn from(s: &String) -> Name {
        Name::intern(s)
    }
}

impl From<String> for Name {
    fn from(s: String) -> Name {
        Name::intern(&s)
    }
}

impl From<&Name> for Name {
    fn from(s: &Name) -> Name {
        s.clone()
    }
}

impl From<Name> for String {
    fn from(n: Name) -> String {
        n.0.to_string()
    }
}

impl PartialEq<str> for Name {
    fn eq(&self, o: &str) -> bool {
        &*self.0 == o
    }
}

impl PartialEq<&str> for Name {
    fn eq(&self, o: &&str) -> bool {
        &*self.0 == *o
    }
}

impl PartialEq<String> for Name {
    fn eq(&self, o: &String) -> bool {
        &*self.0 == o.as_str()
    }
}

impl PartialEq<Name> for str {
    fn eq(&self, o: &Name) -> bool {
        self == &*o.0
    }
}

impl PartialEq<Name> for &str {
    fn eq(&self, o: &Name) -> bool {
        *self == &*o.0
    }
}

impl PartialEq<Name> for String {
    fn eq(&self, o: &Name) -> bool {
        self.as_str() == &*o.0
    }
}

impl Serialize for Name {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Name, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Name;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Name, E> {
                Ok(Name::intern(s))
            }
        }
        d.deserialize_str(V)
    }
}

/// Shards so that the two loader threads rarely wait on each other.
const SHARDS: usize = 16;

struct Interner {
    hasher: RandomState,
    shards: [Mutex<Shard>; SHARDS],
}

#[derive(Default)]
struct Shard {
    set: HashSet<Name>,
    /// Size after the last sweep; the next sweep comes when the set has doubled.
    swept_at: usize,
}

static INTERNER: LazyLock<Interner> = LazyLock::new(|| Interner {
    hasher: RandomState::new(),
    shards: std::array::from_fn(|_| Mutex::new(Shard::default())),
});

impl Interner {
    fn intern(&self, s: &str) -> Name {
        let shard = &self.shards[(self.hasher.hash_one(s) as usize) % SHARDS];
        // A poisoned lock only means another thread panicked mid-insert of a plain set: the
        // set is still a valid set, so keep using it.
        let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = shard.set.get(s) {
            return n.clone();
        }
        if shard.set.len() >= 2 * shard.swept_at.max(1024) {
            shard.set.retain(|n| Arc::strong_count(&n.0) > 1);
            shard.set.shrink_to_fit();
            shard.swept_at = shard.set.len();
        }
        let n = Name(Arc::from(s));
        shard.set.insert(n.clone());
        n
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).set.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn equal_text_shares_one_allocation() {
        let a = Name::intern("ns-interned-1");
        let b: Name = String::from("ns-interned-1").into();
        let c: Name = serde_json::from_str("\"ns-interned-1\"").expect("a JSON string");
        assert!(Name::ptr_eq(&a, &b) && Name::ptr_eq(&a, &c));
        assert_eq!(a, "ns-interned-1");
        assert_eq!(
            serde_json::to_string(&a).expect("serializes"),
            "\"ns-interned-1\""
        );
    }

    #[test]
    fn maps_keyed_by_name_are_looked_up_by_str() {
        let m: BTreeMap<Name, Name> = [("app".into(), "reviews".into())].into();
        assert_eq!(m.get("app").map(Name::as_str), Some("reviews"));
        assert_eq!(format!("{:?}", m), r#"{"app": "reviews"}"#);
    }

    #[test]
    fn strings_nothing_holds_are_swept() {
        // Many short-lived names (as pod-template hashes churn): the interner keeps only what
        // is still held, within twice the sweep threshold per shard.
        let kept: Vec<Name> = (0..100)
            .map(|i| Name::intern(&format!("kept-{i}")))
            .collect();
        for i in 0..200_000 {
            drop(Name::intern(&format!("churn-{i}")));
        }
        assert!(
            INTERNER.len() < 2 * 1024 * SHARDS + 1000,
            "{}",
            INTERNER.len()
        );
        for (i, k) in kept.iter().enumerate() {
            assert!(Name::ptr_eq(k, &Name::intern(&format!("kept-{i}"))));
        }
    }
}
