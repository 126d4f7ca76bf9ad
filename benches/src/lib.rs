//! The benchmark grid behind `blindkd bench` (see `benches/README.md`). Being written.

/// Arguments of `blindkd bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Small grid, under two minutes on 2 cores.
    #[arg(long)]
    pub quick: bool,
    /// Output directory for CSV / Markdown / SVG.
    #[arg(long, default_value = "bench-out")]
    pub out: std::path::PathBuf,
    /// Rayon threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

/// Runs the grid.
pub fn run(_args: &BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("the bench grid is not implemented yet")
}
