"""A run's output folder: owning it, where to resume, and what a checkpoint holds.

One run per folder (``checkpoint.lock_folder``: ``run.lock`` with pid and host). A run that finds
the folder's earlier run resumes it from its newest usable checkpoint, unless the config changed the
run's mathematics (``config.resume_changes``); ``overwrite=True`` deletes that run's files
(``RUN_FILES``) and starts afresh. A checkpoint (``save_checkpoint``) holds the LoRA adapter, the
optimizer and scheduler states, every process's RNG states, the data position (``data_state``), the
metrics so far, the failure streaks and the update-share state (shares.py); it is written atomically
with checksums (checkpoint.py), never with non-finite weights, and a resumed run repeats the
uninterrupted run bit for bit (tests/test_reliability.py). The logs ``metrics.jsonl`` and
``evals.jsonl`` hold exactly the steps up to the checkpoint a run resumed from, each once.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch
import yaml
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from .config import TrainConfig, resume_changes
from .guards import NonFiniteError

if TYPE_CHECKING:
    from accelerate import Accelerator

    from .trainer import Trainer

RUN_FILES = ("config.yaml", "metrics.jsonl", "evals.jsonl", "samples.jsonl", "presample.json", "reference_store.pt",
             "reference_store.pt.sha256", "adapter", "eval_*.json", "checkpoint-*", ".checkpoint-*")
"""What a run writes in its output_dir (globs); ``overwrite=True`` deletes these and nothing else."""


def _nonfinite_weights(adapter: Path) -> str | None:
    """Why a saved adapter must not be resumed from (NaN or inf weights), or None."""
    from safetensors.torch import load_file

    try:
        weights = load_file(adapter)
    except Exception as error:  # noqa: BLE001 - a missing or unreadable file: not resumable either
        return f"its adapter cannot be read ({type(error).__name__}: {error})"
    bad = [name for name, tensor in weights.items() if not torch.isfinite(tensor).all()]
    return f"its adapter weights are NaN or inf ({bad[0]})" if bad else None


def _logged_step(line: str) -> float:
    """The step of a JSONL log line; infinity for a line a kill cut short (so it is dropped)."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


def append_log(folder: Path, name: str, record: dict) -> None:
    """One JSON line appended to the run's log ``name`` (``metrics.jsonl``, ``evals.jsonl``)."""
    with open(folder / name, "a") as handle:
        handle.write(json.dumps(record) + "\n")


@contextmanager
def owned(cfg: TrainConfig, folder: Path, accelerator: Accelerator) -> Iterator[None]:
    """Hold ``folder`` for the whole launch: the main process locks it and claims it (``claim``); under
    DDP every process stops on its error, none waits for the others forever."""
    ckpt.make_folder(folder, "output_dir")
    lock, error = None, None
    if accelerator.is_main_process:  # the main process owns the folder for the whole launch
        try:
            lock = ckpt.lock_folder(folder)
            claim(cfg, folder)
        except ValueError as raised:
            error = raised
    if accelerator.num_processes > 1:  # DDP: every process stops, none waits for the others forever
        error = error or next((ValueError(m) for m in gather_object([error and str(error)]) if m), None)
    try:
        if error is not None:
            raise error
        yield
    finally:
        if lock is not None:
            ckpt.unlock_folder(lock)


def run(trainer: Trainer, resume: bool = True) -> list[dict]:
    """The whole run in its folder: resume (or start afresh), pre-sample (DPH), ``trainer.step()`` until
    ``steps``, with periodic evaluations and checkpoints, then the final adapter; returns the metrics."""
    cfg, folder, acc = trainer.config, trainer.output_dir, trainer.accelerator
    last = start(cfg, folder, acc.is_main_process, resume)
    if cfg.report_to != "none":
        acc.init_trackers("dphrl-mini", config={k: v for k, v in cfg.to_dict().items()
                                                if isinstance(v, (int, float, str, bool))})
    trainer.prepare_data()
    if acc.is_main_process:  # after the data checks: a refused run does not claim the folder
        dataclasses.replace(cfg, overwrite=False).to_yaml(folder / "config.yaml")
    if last is not None:
        trainer.load_checkpoint(last)
    else:  # same RNG state whether pre-sampling ran now or was loaded from an earlier attempt
        trainer.reseed()
    bar = tqdm(total=cfg.steps, initial=trainer.step_index, desc=f"{cfg.method}{'+mara' if cfg.mara else ''}",
               disable=not (cfg.progress and acc.is_main_process))
    while trainer.step_index < cfg.steps:
        metrics = trainer.step()
        bar.update(1)
        bar.set_postfix(reward=f"{metrics['reward_mean']:.2f}", solved=f"{metrics['solve_rate']:.2f}")
        # evaluate before saving: a checkpoint then follows its step's evaluation, so a resume
        # neither repeats nor skips one
        if cfg.eval_every and trainer.step_index % cfg.eval_every == 0 and trainer.step_index < cfg.steps:
            result = trainer.evaluate("test", n=min(cfg.eval_n, 16))
            if acc.is_main_process:
                append_log(folder, "evals.jsonl", {"step": trainer.step_index, "split": "test", **result.summary(None)})
        if trainer.step_index % cfg.save_every == 0 or trainer.step_index == cfg.steps:
            trainer.save_checkpoint()
    bar.close()
    acc.wait_for_everyone()
    if acc.is_main_process:
        trainer.save_adapter(folder / "adapter")
    if cfg.report_to != "none":
        acc.end_training()
    return trainer.history


def claim(cfg: TrainConfig, folder: Path) -> None:
    """Main process, holding the lock: start afresh (``overwrite``) or check that the folder's run
    is this config's, then remove what killed saves and prunes left behind."""
    if cfg.overwrite:
        removed = sorted({p.name for pattern in RUN_FILES for p in folder.glob(pattern)})
        for name in removed:
            if (folder / name).is_dir():
                shutil.rmtree(folder / name)
            else:
                (folder / name).unlink()
        if removed:
            warnings.warn(f"overwrite=True: deleted the previous run's files in {folder}: {', '.join(removed)}")
    elif (folder / "config.yaml").exists():
        saved = yaml.safe_load((folder / "config.yaml").read_text()) or {}
        refused, allowed = resume_changes(saved, cfg)
        if refused:
            raise ValueError(
                f"output_dir {folder} holds a run made with another config, which cannot be resumed with: "
                f"{'; '.join(refused)}. To start fresh, use another output_dir or pass --overwrite "
                "(overwrite=True), which deletes that run's checkpoints and logs")
        if allowed:
            warnings.warn(f"resuming {folder} with changed settings: {'; '.join(allowed)}")
    leftovers = ckpt.remove_leftovers(folder)
    if leftovers:
        warnings.warn(f"removed debris of interrupted saves or prunes, and incomplete checkpoints older than "
                      f"the newest complete one, in {folder}: {', '.join(leftovers)}")


def start(cfg: TrainConfig, folder: Path, is_main: bool, resume: bool) -> Path | None:
    """The checkpoint to resume from (None: a fresh start, whose logs are emptied)."""
    last = resume_point(folder, is_main) if resume else None
    if last is None and is_main:
        for log in ("metrics.jsonl", "evals.jsonl"):
            (folder / log).write_text("")
    return last


def resume_point(output_dir: Path, is_main: bool) -> Path | None:
    """The newest usable checkpoint; every newer one skipped is named with the reason."""
    skipped = []
    for folder in reversed(ckpt.checkpoint_folders(output_dir)):
        problem = ckpt.checkpoint_problem(folder) or _nonfinite_weights(folder / "adapter" / "adapter_model.safetensors")
        if problem is None:
            if skipped and is_main:
                warnings.warn(f"resuming from {folder.name} at step {int(folder.name.split('-')[1])}; "
                              f"skipped {'; '.join(skipped)}")
            return folder
        skipped.append(f"{folder.name} because {problem}")
    if skipped and is_main:
        warnings.warn(f"no usable checkpoint in {output_dir}: starting again from step 0; "
                      f"skipped {'; '.join(skipped)}")
    return None


def save_checkpoint(trainer: Trainer) -> Path | None:
    """Every process calls this (it gathers each one's RNG state); the main process writes."""
    nonfinite = [n for n, p in trainer.policy.named_parameters() if p.requires_grad and not torch.isfinite(p).all()]
    if nonfinite:  # never write (nor prune the good checkpoints for) weights that are NaN or inf
        last = ckpt.latest_checkpoint(trainer.output_dir)
        raise NonFiniteError(
            f"step {trainer.step_index}: {len(nonfinite)} weight tensor(s) are NaN or inf (e.g. {nonfinite[0]}); "
            f"no checkpoint written, the last good one ({last.name if last else 'none'}) is kept. Lower `lr` "
            "or `max_grad_norm`, or use dtype='float32'")
    rng = {"python": random.getstate(), "numpy": np.random.get_state(),
           "torch": torch.get_rng_state(), "generator": trainer.generator.get_state()}
    rng_per_process = gather_object([rng]) if trainer.accelerator.num_processes > 1 else [rng]
    if not trainer.accelerator.is_main_process:
        return None
    state = {"step": trainer.step_index, "data_state": dict(trainer.data_state),
             "nonfinite_in_a_row": trainer.nonfinite_in_a_row, "history": trainer.history,
             "reward_failure_streak": trainer.reward_failure_streak,
             "update_shares": trainer.shares.state_dict() if trainer.shares else None,
             "optimizer": trainer.optimizer.state_dict(), "scheduler": trainer.scheduler.state_dict(),
             "rng_per_process": rng_per_process}

    def fill(folder: Path) -> None:
        trainer.save_adapter(folder / "adapter")
        torch.save(state, folder / "state.pt")
        dataclasses.replace(trainer.config, overwrite=False).to_yaml(folder / "config.yaml")

    path = ckpt.save_folder(trainer.output_dir / f"checkpoint-{trainer.step_index:06d}", fill,
                            meta={"step": trainer.step_index, "fingerprint": trainer.fingerprint})
    ckpt.prune(trainer.output_dir, keep=2)
    return path


def load_checkpoint(trainer: Trainer, folder: str | Path) -> None:
    """Restore everything ``save_checkpoint`` saved, and cut the logs back to the checkpoint's step."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    folder = Path(folder)
    if not ckpt.verify(folder):
        raise ValueError(f"checkpoint {folder} is incomplete or corrupt (manifest check failed)")
    set_peft_model_state_dict(trainer.policy, load_file(folder / "adapter" / "adapter_model.safetensors"))
    state = torch.load(folder / "state.pt", weights_only=False)
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    trainer.step_index = state["step"]
    trainer.data_state = {"reference_pass": 0, "reference_cursor": 0, **state["data_state"]}
    trainer.nonfinite_in_a_row, trainer.history = state["nonfinite_in_a_row"], state["history"]
    trainer.reward_failure_streak = state.get("reward_failure_streak", {})
    if trainer.shares and state.get("update_shares"):
        trainer.shares.load_state_dict(state["update_shares"])
    rngs, rank = state["rng_per_process"], trainer.accelerator.process_index
    if len(rngs) != trainer.accelerator.num_processes:
        warnings.warn(f"checkpoint {folder} was saved by {len(rngs)} process(es), resuming with "
                      f"{trainer.accelerator.num_processes}: sampling will not repeat the uninterrupted run")
    rng = rngs[rank % len(rngs)]
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    trainer.generator.set_state(rng["generator"])
    if trainer.accelerator.is_main_process:  # the logs = exactly the steps up to the checkpoint, each once
        ckpt.atomic_write_text(trainer.output_dir / "metrics.jsonl",
                               "".join(json.dumps(m) + "\n" for m in trainer.history))
        evals = trainer.output_dir / "evals.jsonl"
        if evals.exists():
            kept = [line for line in evals.read_text().splitlines(keepends=True)
                    if _logged_step(line) <= trainer.step_index]
            ckpt.atomic_write_text(evals, "".join(kept))
