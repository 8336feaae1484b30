//! Shared helpers live in `e2e/support`; this library is empty on purpose.
