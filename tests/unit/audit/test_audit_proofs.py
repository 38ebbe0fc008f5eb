"""Inclusion proofs for one record and consistency proofs between two checkpoints, over a stored log."""

from __future__ import annotations

import dataclasses

import pytest
from audit_testlib import STREAM, AuditLog, signer_from

from keel_audit.errors import RecordNotFoundError
from keel_audit.proofs import (
    ConsistencyProof,
    InclusionProof,
    prove_consistency,
    prove_inclusion,
    verify_consistency_proof,
    verify_inclusion_proof,
)


@pytest.mark.parametrize("target", ["1", "7", "20", f"{STREAM}:13"])
def test_inclusion_proof_for_a_record_verifies_against_the_signed_head(audit_log: AuditLog, target: str) -> None:
    proof = prove_inclusion(audit_log.store, target)
    assert proof.tree_size == 20 and proof.segment_index == 4
    assert verify_inclusion_proof(InclusionProof.from_json(proof.to_json()), audit_log.keyring) == []


def test_inclusion_proof_against_an_older_seal_verifies(audit_log: AuditLog) -> None:
    proof = prove_inclusion(audit_log.store, "3", at_segment=1)
    assert proof.tree_size == 8
    assert verify_inclusion_proof(proof, audit_log.keyring) == []


def test_inclusion_proof_of_an_altered_record_fails(audit_log: AuditLog) -> None:
    proof = prove_inclusion(audit_log.store, "7")
    altered = dataclasses.replace(proof, record=proof.record.replace("event 7", "event 8"))
    assert verify_inclusion_proof(altered, audit_log.keyring)


def test_inclusion_proof_moved_to_another_index_fails(audit_log: AuditLog) -> None:
    proof = prove_inclusion(audit_log.store, "7")
    assert verify_inclusion_proof(dataclasses.replace(proof, leaf_index=proof.leaf_index + 1), audit_log.keyring)


def test_inclusion_proof_with_a_seal_from_an_unknown_key_fails(audit_log: AuditLog) -> None:
    proof = prove_inclusion(audit_log.store, "7")
    keyring = dataclasses.replace(audit_log.keyring, keys=())
    assert verify_inclusion_proof(proof, keyring) == [f"seal is signed by unknown key {signer_from(1).key_id}"]


def test_proving_an_absent_record_raises(audit_log: AuditLog) -> None:
    with pytest.raises(RecordNotFoundError):
        prove_inclusion(audit_log.store, "999")


def test_consistency_proof_between_two_checkpoints_verifies(audit_log: AuditLog) -> None:
    old = audit_log.checkpoint()  # tree size 20
    assert audit_log.writer is not None
    audit_log.append(21, 22, 23, 24, 25, 26, 27)
    audit_log.writer.flush()
    new = audit_log.checkpoint()
    proof = prove_consistency(audit_log.store, old, new)
    assert (proof.old_size, proof.new_size) == (20, 27)
    assert verify_consistency_proof(proof, old, new)


def test_consistency_proof_fails_for_a_rewritten_history(audit_log: AuditLog) -> None:
    old = audit_log.checkpoint()
    assert audit_log.writer is not None
    audit_log.append(21, 22, 23, 24)
    new = audit_log.checkpoint()
    proof = prove_consistency(audit_log.store, old, new)
    forked_old = dataclasses.replace(old, tree_root="11" * 32)
    assert not verify_consistency_proof(proof, forked_old, new)
    assert not verify_consistency_proof(ConsistencyProof(20, 24, proof.path[:-1]), old, new)
    assert not verify_consistency_proof(ConsistencyProof(24, 20, proof.path), new, old)
