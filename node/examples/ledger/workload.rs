//! The ledger's workload and its checks, shared by the example's modes and
//! by its tests: open the accounts, run transfers from several clients in
//! exactly-once sessions, then check every replica.

use net::{CallError, Connector};
use node::client_cmd::BlockingClient;

use crate::machine::{self, Summary, DONE, INSUFFICIENT};

/// What the clients saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    /// Transfers answered (done or refused for funds): applied once each.
    pub acknowledged: u64,
    /// Transfers whose answer never came (a timeout): applied or not.
    pub unknown: u64,
}

impl std::ops::AddAssign for Seen {
    fn add_assign(&mut self, other: Seen) {
        self.acknowledged += other.acknowledged;
        self.unknown += other.unknown;
    }
}

/// Opens accounts `0..accounts` with `initial` each (an account that exists
/// already is fine: another client opened it).
pub fn open_accounts<C: Connector>(client: &mut BlockingClient<C>, accounts: u32, initial: u64) -> Result<(), String> {
    let mut session = client.open_session().map_err(|error| format!("opening a session: {error}"))?;
    for account in 0..accounts {
        match client.write(&mut session, machine::open(account, initial)) {
            Ok(_) => {}
            Err(CallError::Refused(status)) if format!("{status:?}").contains("exists") => {}
            Err(error) => return Err(format!("opening account {account}: {error}")),
        }
    }
    let _ = client.close_session(session);
    Ok(())
}

/// Runs `count` transfers between random accounts (a seeded generator) in
/// one exactly-once session; a transfer whose answer does not come is
/// counted unknown and the client goes on.
pub fn transfers<C: Connector>(
    client: &mut BlockingClient<C>,
    accounts: u32,
    count: u64,
    seed: u64,
) -> Result<Seen, String> {
    let mut random = seed | 1;
    let mut next = |bound: u64| {
        random ^= random << 13;
        random ^= random >> 7;
        random ^= random << 17;
        random % bound
    };
    let mut session = client.open_session().map_err(|error| format!("opening a session: {error}"))?;
    let mut seen = Seen::default();
    for _ in 0..count {
        let from = next(u64::from(accounts)) as u32;
        let to = (from + 1 + next(u64::from(accounts) - 1) as u32) % accounts;
        let amount = 1 + next(50);
        match client.write(&mut session, machine::transfer(from, to, amount)) {
            Ok(answer) if answer.as_ref() == [DONE] || answer.as_ref() == [INSUFFICIENT] => seen.acknowledged += 1,
            Ok(answer) => return Err(format!("a transfer answered {answer:?}")),
            Err(CallError::Unreachable { .. }) => seen.unknown += 1,
            Err(CallError::SessionExpired) => return Err("the session expired during the run".into()),
            Err(error) => return Err(format!("a transfer failed: {error}")),
        }
    }
    let _ = client.close_session(session);
    Ok(seen)
}

/// Checks what every replica holds: the same state, the money all there,
/// and each acknowledged transfer applied once.
pub fn check(summaries: &[(u64, Summary)], accounts: u32, initial: u64, seen: Seen) -> Result<(), String> {
    let Some((first_id, first)) = summaries.first() else { return Err("no replica answered".into()) };
    for (id, summary) in summaries {
        if summary != first {
            return Err(format!("replica {id} holds {summary:?}, replica {first_id} {first:?}"));
        }
    }
    if first.accounts != u64::from(accounts) {
        return Err(format!("{} accounts, expected {accounts}", first.accounts));
    }
    let total = u64::from(accounts) * initial;
    if first.total != total {
        return Err(format!("the total is {}, expected {total}: money was created or lost", first.total));
    }
    if first.transfers < seen.acknowledged || first.transfers > seen.acknowledged + seen.unknown {
        return Err(format!(
            "{} transfers applied, but the clients saw {} acknowledged and {} unknown: a transfer was applied \
             twice or an acknowledged one was lost",
            first.transfers, seen.acknowledged, seen.unknown
        ));
    }
    Ok(())
}
