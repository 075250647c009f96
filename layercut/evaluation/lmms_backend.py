"""A layercut `Adapter` as an lmms-eval model: its simple (doc_to_visual + doc_to_text) interface.

Generation is greedy whatever the task asks, images go through the model's own processor and
chat template, and `loglikelihood` scores the continuation after the rendered prompt (assistant
turn opened) as a summed negative log-likelihood: lmms-eval's multiple_choice picks the lowest.
Video and audio inputs are not supported. The model runs as it is now, so a layer-skip view
(`surgery.skipped`) is evaluated without a copy. Importing this module imports lmms-eval: the
harness runner (`evaluation.harness`) and the `--model layercut` plugin (`bridges`) do it only
when lmms-eval is asked for.
"""

from __future__ import annotations

from typing import Any

import torch
from lmms_eval.api.instance import GenerationResult, Instance
from lmms_eval.api.model import lmms
from PIL import Image

from layercut.data.encode import ensure_pad_token
from layercut.errors import LayercutError
from layercut.evaluation.generate import cut_at_stops


class LmmsBackend(lmms):
    """An adapter behind lmms-eval's simple model interface."""

    is_simple = True

    def __init__(self, adapter: Any, batch_size: Any = 1, max_new_tokens: Any = 256,
                 chat_template: Any = True) -> None:
        super().__init__()
        self.adapter = adapter
        self.batch_size_per_gpu = _positive_int(batch_size, "batch_size")
        self.max_new_tokens = _positive_int(max_new_tokens, "max_new_tokens")
        self.use_chat_template = _bool(chat_template, "chat_template")
        if self.tokenizer is None:
            raise LayercutError(f"model '{adapter.source}' has no tokenizer: save one beside the weights")
        ensure_pad_token(self.tokenizer)

    # lmms-eval and its tasks read these
    @property
    def model(self) -> torch.nn.Module:
        return self.adapter.model

    @property
    def tokenizer(self) -> Any:
        return self.adapter.tokenizer

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def generate_until(self, requests: list[Instance]) -> list[str]:
        results: list[str | None] = [None] * len(requests)
        groups: dict[Any, list[tuple[int, str, list[Image.Image], dict]]] = {}
        for i, req in enumerate(requests):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = req.args
            images = self._visuals(doc_to_visual, doc_id, task, split)
            # Same generation settings and image/no-image rows only: processors differ on mixed batches.
            key = (repr(sorted((gen_kwargs or {}).items())), bool(images))
            groups.setdefault(key, []).append((i, context, images, dict(gen_kwargs or {})))
        for rows in groups.values():
            for start in range(0, len(rows), self.batch_size):
                chunk = rows[start : start + self.batch_size]
                outs = self._generate([(c, im) for _, c, im, _ in chunk], chunk[0][3])
                for (i, *_), out in zip(chunk, outs):
                    results[i] = out
        return results  # type: ignore[return-value]

    def loglikelihood(self, requests: list[Instance]) -> list[GenerationResult]:
        """(negative log-likelihood of the continuation, greedy?) per request, in GenerationResults.

        Two lmms-eval 0.7.3 conventions, both unlike lm-eval's: its multiple_choice scoring takes
        the argmin over choices (its built-in backends return losses), so the first value is the
        summed NLL, lower is better; and it passes every response through
        `unwrap_generation_output`, which turns a bare (float, bool) tuple into its string, while
        a GenerationResult's `text` is handed on untouched, tuple included.
        """
        results = []
        for req in requests:
            args = req.args
            if len(args) == 2:  # unconditional choice scoring (acc_mutual_info): ("", choice)
                context, continuation, images = args[0], args[1], []
            else:
                context, target, doc_to_visual, doc_id, task, split = args
                doc = self.task_dict[task][split][doc_id]
                continuation = target if isinstance(target, str) else target(doc)
                images = self._visuals(doc_to_visual, doc_id, task, split)
            results.append(GenerationResult(text=self._score(context, str(continuation), images)))
        return results

    def generate_until_multi_round(self, requests: list[Instance]) -> list[list[str]]:
        """Rounds follow the task's doc_to_text(doc, previous_output=, round_idx=, previous_round_info=)."""
        results = []
        for req in requests:
            context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split = req.args
            doc = self.task_dict[task][split][doc_id]
            gen_kwargs = dict(gen_kwargs or {})
            gen_kwargs.pop("until", None)  # rounds end where the task's doc_to_text says
            images = self._visuals(doc_to_visual, doc_id, task, split)
            outputs: list[str] = []
            info = None
            round_idx = 0
            while True:
                if round_idx:
                    visuals, context, done, outputs, info = doc_to_text(
                        doc, previous_output=outputs, round_idx=round_idx, previous_round_info=info
                    )
                    outputs = list(outputs)
                    if done:
                        break
                    images = _images(visuals)
                outputs.append(self._generate([(context, images)], gen_kwargs)[0].strip())
                round_idx += 1
            results.append(outputs)
        return results

    # helpers, in the order the methods above use them

    def _visuals(self, doc_to_visual: Any, doc_id: int, task: str, split: str) -> list[Image.Image]:
        if doc_to_visual is None:
            return []
        visuals = doc_to_visual(self.task_dict[task][split][doc_id])
        images = _images(visuals)
        if images and not self.adapter.family.vision:
            raise LayercutError(
                f"task '{task}' has images but '{self.adapter.source}' is a text-only model: "
                "evaluate a vision-language model, or a text-only task"
            )
        return images

    def _render(self, context: str, n_images: int) -> tuple[str, bool]:
        """The prompt text, with image placeholders; True when a chat template wrote it (so its own BOS)."""
        proc = self.adapter.processor
        placeholder = getattr(proc, "image_token", None)
        if placeholder and placeholder in context:
            n_images = 0  # the task placed its image tokens itself
        if self.use_chat_template and self.adapter.family.vision and getattr(proc, "chat_template", None):
            content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": context}]
            messages = [{"role": "user", "content": content}]
            return proc.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), True
        if n_images:
            if not placeholder:
                raise LayercutError(
                    "the processor has neither a chat template nor an image token: save a chat template with the model"
                )
            context = placeholder * n_images + context
        if self.use_chat_template and getattr(self.tokenizer, "chat_template", None):
            messages = [{"role": "user", "content": context}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), True
        return context, False

    def _encode(
        self, prompts: list[tuple[str, list[Image.Image]]], padding_side: str = "left"
    ) -> dict[str, torch.Tensor]:
        texts, templated = zip(*(self._render(c, len(im)) for c, im in prompts))
        tok = self.tokenizer
        saved_side = tok.padding_side
        tok.padding_side = padding_side  # left for generation: new tokens follow every row
        try:
            if any(im for _, im in prompts):
                proc = self.adapter.processor
                inputs = proc(text=list(texts), images=[im for _, im in prompts], padding=True, return_tensors="pt")
            else:
                inputs = tok(list(texts), padding=True, add_special_tokens=not all(templated), return_tensors="pt")
        finally:
            tok.padding_side = saved_side
        return self._to_model(dict(inputs))

    def _to_model(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        inputs = self.adapter.complete_inputs(inputs)
        dtype = next(self.model.parameters()).dtype
        out = {}
        for k, v in inputs.items():
            if isinstance(v, torch.Tensor):
                v = v.to(self.device)
                if v.is_floating_point():
                    v = v.to(dtype)
            out[k] = v
        return out

    def _eos_ids(self) -> list[int]:
        ids = self.model.generation_config.eos_token_id
        ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in ids:
            ids.append(self.tokenizer.eos_token_id)
        return ids

    @torch.no_grad()
    def _generate(self, prompts: list[tuple[str, list[Image.Image]]], gen_kwargs: dict) -> list[str]:
        until = gen_kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        max_new = int(gen_kwargs.get("max_new_tokens") or self.max_new_tokens)
        inputs = self._encode(prompts)
        out = self.model.generate(
            **inputs,
            do_sample=False,
            num_beams=1,
            temperature=None,
            top_p=None,
            top_k=None,
            max_new_tokens=max_new,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self._eos_ids() or None,
        )
        texts = self.tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        return [cut_at_stops(t, until) for t in texts]

    @torch.no_grad()
    def _score(self, context: str, continuation: str, images: list[Image.Image]) -> tuple[float, bool]:
        """Summed NLL of the continuation's tokens after the prompt, and whether greedy picks them all."""
        cont = self.tokenizer(continuation, add_special_tokens=False)["input_ids"]
        if not cont:
            return 0.0, True
        prefix = self._encode([(context, images)])
        n = prefix["input_ids"].shape[1]
        if n == 0:  # empty context without a template: condition on BOS (or EOS)
            start = self.tokenizer.bos_token_id
            start = self.tokenizer.eos_token_id if start is None else start
            ones = torch.ones(1, 1, dtype=torch.long)
            prefix = self._to_model({"input_ids": ones * start, "attention_mask": ones})
            n = 1
        cont_ids = torch.tensor([cont], device=self.device)
        inputs = {}
        for k, v in prefix.items():
            if isinstance(v, torch.Tensor) and v.dim() == 2 and v.shape == prefix["input_ids"].shape:
                # the continuation is text: ids appended, mask 1, image/type ids 0
                if k == "input_ids":
                    tail = cont_ids
                elif k == "attention_mask":
                    tail = torch.ones_like(cont_ids)
                else:
                    tail = torch.zeros_like(cont_ids)
                v = torch.cat([v, tail.to(v.dtype)], dim=1)
            elif k in self.adapter.family.token_inputs and v.shape[1] == n:
                # a per-token input (Mllama's cross-attention mask): appended tokens repeat the last row
                v = torch.cat([v, v[:, -1:].expand(-1, len(cont), *v.shape[2:])], dim=1)
            inputs[k] = v
        logits = self.model(**inputs, use_cache=False).logits[0, n - 1 : n - 1 + len(cont)].float()
        logprobs = torch.log_softmax(logits, dim=-1)
        target = cont_ids[0]
        nll = -float(logprobs.gather(1, target[:, None]).sum())
        greedy = bool((logprobs.argmax(dim=-1) == target).all())
        return nll, greedy



def _images(visuals: Any) -> list[Image.Image]:
    """Flatten what a task's doc_to_visual returns into RGB images; reject video and audio."""
    if visuals is None:
        return []
    if not isinstance(visuals, (list, tuple)):
        visuals = [visuals]
    images = []
    for v in visuals:
        if isinstance(v, (list, tuple)):
            images.extend(_images(v))
        elif isinstance(v, Image.Image):
            images.append(v.convert("RGB"))
        else:
            raise LayercutError(
                f"the task gives a {type(v).__name__} input (video or audio?): the layercut backend reads images only"
            )
    return images




def _positive_int(value: Any, name: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1:
        raise LayercutError(f"{name}={value}: give a whole number of at least 1")
    return number


def _bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise LayercutError(f"{name}={value}: use true or false")


def _tolerate_filelock_4() -> None:
    """Let lmms-eval 0.7.3 run beside filelock >= 4.

    Its `simple_evaluate` first patches `filelock._api.FileLockMeta` (a cross-class lock cache
    against a filelock 3.16+ deadlock check); filelock 4 has no `filelock._api`, so every
    evaluation died with ModuleNotFoundError (and the CLI still exits 0). The patch targets
    filelock 3 internals only: with filelock 4 we mark it done, which skips it. This module is
    imported when `--model layercut` is resolved, before that patch runs.
    """
    try:
        import filelock._api  # noqa: F401
    except ImportError:
        from lmms_eval import evaluator

        patch = getattr(evaluator, "_enable_reentrant_filelocks", None)
        if patch is not None:
            patch._patched = True


_tolerate_filelock_4()
