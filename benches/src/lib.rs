//! The benchmark grid behind `blindkd bench` (see `benches/README.md`).
//!
//! For every cell (records `n`, dimension `d`, query kind) every lane answers the same held-out
//! queries; every answer is compared with a brute-force oracle on the encoded integers (ids and
//! squared distances, ties broken by record id) and the command fails if any differs. Lanes:
//!
//! * `plain` — the kd-PB tree protocol with no encryption (the floor);
//! * `kiddo` — kiddo 5's plaintext `ImmutableKdTree` over the encoded integers as f64 (speed reference);
//! * `mlhe` — the kd-PB tree protocol over the masked index, in process;
//! * `mlhe-http` — the same through the real HTTP server and client over loopback;
//! * `mlhe-scan` — a linear scan: the query evaluated on every leaf block, every reply opened;
//! * with feature `paper-she`: `paper-she`, `paper-she-scan`, and `mlhe-1k`, the mlhe tree at
//!   paper-she's leaf size (1024) so the two schemes are compared on the same tree.

pub mod data;
pub mod lanes;
pub mod load;
pub mod micro;
pub mod report;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{anyhow, bail, Context};
use blindkd_engine::crypto::mlhe::Mlhe;
use blindkd_engine::crypto::plain::Plain;
use blindkd_engine::index::SchemeParams;
use blindkd_engine::protocol::QueryKind;
use blindkd_indexer::synth::Distribution;
use blindkd_keys::owner::OwnerKey;

pub use report::Row;

use lanes::{Built, Lane, Query};

/// Value distribution of the synthetic table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Dist {
    /// Uniform within each column's range.
    Uniform,
    /// Normal around each column's midpoint.
    Gaussian,
    /// Around 32 seeded cluster centres.
    Clustered,
}

impl Dist {
    fn synth(self) -> Distribution {
        match self {
            Dist::Uniform => Distribution::Uniform,
            Dist::Gaussian => Distribution::Gaussian,
            Dist::Clustered => Distribution::Clustered,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Dist::Uniform => "uniform",
            Dist::Gaussian => "gaussian",
            Dist::Clustered => "clustered",
        }
    }
}

/// Arguments of `blindkd bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Small grid (n ∈ {10³, 10⁴}, d = 10, k = 10, 0.1 % range), under two minutes on 2 cores.
    #[arg(long)]
    pub quick: bool,
    /// Output directory for CSV / Markdown / SVG.
    #[arg(long, default_value = "bench-out")]
    pub out: PathBuf,
    /// Rayon threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Record counts (comma-separated). Default: 1000,10000,100000,1000000 (quick: 1000,10000).
    #[arg(long, value_delimiter = ',')]
    pub n: Option<Vec<usize>>,
    /// Dimensions (comma-separated). Default: 4,8,10,16,32 (quick: 10).
    #[arg(long, value_delimiter = ',')]
    pub dims: Option<Vec<usize>>,
    /// Lanes (comma-separated): plain, kiddo, mlhe, mlhe-http, mlhe-scan, and with feature
    /// paper-she: mlhe-1k, paper-she, paper-she-scan. Default: all.
    #[arg(long, value_delimiter = ',')]
    pub lanes: Option<Vec<String>>,
    /// kNN k values (comma-separated). Default: 1,10,50 (quick: 10).
    #[arg(long, value_delimiter = ',')]
    pub k: Option<Vec<u32>>,
    /// Range selectivities in percent (comma-separated). Default: 0.01,0.1,1 (quick: 0.1).
    #[arg(long, value_delimiter = ',')]
    pub selectivity: Option<Vec<f64>>,
    /// Value distribution of the synthetic records.
    #[arg(long, value_enum, default_value_t = Dist::Clustered)]
    pub distribution: Dist,
    /// Seed of the synthetic table (records and held-out queries).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Held-out queries per cell. Default: 20 (quick: 10).
    #[arg(long)]
    pub queries: Option<usize>,
    /// Records per leaf block of the tree lanes (≤ 8192, mlhe's block capacity).
    #[arg(long, default_value_t = 8192)]
    pub leaf: usize,
    /// Instead of the grid: per-operation costs at d = 10 (use with --threads 1), written to
    /// OUT/micro.md.
    #[arg(long)]
    pub micro: bool,
    /// Largest n for the paper-she lanes (they are slow).
    #[arg(long, default_value_t = 10_000)]
    pub she_max_n: usize,
}

const ALL_LANES: &[&str] = &[
    "plain",
    "kiddo",
    "mlhe",
    "mlhe-http",
    "mlhe-scan",
    #[cfg(feature = "paper-she")]
    "mlhe-1k",
    #[cfg(feature = "paper-she")]
    "paper-she",
    #[cfg(feature = "paper-she")]
    "paper-she-scan",
];

/// One query kind of the grid.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Knn(u32),
    /// Selectivity as a fraction.
    Range(f64),
}

impl Kind {
    fn label(self) -> String {
        match self {
            Kind::Knn(k) => format!("kNN k={k}"),
            Kind::Range(f) => format!("range {}%", f * 100.0),
        }
    }
}

/// Runs the grid.
pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let t_all = Instant::now();
    if let Some(t) = args.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()
            .map_err(|e| anyhow!("cannot set up {t} rayon threads: {e}"))?;
    }
    let threads = rayon::current_num_threads();
    if args.micro {
        std::fs::create_dir_all(&args.out)?;
        let md = format!(
            "Machine: {}\n\n{}",
            report::machine(threads),
            micro::run(args.queries.unwrap_or(15))?
        );
        println!("{md}");
        std::fs::write(args.out.join("micro.md"), md)?;
        return Ok(());
    }
    let q = args.quick;
    let ns = args.n.clone().unwrap_or_else(|| {
        if q {
            vec![1_000, 10_000]
        } else {
            vec![1_000, 10_000, 100_000, 1_000_000]
        }
    });
    let dims = args
        .dims
        .clone()
        .unwrap_or_else(|| if q { vec![10] } else { vec![4, 8, 10, 16, 32] });
    let ks = args
        .k
        .clone()
        .unwrap_or_else(|| if q { vec![10] } else { vec![1, 10, 50] });
    let sels =
        args.selectivity
            .clone()
            .unwrap_or_else(|| if q { vec![0.1] } else { vec![0.01, 0.1, 1.0] });
    let nq = args.queries.unwrap_or(if q { 10 } else { 20 }).max(1);
    let lanes: Vec<String> = match &args.lanes {
        Some(l) => l.clone(),
        None => ALL_LANES.iter().map(|s| s.to_string()).collect(),
    };
    for l in &lanes {
        if !ALL_LANES.contains(&l.as_str()) {
            bail!(
                "unknown lane `{l}` (this build has: {})",
                ALL_LANES.join(", ")
            );
        }
    }
    if args.leaf == 0 || args.leaf > blindkd_engine::crypto::mlhe::DEGREE {
        bail!("--leaf must be in 1..=8192");
    }
    let mut kinds: Vec<Kind> = ks.iter().map(|&k| Kind::Knn(k)).collect();
    kinds.extend(sels.iter().map(|&s| Kind::Range(s / 100.0)));
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;

    let machine = report::machine(threads);
    println!("blindkd bench: {machine}");
    println!(
        "grid: n {ns:?} × d {dims:?} × {:?}, {} distribution, {nq} held-out queries per cell, leaf {}, lanes {}",
        kinds.iter().map(|k| k.label()).collect::<Vec<_>>(),
        args.distribution.name(),
        args.leaf,
        lanes.join(",")
    );
    let has = |l: &str| lanes.iter().any(|x| x == l);
    let total_steps = (ns.len() * dims.len() * kinds.len() * lanes.len()) as u64;
    let bar = indicatif::ProgressBar::new(total_steps);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} {bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()?;

    let mut rows: Vec<Row> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    for &n in &ns {
        for &d in &dims {
            let data = data::make(n, d, nq, args.distribution.synth(), args.seed)?;
            let mut owner = OwnerKey::generate("bench-hospital")?;
            bar.set_message(format!("n={n} d={d}: building indexes"));
            // Indexes, built once per (n, d) and shared by the kinds.
            let plain = if has("plain") {
                Some(lanes::build(
                    &Plain::new(),
                    SchemeParams::Plain,
                    &mut owner,
                    "plain",
                    &data,
                    args.leaf,
                    None,
                    false,
                )?)
            } else {
                None
            };
            let mlhe = if has("mlhe") || has("mlhe-http") || has("mlhe-scan") {
                let m = Mlhe::new()?;
                let p = SchemeParams::Mlhe(m.params());
                Some(lanes::build(
                    &m,
                    p,
                    &mut owner,
                    "mlhe",
                    &data,
                    args.leaf,
                    None,
                    has("mlhe-scan"),
                )?)
            } else {
                None
            };
            #[cfg(feature = "paper-she")]
            let she_ok = n <= args.she_max_n;
            #[cfg(feature = "paper-she")]
            let mlhe1k = if has("mlhe-1k") && she_ok {
                let m = Mlhe::new()?;
                let p = SchemeParams::Mlhe(m.params());
                Some(lanes::build(
                    &m,
                    p,
                    &mut owner,
                    "mlhe-1k",
                    &data,
                    args.leaf.min(blindkd_engine::crypto::she::SHE_BLOCK),
                    None,
                    false,
                )?)
            } else {
                None
            };
            #[cfg(feature = "paper-she")]
            let she = if (has("paper-she") || has("paper-she-scan")) && she_ok {
                let mut id = [0u8; 16];
                rand::RngCore::fill_bytes(&mut rand::rng(), &mut id);
                let ck = owner.class_key(blindkd_engine::crypto::SchemeId::PaperShe, "", &id);
                let t = Instant::now();
                let (s, _key) = blindkd_keys::crypto::she::PaperSheClient::setup(&ck, &id)?;
                let keygen_s = t.elapsed().as_secs_f64();
                let p = SchemeParams::PaperShe(s.param_bytes()?);
                let mut b = lanes::build(
                    &s,
                    p,
                    &mut owner,
                    "paper-she",
                    &data,
                    args.leaf.min(blindkd_engine::crypto::she::SHE_BLOCK),
                    Some(id),
                    has("paper-she-scan"),
                )?;
                b.build_s += keygen_s;
                Some(b)
            } else {
                None
            };
            let ids_any: Option<&Built> = plain.as_ref().or(mlhe.as_ref());
            let ids: Vec<u64> = match ids_any {
                Some(b) => b.ids.clone(),
                None => (0..n as u64).collect(),
            };

            let mut http_lane = None;
            // The lanes, in report order: (name, lane, build s, load s, index bytes, ids).
            let mut active: Vec<ActiveLane<'_>> = Vec::new();
            if let Some(b) = &plain {
                active.push((
                    "plain".into(),
                    Box::new(lanes::TreeLane::new(b)?),
                    b.build_s,
                    b.load_s,
                    b.file_bytes,
                    &b.ids,
                ));
            }
            if has("kiddo") {
                match lanes::KiddoLane::new(&data, &ids) {
                    Some(k) => {
                        let bytes = (n * d * 8) as u64;
                        let bs = k.build_s;
                        active.push(("kiddo".into(), Box::new(k), bs, 0.0, bytes, &ids));
                    }
                    None => println!("kiddo: no tree compiled for d = {d}; lane skipped"),
                }
            }
            if let Some(b) = &mlhe {
                if has("mlhe") {
                    active.push((
                        "mlhe".into(),
                        Box::new(lanes::TreeLane::new(b)?),
                        b.build_s,
                        b.load_s,
                        b.file_bytes,
                        &b.ids,
                    ));
                }
                if has("mlhe-http") {
                    http_lane = Some(lanes::HttpLane::start(&rt, &owner, b)?);
                }
                if has("mlhe-scan") {
                    let s = lanes::ScanLane::new(Mlhe::new()?, b, &owner, &data)?;
                    active.push((
                        "mlhe-scan".into(),
                        Box::new(s),
                        b.build_s,
                        b.load_s,
                        b.file_bytes,
                        &b.ids,
                    ));
                }
            }
            #[cfg(feature = "paper-she")]
            {
                if let Some(b) = &mlhe1k {
                    active.push((
                        "mlhe-1k".into(),
                        Box::new(lanes::TreeLane::new(b)?),
                        b.build_s,
                        b.load_s,
                        b.file_bytes,
                        &b.ids,
                    ));
                }
                if let Some(b) = &she {
                    if has("paper-she") {
                        active.push((
                            "paper-she".into(),
                            Box::new(lanes::TreeLane::new(b)?),
                            b.build_s,
                            b.load_s,
                            b.file_bytes,
                            &b.ids,
                        ));
                    }
                    if has("paper-she-scan") {
                        let hdr = b.hosted.header().scheme.clone();
                        let SchemeParams::PaperShe(pb) = hdr else {
                            bail!("paper-she index with another scheme header");
                        };
                        let s = blindkd_keys::crypto::she::PaperSheClient::from_param_bytes(&pb)?;
                        let s = lanes::ScanLane::new(s, b, &owner, &data)?;
                        active.push((
                            "paper-she-scan".into(),
                            Box::new(s),
                            b.build_s,
                            b.load_s,
                            b.file_bytes,
                            &b.ids,
                        ));
                    }
                }
                if !she_ok && (has("paper-she") || has("paper-she-scan") || has("mlhe-1k")) {
                    println!(
                        "paper-she lanes skipped at n = {n} (> --she-max-n {})",
                        args.she_max_n
                    );
                }
            }
            if let (Some(h), Some(b)) = (&http_lane, &mlhe) {
                // Borrow of the HTTP lane for this (n, d): pushed last so it drops first.
                active.push((
                    "mlhe-http".into(),
                    Box::new(LaneRef(h)),
                    b.build_s,
                    b.load_s,
                    b.file_bytes,
                    &b.ids,
                ));
            }

            // Warm-up: one query per lane (not recorded).
            for (_, lane, ..) in &active {
                let q = Query {
                    kind: QueryKind::Knn { k: 1 },
                    q: &data.queries[0],
                    q_user: &data.queries_user[0],
                    threshold: 0,
                };
                lane.run(&q)?;
            }

            for &kind in &kinds {
                // Per query: the oracle's answer and the concrete query.
                let mut cell: Vec<CellQuery> = Vec::with_capacity(nq);
                for qi in 0..nq {
                    let all = data::distances(&data, &ids, &data.queries[qi]);
                    cell.push(match kind {
                        Kind::Knn(k) => (QueryKind::Knn { k }, 0, data::knn_truth(all, k as usize)),
                        Kind::Range(f) => {
                            let (r, thr) = data::radius_for(&data.schema, &all, f)?;
                            (
                                QueryKind::Range { radius: r },
                                thr,
                                data::range_truth(&all, thr),
                            )
                        }
                    });
                }
                let mut cell_rows: Vec<Row> = Vec::new();
                for (name, lane, build_s, load_s, bytes, lane_ids) in &active {
                    bar.set_message(format!("n={n} d={d} {} {name}", kind.label()));
                    // Oracle answers are in the ids of the index the oracle was computed on; lanes
                    // with their own index (ids differ) get their own oracle.
                    let own = *lane_ids != ids.as_slice();
                    let mut samples = Vec::with_capacity(nq);
                    let mut bad = 0usize;
                    for (qi, (qk, thr, truth)) in cell.iter().enumerate() {
                        let query = Query {
                            kind: *qk,
                            q: &data.queries[qi],
                            q_user: &data.queries_user[qi],
                            threshold: *thr,
                        };
                        let s = lane.run(&query)?;
                        let own_truth;
                        let want = if own {
                            let all = data::distances(&data, lane_ids, &data.queries[qi]);
                            own_truth = match kind {
                                Kind::Knn(k) => data::knn_truth(all, k as usize),
                                Kind::Range(_) => data::range_truth(&all, *thr),
                            };
                            &own_truth
                        } else {
                            truth
                        };
                        let check = if lane.exact_ties() {
                            data::compare(&s.hits, want)
                        } else {
                            data::compare_untied(&s.hits, want)
                        };
                        if let Err(e) = check {
                            bad += 1;
                            let msg = format!(
                                "RECALL FAILURE: lane {name}, n={n}, d={d}, {}, query {qi}: {e}",
                                kind.label()
                            );
                            eprintln!("{msg}");
                            failures.push(msg);
                        }
                        samples.push(s);
                    }
                    let row = report::summarise(
                        report::CellKey {
                            distribution: args.distribution.name().into(),
                            n,
                            d,
                            query: kind.label(),
                            lane: name.clone(),
                        },
                        &samples,
                        bad,
                        *build_s,
                        *load_s,
                        *bytes,
                    );
                    if bar.is_hidden() {
                        println!("{}", row.one_line());
                    } else {
                        bar.println(row.one_line());
                    }
                    cell_rows.push(row);
                    bar.inc(1);
                }
                report::add_ratios(&mut cell_rows);
                rows.extend(cell_rows);
                // Write after every cell so a long run leaves usable partial results.
                report::write_all(&args.out, &rows, &machine, args)?;
            }
            drop(active);
            if let Some(h) = http_lane.take() {
                h.stop()?;
            };
        }
    }
    bar.finish_and_clear();
    report::write_all(&args.out, &rows, &machine, args)?;
    println!(
        "wrote {}/bench.csv, bench.md, bench-knn.svg, bench-range.svg in {:.1} s",
        args.out.display(),
        t_all.elapsed().as_secs_f64()
    );
    if !failures.is_empty() {
        bail!(
            "{} query answers differ from the brute-force oracle (recall < 1.0); first: {}",
            failures.len(),
            failures[0]
        );
    }
    Ok(())
}

/// A lane of a cell: name, lane, build s, load s, index bytes, record ids of its index.
type ActiveLane<'a> = (String, Box<dyn Lane + 'a>, f64, f64, u64, &'a [u64]);
/// One query of a cell: the query, its range threshold, the oracle's answer.
type CellQuery = (QueryKind, u128, Vec<(u64, u128)>);

/// A borrowed lane.
struct LaneRef<'a, L: Lane>(&'a L);

impl<L: Lane> Lane for LaneRef<'_, L> {
    fn run(&self, q: &Query<'_>) -> anyhow::Result<Sample> {
        self.0.run(q)
    }
}

use lanes::Sample;
