//! The simulator against sequences worked out by hand, its trace readers on real files in both
//! formats, and the binary's answers to bad input.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::io::Write;
use std::process::Command;

use kryonix_cachesim::{Sizes, Trace, TraceError, belady, replay};
use kryonix_core::policy::{Kind, Lru};

#[test]
fn lru_on_a_tiny_trace_worked_out_by_hand() {
    // Capacity 3 over a b c a d b e a b c (a=1 … e=5):
    //   a m [a]; b m [b a]; c m [c b a]; a h [a c b]; d m, evicts b [d a c];
    //   b m, evicts c [b d a]; e m, evicts a [e b d]; a m, evicts d [a e b];
    //   b h [b a e]; c m, evicts e [c b a]. Hits: 2 of 10.
    let keys = [1, 2, 3, 1, 4, 2, 5, 1, 2, 3];
    let outcome = replay(&mut Lru::new(3), &keys, None);
    assert_eq!((outcome.hits, outcome.accesses), (2, 10));
    // Belady on the same: a b c, a h, d m (evict c: next at 9, furthest — or skip d, never
    // used again: skip), b h, e m (skip), a h, b h, c h. Hits: 5.
    assert_eq!(belady::replay(&keys, 3).hits, 5);
}

#[test]
fn no_policy_beats_belady_on_a_skewed_stream() {
    let mut state = 3u64;
    let keys: Vec<u64> = (0..20_000)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
            let x = (state >> 33) % 1_000;
            x * x / 1_000
        })
        .collect();
    let optimum = belady::replay(&keys, 50).hits;
    for kind in [Kind::Lru, Kind::Lfu, Kind::Arc, Kind::Adaptive] {
        let hits = replay(kind.build(50).as_mut(), &keys, None).hits;
        assert!(hits <= optimum, "{kind}: {hits} > Belady's {optimum}");
        assert!(hits > 0, "{kind}");
    }
}

#[test]
fn byte_hit_ratio_counts_sizes() {
    let keys = [1, 2, 1, 2, 1];
    let sizes = Sizes::log_normal(&keys, 7, 1_536.0, 1.2).unwrap();
    let outcome = replay(&mut Lru::new(1 << 30), &keys, Some(&sizes));
    assert_eq!(outcome.hits, 3);
    assert_eq!(outcome.bytes, 3 * sizes.of(1) + 2 * sizes.of(2));
    assert_eq!(outcome.hit_bytes, 2 * sizes.of(1) + sizes.of(2));
    // Seeded: the same sizes every time.
    let again = Sizes::log_normal(&keys, 7, 1_536.0, 1.2).unwrap();
    assert_eq!((sizes.of(1), sizes.of(2)), (again.of(1), again.of(2)));
}

#[test]
fn both_trace_formats_read_and_bad_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    // LIRS text, gzip, with the `*` separators it carries.
    let text = dir.path().join("tiny.trace.gz");
    let mut gz = flate2::write::GzEncoder::new(
        std::fs::File::create(&text).unwrap(),
        flate2::Compression::default(),
    );
    gz.write_all(b"5\n*\n7\n5\n").unwrap();
    gz.finish().unwrap();
    let trace = Trace::read(&text).unwrap();
    assert_eq!(
        (trace.name.as_str(), trace.keys.clone()),
        ("tiny", vec![5, 7, 5])
    );
    assert_eq!(trace.distinct(), 2);

    // cache2k binary: big-endian u32.
    let binary = dir.path().join("words.bin");
    std::fs::write(&binary, [0, 0, 1, 0, 0xff, 0xff, 0xff, 0xff]).unwrap();
    assert_eq!(
        Trace::read(&binary).unwrap().keys,
        vec![256, u64::from(u32::MAX)]
    );

    std::fs::write(&binary, [0, 0, 1]).unwrap();
    assert!(matches!(
        Trace::read(&binary),
        Err(TraceError::Truncated { len: 3, .. })
    ));
    let bad = dir.path().join("bad.trace");
    std::fs::write(&bad, "12\nabc\n").unwrap();
    let error = Trace::read(&bad).unwrap_err();
    assert!(matches!(error, TraceError::Key { line: 2, .. }), "{error}");
    let xz = dir.path().join("bad.trace.xz");
    std::fs::write(&xz, b"not xz").unwrap();
    assert!(matches!(Trace::read(&xz), Err(TraceError::Xz { .. })));
    assert!(matches!(
        Trace::read(&dir.path().join("missing.trace")),
        Err(TraceError::Io { .. })
    ));
}

#[test]
fn the_binary_prints_a_table_and_refuses_bad_options() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("small.trace");
    let keys: String = (0..2_000).map(|i| format!("{}\n", (i * 7) % 100)).collect();
    std::fs::write(&trace, keys).unwrap();
    let sim = env!("CARGO_BIN_EXE_kryonix-cachesim");

    let out = Command::new(sim).arg(&trace).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.starts_with("trace"), "{table}");
    assert_eq!(table.lines().filter(|l| l.starts_with("small")).count(), 2);

    let out = Command::new(sim)
        .arg("--json")
        .arg("--sized")
        .arg(&trace)
        .output()
        .unwrap();
    assert!(out.status.success());
    let row: serde_json::Value = serde_json::from_str(
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(row["trace"], "small");
    assert!(row["belady"].is_null(), "no Belady for sized entries");

    let out = Command::new(sim)
        .args([
            "--zipf",
            "0.9",
            "--zipf-keys",
            "500",
            "--zipf-accesses",
            "5000",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8(out.stdout).unwrap().contains("zipf-0.9"));

    for (args, expected) in [
        (vec!["--zipf=-2"], "--zipf"),
        (vec!["--policies", "random"], "unknown policy"),
        (vec!["--sizes", "0"], "not a percentage"),
        (vec!["--tune", "step=x"], "--tune"),
        (vec!["--sized", "--sigma=-1"], "--sigma"),
    ] {
        let out = Command::new(sim).args(&args).arg(&trace).output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    let out = Command::new(sim).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("give trace files"));
}

/// The real SQLite-backed cache replays a trace as the policy module does: exactly for LRU,
/// closely for the adaptive policy (whose hits arrive batched per write).
#[test]
fn the_real_cache_agrees_with_the_policy_module() {
    use kryonix_cachesim::through::replay_through_cache;
    use kryonix_cachesim::zipf_trace;
    use kryonix_core::cache::Eviction;
    use kryonix_core::policy::Adaptive;

    let dir = tempfile::tempdir().unwrap();
    let trace = zipf_trace(400, 4_000, 0.9, 5).unwrap();
    let capacity = 40;
    let lru = replay(&mut Lru::new(capacity), &trace.keys, None);
    let cache_lru =
        replay_through_cache(&trace.keys, capacity, Eviction::Table, dir.path()).unwrap();
    assert_eq!(cache_lru, lru);

    let adaptive = replay(
        &mut Adaptive::new(capacity, kryonix_core::policy::Cost::Count),
        &trace.keys,
        None,
    );
    let cache_adaptive =
        replay_through_cache(&trace.keys, capacity, Eviction::Adaptive, dir.path()).unwrap();
    let gap = (adaptive.hit_ratio() - cache_adaptive.hit_ratio()).abs();
    assert!(
        gap < 0.02,
        "adaptive {:.4} through the cache {:.4}",
        adaptive.hit_ratio(),
        cache_adaptive.hit_ratio()
    );
    // And the adaptive cache is the better one on a skewed stream.
    assert!(cache_adaptive.hits > cache_lru.hits);
}
