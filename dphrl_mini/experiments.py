"""Experiments: train several methods on the same data and seeds, evaluate, tabulate.

``run`` trains one config and evaluates it; ``evaluate_base`` scores the untrained model;
``compare`` does both over methods x seeds and writes ``results.csv`` (one row per method, seed and
split) and ``summary.csv`` (mean ± std over seeds) — the files behind the README's table.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import yaml

from .checkpoint import atomic_write_text, latest_checkpoint, make_folder
from .config import TrainConfig
from .evaluate import EvalResult, all_of_k, kept_lost
from .style import display_name
from .sources import built_in_eval_rows, task_data
from .trainer import Trainer
from .validation import split_problem

HEADLINE = ("greedy", "pass@1", "pass@8", "pass@64", "distinct_correct")
BASE_RECORD = "base.yaml"
BASE_FIELDS = ("model", "quantization", "dtype", "chat_template", "task", "task_source", "dataset", "reward",
               "reward_weights", "correct_threshold", "max_new_tokens", "temperature", "top_p", "data_seed")
"""The settings a base model's evaluation depends on: ``evaluate_base`` stores them in ``BASE_RECORD`` beside
the eval files, and ``compare`` reuses that folder only for the same settings."""


def save_eval(result: EvalResult, path: str | Path) -> None:
    data = dict(vars(result), distinct_keys=[sorted(map(str, keys)) for keys in result.distinct_keys])
    atomic_write_text(path, json.dumps(data))


def load_eval(path: str | Path) -> EvalResult:
    data = json.loads(Path(path).read_text())
    data["distinct_keys"] = [set(keys) for keys in data["distinct_keys"]]
    names = {f.name for f in dataclasses.fields(EvalResult)}
    return EvalResult(**{k: v for k, v in data.items() if k in names})


SPLITS = ("test", "ood", "shift", "transfer")


def default_splits(config: TrainConfig) -> list[str]:
    """"test" and "ood", and "transfer" when ``config.transfer_task`` is set ("shift" only when asked
    for; splits without rows, e.g. "ood" of your own dataset, are skipped wherever splits are evaluated)."""
    return ["test", "ood"] + (["transfer"] if config.transfer_task and config.transfer_size else [])


def resolve_splits(config: TrainConfig, splits: Iterable[str] | None) -> list[str]:
    """``splits`` checked (a known name that the data path of ``config`` has prompts for, e.g. no "ood"
    with your own dataset; "transfer" only with ``transfer_task``), or the defaults."""
    if splits is None:
        return default_splits(config)
    splits = list(splits)
    for split in splits:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}: choose from {', '.join(SPLITS)}")
        if split == "transfer" and not config.transfer_task:
            raise ValueError("split 'transfer' needs transfer_task (--transfer-task countdown, sql or math)")
        if problem := split_problem(config, split):
            raise ValueError(f"split {split!r}: {problem}")
    return splits


def evaluate_base(config: TrainConfig, splits: Iterable[str] | None = None) -> dict[str, EvalResult]:
    """The base model's results (fresh LoRA adapters are zero at init, so this is pi_ref);
    ``splits`` default to ``default_splits(config)``."""
    splits = resolve_splits(config, splits)
    trainer = Trainer(config)
    out = make_folder(config.output_dir)
    settings = config.to_dict()
    atomic_write_text(out / BASE_RECORD, yaml.safe_dump({k: settings[k] for k in BASE_FIELDS}, sort_keys=False))
    results = {}
    for split in splits:
        if trainer.eval_rows(split):
            results[split] = trainer.evaluate(split, base=True)
            save_eval(results[split], out / f"eval_{split}.json")
    return results


def run(config: TrainConfig, splits: Iterable[str] | None = None, callbacks=(), *,
        reward_fns: list[Callable] | None = None, train_dataset=None, eval_dataset=None) -> dict[str, Any]:
    """Train ``config`` (resuming if its output_dir has a checkpoint) and evaluate every split
    (default ``default_splits(config)``).

    ``reward_fns`` (TRL signature), ``train_dataset`` and ``eval_dataset`` (``datasets.Dataset`` or
    a list of dicts with a ``prompt``) replace the task's own (``sources.task_data``)."""
    splits = resolve_splits(config, splits)
    trainer = Trainer(config, callbacks=list(callbacks), reward_fns=reward_fns, train_dataset=train_dataset,
                      eval_dataset=eval_dataset)
    history = trainer.train()
    results = {}
    for split in splits:
        if trainer.eval_rows(split):
            results[split] = trainer.evaluate(split)
            save_eval(results[split], Path(config.output_dir) / f"eval_{split}.json")
    presampled = trainer.presampled.summary() if trainer.presampled else None
    return {"history": history, "eval": results, "presample": presampled, "trainer": trainer}


def summary_row(name: str, seed: int, split: str, result: EvalResult, base: EvalResult | None,
                ks: Iterable[int]) -> dict[str, Any]:
    summary = result.summary(list(ks))
    row = {"method": name, "seed": seed, "split": split,
           **{k: summary[k] for k in summary if k == "greedy" or k.startswith("pass@") or k == "distinct_correct"}}
    if base is not None:
        row["kept_frac"] = kept_lost(base, result)["kept_frac"]
    return row


NEAR_PERFECT_K = 4
"""The released split rule: a prompt is near-perfect when all 4 of 4 samples are correct."""


def near_perfect_ids(base: EvalResult, k: int = NEAR_PERFECT_K) -> set[str]:
    """Held-out prompts the released rule would most likely put in D_pef for the base model: the
    chance that all k of k samples are correct, estimated without bias from the base model's n
    samples as C(c, k) / C(n, k), is at least 1/2 (with fewer than k samples, k = n)."""
    k = min(k, base.n)
    return {i for i, c in zip(base.ids, base.correct) if all_of_k(base.n, c, k) >= 0.5}


def subset(result: EvalResult, ids: set[str]) -> EvalResult:
    """``result`` restricted to the prompts in ``ids`` (in its own order)."""
    keep = [j for j, i in enumerate(result.ids) if i in ids]
    pick = lambda values: [values[j] for j in keep] if values else values  # noqa: E731
    return dataclasses.replace(result, ids=pick(result.ids), correct=pick(result.correct),
                               distinct_keys=pick(result.distinct_keys), greedy_correct=pick(result.greedy_correct))


def difficulty_rows(name: str, seed: int, results: dict[str, EvalResult], base: dict[str, EvalResult],
                    ks: Iterable[int], tiers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """``summary_row``s per split and prompt group, split ``"{split}:near-perfect"`` or
    ``"{split}:exploration"`` by the base model's own samples (``near_perfect_ids``), and
    ``"{split}:{tier}"`` by the task's difficulty tier of each prompt (``tiers``: id -> tier, e.g.
    Countdown's easy / moderate / hard): where each method gains and where it loses."""
    rows, tiers = [], tiers or {}
    for split, result in results.items():
        if split not in base or split == "transfer":  # another task's prompts: no D_pef, no tiers
            continue
        near = near_perfect_ids(base[split])
        groups = [("near-perfect", near), ("exploration", set(base[split].ids) - near)]
        groups += [(tier, {i for i in base[split].ids if tiers.get(i) == tier}) for tier in dict.fromkeys(tiers.values())]
        for group, ids in groups:
            if ids:
                rows.append(summary_row(name, seed, f"{split}:{group}", subset(result, ids),
                                        subset(base[split], ids), ks))
    return rows


def prompt_tiers(config: TrainConfig) -> dict[str, str]:
    """Evaluation prompt id -> the task's difficulty tier, for tasks whose rows carry ``difficulty``
    (Countdown's easy / moderate / hard); empty otherwise."""
    from .tasks import get_task

    task = get_task(config.task)
    if config.dataset or not hasattr(task, "DIFFICULTIES"):
        return {}
    rows = [row for split_rows in task_data(config).eval.values() for row in split_rows]
    return {row["id"]: tier for tier in task.DIFFICULTIES for row in rows if row.get("difficulty") == tier}  # tier order


def parse_variants(specs: Iterable[str]) -> dict[str, dict[str, Any]]:
    """``compare`` variants from the CLI's spec strings, named as ``dphrl-mini compare`` names them:
    ``"dph_js:eta=2"`` -> ``{"dph_js_eta2": {"method": "dph_js", "eta": 2}}``; ``"+mara"`` after the
    method switches MARA on (``"rkl+mara:kl_coef=0.05"`` -> ``rkl+mara_kl_coef0.05``). ``seeds=A-B`` runs
    that variant on seeds A..B instead of ``compare``'s (``"grpo:seeds=0-4"`` -> ``{"grpo": {"method":
    "grpo", "seeds": [0, 1, 2, 3, 4]}}``); it is not part of the name."""
    variants: dict[str, dict[str, Any]] = {}
    for spec in specs:
        name, _, rest = spec.partition(":")
        overrides: dict[str, Any] = {"method": name.split("+")[0]}
        if "+mara" in name:
            overrides["mara"] = True
        named = [name]
        for item in filter(None, rest.split(",")):
            key, _, value = item.partition("=")
            if key == "seeds":
                first, _, last = value.partition("-")
                overrides["seeds"] = list(range(int(first), int(last or first) + 1))
                continue
            overrides[key] = _parse_value(value)
            named.append(f"{key}{value}")
        variants["_".join(named)] = overrides
    return variants


def variant_config(base_config: TrainConfig, name: str, overrides: dict[str, Any], **fixed: Any) -> TrainConfig:
    """``base_config`` with a variant's ``overrides`` (and ``fixed`` fields such as the seed), validated;
    an unknown field or a bad value is one ``ValueError`` naming the variant."""
    try:
        return TrainConfig.from_dict({**base_config.to_dict(), **overrides, **fixed}).validate()
    except ValueError as error:
        raise ValueError(f"variant {name!r}: {error}") from None


def _parse_value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def compare(base_config: TrainConfig, variants: dict[str, dict[str, Any]], seeds: Iterable[int] = (0,),
            out_dir: str | Path = "results/compare", splits: Iterable[str] | None = None,
            reuse: bool = True) -> list[dict[str, Any]]:
    """Train every variant (config overrides) for every seed on the same data; write the tables. A variant
    whose overrides hold ``seeds`` runs on those seeds instead; the base model is evaluated on every seed.

    With ``reuse``, a run whose ``eval_{split}.json`` files already exist is loaded, not re-run, so an
    interrupted sweep continues where it stopped and a stored sweep (``results/``) reloads in
    seconds; a finished run (its last checkpoint kept) that lacks a split, e.g. "transfer" asked for
    later, is evaluated on that split alone. A stored run whose ``config.yaml`` differs from the
    requested one is an error, not reused; so is an evaluation whose prompts are not those its split
    draws now (built-in tasks: the stored prompt ids); base-model folders are checked by the settings in
    their ``BASE_RECORD`` (model, data and sampling), task, ``eval_n`` and prompts. Without ``reuse``,
    every run starts afresh (``overwrite``). Every variant is validated (``variant_config``) before the
    first run starts.
    """
    out_dir, ks = Path(out_dir), base_config.eval_ks
    splits = resolve_splits(base_config, splits)
    rows: list[dict[str, Any]] = []
    seeds = list(seeds)
    variant_seeds = {name: list(overrides.get("seeds", seeds)) for name, overrides in variants.items()}
    variants = {name: {k: v for k, v in overrides.items() if k != "seeds"} for name, overrides in variants.items()}
    for name, overrides in variants.items():  # every variant is checked before the first run starts
        for seed in variant_seeds[name]:
            variant_config(base_config, name, overrides, seed=seed)
    tiers = prompt_tiers(base_config)
    for seed in sorted(set(seeds).union(*variant_seeds.values())):
        base_dir = out_dir / "base" / f"seed{seed}"
        base_cfg = dataclasses.replace(base_config, seed=seed, output_dir=str(base_dir))
        stored = _stored(base_dir, base_cfg, splits) if reuse else []
        base = {s: load_eval(base_dir / f"eval_{s}.json") for s in stored}
        if len(stored) < len(splits):
            base |= evaluate_base(base_cfg, [s for s in splits if s not in stored])
        base = {s: base[s] for s in splits if s in base}
        rows += [summary_row("base", seed, s, r, r, ks) for s, r in base.items()]
        rows += difficulty_rows("base", seed, base, base, ks, tiers)
        for name, overrides in variants.items():
            if seed not in variant_seeds[name]:
                continue
            run_dir = out_dir / name / f"seed{seed}"
            cfg = variant_config(base_config, name, overrides, seed=seed, output_dir=str(run_dir),
                                 overwrite=base_config.overwrite or not reuse)
            stored = _stored(run_dir, cfg, base) if reuse else []
            if stored and len(stored) < len(base) and not _finished(run_dir, cfg):
                stored = []  # no final checkpoint to evaluate the missing splits on: train again
            results = {s: load_eval(run_dir / f"eval_{s}.json") for s in stored}
            if len(stored) < len(base):
                results |= run(cfg, splits=[s for s in base if s not in stored])["eval"]
            results = {s: results[s] for s in base if s in results}
            rows += [summary_row(name, seed, s, r, base.get(s), ks) for s, r in results.items()]
            rows += difficulty_rows(name, seed, results, base, ks, tiers)
        write_tables(rows, out_dir)
    return rows


_IRRELEVANT = ("output_dir", "progress", "save_every", "overwrite")
_SPLIT_FIELDS = {"transfer": ("transfer_task", "transfer_size", "transfer_max_new_tokens")}
"""Config fields that only change one split's evaluation: compared only when that split is stored."""


def _expected_evals(config: TrainConfig) -> dict[str, tuple[str, int | None]]:
    """Split -> (verifier name, prompt count) that a stored ``eval_{split}.json`` must record."""
    task = "custom" if config.reward else config.task  # the name of the verifier (sources.make_verifier)
    sizes = {} if config.dataset else {"test": config.eval_size, "ood": config.ood_size, "shift": config.ood_size}
    expected = {s: (task, sizes.get(s)) for s in ("test", "ood", "shift")}  # a dataset may hold fewer
    expected["transfer"] = (config.transfer_task, config.transfer_size)
    return expected


def _stored(run_dir: Path, config: TrainConfig, splits: Iterable[str]) -> list[str]:
    """The splits of ``splits`` whose results ``run_dir`` holds, made with exactly ``config``; raise if
    it holds results of other settings (stale results must not enter a table unnoticed)."""
    present = [s for s in splits if (run_dir / f"eval_{s}.json").exists()]
    if not present:
        return []
    saved = run_dir / "config.yaml"
    diff = {}
    if saved.exists():
        raw = yaml.safe_load(saved.read_text()) or {}
        stored, wanted = TrainConfig.from_yaml(saved).to_dict(), config.to_dict()
        ignored = set(_IRRELEVANT) | {f for s, fields in _SPLIT_FIELDS.items() if s not in present for f in fields}
        ignored |= {f for fields in _SPLIT_FIELDS.values() for f in fields if f not in raw}  # saved before they existed
        diff = {k: (stored[k], wanted[k]) for k in wanted if k not in ignored and stored[k] != wanted[k]}
    elif (record := run_dir / BASE_RECORD).exists():  # a base-model folder: the model and sampling it used
        stored, wanted = yaml.safe_load(record.read_text()) or {}, config.to_dict()
        diff = {k: (v, wanted[k]) for k, v in stored.items() if k in wanted and v != wanted[k]}
    expected = _expected_evals(config)
    for s in present:  # every evaluation records its verifier, samples and prompts
        data = json.loads((run_dir / f"eval_{s}.json").read_text())
        task, size = expected.get(s, (data["task"], None))
        if (data["task"], data["n"], len(data["ids"])) != (task, config.eval_n, size or len(data["ids"])):
            diff[f"eval_{s}.json (task, eval_n, prompts)"] = (
                (data["task"], data["n"], len(data["ids"])), (task, config.eval_n, size))
        elif (ids := _built_in_ids(config, s)) is not None and tuple(data["ids"]) != ids:
            changed = [(a, b) for a, b in zip(data["ids"], ids) if a != b]
            diff[f"eval_{s}.json (prompt ids)"] = (f"{len(changed)} of {len(ids)} differ, first {changed[0][0]!r}",
                                                   f"{changed[0][1]!r}, the split as the task now draws it")
    if diff:
        raise ValueError(f"{run_dir} holds results made with other settings (stored, requested): {diff}; "
                         "use another out_dir, or reuse=False to overwrite them")
    return present


def _built_in_ids(config: TrainConfig, split: str) -> tuple[str, ...] | None:
    """The prompt ids of ``split`` that a built-in task draws for ``config`` (``sources.built_in_eval_rows``,
    remembered per setting), or None when they come from the user's data or a dataset hub (not checked)."""
    if split != "transfer" and (config.dataset or config.task_source):
        return None
    key = (split, config.task, config.eval_size, config.ood_size, config.transfer_task, config.transfer_size,
           config.data_seed)
    if key not in _EVAL_IDS:
        _EVAL_IDS[key] = tuple(row["id"] for row in built_in_eval_rows(config, split)) or None
    return _EVAL_IDS[key]


_EVAL_IDS: dict[tuple, tuple[str, ...] | None] = {}


def _finished(run_dir: Path, config: TrainConfig) -> bool:
    """True when ``run_dir`` keeps the checkpoint of its last step (a run can be evaluated again)."""
    last = latest_checkpoint(run_dir)
    return last is not None and int(last.name.split("-")[1]) >= config.steps


def aggregate_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and std over seeds for each (method, split)."""
    keys = [k for k in rows[0] if k not in ("method", "seed", "split")] if rows else []
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["split"]), []).append(row)
    table = []
    for (method, split), group in groups.items():
        entry: dict[str, Any] = {"method": method, "split": split, "seeds": len(group)}
        for k in keys:
            values = np.array([g[k] for g in group if k in g], dtype=float)
            values = values[~np.isnan(values)]  # e.g. kept_frac of a seed whose base solved nothing
            entry[k] = float(values.mean()) if len(values) else float("nan")
            entry[f"{k}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        table.append(entry)
    return table


def pareto_front(rows: list[dict[str, Any]], x: str = "pass@1", y: str = "pass@64",
                 split: str = "test") -> list[str]:
    """The methods on the Pareto front of (x, y), mean over seeds: no other method is at least as good
    on both and better on one."""
    table = [r for r in aggregate_rows(rows) if r["split"] == split]
    return [r["method"] for r in table
            if not any(o[x] >= r[x] and o[y] >= r[y] and (o[x] > r[x] or o[y] > r[y]) for o in table)]


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    fields = list(dict.fromkeys(k for row in rows for k in row))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def write_tables(rows: list[dict[str, Any]], out_dir: str | Path) -> None:
    out_dir = Path(out_dir)
    _write_csv(out_dir / "results.csv", rows)
    summary = [{"method": r["method"], "label": display_name(r["method"]), **r} for r in aggregate_rows(rows)]
    _write_csv(out_dir / "summary.csv", summary)  # label: the name figures and tables show


_T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def interval_95(std: float, seeds: int) -> float:
    """Half-width of the 95% Student-t interval of a mean over ``seeds`` runs with sample std ``std``
    (two seeds: 12.7 std/sqrt(2); five: 2.78 std/sqrt(5))."""
    return _T_975.get(seeds - 1, 1.96) * std / np.sqrt(seeds) if seeds > 1 else 0.0


def format_table(rows: list[dict[str, Any]], split: str = "test", columns: Iterable[str] = HEADLINE) -> str:
    """A Markdown table (mean ± std over seeds) of the aggregated rows for one split, one row per variant
    under its display name (``style.display_name``); ``headline_table`` gives the 95% intervals."""
    table = [r for r in (aggregate_rows(rows) if rows and "seed" in rows[0] else rows) if r["split"] == split]
    columns = [c for c in columns if table and c in table[0]] + (["kept_frac"] if table and "kept_frac" in table[0] else [])
    lines = ["| method | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for r in table:
        cells = []
        for c in columns:
            scale = 1 if c == "distinct_correct" else 100
            std = r.get(f"{c}_std", 0.0)
            if np.isnan(r[c]):  # e.g. kept_frac when the base model solved no prompt of the split
                cells.append("n/a")
                continue
            cells.append(f"{scale * r[c]:.1f}" + (f" ± {scale * std:.1f}" if r.get("seeds", 1) > 1 else ""))
        lines.append(f"| {display_name(r['method'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def headline_table(rows: list[dict[str, Any]], out_dir: str | Path, k: int = 64, split: str = "test",
                   ood: str = "ood") -> str:
    """The README's table: per method, its seeds, Pass@1, Pass@k and distinct correct solutions on ``split``,
    Pass@k on ``ood`` (when evaluated), each as mean ± the 95% interval over seeds (``interval_95``), and the
    regularizer's mean share of the update (``plots.mean_update_share``, in %; "–" when none is logged)."""
    from .plots import mean_update_share

    aggregated = {(r["method"], r["split"]): r for r in aggregate_rows(rows)}
    columns = [(split, "pass@1", 100), (split, f"pass@{k}", 100), (split, "distinct_correct", 1)]
    has_ood = any(s == ood for _, s in aggregated)
    columns += [(ood, f"pass@{k}", 100)] if has_ood else []
    header = ["method", "seeds", "Pass@1", f"Pass@{k}", "distinct correct", *([f"{ood} Pass@{k}"] if has_ood else []),
              "share of the update"]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for method in dict.fromkeys(r["method"] for r in rows if r["split"] == split):
        cells = [display_name(method), str(aggregated[(method, split)]["seeds"])]
        for s, key, scale in columns:
            r = aggregated.get((method, s))
            cells.append("n/a" if r is None or key not in r else
                         f"{scale * r[key]:.1f} ± {scale * interval_95(r[f'{key}_std'], r['seeds']):.1f}")
        seeds = sorted({r["seed"] for r in rows if r["method"] == method and r["split"] == split})
        shares = [v for s in seeds if (v := mean_update_share(Path(out_dir) / method / f"seed{s}")) is not None]
        cells.append(f"{100 * np.mean(shares):.2f}" if shares else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
