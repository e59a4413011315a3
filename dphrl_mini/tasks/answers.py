"""Answer extraction shared by the tasks whose completions are a bare answer or an <answer> tag."""

from __future__ import annotations


def extract_answer(completion: str) -> str | None:
    """The first ``<answer>...</answer>`` content if present, else the first line; stripped (linear time).

    >>> extract_answer("3*5+7\\nextra")
    '3*5+7'
    >>> extract_answer("think <answer> 3+4 </answer>")
    '3+4'
    """
    if not isinstance(completion, str):
        return None
    start = completion.find("<answer>")
    if start >= 0:
        end = completion.find("</answer>", start + 8)
        if end >= 0:
            return completion[start + 8:end].strip()
    return completion.split("\n", 1)[0].strip()
