"""Attack success against compute: every method at every budget on a prompt set, three judges.

For each prompt and each (method, budget), the policy generates under that method, optionally after
a prefilling attack (the first N tokens of a harmful reference start forced after the assistant
header); each output is judged by the learned judge, an independent judge and the GCG refusal
strings, and benign prompts give the over-refusal rate. One module per job:

- ``prompts``: the prompt schema, its loader and the reference start of the prefilling attack;
- ``grid``: the methods and budgets, and the run-wide settings;
- ``store``: the text cache (never committed) and the verdict ledger (committable, no text);
- ``harness``: generation and judging, resumable from either store;
- ``stats``: the tables, the matched comparison and the paired bootstrap;
- ``plot``: the figure;
- ``run``: loading the models into a harness and writing the JSON report.
"""

from saffron_runtime.evaluation.attack.grid import (
    METHODS,
    MRM_METHODS,
    AttackMethod,
    AttackSettings,
    MethodSpec,
    method_grid,
)
from saffron_runtime.evaluation.attack.harness import AttackHarness, Judged
from saffron_runtime.evaluation.attack.plot import plot_asr
from saffron_runtime.evaluation.attack.prompts import AttackPrompt, load_prompts, reference_start
from saffron_runtime.evaluation.attack.run import build_harness, judges_report, report
from saffron_runtime.evaluation.attack.stats import (
    JUDGE_KEYS,
    attack_table,
    matched_comparison,
    over_refusal_table,
    paired_difference,
    prm_comparison,
)
from saffron_runtime.evaluation.attack.store import (
    LEDGER_FIELDS,
    WEIGHT_SUFFIXES,
    Generation,
    GenerationCache,
    VerdictLedger,
    fingerprint_files,
)

__all__ = [
    "JUDGE_KEYS",
    "LEDGER_FIELDS",
    "METHODS",
    "MRM_METHODS",
    "WEIGHT_SUFFIXES",
    "AttackHarness",
    "AttackMethod",
    "AttackPrompt",
    "AttackSettings",
    "Generation",
    "GenerationCache",
    "Judged",
    "MethodSpec",
    "VerdictLedger",
    "attack_table",
    "build_harness",
    "fingerprint_files",
    "judges_report",
    "load_prompts",
    "matched_comparison",
    "method_grid",
    "over_refusal_table",
    "paired_difference",
    "plot_asr",
    "prm_comparison",
    "reference_start",
    "report",
]
