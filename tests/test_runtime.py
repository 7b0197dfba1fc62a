"""medseg.runtime: torch's thread count and random state are borrowed for a block, then given back."""

from __future__ import annotations

import pytest
import torch

from medseg.runtime import seeded, torch_threads


def test_torch_threads_sets_the_count_inside_and_restores_it_even_on_error():
    before = torch.get_num_threads()
    inside = 2 if before == 1 else 1
    with torch_threads(inside):
        assert torch.get_num_threads() == inside
    assert torch.get_num_threads() == before
    with pytest.raises(KeyError), torch_threads(inside):
        raise KeyError("inside")
    assert torch.get_num_threads() == before
    with torch_threads(None):  # None: as they are
        assert torch.get_num_threads() == before


def test_seeded_draws_the_same_numbers_and_leaves_the_callers_stream_alone(test_seed):
    torch.manual_seed(test_seed)
    expected = torch.rand(4)  # what the caller's stream gives next ...
    torch.manual_seed(test_seed)
    with seeded(7):
        first = torch.rand(3)
    with seeded(7):
        second = torch.rand(3)
    assert torch.equal(first, second)
    assert torch.equal(torch.rand(4), expected)  # ... still, after two seeded blocks
