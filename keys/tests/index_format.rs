//! The index file as untrusted input: every truncation, flipped byte, wrong version or magic,
//! absurd length, and checksum-valid but inconsistent body must give a clear `Error`, never a
//! panic or a huge allocation. Plus the compatibility test: a checked-in format-v1 index
//! (`tests/fixtures/v1-plain.bkd`) must still open and answer the recorded query.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use blindkd_engine::encoding::Schema;
use blindkd_engine::index::{
    encode_file, split_file, summarize, IndexBody, IndexHeader, SchemeParams, FORMAT_VERSION,
};
use blindkd_engine::tree::ShapeNode;
use blindkd_engine::Error;
use blindkd_keys::crypto::mlhe::{Mlhe, MlheBlock};
use blindkd_keys::crypto::plain::{Plain, PlainBlock};
use blindkd_keys::crypto::ClientScheme;
use blindkd_keys::owner::{build_index, BuildOptions, OwnerKey, OwnerRecord};
use blindkd_keys::protocol::{
    new_query_client, open_index_bytes, run_with_payloads, Access, BatchPolicy, Limits, QueryKind,
    Unmetered,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::de::DeserializeOwned;
use serde::Serialize;

const P: &str = "test.bkd";

/// `d` unit-weight columns `c0`, `c1`, ….
fn schema(d: usize) -> Schema {
    let names: Vec<String> = (0..d).map(|i| format!("c{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    Schema::uniform(&names, 1.0, 16).unwrap()
}

/// `n` deterministic records of dimension `d` in classes `a` and `b`.
fn records(n: usize, d: usize, seed: u64) -> Vec<OwnerRecord> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    (0..n)
        .map(|i| OwnerRecord {
            id: format!("rec-{i}"),
            class: if i % 3 == 0 { "b" } else { "a" }.into(),
            x: (0..d).map(|_| rng.random_range(-1000..=1000)).collect(),
            payload: [("i".to_string(), serde_json::json!(i))]
                .into_iter()
                .collect(),
        })
        .collect()
}

/// A small real index: returns (file bytes, header, body).
fn build<S: ClientScheme>(
    scheme: S,
    params: SchemeParams,
    n: usize,
    d: usize,
    leaf: usize,
) -> (Vec<u8>, IndexHeader, IndexBody<S::Block>) {
    let owner = OwnerKey::generate("test-hospital").unwrap();
    let out = build_index(
        &scheme,
        params,
        &owner,
        "test",
        &schema(d),
        &records(n, d, 7),
        &BuildOptions {
            leaf_size: leaf,
            progress: None,
            index_id: Some([0x42; 16]),
        },
    )
    .unwrap();
    let bytes = out.to_file_bytes().unwrap();
    (bytes, out.header, out.body)
}

fn plain() -> (Vec<u8>, IndexHeader, IndexBody<PlainBlock>) {
    build(Plain::new(), SchemeParams::Plain, 60, 3, 8)
}

fn mlhe() -> (Vec<u8>, IndexHeader, IndexBody<MlheBlock>) {
    let m = Mlhe::new().unwrap();
    let p = SchemeParams::Mlhe(m.params());
    build(m, p, 40, 3, 8)
}

/// Section boundaries of a well-formed file: the start of every field and the end.
fn boundaries(bytes: &[u8]) -> Vec<(&'static str, usize)> {
    let hlen = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
    let hend = 16 + hlen;
    let blen = u64::from_le_bytes(bytes[hend..hend + 8].try_into().unwrap()) as usize;
    let bend = hend + 8 + blen;
    assert_eq!(bend + 40, bytes.len());
    vec![
        ("magic", 0),
        ("version", 8),
        ("header length", 12),
        ("header", 16),
        ("body length", hend),
        ("body", hend + 8),
        ("checksum", bend),
        ("end magic", bend + 32),
        ("end", bytes.len()),
    ]
}

/// Opening fails with a data-corruption or version error (no panic), and so does `summarize`.
fn assert_refused(bytes: &[u8], what: &str) -> Error {
    let e = open_index_bytes(
        bytes,
        Path::new(P),
        &blindkd_engine::index::LoadLimits::default(),
    )
    .err()
    .unwrap_or_else(|| panic!("{what}: a bad file was accepted"));
    assert!(
        matches!(
            e,
            Error::DataCorruption { .. } | Error::UnsupportedVersion(_) | Error::Malformed { .. }
        ),
        "{what}: unexpected error kind {e:?}"
    );
    assert!(
        summarize(bytes, Path::new(P)).is_err(),
        "{what}: summarize accepted a bad file"
    );
    e
}

fn assert_corrupt(bytes: &[u8], what: &str) {
    let e = assert_refused(bytes, what);
    assert!(
        matches!(e, Error::DataCorruption { .. }),
        "{what}: expected DataCorruption, got {e:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains(P),
        "{what}: message does not name the file: {msg}"
    );
}

#[test]
fn valid_files_open() {
    let (bytes, header, _) = plain();
    let idx = open_index_bytes(
        &bytes,
        Path::new(P),
        &blindkd_engine::index::LoadLimits::default(),
    )
    .unwrap();
    assert_eq!(idx.header(), &header);
    assert_eq!(idx.class_names(), vec!["a".to_string(), "b".to_string()]);
    summarize(&bytes, Path::new(P)).unwrap();
    let (bytes, header, _) = mlhe();
    let idx = open_index_bytes(
        &bytes,
        Path::new(P),
        &blindkd_engine::index::LoadLimits::default(),
    )
    .unwrap();
    assert_eq!(idx.header(), &header);
}

fn truncations(bytes: &[u8]) {
    let mut cuts: Vec<usize> = Vec::new();
    for (_, at) in boundaries(bytes) {
        for c in [at.saturating_sub(1), at, at + 1] {
            if c < bytes.len() {
                cuts.push(c);
            }
        }
    }
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    for _ in 0..200 {
        cuts.push(rng.random_range(0..bytes.len()));
    }
    for c in cuts {
        assert_corrupt(&bytes[..c], &format!("truncated at {c} of {}", bytes.len()));
    }
    // Appended bytes.
    let mut long = bytes.to_vec();
    long.push(0);
    assert_corrupt(&long, "one byte appended");
    let mut long = bytes.to_vec();
    long.extend_from_slice(&bytes[bytes.len() - 40..]);
    assert_corrupt(&long, "footer appended twice");
}

#[test]
fn truncation_at_every_section_boundary_and_random_offsets_plain() {
    truncations(&plain().0);
}

#[test]
fn truncation_at_every_section_boundary_and_random_offsets_mlhe() {
    truncations(&mlhe().0);
}

fn flips(bytes: &[u8]) {
    let b = boundaries(bytes);
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    for w in b.windows(2) {
        let (name, start) = w[0];
        let end = w[1].1;
        // First, last and a few random bytes of each section, several bit patterns.
        let mut offs = vec![start, end - 1];
        for _ in 0..4 {
            offs.push(rng.random_range(start..end));
        }
        for at in offs {
            for mask in [0x01u8, 0x80, 0xff] {
                let mut bad = bytes.to_vec();
                bad[at] ^= mask;
                let e = assert_refused(&bad, &format!("{name}: byte {at} ^ {mask:#x}"));
                if name == "version" {
                    // Another supported version is caught by the checksum, which covers it.
                    assert!(
                        matches!(
                            e,
                            Error::UnsupportedVersion(_) | Error::DataCorruption { .. }
                        ),
                        "{e:?}"
                    );
                } else {
                    assert!(matches!(e, Error::DataCorruption { .. }), "{name}: {e:?}");
                }
            }
        }
    }
}

#[test]
fn flipped_byte_in_each_section_plain() {
    flips(&plain().0);
}

#[test]
fn flipped_byte_in_each_section_mlhe() {
    flips(&mlhe().0);
}

#[test]
fn wrong_version_and_magic() {
    let (bytes, _, _) = plain();
    for v in [0u32, FORMAT_VERSION + 1, u32::MAX] {
        let mut bad = bytes.clone();
        bad[8..12].copy_from_slice(&v.to_le_bytes());
        let e = assert_refused(&bad, &format!("version {v}"));
        assert!(matches!(e, Error::UnsupportedVersion(_)), "{e:?}");
        assert!(e.to_string().contains(&v.to_string()), "{e}");
    }
    let mut bad = bytes.clone();
    bad[..8].copy_from_slice(b"BLINDKD\x01");
    assert_corrupt(&bad, "wrong magic");
    let mut bad = bytes.clone();
    bad[..8].copy_from_slice(b"\x89PNG\r\n\x1a\n");
    assert_corrupt(&bad, "a PNG");
    assert_corrupt(&[], "empty file");
    assert_corrupt(&[0u8; 100], "zeros");
    assert_corrupt(b"BLINDKD\0", "magic only");
}

#[test]
fn absurd_lengths_are_bounded_before_allocation() {
    let (bytes, _, _) = plain();
    let b = boundaries(&bytes);
    let hend = b[4].1;
    for hlen in [u32::MAX, u32::MAX / 2, 64 * 1024 + 1, bytes.len() as u32] {
        let mut bad = bytes.clone();
        bad[12..16].copy_from_slice(&hlen.to_le_bytes());
        assert_corrupt(&bad, &format!("header length {hlen}"));
    }
    for blen in [
        u64::MAX,
        u64::MAX - 8,
        u64::MAX - (hend as u64 + 8 + 40) + 1,
        1 << 40,
        0,
    ] {
        let mut bad = bytes.clone();
        bad[hend..hend + 8].copy_from_slice(&blen.to_le_bytes());
        assert_corrupt(&bad, &format!("body length {blen}"));
    }
    // A header length of 0 with everything else consistent: the (empty) header does not parse.
    let body = &bytes[hend + 8..bytes.len() - 40];
    let forged = frame(&[], body);
    assert_corrupt(&forged, "empty header");
}

/// Frames header and body bytes into a file with a *valid* checksum.
fn frame(header: &[u8], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(b"BLINDKD\0");
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(header);
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(body);
    let sum = blake3::hash(&out);
    out.extend_from_slice(sum.as_bytes());
    out.extend_from_slice(b"BKDEND\0\0");
    out
}

#[test]
fn framing_helper_matches_encode_file() {
    let (bytes, header, body) = plain();
    let h = postcard::to_allocvec(&header).unwrap();
    let b = postcard::to_allocvec(&body).unwrap();
    assert_eq!(frame(&h, &b), bytes);
}

/// Re-encodes a mutated header/body with a valid checksum and checks it is refused.
fn refuse_mutation<B, F>(header: &IndexHeader, body: &IndexBody<B>, what: &str, f: F)
where
    B: Serialize + DeserializeOwned + Clone,
    F: FnOnce(&mut IndexHeader, &mut IndexBody<B>),
{
    let mut h = header.clone();
    let mut b = body.clone();
    f(&mut h, &mut b);
    let bytes = encode_file(&h, &b).unwrap();
    split_file(&bytes, Path::new(P)).unwrap_or_else(|e| panic!("{what}: framing refused: {e}"));
    let e = open_index_bytes(
        &bytes,
        Path::new(P),
        &blindkd_engine::index::LoadLimits::default(),
    )
    .err()
    .unwrap_or_else(|| panic!("{what}: accepted"));
    assert!(
        matches!(
            e,
            Error::DataCorruption { .. }
                | Error::Malformed { .. }
                | Error::UnsupportedVersion(_)
                | Error::LimitExceeded(_)
        ),
        "{what}: {e:?}"
    );
    // `inspect` must not panic or loop on it either (it may summarise what it can).
    let _ = summarize(&bytes, Path::new(P));
}

/// Body mutations that apply to every scheme (shape, ids, payloads, counts).
fn generic_body_mutations<B>(header: &IndexHeader, body: &IndexBody<B>)
where
    B: Serialize + DeserializeOwned + Clone,
{
    let r = |what, f: &dyn Fn(&mut IndexHeader, &mut IndexBody<B>)| {
        refuse_mutation(header, body, what, f)
    };
    r("no classes", &|_, b| b.classes.clear());
    r("duplicate class", &|_, b| {
        let c = b.classes[0].clone();
        b.classes.push(c);
    });
    r("record count off by one", &|h, _| h.records += 1);
    r("record count zero", &|h, _| h.records = 0);
    r("block capacity 0", &|h, _| h.block_capacity = 0);
    r("block capacity above the scheme", &|h, _| {
        h.block_capacity = u32::MAX
    });
    r("block capacity below a leaf", &|h, _| h.block_capacity = 1);
    r("dimension + 1", &|h, _| h.dim += 1);
    r("dimension 0", &|h, _| h.dim = 0);
    r("dimension u32::MAX", &|h, _| h.dim = u32::MAX);
    r("scheme swapped", &|h, _| {
        h.scheme = match h.scheme {
            SchemeParams::Plain => SchemeParams::Mlhe(Mlhe::new().unwrap().params()),
            _ => SchemeParams::Plain,
        }
    });
    r("paper-she params garbage", &|h, _| {
        h.scheme = SchemeParams::PaperShe(vec![1, 2, 3])
    });
    r("self-cycle at the root", &|_, b| {
        b.classes[0].shape.nodes[0] = ShapeNode::Inner { left: 0, right: 0 };
    });
    r("cycle through a child", &|_, b| {
        let n = &mut b.classes[0].shape.nodes;
        // Root's left child points back at the root.
        if let ShapeNode::Inner { right, .. } = n[0] {
            n[0] = ShapeNode::Inner { left: 0, right };
        }
    });
    r("child out of range", &|_, b| {
        let n = &mut b.classes[0].shape.nodes;
        if let ShapeNode::Inner { left, .. } = n[0] {
            n[0] = ShapeNode::Inner {
                left,
                right: u32::MAX,
            };
        }
    });
    r("shared child (DAG)", &|_, b| {
        let n = &mut b.classes[0].shape.nodes;
        if let ShapeNode::Inner { left, .. } = n[0] {
            n[0] = ShapeNode::Inner { left, right: left };
        }
    });
    r("empty shape", &|_, b| {
        b.classes[0].shape.nodes.clear();
        b.classes[0].shape.leaves.clear();
    });
    r("leaf list out of range", &|_, b| {
        b.classes[0].shape.leaves[0] = u32::MAX
    });
    r("leaf list points at the root (inner)", &|_, b| {
        b.classes[0].shape.leaves[0] = 0
    });
    r("leaf list reversed", &|_, b| {
        b.classes[0].shape.leaves.reverse()
    });
    r("leaf with zero rows", &|_, b| {
        let s = &mut b.classes[0].shape;
        let at = s.leaves[0] as usize;
        if let ShapeNode::Leaf {
            leaf, first_slot, ..
        } = s.nodes[at]
        {
            s.nodes[at] = ShapeNode::Leaf {
                leaf,
                first_slot,
                rows: 0,
            };
        }
    });
    r("leaf row count above the shape", &|_, b| {
        let s = &mut b.classes[0].shape;
        let at = s.leaves[0] as usize;
        if let ShapeNode::Leaf {
            leaf,
            first_slot,
            rows,
        } = s.nodes[at]
        {
            s.nodes[at] = ShapeNode::Leaf {
                leaf,
                first_slot,
                rows: rows + 1,
            };
        }
    });
    r("leaf slots not contiguous", &|_, b| {
        let s = &mut b.classes[0].shape;
        let at = s.leaves[1] as usize;
        if let ShapeNode::Leaf { leaf, rows, .. } = s.nodes[at] {
            s.nodes[at] = ShapeNode::Leaf {
                leaf,
                first_slot: 1 << 40,
                rows,
            };
        }
    });
    r("leaf numbers swapped", &|_, b| {
        let s = &mut b.classes[0].shape;
        let (x, y) = (s.leaves[0] as usize, s.leaves[1] as usize);
        if let (
            ShapeNode::Leaf {
                leaf: lx,
                first_slot: fx,
                rows: rx,
            },
            ShapeNode::Leaf {
                leaf: ly,
                first_slot: fy,
                rows: ry,
            },
        ) = (s.nodes[x], s.nodes[y])
        {
            s.nodes[x] = ShapeNode::Leaf {
                leaf: ly,
                first_slot: fx,
                rows: rx,
            };
            s.nodes[y] = ShapeNode::Leaf {
                leaf: lx,
                first_slot: fy,
                rows: ry,
            };
        }
    });
    r("unreachable extra node", &|_, b| {
        b.classes[0].shape.nodes.push(ShapeNode::Leaf {
            leaf: 99,
            first_slot: 0,
            rows: 1,
        })
    });
    r("record_ids too short", &|_, b| {
        b.classes[0].leaves[0].record_ids.pop();
    });
    r("record_ids too long", &|_, b| {
        b.classes[0].leaves[0].record_ids.push(1);
    });
    r("record_ids empty", &|_, b| {
        b.classes[0].leaves[0].record_ids.clear();
    });
    r("payloads too short", &|_, b| {
        b.classes[0].leaves[0].payloads.pop();
    });
    r("payloads too long", &|_, b| {
        b.classes[0].leaves[0].payloads.push(vec![]);
    });
    r("one leaf block missing", &|_, b| {
        b.classes[0].leaves.pop();
    });
    r("one leaf block too many", &|_, b| {
        let l = b.classes[0].leaves[0].clone();
        b.classes[0].leaves.push(l);
    });
    r("pivot blocks missing", &|_, b| {
        b.classes[0].pivot_blocks.clear()
    });
    r("pivot block duplicated", &|_, b| {
        let p = b.classes[0].pivot_blocks[0].clone();
        b.classes[0].pivot_blocks.push(p);
    });
    r("leaf blocks of two classes swapped", &|_, b| {
        let (x, y) = b.classes.split_at_mut(1);
        std::mem::swap(&mut x[0].leaves, &mut y[0].leaves);
    });
}

#[test]
fn checksum_valid_but_inconsistent_plain_body_is_refused() {
    let (_, header, body) = plain();
    generic_body_mutations(&header, &body);
    let r = |what, f: &dyn Fn(&mut IndexHeader, &mut IndexBody<PlainBlock>)| {
        refuse_mutation(&header, &body, what, f)
    };
    r("leaf block with a row missing", &|_, b| {
        b.classes[0].leaves[0].block.rows.pop();
    });
    r("leaf block with an extra row", &|_, b| {
        let row = b.classes[0].leaves[0].block.rows[0].clone();
        b.classes[0].leaves[0].block.rows.push(row);
    });
    r("leaf row too short", &|_, b| {
        b.classes[0].leaves[1].block.rows[0].pop();
    });
    r("leaf row too long", &|_, b| {
        b.classes[0].leaves[1].block.rows[0].push(0);
    });
    r("pivot block with a row missing", &|_, b| {
        b.classes[1].pivot_blocks[0].rows.pop();
    });
    r("pivot row too long", &|_, b| {
        b.classes[1].pivot_blocks[0].rows[0].push(0);
    });
}

#[test]
fn checksum_valid_but_inconsistent_mlhe_body_is_refused() {
    let (_, header, body) = mlhe();
    generic_body_mutations(&header, &body);
    let r = |what, f: &dyn Fn(&mut IndexHeader, &mut IndexBody<MlheBlock>)| {
        refuse_mutation(&header, &body, what, f)
    };
    r("mlhe leaf column missing", &|_, b| {
        b.classes[0].leaves[0].block.cols.pop();
    });
    r("mlhe leaf extra column", &|_, b| {
        let c = b.classes[0].leaves[0].block.cols[0].clone();
        b.classes[0].leaves[0].block.cols.push(c);
    });
    r("mlhe ragged columns", &|_, b| {
        b.classes[0].leaves[0].block.cols[2].pop();
    });
    r("mlhe leaf rows disagree with the shape", &|_, b| {
        for c in &mut b.classes[0].leaves[0].block.cols {
            c.pop();
        }
    });
    r("mlhe value ≥ t", &|_, b| {
        b.classes[0].leaves[0].block.cols[1][0] = blindkd_keys::crypto::mlhe::PLAINTEXT_MODULUS;
    });
    r("mlhe value u64::MAX", &|_, b| {
        b.classes[1].pivot_blocks[0].cols[0][0] = u64::MAX;
    });
    r("mlhe pivot column missing", &|_, b| {
        b.classes[1].pivot_blocks[0].cols.pop();
    });
    r("mlhe non-default parameters", &|h, _| {
        if let SchemeParams::Mlhe(p) = &mut h.scheme {
            p.t = 1 << 40;
        }
    });
    r("mlhe flood bits changed", &|h, _| {
        if let SchemeParams::Mlhe(p) = &mut h.scheme {
            p.flood_bits = 1;
        }
    });
}

#[test]
fn trailing_bytes_after_the_body_or_header_are_refused() {
    // postcard's `from_bytes` ignores unused input; the reader must not.
    let (_, header, body) = plain();
    let h = postcard::to_allocvec(&header).unwrap();
    let mut b = postcard::to_allocvec(&body).unwrap();
    b.extend_from_slice(b"smuggled");
    assert_corrupt(&frame(&h, &b), "trailing bytes after the body");
    let mut h2 = h.clone();
    h2.push(0);
    let b = postcard::to_allocvec(&body).unwrap();
    assert_corrupt(&frame(&h2, &b), "trailing bytes after the header");
}

#[test]
fn random_body_bytes_with_valid_framing_are_refused() {
    let (bytes, header, _) = plain();
    let h = postcard::to_allocvec(&header).unwrap();
    let hend = boundaries(&bytes)[4].1;
    let body = &bytes[hend + 8..bytes.len() - 40];
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let mut refused = 0;
    for i in 0..300 {
        let mut b = body.to_vec();
        match i % 3 {
            // A few random byte edits.
            0 => {
                for _ in 0..rng.random_range(1..4) {
                    let at = rng.random_range(0..b.len());
                    b[at] = rng.random();
                }
            }
            // Truncated body.
            1 => b.truncate(rng.random_range(0..b.len())),
            // Random bytes, often with a huge varint length first.
            _ => {
                b = (0..rng.random_range(0..64)).map(|_| rng.random()).collect();
                if i % 2 == 0 {
                    b.splice(0..0, [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
                }
            }
        }
        let file = frame(&h, &b);
        let opened = open_index_bytes(
            &file,
            Path::new(P),
            &blindkd_engine::index::LoadLimits::default(),
        );
        let _ = summarize(&file, Path::new(P));
        if opened.is_err() {
            refused += 1;
        }
    }
    // Edits can hit a record id or payload byte and remain consistent; most must be refused.
    assert!(refused > 200, "{refused}");
}

// ---------------------------------------------------------------------------------------------
// Compatibility: a checked-in index of format version 1.

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The query of the compatibility fixture (encoded integers) and its kNN k.
const COMPAT_QUERY: [i64; 4] = [120, -340, 55, 900];
const COMPAT_K: u32 = 7;
const COMPAT_RADIUS: f64 = 700.0;

/// The committed owner key is test-only; load it through a 0600 copy (git does not keep modes).
fn compat_owner(dir: &Path) -> OwnerKey {
    let src = fixtures().join("v1-plain.owner-key.TEST-ONLY.json");
    let dst = dir.join("owner.key");
    std::fs::copy(&src, &dst).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    OwnerKey::load(&dst).unwrap()
}

fn compat_records() -> Vec<OwnerRecord> {
    records(48, 4, 2026)
}

/// (class, record id, squared distance).
type Hit3 = (String, u64, u128);

fn run_query(bytes: &[u8], owner: &OwnerKey, kind: QueryKind) -> (Vec<Hit3>, Vec<Vec<u8>>) {
    let index = open_index_bytes(
        bytes,
        Path::new("v1-plain.bkd"),
        &blindkd_engine::index::LoadLimits::default(),
    )
    .unwrap();
    let bundle = owner
        .bundle(&["a".to_string(), "b".to_string()], None)
        .unwrap();
    let entry = &bundle.entries[0];
    let access = Access {
        classes: index.class_names(),
        knn: true,
        range: true,
        max_k: 100,
        max_radius: 1e9,
        max_blocks: u32::MAX,
        max_results: u32::MAX,
        pk_seed: blindkd_keys::crypto::FIXED_PK_SEED,
    };
    let mut client =
        new_query_client(entry, kind, &COMPAT_QUERY, vec![], BatchPolicy::default()).unwrap();
    let (hits, sealed) =
        run_with_payloads(&index, &access, &Limits::default(), client.as_mut(), true).unwrap();
    let by_id: std::collections::HashMap<u64, Vec<u8>> = sealed
        .into_iter()
        .map(|p| (p.record_id, p.sealed))
        .collect();
    let payloads = hits.iter().map(|h| by_id[&h.record_id].clone()).collect();
    (
        hits.iter()
            .map(|h| (h.class.clone(), h.record_id, h.d2))
            .collect(),
        payloads,
    )
}

#[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
struct Expected {
    format_version: u32,
    blake3: String,
    index_id: String,
    dim: u32,
    records: u64,
    block_capacity: u32,
    classes: Vec<(String, u64, usize, usize)>,
    query: Vec<i64>,
    knn: Vec<(String, u64, u128)>,
    knn_records: Vec<String>,
    range: Vec<(String, u64, u128)>,
}

/// Regenerates the fixture. Run once, by hand, only when deliberately adding a format version:
/// `cargo test -p blindkd-keys --test index_format -- --ignored generate_v1_plain_fixture`.
/// The checked-in files must then be *kept* for the old-version reader test.
#[test]
#[ignore]
fn generate_v1_plain_fixture() {
    let dir = fixtures();
    std::fs::create_dir_all(&dir).unwrap();
    let mut owner = OwnerKey::generate("compat-test-hospital").unwrap();
    let out = build_index(
        &Plain::new(),
        SchemeParams::Plain,
        &owner,
        "v1-plain",
        &schema(4),
        &compat_records(),
        &BuildOptions {
            leaf_size: 6,
            progress: None,
            index_id: Some(*b"blindkd-compat-1"),
        },
    )
    .unwrap();
    let bytes = out.to_file_bytes().unwrap();
    owner.indexes.push(out.record.clone());
    let key_path = dir.join("v1-plain.owner-key.TEST-ONLY.json");
    owner.save(&key_path).unwrap();
    std::fs::write(dir.join("v1-plain.bkd"), &bytes).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let owner = compat_owner(tmp.path());
    let expected = expected_of(&bytes, &owner);
    std::fs::write(
        dir.join("v1-plain.expected.json"),
        serde_json::to_string_pretty(&expected).unwrap() + "\n",
    )
    .unwrap();
}

/// The small mlhe index of the fuzz corpus and regression replay (not a compatibility promise;
/// regenerate it whenever the mlhe format changes):
/// `cargo test -p blindkd-keys --test index_format -- --ignored generate_small_mlhe_fixture`.
#[test]
#[ignore]
fn generate_small_mlhe_fixture() {
    let dir = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    let owner = compat_owner(tmp.path());
    let m = Mlhe::new().unwrap();
    let p = SchemeParams::Mlhe(m.params());
    let out = build_index(
        &m,
        p,
        &owner,
        "small-mlhe",
        &schema(2),
        &records(12, 2, 5),
        &BuildOptions {
            leaf_size: 4,
            progress: None,
            index_id: Some(*b"blindkd-fuzz-ml1"),
        },
    )
    .unwrap();
    std::fs::write(dir.join("small-mlhe.bkd"), out.to_file_bytes().unwrap()).unwrap();
}

fn expected_of(bytes: &[u8], owner: &OwnerKey) -> Expected {
    let raw = split_file(bytes, Path::new("v1-plain.bkd")).unwrap();
    let summary = summarize(bytes, Path::new("v1-plain.bkd")).unwrap();
    let (knn, payloads) = run_query(bytes, owner, QueryKind::Knn { k: COMPAT_K });
    let (range, _) = run_query(
        bytes,
        owner,
        QueryKind::Range {
            radius: COMPAT_RADIUS,
        },
    );
    let bundle = owner.bundle(&["a".into(), "b".into()], None).unwrap();
    let entry = &bundle.entries[0];
    let client = new_query_client(
        entry,
        QueryKind::Knn { k: 1 },
        &COMPAT_QUERY,
        vec![],
        BatchPolicy::default(),
    )
    .unwrap();
    let knn_records = knn
        .iter()
        .zip(&payloads)
        .map(|((class, id, _), sealed)| client.open_payload(class, *id, sealed).unwrap().record)
        .collect();
    Expected {
        format_version: raw.version,
        blake3: blake3::hash(bytes).to_hex().to_string(),
        index_id: summary.index_id,
        dim: summary.dim,
        records: summary.records,
        block_capacity: summary.block_capacity,
        classes: summary
            .classes
            .iter()
            .map(|c| (c.class.clone(), c.records, c.nodes, c.leaves))
            .collect(),
        query: COMPAT_QUERY.to_vec(),
        knn,
        knn_records,
        range,
    }
}

#[test]
fn compat_v1_plain_fixture_opens_and_answers() {
    let dir = fixtures();
    let bytes = std::fs::read(dir.join("v1-plain.bkd")).unwrap();
    let want: Expected =
        serde_json::from_str(&std::fs::read_to_string(dir.join("v1-plain.expected.json")).unwrap())
            .unwrap();
    // The fixture itself is unchanged (regenerating it is a deliberate act, see above).
    assert_eq!(blake3::hash(&bytes).to_hex().to_string(), want.blake3);
    assert_eq!(want.format_version, 1);
    // Server-visible facts, checkable without any key.
    let raw = split_file(&bytes, Path::new("v1-plain.bkd")).unwrap();
    assert_eq!(raw.version, 1, "the fixture is format v1");
    assert_eq!(raw.header.scheme, SchemeParams::Plain);
    let index = open_index_bytes(
        &bytes,
        Path::new("v1-plain.bkd"),
        &blindkd_engine::index::LoadLimits::default(),
    )
    .unwrap_or_else(|e| {
        panic!(
            "format v1 index no longer opens (current FORMAT_VERSION {FORMAT_VERSION}); keep a \
             reader for v1: {e}"
        )
    });
    assert_eq!(index.header().index_id, *b"blindkd-compat-1");
    assert_eq!(index.header().dim, want.dim);
    assert_eq!(index.header().records, want.records);
    assert_eq!(index.header().records, 48);
    assert_eq!(index.header().block_capacity, want.block_capacity);
    assert_eq!(index.class_names(), vec!["a".to_string(), "b".to_string()]);
    // The query, through the doctor's client with the (test-only) owner key's bundle.
    let tmp = tempfile::tempdir().unwrap();
    let owner = compat_owner(tmp.path());
    let got = expected_of(&bytes, &owner);
    assert_eq!(got, want);
    // And the plaintext truth: the expected hits are the brute-force answer on the records.
    let recs = compat_records();
    let mut truth: Vec<(u128, String)> = recs
        .iter()
        .map(|r| {
            let d2 = blindkd_engine::encoding::squared_distance(&r.x, &COMPAT_QUERY, &[1; 4]);
            (d2, r.id.clone())
        })
        .collect();
    truth.sort();
    let want_d2: Vec<u128> = truth.iter().take(COMPAT_K as usize).map(|t| t.0).collect();
    let got_d2: Vec<u128> = want.knn.iter().map(|t| t.2).collect();
    assert_eq!(got_d2, want_d2);
    let thr = (COMPAT_RADIUS * COMPAT_RADIUS) as u128;
    assert_eq!(
        want.range.len(),
        truth.iter().filter(|t| t.0 <= thr).count()
    );
}

/// KNOWN BUG (not fixed here: `engine/src/crypto/plain.rs` is outside this suite's files).
/// `Plain::prepare` bounds only the row *length*, not the values, and `Plain::evaluate` sums
/// `a·w` products in `i128` unchecked: a checksum-valid plain index with extreme row values plus
/// a client functional with extreme values overflows `i128`. With overflow checks (debug/test
/// builds) the server thread panics; in release the sum silently wraps. Fix: in `prepare`, refuse
/// rows whose values exceed the encoding bound (|x̃| < 2^31, ‖x̃‖² < 2^62), or use
/// `checked_mul`/`checked_add` in `evaluate` and return `Error::InvalidInput`.
#[test]
fn plain_extreme_rows_and_query_do_not_panic() {
    let (_, header, mut body) = plain();
    for c in &mut body.classes {
        for l in &mut c.leaves {
            for r in &mut l.block.rows {
                r.iter_mut().for_each(|v| *v = i64::MAX);
            }
        }
    }
    let bytes = encode_file(&header, &body).unwrap();
    let index = open_index_bytes(
        &bytes,
        Path::new(P),
        &blindkd_engine::index::LoadLimits::default(),
    )
    .unwrap();
    let w = vec![i64::MAX; header.dim as usize + 1];
    let q = postcard::to_allocvec(&w).unwrap();
    let req = postcard::to_allocvec(&blindkd_keys::protocol::StartRequest {
        kind: QueryKind::Knn { k: 1 },
        classes: vec![],
        query: blindkd_keys::crypto::frame_query(&[], &q),
        direct: false,
    })
    .unwrap();
    let access = Access {
        classes: index.class_names(),
        knn: true,
        range: true,
        max_k: 10,
        max_radius: 1.0,
        max_blocks: u32::MAX,
        max_results: u32::MAX,
        pk_seed: blindkd_keys::crypto::FIXED_PK_SEED,
    };
    let started = index.start(&access, &req, &mut Unmetered).unwrap();
    let mut h = started.handle;
    let req = postcard::to_allocvec(&blindkd_keys::protocol::BlockRequest {
        blocks: vec![blindkd_keys::protocol::BlockRef {
            class_idx: 0,
            leaf: 0,
        }],
    })
    .unwrap();
    // Must be an error (or a correct answer), never a panic.
    let _ = h.blocks(&Limits::default(), &req, &mut Unmetered);
}
