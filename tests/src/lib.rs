//! Shared fixtures for the blindkd integration tests: small indexes (`plain` and `mlhe`, several
//! policy classes) built with the real indexer, the hospital's owner and issuer keys, device keys,
//! a token helper with overridable claims, a query server on `127.0.0.1:0`, and the plaintext
//! brute-force oracle every answer is compared with.
//!
//! Everything here is loopback-only and deterministic in content (seeded data); nothing waits on
//! wall-clock speed except generous upper bounds that turn a hang into a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::missing_panics_doc)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use blindkd_client::{ClientError, QueryOutcome};
use blindkd_engine::crypto::SchemeId;
use blindkd_engine::encoding::{squared_distance, Schema};
use blindkd_engine::index::{parse_id, IndexId};
use blindkd_engine::protocol::{HostedIndex, QueryKind};
use blindkd_indexer::build::IndexJob;
use blindkd_indexer::dataset::{Dataset, Record};
use blindkd_indexer::synth::{self, Distribution, SynthSpec};
use blindkd_keys::owner::{Bundle, BundleEntry, OwnerKey};
use blindkd_keys::token::{self, Claims, DeviceKey, IssuerKey, Issuers, Scope};
use blindkd_server::{AppState, ServerLimits};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub use blindkd_client::Client;
pub use blindkd_server;

/// The policy classes of every fixture index.
pub const CLASSES: [&str; 3] = ["cardiology", "oncology", "endocrinology"];

/// Prefix of the secret note sealed in every record's payload (grep target for leak checks).
pub const NOTE_PREFIX: &str = "sealed-note-";

/// Generous bound on any single network step of a test: turns a hang into a failure, never a
/// speed assertion.
pub const HANG: Duration = Duration::from_secs(120);

/// What to build.
#[derive(Clone, Debug)]
pub struct FixtureSpec {
    /// Scheme.
    pub scheme: SchemeId,
    /// Records.
    pub n: usize,
    /// Feature columns.
    pub dims: usize,
    /// Records per leaf block.
    pub leaf: usize,
    /// Data seed.
    pub seed: u64,
    /// Issuer (hospital) name.
    pub issuer: &'static str,
}

/// A built index with everything the hospital knows about it.
pub struct Fixture {
    /// Scheme.
    pub scheme: SchemeId,
    /// The hospital's owner key (class keys, issuer seed, the index record).
    pub owner: OwnerKey,
    /// Token-signing key derived from the owner key.
    pub issuer_key: IssuerKey,
    /// The index as the server hosts it (loaded from the file the indexer wrote).
    pub index: Arc<dyn HostedIndex>,
    /// Index id (hex): the token audience.
    pub index_id: String,
    /// The plaintext table.
    pub dataset: Dataset,
    /// Opaque record id of each dataset record, in dataset order.
    pub record_ids: Vec<u64>,
    /// Encoded feature vectors, in dataset order.
    pub encoded: Vec<Vec<i64>>,
    /// The schema the index was built with.
    pub schema: Schema,
    by_id: HashMap<u64, usize>,
}

/// Unix time now, seconds.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

impl Fixture {
    /// Builds an index with the real indexer (`blindkd_indexer::build`), writes it to a temporary
    /// directory, loads it back as the server does, and removes the directory.
    pub fn build(spec: &FixtureSpec) -> Fixture {
        let mut ds = synth::generate(&SynthSpec {
            n: spec.n,
            dims: spec.dims,
            seed: spec.seed,
            distribution: Distribution::Gaussian,
            medical_columns: true,
            classes: CLASSES.iter().map(|s| s.to_string()).collect(),
        });
        for r in &mut ds.records {
            r.payload.insert(
                "note".into(),
                format!("{NOTE_PREFIX}{}-{}", r.id, r.class).into(),
            );
        }
        let mut owner = OwnerKey::generate(spec.issuer).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("fixture.bkd");
        let job = IndexJob {
            scheme: spec.scheme,
            scaling: None,
            bits: 16,
            weights: None,
            leaf_size: Some(spec.leaf),
            out: out.clone(),
            progress: false,
            owner_key: None,
        };
        let (report, record_ids) =
            blindkd_indexer::build::build(&mut owner, ds.clone(), &job).unwrap();
        let index = blindkd_engine::protocol::open_index(&out).unwrap();
        drop(dir);
        let schema = owner
            .find_index(&report.index_id)
            .expect("index record")
            .schema
            .clone();
        let encoded = blindkd_indexer::schema::encode_all(&ds, &schema).unwrap();
        let issuer_key = IssuerKey::from_bytes(owner.signing_seed());
        let by_id = record_ids
            .iter()
            .enumerate()
            .map(|(i, &id)| (id, i))
            .collect();
        Fixture {
            scheme: spec.scheme,
            owner,
            issuer_key,
            index,
            index_id: report.index_id,
            dataset: ds,
            record_ids,
            encoded,
            schema,
            by_id,
        }
    }

    /// The index id as bytes.
    pub fn id(&self) -> IndexId {
        parse_id(&self.index_id).unwrap()
    }

    /// The issuer (hospital) name.
    pub fn issuer_name(&self) -> &str {
        self.owner.issuer()
    }

    /// Pinned issuer keys trusting this fixture's hospital.
    pub fn issuers(&self) -> Issuers {
        let mut i = Issuers::new();
        i.insert(self.issuer_name(), self.issuer_key.public());
        i
    }

    /// A key bundle for `classes` of this index (as the hospital would seal it to a device).
    pub fn bundle(&self, classes: &[&str]) -> Bundle {
        let classes: Vec<String> = classes.iter().map(|s| s.to_string()).collect();
        self.owner
            .bundle(&classes, Some(&self.index_id))
            .expect("bundle")
    }

    /// A bundle holding every class key.
    pub fn full_bundle(&self) -> Bundle {
        self.bundle(&CLASSES)
    }

    /// Default claims for `device`: every class, both kinds, k ≤ 50, radius ≤ 1e6, budget 1000,
    /// valid from an hour ago for eight hours.
    pub fn claims(&self, device: &DeviceKey) -> Claims {
        let now = now_unix();
        Claims {
            iss: self.issuer_name().to_string(),
            sub: "doctor-0042".into(),
            aud: self.index_id.clone(),
            iat: now - 3600,
            nbf: now - 3600,
            exp: now + 8 * 3600,
            cti: token::random_cti(),
            scope: Scope {
                kinds: vec![token::QueryKind::Knn, token::QueryKind::Range],
                max_k: 50,
                max_radius: 1e6,
                classes: CLASSES.iter().map(|s| s.to_string()).collect(),
                budget: 1000,
                max_blocks: 64,
                max_results: 1000,
            },
            cnf: device.public().ed25519,
        }
    }

    /// Signs claims with this hospital's issuer key.
    pub fn sign(&self, claims: &Claims) -> String {
        token::issue(&self.issuer_key, claims).unwrap()
    }

    /// A token for `device` with the default claims, edited by `edit`.
    pub fn token_with(&self, device: &DeviceKey, edit: impl FnOnce(&mut Claims)) -> String {
        let mut c = self.claims(device);
        edit(&mut c);
        self.sign(&c)
    }

    /// A token for `device` with the default claims.
    pub fn token(&self, device: &DeviceKey) -> String {
        self.token_with(device, |_| {})
    }

    /// The dataset record behind an opaque record id.
    pub fn record(&self, id: u64) -> &Record {
        &self.dataset.records[self.by_id[&id]]
    }

    /// Opaque record ids of one class.
    pub fn ids_of_class(&self, class: &str) -> Vec<u64> {
        self.dataset
            .records
            .iter()
            .zip(&self.record_ids)
            .filter(|(r, _)| r.class == class)
            .map(|(_, &id)| id)
            .collect()
    }

    /// Brute force over the plaintext: `(record id, d2)` of every record in `classes` (all
    /// classes if empty), sorted by `(d2, record id)`.
    pub fn brute(&self, q: &[f64], classes: &[&str]) -> Vec<(u64, u128)> {
        let qe = self.schema.encode(q).unwrap();
        let w = self.schema.weights();
        let mut v: Vec<(u64, u128)> = self
            .dataset
            .records
            .iter()
            .zip(&self.encoded)
            .zip(&self.record_ids)
            .filter(|((r, _), _)| classes.is_empty() || classes.contains(&r.class.as_str()))
            .map(|((_, x), &id)| (id, squared_distance(x, &qe, &w)))
            .collect();
        v.sort_by_key(|t| (t.1, t.0));
        v
    }

    /// The exact answer of a query.
    pub fn truth(&self, kind: QueryKind, q: &[f64], classes: &[&str]) -> Vec<(u64, u128)> {
        let all = self.brute(q, classes);
        match kind {
            QueryKind::Knn { k } => all.into_iter().take(k as usize).collect(),
            QueryKind::Range { radius } => {
                let thr = self.schema.radius_threshold(radius).unwrap();
                all.into_iter().filter(|t| t.1 <= thr).collect()
            }
        }
    }

    /// A radius (user units) that catches about `n` records around `q`: the distance of the
    /// `n`-th nearest, nudged up by a hair so rounding cannot drop it.
    pub fn radius_for(&self, q: &[f64], n: usize, classes: &[&str]) -> f64 {
        let all = self.brute(q, classes);
        let d2 = all[n.min(all.len()) - 1].1;
        self.schema.decode_distance(d2) * 1.000_001
    }

    /// Seeded query points: some dataset points (exact hits, d2 = 0), some random points inside
    /// the column ranges.
    pub fn query_points(&self, n: usize, seed: u64) -> Vec<Vec<f64>> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let cols = synth::columns(&SynthSpec {
            dims: self.schema.dim(),
            ..SynthSpec::default()
        });
        (0..n)
            .map(|i| {
                if i % 3 == 0 {
                    let r = &self.dataset.records[rng.random_range(0..self.dataset.records.len())];
                    r.features.clone()
                } else {
                    cols.iter()
                        .map(|(_, lo, hi)| {
                            let c = rng.random_range((lo * 100.0) as i64..=(hi * 100.0) as i64);
                            c as f64 / 100.0
                        })
                        .collect()
                }
            })
            .collect()
    }

    /// Asserts a client outcome equals the oracle: same ids and squared distances in the same
    /// order, and (when fetched) payloads opening to the right record, class and fields.
    pub fn assert_matches(&self, got: &QueryOutcome, want: &[(u64, u128)], what: &str) {
        let ids: Vec<(u64, u128)> = got
            .results
            .iter()
            .map(|r| (u64::from_str_radix(&r.record_id, 16).unwrap(), r.d2))
            .collect();
        assert_eq!(ids, want, "{what}: answer differs from the brute force");
        for row in &got.results {
            let id = u64::from_str_radix(&row.record_id, 16).unwrap();
            let rec = self.record(id);
            assert_eq!(row.class, rec.class, "{what}: class of {}", row.record_id);
            if let Some(p) = &row.payload {
                assert_eq!(
                    p.record, rec.id,
                    "{what}: payload record of {}",
                    row.record_id
                );
                assert_eq!(
                    p.fields, rec.payload,
                    "{what}: payload fields of {}",
                    rec.id
                );
            }
        }
    }
}

/// One shared small fixture of 4 columns and 3 classes, built on first use.
fn shared(
    cell: &'static OnceLock<Fixture>,
    scheme: SchemeId,
    (n, leaf, seed): (usize, usize, u64),
    issuer: &'static str,
) -> &'static Fixture {
    cell.get_or_init(|| {
        Fixture::build(&FixtureSpec {
            scheme,
            n,
            dims: 4,
            leaf,
            seed,
            issuer,
        })
    })
}

/// The shared small `plain` index (300 records, 4 columns, 3 classes, leaves of 16).
pub fn plain() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    shared(&F, SchemeId::Plain, (300, 16, 11), "hospital-plain")
}

/// The shared small `mlhe` index (240 records, 4 columns, 3 classes, leaves of 32).
pub fn mlhe() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    shared(&F, SchemeId::Mlhe, (240, 32, 22), "hospital-mlhe")
}

/// A small `mlhe` index whose classes fit a direct round 1 (issue 12): 240 records, 4 columns,
/// 3 classes of one leaf each.
pub fn mlhe_direct() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    shared(&F, SchemeId::Mlhe, (240, 8191, 23), "hospital-mlhe-direct")
}

/// The first (only) entry of a fixture bundle.
pub fn entry(b: &Bundle) -> &BundleEntry {
    &b.entries[0]
}

/// The fixtures' indexes by id, and their issuers pinned.
fn hosted(fixtures: &[&Fixture]) -> (HashMap<IndexId, Arc<dyn HostedIndex>>, Issuers) {
    let mut indexes: HashMap<IndexId, Arc<dyn HostedIndex>> = HashMap::new();
    let mut issuers = Issuers::new();
    for f in fixtures {
        indexes.insert(f.id(), f.index.clone());
        issuers.insert(f.issuer_name(), f.issuer_key.public());
    }
    (indexes, issuers)
}

/// Server state hosting `fixtures`, trusting their issuers (token state in memory).
pub fn state(fixtures: &[&Fixture], limits: ServerLimits, revoked: &[PathBuf]) -> Arc<AppState> {
    let (indexes, issuers) = hosted(fixtures);
    AppState::from_indexes(indexes, issuers, revoked, None, limits).unwrap()
}

/// Server state hosting `fixtures` with token state in `store`.
pub fn state_with_store(
    fixtures: &[&Fixture],
    limits: ServerLimits,
    store: Arc<dyn blindkd_server::store::TokenStore>,
) -> Arc<AppState> {
    let (indexes, issuers) = hosted(fixtures);
    AppState::with_store(indexes, issuers, &[], None, limits, store).unwrap()
}

/// A query server on a free loopback port. Dropping it stops it.
pub struct TestServer {
    /// Address.
    pub addr: SocketAddr,
    /// `http://127.0.0.1:port`.
    pub base: String,
    /// The admin listener (`/metrics`), `http://127.0.0.1:port`.
    pub admin: String,
    /// Its state (audit lines, …).
    pub state: Arc<AppState>,
    stop: Option<tokio::sync::watch::Sender<bool>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    admin_task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    /// Starts serving `state` on `127.0.0.1:0`.
    pub async fn start(state: Arc<AppState>) -> TestServer {
        let loopback = "127.0.0.1:0".parse().unwrap();
        let listener = blindkd_server::bind(loopback).unwrap();
        let addr = listener.local_addr().unwrap();
        let admin = blindkd_server::bind(loopback).unwrap();
        let admin_addr = admin.local_addr().unwrap();
        let (tx, rx) = tokio::sync::watch::channel(false);
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|v| *v).await;
        };
        let task = tokio::spawn(blindkd_server::serve(
            listener,
            state.clone(),
            stopped(rx.clone()),
        ));
        let admin_task = tokio::spawn(blindkd_server::serve_admin(
            admin,
            state.clone(),
            stopped(rx),
        ));
        TestServer {
            addr,
            base: format!("http://{addr}"),
            admin: format!("http://{admin_addr}"),
            state,
            stop: Some(tx),
            task: Some(task),
            admin_task: Some(admin_task),
        }
    }

    /// Starts a server hosting `fixtures`.
    pub async fn hosting(fixtures: &[&Fixture], limits: ServerLimits) -> TestServer {
        Self::start(state(fixtures, limits, &[])).await
    }

    /// A doctor's client for this server.
    pub fn client(&self) -> Client {
        Client::new(&self.base).unwrap()
    }

    /// Stops the server and waits (bounded) for it to finish draining.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(true);
        }
        for task in [self.task.take(), self.admin_task.take()]
            .into_iter()
            .flatten()
        {
            tokio::time::timeout(HANG, task)
                .await
                .expect("server did not shut down")
                .unwrap()
                .unwrap();
        }
    }

    /// Prometheus counter or gauge value by full metric name.
    pub async fn metric(&self, name: &str) -> u64 {
        let text = reqwest::get(format!("{}/metrics", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        metric_value(&text, name)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(true);
        }
        for task in [self.task.take(), self.admin_task.take()]
            .into_iter()
            .flatten()
        {
            task.abort();
        }
    }
}

/// Reads one metric from Prometheus text; panics if absent.
pub fn metric_value(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (n, v) = l.split_once(' ')?;
            (n == name).then(|| v.trim().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("metric {name} missing from:\n{text}"))
}

/// The server's code of a client error; panics on any other kind of error.
pub fn code_of(e: &ClientError) -> &str {
    e.code()
        .unwrap_or_else(|| panic!("expected a server refusal, got {e}"))
}

/// Reads an error reply: `(status, code, message)`; asserts it is JSON `{code, message}`.
pub async fn error_reply(resp: reqwest::Response) -> (u16, String, String) {
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = resp.bytes().await.unwrap();
    assert!(
        ct.starts_with("application/json"),
        "error reply {status} has content type {ct:?}: {}",
        String::from_utf8_lossy(&body)
    );
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let obj = v.as_object().expect("error body is an object");
    assert_eq!(obj.len(), 2, "error body has exactly code and message: {v}");
    (
        status,
        obj["code"].as_str().unwrap().to_string(),
        obj["message"].as_str().unwrap().to_string(),
    )
}

/// Opens a session by hand (raw HTTP): fetches a nonce and posts `{token, nonce, pop}` where the
/// proof is made by `signer` (or left out if `None`). Returns the raw response and the nonce.
pub async fn raw_session(
    http: &reqwest::Client,
    base: &str,
    token_text: &str,
    signer: Option<&DeviceKey>,
) -> (reqwest::Response, String) {
    let nonce = fresh_nonce(http, base).await;
    let pop = signer
        .map(|d| hex::encode(d.sign_pop(&hex::decode(&nonce).unwrap(), token_text)))
        .unwrap_or_default();
    let resp = post_session(http, base, token_text, &nonce, &pop).await;
    (resp, nonce)
}

/// `GET {base}{path}` as JSON.
pub async fn get_json(base: &str, path: &str) -> serde_json::Value {
    http()
        .get(format!("{base}{path}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// A nonce from `POST /v1/nonces`.
pub async fn fresh_nonce(http: &reqwest::Client, base: &str) -> String {
    let v: serde_json::Value = http
        .post(format!("{base}/v1/nonces"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["nonce"].as_str().unwrap().to_string()
}

/// `POST /v1/sessions` with the given fields.
pub async fn post_session(
    http: &reqwest::Client,
    base: &str,
    token_text: &str,
    nonce: &str,
    pop: &str,
) -> reqwest::Response {
    http.post(format!("{base}/v1/sessions"))
        .json(&serde_json::json!({ "token": token_text, "nonce": nonce, "pop": pop }))
        .send()
        .await
        .unwrap()
}

/// A plain reqwest client with a generous timeout and no retries.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(HANG).build().unwrap()
}

/// The round-1 request bytes a real client would send for `kind` at `q`.
pub fn start_request(
    entry: &BundleEntry,
    kind: QueryKind,
    q: &[f64],
    classes: Vec<String>,
) -> Vec<u8> {
    let qe = entry.schema.encode(q).unwrap();
    let mut c = blindkd_keys::protocol::new_query_client(
        entry,
        kind,
        &qe,
        classes,
        blindkd_keys::protocol::BatchPolicy::default(),
    )
    .unwrap();
    c.start_request(&blindkd_engine::crypto::FIXED_PK_SEED)
        .unwrap()
}
