"""TuneResult: the study after a tuner run, as numbers, a DataFrame and a plot."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState

from tetra_lightning.tuner.storage import FAIL_REASON_KEY, is_surplus


@dataclass
class TuneResult:
    """What :meth:`TetraOptTuner.fit` returns.

    Attributes:
        study: the Optuna study (every trial of every session that used this storage and name).
        monitor: the optimized metric.
        mode: ``"max"`` or ``"min"``.
        trials: one row per trial (``number``, ``value``, ``state``, ``params_*``, ``user_attrs_fail_reason``,
            ``user_attrs_traceback``, ``duration``, ...), as ``optuna.Study.trials_dataframe`` writes it, without
            the unrun ``surplus:`` claims that workers sharing a study give back when the budget is used up.

    Example:
        >>> import optuna
        >>> study = optuna.create_study(direction="maximize")
        >>> study.add_trial(optuna.trial.create_trial(
        ...     params={"x": 1.0}, distributions={"x": optuna.distributions.FloatDistribution(0, 2)}, value=3.0))
        >>> TuneResult.from_study(study, "val_acc", "max").best_params
        {'x': 1.0}
    """

    study: optuna.Study
    monitor: str
    mode: Literal["max", "min"]
    trials: pd.DataFrame

    @classmethod
    def from_study(cls, study: optuna.Study, monitor: str, mode: Literal["max", "min"]) -> TuneResult:
        """Builds the result from a study's current trials."""
        trials = study.trials_dataframe(
            attrs=("number", "value", "state", "params", "user_attrs", "duration", "datetime_start", "datetime_complete")
        )
        surplus = {t.number for t in study.get_trials(deepcopy=False) if is_surplus(t)}
        if surplus and "number" in trials:
            trials = trials[~trials["number"].isin(surplus)].reset_index(drop=True)
        return cls(study=study, monitor=monitor, mode=mode, trials=trials)

    def evaluations(self) -> list[optuna.trial.FrozenTrial]:
        """The study's trials by number, without the unrun ``surplus:`` claims."""
        return sorted(
            (t for t in self.study.get_trials(deepcopy=False) if not is_surplus(t)), key=lambda t: t.number
        )

    def failures(self) -> list[optuna.trial.FrozenTrial]:
        """The FAIL trials that were evaluations (crashes, NaN, dead workers), without ``surplus:`` claims."""
        return [t for t in self.evaluations() if t.state == TrialState.FAIL]

    def _complete(self) -> list[optuna.trial.FrozenTrial]:
        return self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))

    @property
    def best_trial(self) -> optuna.trial.FrozenTrial:
        """The best COMPLETE trial.

        Raises:
            ValueError: when no trial completed; the message names the first failure.
        """
        complete = self._complete()
        if not complete:
            failed = self.failures()
            hint = ""
            if failed:
                hint = f" Trial {failed[0].number} failed with: {failed[0].user_attrs.get(FAIL_REASON_KEY, '?')}"
            raise ValueError(
                f"No trial of study {self.study.study_name!r} completed ({len(failed)} failed).{hint}"
            )
        pick = max if self.mode == "max" else min
        return pick(complete, key=lambda t: t.value)

    @property
    def best_params(self) -> dict[str, Any]:
        """Params of the best trial."""
        return dict(self.best_trial.params)

    @property
    def best_value(self) -> float:
        """Monitor value of the best trial."""
        return float(self.best_trial.value)

    @property
    def n_complete(self) -> int:
        """Number of COMPLETE trials."""
        return len(self._complete())

    def best_so_far(self) -> np.ndarray:
        """Best value after each trial (by number; NaN until a trial completes)."""
        best = math.nan
        out = []
        for trial in self.evaluations():
            if trial.state == TrialState.COMPLETE:
                if math.isnan(best):
                    best = trial.value
                else:
                    best = max(best, trial.value) if self.mode == "max" else min(best, trial.value)
            out.append(best)
        return np.asarray(out, dtype=float)

    def param_importances(self) -> dict[str, float]:
        """Importance of each parameter for the monitor, summing to 1.

        Uses Optuna's fANOVA evaluator when it can (scikit-learn installed, >= 2 finished trials) and
        otherwise the share of the value's variance explained by each parameter's binned means.
        """
        complete = self._complete()
        if len(complete) < 2:
            return {}
        try:
            importances = optuna.importance.get_param_importances(self.study)
            return {name: float(v) for name, v in importances.items()}
        except (ImportError, RuntimeError, ValueError):
            return variance_importances(complete)

    def plot(self, path: str | Path) -> Path:
        """Writes a PNG with the optimization history (values and best so far) and the parameter importances.

        Args:
            path: the PNG file to write (parents are created).

        Returns:
            The path written.
        """
        from matplotlib.figure import Figure  # a bare Figure renders with Agg: no pyplot, no global backend

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        figure = Figure(figsize=(11, 4), constrained_layout=True)
        history, importance = figure.subplots(1, 2)
        trials = self.evaluations()
        colors = {TrialState.COMPLETE: "tab:blue", TrialState.PRUNED: "tab:orange", TrialState.FAIL: "tab:red"}
        for state, color in colors.items():
            points = [(t.number, t.value) for t in trials if t.state == state and t.value is not None]
            if points:
                xs, ys = zip(*points, strict=True)
                history.scatter(xs, ys, s=18, color=color, label=state.name.lower())
        failed = [t.number for t in trials if t.state == TrialState.FAIL]
        for number in failed:
            history.axvline(number, color="tab:red", alpha=0.15, lw=2)
        history.step([t.number for t in trials], self.best_so_far(), where="post", color="black", label="best so far")
        history.set_xlabel("trial")
        history.set_ylabel(self.monitor)
        history.set_title(f"{self.study.study_name}: optimization history ({len(failed)} failed)")
        history.legend(loc="best", fontsize=8)
        importances = self.param_importances()
        if importances:
            names = list(importances)[::-1]
            importance.barh(names, [importances[n] for n in names], color="tab:green")
            importance.set_xlabel("importance")
        else:
            importance.text(0.5, 0.5, "needs >= 2 completed trials", ha="center", va="center")
        importance.set_title("parameter importance")
        figure.savefig(path, dpi=110)
        return path


def variance_importances(trials: list[optuna.trial.FrozenTrial], bins: int = 4) -> dict[str, float]:
    """Share of the value's variance explained by each parameter alone (between-group variance of bins).

    Numeric parameters with more than ``bins`` distinct values are split into quantile bins.
    """
    values = np.asarray([t.value for t in trials], dtype=float)
    total = float(np.var(values))
    names = sorted({name for t in trials for name in t.params})
    raw: dict[str, float] = {}
    for name in names:
        column = [t.params.get(name) for t in trials]
        keys: list[Any] = column
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in column)
        if numeric and len(set(column)) > bins:
            edges = np.quantile(np.asarray(column, dtype=float), np.linspace(0, 1, bins + 1)[1:-1])
            keys = list(np.searchsorted(edges, np.asarray(column, dtype=float)))
        explained = 0.0
        for key in set(map(str, keys)):
            group = values[[str(k) == key for k in keys]]
            explained += len(group) * (group.mean() - values.mean()) ** 2
        raw[name] = explained / len(values) / total if total > 0 else 0.0
    norm = sum(raw.values())
    if norm <= 0:
        return {name: 1.0 / len(names) for name in names} if names else {}
    return dict(sorted(((n, v / norm) for n, v in raw.items()), key=lambda kv: -kv[1]))
