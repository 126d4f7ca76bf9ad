//! The data owner's side: the owner key, index building, and doctors' key bundles.
//!
//! The owner key holds two 32-byte secrets: the token-signing seed and the master secret from which
//! every class key derives (`class key = KDF(master, class)`; mask, radius and payload keys derive from
//! the class key). It also records, per index built, the schema: column statistics are data, so the
//! schema never goes into the server's index.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use rand::RngCore;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use blindkd_engine::encoding::{augment, Schema};
use blindkd_engine::index::{
    shape_hash, ClassIndex, ClassManifest, IndexBody, IndexHeader, IndexId, LeafBlock, SchemeParams,
};
use blindkd_engine::tree::{ShapeNode, TreeBuilder};

use crate::crypto::{aead, domain, ClassKey, ClientScheme, RowDomain, RowRef, SchemeId};
use crate::{Error, Result};
use blindkd_engine::token::IssuerPublic;

const KEY_FILE_TAG: &str = "blindkd-owner-key-v1";

/// What the owner remembers about one index it built.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IndexRecord {
    /// Index id (hex in files).
    pub index_id: IndexId,
    /// A human name (the output file stem).
    pub name: String,
    /// Scheme and public parameters.
    pub scheme: SchemeParams,
    /// The encoding schema.
    pub schema: Schema,
    /// Policy classes in the index.
    pub classes: Vec<String>,
    /// Per class: record count and tree-shape hash, for doctors' bundles (empty for an index
    /// built before manifests; its bundles cannot be verified).
    #[serde(default)]
    pub manifest: Vec<ClassManifest>,
    /// Whether class keys are per index (every index built since issue 17); older records use
    /// one key per class for all indexes.
    #[serde(default)]
    pub per_index_keys: bool,
}

/// A signing key the owner rotated away from: its public half stays pinned on servers and
/// devices until the tokens and bundles it signed have expired (`blindkd rotate signing-key`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviousSigningKey {
    /// The public key (`bkd-issuer:…`).
    pub public: String,
    /// When it stopped signing (Unix seconds).
    pub retired_at: i64,
}

/// The owner key. Secrets zeroize on drop; `Debug` prints no secret; not `Serialize`.
pub struct OwnerKey {
    issuer: String,
    signing_seed: Zeroizing<[u8; 32]>,
    master: Zeroizing<[u8; 32]>,
    /// Signing keys rotated away from, oldest first (public halves only).
    previous_signing: Vec<PreviousSigningKey>,
    /// Indexes built with this key.
    pub indexes: Vec<IndexRecord>,
}

impl std::fmt::Debug for OwnerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnerKey")
            .field("issuer", &self.issuer)
            .field("secrets", &"<redacted>")
            .field("indexes", &self.indexes.len())
            .finish()
    }
}

#[derive(Serialize, Deserialize)]
struct KeyFile {
    format: String,
    issuer: String,
    signing_seed: String,
    master: String,
    #[serde(default)]
    previous_signing: Vec<PreviousSigningKey>,
    indexes: Vec<IndexRecord>,
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.signing_seed.zeroize();
        self.master.zeroize();
    }
}

impl OwnerKey {
    /// A fresh owner key for issuer `issuer` (the token `iss` and key id).
    pub fn generate(issuer: &str) -> Result<Self> {
        if issuer.is_empty() || issuer.len() > 64 || !issuer.chars().all(|c| c.is_ascii_graphic()) {
            return Err(Error::InvalidInput(
                "issuer name must be 1–64 printable ASCII characters without spaces".into(),
            ));
        }
        let mut rng = rand::rng();
        let mut s = Zeroizing::new([0u8; 32]);
        let mut m = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(&mut *s);
        rng.fill_bytes(&mut *m);
        Ok(OwnerKey {
            issuer: issuer.to_string(),
            signing_seed: s,
            master: m,
            previous_signing: Vec::new(),
            indexes: Vec::new(),
        })
    }

    /// The issuer name.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The Ed25519 token-signing seed (for [`crate::token::IssuerKey`]).
    pub fn signing_seed(&self) -> &[u8; 32] {
        &self.signing_seed
    }

    /// The key of one policy class of one index (issue 17, B2): `KDF(master, index id ‖ class)`,
    /// so a bundle for one index opens no other index, past or future, and a rebuilt index (a new
    /// id) needs new bundles. paper-she has one key per owner (its `setup` derives the per-index
    /// key), shared by every class: another reason it is a baseline only.
    pub fn class_key(&self, scheme: SchemeId, class: &str, index_id: &IndexId) -> ClassKey {
        let mut h = match scheme {
            SchemeId::PaperShe => blake3::Hasher::new_derive_key(domain::SHE_KEY),
            _ => {
                let mut h = blake3::Hasher::new_derive_key(domain::CLASS_KEY_PER_INDEX);
                h.update(index_id);
                h.update(class.as_bytes());
                h
            }
        };
        h.update(&*self.master);
        ClassKey::from_bytes(*h.finalize().as_bytes())
    }

    /// The class key of an index this key built, by the derivation it was built with: indexes
    /// built before per-index keys (format 1 records) keep `KDF(master, class)`.
    pub fn record_class_key(&self, rec: &IndexRecord, class: &str) -> ClassKey {
        let scheme = rec.scheme.id();
        if rec.per_index_keys || scheme == SchemeId::PaperShe {
            return self.class_key(scheme, class, &rec.index_id);
        }
        let mut h = blake3::Hasher::new_derive_key(domain::CLASS_KEY);
        h.update(&*self.master);
        h.update(class.as_bytes());
        ClassKey::from_bytes(*h.finalize().as_bytes())
    }

    /// Starts signing with a fresh key (issue 17 B2). The previous key's public half is kept,
    /// with the time it retired, so servers and devices keep accepting what it signed until that
    /// expires; [`OwnerKey::drop_previous_signing_keys`] ends that.
    pub fn rotate_signing_key(&mut self, now: i64) {
        let old = crate::token::IssuerKey::from_bytes(&self.signing_seed).public();
        self.previous_signing.push(PreviousSigningKey {
            public: old.to_string(),
            retired_at: now,
        });
        rand::rng().fill_bytes(&mut *self.signing_seed);
    }

    /// Forgets the previous signing keys (once their tokens have expired); returns how many.
    pub fn drop_previous_signing_keys(&mut self) -> usize {
        std::mem::take(&mut self.previous_signing).len()
    }

    /// The signing keys rotated away from, oldest first.
    pub fn previous_signing_keys(&self) -> &[PreviousSigningKey] {
        &self.previous_signing
    }

    /// Every public key servers and devices should pin for this issuer: the previous ones, then
    /// the current one.
    pub fn issuer_publics(&self) -> Result<Vec<IssuerPublic>> {
        let mut out = self
            .previous_signing
            .iter()
            .map(|p| p.public.parse::<IssuerPublic>())
            .collect::<Result<Vec<_>>>()?;
        out.push(crate::token::IssuerKey::from_bytes(&self.signing_seed).public());
        Ok(out)
    }

    /// Serialises the key file (secrets as hex). Write it with [`OwnerKey::save`].
    fn to_file_bytes(&self) -> Result<Zeroizing<Vec<u8>>> {
        let kf = KeyFile {
            format: KEY_FILE_TAG.into(),
            issuer: self.issuer.clone(),
            signing_seed: hex::encode(*self.signing_seed),
            master: hex::encode(*self.master),
            previous_signing: self.previous_signing.clone(),
            indexes: self.indexes.clone(),
        };
        serde_json::to_vec_pretty(&kf)
            .map(Zeroizing::new)
            .map_err(|e| Error::malformed("owner key", e))
    }

    /// Writes the key file atomically with mode 0600.
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = self.to_file_bytes()?;
        blindkd_engine::atomic::write_private(path, &bytes)
    }

    /// Loads a key file, refusing one that group or others can read.
    pub fn load(path: &Path) -> Result<Self> {
        check_private(path)?;
        let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| Error::io(path, e))?);
        if bytes.len() > 16 << 20 {
            return Err(Error::LimitExceeded("owner key file above 16 MiB".into()));
        }
        let kf: KeyFile =
            serde_json::from_slice(&bytes).map_err(|e| Error::malformed("owner key file", e))?;
        if kf.format != KEY_FILE_TAG {
            return Err(Error::UnsupportedVersion(format!(
                "owner key format `{}`",
                kf.format
            )));
        }
        let dec = |s: &str| -> Result<Zeroizing<[u8; 32]>> {
            let v = Zeroizing::new(hex::decode(s).map_err(|e| Error::malformed("owner key", e))?);
            let mut out = Zeroizing::new([0u8; 32]);
            if v.len() != 32 {
                return Err(Error::malformed("owner key", "secret is not 32 bytes"));
            }
            out.copy_from_slice(&v);
            Ok(out)
        };
        Ok(OwnerKey {
            issuer: kf.issuer.clone(),
            signing_seed: dec(&kf.signing_seed)?,
            master: dec(&kf.master)?,
            previous_signing: kf.previous_signing.clone(),
            indexes: kf.indexes.clone(),
        })
    }

    /// Finds an index record by hex id or name.
    pub fn find_index(&self, which: &str) -> Option<&IndexRecord> {
        // Newest first: after a crash mid-rebuild the key may hold two records of one name, and the
        // newer one is the file on disk.
        self.indexes
            .iter()
            .rev()
            .find(|r| blindkd_engine::index::id_hex(&r.index_id) == which || r.name == which)
    }

    /// Builds the sealed key bundle for a doctor: for every index (or the one named) the schema,
    /// scheme parameters and the keys of the granted classes present in it.
    pub fn bundle(&self, classes: &[String], index: Option<&str>) -> Result<Bundle> {
        let mut entries = Vec::new();
        for rec in &self.indexes {
            if let Some(w) = index {
                if blindkd_engine::index::id_hex(&rec.index_id) != w && rec.name != w {
                    continue;
                }
            }
            let granted: Vec<&String> =
                rec.classes.iter().filter(|c| classes.contains(c)).collect();
            if granted.is_empty() {
                continue;
            }
            entries.push(BundleEntry {
                index_id: rec.index_id,
                name: rec.name.clone(),
                scheme: rec.scheme.clone(),
                schema: rec.schema.clone(),
                manifest: rec
                    .manifest
                    .iter()
                    .filter(|m| granted.contains(&&m.class))
                    .cloned()
                    .collect(),
                keys: granted
                    .into_iter()
                    .map(|c| (c.clone(), *self.record_class_key(rec, c).expose()))
                    .collect(),
            });
        }
        if entries.is_empty() {
            return Err(Error::InvalidInput(
                "no index built with this key has any of the requested classes".into(),
            ));
        }
        Ok(Bundle { entries })
    }
}

/// A doctor's query-key bundle: per index, schema, parameters and the granted class keys.
/// Contains secrets: zeroized on drop, never printed, sealed to the device key for transport.
pub struct Bundle {
    /// One entry per index.
    pub entries: Vec<BundleEntry>,
}

/// One index in a [`Bundle`].
#[derive(Serialize, Deserialize)]
pub struct BundleEntry {
    /// Index id.
    pub index_id: IndexId,
    /// Name.
    pub name: String,
    /// Scheme parameters.
    pub scheme: SchemeParams,
    /// Schema.
    pub schema: Schema,
    /// Class name → class key bytes.
    pub keys: Vec<(String, [u8; 32])>,
    /// What the owner vouches for about each granted class (record count, shape hash).
    pub manifest: Vec<ClassManifest>,
}

impl Drop for BundleEntry {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        for (_, k) in &mut self.keys {
            k.zeroize();
        }
    }
}

impl std::fmt::Debug for Bundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<_> = self.entries.iter().map(|e| &e.name).collect();
        write!(f, "Bundle {{ indexes: {names:?}, keys: <redacted> }}")
    }
}

/// Format 2 adds the class manifest and the owner's signature.
const BUNDLE_TAG: &[u8; 8] = b"BKDBNDL2";

impl Bundle {
    /// Serialises and signs with the owner's issuer key (to be sealed to a device key; never
    /// sent in the clear): `BKDBNDL2 ‖ postcard(issuer, entries) ‖ Ed25519 signature`. The
    /// signature is what makes a bundle the hospital's: anyone can seal bytes to a device's
    /// public key (issue 17, B1).
    pub fn to_signed_bytes(&self, owner: &OwnerKey) -> Result<Zeroizing<Vec<u8>>> {
        let mut out = Zeroizing::new(BUNDLE_TAG.to_vec());
        let issuer =
            postcard::to_allocvec(owner.issuer()).map_err(|e| Error::malformed("bundle", e))?;
        let entries = Zeroizing::new(
            postcard::to_allocvec(&self.entries).map_err(|e| Error::malformed("bundle", e))?,
        );
        out.extend_from_slice(&issuer);
        out.extend_from_slice(&entries);
        let key = crate::token::IssuerKey::from_bytes(owner.signing_seed());
        let sig = key.sign_document(domain::BUNDLE_SIGNATURE, &out);
        out.extend_from_slice(&sig);
        Ok(out)
    }

    /// Parses an opened bundle and verifies its signature against the pinned issuers (the
    /// hospital's `.pub`, pinned when the device was enrolled). Returns the bundle and its issuer.
    pub fn from_bytes(
        b: &[u8],
        issuers: &blindkd_engine::token::Issuers,
    ) -> Result<(Self, String)> {
        if b.len() >= 8 && &b[..8] == b"BKDBNDL1" {
            return Err(Error::UnsupportedVersion(
                "a format 1 key bundle (unsigned, no index manifest); ask the hospital for a new \
                 bundle (`blindkd bundle issue`)"
                    .into(),
            ));
        }
        if b.len() < 8 + 64 || &b[..8] != BUNDLE_TAG {
            return Err(Error::malformed("bundle", "bad tag"));
        }
        let (signed, sig) = b.split_at(b.len() - 64);
        let (issuer, rest): (String, &[u8]) =
            postcard::take_from_bytes(&signed[8..]).map_err(|e| Error::malformed("bundle", e))?;
        if issuers.keys_of(&issuer).is_empty() {
            return Err(Error::InvalidInput(format!(
                "the bundle says it is from {issuer:?}, which is not a hospital this device \
                 trusts (--issuer)"
            )));
        }
        let mut sig64 = [0u8; 64];
        sig64.copy_from_slice(sig);
        issuers
            .verify_document(&issuer, domain::BUNDLE_SIGNATURE, signed, &sig64)
            .map_err(|_| {
                Error::InvalidInput(format!(
                    "the bundle's signature does not verify under {issuer:?}'s key: it was not \
                     made by that hospital"
                ))
            })?;
        let (entries, tail): (Vec<BundleEntry>, &[u8]) =
            postcard::take_from_bytes(rest).map_err(|e| Error::malformed("bundle", e))?;
        if !tail.is_empty() {
            return Err(Error::malformed("bundle", "trailing bytes"));
        }
        Ok((Bundle { entries }, issuer))
    }

    /// The entry for an index id.
    pub fn entry(&self, id: &IndexId) -> Option<&BundleEntry> {
        self.entries.iter().find(|e| &e.index_id == id)
    }
}

impl BundleEntry {
    /// The class key for `class`, if granted.
    pub fn class_key(&self, class: &str) -> Option<ClassKey> {
        self.keys
            .iter()
            .find(|(c, _)| c == class)
            .map(|(_, k)| ClassKey::from_bytes(*k))
    }
}

/// Refuses a secret file that group or others may read.
pub fn check_private(path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(Error::InvalidInput(format!(
                "{} has mode {:o}: secret files must not be readable by group or others (chmod 600)",
                path.display(),
                mode & 0o777
            )));
        }
    }
    let _ = meta;
    Ok(())
}

/// One record for the indexer: encoded features plus what gets sealed with it.
#[derive(Clone, Debug)]
pub struct OwnerRecord {
    /// The owner's record identity (e.g. patient id or row number). Sealed, never visible to the server.
    pub id: String,
    /// Policy class.
    pub class: String,
    /// Encoded features.
    pub x: Vec<i64>,
    /// Payload fields, sealed per class.
    pub payload: serde_json::Map<String, serde_json::Value>,
}

/// What a doctor's client gets back when it opens a payload.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct OpenedPayload {
    /// The owner's record identity.
    pub record: String,
    /// The payload fields.
    pub fields: serde_json::Map<String, serde_json::Value>,
}

/// Index build options.
pub struct BuildOptions<'a> {
    /// Records per leaf block (≤ the scheme's block capacity).
    pub leaf_size: usize,
    /// Called with the number of records sealed so far.
    pub progress: Option<&'a (dyn Fn(u64) + Sync)>,
    /// The index id; `None` draws a random one. (paper-she derives its key from it, so its caller
    /// fixes the id before setting the scheme up.)
    pub index_id: Option<IndexId>,
}

/// Payloads up to this size (bytes of JSON) all get one length per index.
pub const PAYLOAD_UNIFORM_MAX: usize = 1024;
/// Past this size, payloads are padded to a multiple of it instead of a power of two.
pub const PAYLOAD_LINEAR_BUCKET: usize = 64 << 10;

/// The padded length of a payload plaintext of `len` bytes in an index whose payloads of at most
/// [`PAYLOAD_UNIFORM_MAX`] bytes are at most `uniform` long: those all become `uniform` long, so
/// their sealed lengths are equal; longer ones go to the next power of two up to 64 KiB, then to
/// the next multiple of 64 KiB. The server learns the index's common length and, for long
/// payloads only, their bucket (five diagnosis labels used to give five lengths).
pub fn payload_bucket(len: usize, uniform: usize) -> usize {
    if len <= uniform {
        uniform
    } else if len <= PAYLOAD_LINEAR_BUCKET {
        len.next_power_of_two()
    } else {
        len.div_ceil(PAYLOAD_LINEAR_BUCKET) * PAYLOAD_LINEAR_BUCKET
    }
}

fn payload_body(rec: &OwnerRecord) -> Result<Vec<u8>> {
    serde_json::to_vec(&OpenedPayload {
        record: rec.id.clone(),
        fields: rec.payload.clone(),
    })
    .map_err(|e| Error::malformed("payload", e))
}

/// Pads a JSON payload with spaces to its bucket. JSON ignores trailing white space, so payloads
/// sealed before padding existed open the same way.
fn pad_payload(body: &mut Vec<u8>, uniform: usize) {
    // LEAKAGE: [payload-bucket] the common length of an index's payloads up to 1 KiB; the size bucket of longer ones.
    body.resize(payload_bucket(body.len(), uniform), b' ');
}

/// AAD binding a payload to its index, class and record id.
pub fn payload_aad(index_id: &IndexId, class: &str, record_id: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + class.len() + 9);
    v.extend_from_slice(index_id);
    v.extend_from_slice(class.as_bytes());
    v.push(0);
    v.extend_from_slice(&record_id.to_le_bytes());
    v
}

/// AAD binding the radius blob to its index and class.
pub fn radii_aad(index_id: &IndexId, class: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + class.len() + 6);
    v.extend_from_slice(index_id);
    v.extend_from_slice(class.as_bytes());
    v.extend_from_slice(b"\0radii");
    v
}

/// What [`build_index`] produces.
pub struct BuildOutput<B> {
    /// The header.
    pub header: IndexHeader,
    /// The body.
    pub body: IndexBody<B>,
    /// The owner's record (store it in the owner key).
    pub record: IndexRecord,
    /// The opaque id given to each input record, in input order (owner-side only; for audits and tests).
    pub record_ids: Vec<u64>,
}

impl<B: Serialize> BuildOutput<B> {
    /// The index file bytes.
    pub fn to_file_bytes(&self) -> Result<Vec<u8>> {
        blindkd_engine::index::encode_file(&self.header, &self.body)
    }
}

/// Builds a sealed index for `scheme`. Returns the header, the body and the owner's record of it.
pub fn build_index<S: ClientScheme>(
    scheme: &S,
    params: SchemeParams,
    owner: &OwnerKey,
    name: &str,
    schema: &Schema,
    records: &[OwnerRecord],
    opts: &BuildOptions<'_>,
) -> Result<BuildOutput<S::Block>> {
    schema.check_overflow(scheme.exact_bound())?;
    if records.is_empty() {
        return Err(Error::InvalidInput("no records to index".into()));
    }
    let dim = schema.dim();
    if let Some(r) = records.iter().find(|r| r.x.len() != dim) {
        return Err(Error::InvalidInput(format!(
            "record `{}` has {} features, schema has {dim}",
            r.id,
            r.x.len()
        )));
    }
    let max = schema.max_abs();
    if let Some(r) = records.iter().find(|r| r.x.iter().any(|v| v.abs() > max)) {
        return Err(Error::InvalidInput(format!(
            "record `{}` is outside the bit budget",
            r.id
        )));
    }
    let cap = scheme.block_capacity();
    let leaf_size = opts.leaf_size.clamp(1, cap);
    let index_id = opts.index_id.unwrap_or_else(|| {
        let mut id = [0u8; 16];
        rand::rng().fill_bytes(&mut id);
        id
    });
    let weights = schema.weights();

    let mut by_class: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, r) in records.iter().enumerate() {
        if r.class.is_empty() {
            return Err(Error::InvalidInput(format!(
                "record `{}` has an empty class",
                r.id
            )));
        }
        by_class.entry(r.class.as_str()).or_default().push(i);
    }
    // Random, unique opaque record ids.
    let mut used = HashSet::with_capacity(records.len());
    let mut rng = rand::rng();
    let opaque: Vec<u64> = (0..records.len())
        .map(|_| loop {
            let id = rng.next_u64();
            if used.insert(id) {
                break id;
            }
        })
        .collect();

    // Every payload up to 1 KiB is padded to the longest of them in this index, so their sealed
    // lengths are all equal; longer ones go to power-of-two buckets.
    let uniform = records
        .par_iter()
        .map(|r| payload_body(r).map(|b| b.len()))
        .try_reduce(|| 0, |a, b| Ok(a.max(b)))?
        .min(PAYLOAD_UNIFORM_MAX);
    let done = AtomicU64::new(0);
    let mut classes = Vec::with_capacity(by_class.len());
    for (class, members) in &by_class {
        let class_key = owner.class_key(S::ID, class, &index_id);
        let key = scheme.derive_key(&class_key, &index_id)?;
        let points: Vec<Vec<i64>> = members.iter().map(|&i| records[i].x.clone()).collect();
        let tree = TreeBuilder::new(leaf_size, weights.clone()).build(&points);

        let pivot_rows: Vec<(RowRef, Vec<i64>)> = tree
            .pivots
            .iter()
            .enumerate()
            .map(|(v, p)| {
                (
                    RowRef {
                        domain: RowDomain::Pivot,
                        id: v as u64,
                        record: 0,
                    },
                    augment(p, &weights),
                )
            })
            .collect();
        let pivot_blocks = pivot_rows
            .par_chunks(cap)
            .map(|rows| scheme.seal_block(&key, rows))
            .collect::<Result<Vec<_>>>()?;
        let radii = postcard::to_allocvec(&tree.radii).map_err(|e| Error::malformed("radii", e))?;
        let payload_key = class_key.derive(domain::PAYLOAD_AEAD, &index_id);
        let radius_key = class_key.derive(domain::RADIUS_AEAD, &index_id);
        let sealed_radii = aead::seal(&radius_key, &radii_aad(&index_id, class), &radii)?;

        let leaves = tree
            .shape
            .leaves
            .par_iter()
            .map(|&node| {
                let ShapeNode::Leaf {
                    first_slot, rows, ..
                } = tree.shape.nodes[node as usize]
                else {
                    return Err(Error::InvalidInput(
                        "leaf list points at an inner node".into(),
                    ));
                };
                let slots = first_slot..first_slot + rows as u64;
                let mut sealed_rows = Vec::with_capacity(rows as usize);
                let mut ids = Vec::with_capacity(rows as usize);
                let mut payloads = Vec::with_capacity(rows as usize);
                for slot in slots {
                    let rec_idx = members[tree.order[slot as usize]];
                    let rec = &records[rec_idx];
                    let rid = opaque[rec_idx];
                    sealed_rows.push((
                        RowRef {
                            domain: RowDomain::Leaf,
                            id: slot,
                            record: rid,
                        },
                        augment(&rec.x, &weights),
                    ));
                    ids.push(rid);
                    let mut body = payload_body(rec)?;
                    pad_payload(&mut body, uniform);
                    payloads.push(aead::seal(
                        &payload_key,
                        &payload_aad(&index_id, class, rid),
                        &body,
                    )?);
                }
                let block = scheme.seal_block(&key, &sealed_rows)?;
                let n = done.fetch_add(rows as u64, Ordering::Relaxed) + rows as u64;
                if let Some(p) = opts.progress {
                    p(n);
                }
                Ok(LeafBlock {
                    block,
                    record_ids: ids,
                    payloads,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        classes.push(ClassIndex {
            class: (*class).to_string(),
            shape: tree.shape,
            pivot_blocks,
            sealed_radii,
            leaves,
        });
    }
    let header = IndexHeader {
        index_id,
        scheme: params.clone(),
        dim: dim as u32,
        block_capacity: leaf_size as u32,
        records: records.len() as u64,
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        issuer: owner.issuer().to_string(),
    };
    let record = IndexRecord {
        index_id,
        name: name.to_string(),
        scheme: params,
        schema: schema.clone(),
        classes: by_class.keys().map(|c| (*c).to_string()).collect(),
        manifest: classes
            .iter()
            .map(|c| ClassManifest {
                class: c.class.clone(),
                records: c.shape.records(),
                shape: shape_hash(&c.shape),
            })
            .collect(),
        per_index_keys: true,
    };
    Ok(BuildOutput {
        header,
        body: IndexBody { classes },
        record,
        record_ids: opaque,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_buckets_are_uniform_then_powers_of_two_then_multiples_of_64k() {
        let u = 300;
        assert_eq!(payload_bucket(0, u), 300);
        assert_eq!(payload_bucket(300, u), 300);
        assert_eq!(payload_bucket(301, u), 512);
        assert_eq!(payload_bucket(40_000, u), 65_536);
        assert_eq!(payload_bucket(65_536, u), 65_536);
        assert_eq!(payload_bucket(65_537, u), 131_072);
        assert_eq!(payload_bucket(200_000, u), 262_144);
        let mut b = br#"{"record":"7","fields":{}}"#.to_vec();
        pad_payload(&mut b, 64);
        assert_eq!(b.len(), 64);
        let v: OpenedPayload = serde_json::from_slice(&b).expect("padded JSON parses");
        assert_eq!(v.record, "7");
    }
}
