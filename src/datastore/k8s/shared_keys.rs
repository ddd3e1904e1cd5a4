//! Keys that several objects of one kind can yield: Calico's conflict-resolving processors.
//!
//! Two IP pools with one CIDR, two host endpoints whose v3 names (from the metadata annotation)
//! and nodes agree, two global network sets with one v3 name: each pair maps to a single v1 key.
//! Calico v3.32 (`updateprocessors/conflictresolvingcacheproc.go`) remembers every claimant of
//! such a key and only ever sends the value of the claimant whose object name sorts lowest.
//! A claimant that is not the lowest changes nothing on the wire; when the lowest one goes
//! (deleted, or now yielding another key), the key takes the next claimant's value instead of
//! being deleted, and it is deleted only when no claimant is left.
//!
//! This sits between the per-object diff and the batcher: its input is what one object's
//! change does to the keys that object claims, its output is what the clients must see.

use crate::model::KvUpdate;
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};

/// Driver kind labels whose keys can be claimed by more than one object.
pub(super) const KINDS: &[&str] = &["ippool", "hostendpoint", "globalnetworkset"];

/// Every claimant of every key of one kind, with the value it yields.
#[derive(Debug, Default)]
pub(super) struct SharedKeys {
    claims: HashMap<String, BTreeMap<String, Bytes>>,
}

impl SharedKeys {
    /// Turns the updates object `id` makes to the keys it claims into the updates clients must
    /// receive. `id` is the object's name as the API server holds it (Calico orders claimants
    /// by that name, not by the converted v3 name).
    pub(super) fn resolve(&mut self, id: &str, updates: Vec<KvUpdate>) -> Vec<KvUpdate> {
        let mut out = Vec::with_capacity(updates.len());
        for u in updates {
            let key: &str = &u.key;
            match u.value {
                Some(v) => {
                    let claimants = self.claims.entry(key.to_owned()).or_default();
                    claimants.insert(id.to_owned(), v.clone());
                    if claimants.keys().next().map(String::as_str) == Some(id) {
                        out.push(KvUpdate::set(u.key, v, u.revision));
                    }
                }
                None => {
                    let Some(claimants) = self.claims.get_mut(key) else {
                        out.push(KvUpdate::delete(u.key, u.revision));
                        continue;
                    };
                    let was_first = claimants.keys().next().map(String::as_str) == Some(id);
                    claimants.remove(id);
                    match claimants.values().next() {
                        None => {
                            self.claims.remove(key);
                            out.push(KvUpdate::delete(u.key, u.revision));
                        }
                        Some(next) if was_first => {
                            out.push(KvUpdate::set(u.key, next.clone(), u.revision));
                        }
                        Some(_) => {}
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(k: &str, v: &str) -> KvUpdate {
        KvUpdate::set(k, Bytes::copy_from_slice(v.as_bytes()), "1")
    }

    fn del(k: &str) -> KvUpdate {
        KvUpdate::delete(k, "1")
    }

    fn seen(us: &[KvUpdate]) -> Vec<(String, Option<String>)> {
        us.iter()
            .map(|u| {
                (
                    u.key.to_string(),
                    u.value
                        .as_ref()
                        .map(|v| String::from_utf8_lossy(v).into_owned()),
                )
            })
            .collect()
    }

    fn one(k: &str, v: Option<&str>) -> Vec<(String, Option<String>)> {
        vec![(k.to_string(), v.map(str::to_string))]
    }

    #[test]
    fn only_the_lowest_name_is_sent_and_a_lower_newcomer_takes_over() {
        let mut s = SharedKeys::default();
        assert_eq!(
            seen(&s.resolve("pool-b", vec![set("/k", "B")])),
            one("/k", Some("B"))
        );
        // A higher name claiming the same key is swallowed, now and when it changes.
        assert!(s.resolve("pool-c", vec![set("/k", "C")]).is_empty());
        assert!(s.resolve("pool-c", vec![set("/k", "C2")]).is_empty());
        // A lower name wins at once.
        assert_eq!(
            seen(&s.resolve("pool-a", vec![set("/k", "A")])),
            one("/k", Some("A"))
        );
    }

    #[test]
    fn deleting_the_lowest_resends_the_next_and_the_last_deletes() {
        let mut s = SharedKeys::default();
        s.resolve("pool-a", vec![set("/k", "A")]);
        s.resolve("pool-b", vec![set("/k", "B")]);
        assert_eq!(
            seen(&s.resolve("pool-a", vec![del("/k")])),
            one("/k", Some("B"))
        );
        assert_eq!(seen(&s.resolve("pool-b", vec![del("/k")])), one("/k", None));
        assert!(s.claims.is_empty());
    }

    #[test]
    fn deleting_a_claimant_that_is_not_the_lowest_changes_nothing() {
        let mut s = SharedKeys::default();
        s.resolve("pool-a", vec![set("/k", "A")]);
        s.resolve("pool-b", vec![set("/k", "B")]);
        assert!(s.resolve("pool-b", vec![del("/k")]).is_empty());
        assert_eq!(seen(&s.resolve("pool-a", vec![del("/k")])), one("/k", None));
    }

    #[test]
    fn moving_to_another_key_releases_the_old_one() {
        let mut s = SharedKeys::default();
        s.resolve("pool-a", vec![set("/k1", "A")]);
        s.resolve("pool-b", vec![set("/k1", "B")]);
        // pool-a's CIDR changes: its old key passes to pool-b, its new key is its own.
        let out = seen(&s.resolve("pool-a", vec![set("/k2", "A2"), del("/k1")]));
        assert_eq!(
            out,
            vec![
                ("/k2".to_string(), Some("A2".to_string())),
                ("/k1".to_string(), Some("B".to_string())),
            ]
        );
    }
}
