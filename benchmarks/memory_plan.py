"""The memory planner's estimate (tether/plan/memory.py) against measured peaks, for PPO-like layouts of one model.

Not a test and not a timing: it prints memory figures only (memory is not distorted by a loaded machine).

    PYTHONPATH=. .venv/bin/python benchmarks/memory_plan.py [--model smollm2|tiny] [--layouts full,lora,...]

Each layout runs in its own subprocess. The models are built from the config (SmolLM2-135M-Instruct's sizes, or a
4-layer d-256 Llama for ``tiny``) with random weights, so no checkpoint file is mapped into memory. In the child:
the AdamW state is allocated first (a zero gradient and one step), then the policy generates ``--gen-batch``
sequences of ``--response`` tokens with the KV cache, then one micro-batch of ``--micro`` sequences of
``--query + --response`` tokens (left-padded) runs forward and backward through the PPO pieces (log-probs over the
response, clipped loss, value loss) and the optimizer steps. Measured: on CUDA ``torch.cuda.max_memory_allocated``;
on CPU the peak resident set (``VmHWM``) minus the resident set after imports and input set-up, per phase
(rollout, then the whole run), with glibc's mmap threshold fixed at 128 KiB (``MALLOC_MMAP_THRESHOLD_``) so that
freed tensors leave the resident set instead of fragmenting the heap. Layouts:

- ``full``: policy + frozen reference copy + separate critic (a trunk copy with a value head), float32;
- ``full_ckpt``: the same with gradient checkpointing (``tether.models.checkpointing``);
- ``lora``: a rank-16 adapter on the policy (``tether.models.lora``), the reference = the adapter switched off,
  a value head on the policy's trunk (``critic_mode=shared``);
- ``lora_ckpt``: the same with gradient checkpointing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYOUTS = ("full", "full_ckpt", "lora", "lora_ckpt")
SMOLLM2 = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
               num_key_value_heads=3, max_position_embeddings=2048, tie_word_embeddings=True, rms_norm_eps=1e-5)
TINY = dict(vocab_size=50258, hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=4, max_position_embeddings=512, tie_word_embeddings=True)


def _kib(key: str) -> int:
    with open(f"/proc/{os.getpid()}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(key)


def _estimate(layout: str, shape, args):
    from tether.plan import memory as M

    lora = layout.startswith("lora")
    models = M.ppo_layout(shape, lora_rank=16 if lora else 0, critic="shared" if lora else "separate")
    seq = args.query + args.response
    return M.estimate_peak(models, micro_batch=args.micro, seq_len=seq, generation_batch=args.gen_batch,
                           generation_len=seq, checkpointing=layout.endswith("ckpt"), padded=True,
                           loss_len=args.response)


def _child(layout: str, args) -> dict:
    import copy

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tether import ops
    from tether.config.lora import LoraConfig
    from tether.models.checkpointing import enable_checkpointing, grad_forward
    from tether.models.forward import causal_lm_logits, causal_lm_logits_and_hidden
    from tether.models.load import disable_dropout
    from tether.models.lora import AdapterOffReference, wrap_lora
    from tether.models.value import ValueModel
    from tether.plan.memory import ModelShape

    torch.manual_seed(0)
    torch.set_num_threads(2)
    cuda = torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    cfg = LlamaConfig(**(SMOLLM2 if args.model == "smollm2" else TINY))
    q, rlen, b = args.query, args.response, args.micro
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (b, q + rlen), generator=g).to(dev)
    mask = torch.ones_like(ids)
    mask[: b // 2, : q // 4] = 0  # left padding on half of the rows
    prompts = torch.randint(0, cfg.vocab_size, (args.gen_batch, q), generator=g).to(dev)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _kib("VmRSS")

    policy = disable_dropout(LlamaForCausalLM(cfg)).to(dev).eval()
    shape = ModelShape.from_model(policy)
    lora = layout.startswith("lora")
    if lora:
        peft_model = wrap_lora(policy, LoraConfig(r=16, alpha=32))
        reference = AdapterOffReference(peft_model)
        critic = ValueModel.from_pretrained_model(policy).to(dev)  # head on the policy's trunk
        params = [p for p in list(policy.parameters()) + list(critic.head.parameters()) if p.requires_grad]
    else:
        reference = copy.deepcopy(policy).requires_grad_(False)
        critic = ValueModel.from_pretrained_model(copy.deepcopy(policy)).to(dev)
        params = list(policy.parameters()) + list(critic.parameters())
    if layout.endswith("ckpt"):
        enable_checkpointing(policy)
        if not lora:
            enable_checkpointing(critic)
    opt = torch.optim.AdamW(params, lr=1e-5)
    for p in params:  # allocate gradients and the AdamW state without a forward
        p.grad = torch.zeros_like(p)
    opt.step()

    with torch.no_grad():  # rollout: sample with the KV cache, then the reference's log-probs
        out = policy.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=rlen,
                              min_new_tokens=rlen, do_sample=True, pad_token_id=0)
        x = out[: args.micro]
        ops.logprobs_from_logits(causal_lm_logits(reference, x, torch.ones_like(x))[:, q - 1 : -1], x[:, q:])
        del x
    del out
    gen_peak = (torch.cuda.max_memory_allocated() if cuda else _kib("VmHWM")) - base

    opt.zero_grad(set_to_none=True)
    old = torch.zeros(b, rlen, device=dev)
    adv = torch.randn(b, rlen, generator=g).to(dev)
    rmask = mask[:, q:].bool()
    with grad_forward(policy), grad_forward(critic):
        if lora:
            logits, hidden = causal_lm_logits_and_hidden(policy, ids, mask)
            values = critic.values_from_hidden(hidden)[:, q - 1 : -1]
        else:
            logits = causal_lm_logits(policy, ids, mask)
            values = critic(ids, mask)[:, q - 1 : -1]
        logp = ops.logprobs_from_logits(logits[:, q - 1 : -1], ids[:, q:])
        pg, _ = ops.clipped_policy_loss(logp, old, adv, rmask, clip_low=0.2, clip_high=0.2, mode="token_mean")
        vf, _ = ops.clipped_value_loss(values, old, adv, rmask, clip=0.2, mode="token_mean")
        (pg + 0.1 * vf).backward()
    opt.step()
    peak = (torch.cuda.max_memory_allocated() if cuda else _kib("VmHWM")) - base
    return {"layout": layout, "shape": shape.__dict__, "generation": gen_peak, "peak": peak,
            "device": "cuda" if cuda else "cpu"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("smollm2", "tiny"), default="smollm2")
    ap.add_argument("--layouts", default=",".join(LAYOUTS))
    ap.add_argument("--micro", type=int, default=4)
    ap.add_argument("--query", type=int, default=64)
    ap.add_argument("--response", type=int, default=48)
    ap.add_argument("--gen-batch", type=int, default=16)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=None, help="also write the figures as JSON")
    args = ap.parse_args()
    if args.one:
        print(json.dumps(_child(args.one, args)))
        return

    from tether.plan import memory as M

    gib = M.GiB
    print(f"model {args.model}, micro-batch {args.micro} × ({args.query} + {args.response}) tokens, "
          f"{args.gen_batch} sampled at once")
    print(f"{'layout':<11} {'roll est':>9} {'roll meas':>9} {'ratio':>6} {'peak est':>9} {'peak meas':>9} {'ratio':>6}"
          f"  device", flush=True)
    rows = []
    for layout in args.layouts.split(","):
        cmd = [sys.executable, __file__, "--one", layout, "--model", args.model, "--micro", str(args.micro),
               "--query", str(args.query), "--response", str(args.response), "--gen-batch", str(args.gen_batch)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               "MALLOC_MMAP_THRESHOLD_": "131072"}  # large blocks mmapped: freed tensors leave the resident set
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
        if res.returncode:
            print(f"{layout}: failed\n{res.stderr[-2000:]}", file=sys.stderr)
            continue
        got = json.loads(res.stdout.strip().splitlines()[-1])
        est = _estimate(layout, M.ModelShape(**got["shape"]), args)
        got.update(est_rollout=est.rollout, est_peak=est.peak, components=est.components)
        rows.append(got)
        print(f"{layout:<11} {est.rollout / gib:8.2f}G {got['generation'] / gib:8.2f}G "
              f"{est.rollout / max(got['generation'], 1):6.2f} {est.peak / gib:8.2f}G "
              f"{got['peak'] / gib:8.2f}G {est.peak / max(got['peak'], 1):6.2f}  {got['device']}", flush=True)
        if args.out:
            args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
