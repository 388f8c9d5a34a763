"""Masked diffusion language models (MDLM-style text/code diffusion), shared by calibration and
evaluation: load a transformers `*ForMaskedLM` folder with its tokenizer, mask at a given ratio,
measure the masked tokens' negative log-likelihood, and generate by unmasking.

The mask ratio plays the timestep's role: a call at ratio r runs at timestep round(r * 999)
(`timestep_of`), so calibration's timestep groups are groups of mask ratios and a quantized
model picks its activation grid by the ratio it is called at.

Pairing: generation starts from the all-mask sequence and unmasks positions in a seeded order
(the same for every setting), each chosen token the argmax of the model's prediction; any
difference between two settings' sequences comes from the weights alone.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from arrowquant.errors import ModelNotFoundError, UnsupportedError

NUM_TIMESTEPS = 1000
# Texts shipped with a model folder for calibration and evaluation (one JSON object a line).
HELD_OUT_FILE = "heldout.jsonl"


@dataclass
class MaskedLM:
    path: Path
    module: Any
    tokenizer: Any
    mask_id: int
    pad_id: int
    length: int  # tokens per sequence (the position embeddings' length)

    def texts(self) -> list[str]:
        """The folder's held-out texts (heldout.jsonl), [] without them."""
        f = self.path / HELD_OUT_FILE
        if not f.is_file():
            return []
        rows = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
        return [str(r["text"]) for r in rows if isinstance(r, dict) and "text" in r]


def is_masked_lm(path: str | os.PathLike[str]) -> bool:
    """Whether the folder holds a transformers masked LM with a tokenizer (config files only)."""
    root = Path(path)
    config = root / "config.json"
    if not root.is_dir() or not config.is_file():
        return False
    try:
        doc = json.loads(config.read_text())
    except (ValueError, OSError):
        return False
    arch = doc.get("architectures") if isinstance(doc, dict) else None
    has_tokenizer = (root / "tokenizer.json").is_file() or (root / "vocab.txt").is_file()
    return (
        isinstance(arch, list)
        and any(isinstance(a, str) and a.endswith("ForMaskedLM") for a in arch)
        and has_tokenizer
    )


def load_masked_lm(path: str | os.PathLike[str]) -> MaskedLM:
    import transformers

    root = Path(path)
    if not is_masked_lm(root):
        raise ModelNotFoundError(f"{root}: not a folder with a transformers *ForMaskedLM model")
    try:
        module = transformers.AutoModelForMaskedLM.from_pretrained(root, local_files_only=True)
        module.eval().requires_grad_(False)
        tok = transformers.AutoTokenizer.from_pretrained(root, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - any failure of a third-party loader
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UnsupportedError(f"{root}: transformers cannot load the masked LM: {first}") from None
    if tok.mask_token_id is None:
        raise UnsupportedError(f"{root}: the tokenizer has no mask token")
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.mask_token_id
    length = int(min(module.config.max_position_embeddings, tok.model_max_length))
    return MaskedLM(root, module, tok, int(tok.mask_token_id), int(pad), length)


def timestep_of(ratio: float) -> int:
    return int(round(float(ratio) * (NUM_TIMESTEPS - 1)))


def windows(ref: MaskedLM, texts: list[str]) -> Any:
    """[N, length] token ids: each text's tokens end to end, cut into full windows (a text
    shorter than one window is padded)."""
    import torch

    ids: list[int] = []
    for text in texts:
        ids += ref.tokenizer(text, add_special_tokens=False).input_ids
    n = max(1, len(ids) // ref.length)
    ids += [ref.pad_id] * (n * ref.length - len(ids))
    return torch.tensor(ids[: n * ref.length], dtype=torch.long).view(n, ref.length)


def masked(ref: MaskedLM, x: Any, ratio: float, seed: int) -> tuple[Any, Any]:
    """(input with each non-pad token masked with probability `ratio`, the mask); seeded."""
    import torch

    g = torch.Generator().manual_seed(seed)
    m = (torch.rand(x.shape, generator=g) < ratio) & (x != ref.pad_id)
    return torch.where(m, ref.mask_id, x), m


def call(ref: MaskedLM, module: Any, ids: Any, ratio: float) -> Any:
    """Logits of `module` (the reference or a copy) on `ids`, at the timestep of `ratio`."""
    import torch

    from arrowquant.torch import timestep

    with torch.inference_mode(), timestep(timestep_of(ratio)):
        return module(input_ids=ids, attention_mask=(ids != ref.pad_id).long()).logits.float()


def masked_nll(ref: MaskedLM, module: Any, x: Any, ratio: float, seed: int) -> float:
    """Mean negative log-likelihood (nats) of the masked tokens at mask ratio `ratio`."""
    import torch.nn.functional as F

    ids, m = masked(ref, x, ratio, seed)
    logits = call(ref, module, ids, ratio)
    return float(F.cross_entropy(logits[m], x[m], reduction="mean"))


def generate(ref: MaskedLM, module: Any, n: int, steps: int, seed: int) -> Any:
    """[n, length] tokens from all-mask: at step k of `steps` the positions of the k-th chunk of
    a seeded random order are unmasked to the model's argmax (MDLM's ancestral order with
    greedy tokens), the call made at the current mask ratio."""
    import torch

    g = torch.Generator().manual_seed(seed)
    order = torch.stack([torch.randperm(ref.length, generator=g) for _ in range(n)])
    x = torch.full((n, ref.length), ref.mask_id, dtype=torch.long)
    chunks = np.array_split(np.arange(ref.length), steps)
    rows = torch.arange(n)[:, None]
    for k, chunk in enumerate(chunks):
        ratio = 1.0 - k / steps
        logits = call(ref, module, x, ratio).clone()  # an inference tensor: written below
        logits[..., ref.mask_id] = -float("inf")
        pos = order[:, torch.as_tensor(chunk)]
        x[rows, pos] = logits.argmax(-1)[rows, pos]
    return x


def quantized_module(ref: MaskedLM, quantized: str | os.PathLike[str]) -> Any:
    """A copy of the reference with every tensor the model file holds; tied weights (a masked
    LM's decoder shares the word embeddings) follow the tensor they are tied to."""
    import copy

    import torch

    import arrowquant as aq
    from arrowquant.errors import ShapeMismatchError

    qpath = aq.model.resolve_model_path(quantized)
    names = set(aq.open(qpath).names())
    m = copy.deepcopy(ref.module)
    state = m.state_dict()
    present = {k: v for k, v in state.items() if k in names}
    owners = {p.data_ptr() for k, p in state.items() if k in names}
    missing = [k for k, v in state.items() if k not in names and v.data_ptr() not in owners]
    if missing:
        raise ShapeMismatchError(
            f"{qpath}: lacks {len(missing)} tensor(s) of {ref.path} (e.g. {missing[0]}); "
            "was it quantized from this model?"
        )
    with torch.no_grad():
        aq.load_state_dict(qpath, dtype=torch.float32, out=present)
    return m.eval()


def synthetic_texts(ref: MaskedLM, n: int, seed: int) -> list[str]:
    """`n` sequences the FP model generates itself (16 unmasking steps): calibration data when
    none is given."""
    x = generate(ref, ref.module, n, 16, seed + 7)
    return [ref.tokenizer.decode(row.tolist()) for row in x]
