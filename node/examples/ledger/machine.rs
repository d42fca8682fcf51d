//! The ledger: accounts and transfers between them, a state machine whose
//! invariants are easy to check and hard to fake. Money only moves: the
//! total of all balances never changes; no balance goes below zero; every
//! replica holds the same balances; and the count of applied transfers
//! equals the count the clients saw acknowledged (exactly-once: a transfer
//! retried after a lost answer is not applied twice — which conservation
//! alone would not catch).
//!
//! Commands (little-endian): `1 account:u32 balance:u64` opens an account
//! (refused if it exists); `2 from:u32 to:u32 amount:u64` moves money
//! (answered `0` done, `1` insufficient funds, `2` unknown account).
//! Queries: `1 account:u32` a balance; `2` the summary (accounts, total,
//! transfers applied, a digest of every balance).

use std::collections::BTreeMap;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use node::{Rejection, RestoreError, SerializedImage, SnapshotImage, StateMachine};

/// The ledger's state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ledger {
    balances: BTreeMap<u32, u64>,
    /// Transfers applied (done or refused for funds: each counts once).
    transfers: u64,
}

/// A transfer's outcome.
pub const DONE: u8 = 0;
pub const INSUFFICIENT: u8 = 1;
pub const UNKNOWN_ACCOUNT: u8 = 2;

pub fn open(account: u32, balance: u64) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u8(1);
    out.put_u32_le(account);
    out.put_u64_le(balance);
    out.freeze()
}

pub fn transfer(from: u32, to: u32, amount: u64) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u8(2);
    out.put_u32_le(from);
    out.put_u32_le(to);
    out.put_u64_le(amount);
    out.freeze()
}

/// The query for one account's balance (used by `ledger run`'s readers and
/// by applications; the checks use the summary).
#[allow(dead_code)]
pub fn balance_query(account: u32) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u8(1);
    out.put_u32_le(account);
    out.freeze()
}

pub fn summary_query() -> Bytes {
    Bytes::from_static(&[2])
}

/// What the summary query answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Summary {
    pub accounts: u64,
    pub total: u64,
    pub transfers: u64,
    pub digest: u32,
}

impl Summary {
    pub fn decode(mut bytes: &[u8]) -> Option<Summary> {
        if bytes.len() != 28 {
            return None;
        }
        Some(Summary {
            accounts: bytes.get_u64_le(),
            total: bytes.get_u64_le(),
            transfers: bytes.get_u64_le(),
            digest: bytes.get_u32_le(),
        })
    }
}

impl Ledger {
    fn summary(&self) -> Summary {
        let mut digest = Vec::with_capacity(self.balances.len() * 12);
        for (account, balance) in &self.balances {
            digest.extend_from_slice(&account.to_le_bytes());
            digest.extend_from_slice(&balance.to_le_bytes());
        }
        Summary {
            accounts: self.balances.len() as u64,
            total: self.balances.values().sum(),
            transfers: self.transfers,
            digest: crc32c::crc32c(&digest),
        }
    }
}

impl StateMachine for Ledger {
    fn apply(&mut self, _index: u64, command: &[u8]) -> Result<Bytes, Rejection> {
        let refuse = |reason: &str| Err(Rejection(reason.into()));
        let mut command = command;
        match (command.first(), command.len()) {
            (Some(1), 13) => {
                command.advance(1);
                let (account, balance) = (command.get_u32_le(), command.get_u64_le());
                if self.balances.contains_key(&account) {
                    return refuse("the account exists");
                }
                self.balances.insert(account, balance);
                Ok(Bytes::from_static(&[DONE]))
            }
            (Some(2), 17) => {
                command.advance(1);
                let (from, to, amount) = (command.get_u32_le(), command.get_u32_le(), command.get_u64_le());
                self.transfers += 1;
                let (Some(&have), true) = (self.balances.get(&from), self.balances.contains_key(&to)) else {
                    return Ok(Bytes::from_static(&[UNKNOWN_ACCOUNT]));
                };
                if have < amount {
                    return Ok(Bytes::from_static(&[INSUFFICIENT]));
                }
                *self.balances.get_mut(&from).expect("checked") -= amount;
                *self.balances.get_mut(&to).expect("checked") += amount;
                Ok(Bytes::from_static(&[DONE]))
            }
            _ => refuse("not a ledger command"),
        }
    }

    fn query(&self, query: &[u8]) -> Result<Bytes, Rejection> {
        let mut query = query;
        match (query.first(), query.len()) {
            (Some(1), 5) => {
                query.advance(1);
                let balance = self.balances.get(&query.get_u32_le()).copied().unwrap_or(0);
                Ok(Bytes::copy_from_slice(&balance.to_le_bytes()))
            }
            (Some(2), 1) => {
                let summary = self.summary();
                let mut out = BytesMut::with_capacity(28);
                out.put_u64_le(summary.accounts);
                out.put_u64_le(summary.total);
                out.put_u64_le(summary.transfers);
                out.put_u32_le(summary.digest);
                Ok(out.freeze())
            }
            _ => Err(Rejection("not a ledger query".into())),
        }
    }

    /// Small states serialize at once.
    fn snapshot_image(&self) -> Box<dyn SnapshotImage> {
        let mut out = BytesMut::new();
        out.put_u64_le(self.transfers);
        out.put_u64_le(self.balances.len() as u64);
        for (account, balance) in &self.balances {
            out.put_u32_le(*account);
            out.put_u64_le(*balance);
        }
        Box::new(SerializedImage(out.freeze()))
    }

    /// Small states are read whole.
    fn restore_from(&mut self, snapshot: &mut dyn std::io::Read) -> Result<(), RestoreError> {
        let bad = || RestoreError("not a ledger snapshot".into());
        let mut raw = Vec::new();
        snapshot.read_to_end(&mut raw)?;
        let mut data = Bytes::from(raw);
        if data.len() < 16 {
            return Err(bad());
        }
        let transfers = data.get_u64_le();
        let count = data.get_u64_le() as usize;
        if data.len() != count.checked_mul(12).ok_or_else(bad)? {
            return Err(bad());
        }
        let mut balances = BTreeMap::new();
        for _ in 0..count {
            balances.insert(data.get_u32_le(), data.get_u64_le());
        }
        *self = Ledger { balances, transfers };
        Ok(())
    }
}
