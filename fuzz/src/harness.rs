//! Fuzz entry points for every decoder of untrusted bytes. Each function takes arbitrary bytes
//! and must return without panicking, looping or allocating without bound.
//!
//! Shared verbatim by the cargo-fuzz targets (`fuzz/fuzz_targets/*.rs`) and by the corpus
//! replay test `keys/tests/fuzz_regressions.rs` (`#[path]` include), so CI runs every corpus
//! file through exactly the code the fuzzer ran. Fixtures are the checked-in files under
//! `keys/tests/fixtures/`, so a reproducer means the same thing everywhere.

use std::io::Cursor;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use blindkd_engine::crypto::mlhe::Mlhe;
use blindkd_engine::crypto::{frame_query, Scheme};
use blindkd_engine::index::{split_file, summarize, SchemeParams, ServerIndex};
use blindkd_engine::protocol::{
    open_index_bytes, Access, BlockRef, BlockRequest, HostedIndex, Limits, QueryKind, StartRequest,
    Unmetered,
};
use blindkd_engine::token::{
    decode_unverified, verify, verify_pop, Claims, Issuers, QueryKind as TokenKind, Scope,
};
use blindkd_keys::token::{issue, DeviceKey, IssuerKey};

/// The checked-in format-v1 plain index (48 records, d = 4, classes `a` and `b`).
pub const PLAIN_INDEX: &[u8] = include_bytes!("../../keys/tests/fixtures/v1-plain.bkd");
/// A small checked-in mlhe index (12 records, d = 2).
pub const MLHE_INDEX: &[u8] = include_bytes!("../../keys/tests/fixtures/small-mlhe.bkd");

/// The fixed "now" of token verification (2026-11-01T00:00:00Z).
pub const NOW: i64 = 1_793_491_200;
/// The audience tokens are verified against.
pub const AUD: &str = "cardio-2026";
/// The pinned issuer name.
pub const ISS: &str = "hospital-a";
/// Images and bitmaps above this many pixels are skipped by [`qr`] (keeps executions fast; the
/// size limits and the time budget of `scan_qr` itself are tested by `keys/tests/token_qr.rs`).
pub const QR_MAX_PIXELS: u64 = 256 * 256;

fn path() -> &'static Path {
    Path::new("fuzz.bkd")
}

/// The issuer key of the token fixtures (seed 1) and the device key (seed 7).
pub fn issuer_key() -> IssuerKey {
    IssuerKey::from_bytes(&[1; 32])
}

/// The device key named in the fixture token's `cnf`.
pub fn device_key() -> DeviceKey {
    DeviceKey::from_seed(&[7; 32])
}

/// Issuers pinning [`issuer_key`] under [`ISS`].
pub fn issuers() -> &'static Issuers {
    static I: OnceLock<Issuers> = OnceLock::new();
    I.get_or_init(|| {
        let mut i = Issuers::new();
        i.insert(ISS, issuer_key().public());
        i
    })
}

/// A valid claims set (verifies at [`NOW`] for [`AUD`]).
pub fn claims() -> Claims {
    Claims {
        iss: ISS.into(),
        sub: "dr.jones".into(),
        aud: AUD.into(),
        iat: NOW - 10,
        nbf: NOW - 10,
        exp: NOW + 30 * 86_400,
        cti: [0x5a; 16],
        scope: Scope {
            kinds: vec![TokenKind::Knn, TokenKind::Range],
            max_k: 50,
            max_radius: 2.5,
            classes: vec!["cardiology".into()],
            budget: 100,
            max_blocks: 16,
            max_results: 100,
        },
        cnf: device_key().public().ed25519,
    }
}

/// A valid token text for [`claims`] (Ed25519 is deterministic, so this is a constant).
pub fn valid_token() -> String {
    issue(&issuer_key(), &claims()).unwrap()
}

/// Runs every token decoder on one text.
fn token_text(text: &str) {
    let _ = decode_unverified(text);
    if let Ok(c) = verify(text, issuers(), NOW, AUD) {
        // Whatever verifies must be exactly what the issuer signed.
        assert_eq!(
            c,
            claims(),
            "a token verified with claims the issuer never signed"
        );
    }
    let _ = verify_pop(&claims().cnf, &[9; 32], text, &[0; 64]);
}

/// Token decoder. First byte selects the mode: even → the rest is token text (lossy UTF-8);
/// odd → the rest is the CBOR (COSE_Sign1) bytes, Base45-encoded behind `BKD1:` so the fuzzer
/// explores CBOR/COSE/CWT directly.
pub fn token(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        token_text("");
        return;
    };
    if mode % 2 == 0 {
        let text = String::from_utf8_lossy(rest);
        token_text(&text);
    } else {
        let text = format!("BKD1:{}", base45::encode(rest));
        token_text(&text);
    }
}

/// QR scanning. First byte selects the mode; the rest is:
/// 0: an image file through the whole [`scan_qr`](blindkd_engine::token::scan_qr) (decode,
///    rescale to a 600–2400 px side, three binarisations), skipped above [`QR_MAX_PIXELS`];
/// 1: an image file through the decoder alone, then the scan at its own size (no rescale);
/// 2: an 8-bit grayscale bitmap: one byte of width (0 means 256), then pixels row by row;
/// 3: a 1-bit bitmap: one byte of width, then pixels eight to a byte, most significant bit
///    first, set = dark, scanned in one pass (there is nothing to binarise): mutations flip QR
///    modules directly.
///
/// Modes 1–3 skip the rescale, which costs ~99 % of a mode-0 execution, so the fuzzer spends
/// its executions on the image decoder, the detector and the payload decoder. Whatever scans
/// must be a `BKD1:` text, which then goes through every token decoder.
pub fn qr(data: &[u8]) {
    if let Some(Ok(text)) = qr_scan(data) {
        assert!(text.starts_with("BKD1:"));
        token_text(&text);
    }
}

/// What [`qr`] scans from `data` (`None`: skipped, too large or too short).
pub fn qr_scan(data: &[u8]) -> Option<blindkd_engine::Result<String>> {
    use blindkd_engine::token::{qr_stages, scan_qr};
    let (&mode, rest) = data.split_first()?;
    Some(match mode % 4 {
        0 => {
            if let Ok(r) = image::ImageReader::new(Cursor::new(rest)).with_guessed_format() {
                if let Ok((w, h)) = r.into_dimensions() {
                    if u64::from(w) * u64::from(h) > QR_MAX_PIXELS {
                        return None;
                    }
                }
            }
            scan_qr(rest)
        }
        1 => match qr_stages::decode(rest) {
            Ok((w, h, px)) if u64::from(w) * u64::from(h) <= QR_MAX_PIXELS => {
                qr_stages::scan(w, h, px)
            }
            _ => return None,
        },
        m => {
            let (&w, px) = rest.split_first()?;
            let w = if w == 0 { 256 } else { usize::from(w) };
            // Above this size, crafted bitmaps keep the detector busy for seconds (its work grows
            // about with the cube of the area); `scan_qr` bounds that with its time budget.
            if (px.len() * if m == 2 { 1 } else { 8 }) as u64 > QR_MAX_PIXELS {
                return None;
            }
            if m == 2 {
                let h = px.len() / w;
                qr_stages::scan(w as u32, h as u32, px[..w * h].to_vec())
            } else {
                let mut dark = unpack_bits(px);
                let h = dark.len() / w;
                dark.truncate(w * h);
                qr_stages::scan_bitmap(w, h, &dark)
            }
        }
    })
}

/// The QR scanner's image decoder alone (PNG or JPEG, under the scanner's size and allocation
/// limits): the first thing a doctor's client does with an untrusted image file. Cheap, unlike
/// the detector behind it, so it can be fuzzed at volume.
pub fn qr_image(data: &[u8]) {
    if let Ok((w, h, px)) = blindkd_engine::token::qr_stages::decode(data) {
        assert_eq!(px.len() as u64, u64::from(w) * u64::from(h));
    }
}

/// QR payload decoding: a module matrix straight into the decoder the detector feeds (format
/// and version bits, unmasking, Reed–Solomon, segments), then every token decoder. First byte:
/// the version, `1 + byte % 40` (side `17 + 4 × version`); the rest: modules eight to a byte,
/// most significant bit first, set = dark, missing ones light.
pub fn qr_payload(data: &[u8]) {
    if let Some(Ok(text)) = qr_payload_scan(data) {
        assert!(text.starts_with("BKD1:"));
        token_text(&text);
    }
}

/// What [`qr_payload`] decodes from `data` (`None`: empty input).
pub fn qr_payload_scan(data: &[u8]) -> Option<blindkd_engine::Result<String>> {
    let (&v, bits) = data.split_first()?;
    let size = 17 + 4 * (1 + usize::from(v % 40));
    let mut dark = unpack_bits(bits);
    dark.resize(size * size, false);
    Some(blindkd_engine::token::qr_stages::decode_modules(
        size, &dark,
    ))
}

/// Bits eight to a byte, most significant first.
pub fn unpack_bits(bytes: &[u8]) -> Vec<bool> {
    bytes
        .iter()
        .flat_map(|b| (0..8).map(move |i| b & (0x80 >> i) != 0))
        .collect()
}

/// The inverse of [`unpack_bits`]; the last byte is padded with zeros.
pub fn pack_bits(bits: &[bool]) -> Vec<u8> {
    bits.chunks(8)
        .map(|c| {
            c.iter()
                .enumerate()
                .fold(0u8, |b, (i, &d)| if d { b | 0x80 >> i } else { b })
        })
        .collect()
}

/// Frames header and body bytes into an index file with a valid checksum.
pub fn frame(header: &[u8], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(header.len() + body.len() + 64);
    out.extend_from_slice(b"BLINDKD\0");
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(header);
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(body);
    let sum = blake3::hash(&out);
    out.extend_from_slice(sum.as_bytes());
    out.extend_from_slice(b"BKDEND\0\0");
    out
}

/// (header bytes, body bytes) of a well-formed file.
fn sections(file: &[u8]) -> (&[u8], &[u8]) {
    let hlen = u32::from_le_bytes(file[12..16].try_into().unwrap()) as usize;
    let hend = 16 + hlen;
    (&file[16..hend], &file[hend + 8..file.len() - 40])
}

/// Opens an index file the way the server and `inspect` do; on success runs a plain query whose
/// functional comes from `w_seed`, and checks the header agrees with the framing.
///
/// An mlhe index with the supported parameters is validated with [`ServerIndex::from_body`] on a
/// cached scheme instead of through `open_index_bytes`, which would rebuild the BFV parameters
/// (~0.2 s) on every input; that is all `open_index_bytes` adds for mlhe.
fn open_and_use(file: &[u8], w_seed: &[u8]) {
    let _ = summarize(file, path());
    if let Ok(raw) = split_file(file, path()) {
        if let SchemeParams::Mlhe(p) = &raw.header.scheme {
            if *p == mlhe().params() {
                let _ = ServerIndex::from_body(
                    mlhe().clone(),
                    raw.header.clone(),
                    raw.body,
                    path(),
                    &blindkd_engine::index::LoadLimits::default(),
                );
                return;
            }
        }
    }
    let Ok(index) = open_index_bytes(file, path(), &blindkd_engine::index::LoadLimits::default())
    else {
        return;
    };
    let raw = split_file(file, path()).unwrap();
    assert_eq!(index.header(), &raw.header);
    if raw.header.scheme != SchemeParams::Plain {
        return;
    }
    // A client-chosen functional w (any i64s): the server must not panic evaluating it.
    let dim = raw.header.dim as usize;
    let mut seed = [0u8; 8];
    for (i, b) in w_seed.iter().take(8).enumerate() {
        seed[i] = *b;
    }
    let v = i64::from_le_bytes(seed);
    let w = vec![v; dim + 1];
    let _ = run_plain_query(&index, &w, &[]);
}

/// Index file reader. First byte selects the mode; the rest is:
/// 0: a whole file, as is;
/// 1: a whole file whose checksum is recomputed (so mutations of a valid seed reach the body);
/// 2: a body framed with the plain fixture's header (valid checksum);
/// 3: a body framed with the mlhe fixture's header (valid checksum);
/// 4: a header framed with the plain fixture's body (valid checksum).
pub fn index_file(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 5 {
        0 => open_and_use(rest, rest),
        1 => {
            let mut file = rest.to_vec();
            if file.len() >= 40 {
                let end = file.len() - 40;
                let sum = blake3::hash(&file[..end]);
                file[end..end + 32].copy_from_slice(sum.as_bytes());
            }
            open_and_use(&file, rest);
        }
        2 => open_and_use(&frame(sections(PLAIN_INDEX).0, rest), rest),
        3 => open_and_use(&frame(sections(MLHE_INDEX).0, rest), rest),
        _ => open_and_use(&frame(rest, sections(PLAIN_INDEX).1), rest),
    }
}

/// The plain fixture, opened once.
pub fn hosted_plain() -> Arc<dyn HostedIndex> {
    static H: OnceLock<Arc<dyn HostedIndex>> = OnceLock::new();
    H.get_or_init(|| {
        open_index_bytes(
            PLAIN_INDEX,
            path(),
            &blindkd_engine::index::LoadLimits::default(),
        )
        .unwrap()
    })
    .clone()
}

/// A token scope allowing everything on the plain fixture.
pub fn access() -> Access {
    Access {
        classes: vec!["a".into(), "b".into()],
        knn: true,
        range: true,
        max_k: 50,
        max_radius: 1e6,
        max_blocks: u32::MAX,
        max_results: u32::MAX,
        pk_seed: blindkd_engine::crypto::FIXED_PK_SEED,
    }
}

/// A valid plain start request for functional `w` (length d + 1 = 5 for the plain fixture).
pub fn plain_start_request(kind: QueryKind, classes: Vec<String>, w: &[i64]) -> Vec<u8> {
    let q = postcard::to_allocvec(w).unwrap();
    postcard::to_allocvec(&StartRequest {
        kind,
        classes,
        query: frame_query(&[], &q),
        direct: false,
    })
    .unwrap()
}

/// Runs a plain query: round 1, then every leaf of every searched class, 8 per request.
fn run_plain_query(
    index: &Arc<dyn HostedIndex>,
    w: &[i64],
    classes: &[String],
) -> blindkd_engine::Result<()> {
    let names = index.class_names();
    let access = Access {
        classes: names.clone(),
        ..access()
    };
    let req = plain_start_request(QueryKind::Knn { k: 1 }, classes.to_vec(), w);
    let started = index.clone().start(&access, &req, &mut Unmetered)?;
    let mut handle = started.handle;
    let reply: blindkd_engine::protocol::StartReply = postcard::from_bytes(&started.reply).unwrap();
    let limits = Limits {
        max_blocks_per_query: 1 << 16,
        max_blocks_per_request: 8,
    };
    for c in &reply.classes {
        let leaves = c.shape.leaves.len() as u32;
        let refs: Vec<BlockRef> = (0..leaves)
            .map(|leaf| BlockRef {
                class_idx: c.class_idx,
                leaf,
            })
            .collect();
        for chunk in refs.chunks(8) {
            let req = postcard::to_allocvec(&BlockRequest {
                blocks: chunk.to_vec(),
            })
            .unwrap();
            handle.blocks(&limits, &req, &mut Unmetered)?;
        }
    }
    Ok(())
}

/// Server round 1: arbitrary `StartRequest` bytes against the hosted plain fixture; on success,
/// the first leaf of each class is evaluated with the decoded query.
pub fn start_request(data: &[u8]) {
    let index = hosted_plain();
    let Ok(started) = index.start(&access(), data, &mut Unmetered) else {
        return;
    };
    let info = &started.info;
    assert!(info.classes.iter().all(|c| access().classes.contains(c)));
    let mut handle = started.handle;
    let req = postcard::to_allocvec(&BlockRequest {
        blocks: vec![
            BlockRef {
                class_idx: 0,
                leaf: 0,
            },
            BlockRef {
                class_idx: 1,
                leaf: 0,
            },
        ],
    })
    .unwrap();
    let _ = handle.blocks(&Limits::default(), &req, &mut Unmetered);
}

/// Server rounds 2…: arbitrary `BlockRequest` bytes for a live, valid query on the plain
/// fixture, sent twice (the per-query budget is then checked across requests).
pub fn block_request(data: &[u8]) {
    let index = hosted_plain();
    let req = plain_start_request(
        QueryKind::Knn { k: 5 },
        vec!["a".into()],
        &[-240, 680, -110, -1800, 1],
    );
    let started = index.start(&access(), &req, &mut Unmetered).unwrap();
    let mut handle = started.handle;
    let limits = Limits {
        max_blocks_per_query: 24,
        max_blocks_per_request: 16,
    };
    for _ in 0..2 {
        let before = handle.blocks_evaluated();
        match handle.blocks(&limits, data, &mut Unmetered) {
            Ok(reply) => {
                let r: blindkd_engine::protocol::BlockReply = postcard::from_bytes(&reply).unwrap();
                // Only class 0 (`a`) was searched: no block of another class may be evaluated.
                assert!(r.blocks.iter().all(|b| b.block.class_idx == 0));
                assert!(handle.blocks_evaluated() <= limits.max_blocks_per_query);
                assert_eq!(
                    handle.blocks_evaluated(),
                    before + r.blocks.len() as u32,
                    "evaluated count"
                );
            }
            Err(_) => assert_eq!(handle.blocks_evaluated(), before),
        }
    }
}

/// The mlhe scheme, built once (parameter setup is the slow part).
pub fn mlhe() -> &'static Mlhe {
    static M: OnceLock<Mlhe> = OnceLock::new();
    M.get_or_init(|| Mlhe::new().unwrap())
}

/// mlhe query decoding (session public key + d + 1 ciphertexts, fhe's ciphertext parser).
/// First byte selects the dimension 1..=4; the rest is the framed query.
pub fn mlhe_query(data: &[u8]) {
    let Some((&d, rest)) = data.split_first() else {
        return;
    };
    let dim = 1 + usize::from(d % 4);
    let _ = mlhe().decode_query(rest, dim, &blindkd_engine::crypto::FIXED_PK_SEED);
}

/// A fuzz entry point.
pub type Target = fn(&[u8]);

/// Every target by name, for the replay test and the corpus generator.
pub const TARGETS: &[(&str, Target)] = &[
    ("token", token),
    ("qr", qr),
    ("qr_payload", qr_payload),
    ("qr_image", qr_image),
    ("index_file", index_file),
    ("start_request", start_request),
    ("block_request", block_request),
    ("mlhe_query", mlhe_query),
];
