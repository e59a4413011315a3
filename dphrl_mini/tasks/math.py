"""GSM8K/MATH-style problems with a final answer, for real (instruction-tuned) models.

* **Data.** ``load_dataset_rows`` reads a Hugging Face dataset by hub id (``"openai/gsm8k"``,
  config ``"main"``, via ``datasets.load_dataset``) or a local JSONL file with the same schema
  (``"question"`` or ``"prompt"``, and ``"answer"``, whose final answer may follow ``####``).
  ``make_dataset(..., source=None)`` generates small synthetic arithmetic word problems locally,
  so everything works offline. Every prompt, synthetic or loaded, ends with the answer-format
  instruction ``INSTRUCTION``. A local file has no splits: a fixed ``FILE_TEST_FRACTION`` of its
  questions (those with the smallest hash) is "test" and "ood", the rest "train"; ``data/gsm8k_sample.jsonl`` is a 16-problem sample written for
  this project in the GSM8K schema.
* **Answers.** ``extract_answer`` takes, in order: ``<answer>...</answer>``, the last
  ``\\boxed{...}`` (nested braces, linear scan), ``#### x``, ``The answer is x``, else the last
  line. ``is_equivalent`` uses ``math_verify`` when it is installed, otherwise a numeric /
  normalized-string comparison. Many correct answers here means many correct *reasoning paths*;
  ``solution_key`` is the normalized final answer, so the distinct-solution count is 1.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from .rows import check_field, check_split

NAME = "math"
SAMPLE_PATH = Path(__file__).resolve().parent / "data" / "gsm8k_sample.jsonl"
_NAMES = ("Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hiro", "Ines", "Jamal")
_ITEMS = ("apples", "stickers", "pencils", "marbles", "cookies", "books")
INSTRUCTION = " Put the final answer in \\boxed{}."
FILE_TEST_FRACTION = 0.2
SPLITS = ("train", "test", "ood")
"""The splits ``make_dataset`` draws (no "shift": the math task has no shifted form)."""


def with_instruction(question: str) -> str:
    """The question followed by the answer-format instruction (once)."""
    question = question.rstrip()
    return question if question.endswith(INSTRUCTION.strip()) else question + INSTRUCTION


def _final(answer: str) -> str:
    """GSM8K's ``"... #### 42"`` -> ``"42"``; other answers unchanged (stripped)."""
    return answer.split("####")[-1].strip().replace(",", "") if "####" in answer else answer.strip()


def load_dataset_rows(source: str, split: str = "train", n: int | None = None) -> list[dict]:
    """Rows (``id``, ``prompt``, ``answer``) from a local JSONL path or a Hugging Face hub id.

    A record without a string ``question``/``prompt`` or without an ``answer`` is a ``ValueError``
    naming the file, the line (JSONL) or row (hub) and the field."""
    path = Path(source)
    if path.suffix == ".jsonl" or path.exists():
        if not path.is_file():
            raise ValueError(f"math task_source {source!r}: no such file")
        records = _read_jsonl(path)
    else:
        import datasets  # optional dependency (the "data" extra)

        config = "main" if source.rstrip("/").endswith("gsm8k") else None
        records = [(f"{source} ({split}) row {i}", rec)
                   for i, rec in enumerate(datasets.load_dataset(source, config, split=split))]
    rows = []
    for i, (where, rec) in enumerate(records[:n] if n is not None else records):
        question = "question" if "question" in rec else "prompt"
        try:
            if question not in rec:
                raise ValueError("field `question` (or `prompt`) is missing")
            check_field(rec, question, str)
            if rec.get("answer") is None:
                raise ValueError("field `answer` is missing" if "answer" not in rec else "field `answer` is null")
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
        rows.append({"id": f"math-{path.stem if path.exists() else source}-{split}-{i}",
                     "prompt": with_instruction(rec[question]), "answer": _final(str(rec["answer"]))})
    return rows


def _read_jsonl(path: Path) -> list[tuple[str, dict]]:
    """``(where, record)`` for each non-blank line, ``where`` naming the file and line."""
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path} line {number}"
            try:
                record = json.loads(line)
            except ValueError as error:
                raise ValueError(f"{where}: not valid JSON ({error})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{where}: a JSON object with `question` and `answer` fields was expected")
            records.append((where, record))
    return records


def check_row(row: dict) -> None:
    """A row's task column: ``answer``, a string (``validate_rows``)."""
    check_field(row, "answer", str)


def _synthetic(rng: random.Random, hard: bool) -> tuple[str, str]:
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    a, b, c = (rng.randint(10, 99), rng.randint(2, 9), rng.randint(2, 30)) if hard else \
        (rng.randint(2, 20), rng.randint(2, 5), rng.randint(1, 9))
    kind = rng.randrange(3)
    if kind == 0:
        return f"{name} has {a} {item} and buys {b} bags of {c} {item} each. How many {item} now?", str(a + b * c)
    if kind == 1:
        c = 1 + c % (b - 1)  # fewer left over than a box holds
        total = a * b + c
        return (f"{name} packs {total} {item} into boxes of {b} and has {c} left over. "
                f"How many boxes are full?", str(a))
    c = 1 + c % (a - 1)  # gives away fewer than it has
    return f"{name} has {a} {item}, gives away {c}, then doubles the rest. How many {item}?", str(2 * (a - c))


def make_dataset(split: str, n: int, seed: int = 0, source: str | None = None) -> list[dict]:
    """``n`` rows of ``split``. With ``source=None``: local synthetic word problems ("ood" uses
    bigger numbers; train/test come from disjoint seeds). Otherwise ``load_dataset_rows(source)``
    with split "ood" mapped to "test", shuffled with ``seed``."""
    check_split(split, SPLITS)
    if source is not None:
        rows = load_dataset_rows(source, "test" if split == "ood" else split)
        if Path(source).exists():  # one file serves every split: hold out a fixed share of questions
            test = _file_test_prompts([r["prompt"] for r in rows])
            rows = [r for r in rows if (r["prompt"] in test) == (split != "train")]
        random.Random(seed).shuffle(rows)
        return rows[:n]
    rng = random.Random(f"math-{split}-{seed}")
    rows, seen = [], set()
    while len(rows) < n:
        question, answer = _synthetic(rng, hard=split == "ood")
        if question in seen or (split != "ood" and _synthetic_split(question) != split):
            continue
        seen.add(question)
        rows.append({"id": f"math-synthetic-{split}-{len(rows)}",
                     "prompt": with_instruction(question), "answer": answer})
    return rows


def _file_test_prompts(prompts: list[str]) -> set[str]:
    """The held-out questions of a file: the ``FILE_TEST_FRACTION`` (at least one) with the smallest hash."""
    distinct = sorted(set(prompts), key=lambda p: hashlib.sha256(p.encode()).hexdigest())
    return set(distinct[:max(1, round(FILE_TEST_FRACTION * len(distinct)))])


def _synthetic_split(question: str) -> str:
    return "test" if sum(map(ord, question)) % 5 == 0 else "train"


def _boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}``, matching nested braces in one pass."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1:j].strip()
    return None


def extract_answer(completion: str) -> str | None:
    """The final answer of a completion (linear time).

    >>> extract_answer("so \\\\boxed{\\\\frac{1}{2}} done"), extract_answer("work\\n#### 1,234")
    ('\\\\frac{1}{2}', '1234')
    """
    if not isinstance(completion, str):
        return None
    start = completion.find("<answer>")
    if start >= 0 and completion.find("</answer>", start) >= 0:
        return completion[start + 8:completion.find("</answer>", start)].strip()
    boxed = _boxed(completion)
    if boxed is not None:
        return boxed
    if "####" in completion:
        return completion.rsplit("####", 1)[1].split("\n", 1)[0].strip().replace(",", "")
    marker = completion.lower().rfind("the answer is")
    if marker >= 0:
        return completion[marker + len("the answer is"):].split("\n", 1)[0].strip().rstrip(".").strip()
    lines = completion.strip().split("\n")
    return lines[-1].strip() if lines and lines[-1].strip() else None


def _normalize(text: str) -> str:
    text = text.strip().strip("$").replace(",", "").replace(" ", "").rstrip(".")
    try:
        value = float(text)
        return str(int(value)) if value.is_integer() else repr(round(value, 6))
    except ValueError:
        return text.lower()


def is_equivalent(pred: str | None, gold: str) -> bool:
    """Answer equivalence: ``math_verify`` if installed, else numbers/normalized strings.

    >>> is_equivalent("1,000", "1000"), is_equivalent("12.0", "12"), is_equivalent("7", "8")
    (True, True, False)
    """
    if pred is None:
        return False
    if _normalize(pred) == _normalize(gold):
        return True
    if _as_number(pred) is not None and _as_number(gold) is not None:  # fast path: plain numbers
        return abs(_as_number(pred) - _as_number(gold)) <= 1e-9 * max(1.0, abs(_as_number(gold)))
    if len(pred) > 200 or not any(ch.isdigit() for ch in pred):  # junk: not worth a symbolic parse
        return False
    try:
        from math_verify import parse, verify
    except ImportError:
        return False
    try:
        return bool(verify(parse(f"${gold}$"), parse(f"${pred}$")))
    except Exception:  # math_verify can raise on odd LaTeX; that is simply not equivalent
        return False


def _as_number(text: str) -> float | None:
    try:
        return float(_normalize(text))
    except (ValueError, OverflowError):
        return None


def solution_key(completion: str) -> str | None:
    """Normalized final answer."""
    answer = extract_answer(completion)
    return None if answer is None else _normalize(answer)


def reward(prompts: list[str], completions: list[str], answer: list, **_) -> list[float]:
    """TRL-style 0/1 reward: 1.0 when the extracted final answer equals the gold answer.

    >>> reward(prompts=["q", "q"], completions=["... so \\\\boxed{42}", "The answer is 41."], answer=["42", "42"])
    [1.0, 0.0]
    """
    return [float(is_equivalent(extract_answer(c), str(a))) for c, a in zip(completions, answer)]


def sft_examples(rows: list[dict], per_problem: int, seed: int) -> list[tuple[str, str]]:
    """(prompt, ``\\boxed{answer}``) pairs; a final answer has one form, so one pair per row."""
    return [(row["prompt"], f"\\boxed{{{row['answer']}}}") for row in rows]
