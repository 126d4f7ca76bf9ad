//! The `blindkd` command line: every flag lives here; the libraries do the work.

mod audit;
mod demo;
mod revoke;
mod rotate;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use blindkd_engine::crypto::SchemeId;
use blindkd_engine::protocol::QueryKind;
use blindkd_indexer::build::{IndexJob, DEFAULT_BITS};
use blindkd_indexer::dataset::{ClassSource, ColumnSel, LoadOptions, MissingPolicy};
use blindkd_indexer::schema::Scaling;
use blindkd_keys::owner::{Bundle, OwnerKey};
use blindkd_keys::token::{self, Claims, DeviceKey, DevicePublic, IssuerKey, Scope};
use clap::{Args, Parser, Subcommand, ValueEnum};

pub use audit::{AuditCmd, AuditVerifyArgs};
pub use demo::demo;
pub use rotate::{RotateCmd, RotateSigningArgs};

/// blindkd: exact similarity search over an encrypted k-d tree index of patient records.
#[derive(Parser, Debug)]
#[command(name = "blindkd", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Hospital: create the owner key (`X.key`, mode 0600) and the issuer public key (`X.pub`).
    Keygen(KeygenArgs),
    /// Hospital: build an encrypted index from a CSV file.
    Index(IndexArgs),
    /// Show what the server sees of an index: format, scheme, parameters, shape, sizes. Never a value.
    Inspect(InspectArgs),
    /// Generate a synthetic CSV for benchmarks.
    Synth(SynthArgs),
    /// Cloud: serve indexes blind.
    Serve(blindkd_server::ServeCmd),
    /// Doctor's device: create a device key pair (`X`, `X.pub`).
    DeviceKey(DeviceKeyArgs),
    /// Access tokens: issue, show, revoke.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Key bundles for doctors' devices.
    #[command(subcommand)]
    Bundle(BundleCmd),
    /// Doctor: run a kNN or range query.
    Query(QueryArgs),
    /// The whole product end to end on the bundled Cleveland heart data.
    Demo(DemoArgs),
    /// Benchmark grid (see benches/README.md).
    Bench(blindkd_benches::BenchArgs),
    /// Bounded load test against a loopback server (see benches/README.md).
    Load(blindkd_benches::load::LoadArgs),
    /// Server audit logs: verify the hash chain.
    #[command(subcommand)]
    Audit(audit::AuditCmd),
    /// Hospital: rotate keys (the token- and bundle-signing key).
    #[command(subcommand)]
    Rotate(rotate::RotateCmd),
}

/// `keygen`.
#[derive(Args, Debug)]
pub struct KeygenArgs {
    /// Output key file; the public key goes next to it as `.pub`, an empty signed revocation
    /// list as `.revoked`.
    #[arg(long)]
    pub out: PathBuf,
    /// Issuer name (the token `iss`).
    #[arg(long, default_value = "hospital")]
    pub issuer: String,
    /// Replace an existing key file (its indexes become unreadable for new bundles).
    #[arg(long)]
    pub force: bool,
}

/// Scheme choice.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchemeArg {
    /// Masked index + BFV (secure default).
    Mlhe,
    /// No encryption (testing and benchmarks only).
    Plain,
    /// The published SHE scheme: BROKEN, needs --insecure-paper-scheme.
    PaperShe,
}

/// Missing-cell policy.
#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum MissingArg {
    /// Skip rows with a missing cell and report the count.
    SkipRow,
    /// Stop at the first missing cell.
    Error,
}

/// `index`.
#[derive(Args, Debug)]
pub struct IndexArgs {
    /// Owner key.
    #[arg(long)]
    pub key: PathBuf,
    /// Input CSV.
    #[arg(long)]
    pub input: PathBuf,
    /// Output index file.
    #[arg(long)]
    pub out: PathBuf,
    /// Feature columns (names, or `#i` indexes); default: every numeric column not used otherwise.
    #[arg(long, value_delimiter = ',')]
    pub columns: Option<Vec<String>>,
    /// Record id column; default: the 0-based data row number.
    #[arg(long)]
    pub id_column: Option<String>,
    /// Column holding each record's policy class.
    #[arg(long, conflicts_with = "class")]
    pub class_column: Option<String>,
    /// One policy class for every record.
    #[arg(long)]
    pub class: Option<String>,
    /// Columns sealed as the payload (returned only for result records).
    #[arg(long, value_delimiter = ',')]
    pub payload_columns: Vec<String>,
    /// Uniform fixed-point scale (encoded = value × scale).
    #[arg(long, conflicts_with = "normalize")]
    pub scale: Option<f64>,
    /// Normalisation: `zscore` (distances then read in standard deviations).
    #[arg(long)]
    pub normalize: Option<String>,
    /// Bit budget per encoded value.
    #[arg(long, default_value_t = DEFAULT_BITS)]
    pub bits: u32,
    /// Integer column weights, in column order.
    #[arg(long, value_delimiter = ',')]
    pub weights: Option<Vec<u32>>,
    /// Scheme.
    #[arg(long, value_enum, default_value_t = SchemeArg::Mlhe)]
    pub scheme: SchemeArg,
    /// Required with `--scheme paper-she`: acknowledges that scheme is broken.
    #[arg(long)]
    pub insecure_paper_scheme: bool,
    /// The input has no header row (refer to columns as `#0`, `#1`, ...).
    #[arg(long)]
    pub no_header: bool,
    /// Lines to skip before the data/header.
    #[arg(long, default_value_t = 0)]
    pub skip_lines: usize,
    /// Missing cells (`?`, empty, NA).
    #[arg(long, value_enum, default_value_t = MissingArg::SkipRow)]
    pub missing: MissingArg,
    /// Records per leaf block (default: the scheme's block size).
    #[arg(long)]
    pub leaf_size: Option<usize>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `inspect`.
#[derive(Args, Debug)]
pub struct InspectArgs {
    /// The index file.
    pub file: PathBuf,
    /// JSON output.
    #[arg(long)]
    pub json: bool,
}

/// Synthetic distribution.
#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum DistArg {
    /// Uniform.
    Uniform,
    /// Gaussian.
    Gaussian,
    /// Clustered.
    Clustered,
}

/// `synth`.
#[derive(Args, Debug)]
pub struct SynthArgs {
    /// Records.
    #[arg(long)]
    pub n: usize,
    /// Dimensions.
    #[arg(long, default_value_t = 10)]
    pub dims: usize,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Distribution.
    #[arg(long, value_enum, default_value_t = DistArg::Clustered)]
    pub distribution: DistArg,
    /// Realistic medical column names and ranges.
    #[arg(long)]
    pub medical: bool,
    /// Policy classes (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "cardiology")]
    pub classes: Vec<String>,
    /// Output CSV.
    #[arg(long)]
    pub out: PathBuf,
}

/// `device-key`.
#[derive(Args, Debug)]
pub struct DeviceKeyArgs {
    /// Output secret key file (mode 0600); the public key goes to `X.pub`.
    #[arg(long)]
    pub out: PathBuf,
}

/// `token ...`.
#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Issue a signed access token as a QR image (and text).
    Issue(TokenIssueArgs),
    /// Scan a token (QR image or text file) and print its claims, verified if `--issuer` is given.
    Show(TokenShowArgs),
    /// Add a token to a revocation list the server re-reads.
    Revoke(TokenRevokeArgs),
}

/// `token issue`.
#[derive(Args, Debug)]
pub struct TokenIssueArgs {
    /// Owner key.
    #[arg(long)]
    pub key: PathBuf,
    /// The doctor (token subject).
    #[arg(long)]
    pub subject: String,
    /// Index id (hex) or index name the token is for.
    #[arg(long)]
    pub audience: String,
    /// Classes the doctor may query.
    #[arg(long, value_delimiter = ',', required = true)]
    pub classes: Vec<String>,
    /// Query kinds: knn, range.
    #[arg(long, value_delimiter = ',', default_value = "knn,range")]
    pub kinds: Vec<String>,
    /// Largest k.
    #[arg(long, default_value_t = 50)]
    pub max_k: u32,
    /// Largest range radius (user units).
    #[arg(long, default_value_t = 5.0)]
    pub max_radius: f64,
    /// Budget in units of work over the token's life: one unit per block the server evaluates
    /// (pivot or leaf) and one per payload it serves.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
    pub budget: u32,
    /// Most leaf blocks one query may evaluate (each leaf opens the distances of its records).
    /// At 10^6 records a kNN query (k = 10) needs up to 18 leaves of 8192.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_blocks: u32,
    /// Most payloads one range query may fetch (a kNN query may fetch at most k).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_results: u32,
    /// Lifetime, e.g. 8h, 30m, 2d.
    #[arg(long, default_value = "8h")]
    pub ttl: String,
    /// The doctor's device public key file (`doctor.device.pub`).
    #[arg(long)]
    pub device: PathBuf,
    /// Output PNG.
    #[arg(long)]
    pub out: PathBuf,
    /// Also write an SVG next to it.
    #[arg(long)]
    pub svg: bool,
    /// Also write the token text (`.txt`).
    #[arg(long)]
    pub text: bool,
}

/// `token show`.
#[derive(Args, Debug)]
pub struct TokenShowArgs {
    /// Token image (PNG/JPEG) or text file.
    pub token: PathBuf,
    /// Verify against this issuer public key file.
    #[arg(long)]
    pub issuer: Option<PathBuf>,
    /// JSON output.
    #[arg(long)]
    pub json: bool,
}

/// `token revoke`.
#[derive(Args, Debug)]
pub struct TokenRevokeArgs {
    /// Owner key (the token must carry its signature).
    #[arg(long)]
    pub key: PathBuf,
    /// Token image or text file.
    #[arg(long)]
    pub token: PathBuf,
    /// The signed revocation list to append to (`keygen` writes an empty one beside the key as
    /// `<key>.revoked`; created if missing). Locked while it changes.
    #[arg(long, alias = "out")]
    pub list: PathBuf,
}

/// `bundle ...`.
#[derive(Subcommand, Debug)]
pub enum BundleCmd {
    /// Seal the query keys of some classes to a doctor's device key.
    Issue(BundleIssueArgs),
}

/// `bundle issue`.
#[derive(Args, Debug)]
pub struct BundleIssueArgs {
    /// Owner key.
    #[arg(long)]
    pub key: PathBuf,
    /// The device public key file.
    #[arg(long)]
    pub device: PathBuf,
    /// Classes granted.
    #[arg(long, value_delimiter = ',', required = true)]
    pub classes: Vec<String>,
    /// Only this index (id or name); default: every index with those classes.
    #[arg(long)]
    pub index: Option<String>,
    /// Output bundle file.
    #[arg(long)]
    pub out: PathBuf,
}

/// `query`.
#[derive(Args, Debug)]
pub struct QueryArgs {
    /// Server base URL.
    #[arg(long, default_value = "http://127.0.0.1:8700")]
    pub server: String,
    /// Access token (QR image or text file).
    #[arg(long)]
    pub token: PathBuf,
    /// Device secret key file.
    #[arg(long)]
    pub device: PathBuf,
    /// Sealed key bundle.
    #[arg(long)]
    pub bundle: PathBuf,
    /// The hospital's issuer public key (`hospital.key.pub`), pinned when this device was
    /// enrolled: the bundle must carry its signature. Repeatable.
    #[arg(long, required = true)]
    pub issuer: Vec<PathBuf>,
    /// Allow an index whose scheme is not mlhe (`plain`, `paper-she`): the query is then NOT
    /// hidden from the server. Tests and benchmarks only.
    #[arg(long)]
    pub insecure_scheme: bool,
    /// k nearest records.
    #[arg(long, conflicts_with = "range")]
    pub knn: Option<u32>,
    /// Every record within this distance (user units).
    #[arg(long)]
    pub range: Option<f64>,
    /// The patient's feature values, in schema column order.
    #[arg(
        long,
        value_delimiter = ',',
        allow_hyphen_values = true,
        required = true
    )]
    pub vector: Vec<f64>,
    /// Restrict to these classes.
    #[arg(long, value_delimiter = ',')]
    pub classes: Vec<String>,
    /// Do not fetch payloads.
    #[arg(long)]
    pub no_payloads: bool,
    /// JSON output.
    #[arg(long)]
    pub json: bool,
}

/// `demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Working directory for the generated files (default: a temporary directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// k for the kNN query.
    #[arg(long, default_value_t = 5)]
    pub k: u32,
    /// Radius for the range query (standard deviations).
    #[arg(long, default_value_t = 2.5)]
    pub radius: f64,
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Serve(s) => {
            blindkd_server::init_logging(s.log_json);
            let cfg = s.config()?;
            runtime()?.block_on(blindkd_server::run(cfg, s.listen, s.admin()))
        }
        other => {
            init_cli_logging();
            match other {
                Cmd::Keygen(a) => keygen(&a),
                Cmd::Index(a) => index(&a),
                Cmd::Inspect(a) => inspect(&a),
                Cmd::Synth(a) => synth(&a),
                Cmd::DeviceKey(a) => device_key(&a),
                Cmd::Token(TokenCmd::Issue(a)) => token_issue(&a),
                Cmd::Token(TokenCmd::Show(a)) => token_show(&a),
                Cmd::Token(TokenCmd::Revoke(a)) => revoke::token_revoke(&a),
                Cmd::Bundle(BundleCmd::Issue(a)) => bundle_issue(&a),
                Cmd::Query(a) => query(&a),
                Cmd::Demo(a) => demo(&a),
                Cmd::Bench(a) => blindkd_benches::run(&a),
                Cmd::Load(a) => blindkd_benches::load::run(&a),
                Cmd::Audit(a) => audit::run(&a),
                Cmd::Rotate(a) => rotate::run(&a),
                Cmd::Serve(_) => unreachable!("handled above"),
            }
        }
    }
}

fn init_cli_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

pub(crate) fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A name or id from a file or a server, safe to print: control characters (which could move the
/// cursor or rewrite what a terminal shows) are escaped.
pub(crate) fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    if s.chars().any(char::is_control) {
        std::borrow::Cow::Owned(s.chars().flat_map(char::escape_debug).collect())
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// A byte count in MiB, one decimal.
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

/// `X.pub` next to `X`.
pub fn pub_path(p: &Path) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

fn keygen(a: &KeygenArgs) -> anyhow::Result<()> {
    if a.out.exists() && !a.force {
        bail!("{} exists; pass --force to replace it (bundles for its indexes could no longer be issued)", a.out.display());
    }
    let owner = OwnerKey::generate(&a.issuer)?;
    let pubp = save_owner_key(&owner, &a.out)?;
    let list = revoke::list_path(&a.out);
    revoke::write_empty(&owner, &list)?;
    println!("owner key: {} (mode 0600; keep it secret)", a.out.display());
    println!(
        "issuer public key: {} (give it to the query server: --issuer)",
        pubp.display()
    );
    println!(
        "revocation list: {} (signed, empty; give it to the query server: --revoked; `token revoke` appends to it)",
        list.display()
    );
    Ok(())
}

pub(crate) fn sel(s: &str) -> ColumnSel {
    match s.strip_prefix('#').and_then(|i| i.parse().ok()) {
        Some(i) => ColumnSel::Index(i),
        None => ColumnSel::Name(s.to_string()),
    }
}

fn index(a: &IndexArgs) -> anyhow::Result<()> {
    let scheme = match a.scheme {
        SchemeArg::Mlhe => SchemeId::Mlhe,
        SchemeArg::Plain => SchemeId::Plain,
        SchemeArg::PaperShe => {
            if !a.insecure_paper_scheme {
                bail!(
                    "--scheme paper-she is the published SHE scheme, which is BROKEN: its key falls to a \
                     lattice (approximate-common-divisor) attack from three ciphertexts. It exists only to \
                     reproduce the paper's numbers. Pass --insecure-paper-scheme to build it anyway."
                );
            }
            SchemeId::PaperShe
        }
    };
    let mut owner =
        OwnerKey::load(&a.key).with_context(|| format!("loading owner key {}", a.key.display()))?;
    let opts = LoadOptions {
        has_header: !a.no_header,
        skip_lines: a.skip_lines,
        delimiter: None,
        columns: a
            .columns
            .as_ref()
            .map(|c| c.iter().map(|s| sel(s)).collect()),
        id_column: a.id_column.as_deref().map(sel),
        class: match (&a.class_column, &a.class) {
            (Some(c), _) => ClassSource::Column(sel(c)),
            (None, Some(c)) => ClassSource::Fixed(c.clone()),
            (None, None) => ClassSource::Fixed("default".into()),
        },
        payload_columns: a.payload_columns.iter().map(|s| sel(s)).collect(),
        missing: match a.missing {
            MissingArg::SkipRow => MissingPolicy::SkipRow,
            MissingArg::Error => MissingPolicy::Error,
        },
        ..LoadOptions::default()
    };
    let ds = blindkd_indexer::dataset::load(&a.input, &opts)
        .with_context(|| format!("reading {}", a.input.display()))?;
    let scaling = match (&a.normalize, a.scale) {
        (Some(n), _) if n == "zscore" => Some(Scaling::ZScore {
            sigma_units: 1000.0,
        }),
        (Some(n), _) => bail!("unknown normalisation `{n}` (supported: zscore)"),
        (None, Some(s)) => Some(Scaling::Uniform(s)),
        (None, None) => None,
    };
    let job = IndexJob {
        scheme,
        scaling,
        bits: a.bits,
        weights: a.weights.clone(),
        leaf_size: a.leaf_size,
        out: a.out.clone(),
        progress: !a.json && std::io::IsTerminal::is_terminal(&std::io::stderr()),
        owner_key: Some(a.key.clone()),
    };
    let (report, _) = blindkd_indexer::build::build(&mut owner, ds, &job)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("index {} written to {}", report.index_id, report.path);
        println!(
            "  scheme {}, {} records, {} columns, {} bytes",
            report.scheme,
            report.records,
            report.columns.len(),
            report.file_bytes
        );
        if report.rows_skipped_missing > 0 {
            println!(
                "  skipped {} rows with missing cells",
                report.rows_skipped_missing
            );
        }
        for (c, n) in &report.classes {
            println!("  class {c}: {n} records");
        }
        println!(
            "  server memory once loaded: {} (projected; a server refuses an index above its \
             --max-index-memory, default 16GiB)",
            mib(report.server_memory_bytes)
        );
        let default_cap = blindkd_engine::index::LoadLimits::default().max_memory;
        if report.server_memory_bytes > default_cap {
            eprintln!(
                "warning: {} is above a server's default limit; use larger leaves (--leaf-size) \
                 or fewer classes",
                mib(report.server_memory_bytes)
            );
        }
        println!(
            "  sealed in {:.2} s, written in {:.2} s",
            report.build_seconds, report.write_seconds
        );
        println!(
            "  the schema is recorded in {} (never in the index)",
            a.key.display()
        );
    }
    Ok(())
}

fn inspect(a: &InspectArgs) -> anyhow::Result<()> {
    let bytes = blindkd_engine::index::read_file(&a.file)?;
    let s = blindkd_engine::index::summarize(&bytes, &a.file)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    println!(
        "{}: blindkd index, format version {}",
        a.file.display(),
        s.format_version
    );
    println!("  index id     {}", s.index_id);
    println!("  scheme       {} ({})", s.scheme, s.params);
    println!("  dimension    {}", s.dim);
    println!("  records      {}", s.records);
    println!("  leaf blocks  ≤ {} records", s.block_capacity);
    println!("  file size    {} bytes", s.file_bytes);
    println!(
        "  server memory {} once loaded (projected; bounded by --max-index-memory)",
        mib(s.server_memory_bytes)
    );
    for c in &s.classes {
        println!(
            "  class {:<14} {} records, {} nodes, {} leaves, depth {}, {} pivot block(s)",
            printable(&c.class),
            c.records,
            c.nodes,
            c.leaves,
            c.depth,
            c.pivot_blocks
        );
    }
    println!("  (values, masks, keys and the schema are not in this file)");
    Ok(())
}

fn synth(a: &SynthArgs) -> anyhow::Result<()> {
    use blindkd_indexer::synth::{write_csv, Distribution, SynthSpec};
    let spec = SynthSpec {
        n: a.n,
        dims: a.dims,
        seed: a.seed,
        distribution: match a.distribution {
            DistArg::Uniform => Distribution::Uniform,
            DistArg::Gaussian => Distribution::Gaussian,
            DistArg::Clustered => Distribution::Clustered,
        },
        medical_columns: a.medical,
        classes: a.classes.clone(),
    };
    let tmp = a.out.with_extension("csv.tmp");
    let f = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    write_csv(&spec, std::io::BufWriter::new(f))?;
    std::fs::rename(&tmp, &a.out)?;
    println!(
        "wrote {} records × {} dims to {}",
        a.n,
        a.dims,
        a.out.display()
    );
    Ok(())
}

fn device_key(a: &DeviceKeyArgs) -> anyhow::Result<()> {
    if a.out.exists() {
        bail!(
            "{} exists; refusing to overwrite a device key",
            a.out.display()
        );
    }
    let p = save_device_key(&DeviceKey::random(), &a.out)?;
    println!(
        "device key: {} (mode 0600, stays on the device)",
        a.out.display()
    );
    println!(
        "device public key: {} (give it to the hospital)",
        p.display()
    );
    Ok(())
}

/// Writes the owner key (mode 0600) and, beside it, its issuer line (`.pub`, for the query
/// server); returns the `.pub` path.
/// Saves the owner key (0600) and, beside it, the issuer file servers and devices pin: one line
/// per signing key still valid (previous ones first, the current one last).
pub(crate) fn save_owner_key(owner: &OwnerKey, path: &Path) -> anyhow::Result<PathBuf> {
    owner.save(path)?;
    let lines: String = owner
        .issuer_publics()?
        .iter()
        .map(|k| token::issuer_line(owner.issuer(), k))
        .collect();
    let pubp = pub_path(path);
    blindkd_engine::atomic::write(&pubp, lines.as_bytes())?;
    Ok(pubp)
}

/// Writes a device key (mode 0600) and, beside it, its public half (`.pub`, for the hospital);
/// returns the `.pub` path.
pub(crate) fn save_device_key(device: &DeviceKey, path: &Path) -> anyhow::Result<PathBuf> {
    blindkd_engine::atomic::write_private(path, &device.to_file_bytes())?;
    let pubp = pub_path(path);
    blindkd_engine::atomic::write(&pubp, format!("{}\n", device.public()).as_bytes())?;
    Ok(pubp)
}

/// Parses `8h`, `30m`, `2d`, `90s`.
pub fn parse_ttl(s: &str) -> anyhow::Result<Duration> {
    let (num, unit) = s.split_at(s.trim_end_matches(|c: char| c.is_ascii_alphabetic()).len());
    let n: u64 = num.parse().with_context(|| format!("bad duration `{s}`"))?;
    let unit_secs: u64 = match unit {
        "s" | "" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => bail!("bad duration unit in `{s}` (use s, m, h, d)"),
    };
    // Checked: an overflowing product must be refused, not wrap to a short lifetime.
    let secs = n.saturating_mul(unit_secs);
    if secs == 0 || secs > 366 * 86400 {
        bail!("token lifetime must be between 1 s and 366 days");
    }
    Ok(Duration::from_secs(secs))
}

/// Reads a token from a QR image (PNG/JPEG) or a text file.
pub fn read_token(p: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
    if bytes.starts_with(token::TOKEN_PREFIX.as_bytes()) {
        return Ok(String::from_utf8_lossy(&bytes).trim().to_string());
    }
    token::scan_qr(&bytes).with_context(|| format!("scanning the QR code in {}", p.display()))
}

fn read_device_public(p: &Path) -> anyhow::Result<DevicePublic> {
    let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
    text.trim()
        .parse()
        .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))
}

pub(crate) fn read_device(p: &Path) -> anyhow::Result<DeviceKey> {
    blindkd_keys::owner::check_private(p)?;
    let b = zeroize::Zeroizing::new(
        std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
    );
    Ok(DeviceKey::from_file_bytes(&b)?)
}

/// Issues a token for an index of this owner key. Returns the token text.
pub fn issue_token(owner: &OwnerKey, a: &TokenIssueArgs) -> anyhow::Result<String> {
    let rec = owner
        .find_index(&a.audience)
        .ok_or_else(|| anyhow::anyhow!("no index `{}` was built with this key", a.audience))?;
    if let Some(c) = a.classes.iter().find(|c| !rec.classes.contains(c)) {
        bail!(
            "class `{c}` is not in index {} (classes: {})",
            rec.name,
            rec.classes.join(", ")
        );
    }
    let kinds = a
        .kinds
        .iter()
        .map(|k| match k.as_str() {
            "knn" => Ok(token::QueryKind::Knn),
            "range" => Ok(token::QueryKind::Range),
            other => bail!("unknown query kind `{other}` (knn, range)"),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let device = read_device_public(&a.device)?;
    let now = now_unix();
    let claims = Claims {
        iss: owner.issuer().to_string(),
        sub: a.subject.clone(),
        aud: blindkd_engine::index::id_hex(&rec.index_id),
        iat: now,
        nbf: now,
        exp: now + parse_ttl(&a.ttl)?.as_secs() as i64,
        cti: token::random_cti(),
        scope: Scope {
            kinds,
            max_k: a.max_k,
            max_radius: a.max_radius,
            classes: a.classes.clone(),
            budget: a.budget,
            max_blocks: a.max_blocks,
            max_results: a.max_results,
        },
        cnf: device.ed25519,
    };
    Ok(token::issue(
        &IssuerKey::from_bytes(owner.signing_seed()),
        &claims,
    )?)
}

fn token_issue(a: &TokenIssueArgs) -> anyhow::Result<()> {
    let owner = OwnerKey::load(&a.key)?;
    let text = issue_token(&owner, a)?;
    let png = token::render_qr_png(&text, 6)?;
    blindkd_engine::atomic::write(&a.out, &png)?;
    println!(
        "token QR: {} ({} bytes of token text, QR version {})",
        a.out.display(),
        text.len(),
        token::qr_version(&text)?
    );
    if a.svg {
        let p = a.out.with_extension("svg");
        blindkd_engine::atomic::write(&p, token::render_qr_svg(&text)?.as_bytes())?;
        println!("token SVG: {}", p.display());
    }
    if a.text {
        let p = a.out.with_extension("txt");
        blindkd_engine::atomic::write(&p, format!("{text}\n").as_bytes())?;
        println!("token text: {}", p.display());
    }
    println!(
        "a photographed QR alone is useless: sessions need the device key ({})",
        a.device.display()
    );
    Ok(())
}

fn token_show(a: &TokenShowArgs) -> anyhow::Result<()> {
    let text = read_token(&a.token)?;
    let claims = token::decode_unverified(&text)?;
    let verdict = match &a.issuer {
        None => "not verified (pass --issuer X.pub)".to_string(),
        Some(p) => {
            let mut issuers = token::Issuers::new();
            token::parse_issuer_lines(&std::fs::read_to_string(p)?, &mut issuers)?;
            match token::verify(&text, &issuers, now_unix(), &claims.aud) {
                Ok(_) => "VALID signature and time claims".to_string(),
                Err(e) => format!("INVALID: {e}"),
            }
        }
    };
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "claims": claims, "verification": verdict })
            )?
        );
        return Ok(());
    }
    println!("issuer     {}", claims.iss);
    println!("subject    {}", claims.sub);
    println!("audience   {} (index id)", claims.aud);
    println!("valid      {} .. {} (unix)", claims.nbf, claims.exp);
    println!("token id   {}", hex::encode(claims.cti));
    println!("classes    {}", claims.scope.classes.join(", "));
    println!(
        "kinds      {:?}, max k {}, max radius {}",
        claims.scope.kinds, claims.scope.max_k, claims.scope.max_radius
    );
    println!(
        "reach      {} leaf blocks per query, {} payloads per range query (k per kNN query)",
        claims.scope.max_blocks, claims.scope.max_results
    );
    println!(
        "budget     {} units over the token's life (1 per block evaluated, 1 per payload); \
         the server's session reply says how many are left",
        claims.scope.budget
    );
    println!("device     {}", hex::encode(claims.cnf));
    println!("status     {verdict}");
    Ok(())
}

fn bundle_issue(a: &BundleIssueArgs) -> anyhow::Result<()> {
    let owner = OwnerKey::load(&a.key)?;
    let device = read_device_public(&a.device)?;
    let bundle = owner.bundle(&a.classes, a.index.as_deref())?;
    let sealed = token::seal_to_device(&device, &bundle.to_signed_bytes(&owner)?)?;
    blindkd_engine::atomic::write(&a.out, &sealed)?;
    for e in &bundle.entries {
        let classes: Vec<_> = e.keys.iter().map(|(c, _)| printable(c)).collect();
        println!(
            "index {} ({}): classes {}",
            printable(&e.name),
            blindkd_engine::index::id_hex(&e.index_id),
            classes.join(", ")
        );
    }
    println!("bundle sealed to the device key: {}", a.out.display());
    Ok(())
}

/// Opens a sealed bundle and verifies that a pinned issuer signed it.
pub(crate) fn open_bundle(
    path: &Path,
    device: &DeviceKey,
    issuers: &token::Issuers,
) -> anyhow::Result<Bundle> {
    let sealed = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let plain = token::open_sealed(device, &sealed)
        .with_context(|| format!("opening {} with this device key", path.display()))?;
    let (bundle, _) =
        Bundle::from_bytes(&plain, issuers).with_context(|| format!("{}", path.display()))?;
    Ok(bundle)
}

/// Reads the issuer files a device pinned at enrolment.
pub(crate) fn read_issuers(paths: &[PathBuf]) -> anyhow::Result<token::Issuers> {
    let mut issuers = token::Issuers::new();
    for p in paths {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        token::parse_issuer_lines(&text, &mut issuers)
            .with_context(|| format!("{}", p.display()))?;
    }
    Ok(issuers)
}

fn query(a: &QueryArgs) -> anyhow::Result<()> {
    let kind = match (a.knn, a.range) {
        (Some(k), None) => QueryKind::Knn { k },
        (None, Some(r)) => QueryKind::Range { radius: r },
        _ => bail!("give exactly one of --knn K or --range R"),
    };
    let text = read_token(&a.token)?;
    let device = read_device(&a.device)?;
    let bundle = open_bundle(&a.bundle, &device, &read_issuers(&a.issuer)?)?;
    let claims = token::decode_unverified(&text)?;
    let id = blindkd_engine::index::parse_id(&claims.aud)?;
    let entry = bundle
        .entry(&id)
        .ok_or_else(|| anyhow::anyhow!("the key bundle has no keys for index {}", claims.aud))?;
    if entry.scheme.id() != SchemeId::Mlhe && !a.insecure_scheme {
        bail!(
            "index {} uses the {} scheme, which does not hide the query from the server; \
             refusing (pass --insecure-scheme only for tests and benchmarks)",
            entry.name,
            entry.scheme.id()
        );
    }
    let rt = runtime()?;
    let mut budget_left = 0;
    let out = rt.block_on(async {
        let client = blindkd_client::Client::new(&a.server)?;
        let session = client.open_session(&text, &device).await?;
        budget_left = session.budget_left;
        let out = client
            .query(
                &session,
                entry,
                kind,
                &a.vector,
                a.classes.clone(),
                !a.no_payloads,
            )
            .await;
        // Free the session slot whatever happened; the answer (or the error) is what matters.
        let _ = client.close_session(&session).await;
        out
    })?;
    if a.json {
        let mut v = json_outcome(&out);
        v["budget_left_before"] = budget_left.into();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_outcome(&out);
        println!("token budget: {budget_left} units were left before this query");
    }
    Ok(())
}

/// JSON form of an outcome: `record` is the owner's record identity from the sealed payload.
pub fn json_outcome(out: &blindkd_client::QueryOutcome) -> serde_json::Value {
    let rows: Vec<_> = out
        .results
        .iter()
        .map(|r| {
            serde_json::json!({
                "rank": r.rank,
                "record": r.payload.as_ref().map(|p| p.record.clone()),
                "class": r.class,
                "distance": r.distance,
                "squared_distance_encoded": r.d2.to_string(),
                "record_id": r.record_id,
                "payload": r.payload.as_ref().map(|p| &p.fields),
            })
        })
        .collect();
    serde_json::json!({ "results": rows, "stats": out.stats, "elapsed_ms": out.elapsed_ms })
}

/// Human form of an outcome.
pub fn print_outcome(out: &blindkd_client::QueryOutcome) {
    println!(
        "{:>4}  {:<10} {:<12} {:>10}  payload",
        "rank", "record", "class", "distance"
    );
    for r in &out.results {
        let (rec, fields) = match &r.payload {
            Some(p) => (
                p.record.clone(),
                serde_json::Value::Object(p.fields.clone()).to_string(),
            ),
            None => (r.record_id.clone(), String::new()),
        };
        println!(
            "{:>4}  {:<10} {:<12} {:>10.4}  {}",
            r.rank,
            printable(&rec),
            printable(&r.class),
            r.distance,
            fields
        );
    }
    let s = &out.stats;
    println!(
        "{} results in {:.1} ms: {} rounds, {} pivot + {} leaf blocks, {} records evaluated, {:.1} KB up, {:.1} KB down, server {:.1} ms, client {:.1} ms",
        out.results.len(),
        out.elapsed_ms,
        s.rounds,
        s.pivot_blocks,
        s.leaf_blocks,
        s.records_evaluated,
        s.bytes_up as f64 / 1024.0,
        s.bytes_down as f64 / 1024.0,
        s.server_micros as f64 / 1000.0,
        s.client_micros as f64 / 1000.0
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 17, finding U1: names and ids from files or servers cannot drive the terminal.
    #[test]
    fn printable_escapes_control_characters() {
        assert_eq!(printable("cardio\u{1b}[2J\n"), "cardio\\u{1b}[2J\\n");
        assert!(matches!(
            printable("été-3"),
            std::borrow::Cow::Borrowed("été-3")
        ));
    }

    /// Issue 17, finding X1: a lifetime whose seconds overflow must be refused, not wrap around
    /// (`213503982334602d` became a 17-hour token).
    #[test]
    fn a_ttl_that_overflows_is_refused() {
        for s in [
            "213503982334602d",
            "18446744073709551615h",
            "307445734561825861m",
        ] {
            let e = parse_ttl(s).expect_err(s).to_string();
            assert!(e.contains("between 1 s and 366 days"), "{s}: {e}");
        }
        assert_eq!(parse_ttl("8h").ok(), Some(Duration::from_secs(8 * 3600)));
        assert_eq!(
            parse_ttl("366d").ok(),
            Some(Duration::from_secs(366 * 86400))
        );
    }
}
