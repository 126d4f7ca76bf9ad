//! A host that lies (issue 17, S1–S3): a rewriting proxy sits between the real `Client` and a
//! real server on 127.0.0.1 and changes replies the way a malicious cloud could (it holds no
//! key). Every change must make the client fail closed with the one uniform `integrity` error,
//! before it acts on any decrypted value; none may yield a wrong answer or a hang.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use blindkd_client::{ClientError, QueryOutcome};
use blindkd_engine::crypto::mlhe::Mlhe;
use blindkd_engine::protocol::{BlockReply, EvaluatedBlock, PayloadReply, QueryKind, StartReply};
use blindkd_engine::tree::{ShapeNode, TreeShape};
use blindkd_keys::token::DeviceKey;
use blindkd_server::ServerLimits;
use blindkd_tests::{entry, mlhe, mlhe_direct, Client, Fixture, TestServer};

/// A lie about evaluated leaf blocks, in a block round or in a direct round 1.
#[derive(Clone, Copy, Debug, PartialEq)]
enum LeafLie {
    /// Each leaf reply's first row shifted by this much.
    ShiftRow(u64),
    /// The last leaf dropped.
    Truncate,
    /// The record ids of the first leaf reversed.
    ReverseIds,
    /// One id repeated over the next.
    RepeatId,
    /// An id that is in no leaf of the index.
    ForeignId,
    /// Two leaves' replies swapped (ids kept in place).
    SwapReplies,
}

fn tell(lie: LeafLie, blocks: &mut Vec<EvaluatedBlock>) {
    match lie {
        LeafLie::ShiftRow(d) => {
            for b in blocks.iter_mut() {
                b.reply = shift(&b.reply, 0, d);
            }
        }
        LeafLie::Truncate => {
            blocks.pop();
        }
        LeafLie::ReverseIds => blocks[0].record_ids.reverse(),
        LeafLie::RepeatId => {
            let ids = &mut blocks[0].record_ids;
            ids[1] = ids[0];
        }
        LeafLie::ForeignId => blocks[0].record_ids[0] ^= 0x5555_0000_0000_0001,
        LeafLie::SwapReplies => {
            if blocks.len() >= 2 {
                let a = blocks[0].reply.clone();
                blocks[0].reply = blocks[1].reply.clone();
                blocks[1].reply = a;
            }
        }
    }
}

/// What the proxy does to replies.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Attack {
    Honest,
    /// Round 1 answered with two bytes `00 00` (zero classes).
    EmptyStart,
    /// Round 1 without its last class.
    DropClass,
    /// Round 1 with the first class twice.
    RepeatClass,
    /// Round 1 with one pivot result shifted by this much.
    ShiftPivot(u64),
    /// A lie about the leaves of every block reply.
    Leaves(LeafLie),
    /// Leaf replies with zero blocks, forever (the proxy answers itself).
    EmptyBlocks,
    /// A reply of 256 MiB.
    HugeReply,
    /// Trailing bytes after a valid round-1 reply.
    TrailingBytes,
    /// A tree rewired so that two sibling leaves trade places (renumbered so the shape is still
    /// well-formed and every slot and mask still matches): pivot bounds then guard the wrong
    /// records. Only the owner's manifest catches it.
    RewireShape,
    /// A payload reply with the payloads of two records swapped.
    SwapPayloads,
    /// A lie about the leaves of a direct round 1.
    Direct(LeafLie),
    /// A direct round 1 relabelled as a pivot round (its leaves kept).
    DirectOff,
    /// A pivot round relabelled as direct, with no leaves: the answer would be empty.
    FakeDirect,
}

struct Proxy {
    base: String,
    attack: Arc<Mutex<Attack>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone)]
struct Upstream {
    base: String,
    http: reqwest::Client,
    attack: Arc<Mutex<Attack>>,
}

fn shift(reply: &[u8], row: usize, delta: u64) -> Vec<u8> {
    Mlhe::new().unwrap().forge_add(reply, row, delta).unwrap()
}

fn rewrite(attack: Attack, path: &str, body: Vec<u8>) -> Vec<u8> {
    let is_start = path.ends_with("/queries");
    let is_blocks = path.ends_with("/blocks");
    let is_payloads = path.ends_with("/payloads");
    let start = || postcard::from_bytes::<StartReply>(&body).unwrap();
    let blocks = || postcard::from_bytes::<BlockReply>(&body).unwrap();
    match attack {
        Attack::EmptyStart if is_start => vec![0, 0],
        Attack::DropClass if is_start => {
            let mut r = start();
            r.classes.pop();
            enc(&r)
        }
        Attack::RepeatClass if is_start => {
            let mut r = start();
            let first = r.classes[0].clone();
            r.classes.push(first);
            enc(&r)
        }
        Attack::Direct(lie) if is_start => {
            let mut r = start();
            tell(lie, &mut r.leaves);
            enc(&r)
        }
        Attack::DirectOff if is_start => {
            let mut r = start();
            r.direct = false;
            enc(&r)
        }
        Attack::FakeDirect if is_start => {
            let mut r = start();
            r.direct = true;
            r.leaves.clear();
            for c in &mut r.classes {
                c.pivot_replies.clear();
            }
            enc(&r)
        }
        Attack::ShiftPivot(d) if is_start => {
            let mut r = start();
            for c in &mut r.classes {
                c.pivot_replies[0] = shift(&c.pivot_replies[0], 0, d).into();
            }
            enc(&r)
        }
        Attack::RewireShape if is_start => {
            let mut r = start();
            for c in &mut r.classes {
                rewire(&mut c.shape);
            }
            enc(&r)
        }
        Attack::TrailingBytes if is_start => {
            let mut b = body;
            b.extend_from_slice(&[0, 0, 0]);
            b
        }
        Attack::Leaves(lie) if is_blocks => {
            let mut r = blocks();
            tell(lie, &mut r.blocks);
            enc(&r)
        }
        Attack::SwapPayloads if is_payloads => {
            let mut r = postcard::from_bytes::<PayloadReply>(&body).unwrap();
            if r.payloads.len() >= 2 {
                let a = r.payloads[0].sealed.clone();
                r.payloads[0].sealed = r.payloads[1].sealed.clone();
                r.payloads[1].sealed = a;
            }
            enc(&r)
        }
        _ => body,
    }
}

/// Swaps the first pair of sibling leaves with equal row counts, keeping the shape valid: the
/// left position gets the right leaf's node (and pivot ball) with the left leaf's number and slots.
fn rewire(shape: &mut TreeShape) {
    for v in 0..shape.nodes.len() {
        let ShapeNode::Inner { left, right } = shape.nodes[v] else {
            continue;
        };
        let (l, r) = (left as usize, right as usize);
        let (
            ShapeNode::Leaf {
                leaf: la,
                first_slot: sa,
                rows: ra,
            },
            ShapeNode::Leaf {
                leaf: lb,
                first_slot: sb,
                rows: rb,
            },
        ) = (shape.nodes[l], shape.nodes[r])
        else {
            continue;
        };
        if ra != rb {
            continue;
        }
        shape.nodes[v] = ShapeNode::Inner {
            left: right,
            right: left,
        };
        shape.nodes[r] = ShapeNode::Leaf {
            leaf: la,
            first_slot: sa,
            rows: ra,
        };
        shape.nodes[l] = ShapeNode::Leaf {
            leaf: lb,
            first_slot: sb,
            rows: rb,
        };
        shape.leaves.swap(la as usize, lb as usize);
        return;
    }
    panic!("no pair of sibling leaves with equal rows to rewire");
}

fn enc<T: serde::Serialize>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).unwrap()
}

async fn forward(State(up): State<Upstream>, req: Request) -> Response {
    let attack = *up.attack.lock().unwrap();
    let path = req.uri().path().to_string();
    let is_blocks = path.ends_with("/blocks");
    if attack == Attack::EmptyBlocks && is_blocks {
        let empty = BlockReply {
            blocks: Vec::new(),
            server_micros: 0,
        };
        return Response::new(Body::from(postcard::to_allocvec(&empty).unwrap()));
    }
    if attack == Attack::HugeReply && is_blocks {
        // 64 MiB where an honest reply has a few hundred KB.
        return Response::new(Body::from(vec![7u8; 64 << 20]));
    }
    let method = req.method().clone();
    let headers = req.headers().clone();
    let body = axum::body::to_bytes(req.into_body(), 64 << 20)
        .await
        .unwrap();
    let mut rb = up
        .http
        .request(method, format!("{}{}", up.base, path))
        .body(body);
    for (k, v) in &headers {
        if k != "host" && k != "content-length" {
            rb = rb.header(k, v);
        }
    }
    let resp = rb.send().await.unwrap();
    let status = resp.status();
    let mut out = Response::builder().status(status);
    for (k, v) in resp.headers() {
        if k != "content-length" && k != "transfer-encoding" {
            out = out.header(k, v);
        }
    }
    let body = resp.bytes().await.unwrap().to_vec();
    let body = if status.is_success() {
        rewrite(attack, &path, body)
    } else {
        body
    };
    out.body(Body::from(body)).unwrap()
}

/// The client's one error for a lying host (matched on its text, so that this harness also runs
/// against builds older than the check).
fn is_integrity(e: &ClientError) -> bool {
    e.to_string().contains("failed verification")
}

async fn proxy(upstream: &TestServer) -> Proxy {
    let attack = Arc::new(Mutex::new(Attack::Honest));
    let state = Upstream {
        base: upstream.base.clone(),
        http: reqwest::Client::new(),
        attack: attack.clone(),
    };
    let app = axum::Router::new().fallback(forward).with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Proxy {
        base: format!("http://{addr}"),
        attack,
        task,
    }
}

/// Runs one query on fixture `fx` through the proxy under `attack`, bounded in time.
async fn run_on(
    p: &Proxy,
    fx: &Fixture,
    attack: Attack,
    kind: QueryKind,
    q: &[f64],
    payloads: bool,
) -> Result<Result<QueryOutcome, ClientError>, &'static str> {
    *p.attack.lock().unwrap() = Attack::Honest;
    let device = DeviceKey::random();
    let client = Client::new(&p.base).unwrap();
    let s = client
        .open_session(&fx.token(&device), &device)
        .await
        .unwrap();
    *p.attack.lock().unwrap() = attack;
    let bundle = fx.full_bundle();
    let r = tokio::time::timeout(
        Duration::from_secs(30),
        client.query(&s, entry(&bundle), kind, q, Vec::new(), payloads),
    )
    .await
    .map_err(|_| "the client hung (30 s)");
    *p.attack.lock().unwrap() = Attack::Honest;
    r
}

/// A server hosting one fixture behind the rewriting proxy, a query point, a range that covers
/// every record, a kNN k = 5, and both answered honestly through the proxy (checked exact).
struct Scene {
    /// Bind it (`_server`, not `..`): the proxy forwards to it.
    _server: TestServer,
    p: Proxy,
    q: Vec<f64>,
    everything: QueryKind,
    knn: QueryKind,
    honest: Vec<QueryOutcome>,
}

async fn scene(fx: &'static Fixture, seed: u64) -> Scene {
    let server = TestServer::hosting(&[fx], ServerLimits::default()).await;
    let p = proxy(&server).await;
    let q = fx.query_points(1, seed).remove(0);
    let everything = QueryKind::Range {
        radius: fx.radius_for(&q, usize::MAX, &[]),
    };
    let knn = QueryKind::Knn { k: 5 };
    let mut honest = Vec::new();
    for kind in [everything, knn] {
        let got = run_on(&p, fx, Attack::Honest, kind, &q, true)
            .await
            .unwrap()
            .unwrap();
        fx.assert_matches(&got, &fx.truth(kind, &q, &[]), "honest proxy");
        honest.push(got);
    }
    Scene {
        _server: server,
        p,
        q,
        everything,
        knn,
        honest,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_lie_fails_closed_with_one_error() {
    let fx = mlhe();
    // A range covering every record, and a kNN whose answer pivots steer.
    let Scene {
        _server,
        p,
        q,
        everything,
        knn,
        ..
    } = scene(fx, 5).await;
    let attacks = [
        (Attack::EmptyStart, everything, false),
        (Attack::DropClass, everything, false),
        (Attack::RepeatClass, everything, false),
        (Attack::TrailingBytes, everything, false),
        (Attack::RewireShape, knn, false),
        (Attack::ShiftPivot(1 << 39), knn, false),
        (Attack::ShiftPivot(1 << 38), knn, false),
        (Attack::ShiftPivot(1 << 36), knn, false),
        (Attack::ShiftPivot(1), knn, false),
        (
            Attack::Leaves(LeafLie::ShiftRow(1 << 39)),
            everything,
            false,
        ),
        (
            Attack::Leaves(LeafLie::ShiftRow(1 << 38)),
            everything,
            false,
        ),
        (Attack::Leaves(LeafLie::ShiftRow(3)), knn, false),
        (Attack::Leaves(LeafLie::Truncate), everything, false),
        (Attack::EmptyBlocks, everything, false),
        (Attack::Leaves(LeafLie::ReverseIds), everything, false),
        (Attack::Leaves(LeafLie::RepeatId), everything, false),
        (Attack::Leaves(LeafLie::ForeignId), everything, false),
        (Attack::Leaves(LeafLie::SwapReplies), everything, false),
        (Attack::HugeReply, everything, false),
        (Attack::SwapPayloads, knn, true),
    ];
    let failures = caught_all(&p, fx, &q, &attacks).await;
    assert!(
        failures.is_empty(),
        "{} attacks not caught:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Runs every attack through the proxy and returns what was not caught with the uniform
/// integrity error.
async fn caught_all(
    p: &Proxy,
    fx: &Fixture,
    q: &[f64],
    attacks: &[(Attack, QueryKind, bool)],
) -> Vec<String> {
    let mut failures = Vec::new();
    for &(attack, kind, payloads) in attacks {
        let outcome = run_on(p, fx, attack, kind, q, payloads).await;
        let verdict = match outcome {
            Err(hang) => Some(hang.to_string()),
            Ok(Ok(got)) => {
                let want = fx.truth(kind, q, &[]);
                let ids: Vec<(u64, u128)> = got
                    .results
                    .iter()
                    .map(|r| (u64::from_str_radix(&r.record_id, 16).unwrap(), r.d2))
                    .collect();
                Some(format!(
                    "accepted the forged reply: {} results, {}",
                    ids.len(),
                    if ids == want {
                        "the right answer by luck".to_string()
                    } else {
                        format!("a WRONG answer (truth: {} results)", want.len())
                    }
                ))
            }
            Ok(Err(e)) if is_integrity(&e) => None,
            Ok(Err(e)) => Some(format!("failed, but not with the uniform error: {e}")),
        };
        if let Some(v) = verdict {
            failures.push(format!("{attack:?}: {v}"));
        }
    }
    failures
}

/// Issue 12's direct round 1 (every leaf, no pivots, for small classes) is checked as strictly as
/// the tree rounds: every leaf, in order, with its ids and check values, and only when asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_round_lies_fail_closed() {
    let fx = mlhe_direct();
    let Scene {
        _server,
        p,
        q,
        everything,
        knn,
        honest,
        ..
    } = scene(fx, 6).await;
    for got in honest {
        assert_eq!(got.stats.rounds, 1, "a direct query has one round");
        assert_eq!(got.stats.pivot_blocks, 0, "and no pivot block");
    }
    let attacks = [
        (Attack::Direct(LeafLie::Truncate), everything, false),
        (
            Attack::Direct(LeafLie::ShiftRow(1 << 39)),
            everything,
            false,
        ),
        (Attack::Direct(LeafLie::ShiftRow(3)), knn, false),
        (Attack::Direct(LeafLie::ReverseIds), everything, false),
        (Attack::Direct(LeafLie::SwapReplies), everything, false),
        (Attack::DirectOff, everything, false),
        (Attack::DropClass, everything, false),
        (Attack::TrailingBytes, everything, false),
    ];
    let failures = caught_all(&p, fx, &q, &attacks).await;
    assert!(
        failures.is_empty(),
        "{} attacks not caught:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // A pivot round (the tree fixture has more leaves than a direct round takes) relabelled as
    // direct with no leaves would be an empty answer.
    let tree = mlhe();
    let Scene {
        _server,
        p,
        q,
        everything,
        ..
    } = scene(tree, 5).await;
    let failures = caught_all(&p, tree, &q, &[(Attack::FakeDirect, everything, false)]).await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
