//! The one way this crate takes a lock.

/// Locks a mutex, taking over a poisoned one: every value behind these locks is
/// left consistent between statements (database writes run in transactions), so a
/// panic elsewhere does not spoil it.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
