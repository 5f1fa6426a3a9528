"""The README's headline figures, one line per benchmark, from the same JSON as the full tables."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.markdown import markdown_table, pct
from benchmarks.methods import MINITRON, MP_BEST, MP_LTH, MP_ROW, ONESHOT_WANDA, SCRATCH_PRE
from benchmarks.tables.source import load, result

__all__ = ["headline"]


def _main(root: Path) -> list[str]:
    run, ref = result(root, "main"), load(root, "recipes/main_dense.json")
    final, dense, model = run["final"], ref["final"], run["budget"]["model"]
    return [
        f"the main job: GPT-2 {model['n_layer']}×{model['n_embd']} from scratch, {pct(final['sparsity'])} of its "
        "block weights pruned while it trains",
        f"val ppl {final['val_ppl']:.3f} against {dense['val_ppl']:.3f} dense at the same budget "
        f"({final['val_ppl'] / dense['val_ppl']:.3f}×)",
        "`recipes/main.yaml`",
    ]


def _transfer(root: Path) -> list[str]:
    summary = result(root, "transfer")["summary"]
    best, rows = summary["best_criterion"], summary["rows"]
    ours, mp, wanda = rows[f"ours: {best}"], rows[MP_ROW], rows[ONESHOT_WANDA]
    keys = list(ours)
    ratios = lambda by: " / ".join(f"{by[k]['ratio']['mean']:.3f}" for k in keys)  # noqa: E731
    return [
        f"a pretrained GPT pruned to {' / '.join(pct(float(k)) for k in keys)} while fine-tuned on another text",
        f"{ratios(ours)} × dense (`{best}`); ModelPruning's best {ratios(mp)}, one-shot Wanda {ratios(wanda)}",
        "`benchmarks.transfer`",
    ]


def _quality(root: Path) -> list[str]:
    doc = result(root, "quality")
    keys = list(doc["goals"])
    best = {doc["goals"][k]["best_of_ours_same_settings"] for k in keys}.pop()
    by = {(r["method"], f"{r['target']:g}"): r["ratio_to_dense"] for r in doc["rows"]}
    ours = " / ".join(f"{by[best, k]:.3f}" for k in keys)
    mp = " / ".join(f"{min(by[MP_LTH, k], by[MP_BEST, k]):.3f}" for k in keys)
    return [
        f"a small GPT pruned to {' / '.join(pct(float(k)) for k in keys)} while trained from scratch",
        f"{ours} × dense (`{best.removeprefix('ours: ')}`); ModelPruning's best {mp}",
        "`benchmarks.quality`",
    ]


def _pretrained(root: Path) -> list[str]:
    doc = result(root, "pretrained")
    rows = {r["model"]: r["cosine_mean"]["mean"] for r in doc["rows"]}
    ours = max((m for m in rows if m.startswith("ours: ")), key=rows.get)
    return [
        f"all-MiniLM-L6-v2, {pct(doc['target_sparsity'])} of its encoder weights pruned while fine-tuned",
        f"cosine to dense {rows[ours]:.4f} (`{ours.removeprefix('ours: ')}`); ModelPruning's best "
        f"{rows['ModelPruning best']:.4f}, one-shot Wanda + distillation {rows['one-shot Wanda + distillation']:.4f}",
        "`recipes/pretrained.py`",
    ]


def _speed(root: Path) -> list[str]:
    rows = [r for r in result(root, "speed")["rows"] if r["batch"] > 1]
    most = max(r["ffn_removed"] for r in rows)
    family = {"gpt2": "GPT-2", "llama": "Llama"}
    fast = [f"{r['speedup']:.2f}× ({family[r['config'].split(' ')[0]]})" for r in rows if r["ffn_removed"] == most]
    return [
        f"{pct(most)} of the feed-forward neurons cut out (`shrink_`)",
        f"throughput {', '.join(fast)} at batch {rows[0]['batch']} on the CPU",
        "`benchmarks.speed`",
    ]


def _structured(root: Path) -> list[str]:
    summary = result(root, "structured")["summary"]
    family = {"gpt2": "GPT-2", "llama": "Llama"}
    best = " / ".join(dict.fromkeys(fam["goals"]["best_of_ours"] for fam in summary.values()))

    def ratios(pick: Callable[[dict[str, Any]], str]) -> str:
        return " / ".join(f"{fam['rows'][pick(fam)]['ratio']['mean']:.3f}" for fam in summary.values())

    ours = ratios(lambda fam: fam["goals"]["best_of_ours"])
    minitron, scratch = ratios(lambda fam: MINITRON), ratios(lambda fam: SCRATCH_PRE)
    return [
        f"a pretrained {' / '.join(family.get(f, f) for f in summary)} cut to half its parameters while fine-tuned",
        f"{ours} × dense ({best}); Minitron's one-shot recipe {minitron}, the small shape pretrained from "
        f"scratch {scratch}",
        "`benchmarks.structured`",
    ]


def _overhead(root: Path) -> list[str]:
    doc = result(root, "overhead")
    rows, model = {r["config"]: r["ratio_vs_plain"] for r in doc["rows"]}, doc["conditions"]["model"]
    return [
        f"step time of training with the callbacks (GPT-2 {model['n_layer']}×{model['n_embd']}, CPU)",
        f"{rows['tracking fp32']:.3f}× tracking (float32 state), {rows['tracking + pruning']:.3f}× tracking + pruning",
        "`benchmarks.overhead`",
    ]


def _scale(root: Path) -> list[str]:
    doc = result(root, "scale")
    top = max(c["scores"] for c in doc["checks"])
    check = next(c for c in doc["checks"] if c["scores"] == top)
    seconds = next(r["seconds"] for r in doc["event"] if r["scores"] == top and r["method"] == "compute_masks")
    return [
        f"one exact global pruning event over {top / 1e6:.0f} M scores (one thread)",
        f"{seconds:.2f} s, {check['time_ratio']:.2f}× one `kthvalue`; extra memory {check['memory_ratio']:.2f}× "
        "the scores",
        "`benchmarks.scale`",
    ]


def headline(root: Path) -> str:
    """One line per benchmark: what was measured, its headline figures beside the baselines, and by what."""
    rows = [f(root) for f in (_main, _transfer, _quality, _pretrained, _structured, _speed, _overhead, _scale)]
    return markdown_table(["what", "measured", "by"], rows)
