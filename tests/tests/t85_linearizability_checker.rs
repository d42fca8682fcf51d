//! The linearizability checker against histories nobody on this project
//! wrote: Jepsen's etcd runs and Porcupine's key-value tests, each with a
//! known verdict (shared/testdata/linearizability/README.md).
//!
//! The expected verdicts are read from the README's "Full list" and from the
//! `ok`/`bad` in the key-value file names; the checker computes its own.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tests::linearizability::{check, parse_etcd_log, parse_kv_history, CheckOptions, KvModel, RegisterModel, Verdict};

/// Generous next to the milliseconds each history takes: running out is a
/// failure, since `Unknown` is not a verdict.
const HISTORY_TIME_BUDGET: Duration = Duration::from_secs(20);

/// The shared test data, or `None` (after saying so) when this checkout has
/// none.
fn testdata_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("LINEARIZABILITY_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/linearizability"));
    if dir.join("README.md").is_file() {
        Some(dir)
    } else {
        eprintln!(
            "SKIPPING: no linearizability test data at {} (set LINEARIZABILITY_TESTDATA to the directory)",
            dir.display()
        );
        None
    }
}

/// The README's "Full list": etcd log number to whether it is linearizable.
fn etcd_verdicts(readme: &str) -> BTreeMap<String, bool> {
    let list = readme.split("Full list").nth(1).expect("the README has a \"Full list\" of etcd verdicts");
    list.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let (number, verdict) = (words.next()?, words.next()?);
            if words.next().is_some() || number.len() != 3 || !number.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let linearizable = match verdict {
                "true" => true,
                "false" => false,
                _ => return None,
            };
            Some((number.to_string(), linearizable))
        })
        .collect()
}

fn options() -> CheckOptions {
    CheckOptions { time_budget: Some(HISTORY_TIME_BUDGET), ..CheckOptions::default() }
}

/// Checks one history file and returns a failure message if the verdict is
/// not the expected one.
fn expect_verdict(path: &Path, verdict: &Verdict, linearizable: bool, elapsed: Duration) -> Option<String> {
    let name = path.file_name().unwrap().to_string_lossy();
    eprintln!("{name}: {} in {elapsed:?}", if verdict.is_linearizable() { "linearizable" } else { "not linearizable" });
    match (verdict, linearizable) {
        (Verdict::Linearizable, true) | (Verdict::NotLinearizable(_), false) => None,
        (verdict, _) => Some(format!("{name}: expected linearizable = {linearizable}, got {verdict}")),
    }
}

#[test]
fn jepsen_etcd_histories_get_their_known_verdicts() {
    let Some(dir) = testdata_dir() else { return };
    let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
    let verdicts = etcd_verdicts(&readme);
    assert!(verdicts.len() >= 100, "found only {} verdicts in the README's full list", verdicts.len());

    let mut logs: Vec<PathBuf> = std::fs::read_dir(dir.join("jepsen-etcd"))
        .expect("a jepsen-etcd directory")
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "log"))
        .collect();
    logs.sort();

    let started = Instant::now();
    let mut failures = Vec::new();
    let mut checked = 0;
    for path in &logs {
        let stem = path.file_stem().unwrap().to_string_lossy();
        let number = stem.trim_start_matches("etcd_");
        let Some(&linearizable) = verdicts.get(number) else {
            eprintln!("{stem}: the README gives no verdict; skipped");
            continue;
        };
        let text = std::fs::read_to_string(path).unwrap();
        let history = parse_etcd_log(&text).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        let check_started = Instant::now();
        let verdict = check(&RegisterModel, &history, &options());
        failures.extend(expect_verdict(path, &verdict, linearizable, check_started.elapsed()));
        checked += 1;
    }
    eprintln!("checked {checked} etcd histories in {:?}", started.elapsed());
    assert!(failures.is_empty(), "wrong verdicts:\n{}", failures.join("\n"));
    assert_eq!(checked, verdicts.len(), "every verdict in the README has its log");
}

#[test]
fn porcupine_kv_histories_get_their_known_verdicts() {
    let Some(dir) = testdata_dir() else { return };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("kv"))
        .expect("a kv directory")
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "txt"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no kv histories in {}", dir.display());

    let started = Instant::now();
    let mut failures = Vec::new();
    for path in &files {
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        let linearizable = if stem.ends_with("-ok") {
            true
        } else if stem.ends_with("-bad") {
            false
        } else {
            panic!("{}: the name says neither -ok nor -bad", path.display());
        };
        let text = std::fs::read_to_string(path).unwrap();
        let history = parse_kv_history(&text).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        let check_started = Instant::now();
        let verdict = check(&KvModel, &history, &options());
        failures.extend(expect_verdict(path, &verdict, linearizable, check_started.elapsed()));
    }
    eprintln!("checked {} kv histories in {:?}", files.len(), started.elapsed());
    assert!(failures.is_empty(), "wrong verdicts:\n{}", failures.join("\n"));
}
