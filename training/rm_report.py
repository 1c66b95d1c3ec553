"""A reward model's evaluation (rm_trainer's step 9–10: `heldout`, `calibration`, `data`) in words and tables:
each figure with its sample size and an interval or a "too few" mark, annotators by name, calibration as a
sentence. The raw figures stay available under "All figures"."""

from __future__ import annotations

import math
from typing import Any

from training.intervals import percent_interval_text as interval_text


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _count(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None else None


def percent(p: float | None) -> str:
    return "–" if p is None else f"{100 * p:.1f} %"


def _plural(n: int | None, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _figure(label: str, value: str, note: str = "", *, key: str = "") -> dict[str, str]:
    return {"label": label, "value": value, "note": note, "key": key}


def _accuracy_figure(label: str, data: dict[str, Any], *, key: str, what: str) -> dict[str, str] | None:
    p, pairs = _number(data.get("accuracy")), _count(data.get("pairs"))
    if p is None:
        return None
    sizes = [_plural(pairs, "pair") if pairs is not None else ""]
    if _count(data.get("rankings")) is not None:
        sizes.append(_plural(_count(data.get("rankings")), "ranking"))
    if _count(data.get("prompts")) is not None:
        sizes.append(_plural(_count(data.get("prompts")), "prompt"))
    interval = interval_text(p, pairs)
    note = f"{what}; n = {', '.join(s for s in sizes if s)}"
    note += f"; 95 % interval {interval}" if not interval.startswith(("too few", "–")) else f"; {interval}"
    return _figure(label, percent(p), note, key=key)


def calibration_sentence(calibration: dict[str, Any]) -> str:
    """'Rewards are shifted by +1.88 so that the 42 responses of the held-out split average 0 (before: mean
    −1.88, std 1.39).' — with the gain, '…scaled by 0.72 and shifted by +1.35 … average 0 with std 1 …'."""
    bias, gain, n = _number(calibration.get("bias")), _number(calibration.get("gain")), _count(calibration.get("n"))
    if bias is None:
        return ""
    sets = {"heldout": "of the held-out split", "train": "of the training split"}
    where = sets.get(str(calibration.get("set")), f"of {calibration.get('set')}" if calibration.get("set") else "")
    responses = f"the {_plural(n, 'response')} {where}".strip() if n is not None else f"the responses {where}".strip()
    raw_mean, raw_std = _number(calibration.get("raw_mean")), _number(calibration.get("raw_std"))
    scaled = gain is not None and abs(gain - 1.0) > 1e-9
    how = f"scaled by {gain:.3g} and shifted by {bias:+.3g}" if scaled else f"shifted by {bias:+.3g}"
    target = "average 0 with standard deviation 1" if scaled else "average 0"
    before = ""
    if raw_mean is not None:
        before = f" (before: mean {raw_mean:.3g}" + (f", standard deviation {raw_std:.3g}" if raw_std is not None else "")
        before += ")"
    return f"Rewards are {how} so that {responses} {target}{before}."


def _table(title: str, rows: dict[str, Any], *, names: dict[str, str], key_header: str) -> dict[str, Any]:
    out = []
    for key, data in rows.items():
        if not isinstance(data, dict):
            continue
        p, pairs = _number(data.get("accuracy")), _count(data.get("pairs"))
        out.append({"key": names.get(str(key), str(key)), "pseudonym": str(key) if str(key) in names else "",
                    "cells": [percent(p), interval_text(p, pairs), pairs, _count(data.get("rankings"))]})
    return {"title": title, "key_header": key_header,
            "columns": ["Accuracy", "95 % interval (Wilson)", "Pairs", "Rankings"], "rows": out}


def rm_evaluation_view(evaluation: dict[str, Any], *, annotator_names: dict[str, str] | None = None) -> dict[str, Any]:
    """The readable part of an RM evaluation: figures (label, value, note), the calibration sentence and the
    accuracy tables per annotator (by `annotator_names`: pseudonym → name) and per K."""
    names = annotator_names or {}
    heldout = evaluation.get("heldout") if isinstance(evaluation.get("heldout"), dict) else None
    if heldout is None:  # a flat report (rm_eval.evaluate_rankings_file) is the held-out figures themselves
        heldout = evaluation if "per_annotator" in evaluation or "per_k" in evaluation else {}
    figures = []
    if heldout:
        figure = _accuracy_figure("Held-out accuracy", heldout, key="accuracy",
                                  what="pairs of held-out rankings the reward model orders as the annotators did")
        if figure:
            figures.append(figure)
    oracle = heldout.get("oracle") if isinstance(heldout.get("oracle"), dict) else None
    if oracle:
        figure = _accuracy_figure("Agreement with the oracle", oracle, key="oracle",
                                  what="pairs the demo task's oracle orders strictly")
        if figure:
            figures.append(figure)
        ceiling = _number(oracle.get("annotator_agreement"))
        if ceiling is not None:
            figures.append(_figure("Annotators with the oracle", percent(ceiling),
                                   "the annotators' own agreement with the oracle: the ceiling for a model "
                                   "fitted to their rankings", key="ceiling"))
        top1, prompts = _number(oracle.get("top1")), _count(oracle.get("prompts"))
        if top1 is not None:
            interval = interval_text(top1, prompts)
            figures.append(_figure("Best response found", percent(top1),
                                   f"prompts where the model's best response is the oracle's best; "
                                   f"n = {_plural(prompts, 'prompt')}; "
                                   + (f"95 % interval {interval}" if not interval.startswith("too few") else interval),
                                   key="top1"))
    margin = _number(heldout.get("mean_margin"))
    if margin is not None:
        calibrated = _number(heldout.get("mean_margin_calibrated"))
        note = "mean reward of the preferred response minus the other's, over the held-out pairs"
        if calibrated is not None and abs(calibrated - margin) > 1e-12:
            note += f" ({calibrated:.3g} after calibration)"
        figures.append(_figure("Mean margin", f"{margin:.3g}", note, key="margin"))
    loss = _number(heldout.get("loss"))
    if loss is not None:
        figures.append(_figure("Held-out loss", f"{loss:.3g}",
                               f"K-wise ranking loss, mean per ranking ({math.log(2):.3g} for a model that "
                               "cannot tell the responses apart)",
                               key="loss"))
    data = evaluation.get("data") if isinstance(evaluation.get("data"), dict) else {}
    train, held = _count(data.get("train_rankings")), _count(data.get("eval_rankings"))
    steps = _count(evaluation.get("steps"))
    if train is not None or steps is not None:
        parts = []
        if train is not None:
            parts.append(f"{_plural(train, 'ranking')} for training")
        if held is not None:
            source = f" ({data['eval_source']})" if data.get("eval_source") else ""
            parts.append(f"{held} held out{source}")
        value = _plural(steps, "step") if steps is not None else "–"
        figures.append(_figure("Training", value, "; ".join(parts), key="data"))
    tables = []
    if isinstance(heldout.get("per_annotator"), dict) and heldout["per_annotator"]:
        tables.append(_table("Accuracy per annotator", heldout["per_annotator"], names=names, key_header="Annotator"))
    if isinstance(heldout.get("per_k"), dict) and heldout["per_k"]:
        tables.append(_table("Accuracy per K (responses per prompt)", heldout["per_k"], names={}, key_header="K"))
    calibration = evaluation.get("calibration") if isinstance(evaluation.get("calibration"), dict) else {}
    return {"figures": figures, "calibration": calibration_sentence(calibration), "tables": tables}


def is_rm_evaluation(evaluation: dict[str, Any]) -> bool:
    """A reward model's report (rm_trainer's or rm_eval's), not a policy's before/after evaluation."""
    if "before" in evaluation and "after" in evaluation:
        return False
    return any(isinstance(evaluation.get(key), dict) for key in ("heldout", "calibration", "per_annotator", "per_k"))
