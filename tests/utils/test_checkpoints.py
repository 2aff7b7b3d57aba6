"""The checkpoint resolver: spec parsing, workdirs, step directories, npz, subtrees."""

from __future__ import annotations

import pytest

from vitx.utils import checkpoints


@pytest.mark.parametrize("spec,want", [
    ("/abs/path.npz:params", ("/abs/path.npz", "params")),
    ("/abs/path.npz", ("/abs/path.npz", None)),
    ("rel/ckpt.npz:opt/target", ("rel/ckpt.npz", "opt/target")),
    ("gs://bucket/x.npz", ("gs://bucket/x.npz", None)),
    ("gs://bucket/x.npz:params/", ("gs://bucket/x.npz", "params")),
    ("workdir", ("workdir", None)),
])
def test_parse_spec(spec, want):
    assert checkpoints.parse_spec(spec) == want


def test_parse_spec_errors():
    for bad in ("", "x.npz:", ":params"):
        with pytest.raises(ValueError, match="path:subtree"):
            checkpoints.parse_spec(bad)
