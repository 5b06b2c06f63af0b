"""Hard negative mining: which batch is replayed, and when."""

import pytest
import torch

from plugins.components.mining import hard_negative_mining


def _batch(value: float) -> dict[str, torch.Tensor]:
    return {"image": torch.full((1, 3, 2, 2), value), "mask": torch.zeros(1, 1, 2, 2)}


def test_replays_the_worst_batch_since_the_last_replay_every_n_steps():
    callback = hard_negative_mining(every=4)
    losses = [0.3, 0.9, 0.1, 0.5, 0.2, 0.4, 0.8, 0.6, 0.7, 0.1]
    replays = {}
    for step, loss in enumerate(losses):
        replay = callback.after_train_step(_batch(step), loss, step)
        if replay is not None:
            replays[step] = replay["image"][0, 0, 0, 0].item()
    # Window 0-3: worst is step 1 (0.9); window 4-7: worst is step 6 (0.8), not step 1 again.
    assert replays == {3: 1.0, 7: 6.0}


def test_nothing_is_replayed_before_n_steps():
    callback = hard_negative_mining(every=10)
    assert all(callback.after_train_step(_batch(s), 1.0, s) is None for s in range(9))


def test_the_replayed_batch_is_a_copy_unaffected_by_later_in_place_changes():
    callback = hard_negative_mining(every=2)
    worst = _batch(5.0)
    callback.after_train_step(worst, 2.0, 0)
    worst["image"].zero_()
    replay = callback.after_train_step(_batch(1.0), 1.0, 1)
    assert (replay["image"] == 5.0).all()


def test_a_reported_replay_step_is_not_counted():
    callback = hard_negative_mining(every=2)
    callback.after_train_step(_batch(0.0), 1.0, 0)
    replay = callback.after_train_step(_batch(1.0), 0.5, 1)
    assert callback.after_train_step(replay, 0.2, 2) is None  # the engine's extra step
    assert callback.after_train_step(_batch(3.0), 0.1, 3) is None
    assert callback.after_train_step(_batch(4.0), 0.3, 4)["image"][0, 0, 0, 0] == 4.0


def test_every_must_be_positive():
    with pytest.raises(ValueError, match="every"):
        hard_negative_mining(every=0)
