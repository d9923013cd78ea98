"""``saffron eval train-judges`` and ``saffron eval train-request-judge``: build the independent judges
the attack evaluation reads (registered on the ``eval`` command group)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from saffron_runtime.cli_eval import eval_app
from saffron_runtime.cli_support import console, one_line_errors, print_metrics, quiet


@eval_app.command("train-judges")
@one_line_errors
def train_judges_cmd(
    out: Annotated[Path, typer.Option(help="Folder for the harm/ and refusal/ judges.")],
    data_dir: Annotated[
        Path, typer.Option(help="The safety data folder (the repository's data/).")
    ] = Path("data"),
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Train the independent judges (MiniLM + logistic regression): harm on PyRIT, refusal on XSTest.

    Example: saffron eval train-judges --out saffron_runtime/bundled/saffron-judges-minilm
    """
    from saffron_runtime.evaluation.text_judges import report_dict, train_judges

    quiet()
    with console.status("embedding the labelled responses with MiniLM and fitting"):
        report = train_judges(data_dir, out)
    if as_json:
        print(json.dumps(report_dict(report)))
    else:
        for name, card in report_dict(report).items():
            print_metrics(
                {k: v for k, v in card.items() if isinstance(v, float | int)}, name, False
            )


@eval_app.command("train-request-judge")
@one_line_errors
def train_request_judge_cmd(
    out: Annotated[Path, typer.Option(help="Folder for the judge (weights, config, split ids, card).")],
    data_dir: Annotated[
        Path, typer.Option(help="The safety data folder (the repository's data/).")
    ] = Path("data"),
    work_dir: Annotated[Path, typer.Option(help="Features and epochs cache (rerun: resume).")] = Path(
        "runs/request-judge"
    ),
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs (the best on validation is kept).")] = 8,
    n_frozen: Annotated[
        int, typer.Option(min=0, max=5, help="Bottom MiniLM layers kept frozen (their output is cached).")
    ] = 4,
    max_length: Annotated[
        int, typer.Option(min=16, max=512, help="Tokens read of [CLS] request [SEP] response [SEP].")
    ] = 256,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Train the request-aware harm judge (MiniLM cross-encoder) on human labels, split by request.

    Example: saffron eval train-request-judge --out saffron_runtime/bundled/saffron-request-judge
    """
    from saffron_runtime.evaluation.request_judge_build import build_request_judge
    from saffron_runtime.evaluation.request_judge_train import TrainSettings

    quiet()
    settings = TrainSettings(n_frozen=n_frozen, max_length=max_length, epochs=epochs)
    cfg = build_request_judge(data_dir, out, work_dir, settings, log=console.print)
    shown = {f"test_{k}": cfg["test"][k]["value"] for k in ("accuracy", "macro_f1", "harmful_recall")}
    shown |= {"threshold": cfg["threshold"], "kappa": cfg["agreement"]["judge_vs_majority"]["kappa"]}
    if as_json:
        print(json.dumps(cfg))
    else:
        print_metrics(shown, str(out), False)
