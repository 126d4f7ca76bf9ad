//! paper-she: being written (see branch wt-she).
