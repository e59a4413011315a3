"""Countdown: combine the given numbers with + - * / and parentheses to reach a target.

A verifiable task with many correct answers (DESIGN.md §2). A problem is three numbers and a
target; a completion is a bare expression such as ``3*5+7``.

* **Prompt.** ``"3 5 7 -> 22:"`` (numbers ascending, then the target; < 40 printable ASCII
  characters). The completion is the expression with no spaces.
* **Verifier.** ``is_correct`` tokenizes and parses the expression with a small recursive-descent
  parser (never ``eval``) and evaluates it with exact rationals (``fractions.Fraction``). Every
  number must be used exactly once (as a multiset); only integer literals that are among the
  numbers (no leading zeros) are allowed. Departures from "any arithmetic": **no unary minus**
  (``-3+5`` is rejected), at most ``MAX_CHARS`` characters, ``MAX_TOKENS`` tokens and
  ``MAX_DEPTH`` nested parentheses; an intermediate value whose numerator or denominator
  exceeds ``MAX_MAGNITUDE`` is rejected; division by zero is simply wrong.
* **Solutions.** ``solutions`` enumerates every distinct expression string, formatted with the
  fewest parentheses that keep its tree: commuted operands (``5*3+7``) and regroupings
  (``3+(5+7)``) are different solutions; redundant parentheses (``(3*5)+7``) are not.
  ``solution_key`` maps a completion to that same canonical string.
* **Splits.** "train" (~7,500 problems) and "test" (~1,900) draw three numbers from 1..20 and a
  target in 1..100 reached by at least ``MIN_SOLUTIONS`` distinct expressions; a problem (sorted
  numbers, target) belongs to one split by a fixed hash, so train and test never share a problem
  whatever the seed.
* **Difficulty** (``difficulty``), a mix as BIRD has (simple / moderate / challenging): "easy" when
  the target is the sum of the numbers, "moderate" when some solution needs neither parentheses nor
  division (``3*5+7``), "hard" otherwise. "train" and "test" rows are drawn in the fixed proportions
  ``DIFFICULTY_MIX`` (the raw pools are 16% / 67% / 17%), so that a small model both solves some
  prompts almost always (DPH-RL's near-perfect set) and leaves others to explore; every row carries
  its ``difficulty``. "ood" (a shift in difficulty, ~3,500 problems): the same number and target
  ranges, but targets reached by only 1 to ``MIN_SOLUTIONS - 1`` distinct expressions, a kind of
  problem no RL prompt is. These sparse problems are split by a fixed hash into "ood" and a half held
  apart for a warm start (``ood_pretrain_rows``, never RL or evaluation prompts), as the papers' base
  models saw their out-of-domain tasks' kind in pretraining and never in RL; the built-in ``tiny``
  has seen the held-apart half. (Numbers outside 1..20 are no fair shift for the built-in
  character-level model: nothing it was trained on teaches it to use them, so every method scores 0.)
  "shift" (a shift in the prompt's form): "test" problems, drawn as "test" is (the same problems
  when as many are asked for), with their numbers written largest first (``"7 5 3 -> 22:"``), an
  order no training prompt has. The built-in ``tiny`` reaches both (``dphrl_mini/assets/README.md``).
  ``wide_rows`` (not a split: a warm start's extra data, never RL or evaluation prompts) draws problems
  with targets 101-400, whose solutions show the forms most "ood" problems need.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from fractions import Fraction
from functools import lru_cache

from .rows import check_field, check_split
from .answers import extract_answer

NAME = "countdown"
MAX_CHARS = 200
MAX_TOKENS = 100
MAX_DEPTH = 16
MAX_MAGNITUDE = 10**12
MIN_SOLUTIONS = 4
TARGET_RANGE = (1, 100)
WIDE_TARGET_RANGE = (101, 400)
IN_RANGE = range(1, 21)
TEST_FRACTION = 0.2
OOD_PRETRAIN_FRACTION = 0.5
"""Share of the sparse problems held apart from "ood" for a warm start (``ood_pretrain_rows``)."""
DIFFICULTIES = ("easy", "moderate", "hard")
DIFFICULTY_MIX = {"easy": 0.4, "moderate": 0.4, "hard": 0.2}
"""Share of each difficulty in "train", "test" and "shift" rows ("ood" keeps its natural mix)."""
SPLITS = ("train", "test", "ood", "shift")

_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}


class _Invalid(Exception):
    """The expression is malformed, too big, or divides by zero."""


def _tokenize(expression: str) -> list[str]:
    if len(expression) > MAX_CHARS:
        raise _Invalid("too long")
    tokens, i, n = [], 0, len(expression)
    while i < n:
        ch = expression[i]
        if ch == " ":
            i += 1
        elif ch in "+-*/()":
            tokens.append(ch)
            i += 1
        elif "0" <= ch <= "9":
            j = i
            while j < n and "0" <= expression[j] <= "9":
                j += 1
            literal = expression[i:j]
            if len(literal) > 1 and literal[0] == "0":
                raise _Invalid("leading zero")
            tokens.append(literal)
            i = j
        else:
            raise _Invalid(f"bad character {ch!r}")
        if len(tokens) > MAX_TOKENS:
            raise _Invalid("too many tokens")
    return tokens


class _Parser:
    """expr := term (('+'|'-') term)* ; term := factor (('*'|'/') factor)* ; factor := INT | '(' expr ')'."""

    def __init__(self, tokens: list[str]):
        self.tokens, self.pos, self.depth = tokens, 0, 0

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def parse(self):
        tree = self.expr()
        if self.peek() is not None:
            raise _Invalid("trailing tokens")
        return tree

    def expr(self):
        tree = self.term()
        while self.peek() in ("+", "-"):
            op = self.tokens[self.pos]
            self.pos += 1
            tree = (op, tree, self.term())
        return tree

    def term(self):
        tree = self.factor()
        while self.peek() in ("*", "/"):
            op = self.tokens[self.pos]
            self.pos += 1
            tree = (op, tree, self.factor())
        return tree

    def factor(self):
        tok = self.peek()
        if tok is None:
            raise _Invalid("unexpected end")
        self.pos += 1
        if tok == "(":
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise _Invalid("nested too deeply")
            tree = self.expr()
            if self.peek() != ")":
                raise _Invalid("missing )")
            self.pos += 1
            self.depth -= 1
            return tree
        if tok.isdigit():
            return int(tok)
        raise _Invalid(f"unexpected {tok!r}")  # includes unary minus


def parse(expression: str):
    """Parse to a tree: an ``int`` leaf or ``(op, left, right)``. Raises ``ValueError`` if invalid."""
    try:
        return _Parser(_tokenize(expression)).parse()
    except _Invalid as err:
        raise ValueError(str(err)) from None


def _evaluate(tree) -> Fraction:
    if isinstance(tree, int):
        return Fraction(tree)
    op, left, right = tree
    a, b = _evaluate(left), _evaluate(right)
    if op == "+":
        value = a + b
    elif op == "-":
        value = a - b
    elif op == "*":
        value = a * b
    elif b == 0:
        raise _Invalid("division by zero")
    else:
        value = a / b
    if abs(value.numerator) > MAX_MAGNITUDE or value.denominator > MAX_MAGNITUDE:
        raise _Invalid("value too large")
    return value


def _leaves(tree) -> list[int]:
    return [tree] if isinstance(tree, int) else _leaves(tree[1]) + _leaves(tree[2])


def _format(tree) -> tuple[str, int]:
    """Canonical string with the fewest parentheses that keep the tree; returns (text, precedence)."""
    if isinstance(tree, int):
        return str(tree), 3
    op, left, right = tree
    (ls, lp), (rs, rp) = _format(left), _format(right)
    return _join(op, ls, lp, rs, rp), _PREC[op]


def _join(op: str, ls: str, lp: int, rs: str, rp: int) -> str:
    p = _PREC[op]
    ls = f"({ls})" if lp < p else ls
    rs = f"({rs})" if rp <= p else rs  # a right operand of equal precedence is a different tree
    return ls + op + rs


def is_correct(numbers: list[int], target: int, expression: str) -> bool:
    """True iff ``expression`` uses each number exactly once and equals ``target`` exactly.

    >>> is_correct([3, 5, 7], 22, "3*5+7"), is_correct([3, 5, 7], 22, "3*7+5")
    (True, False)
    >>> is_correct([3, 5, 7], 22, "__import__('os')"), is_correct([2, 2, 4], 0, "4/(2-2)")
    (False, False)
    """
    if not isinstance(expression, str):
        return False
    try:
        tree = _Parser(_tokenize(expression)).parse()
        if sorted(_leaves(tree)) != sorted(int(x) for x in numbers):
            return False
        return _evaluate(tree) == Fraction(int(target))
    except (_Invalid, RecursionError, ValueError, TypeError):
        return False


def solution_key(completion: str) -> str | None:
    """Canonical expression (``"(3*5)+7"`` -> ``"3*5+7"``), or the answer without spaces if it does not parse."""
    answer = extract_answer(completion)
    if answer is None:
        return None
    try:
        return _format(parse(answer))[0]
    except (ValueError, RecursionError):
        return answer.replace(" ", "")


def reward(prompts: list[str], completions: list[str], numbers: list, target: list, **_) -> list[float]:
    """TRL-style 0/1 reward: 1.0 when the extracted expression is correct.

    >>> reward(prompts=["3 5 7 -> 22:"] * 2, completions=["7+3*5", "3+5+7"], numbers=[[3, 5, 7]] * 2, target=[22, 22])
    [1.0, 0.0]
    """
    return [float(is_correct(nums, t, extract_answer(c) or "")) for c, nums, t in zip(completions, numbers, target)]


@lru_cache(maxsize=4096)
def _expressions(numbers: tuple[int, ...]) -> dict[str, tuple[Fraction, int]]:
    """Every canonical expression over the sorted multiset ``numbers``: string -> (value, precedence)."""
    if len(numbers) == 1:
        return {str(numbers[0]): (Fraction(numbers[0]), 3)}
    out: dict[str, tuple[Fraction, int]] = {}
    n = len(numbers)
    for mask in range(1, 2**n - 1):
        left = tuple(sorted(numbers[i] for i in range(n) if mask >> i & 1))
        right = tuple(sorted(numbers[i] for i in range(n) if not mask >> i & 1))
        for (ls, (lv, lp)), (rs, (rv, rp)) in itertools.product(_expressions(left).items(), _expressions(right).items()):
            for op, value in (("+", lv + rv), ("-", lv - rv), ("*", lv * rv), ("/", lv / rv if rv else None)):
                if value is not None:
                    out.setdefault(_join(op, ls, lp, rs, rp), (value, _PREC[op]))
    return out


def solutions(numbers: list[int], target: int, max_solutions: int | None = None) -> list[str]:
    """All distinct canonical expressions that reach ``target`` (sorted), at most ``max_solutions``.

    >>> solutions([1, 2, 3], 9)
    ['(1+2)*3', '(2+1)*3', '3*(1+2)', '3*(2+1)']
    """
    found = sorted(s for s, (v, _) in _expressions(tuple(sorted(numbers))).items() if v == target)
    return found[:max_solutions] if max_solutions is not None else found


def difficulty(numbers: list[int] | tuple[int, ...], target: int) -> str:
    """"easy" (target = sum of the numbers), "moderate" (some solution has no parentheses and no
    division) or "hard".

    >>> difficulty([3, 5, 7], 15), difficulty([3, 5, 7], 22), difficulty([3, 5, 7], 56)
    ('easy', 'moderate', 'hard')
    """
    if sum(numbers) == target:
        return "easy"
    if any("(" not in s and "/" not in s for s in solutions(list(numbers), target)):
        return "moderate"
    return "hard"


def _split_of(numbers: tuple[int, ...], target: int, sparse: bool = False) -> str:
    """A problem's split by a fixed hash: "train" or "test" if it has many solutions, else "ood" or
    "ood-pretrain" (the sparse problems held apart for a warm start, ``ood_pretrain_rows``)."""
    digest = hashlib.sha256(f"{numbers}->{target}".encode()).digest()
    if sparse:
        return "ood-pretrain" if digest[1] < 256 * OOD_PRETRAIN_FRACTION else "ood"
    return "test" if digest[0] < 256 * TEST_FRACTION else "train"


@lru_cache(maxsize=4)
def _problems(split: str) -> tuple[tuple[tuple[int, ...], int, int, str], ...]:
    """Every (sorted numbers, target, number of solutions, difficulty) of a split, in a fixed order.
    "wide": every problem with a target in ``WIDE_TARGET_RANGE`` (``wide_rows``)."""
    lo, hi = WIDE_TARGET_RANGE if split == "wide" else TARGET_RANGE
    problems = []
    for nums in itertools.combinations_with_replacement(IN_RANGE, 3):
        counts: dict[int, int] = {}
        for value, _ in _expressions(nums).values():
            if value.denominator == 1 and lo <= value <= hi:
                counts[int(value)] = counts.get(int(value), 0) + 1
        for target, count in sorted(counts.items()):
            sparse = count < MIN_SOLUTIONS  # the ood split; train/test need many correct answers
            if split == "wide" or _split_of(nums, target, sparse) == split:
                problems.append((nums, target, count, difficulty(nums, target)))
    return tuple(problems)


def format_prompt(numbers: list[int], target: int) -> str:
    """``[3, 5, 7], 22`` -> ``"3 5 7 -> 22:"``."""
    return f"{' '.join(map(str, numbers))} -> {target}:"


def make_dataset(split: str, n: int, seed: int = 0, mix: bool = True) -> list[dict]:
    """``n`` distinct problems of ``split`` ("train", "test", "ood" or "shift"), drawn with ``seed``.

    "train" and "test" follow ``DIFFICULTY_MIX`` (rounded, the remainder going to "moderate"), in
    a seeded random order; ``mix=False`` draws from the whole split (its natural mix; the tiny
    model's warm start). "shift" is the "test" draw with the numbers written largest first.
    Rows: ``id``, ``prompt``, ``numbers`` (in the prompt's order), ``target``, ``difficulty``.
    """
    check_split(split, SPLITS)
    if split == "shift":
        rows = make_dataset("test", n, seed, mix)
        for row in rows:
            row["numbers"] = sorted(row["numbers"], reverse=True)
            row["id"] = row["id"].replace("countdown-test-", "countdown-shift-", 1)
            row["prompt"] = format_prompt(row["numbers"], row["target"])
        return rows
    pool, rng = _problems(split), random.Random(seed)
    if split == "ood" or not mix:
        if n > len(pool):
            raise ValueError(f"countdown {split!r} has {len(pool)} problems, asked for {n}")
        chosen = rng.sample(pool, n)
    else:
        quota = {d: round(n * DIFFICULTY_MIX[d]) for d in ("easy", "hard")}
        quota["moderate"] = n - sum(quota.values())
        chosen = []
        for d in DIFFICULTIES:
            tier = [p for p in pool if p[3] == d]
            if quota[d] > len(tier):
                raise ValueError(f"countdown {split!r} has {len(tier)} {d} problems, asked for {quota[d]} "
                                 f"({DIFFICULTY_MIX[d]:.0%} of {n}); ask for fewer rows")
            chosen += rng.sample(tier, quota[d])
        rng.shuffle(chosen)
    return _rows(split, chosen)


def wide_rows(n: int, seed: int = 0) -> list[dict]:
    """``n`` distinct problems with targets in ``WIDE_TARGET_RANGE`` (101-400, numbers 1-20, any number of
    solutions), for a warm start only: never a split for RL or evaluation. Their solutions are rich in
    the forms ``n*n-n`` and ``(n-n)*n`` (35%, against 2.5% in "train"), which most "ood" problems need."""
    return _sample_rows("wide", n, seed, f"problems with targets {WIDE_TARGET_RANGE}")


def ood_pretrain_rows(n: int, seed: int = 0) -> list[dict]:
    """``n`` distinct sparse problems (1 to ``MIN_SOLUTIONS - 1`` solutions) of the half held apart from
    "ood" by a fixed hash, for a warm start only: the "ood" split's kind of problem, which a pretrained
    model has seen and RL never trains on, as the papers' out-of-domain sets are to their base models."""
    return _sample_rows("ood-pretrain", n, seed, "held-apart sparse problems")


def _sample_rows(pool_name: str, n: int, seed: int, what: str) -> list[dict]:
    """``n`` distinct rows drawn with ``seed`` from a warm-start-only pool ("wide", "ood-pretrain")."""
    pool = _problems(pool_name)
    if n > len(pool):
        raise ValueError(f"countdown has {len(pool)} {what}, asked for {n}")
    return _rows(pool_name, random.Random(seed).sample(pool, n))


def _rows(split: str, chosen) -> list[dict]:
    return [{"id": f"countdown-{split}-{'_'.join(map(str, nums))}-{target}", "prompt": format_prompt(list(nums), target),
             "numbers": list(nums), "target": target, "difficulty": level} for nums, target, _, level in chosen]


def check_row(row: dict) -> None:
    """A row's task columns: ``numbers`` a list of integers and ``target`` an integer (``validate_rows``)."""
    check_field(row, "numbers", (list, tuple))
    if not row["numbers"] or any(isinstance(x, bool) or not isinstance(x, int) for x in row["numbers"]):
        raise ValueError(f"field `numbers`={row['numbers']!r} must be a non-empty list of integers")
    check_field(row, "target", (int, float))
    if isinstance(row["target"], float) and not row["target"].is_integer():  # inf and nan included
        raise ValueError(f"field `target`={row['target']!r} must be an integer")


def sft_examples(rows: list[dict], per_problem: int, seed: int) -> list[tuple[str, str]]:
    """(prompt, completion) pairs: up to ``per_problem`` different solutions per row, uniformly at random."""
    rng = random.Random(seed)
    pairs = []
    for row in rows:
        found = solutions(row["numbers"], row["target"])
        pairs += [(row["prompt"], s) for s in rng.sample(found, min(per_problem, len(found)))]
    return pairs
