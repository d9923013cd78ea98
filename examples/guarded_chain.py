"""An existing LCEL chain (prompt | model | parser) with its model swapped for ChatSaffron.

Nothing else in the chain changes: ``invoke``, ``stream`` and ``batch`` work as before, and every
answer now comes out of Saffron tree search (SmolLM2-135M-Instruct guided by the bundled
multifurcation reward model, watched by the bundled streaming monitor). The search statistics ride
along in the message's ``response_metadata["saffron"]``.

Run: ``python examples/guarded_chain.py`` (add ``--test`` for the short version the tests run).
"""

from __future__ import annotations

import sys
from typing import Any

from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable

from langchain_saffron import ChatSaffron

QUESTIONS = [
    "What is the capital of France?",
    "Give one tip for keeping houseplants healthy.",
    "Why is the sky blue?",
]


def build_chain(model: Runnable) -> Runnable:
    """The chain as it was written before Saffron: prompt | model | parser."""
    prompt = ChatPromptTemplate.from_messages(
        [("system", "Answer in one short sentence."), ("human", "{question}")]
    )
    return prompt | model | StrOutputParser()


def run(test: bool = False) -> dict[str, Any]:
    """Invoke, stream and batch the chain; return what happened (the test checks it)."""
    model = ChatSaffron(max_tokens=12 if test else 64, on_violation="refuse")
    chain = build_chain(model)
    question = {"question": QUESTIONS[0]}
    invoked = chain.invoke(question)
    streamed_chunks = list(chain.stream(question))
    batched = chain.batch([{"question": q} for q in QUESTIONS[1 : 2 if test else None]])
    # the stats live on the model's message, so look one step before the parser
    raw = (chain.first | chain.middle[0]).invoke(question)  # prompt | model
    stats = raw.response_metadata["saffron"]["stats"]
    return {
        "invoked": invoked,
        "streamed": "".join(streamed_chunks),
        "stream_chunks": len(streamed_chunks),
        "batched": batched,
        "stats": stats,
        "blocked": raw.response_metadata["saffron"]["blocked"],
    }


def main() -> None:
    """Print the answers and the search statistics."""
    out = run(test="--test" in sys.argv)
    print(f"invoke : {out['invoked']!r}")
    print(f"stream : {out['streamed']!r} ({out['stream_chunks']} chunks)")
    for q, a in zip(QUESTIONS[1:], out["batched"], strict=False):
        print(f"batch  : {q} -> {a!r}")
    s = out["stats"]
    print(
        f"search : method={s['method']} steps={s['steps']} policy_forwards={s['policy_forwards']} "
        f"reward_forwards={s['reward_forwards']} cache_hits={s['cache_hits']} wall={s['wall_s']:.2f}s"
    )


if __name__ == "__main__":
    main()
