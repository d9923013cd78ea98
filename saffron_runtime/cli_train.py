"""``saffron train`` and ``saffron data``: train reward models and monitors, build their data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from saffron_runtime.cli_support import console, one_line_errors

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
    rank_weight: Annotated[
        float, typer.Option(help="Weight of the within-prefix (centred) loss on judged children; 0: off.")
    ] = 0.0,
    head_lora: Annotated[
        bool,
        typer.Option(help="LoRA on the output layer too: a learnable row per token (helps the children's order)."),
    ] = False,
    loraplus_ratio: Annotated[
        float, typer.Option(help="LoRA+: the B matrices' learning rate over the A matrices' (1: plain AdamW).")
    ] = 1.0,
    token_bias: Annotated[
        bool,
        typer.Option(help="A learnable reward offset per token, started from the data's mean centred child reward."),
    ] = False,
    train_final_norm: Annotated[
        bool,
        typer.Option(help="Train the final norm's gain too, so the LoRA can rescale the base model's logit gaps."),
    ] = False,
    final_norm_scale: Annotated[
        float, typer.Option(help="With --train-final-norm: start the gain at this multiple of the base's (damps its logits).")
    ] = 1.0,
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
        rank_weight=rank_weight,
        head_lora=head_lora,
        loraplus_ratio=loraplus_ratio,
        token_bias=token_bias,
        train_final_norm=train_final_norm,
        final_norm_scale=final_norm_scale,
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
    init_from: Annotated[
        Path | None,
        typer.Option(help="Start from this saved monitor's weights (same variant and LoRA shape)."),
    ] = None,
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
        init_from=init_from,
    )
    train_monitor(cfg)
    console.print(f"saved the monitor to {out}")


data_app = typer.Typer(help="Build training data.", no_args_is_help=True)


# Most of this command is its typer option declarations; the body is short.
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
    limit: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Only the first N items (after --sample and the prefill copies; file order): a fixed, "
            "cheaper subset of the same run.",
        ),
    ] = None,
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
    items = items[:limit] if limit else items
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


@data_app.command("children")
@one_line_errors
def data_children_cmd(
    data: Annotated[Path, typer.Option(help="Token-level reward JSONL (from `saffron data rewards`).")],
    out: Annotated[Path, typer.Option(help="Output JSONL: the records with judged children (resumable).")],
    judge_monitor: Annotated[
        Path, typer.Option(help="Monitor folder whose response head judges each prefix + child.")
    ],
    policy: Annotated[str, typer.Option(help="Policy whose nucleus gives the children.")] = "smollm2",
    positions: Annotated[int, typer.Option(min=1, help="Prefixes judged per response.")] = 12,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0, help="The policy's nucleus.")] = 0.8,
    max_children: Annotated[int, typer.Option(min=1, help="Most children per prefix.")] = 12,
    judge_ema: Annotated[
        float, typer.Option(help="The judge's smoothing (use the one the rewards were built with).")
    ] = 1.0,
    seed: Annotated[int, typer.Option(help="Seed of the position draw (per record).")] = 0,
) -> None:
    """Judge every nucleus child at sampled prefixes of each response, so the MRM learns to rank the
    children of a prefix (the search's question), not only one token per prefix.

    Example: saffron data children --data rewards.jsonl --judge-monitor runs/monitor --judge-ema 0.3 --out children.jsonl
    """
    from saffron_runtime.models.loading import load_policy
    from saffron_runtime.monitor.model import load_monitor
    from saffron_runtime.training.child_rewards import add_child_rewards
    from saffron_runtime.training.judges import judge_from_monitor

    judge = judge_from_monitor(load_monitor(judge_monitor), ema=judge_ema)
    add_child_rewards(
        load_policy(policy, chat=True),
        judge,
        data,
        out,
        positions=positions,
        top_p=top_p,
        max_children=max_children,
        seed=seed,
    )
    console.print(f"wrote records with judged children to {out}")


@data_app.command("merge-children")
@one_line_errors
def data_merge_children_cmd(
    data: Annotated[
        list[Path], typer.Option(help="A `saffron data children` file; repeat for each --seed run.")
    ],
    out: Annotated[Path, typer.Option(help="Output JSONL: one record per rollout, children merged.")],
) -> None:
    """Merge children files judged at different positions of the same rollouts (``--seed`` runs), so the
    MRM sees more prefixes per rollout without judging any position twice.

    Example: saffron data merge-children --data children_s0.jsonl --data children_s1.jsonl --out children.jsonl
    """
    from saffron_runtime.training.child_rewards import merge_child_records

    n = merge_child_records(data, out)
    console.print(f"wrote {n} merged records to {out}")


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


@data_app.command("policy-labels")
@one_line_errors
def data_policy_labels_cmd(
    rollouts: Annotated[
        list[Path], typer.Option(help="Rollout JSONL(s) from `saffron data rewards` (repeat the option).")
    ],
    out: Annotated[Path, typer.Option(help="Output monitor-training JSONL (id, prompt, response, label).")],
    teacher: Annotated[
        Path, typer.Option(help="Folder of the teacher's refusal judge: loaded if there, else trained and saved.")
    ],
    data_dir: Annotated[Path, typer.Option(help="The safety data folder (the repository's data/).")] = Path("data"),
    policy: Annotated[str, typer.Option(help="The policy whose tokenizer decodes the rollouts.")] = "smollm2",
    harm_from: Annotated[
        str, typer.Option(help="Where a harmful continuation's harm starts: after-first-sentence or all (its first token).")
    ] = "after-first-sentence",
) -> None:
    """Label the policy's own rollouts for monitor training: harmful = a harmful request answered
    without refusal (the refusal judge is trained on the PyRIT human refusal labels only).

    Example: saffron data policy-labels --rollouts runs/mrm/rewards_train.jsonl --teacher runs/teacher --out policy.jsonl
    """
    import json

    from saffron_runtime.evaluation.text_judges import TextJudge
    from saffron_runtime.jsonl import write_jsonl
    from saffron_runtime.models.loading import load_policy
    from saffron_runtime.training.policy_labels import (
        rollouts_from_rewards,
        save_teacher,
        teacher_rows,
        train_refusal_teacher,
    )

    if harm_from not in ("after-first-sentence", "all"):
        raise typer.BadParameter(f"--harm-from must be after-first-sentence or all, got {harm_from!r}")
    if (teacher / "judge.json").is_file():
        judge = TextJudge.load(teacher)
    else:
        judge = train_refusal_teacher(data_dir)
        save_teacher(judge, teacher)
    tok = load_policy(policy).tokenizer
    records = [json.loads(line) for path in rollouts for line in path.open() if line.strip()]
    rows = teacher_rows(rollouts_from_rewards(records, tok), judge, harm_rule=harm_from)  # type: ignore[arg-type]
    write_jsonl(out, rows)
    harmful = sum(r["label"] for r in rows)
    console.print(f"wrote {len(rows)} rows ({harmful} harmful) to {out}; teacher card: {judge.card}")
