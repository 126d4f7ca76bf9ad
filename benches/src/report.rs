//! Summaries and the CSV / Markdown / SVG outputs.

use std::fmt::Write as _;
use std::path::Path;

use crate::lanes::Sample;
use crate::BenchArgs;

/// Identifies one (cell, lane).
#[derive(Clone, Debug)]
pub struct CellKey {
    /// Value distribution.
    pub distribution: String,
    /// Records.
    pub n: usize,
    /// Dimension.
    pub d: usize,
    /// Query kind label.
    pub query: String,
    /// Lane name.
    pub lane: String,
}

/// One line of the report: a lane on a cell.
#[derive(Clone, Debug)]
pub struct Row {
    /// The cell and lane.
    pub key: CellKey,
    /// Queries measured.
    pub queries: usize,
    /// Queries whose answer differed from the oracle.
    pub failures: usize,
    /// Index build (owner side), s.
    pub build_s: f64,
    /// Index load + block preparation (server side), s.
    pub load_s: f64,
    /// Index file size.
    pub index_bytes: u64,
    /// Server compute, ms: p50, p95, max.
    pub server_ms: [f64; 3],
    /// Client compute, ms: p50, p95, max.
    pub client_ms: [f64; 3],
    /// Wall time, ms: p50, p95, max.
    pub e2e_ms: [f64; 3],
    /// Medians of: rounds, pivot blocks, leaf blocks, records evaluated, bytes up, bytes down, results.
    pub med: [f64; 7],
    /// Fraction of queries answered exactly (must be 1).
    pub recall: f64,
    /// e2e p50 / plain's e2e p50 in the same cell.
    pub e2e_vs_plain: Option<f64>,
    /// server p50 / plain's server p50.
    pub server_vs_plain: Option<f64>,
    /// e2e p50 / kiddo's e2e p50.
    pub e2e_vs_kiddo: Option<f64>,
}

/// Nearest-rank percentile of unsorted values.
pub fn pct(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let i = ((p * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1;
    s[i]
}

fn three(v: &[f64]) -> [f64; 3] {
    [pct(v, 0.5), pct(v, 0.95), pct(v, 1.0)]
}

/// Summarises a lane's samples on a cell.
pub fn summarise(
    key: CellKey,
    samples: &[Sample],
    failures: usize,
    build_s: f64,
    load_s: f64,
    index_bytes: u64,
) -> Row {
    let col = |f: &dyn Fn(&Sample) -> f64| -> Vec<f64> { samples.iter().map(f).collect() };
    let ms = 1e-3;
    let med = [
        pct(&col(&|s| s.stats.rounds as f64), 0.5),
        pct(&col(&|s| s.stats.pivot_blocks as f64), 0.5),
        pct(&col(&|s| s.stats.leaf_blocks as f64), 0.5),
        pct(&col(&|s| s.stats.records_evaluated as f64), 0.5),
        pct(&col(&|s| s.stats.bytes_up as f64), 0.5),
        pct(&col(&|s| s.stats.bytes_down as f64), 0.5),
        pct(&col(&|s| s.hits.len() as f64), 0.5),
    ];
    Row {
        key,
        queries: samples.len(),
        failures,
        build_s,
        load_s,
        index_bytes,
        server_ms: three(&col(&|s| s.server_us * ms)),
        client_ms: three(&col(&|s| s.client_us * ms)),
        e2e_ms: three(&col(&|s| s.e2e_us * ms)),
        med,
        recall: if samples.is_empty() {
            0.0
        } else {
            (samples.len() - failures) as f64 / samples.len() as f64
        },
        e2e_vs_plain: None,
        server_vs_plain: None,
        e2e_vs_kiddo: None,
    }
}

/// Fills the ratio columns of one cell's rows.
pub fn add_ratios(rows: &mut [Row]) {
    let find = |name: &str| rows.iter().find(|r| r.key.lane == name).cloned();
    let plain = find("plain");
    let kiddo = find("kiddo");
    for r in rows.iter_mut() {
        if let Some(p) = &plain {
            r.e2e_vs_plain = Some(r.e2e_ms[0] / p.e2e_ms[0]);
            r.server_vs_plain = Some(r.server_ms[0] / p.server_ms[0]);
        }
        if let Some(k) = &kiddo {
            r.e2e_vs_kiddo = Some(r.e2e_ms[0] / k.e2e_ms[0]);
        }
    }
}

impl Row {
    /// A progress line.
    pub fn one_line(&self) -> String {
        format!(
            "n={:>7} d={:>2} {:<14} {:<15} e2e p50 {:>9.3} ms (server {:>8.3}, client {:>8.3}) blocks {:>5} records {:>8} recall {}",
            self.key.n,
            self.key.d,
            self.key.query,
            self.key.lane,
            self.e2e_ms[0],
            self.server_ms[0],
            self.client_ms[0],
            self.med[1] + self.med[2],
            self.med[3],
            self.recall
        )
    }
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(String::new, |x| format!("{x:.3}"))
}

const CSV_HEADER: &str =
    "distribution,n,d,query,lane,queries,failures,recall,build_s,load_s,index_bytes,\
server_p50_ms,server_p95_ms,server_max_ms,client_p50_ms,client_p95_ms,client_max_ms,\
e2e_p50_ms,e2e_p95_ms,e2e_max_ms,rounds_p50,pivot_blocks_p50,leaf_blocks_p50,records_p50,\
bytes_up_p50,bytes_down_p50,results_p50,e2e_vs_plain,server_vs_plain,e2e_vs_kiddo";

fn csv(rows: &[Row]) -> String {
    let mut s = String::from(CSV_HEADER);
    s.push('\n');
    for r in rows {
        let k = &r.key;
        let _ = write!(
            s,
            "{},{},{},{},{},{},{},{},{:.3},{:.3},{}",
            k.distribution,
            k.n,
            k.d,
            k.query,
            k.lane,
            r.queries,
            r.failures,
            r.recall,
            r.build_s,
            r.load_s,
            r.index_bytes
        );
        for v in r.server_ms.iter().chain(&r.client_ms).chain(&r.e2e_ms) {
            let _ = write!(s, ",{v:.3}");
        }
        for v in &r.med {
            let _ = write!(s, ",{v}");
        }
        let _ = writeln!(
            s,
            ",{},{},{}",
            opt(r.e2e_vs_plain),
            opt(r.server_vs_plain),
            opt(r.e2e_vs_kiddo)
        );
    }
    s
}

fn human_bytes(b: f64) -> String {
    if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.0} kB", b / 1e3)
    } else {
        format!("{b:.0} B")
    }
}

fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

fn markdown(rows: &[Row], machine: &str, args: &BenchArgs) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# blindkd bench\n");
    let _ = writeln!(s, "Machine: {machine}  ");
    let _ = writeln!(
        s,
        "Distribution {}, seed {}, leaf {}, quick = {}. Times in ms (p50 / p95 / max over the held-out \
         queries); blocks = pivot + leaf blocks evaluated; records = records whose distance the client \
         opened; ×plain and ×kiddo = e2e p50 over the same cell's plain / kiddo e2e p50. Every \
         answer was compared with a brute-force oracle (ids and squared distances).\n",
        args.distribution.name(),
        args.seed,
        args.leaf,
        args.quick
    );
    let _ = writeln!(
        s,
        "| n | d | query | lane | build s | load s | index | server p50/p95 | client p50 | e2e p50 / p95 / max | rounds | blocks | records | up | down | results | recall | ×plain | ×kiddo |"
    );
    let _ = writeln!(
        s,
        "|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in rows {
        let k = &r.key;
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.2} | {:.2} | {} | {} / {} | {} | {} / {} / {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            k.n,
            k.d,
            k.query,
            k.lane,
            r.build_s,
            r.load_s,
            human_bytes(r.index_bytes as f64),
            ms(r.server_ms[0]),
            ms(r.server_ms[1]),
            ms(r.client_ms[0]),
            ms(r.e2e_ms[0]),
            ms(r.e2e_ms[1]),
            ms(r.e2e_ms[2]),
            r.med[0],
            r.med[1] + r.med[2],
            r.med[3],
            human_bytes(r.med[4]),
            human_bytes(r.med[5]),
            r.med[6],
            r.recall,
            r.e2e_vs_plain.map_or_else(|| "–".into(), |x| format!("{x:.1}")),
            r.e2e_vs_kiddo.map_or_else(|| "–".into(), |x| format!("{x:.0}")),
        );
    }
    s
}

/// e2e p50 against n, one line per lane, for the first d and the first query kind matching `kind`.
fn plot(rows: &[Row], kind: &str, path: &Path) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let Some(first) = rows.iter().find(|r| r.key.query.starts_with(kind)) else {
        return Ok(());
    };
    let (d, query) = (first.key.d, first.key.query.clone());
    let sel: Vec<&Row> = rows
        .iter()
        .filter(|r| r.key.d == d && r.key.query == query && r.e2e_ms[0] > 0.0)
        .collect();
    let mut lanes: Vec<String> = Vec::new();
    for r in &sel {
        if !lanes.contains(&r.key.lane) {
            lanes.push(r.key.lane.clone());
        }
    }
    let nmin = sel.iter().map(|r| r.key.n).min().unwrap_or(1) as f64;
    let nmax = sel.iter().map(|r| r.key.n).max().unwrap_or(10) as f64;
    let ymin = sel
        .iter()
        .map(|r| r.e2e_ms[0])
        .fold(f64::INFINITY, f64::min);
    let ymax = sel.iter().map(|r| r.e2e_ms[0]).fold(0.0, f64::max);
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    let err = |e: DrawingAreaErrorKind<_>| anyhow::anyhow!("plotting {}: {e:?}", path.display());
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("blindkd: {query}, d = {d}: end-to-end p50 latency (ms) vs records"),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(
            ((nmin / 2.0)..(nmax * 2.0)).log_scale(),
            ((ymin / 2.0)..(ymax * 2.0)).log_scale(),
        )
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("records n")
        .y_desc("e2e p50, ms")
        .draw()
        .map_err(err)?;
    for (i, lane) in lanes.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let mut pts: Vec<(f64, f64)> = sel
            .iter()
            .filter(|r| &r.key.lane == lane)
            .map(|r| (r.key.n as f64, r.e2e_ms[0]))
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(err)?
            .label(lane.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// Writes bench.csv, bench.md and the two SVG plots into `out`.
pub fn write_all(out: &Path, rows: &[Row], machine: &str, args: &BenchArgs) -> anyhow::Result<()> {
    std::fs::write(out.join("bench.csv"), csv(rows))?;
    std::fs::write(out.join("bench.md"), markdown(rows, machine, args))?;
    plot(rows, "kNN", &out.join("bench-knn.svg"))?;
    plot(rows, "range", &out.join("bench-range.svg"))?;
    Ok(())
}

/// One line describing the machine: cores, CPU model, memory, rayon threads.
pub fn machine(threads: usize) -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("unknown CPU", str::trim)
        .to_string();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or_else(|| "? GB".into(), |kb| format!("{:.1} GB", kb / 1048576.0));
    format!("{cores} cores ({model}), {mem} RAM, {threads} rayon threads")
}
