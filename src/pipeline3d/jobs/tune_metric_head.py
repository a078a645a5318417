"""The tune_metric_head job: Optuna search of the metric head's settings; objective = validation retrieval mAP.

Params: {"seed", "space", "head": <metric_head config minus optuna>, "optuna": {"trials", "steps", "search":
{name: [low, high]}}, "stage_version"}. Inputs: {"embeddings", "difficulty", "manifest", "ttv", "qg"} (qg is not
used: the test split never enters the search). Output: --best (JSON: best params, value, trial, n_trials done, every
finished trial). The study lives in --study (SQLite, undeclared so it survives reruns).

- Objective: retrieval mAP of the ttv val items, each querying every other val and train item outside its
  near-duplicate group (same label = relevant; never a test item), after a short training (``optuna.steps``) on
  the train split in a temporary state directory. Maximised.
- Search space: each ``search`` entry overrides the head setting of that name; integer bounds give an integer
  parameter; the range is searched on a log scale when low > 0 and high / low >= 10 (learning rates, margins).
- Resumable: the study is named after the config and inputs (a changed config starts a new study in the same
  file); a rerun runs only the missing trials up to ``trials``. Trials left RUNNING by a killed process are marked
  FAIL and redone. The sampler is TPE seeded per trial from (seed, trial number), so the proposals depend only on
  the study's history, not on how often the job was interrupted.
- SIGTERM/SIGUSR1: the running trial is abandoned (marked FAIL, redone on the rerun), exit 75.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..config import canonical_json, cfg_hash
from ..io.atomic import write_json
from ..rng import stable_hash
from ..train.signals import EXIT_INTERRUPTED, stop_on_signals
from . import metric_head
from .provenance import provenance

STAGE = "tune_metric_head"


class TrialInterrupted(Exception):
    """A signal stopped a trial's training."""


def suggest(trial, search: Mapping[str, Any], head: Mapping[str, Any]) -> dict[str, Any]:
    """The trial's head overrides from the search space (see the module docstring)."""
    values = {}
    for name, bounds in sorted(search.items()):
        if name not in head:
            raise ValueError(f"optuna.search: {name!r} is not a metric_head setting ({sorted(head)})")
        if not isinstance(bounds, (list, tuple)) or len(bounds) != 2:
            raise ValueError(f"optuna.search.{name}: expected [low, high], got {bounds!r}")
        low, high = bounds
        if not low < high:
            raise ValueError(f"optuna.search.{name}: need low < high, got {bounds}")
        log_scale = low > 0 and high / low >= 10
        if isinstance(low, int) and isinstance(high, int) and not isinstance(low, bool):
            values[name] = trial.suggest_int(name, low, high, log=log_scale)
        else:
            values[name] = trial.suggest_float(name, float(low), float(high), log=log_scale)
    return values


def _sampler(seed: int, trial_number: int):
    import optuna

    return optuna.samplers.TPESampler(seed=stable_hash(f"{seed}|{STAGE}|trial={trial_number}") % 2**32)


def _finished(study) -> list:
    import optuna

    return [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]


def tune(
    params: Mapping[str, Any], files: Mapping[str, Any], study_path: str | Path, log: logging.Logger
) -> tuple[dict[str, Any] | None, int]:
    """Run the missing trials; returns (best.json content, exit code); content None when interrupted."""
    import optuna

    seed, space, head, opt = int(params["seed"]), str(params["space"]), dict(params["head"]), dict(params["optuna"])
    n_trials, steps = int(opt["trials"]), int(opt["steps"])
    if n_trials < 1 or steps < 1:
        raise ValueError(f"optuna: trials ({n_trials}) and steps ({steps}) must be >= 1")
    data = metric_head.load_data({k: v for k, v in files.items() if k != "qg"}, log)
    val = data.splits["val"]
    if not val:
        raise ValueError(f"{files['ttv']}: the val split has no embedded item; the search needs one")
    val_ids, val_labels, val_groups, val_queries = metric_head.validation_items(data)
    val_raw = data.vectors_of(val_ids)
    baseline = metric_head.validation_map(val_raw, val_labels, val_groups, val_queries)["mAP"]

    study_path = Path(study_path)
    study_path.parent.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{study_path.resolve()}"
    # "trials" is left out: raising it continues the same study
    search_cfg = {k: v for k, v in opt.items() if k not in ("trials", "enabled")}
    key = cfg_hash(
        canonical_json({"seed": seed, "space": space, "head": head, "optuna": search_cfg, "inputs": data.digest})
    )
    name = f"metric_head|{space}|{key}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True)
    for stale in study.trials:
        if stale.state == optuna.trial.TrialState.RUNNING:
            log.warning("trial %d was left running by a killed run: marked failed, redone", stale.number)
            study.tell(stale.number, state=optuna.trial.TrialState.FAIL)
    done = len(_finished(study))
    log.info(
        "study %s in %s: %d of %d trials done | val raw-embedding mAP %.4f", name, study_path, done, n_trials, baseline
    )

    def objective(trial) -> float:
        overrides = suggest(trial, opt["search"], head)
        cfg = {**head, **overrides, "steps": steps, "checkpoint_every": steps}
        with tempfile.TemporaryDirectory(prefix=f"trial{trial.number}-", dir=study_path.parent) as state_dir:
            trained, result = metric_head.train_head(
                data,
                cfg,
                state_dir,
                seed=seed,
                key=space,
                config_hash=cfg_hash(canonical_json({"trial": trial.number, **cfg})),
                log=log,
            )
        if result.interrupted:
            raise TrialInterrupted(f"trial {trial.number} interrupted at step {result.steps}")
        value = metric_head.validation_map(
            metric_head.project(val_raw, trained.head), val_labels, val_groups, val_queries
        )["mAP"]
        trial.set_user_attr("bandit_pulls", dict(zip(trained.bands, trained.bandit.pulls)))
        log.info("trial %d: %s -> val mAP %.4f", trial.number, overrides, value)
        if not math.isfinite(value):
            raise ValueError(f"trial {trial.number}: validation mAP is {value}")
        return value

    with stop_on_signals(log) as stop:
        while len(_finished(study)) < n_trials:
            if stop.requested:
                log.warning("stopping on %s between trials; rerun to continue", stop.signal_name)
                return None, EXIT_INTERRUPTED
            number = len(study.trials)
            study = optuna.load_study(study_name=name, storage=storage, sampler=_sampler(seed, number))
            try:
                study.optimize(objective, n_trials=1)
            except TrialInterrupted as exc:  # optuna has marked the trial FAIL
                log.warning("%s; rerun to redo it", exc)
                return None, EXIT_INTERRUPTED
    finished = _finished(study)[:n_trials]
    best = max(finished, key=lambda t: (t.value, -t.number))  # ties: the earlier trial
    content = {
        "params": best.params,
        "value": best.value,
        "trial": best.number,
        "n_trials": len(_finished(study)),
        "objective": "val retrieval mAP against val + train (maximised)",
        "val_raw_mAP": baseline,
        "study": name,
        "trials": [
            {"number": t.number, "params": t.params, "value": t.value, "bandit_pulls": t.user_attrs.get("bandit_pulls")}
            for t in finished
        ],
    }
    return content, 0


def write_best(params: dict, files: dict, study: str, best_path: str, log) -> int:
    """``tune`` and its best-params JSON (with the protocol, code version and wall time); the exit code (75 when a
    signal stopped it, nothing written then)."""
    started = time.time()
    content, code = tune(params, files, study, log)
    if content is None:
        return code
    content |= provenance(params, started)
    write_json(best_path, content)
    log.info(
        "best trial %d: val mAP %.4f with %s (raw embeddings %.4f)",
        content["trial"],
        content["value"],
        content["params"],
        content["val_raw_mAP"],
    )
    return 0
