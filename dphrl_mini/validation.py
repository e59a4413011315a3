"""Checks that turn a silent misuse into one line naming the setting and the fix.

* ``device_problem``: a device this machine does not have (``device="cuda"`` without CUDA);
* ``check_data_options``: options the chosen data path ignores (``--task-source`` with ``--dataset``);
* ``split_problem``: evaluation splits the data path does not have (``ood`` of your own dataset);
* ``read_config_file``: a YAML config file that is missing, invalid or not a mapping;
* ``field_docs``: each ``TrainConfig`` field's docstring (the string under it), for ``--help``.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
from pathlib import Path
from typing import Any, Iterable

import yaml


def device_problem(device: str) -> str | None:
    """Why ``device`` cannot be used on this machine, or None.

    >>> device_problem("cpu") is None, device_problem("gpu")
    (True, "use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
    """
    if device in ("auto", "cpu"):
        return None
    import torch

    kind, _, index = str(device).partition(":")
    if kind == "cuda" and (not index or index.isdigit()):
        if not torch.cuda.is_available():
            return "this machine has no CUDA GPU that torch can use; use device='auto' or 'cpu'"
        if index and int(index) >= torch.cuda.device_count():
            return f"this machine has {torch.cuda.device_count()} CUDA device(s); use 'cuda:0' .. or 'auto'"
        return None
    if device == "mps":
        return None if torch.backends.mps.is_available() else "MPS is not available here; use 'auto' or 'cpu'"
    return "use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping in YAML file ``path``; a missing file, invalid YAML or another kind of document is one
    ``ValueError`` line."""
    if not Path(path).is_file():
        raise ValueError(f"config file {str(path)!r}: no such file")
    try:
        values = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"config file {str(path)!r} is not valid YAML: {' '.join(str(error).split())}") from None
    if not isinstance(values, dict):
        raise ValueError(f"config file {str(path)!r} must be a mapping of TrainConfig fields (e.g. `lr: 1e-3`), "
                         f"not a {type(values).__name__}")
    return values


def ignored_options(config: Any) -> dict[str, str]:
    """Field -> why the data path of ``config`` (a ``TrainConfig``) ignores it."""
    ignored: dict[str, str] = {}
    if config.dataset:
        ignored["task_source"] = "the built-in math task's data source; `dataset` replaces it"
        ignored["ood_size"] = "your dataset has a 'test' split only"
        if config.reward:
            ignored["task"] = "your `reward` functions score your `dataset`; the task is not used"
        if config.eval_dataset:
            ignored["eval_fraction"] = "`eval_dataset` is the test split; nothing is held out"
    else:
        ignored["eval_dataset"] = "evaluation data for `dataset`, which is not set"
        ignored["eval_fraction"] = "the share of `dataset` held out, and `dataset` is not set"
        if config.task != "math":
            ignored["task_source"] = f"math only, and task={config.task!r}"
    if not config.transfer_task:
        ignored["transfer_size"] = ignored["transfer_max_new_tokens"] = "needs `transfer_task`"
    return ignored


def check_data_options(config: Any, given: Iterable[str]) -> None:
    """Raise ``ValueError`` for the first option of ``given`` (set by the user, not the defaults) that
    the data path of ``config`` ignores, unless it holds the field's default."""
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    ignored = ignored_options(config)
    for name in given:
        if name in ignored and getattr(config, name) != defaults[name]:
            raise ValueError(f"config field `{name}`={getattr(config, name)!r} would be ignored ({ignored[name]}); "
                             f"drop --{name.replace('_', '-')}")


def split_problem(config: Any, split: str) -> str | None:
    """Why the data path of ``config`` has no prompts for evaluation split ``split``, or None."""
    from .tasks import get_task

    if split == "transfer":
        return None if config.transfer_task and config.transfer_size else "needs transfer_task and transfer_size > 0"
    if config.dataset:
        return None if split == "test" else "your dataset has a 'test' split only (drop it from --splits)"
    if split not in get_task(config.task).SPLITS:
        return f"task {config.task!r} has no {split!r} split (drop it from --splits)"
    if (config.eval_size if split == "test" else config.ood_size) == 0:
        return f"it has 0 prompts ({'eval_size' if split == 'test' else 'ood_size'}=0)"
    return None


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Field name -> its docstring (the string literal under the field in the class body), whitespace
    collapsed; fields without one are left out (all of them where the source cannot be read)."""
    try:
        body = ast.parse(inspect.getsource(cls)).body[0].body
    except (OSError, TypeError):  # e.g. a frozen install without .py files
        return {}
    docs = {}
    for node, following in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant) and isinstance(following.value.value, str)):
            docs[node.target.id] = " ".join(following.value.value.split())
    return docs
