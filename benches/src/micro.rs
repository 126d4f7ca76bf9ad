//! Per-operation costs at d = 10 (`blindkd bench --micro`): medians of repeated single calls.
//!
//! Run with `--threads 1` for the single-core numbers of the engine notes.

use std::fmt::Write as _;
use std::time::Instant;

use blindkd_engine::crypto::mlhe::{Mlhe, MlheBlock, CHECK_ROWS, DEGREE};

/// Records in a full mlhe block (the last row is the check row).
const FULL: usize = DEGREE - CHECK_ROWS;
use blindkd_engine::encoding::{augment, QueryPlan};
use blindkd_keys::crypto::{ClassKey, ClientScheme, RowDomain, RowRef, Scheme};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// Median wall time of `reps` calls of `f`, in µs.
pub fn median_us(reps: usize, mut f: impl FnMut()) -> f64 {
    let mut v: Vec<f64> = (0..reps.max(1))
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `n` rows of dimension `d` with 16-bit coordinates, as (row ref, augmented row).
pub fn rows(n: usize, d: usize, seed: u64) -> Vec<(RowRef, Vec<i64>)> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let w = vec![1u32; d];
    (0..n)
        .map(|j| {
            let x: Vec<i64> = (0..d).map(|_| rng.random_range(-32767..=32767)).collect();
            (
                RowRef {
                    domain: RowDomain::Leaf,
                    id: j as u64,
                    record: j as u64,
                },
                augment(&x, &w),
            )
        })
        .collect()
}

/// A sealed full mlhe block of `d + 1` columns and a query for it.
pub struct MlheFixture {
    /// The scheme.
    pub m: Mlhe,
    /// Mask key.
    pub key: blindkd_keys::crypto::mlhe::MlheKey,
    /// Stored block.
    pub block: MlheBlock,
    /// Rows of the block.
    pub refs: Vec<RowRef>,
    /// Session.
    pub session: blindkd_keys::crypto::mlhe::MlheSession,
    /// Query plan.
    pub plan: QueryPlan,
    /// Framed query bytes (session public key + sealed query).
    pub query_bytes: Vec<u8>,
    /// Dimension.
    pub d: usize,
}

impl MlheFixture {
    /// A full block (8191 records and the check row) at dimension `d`.
    pub fn new(d: usize) -> anyhow::Result<Self> {
        let m = Mlhe::new()?;
        let key = m.derive_key(&ClassKey::from_bytes([7; 32]), &[1; 16])?;
        let r = rows(FULL, d, 1);
        let block = m.seal_block(&key, &r)?;
        let refs = r.iter().map(|(x, _)| *x).collect();
        let q: Vec<i64> = (0..d as i64).map(|i| 100 * i - 300).collect();
        let plan = QueryPlan::new(&q, &vec![1; d]);
        let (session, query_bytes) =
            blindkd_keys::crypto::seal_framed(&m, &blindkd_engine::crypto::FIXED_PK_SEED, &plan.w)?;
        Ok(MlheFixture {
            m,
            key,
            block,
            refs,
            session,
            plan,
            query_bytes,
            d,
        })
    }
}

/// The raw ct×pt product of `evaluate` (`Σᵢ ctᵢ·Yᵢ` for both ciphertext polynomials, Y in NTT
/// form), rebuilt from fhe-math with random operands: the engine keeps its prepared polynomials
/// private, and the product's cost does not depend on the values.
pub struct Product {
    cts: Vec<[fhe_math::rq::Poly; 2]>,
    ys: Vec<fhe_math::rq::Poly>,
}

impl Product {
    /// `d + 1` random ciphertexts and plaintexts at the top level of mlhe's parameters.
    pub fn new(d: usize) -> anyhow::Result<Self> {
        use fhe_math::rq::{Poly, Representation};
        let p = Mlhe::new()?.params();
        let par = fhe::bfv::BfvParametersBuilder::new()
            .set_degree(p.degree as usize)
            .set_plaintext_modulus(p.t)
            .set_moduli_sizes(&p.moduli_bits.map(|b| b as usize))
            .build_arc()?;
        let ctx = par.context_at_level(0)?.clone();
        let mut rng = rand::rng();
        let cts = (0..=d)
            .map(|_| {
                [
                    Poly::random(&ctx, Representation::Ntt, &mut rng),
                    Poly::random(&ctx, Representation::Ntt, &mut rng),
                ]
            })
            .collect();
        let ys = (0..=d)
            .map(|_| Poly::random(&ctx, Representation::Ntt, &mut rng))
            .collect();
        Ok(Product { cts, ys })
    }

    /// Runs the product once.
    pub fn run(&self) -> anyhow::Result<()> {
        let c0 = fhe_math::rq::dot_product(self.cts.iter().map(|c| &c[0]), self.ys.iter())?;
        let c1 = fhe_math::rq::dot_product(self.cts.iter().map(|c| &c[1]), self.ys.iter())?;
        std::hint::black_box((c0, c1));
        Ok(())
    }
}

/// Measures the per-operation costs and returns a Markdown report.
pub fn run(reps: usize) -> anyhow::Result<String> {
    let d = 10;
    let threads = rayon::current_num_threads();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "## Micro-benchmarks (d = {d}, N = 8192, full block of 8191 records + check row, median of {reps}, {threads} rayon thread(s))\n"
    );
    let _ = writeln!(s, "| operation | median |\n|---|---:|");
    let f = MlheFixture::new(d)?;
    let m = &f.m;
    let seed = blindkd_engine::crypto::FIXED_PK_SEED;
    // Offline: a query key (secret key, session public key, d + 1 encryptions of zero).
    let t_session = median_us(reps, || {
        let _ = std::hint::black_box(m.new_session(&seed, d + 1));
    });
    // Online: sealing with a premade key (each key seals once, so one key per repetition).
    let mut keys = (0..reps.max(1))
        .map(|_| m.new_session(&seed, d + 1))
        .collect::<blindkd_keys::Result<Vec<_>>>()?;
    let t_seal = median_us(reps, || {
        if let Some(mut k) = keys.pop() {
            let _ = std::hint::black_box(m.seal_query(&mut k, &f.plan.w));
        }
    });
    let t_decode = median_us(reps, || {
        let _ = std::hint::black_box(m.decode_query(
            &f.query_bytes,
            d,
            &blindkd_engine::crypto::FIXED_PK_SEED,
        ));
    });
    let t_prepare = median_us(reps, || {
        let _ = std::hint::black_box(m.prepare(&f.block, d));
    });
    let prepared = m.prepare(&f.block, d)?;
    let query = m.decode_query(&f.query_bytes, d, &blindkd_engine::crypto::FIXED_PK_SEED)?;
    let product = Product::new(d)?;
    let t_product = median_us(reps, || {
        let _ = product.run();
    });
    let t_eval = median_us(reps, || {
        let _ = std::hint::black_box(m.evaluate(&query, &prepared));
    });
    let reply = m.evaluate(&query, &prepared)?;
    let t_open = median_us(reps, || {
        let _ = std::hint::black_box(m.open(&f.key, &f.session, &reply, &f.plan, &f.refs));
    });
    let got = m.open(&f.key, &f.session, &reply, &f.plan, &f.refs)?;
    anyhow::ensure!(got.len() == FULL, "open returned {} rows", got.len());
    let t_sealblock = median_us(reps.min(5), || {
        let r = rows(FULL, d, 2);
        let _ = std::hint::black_box(m.seal_block(&f.key, &r));
    });
    let sealed_len = f.query_bytes.len();
    let per = |us: f64| us / FULL as f64;
    let lines = [
        (
            "client, offline: query key (secret key, session key, 11 encryptions of zero)",
            format!("{:.2} ms", t_session / 1e3),
        ),
        (
            "client, online: seal query with a premade key (11 encodings + additions, packing)",
            format!("{:.3} ms", t_seal / 1e3),
        ),
        (
            "server: decode query (pk + 11 c0s in NTT form)",
            format!("{:.2} ms", t_decode / 1e3),
        ),
        (
            "server: ct×pt product only, Σ ctᵢ·Yᵢ (both polys, 11 terms)",
            format!(
                "{:.2} ms ({:.3} µs/record)",
                t_product / 1e3,
                per(t_product)
            ),
        ),
        (
            "server: `Scheme::evaluate` (product + finish + serialise)",
            format!("{:.2} ms ({:.3} µs/record)", t_eval / 1e3, per(t_eval)),
        ),
        (
            "server: finish = evaluate − product",
            format!(
                "{:.2} ms ({:.3} µs/record)",
                (t_eval - t_product) / 1e3,
                per(t_eval - t_product)
            ),
        ),
        (
            "client: `open` (parse + decrypt + unmask + check 8191 rows)",
            format!("{:.2} ms ({:.3} µs/record)", t_open / 1e3, per(t_open)),
        ),
        (
            "server load: `prepare` one block (11 NTTs)",
            format!("{:.2} ms", t_prepare / 1e3),
        ),
        (
            "owner: `seal_block` 8191 rows (masks, check row)",
            format!(
                "{:.2} ms ({:.3} µs/record)",
                t_sealblock / 1e3,
                per(t_sealblock)
            ),
        ),
        ("reply size per block", format!("{} bytes", reply.len())),
        (
            "query upload (framed pk + 11 cts)",
            format!("{sealed_len} bytes"),
        ),
    ];
    for (k, v) in lines {
        let _ = writeln!(s, "| {k} | {v} |");
    }
    #[cfg(feature = "paper-she")]
    {
        let _ = writeln!(s, "{}", she(reps.min(10), d)?);
    }
    Ok(s)
}

/// paper-she per-record costs at the published parameters on a full 1024-row block.
#[cfg(feature = "paper-she")]
pub fn she(reps: usize, d: usize) -> anyhow::Result<String> {
    use blindkd_keys::crypto::she::{PaperSheClient, SHE_BLOCK};
    let t = Instant::now();
    let (scheme, key) = PaperSheClient::setup(&ClassKey::from_bytes([9; 32]), &[3; 16])?;
    let keygen = t.elapsed().as_secs_f64();
    let r = rows(SHE_BLOCK, d, 3);
    let t = Instant::now();
    let block = scheme.seal_block(&key, &r)?;
    let seal = t.elapsed().as_secs_f64() * 1e6;
    let prepared = scheme.prepare(&block, d)?;
    let plan = QueryPlan::new(&vec![5; d], &vec![1; d]);
    let sealed = scheme.seal_query(&mut (), &plan.w)?;
    let q = scheme.decode_query(
        &blindkd_keys::crypto::frame_query(&[], &sealed),
        d,
        &blindkd_engine::crypto::FIXED_PK_SEED,
    )?;
    let t_eval = median_us(reps, || {
        let _ = std::hint::black_box(scheme.evaluate(&q, &prepared));
    });
    let reply = scheme.evaluate(&q, &prepared)?;
    let refs: Vec<RowRef> = r.iter().map(|(x, _)| *x).collect();
    let t_open = median_us(reps, || {
        let _ = std::hint::black_box(scheme.open(&key, &(), &reply, &plan, &refs));
    });
    let n = SHE_BLOCK as f64;
    Ok(format!(
        "\n## paper-she (k0 = 1024, d = {d}, {SHE_BLOCK}-row block, median of {reps})\n\n\
         | operation | median |\n|---|---:|\n\
         | keygen | {keygen:.2} s |\n\
         | server: evaluate (ct×ct inner product, d+1 terms) | {:.2} ms ({:.2} µs/record) |\n\
         | client: open (decrypt) | {:.2} ms ({:.2} µs/record) |\n\
         | owner: seal (one run) | {:.1} µs/record |\n\
         | reply size per record | {} bytes |\n",
        t_eval / 1e3,
        t_eval / n,
        t_open / 1e3,
        t_open / n,
        seal / n,
        reply.len() / SHE_BLOCK
    ))
}
