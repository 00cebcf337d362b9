//! Unique names, reserved before anything is created.
//!
//! A pod or container name is reserved for an id before any resource is
//! made, and released again if creation fails or the request is abandoned:
//! the [`Reservation`] guard releases on drop unless committed. Retrying a
//! request therefore never fails with "name is reserved" because of an
//! earlier attempt that did not finish (kubelet retries after its deadline).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A name is taken by another id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("name {name:?} is reserved for {id:?}")]
pub struct NameInUse {
    pub name: String,
    pub id: String,
}

/// Names and the ids that own them.
#[derive(Debug, Default, Clone)]
pub struct NameIndex {
    names: Arc<Mutex<HashMap<String, String>>>,
}

impl NameIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// An index holding the `(name, id)` pairs of records loaded at start-up.
    /// Ids are unique, so a clash cannot happen; it would keep the first owner.
    pub fn with_owners<'a>(owners: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let index = Self::new();
        {
            let mut names = index
                .names
                .lock()
                .expect("name index lock is never poisoned");
            for (name, id) in owners {
                names
                    .entry(name.to_owned())
                    .or_insert_with(|| id.to_owned());
            }
        }
        index
    }

    /// Reserves `name` for `id`; reserving it again for the same id is fine.
    pub fn reserve(&self, name: &str, id: &str) -> Result<Reservation, NameInUse> {
        let mut names = self
            .names
            .lock()
            .expect("name index lock is never poisoned");
        match names.get(name) {
            Some(owner) if owner != id => {
                return Err(NameInUse {
                    name: name.to_owned(),
                    id: owner.clone(),
                })
            }
            Some(_) => {}
            None => {
                names.insert(name.to_owned(), id.to_owned());
            }
        }
        Ok(Reservation {
            index: self.clone(),
            name: name.to_owned(),
            id: id.to_owned(),
            committed: false,
        })
    }

    /// Releases `name` if `id` owns it.
    pub fn release(&self, name: &str, id: &str) {
        let mut names = self
            .names
            .lock()
            .expect("name index lock is never poisoned");
        if names.get(name).is_some_and(|owner| owner == id) {
            names.remove(name);
        }
    }

    /// The id that owns `name`.
    pub fn owner(&self, name: &str) -> Option<String> {
        let names = self
            .names
            .lock()
            .expect("name index lock is never poisoned");
        names.get(name).cloned()
    }
}

/// A name held while a create runs; released on drop unless committed.
#[derive(Debug)]
pub struct Reservation {
    index: NameIndex,
    name: String,
    id: String,
    committed: bool,
}

impl Reservation {
    /// Keeps the name for good: the object now exists.
    pub fn commit(mut self) {
        self.committed = true;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.committed {
            self.index.release(&self.name, &self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loaded_owners_keep_their_names() {
        let index = NameIndex::with_owners([("pod_a", "id1"), ("pod_b", "id2")]);
        let clash = index.reserve("pod_a", "id3").expect_err("owned");
        assert_eq!(clash.id, "id1");
        index.release("pod_b", "id2");
        index.reserve("pod_b", "id3").expect("released").commit();
    }

    #[test]
    fn a_failed_create_releases_its_name() {
        let index = NameIndex::new();
        {
            let _reservation = index.reserve("pod_a", "id1").expect("free");
            assert_eq!(
                index.reserve("pod_a", "id2").expect_err("taken"),
                NameInUse {
                    name: "pod_a".to_owned(),
                    id: "id1".to_owned()
                }
            );
        }
        // Dropped without commit, as when the create failed.
        index.reserve("pod_a", "id2").expect("released").commit();
        assert_eq!(index.owner("pod_a").as_deref(), Some("id2"));
    }

    #[test]
    fn committed_names_stay_until_released() {
        let index = NameIndex::new();
        index.reserve("c", "id1").expect("free").commit();
        assert!(index.reserve("c", "id2").is_err());
        index.release("c", "other");
        assert!(
            index.reserve("c", "id2").is_err(),
            "only the owner releases"
        );
        index.release("c", "id1");
        index.reserve("c", "id2").expect("released").commit();
    }

    #[test]
    fn same_id_may_reserve_again() {
        let index = NameIndex::new();
        index.reserve("c", "id1").expect("free").commit();
        index.reserve("c", "id1").expect("same owner").commit();
    }
}
