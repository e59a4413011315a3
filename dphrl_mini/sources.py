"""Where data and rewards come from: a user's dataset and reward functions, or a built-in task.

There is one way data enters the trainer: ``task_data`` returns the training rows, the evaluation
rows per split and the ``Verifier`` that scores each split (``TaskData.verifier_for``: the run's, or
the transfer task's), in one call, whether they come from

* a **built-in task** (countdown, sql, math): its ``make_dataset`` splits (``built_in_splits``) and
  its own reward and ``solution_key``;
* a **dataset** (``TrainConfig.dataset`` or ``train_dataset=``): a local ``.jsonl``/``.json``/
  ``.parquet``/``.csv`` file, a folder saved by ``datasets.save_to_disk``, a hub id, a
  ``datasets.Dataset`` or a list of dicts. As in TRL, column ``prompt`` is a string or a list of
  chat messages (``{"role", "content"}``) and every other column reaches the reward functions as
  a keyword argument (one value per completion). The evaluation rows are ``eval_dataset`` or,
  without it, a held-out ``eval_fraction`` of the distinct prompts drawn with ``data_seed``; they
  form the split ``"test"``. A test set that shares a prompt with the training set is refused.

Rewards are ``reward_fns=`` or ``TrainConfig.reward`` (``"MODULE:FUNCTION"``, the module an
importable name or a path to a ``.py`` file), called by keyword as TRL calls them
(``f(prompts=, completions=, completion_ids=, trainer_state=, log_extra=, log_metric=, **columns)``,
``rewards``); without them, the task's own reward.
Distinct solutions are counted with the task's ``solution_key`` when the task's reward is used,
else on the normalized completion text. Departure from TRL: an ``id`` column (made from the row
number when absent) identifies rows in the pre-sampling split and is not passed to rewards.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .config import TrainConfig
from .rewards import NOT_REWARD_COLUMNS, TRL_KEYWORDS, Verifier, normalized_text, positional_only, reward_name
from .tasks import get_task, validate_rows

FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


@dataclass
class TaskData:
    """Training rows, evaluation rows per split ("test"; "ood" and "shift" for built-in tasks; "transfer" with
    ``transfer_task``) and their verifier (``eval_verifiers`` for a split scored by another task's)."""

    train: list[dict]
    eval: dict[str, list[dict]]
    verifier: Verifier
    eval_verifiers: dict[str, Verifier] = field(default_factory=dict)

    def verifier_for(self, split: str) -> Verifier:
        """The verifier that scores ``split``: the run's, or another task's (``eval_verifiers``, "transfer")."""
        return self.eval_verifiers.get(split, self.verifier)


def looks_like_path(source: str) -> bool:
    """A hub id is ``name`` or ``owner/name``; anything with a file suffix, a leading ``.``, ``/`` or
    ``~``, or more than one ``/`` is meant as a local path."""
    return (Path(source).suffix in FILE_BUILDERS or source.startswith((".", "/", "~"))
            or source.count("/") > 1 or Path(source).exists())


def load_records(source: str, split: str = "train") -> list[dict]:
    """Raw records of a local file or ``save_to_disk`` folder, or of split ``split`` of a hub dataset."""
    path = Path(source).expanduser()
    if looks_like_path(source) and not path.exists():
        raise ValueError(f"dataset {source!r}: no such file or folder")
    if path.is_file() and path.suffix == ".jsonl":  # no datasets dependency for the common case
        with open(path, encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]
    if path.is_file() and path.suffix not in FILE_BUILDERS:
        raise ValueError(f"dataset {source!r}: use a {'/'.join(FILE_BUILDERS)} file, a save_to_disk folder or a hub id")
    try:
        import datasets  # optional dependency (the "data" extra)
    except ImportError as error:
        raise ValueError(f"dataset {source!r} needs the `datasets` package: pip install datasets") from error
    if path.is_dir():
        data = datasets.load_from_disk(str(path))
        if isinstance(data, datasets.DatasetDict):
            if split not in data:
                raise ValueError(f"dataset {source!r} has splits {sorted(data)}, not {split!r}")
            data = data[split]
    elif path.is_file():
        data = datasets.load_dataset(FILE_BUILDERS[path.suffix], data_files=str(path), split="train")
    else:
        data = datasets.load_dataset(source, split=split)
    return list(data)


def as_rows(data, name: str, split: str = "train") -> list[dict]:
    """Rows with an ``id`` and a ``prompt`` (string or chat messages) from records, a ``datasets.Dataset``
    or a source string (``load_records(data, split)``)."""
    records = load_records(str(data), split) if isinstance(data, (str, Path)) else list(data)
    name = str(data) if isinstance(data, (str, Path)) else name
    if not records:
        raise ValueError(f"dataset {name!r} is empty")
    if "prompt" not in records[0]:
        raise ValueError(f"dataset {name!r} has no `prompt` column (columns: {sorted(records[0])}); "
                         "rename the column that holds the prompt to `prompt`")
    chat = isinstance(records[0]["prompt"], list)
    rows = []
    for i, record in enumerate(records):
        prompt = record.get("prompt")
        if chat != isinstance(prompt, list) or not (isinstance(prompt, str) or _is_messages(prompt)):
            raise ValueError(f"dataset {name!r} row {i}: `prompt` must be a string or a list of "
                             f"{{'role', 'content'}} messages in every row, got {str(prompt)[:80]!r}")
        rows.append({"id": str(record.get("id", f"row-{i}")), **{k: v for k, v in record.items() if k != "id"}})
    if len({r["id"] for r in rows}) < len(rows):
        raise ValueError(f"dataset {name!r}: the `id` column repeats values; ids must be unique")
    return rows


def _is_messages(prompt) -> bool:
    return isinstance(prompt, list) and all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in prompt)


def prompt_key(prompt: str | list[dict]) -> str:
    """A hashable form of a prompt (chat messages as JSON), for overlap checks."""
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True)


def held_out(rows: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, test): a ``fraction`` of the distinct prompts, drawn with ``seed``, goes to test (at
    least one when there are two or more prompts); rows that repeat a prompt stay together."""
    prompts = sorted({prompt_key(r["prompt"]) for r in rows})
    random.Random(seed).shuffle(prompts)
    n_test = min(max(round(fraction * len(prompts)), 1 if fraction > 0 else 0), len(prompts) - 1)
    test_prompts = set(prompts[:n_test])
    return ([r for r in rows if prompt_key(r["prompt"]) not in test_prompts],
            [r for r in rows if prompt_key(r["prompt"]) in test_prompts])


def check_no_overlap(train: list[dict], test: list[dict]) -> None:
    shared = {prompt_key(r["prompt"]) for r in train} & {prompt_key(r["prompt"]) for r in test}
    if shared:
        raise ValueError(f"the evaluation set shares {len(shared)} prompt(s) with the training set; "
                         "remove them, or drop --eval-dataset to hold out --eval-fraction of the training data")


def load_reward(spec: str) -> Callable:
    """``"MODULE:FUNCTION"`` -> the function; MODULE is an importable name or a path to a ``.py`` file."""
    module_name, sep, function = spec.rpartition(":")
    if not sep or not module_name or not function:
        raise ValueError(f"reward {spec!r}: use MODULE:FUNCTION, e.g. my_rewards:exact_match or path/to/file.py:fn")
    if module_name.endswith(".py"):
        path = Path(module_name).expanduser()
        if not path.is_file():
            raise ValueError(f"reward {spec!r}: no such file {module_name!r}")
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise ValueError(f"reward {spec!r}: cannot import module {module_name!r} ({error})") from error
    fn = vars(module).get(function)
    if not callable(fn):
        raise ValueError(f"reward {spec!r}: module {module_name!r} has no function {function!r}")
    return fn


def required_columns(fn: Callable) -> list[str]:
    """The dataset columns a reward function needs: its parameters without a default, but for TRL's
    keywords (``rewards.TRL_KEYWORDS``) and positional-only ones (they get prompts, completions, completion_ids)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # no readable signature: nothing to check
        return []
    return [p.name for p in params if p.default is inspect.Parameter.empty and p.name not in TRL_KEYWORDS
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def check_columns(rows: list[dict], verifier: Verifier, name: str) -> None:
    """Every reward function can be called as TRL calls it on these rows (if there are any): each column it
    needs is there, and it accepts every keyword it is given (it has ``**kwargs``, or names them all)."""
    rows = list(rows)
    if not rows:
        return
    columns = [c for c in rows[0] if c not in NOT_REWARD_COLUMNS]
    for fn in verifier.reward_fns:
        missing = [c for c in required_columns(fn) if c not in columns]
        if missing:
            raise ValueError(f"reward {reward_name(fn)!r} needs column(s) {missing} that dataset {name!r} lacks "
                             f"(columns: {sorted(columns)}); reward functions are called by keyword as in TRL: "
                             f"{', '.join(TRL_KEYWORDS)} and one keyword per column")
        try:
            params = inspect.signature(fn).parameters
        except (TypeError, ValueError):
            continue
        if positional_only(fn) > 3:
            raise ValueError(f"reward {reward_name(fn)!r} has {positional_only(fn)} positional-only parameters; "
                             "at most 3 (prompts, completions, completion_ids) can be given by position")
        keywords = [k for k in (*TRL_KEYWORDS[positional_only(fn):], *columns) if k not in params]
        if keywords and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            raise ValueError(f"reward {reward_name(fn)!r} does not accept the keyword(s) {keywords} it is called "
                             "with (as in TRL); add **kwargs to its parameters")


def check_task_columns(rows: list[dict], task, name: str) -> None:
    """Every row has the columns the built-in ``task``'s reward reads, of the right kind (its ``check_row``:
    e.g. Countdown's ``numbers`` and ``target`` are finite integers); else one line naming the row."""
    for row in rows:
        try:
            task.check_row(row)
        except ValueError as error:
            raise ValueError(f"dataset {str(name)!r} row id {row['id']!r}: {error} (task {task.NAME!r} scores it; "
                             "fix the row, or pass your own --reward)") from None


def make_verifier(cfg: TrainConfig, reward_fns: list[Callable] | None = None) -> Verifier:
    """``reward_fns``, else ``cfg.reward`` specs, else the task's own reward and solution key."""
    fns = list(reward_fns or [load_reward(spec) for spec in cfg.reward or []])
    if not fns:
        return Verifier.for_task(get_task(cfg.task), cfg.correct_threshold)
    return Verifier(fns, cfg.reward_weights, cfg.correct_threshold, normalized_text, "custom")


def _split_name(cfg: TrainConfig, task: str, split: str) -> str:
    """How errors name a built-in task's split: the ``task_source`` file for the run's own task, if any."""
    return f"{cfg.task_source} ({split})" if cfg.task_source and task == cfg.task else f"built-in {task} {split} split"


def built_in_splits(cfg: TrainConfig, task: str, sizes: dict[str, int]) -> dict[str, list[dict]]:
    """Every split of built-in task ``task`` named in ``sizes`` (split -> rows wanted), drawn with
    ``data_seed`` and checked (``validate_rows``); [] for a split that asks for no rows or that the task
    lacks (math has no "shift"). The run's own math task reads ``task_source``."""
    module = get_task(task)
    kwargs = {"source": cfg.task_source} if task == cfg.task == "math" else {}
    return {split: validate_rows(module.make_dataset(split, size, seed=cfg.data_seed, **kwargs)
                                 if size and split in module.SPLITS else [],
                                 _split_name(cfg, task, split), module.check_row)
            for split, size in sizes.items()}


def built_in_eval_rows(cfg: TrainConfig, split: str) -> list[dict]:
    """The rows of evaluation split ``split`` ("test", "ood", "shift" or "transfer": the
    ``transfer_task``'s test split) that a built-in task draws for ``cfg``; [] when the split asks for
    no rows or the task has no such split (math has no "shift"). "ood" and "shift" draw ``ood_size`` rows."""
    task, size, task_split = ((cfg.transfer_task, cfg.transfer_size, "test") if split == "transfer"
                              else (cfg.task, cfg.eval_size if split == "test" else cfg.ood_size, split))
    return built_in_splits(cfg, task, {task_split: size})[task_split] if task else []


def task_data(cfg: TrainConfig, reward_fns: list[Callable] | None = None, train_dataset: Any = None,
              eval_dataset: Any = None) -> TaskData:
    """The rows and verifier of a run (see the module docstring); at most ``train_size`` training rows
    and ``eval_size`` test rows (``ood_size`` for a built-in task's "ood" and "shift" splits), drawn with ``data_seed``."""
    verifier = make_verifier(cfg, reward_fns)
    source = train_dataset if train_dataset is not None else cfg.dataset
    if source is None:  # every split of the built-in task in one call
        evals = built_in_splits(cfg, cfg.task, {"train": cfg.train_size, "test": cfg.eval_size,
                                                "ood": cfg.ood_size, "shift": cfg.ood_size})
        train = evals.pop("train")
    else:
        train = as_rows(source, "train_dataset")
        eval_source = eval_dataset if eval_dataset is not None else cfg.eval_dataset
        if eval_source is None:
            train, test = held_out(train, cfg.eval_fraction, cfg.data_seed)
        else:
            test = as_rows(eval_source, "eval_dataset", split="test")
        if not (reward_fns or cfg.reward):  # the task's own reward scores these rows: its columns must fit
            task = get_task(cfg.task)
            for rows, where in ((train, source), (test, eval_source if eval_source is not None else source)):
                check_task_columns(rows, task, where if isinstance(where, (str, Path)) else "the given dataset")
        rng = random.Random(cfg.data_seed)
        train = rng.sample(train, min(cfg.train_size, len(train)))
        evals = {"test": rng.sample(test, min(cfg.eval_size, len(test)))}
    if not train:  # an empty pool would make the trainer wait forever for prompts
        where = _split_name(cfg, cfg.task, "train") if source is None else f"{source if isinstance(source, (str, Path)) else 'train_dataset'} (train)"
        raise ValueError(f"the training dataset {where} has 0 usable prompts (train_size={cfg.train_size}); "
                         "nothing to train on")
    for split, rows in evals.items():
        check_no_overlap(train, rows)
        check_columns(rows, verifier, f"{split} split")
    check_columns(train, verifier, str(source) if isinstance(source, (str, Path)) else "train_dataset")
    data = TaskData(train, evals, verifier)
    if cfg.transfer_task and cfg.transfer_size:  # another task's test split, scored by that task's verifier
        data.eval["transfer"] = built_in_eval_rows(cfg, "transfer")
        data.eval_verifiers["transfer"] = Verifier.for_task(get_task(cfg.transfer_task), cfg.correct_threshold)
    return data
