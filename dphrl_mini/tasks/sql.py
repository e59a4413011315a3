"""Text-to-SQL over small generated SQLite databases, scored by sandboxed execution match.

A verifiable task with many correct answers (DESIGN.md §2): every templated question has many
equivalent queries (``'Paris'=city``, ``city IN ('Paris')``, aliases, ``COUNT(*)``/``COUNT(id)``,
``NOT x<=k``, ``BETWEEN`` ...), all checked to match the gold query by execution (tests).

* **Databases.** ``make_databases`` writes one database per schema family (shop, school,
  library, and the held-out hospital, which RL never sees), tens of rows per table, deterministic
  from the seed, into a cache folder (``$DPHRL_CACHE/sql`` or ``~/.cache/dphrl_mini/sql``); nothing
  is committed. ``make_dataset`` always uses ``DB_SEED``.
* **Prompt.** ``"shop | customers with city Paris:"`` (< 80 printable ASCII characters); the
  completion is one SQL query (< 90 characters).
* **Splits.** Questions of shop/school/library go to "train" or "test" by a fixed hash of the
  question (disjoint whatever the seed); "ood" is half of the hospital schema's questions, which RL
  never trains on; the other half is held apart by a fixed hash for a warm start
  (``ood_pretrain_rows``), as the papers' base models saw their out-of-domain SQL and math in
  pretraining (the built-in ``tiny`` has seen that half). "shift" (a shift in
  the prompt's form) is the "test" draw (the same problems when as many are asked for) with each
  question reworded in words no training prompt uses (``reword``: "customers where age above 30"
  for "customers with age over 30"); its gold query is unchanged.
* **Execution match**: the predicted and gold results are compared as multisets of rows, or as
  ordered lists when the gold query has ``ORDER BY``; numbers are normalized (integral floats ->
  int, other floats rounded to 6 places). Any failure is a plain ``False``.
* **Sandbox** (``run_query``), layered: one statement starting with SELECT/WITH, at most
  ``MAX_SQL_CHARS``, no comments or NUL; the file opened read-only and immutable via a URI;
  ``PRAGMA query_only``; extension loading off; ``setlimit`` caps (1 MB strings/blobs, no ATTACH,
  shallow expressions); an authorizer that allows only SELECT, column reads and a safe-function
  allow-list (no ``load_extension``, recursive CTEs, PRAGMA, ATTACH or writes); a progress-handler
  deadline (1 s default); at most ``max_rows`` rows fetched; a memory cap: SQLite's heap is limited
  to ``HEAP_LIMIT_BYTES`` (``PRAGMA hard_heap_limit``, which holds for every SQLite connection of
  the process) with a small page cache, so a query that would build gigabytes of sort data (big
  ``replace()`` strings over a cross join) fails as "out of memory" within a bounded footprint.
  A query that is not valid UTF-8 (e.g. a lone surrogate in model output) is refused.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import random
import re
import sqlite3
import time
from functools import lru_cache
from pathlib import Path

from .answers import extract_answer
from .rows import check_field, check_split

NAME = "sql"
DB_SEED = 0
DB_VERSION = 1
MAX_QUERY_CHARS = 90
TEST_FRACTION = 0.2
OOD_PRETRAIN_FRACTION = 0.5
"""Share of the held-out schema's questions held apart from "ood" for a warm start (``ood_pretrain_rows``)."""
IN_FAMILIES = ("shop", "school", "library")
OOD_FAMILIES = ("hospital",)
SPLITS = ("train", "test", "ood", "shift")
_REWORDING = ((" with ", " where "), (" over ", " above "), (" under ", " below "), (" from ", " between "),
              (" to ", " and "))
_WORDS = ("Ada Bo Cy Di Ed Flo Gus Hal Ivy Jo Kai Lu Max Ned Oli Pia Quin Rex Sue Tom Uma Vic Wes "
          "Xia Yan Zoe Ari Ben Cal Dov Eli Fay Gil Hana Ira Jay Kim Leo Mia Nia").split()

# family -> (two entity tables (name, text column, its values, number column, its range, rows),
#            link table (name, fk to the first entity, fk to the second, number column, range, rows))
FAMILIES = {
    "shop": ((("customers", "city", ("Paris", "Rome", "Oslo", "Lima", "Cairo"), "age", (18, 70), 30),
              ("products", "category", ("toys", "books", "food", "tools"), "price", (1, 90), 24)),
             ("orders", "customer_id", "product_id", "qty", (1, 9), 60)),
    "school": ((("students", "city", ("Paris", "Rome", "Oslo", "Lima", "Cairo"), "age", (16, 30), 30),
                ("courses", "dept", ("math", "art", "law", "bio"), "credits", (1, 10), 16)),
               ("grades", "student_id", "course_id", "score", (40, 100), 70)),
    "library": ((("authors", "country", ("Peru", "Chad", "Iran", "Cuba", "Fiji"), "born", (1900, 1990), 24),
                 ("books", "genre", ("poetry", "crime", "drama", "horror"), "pages", (50, 500), 36)),
                ("loans", "author_id", "book_id", "days", (1, 30), 60)),
    "hospital": ((("patients", "city", ("Paris", "Rome", "Oslo", "Lima", "Cairo"), "age", (1, 95), 30),
                  ("doctors", "specialty", ("heart", "skin", "eyes", "bones"), "salary", (50, 200), 16)),
                 ("visits", "patient_id", "doctor_id", "cost", (10, 300), 60)),
}


def cache_dir() -> Path:
    """``$DPHRL_CACHE/sql`` if set, else ``~/.cache/dphrl_mini/sql``."""
    root = os.environ.get("DPHRL_CACHE") or Path.home() / ".cache" / "dphrl_mini"
    return Path(root) / "sql"


def _build(path: Path, family: str, seed: int, schema: tuple | None = None) -> None:
    """Write one family's database (``schema``: its ``FAMILIES`` entry by default) to ``path``."""
    rng = random.Random(f"{family}-{seed}")
    entities, (link, fk_a, fk_b, num, (lo, hi), n_links) = schema or FAMILIES[family]
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.unlink(missing_ok=True)
    con = sqlite3.connect(tmp)
    sizes = []
    for table, text, values, number, (a, b), rows in entities:
        con.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, name TEXT UNIQUE, {text} TEXT, {number} INTEGER)")
        names = rng.sample(_WORDS, rows)
        con.executemany(f"INSERT INTO {table} VALUES (?, ?, ?, ?)",
                        [(i + 1, names[i], rng.choice(values), rng.randint(a, b)) for i in range(rows)])
        sizes.append(rows)
    con.execute(f"CREATE TABLE {link} (id INTEGER PRIMARY KEY, {fk_a} INTEGER, {fk_b} INTEGER, {num} INTEGER)")
    con.executemany(f"INSERT INTO {link} VALUES (?, ?, ?, ?)",
                    [(i + 1, rng.randint(1, sizes[0]), rng.randint(1, sizes[1]), rng.randint(lo, hi))
                     for i in range(n_links)])
    con.commit()
    con.close()
    os.replace(tmp, path)  # atomic: concurrent builders write the same bytes


def make_databases(out_dir: str | Path | None = None, seed: int = 0) -> dict[str, str]:
    """Create (once) one SQLite file per schema family; returns ``{family: path}``."""
    out = Path(out_dir) if out_dir is not None else cache_dir()
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for family in FAMILIES:
        path = out / f"{family}-v{DB_VERSION}-seed{seed}.sqlite"
        if not path.exists():
            _build(path, family, seed)
        paths[family] = str(path)
    return paths


def _templates(family: str, schema: tuple | None = None):
    """Yield (question, [equivalent queries]) for one family (``schema``: its ``FAMILIES`` entry by
    default); the first query is the gold one."""
    entities, (link, fk_a, _, lnum, (llo, lhi), _) = schema or FAMILIES[family]
    for e, (t, c, values, x, (lo, hi), _) in enumerate(entities):
        sel = [("name", t), (f"{t}.name", t), ("a.name", f"{t} a"), ("a.name", f"{t} AS a")]
        cols = lambda s, col: f"a.{col}" if s[0].startswith("a.") else col  # noqa: E731
        fine, coarse = range(lo + 1, hi, max(1, (hi - lo) // 80)), range(lo + 1, hi, max(1, (hi - lo) // 16))
        for v in values:
            eq = lambda s: [f"{cols(s, c)}='{v}'", f"'{v}'={cols(s, c)}", f"{cols(s, c)} IN ('{v}')",  # noqa: E731
                            f"{cols(s, c)} LIKE '{v}'", f"NOT {cols(s, c)}<>'{v}'"]
            yield (f"{t} with {c} {v}", [f"SELECT {s} FROM {f} WHERE {p}" for s, f in sel for p in eq((s, f))])
            counts = [f"SELECT COUNT({k}) FROM {t} WHERE {p}" for k in ("*", "id", "name", "1") for p in eq(sel[0])]
            yield (f"count {t} with {c} {v}", counts + [f"SELECT SUM({c}='{v}') FROM {t}"])
            yield (f"max {x} of {t} with {c} {v}", [f"SELECT MAX({x}) FROM {t} WHERE {p}" for p in eq(sel[0])]
                   + [f"SELECT {x} FROM {t} WHERE {p} ORDER BY {x} DESC LIMIT 1" for p in eq(sel[0])])
            yield (f"average {x} of {t} with {c} {v}",
                   [f"SELECT {agg} FROM {t} WHERE {p}" for p in eq(sel[0])
                    for agg in (f"AVG({x})", f"SUM({x})*1.0/COUNT(*)", f"TOTAL({x})/COUNT({x})")])
            for k in coarse:
                for word, q in (("over", (f"{x}>{k}", f"{k}<{x}")), ("under", (f"{x}<{k}", f"{k}>{x}"))):
                    yield (f"{t} with {c} {v} and {x} {word} {k}",
                           [f"SELECT name FROM {t} WHERE {p} AND {r}" for p in eq(sel[0]) for r in q]
                           + [f"SELECT name FROM {t} WHERE {r} AND {p}" for p in eq(sel[0]) for r in q])
        for k in fine:
            gt = lambda s: [f"{cols(s, x)}>{k}", f"{k}<{cols(s, x)}", f"NOT {cols(s, x)}<={k}",  # noqa: E731
                            f"{cols(s, x)}>={k + 1}", f"{cols(s, x)} BETWEEN {k + 1} AND {hi + 1000}"]
            lt = lambda s: [f"{cols(s, x)}<{k}", f"{k}>{cols(s, x)}", f"NOT {cols(s, x)}>={k}",  # noqa: E731
                            f"{cols(s, x)}<={k - 1}", f"{cols(s, x)} BETWEEN {lo - 1000} AND {k - 1}"]
            yield (f"{t} with {x} over {k}", [f"SELECT {s} FROM {f} WHERE {p}" for s, f in sel for p in gt((s, f))])
            yield (f"{t} with {x} under {k}", [f"SELECT {s} FROM {f} WHERE {p}" for s, f in sel for p in lt((s, f))])
            yield (f"count {t} with {x} over {k}",
                   [f"SELECT COUNT({n}) FROM {t} WHERE {p}" for n in ("*", "id", "name", "1") for p in gt(sel[0])])
        for a, b in itertools.combinations(coarse, 2):
            yield (f"{t} with {x} from {a} to {b}",
                   [f"SELECT name FROM {t} WHERE {p}" for p in (
                       f"{x} BETWEEN {a} AND {b}", f"{x}>={a} AND {x}<={b}", f"{a}<={x} AND {x}<={b}",
                       f"{x}<={b} AND {x}>={a}", f"NOT ({x}<{a} OR {x}>{b})", f"{x}>{a - 1} AND {x}<{b + 1}")])
        if e == 0:
            for k in range(llo + 1, lhi, max(1, (lhi - llo) // 15)):
                yield (f"{t} with {link} {lnum} over {k}",
                       [f"SELECT DISTINCT {a}.name FROM {t} {a} JOIN {link} {b} ON {b}.{fk_a}={a}.id WHERE {b}.{lnum}>{k}"
                        for a, b in (("a", "b"), ("x", "y"))]
                       + [f"SELECT DISTINCT {a}.name FROM {link} {b} JOIN {t} {a} ON {a}.id={b}.{fk_a} WHERE {k}<{b}.{lnum}"
                          for a, b in (("a", "b"), ("x", "y"))]
                       + [f"SELECT name FROM {t} WHERE id IN (SELECT {fk_a} FROM {link} WHERE {q})"
                          for q in (f"{lnum}>{k}", f"{k}<{lnum}", f"NOT {lnum}<={k}")])


class SandboxError(Exception):
    """The query was refused or stopped by the sandbox."""


MAX_SQL_CHARS = 2000
HEAP_LIMIT_BYTES = 64 << 20
"""SQLite's hard heap limit, process-wide: a sandboxed query that needs more fails with "out of memory"."""
_SAFE_FUNCTIONS = frozenset("""abs avg count group_concat max min sum total coalesce ifnull iif nullif length
    lower upper trim ltrim rtrim substr substring replace instr round cast like glob typeof
    char unicode hex quote date time datetime julianday strftime""".split())  # no printf: one call can run long
_ALLOWED = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ}
_LIMITS = ((sqlite3.SQLITE_LIMIT_LENGTH, 1_000_000), (sqlite3.SQLITE_LIMIT_SQL_LENGTH, MAX_SQL_CHARS),
           (sqlite3.SQLITE_LIMIT_ATTACHED, 0), (sqlite3.SQLITE_LIMIT_EXPR_DEPTH, 100),
           (sqlite3.SQLITE_LIMIT_COMPOUND_SELECT, 10), (sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 0))


def _authorizer(action, arg1, arg2, db_name, trigger):
    if action in _ALLOWED:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() in _SAFE_FUNCTIONS:
        return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


def _normalize(value):
    if isinstance(value, float):
        return int(value) if value.is_integer() else round(value, 6)
    return value


def run_query(db_path: str, sql: str, timeout_s: float = 1.0, max_rows: int = 10_000, ordered: bool = False):
    """Run one SELECT in the sandbox; rows as a sorted (or, if ``ordered``, original-order) tuple."""
    if not isinstance(sql, str) or len(sql) > MAX_SQL_CHARS or "\x00" in sql or "--" in sql or "/*" in sql:
        raise SandboxError("refused")
    try:
        sql.encode("utf-8")
    except UnicodeEncodeError:
        raise SandboxError("not valid UTF-8") from None
    sql = sql.strip().rstrip(";").rstrip()
    if not (sql[:6].lower() == "select" or sql[:4].lower() == "with"):
        raise SandboxError("not a SELECT")
    if not sqlite3.complete_statement(sql + ";"):
        raise SandboxError("incomplete")
    con = sqlite3.connect(Path(db_path).resolve().as_uri() + "?mode=ro&immutable=1", uri=True,
                          isolation_level=None, check_same_thread=False)
    try:
        try:
            con.enable_load_extension(False)
        except AttributeError:  # this Python's sqlite3 was built without extension loading at all
            pass
        for limit, value in _LIMITS:
            con.setlimit(limit, value)
        con.execute("PRAGMA query_only=ON")
        con.execute("PRAGMA temp_store=MEMORY")
        con.execute(f"PRAGMA hard_heap_limit={HEAP_LIMIT_BYTES}")  # only ever lowers the limit
        con.execute("PRAGMA cache_size=-2000")  # 2 MB of page cache
        con.set_authorizer(_authorizer)
        deadline = time.monotonic() + timeout_s
        con.set_progress_handler(lambda: time.monotonic() > deadline, 1000)
        try:
            cursor = con.execute(sql)  # raises on a second statement
            rows = cursor.fetchmany(max_rows + 1)
        except MemoryError:
            raise SandboxError(f"out of memory (SQLite heap limit {HEAP_LIMIT_BYTES >> 20} MB)") from None
        if len(rows) > max_rows:
            raise SandboxError("too many rows")
    finally:
        con.close()
    rows = [tuple(_normalize(v) for v in row) for row in rows]
    return tuple(rows) if ordered else tuple(sorted(rows, key=repr))


def _split_of(family: str, question: str) -> str:
    digest = hashlib.sha256(f"{family}|{question}".encode()).digest()
    if family in OOD_FAMILIES:
        return "ood-pretrain" if digest[1] < 256 * OOD_PRETRAIN_FRACTION else "ood"
    return "test" if digest[0] < 256 * TEST_FRACTION else "train"


@lru_cache(maxsize=8)
def _problems(split: str, db_dir: str) -> tuple[dict, ...]:
    """Every problem of a split whose gold result is informative (non-empty, not the whole table)."""
    paths = make_databases(db_dir, seed=DB_SEED)
    problems = []
    for family in OOD_FAMILIES if split.startswith("ood") else IN_FAMILIES:
        con = sqlite3.connect(Path(paths[family]).resolve().as_uri() + "?mode=ro", uri=True)
        sizes = {t[0]: t[-1] for t in FAMILIES[family][0]}
        for question, queries in _templates(family):
            if _split_of(family, question) != split:
                continue
            rows = con.execute(queries[0]).fetchall()
            table = question.split(" with ")[0].split(" ")[-1]
            if (not rows or rows[0][0] in (None, 0) or len(rows) == sizes.get(table)
                    or question.startswith("count") and rows[0][0] == sizes[table]):
                continue
            queries = list(dict.fromkeys(q for q in queries if len(q) <= MAX_QUERY_CHARS))
            problems.append({"id": f"sql-{family}-{hashlib.sha256(question.encode()).hexdigest()[:10]}",
                             "prompt": f"{family} | {question}:", "db_path": paths[family],
                             "gold_sql": queries[0], "question": question, "equivalents": tuple(queries)})
        con.close()
    return tuple(problems)


def reword(question: str) -> str:
    """The "shift" split's form of a question: "count customers with age from 20 to 40" ->
    "count customers where age between 20 and 40" (the same query answers both)."""
    for old, new in _REWORDING:
        question = question.replace(old, new)
    return question


def make_dataset(split: str, n: int, seed: int = 0, db_dir: str | Path | None = None) -> list[dict]:
    """``n`` distinct problems of ``split``; rows: ``id``, ``prompt``, ``db_path``, ``gold_sql``, ``question``."""
    check_split(split, SPLITS)
    if split == "shift":
        rows = make_dataset("test", n, seed, db_dir)
        for row in rows:
            question = reword(row["question"])
            row["id"] = row["id"].replace("sql-", "sql-shift-", 1)
            row["prompt"], row["question"] = row["prompt"].replace(row["question"], question, 1), question
        return rows
    return _sample_rows(split, n, seed, db_dir)


def ood_pretrain_rows(n: int, seed: int = 0, db_dir: str | Path | None = None) -> list[dict]:
    """``n`` distinct questions on the held-out schema from the half held apart from "ood" by a fixed
    hash, for a warm start only: a schema a pretrained model has seen and RL never trains on."""
    return _sample_rows("ood-pretrain", n, seed, db_dir)


def _sample_rows(split: str, n: int, seed: int, db_dir: str | Path | None) -> list[dict]:
    """``n`` distinct rows of a split's pool ("ood-pretrain" included), drawn with ``seed``."""
    pool = _problems(split, str(Path(db_dir or cache_dir()).resolve()))
    if n > len(pool):
        raise ValueError(f"sql {split!r} has {len(pool)} problems, asked for {n}")
    return [{k: p[k] for k in ("id", "prompt", "db_path", "gold_sql", "question")}
            for p in random.Random(seed).sample(pool, n)]


def equivalent_queries(row: dict) -> list[str]:
    """Every templated query equivalent to the row's gold query (the gold one first)."""
    db_dir = str(Path(row["db_path"]).resolve().parent)
    wanted = row["id"].replace("sql-shift-", "sql-", 1)  # a "shift" row is a reworded "test" row
    for split in ("train", "test", "ood", "ood-pretrain"):
        for p in _problems(split, db_dir):
            if p["id"] == wanted:
                return list(p["equivalents"])
    raise KeyError(row["id"])


def check_row(row: dict) -> None:
    """A row's task columns: ``db_path`` and ``gold_sql``, both strings (``validate_rows``)."""
    check_field(row, "db_path", str)
    check_field(row, "gold_sql", str)


def copies_question_numbers(query: str, question: str) -> bool:
    """True when every number in ``query`` is written in ``question`` (``price<57`` for "under 57",
    not ``price<=56``); ``COUNT(1)`` and ``*1.0`` are not numbers of the question.

    >>> copies_question_numbers("SELECT name FROM t WHERE x<57", "t with x under 57")
    True
    >>> copies_question_numbers("SELECT name FROM t WHERE x<=56", "t with x under 57")
    False
    """
    literals = re.findall(r"\d+", query.replace("COUNT(1)", "").replace("*1.0", ""))
    return set(literals) <= set(re.findall(r"\d+", question))


def sft_examples(rows: list[dict], per_problem: int, seed: int, copy_numbers_only: bool = False) -> list[tuple[str, str]]:
    """(prompt, completion) pairs: up to ``per_problem`` different equivalent queries per row, at random.

    ``copy_numbers_only`` keeps only queries that copy the question's numbers (``copies_question_numbers``):
    a warm start for a character-level model, which cannot do the ``k+1`` arithmetic of the others.
    """
    rng = random.Random(seed)
    pairs = []
    for row in rows:
        found = equivalent_queries(row)
        if copy_numbers_only:
            found = [q for q in found if copies_question_numbers(q, row["question"])]
        pairs += [(row["prompt"], q) for q in rng.sample(found, min(per_problem, len(found)))]
    return pairs


_RESERVED = frozenset("""select from where and or not between like in is null as on join distinct count sum avg
    max min total order by desc asc limit group having case cast date time name id table index values""".split())
_HELD_OUT = frozenset(w for family in OOD_FAMILIES for w in (family, *re.findall(r"[a-z_]+", repr(FAMILIES[family]))))


def _pseudo_word(rng: random.Random) -> str:
    """A pronounceable made-up word (2-3 consonant-vowel syllables), never an SQL keyword nor a word
    of the held-out family."""
    while True:
        word = "".join(rng.choice("bdfgklmnprstvz") + rng.choice("aeiou") for _ in range(rng.randint(2, 3)))
        if word not in _RESERVED and word + "s" not in _HELD_OUT and word not in _HELD_OUT:
            return word


def random_schema(rng: random.Random) -> tuple[str, tuple]:
    """A made-up schema family (name, ``FAMILIES``-shaped entry) whose table, column and value names
    are fresh pseudo-words: a drill that can only be learned by copying the question's names and
    numbers into the query, as a pretrained LLM does and as the unseen "ood" schema needs."""
    words = set()
    while len(words) < 17:
        words.add(_pseudo_word(rng))
    words = sorted(words)  # a set's order of strings changes between processes; the rng's must not
    rng.shuffle(words)
    family, first, second, text_a, text_b, num_a, num_b, link, link_num, *values = words
    entities = []
    for table, text, number, value_words in ((first, text_a, num_a, values[:4]), (second, text_b, num_b, values[4:])):
        lo = rng.choice((0, 1, 10, 20, 50, 100, 1900))
        values_ = tuple(w.capitalize() if rng.random() < 0.5 else w for w in value_words)
        entities.append((table + "s", text, values_, number, (lo, lo + rng.choice((20, 50, 90, 150, 300, 500))), 30))
    link_table = (link + "s", first + "_id", second + "_id", link_num,
                  (rng.choice((1, 10, 40)), rng.choice((60, 100, 300))), 60)
    return family, (tuple(entities), link_table)


def schema_drill_examples(n_families: int, questions: int, per_problem: int, seed: int,
                          copy_numbers_only: bool = False) -> list[tuple[str, str]]:
    """(prompt, query) pairs over ``n_families`` made-up schemas (``random_schema``): ``questions``
    templated questions each, ``per_problem`` equivalent queries per question. No database is needed:
    the templates' queries are equivalent by construction (the tests run them on databases built from
    drill schemas)."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n_families):
        family, schema = random_schema(rng)
        templates = list(_templates(family, schema))
        for question, queries in rng.sample(templates, min(questions, len(templates))):
            queries = [q for q in queries if len(q) <= MAX_QUERY_CHARS
                       and (not copy_numbers_only or copies_question_numbers(q, question))]
            pairs += [(f"{family} | {question}:", q) for q in rng.sample(queries, min(per_problem, len(queries)))]
    return pairs


def execution_match(db_path: str, predicted_sql: str, gold_sql: str, timeout_s: float = 1.0,
                    max_rows: int = 10_000) -> bool:
    """True iff the sandboxed predicted query returns the gold query's rows; any failure is False.

    >>> db = make_databases()["shop"]
    >>> execution_match(db, "SELECT name FROM customers WHERE 'Rome'=city", "SELECT name FROM customers WHERE city='Rome'")
    True
    >>> execution_match(db, "DROP TABLE customers", "SELECT name FROM customers")
    False
    """
    try:
        gold = _gold_result(db_path, gold_sql, os.stat(db_path).st_mtime_ns)
        return run_query(db_path, predicted_sql, timeout_s, max_rows, ordered=gold[0]) == gold[1]
    except (SandboxError, sqlite3.Error, OSError, ValueError, TypeError, MemoryError, OverflowError):
        return False


@lru_cache(maxsize=4096)
def _gold_result(db_path: str, gold_sql: str, mtime_ns: int) -> tuple[bool, object]:
    ordered = "order by" in " ".join(gold_sql.lower().split())
    return ordered, run_query(db_path, gold_sql, 5.0, 10_000, ordered=ordered)


def solution_key(completion: str) -> str | None:
    """The answer with whitespace collapsed and a trailing ``;`` dropped."""
    answer = extract_answer(completion)
    return None if answer is None else " ".join(answer.rstrip().rstrip(";").split())


def reward(prompts: list[str], completions: list[str], db_path: list, gold_sql: list, **_) -> list[float]:
    """TRL-style 0/1 reward: 1.0 when the extracted query's result matches the gold query's.

    >>> db = make_databases()["shop"]
    >>> reward(prompts=["p", "p"], completions=["SELECT COUNT(id) FROM customers", "SELECT 1"], db_path=[db, db],
    ...        gold_sql=["SELECT COUNT(*) FROM customers"] * 2)
    [1.0, 0.0]
    """
    return [float(execution_match(db, extract_answer(c) or "", g)) for c, db, g in zip(completions, db_path, gold_sql)]
