"""The staged-rewrite base shared by the structural callbacks: its schedule, checks and state."""

from __future__ import annotations

import pytest

from tetra_lightning.callbacks import LowRankCallback, PruningCallback, TensorCompressionCallback
from tetra_lightning.callbacks._staged import StagedRewriteCallback, StageSchedule
from tetra_lightning.prune import PruneConfig


def test_regular_schedule_runs_one_stage_per_epoch_start_and_catches_up() -> None:
    schedule = StageSchedule.regular(start_epoch=1, steps=3, epochs_between_steps=2)
    assert schedule.epochs == (1, 3, 5) and schedule.steps == 3 and schedule.last_epoch == 5
    due = [epoch for epoch in range(8) if schedule.due(stages_done=sum(e <= epoch - 1 for e in (1, 3, 5)), epoch=epoch)]
    assert due == [1, 3, 5]
    # a resume that starts after a stage's epoch runs that stage at the next epoch start
    assert schedule.due(stages_done=1, epoch=4) and not schedule.due(stages_done=3, epoch=9)
    assert schedule.description == "start_epoch=1, steps=3, epochs_between_steps=2"


def test_listed_and_open_ended_schedules() -> None:
    listed = StageSchedule.listed([3, 1, 3], "shrink_epochs", minimum=1)
    assert listed.epochs == (1, 3) and listed.description == "shrink_epochs=[1, 3]"
    every = StageSchedule.every_epoch(1)
    assert every.steps is None and every.last_epoch is None and not every.finished(100)
    assert [every.due(stages_done=k, epoch=k + 1) for k in range(3)] == [True, True, True]
    assert not every.due(stages_done=2, epoch=2)  # the stage of epoch 2 already ran (mid-epoch resume)
    assert StageSchedule.listed([], "shrink_epochs").due(0, 5) is False


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: StageSchedule(epochs=(3, 1)), ValueError, r"`epochs` must be increasing ints >= 0, got \(3, 1\)"),
        (lambda: StageSchedule.listed("12", "shrink_epochs"), ValueError, r"`shrink_epochs` must be a sequence"),
        (lambda: StageSchedule.regular(1, steps=0), ValueError, r"`steps` must be an int >= 1, got 0"),
        (lambda: StagedRewriteCallback("epoch 1"), TypeError, r"`schedule` must be a StageSchedule, got str"),
        (lambda: PruningCallback(config={"pruning_ratio": 0.3}), TypeError, r"`config` must be a PruneConfig"),
        (lambda: PruningCallback(0.3, config=PruneConfig()), TypeError,
         r"Pass either `config` or the pruning arguments"),
        (lambda: PruningCallback(max_pruning_ratio=0.0), ValueError, r"`max_pruning_ratio` must be in \(0, 1\]"),
        (lambda: LowRankCallback(min_rank=0), ValueError, r"`min_rank` must be an int >= 1, got 0"),
        (lambda: LowRankCallback(filter_fn="conv"), TypeError, r"`filter_fn` must be callable"),
    ],
)
def test_bad_inputs(make, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        make()


def test_pruning_callback_takes_a_config() -> None:
    config = PruneConfig(pruning_ratio=0.4, importance="l2", ignored_layers=("net.head",))
    by_config = PruningCallback(config=config, start_epoch=2, steps=2)
    by_arguments = PruningCallback(0.4, "l2", start_epoch=2, steps=2, ignored_layers=["net.head"])
    assert by_config.config == by_arguments.config == config
    assert by_config.pruning_ratio == 0.4 and by_config.stage_epochs == [2, 3]
    assert by_config.step_ratio == pytest.approx(1 - 0.6**0.5)


def test_state_round_trip_and_old_states() -> None:
    callback = TensorCompressionCallback(method="svd", start_epoch=1, steps=2, verbose=False)
    callback.stages_done, callback.rewrite_epochs, callback.recomposed = 2, [1, 2], True
    callback.history, callback.summary = [{"name": "fc", "method": "svd"}], {"ratio": 2.0}
    fresh = TensorCompressionCallback(method="svd", start_epoch=1, steps=2, verbose=False)
    fresh.load_state_dict(callback.state_dict())
    assert fresh.state_dict() == callback.state_dict()
    # states written before the staged base: LowRankCallback kept only the shrink epochs
    lowrank = LowRankCallback(shrink_epochs=[1, 2, 3])
    lowrank.load_state_dict({"history": [], "shrunk_at": [1, 2], "rank_history": {"2": {"fc": [4]}}})
    assert lowrank.stages_done == 2 and lowrank.shrunk_at == [1, 2] and lowrank.rank_history == {2: {"fc": [4]}}
    assert lowrank.schedule.due(lowrank.stages_done, 3) and not lowrank.schedule.due(lowrank.stages_done, 2)
