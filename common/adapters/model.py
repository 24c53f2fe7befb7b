"""AdaptedModel: a frozen backbone with named adapters of one kind, routed per example.

The backbone's weights are shared with the caller's model (never copied, never trained); only the module tree
is copied so that injection does not change the caller's backbone. Adapters are the only trainable tensors.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from common.adapters.base import module_key, seeded_generator, validate_adapter_name
from common.adapters.config import AdapterConfig
from common.adapters.inject import inject, layer_index, shared_weight_copy
from common.adapters.layer_split import LayerSplit, split_supported
from common.adapters.prompt import (
    PromptEmbedding,
    check_prompt_support,
    input_embeddings,
    prompt_inputs,
    prompt_mask,
)
from common.adapters.registry import AdapterKind, get_adapter_kind
from common.adapters.routing import BatchPlan, Router, Routing, build_plan
from common.backbone import Backbone
from common.names import GLOBAL, make_key, split_key

log = logging.getLogger(__name__)


class AdaptedModel(nn.Module):
    """`forward(input_ids, attention_mask, routing)` -> last_hidden_state (B, T, H), or (B, L*P + T, H) with prompts.

    routing: None (backbone only) or a list of levels applied in order; each level is one adapter name for the
    whole batch or a per-example list of names (None = skip the level for that example).
    """

    def __init__(
        self, backbone: Backbone | nn.Module, config: AdapterConfig, names: Sequence[str] = (GLOBAL,)
    ) -> None:
        super().__init__()
        source = backbone.model if isinstance(backbone, Backbone) else backbone
        if not isinstance(source, nn.Module):
            raise ValueError(f"backbone must be a Backbone or an nn.Module, got {type(backbone).__name__}")
        self.config = config
        self.kind: AdapterKind[AdapterConfig] = get_adapter_kind(config.kind)
        self._hidden_size = int(getattr(getattr(source, "config", None), "hidden_size", 0))
        self._router = Router()
        self.backbone = shared_weight_copy(source)
        unfrozen = [p for p in self.backbone.parameters() if p.requires_grad]
        if unfrozen:  # the tensors are shared with the caller's model, so this freezes it there too
            log.warning("freezing %d backbone parameters that required grad (shared with the caller)", len(unfrozen))
        for p in unfrozen:
            p.requires_grad_(False)
        self.wrappers = inject(self.backbone, config, self.kind, self._router)
        # Bottom layers no adapter and no prompt reaches (0 when that cannot be said): their outputs depend on the
        # text alone, so `lower_states` may be cached per text and fed to `forward_from`. Fixed once injected.
        self.frozen_layers = self._frozen_layers()
        if config.prompt_tokens:
            check_prompt_support(self.backbone)
        self.shared = nn.ModuleDict()  # model-level module per adapter name (hyper: segment embedding, hypernet)
        self.prompts = nn.ModuleDict()  # PromptEmbedding per adapter name when prompt_tokens > 0
        self._names: list[str] = []
        for name in [names] if isinstance(names, str) else names:
            self.add_adapter(name)
        self.train(True)  # nn.Module convention; the backbone stays in eval mode regardless

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._names)

    @property
    def hidden_size(self) -> int:
        return self._hidden_size

    @property
    def identity_at_init(self) -> bool:
        """Whether a fresh adapter leaves the backbone's outputs unchanged (prompts never do)."""
        return self.kind.identity_at_init and self.config.prompt_tokens == 0

    def _reference(self) -> Tensor:
        return next(self.backbone.parameters())

    def add_adapter(self, name: str) -> None:
        """Add a freshly initialised adapter (deterministic from config.seed and the name); it is trainable."""
        validate_adapter_name(name)
        if name in self._names:
            raise ValueError(f"adapter {name!r} already exists")
        key, ref, cfg = module_key(name), self._reference(), self.config
        new: list[nn.Module] = []
        if self.kind.make_shared is not None:
            sites = [w.site for w in self.wrappers]
            shared = self.kind.make_shared(cfg, name, sites, self._names)
            if shared is not None:
                self.shared[key] = shared
                new.append(shared)
        if self.kind.make_layer is not None:
            for wrapper in self.wrappers:
                wrapper.adapters[key] = self.kind.make_layer(cfg, wrapper.site, name)
                new.append(wrapper.adapters[key])
        if cfg.prompt_tokens:
            words = input_embeddings(self.backbone)
            self.prompts[key] = PromptEmbedding(cfg.prompt_tokens, words, seeded_generator(cfg.seed, name, "prompt"))
            new.append(self.prompts[key])
        for module in new:
            module.to(device=ref.device, dtype=ref.dtype)
            module.train(self.training)
        self._names.append(name)
        log.debug("added %s adapter %r", cfg.kind, name)

    def adapter_tensors(self, name: str, trainable_only: bool = True) -> Iterator[tuple[str, Tensor]]:
        """(path, tensor) of one adapter: parameters, plus never-trained buffers (FFA-LoRA's A) if not trainable_only.

        Paths: '<wrapped module path>.<adapter tensor>' for per-module adapters, '<kind>.<tensor>' for the
        model-level module, 'prompt.embedding' for prompts.
        """
        if name not in self._names:
            raise ValueError(f"unknown adapter {name!r}; known adapters: {', '.join(self._names)}")
        key = module_key(name)
        owners: list[tuple[str, nn.Module]] = [(w.site.path, w.adapters[key]) for w in self.wrappers]
        if key in self.shared:
            owners.append((self.kind.name, self.shared[key]))
        if key in self.prompts:
            owners.append(("prompt", self.prompts[key]))
        for prefix, module in owners:
            yield from ((f"{prefix}.{n}", p) for n, p in module.named_parameters())
            if not trainable_only:
                yield from ((f"{prefix}.{n}", b) for n, b in module.named_buffers())

    def trainable_parameters(self, names: Sequence[str] | None = None) -> list[nn.Parameter]:
        """The parameters of the given adapters (all adapters if None): what an optimizer should see."""
        selected = self._names if names is None else list(names)
        params: list[nn.Parameter] = []
        for name in selected:
            params.extend(t for _, t in self.adapter_tensors(name) if isinstance(t, nn.Parameter))
        return params

    def set_trainable(self, names: Sequence[str]) -> None:
        """requires_grad on exactly the named adapters; every other adapter (and the backbone) is frozen."""
        chosen = set(names)
        unknown = sorted(chosen - set(self._names))
        if unknown:
            raise ValueError(f"unknown adapter(s) {', '.join(unknown)}; known adapters: {', '.join(self._names)}")
        for name in self._names:
            for p in self.trainable_parameters([name]):
                p.requires_grad_(name in chosen)

    def adapter_state(self, names: Sequence[str] | None = None, trainable_only: bool = True) -> dict[str, Tensor]:
        """Detached copies of the adapters' tensors as a flat {"<adapter name>::<path>": tensor}.

        This flat dict is what crosses the wire and what aggregation averages; a backbone tensor can never
        appear because only adapter modules are walked. trainable_only leaves out never-trained buffers
        (FFA-LoRA's A).
        """
        selected = self.names if names is None else tuple(names)
        state: dict[str, Tensor] = {}
        for name in selected:
            for path, tensor in self.adapter_tensors(name, trainable_only=trainable_only):
                state[make_key(name, path)] = tensor.detach().clone()
        return state

    def load_adapter_state(self, state: dict[str, Tensor], strict: bool = True) -> None:
        """Copy `state` into the adapters; adapters not named in `state` stay as they are.

        strict: every key must exist in the model, and every trainable tensor of each adapter named in `state`
        must be present. A shape mismatch is always an error. Nothing is copied unless the whole state is valid.
        """
        targets: dict[str, Tensor] = {}
        required: set[str] = set()
        unknown: list[str] = []
        mentioned = []
        for key in state:
            name, _ = split_key(key)
            if name not in self._names:
                unknown.append(key)
            elif name not in mentioned:
                mentioned.append(name)
        for name in mentioned:
            required |= {make_key(name, p) for p, _ in self.adapter_tensors(name, trainable_only=True)}
            targets.update((make_key(name, p), t) for p, t in self.adapter_tensors(name, trainable_only=False))
        unknown += [key for key in state if key not in targets and key not in unknown]
        missing = sorted(required - set(state))
        problems = []
        if strict and unknown:
            here = ", ".join(self._names)
            problems.append(f"unknown key(s) {', '.join(sorted(unknown)[:10])} (adapters here: {here})")
        if strict and missing:
            problems.append(f"missing key(s) {', '.join(missing[:10])}" + (" ..." if len(missing) > 10 else ""))
        for key, value in state.items():
            target = targets.get(key)
            if target is not None and value.shape != target.shape:
                problems.append(f"shape mismatch for {key}: got {tuple(value.shape)}, expected {tuple(target.shape)}")
        if problems:
            raise ValueError("cannot load adapter state: " + "; ".join(problems))
        with torch.no_grad():
            for key, value in state.items():
                if key in targets:
                    targets[key].copy_(value)

    def train(self, mode: bool = True) -> AdaptedModel:
        """Adapters follow `mode` (their dropout); the backbone's own modules always stay in eval mode."""
        super().train(mode)
        for module in self.backbone.modules():
            module.training = False
        for wrapper in self.wrappers:
            wrapper.adapters.train(mode)
        return self

    def plan(self, routing: Routing | None, batch_size: int) -> BatchPlan | None:
        return build_plan(routing, batch_size, self._names, self._reference().device)

    def output_mask(self, attention_mask: Tensor, routing: Routing | None) -> Tensor:
        """The mask matching forward's output: prompt slots of routed levels on, then `attention_mask`."""
        plan = self.plan(routing, attention_mask.shape[0])
        if plan is None or not self.config.prompt_tokens:
            return attention_mask
        return prompt_mask(attention_mask, plan, self.config.prompt_tokens)

    def _frozen_layers(self) -> int:
        indices = [layer_index(w.site.path) for w in self.wrappers]
        if self.config.prompt_tokens or not indices or None in indices or not split_supported(self.backbone):
            return 0
        return min(i for i in indices if i is not None)

    def _split(self) -> LayerSplit:
        split = self.__dict__.get("_layer_split")  # a plain attribute: its module trees share our weights
        if split is None:
            split = self.__dict__["_layer_split"] = LayerSplit(self.backbone, self.frozen_layers)
        return split

    def lower_states(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(B, T, H), no gradient: the states entering the first adapted layer (`frozen_layers` must be > 0)."""
        return self._split().lower_states(input_ids, attention_mask)

    def forward_from(self, hidden: Tensor, attention_mask: Tensor, routing: Routing | None = None) -> Tensor:
        """forward() from the states `lower_states` gave for the same tokens: the same (B, T, H) result."""
        split = self._split()
        return self._routed(self._begin(routing, hidden.shape[0]), attention_mask,
                            lambda: split.upper_states(hidden, attention_mask))

    def _routed(self, plan: BatchPlan | None, mask: Tensor, run: Callable[[], Tensor]) -> Tensor:
        """`run()` with `plan` (None: the bare backbone) active in every wrapper for its duration."""
        if plan is None:
            return run()
        plan.mask = mask.bool()
        self._router.plan = plan
        try:
            return run()
        finally:
            self._router.plan = None

    def _begin(self, routing: Routing | None, batch_size: int) -> BatchPlan | None:
        """The batch plan for `routing`, with the kind's per-call weights (hyper: generated) prepared."""
        plan = self.plan(routing, batch_size)
        if plan is not None and self.kind.prepare is not None:
            by_name = {n: self.shared[module_key(n)] for n in self._names if module_key(n) in self.shared}
            plan.prepared = {n: self.kind.prepare(self.config, by_name, n) for n in plan.names()}
        return plan

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        routing: Routing | None = None,
        token_type_ids: Tensor | None = None,
    ) -> Tensor:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        plan = self._begin(routing, input_ids.shape[0])
        if plan is None:
            return self.backbone(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)[0]
        if self.config.prompt_tokens:
            kwargs = prompt_inputs(
                self.backbone, input_ids, attention_mask, token_type_ids, plan, self.prompts, self.config.prompt_tokens
            )
        else:
            kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                kwargs["token_type_ids"] = token_type_ids
        return self._routed(plan, kwargs["attention_mask"], lambda: self.backbone(**kwargs)[0])
