//! Store tests.

use super::*;

const NOW: i64 = 1_700_000_000;

fn cert(issuer: &str, serial: &str, subject: &str) -> CertificateRecord {
    CertificateRecord {
        issuer: issuer.into(),
        serial: serial.into(),
        profile: "x509-svid".into(),
        subject: subject.into(),
        not_before: NOW - 10,
        not_after: NOW + 300,
        sha256: format!("sha-{issuer}-{serial}"),
        issuer_generation: 1,
    }
}

fn sel(kind: &str, value: &str) -> Selector {
    Selector {
        kind: kind.into(),
        value: value.into(),
    }
}

fn entry(id: &str, spiffe_id: &str, parent_id: &str, selectors: Vec<Selector>) -> EntryRecord {
    EntryRecord {
        id: id.into(),
        spiffe_id: spiffe_id.into(),
        parent_id: parent_id.into(),
        selectors,
        x509_svid_ttl: 300,
        dns_names: vec!["web.example.org".into()],
        hint: "external".into(),
    }
}

fn node(spiffe_id: &str, serial: &str) -> NodeRecord {
    NodeRecord {
        spiffe_id: spiffe_id.into(),
        attestation: "join_token".into(),
        serial: serial.into(),
        not_after: NOW + 3600,
    }
}

fn authority(name: &str, parent: Option<&str>) -> AuthorityRecord {
    AuthorityRecord {
        name: name.into(),
        generation: 1,
        parent: parent.map(str::to_string),
        parent_generation: parent.map(|_| 1),
        backend: "software".into(),
        activate_at: NOW,
        cert_der: vec![0x30, 0x03, 0x02, 0x01, name.len() as u8],
        key_label: format!("keygrid-{name}-test"),
        algorithm: "ecdsa-p256".into(),
    }
}

fn fresh_store_is_at_the_latest_schema_version(store: Store) {
    assert_eq!(
        store.schema_version().unwrap(),
        super::migrations::latest(store.engine())
    );
    assert!(store.authorities().unwrap().is_empty());
    assert_eq!(store.certificate_count().unwrap(), 0);
    assert!(store.entries(None).unwrap().is_empty());
}

#[test]
fn reopening_on_disk_store_keeps_data_and_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keygrid.db");
    {
        let store = Store::open(&path).unwrap();
        assert_eq!(
            store.schema_version().unwrap(),
            super::migrations::latest(store.engine())
        );
        store
            .insert_authorities(
                &[
                    authority("root", None),
                    authority("workloads", Some("root")),
                ],
                NOW,
            )
            .unwrap();
        store
            .record_certificate(&cert("workloads", "0a0b", "spiffe://example.org/a"))
            .unwrap();
        store
            .create_entry(
                &entry(
                    "e1",
                    "spiffe://example.org/a",
                    "spiffe://example.org/node",
                    vec![sel("unix", "uid:1000")],
                ),
                NOW,
            )
            .unwrap();
    }
    let store = Store::open(&path).unwrap();
    // Migrations are not re-applied: still exactly version 1.
    assert_eq!(
        store.schema_version().unwrap(),
        super::migrations::latest(store.engine())
    );
    let auths = store.authorities().unwrap();
    assert_eq!(auths.len(), 2);
    assert_eq!(auths[0].name, "root");
    assert_eq!(auths[0].parent, None);
    assert_eq!(auths[0].cert_der, authority("root", None).cert_der);
    assert_eq!(auths[1].name, "workloads");
    assert_eq!(auths[1].parent.as_deref(), Some("root"));
    assert_eq!(auths[1].key_label, "keygrid-workloads-test");
    assert_eq!(store.certificate_count().unwrap(), 1);
    let rec = store.certificate("workloads", "0a0b").unwrap().unwrap();
    assert_eq!(rec.subject, "spiffe://example.org/a");
    assert_eq!(rec.not_after, NOW + 300);
    let e = store.entry("e1").unwrap().unwrap();
    assert_eq!(e.selectors, vec![sel("unix", "uid:1000")]);
}

fn authorities_are_listed_root_first_and_inserted_all_or_nothing(store: Store) {
    // Children without their root: the parent foreign key refuses the whole batch.
    store
        .insert_authorities(
            &[
                authority("workloads", Some("root")),
                authority("nodes", Some("root")),
            ],
            NOW,
        )
        .unwrap_err();
    // Nothing was written.
    assert!(store.authorities().unwrap().is_empty());

    store
        .insert_authorities(
            &[
                authority("root", None),
                authority("workloads", Some("root")),
                authority("nodes", Some("root")),
            ],
            NOW,
        )
        .unwrap();
    let names: Vec<String> = store
        .authorities()
        .unwrap()
        .into_iter()
        .map(|a| a.name)
        .collect();
    assert_eq!(names[0], "root");
    assert_eq!(names.len(), 3);

    // A second hierarchy is a conflict and leaves the first untouched.
    let err = store
        .insert_authorities(&[authority("root", None)], NOW + 1)
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert_eq!(store.authorities().unwrap().len(), 3);
}

fn duplicate_issuer_serial_is_conflict(store: Store) {
    store
        .record_certificate(&cert("workloads", "01ff", "spiffe://example.org/a"))
        .unwrap();
    let err = store
        .record_certificate(&cert("workloads", "01ff", "spiffe://example.org/b"))
        .unwrap_err();
    match err {
        StoreError::Conflict(msg) => {
            assert!(msg.contains("01ff"), "{msg}");
            assert!(msg.contains("workloads"), "{msg}");
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
    // The first record is intact, the second was not written.
    let rec = store.certificate("workloads", "01ff").unwrap().unwrap();
    assert_eq!(rec.subject, "spiffe://example.org/a");
    // The same serial under another issuer is allowed.
    store
        .record_certificate(&cert("nodes", "01ff", "spiffe://example.org/n"))
        .unwrap();
    assert_eq!(store.certificate_count().unwrap(), 2);
    assert!(store.certificate("root", "01ff").unwrap().is_none());
}

fn entries_create_list_get_delete(store: Store) {
    let node_a = "spiffe://example.org/node/a";
    let node_b = "spiffe://example.org/node/b";
    let e1 = entry(
        "e1",
        "spiffe://example.org/web",
        node_a,
        vec![sel("unix", "uid:1000"), sel("unix", "gid:50")],
    );
    let e2 = entry(
        "e2",
        "spiffe://example.org/db",
        node_b,
        vec![sel("unix", "uid:2000")],
    );
    let e3 = entry(
        "e3",
        "spiffe://example.org/cache",
        node_a,
        vec![sel("unix", "uid:3000")],
    );
    store.create_entry(&e1, NOW).unwrap();
    store.create_entry(&e2, NOW + 1).unwrap();
    store.create_entry(&e3, NOW + 2).unwrap();

    let all = store.entries(None).unwrap();
    let ids: Vec<&str> = all.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["e1", "e2", "e3"]);

    let for_a = store.entries(Some(node_a)).unwrap();
    let ids: Vec<&str> = for_a.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["e1", "e3"]);
    let for_b = store.entries(Some(node_b)).unwrap();
    assert_eq!(for_b, vec![e2.clone()]);
    assert!(store
        .entries(Some("spiffe://example.org/node/none"))
        .unwrap()
        .is_empty());

    let got = store.entry("e1").unwrap().unwrap();
    assert_eq!(got.spiffe_id, e1.spiffe_id);
    assert_eq!(got.parent_id, e1.parent_id);
    assert_eq!(got.x509_svid_ttl, 300);
    assert_eq!(got.dns_names, e1.dns_names);
    assert_eq!(got.hint, "external");
    // Selectors come back as the same set (stored canonically sorted).
    let mut want = e1.selectors.clone();
    want.sort_by(|a, b| (&a.kind, &a.value).cmp(&(&b.kind, &b.value)));
    assert_eq!(got.selectors, want);
    assert!(store.entry("nope").unwrap().is_none());

    store.delete_entry("e1").unwrap();
    assert!(store.entry("e1").unwrap().is_none());
    let ids: Vec<String> = store
        .entries(None)
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(ids, ["e2", "e3"]);
    // Deleting it again: NotFound.
    assert!(matches!(
        store.delete_entry("e1").unwrap_err(),
        StoreError::NotFound(_)
    ));
}

fn duplicate_entry_with_reordered_selectors_is_conflict(store: Store) {
    let parent = "spiffe://example.org/node/a";
    let first = entry(
        "e1",
        "spiffe://example.org/web",
        parent,
        vec![
            sel("unix", "uid:1000"),
            sel("unix", "gid:50"),
            sel("k8s", "ns:a"),
        ],
    );
    store.create_entry(&first, NOW).unwrap();
    let dup = entry(
        "e2",
        "spiffe://example.org/web",
        parent,
        vec![
            sel("k8s", "ns:a"),
            sel("unix", "gid:50"),
            sel("unix", "uid:1000"),
        ],
    );
    let err = store.create_entry(&dup, NOW + 1).unwrap_err();
    match err {
        StoreError::Conflict(msg) => assert!(msg.contains("spiffe://example.org/web"), "{msg}"),
        other => panic!("expected Conflict, got {other:?}"),
    }
    assert!(store.entry("e2").unwrap().is_none());
    assert_eq!(store.entries(None).unwrap().len(), 1);

    // Changing any one of spiffe_id, parent or selectors makes it a different entry.
    let mut other_parent = dup.clone();
    other_parent.id = "e3".into();
    other_parent.parent_id = "spiffe://example.org/node/b".into();
    store.create_entry(&other_parent, NOW + 2).unwrap();
    let mut other_selectors = dup.clone();
    other_selectors.id = "e4".into();
    other_selectors.selectors.pop();
    store.create_entry(&other_selectors, NOW + 3).unwrap();
    let mut other_id = dup.clone();
    other_id.id = "e5".into();
    other_id.spiffe_id = "spiffe://example.org/api".into();
    store.create_entry(&other_id, NOW + 4).unwrap();
    assert_eq!(store.entries(None).unwrap().len(), 4);

    // Reusing an entry ID is a conflict too.
    let mut same_id = first.clone();
    same_id.spiffe_id = "spiffe://example.org/other".into();
    assert!(matches!(
        store.create_entry(&same_id, NOW + 5).unwrap_err(),
        StoreError::Conflict(_)
    ));
}

fn delete_missing_entry_is_not_found(store: Store) {
    match store.delete_entry("does-not-exist").unwrap_err() {
        StoreError::NotFound(msg) => assert!(msg.contains("does-not-exist"), "{msg}"),
        other => panic!("expected NotFound, got {other:?}"),
    }
}

fn join_token_agent_only_while_unexpired(store: Store) {
    let agent = "spiffe://example.org/keygrid/agent/node1";
    store
        .create_join_token("hash1", agent, NOW + 600, NOW)
        .unwrap();
    assert_eq!(
        store.join_token_agent("hash1", NOW).unwrap().as_deref(),
        Some(agent)
    );
    assert_eq!(
        store
            .join_token_agent("hash1", NOW + 599)
            .unwrap()
            .as_deref(),
        Some(agent)
    );
    // At and after expiry it is gone.
    assert_eq!(store.join_token_agent("hash1", NOW + 600).unwrap(), None);
    assert_eq!(store.join_token_agent("hash1", NOW + 10_000).unwrap(), None);
    assert_eq!(store.join_token_agent("other", NOW).unwrap(), None);
    // The same token hash twice is a conflict.
    assert!(matches!(
        store
            .create_join_token("hash1", agent, NOW + 600, NOW)
            .unwrap_err(),
        StoreError::Conflict(_)
    ));
}

fn redeem_join_token_consumes_exactly_once(store: Store) {
    let agent = "spiffe://example.org/keygrid/agent/node1";
    store
        .create_join_token("hash1", agent, NOW + 600, NOW)
        .unwrap();
    store
        .redeem_join_token(
            "hash1",
            &node(agent, "aa01"),
            &cert("nodes", "aa01", agent),
            NOW + 1,
        )
        .unwrap();
    let n = store.node(agent).unwrap().expect("node written");
    assert_eq!(n.serial, "aa01");
    assert_eq!(n.attestation, "join_token");
    assert_eq!(n.not_after, NOW + 3600);
    let c = store.certificate("nodes", "aa01").unwrap().unwrap();
    assert_eq!(c.subject, agent);
    assert_eq!(store.join_token_agent("hash1", NOW + 1).unwrap(), None);

    // Second redeem of the same token fails and writes nothing.
    let err = store
        .redeem_join_token(
            "hash1",
            &node(agent, "aa02"),
            &cert("nodes", "aa02", agent),
            NOW + 2,
        )
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    assert_eq!(store.node(agent).unwrap().unwrap().serial, "aa01");
    assert!(store.certificate("nodes", "aa02").unwrap().is_none());
    assert_eq!(store.certificate_count().unwrap(), 1);
}

fn expired_join_token_cannot_be_redeemed(store: Store) {
    let agent = "spiffe://example.org/keygrid/agent/late";
    store
        .create_join_token("hash-late", agent, NOW + 60, NOW)
        .unwrap();
    let err = store
        .redeem_join_token(
            "hash-late",
            &node(agent, "bb01"),
            &cert("nodes", "bb01", agent),
            NOW + 60,
        )
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    assert!(store.node(agent).unwrap().is_none());
    assert_eq!(store.certificate_count().unwrap(), 0);
}

fn failed_redeem_rolls_back_token_node_and_certificate(store: Store) {
    let agent = "spiffe://example.org/keygrid/agent/node2";
    // A certificate already holds the serial the redeem will try to record.
    store
        .record_certificate(&cert("nodes", "cc01", "spiffe://example.org/someone-else"))
        .unwrap();
    store
        .create_join_token("hash2", agent, NOW + 600, NOW)
        .unwrap();
    let err = store
        .redeem_join_token(
            "hash2",
            &node(agent, "cc01"),
            &cert("nodes", "cc01", agent),
            NOW + 1,
        )
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    // All or nothing: token still redeemable, no node, original certificate unchanged.
    assert_eq!(
        store.join_token_agent("hash2", NOW + 1).unwrap().as_deref(),
        Some(agent)
    );
    assert!(store.node(agent).unwrap().is_none());
    assert_eq!(store.certificate_count().unwrap(), 1);
    assert_eq!(
        store.certificate("nodes", "cc01").unwrap().unwrap().subject,
        "spiffe://example.org/someone-else"
    );

    // The store is still usable and the token can be redeemed with a fresh serial.
    store
        .redeem_join_token(
            "hash2",
            &node(agent, "cc02"),
            &cert("nodes", "cc02", agent),
            NOW + 2,
        )
        .unwrap();
    assert_eq!(store.node(agent).unwrap().unwrap().serial, "cc02");
    assert_eq!(store.join_token_agent("hash2", NOW + 2).unwrap(), None);
}

fn renew_node_updates_serial(store: Store) {
    let agent = "spiffe://example.org/keygrid/agent/node3";
    store
        .create_join_token("hash3", agent, NOW + 600, NOW)
        .unwrap();
    store
        .redeem_join_token(
            "hash3",
            &node(agent, "dd01"),
            &cert("nodes", "dd01", agent),
            NOW,
        )
        .unwrap();
    let mut renewed = node(agent, "dd02");
    renewed.not_after = NOW + 7200;
    store
        .renew_node(&renewed, &cert("nodes", "dd02", agent), NOW + 100)
        .unwrap();
    let n = store.node(agent).unwrap().unwrap();
    assert_eq!(n.serial, "dd02");
    assert_eq!(n.not_after, NOW + 7200);
    // Both certificates are on record.
    assert!(store.certificate("nodes", "dd01").unwrap().is_some());
    assert!(store.certificate("nodes", "dd02").unwrap().is_some());
    assert_eq!(store.certificate_count().unwrap(), 2);

    // A renewal whose serial is already used changes nothing.
    let err = store
        .renew_node(
            &node(agent, "dd01"),
            &cert("nodes", "dd01", agent),
            NOW + 200,
        )
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    let n = store.node(agent).unwrap().unwrap();
    assert_eq!(n.serial, "dd02");
    assert_eq!(n.not_after, NOW + 7200);
}

// ---- audit chain ---------------------------------------------------------------------

fn issue_some(store: &Store, n: usize) {
    for i in 0..n {
        store
            .record_issuance(
                &cert("workloads", &format!("{i:04x}"), "spiffe://example.org/w"),
                "spiffe://example.org/node",
            )
            .unwrap();
    }
}

fn break_at(store: &Store) -> audit::Break {
    store
        .verify_audit(None)
        .unwrap()
        .first_break
        .expect("verification should fail")
}

fn audit_chain_records_every_change_and_verifies(store: Store) {
    issue_some(&store, 3);
    store
        .create_entry(
            &entry(
                "e1",
                "spiffe://example.org/a",
                "spiffe://example.org/node",
                vec![sel("unix", "uid:1")],
            ),
            NOW,
        )
        .unwrap();
    store
        .revoke_by("admin uid 0", "workloads", "0001", 1, NOW)
        .unwrap();
    store
        .record_event(&EventRecord {
            at: NOW,
            kind: "policy_refusal".into(),
            actor: "spiffe://example.org/node".into(),
            subject: "spiffe://example.org/x".into(),
            rule: "keys".into(),
            detail: "rsa-2048 is not allowed".into(),
        })
        .unwrap();
    // A refused write leaves no audit record either.
    assert!(store
        .record_issuance(&cert("workloads", "0001", "spiffe://example.org/w"), "n")
        .is_err());
    let records = store.audit_records(0, 100).unwrap();
    let kinds: Vec<&str> = records.iter().map(|r| r.event.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "certificate.issued",
            "certificate.issued",
            "certificate.issued",
            "entry.created",
            "certificate.revoked",
            "policy_refusal"
        ]
    );
    assert_eq!(records[0].event.serial, "0000");
    assert_eq!(records[0].event.fingerprint, "sha-workloads-0000");
    assert_eq!(records[0].event.actor, "spiffe://example.org/node");
    assert_eq!(records[4].event.actor, "admin uid 0");
    assert_eq!(records[5].event.rule, "keys");
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.seq, i as i64 + 1);
    }
    assert_eq!(store.audit_head().unwrap(), (6, records[5].hash.clone()));
    let v = store.verify_audit(None).unwrap();
    assert_eq!(v.first_break, None, "{v:?}");
    assert_eq!(v.records, 6);
}

fn audit_tamper_edit_is_found(store: Store) {
    issue_some(&store, 6);
    store
        .write(|tx| {
            tx.execute(
                "UPDATE audit_log SET subject = 'spiffe://evil' WHERE seq = 3",
                &[],
            )
        })
        .unwrap();
    let b = break_at(&store);
    assert_eq!(b.seq, 3, "{b}");
    assert!(b.reason.contains("does not match its hash"), "{b}");
}

fn audit_tamper_delete_is_found(store: Store) {
    issue_some(&store, 6);
    store
        .write(|tx| tx.execute("DELETE FROM audit_log WHERE seq = 4", &[]))
        .unwrap();
    let b = break_at(&store);
    assert_eq!(b.seq, 4, "{b}");
    assert!(b.reason.contains("missing"), "{b}");
}

fn audit_tamper_reorder_is_found(store: Store) {
    issue_some(&store, 6);
    // Swap records 2 and 5 wholesale, sequence numbers kept in place.
    store
        .write(|tx| {
            tx.execute("UPDATE audit_log SET seq = -2 WHERE seq = 2", &[])?;
            tx.execute("UPDATE audit_log SET seq = 2 WHERE seq = 5", &[])?;
            tx.execute("UPDATE audit_log SET seq = 5 WHERE seq = -2", &[])
        })
        .unwrap();
    let b = break_at(&store);
    assert_eq!(b.seq, 2, "{b}");
}

fn audit_tamper_truncate_is_found(store: Store) {
    issue_some(&store, 6);
    store
        .write(|tx| tx.execute("DELETE FROM audit_log WHERE seq > 4", &[]))
        .unwrap();
    let b = break_at(&store);
    assert_eq!(b.seq, 5, "{b}");
    assert!(b.reason.contains("truncated"), "{b}");
}

fn audit_truncation_with_rewound_head_is_caught_by_checkpoint(store: Store) {
    issue_some(&store, 6);
    let sign = |m: &[u8]| Ok::<_, String>(m.to_vec());
    let cp = store
        .audit_checkpoint("test", "none", NOW, &sign)
        .unwrap()
        .unwrap();
    assert_eq!(cp.seq, 6);
    assert!(store
        .audit_checkpoint("test", "none", NOW, &sign)
        .unwrap()
        .is_none());
    issue_some_more(&store);
    assert_eq!(store.verify_audit(None).unwrap().first_break, None);
    // The attacker cuts the tail and moves the head back consistently.
    store
        .write(|tx| {
            let r = tx.query_one("SELECT hash FROM audit_log WHERE seq = 4", &[])?;
            let h: String = r.get(0)?;
            tx.execute("DELETE FROM audit_log WHERE seq > 4", &[])?;
            tx.execute("UPDATE audit_head SET seq = 4, hash = ?1", args![h])
        })
        .unwrap();
    let b = break_at(&store);
    assert_eq!(b.seq, 5, "{b}");
    assert!(b.reason.contains("checkpoint"), "{b}");
}

fn audit_verifies_while_core_keeps_appending(store: Store) {
    let store = std::sync::Arc::new(store);
    let writer = {
        let store = store.clone();
        std::thread::spawn(move || {
            for i in 0..300 {
                store
                    .record_issuance(&cert("nodes", &format!("c{i:04x}"), "s"), "a")
                    .unwrap();
                if i % 50 == 0 {
                    store
                        .audit_checkpoint("k", "none", NOW, &|m: &[u8]| Ok(m.to_vec()))
                        .unwrap();
                }
            }
        })
    };
    let mut verified = 0;
    while !writer.is_finished() {
        let v = store.verify_audit(None).unwrap();
        assert_eq!(v.first_break, None, "{v:?}");
        verified += 1;
    }
    writer.join().unwrap();
    assert!(verified > 0);
    assert_eq!(store.verify_audit(None).unwrap().records, 300);
}

#[test]
fn exported_records_verify_on_their_own() {
    let store = Store::in_memory().unwrap();
    issue_some(&store, 5);
    let records = store.audit_records(0, 100).unwrap();
    let json: Vec<String> = records
        .iter()
        .map(|r| serde_json::to_string(r).unwrap())
        .collect();
    let parsed: Vec<audit::AuditRecord> = json
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(parsed, records);
    assert_eq!(audit::verify_exported(&parsed), None);
    // A run from the middle verifies from its own first link.
    assert_eq!(audit::verify_exported(&parsed[2..]), None);
    let mut edited = parsed.clone();
    edited[3].event.subject = "spiffe://evil".into();
    assert_eq!(audit::verify_exported(&edited).unwrap().seq, 4);
    let mut gap = parsed.clone();
    gap.remove(1);
    assert_eq!(audit::verify_exported(&gap).unwrap().seq, 2);
}

fn event_at(store: &Store, at: i64) {
    store
        .record_event(&EventRecord {
            at,
            kind: "test".into(),
            actor: "a".into(),
            subject: "s".into(),
            rule: String::new(),
            detail: String::new(),
        })
        .unwrap();
}

fn audit_prune_keeps_a_verifiable_chain(store: Store) {
    let sign = |m: &[u8]| Ok::<_, String>(m.to_vec());
    for at in [100, 101, 102] {
        event_at(&store, at);
    }
    // Without a checkpoint in the range nothing can be pruned.
    assert_eq!(store.prune_audit(200, "admin", NOW).unwrap(), None);
    store.audit_checkpoint("k", "none", NOW, &sign).unwrap();
    for at in [103, 104] {
        event_at(&store, at);
    }
    store.audit_checkpoint("k", "none", NOW, &sign).unwrap();
    for at in [300, 301] {
        event_at(&store, at);
    }
    assert_eq!(store.prune_audit(200, "admin uid 0", NOW).unwrap(), Some(5));
    let left = store.audit_records(0, 100).unwrap();
    let seqs: Vec<i64> = left.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, [6, 7, 8]);
    assert_eq!(left[2].event.kind, "audit.pruned");
    let v = store.verify_audit(None).unwrap();
    assert_eq!((v.records, v.first_break.clone()), (3, None), "{v:?}");
    assert_eq!(
        store.prune_audit(200, "admin", NOW).unwrap(),
        None,
        "already pruned"
    );
    // Deleting the first remaining record is not a prune.
    store
        .write(|tx| tx.execute("DELETE FROM audit_log WHERE seq = 6", &[]))
        .unwrap();
    let b = break_at(&store);
    assert_eq!(b.seq, 1, "{b}");
    assert!(b.reason.contains("no recorded prune"), "{b}");
}

fn issue_some_more(store: &Store) {
    store
        .record_issuance(&cert("nodes", "ff01", "spiffe://example.org/n"), "x")
        .unwrap();
}

fn audit_checkpoint_signature_is_checked(store: Store) {
    struct Echo;
    impl audit::CheckpointVerifier for Echo {
        fn verify(&self, _l: &str, m: &[u8], s: &[u8]) -> Result<bool, String> {
            Ok(m == s)
        }
    }
    issue_some(&store, 2);
    store
        .audit_checkpoint("test", "none", NOW, &|m: &[u8]| Ok(m.to_vec()))
        .unwrap();
    assert_eq!(store.verify_audit(Some(&Echo)).unwrap().first_break, None);
    assert_eq!(store.verify_audit(Some(&Echo)).unwrap().checkpoints, 1);
    store
        .write(|tx| {
            tx.execute(
                "UPDATE audit_checkpoints SET signature = ?1",
                args![vec![1u8, 2]],
            )
        })
        .unwrap();
    let b = store
        .verify_audit(Some(&Echo))
        .unwrap()
        .first_break
        .unwrap();
    assert_eq!(b.seq, 2, "{b}");
    assert!(b.reason.contains("signature"), "{b}");
}

fn short_lived_certificates_are_pruned_but_stay_audited(store: Store) {
    issue_some(&store, 3);
    store.revoke("workloads", "0002", 1, NOW).unwrap();
    let mut long = cert("nodes", "aa", "spiffe://example.org/node");
    long.profile = "node".into();
    store.record_certificate(&long).unwrap();
    assert_eq!(store.prune_certificates("x509-svid", NOW + 301).unwrap(), 2);
    assert_eq!(store.certificate_count().unwrap(), 2);
    assert!(
        store.certificate("workloads", "0002").unwrap().is_some(),
        "revoked rows stay"
    );
    assert!(store.certificate("nodes", "aa").unwrap().is_some());
    assert_eq!(store.verify_audit(None).unwrap().records, 5);
}

fn backup_restores_everything_into_a_fresh_store(store: Store) {
    store
        .insert_authorities(
            &[
                authority("root", None),
                authority("workloads", Some("root")),
            ],
            NOW,
        )
        .unwrap();
    issue_some(&store, 4);
    store
        .revoke_by("admin", "workloads", "0001", 1, NOW)
        .unwrap();
    store
        .create_entry(
            &entry(
                "e1",
                "spiffe://example.org/a",
                "spiffe://example.org/node",
                vec![sel("unix", "uid:1")],
            ),
            NOW,
        )
        .unwrap();
    store
        .audit_checkpoint("keygrid-audit", "ecdsa-p256", NOW, &|m: &[u8]| {
            Ok(m.to_vec())
        })
        .unwrap();
    let mut archive = Vec::new();
    let header = store.backup(&mut archive, NOW, &[]).unwrap();
    assert_eq!(header.schema_version, store.schema_version().unwrap());
    let labels: Vec<&str> = header.key_labels.iter().map(|k| k.label.as_str()).collect();
    assert_eq!(labels, ["keygrid-root-test", "keygrid-workloads-test"]);

    // Restore into a fresh SQLite store (for the PostgreSQL run: across engines).
    let (h, rows) = Store::read_backup(&mut archive.as_slice()).unwrap();
    assert_eq!(h, header);
    let fresh = Store::in_memory().unwrap();
    fresh.restore(&h, &rows).unwrap();
    backup::check_restored(&fresh, &h).unwrap();
    assert_eq!(fresh.authorities().unwrap().len(), 2);
    assert_eq!(
        fresh.certificate_count().unwrap(),
        store.certificate_count().unwrap()
    );
    assert_eq!(
        fresh.revocations(None, 0).unwrap(),
        store.revocations(None, 0).unwrap()
    );
    assert_eq!(fresh.entries(None).unwrap(), store.entries(None).unwrap());
    assert_eq!(
        fresh.audit_records(0, 100).unwrap(),
        store.audit_records(0, 100).unwrap()
    );
    let v = fresh.verify_audit(None).unwrap();
    assert_eq!((v.first_break, v.checkpoints), (None, 1));
    // The restored store keeps chaining and numbering revocations after the old ones.
    fresh.revoke("workloads", "0002", 1, NOW).unwrap();
    assert_eq!(fresh.revocations(None, 0).unwrap().len(), 2);
    assert_eq!(fresh.verify_audit(None).unwrap().first_break, None);

    // Not into a store that already has data.
    let err = fresh.restore(&h, &rows).unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    // A cut or edited archive is refused before anything is written.
    let text = String::from_utf8(archive.clone()).unwrap();
    let cut: String = text.lines().take(5).map(|l| format!("{l}\n")).collect();
    assert!(Store::read_backup(&mut cut.as_bytes()).is_err());
    let edited = text.replacen("spiffe://example.org/w", "spiffe://example.org/x", 1);
    let err = Store::read_backup(&mut edited.as_bytes()).unwrap_err();
    assert!(err.to_string().contains("edited"), "{err}");
}

#[test]
fn old_events_are_chained_into_the_audit_log_on_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keygrid.db");
    {
        // A version-4 database with two recorded events.
        let mut conn = rusqlite::Connection::open(&path).unwrap();
        let tx = conn.transaction().unwrap();
        tx.execute_batch("CREATE TABLE schema_version (version INTEGER NOT NULL)")
            .unwrap();
        for (i, sql) in super::migrations::sqlite_scripts()
            .iter()
            .take(4)
            .enumerate()
        {
            tx.execute_batch(sql).unwrap();
            tx.execute("INSERT INTO schema_version VALUES (?1)", [i as i64 + 1])
                .unwrap();
        }
        tx.execute_batch(
            "INSERT INTO events (at, kind, actor, subject, rule, detail) VALUES              (1, 'policy_refusal', 'n', 's', 'r', 'd'), (2, 'ca_rotation', 'admin', 'nodes', '', 'x')",
        )
        .unwrap();
        tx.commit().unwrap();
    }
    let store = Store::open(&path).unwrap();
    assert_eq!(store.events("policy_refusal").unwrap().len(), 1);
    assert_eq!(store.events("ca_rotation").unwrap()[0].actor, "admin");
    let v = store.verify_audit(None).unwrap();
    assert_eq!((v.records, v.first_break), (2, None));
    drop(store);
    // Reopening does not chain them twice.
    assert_eq!(
        Store::open(&path)
            .unwrap()
            .verify_audit(None)
            .unwrap()
            .records,
        2
    );
}

#[test]
fn backup_from_sqlite_restores_into_postgres() {
    let sqlite = Store::in_memory().unwrap();
    sqlite
        .insert_authorities(
            &[
                authority("root", None),
                authority("workloads", Some("root")),
            ],
            NOW,
        )
        .unwrap();
    issue_some(&sqlite, 4);
    sqlite
        .revoke_by("admin", "workloads", "0001", 1, NOW)
        .unwrap();
    sqlite
        .revoke_by("admin", "workloads", "0003", 4, NOW)
        .unwrap();
    let mut archive = Vec::new();
    sqlite.backup(&mut archive, NOW, &[]).unwrap();

    let server = super::pg_server::PgServer::start().unwrap_or_else(|e| panic!("{e}"));
    server.create_database("restored").unwrap();
    let pg = Store::open_postgres(server.config("restored")).unwrap();
    let (h, rows) = Store::read_backup(&mut archive.as_slice()).unwrap();
    pg.restore(&h, &rows).unwrap();
    backup::check_restored(&pg, &h).unwrap();
    assert_eq!(
        pg.revocations(None, 0).unwrap(),
        sqlite.revocations(None, 0).unwrap()
    );
    assert_eq!(
        pg.audit_records(0, 100).unwrap(),
        sqlite.audit_records(0, 100).unwrap()
    );
    // New revocations continue the sequence after the restored ones.
    let next = pg.revoke("workloads", "0002", 1, NOW).unwrap();
    assert_eq!(next.seq, 3);
    assert_eq!(pg.verify_audit(None).unwrap().first_break, None);
}

#[test]
fn postgres_store_over_a_unix_socket_from_a_url() {
    let server = super::pg_server::PgServer::start().unwrap_or_else(|e| panic!("{e}"));
    server.create_database("sock").unwrap();
    // The form an operator writes in [store] url: the socket directory as host.
    let url = format!(
        "postgres://keygrid@{}:{}/sock",
        server
            .socket_dir()
            .display()
            .to_string()
            .replace('/', "%2F"),
        server.port()
    );
    let config: tokio_postgres::Config = url.parse().unwrap();
    let store = Store::open_location(&StoreLocation::Postgres(Box::new(config))).unwrap();
    assert_eq!(store.engine(), sql::Engine::Postgres);
    issue_some(&store, 2);
    assert_eq!(store.verify_audit(None).unwrap().records, 2);
}

#[test]
fn postgres_store_over_tls_checks_the_server_certificate() {
    let (server, ca) = super::pg_server::PgServer::start_tls().unwrap_or_else(|e| panic!("{e}"));
    server.create_database("tls").unwrap();
    let mut config = server.config("tls");
    config.ssl_mode(tokio_postgres::config::SslMode::Require);
    let tls = super::pg_tls::MakeRustls::from_ca_pem(ca.as_bytes()).unwrap();
    let store = Store::open_postgres_with(config.clone(), Some(tls)).unwrap();
    issue_some(&store, 2);
    let encrypted: bool = store
        .read(|c| {
            c.query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )?
            .get(0)
        })
        .unwrap();
    assert!(encrypted, "the connection is not encrypted");
    // A server whose certificate does not chain to the configured CA is refused.
    let other_key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let other_ca = p.self_signed(&other_key).unwrap().pem();
    let wrong = super::pg_tls::MakeRustls::from_ca_pem(other_ca.as_bytes()).unwrap();
    let err = Store::open_postgres_with(config, Some(wrong))
        .err()
        .expect("refused");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
}

#[test]
fn postgres_store_authenticates_to_the_database_with_a_client_certificate() {
    let (server, files) =
        super::pg_server::PgServer::start_tls_client_auth().unwrap_or_else(|e| panic!("{e}"));
    server.create_database("certauth").unwrap();
    let mut config = server.config("certauth");
    config.ssl_mode(tokio_postgres::config::SslMode::Require);

    // pg_hba.conf says `hostssl ... cert`: TLS alone, without a certificate, is refused.
    let anonymous = super::pg_tls::MakeRustls::new(files.ca.as_bytes(), None).unwrap();
    let err = Store::open_postgres_with(config.clone(), Some(anonymous))
        .err()
        .expect("a connection without a client certificate was accepted");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );

    let tls = super::pg_tls::MakeRustls::new(
        files.ca.as_bytes(),
        Some((files.client_cert.as_bytes(), files.client_key.as_bytes())),
    )
    .unwrap();
    let store = Store::open_postgres_with(config, Some(tls)).unwrap();
    issue_some(&store, 2);
    assert_eq!(store.verify_audit(None).unwrap().records, 2);
    // The server saw core's certificate on this very connection.
    let client_dn: Option<String> = store
        .read(|c| {
            c.query_one(
                "SELECT client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )?
            .get(0)
        })
        .unwrap();
    assert_eq!(client_dn.as_deref(), Some("/CN=keygrid"));
}

#[test]
fn postgres_store_reconnects_after_a_server_restart() {
    let mut server = super::pg_server::PgServer::start().unwrap_or_else(|e| panic!("{e}"));
    server.create_database("restart").unwrap();
    let store = Store::open_postgres(server.config("restart")).unwrap();
    issue_some(&store, 3);
    server.restart().unwrap();
    // Calls that meet a dropped connection fail cleanly; the pool reopens it and the next
    // ones succeed, continuing the same chain.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut n = 0;
    while n < 10 {
        match store.record_issuance(&cert("workloads", &format!("ff{n:02x}"), "s"), "a") {
            Ok(()) => n += 1,
            Err(e) => {
                assert!(std::time::Instant::now() < deadline, "no reconnect: {e}");
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    }
    let v = store.verify_audit(None).unwrap();
    assert_eq!((v.records, v.first_break), (13, None));
}

/// Runs each named test against SQLite (one `#[test]` each) and all of them against one
/// private PostgreSQL server, each in a fresh database.
macro_rules! store_suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[test]
                fn $name() {
                    super::$name(super::Store::in_memory().unwrap())
                }
            )*
        }

        #[test]
        fn postgres_store_suite() {
            let server = super::pg_server::PgServer::start().unwrap_or_else(|e| panic!("{e}"));
            let mut n = 0;
            $(
                n += 1;
                let db = format!("t{n}");
                server.create_database(&db).unwrap();
                eprintln!("postgres: {} in database {db}", stringify!($name));
                $name(Store::open_postgres(server.config(&db)).unwrap());
            )*
        }
    };
}

store_suite!(
    fresh_store_is_at_the_latest_schema_version,
    authorities_are_listed_root_first_and_inserted_all_or_nothing,
    duplicate_issuer_serial_is_conflict,
    entries_create_list_get_delete,
    duplicate_entry_with_reordered_selectors_is_conflict,
    delete_missing_entry_is_not_found,
    join_token_agent_only_while_unexpired,
    redeem_join_token_consumes_exactly_once,
    expired_join_token_cannot_be_redeemed,
    failed_redeem_rolls_back_token_node_and_certificate,
    renew_node_updates_serial,
    audit_chain_records_every_change_and_verifies,
    audit_tamper_edit_is_found,
    audit_tamper_delete_is_found,
    audit_tamper_reorder_is_found,
    audit_tamper_truncate_is_found,
    audit_truncation_with_rewound_head_is_caught_by_checkpoint,
    audit_checkpoint_signature_is_checked,
    short_lived_certificates_are_pruned_but_stay_audited,
    backup_restores_everything_into_a_fresh_store,
    audit_verifies_while_core_keeps_appending,
    audit_prune_keeps_a_verifiable_chain,
);
