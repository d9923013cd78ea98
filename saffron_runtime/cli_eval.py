"""``saffron eval``: monitor quality, the prompt and response heads, the MRM, the independent judges,
and attack success against compute."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from saffron_runtime.cli_support import console, one_line_errors, print_metrics, quiet

if TYPE_CHECKING:
    from saffron_runtime.evaluation.attack.grid import MethodSpec
    from saffron_runtime.evaluation.attack.harness import AttackHarness, Judged
    from saffron_runtime.evaluation.attack.prompts import AttackPrompt

eval_app = typer.Typer(help="Evaluate monitors and guarded generation.", no_args_is_help=True)


@eval_app.command("monitor")
@one_line_errors
def eval_monitor_cmd(
    data: Annotated[Path, typer.Option(help="JSONL with prompt, response, label (1 = harmful).")],
    monitor: Annotated[
        str, typer.Option(help="Monitor folder (its saved rule and thresholds are used), or 'bundled'.")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Stream every response through a monitor and report F1, false alarms and how early it stops.

    Example: saffron eval monitor --data test.jsonl --monitor runs/monitor --json
    """

    from saffron_runtime.monitor.adapters import SCMMonitor
    from saffron_runtime.monitor.evaluate import evaluate_monitor
    from saffron_runtime.monitor.model import load_monitor

    quiet()
    metrics = evaluate_monitor(data, SCMMonitor(load_monitor(monitor)))
    print_metrics(metrics, f"monitor {monitor} on {data}", as_json)


@eval_app.command("prompts")
@one_line_errors
def eval_prompts_cmd(
    data: Annotated[Path, typer.Option(help="Test prompts JSONL (prompt, label, source).")],
    monitor: Annotated[str, typer.Option(help="Monitor folder with a prompt head, or 'bundled'.")],
    val: Annotated[
        Path | None, typer.Option(help="Validation prompts: choose the threshold on them first.")
    ] = None,
    max_fpr: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Benign false-positive rate allowed on --val.")
    ] = 0.1,
    save: Annotated[
        bool, typer.Option(help="Write the chosen threshold into the monitor's config.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """The prompt head as a request filter: recall on harmful prompts, false positives on benign ones.

    Example: saffron eval prompts --data prompts_test.jsonl --val prompts_val.jsonl --monitor runs/monitor
    """

    from saffron_runtime.jsonl import read_jsonl
    from saffron_runtime.monitor.model import load_monitor, update_monitor_config
    from saffron_runtime.monitor.prompt_eval import (
        LabelledPrompt,
        choose_prompt_theta,
        prompt_metrics,
        prompt_scores,
    )

    quiet()
    model = load_monitor(monitor)
    theta = model.prompt_theta
    if val is not None:
        vp = read_jsonl(val, LabelledPrompt)
        theta = choose_prompt_theta(
            prompt_scores(model, vp), [p.label for p in vp], max_fpr=max_fpr
        )
        if save:
            update_monitor_config(monitor, prompt_theta=theta)
    test = read_jsonl(data, LabelledPrompt)
    metrics = prompt_metrics(prompt_scores(model, test), test, theta)
    print_metrics(metrics, f"prompt head of {monitor} on {data}", as_json)


@eval_app.command("mrm")
@one_line_errors
def eval_mrm_cmd(
    data: Annotated[
        Path, typer.Option(help="Held-out token-level reward JSONL (from `saffron data rewards`).")
    ],
    mrm: Annotated[Path, typer.Option(help="MRM adapter folder.")],
    judge_monitor: Annotated[
        Path, typer.Option(help="The monitor whose response head made the rewards (the judge).")
    ],
    judge_ema: Annotated[float, typer.Option(help="The judge smoothing used for the data.")] = 1.0,
    policy: Annotated[
        str, typer.Option(help="Policy whose nucleus gives the children.")
    ] = "smollm2",
    prefixes: Annotated[
        int, typer.Option(min=2, help="Prefixes for the within-prefix ranking.")
    ] = 200,
    top_p: Annotated[float, typer.Option(min=0.01, max=1.0, help="Nucleus of the children.")] = 0.9,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    subset: Annotated[
        str,
        typer.Option(
            help="Which records: 'all', 'plain' or 'prefill' (rolled out under the prefilling attack)."
        ),
    ] = "all",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Pooled Spearman of MRM vs judge on held-out prefixes, and within-prefix ranking with a 95% CI.

    Example: saffron eval mrm --data rewards_test.jsonl --mrm runs/mrm --judge-monitor runs/monitor
    """

    from saffron_runtime.errors import ConfigError
    from saffron_runtime.evaluation.mrm_eval import evaluate_mrm
    from saffron_runtime.jsonl import read_jsonl
    from saffron_runtime.models.loading import load_policy
    from saffron_runtime.models.mrm_io import load_mrm
    from saffron_runtime.monitor.model import load_monitor
    from saffron_runtime.training.judges import judge_from_monitor
    from saffron_runtime.training.reward_data import TokenRewardRecord

    quiet()
    records = read_jsonl(data, TokenRewardRecord)
    if subset not in ("all", "plain", "prefill"):
        raise ConfigError(f"--subset {subset!r}: choose all, plain or prefill")
    if subset != "all":
        records = [r for r in records if bool(r.prefill_ids) == (subset == "prefill")]
        if not records:
            raise ConfigError(f"--subset {subset}: {data} has no such records")
    pol = load_policy(policy, chat=True)
    model = load_mrm(mrm, policy_tokenizer=pol.tokenizer)
    judge = judge_from_monitor(load_monitor(judge_monitor), ema=judge_ema)
    report = evaluate_mrm(model, judge, pol, records, n_prefixes=prefixes, top_p=top_p, seed=seed)
    print_metrics(report.to_dict(), f"MRM {mrm} against its judge on {data}", as_json)


@eval_app.command("responses")
@one_line_errors
def eval_responses_cmd(
    val: Annotated[Path, typer.Option(help="Validation JSONL with prompt, response, label.")],
    monitor: Annotated[str, typer.Option(help="Monitor folder, or 'bundled'.")] = "bundled",
    save: Annotated[
        bool, typer.Option(help="Write the chosen threshold into the monitor's config.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Choose the response head's threshold (the attack evaluation's learned judge) on validation.

    Example: saffron eval responses --val runs/data/monitor_val.jsonl --monitor bundled --save
    """
    from saffron_runtime.jsonl import read_jsonl
    from saffron_runtime.monitor.model import load_monitor, update_monitor_config
    from saffron_runtime.monitor.response_eval import choose_response_theta, response_scores
    from saffron_runtime.training.monitor_train import MonitorRecord

    quiet()
    model = load_monitor(monitor)
    recs = read_jsonl(val, MonitorRecord)
    scores = response_scores(model, [r.prompt for r in recs], [r.response for r in recs])
    theta, f1 = choose_response_theta(scores, [r.label for r in recs])
    if save:
        update_monitor_config(
            monitor, response_theta=theta, metadata={"response_theta_val_macro_f1": f1}
        )
    print_metrics({"response_theta": theta, "val_macro_f1": f1, "n": len(recs)}, str(val), as_json)


def _ints(spec: str, option: str) -> list[int]:
    try:
        return [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        from saffron_runtime.errors import ConfigError

        raise ConfigError(f"{option} {spec!r}: give comma-separated integers, e.g. 2,4,8") from None


# Most of this command is its typer option declarations (one per grid setting); the body is short.
@eval_app.command("attack")
@one_line_errors
def eval_attack_cmd(
    prompts: Annotated[
        Path, typer.Option(help="Harmful prompts JSONL: id, prompt, optional target.")
    ],
    prefill: Annotated[
        int, typer.Option(min=0, help="Force the first N tokens of a harmful reference start.")
    ] = 0,
    methods: Annotated[
        str,
        typer.Option(
            help="Comma-separated: unguarded,best_of_n,prm_beam,saffron,saffron_reward (saffron: "
            "ChatSaffron's default search; saffron_reward: the paper's ranking by reward)."
        ),
    ] = "unguarded,best_of_n,prm_beam,saffron",
    budgets: Annotated[str, typer.Option(help="Budgets of every method, e.g. 2,4,8.")] = "2,4,8",
    bon_n: Annotated[
        str | None, typer.Option(help="N of Best-of-N (overrides --budgets for it), e.g. 8,16,32.")
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Tokens per answer.")] = 50,
    benign: Annotated[
        Path | None, typer.Option(help="Benign prompts JSONL (id, prompt): over-refusal.")
    ] = None,
    benign_methods: Annotated[
        str | None,
        typer.Option(help="Methods on the benign prompts (default: --methods); unguarded always runs."),
    ] = None,
    benign_budgets: Annotated[
        str | None,
        typer.Option(help="Budgets on the benign prompts (default: --budgets), e.g. 8."),
    ] = None,
    benign_bon_n: Annotated[
        str | None,
        typer.Option(help="Best-of-N N on the benign prompts (default: --bon-n), e.g. 16."),
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the results here.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write ASR vs TFLOPs here (PNG).")] = None,
    policy: Annotated[str, typer.Option(help="Policy: 'smollm2' or a folder.")] = "smollm2",
    mrm: Annotated[str, typer.Option(help="MRM folder, or 'bundled'.")] = "bundled",
    monitor: Annotated[
        str, typer.Option(help="Learned judge (its response head), or 'bundled'.")
    ] = "bundled",
    judges: Annotated[
        str, typer.Option(help="MiniLM judges folder (train-judges: refusal, and the old harm judge), or 'bundled'.")
    ] = "bundled",
    independent_judge: Annotated[
        str,
        typer.Option(help="Independent harm judge: 'request' (reads request + response) or 'minilm' (the "
                     "response-only logistic regression of the published figures)."),
    ] = "request",
    request_judge: Annotated[
        str, typer.Option(help="Request-judge folder (train-request-judge), or 'bundled'.")
    ] = "bundled",
    data_dir: Annotated[
        Path, typer.Option(help="Safety data folder (the repository's data/): checks the refusal judges on PyRIT labels.")
    ] = Path("data"),
    cache: Annotated[
        Path, typer.Option(help="Per-prompt generation cache (resume after an interruption).")
    ] = Path(".saffron-cache/attack"),
    ledger: Annotated[
        Path | None,
        typer.Option(
            help="Verdict ledger JSONL (scores and cost, no text): commit it to resume on a fresh clone."
        ),
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Use only the first N prompts.")] = None,
    reward_sees_prefill: Annotated[
        bool, typer.Option(help="Show the prefill to the MRM/PRM during search.")
    ] = False,
    judges_see_prefill: Annotated[
        bool, typer.Option(help="Judge the prefill together with the continuation.")
    ] = False,
    seed: Annotated[int, typer.Option(help="Sampling seed (Best-of-N).")] = 0,
    cached_only: Annotated[
        bool,
        typer.Option(help="Generate nothing: report on the prompts fully in the cache (interim)."),
    ] = False,
) -> None:
    """Attack success rate against compute for every method and budget, under three judges.

    Example: saffron eval attack --prompts attack.jsonl --prefill 10 --budgets 2,4,8 --bon-n 8,16,32
    --benign benign.jsonl --json results.json --plot asr.png
    """
    from saffron_runtime.evaluation.attack import (
        MRM_METHODS,
        AttackSettings,
        build_harness,
        load_prompts,
        plot_asr,
        report,
    )

    quiet()
    settings = AttackSettings(
        prefill=prefill,
        max_new_tokens=max_new_tokens,
        seed=seed,
        reward_sees_prefill=reward_sees_prefill,
        judges_see_prefill=judges_see_prefill,
    )
    grid, benign_grid = _attack_grids(
        methods, budgets, bon_n, benign_methods, benign_budgets, benign_bon_n
    )
    harmful = load_prompts(prompts, limit)
    benign_prompts = load_prompts(benign, limit) if benign is not None else []
    with console.status("loading the policy, the MRM, the learned judge and the independent judges"):
        harness = build_harness(
            policy=policy,
            mrm=mrm if any(s.method in MRM_METHODS for s in grid) else None,
            monitor=monitor,
            judges=judges,
            independent=independent_judge,
            request_judge=request_judge,
            cache_dir=cache,
            settings=settings,
            ledger=ledger,
        )
    attacked, benign_judged = _run_attack(
        harness, harmful, grid, benign_prompts, benign_grid, cached_only
    )
    out = report(
        harness, attacked, grid, benign_judged, benign_grid, data_dir=data_dir, prompts=prompts
    )
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(out, indent=2) + "\n")
        console.print(f"wrote {json_out}")
    if plot is not None:
        plot_asr(out["results"], plot, title=f"{prompts.name}, prefill {prefill}")
        console.print(f"wrote {plot}")
    _print_attack(out)


def _attack_grids(
    methods: str,
    budgets: str,
    bon_n: str | None,
    benign_methods: str | None,
    benign_budgets: str | None,
    benign_bon_n: str | None,
) -> tuple[list[MethodSpec], list[MethodSpec]]:
    """The harmful grid and the benign grid (which always holds unguarded, the over-refusal baseline)."""
    from saffron_runtime.evaluation.attack import method_grid

    names = [m.strip() for m in methods.split(",") if m.strip()]
    bon = _ints(bon_n, "--bon-n") if bon_n else None
    grid = method_grid(names, _ints(budgets, "--budgets"), bon)
    b_names = [m.strip() for m in benign_methods.split(",") if m.strip()] if benign_methods else names
    benign_grid = method_grid(
        b_names if "unguarded" in b_names else ["unguarded", *b_names],
        _ints(benign_budgets, "--benign-budgets") if benign_budgets else _ints(budgets, "--budgets"),
        _ints(benign_bon_n, "--benign-bon-n") if benign_bon_n else bon,
    )
    return grid, benign_grid


def _run_attack(
    harness: AttackHarness,
    harmful: list[AttackPrompt],
    grid: list[MethodSpec],
    benign: list[AttackPrompt],
    benign_grid: list[MethodSpec],
    cached_only: bool,
) -> tuple[list[Judged], list[Judged]]:
    """Generate and judge every (prompt, method) pair, harmful then benign, under one progress bar."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    total = len(grid) * len(harmful) + len(benign_grid) * len(benign)
    cols = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[what]}"),
    )
    with Progress(*cols, console=console) as bar:
        task = bar.add_task("generating", total=total, what="")

        def step(what: str) -> None:
            bar.update(task, advance=1, what=what)

        attacked = harness.run(harmful, grid, on_step=step, cached_only=cached_only)
        benign_judged = (
            harness.run(benign, benign_grid, attack=False, on_step=step, cached_only=cached_only)
            if benign
            else []
        )
    return attacked, benign_judged


def _print_attack(out: dict) -> None:
    from rich.table import Table

    table = Table(title="attack success rate (ASR) against compute")
    for col in ("method", "budget", "ASR learned", "ASR independent", "ASR strings", "TFLOPs", "n"):
        table.add_column(col, justify="right")
    for r in out["results"]:
        table.add_row(
            r["method"],
            str(r["budget"]),
            f"{r['asr_learned']:.3f}",
            f"{r['asr_independent']:.3f}",
            f"{r['asr_strings']:.3f}",
            f"{r['tflops_per_prompt']:.4f}",
            str(r["n"]),
        )
    console.print(table)
    rows = out.get("over_refusal", {}).get("results", [])
    if rows:
        t2 = Table(title=f"over-refusal (judge: {out['over_refusal']['judge']})")
        for col in ("method", "budget", "refused", "refused (strings)", "vs unguarded", "n"):
            t2.add_column(col, justify="right")
        for r in rows:
            t2.add_row(
                r["method"],
                str(r["budget"]),
                f"{r['refusal_rate']:.3f}",
                f"{r['refusal_rate_strings']:.3f}",
                f"{r['delta_vs_unguarded']:+.3f}",
                str(r["n"]),
            )
        console.print(t2)
