//! The Redis backend (cluster mode). Implemented in a later change.
