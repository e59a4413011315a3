"""DPH-RL's hybrid data: pre-sampling, the exploration / near-perfect split, the reference store.

DESIGN.md §1, "DPH-RL as released", step 1: every training prompt is sampled ``k`` times from the
initial policy and scored by the run's ``rewards.Verifier`` (a sample is correct when its total
reward reaches ``correct_threshold``). Prompts whose pass rate reaches ``threshold`` form the near-perfect set D_pef; the
rest form the exploration set D_exp. For each D_pef prompt we keep correct reference responses
with their **per-token pi_ref log-probs**, stored on disk, so DPH training needs no online
reference model.

Departures from the released code:
1. The released code keeps one correct response per D_pef prompt; ``keep="all_distinct"`` keeps
   one per distinct correct solution (``Verifier.solution_key``), which rehearses every mode.
2. The reference responses are taken from the same k pre-samples instead of a second sampling pass.
3. The store carries a fingerprint of model and tokenizer; loading it against another model is an
   error, not silent garbage. The split records where it came from (``presample_source``: dataset,
   reward identity, weights, threshold, k, sampling settings); loading it for a run with other
   settings is an error too.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .checkpoint import atomic_write, sha256_file
from .packing import packed_logps
from .rewards import NOT_REWARD_COLUMNS, RewardState, Verifier, as_verifier, reward_identity
from .rollout import generate, sequence_logps


def reward_columns(rows: list[dict], repeat: int = 1) -> dict[str, list]:
    """Dataset columns (all but ``NOT_REWARD_COLUMNS``) as lists aligned with ``repeat`` completions per row."""
    keys = [k for k in rows[0] if k not in NOT_REWARD_COLUMNS] if rows else []
    return {k: [row[k] for row in rows for _ in range(repeat)] for k in keys}


@dataclass
class ReferenceStore:
    """Stored reference responses (token ids) with their per-token pi_ref log-probs."""

    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    reference_logps: list[list[float]]
    row_ids: list[str]
    fingerprint: str
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.completion_ids)

    def batch(self, indices: list[int], pad_token_id: int, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Left-padded prompts and right-padded completions as tensors (the Rollout layout)."""
        P = max(len(self.prompt_ids[i]) for i in indices)
        T = max(len(self.completion_ids[i]) for i in indices)
        B = len(indices)
        prompt_ids = torch.full((B, P), pad_token_id, dtype=torch.long)  # (B, P)
        prompt_mask = torch.zeros(B, P, dtype=torch.long)
        completion_ids = torch.full((B, T), pad_token_id, dtype=torch.long)  # (B, T)
        completion_mask = torch.zeros(B, T)
        reference_logps = torch.zeros(B, T)
        for row, i in enumerate(indices):
            p, c = self.prompt_ids[i], self.completion_ids[i]
            prompt_ids[row, P - len(p):] = torch.tensor(p)
            prompt_mask[row, P - len(p):] = 1
            completion_ids[row, : len(c)] = torch.tensor(c)
            completion_mask[row, : len(c)] = 1
            reference_logps[row, : len(c)] = torch.tensor(self.reference_logps[i])
        out = dict(prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=completion_ids,
                   completion_mask=completion_mask, reference_logps=reference_logps)
        return {k: v.to(device) for k, v in out.items()}

    def save(self, path: str | Path) -> Path:
        """Atomic save plus a ``.sha256`` sidecar; see ``load``."""
        path = Path(path)
        atomic_write(path, lambda tmp: torch.save(self.__dict__, tmp))
        atomic_write(path.with_suffix(path.suffix + ".sha256"), lambda tmp: tmp.write_text(sha256_file(path)))
        return path

    @classmethod
    def load(cls, path: str | Path, expected_fingerprint: str | None = None) -> "ReferenceStore":
        """Load a store after checking it against its mandatory ``.sha256`` sidecar."""
        path = Path(path)
        sidecar = path.with_suffix(path.suffix + ".sha256")
        if not sidecar.exists():
            raise corrupt_presample(path, f"its checksum file {sidecar.name} is missing")
        if sidecar.read_text().strip() != sha256_file(path):
            raise corrupt_presample(path, "checksum mismatch")
        try:
            store = cls(**torch.load(path, weights_only=False))
        except Exception as error:  # noqa: BLE001 - a checksummed file that still does not load
            raise corrupt_presample(path, f"{type(error).__name__}: {error}") from None
        if expected_fingerprint is not None:
            store.check_fingerprint(expected_fingerprint, f"reference store {path}")
        return store

    def check_fingerprint(self, expected_fingerprint: str, name: str = "the reference store") -> None:
        """Raise ``ValueError`` unless the store was made with the model/tokenizer of ``expected_fingerprint``."""
        if self.fingerprint != expected_fingerprint:
            raise ValueError(
                f"{name} was made with another model or tokenizer "
                f"(fingerprint {self.fingerprint} != {expected_fingerprint}); its log-probs would be garbage "
                "for this model. Re-run `dphrl-mini presample` (or `build_reference_store`) with the current model.")


def corrupt_presample(path: Path, why: str) -> ValueError:
    """The error for a damaged pre-sampling file: which file, why, and how to rebuild it."""
    return ValueError(f"{path} is corrupt ({why}); re-run presample: delete presample.json and "
                      f"reference_store.pt in {path.parent}, then run `dphrl-mini presample` (or train) again")


def presample_source(config, verifier: Verifier, rows: list[dict], templated: bool) -> dict[str, Any]:
    """What a pre-sampled split depends on, by ``TrainConfig`` field name: the model, a hash of the training
    rows (``dataset``), each reward's identity (``rewards.reward_identity``), weights and threshold, the split
    rule and the sampling settings. ``PresampleResult.load`` refuses a split whose record differs."""
    rows_hash = hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return {"model": config.model, "dataset": rows_hash, "reward": [reward_identity(f) for f in verifier.reward_fns],
            "reward_weights": verifier.reward_weights, "correct_threshold": verifier.correct_threshold,
            "presample_k": config.presample_k, "presample_threshold": config.presample_threshold,
            "keep_references": config.keep_references, "max_new_tokens": config.max_new_tokens,
            "temperature": config.temperature, "top_p": config.top_p, "seed": config.seed, "chat_template": templated}


SOURCE_UNCHECKED = ("model",)
"""Recorded, not compared: the reference store's fingerprint identifies the model (a moved folder is the same)."""


def check_source(path: Path, saved: dict[str, Any], wanted: dict[str, Any]) -> None:
    """Raise one ``ValueError`` naming every field in which the split at ``path`` (its record ``saved``)
    differs from this run's ``wanted`` one, and the fix. Fields absent from ``saved`` are not compared."""
    changed = [f"{k}: {saved[k]!r} -> {v!r}" for k, v in wanted.items()
               if k in saved and k not in SOURCE_UNCHECKED and saved[k] != v]
    if changed:
        raise ValueError(f"{path} was pre-sampled with other settings than this run's ({'; '.join(changed)}); pass "
                         "--overwrite (overwrite=True) to pre-sample again, or use a new output_dir")


@dataclass
class PresampleResult:
    pass_rates: dict[str, float]
    exploration: list[dict]
    near_perfect: list[dict]
    store: ReferenceStore
    k: int
    threshold: float
    source: dict[str, Any] = field(default_factory=dict)
    """Where the split came from (``presample_source``); empty when the caller did not record it."""

    def summary(self) -> dict[str, Any]:
        rates = list(self.pass_rates.values())
        return {"prompts": len(rates), "k": self.k, "threshold": self.threshold,
                "exploration": len(self.exploration), "near_perfect": len(self.near_perfect),
                "reference_samples": len(self.store),
                "mean_pass_rate": sum(rates) / max(len(rates), 1)}

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        self.store.save(folder / "reference_store.pt")
        split = {"pass_rates": self.pass_rates, "k": self.k, "threshold": self.threshold,
                 "exploration": [r["id"] for r in self.exploration],
                 "near_perfect": [r["id"] for r in self.near_perfect], "reference_samples": len(self.store),
                 "source": self.source}
        atomic_write(folder / "presample.json", lambda tmp: tmp.write_text(json.dumps(split)))

    @classmethod
    def load(cls, folder: str | Path, rows: list[dict], expected_fingerprint: str | None = None,
             expected_source: dict[str, Any] | None = None) -> "PresampleResult":
        """The split saved in ``folder``; with ``expected_source`` (``presample_source``), a split made
        with other settings (or, for a split saved without a record, another k or threshold) is refused."""
        folder = Path(folder)
        try:
            split = json.loads((folder / "presample.json").read_text())
        except ValueError as error:  # truncated or edited
            raise corrupt_presample(folder / "presample.json", f"not valid JSON: {error}") from None
        missing = [k for k in ("pass_rates", "k", "threshold", "exploration", "near_perfect")
                   if not isinstance(split, dict) or k not in split]
        if missing:
            raise corrupt_presample(folder / "presample.json", f"field `{missing[0]}` is missing")
        saved_source = split.get("source") or {"presample_k": split["k"], "presample_threshold": split["threshold"]}
        if expected_source is not None:
            check_source(folder / "presample.json", saved_source, expected_source)
        by_id = {r["id"]: r for r in rows}
        missing = [i for i in split["exploration"] + split["near_perfect"] if i not in by_id]
        if missing:
            raise ValueError(f"presample in {folder} names {len(missing)} prompts that are not in the "
                             "training rows (different task, size or seed?); re-run presample")
        return cls(split["pass_rates"], [by_id[i] for i in split["exploration"]],
                   [by_id[i] for i in split["near_perfect"]],
                   ReferenceStore.load(folder / "reference_store.pt", expected_fingerprint),
                   split["k"], split["threshold"], split.get("source") or {})


def presample(model, tokenizer, rows: list[dict], verifier: Verifier, *, k: int = 8, threshold: float = 1.0,
              keep: str = "one", fingerprint: str = "", max_new_tokens: int = 32,
              temperature: float = 1.0, top_p: float = 1.0, batch_size: int = 512, seed: int = 0,
              prompts: list[str] | None = None, progress: bool = True, packed: bool = True,
              add_special_tokens: bool = True, trainer_state: RewardState | None = None) -> PresampleResult:
    """Sample ``k`` completions per row from the (initial) ``model`` and split the rows.

    ``verifier`` scores them (a built-in task module also works: ``rewards.as_verifier``), with TRL's
    keywords (``rewards``; ``trainer_state`` defaults to step 0). A sample counts as correct only if it
    ended in EOS within ``max_new_tokens``: presample prints how many did not, and says so when every
    sample of a prompt hit the limit. A reward function that fails on every sample, or rewards that are
    None for every sample, are an error (``ValueError``) with the first exception's message.
    ``prompts`` overrides the text fed to the model (e.g. chat-templated, then with
    ``add_special_tokens=False``); defaults to row["prompt"]. Rewards always see row["prompt"].
    Reference log-probs are recomputed with the trainer's own forward (``packing.packed_logps``, or
    ``rollout.sequence_logps`` if not ``packed``) so that they match what the trainer computes for
    the policy at the same tokens.
    """
    if keep not in ("one", "all_distinct"):
        raise ValueError(f"keep={keep!r}: use 'one' or 'all_distinct'")
    verifier = as_verifier(verifier)
    prompts = prompts or [r["prompt"] for r in rows]
    generator = torch.Generator(device=model.device).manual_seed(seed)
    rollout = generate(model, tokenizer, prompts, num_generations=k, max_new_tokens=max_new_tokens,
                       temperature=temperature, top_p=top_p, batch_size=batch_size,
                       generator=generator, progress=progress, add_special_tokens=add_special_tokens)
    failures: dict[str, list[str]] = {}
    rewards, _ = verifier.score([r["prompt"] for r in rows for _ in range(k)], rollout.completions,
                                reward_columns(rows, k), failures=failures,
                                completion_ids=rollout.completion_id_lists(), trainer_state=trainer_state)
    check_scored(rewards, failures)
    is_correct = verifier.is_correct(rewards)
    report_truncation(rollout.truncated.tolist(), is_correct.tolist(), k, max_new_tokens)
    rng = random.Random(seed)
    pass_rates, exploration, near_perfect, chosen = {}, [], [], []
    for i, row in enumerate(rows):
        group = range(i * k, (i + 1) * k)
        correct = [j for j in group if is_correct[j] and not bool(rollout.truncated[j])]
        pass_rates[row["id"]] = len(correct) / k
        if len(correct) / k >= threshold and correct:
            near_perfect.append(row)
            rng.shuffle(correct)
            if keep == "one":
                chosen.append(correct[0])
            else:
                seen: set = set()
                for j in correct:
                    key = verifier.solution_key(rollout.completions[j])
                    if key not in seen:
                        seen.add(key)
                        chosen.append(j)
        else:
            exploration.append(row)
    store = _store_from_rollout(model, rollout, chosen, [rows[j // k]["id"] for j in chosen],
                                fingerprint, temperature, batch_size, packed)
    store.meta.update(k=k, threshold=threshold, keep=keep, temperature=temperature)
    return PresampleResult(pass_rates, exploration, near_perfect, store, k, threshold)


def check_scored(rewards, failures: dict[str, list[str]]) -> None:
    """Raise ``ValueError`` when a reward function failed on every sample, or no sample has a reward:
    a split (and a reference store) made from such rewards would be empty, not wrong-looking."""
    n = len(rewards)
    for name, errors in failures.items():
        if len(errors) == n:
            raise ValueError(f"reward function `{name}` failed on all {n} pre-samples, so none can be judged; "
                             f"its first error: {errors[0]}")
    if n and all(r != r for r in rewards):  # NaN: every function returned None
        raise ValueError(f"every reward function returned None (no reward) for all {n} pre-samples, so none "
                         "can be judged correct; check the columns the rewards read")


def report_truncation(truncated: list[bool], correct: list[bool], k: int, max_new_tokens: int) -> None:
    """Print how many samples were dropped for not ending in EOS, and how many prompts had no sample that did."""
    n_cut = sum(truncated)
    if not n_cut:
        return
    n_correct = sum(c for c, t in zip(correct, truncated) if t)
    print(f"presample: dropped {n_cut} of {len(truncated)} samples that did not end in EOS within "
          f"max_new_tokens={max_new_tokens} ({n_correct} of them scored as correct); a reference answer must "
          "be complete", file=sys.stderr)
    all_cut = sum(all(truncated[i:i + k]) for i in range(0, len(truncated), k))
    if all_cut:
        print(f"presample: every sample of {all_cut} of {len(truncated) // k} prompts hit the token limit "
              f"(max_new_tokens={max_new_tokens}): raise --max-new-tokens (max_new_tokens)", file=sys.stderr)


@torch.no_grad()
def _store_from_rollout(model, rollout, chosen: list[int], row_ids: list[str], fingerprint: str,
                        temperature: float, batch_size: int, packed: bool = True) -> ReferenceStore:
    prompt_ids, completion_ids, reference_logps = [], [], []
    forward = packed_logps if packed else sequence_logps
    for start in range(0, len(chosen), batch_size):
        idx = torch.tensor(chosen[start:start + batch_size], dtype=torch.long)
        logps = forward(model, rollout.prompt_ids[idx], rollout.prompt_mask[idx], rollout.completion_ids[idx],
                        rollout.completion_mask[idx], temperature=temperature)  # (b, T)
        for row, j in enumerate(idx.tolist()):
            pmask = rollout.prompt_mask[j].bool()
            n = int(rollout.completion_mask[j].sum())
            prompt_ids.append(rollout.prompt_ids[j][pmask].tolist())
            completion_ids.append(rollout.completion_ids[j, :n].tolist())
            reference_logps.append(logps[row, :n].float().cpu().tolist())
    return ReferenceStore(prompt_ids, completion_ids, reference_logps, row_ids, fingerprint)
