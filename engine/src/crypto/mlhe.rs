//! mlhe (DESIGN §3.1). Being written.
