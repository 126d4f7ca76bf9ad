//! The signed revocation list (engine `token::RevocationList`, signed with `IssuerKey`): round
//! trips, and every edit is refused.
#![allow(clippy::unwrap_used)]

use blindkd_keys::token::{IssuerKey, Issuers, RevocationList, RevokedToken};

fn fixture() -> (IssuerKey, Issuers, RevocationList) {
    let key = IssuerKey::random();
    let issuers: Issuers = [("st-marys", key.public())].into_iter().collect();
    let mut list = RevocationList::new("st-marys");
    list.serial = 2;
    list.issued = 1_764_513_600;
    list.entries.push(RevokedToken {
        cti: [7; 16],
        revoked_at: 1_764_513_000,
        subject: "dr who".into(),
    });
    (key, issuers, list)
}

#[test]
fn round_trips_and_tolerates_a_bom() {
    let (key, issuers, list) = fixture();
    let text = key.sign_revocation_list(&list).unwrap();
    assert_eq!(
        RevocationList::parse_verified(text.as_bytes(), &issuers).unwrap(),
        list
    );
    let bom = [b"\xEF\xBB\xBF".as_slice(), text.as_bytes()].concat();
    assert_eq!(
        RevocationList::parse_verified(&bom, &issuers).unwrap(),
        list
    );
}

#[test]
fn any_edit_is_refused() {
    let (key, issuers, list) = fixture();
    let text = key.sign_revocation_list(&list).unwrap();
    let edits = [
        // un-revoking by deleting the line
        text.replace(
            &format!("revoked {} 1764513000 dr who\n", hex::encode([7u8; 16])),
            "",
        ),
        text.replace("serial 2", "serial 3"),
        text.replace("dr who", "dr wh0"),
        format!("{text}revoked {} 1 x\n", hex::encode([8u8; 16])),
        text.replace('\n', "\r\n"),
        text.replace("issuer st-marys", "issuer other"),
        format!("{text}\n"),
        text[..text.len() - 1].to_string(),
    ];
    for (i, e) in edits.iter().enumerate() {
        assert!(
            RevocationList::parse_verified(e.as_bytes(), &issuers).is_err(),
            "edit {i} accepted"
        );
    }
    // Signed by another key under the same name.
    let other = IssuerKey::random();
    assert!(RevocationList::parse_verified(
        other.sign_revocation_list(&list).unwrap().as_bytes(),
        &issuers
    )
    .is_err());
}

/// Issue 17, finding T1: a second key under a pinned name is refused, not swapped in.
#[test]
fn a_name_pinned_twice_with_two_keys_is_refused() {
    use blindkd_keys::token::{issuer_line, parse_issuer_lines};
    let (a, b) = (IssuerKey::random().public(), IssuerKey::random().public());
    let mut issuers = Issuers::new();
    parse_issuer_lines(&issuer_line("hospital", &a), &mut issuers).unwrap();
    // The same pin again (the same file given twice) is harmless.
    parse_issuer_lines(&issuer_line("hospital", &a), &mut issuers).unwrap();
    let e = parse_issuer_lines(&issuer_line("hospital", &b), &mut issuers).unwrap_err();
    assert!(e.to_string().contains("already pinned"), "{e}");
    assert_eq!(issuers.get("hospital"), Some(&a));
}
