"""Text-to-SQL: generated databases, equivalent queries, execution match (hostile inputs: test_hostile_inputs.py)."""

import hashlib
import os
import random
import re
import string
import subprocess
import sys
from pathlib import Path

import pytest

from dphrl_mini.tasks import sql


@pytest.fixture(scope="module")
def db_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("sqldb")


def test_databases_deterministic_and_cached(db_dir, tmp_path):
    paths = sql.make_databases(db_dir, seed=3)
    assert set(paths) == set(sql.FAMILIES)
    again = sql.make_databases(tmp_path, seed=3)
    digest = lambda p: hashlib.sha256(open(p, "rb").read()).hexdigest()  # noqa: E731
    assert all(digest(paths[f]) == digest(again[f]) for f in paths)
    other = sql.make_databases(tmp_path, seed=4)
    assert digest(other["shop"]) != digest(paths["shop"])


def test_every_equivalent_query_matches_gold(db_dir):
    n_checked = 0
    for split in ("train", "test", "ood", "shift"):
        for row in sql.make_dataset(split, 60, seed=0, db_dir=db_dir):
            queries = sql.equivalent_queries(row)
            assert queries[0] == row["gold_sql"] and len(queries) >= 5 and len(set(queries)) == len(queries)
            for query in queries:
                assert len(query) <= sql.MAX_QUERY_CHARS and set(query) <= set(string.printable[:95])
                assert sql.execution_match(row["db_path"], query, row["gold_sql"]), (row["question"], query)
                n_checked += 1
    assert n_checked > 2000


def test_wrong_queries_do_not_match(db_dir):
    for row in sql.make_dataset("train", 100, seed=1, db_dir=db_dir):
        gold = row["gold_sql"]
        table = gold.split(" FROM ")[1].split()[0]
        select = gold.split(" FROM ")[0]
        if not row["question"].startswith(("max", "average")):
            assert not sql.execution_match(row["db_path"], f"{select} FROM {table}", gold)  # filter dropped
        if " WHERE " in gold and " AND " not in gold and "ORDER" not in gold and "(" not in gold.split(" WHERE ")[1]:
            negated = f"{gold.split(' WHERE ')[0]} WHERE NOT ({gold.split(' WHERE ')[1]})"
            assert not sql.execution_match(row["db_path"], negated, gold), negated
        assert not sql.execution_match(row["db_path"], "SELECT -1", gold)


def test_result_comparison_semantics(db_dir):
    db = sql.make_databases(db_dir)["shop"]
    gold = "SELECT name FROM customers WHERE city='Rome'"
    assert sql.execution_match(db, "select name from customers where city = 'Rome' ;", gold)
    assert not sql.execution_match(db, "SELECT name, city FROM customers WHERE city='Rome'", gold)
    assert not sql.execution_match(db, "SELECT DISTINCT city FROM customers", "SELECT city FROM customers")  # multiset
    assert sql.execution_match(db, "SELECT 2.0", "SELECT 2")
    assert sql.execution_match(db, "SELECT 1.0/3", "SELECT 0.3333333")
    ordered = "SELECT name FROM customers ORDER BY age, id"
    assert sql.execution_match(db, "SELECT name FROM customers ORDER BY age ASC, id", ordered)
    assert not sql.execution_match(db, "SELECT name FROM customers ORDER BY age DESC, id DESC", ordered)
    assert sql.execution_match(db, "SELECT name FROM customers ORDER BY id", "SELECT name FROM customers")
    assert not sql.execution_match(db, "SELECT name FROM customers", "SELECT name FROM customers", max_rows=5)


def test_datasets_deterministic_disjoint_and_well_formed(db_dir):
    train = sql.make_dataset("train", 2000, seed=0, db_dir=db_dir)
    assert train == sql.make_dataset("train", 2000, seed=0, db_dir=db_dir)
    assert train != sql.make_dataset("train", 2000, seed=1, db_dir=db_dir)
    test = sql.make_dataset("test", 300, seed=0, db_dir=db_dir)
    ood = sql.make_dataset("ood", 300, seed=0, db_dir=db_dir)
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}
    assert all(r["prompt"].startswith("hospital | ") for r in ood)
    assert not any(r["prompt"].startswith("hospital") for r in train + test)
    assert len({r["id"] for r in train + test + ood}) == len(train + test + ood)
    for row in train + test + ood:
        assert set(row) == {"id", "prompt", "db_path", "gold_sql", "question"}
        assert len(row["prompt"]) < 80 and set(row["prompt"]) <= set(string.printable[:95])
    held_apart = sql.ood_pretrain_rows(200, seed=0, db_dir=db_dir)  # warm start only
    assert held_apart == sql.ood_pretrain_rows(200, seed=0, db_dir=db_dir)
    assert all(r["prompt"].startswith("hospital | ") for r in held_apart)
    assert not {r["question"] for r in held_apart} & {p["question"] for p in sql._problems("ood", str(Path(db_dir).resolve()))}
    assert all(sql.equivalent_queries(r)[0] == r["gold_sql"] for r in held_apart[:5])
    with pytest.raises(ValueError, match="asked for"):
        sql.ood_pretrain_rows(10**6, db_dir=db_dir)
    with pytest.raises(ValueError):
        sql.make_dataset("ood-pretrain", 2, db_dir=db_dir)
    with pytest.raises(ValueError):
        sql.make_dataset("dev", 2, db_dir=db_dir)
    with pytest.raises(ValueError):
        sql.make_dataset("test", 10**6, db_dir=db_dir)


def test_shift_split_is_the_test_draw_reworded(db_dir):
    """"shift": the "test" problems (same seed and size) asked in words no training prompt uses, with
    the same gold query; every reworded question differs from its test form."""
    test, shift = (sql.make_dataset(s, 200, seed=2, db_dir=db_dir) for s in ("test", "shift"))
    train_prompts = [r["prompt"] for r in sql.make_dataset("train", 2000, seed=0, db_dir=db_dir)]
    for t, s in zip(test, shift):
        assert (s["gold_sql"], s["db_path"]) == (t["gold_sql"], t["db_path"]) and s["id"] != t["id"]
        assert s["prompt"] == t["prompt"].replace(t["question"], sql.reword(t["question"])) != t["prompt"]
    new_words = (" where ", " above ", " below ", " between ")
    assert all(any(w in r["prompt"] for w in new_words) for r in shift)
    assert not any(w in p for p in train_prompts for w in new_words)
    assert sql.reword("count customers with age from 20 to 40") == "count customers where age between 20 and 40"


def test_sft_examples_can_keep_only_queries_that_copy_the_question_numbers(db_dir):
    rows = [r for r in sql.make_dataset("train", 60, seed=0, db_dir=db_dir) if any(ch.isdigit() for ch in r["question"])]
    every = sql.sft_examples(rows, per_problem=100, seed=0)
    copied = sql.sft_examples(rows, per_problem=100, seed=0, copy_numbers_only=True)
    assert {p for p, _ in copied} == {r["prompt"] for r in rows}  # every problem keeps some queries
    assert set(copied) < set(every)  # the k+1 / k-1 rewrites are gone
    for prompt, query in copied:
        assert set(re.findall(r"\d+", query.replace("COUNT(1)", ""))) <= set(re.findall(r"\d+", prompt)), query
    assert sql.copies_question_numbers("SELECT COUNT(1) FROM t WHERE x>5", "count t with x over 5")
    assert not sql.copies_question_numbers("SELECT name FROM t WHERE x>=6", "t with x over 5")


def test_sft_examples_and_reward(db_dir):
    rows = sql.make_dataset("train", 30, seed=0, db_dir=db_dir)
    pairs = sql.sft_examples(rows, per_problem=5, seed=0)
    assert pairs == sql.sft_examples(rows, per_problem=5, seed=0)
    assert len(pairs) == 5 * len(rows)
    for row in rows:
        completions = [c for p, c in pairs if p == row["prompt"]]
        assert len(set(completions)) == 5
    completions = [c for _, c in pairs]
    columns = {k: [r[k] for r in rows for _ in range(5)] for k in ("db_path", "gold_sql", "question")}
    assert sql.reward([p for p, _ in pairs], completions, **columns) == [1.0] * len(pairs)
    wrong = ["SELECT name FROM customers WHERE 1=0"] * len(pairs)
    assert sum(sql.reward([p for p, _ in pairs], wrong, **columns)) < len(pairs)
    assert sql.solution_key("SELECT  name\tFROM t ;") == "SELECT name FROM t"
    assert sql.extract_answer("<answer>SELECT 1</answer>") == "SELECT 1"


def test_schema_drill_queries_run_and_agree_on_their_own_database(tmp_path):
    """The drill's made-up schemas: every pair's query matches its question's gold query when run on
    a database built from that schema, and no word of the held-out "ood" family is ever used."""
    rng = random.Random(0)
    ood_words = {"hospital", "patients", "doctors", "visits", "specialty", "salary", "cost", "patient_id",
                 "doctor_id"}
    checked = 0
    for i in range(3):
        family, schema = sql.random_schema(rng)
        entities, link = schema
        names = {family, link[0], link[1], link[2], link[3]} | {w for e in entities for w in (e[0], e[1], e[3])}
        assert not names & ood_words
        path = tmp_path / f"drill{i}.sqlite"
        sql._build(path, family, 0, schema)
        for question, queries in list(sql._templates(family, schema))[::4]:
            gold = queries[0]
            for query in queries[1:]:
                if len(query) <= sql.MAX_QUERY_CHARS:
                    assert sql.execution_match(str(path), query, gold), (question, query)
                    checked += 1
    assert checked > 300
    pairs = sql.schema_drill_examples(5, 20, 3, seed=1, copy_numbers_only=True)
    assert len(pairs) == 5 * 20 * 3
    assert all(p.endswith(":") and sql.copies_question_numbers(q, p) for p, q in pairs)
    assert pairs == sql.schema_drill_examples(5, 20, 3, seed=1, copy_numbers_only=True)


def test_schema_drill_is_the_same_in_every_process():
    """The drill draws its words from a set: string hashing, which changes per process, must not
    change which schemas a seed gives (fails if the set's own order is used)."""
    code = "from dphrl_mini.tasks import sql; print(sql.schema_drill_examples(3, 5, 2, seed=0))"
    outputs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONHASHSEED": str(h)}).stdout for h in (1, 2)}
    assert len(outputs) == 1 and "SELECT" in outputs.pop()
