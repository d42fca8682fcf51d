//! Node id assignment in the replicated state machine (`node serve --join`):
//! every replica that applies the same entries assigns the same ids; an id
//! is above every id any configuration, address or assignment used, so it
//! is never reused, even after its node was removed; a retry with the same
//! nonce gets the same id; a second node on a member's peer address is
//! refused; the bookkeeping travels in snapshots.

use bytes::Bytes;
use engine::{ConfChange, ConfChangeOp};
use node::replicated::{Applied, NodeCommand, SetAddresses};

#[path = "common/replica.rs"]
mod replica;
use replica::Replica;

impl Replica {
    fn conf(&mut self, ops: Vec<ConfChangeOp>) {
        self.index += 1;
        self.machine.apply_conf(self.index, &ConfChange { ops }.encode());
    }

    fn assign(&mut self, nonce: u64, peer: &str) -> Result<u64, String> {
        let command = NodeCommand::AssignId { nonce, peer: peer.into(), client: format!("{peer}-client") };
        match self.command(command) {
            Applied::IdAssigned { result } => result,
            other => panic!("not an assignment: {other:?}"),
        }
    }
}

fn bootstrap() -> Replica {
    let mut replica = Replica::new();
    replica.conf((1..=3).map(ConfChangeOp::AddVoter).collect());
    replica
}

#[test]
fn ids_start_above_the_bootstrap_membership_and_grow() {
    let mut replica = bootstrap();
    assert_eq!(replica.machine.next_id(), 4);
    assert_eq!(replica.assign(11, "10.0.0.4:7100"), Ok(4));
    assert_eq!(replica.assign(12, "10.0.0.5:7100"), Ok(5));
    let addresses = replica.machine.addresses(5).unwrap();
    assert_eq!(addresses.peer.as_deref(), Some("10.0.0.5:7100"));
    assert_eq!(addresses.client.as_deref(), Some("10.0.0.5:7100-client"));
}

#[test]
fn a_retry_with_the_same_nonce_gets_the_same_id() {
    let mut replica = bootstrap();
    assert_eq!(replica.assign(7, "10.0.0.4:7100"), Ok(4));
    assert_eq!(replica.assign(7, "10.0.0.4:7100"), Ok(4));
    assert_eq!(replica.machine.next_id(), 5);
}

#[test]
fn removed_ids_are_never_given_again() {
    let mut replica = bootstrap();
    assert_eq!(replica.assign(1, "10.0.0.4:7100"), Ok(4));
    replica.conf(vec![ConfChangeOp::AddLearner(4)]);
    replica.conf(vec![ConfChangeOp::Remove(4)]);
    replica.conf(vec![ConfChangeOp::Remove(3)]);
    assert!(replica.machine.is_removed(4) && replica.machine.is_removed(3));
    // The removed node's address is free again, its id is not.
    assert_eq!(replica.assign(2, "10.0.0.4:7100"), Ok(5));
}

#[test]
fn ids_named_by_hand_count_too() {
    let mut replica = bootstrap();
    // `node admin add-learner 9 ...` (the manual flow) used 9.
    replica.command(NodeCommand::SetAddresses(SetAddresses {
        id: 9,
        peer: Some("10.0.0.9:7100".into()),
        client: None,
    }));
    replica.conf(vec![ConfChangeOp::AddLearner(9)]);
    assert_eq!(replica.assign(1, "10.0.0.10:7100"), Ok(10));
    // A configuration naming a higher id than any address.
    replica.conf(vec![ConfChangeOp::AddLearner(20)]);
    assert_eq!(replica.assign(2, "10.0.0.11:7100"), Ok(21));
}

#[test]
fn a_second_node_on_a_members_peer_address_is_refused() {
    let mut replica = bootstrap();
    assert_eq!(replica.assign(1, "10.0.0.4:7100"), Ok(4));
    let refusal = replica.assign(2, "10.0.0.4:7100").unwrap_err();
    assert!(refusal.contains("already belongs to node 4"), "{refusal}");
    assert_eq!(replica.machine.next_id(), 5, "a refusal uses no id");
}

#[test]
fn replicas_agree_and_snapshots_carry_the_bookkeeping() {
    let mut first = bootstrap();
    let mut second = bootstrap();
    for replica in [&mut first, &mut second] {
        assert_eq!(replica.assign(1, "10.0.0.4:7100"), Ok(4));
        replica.conf(vec![ConfChangeOp::AddLearner(4)]);
        replica.conf(vec![ConfChangeOp::Remove(4)]);
    }
    assert_eq!(first.machine.snapshot(), second.machine.snapshot());
    let snapshot: Bytes = first.machine.snapshot();
    let mut restored = Replica::new();
    restored.machine.restore_from(&mut &snapshot[..]).expect("restores");
    restored.index = first.index;
    assert!(restored.machine.is_removed(4));
    assert_eq!(restored.assign(1, "10.0.0.4:7100"), Ok(4), "the nonce is remembered");
    assert_eq!(restored.assign(2, "10.0.0.6:7100"), Ok(5));
    // A replica that restored a snapshot without the configuration entries
    // learns the members from the snapshot's configuration.
    let mut fresh = Replica::new();
    fresh.machine.note_members(&[1, 2, 3, 8]);
    assert_eq!(fresh.machine.next_id(), 9);
}
