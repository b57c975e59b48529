"""The embedded digits: the validation rows are carved from the training rows, the test rows untouched."""

import pytest
import torch

from ppgen.datasets import digits


def test_digits_validation_split_is_the_tail_of_the_training_rows():
    whole, split = digits(), digits(val=300)
    assert (len(split.train), len(split.val), len(split.test)) == (1200, 300, 297)
    assert torch.equal(torch.cat([split.train, split.val]), whole.train)
    assert torch.equal(torch.cat([split.train_labels, split.val_labels]), whole.train_labels)
    assert torch.equal(split.test, whole.test) and torch.equal(split.test_labels, whole.test_labels)
    assert whole.val is None and whole.val_labels is None
    again = digits(val=300)  # seeded: the same rows every call
    assert torch.equal(again.val, split.val) and torch.equal(again.train, split.train)


@pytest.mark.parametrize("val", [-1, 1500, 2.5, True])
def test_digits_refuses_a_validation_size_outside_the_training_rows(val):
    with pytest.raises(ValueError, match=r"digits\(val=\.\.\.\) holds out 0 to 1499"):
        digits(val=val)
