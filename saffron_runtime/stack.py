"""The one place that turns user options into a generation stack: a policy, a multifurcation reward
model (MRM), a streaming monitor, a process reward model (PRM) and the :class:`SearchEngine` over them.

ChatSaffron, ``saffron generate``, ``saffron demo`` and the attack evaluation all call
:func:`build_stack`, so "auto", "bundled", paths and objects mean the same everywhere:

- ``policy``: ``"smollm2"`` (the packaged SmolLM2-135M-Instruct), a folder, a ``.gguf`` file, a
  :class:`LoadedModel` or a model object (with ``tokenizer=``).
- ``mrm``: ``"auto"`` (the bundled MRM when the policy speaks SmolLM2's vocabulary, else none),
  ``"bundled"``, an adapter folder, a :class:`MultifurcationRewardModel`, or ``None``.
- ``monitor``: ``"auto"`` (the bundled monitor when the policy speaks SmolLM2, else none),
  ``"bundled"``, a monitor folder, an :class:`SCMMonitorModel`, any :class:`StreamingMonitor`, or
  ``None``. A heads-only monitor trained on SmolLM2 reads the policy's own model (no second copy).
- ``prm``: ``"auto"`` (the response head of the SCM monitor, or of the bundled one when the policy
  speaks SmolLM2), ``"bundled"``, a monitor folder, an :class:`SCMMonitorModel`, a
  :class:`ProcessRewardModel`, or ``None``. Best-of-N ranks by the PRM when there is one, else by
  the MRM: ``prm=None`` ranks it by the MRM.

Only what ``methods`` need is loaded at once; :meth:`Stack.engine_for` loads the rest of what another
method needs on first use, so one stack can switch method per call.

Example::

    stack = build_stack(StackOptions(policy="smollm2", methods=("saffron",)))
    engine = stack.engine_for("best_of_n")  # loads the PRM (the monitor's response head) now
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import torch
from pydantic import ConfigDict, field_validator
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from saffron_runtime.bundled import BUNDLED, DEFAULT_MONITOR, resolve_bundled
from saffron_runtime.config import Settings
from saffron_runtime.errors import ConfigError
from saffron_runtime.models.loading import LoadedModel, load_policy, resolve_dtype
from saffron_runtime.models.mrm import MultifurcationRewardModel
from saffron_runtime.models.mrm_io import load_mrm
from saffron_runtime.models.smollm2 import SMOLLM2_ALIASES, speaks_smollm2
from saffron_runtime.models.vocab import check_vocab_compatible
from saffron_runtime.monitor.adapters import SCMMonitor, StreamingMonitor
from saffron_runtime.monitor.model import CONFIG_FILE, SCMMonitorModel, load_monitor
from saffron_runtime.search.config import Method
from saffron_runtime.search.engine import SearchEngine
from saffron_runtime.search.prm import ProcessRewardModel

AUTO = "auto"
_PATH = (str, os.PathLike)
_UNSET: Any = object()


class StackOptions(Settings):
    """What to assemble; every field takes a name ("auto", "bundled"), a path or a loaded object."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    policy: Any = "smollm2"
    """The policy: "smollm2", a folder, a .gguf file, a LoadedModel or a model object."""
    tokenizer: Any = None
    """The policy's tokenizer, required when ``policy`` is a model object."""
    mrm: Any = AUTO
    """The multifurcation reward model Saffron search reads."""
    monitor: Any = AUTO
    """The streaming monitor that watches committed text (None: unwatched)."""
    prm: Any = AUTO
    """The process reward model of PRM beam search and the Best-of-N ranker."""
    methods: tuple[Method, ...] = ()
    """Methods whose models are loaded now (a method named here that cannot run is an error now)."""
    device: str | None = None
    """Where every loaded model runs ("cpu", "cuda", "cuda:1", "mps"). None: a model given as an
    object stays where it is, models loaded by name or path go to the CPU; the MRM and monitor
    loaded here follow the policy's device."""
    dtype: str | None = None
    """The dtype of models loaded here ("float32", "bfloat16", "float16"). None: each checkpoint's
    own dtype (the policy, the MRM) and float32 for a monitor with its own backbone, as before;
    a model given as an object is cast only when this is set."""

    @field_validator("dtype")
    @classmethod
    def _dtype_name(cls, v: str | None) -> str | None:
        if v is not None:
            resolve_dtype(v)  # raises ConfigError naming the accepted dtypes
        return v

    @field_validator("device")
    @classmethod
    def _device_name(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                torch.device(v)
            except (RuntimeError, TypeError) as e:
                raise ValueError(f"{v!r} is not a torch device; use cpu, cuda, cuda:N or mps") from e
        return v

    @field_validator("policy")
    @classmethod
    def _policy_kind(cls, v: Any) -> Any:
        if not isinstance(v, (*_PATH, LoadedModel, PreTrainedModel)):
            raise ValueError("give 'smollm2', a folder, a .gguf file, a LoadedModel or a model")
        return v

    @field_validator("mrm")
    @classmethod
    def _mrm_kind(cls, v: Any) -> Any:
        if v is not None and not isinstance(v, (*_PATH, MultifurcationRewardModel)):
            raise ValueError("give 'auto', 'bundled', an adapter folder, an MRM object or None")
        return v

    @field_validator("monitor")
    @classmethod
    def _monitor_kind(cls, v: Any) -> Any:
        if v is not None and not isinstance(v, (*_PATH, SCMMonitorModel)) and not hasattr(v, "open"):
            raise ValueError("give 'auto', 'bundled', a monitor folder, a monitor object or None")
        return v

    @field_validator("prm")
    @classmethod
    def _prm_kind(cls, v: Any) -> Any:
        if v is not None and not isinstance(v, (*_PATH, SCMMonitorModel, ProcessRewardModel)):
            raise ValueError("give 'auto', 'bundled', a monitor folder, a monitor or PRM object, or None")
        return v


def response_head_prm(monitor: SCMMonitorModel) -> ProcessRewardModel:
    """The monitor's response head as a process reward model (margin safe - harmful at the last
    token): the learned judge that ranks PRM-beam children and Best-of-N samples."""
    return ProcessRewardModel(
        monitor.backbone, monitor.response_head, monitor.prefix_ids, name="monitor-response-head"
    )


def _is_auto(v: Any) -> bool:
    return isinstance(v, str) and v == AUTO


def _load_policy(opts: StackOptions) -> LoadedModel:
    if isinstance(opts.policy, (LoadedModel, PreTrainedModel)):
        loaded = opts.policy if isinstance(opts.policy, LoadedModel) else load_policy(
            opts.policy, tokenizer=opts.tokenizer, chat=True, device=_device_of(opts.policy)
        )
        place(loaded.model, opts.device, opts.dtype)  # an object moves only when asked to
        return loaded
    return load_policy(
        opts.policy,
        tokenizer=opts.tokenizer,
        chat=True,
        dtype=opts.dtype or "auto",
        device=opts.device or "cpu",
    )


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def place(model: torch.nn.Module, device: str | None, dtype: str | None) -> torch.nn.Module:
    """Move ``model`` to ``device`` and cast it to ``dtype`` (each only when given)."""
    if device is not None and _device_of(model) != torch.device(device):
        model.to(device)
    if dtype is not None:
        wanted = resolve_dtype(dtype)
        if isinstance(wanted, torch.dtype) and next(model.parameters()).dtype != wanted:
            model.to(wanted)
    return model


class Stack:
    """The assembled models; :attr:`engine` always holds what the methods asked for so far."""

    def __init__(self, options: StackOptions) -> None:
        self.options = options
        self.policy = _load_policy(options)
        self.device = _device_of(self.policy.model)
        """The policy's device: the MRM and monitor loaded here run on it too."""
        self._lock = threading.RLock()
        self._speaks: bool | None = None
        self._scm: dict[str, SCMMonitorModel] = {}  # monitor folders loaded once, shared by roles
        self._mrm: MultifurcationRewardModel | None = _UNSET
        self._prm: ProcessRewardModel | None = _UNSET
        self.prm_monitor: SCMMonitorModel | None = None
        """The monitor whose response head is the PRM (the evaluation's learned judge), if any."""
        self.monitor_model: SCMMonitorModel | None = None
        """The SCM model behind :attr:`streaming_monitor`, when it is one."""
        self.streaming_monitor: StreamingMonitor | None = self._load_monitor(options.monitor)
        self.engine = SearchEngine(self.policy)
        for method in options.methods:
            self.engine_for(method)

    # ------------------------------------------------------------------ per method
    def engine_for(self, method: str) -> SearchEngine:
        """The engine with every model ``method`` needs (loaded now if this is the first need)."""
        with self._lock:
            mrm, prm = self.engine.mrm, self.engine.prm
            if method == "saffron":
                mrm = self._need(self.mrm, method, "a multifurcation reward model: pass mrm= (an "
                                 "object or an adapter folder), or choose method='greedy' / 'best_of_n'")
            elif method == "prm_beam":
                prm = self._need(self.prm, method, "a process reward model: pass prm= (a monitor "
                                 "folder whose response head scores prefixes, or a PRM object)")
            elif method == "best_of_n":
                prm = self.prm
                if prm is None:
                    mrm = self._need(self.mrm, method, "a ranker: pass prm= (a monitor folder) or mrm=")
            elif method != "greedy":
                raise ConfigError(f"method={method!r} is unknown; use saffron, best_of_n, prm_beam or greedy")
            if mrm is not self.engine.mrm or prm is not self.engine.prm:
                self.engine = SearchEngine(self.policy, mrm, prm)
            return self.engine

    @staticmethod
    def _need(model: Any, method: str, what: str) -> Any:
        if model is None:
            raise ConfigError(f"method={method!r} needs {what}")
        return model

    @property
    def speaks_smollm2(self) -> bool:
        """True when the policy has SmolLM2's vocabulary (the bundled models fit it)."""
        if self._speaks is None:
            self._speaks = speaks_smollm2(self.policy.tokenizer)
        return self._speaks

    # ------------------------------------------------------------------ MRM
    @property
    def mrm(self) -> MultifurcationRewardModel | None:
        """The MRM (loaded on first use)."""
        with self._lock:
            if self._mrm is _UNSET:
                self._mrm = self._load_mrm(self.options.mrm)
            return self._mrm

    def _load_mrm(self, spec: Any) -> MultifurcationRewardModel | None:
        if spec is None or isinstance(spec, MultifurcationRewardModel):
            return spec  # the engine checks an object's vocabulary
        if _is_auto(spec):
            if not self.speaks_smollm2:
                return None
            spec = BUNDLED
        return load_mrm(
            spec,
            policy_tokenizer=self.policy.tokenizer,
            dtype=self.options.dtype or "auto",
            device=self.device,
        )

    # ------------------------------------------------------------------ monitor
    def _load_monitor(self, spec: Any) -> StreamingMonitor | None:
        if spec is None:
            return None
        if _is_auto(spec):
            if not self.speaks_smollm2:
                return None
            spec = BUNDLED
        if isinstance(spec, _PATH):
            spec = self._scm_model(spec)
        if isinstance(spec, SCMMonitorModel):
            self.monitor_model = spec
            return SCMMonitor(spec)
        if isinstance(spec, SCMMonitor):
            self.monitor_model = spec.model
        return spec

    def _scm_model(self, spec: str | os.PathLike[str]) -> SCMMonitorModel:
        """Load a monitor folder once; a heads monitor on SmolLM2 reads the policy's own model (a LoRA
        monitor always gets its own copy, see load_monitor)."""
        folder = resolve_bundled(spec, DEFAULT_MONITOR)
        key = str(folder.resolve())
        if key not in self._scm:
            shared: dict[str, Any] = {}
            if _backbone_ref(folder) in SMOLLM2_ALIASES and self.speaks_smollm2:
                shared = {"backbone": self.policy.model, "tokenizer": self.policy.tokenizer}
            model = load_monitor(spec, **shared, dtype=self.options.dtype or "float32")
            self._scm[key] = model.to(self.device)
        return self._scm[key]

    # ------------------------------------------------------------------ PRM
    @property
    def prm(self) -> ProcessRewardModel | None:
        """The PRM (loaded on first use)."""
        with self._lock:
            if self._prm is _UNSET:
                self._prm = self._load_prm(self.options.prm)
            return self._prm

    def _load_prm(self, spec: Any) -> ProcessRewardModel | None:
        if spec is None or isinstance(spec, ProcessRewardModel):
            return spec
        auto = _is_auto(spec)
        if auto:
            if self.monitor_model is not None:
                spec = self.monitor_model
            elif self.speaks_smollm2:
                spec = BUNDLED
            else:
                return None
        model = spec if isinstance(spec, SCMMonitorModel) else self._scm_model(spec)
        what = "PRM (the monitor's response head reads the policy's token ids)"
        if auto and not _same_vocab(self.policy.tokenizer, model.tokenizer):
            return None  # "auto" only takes a monitor that fits; Best-of-N then ranks by the MRM
        check_vocab_compatible(self.policy.tokenizer, model.tokenizer, what=what)
        self.prm_monitor = model
        return response_head_prm(model)


def _same_vocab(a: PreTrainedTokenizerBase, b: PreTrainedTokenizerBase) -> bool:
    return a is b or (a.get_vocab() == b.get_vocab() and a.eos_token_id == b.eos_token_id)


def _backbone_ref(folder: Path) -> str | None:
    """The backbone a monitor folder names in its config (None when unreadable: load_monitor says why)."""
    try:
        return json.loads((folder / CONFIG_FILE).read_text()).get("backbone")
    except (OSError, ValueError):
        return None


def build_stack(options: StackOptions | None = None, **values: Any) -> Stack:
    """Assemble a stack from options (or from the same fields as keywords)."""
    return Stack(options if options is not None else StackOptions(**values))
