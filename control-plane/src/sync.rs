//! The one way this crate takes a lock, counts of holdings per key under one
//! (connections and live follows per client address), and a set of keys with
//! work waiting (log streams a drain lacks).

/// Locks a mutex, taking over a poisoned one: every value behind these locks is
/// left consistent between statements (database writes run in transactions), so a
/// panic elsewhere does not spoil it.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Keys with work waiting, each once however often marked, and a wake-up for
/// the task that does it.
pub(crate) struct Marked<K> {
    keys: std::sync::Mutex<std::collections::HashSet<K>>,
    wake: tokio::sync::Notify,
}

impl<K> Default for Marked<K> {
    fn default() -> Self {
        Marked {
            keys: std::sync::Mutex::default(),
            wake: tokio::sync::Notify::new(),
        }
    }
}

impl<K: std::hash::Hash + Eq> Marked<K> {
    pub(crate) fn mark(&self, key: K) {
        lock(&self.keys).insert(key);
        self.wake.notify_one();
    }

    /// The keys marked so far, unmarked.
    pub(crate) fn take(&self) -> std::collections::HashSet<K> {
        std::mem::take(&mut *lock(&self.keys))
    }

    /// Resolves once a key is marked (or was, since the last wait).
    pub(crate) fn marked(&self) -> tokio::sync::futures::Notified<'_> {
        self.wake.notified()
    }
}

/// Holdings counted per key (a client's address), each key within a limit and
/// all of them within another, taken and given back under one lock.
#[derive(Debug)]
pub(crate) struct Counts<K> {
    held: std::sync::Mutex<(usize, std::collections::HashMap<K, usize>)>,
}

impl<K> Default for Counts<K> {
    fn default() -> Self {
        Counts {
            held: std::sync::Mutex::default(),
        }
    }
}

/// Why a holding was refused, with how many are held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Full {
    /// The key holds its limit.
    Key(usize),
    /// All keys together hold the limit of all.
    All(usize),
}

impl<K: std::hash::Hash + Eq + Clone> Counts<K> {
    /// Counts one more for `key`, unless it holds `per_key` already or all
    /// hold `in_all`; then nothing is counted.
    pub(crate) fn take(&self, key: &K, per_key: usize, in_all: usize) -> Result<(), Full> {
        let mut held = lock(&self.held);
        let (all, by_key) = &mut *held;
        let mine = by_key.get(key).copied().unwrap_or(0);
        if mine >= per_key {
            return Err(Full::Key(mine));
        }
        if *all >= in_all {
            return Err(Full::All(*all));
        }
        *all += 1;
        *by_key.entry(key.clone()).or_default() += 1;
        Ok(())
    }

    /// Gives back one holding of `key`; a key holding none is forgotten.
    pub(crate) fn give_back(&self, key: &K) {
        let mut held = lock(&self.held);
        let (all, by_key) = &mut *held;
        *all = all.saturating_sub(1);
        if let Some(count) = by_key.get_mut(key) {
            *count -= 1;
            if *count == 0 {
                by_key.remove(key);
            }
        }
    }
}
