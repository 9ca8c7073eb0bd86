//! The OCSP responder's cache of pre-signed answers, with a second index by the exact bytes
//! of the request that asked.
//!
//! Answers are keyed by what they are about (issuer and DER CertID). Most clients send the
//! same request bytes for the same certificate over and over (RFC 5019's profile: one
//! CertID, no nonce), so the hot path first looks the raw request up in a second index and
//! skips DER decoding altogether. That index only ever points at answers the first index
//! holds at that moment: every change to the first index empties it, and it is filled only
//! under the same lock, from the first index's current entry. So a revocation, a re-sign
//! or a rotation can never leave an old answer reachable through request bytes.

use std::collections::HashMap;
use std::hash::Hash;

/// Longest request remembered by its bytes. A one-CertID request is about 80–120 bytes;
/// anything much longer carries extensions and is left to the decoding path.
pub const MAX_REMEMBERED_REQUEST: usize = 512;

/// Request encodings remembered per answer at most. Honest clients send one or two per
/// certificate (SHA-1 and SHA-256 CertIDs); a client varying harmless bytes (an unknown
/// non-critical extension, say) to fill memory gets no more than this many per answer.
pub const REQUESTS_PER_ANSWER: usize = 4;

/// Answers by subject, plus the request-bytes index described in the module docs.
pub struct AnswerCache<K, V> {
    by_subject: HashMap<K, V>,
    by_request: HashMap<Box<[u8]>, V>,
    /// Upper bound on each index, so neither grows with what clients send.
    capacity: usize,
}

impl<K: Hash + Eq, V: Clone> AnswerCache<K, V> {
    /// An empty cache holding at most `capacity` answers (and as many request keys).
    pub fn new(capacity: usize) -> Self {
        AnswerCache {
            by_subject: HashMap::new(),
            by_request: HashMap::new(),
            capacity,
        }
    }

    /// Number of answers held.
    pub fn len(&self) -> usize {
        self.by_subject.len()
    }

    /// Whether no answer is held.
    pub fn is_empty(&self) -> bool {
        self.by_subject.is_empty()
    }

    /// The answer about `key`.
    pub fn get(&self, key: &K) -> Option<&V> {
        self.by_subject.get(key)
    }

    /// The answer last given to exactly these request bytes, if it is still the current
    /// answer about its subject.
    pub fn get_by_request(&self, request: &[u8]) -> Option<&V> {
        self.by_request.get(request)
    }

    /// Stores the answer about `key`, unless the cache is full and `key` is new (the
    /// responder then signs such answers on demand). Returns whether it was stored.
    pub fn insert(&mut self, key: K, value: V) -> bool {
        if self.by_subject.len() >= self.capacity && !self.by_subject.contains_key(&key) {
            return false;
        }
        self.by_subject.insert(key, value);
        self.by_request.clear();
        true
    }

    /// Drops the answer about `key`.
    pub fn remove(&mut self, key: &K) {
        if self.by_subject.remove(key).is_some() {
            self.by_request.clear();
        }
    }

    /// Keeps only the answers `keep` accepts.
    pub fn retain(&mut self, keep: impl FnMut(&K, &mut V) -> bool) {
        let before = self.by_subject.len();
        self.by_subject.retain(keep);
        if self.by_subject.len() != before {
            self.by_request.clear();
        }
    }

    /// Every answer with its key.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.by_subject.iter()
    }

    /// Remembers that `request` asks about `key`, so the next identical request finds the
    /// current answer without decoding. Does nothing when there is no answer about `key`,
    /// the request is long, or the index is full: [`REQUESTS_PER_ANSWER`] per answer held,
    /// and never more than the capacity.
    pub fn remember_request(&mut self, request: &[u8], key: &K) {
        let limit = self
            .capacity
            .min(self.by_subject.len().saturating_mul(REQUESTS_PER_ANSWER));
        if request.len() > MAX_REMEMBERED_REQUEST || self.by_request.len() >= limit {
            return;
        }
        if let Some(v) = self.by_subject.get(key) {
            self.by_request.insert(request.into(), v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remembered_request_finds_the_current_answer() {
        let mut c = AnswerCache::new(10);
        c.insert("a", 1);
        c.remember_request(b"req-a", &"a");
        assert_eq!(c.get_by_request(b"req-a"), Some(&1));
        assert_eq!(c.get_by_request(b"req-b"), None);
    }

    #[test]
    fn every_change_forgets_request_bytes() {
        let mut c = AnswerCache::new(10);
        c.insert("a", 1);
        c.insert("b", 2);

        c.remember_request(b"req-a", &"a");
        c.insert("a", 3);
        assert_eq!(c.get_by_request(b"req-a"), None, "re-signed answer");
        assert_eq!(c.get(&"a"), Some(&3));

        c.remember_request(b"req-a", &"a");
        c.insert("c", 4);
        assert_eq!(c.get_by_request(b"req-a"), None, "any insert");

        c.remember_request(b"req-a", &"a");
        c.remove(&"a");
        assert_eq!(c.get_by_request(b"req-a"), None, "removed answer");

        c.remember_request(b"req-b", &"b");
        c.retain(|k, _| *k != "b");
        assert_eq!(c.get_by_request(b"req-b"), None, "retained away");
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn no_op_changes_keep_request_bytes() {
        let mut c = AnswerCache::new(10);
        c.insert("a", 1);
        c.remember_request(b"req-a", &"a");
        c.remove(&"missing");
        c.retain(|_, _| true);
        assert_eq!(c.get_by_request(b"req-a"), Some(&1));
    }

    #[test]
    fn request_encodings_are_bounded_per_answer() {
        let mut c = AnswerCache::new(1000);
        c.insert("a", 1);
        for i in 0..10u8 {
            c.remember_request(&[i], &"a");
        }
        let held = (0..10u8)
            .filter(|i| c.get_by_request(&[*i]).is_some())
            .count();
        assert_eq!(held, REQUESTS_PER_ANSWER);
        // A second answer makes room for its own encodings (the insert starts afresh).
        c.insert("b", 2);
        for i in 0..10u8 {
            c.remember_request(&[i], &"b");
        }
        let held = (0..10u8)
            .filter(|i| c.get_by_request(&[*i]).is_some())
            .count();
        assert_eq!(held, 2 * REQUESTS_PER_ANSWER);
    }

    #[test]
    fn nothing_is_remembered_without_an_answer_or_past_the_bounds() {
        let mut c = AnswerCache::new(2);
        c.remember_request(b"req-a", &"a");
        assert_eq!(c.get_by_request(b"req-a"), None, "no answer about a");

        c.insert("a", 1);
        c.insert("b", 2);
        let long = vec![0u8; MAX_REMEMBERED_REQUEST + 1];
        c.remember_request(&long, &"a");
        assert_eq!(c.get_by_request(&long), None, "long request");

        c.remember_request(b"r1", &"a");
        c.remember_request(b"r2", &"a");
        c.remember_request(b"r3", &"a");
        assert!(c.get_by_request(b"r1").is_some() && c.get_by_request(b"r2").is_some());
        assert_eq!(c.get_by_request(b"r3"), None, "request index full");
    }

    #[test]
    fn a_full_cache_keeps_updating_what_it_holds() {
        let mut c = AnswerCache::new(1);
        assert!(c.insert("a", 1));
        assert!(!c.insert("b", 2), "full: new subject refused");
        assert!(c.insert("a", 3), "full: known subject re-signed");
        assert_eq!(c.get(&"a"), Some(&3));
        assert_eq!(c.get(&"b"), None);
    }
}
