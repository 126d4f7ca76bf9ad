//! Access tokens (DESIGN §5). Being written.
