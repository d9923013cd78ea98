"""The ``saffron`` command line: version, environment info and the demo (more commands join later)."""

from __future__ import annotations

import json
import sys
from importlib import metadata
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from saffron_runtime.cli_eval import eval_app
from saffron_runtime.cli_support import console, one_line_errors, quiet
from saffron_runtime.errors import SaffronError

app = typer.Typer(
    name="saffron",
    help="Guarded generation: Saffron tree search, streaming harm monitors, entity-aware rewards.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(eval_app, name="eval")


def _version() -> str:
    try:
        return metadata.version("langchain-saffron")
    except metadata.PackageNotFoundError:  # running from a source tree without install
        return "0+unknown"


def _version_callback(value: bool) -> None:
    if value:
        console.print(f"saffron {_version()}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version_callback, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """Guarded generation for LangChain. Example: ``saffron info``."""


@app.command()
@one_line_errors
def info() -> None:
    """Show versions, the model cache and whether SmolLM2 is installed.

    Example: saffron info
    """
    from saffron_runtime.models.smollm2 import smollm2_gguf_path
    from saffron_runtime.paths import cache_dir

    table = Table(title="saffron info", show_header=False)
    table.add_row("langchain-saffron", _version())
    table.add_row("python", sys.version.split()[0])
    for dist in ("torch", "transformers", "peft", "langchain-core", "langchain", "langgraph"):
        try:
            table.add_row(dist, metadata.version(dist))
        except metadata.PackageNotFoundError:
            table.add_row(dist, "[yellow]not installed[/]")
    table.add_row("model cache", str(cache_dir()))
    try:
        gguf = smollm2_gguf_path()
        table.add_row("SmolLM2-135M-Instruct", f"installed ({gguf})")
        converted = any(cache_dir().glob("smollm2-*/.saffron-converted"))
        table.add_row("SmolLM2 converted", "yes" if converted else "no (converts on first use)")
    except SaffronError as e:
        table.add_row("SmolLM2-135M-Instruct", f"[red]missing[/]: {e}")
    console.print(table)


@app.command()
@one_line_errors
def demo(
    prompt: Annotated[str, typer.Option(help="The user prompt to answer.")] = (
        "Give me three tips for staying safe while hiking."
    ),
    max_new_tokens: Annotated[int, typer.Option(min=1, max=512, help="Tokens to generate.")] = 40,
    budget: Annotated[int, typer.Option(min=1, max=64, help="Saffron frontier width.")] = 4,
) -> None:
    """Benign, harmful and prefilled-harmful prompts: unguarded, Saffron search, and monitored.

    Example: saffron demo --prompt "How do I bake bread?" --max-new-tokens 32
    """
    from saffron_runtime.demo import run_demo

    quiet()
    run_demo(console, prompt=prompt, max_new_tokens=max_new_tokens, budget=budget)


@app.command()
@one_line_errors
def generate(
    prompt: Annotated[str, typer.Option(help="The user prompt.")],
    method: Annotated[
        str,
        typer.Option(
            help="saffron | best_of_n | prm_beam (both ranked by the monitor's response head) | "
            "unguarded (greedy)."
        ),
    ] = "saffron",
    budget: Annotated[int, typer.Option(help="Frontier width (saffron, prm_beam).")] = 4,
    num_samples: Annotated[int, typer.Option(help="N of Best-of-N.")] = 8,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate.")] = 64,
    policy: Annotated[
        str, typer.Option(help="Policy: 'smollm2', a folder or a .gguf file.")
    ] = "smollm2",
    mrm: Annotated[
        str,
        typer.Option(help="MRM adapter folder, or 'bundled' (the shipped SmolLM2 MRM)."),
    ] = "bundled",
    monitor: Annotated[
        str,
        typer.Option(help="Monitor folder watching the stream, 'bundled', or 'none'."),
    ] = "bundled",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Generate one answer under a search method, watched by a monitor (the bundled ones by default).

    Example: saffron generate --prompt "How do I bake bread?" --method saffron --mrm runs/mrm --budget 4
    """

    from saffron_runtime.guarded import GuardedGeneration
    from saffron_runtime.models.loading import load_policy
    from saffron_runtime.models.mrm_io import load_mrm
    from saffron_runtime.models.smollm2 import speaks_smollm2
    from saffron_runtime.monitor.adapters import SCMMonitor, response_head_prm
    from saffron_runtime.monitor.model import load_monitor
    from saffron_runtime.search.config import SearchConfig
    from saffron_runtime.search.engine import SearchEngine

    quiet()
    cfg = SearchConfig(
        method=method if method != "unguarded" else "greedy",
        budget=budget,
        num_samples=num_samples,
        max_new_tokens=max_new_tokens,
    )
    pol = load_policy(policy, chat=True)
    needs_mrm = method == "saffron"
    needs_judge = cfg.method in ("prm_beam", "best_of_n")  # ranked by the monitor's response head
    watcher, judge = None, None
    if monitor.lower() != "none" or needs_judge:  # the bundled monitor reads the policy's states
        name = monitor if monitor.lower() != "none" else "bundled"
        same = name == "bundled" and speaks_smollm2(pol.tokenizer)
        shared = {"backbone": pol.model, "tokenizer": pol.tokenizer} if same else {}
        judge = load_monitor(name, **shared)
        watcher = SCMMonitor(judge) if monitor.lower() != "none" else None
    engine = SearchEngine(
        pol,
        load_mrm(mrm, policy_tokenizer=pol.tokenizer) if needs_mrm else None,
        response_head_prm(judge) if needs_judge and judge is not None else None,
    )
    ids = engine.chat_prompt_ids(prompt)
    gen = GuardedGeneration(engine, watcher, ids, cfg, prompt_text=prompt)
    for delta in gen:
        if not as_json:
            console.print(delta, end="", highlight=False, soft_wrap=True)
    o = gen.outcome
    stats = (o.result.stats if o.result else o.stats).to_dict()  # type: ignore[union-attr]
    if as_json:
        print(
            json.dumps(
                {
                    "text": o.released,
                    "blocked": o.blocked,
                    "verdict": o.verdict.to_dict() if o.verdict else None,
                    "stats": stats,
                },
                default=str,
            )
        )
    else:
        console.print()
        if o.blocked:
            console.print(f"[red]blocked:[/] {o.verdict.reason if o.verdict else ''}")
        console.print(
            f"[dim]{stats['policy_tokens']} policy tokens, {stats['reward_forwards']} reward forwards, "
            f"{stats['wall_s']:.1f} s[/]"
        )


LoraR = Annotated[int, typer.Option(help="LoRA rank.")]
LoraAlpha = Annotated[float, typer.Option(help="LoRA alpha (scale = alpha / r).")]
TargetModules = Annotated[str, typer.Option(help="Comma-separated module names that get LoRA.")]
TopLayers = Annotated[
    int | None, typer.Option(min=1, help="LoRA only in the last N layers (faster backward).")
]
MaxResponseTokens = Annotated[int, typer.Option(help="Truncate responses to this many tokens.")]


def _modules(spec: str) -> list[str]:
    return [m.strip() for m in spec.split(",") if m.strip()]


train_app = typer.Typer(help="Train reward models and monitors.", no_args_is_help=True)
app.add_typer(train_app, name="train")


@train_app.command("mrm")
@one_line_errors
def train_mrm_cmd(
    data: Annotated[
        Path,
        typer.Option(help="Token-level reward JSONL (see saffron_runtime.training.reward_data)."),
    ],
    out: Annotated[
        Path, typer.Option(help="Output folder (Saffron-1 adapter layout + model card).")
    ],
    base: Annotated[
        str, typer.Option(help="Backbone: 'smollm2', a folder or a .gguf file.")
    ] = "smollm2",
    lr: Annotated[float, typer.Option(help="Learning rate.")] = 1e-3,
    epochs: Annotated[int, typer.Option(help="Passes over the data.")] = 1,
    batch_size: Annotated[int, typer.Option(help="Responses per step.")] = 8,
    lora_r: LoraR = 8,
    lora_alpha: LoraAlpha = 16.0,
    target_modules: TargetModules = "q_proj,v_proj",
    top_layers: TopLayers = None,
    template: Annotated[
        str, typer.Option(help="MRM input layout: 'saffron1' (the released adapter) or 'chatml'.")
    ] = "saffron1",
    max_steps: Annotated[int | None, typer.Option(help="Stop after this many steps.")] = None,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints.")] = 50,
    max_response_tokens: MaxResponseTokens = 256,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Train a multifurcation reward model with partial supervision; resumes from OUT/checkpoints.

    Example: saffron train mrm --data rewards.jsonl --out runs/mrm --base smollm2
    """
    from saffron_runtime.errors import ConfigError
    from saffron_runtime.models.mrm import MRM_TEMPLATES
    from saffron_runtime.training.mrm_train import MRMTrainConfig, train_mrm

    if template not in MRM_TEMPLATES:
        raise ConfigError(f"--template {template!r}: must be one of {sorted(MRM_TEMPLATES)}")
    tmpl = MRM_TEMPLATES[template]
    cfg = MRMTrainConfig(
        template_prefix=tmpl.prefix,
        template_separator=tmpl.separator,
        lora_alpha=lora_alpha,
        top_layers=top_layers,
        target_modules=_modules(target_modules),
        data=data,
        out=out,
        base=base,
        lr=lr,
        epochs=epochs,
        batch_size=batch_size,
        lora_r=lora_r,
        max_steps=max_steps,
        checkpoint_every=checkpoint_every,
        max_response_tokens=max_response_tokens,
        seed=seed,
    )
    train_mrm(cfg)
    console.print(f"saved the MRM to {out}")


@train_app.command("monitor")
@one_line_errors
def train_monitor_cmd(
    data: Annotated[
        Path, typer.Option(help="Labelled responses JSONL (prompt, response, label[, harm_start]).")
    ],
    out: Annotated[Path, typer.Option(help="Output monitor folder.")],
    val: Annotated[
        Path | None, typer.Option(help="Validation JSONL: the decision rule is chosen on it.")
    ] = None,
    prompt_data: Annotated[
        Path | None, typer.Option(help="Labelled prompts JSONL for the prompt head.")
    ] = None,
    base: Annotated[str, typer.Option(help="Backbone: 'smollm2' or a folder.")] = "smollm2",
    variant: Annotated[str, typer.Option(help="'heads' (frozen backbone) or 'lora'.")] = "heads",
    lora_r: LoraR = 8,
    lora_alpha: LoraAlpha = 16.0,
    target_modules: TargetModules = "q_proj,v_proj",
    top_layers: TopLayers = None,
    max_response_tokens: MaxResponseTokens = 256,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = 1e-3,
    epochs: Annotated[int, typer.Option(help="Passes over the data.")] = 1,
    batch_size: Annotated[int, typer.Option(help="Responses per step.")] = 8,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints.")] = 50,
    max_steps: Annotated[int | None, typer.Option(help="Stop after this many steps.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Train a streaming monitor with dual supervision; resumes from OUT/checkpoints.

    Example: saffron train monitor --data train.jsonl --val val.jsonl --out runs/monitor --variant lora
    """
    from saffron_runtime.training.monitor_train import MonitorTrainConfig, train_monitor

    cfg = MonitorTrainConfig(
        data=data,
        val=val,
        prompt_data=prompt_data,
        out=out,
        base=base,
        variant=variant,
        lora_r=lora_r,
        lora_alpha=lora_alpha,
        target_modules=_modules(target_modules),
        top_layers=top_layers,
        max_response_tokens=max_response_tokens,
        lr=lr,
        epochs=epochs,
        batch_size=batch_size,
        max_steps=max_steps,
        checkpoint_every=checkpoint_every,
        seed=seed,
    )
    train_monitor(cfg)
    console.print(f"saved the monitor to {out}")


data_app = typer.Typer(help="Build training data.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("rewards")
@one_line_errors
def data_rewards_cmd(
    prompts: Annotated[
        Path, typer.Option(help="Prompts JSONL (id, prompt[, prefill, label, source]).")
    ],
    out: Annotated[
        Path, typer.Option(help="Output token-level reward JSONL (appended; resumable).")
    ],
    judge_monitor: Annotated[
        Path, typer.Option(help="Monitor folder whose response head judges every prefix.")
    ],
    policy: Annotated[str, typer.Option(help="Policy: 'smollm2' or a folder.")] = "smollm2",
    max_new_tokens: Annotated[int, typer.Option(help="Tokens per rollout.")] = 64,
    batch_size: Annotated[int, typer.Option(help="Rollouts per batch.")] = 8,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    prefill_harmful: Annotated[
        str,
        typer.Option(
            help="Prefilling attack forced after the header on harmful prompts (label 1)."
        ),
    ] = "",
    keep_plain: Annotated[
        bool,
        typer.Option(help="With --prefill-harmful, also roll out each harmful prompt plainly."),
    ] = True,
    sample: Annotated[
        int | None,
        typer.Option(
            min=1, help="Use a random subset of N prompts (seeded by --seed, file order)."
        ),
    ] = None,
    judge_ema: Annotated[
        float,
        typer.Option(help="Smooth the judge's margins along the response (1 = raw per position)."),
    ] = 1.0,
) -> None:
    """Roll out a policy and score every response prefix with a judge (token-level reward data).

    Example: saffron data rewards --prompts train_prompts.jsonl --judge-monitor runs/monitor --out rewards.jsonl
    """
    from saffron_runtime.jsonl import read_jsonl
    from saffron_runtime.models.loading import load_policy
    from saffron_runtime.monitor.model import load_monitor
    from saffron_runtime.training.judges import judge_from_monitor
    from saffron_runtime.training.reward_data import (
        PromptItem,
        build_reward_data,
        with_prefill_attack,
    )

    items = read_jsonl(prompts, PromptItem)
    if sample is not None and sample < len(items):
        import random

        keep = set(random.Random(seed).sample(range(len(items)), sample))
        items = [it for i, it in enumerate(items) if i in keep]
    if prefill_harmful:
        items = with_prefill_attack(items, prefill_harmful, keep_plain=keep_plain)
    judge = judge_from_monitor(load_monitor(judge_monitor), ema=judge_ema)
    build_reward_data(
        load_policy(policy, chat=True),
        judge,
        items,
        out,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        seed=seed,
    )
    console.print(f"wrote token-level rewards to {out}")


@data_app.command("splits")
@one_line_errors
def data_splits_cmd(
    data_dir: Annotated[
        Path, typer.Option(help="The safety data folder (prompts/, responses/, xstest/): the repository's data/.")
    ],
    out: Annotated[
        Path, typer.Option(help="Output folder for the split JSONL files and split_ids.json.")
    ],
) -> None:
    """Labelled monitor and prompt-head data, split by prompt (never by response), with the split ids.

    Example: saffron data splits --data-dir data --out runs/data
    """
    from saffron_runtime.training.safety_data import write_splits

    for name, n in write_splits(data_dir, out).items():
        console.print(f"{name}: {n}")


if __name__ == "__main__":  # pragma: no cover
    app()
