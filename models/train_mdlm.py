"""Trains the code masked-diffusion language model on the machine's Python standard library.

    .venv/bin/python models/train_mdlm.py

`code-mdlm/` is an MDLM-style model (Sahoo et al. 2024): a bidirectional transformer (transformers
`ModernBertForMaskedLM`, 4 layers, width 128) that predicts masked tokens; the forward process masks
each token independently with probability t, so the mask ratio plays the timestep's role, and
generation unmasks from an all-mask sequence. Training minimises the continuous-time ELBO: the
cross-entropy of the masked tokens weighted by 1/t.

- Data: the `.py` files at the top of the standard library of the Python running this script
  (sorted by name; every tenth file held out), so nothing is downloaded;
- tokenizer: a byte-level BPE vocabulary of 1,024 tokens trained here on the training files
  (`tokenizers`), with [PAD] and [MASK]; saved as a `PreTrainedTokenizerFast`;
- `heldout.jsonl`: 64 windows of 128 tokens from the held-out files (decoded text, one JSON
  object a line with `text`), for evaluation and calibration;
- the weights' SafeTensors metadata says `"modality": "code"`.

Seeded, deterministic algorithms, 2 threads; EMA weights; `training.json` records the settings,
the Python version whose library was read, and the wall time.
"""

from __future__ import annotations

import json
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from schedule import ema_step, lr_at

HERE = Path(__file__).resolve().parent
OUT = HERE / "code-mdlm"
THREADS = 2
SEQ = 128
VOCAB = 1024
HELD_OUT_WINDOWS = 64
MIN_T = 0.02  # mask ratios below this carry almost no training signal per token


def corpus() -> tuple[list[str], list[str], list[str]]:
    """(training texts, held-out texts, file names) from the standard library's top level."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(root.glob("*.py"))
    train = [f.read_text(errors="replace") for i, f in enumerate(files) if i % 10]
    held = [f.read_text(errors="replace") for i, f in enumerate(files) if i % 10 == 0]
    return train, held, [f.name for f in files]


def make_tokenizer(texts: list[str]) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE(unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=["[PAD]", "[MASK]", "[UNK]"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        pad_token="[PAD]",
        mask_token="[MASK]",
        unk_token="[UNK]",
        model_max_length=SEQ,
    )


def windows(tok: Any, texts: list[str]) -> torch.Tensor:
    """The texts' tokens end to end, cut into [N, SEQ] windows."""
    ids: list[int] = []
    for text in texts:
        ids += tok(text, add_special_tokens=False).input_ids
    n = len(ids) // SEQ
    return torch.tensor(ids[: n * SEQ], dtype=torch.long).view(n, SEQ)


def make_model(vocab: int, pad: int, mask: int) -> Any:
    from transformers import ModernBertConfig, ModernBertForMaskedLM

    # ModernBERT (pre-norm, rotary positions): BERT's learned absolute positions left a model of
    # this size at the unigram plateau (5.8 nats, every mask ratio alike) after 2000 steps.
    cfg = ModernBertConfig(
        vocab_size=vocab,
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=256,
        max_position_embeddings=SEQ,
        global_attn_every_n_layers=1,
        local_attention=SEQ,
        pad_token_id=pad,
        mask_token_id=mask,
        bos_token_id=pad,
        eos_token_id=pad,
        cls_token_id=pad,
        sep_token_id=pad,
        attention_dropout=0.0,
        mlp_dropout=0.0,
        embedding_dropout=0.0,
    )
    return ModernBertForMaskedLM(cfg)


def mdlm_loss(model: Any, x: torch.Tensor, mask_id: int, gen: torch.Generator) -> torch.Tensor:
    """Continuous-time MDLM ELBO: each token masked with probability t ~ U(MIN_T, 1), the masked
    tokens' cross-entropy weighted by 1/t, per token."""
    t = MIN_T + (1 - MIN_T) * torch.rand((x.shape[0], 1), generator=gen)
    masked = torch.rand(x.shape, generator=gen) < t
    logits = model(input_ids=torch.where(masked, mask_id, x)).logits
    ce = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), x.reshape(-1), reduction="none"
    ).view(x.shape)
    return (ce * masked / t).sum() / x.numel()


def main() -> int:
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(THREADS)
    t0 = time.perf_counter()
    train, held, names = corpus()
    tok = make_tokenizer(train)
    data, held_windows = windows(tok, train), windows(tok, held)
    pad, mask_id = tok.pad_token_id, tok.mask_token_id
    model, ema = make_model(len(tok), pad, mask_id), make_model(len(tok), pad, mask_id)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    steps, batch, lr, warmup = 2000, 32, 1e-3, 200
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(1)
    losses: list[float] = []
    model.train()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, warmup)
        x = data[torch.randint(0, data.shape[0], (batch,), generator=gen)]
        loss = mdlm_loss(model, x, mask_id, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema_step(ema, model, step)
        losses.append(loss.item())
        if step % 500 == 0 or step == steps - 1:
            print(f"mdlm step {step:5d} loss {np.mean(losses[-100:]):.4f}", flush=True)
    ema.eval()
    with torch.no_grad():
        g = torch.Generator().manual_seed(2)
        held_loss = float(np.mean([mdlm_loss(ema, held_windows, mask_id, g) for _ in range(4)]))
    save(ema, tok, held_windows)
    info = {
        "model": "ModernBertForMaskedLM (bidirectional), MDLM objective (1/t-weighted masked CE)",
        "parameters": sum(p.numel() for p in ema.parameters()),
        "vocabulary": len(tok),
        "data": (
            f"{len(names)} .py files at the top of Python {sys.version.split()[0]}'s standard "
            f"library, every tenth held out: {data.shape[0]} training and "
            f"{held_windows.shape[0]} held-out windows of {SEQ} tokens"
        ),
        "steps": steps,
        "batch": batch,
        "lr": lr,
        "final_loss": round(float(np.mean(losses[-200:])), 4),
        "held_out_loss": round(held_loss, 4),
        "seconds": round(time.perf_counter() - t0, 1),
        "threads": THREADS,
        "torch": torch.__version__,
    }
    (OUT / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info))
    return 0


def save(model: Any, tok: Any, held: torch.Tensor) -> None:
    """The model folder (config, tokenizer, weights with modality metadata, held-out text)."""
    from safetensors.torch import save_file

    OUT.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(OUT)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    # Tied weights (the decoder shares the word embeddings) are stored once, as transformers does.
    saved = (OUT / "model.safetensors").exists()
    from safetensors import safe_open

    with safe_open(OUT / "model.safetensors", "pt") as f:
        keys = set(f.keys()) if saved else set(state)
    save_file(
        {k: v for k, v in state.items() if k in keys},
        OUT / "model.safetensors",
        metadata={"format": "pt", "modality": "code"},
    )
    tok.save_pretrained(OUT)
    rows = [
        json.dumps({"text": tok.decode(w[w != tok.pad_token_id].tolist())})
        for w in held[:HELD_OUT_WINDOWS]
    ]
    (OUT / "heldout.jsonl").write_text("\n".join(rows) + "\n")


if __name__ == "__main__":
    sys.exit(main())
