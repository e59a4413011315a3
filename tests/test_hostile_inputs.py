"""Hostile inputs: the countdown parser and the SQL sandbox never raise, never hang, never write.

Property-based (hypothesis) fuzzing plus hand-written attacks. ``TRIED`` counts every hostile
input evaluated; run with ``-s`` to print the totals.
"""

import hashlib
import time
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dphrl_mini.tasks import countdown as cd
from dphrl_mini.tasks import sql

TRIED = {"countdown": 0, "sql": 0}
FAST = settings(database=None, deadline=2000, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


# ---------------------------------------------------------------- countdown parser
def _check_parser(numbers, target, text):
    TRIED["countdown"] += 1
    start = time.perf_counter()
    out = cd.is_correct(numbers, target, text)
    cd.solution_key(text)
    assert isinstance(out, bool) and time.perf_counter() - start < 0.5
    return out


@settings(FAST, max_examples=300)
@given(st.text(alphabet=st.sampled_from(list("0123456789+-*/() .^xe\n\t")), max_size=300))
def test_parser_random_strings_never_raise(text):
    _check_parser([1, 2, 3], 6, text)


@settings(FAST, max_examples=100)
@given(st.text(max_size=400))
def test_parser_arbitrary_unicode_never_raises(text):
    assert not _check_parser([1, 2, 3], 6, text) or text.strip()


def _tree(leaves):
    """Random expression trees over given leaf values -> (text with random parentheses, Fraction or None)."""
    return st.recursive(
        leaves.map(lambda v: (str(v), Fraction(v))),
        lambda sub: st.tuples(sub, st.sampled_from("+-*/"), sub, st.booleans()).map(_combine),
        max_leaves=6)


def _combine(args):
    (ls, lv), op, (rs, rv), paren = args
    value = None
    if lv is not None and rv is not None:  # reference evaluator: Fraction arithmetic, written independently
        value = {"+": lambda: lv + rv, "-": lambda: lv - rv, "*": lambda: lv * rv,
                 "/": lambda: lv / rv if rv != 0 else None}[op]()
    text = f"({ls}){op}({rs})"
    return (f"({text})" if paren else text), value


@settings(FAST, max_examples=300)
@given(_tree(st.integers(0, 30)))
def test_parser_agrees_with_fraction_reference(expr):
    text, value = expr
    numbers = [int(t) for t in text.replace("(", " ").replace(")", " ").replace("+", " ").replace("-", " ")
               .replace("*", " ").replace("/", " ").split()]
    if value is None:  # a division by zero somewhere: never correct
        assert not _check_parser(numbers, 0, text)
        return
    if value.denominator == 1:
        assert _check_parser(numbers, int(value), text)
        assert not _check_parser(numbers, int(value) + 1, text)
    else:
        assert not _check_parser(numbers, int(value), text)
    assert not _check_parser(numbers[1:] + [numbers[0] + 1], value.numerator, text) or value.denominator != 1


HOSTILE_EXPRESSIONS = [
    "(" * 100_000, ")" * 100_000, "1" * 100_000, "9" * 5000, "+" * 1000, "(" * 40 + "1" + ")" * 40,
    "__import__('os').system('true')", "open('/etc/passwd').read()", "1e999", "1_000", "0x10", "1 if 1 else 2",
    "lambda: 1", "[1]*10**9", "2**2**2**2", "1/0", "(1-1)/(1-1)", "-1", "+1", "1//1", "1%1", "1 ;1",
    "\x00", "\u0661+\u0662+\u0663",  # Arabic-Indic digits are not ASCII digits
    "9" * 12 + "*" + "9" * 12 + "*" + "9" * 12,
]


@pytest.mark.parametrize("text", HOSTILE_EXPRESSIONS)
def test_parser_hostile_inputs(text):
    assert not _check_parser([1, 2, 3], 6, text)


# ---------------------------------------------------------------- SQL sandbox
@pytest.fixture(scope="module")
def db(tmp_path_factory):
    path = sql.make_databases(tmp_path_factory.mktemp("hostile"))["shop"]
    return path, hashlib.sha256(open(path, "rb").read()).hexdigest()


def _check_sql(db, query, limit=2.0):
    TRIED["sql"] += 1
    path, digest = db
    start = time.perf_counter()
    out = sql.execution_match(path, query, "SELECT name FROM customers")
    assert time.perf_counter() - start < limit, query
    assert hashlib.sha256(open(path, "rb").read()).hexdigest() == digest
    return out


HOSTILE_SQL = [
    "DROP TABLE customers", "DELETE FROM customers", "UPDATE customers SET name='x'",
    "INSERT INTO customers VALUES (99, 'x', 'y', 1)", "CREATE TABLE t (a)", "CREATE TEMP TABLE t AS SELECT 1",
    "SELECT name FROM customers; DROP TABLE customers", "SELECT 1; SELECT 2",
    "ATTACH DATABASE 'x.db' AS x", "ATTACH ':memory:' AS m", "DETACH main", "VACUUM", "VACUUM INTO 'copy.db'",
    "PRAGMA writable_schema=ON", "PRAGMA query_only=OFF", "PRAGMA journal_mode=DELETE", "PRAGMA table_info(customers)",
    "SELECT load_extension('/tmp/evil.so')", "SELECT load_extension('libc.so.6', 'system')",
    "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM r) SELECT x FROM r",
    "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x FROM r) SELECT count(*) FROM r",
    "SELECT count(*) FROM customers a, customers b, customers c, customers d, customers e, customers f",
    "SELECT a.name FROM customers a, customers b, customers c, customers d ORDER BY random()",
    "SELECT randomblob(1000000000)", "SELECT zeroblob(1000000000)", "SELECT length(randomblob(2000000))",
    "SELECT replace(hex(zeroblob(100000)), '0', hex(zeroblob(100000)))", "SELECT printf('%.*c', 2000000000, 'x')",
    "SELECT name FROM customers -- comment", "SELECT name FROM customers /* x */", "SELECT writefile('x', 'y')",
    "SELECT readfile('/etc/passwd')", "SELECT sqlite_version()", "SELECT * FROM sqlite_master",
    "SELECT fts3_tokenizer('simple')", "SELECT name FROM customers WHERE name = ?",
    "REPLACE INTO customers VALUES (1, 'x', 'y', 1)", "BEGIN; DROP TABLE customers; COMMIT",
    "SELECT name FROM customers WHERE " + " AND ".join(["1=1"] * 2000), "SELECT " + "(" * 5000 + "1" + ")" * 5000,
    "SELECT 1 UNION SELECT 2 UNION SELECT 3 UNION SELECT 4 UNION SELECT 5 UNION SELECT 6 UNION SELECT 7"
    " UNION SELECT 8 UNION SELECT 9 UNION SELECT 10 UNION SELECT 11 UNION SELECT 12",
    "SELECT name FROM customers\x00; DROP TABLE customers", "", "   ", ";", None, 42, b"SELECT 1",
    "WITH x AS (SELECT 1) DELETE FROM customers", "SELECT * FROM customers a JOIN customers b JOIN customers c",
]


@pytest.mark.parametrize("query", HOSTILE_SQL, ids=range(len(HOSTILE_SQL)))
def test_sql_hostile_queries(db, query):
    assert not _check_sql(db, query)


_FRAGMENTS = ["SELECT", "WITH", "RECURSIVE", "r(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM r)", "name", "*",
              "count(*)", "FROM", "customers", "customers a,", "orders", "WHERE", "1=1", ";", "DROP TABLE orders",
              "ATTACH 'x' AS y", "PRAGMA writable_schema=1", "load_extension('x')", "randomblob(1e9)",
              "zeroblob(999999999)", "UNION ALL", "ORDER BY", "random()", "(", ")", "'", "\"", "--", "/*",
              "INSERT INTO orders VALUES (1,1,1,1)", "DELETE", "sqlite_master", "city='Rome'", "JOIN", "ON",
              "LIMIT -1", "x", ",", "\x00", "VACUUM"]


@settings(FAST, max_examples=150)
@given(st.lists(st.sampled_from(_FRAGMENTS), min_size=1, max_size=14).map(" ".join))
def test_sql_fuzzed_fragments(db, query):
    _check_sql(db, query)


@settings(FAST, max_examples=40)
@given(st.text(max_size=200))
def test_sql_random_text(db, query):
    assert not _check_sql(db, query)


def test_report_counts():
    print(f"\nhostile inputs tried: {TRIED}")
    assert TRIED["countdown"] >= len(HOSTILE_EXPRESSIONS) and TRIED["sql"] >= len(HOSTILE_SQL)


# ---------------------------------------------------------------- SQL sandbox: encoding and memory
def test_lone_surrogate_is_an_error_verdict(db):
    with pytest.raises(sql.SandboxError, match="UTF-8"):
        sql.run_query(db[0], "SELECT name FROM customers WHERE name='\ud800'")
    assert not _check_sql(db, "SELECT '\udfff'")


MEMORY_HOG = ("SELECT replace(replace(replace(replace(a.city||'xxxxxxxxxx','x','xxxxxxxxxx'),'x','xxxxxxxxxx'),"
              "'x','xxxxxxxxxx'),'x','xxxxxxxxxx')||b.name s FROM customers a,customers b,customers c,customers d "
              "ORDER BY s")  # 100 KB strings over a 4-way cross join, sorted: ~1 GB a second without a cap
PEAK_SCRIPT = """
import json, resource, sys
from dphrl_mini.tasks import sql
path = sys.argv[1]
sql.run_query(path, "SELECT 1")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    sql.run_query(path, sys.argv[2], timeout_s=5.0)
    verdict = "ran"
except sql.SandboxError as error:
    verdict = str(error)
except Exception as error:
    verdict = type(error).__name__
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"verdict": verdict, "before_mb": before / 1024, "after_mb": after / 1024,
                  "match": sql.execution_match(path, sys.argv[2], "SELECT name FROM customers")}))
"""


def test_sql_memory_is_capped(db):
    """Peak RSS of a process that runs the query: bounded by the heap cap, not by the time limit."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, db[0], MEMORY_HOG], capture_output=True, text=True,
                         env=env, timeout=120, check=True)
    peak = json.loads(out.stdout)
    print(f"\npeak RSS {peak['before_mb']:.0f} MB -> {peak['after_mb']:.0f} MB: {peak['verdict']}")
    assert peak["verdict"].startswith("out of memory") and not peak["match"]
    assert peak["after_mb"] - peak["before_mb"] < 2 * sql.HEAP_LIMIT_BYTES / 2**20
