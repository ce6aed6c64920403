"""The problems of the HPO benchmark (``benchmarks/hpo.py``): objectives of an Optuna trial, define-by-run.

Three families, each objective deterministic given its params:

* ``sklearn``: Bayesmark's tuning problems (uber/bayesmark ``sklearn_funcs.py`` and ``data.py``): a scikit-learn
  model on a data set scikit-learn ships, scored by 5-fold cross-validation on Bayesmark's 80% training split
  (``train_test_split(test_size=0.2, random_state=0)``), over Bayesmark's own search spaces. Bayesmark's ``logit``
  axes are suggested in logit coordinates (``suggest_float("<name>_logit", logit(low), logit(high))``, mapped
  through the sigmoid), which is the warped space Bayesmark's optimizers see; ``log`` axes are
  ``suggest_float(..., log=True)`` / ``suggest_int(..., log=True)``, ``bool`` axes ``suggest_categorical``.
  Departures from Bayesmark, all to make one evaluation cheap and deterministic: every model gets
  ``random_state=0`` (Bayesmark leaves MLP, forests and trees unseeded, so its objectives are noisy);
  ``n_jobs=1``; ``SVC(probability=False)`` (Bayesmark's ``probability=True`` fits Platt scaling with an extra
  internal 5-fold CV that accuracy never reads: ``predict`` uses the decision function either way); the lasso
  regressor drops ``normalize`` (removed from scikit-learn in 1.2); the L1 logistic regression is one-vs-rest
  liblinear as in Bayesmark, written for the installed scikit-learn.
* ``lightning``: a small CNN on scikit-learn's 8x8 digits trained by a quiet Lightning ``Trainer`` (CPU, no
  logger, no checkpoints, no progress bar), 2 epochs, seeded: lr and weight decay (log), dropout, width (int),
  batch size (log int), optimizer (adam / sgd) and momentum, which only SGD trials have (a conditional param).
  The objective is the validation accuracy of the last epoch.
* ``bbob``: noiseless BBOB functions of the COCO platform (``coco-experiment``, module ``cocoex``), instance 1,
  as ``suggest_float("x<i>", -5, 5)`` problems, minimized. Eight function/dimension pairs, two per dimension
  (2, 3, 5, 10) and at least one from each of BBOB's five groups, so BBOB weighs about as much in the suite mean
  as the scikit-learn family: f1 sphere (separable; a check that a method converges in a continuous space),
  f8 Rosenbrock (moderate conditioning, a bent valley; in 2-D and in 10-D), f10 rotated ellipsoid (condition
  1e6), f15 rotated Rastrigin (regular multimodal; 3-D and 10-D), f20 Schwefel (multimodal with a deceptive
  global structure), f21 Gallagher's 101 peaks (multimodal, no global structure).

``PROBLEMS`` maps each name to its builder; :func:`get_problem` builds one per process and caches it (data sets
load once, and workers of a process pool build only what they run).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["FAMILIES", "PROBLEMS", "Problem", "get_problem", "problem_names"]

FAMILIES = ("sklearn", "lightning", "bbob")
CV_SPLITS = 5  # Bayesmark's cross-validation folds


@dataclass(frozen=True)
class Problem:
    """One benchmark problem: ``objective(trial) -> float`` and what the samplers need to know about it.

    Args:
        name: unique name, e.g. ``"DT-breast-acc"``.
        family: one of :data:`FAMILIES`.
        direction: ``"minimize"`` or ``"maximize"``.
        objective: a function of an ``optuna.Trial`` that suggests its params (define-by-run) and returns the value.
        params: a short description of each param (for the report), ``{name: "int [1, 15]"}``.
        categorical: whether the space has a categorical param.
        conditional: whether some params exist only in some trials.
        description: one line on the problem.
    """

    name: str
    family: str
    direction: str
    objective: Callable[[Any], float] = field(repr=False)
    params: dict[str, str]
    categorical: bool = False
    conditional: bool = False
    description: str = ""

    @property
    def continuous_only(self) -> bool:
        """Whether every param is a float or an int in every trial (the spaces CMA-ES handles)."""
        return not (self.categorical or self.conditional)


# ------------------------------------------------------------------------------------------------ scikit-learn

# Bayesmark's search spaces (uber/bayesmark, bayesmark/sklearn_funcs.py), verbatim.
KNN_SPACE = {
    "n_neighbors": {"type": "int", "space": "linear", "range": (1, 25)},
    "p": {"type": "int", "space": "linear", "range": (1, 4)},
}
SVM_SPACE = {
    "C": {"type": "real", "space": "log", "range": (1.0, 1e3)},
    "gamma": {"type": "real", "space": "log", "range": (1e-4, 1e-3)},
    "tol": {"type": "real", "space": "log", "range": (1e-5, 1e-1)},
}
DT_SPACE = {
    "max_depth": {"type": "int", "space": "linear", "range": (1, 15)},
    "min_samples_split": {"type": "real", "space": "logit", "range": (0.01, 0.99)},
    "min_samples_leaf": {"type": "real", "space": "logit", "range": (0.01, 0.49)},
    "min_weight_fraction_leaf": {"type": "real", "space": "logit", "range": (0.01, 0.49)},
    "max_features": {"type": "real", "space": "logit", "range": (0.01, 0.99)},
    "min_impurity_decrease": {"type": "real", "space": "linear", "range": (0.0, 0.5)},
}
RF_SPACE = {
    "max_depth": {"type": "int", "space": "linear", "range": (1, 15)},
    "max_features": {"type": "real", "space": "logit", "range": (0.01, 0.99)},
    "min_samples_split": {"type": "real", "space": "logit", "range": (0.01, 0.99)},
    "min_samples_leaf": {"type": "real", "space": "logit", "range": (0.01, 0.49)},
    "min_weight_fraction_leaf": {"type": "real", "space": "logit", "range": (0.01, 0.49)},
    "min_impurity_decrease": {"type": "real", "space": "linear", "range": (0.0, 0.5)},
}
MLP_ADAM_SPACE = {
    "hidden_layer_sizes": {"type": "int", "space": "linear", "range": (50, 200)},
    "alpha": {"type": "real", "space": "log", "range": (1e-5, 1e1)},
    "batch_size": {"type": "int", "space": "linear", "range": (10, 250)},
    "learning_rate_init": {"type": "real", "space": "log", "range": (1e-5, 1e-1)},
    "tol": {"type": "real", "space": "log", "range": (1e-5, 1e-1)},
    "validation_fraction": {"type": "real", "space": "logit", "range": (0.1, 0.9)},
    "beta_1": {"type": "real", "space": "logit", "range": (0.5, 0.99)},
    "beta_2": {"type": "real", "space": "logit", "range": (0.9, 1.0 - 1e-6)},
    "epsilon": {"type": "real", "space": "log", "range": (1e-9, 1e-6)},
}
LOGISTIC_SPACE = {  # Bayesmark's "lasso" and "linear" classifiers share it
    "C": {"type": "real", "space": "log", "range": (1e-2, 1e2)},
    "intercept_scaling": {"type": "real", "space": "log", "range": (1e-2, 1e2)},
}
LASSO_REG_SPACE = {  # Bayesmark's lasso_cfg_reg without "normalize" (removed from scikit-learn 1.2)
    "alpha": {"type": "real", "space": "log", "range": (1e-2, 1e2)},
    "fit_intercept": {"type": "bool"},
    "max_iter": {"type": "int", "space": "log", "range": (10, 5000)},
    "tol": {"type": "real", "space": "log", "range": (1e-5, 1e-1)},
    "positive": {"type": "bool"},
}


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def suggest_bayesmark(trial: Any, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Suggests every param of a Bayesmark ``api_config`` and returns the model's keyword arguments.

    Args:
        trial: the Optuna trial.
        space: ``{name: {"type": "int"|"real"|"bool", "space": "linear"|"log"|"logit", "range": (low, high)}}``.

    Returns:
        ``{name: value}`` in the model's own units (a ``logit`` axis is suggested as ``<name>_logit`` and mapped
        back through the sigmoid).
    """
    kwargs: dict[str, Any] = {}
    for name, spec in space.items():
        kind, scale = spec["type"], spec.get("space", "linear")
        if kind == "bool":
            kwargs[name] = trial.suggest_categorical(name, [False, True])
            continue
        low, high = spec["range"]
        if kind == "int":
            kwargs[name] = trial.suggest_int(name, int(low), int(high), log=scale == "log")
        elif scale == "logit":
            kwargs[name] = _sigmoid(trial.suggest_float(f"{name}_logit", _logit(low), _logit(high)))
        else:
            kwargs[name] = trial.suggest_float(name, float(low), float(high), log=scale == "log")
    return kwargs


def _describe_bayesmark(space: dict[str, dict[str, Any]]) -> dict[str, str]:
    out = {}
    for name, spec in space.items():
        if spec["type"] == "bool":
            out[name] = "categorical [False, True]"
            continue
        low, high = spec["range"]
        scale = spec.get("space", "linear")
        key = f"{name}_logit" if scale == "logit" else name
        out[key] = f"{spec['type']} [{low:g}, {high:g}]" + ("" if scale == "linear" else f" {scale}")
    return out


def _logistic(l1: bool, **kwargs: Any) -> Any:
    """Bayesmark's ``lasso``/``linear`` classifier: one-vs-rest liblinear logistic regression, L1 or L2."""
    import inspect

    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    if inspect.signature(LogisticRegression).parameters["penalty"].default == "deprecated":  # scikit-learn >= 1.8
        penalty = {"l1_ratio": 1.0 if l1 else 0.0}
    else:
        penalty = {"penalty": "l1" if l1 else "l2"}
    return OneVsRestClassifier(
        LogisticRegression(solver="liblinear", fit_intercept=True, random_state=0, **penalty, **kwargs)
    )


def _sklearn_models() -> dict[str, tuple[Callable[..., Any], dict[str, Any], dict[str, dict[str, Any]]]]:
    """Bayesmark's ``MODELS_CLF`` / ``MODELS_REG`` entries used here: (factory, fixed kwargs, space)."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import Lasso
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.svm import SVC
    from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

    return {
        "kNN": (KNeighborsClassifier, {"n_jobs": 1}, KNN_SPACE),
        "SVM": (SVC, {"kernel": "rbf", "random_state": 0}, SVM_SPACE),
        "DT": (DecisionTreeClassifier, {"max_leaf_nodes": None, "random_state": 0}, DT_SPACE),
        "RF": (RandomForestClassifier,
               {"n_estimators": 10, "max_leaf_nodes": None, "random_state": 0, "n_jobs": 1}, RF_SPACE),
        "MLP-adam": (MLPClassifier, {"solver": "adam", "early_stopping": True, "random_state": 0}, MLP_ADAM_SPACE),
        "lasso": (lambda **kw: _logistic(True, **kw), {}, LOGISTIC_SPACE),
        "linear": (lambda **kw: _logistic(False, **kw), {}, LOGISTIC_SPACE),
        "lasso-reg": (Lasso, {"random_state": 0}, LASSO_REG_SPACE),
        "DT-reg": (DecisionTreeRegressor, {"max_leaf_nodes": None, "random_state": 0}, DT_SPACE),
    }


_DATA: dict[str, tuple[np.ndarray, np.ndarray]] = {}


def load_bayesmark_data(dataset: str) -> tuple[np.ndarray, np.ndarray]:
    """Bayesmark's training split (80%, ``random_state=0``) of a scikit-learn data set, cached per process.

    Args:
        dataset: ``"digits"``, ``"iris"``, ``"wine"``, ``"breast"`` or ``"diabetes"``.

    Returns:
        ``(X, y)`` of the training split, which the 5-fold cross-validation scores.
    """
    if dataset not in _DATA:
        from sklearn import datasets
        from sklearn.model_selection import train_test_split

        loaders = {"digits": datasets.load_digits, "iris": datasets.load_iris, "wine": datasets.load_wine,
                   "breast": datasets.load_breast_cancer, "diabetes": datasets.load_diabetes}
        x, y = loaders[dataset](return_X_y=True)
        x_train, _, y_train, _ = train_test_split(x, y, test_size=0.2, random_state=0, shuffle=True)
        _DATA[dataset] = (np.asarray(x_train, dtype=np.float64), np.asarray(y_train))
    return _DATA[dataset]


class SklearnObjective:
    """5-fold cross-validated score of a Bayesmark model on a Bayesmark data set.

    Args:
        model: a key of Bayesmark's model table (``"DT"``, ``"DT-reg"``, ``"RF"``, ``"SVM"``, ``"kNN"``,
            ``"MLP-adam"``, ``"lasso"``, ``"linear"``, ``"lasso-reg"``).
        dataset: see :func:`load_bayesmark_data`.
        metric: ``"acc"`` (mean accuracy, maximized) or ``"mse"`` (mean squared error, minimized).
    """

    def __init__(self, model: str, dataset: str, metric: str) -> None:
        self.factory, self.fixed, self.space = _sklearn_models()[model]
        self.dataset = dataset
        self.scoring = {"acc": "accuracy", "mse": "neg_mean_squared_error"}[metric]
        self.sign = -1.0 if metric == "mse" else 1.0

    def __call__(self, trial: Any) -> float:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.model_selection import cross_val_score

        kwargs = suggest_bayesmark(trial, self.space)
        x, y = load_bayesmark_data(self.dataset)
        estimator = self.factory(**kwargs, **self.fixed)
        with warnings.catch_warnings():
            # optimizers try odd settings on purpose (Bayesmark ignores these warnings too)
            warnings.simplefilter("ignore", category=UserWarning)
            warnings.simplefilter("ignore", category=ConvergenceWarning)
            warnings.simplefilter("ignore", category=RuntimeWarning)
            scores = cross_val_score(estimator, x, y, scoring=self.scoring, cv=CV_SPLITS, n_jobs=1)
        return float(self.sign * np.mean(scores))


def _sklearn(model: str, dataset: str, metric: str, note: str = "") -> Callable[[], Problem]:
    def build() -> Problem:
        objective = SklearnObjective(model, dataset, metric)
        return Problem(
            name=f"{model}-{dataset}-{metric}", family="sklearn",
            direction="minimize" if metric == "mse" else "maximize", objective=objective,
            params=_describe_bayesmark(objective.space),
            categorical=any(s["type"] == "bool" for s in objective.space.values()),
            description=f"Bayesmark {model} on {dataset}, 5-fold CV {metric}" + (f"; {note}" if note else ""),
        )

    return build


# ------------------------------------------------------------------------------------------------ Lightning

DIGITS_EPOCHS = 2


def _digits_cnn_class() -> type:
    import torch
    from lightning.pytorch import LightningModule
    from torch import nn

    class TunedDigitsCNN(LightningModule):
        """Two convs, max-pool, global average pool, dropout, linear; Adam or SGD with the trial's settings."""

        def __init__(self, width: int, dropout: float, lr: float, weight_decay: float, optimizer: str,
                     momentum: float) -> None:
            super().__init__()
            self.lr, self.weight_decay, self.optimizer_name, self.momentum = lr, weight_decay, optimizer, momentum
            self.net = nn.Sequential(
                nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),
                nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(2 * width, 10),
            )
            self.val_correct = 0
            self.val_seen = 0

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            x, y = batch
            return nn.functional.cross_entropy(self.net(x), y)

        def on_validation_epoch_start(self) -> None:
            self.val_correct, self.val_seen = 0, 0

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            self.val_correct += int((self.net(x).argmax(1) == y).sum())
            self.val_seen += int(y.numel())

        def configure_optimizers(self) -> Any:
            if self.optimizer_name == "adam":
                return torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
            return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=self.momentum,
                                   weight_decay=self.weight_decay)

    return TunedDigitsCNN


class DigitsCNNObjective:
    """Validation accuracy of a small CNN on the 8x8 digits after :data:`DIGITS_EPOCHS` epochs (maximized).

    Args:
        epochs: training epochs per trial.
        seed: seed of the weights, the split and the batch order (the same for every trial, so the objective is
            a deterministic function of the params).
    """

    def __init__(self, epochs: int = DIGITS_EPOCHS, seed: int = 0) -> None:
        self.epochs = epochs
        self.seed = seed
        self.model_class: type | None = None

    def __call__(self, trial: Any) -> float:
        lr = trial.suggest_float("lr", 1e-4, 1.0, log=True)
        weight_decay = trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True)
        dropout = trial.suggest_float("dropout", 0.0, 0.5)
        width = trial.suggest_int("width", 4, 32)
        batch_size = trial.suggest_int("batch_size", 32, 256, log=True)
        optimizer = trial.suggest_categorical("optimizer", ["adam", "sgd"])
        momentum = trial.suggest_float("momentum", 0.0, 0.99) if optimizer == "sgd" else 0.0
        return self.evaluate(lr=lr, weight_decay=weight_decay, dropout=dropout, width=width,
                             batch_size=batch_size, optimizer=optimizer, momentum=momentum)

    def evaluate(self, *, lr: float, weight_decay: float, dropout: float, width: int, batch_size: int,
                 optimizer: str, momentum: float) -> float:
        """Trains one configuration and returns its validation accuracy."""
        import logging

        import torch
        from lightning.pytorch import Trainer

        from tetra_lightning.data.digits import DigitsDataModule

        if self.model_class is None:
            self.model_class = _digits_cnn_class()
        for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
            logging.getLogger(name).setLevel(logging.ERROR)
        torch.manual_seed(self.seed)
        model = self.model_class(width=width, dropout=dropout, lr=lr, weight_decay=weight_decay,
                                 optimizer=optimizer, momentum=momentum)
        data = DigitsDataModule(batch_size=batch_size, seed=self.seed)
        trainer = Trainer(
            max_epochs=self.epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
            check_val_every_n_epoch=self.epochs, deterministic=True,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(model, datamodule=data)
        accuracy = model.val_correct / max(1, model.val_seen)
        return float(accuracy)


def _digits_cnn() -> Problem:
    return Problem(
        name="CNN-digits-acc", family="lightning", direction="maximize", objective=DigitsCNNObjective(),
        params={"lr": "float [1e-4, 1] log", "weight_decay": "float [1e-6, 1e-2] log", "dropout": "float [0, 0.5]",
                "width": "int [4, 32]", "batch_size": "int [32, 256] log", "optimizer": "categorical [adam, sgd]",
                "momentum": "float [0, 0.99], SGD trials only"},
        categorical=True, conditional=True,
        description=f"Lightning CNN on the 8x8 digits, {DIGITS_EPOCHS} epochs, validation accuracy",
    )


# ------------------------------------------------------------------------------------------------ BBOB

BBOB_NAMES = {1: "sphere", 8: "rosenbrock", 10: "ellipsoid", 15: "rastrigin", 20: "schwefel", 21: "gallagher101"}
BBOB_SET = ((8, 2), (21, 2), (10, 3), (15, 3), (1, 5), (20, 5), (8, 10), (15, 10))  # (function, dimension)
BBOB_INSTANCE = 1


class BBOBObjective:
    """A noiseless BBOB function of ``cocoex`` (``bbob`` suite), minimized over ``[-5, 5]^dimension``.

    Args:
        function: BBOB function index, 1..24.
        dimension: 2, 3, 5, 10, 20 or 40.
        instance: BBOB instance (the shift and rotation).
    """

    def __init__(self, function: int, dimension: int, instance: int = BBOB_INSTANCE) -> None:
        self.function, self.dimension, self.instance = function, dimension, instance
        self._problem: Any = None

    def problem(self) -> Any:
        """The ``cocoex`` problem, built on first use (the suite object stays alive as long as it)."""
        if self._problem is None:
            try:
                import cocoex
            except ImportError as err:  # pragma: no cover - depends on the environment
                raise ImportError(
                    "The BBOB problems need `coco-experiment`: pip install 'tetra-lightning[bench]'."
                ) from err
            self._suite = cocoex.Suite(
                "bbob", "", f"function_indices:{self.function} dimensions:{self.dimension} "
                f"instance_indices:{self.instance}")
            self._problem = next(iter(self._suite))
        return self._problem

    def __call__(self, trial: Any) -> float:
        x = [trial.suggest_float(f"x{i}", -5.0, 5.0) for i in range(self.dimension)]
        return self.evaluate(np.asarray(x))

    def evaluate(self, x: np.ndarray) -> float:
        """The function value at ``x``."""
        return float(self.problem()(x))


def _bbob(function: int, dimension: int) -> Callable[[], Problem]:
    def build() -> Problem:
        return Problem(
            name=f"bbob-f{function}-{BBOB_NAMES[function]}-{dimension}d", family="bbob", direction="minimize",
            objective=BBOBObjective(function, dimension),
            params={f"x0..x{dimension - 1}": "float [-5, 5]"},
            description=f"BBOB f{function} ({BBOB_NAMES[function]}), {dimension}-D, instance {BBOB_INSTANCE}",
        )

    return build


# ------------------------------------------------------------------------------------------------ registry

PROBLEMS: dict[str, Callable[[], Problem]] = {
    "DT-breast-acc": _sklearn("DT", "breast", "acc", "plateaus: the tree changes only when a split changes"),
    "DT-reg-diabetes-mse": _sklearn("DT-reg", "diabetes", "mse", "plateaus"),
    "RF-wine-acc": _sklearn("RF", "wine", "acc", "Bayesmark's 10 trees"),
    "SVM-breast-acc": _sklearn("SVM", "breast", "acc"),
    "kNN-wine-acc": _sklearn("kNN", "wine", "acc", "2 int params: 100 points in all"),
    "MLP-adam-iris-acc": _sklearn("MLP-adam", "iris", "acc", "9-D, 3 logit axes"),
    "linear-breast-acc": _sklearn("linear", "breast", "acc"),
    "lasso-wine-acc": _sklearn("lasso", "wine", "acc"),
    "lasso-reg-diabetes-mse": _sklearn("lasso-reg", "diabetes", "mse", "mixed: 2 bools, a log int, 2 log floats"),
    "CNN-digits-acc": _digits_cnn,
    **{f"bbob-f{f}-{BBOB_NAMES[f]}-{d}d": _bbob(f, d) for f, d in BBOB_SET},
}

_BUILT: dict[str, Problem] = {}


def problem_names(family: str | None = None) -> list[str]:
    """Names of the registered problems, optionally of one family (in registry order)."""
    if family is None:
        return list(PROBLEMS)
    prefix = {"sklearn": None, "lightning": "CNN-", "bbob": "bbob-"}[family]
    if prefix is None:
        return [n for n in PROBLEMS if not n.startswith(("CNN-", "bbob-"))]
    return [n for n in PROBLEMS if n.startswith(prefix)]


def get_problem(name: str) -> Problem:
    """The problem called ``name``, built once per process.

    Raises:
        KeyError: for an unknown name (the message lists the known ones).
    """
    if name not in PROBLEMS:
        raise KeyError(f"unknown problem {name!r}; known problems: {', '.join(PROBLEMS)}")
    if name not in _BUILT:
        _BUILT[name] = PROBLEMS[name]()
    return _BUILT[name]
