//! The claims of an access token and their CWT (CBOR) form.

use coset::cbor::value::Value;
use coset::cwt::{ClaimName, ClaimsSet, Timestamp};
use coset::iana;
use rand::RngCore;
use serde::{Deserialize, Serialize};

use super::{codes, refuse};
use crate::Result;

/// A kind of query a token may allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueryKind {
    /// k nearest neighbours.
    Knn,
    /// All records within a radius.
    Range,
}

impl QueryKind {
    /// The kind's code in the scope claim.
    pub fn to_code(self) -> u8 {
        match self {
            QueryKind::Knn => 0,
            QueryKind::Range => 1,
        }
    }
    fn from_code(code: i128) -> Option<Self> {
        match code {
            0 => Some(QueryKind::Knn),
            1 => Some(QueryKind::Range),
            _ => None,
        }
    }
}

/// What a token allows. Encoded as the private-use claim −65537, a CBOR map
/// `{1: [kind…], 2: max_k, 3: max_radius, 4: [class…], 5: budget, 6: max_blocks, 7: max_results}`
/// with kinds `knn` = 0 and `range` = 1.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scope {
    /// Allowed query kinds (non-empty, no repeats).
    pub kinds: Vec<QueryKind>,
    /// Largest k of a kNN query.
    pub max_k: u32,
    /// Largest radius of a range query, in user units (finite, ≥ 0).
    pub max_radius: f64,
    /// Policy classes the doctor may query (non-empty, no repeats).
    pub classes: Vec<String>,
    /// Units of work the token allows in total, across all its sessions: one unit per block the
    /// server evaluates (pivot or leaf) and one per payload it serves.
    pub budget: u32,
    /// Most leaf blocks one query may evaluate (≥ 1): with the records per leaf, this bounds how
    /// many distances one query can open.
    pub max_blocks: u32,
    /// Most payloads one range query may fetch (≥ 1); a kNN query may fetch at most k.
    pub max_results: u32,
}

impl Scope {
    /// Whether this scope allows queries of `kind`.
    pub fn allows_kind(&self, kind: QueryKind) -> bool {
        self.kinds.contains(&kind)
    }

    /// Whether this scope allows queries on policy class `class`.
    pub fn allows_class(&self, class: &str) -> bool {
        self.classes.iter().any(|c| c == class)
    }
}

/// The claims of an access token (DESIGN §5).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer: the hospital's name; also the `kid` that selects its pinned key.
    pub iss: String,
    /// Subject: the doctor.
    pub sub: String,
    /// Audience: the index id.
    pub aud: String,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// Not before, Unix seconds.
    pub nbf: i64,
    /// Expires, Unix seconds.
    pub exp: i64,
    /// Token id, 16 random bytes, used for revocation.
    #[serde(with = "hex_array")]
    pub cti: [u8; 16],
    /// What the token allows.
    pub scope: Scope,
    /// Confirmation key: the doctor's device Ed25519 public key (proof of possession).
    #[serde(with = "hex_array")]
    pub cnf: [u8; 32],
}

/// 16 fresh random bytes for [`Claims::cti`].
pub fn random_cti() -> [u8; 16] {
    let mut cti = [0u8; 16];
    rand::rng().fill_bytes(&mut cti);
    cti
}

/// Longest `iss`, `sub`, `aud` or class name, in bytes.
const MAX_NAME_BYTES: usize = 128;
/// Most policy classes in one scope.
const MAX_CLASSES: usize = 64;

/// The private-use CWT claim label of [`Scope`].
pub(super) const SCOPE_LABEL: i64 = -65537;

const SCOPE_KINDS: i64 = 1;
const SCOPE_MAX_K: i64 = 2;
const SCOPE_MAX_RADIUS: i64 = 3;
const SCOPE_CLASSES: i64 = 4;
const SCOPE_BUDGET: i64 = 5;
const SCOPE_MAX_BLOCKS: i64 = 6;
const SCOPE_MAX_RESULTS: i64 = 7;

// COSE_Key labels and values (RFC 9052 §7, RFC 9053 §7.2) for the `cnf` claim (RFC 8747 §3.1).
const CNF_COSE_KEY: i64 = 1;
const KEY_KTY: i64 = 1;
const KEY_CRV: i64 = -1;
const KEY_X: i64 = -2;
const KTY_OKP: i64 = 1;
const CRV_ED25519: i64 = 6;

impl Claims {
    /// Checks the invariants every token must satisfy; a decoded token that breaks one is
    /// malformed, and `blindkd_keys::token::issue` refuses to sign one.
    pub fn validate(&self) -> Result<()> {
        let bad = |detail: String| Err(refuse(codes::MALFORMED_TOKEN, detail));
        for (name, value) in [("iss", &self.iss), ("sub", &self.sub), ("aud", &self.aud)] {
            if value.is_empty() || value.len() > MAX_NAME_BYTES {
                return bad(format!("{name} must be 1..={MAX_NAME_BYTES} bytes"));
            }
            if value.chars().any(char::is_control) {
                // Names reach terminals and logs: an escape sequence could rewrite what is shown.
                return bad(format!("{name} must not contain control characters"));
            }
        }
        if self.exp <= self.nbf {
            return bad(format!(
                "exp ({}) must be after nbf ({})",
                self.exp, self.nbf
            ));
        }
        let s = &self.scope;
        if s.kinds.is_empty()
            || s.kinds.len() > 2
            || (s.kinds.len() == 2 && s.kinds[0] == s.kinds[1])
        {
            return bad("scope kinds must be non-empty without repeats".into());
        }
        if s.max_blocks == 0 || s.max_results == 0 || s.budget == 0 || s.max_k == 0 {
            return bad(
                "scope max_k, budget, max_blocks and max_results must be at least 1".into(),
            );
        }
        if !s.max_radius.is_finite() || s.max_radius < 0.0 {
            return bad("scope max_radius must be finite and >= 0".into());
        }
        if s.classes.is_empty() || s.classes.len() > MAX_CLASSES {
            return bad(format!("scope must name 1..={MAX_CLASSES} classes"));
        }
        for (i, class) in s.classes.iter().enumerate() {
            if class.is_empty() || class.len() > MAX_NAME_BYTES {
                return bad(format!("class names must be 1..={MAX_NAME_BYTES} bytes"));
            }
            if class.chars().any(char::is_control) {
                return bad("class names must not contain control characters".into());
            }
            if s.classes[..i].contains(class) {
                return bad(format!("class {class:?} is repeated"));
            }
        }
        Ok(())
    }

    /// The CWT claims set (the payload a token signs). Assumes [`Claims::validate`] passed.
    pub fn to_cwt(&self) -> ClaimsSet {
        let kinds = self
            .scope
            .kinds
            .iter()
            .map(|k| Value::from(k.to_code()))
            .collect();
        let classes = self
            .scope
            .classes
            .iter()
            .map(|c| Value::Text(c.clone()))
            .collect();
        let scope = Value::Map(vec![
            (Value::from(SCOPE_KINDS), Value::Array(kinds)),
            (Value::from(SCOPE_MAX_K), Value::from(self.scope.max_k)),
            (
                Value::from(SCOPE_MAX_RADIUS),
                Value::Float(self.scope.max_radius),
            ),
            (Value::from(SCOPE_CLASSES), Value::Array(classes)),
            (Value::from(SCOPE_BUDGET), Value::from(self.scope.budget)),
            (
                Value::from(SCOPE_MAX_BLOCKS),
                Value::from(self.scope.max_blocks),
            ),
            (
                Value::from(SCOPE_MAX_RESULTS),
                Value::from(self.scope.max_results),
            ),
        ]);
        let cose_key = Value::Map(vec![
            (Value::from(KEY_KTY), Value::from(KTY_OKP)),
            (Value::from(KEY_CRV), Value::from(CRV_ED25519)),
            (Value::from(KEY_X), Value::Bytes(self.cnf.to_vec())),
        ]);
        let cnf = Value::Map(vec![(Value::from(CNF_COSE_KEY), cose_key)]);
        ClaimsSet {
            issuer: Some(self.iss.clone()),
            subject: Some(self.sub.clone()),
            audience: Some(self.aud.clone()),
            expiration_time: Some(Timestamp::WholeSeconds(self.exp)),
            not_before: Some(Timestamp::WholeSeconds(self.nbf)),
            issued_at: Some(Timestamp::WholeSeconds(self.iat)),
            cwt_id: Some(self.cti.to_vec()),
            rest: vec![
                (ClaimName::Assigned(iana::CwtClaimName::Cnf), cnf),
                (ClaimName::PrivateUse(SCOPE_LABEL), scope),
            ],
        }
    }

    /// Reads and validates a CWT claims set; every failure is `malformed_token`.
    pub(super) fn from_cwt(set: ClaimsSet) -> Result<Self> {
        let missing = |name: &str| refuse(codes::MALFORMED_TOKEN, format!("claim {name} missing"));
        let time = |t: Option<Timestamp>, name: &str| match t {
            Some(Timestamp::WholeSeconds(s)) => Ok(s),
            Some(Timestamp::FractionalSeconds(_)) => Err(refuse(
                codes::MALFORMED_TOKEN,
                format!("claim {name} must be whole seconds"),
            )),
            None => Err(missing(name)),
        };
        let cti_bytes = set.cwt_id.ok_or_else(|| missing("cti"))?;
        let cti: [u8; 16] = cti_bytes
            .as_slice()
            .try_into()
            .map_err(|_| refuse(codes::MALFORMED_TOKEN, "cti must be 16 bytes"))?;
        let mut cnf = None;
        let mut scope = None;
        for (name, value) in set.rest {
            match name {
                ClaimName::Assigned(iana::CwtClaimName::Cnf) => cnf = Some(parse_cnf(value)?),
                ClaimName::PrivateUse(SCOPE_LABEL) => scope = Some(parse_scope(value)?),
                other => {
                    return Err(refuse(
                        codes::MALFORMED_TOKEN,
                        format!("unexpected claim {other:?}"),
                    ))
                }
            }
        }
        let claims = Claims {
            iss: set.issuer.ok_or_else(|| missing("iss"))?,
            sub: set.subject.ok_or_else(|| missing("sub"))?,
            aud: set.audience.ok_or_else(|| missing("aud"))?,
            iat: time(set.issued_at, "iat")?,
            nbf: time(set.not_before, "nbf")?,
            exp: time(set.expiration_time, "exp")?,
            cti,
            scope: scope.ok_or_else(|| missing("scope"))?,
            cnf: cnf.ok_or_else(|| missing("cnf"))?,
        };
        claims.validate()?;
        Ok(claims)
    }
}

fn malformed(detail: &str) -> crate::Error {
    refuse(codes::MALFORMED_TOKEN, detail)
}

/// Reads a map whose keys are small integers, each present exactly once from `labels`.
fn int_map<const N: usize>(value: Value, labels: [i64; N], what: &str) -> Result<[Value; N]> {
    let Value::Map(entries) = value else {
        return Err(malformed(&format!("{what} must be a map")));
    };
    if entries.len() != N {
        return Err(malformed(&format!(
            "{what} must have {N} entries, it has {} (a token from an older blindkd: issue a new one)",
            entries.len()
        )));
    }
    let mut out: [Option<Value>; N] = std::array::from_fn(|_| None);
    for (k, v) in entries {
        let key = match k {
            Value::Integer(i) => i128::from(i),
            _ => return Err(malformed(&format!("{what} keys must be integers"))),
        };
        let slot = labels
            .iter()
            .position(|&l| i128::from(l) == key)
            .ok_or_else(|| malformed(&format!("{what} has unknown key {key}")))?;
        if out[slot].replace(v).is_some() {
            return Err(malformed(&format!("{what} repeats key {key}")));
        }
    }
    // Every slot is filled: N distinct keys, each matched to one of N labels.
    let mut values = Vec::with_capacity(N);
    for v in out {
        values.push(v.ok_or_else(|| malformed(&format!("{what} is incomplete")))?);
    }
    values
        .try_into()
        .map_err(|_| malformed(&format!("{what} is incomplete")))
}

fn int_of(value: &Value) -> Option<i128> {
    match value {
        Value::Integer(i) => Some(i128::from(*i)),
        _ => None,
    }
}

fn u32_of(value: &Value, what: &str) -> Result<u32> {
    int_of(value)
        .and_then(|i| u32::try_from(i).ok())
        .ok_or_else(|| malformed(&format!("{what} must be an unsigned 32-bit integer")))
}

fn parse_cnf(value: Value) -> Result<[u8; 32]> {
    let [key] = int_map(value, [CNF_COSE_KEY], "cnf")?;
    let [kty, crv, x] = int_map(key, [KEY_KTY, KEY_CRV, KEY_X], "cnf COSE_Key")?;
    if int_of(&kty) != Some(i128::from(KTY_OKP)) || int_of(&crv) != Some(i128::from(CRV_ED25519)) {
        return Err(malformed("cnf key must be OKP / Ed25519"));
    }
    match x {
        Value::Bytes(b) => b
            .as_slice()
            .try_into()
            .map_err(|_| malformed("cnf key must be 32 bytes")),
        _ => Err(malformed("cnf key x must be a byte string")),
    }
}

fn parse_scope(value: Value) -> Result<Scope> {
    let [kinds, max_k, max_radius, classes, budget, max_blocks, max_results] = int_map(
        value,
        [
            SCOPE_KINDS,
            SCOPE_MAX_K,
            SCOPE_MAX_RADIUS,
            SCOPE_CLASSES,
            SCOPE_BUDGET,
            SCOPE_MAX_BLOCKS,
            SCOPE_MAX_RESULTS,
        ],
        "scope",
    )?;
    let Value::Array(kinds) = kinds else {
        return Err(malformed("scope kinds must be an array"));
    };
    let kinds = kinds
        .iter()
        .map(|k| int_of(k).and_then(QueryKind::from_code))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| malformed("scope has an unknown query kind"))?;
    let max_radius = match max_radius {
        Value::Float(f) => f,
        Value::Integer(i) => i128::from(i) as f64,
        _ => return Err(malformed("scope max_radius must be a number")),
    };
    let Value::Array(classes) = classes else {
        return Err(malformed("scope classes must be an array"));
    };
    let classes = classes
        .into_iter()
        .map(|c| match c {
            Value::Text(t) => Some(t),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| malformed("scope classes must be text"))?;
    Ok(Scope {
        kinds,
        max_k: u32_of(&max_k, "scope max_k")?,
        max_radius,
        classes,
        budget: u32_of(&budget, "scope budget")?,
        max_blocks: u32_of(&max_blocks, "scope max_blocks")?,
        max_results: u32_of(&max_results, "scope max_results")?,
    })
}

mod hex_array {
    use serde::{de::Error as _, Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer, const N: usize>(
        bytes: &[u8; N],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<[u8; N], D::Error> {
        let text = String::deserialize(d)?;
        let bytes = hex::decode(&text).map_err(D::Error::custom)?;
        bytes
            .try_into()
            .map_err(|_| D::Error::custom(format!("expected {N} hex-encoded bytes")))
    }
}
