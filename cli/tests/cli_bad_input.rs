//! `blindkd` on bad input: every malformed CSV is refused with a clear message and leaves the
//! output untouched; secret files are 0600 and a group/world-readable key is refused; `inspect`
//! and the index bytes show no plaintext; the broken paper scheme needs an explicit flag.
#![cfg(unix)]
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use blindkd_engine::crypto::mlhe::MlheBlock;
use blindkd_engine::index::{parse_body, split_file, IndexBody};

mod common;
use common::{blindkd, ok};

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        ok(dir.path(), &["keygen", "--out", "owner.key"]);
        Env { dir }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    fn p(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.p(name), text).unwrap();
    }
}

/// `blindkd index` of `csv` must fail mentioning every word of `expect` (case-insensitive), must
/// not create `new.bkd`, and must leave an existing `old.bkd` byte-identical.
fn refused(env: &Env, csv: &str, extra: &[&str], expect: &[&str]) {
    env.write("bad.csv", csv);
    let old = std::fs::read(env.p("old.bkd")).unwrap();
    let key_before = std::fs::read(env.p("owner.key")).unwrap();
    for out in ["new.bkd", "old.bkd"] {
        let mut args = vec![
            "index",
            "--key",
            "owner.key",
            "--input",
            "bad.csv",
            "--out",
            out,
        ];
        args.extend_from_slice(extra);
        let o = blindkd(env.path(), &args);
        let err = String::from_utf8_lossy(&o.stderr).to_lowercase();
        assert!(!o.status.success(), "{args:?} on {csv:.80?} succeeded");
        for w in expect {
            assert!(
                err.contains(&w.to_lowercase()),
                "{args:?} on {csv:.80?}: message lacks `{w}`:\n{err}"
            );
        }
        assert!(!err.contains("panicked"), "{err}");
    }
    assert!(!env.p("new.bkd").exists(), "output created on {csv:.80?}");
    assert_eq!(
        std::fs::read(env.p("old.bkd")).unwrap(),
        old,
        "output modified"
    );
    assert_eq!(
        std::fs::read(env.p("owner.key")).unwrap(),
        key_before,
        "owner key modified by a failed index"
    );
    // No temp files left behind.
    for e in std::fs::read_dir(env.path()).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!name.contains(".tmp"), "leftover temp file {name}");
    }
}

fn env_with_index() -> Env {
    let env = Env::new();
    env.write("good.csv", "a,b\n1,2\n3,4\n5,6\n");
    ok(
        env.path(),
        &[
            "index",
            "--key",
            "owner.key",
            "--input",
            "good.csv",
            "--out",
            "old.bkd",
            "--scheme",
            "plain",
        ],
    );
    env
}

#[test]
fn malformed_csv_is_refused_and_output_untouched() {
    let env = env_with_index();
    refused(&env, "a,b\n1,2\nNaN,3\n", &[], &["line 3", "nan"]);
    refused(&env, "a,b\n1,2\n3,inf\n", &[], &["line 3"]);
    refused(&env, "a,b\n1,2\n-inf,4\n", &[], &["line 3"]);
    refused(&env, "a,b\n1,2\n1e999,4\n", &[], &["line 3"]);
    refused(&env, "a,b\n1,2\n3\n", &[], &["line 3"]);
    refused(&env, "a,b\n1,2\n3,4,5\n", &[], &["line 3"]);
    refused(&env, "", &[], &["empty"]);
    refused(&env, "\n\n\n", &[], &["empty"]);
    refused(&env, "a,b\n", &[], &["no data"]);
    refused(&env, "a,b\n1,2\n", &["--columns", "x,b"], &["`x`"]);
    refused(&env, "a,b\n1,2\n", &["--columns", "#7"], &["#7"]);
    refused(&env, "a,b\n1,2\n", &["--class-column", "ward"], &["ward"]);
    refused(&env, "a,b\n1,2\n", &["--id-column", "nope"], &["nope"]);
    // Huge values at a fixed scale exceed the bit budget.
    refused(
        &env,
        "a,b\n1,2\n1e300,4\n",
        &["--scale", "1"],
        &["bit", "budget"],
    );
    refused(
        &env,
        "a,b\n1,2\n123456789,4\n",
        &["--scale", "1", "--bits", "16"],
        &["bit", "budget"],
    );
    // Scheme overflow: too many bits for mlhe's plaintext space, with a column to rescale.
    refused(&env, "a,b\n1,2\n3,4\n", &["--bits", "30"], &["overflow"]);
    // Nonsense options.
    refused(&env, "a,b\n1,2\n", &["--scale", "0"], &["scale"]);
    refused(&env, "a,b\n1,2\n", &["--scale=-1"], &["scale"]);
    refused(&env, "a,b\n1,2\n", &["--scale", "NaN"], &["scale"]);
    refused(&env, "a,b\n1,2\n", &["--weights", "1"], &["weight"]);
    refused(&env, "a,b\n1,2\n", &["--normalize", "minmax"], &["minmax"]);
    // Binary garbage.
    refused(&env, "\u{0}\u{1}\u{2}\u{ff}garbage", &[], &[]);
}

#[test]
fn a_million_columns_are_refused() {
    let env = env_with_index();
    let n = 1_000_000;
    let mut csv = String::with_capacity(n * 8);
    for i in 0..n {
        if i > 0 {
            csv.push(',');
        }
        csv.push_str(&format!("c{i}"));
    }
    csv.push('\n');
    for i in 0..n {
        if i > 0 {
            csv.push(',');
        }
        csv.push('1');
    }
    csv.push('\n');
    refused(&env, &csv, &[], &["columns"]);
}

#[test]
fn paper_she_needs_the_insecure_flag() {
    let env = env_with_index();
    let o = blindkd(
        env.path(),
        &[
            "index",
            "--key",
            "owner.key",
            "--input",
            "good.csv",
            "--out",
            "she.bkd",
            "--scheme",
            "paper-she",
        ],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    for w in ["BROKEN", "--insecure-paper-scheme", "attack"] {
        assert!(err.contains(w), "refusal lacks `{w}`: {err}");
    }
    assert!(!env.p("she.bkd").exists());
}

#[test]
fn secret_files_are_0600_and_a_readable_key_is_refused() {
    let env = env_with_index();
    assert_eq!(mode(&env.p("owner.key")), 0o600, "keygen");
    // `index` re-saves the key (it records the schema): still 0600.
    assert_eq!(mode(&env.p("owner.key")), 0o600, "after index");
    ok(env.path(), &["device-key", "--out", "dev.key"]);
    assert_eq!(mode(&env.p("dev.key")), 0o600, "device key");
    let old = std::fs::read(env.p("old.bkd")).unwrap();
    for m in [0o644, 0o640, 0o604, 0o660] {
        std::fs::set_permissions(env.p("owner.key"), std::fs::Permissions::from_mode(m)).unwrap();
        let o = blindkd(
            env.path(),
            &[
                "index",
                "--key",
                "owner.key",
                "--input",
                "good.csv",
                "--out",
                "old.bkd",
                "--scheme",
                "plain",
            ],
        );
        assert!(!o.status.success(), "mode {m:o} accepted");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("chmod 600"), "{err}");
        assert!(err.contains(&format!("{m:o}")), "{err}");
        assert_eq!(std::fs::read(env.p("old.bkd")).unwrap(), old);
    }
    std::fs::set_permissions(env.p("owner.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    ok(
        env.path(),
        &[
            "index",
            "--key",
            "owner.key",
            "--input",
            "good.csv",
            "--out",
            "old.bkd",
            "--scheme",
            "plain",
        ],
    );
}

/// Distinctive plaintext: a feature value, column names, record ids and payload text.
const SECRET_VALUE: &str = "23456.7";
const SCALE: i64 = 10;
const ENCODED: i64 = 234_567;

fn secret_csv() -> String {
    let mut s = String::from("patient_ref,zqcholesterolzq,zqbloodpressurezq,zqdiagnosiszq\n");
    s.push_str(&format!(
        "PX-778899-Q,{SECRET_VALUE},120.5,zqrarediseasezq\n"
    ));
    for i in 0..40 {
        s.push_str(&format!(
            "PX-{i:06}-Q,{}.{},{}.5,none\n",
            100 + i * 37,
            i % 10,
            80 + (i * 13) % 90
        ));
    }
    s
}

fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn inspect_and_index_bytes_show_no_plaintext() {
    let env = Env::new();
    env.write("secret.csv", &secret_csv());
    ok(
        env.path(),
        &[
            "index",
            "--key",
            "owner.key",
            "--input",
            "secret.csv",
            "--out",
            "secret.bkd",
            "--id-column",
            "patient_ref",
            "--payload-columns",
            "zqdiagnosiszq",
            "--scale",
            &SCALE.to_string(),
            "--bits",
            "18",
            "--leaf-size",
            "8",
        ],
    );
    let bytes = std::fs::read(env.p("secret.bkd")).unwrap();
    let text = ok(env.path(), &["inspect", "secret.bkd"]);
    let json = ok(env.path(), &["inspect", "--json", "secret.bkd"]);
    assert!(text.contains("mlhe"), "{text}");
    let forbidden_text = [
        SECRET_VALUE,
        "234567",
        "zqcholesterolzq",
        "zqbloodpressurezq",
        "zqdiagnosiszq",
        "zqrarediseasezq",
        "PX-778899-Q",
        "120.5",
        "1205",
    ];
    for w in forbidden_text {
        assert!(!text.contains(w), "inspect shows `{w}`:\n{text}");
        assert!(!json.contains(w), "inspect --json shows `{w}`:\n{json}");
        assert!(
            !contains(&bytes, w.as_bytes()),
            "index bytes contain the text `{w}`"
        );
    }
    let zigzag = ((ENCODED << 1) ^ (ENCODED >> 63)) as u64;
    let binary = [
        ENCODED.to_le_bytes().to_vec(),
        (ENCODED as i32).to_le_bytes().to_vec(),
        varint(ENCODED as u64),
        varint(zigzag),
    ];
    for b in &binary {
        assert!(
            !contains(&bytes, b),
            "index bytes contain the encoded value as {b:?}"
        );
    }
    // No mask of zero: no stored (masked) coordinate equals the plain encoded coordinate of any
    // record, as an integer or mod t.
    let raw = split_file(&bytes, Path::new("secret.bkd")).unwrap();
    assert_eq!(raw.header.dim, 2);
    let body: IndexBody<MlheBlock> = parse_body(&raw, Path::new("secret.bkd")).unwrap();
    let t = blindkd_engine::crypto::mlhe::PLAINTEXT_MODULUS as i64;
    let csv = secret_csv();
    let mut plain: Vec<i64> = Vec::new();
    for line in csv.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let x1 = (f[1].parse::<f64>().unwrap() * SCALE as f64).round() as i64;
        let x2 = (f[2].parse::<f64>().unwrap() * SCALE as f64).round() as i64;
        plain.extend([x1, x2, x1 * x1 + x2 * x2]);
    }
    assert!(plain.contains(&ENCODED));
    let plain_mod: Vec<u64> = plain.iter().map(|v| v.rem_euclid(t) as u64).collect();
    let mut stored = 0;
    for c in &body.classes {
        for leaf in &c.leaves {
            for col in &leaf.block.cols {
                for y in col {
                    stored += 1;
                    assert!(
                        !plain_mod.contains(y),
                        "a stored value equals a plaintext encoded value ({y}): unmasked?"
                    );
                }
            }
        }
    }
    // 41 records and one check row per leaf block, 3 columns each.
    let blocks: usize = body.classes.iter().map(|c| c.leaves.len()).sum();
    assert_eq!(stored, (41 + blocks) * 3);
    // Payload text is sealed, not stored.
    for leaf in &body.classes[0].leaves {
        for p in &leaf.payloads {
            assert!(!contains(p, b"zqrarediseasezq") && !contains(p, b"none"));
        }
    }
    // A plain index, by contrast, does hold the values: the check above can see them.
    ok(
        env.path(),
        &[
            "index",
            "--key",
            "owner.key",
            "--input",
            "secret.csv",
            "--out",
            "plain.bkd",
            "--id-column",
            "patient_ref",
            "--scale",
            &SCALE.to_string(),
            "--bits",
            "18",
            "--scheme",
            "plain",
        ],
    );
    let plain_bytes = std::fs::read(env.p("plain.bkd")).unwrap();
    assert!(
        contains(&plain_bytes, &varint(zigzag)),
        "control: the plain index should contain the encoded value"
    );
}
