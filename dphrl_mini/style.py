"""Display names and colours of training variants, for every figure and table.

A variant is named as ``dphrl-mini compare`` names its folder (``experiments.parse_variants``):
``METHOD[+mara][_FIELD VALUE]...``, e.g. ``dph_forward_kl_eta0.02_keep_referencesall_distinct``.
``display_name`` turns that into ``DPH-F η=0.02, all refs``; ``family_color`` gives one colour per
method family (built on ``toy_bandits.style``'s divergence colours); the base model is black and
dashed everywhere (``BASE_LINE``).
"""

from __future__ import annotations

import dataclasses
import re

from toy_bandits.style import DIVERGENCE_COLORS, REFERENCE_COLOR, REFERENCE_LINE, shade

from .config import METHODS, TrainConfig

METHOD_LABELS: dict[str, str] = {"grpo": "GRPO", "dapo": "DAPO", "rkl": "RKL", "dph_forward_kl": "DPH-F",
                                 "dph_js": "DPH-JS", "dph_alpha": "DPH-α", "base": "base"}
"""How each method is written in figures and tables."""

FAMILY_COLORS: dict[str, str] = {
    "base": REFERENCE_COLOR,
    "rkl": DIVERGENCE_COLORS["reverse_kl"],
    "dph_forward_kl": DIVERGENCE_COLORS["forward_kl"],
    "dph_js": DIVERGENCE_COLORS["js"],
    "dph_alpha": DIVERGENCE_COLORS["alpha"],
    "grpo": "#CC79A7",       # reddish purple
    "dapo": "#8C564B",       # brown
    "grpo+mara": "#7F3C8D",  # deep purple
    "rkl+mara": "#17BECF",   # cyan
}
"""One colour per method family; a MARA family not listed is its method's colour, darkened."""

BASE_LINE = REFERENCE_LINE
"""The base model (pi_ref): black and dashed."""

# coefficients: written "symbol=value" right after the method name
_COEFFICIENTS = {"eta": "η", "kl_coef": "β", "mara_beta": "β", "alpha": "α"}
# other settings: "field value" -> words, after a comma
_SETTINGS = {
    ("keep_references", "all_distinct"): "all refs", ("keep_references", "one"): "one ref",
    ("train_on", "all"): "train on all", ("train_on", "exploration"): "train on D_exp",
    ("train_on", "learnable"): "train on learnable", ("train_on", "auto"): "train on auto",
}
_SETTING_NAMES = {"presample_threshold": "threshold", "presample_k": "pre-samples", "eps_high": "ε_high",
                  "eps_low": "ε_low", "kl_estimator": "KL estimator", "lr": "lr", "steps": "steps"}
_FIELDS = sorted([*(f.name for f in dataclasses.fields(TrainConfig)), "mara_beta"], key=len, reverse=True)
"""Config fields in folder names; ``mara_beta`` only in folders made before MARA took its beta from kl_coef."""
_FIELD = re.compile(r"_(%s)(.*?)(?=_(?:%s)|$)" % ("|".join(_FIELDS), "|".join(_FIELDS)))
_METHOD = re.compile(r"(%s)(\+mara)?(?=_|$)" % "|".join(sorted(METHODS, key=len, reverse=True)))


def parse_name(name: str) -> tuple[str, dict[str, str]] | None:
    """``(family, {field: value})`` of a variant folder name, or None when it is no such name.

    >>> parse_name("rkl+mara_kl_coef0.05")
    ('rkl+mara', {'kl_coef': '0.05'})
    >>> parse_name("dph_js_eta4_keep_referencesall_distinct")
    ('dph_js', {'eta': '4', 'keep_references': 'all_distinct'})
    """
    match = _METHOD.match(name)
    if name == "base":
        return "base", {}
    if match is None:
        return None
    rest = name[match.end():]
    fields = {m.group(1): m.group(2) for m in _FIELD.finditer(rest)}
    if "".join(f"_{k}{v}" for k, v in fields.items()) != rest:
        return None
    return match.group(1) + (match.group(2) or ""), fields


def display_name(name: str) -> str:
    """The readable name of a variant folder name; any other name is returned as given.

    >>> display_name("dph_forward_kl_eta0.02_keep_referencesall_distinct")
    'DPH-F η=0.02, all refs'
    >>> display_name("rkl+mara_kl_coef0.05")
    'RKL+MARA β=0.05'
    >>> display_name("dph_js_eta4_keep_referencesall_distinct_presample_threshold0.125")
    'DPH-JS η=4, all refs, threshold 0.125'
    """
    parsed = parse_name(name)
    if parsed is None:
        return name
    family, fields = parsed
    method, _, mara = family.partition("+")
    head = METHOD_LABELS[method] + ("+MARA" if mara else "")
    coefficients, settings = [], []
    for key, value in fields.items():
        if key in _COEFFICIENTS:
            coefficients.append(_coefficient(key, value, fields))
        elif (key, value) in _SETTINGS:
            settings.append(_SETTINGS[key, value])
        elif key == "mara":
            head = METHOD_LABELS[method] + ("+MARA" if value.lower() == "true" else "")
        else:
            settings.append(f"{_SETTING_NAMES.get(key, key.replace('_', ' '))} {value.replace('_', ' ')}")
    return " ".join([head, ", ".join(coefficients)]).strip() + "".join(f", {s}" for s in settings)


def _coefficient(key: str, value: str, fields: dict[str, str]) -> str:
    symbol = "MARA β" if key == "mara_beta" and "kl_coef" in fields else _COEFFICIENTS[key]
    return f"{symbol}={value}"


def coefficient_label(name: str) -> str:
    """The coefficients in a variant's name (``rkl_kl_coef0.05`` -> ``β=0.05``), "" if none."""
    parsed = parse_name(name)
    fields = parsed[1] if parsed else {}
    return ", ".join(_coefficient(k, v, fields) for k, v in fields.items() if k in _COEFFICIENTS)


def family(name: str) -> str:
    """The method family of a variant (``dph_js_eta4`` -> ``dph_js``, ``grpo+mara`` -> itself)."""
    parsed = parse_name(name)
    return parsed[0] if parsed else name


def family_color(name: str):
    """The colour of a variant's method family (black for the base model)."""
    fam = family(name)
    if fam in FAMILY_COLORS:
        return FAMILY_COLORS[fam]
    method = fam.partition("+")[0]
    return shade(FAMILY_COLORS[method], 0.4) if method in FAMILY_COLORS else "0.4"


_PERCENT_METRICS = ("greedy", "kept_frac", "solve_rate", "dph_grad_share", "dph_update_share", "kl_grad_share",
                    "kl_update_share", "reference_halved_frac")
METRIC_LABELS: dict[str, str] = {
    "greedy": "greedy accuracy", "kept_frac": "base-solved prompts kept", "solve_rate": "prompts solved",
    "distinct_correct": "distinct correct solutions / prompt", "reward_mean": "mean reward",
    "entropy": "entropy (nats / token)", "completion_length": "completion length (tokens)",
    "dph_loss": "DPH loss", "kl": "reverse KL to π_ref",
    "dph_update_share": "DPH share of the update", "dph_grad_share": "DPH share of the gradient",
    "kl_update_share": "KL share of the update", "kl_grad_share": "KL share of the gradient",
    "dph_grad_cosine": "cos(RL, DPH gradient)", "reference_drift": "mean |π/π_ref − 1| (rehearsed)",
    "reference_halved_frac": "rehearsed tokens with π < π_ref/2",
}


def is_percent(metric: str) -> bool:
    """Whether a metric is a fraction that figures and tables show in %."""
    return metric in _PERCENT_METRICS or metric.startswith("pass@") or metric.startswith("ood_pass@")


def metric_label(metric: str) -> str:
    """An axis label for a metric, ending in (%) for fractions (``pass@8`` -> ``Pass@8 (%)``)."""
    text = METRIC_LABELS.get(metric, metric.replace("_", " ").replace("pass@", "Pass@"))
    return f"{text} (%)" if is_percent(metric) else text
