//! Loading a clinical table (CSV or whitespace-separated) into a [`Dataset`] (DESIGN §2).
//!
//! The input is untrusted: every limit is checked before anything proportional to it is
//! allocated. The first line's field count is checked against [`LoadOptions::max_columns`] while it
//! is being read, so a file with a million columns fails after a few kilobytes. Later rows are held
//! one at a time; memory is proportional to the longest line plus the kept records.
//!
//! # Column selection syntax
//! A [`ColumnSel`] is parsed from text ([`ColumnSel::from_str`]):
//! - `#3` or `3`: the column at 0-based index 3;
//! - anything else: a header name, matched exactly after trimming.
//!
//! Without a header (`has_header: false`) columns are named `c0`, `c1`, …, so `c3`, `#3` and `3`
//! all mean the fourth column.
//!
//! # Missing values
//! A cell that is empty, `?` or `NA` is missing. In a feature, id or class column it makes the row
//! skipped (counted in [`LoadReport`]) or an error, by [`MissingPolicy`]. In a payload column it
//! becomes JSON `null`. `NaN` and infinities are never "missing": they are errors.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Cursor, Read};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde_json::{Map, Value};

/// A loaded table: feature vectors with their ids, policy classes and payloads.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// Feature column names, in vector order.
    pub feature_names: Vec<String>,
    /// Kept records, in file order.
    pub records: Vec<Record>,
    /// What happened while loading.
    pub report: LoadReport,
}

/// One row of the table.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// Opaque id: the id column's cell, or the 0-based data-row number.
    pub id: String,
    /// Policy class (DESIGN §2), for example `cardiology`.
    pub class: String,
    /// Feature values, in [`Dataset::feature_names`] order. All finite.
    pub features: Vec<f64>,
    /// Payload columns by name. Numbers become JSON numbers, missing cells `null`, the rest strings.
    pub payload: Map<String, Value>,
}

/// Counts gathered while loading.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Data rows read (header and skipped lines excluded), including rows later skipped.
    pub rows_read: usize,
    /// Rows skipped under [`MissingPolicy::SkipRow`].
    pub rows_skipped_missing: usize,
    /// Missing cells per column, in column order; only columns with at least one missing cell.
    pub missing_by_column: Vec<(String, usize)>,
}

/// Selects a column by header name or 0-based index. See the module docs for the text syntax.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ColumnSel {
    /// A header name (or `c<i>` without a header).
    Name(String),
    /// A 0-based index.
    Index(usize),
}

/// Where a record's policy class comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClassSource {
    /// Each row's cell in this column.
    Column(ColumnSel),
    /// The same class for every record (a single-department file).
    Fixed(String),
}

/// What to do with a missing cell in a feature, id or class column.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MissingPolicy {
    /// Skip the row and count it.
    #[default]
    SkipRow,
    /// Fail, naming the line, data row and column.
    Error,
}

/// How to read the table. Start from [`LoadOptions::default`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    /// The first (non-skipped) line holds column names.
    pub has_header: bool,
    /// Lines to discard before the header or first data row (e.g. 1 for the Wisconsin file's
    /// `569,30,malignant,benign` line).
    pub skip_lines: usize,
    /// `None`: a comma if the first line has one, else runs of whitespace. An ASCII whitespace byte
    /// means runs of whitespace; any other byte is a CSV delimiter (with `"` quoting).
    pub delimiter: Option<u8>,
    /// Feature columns. `None`: every column not used as id, class or payload, except those whose
    /// first data row's cell is text (contains a letter and is not a number such as `1e5` or
    /// `NaN`). Any non-numeric cell in a feature column is then an error.
    pub columns: Option<Vec<ColumnSel>>,
    /// Record id column; `None` numbers data rows from 0 (counted before skipping).
    pub id_column: Option<ColumnSel>,
    /// Policy class source.
    pub class: ClassSource,
    /// Columns copied into each record's payload.
    pub payload_columns: Vec<ColumnSel>,
    /// Missing-cell policy.
    pub missing: MissingPolicy,
    /// Largest accepted number of fields per line.
    pub max_columns: usize,
    /// Largest accepted number of data rows.
    pub max_rows: usize,
}

/// Default [`LoadOptions::max_columns`]: the engine's largest dimension.
pub const DEFAULT_MAX_COLUMNS: usize = blindkd_engine::encoding::MAX_DIM;
/// Default [`LoadOptions::max_rows`].
pub const DEFAULT_MAX_ROWS: usize = 50_000_000;
/// Default class when none is given.
pub const DEFAULT_CLASS: &str = "general";

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            has_header: true,
            skip_lines: 0,
            delimiter: None,
            columns: None,
            id_column: None,
            class: ClassSource::Fixed(DEFAULT_CLASS.to_string()),
            payload_columns: Vec::new(),
            missing: MissingPolicy::SkipRow,
            max_columns: DEFAULT_MAX_COLUMNS,
            max_rows: DEFAULT_MAX_ROWS,
        }
    }
}

/// Why a table could not be loaded. Line numbers are 1-based physical lines of the input,
/// counting skipped lines and the header; data rows are 0-based.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DatasetError {
    /// The file could not be opened.
    #[error("cannot open {}: {source}", path.display())]
    Open {
        /// The path given.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Reading or CSV parsing failed (I/O error, invalid UTF-8, bad quoting).
    #[error("line {line}: {message}")]
    Read {
        /// Line where it happened (best effort).
        line: u64,
        /// What went wrong.
        message: String,
    },
    /// Nothing but blank or skipped lines.
    #[error("the file is empty: no header or data rows (after skipping {skipped} lines)")]
    Empty {
        /// `skip_lines` in effect.
        skipped: usize,
    },
    /// A header but no data rows.
    #[error("the file has a header but no data rows")]
    NoDataRows,
    /// The first line has more fields than allowed.
    #[error("line {line}: more than {max} columns (limit `max_columns`); is the delimiter right?")]
    TooManyColumns {
        /// Line checked.
        line: u64,
        /// The limit.
        max: usize,
    },
    /// More data rows than allowed.
    #[error("more than {max} data rows (limit `max_rows`)")]
    TooManyRows {
        /// The limit.
        max: usize,
    },
    /// A row whose field count differs from the first line's.
    #[error("line {line}: {found} fields, expected {expected} (as in the first line)")]
    Ragged {
        /// Offending line.
        line: u64,
        /// Field count of the first line.
        expected: usize,
        /// Field count of this line.
        found: usize,
    },
    /// A column selection that matches no column.
    #[error("unknown column `{selection}`; available: {available}")]
    UnknownColumn {
        /// The selection as written.
        selection: String,
        /// Available columns, `#index name` comma-separated.
        available: String,
    },
    /// A header name that occurs more than once, selected by name.
    #[error("column name `{name}` occurs more than once in the header; select it by index (#i)")]
    AmbiguousColumn {
        /// The repeated name.
        name: String,
    },
    /// The same column listed twice as a feature.
    #[error("column `{name}` is selected twice as a feature")]
    DuplicateFeature {
        /// Its name.
        name: String,
    },
    /// No feature columns remain.
    #[error("no numeric feature columns (columns: {available})")]
    NoFeatureColumns {
        /// Available columns.
        available: String,
    },
    /// A feature cell that is not a number.
    #[error("line {line}, column `{column}`: `{value}` is not a number")]
    NonNumeric {
        /// Offending line.
        line: u64,
        /// Column name.
        column: String,
        /// The cell (truncated).
        value: String,
    },
    /// A feature cell that is NaN or infinite (including numbers too large for f64).
    #[error("line {line}, column `{column}`: `{value}` is not a finite number")]
    NonFinite {
        /// Offending line.
        line: u64,
        /// Column name.
        column: String,
        /// The cell (truncated).
        value: String,
    },
    /// A missing cell under [`MissingPolicy::Error`].
    #[error("line {line} (data row {row}), column `{column}`: missing value")]
    MissingValue {
        /// Offending line.
        line: u64,
        /// 0-based data row.
        row: usize,
        /// Column name.
        column: String,
    },
    /// Two records with the same id.
    #[error("line {line}: duplicate id `{id}` (first seen on line {first_line})")]
    DuplicateId {
        /// The id (truncated).
        id: String,
        /// Second occurrence.
        line: u64,
        /// First occurrence.
        first_line: u64,
    },
    /// A class name a token could not name: empty, longer than 64 characters, or with control
    /// characters (which would also rewrite terminal output wherever the name is shown).
    #[error("line {line}: class {class:?} must be 1–64 characters without control characters")]
    BadClass {
        /// The class, escaped and truncated.
        class: String,
        /// Where (0: the --class option).
        line: u64,
    },
}

/// Checks a class name (see [`DatasetError::BadClass`]).
fn check_class(class: &str, line: u64) -> Result<(), DatasetError> {
    let n = class.chars().count();
    if n == 0 || n > 64 || class.chars().any(char::is_control) {
        return Err(DatasetError::BadClass {
            class: truncate(&class.escape_debug().to_string()),
            line,
        });
    }
    Ok(())
}

impl FromStr for ColumnSel {
    type Err = std::convert::Infallible;

    /// `#3` or `3` → index 3; anything else → a name (trimmed).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let digits = t.strip_prefix('#').unwrap_or(t);
        match digits.parse::<usize>() {
            Ok(i) if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
                Ok(ColumnSel::Index(i))
            }
            _ => Ok(ColumnSel::Name(t.to_string())),
        }
    }
}

impl ColumnSel {
    /// Parses a comma-separated list such as `age,#3,chol`. Empty items are ignored.
    pub fn parse_list(s: &str) -> Vec<ColumnSel> {
        s.split(',')
            .filter(|p| !p.trim().is_empty())
            .map(|p| match p.parse() {
                Ok(sel) => sel,
                Err(never) => match never {},
            })
            .collect()
    }
}

impl fmt::Display for ColumnSel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ColumnSel::Name(n) => f.write_str(n),
            ColumnSel::Index(i) => write!(f, "#{i}"),
        }
    }
}

/// Loads a table from a file. See [`load_reader`].
pub fn load(path: &Path, opts: &LoadOptions) -> Result<Dataset, DatasetError> {
    let file = File::open(path).map_err(|source| DatasetError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    load_reader(file, opts)
}

/// Loads a table from any reader.
pub fn load_reader<R: Read>(reader: R, opts: &LoadOptions) -> Result<Dataset, DatasetError> {
    let mut src = BufReader::new(reader);
    // Spreadsheet exports often start with a UTF-8 byte-order mark; it would stick to the first name.
    if src
        .fill_buf()
        .map_err(|e| io_err(1, e))?
        .starts_with(b"\xEF\xBB\xBF")
    {
        src.consume(3);
    }
    let mut line_no = skip_lines(&mut src, opts.skip_lines)?;
    let first = read_first_line(&mut src, opts, &mut line_no)?;
    let ws = match opts.delimiter {
        Some(b) => b.is_ascii_whitespace(),
        None => !first.bytes.contains(&b','),
    };
    let lines_before = line_no - 1;
    let input = Cursor::new(first.bytes).chain(src);
    let mut rows = if ws {
        Rows::Whitespace {
            input: BufReader::new(input),
            buf: String::new(),
            line: lines_before,
        }
    } else {
        let reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .trim(csv::Trim::All)
            .delimiter(opts.delimiter.unwrap_or(b','))
            .from_reader(input);
        Rows::Csv {
            reader: Box::new(reader),
            offset: lines_before,
        }
    };

    let mut rec = csv::StringRecord::new();
    let Some(first_line) = rows.next(&mut rec)? else {
        return Err(DatasetError::Empty {
            skipped: opts.skip_lines,
        });
    };
    if rec.len() > opts.max_columns {
        return Err(DatasetError::TooManyColumns {
            line: first_line,
            max: opts.max_columns,
        });
    }
    let ncols = rec.len();
    let (names, mut line): (Vec<String>, u64) = if opts.has_header {
        let names = rec
            .iter()
            .enumerate()
            .map(|(i, n)| {
                if n.is_empty() {
                    format!("c{i}")
                } else {
                    n.to_string()
                }
            })
            .collect();
        match rows.next(&mut rec)? {
            Some(line) => (names, line),
            None => return Err(DatasetError::NoDataRows),
        }
    } else {
        ((0..ncols).map(|i| format!("c{i}")).collect(), first_line)
    };
    // `rec` now holds the first data row.
    let plan = Plan::new(&names, &rec, opts)?;
    let mut loader = Loader {
        opts,
        names: &names,
        plan: &plan,
        records: Vec::new(),
        seen_ids: HashMap::new(),
        missing: vec![0; ncols],
        report: LoadReport::default(),
    };
    loop {
        if rec.len() != ncols {
            return Err(DatasetError::Ragged {
                line,
                expected: ncols,
                found: rec.len(),
            });
        }
        loader.row(&rec, line)?;
        match rows.next(&mut rec)? {
            Some(l) => line = l,
            None => break,
        }
    }
    let Loader {
        records,
        missing,
        mut report,
        ..
    } = loader;
    report.missing_by_column = names
        .iter()
        .zip(missing)
        .filter(|(_, m)| *m > 0)
        .map(|(n, m)| (n.clone(), m))
        .collect();
    Ok(Dataset {
        feature_names: plan.features.iter().map(|&i| names[i].clone()).collect(),
        records,
        report,
    })
}

/// Cells that count as missing.
fn is_missing(cell: &str) -> bool {
    matches!(cell, "" | "?" | "NA")
}

/// Keeps error messages bounded when a cell is huge.
fn truncate(s: &str) -> String {
    const MAX: usize = 40;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// Discards `n` lines without holding them; returns the next line number.
fn skip_lines<R: BufRead>(src: &mut R, n: usize) -> Result<u64, DatasetError> {
    let mut line = 1u64;
    for _ in 0..n {
        loop {
            let buf = src.fill_buf().map_err(|e| io_err(line, e))?;
            if buf.is_empty() {
                return Err(DatasetError::Empty { skipped: n });
            }
            match buf.iter().position(|&b| b == b'\n') {
                Some(p) => {
                    src.consume(p + 1);
                    break;
                }
                None => {
                    let len = buf.len();
                    src.consume(len);
                }
            }
        }
        line += 1;
    }
    Ok(line)
}

struct FirstLine {
    bytes: Vec<u8>,
}

/// Reads the first non-blank line, counting its fields as it goes so that an absurdly wide line
/// fails before it is held in full. Advances `line_no` to that line.
fn read_first_line<R: BufRead>(
    src: &mut R,
    opts: &LoadOptions,
    line_no: &mut u64,
) -> Result<FirstLine, DatasetError> {
    loop {
        let mut bytes = Vec::new();
        let mut commas = 1usize; // fields if comma-separated
        let mut ws_fields = 0usize; // fields if whitespace-separated
        let mut custom = 1usize; // fields under an explicit non-whitespace delimiter
        let mut in_quotes = false;
        let mut in_token = false;
        let explicit = opts.delimiter.filter(|b| !b.is_ascii_whitespace());
        let whitespace_explicit = opts.delimiter.is_some_and(|b| b.is_ascii_whitespace());
        let mut ended = false;
        loop {
            let buf = src.fill_buf().map_err(|e| io_err(*line_no, e))?;
            if buf.is_empty() {
                ended = true;
                break;
            }
            let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
                Some(p) => (&buf[..=p], true),
                None => (buf, false),
            };
            for &b in chunk {
                if b == b'"' {
                    in_quotes = !in_quotes;
                }
                if !in_quotes {
                    if b == b',' {
                        commas += 1;
                    }
                    if Some(b) == explicit {
                        custom += 1;
                    }
                }
                let space = b.is_ascii_whitespace();
                if !space && !in_token {
                    ws_fields += 1;
                }
                in_token = !space;
            }
            let n = chunk.len();
            bytes.extend_from_slice(chunk);
            src.consume(n);
            let too_many = match (explicit, whitespace_explicit) {
                (Some(_), _) => custom > opts.max_columns,
                (None, true) => ws_fields > opts.max_columns,
                // Auto: a comma makes it CSV; without one so far, whitespace decides.
                (None, false) if commas > 1 => commas > opts.max_columns,
                (None, false) => ws_fields > opts.max_columns,
            };
            if too_many {
                return Err(DatasetError::TooManyColumns {
                    line: *line_no,
                    max: opts.max_columns,
                });
            }
            if done {
                break;
            }
        }
        if bytes.iter().any(|b| !b.is_ascii_whitespace()) {
            return Ok(FirstLine { bytes });
        }
        if ended {
            return Err(DatasetError::Empty {
                skipped: opts.skip_lines,
            });
        }
        *line_no += 1;
    }
}

fn io_err(line: u64, e: std::io::Error) -> DatasetError {
    DatasetError::Read {
        line,
        message: e.to_string(),
    }
}

/// A source of rows that reuses one [`csv::StringRecord`].
enum Rows<R: Read> {
    Csv {
        reader: Box<csv::Reader<R>>,
        /// Lines consumed before the reader's input began.
        offset: u64,
    },
    Whitespace {
        input: BufReader<R>,
        buf: String,
        /// Last line read.
        line: u64,
    },
}

impl<R: Read> Rows<R> {
    /// Reads the next non-blank row into `rec`; returns its line number.
    fn next(&mut self, rec: &mut csv::StringRecord) -> Result<Option<u64>, DatasetError> {
        match self {
            Rows::Csv { reader, offset } => {
                match reader.read_record(rec) {
                    Ok(true) => Ok(Some(rec.position().map_or(0, |p| p.line()) + *offset)),
                    Ok(false) => Ok(None),
                    Err(e) => {
                        let line = e.position().map_or(0, |p| p.line()) + *offset;
                        // csv's own message repeats a position relative to its input; keep the kind.
                        let message = match e.into_kind() {
                            csv::ErrorKind::Io(io) => io.to_string(),
                            csv::ErrorKind::Utf8 { err, .. } => {
                                format!("invalid UTF-8 in field {}", err.field() + 1)
                            }
                            other => format!("{other:?}"),
                        };
                        Err(DatasetError::Read { line, message })
                    }
                }
            }
            Rows::Whitespace { input, buf, line } => loop {
                buf.clear();
                *line += 1;
                let n = input.read_line(buf).map_err(|e| io_err(*line, e))?;
                if n == 0 {
                    return Ok(None);
                }
                if buf.trim().is_empty() {
                    continue;
                }
                rec.clear();
                for token in buf.split_ascii_whitespace() {
                    rec.push_field(token);
                }
                return Ok(Some(*line));
            },
        }
    }
}

/// Column roles resolved to indexes.
struct Plan {
    id: Option<usize>,
    class: Option<usize>,
    fixed_class: String,
    payload: Vec<usize>,
    features: Vec<usize>,
}

impl Plan {
    fn new(
        names: &[String],
        first_row: &csv::StringRecord,
        opts: &LoadOptions,
    ) -> Result<Self, DatasetError> {
        let available = || {
            names
                .iter()
                .enumerate()
                .map(|(i, n)| format!("#{i} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let resolve = |sel: &ColumnSel| -> Result<usize, DatasetError> {
            match sel {
                ColumnSel::Index(i) if *i < names.len() => Ok(*i),
                ColumnSel::Name(n) => {
                    let mut hits = names.iter().enumerate().filter(|(_, m)| *m == n);
                    match (hits.next(), hits.next()) {
                        (Some((i, _)), None) => Ok(i),
                        (Some(_), Some(_)) => {
                            Err(DatasetError::AmbiguousColumn { name: n.clone() })
                        }
                        _ => Err(DatasetError::UnknownColumn {
                            selection: sel.to_string(),
                            available: available(),
                        }),
                    }
                }
                ColumnSel::Index(_) => Err(DatasetError::UnknownColumn {
                    selection: sel.to_string(),
                    available: available(),
                }),
            }
        };
        let id = opts.id_column.as_ref().map(resolve).transpose()?;
        let (class, fixed_class) = match &opts.class {
            ClassSource::Column(sel) => (Some(resolve(sel)?), String::new()),
            ClassSource::Fixed(c) => {
                check_class(c, 0)?;
                (None, c.clone())
            }
        };
        let payload = opts
            .payload_columns
            .iter()
            .map(resolve)
            .collect::<Result<Vec<_>, _>>()?;
        let features = match &opts.columns {
            Some(sels) => {
                let mut idx = Vec::with_capacity(sels.len().min(names.len()));
                for sel in sels {
                    let i = resolve(sel)?;
                    if idx.contains(&i) {
                        return Err(DatasetError::DuplicateFeature {
                            name: names[i].clone(),
                        });
                    }
                    idx.push(i);
                }
                idx
            }
            None => (0..names.len())
                .filter(|&i| Some(i) != id && Some(i) != class && !payload.contains(&i))
                .filter(|&i| {
                    let cell = first_row.get(i).unwrap_or("");
                    // Only cells with letters are text (`cardiology`, `P0001`). Anything else that
                    // fails to parse (`1,5`, `2024-01-05`) is kept so that it fails loudly below
                    // rather than silently vanishing from the features.
                    let text = cell.parse::<f64>().is_err()
                        && cell.chars().any(char::is_alphabetic)
                        && !is_missing(cell);
                    if text {
                        tracing::info!(column = %names[i], "not a feature: first cell is text");
                    }
                    !text
                })
                .collect(),
        };
        if features.is_empty() {
            return Err(DatasetError::NoFeatureColumns {
                available: available(),
            });
        }
        Ok(Plan {
            id,
            class,
            fixed_class,
            payload,
            features,
        })
    }
}

/// Per-row state while loading.
struct Loader<'a> {
    opts: &'a LoadOptions,
    names: &'a [String],
    plan: &'a Plan,
    records: Vec<Record>,
    seen_ids: HashMap<String, u64>,
    missing: Vec<usize>,
    report: LoadReport,
}

impl Loader<'_> {
    fn row(&mut self, rec: &csv::StringRecord, line: u64) -> Result<(), DatasetError> {
        let row = self.report.rows_read;
        if row >= self.opts.max_rows {
            return Err(DatasetError::TooManyRows {
                max: self.opts.max_rows,
            });
        }
        self.report.rows_read += 1;
        let cell = |i: usize| rec.get(i).unwrap_or("");

        // Parse every feature first: a malformed cell is an error even in a row that will be skipped.
        let mut features = Vec::with_capacity(self.plan.features.len());
        let mut row_missing = false;
        for &i in &self.plan.features {
            let c = cell(i);
            if is_missing(c) {
                row_missing = true;
                self.note_missing(i, row, line)?;
                features.push(f64::NAN);
                continue;
            }
            let v: f64 = c.parse().map_err(|_| DatasetError::NonNumeric {
                line,
                column: self.names[i].clone(),
                value: truncate(c),
            })?;
            if !v.is_finite() {
                return Err(DatasetError::NonFinite {
                    line,
                    column: self.names[i].clone(),
                    value: truncate(c),
                });
            }
            features.push(v);
        }
        for i in self.plan.id.into_iter().chain(self.plan.class) {
            if is_missing(cell(i)) {
                row_missing = true;
                self.note_missing(i, row, line)?;
            }
        }
        if row_missing {
            self.report.rows_skipped_missing += 1;
            return Ok(());
        }

        let id = match self.plan.id {
            Some(i) => cell(i).to_string(),
            None => row.to_string(),
        };
        if let Some(&first_line) = self.seen_ids.get(&id) {
            return Err(DatasetError::DuplicateId {
                id: truncate(&id),
                line,
                first_line,
            });
        }
        self.seen_ids.insert(id.clone(), line);
        let class = match self.plan.class {
            Some(i) => {
                let c = cell(i).to_string();
                check_class(&c, line)?;
                c
            }
            None => self.plan.fixed_class.clone(),
        };
        let payload = self
            .plan
            .payload
            .iter()
            .map(|&i| (self.names[i].clone(), payload_value(cell(i))))
            .collect();
        self.records.push(Record {
            id,
            class,
            features,
            payload,
        });
        Ok(())
    }

    fn note_missing(&mut self, col: usize, row: usize, line: u64) -> Result<(), DatasetError> {
        match self.opts.missing {
            MissingPolicy::SkipRow => {
                self.missing[col] += 1;
                Ok(())
            }
            MissingPolicy::Error => Err(DatasetError::MissingValue {
                line,
                row,
                column: self.names[col].clone(),
            }),
        }
    }
}

/// A payload cell as JSON: plain decimal numbers become JSON numbers (but not ones with a leading
/// zero such as `007`, which are codes), missing cells `null`, everything else a string.
fn payload_value(cell: &str) -> Value {
    if is_missing(cell) {
        return Value::Null;
    }
    let unsigned = cell.trim_start_matches(['+', '-']);
    let plain = cell
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'));
    let code =
        unsigned.len() > 1 && unsigned.starts_with('0') && unsigned.as_bytes()[1].is_ascii_digit();
    if plain && !code {
        if let Ok(i) = cell.parse::<i64>() {
            return Value::from(i);
        }
        if let Some(n) = cell
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
        {
            return Value::Number(n);
        }
    }
    Value::String(cell.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn column_sel_syntax() {
        assert_eq!("#3".parse::<ColumnSel>(), Ok(ColumnSel::Index(3)));
        assert_eq!(" 12 ".parse::<ColumnSel>(), Ok(ColumnSel::Index(12)));
        assert_eq!(
            "age".parse::<ColumnSel>(),
            Ok(ColumnSel::Name("age".into()))
        );
        assert_eq!("#x".parse::<ColumnSel>(), Ok(ColumnSel::Name("#x".into())));
        assert_eq!("+3".parse::<ColumnSel>(), Ok(ColumnSel::Name("+3".into())));
        assert_eq!(
            ColumnSel::parse_list("age, #2,,chol"),
            vec![
                ColumnSel::Name("age".into()),
                ColumnSel::Index(2),
                ColumnSel::Name("chol".into())
            ]
        );
    }

    #[test]
    fn payload_values() {
        assert_eq!(payload_value("1"), Value::from(1));
        assert_eq!(payload_value("-2.5"), Value::from(-2.5));
        assert_eq!(payload_value("0.25"), Value::from(0.25));
        assert_eq!(payload_value("007"), Value::from("007"));
        assert_eq!(payload_value("?"), Value::Null);
        assert_eq!(payload_value("nan"), Value::from("nan"));
        assert_eq!(payload_value("inf"), Value::from("inf"));
        assert_eq!(payload_value("chest pain"), Value::from("chest pain"));
    }
}
