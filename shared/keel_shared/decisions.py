"""Signed approval decisions: the approval service's key, and what the router and executors check.

A grant unlocks a write only where its Ed25519 signature verifies against the approval keyring
(`KEEL_APPROVAL_KEYRING_FILE`, default `<data dir>/keys/approval-keyring.json`): the router checks it
before the grant counts, and the executor checks it again right before it writes (decision 026). The key
and keyring files are described in `keel_shared.keyrings`; `keel keys rotate-approval` rotates the key.
"""

from __future__ import annotations

from keel_contracts.approvals import ApprovalDenied, ApprovalGranted, DecisionProof, proof_of, unsigned_proof
from keel_shared.keyrings import SignerKeys, Verifier, sign
from keel_shared.signing import Signer

PURPOSE = "keel-approval-decisions"
#: The approval service's signing key and the keyring router and executors trust.
KEYS = SignerKeys(
    PURPOSE, "approval_signing_key_file", "approval_keyring_file", "approval-signing.key", "approval-keyring.json"
)


def sign_decision(
    signer: Signer, event: ApprovalGranted | ApprovalDenied, approves_step: str
) -> ApprovalGranted | ApprovalDenied:
    """The decision event with its signature (and the key id and write it names) filled in."""
    proof = unsigned_proof(event, signer.key_id, approves_step)
    update = {"approves_step": approves_step, "key_id": signer.key_id, "signature": sign(signer, proof.statement())}
    return event.model_copy(update={"body": event.body.model_copy(update=update)})


def proof_problem(keyring: Verifier, proof: DecisionProof) -> str | None:
    return keyring.problem(proof.key_id, proof.signature, proof.statement(), proof.decided_at)


def decision_problem(keyring: Verifier, event: ApprovalGranted | ApprovalDenied) -> str | None:
    """Why a decision event must not be folded (unsigned, unknown key, bad signature), or None."""
    proof = proof_of(event)
    if proof is None:
        return "the decision carries no signature"
    return proof_problem(keyring, proof)


def grant_problem(keyring: Verifier, proof: DecisionProof, run_id: str, step_id: str | None, digest: str) -> str | None:
    """Why a grant carried by a scheduled write does not unlock that write, or None when it does: it must
    verify, be a grant, and name this run, this step and the hash of the payload about to be sent."""
    if proof.decision != "granted":
        return f"approval {proof.approval_id} was not granted"
    if proof.run_id != run_id or proof.approves_step != step_id:
        return f"approval {proof.approval_id} is for step {proof.approves_step} of run {proof.run_id}"
    if proof.payload_hash != digest:
        return f"approval {proof.approval_id} approved payload {proof.payload_hash}, not {digest}"
    return proof_problem(keyring, proof)
