"""Command line: ``dphrl-mini presample | train | eval | compare | demo``.

Every ``TrainConfig`` field is an option (``--method dph_js --eta 0.5``); ``--preset`` and
``--config file.yaml`` set a starting point that options then override.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import typing
from pathlib import Path

from .checkpoint import make_folder
from .config import METHODS, PRESETS, TrainConfig, preset_config
from .validation import check_data_options, field_docs, read_config_file


REPEATABLE = ("reward", "reward_weights")


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file with TrainConfig fields (and optionally `preset`)")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="named starting point")
    hints, docs = typing.get_type_hints(TrainConfig), field_docs(TrainConfig)
    for f in dataclasses.fields(TrainConfig):  # SUPPRESS: only options given appear in the namespace
        flag, hint = "--" + f.name.replace("_", "-"), str(hints[f.name])
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        helptext = f"{docs.get(f.name, '')} (default: {default})".lstrip().replace("%", "%%")
        if hints[f.name] is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=helptext)
        elif "list" in hint:  # --reward and --reward-weights repeat: --reward a:f --reward b:g == --reward a:f b:g
            item = hint.split("list[")[1]
            action = "extend" if f.name in REPEATABLE else "store"
            parser.add_argument(flag, dest=f.name, nargs="+", action=action, default=argparse.SUPPRESS, help=helptext,
                                type=int if item.startswith("int") else float if item.startswith("float") else str)
        else:
            base = int if "int" in hint and "float" not in hint else float if "float" in hint else str
            parser.add_argument(flag, dest=f.name, default=argparse.SUPPRESS, help=helptext,
                                type=(lambda text, base=base: None if text.lower() == "none" else base(text)))


def config_from_args(args: argparse.Namespace, base: TrainConfig | None = None) -> TrainConfig:
    """``base`` (else the preset or ``--config`` file), overridden by every option given (``none``
    included). An option given here or in the file that the data path ignores is refused."""
    overrides = {f.name: vars(args)[f.name] for f in dataclasses.fields(TrainConfig) if f.name in vars(args)}
    given = set(overrides)
    if args.config:
        base = TrainConfig.from_yaml(args.config)
        given |= set(read_config_file(args.config))
    if base is not None:
        cfg = dataclasses.replace(base, **overrides).validate()
    else:
        cfg = preset_config(args.preset, **overrides).validate()
    check_data_options(cfg, sorted(given))
    return cfg


def cmd_presample(args) -> None:
    from .trainer import Trainer

    cfg = config_from_args(args)
    trainer = Trainer(cfg)
    make_folder(cfg.output_dir)
    if cfg.overwrite:  # pre-sample again instead of reusing (and checking) the saved split
        for name in ("presample.json", "reference_store.pt", "reference_store.pt.sha256"):
            (Path(cfg.output_dir) / name).unlink(missing_ok=True)
    trainer.prepare_data()
    if trainer.presampled is None:
        cfg = dataclasses.replace(cfg, train_on="exploration")
        trainer = Trainer(cfg)
        trainer.prepare_data()
    print(json.dumps(trainer.presampled.summary(), indent=1))


def cmd_train(args) -> None:
    from .experiments import run

    cfg = config_from_args(args)
    result = run(cfg, splits=args.splits)  # None: experiments.default_splits
    for split, res in result["eval"].items():
        print(split, json.dumps(res.summary(cfg.eval_ks), indent=1))


EVAL_FIELDS = ("task", "task_source", "dataset", "eval_dataset", "eval_fraction", "data_seed", "train_size", "eval_size",
               "ood_size", "transfer_task", "transfer_size", "reward", "reward_weights", "correct_threshold",
               "chat_template")
"""Fields that choose a run's evaluation prompts and how they are scored: ``eval`` of a run keeps the run's."""


def eval_config(args) -> TrainConfig:
    """The config ``eval`` uses: the run's own (OUTPUT_DIR/config.yaml, when there is one) with the options
    given on top; an option that would evaluate other prompts than the run's is refused."""
    saved = Path(vars(args).get("output_dir") or config_from_args(args).output_dir) / "config.yaml"
    if not saved.exists():
        return config_from_args(args)
    run = TrainConfig.from_yaml(saved)
    base = None if args.config or args.preset else dataclasses.replace(run, overwrite=False)
    cfg = config_from_args(args, base=base)
    for name in EVAL_FIELDS:
        if getattr(cfg, name) != getattr(run, name):
            raise ValueError(
                f"config field `{name}`={getattr(cfg, name)!r} differs from the run's {getattr(run, name)!r} "
                f"({saved}): its eval files would hold other prompts. Drop --{name.replace('_', '-')}, or evaluate "
                f"elsewhere: --adapter {Path(cfg.output_dir) / 'adapter'} --output-dir NEW_FOLDER")
    return cfg


def cmd_eval(args) -> None:
    from .experiments import evaluate_base, resolve_splits, save_eval
    from .trainer import Trainer

    cfg = eval_config(args)
    splits = resolve_splits(cfg, args.splits)  # a bad split fails before the model loads
    if args.base:
        if (Path(cfg.output_dir) / "adapter").exists():
            raise ValueError(f"output_dir {cfg.output_dir} holds a trained run; evaluating the base model there would "
                             "overwrite its eval files: pass --output-dir NEW_FOLDER")
        results = evaluate_base(cfg, splits)
    else:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        folder = Path(args.adapter or Path(cfg.output_dir) / "adapter")
        adapter = folder / "adapter_model.safetensors"
        if not adapter.exists():
            sys.exit(f"no adapter at {adapter}: train first, or pass --adapter DIR or --base")
        trainer = Trainer(adapter_shape(cfg, folder))
        check_adapter_base(folder, trainer.fingerprint, cfg.model)
        set_peft_model_state_dict(trainer.policy, load_file(adapter))
        results = {s: trainer.evaluate(s) for s in splits if trainer.eval_rows(s)}
        for s, r in results.items():
            save_eval(r, Path(cfg.output_dir) / f"eval_{s}.json")
    for split, res in results.items():
        print(split, json.dumps(res.summary(cfg.eval_ks), indent=1))


def check_adapter_base(folder: Path, fingerprint: str, model: str) -> None:
    """Raise ``ValueError`` when the adapter in ``folder`` was trained on another base model than ``model``
    (``models.save_adapter`` records the base's fingerprint; adapters without the record are not checked)."""
    from .models import BASE_MODEL_FILE

    record = folder / BASE_MODEL_FILE
    if record.exists() and (saved := json.loads(record.read_text()))["fingerprint"] != fingerprint:
        raise ValueError(f"the adapter in {folder} was trained on base model {saved['model']!r}, not on model={model!r} "
                         f"(fingerprint {saved['fingerprint']} != {fingerprint}): pass --model {saved['model']}")


def adapter_shape(cfg: TrainConfig, folder: Path) -> TrainConfig:
    """``cfg`` with the LoRA rank, alpha and target modules of the saved adapter (adapter_config.json)."""
    saved = json.loads((folder / "adapter_config.json").read_text())
    targets = saved["target_modules"]  # PEFT records "all-linear" as the full names of the layers
    targets = targets if isinstance(targets, str) else sorted({t.rsplit(".", 1)[-1] for t in targets})
    return dataclasses.replace(cfg, lora_rank=saved["r"], lora_alpha=saved["lora_alpha"], lora_target_modules=targets)


def cmd_compare(args) -> None:
    from .experiments import compare, parse_variants

    cfg = config_from_args(args)
    variants = parse_variants(args.variants)  # compare validates every variant before the first run
    rows = compare(cfg, variants, seeds=args.seeds, out_dir=args.out, splits=args.splits)
    splits = list(dict.fromkeys(r["split"].split(":")[0] for r in rows))  # those evaluated, in order
    _save_compare_report(rows, Path(args.out), splits, k=max(cfg.eval_ks))


REPRODUCIBILITY = (
    "Tables: mean ± one standard deviation over seeds, in %. Rerun on the same machine with the same thread "
    "count, the command reproduces every number exactly. On another CPU the base rows repeat exactly, but "
    "trained runs do not (floating-point sums differ, sampling diverges): expect them within the seed spread, "
    "and call two methods different only when their 95% intervals (t x std / sqrt(seeds)) do not overlap.\n")


def _save_compare_report(rows: list[dict], out: Path, splits: list[str], k: int) -> None:
    """Print the tables; save Pass@k curves, the Pareto front when a coefficient was swept, and the
    table (Markdown) with the command that made them."""
    import matplotlib

    matplotlib.use("Agg")
    from .experiments import format_table, headline_table
    from .plots import (load_results, mean_update_share, plot_pareto, plot_pass_at_k_curves, plot_share_sweep,
                        sweep_family)

    methods, seeds = {r["method"] for r in rows}, {r["seed"] for r in rows}
    swept = len({sweep_family(m) for m in methods}) < len(methods)  # a method ran at several coefficients
    command = "dphrl-mini " + " ".join(sys.argv[1:])
    report = [f"Regenerate with:\n\n    {command}\n", REPRODUCIBILITY]
    if splits:
        report.append(f"## headline: {splits[0]}, mean ± 95% interval\n\n{headline_table(rows, out, k, splits[0])}\n")
    for split in splits:
        table = format_table(rows, split)
        print(f"\n{split}:\n{table}")
        report.append(f"## {split}\n\n{table}\n")
        results = load_results(out, split, methods, seeds)  # this command's runs only
        fig = plot_pass_at_k_curves(results, split=split)
        fig.savefig(out / f"pass_at_k_{split}.png", dpi=120, bbox_inches="tight")
        groups = [r["split"].split(":", 1)[1] for r in rows if r["split"].startswith(f"{split}:")]
        for group in dict.fromkeys(["near-perfect", "exploration", *groups]):  # then the task's tiers, if any
            if group in groups:  # experiments.difficulty_rows
                table = format_table(rows, f"{split}:{group}")
                print(f"\n{split}, {group} prompts:\n{table}")
                report.append(f"### {split}, {group} prompts\n\n{table}\n")
        if swept:
            task = next(iter(results.values()))[0].task if results else None
            fig = plot_pareto(rows, x="pass@1", y=f"pass@{k}", split=split, task=task)
            fig.savefig(out / f"pareto_{split}.png", dpi=120, bbox_inches="tight")
            report.append(f"Pareto front: `pareto_{split}.png`.\n")
            if any(mean_update_share(out / m / f"seed{s}") is not None for m in methods for s in seeds):
                fig = plot_share_sweep([r for r in rows if r["split"] == split], out, split=split, k=k)
                fig.savefig(out / f"share_sweep_{split}.png", dpi=120, bbox_inches="tight")
                report.append(f"Pass@1 and Pass@{k} against the regularizer's measured share of the update: "
                              f"`share_sweep_{split}.png`.\n")
    (out / "RESULTS.md").write_text("\n".join(report))


def cmd_demo(args) -> None:
    from .demo import run_demo

    run_demo(out_dir=args.out, quick=args.quick, steps=args.steps)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dphrl-mini", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, helptext in [
        ("presample", cmd_presample, "sample the initial policy k times per prompt; write the split and reference store"),
        ("train", cmd_train, "train one method and evaluate it"),
        ("eval", cmd_eval, "evaluate a trained adapter (or --base) with Pass@k and diversity"),
        ("compare", cmd_compare, "train several methods over seeds on the same data; write results tables"),
    ]:
        p = sub.add_parser(name, help=helptext)
        _add_config_options(p)
        p.add_argument("--splits", nargs="+", default=None,
                       help='evaluation splits: test, ood, shift, transfer (default: test ood, and transfer '
                            'with --transfer-task)')
        p.set_defaults(func=func)
        if name == "eval":
            p.add_argument("--base", action="store_true", help="evaluate the base model (adapters off)")
            p.add_argument("--adapter", help="adapter folder (default: OUTPUT_DIR/adapter)")
        if name == "compare":
            p.add_argument("--variants", nargs="+", default=["grpo", "dph_js"],
                           help=f"methods ({', '.join(METHODS)}), optionally NAME+mara and "
                                "NAME:field=value,field=value overrides, e.g. dph_js:eta=2")
            p.add_argument("--seeds", nargs="+", type=int, default=[0])
            p.add_argument("--out", default="results/compare")
    p = sub.add_parser("demo", help="the main job on CPU: exact bandit targets, then GRPO vs DPH-JS on the tiny model")
    p.add_argument("--out", default="outputs/demo")
    p.add_argument("--quick", action="store_true", help="a one-minute smoke version")
    p.add_argument("--steps", type=int, default=None, help="RL steps per method (default 60, quick 4)")
    p.set_defaults(func=cmd_demo)
    return parser


def usage_error(message: str) -> SystemExit:
    """The exit of a user error: ``message`` on stderr, exit status 2 as for argparse's own errors (the
    exception's text is the message too, for callers that catch it)."""
    print(message, file=sys.stderr)
    error = SystemExit(message)
    error.code = 2
    return error


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    try:
        args.func(args)
    except ValueError as error:  # configuration and input errors: one clear line, no traceback, as argparse
        raise usage_error(f"error: {error}") from None
    print(f"[{args.command} finished in {time.perf_counter() - start:.0f} s]", file=sys.stderr)


if __name__ == "__main__":
    main()
