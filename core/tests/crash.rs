//! An enqueue loop in a child process is killed with SIGKILL; every id the child saw returned
//! from `enqueue` must be in the database afterwards.
//!
//! The child is this same test binary, re-run with `KRYONIX_CRASH_CHILD_DB` set: it enqueues
//! forever and prints each id after `enqueue` returns. The parent reads those lines, kills the
//! child mid-loop (SIGKILL: no destructor, no close, no checkpoint), and reopens the file.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure should stop loudly

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;

use kryonix_core::{ItemId, Outbox, OutboxConfig, Store, StoreOptions, SystemClock, TierSet};
use kryonix_protocol::wire::Op;
use kryonix_protocol::{Namespace, TenantId, Tier};

const CHILD_ENV: &str = "KRYONIX_CRASH_CHILD_DB";

fn open(path: &str) -> Outbox {
    let store = Arc::new(Store::open(path, &StoreOptions::default()).unwrap());
    Outbox::open(
        store,
        Arc::new(SystemClock),
        OutboxConfig::new(TenantId::new("acme").unwrap()),
    )
    .unwrap()
}

/// The child's body; a no-op in a normal test run.
#[test]
fn crash_child_enqueue_loop() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let outbox = open(&path);
    for i in 0u64.. {
        let tier = Tier::ALL[(i % 4) as usize];
        let id = outbox
            .enqueue(
                Namespace::UserCache,
                &format!("item-{i}"),
                Op::Put,
                &[0x42; 256],
                tier,
            )
            .unwrap();
        println!("ENQUEUED {id}");
    }
}

#[test]
fn sigkill_during_enqueue_loses_no_returned_id() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("device.db");
    let path = path.to_str().unwrap().to_owned();
    // Create the schema first, so the child starts enqueueing at once.
    drop(open(&path));

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "crash_child_enqueue_loop",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut seen = HashSet::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(id) = line.strip_prefix("ENQUEUED ") {
            seen.insert(id.parse::<ItemId>().unwrap());
            if seen.len() == 2_000 {
                // `Child::kill` is SIGKILL on Unix.
                child.kill().unwrap();
                break;
            }
        }
    }
    child.wait().unwrap();
    assert_eq!(seen.len(), 2_000, "the child stopped early");

    let outbox = open(&path);
    let mut stored = HashSet::new();
    loop {
        let batch = outbox.next_batch(100, TierSet::ALL).unwrap();
        if batch.is_empty() {
            break;
        }
        let ids: Vec<ItemId> = batch.iter().map(|i| i.id).collect();
        stored.extend(ids.iter().copied());
        outbox.ack(&ids).unwrap();
    }
    let lost: Vec<_> = seen.difference(&stored).collect();
    assert!(
        lost.is_empty(),
        "{} returned ids lost, e.g. {:?}",
        lost.len(),
        lost.first()
    );
    // The child may have committed a few more that it never got to print.
    assert!(stored.len() >= seen.len());
}
