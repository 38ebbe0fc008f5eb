"""Property: any single-byte modification of any segment file is detected (the journald bit-flip idea)."""

from __future__ import annotations

from pathlib import Path

import pytest
from audit_testlib import make_log
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keel_audit.keyring import Keyring
from keel_audit.store import DirectorySegmentStore
from keel_audit.verify import Verdict, verify_log


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[int, bytes], Keyring]:
    log = make_log(tmp_path_factory.mktemp("prop") / "audit")
    log.open()
    log.append(1, 2, 3, 6, 7, 8, 9, 10, 11)  # includes a declared gap record
    assert log.writer is not None
    log.writer.flush()
    store = log.store
    return {i: store.read(i) for i in store.indices()}, log.keyring


class _MemoryStore(DirectorySegmentStore):
    def __init__(self, files: dict[int, bytes]) -> None:
        super().__init__(Path("unused"))
        self.files = files

    def indices(self) -> list[int]:
        return sorted(self.files)

    def read(self, index: int) -> bytes:
        return self.files[index]

    def strays(self) -> list[str]:
        return []


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_single_byte_modification_of_any_segment_is_detected(
    pristine: tuple[dict[int, bytes], Keyring], data: st.DataObject
) -> None:
    files, keyring = pristine
    baseline = verify_log(_MemoryStore(dict(files)), keyring)
    assert baseline.verdict is Verdict.INCOMPLETE  # only the declared gap
    index = data.draw(st.sampled_from(sorted(files)))
    raw = files[index]
    offset = data.draw(st.integers(0, len(raw) - 1))
    new_byte = data.draw(st.integers(0, 255).filter(lambda b: b != raw[offset]))
    mutated = dict(files)
    mutated[index] = raw[:offset] + bytes([new_byte]) + raw[offset + 1 :]
    report = verify_log(_MemoryStore(mutated), keyring)
    assert report.verdict is Verdict.TAMPERED, (index, offset, new_byte, report.problems)
