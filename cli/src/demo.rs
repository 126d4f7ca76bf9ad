//! `blindkd demo`: the whole product on the bundled Cleveland heart data, in one process.
//!
//! hospital: keygen → index (mlhe) → device enrolment → token QR + sealed bundle;
//! cloud: serve on a free loopback port; doctor: scan the QR, open a session with proof of
//! possession, run a kNN and a range query for a held-out patient, open the payloads.
//! Every answer is checked against a plaintext brute force before it is printed.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use blindkd_engine::crypto::SchemeId;
use blindkd_engine::encoding::squared_distance;
use blindkd_engine::protocol::QueryKind;
use blindkd_indexer::build::IndexJob;
use blindkd_indexer::dataset::{ClassSource, ColumnSel, LoadOptions};
use blindkd_indexer::schema::Scaling;
use blindkd_keys::owner::OwnerKey;
use blindkd_keys::token::{self, DeviceKey, IssuerKey};

use crate::{
    issue_token, open_bundle, print_outcome, pub_path, read_device, DemoArgs, TokenIssueArgs,
};

const CLEVELAND: [&str; 13] = [
    "age", "sex", "cp", "trestbps", "chol", "fbs", "restecg", "thalach", "exang", "oldpeak",
    "slope", "ca", "thal",
];

fn find_dataset() -> anyhow::Result<PathBuf> {
    let candidates = [
        PathBuf::from("datasets/heart-cleveland.data"),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../datasets/heart-cleveland.data"),
    ];
    candidates.into_iter().find(|p| p.exists()).ok_or_else(|| {
        anyhow::anyhow!("cannot find datasets/heart-cleveland.data; run from the repository root")
    })
}

fn step(n: u32, s: &str) {
    println!("\n[{n}] {s}");
}

/// Runs the demo.
pub fn demo(a: &DemoArgs) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let tmp;
    let dir = match &a.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    println!("blindkd demo: working in {}", dir.display());

    step(1, "hospital: owner key");
    let key_path = dir.join("hospital.key");
    let mut owner = OwnerKey::generate("demo-hospital")?;
    crate::save_owner_key(&owner, &key_path)?;
    let revoked_list = crate::revoke::list_path(&key_path);
    crate::revoke::write_empty(&owner, &revoked_list)?;
    println!(
        "    {} (0600), {} and the signed revocation list {}",
        key_path.display(),
        pub_path(&key_path).display(),
        revoked_list.display()
    );

    step(2, "hospital: index the Cleveland heart data (mlhe), holding out the last patient as the query");
    let data = find_dataset()?;
    let opts = LoadOptions {
        has_header: false,
        columns: Some((0..13).map(ColumnSel::Index).collect()),
        class: ClassSource::Fixed("cardiology".into()),
        payload_columns: vec![ColumnSel::Index(13)],
        ..LoadOptions::default()
    };
    let mut ds = blindkd_indexer::dataset::load(&data, &opts)?;
    ds.feature_names = CLEVELAND.iter().map(|s| s.to_string()).collect();
    for r in &mut ds.records {
        let num = r
            .payload
            .remove("c13")
            .and_then(|v| v.as_f64())
            .unwrap_or(0.0) as i64;
        let dx = if num == 0 {
            "no heart disease".to_string()
        } else {
            format!("heart disease, severity {num}/4")
        };
        r.payload.insert("diagnosis".into(), dx.into());
    }
    let held_out = ds.records.pop().context("empty dataset")?;
    let index_path = dir.join("cardio.bkd");
    let job = IndexJob {
        scheme: SchemeId::Mlhe,
        scaling: Some(Scaling::ZScore {
            sigma_units: 1000.0,
        }),
        bits: 16,
        weights: None,
        leaf_size: None,
        out: index_path.clone(),
        progress: false,
        owner_key: Some(key_path.clone()),
    };
    let (report, opaque_ids) = blindkd_indexer::build::build(&mut owner, ds.clone(), &job)?;
    println!(
        "    {} records ({} rows skipped: missing cells), {} columns, z-scored (distances in standard deviations)",
        report.records, report.rows_skipped_missing, report.columns.len()
    );
    println!(
        "    {} written: {} bytes, sealed in {:.2} s, index id {}",
        index_path.display(),
        report.file_bytes,
        report.build_seconds,
        report.index_id
    );

    step(
        3,
        "cloud: start the query server on a free loopback port (no keys, issuer public key only)",
    );
    let rt = crate::runtime()?;
    let mut issuers = token::Issuers::new();
    issuers.insert(
        owner.issuer(),
        IssuerKey::from_bytes(owner.signing_seed()).public(),
    );
    let state = blindkd_server::AppState::new(blindkd_server::ServerConfig {
        indexes: vec![index_path.clone()],
        issuers,
        revoked: vec![revoked_list],
        audit: Some(dir.join("audit.log")),
        state: blindkd_server::StateConfig::File(dir.join("server-state.redb")),
        limits: blindkd_server::ServerLimits::default(),
    })?;
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = rt.spawn(blindkd_server::serve(listener, state.clone(), async {
        let _ = stop_rx.await;
    }));
    println!("    listening on http://{addr}");

    step(
        4,
        "doctor's device: key pair; hospital: token QR (PNG) and key bundle sealed to the device",
    );
    let device_path = dir.join("doctor.device");
    let device = DeviceKey::random();
    crate::save_device_key(&device, &device_path)?;
    let token_png = dir.join("token.png");
    let issue = TokenIssueArgs {
        key: key_path.clone(),
        subject: "doctor-0042".into(),
        audience: report.index_id.clone(),
        classes: vec!["cardiology".into()],
        kinds: vec!["knn".into(), "range".into()],
        max_k: 50,
        max_radius: 5.0,
        budget: 500,
        max_blocks: 32,
        max_results: 100,
        ttl: "8h".into(),
        device: pub_path(&device_path),
        out: token_png.clone(),
        svg: false,
        text: false,
    };
    let text = issue_token(&owner, &issue)?;
    blindkd_engine::atomic::write(&token_png, &token::render_qr_png(&text, 6)?)?;
    let bundle = owner.bundle(&["cardiology".into()], None)?;
    let bundle_path = dir.join("doctor.bundle");
    blindkd_engine::atomic::write(
        &bundle_path,
        &token::seal_to_device(&device.public(), &bundle.to_signed_bytes(&owner)?)?,
    )?;
    println!(
        "    token QR {} ({} chars, QR version {}), bundle {}",
        token_png.display(),
        text.len(),
        token::qr_version(&text)?,
        bundle_path.display()
    );

    step(
        5,
        "doctor: scan the QR from the image, open the bundle, open a session (proof of possession)",
    );
    let scanned = token::scan_qr(&std::fs::read(&token_png)?)?;
    if scanned != text {
        bail!("the scanned token differs from the issued one");
    }
    let device = read_device(&device_path)?;
    // The device pinned the hospital's issuer key at enrolment: the bundle must carry its
    // signature, and the bundle's manifest then vouches for the index's trees.
    let bundle = open_bundle(
        &bundle_path,
        &device,
        &crate::read_issuers(&[pub_path(&key_path)])?,
    )?;
    let entry = &bundle.entries[0];
    let client = blindkd_client::Client::new(&format!("http://{addr}"))?;
    let session = rt.block_on(client.open_session(&scanned, &device))?;
    println!(
        "    session open: classes {:?}, budget {} of {} units left, at most {} leaf blocks per query",
        session.classes, session.budget_left, session.budget, session.max_blocks
    );

    let q: Vec<f64> = held_out.features.clone();
    println!(
        "\n    held-out patient: {}",
        CLEVELAND
            .iter()
            .zip(&q)
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "    (their true diagnosis, unknown to the query: {})",
        held_out
            .payload
            .get("diagnosis")
            .and_then(|v| v.as_str())
            .unwrap_or("?")
    );

    // Plaintext oracle (the hospital's view) to prove the answers exact.
    let schema = &entry.schema;
    let qe = schema.encode(&q)?;
    let encoded = blindkd_indexer::schema::encode_all(&ds, schema)?;
    let mut truth: Vec<(u128, u64, String)> = encoded
        .iter()
        .zip(&ds.records)
        .zip(&opaque_ids)
        .map(|((x, r), &id)| {
            (
                squared_distance(x, &qe, &schema.weights()),
                id,
                r.id.clone(),
            )
        })
        .collect();
    truth.sort_by_key(|t| (t.0, t.1));

    step(
        6,
        &format!("doctor: the {} most similar past patients (kNN)", a.k),
    );
    let knn =
        rt.block_on(client.query(&session, entry, QueryKind::Knn { k: a.k }, &q, vec![], true))?;
    print_outcome(&knn);
    let want: Vec<&str> = truth
        .iter()
        .take(a.k as usize)
        .map(|t| t.2.as_str())
        .collect();
    let got: Vec<&str> = knn
        .results
        .iter()
        .filter_map(|r| r.payload.as_ref().map(|p| p.record.as_str()))
        .collect();
    check(&got, &want, "kNN")?;

    step(
        7,
        &format!(
            "doctor: every past patient within {} standard deviations (range)",
            a.radius
        ),
    );
    let range = rt.block_on(client.query(
        &session,
        entry,
        QueryKind::Range { radius: a.radius },
        &q,
        vec![],
        true,
    ))?;
    print_outcome(&range);
    let thr = schema.radius_threshold(a.radius)?;
    let want: Vec<&str> = truth
        .iter()
        .filter(|t| t.0 <= thr)
        .map(|t| t.2.as_str())
        .collect();
    let got: Vec<&str> = range
        .results
        .iter()
        .filter_map(|r| r.payload.as_ref().map(|p| p.record.as_str()))
        .collect();
    check(&got, &want, "range")?;

    step(
        8,
        "what the server saw (its audit log): no feature value, no distance, no payload",
    );
    for line in state.audit_lines() {
        println!("    {line}");
    }

    let _ = stop_tx.send(());
    rt.block_on(server).context("server task")??;
    println!(
        "\nserver shut down cleanly; demo finished in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    if a.dir.is_some() {
        println!("files kept in {}", dir.display());
    }
    Ok(())
}

fn check(got: &[&str], want: &[&str], what: &str) -> anyhow::Result<()> {
    if got != want {
        bail!("{what} answer differs from the plaintext brute force: got {got:?}, want {want:?}");
    }
    println!(
        "    ✓ identical to a plaintext brute-force {what} over the same records ({} results)",
        got.len()
    );
    Ok(())
}
