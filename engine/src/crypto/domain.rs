//! Domain-separation strings, all in one place. Changing any of them changes every derived key.

/// Mask PRF key for leaf rows of one class and index.
pub const MASK_LEAF: &str = "blindkd 2026-11 mlhe mask leaf";
/// Mask PRF key for pivot rows of one class and index.
pub const MASK_PIVOT: &str = "blindkd 2026-11 mlhe mask pivot";
/// AEAD key sealing the radius bounds of one class's tree.
pub const RADIUS_AEAD: &str = "blindkd 2026-11 radius bounds aead";
/// AEAD key sealing the payloads of one class.
pub const PAYLOAD_AEAD: &str = "blindkd 2026-11 payload aead";
/// Seed of the paper-she key of one index.
pub const SHE_KEY: &str = "blindkd 2026-11 paper-she key seed";
/// Per-class key from the owner master secret.
pub const CLASS_KEY: &str = "blindkd 2026-11 class key";
/// Enrollment bundle sealing (X25519 shared secret → AEAD key).
pub const BUNDLE_SEAL: &str = "blindkd 2026-11 bundle seal";
/// Proof-of-possession signature context.
pub const POP_CONTEXT: &[u8] = b"blindkd 2026-11 session pop v1";
/// Ed25519 (proof-of-possession) secret of a doctor's device, from the device seed.
pub const DEVICE_ED25519: &str = "blindkd 2026-11 device ed25519 key";
/// X25519 (bundle sealing) secret of a doctor's device, from the device seed.
pub const DEVICE_X25519: &str = "blindkd 2026-11 device x25519 key";
/// Hash of an access token's text, bound into the proof-of-possession message.
pub const TOKEN_HASH: &str = "blindkd 2026-11 access token hash";
/// Expands the server's per-session seed into the `a` of an mlhe session public key.
pub const SESSION_PK_A: &str = "blindkd 2026-11 mlhe session public key a";
/// Checksum of a device key file.
pub const DEVICE_KEY_FILE: &str = "blindkd 2026-11 device key file checksum";
/// Signature context of a hospital's signed revocation list.
pub const REVOCATION_LIST: &[u8] = b"blindkd 2026-11 revocation list v1";
/// Mask PRF key of the check rows of one class and index.
pub const MASK_CHECK: &str = "blindkd 2026-11 mlhe mask check row";
/// Signature context of a doctor's key bundle (signed by the owner's issuer key, issue 17 B1).
pub const BUNDLE_SIGNATURE: &[u8] = b"blindkd 2026-11 key bundle v2";
/// Per-class, per-index key from the owner master secret (issue 17 B2; replaces [`CLASS_KEY`]
/// for indexes built since).
pub const CLASS_KEY_PER_INDEX: &str = "blindkd 2026-11 class key per index";
/// Expands the public `aᵢ` of the mlhe query ciphertexts (one per coordinate, shared by every
/// query; each query has a fresh secret key, issue 12).
pub const QUERY_A: &str = "blindkd 2026-11 mlhe query ciphertext a";
