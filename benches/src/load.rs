//! `blindkd load`: a bounded load test against a real server on 127.0.0.1.
//!
//! Concurrent clients, each with its own token and device key, send kNN queries at a fixed total rate
//! (open loop: a late client catches up, it does not slow the schedule) for a fixed duration. Every
//! answer is checked against the brute-force oracle. The process RSS (server and clients share the
//! process) is sampled every second. A final burst, sent without the client's retries at a server
//! with one evaluation slot and a one-place queue, must produce 429 `overloaded` codes rather than
//! failures. Loopback only; bounded in time and count.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blindkd_engine::crypto::mlhe::Mlhe;
use blindkd_engine::index::{id_hex, SchemeParams};
use blindkd_indexer::synth::Distribution;
use blindkd_keys::owner::OwnerKey;
use blindkd_keys::protocol::{new_query_client, BatchPolicy, QueryKind};
use blindkd_keys::token::{self, DeviceKey, Scope};

use crate::{data, lanes};

/// Arguments of `blindkd load`.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Concurrent clients.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Total queries per second across all clients.
    #[arg(long, default_value_t = 4.0)]
    pub rate: f64,
    /// Seconds of load.
    #[arg(long, default_value_t = 120)]
    pub duration: u64,
    /// Records in the index.
    #[arg(long, default_value_t = 20_000)]
    pub n: usize,
    /// Dimensions.
    #[arg(long, default_value_t = 10)]
    pub dims: usize,
    /// kNN k.
    #[arg(long, default_value_t = 10)]
    pub k: u32,
    /// Evaluation slots on the server.
    #[arg(long, default_value_t = 4)]
    pub max_concurrent: usize,
    /// Requests in the overload burst.
    #[arg(long, default_value_t = 32)]
    pub burst: usize,
}

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs the load test and prints a Markdown report.
pub fn run(a: &LoadArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.clients >= 1 && a.rate > 0.0 && a.duration >= 1,
        "clients, rate and duration must be positive"
    );
    anyhow::ensure!(
        a.duration <= 3600 && a.clients <= 1024,
        "bounded: at most 1 hour and 1024 clients"
    );
    let queries = 64;
    let d = data::make(a.n, a.dims, queries, Distribution::Clustered, 11)?;
    let mut owner = OwnerKey::generate("load-hospital")?;
    let m = Mlhe::new()?;
    let built = lanes::build(
        &m,
        SchemeParams::Mlhe(m.params()),
        &mut owner,
        "load",
        &d,
        8192,
        None,
        false,
    )?;
    let truths: Vec<Vec<(u64, u128)>> = d
        .queries
        .iter()
        .map(|q| data::knn_truth(data::distances(&d, &built.ids, q), a.k as usize))
        .collect();
    let id = built.record.index_id;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;

    let make_token = |device: &DeviceKey| {
        lanes::bench_token(
            &owner,
            &built,
            device,
            "load-doctor",
            Duration::from_secs(3 * 3600),
            Scope {
                kinds: vec![token::QueryKind::Knn],
                max_k: a.k,
                max_radius: 0.0,
                classes: built.record.classes.clone(),
                budget: u32::MAX,
                max_blocks: u32::MAX,
                max_results: u32::MAX,
            },
        )
    };

    // Phase 1: fixed-rate load.
    let limits = blindkd_server::ServerLimits {
        max_concurrent: a.max_concurrent,
        ..blindkd_server::ServerLimits::default()
    };
    let (state, _state_dir) = lanes::loopback_state(&owner, &built, limits)?;
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let base = format!("http://{}", listener.local_addr()?);
    let admin = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let admin_base = format!("http://{}", admin.local_addr()?);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let server = rt.spawn(blindkd_server::serve(
        listener,
        state.clone(),
        stopped(stop_rx.clone()),
    ));
    let admin_server = rt.spawn(blindkd_server::serve_admin(
        admin,
        state.clone(),
        stopped(stop_rx),
    ));
    let bundle = Arc::new(owner.bundle(&built.record.classes, Some(&id_hex(&id)))?);
    anyhow::ensure!(!bundle.entries.is_empty(), "empty bundle");
    let queries_user = Arc::new(d.queries_user.clone());
    let truths = Arc::new(truths);
    let errors = Arc::new(AtomicU64::new(0));
    let wrong = Arc::new(AtomicU64::new(0));
    let rss_start = rss_kb();
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(a.duration);
    let interval = Duration::from_secs_f64(a.clients as f64 / a.rate);
    let mut tasks = Vec::new();
    for c in 0..a.clients {
        let device = DeviceKey::random();
        let text = make_token(&device)?;
        let (base, bundle, qs, truths, errors, wrong) = (
            base.clone(),
            bundle.clone(),
            queries_user.clone(),
            truths.clone(),
            errors.clone(),
            wrong.clone(),
        );
        let k = a.k;
        tasks.push(rt.spawn(async move {
            let mut lat = Vec::new();
            let client = match blindkd_client::Client::new(&base) {
                Ok(c) => c,
                Err(_) => {
                    errors.fetch_add(1, Ordering::Relaxed);
                    return lat;
                }
            };
            let session = match client.open_session(&text, &device).await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("client {c}: {e}");
                    errors.fetch_add(1, Ordering::Relaxed);
                    return lat;
                }
            };
            // Stagger the clients over one interval.
            let mut next =
                Instant::now() + interval.mul_f64(c as f64 / 16.0_f64.max(1.0)).min(interval);
            let mut i = c;
            while next < deadline {
                tokio::time::sleep_until(next.into()).await;
                next += interval;
                let qi = i % qs.len();
                i += 7;
                let t = Instant::now();
                match client
                    .query(
                        &session,
                        &bundle.entries[0],
                        QueryKind::Knn { k },
                        &qs[qi],
                        vec![],
                        false,
                    )
                    .await
                {
                    Ok(out) => {
                        lat.push(t.elapsed().as_secs_f64() * 1e3);
                        let got: Vec<(u64, u128)> = out
                            .results
                            .iter()
                            .filter_map(|r| {
                                Some((u64::from_str_radix(&r.record_id, 16).ok()?, r.d2))
                            })
                            .collect();
                        if got != truths[qi] {
                            wrong.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(e) => {
                        eprintln!("client {c}: {e}");
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            let _ = client.close_session(&session).await;
            lat
        }));
    }
    let mut rss = vec![rss_start];
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_secs(1));
        rss.push(rss_kb());
        let done = Instant::now() - t0;
        if done.as_secs().is_multiple_of(15) {
            eprintln!(
                "load: {:>4} s, RSS {:.0} MB",
                done.as_secs(),
                *rss.last().unwrap_or(&0) as f64 / 1024.0
            );
        }
    }
    let mut lat: Vec<f64> = Vec::new();
    for t in tasks {
        lat.extend(rt.block_on(t)?);
    }
    let elapsed = t0.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    let overloaded_during_load = rt.block_on(async {
        let text = reqwest::get(format!("{admin_base}/metrics"))
            .await?
            .text()
            .await?;
        anyhow::Ok(
            text.lines()
                .find(|l| l.starts_with("blindkd_overloaded_total "))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .unwrap_or(0),
        )
    })?;
    let _ = stop_tx.send(true);
    rt.block_on(server)??;
    rt.block_on(admin_server)??;

    // Phase 2: overload burst without client retries against one slot and a one-place queue.
    // One token sends the burst: its own in-flight and live-query caps are lifted, so the 429s
    // measured are the server's gate.
    let limits = blindkd_server::ServerLimits {
        max_concurrent: 1,
        max_waiting: 1,
        queue_wait: Duration::from_millis(200),
        max_in_flight_per_token: usize::MAX,
        max_live_queries_per_token: usize::MAX,
        ..blindkd_server::ServerLimits::default()
    };
    let (state, _state_dir2) = lanes::loopback_state(&owner, &built, limits)?;
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let base2 = format!("http://{}", listener.local_addr()?);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = rt.spawn(blindkd_server::serve(listener, state, async {
        let _ = stop_rx.await;
    }));
    let device = DeviceKey::random();
    let text = make_token(&device)?;
    let mut statuses: HashMap<u16, usize> = HashMap::new();
    rt.block_on(async {
        let client = blindkd_client::Client::new(&base2)?;
        let session = client.open_session(&text, &device).await?;
        let entry = &bundle.entries[0];
        let q = entry.schema.encode(&queries_user[0])?;
        let mut qc = new_query_client(
            entry,
            QueryKind::Knn { k: a.k },
            &q,
            vec![],
            BatchPolicy::default(),
        )?;
        let body = qc.start_request(&blindkd_engine::crypto::FIXED_PK_SEED)?;
        let http = reqwest::Client::new();
        let url = format!("{base2}/v1/indexes/{}/queries", id_hex(&id));
        let sends: Vec<_> = (0..a.burst)
            .map(|_| {
                tokio::spawn(
                    http.post(&url)
                        .bearer_auth(&session.session)
                        .header("content-type", "application/octet-stream")
                        .body(body.clone())
                        .send(),
                )
            })
            .collect();
        for h in sends {
            let status = match h.await {
                Ok(Ok(r)) => r.status().as_u16(),
                _ => 0,
            };
            *statuses.entry(status).or_default() += 1;
        }
        anyhow::Ok(())
    })?;
    let _ = stop_tx.send(());
    rt.block_on(server)??;

    let rss_mb: Vec<f64> = rss.iter().map(|&k| k as f64 / 1024.0).collect();
    let third = rss_mb.len() / 3;
    println!("# blindkd load test");
    println!();
    println!(
        "mlhe index: {} records × d = {}, kNN k = {}; {} clients, target {:.2} queries/s for {} s; server {} evaluation slots",
        a.n, a.dims, a.k, a.clients, a.rate, a.duration, a.max_concurrent
    );
    println!();
    println!("| metric | value |");
    println!("|---|---|");
    println!(
        "| queries completed | {} ({:.2}/s achieved) |",
        lat.len(),
        lat.len() as f64 / elapsed
    );
    println!("| errors | {} |", errors.load(Ordering::Relaxed));
    println!(
        "| answers differing from the oracle | {} |",
        wrong.load(Ordering::Relaxed)
    );
    println!("| 429 overloaded during load (retried by the client) | {overloaded_during_load} |");
    println!(
        "| latency p50 / p95 / p99 / max | {:.0} / {:.0} / {:.0} / {:.0} ms |",
        pct(&lat, 0.5),
        pct(&lat, 0.95),
        pct(&lat, 0.99),
        lat.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "| RSS start / after ⅓ / after ⅔ / end | {:.0} / {:.0} / {:.0} / {:.0} MB |",
        rss_mb.first().copied().unwrap_or(0.0),
        rss_mb.get(third).copied().unwrap_or(0.0),
        rss_mb.get(2 * third).copied().unwrap_or(0.0),
        rss_mb.last().copied().unwrap_or(0.0)
    );
    let mut st: Vec<_> = statuses.into_iter().collect();
    st.sort();
    println!(
        "| overload burst: {} simultaneous starts, 1 slot, 1-place queue, no retries | {} |",
        a.burst,
        st.iter()
            .map(|(s, n)| format!("{n}× HTTP {s}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let errs = errors.load(Ordering::Relaxed) + wrong.load(Ordering::Relaxed);
    anyhow::ensure!(errs == 0, "{errs} errors or wrong answers under load");
    anyhow::ensure!(
        st.iter().all(|(s, _)| *s == 200 || *s == 429),
        "the overload burst produced codes other than 200/429: {st:?}"
    );
    Ok(())
}
