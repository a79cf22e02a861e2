//! `kryonix-cachesim`: replays access traces through the device's eviction policies at cache
//! sizes given as shares of each trace's distinct keys, and prints each policy's hit ratio with
//! Belady's optimum as the ceiling (`scripts/bench-cachesim` runs it over the public traces).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use kryonix_cachesim::through::replay_through_cache;
use kryonix_cachesim::{Outcome, Sizes, Trace, belady, capacity, replay, zipf_trace};
use kryonix_core::cache::Eviction;
use kryonix_core::policy::{Adaptive, Cost, Kind, Policy, Tuning};

/// Replays cache traces through the device's eviction policies.
///
/// Every access is a read and a miss is followed by an insert. Entries weigh 1 unless `--sized`
/// gives them log-normal sizes, which also prints byte hit ratios and the adaptive policy with
/// its network cost weight (`adaptive-bytes`, what a slow or metered network selects).
#[derive(Debug, Parser)]
#[command(name = "kryonix-cachesim", version)]
struct Args {
    /// Trace files (*.trace.gz / *.trace text, *.trace.xz / *.bin big-endian u32). Without any,
    /// every trace in --traces.
    traces: Vec<PathBuf>,
    /// A directory of traces.
    #[arg(long = "traces", env = "KRYONIX_TRACES", value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Cache sizes, in percent of each trace's distinct keys (of their total bytes with --sized).
    #[arg(long, value_delimiter = ',', default_value = "5,20")]
    sizes: Vec<f64>,
    /// Policies to run: lru, lfu, arc, adaptive, adaptive-bytes, volatile-lru, volatile-ttl.
    #[arg(long, value_delimiter = ',', default_value = "lru,lfu,arc,adaptive")]
    policies: Vec<String>,
    /// Give each key a size from a seeded log-normal (median --median bytes, σ --sigma).
    #[arg(long)]
    sized: bool,
    /// The size distribution's seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The size distribution's median, in bytes.
    #[arg(long, default_value_t = 1536.0)]
    median: f64,
    /// The size distribution's σ (of the logarithm).
    #[arg(long, default_value_t = 1.2)]
    sigma: f64,
    /// Also replay a synthetic trace: Zipf popularity with this exponent over --zipf-keys keys,
    /// --zipf-accesses accesses, seeded by --seed.
    #[arg(long, value_name = "EXPONENT")]
    zipf: Option<f64>,
    /// The synthetic trace's distinct keys.
    #[arg(long, default_value_t = 100_000)]
    zipf_keys: u64,
    /// The synthetic trace's accesses.
    #[arg(long, default_value_t = 1_000_000)]
    zipf_accesses: usize,
    /// Replay only the first N accesses of each trace.
    #[arg(long)]
    limit: Option<usize>,
    /// Other constants for the adaptive policy, as name=value pairs: initial_window,
    /// protected_share, step (0 = no climbing), step_decay, restart, sample, margin,
    /// window_hits (0/1), sketch_words, reset.
    #[arg(long, value_name = "PAIRS")]
    tune: Option<String>,
    /// Also replay each trace through the real device cache (SQLite, in a temporary
    /// directory): `cache-lru` with the table's plain LRU, `cache-adaptive` with the default
    /// adaptive policy. Each miss is a write transaction, so use --limit on long traces.
    #[arg(long, conflicts_with = "sized")]
    through_cache: bool,
    /// One JSON object per row instead of a table.
    #[arg(long)]
    json: bool,
}

/// A column of the table.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Column {
    Kind(Kind),
    /// The adaptive policy weighing misses by their bytes.
    AdaptiveBytes,
    /// The real device cache with its namespaces running these policies.
    Cache(Eviction),
}

impl Column {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "adaptive-bytes" => Some(Self::AdaptiveBytes),
            other => Kind::from_name(other).map(Self::Kind),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Kind(kind) => kind.name(),
            Self::AdaptiveBytes => "adaptive-bytes",
            Self::Cache(Eviction::Table) => "cache-lru",
            Self::Cache(Eviction::Adaptive) => "cache-adaptive",
        }
    }

    /// Replays `keys` through this column's policy (or cache) holding `capacity`.
    fn replay(
        self,
        keys: &[u64],
        capacity: u64,
        sizes: Option<&Sizes>,
        tuning: Tuning,
    ) -> Result<Outcome, String> {
        let mut policy: Box<dyn Policy<u64>> = match self {
            Self::Cache(eviction) => {
                return replay_through_cache(keys, capacity, eviction, &std::env::temp_dir())
                    .map_err(|e| format!("through the cache: {e}"));
            }
            Self::Kind(Kind::Adaptive) => {
                Box::new(Adaptive::with_tuning(capacity, Cost::Count, tuning))
            }
            Self::Kind(kind) => kind.build(capacity),
            Self::AdaptiveBytes => Box::new(Adaptive::with_tuning(capacity, Cost::Bytes, tuning)),
        };
        Ok(replay(policy.as_mut(), keys, sizes))
    }
}

#[derive(Debug, serde::Serialize)]
struct Row {
    trace: String,
    accesses: u64,
    keys: u64,
    percent: f64,
    capacity: u64,
    results: Vec<(String, Outcome)>,
    belady: Option<Outcome>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("kryonix-cachesim: {message}");
            ExitCode::FAILURE
        }
    }
}

fn trace_files(args: &Args) -> Result<Vec<PathBuf>, String> {
    if !args.traces.is_empty() {
        return Ok(args.traces.clone());
    }
    let Some(dir) = &args.dir else {
        if args.zipf.is_some() {
            return Ok(Vec::new());
        }
        return Err("give trace files, or a directory with --traces / KRYONIX_TRACES".into());
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| is_trace(path))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!("{}: no *.trace* files", dir.display()));
    }
    Ok(files)
}

fn is_trace(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|name| name.to_string_lossy().contains(".trace"))
}

fn run(args: &Args) -> Result<(), String> {
    let mut columns = args
        .policies
        .iter()
        .map(|name| Column::parse(name).ok_or_else(|| format!("unknown policy {name:?}")))
        .collect::<Result<Vec<_>, _>>()?;
    let tuning = match &args.tune {
        Some(text) => Tuning::default()
            .parse_overrides(text)
            .map_err(|e| format!("--tune: {e}"))?,
        None => Tuning::default(),
    };
    if !(args.sigma.is_finite() && args.sigma >= 0.0) {
        return Err(format!(
            "--sigma {} must be a finite, non-negative number",
            args.sigma
        ));
    }
    if !(args.median.is_finite() && args.median >= 1.0) {
        return Err(format!("--median {} must be at least 1 byte", args.median));
    }
    if let Some(bad) = args.sizes.iter().find(|p| !(**p > 0.0 && **p <= 100.0)) {
        return Err(format!("size {bad} is not a percentage in (0, 100]"));
    }
    if args.through_cache {
        columns.extend([
            Column::Cache(Eviction::Table),
            Column::Cache(Eviction::Adaptive),
        ]);
    }
    if !args.json {
        print_header(args, &columns);
    }
    let mut traces: Vec<Result<Trace, String>> = Vec::new();
    if let Some(exponent) = args.zipf {
        traces.push(
            zipf_trace(args.zipf_keys, args.zipf_accesses, exponent, args.seed)
                .map_err(|e| format!("--zipf {exponent}: {e}")),
        );
    }
    let files = trace_files(args)?;
    let read = files
        .iter()
        .map(|path| Trace::read(path).map_err(|e| e.to_string()));
    for trace in traces.into_iter().chain(read) {
        let mut trace = trace?;
        if let Some(limit) = args.limit {
            trace.keys.truncate(limit);
        }
        let keys = trace.distinct();
        let sizes = if args.sized {
            Some(
                Sizes::log_normal(&trace.keys, args.seed, args.median, args.sigma)
                    .map_err(|e| format!("--sigma {}: {e}", args.sigma))?,
            )
        } else {
            None
        };
        let whole = sizes.as_ref().map_or(keys, Sizes::total);
        for &percent in &args.sizes {
            let capacity = capacity(percent, whole);
            let results = columns
                .iter()
                .map(|column| {
                    let outcome = column
                        .replay(&trace.keys, capacity, sizes.as_ref(), tuning)
                        .map_err(|e| format!("{}: {e}", trace.name))?;
                    Ok((column.name().to_string(), outcome))
                })
                .collect::<Result<Vec<_>, String>>()?;
            let belady = sizes
                .is_none()
                .then(|| belady::replay(&trace.keys, capacity));
            let row = Row {
                trace: trace.name.clone(),
                accesses: trace.keys.len() as u64,
                keys,
                percent,
                capacity,
                results,
                belady,
            };
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string(&row).map_err(|e| e.to_string())?
                );
            } else {
                print_row(&row, args.sized);
            }
        }
    }
    Ok(())
}

fn print_header(args: &Args, columns: &[Column]) {
    let mut line = format!(
        "{:<12} {:>9} {:>8} {:>5} {:>9}",
        "trace", "accesses", "keys", "size", "capacity"
    );
    for column in columns {
        if args.sized {
            line += &format!(" {:>21}", format!("{} hit/byte", column.name()));
        } else {
            line += &format!(" {:>w$}", column.name(), w = width(column.name()));
        }
    }
    if !args.sized {
        line += &format!(" {:>8} {:>14}", "belady", "adaptive gap");
    }
    println!("{line}");
}

fn print_row(row: &Row, sized: bool) {
    let mut line = format!(
        "{:<12} {:>9} {:>8} {:>4}% {:>9}",
        row.trace, row.accesses, row.keys, row.percent, row.capacity
    );
    for (name, outcome) in &row.results {
        if sized {
            line += &format!(
                " {:>10.2} / {:>7.2}",
                100.0 * outcome.hit_ratio(),
                100.0 * outcome.byte_hit_ratio()
            );
        } else {
            line += &format!(" {:>w$.2}", 100.0 * outcome.hit_ratio(), w = width(name));
        }
    }
    if let Some(belady) = &row.belady {
        line += &format!(" {:>8.2}", 100.0 * belady.hit_ratio());
        if let Some((_, adaptive)) = row.results.iter().find(|(name, _)| name == "adaptive") {
            line += &format!(
                " {:>14.2}",
                100.0 * (belady.hit_ratio() - adaptive.hit_ratio())
            );
        }
    }
    println!("{line}");
}

/// A column's width in the unsized table: its name's, at least 8.
fn width(name: &str) -> usize {
    name.len().max(8)
}
