"""The small Python API: load an LLM (and SSMs), generate from text or token ids.

    from specjax import Generator
    gen = Generator.load()                       # embedded default LLM (+ shipped drafters, if any)
    gen = Generator.load(llm="path/to/llm", ssms=["path/to/ssm"], tree="1,1,3,1,1,1,1,1")
    gen = Generator.load(llm="path/to/llm", feature_ssm="path/to/feature_ssm")   # EAGLE-style drafter
    [out] = gen.generate(["Tell me a joke."], chat=True, max_new_tokens=64)
    print(out["text"], out["llm_steps"])
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from specjax.engine import Engine, EngineError, GenerationResult, LoadedModel
from specjax.sampling import SamplingConfig
from specjax.tree import TreeConfig


def load(path: str | None, mesh=None, split: dict | None = None) -> LoadedModel:
    """A specjax checkpoint dir, an HF model dir or a .gguf file; None: the embedded default LLM.
    A specjax checkpoint without tokenizer files loads with tokenizer None.

    mesh: load straight into the sharding of `specjax.sharding` (split: its TP_SPLIT for an LLM,
    SSM_SPLIT to replicate a drafter); None: onto the default device.
    """
    from specjax import checkpoint, default_model, sharding, tokenizer

    if path is None:
        path = str(default_model.default_llm_dir())
    # The tokenizer first: a .gguf's needs transformers' GGUF reader (torch), so it fails before any tensor work.
    tok = None if checkpoint.is_checkpoint(path) and not has_tokenizer_files(path) else tokenizer.load_tokenizer(path)
    if mesh is not None:
        params, cfg = sharding.load_sharded(path, mesh, sharding.TP_SPLIT if split is None else split)
    else:
        params, cfg = checkpoint.load_model(path)
        params = jax.tree.map(jnp.asarray, params)  # on the device once, not copied in at every call
    return LoadedModel(params=params, cfg=cfg, tokenizer=tok)


def has_tokenizer_files(directory: str) -> bool:
    """A specjax checkpoint may ship without a tokenizer (the default drafters use the LLM's)."""
    from pathlib import Path

    return any((Path(directory) / name).is_file() for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json"))


class Generator:
    """An LLM, optional SSMs and a tree config, ready to generate text."""

    def __init__(self, llm: LoadedModel, ssms: Sequence[LoadedModel] = (), tree: TreeConfig | None = None,
                 max_len: int | None = None, mode: str | None = None, mesh=None, drafters=None,
                 budget: int | None = None, recycle_table=None, choice=None,
                 weight_dtype: str | None = None, feature_ssm=None):
        """drafters: names or configs (see Engine); None: the SSMs alone (and the feature SSM, if
        given). choice: the automatic choice (autotune.Choice) that picked them, if any. weight_dtype:
        see Engine. feature_ssm: a loaded feature SSM (drafters.feature.load)."""
        self.llm = llm
        self.ssms = tuple(ssms)
        names = drafters if drafters is not None else (
            (("ssm",) if self.ssms else ()) + (("feature",) if feature_ssm is not None else ()))
        self.mode = mode or ("spec" if names else "incremental")
        if self.mode not in ("spec", "incremental"):
            raise EngineError(f"unknown mode {self.mode!r} (expected 'spec' or 'incremental')")
        if self.mode == "spec" and not names:
            raise EngineError("--mode spec needs at least one drafter (--ssm DIR, or --drafters recycle,lookup)")
        self.tree = tree or TreeConfig(num_ssms=max(len(self.ssms), 1))
        self.choice = choice
        self.costs: dict | None = None  # the automatic choice's measured costs (load sets them)
        self.last_mode = self.mode  # how generate_ids' last call decoded (a batch may go incremental)
        spec = self.mode == "spec"
        self.engine = Engine(llm, ssms=self.ssms, tree=self.tree if self.ssms else None, max_len=max_len,
                             mesh=mesh, drafters=names if spec else (), budget=budget if spec else None,
                             recycle_table=recycle_table, weight_dtype=weight_dtype,
                             feature_ssm=feature_ssm if spec else None)
        self.feature_ssm = self.engine.feature_ssm
        if mesh is None:  # the engine's (possibly packed) weights only: no second copy stays alive
            self.llm, self.ssms = self.engine.llm, self.engine.ssms

    @classmethod
    def load(cls, llm: str | None = None, ssms: Sequence[str] = (), tree: str | None = None,
             node_budget: int = 64, max_len: int | None = None, mode: str | None = None,
             mesh=None, drafters: str | Sequence[str] | None = None, budget: int | None = None,
             recycle_table: str | None = None, log=None, weight_dtype: str | None = None,
             feature_ssm: str | None = None, temperature: float = 0.0) -> "Generator":
        """mesh: "dp=2,tp=4" (see specjax.sharding.parse_mesh) or a jax.sharding.Mesh; None: one device.

        tree: an expansion 'k1,...,km' for the SSMs, or None / 'auto': the SSMs' shipped (or the
        paper's) expansion, and, unless a budget is given, drafters and budget chosen for this
        machine (specjax.autotune; it may choose incremental decoding).
        drafters: 'ssm,recycle,lookup' or a list of names; None: every one that applies (ssm only
        with SSMs). recycle_table: a saved recycling table to start from (checked against the LLM).
        log: where the automatic choice's measurement notes go (e.g. print to stderr).
        weight_dtype: "bfloat16" stores the weights in bf16 for the CPU kernel (see Engine).
        feature_ssm: a feature SSM checkpoint directory (specjax.feature.model) for drafter 'feature';
        None: with the embedded LLM, the shipped one (specjax/default_ssms/feature/) if installed. One
        made for another LLM is refused (FeatureSSMError) before any generation.
        temperature: the sampling the automatic choice is made for (> 0: from the acceptance measured
        under sampling, which is far lower than greedy's); generation may still use any sampling."""
        from specjax import drafters as drafters_lib
        from specjax import sharding

        if isinstance(mesh, str):
            mesh = sharding.parse_mesh(mesh)
        auto = tree is None or str(tree).strip() == "auto"
        if auto:
            tree = None
        names = drafters_lib.parse_names(drafters) if isinstance(drafters, str) else (
            tuple(drafters) if drafters is not None else None)
        if feature_ssm is not None:
            from specjax.feature import model as feature_model

            if not feature_model.is_checkpoint(feature_ssm):
                raise feature_model.FeatureSSMError(f"--feature-ssm {feature_ssm}: not a feature SSM checkpoint "
                                                    f"({feature_model.CONFIG_FILE} missing)")
        llm_model = load(llm, mesh)
        fs_model = None
        if feature_ssm is None and llm is None and mode != "incremental" and (names is None or "feature" in names):
            from specjax import default_model

            shipped = default_model.DEFAULT_SSMS_DIR / "feature"
            if (shipped / "feature_config.json").is_file():
                feature_ssm = str(shipped)
        if feature_ssm is not None and mode != "incremental":
            from specjax.drafters import feature

            fs_model = feature.load(feature_ssm, llm_model, fingerprint=mesh is None)
        ssm_models = [load(p, mesh, sharding.SSM_SPLIT) for p in ssms]
        if llm is None and not ssm_models and mode != "incremental" and (names is None or "ssm" in names):
            from specjax import default_model

            shipped = default_model.default_tree()
            dirs = default_model.default_ssm_dirs()
            if shipped is not None and tree is None and not auto:  # the shape tuned for these drafters
                dirs = dirs[: shipped["num_ssms"]]
                tree = ",".join(map(str, shipped["expansion"]))
            ssm_models = [load(str(p), mesh, sharding.SSM_SPLIT) for p in dirs]
        if auto and mode != "incremental":
            from specjax.drafters.setup import AUTO_SSM_EXPANSION

            tree = ",".join(map(str, AUTO_SSM_EXPANSION))  # pruned by the chosen budget
        tree_cfg = None
        if ssm_models:
            tree_cfg = (TreeConfig.parse(tree, num_ssms=len(ssm_models), node_budget=node_budget) if tree
                        else TreeConfig(num_ssms=len(ssm_models), node_budget=node_budget))
        if names is None:  # every drafter that applies
            names = ((("ssm",) if ssm_models else ()) + (("feature",) if fs_model is not None else ())
                     + ("recycle", "lookup"))
        table = None
        if recycle_table is not None:
            from specjax.drafters import recycle

            table = recycle.load(recycle_table, llm_model)
        choice = None
        if mode == "incremental":
            names = ()
        elif auto and budget is None:
            from specjax import autotune

            if mesh is None:  # packed once (the probe measures the kernel; the engine below reuses it)
                from specjax import skinny

                llm_model = dataclasses.replace(llm_model, params=skinny.pack_params(llm_model.params, llm_model.cfg, weight_dtype))
                ssm_models = [dataclasses.replace(m, params=skinny.pack_params(m.params, m.cfg, weight_dtype))
                              for m in ssm_models]
            if mesh is None and fs_model is not None:
                from specjax.drafters import feature

                fs_model = feature.pack(fs_model, weight_dtype)
            probe = Engine(llm_model, ssms=ssm_models, tree=tree_cfg, max_len=max_len, drafters=names,
                           feature_ssm=fs_model)
            costs, _ = autotune.load_or_measure(probe, log=log)
            choice = autotune.choose(costs, probe.drafters, allow_incremental=mode != "spec", sampled=temperature > 0)
            if not choice.drafters:
                mode, names = "incremental", ()
            else:
                names, budget = tuple(d for d in probe.drafters if d.name in choice.drafters), choice.budget
        gen = cls(llm_model, ssm_models, tree_cfg, max_len=max_len, mode=mode, mesh=mesh, drafters=names,
                  budget=budget, recycle_table=table, choice=choice, weight_dtype=weight_dtype,
                  feature_ssm=fs_model if "feature" in [getattr(n, "name", n) for n in names] else None)
        if choice is not None and choice.drafters:  # watched: a request that drafts badly goes incremental
            from specjax.fallback import FallbackConfig

            gen.engine.fallback = FallbackConfig.from_costs(costs)
            gen.costs = costs
        return gen

    def speculates_at(self, rows: int) -> bool:
        """Whether a batch of `rows` rows decodes speculatively: in spec mode, unless the automatic
        choice made it and its estimate at that many rows (autotune.speedup_at_rows) is below
        incremental decoding's (a chosen mode or budget is kept as given). The output is the same
        either way (greedy: token for token; sampled: in distribution)."""
        if self.mode != "spec":
            return False
        if self.choice is None or self.costs is None or rows <= 1:
            return True
        from specjax import autotune

        s = autotune.speedup_at_rows(self.costs, self.choice, rows)
        if s >= autotune.MARGIN:
            return True
        if self.engine.progress is not None:
            self.engine.progress(f"auto: {rows} rows at a time: incremental decoding (the choice would run at est. "
                                 f"{s:.2f}x incremental with {rows} x {self.choice.budget + 1} tokens a step)")
        return False

    def describe(self) -> str:
        c = self.llm.cfg
        s = f"LLM ({c.family}, {c.num_layers} layers, d={c.hidden_size}, V={c.vocab_size})"
        if self.mode == "spec":
            names = [d.name for d in self.engine.drafters]
            s += f" + drafters {','.join(names)}"
            if any(d.kind == "ssm" for d in self.engine.drafters):
                s += f" (SSM tree {','.join(map(str, self.tree.expansion))})"
            if self.engine.budget is not None:
                s += f", budget {self.engine.budget}"
        if self.engine.mesh is not None:
            from specjax import sharding

            s += f", mesh {sharding.describe(self.engine.mesh)}"
        return s

    def encode_row(self, row: dict, chat: bool) -> list[int]:
        if "prompt_ids" in row:
            return [int(t) for t in row["prompt_ids"]]
        tok = self.llm.tokenizer
        if tok is None:
            raise EngineError("this model has no tokenizer: give prompt_ids instead of text")
        return tok.encode(row["prompt"], chat=chat)

    def generate_ids(self, prompts: Sequence[Sequence[int]], max_new_tokens: int = 128,
                     sampling: SamplingConfig = SamplingConfig(), seed: int = 0, batch_size: int = 8,
                     on_result: Callable[[int, GenerationResult], None] | None = None,
                     should_stop: Callable[[], bool] | None = None,
                     batching: str | None = None, row_tiers: bool = False) -> list[GenerationResult]:
        """Token ids in, GenerationResults out (in input order). on_result(i, result) is called as
        request i finishes; should_stop() is polled between calls of the decode loop (True raises
        specjax.interrupt.Interrupted).

        batching: "continuous" (default on one device): batch_size rows, each taking the next prompt
        as soon as its request finishes (specjax.batching); "static" (default with a mesh): batches
        of batch_size prompts, each decoded until its last row stops. Sampled, request i draws from
        its own key (seed, i) either way: the same output however it is batched. row_tiers
        (continuous): run at the smallest of 1, 2, 4, .., batch_size rows holding the active requests
        (specjax.row_tiers; the queue's tail runs fewer rows, each tier one more loop compile)."""
        if batch_size < 1:
            raise EngineError(f"batch_size must be >= 1, got {batch_size}")
        batching = batching or ("static" if self.engine.mesh is not None else "continuous")
        if batching not in ("continuous", "static"):
            raise EngineError(f"unknown batching {batching!r} (expected 'continuous' or 'static')")
        eos = self.eos_ids()
        if batching == "continuous":
            if not prompts:
                return []
            from specjax import batching as batching_lib

            spec = self.speculates_at(min(batch_size, len(prompts)))
            self.last_mode = "spec" if spec else "incremental"
            return batching_lib.generate(self.engine, prompts, max_new_tokens, spec, batch_size,
                                         sampling, seed, eos, on_finish=on_result, should_stop=should_stop,
                                         row_tiers=row_tiers)
        out: list[GenerationResult] = []
        spec = self.speculates_at(min(batch_size, len(prompts)))
        self.last_mode = "spec" if spec else "incremental"
        for i in range(0, len(prompts), batch_size):
            batch = [list(p) for p in prompts[i:i + batch_size]]
            hook = None if on_result is None else (lambda b, r, i=i: on_result(i + b, r))
            gen = self.engine.generate_spec if spec else self.engine.generate_incremental
            out += gen(batch, max_new_tokens, sampling, seed, eos, on_finish=hook, should_stop=should_stop,
                       first_index=i)
        return out

    def eos_ids(self) -> tuple[int, ...]:
        ids = set(self.llm.cfg.eos_token_ids)
        if self.llm.tokenizer is not None:
            ids |= set(self.llm.tokenizer.eos_token_ids)
        return tuple(sorted(ids))

    def stream(self, prompt: str | Sequence[int], chat: bool = False, max_new_tokens: int = 128,
               sampling: SamplingConfig = SamplingConfig(), seed: int = 0, text: bool = True):
        """Yields the output as the loop commits it: text pieces that concatenate to the generated
        text (text=False: lists of new token ids). The finished GenerationResult is then in
        self.last_result. prompt: text (encoded, chat template if chat) or token ids."""
        from specjax import batching
        from specjax.engine import check_prompts
        from specjax.streaming import TextDelta

        ids = list(prompt) if not isinstance(prompt, str) else self.encode_row({"prompt": prompt}, chat)
        [ids] = check_prompts([ids], self.llm.cfg.vocab_size)
        spec = self.mode == "spec"
        if text and self.llm.tokenizer is None:
            raise EngineError("this model has no tokenizer: stream token ids (text=False)")
        S = batching.slots_for(self.engine, [ids], max_new_tokens, spec)
        b = batching.Batcher(self.engine, spec, 1, S, self.eos_ids(), sampling, seed)
        pending: list[list[int]] = []
        done: list[GenerationResult] = []
        b.waiting.append(batching.Request(prompt=ids, max_new_tokens=max_new_tokens, sampling=sampling, seed=seed,
                                          on_tokens=pending.append, on_done=done.append))
        delta = TextDelta(self.llm.tokenizer) if text else None
        while b.step():
            for new in pending:
                piece = delta.feed(new) if text else new
                if piece:
                    yield piece
            pending.clear()
        b.keep_drafter_state()
        if text:
            rest = delta.flush()
            if rest:
                yield rest
        self.last_result = done[0]

    def generate(self, prompts: Sequence[str], chat: bool = False, **kw) -> list[dict]:
        return self.generate_rows([{"prompt": p} for p in prompts], chat=chat, **kw)

    def generate_rows(self, rows: Sequence[dict], chat: bool = False,
                      on_row: Callable[[dict], None] | None = None, **kw) -> list[dict]:
        """Rows {"prompt": str} or {"prompt_ids": [...]} -> one output dict per row (in row order);
        on_row(dict) is called as each row finishes (its "index" says which). kw: generate_ids's."""
        ids = [self.encode_row(r, chat) for r in rows]
        batch_size = kw.get("batch_size", 8)
        out: dict[int, dict] = {}

        def done(i: int, res: GenerationResult) -> None:
            out[i] = self.row_output(i, rows[i], res, batch_size)
            if on_row is not None:
                on_row(out[i])

        self.generate_ids(ids, on_result=done, **kw)
        return [out[i] for i in range(len(rows))]

    def row_output(self, i: int, row: dict, res: GenerationResult, batch_size: int) -> dict:
        tok = self.llm.tokenizer
        return {
            "index": i,
            "batch": res.batch if res.batch is not None else i // batch_size,
            "prompt": row.get("prompt"),
            "prompt_ids": res.prompt_ids,
            "text": tok.decode(res.token_ids) if tok is not None else None,
            "token_ids": res.token_ids,
            "llm_steps": res.llm_steps,
            "accepted_per_step": res.accepted_per_step,
            "mean_accepted": res.mean_accepted,
            "acceptance_by_depth": (res.acceptance_by_depth(max(d.topology.max_depth for d in self.engine.drafters))
                                    if self.mode == "spec" else []),
            "drafter_tokens": res.drafter_tokens,
            "seconds": res.seconds,
            "compile_seconds": res.compile_seconds,
            "finish_reason": res.finish_reason,
        }
