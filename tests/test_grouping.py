"""Group reshapes: layouts, inverses, and errors that name the argument."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qcourse.grouping import from_groups, group_length, n_groups, to_groups


@settings(max_examples=50, deadline=None)
@given(out_mult=st.integers(1, 4), in_mult=st.integers(1, 4), g=st.sampled_from([1, 2, 3, 8]),
       axis=st.sampled_from([0, 1]), per=st.sampled_from(["group", "channel", "tensor"]))
def test_round_trip(out_mult: int, in_mult: int, g: int, axis: int, per: str) -> None:
    shape = (out_mult * g, in_mult * g)
    w = torch.randn(shape, generator=torch.Generator().manual_seed(out_mult * 10 + in_mult))
    gs = {"group": g, "channel": None, "tensor": "tensor"}[per]
    groups = to_groups(w, gs, axis)
    assert groups.shape == (n_groups(shape, gs, axis), group_length(shape, gs, axis))
    assert torch.equal(from_groups(groups, shape, gs, axis), w)
    # a grouping is a permutation of the weights: nothing lost, nothing duplicated
    assert torch.equal(groups.reshape(-1).sort().values, w.reshape(-1).sort().values)


def test_axis1_groups_are_contiguous_runs_of_one_row() -> None:
    w = torch.arange(24).reshape(3, 8)
    assert to_groups(w, 4).tolist()[1] == [4, 5, 6, 7]
    assert to_groups(w, None).tolist() == w.tolist()


def test_axis0_matches_hqq_reshape_and_is_strided_down_a_column() -> None:
    w = torch.arange(32).reshape(8, 4)  # out=8, in=4
    g = 4
    groups = to_groups(w, g, axis=0)
    # HQQ: W.reshape([g, -1]) and reduce over dim 0, i.e. the columns of that reshape
    hqq_view = w.reshape(g, -1)
    assert torch.equal(groups, hqq_view.T)
    # a group is one input column, rows r, r + out/g, r + 2·out/g, ...
    first = groups[0]
    assert first.tolist() == [w[0, 0].item(), w[2, 0].item(), w[4, 0].item(), w[6, 0].item()]
    per_col = to_groups(w, None, axis=0)
    assert per_col.tolist() == w.T.tolist()


def test_per_tensor_is_one_group() -> None:
    w = torch.randn(3, 5)
    assert to_groups(w, "tensor").shape == (1, 15)


def test_errors_name_the_argument() -> None:
    w = torch.randn(6, 10)
    with pytest.raises(ValueError, match="group_size=4 does not divide in_features=10"):
        to_groups(w, 4)
    with pytest.raises(ValueError, match="group_size=4 does not divide out_features=6"):
        to_groups(w, 4, axis=0)
    with pytest.raises(ValueError, match="axis must be 0 or 1"):
        to_groups(w, 2, axis=2)
    with pytest.raises(ValueError, match="group_size must be a positive int"):
        to_groups(w, 0)
    with pytest.raises(ValueError, match="group_size must be a positive int"):
        to_groups(w, 2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shape must be"):
        to_groups(torch.randn(2, 3, 4), 2)
    with pytest.raises(TypeError, match="torch.Tensor"):
        to_groups([[1.0]], 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"groups must be shaped \(30, 2\)"):
        from_groups(torch.randn(3, 2), (6, 10), 2)
