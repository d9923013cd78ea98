"""The demo behind ``make demo``: for now, one plain answer from SmolLM2 and a status of what exists."""

from __future__ import annotations

import time

import torch
from rich.console import Console
from rich.panel import Panel

from saffron_runtime.models.loading import load_policy

NOT_BUILT_YET = (
    "Not built yet: Saffron tree search with the bundled reward model (A3, C2), the streaming "
    "monitor (B1, C2) and the side-by-side guarded demo (F1). This run is unguarded."
)


def run_basic_demo(console: Console, *, prompt: str, max_new_tokens: int) -> str:
    """Load SmolLM2 (converting it once), greedily answer ``prompt`` and print it with timings."""
    t0 = time.perf_counter()
    with console.status("Loading SmolLM2-135M-Instruct (the first run converts the GGUF, ~30 s)"):
        loaded = load_policy("smollm2", chat=True)
    load_s = time.perf_counter() - t0
    tok, model = loaded.tokenizer, loaded.model
    ids = tok.apply_chat_template(
        [{"role": "user", "content": prompt}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    t1 = time.perf_counter()
    with torch.no_grad():
        out = model.generate(
            **ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id
        )
    gen_s = time.perf_counter() - t1
    new = out[0, ids["input_ids"].shape[1] :]
    text = tok.decode(new, skip_special_tokens=True)
    console.print(Panel(prompt, title="prompt"))
    console.print(Panel(text, title="SmolLM2-135M-Instruct (unguarded, greedy)"))
    console.print(
        f"load {load_s:.1f} s, {len(new)} tokens in {gen_s:.1f} s "
        f"({len(new) / max(gen_s, 1e-9):.1f} tokens/s)"
    )
    console.print(f"[yellow]{NOT_BUILT_YET}[/]")
    return text
