//! One async lock per object id: lifecycle calls on the same pod or
//! container run one at a time, calls on different objects in parallel.
//!
//! An entry lives while someone holds or waits for its lock; the map drops
//! entries nobody uses, so it does not grow with every id ever seen.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

/// Locks by id.
#[derive(Debug, Default)]
pub struct KeyedLocks {
    map: Mutex<HashMap<String, Weak<AsyncMutex<()>>>>,
}

impl KeyedLocks {
    pub fn new() -> Self {
        Self::default()
    }

    /// Waits for the lock of `id`.
    pub async fn lock(&self, id: &str) -> OwnedMutexGuard<()> {
        let lock = {
            let mut map = self.map.lock().expect("lock map is never poisoned");
            map.retain(|_, weak| weak.strong_count() > 0);
            match map.get(id).and_then(Weak::upgrade) {
                Some(lock) => lock,
                None => {
                    let lock = Arc::new(AsyncMutex::new(()));
                    map.insert(id.to_owned(), Arc::downgrade(&lock));
                    lock
                }
            }
        };
        lock.lock_owned().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn same_id_waits_other_ids_do_not() {
        let locks = Arc::new(KeyedLocks::new());
        let held = locks.lock("a").await;
        let _other = tokio::time::timeout(Duration::from_secs(1), locks.lock("b"))
            .await
            .expect("another id is free");
        let waiter = {
            let locks = locks.clone();
            tokio::spawn(async move {
                let _guard = locks.lock("a").await;
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "a is held");
        drop(held);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("released")
            .expect("task");
    }

    #[tokio::test]
    async fn unused_entries_are_dropped() {
        let locks = KeyedLocks::new();
        for i in 0..100 {
            let _guard = locks.lock(&i.to_string()).await;
        }
        let _guard = locks.lock("last").await;
        assert_eq!(locks.map.lock().expect("map").len(), 1);
    }
}
