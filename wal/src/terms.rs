//! The log's shape as submitted: snapshot point, last index, and the term of
//! every index as runs. Appends are checked against it, and a snapshot uses it
//! to decide whether the log agrees with it.

use engine::{EntryBatch, Index, Term};

/// Terms of the log after the snapshot, as runs of equal terms.
///
/// Invariant: `runs` is sorted by start index, starts are within
/// `(snapshot_index, last_index]`, and neighbouring runs differ in term.
#[derive(Clone, Debug, Default)]
pub(crate) struct TermLog {
    pub snapshot_index: Index,
    pub snapshot_term: Term,
    pub last_index: Index,
    runs: Vec<(Index, Term)>,
}

impl TermLog {
    pub(crate) fn new(snapshot_index: Index, snapshot_term: Term) -> TermLog {
        TermLog { snapshot_index, snapshot_term, last_index: snapshot_index, runs: Vec::new() }
    }

    /// Applies an append whose position the caller has checked.
    pub(crate) fn append(&mut self, batch: &EntryBatch) {
        let first = batch.first_index();
        assert!(first > self.snapshot_index, "append at {first} is covered by the snapshot");
        assert!(first <= self.last_index + 1, "append at {first} leaves a gap after {}", self.last_index);
        let keep = self.runs.partition_point(|&(start, _)| start < first);
        self.runs.truncate(keep);
        if batch.first_term() == batch.last_term() {
            self.push(first, batch.first_term());
        } else {
            for entry in batch.entries() {
                self.push(entry.index, entry.term);
            }
        }
        self.last_index = batch.last_index();
    }

    /// Extends the log by one entry (used when rebuilding from recovery).
    pub(crate) fn append_entry(&mut self, index: Index, term: Term) {
        assert_eq!(index, self.last_index + 1, "recovered entries are contiguous");
        self.push(index, term);
        self.last_index = index;
    }

    fn push(&mut self, index: Index, term: Term) {
        if self.runs.last().is_none_or(|&(_, last)| last != term) {
            self.runs.push((index, term));
        }
    }

    /// The term at `index`, if the log (or the snapshot point) holds it.
    pub(crate) fn term(&self, index: Index) -> Option<Term> {
        if index == self.snapshot_index {
            return Some(self.snapshot_term);
        }
        if index < self.snapshot_index || index > self.last_index {
            return None;
        }
        let run = self.runs.partition_point(|&(start, _)| start <= index);
        Some(self.runs[run - 1].1)
    }

    /// Undoes `install_snapshot(index, _, true)` from `previous`, the log
    /// before it: appends since then only changed entries after `index`.
    pub(crate) fn put_back_prefix(&mut self, previous: TermLog, index: Index) {
        let mut runs: Vec<(Index, Term)> = previous.runs.into_iter().filter(|&(start, _)| start <= index).collect();
        for (start, term) in self.runs.drain(..) {
            if runs.last().is_none_or(|&(_, last)| last != term) {
                runs.push((start, term));
            }
        }
        self.runs = runs;
        self.snapshot_index = previous.snapshot_index;
        self.snapshot_term = previous.snapshot_term;
    }

    /// Moves the snapshot point to `index`; keeps the entries after it when
    /// `keep` (the log agrees with the snapshot), else discards them all.
    pub(crate) fn install_snapshot(&mut self, index: Index, term: Term, keep: bool) {
        if keep {
            assert_eq!(self.term(index), Some(term), "kept log must agree with the snapshot");
            let first_kept = index + 1;
            let covering = self.runs.partition_point(|&(start, _)| start <= first_kept);
            if covering > 0 {
                self.runs.drain(..covering - 1);
                if self.runs[0].0 < first_kept && first_kept <= self.last_index {
                    self.runs[0].0 = first_kept;
                }
            }
            self.runs.retain(|&(start, _)| start <= self.last_index && start > index);
        } else {
            self.runs.clear();
            self.last_index = index;
        }
        self.snapshot_index = index;
        self.snapshot_term = term;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::batch;

    #[test]
    fn a_snapshot_point_given_up_is_put_back() {
        let mut log = TermLog::new(0, 0);
        log.append(&batch(1, &[1, 1, 2, 2, 3]));
        let previous = log.clone();
        log.install_snapshot(3, 2, true);
        log.append(&batch(6, &[3, 4]));
        log.put_back_prefix(previous, 3);
        assert_eq!(log.snapshot_index, 0);
        let terms: Vec<Term> = (1..=7).map(|i| log.term(i).unwrap()).collect();
        assert_eq!(terms, vec![1, 1, 2, 2, 3, 3, 4]);
    }

    #[test]
    fn terms_follow_appends_truncations_and_snapshots() {
        let mut log = TermLog::new(0, 0);
        log.append(&batch(1, &[1, 1, 2, 2, 3]));
        assert_eq!((1..=5).map(|i| log.term(i).unwrap()).collect::<Vec<_>>(), vec![1, 1, 2, 2, 3]);
        log.append(&batch(4, &[4]));
        assert_eq!((log.last_index, log.term(4), log.term(5)), (4, Some(4), None));
        log.install_snapshot(3, 2, true);
        assert_eq!((log.term(3), log.term(4), log.term(2)), (Some(2), Some(4), None));
        log.install_snapshot(10, 7, false);
        assert_eq!((log.last_index, log.term(10), log.term(4)), (10, Some(7), None));
    }
}
