//! The conformance suite every [`StateMachine`] passes, and a workload
//! generator for the key-value state machine.
//!
//! Each check is a plain function taking `make`, a factory of fresh, empty
//! instances, and a workload of commands (log payloads) applied at indices
//! 1, 2, 3, ...; it panics with a message naming the broken property.
//! [`state_machine_suite`] runs them all:
//!
//! ```
//! use node::kv::KvStateMachine;
//! node::testing::state_machine_suite(KvStateMachine::new, &node::testing::kv_workload(7, 200));
//! ```

use bytes::Bytes;
use engine::Index;

use crate::app::{Rejection, StateMachine};
use crate::kv::KvOp;

/// Runs every check of the suite.
pub fn state_machine_suite<S: StateMachine, F: Fn() -> S>(make: F, workload: &[Bytes]) {
    check_determinism(&make, workload);
    check_snapshot_round_trip(&make, workload);
    check_restore_rejects_corruption(&make, workload);
    check_snapshot_image(&make, workload);
    check_restorer(&make, workload);
}

/// For a state machine that offers a restorer: what it builds from a
/// snapshot, adopted over other state, is what `restore_from` leaves (the
/// same snapshot bytes, the same answers to the rest of the workload), it
/// refuses what `restore_from` refuses, and `adopt` hands back the state it
/// replaced.
pub fn check_restorer<S: StateMachine, F: Fn() -> S>(make: &F, workload: &[Bytes]) {
    if make().restorer().is_none() {
        return;
    }
    let restore = |machine: &S, bytes: &[u8]| machine.restorer().expect("a restorer").restore(&mut &bytes[..]);
    for cut in cut_points(workload.len()) {
        let mut original = make();
        apply_all(&mut original, 1, &workload[..cut]);
        let snapshot = original.snapshot();
        let mut target = make();
        apply_all(&mut target, 1, &workload[cut..]);
        let before = target.snapshot();
        let restored = restore(&target, &snapshot)
            .unwrap_or_else(|error| panic!("the restorer refused the snapshot at {cut}: {error}"));
        assert_eq!(target.snapshot(), before, "building a state at {cut} changed the live one");
        let replaced = target.adopt(restored);
        assert_eq!(target.snapshot(), snapshot, "the adopted state differs from the snapshot at {cut}");
        let mut back = make();
        back.adopt(replaced);
        assert_eq!(back.snapshot(), before, "adopt at {cut} did not hand back the state it replaced");
        let rest = &workload[cut..];
        let first_index = cut as Index + 1;
        let expected = apply_all(&mut original, first_index, rest);
        assert_eq!(apply_all(&mut target, first_index, rest), expected, "the adopted state answers differently");
    }
    let mut source = make();
    apply_all(&mut source, 1, workload);
    let snapshot = source.snapshot();
    let damaged = [snapshot.slice(..snapshot.len() / 2), Bytes::new(), {
        let mut flipped = snapshot.to_vec();
        let middle = flipped.len() / 2;
        flipped[middle] ^= 1;
        Bytes::from(flipped)
    }];
    for bytes in damaged {
        assert!(make().restore_from(&mut &bytes[..]).is_err(), "restore_from accepted a damaged snapshot");
        assert!(restore(&make(), &bytes).is_err(), "the restorer accepted what restore_from refused");
    }
}

/// An image captured at any point and serialized after the rest of the
/// workload was applied gives the bytes `snapshot` gave at the capture: the
/// writes after it must not show through (copy-on-write).
pub fn check_snapshot_image<S: StateMachine, F: Fn() -> S>(make: &F, workload: &[Bytes]) {
    for cut in cut_points(workload.len()) {
        let mut machine = make();
        apply_all(&mut machine, 1, &workload[..cut]);
        let expected = machine.snapshot();
        let image = machine.snapshot_image();
        let second = machine.snapshot_image();
        for (index, command) in (cut as Index + 1..).zip(&workload[cut..]) {
            let _ = apply_in_entry(&mut machine, index, command);
        }
        let mut out = Vec::new();
        image.write_to(&mut out).expect("writing to memory");
        assert_eq!(Bytes::from(out), expected, "an image captured at {cut} changed with later writes");
        let mut out = Vec::new();
        second.write_to(&mut out).expect("writing to memory");
        assert_eq!(Bytes::from(out), expected, "a second image captured at {cut} changed with later writes");
    }
}

/// Applies `commands` at consecutive indices from `first_index`, returning
/// the responses.
pub fn apply_all<S: StateMachine>(
    machine: &mut S,
    first_index: Index,
    commands: &[Bytes],
) -> Vec<Result<Bytes, Rejection>> {
    commands.iter().zip(first_index..).map(|(command, index)| machine.apply(index, command)).collect()
}

/// Applies `command` at `index` through [`StateMachine::apply_in`], inside an
/// entry buffer with other bytes before and after it (as the node's group
/// entries and receive buffers hold commands).
pub fn apply_in_entry<S: StateMachine>(machine: &mut S, index: Index, command: &[u8]) -> Result<Bytes, Rejection> {
    let mut buffer = Vec::with_capacity(command.len() + 16);
    buffer.extend_from_slice(&[0xA5; 8]);
    buffer.extend_from_slice(command);
    buffer.extend_from_slice(&[0x5A; 8]);
    let entry = Bytes::from(buffer);
    machine.apply_in(index, &entry[8..8 + command.len()], &entry)
}

/// Two instances given the same commands, one through
/// [`StateMachine::apply`] and one through [`StateMachine::apply_in`] (the
/// node's path), give the same responses and the same snapshot bytes after
/// every command, and taking a snapshot changes nothing.
pub fn check_determinism<S: StateMachine, F: Fn() -> S>(make: &F, workload: &[Bytes]) {
    let mut first = make();
    let mut second = make();
    assert_eq!(first.snapshot(), second.snapshot(), "two fresh instances have different snapshots");
    for (index, command) in (1..).zip(workload) {
        let response_first = first.apply(index, command);
        let response_second = apply_in_entry(&mut second, index, command);
        assert_eq!(response_first, response_second, "responses differ at index {index}");
        let snapshot = first.snapshot();
        assert_eq!(snapshot, first.snapshot(), "two snapshots in a row differ at index {index}");
        assert_eq!(snapshot, second.snapshot(), "snapshots differ at index {index}");
    }
}

/// A snapshot taken at any point and restored into a fresh instance, or into
/// one with other state, gives the same snapshot bytes and the same responses
/// to the rest of the workload.
pub fn check_snapshot_round_trip<S: StateMachine, F: Fn() -> S>(make: &F, workload: &[Bytes]) {
    let cuts = cut_points(workload.len());
    for cut in cuts {
        let mut original = make();
        apply_all(&mut original, 1, &workload[..cut]);
        let snapshot = original.snapshot();

        let mut fresh = make();
        fresh
            .restore_from(&mut &snapshot[..])
            .unwrap_or_else(|error| panic!("restore of a snapshot at {cut} failed: {error}"));
        assert_eq!(fresh.snapshot(), snapshot, "restored state differs from the snapshot at {cut}");

        // An instance with other state: the restore must replace, not merge.
        let mut dirty = make();
        apply_all(&mut dirty, 1, &workload[cut..]);
        dirty
            .restore_from(&mut &snapshot[..])
            .unwrap_or_else(|error| panic!("restore over state at {cut} failed: {error}"));
        assert_eq!(dirty.snapshot(), snapshot, "restore over existing state merged instead of replacing at {cut}");

        let rest = &workload[cut..];
        let first_index = cut as Index + 1;
        let expected = apply_all(&mut original, first_index, rest);
        assert_eq!(
            apply_all(&mut fresh, first_index, rest),
            expected,
            "restored instance answers differently after {cut}"
        );
        assert_eq!(
            apply_all(&mut dirty, first_index, rest),
            expected,
            "restored instance answers differently after {cut}"
        );
        assert_eq!(fresh.snapshot(), original.snapshot(), "restored instance diverged after {cut}");
        assert_eq!(dirty.snapshot(), original.snapshot(), "restored instance diverged after {cut}");
    }
}

/// Truncated, extended, empty and bit-flipped snapshots are refused, and a
/// refused restore leaves the state as it was.
pub fn check_restore_rejects_corruption<S: StateMachine, F: Fn() -> S>(make: &F, workload: &[Bytes]) {
    let mut source = make();
    apply_all(&mut source, 1, workload);
    let snapshot = source.snapshot();
    let mut target = make();
    apply_all(&mut target, 1, &workload[..workload.len() / 2]);
    let before = target.snapshot();

    let mut damaged: Vec<(String, Bytes)> = vec![("empty".into(), Bytes::new())];
    for size in cut_points(snapshot.len()).into_iter().filter(|&size| size < snapshot.len()) {
        damaged.push((format!("truncated to {size} bytes"), snapshot.slice(..size)));
    }
    let mut extended = snapshot.to_vec();
    extended.push(0);
    damaged.push(("one byte appended".into(), Bytes::from(extended)));
    // Every byte for small snapshots; a spread of positions for large ones.
    let step = (snapshot.len() / 512).max(1);
    for position in (0..snapshot.len()).step_by(step) {
        for bit in [0, 7] {
            let mut flipped = snapshot.to_vec();
            flipped[position] ^= 1 << bit;
            damaged.push((format!("bit {bit} of byte {position} flipped"), Bytes::from(flipped)));
        }
    }
    for (what, bytes) in damaged {
        assert!(target.restore_from(&mut &bytes[..]).is_err(), "restore accepted a snapshot with {what}");
        assert_eq!(target.snapshot(), before, "a refused restore ({what}) changed the state");
    }
    target.restore_from(&mut &snapshot[..]).expect("the undamaged snapshot restores");
}

/// Where to cut a sequence of `len`: both ends, a few in between.
fn cut_points(len: usize) -> Vec<usize> {
    let mut cuts = vec![0, 1, len / 3, len / 2, len.saturating_sub(1), len];
    cuts.retain(|&cut| cut <= len);
    cuts.sort_unstable();
    cuts.dedup();
    cuts
}

/// A deterministic key-value workload of `count` commands from `seed`:
/// puts, deletes, compare-and-swaps and logged gets over a few keys, with
/// keys short enough to be stored inline and longer ones, and a few
/// malformed commands.
pub fn kv_workload(seed: u64, count: usize) -> Vec<Bytes> {
    let mut random = SplitMix64(seed);
    let mut workload = Vec::with_capacity(count);
    while workload.len() < count {
        if random.next() % 100 < 3 {
            workload.push(Bytes::from_static(b"\x09garbage"));
            continue;
        }
        // Mostly short keys, some longer than the ones the map stores inline.
        let key = match random.next() % 8 {
            0 => Bytes::from(format!("a-key-long-enough-not-to-fit-inline-{}", random.next() % 3)),
            _ => Bytes::from(format!("key-{}", random.next() % 6)),
        };
        // Some values long enough that the key-value store keeps them as
        // slices of their entries (1 KiB or more).
        let value = |random: &mut SplitMix64| {
            let value = format!("value-{}", random.next() % 4);
            Bytes::from(if random.next().is_multiple_of(3) { value.repeat(150) } else { value })
        };
        let op = match random.next() % 5 {
            0 => KvOp::Get { key },
            1 | 2 => KvOp::Put { key, value: value(&mut random) },
            3 => KvOp::Delete { key },
            _ => {
                let expected = (!random.next().is_multiple_of(3)).then(|| value(&mut random));
                let new = (!random.next().is_multiple_of(4)).then(|| value(&mut random));
                KvOp::Cas { key, expected, new }
            }
        };
        workload.push(op.encode());
    }
    workload
}

/// A tiny seeded generator, so the workload needs no RNG dependency.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}
