//! Locking that survives a panic elsewhere.

use std::sync::{Mutex, MutexGuard};

/// Lock `m`, recovering from poisoning: every critical section in this crate leaves its
/// data consistent, so a panic while one was held does not make the data unusable.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
