"""The model card (``README.md``) written into every output directory, laid out as TRL writes its cards: YAML front
matter (``base_model``, ``library_name``, ``model_name``, ``tags``, ``datasets`` for a Hub dataset), then the base
model, the stage, the data, a quick start with plain transformers, the key hyper-parameters and the final metrics.

:func:`model_card` is pure (config and metrics in, Markdown out); the stages put its text beside the weights when
they save (``save_model_atomic``'s ``extra_files``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

STAGES = {"sft": "supervised fine-tuning (SFT)", "rm": "reward-model training (Bradley–Terry)",
          "ppo": "reinforcement learning from a reward (PPO family)",
          "dpo": "direct preference optimisation (DPO / IPO)"}
TAGS = {"sft": ["sft"], "rm": ["reward-model"], "ppo": ["ppo", "rlhf"], "dpo": ["dpo"]}
KEY_OPTIONS = {
    "sft": ("lr", "lr_schedule", "warmup_steps", "num_epochs", "max_steps", "batch_size", "grad_accum", "max_length",
            "completion_only_loss", "packing", "weight_decay", "max_grad_norm", "dtype", "seed"),
    "rm": ("lr", "lr_schedule", "warmup_steps", "num_epochs", "max_steps", "batch_size", "grad_accum", "max_length",
           "init_head", "normalize", "margin_column", "dtype", "seed"),
    "ppo": ("advantage", "num_updates", "rollout_batch_size", "samples_per_prompt", "num_minibatches",
            "num_ppo_epochs", "lr", "critic_lr", "response_length", "temperature", "clip_eps", "vf_coef", "kl_coef",
            "kl_controller", "kl_estimator", "kl_in", "gamma", "lam", "whiten_advantages", "loss_aggregation",
            "critic_mode", "seed"),
    "dpo": ("loss_type", "beta", "label_smoothing", "precompute_ref_logprobs", "lr", "lr_schedule", "warmup_steps",
            "num_epochs", "max_steps", "batch_size", "grad_accum", "max_length", "max_prompt_length", "dtype", "seed"),
}
FINAL_METRICS = {
    "sft": ("loss", "eval_loss", "step"),
    "rm": ("accuracy", "loss", "n"),
    "ppo": ("objective/score", "objective/kl", "objective/entropy", "eval/score", "update"),
    "dpo": ("loss", "rewards/accuracy", "rewards/margin", "eval/loss", "eval/rewards/accuracy", "eval/rewards/margin",
            "step"),
}
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _get(cfg: Any, key: str) -> Any:
    return cfg.get(key) if isinstance(cfg, Mapping) else getattr(cfg, key, None)


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    if hasattr(value, "_fingerprint"):  # a datasets.Dataset given from Python
        return f"a datasets.Dataset ({len(value)} rows)"
    return str(value)


def final_metrics(stage: str, metrics: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None) -> dict[str, Any]:
    """The finite values of the stage's headline metrics: from a mapping as it is, from a list of ``metrics.jsonl``
    records the last value each key took."""
    if metrics is None:
        return {}
    if isinstance(metrics, Mapping):
        merged = dict(metrics)
    else:
        merged = {}
        for rec in metrics:
            merged.update({k: v for k, v in rec.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    out = {}
    for key in FINAL_METRICS.get(stage, ()):
        value = merged.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[key] = value
    return out


def model_card(stage: str, cfg: Any, metrics: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None, *,
               notes: Sequence[str] = ()) -> str:
    """``README.md`` text for the output of ``stage`` (``"sft"``, ``"rm"``, ``"ppo"`` or ``"dpo"``) trained with
    ``cfg`` (a stage config or its dump). ``metrics``: the final numbers (a mapping) or the run's metric records; ``notes``:
    extra lines (e.g. where a reward model's normalisation lives)."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
    base = _get(cfg, "policy" if stage == "ppo" else "model")
    data = _get(cfg, "prompts" if stage == "ppo" else "train_file")
    name = Path(str(_get(cfg, "output_dir") or stage)).name
    front: dict[str, Any] = {}
    if base:
        front["base_model"] = str(base)
    adapter = stage == "ppo" and bool(_get(cfg, "policy_lora"))  # final/ holds a LoRA adapter on the base
    front |= {"library_name": "peft" if adapter else "transformers", "model_name": name,
              "tags": ["generated_from_trainer", "tether", *TAGS[stage], *(["lora"] if adapter else [])]}
    if isinstance(data, str) and _HUB_NAME.match(data.split(":")[0]) and not Path(data).exists():
        front["datasets"] = [data.split(":")[0]]
    front["licence"] = "license"
    lines = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).rstrip(), "---", "",
             f"# Model Card for {name}", ""]
    origin = f"`{base}`" if base else "a model passed from Python"
    if base and _HUB_NAME.match(str(base)) and not Path(str(base)).exists():
        origin = f"[{base}](https://huggingface.co/{base})"
    lines += [f"This model is {origin} after tether's {STAGES[stage]} stage, trained on {_data_text(data)}.", ""]
    where = str(_get(cfg, "output_dir") or name) + ("/final" if stage in ("ppo", "dpo") else "")
    quick = [ln.replace("PATH", where) for ln in _quick_start(stage, adapter)]
    lines += ["## Quick start", "", "```python", *quick, "```", ""]
    if notes:
        lines += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    options = [(k, _get(cfg, k)) for k in KEY_OPTIONS[stage] if _get(cfg, k) is not None]
    lines += ["## Training hyper-parameters", "", "| option | value |", "| --- | --- |",
              *[f"| `{k}` | {_text(v)} |" for k, v in options], "",
              "Every option of the run is in `tether_config.yaml` beside this file.", ""]
    final = final_metrics(stage, metrics)
    lines += ["## Final metrics", ""]
    lines += ["| metric | value |", "| --- | --- |", *[f"| `{k}` | {_text(v)} |" for k, v in final.items()]] if final \
        else ["No metric was recorded."]
    run = "the run directory above this one" if stage in ("ppo", "dpo") else "this directory"
    lines += ["", "## Framework", "", f"Trained with tether (RLHF with PPO for Hugging Face causal LMs); {run} holds "
              "the run's `metrics.jsonl` and its HTML report (`report.html`, unless turned off).", ""]
    return "\n".join(lines)


def _data_text(data: Any) -> str:
    if data is None:
        return "data passed from Python"
    return f"`{_text(data)}`"


def _quick_start(stage: str, adapter: bool = False) -> list[str]:
    if adapter:
        return ["from peft import AutoPeftModelForCausalLM",
                "from transformers import AutoTokenizer",
                "",
                "# the base model recorded in adapter_config.json, with this LoRA adapter on it",
                'model = AutoPeftModelForCausalLM.from_pretrained("PATH").eval()',
                'tok = AutoTokenizer.from_pretrained("PATH")',
                'ids = tok("PROMPT", return_tensors="pt")',
                'print(tok.decode(model.generate(**ids, max_new_tokens=64)[0]))',
                "# merge_on_save: PATH/merged is a plain transformers model (base + adapter)"]
    if stage == "rm":
        return ["import torch",
                "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
                "",
                'tok = AutoTokenizer.from_pretrained("PATH")',
                'rm = AutoModelForSequenceClassification.from_pretrained("PATH").eval()',
                "# a decoder reward model reads its score at the EOS after the completion; an encoder takes the pair",
                'ids = tok("PROMPT" + " COMPLETION" + tok.eos_token, return_tensors="pt")',
                "with torch.no_grad():",
                "    score = rm(**ids).logits[0, 0]  # normalised: reference completions average 0"]
    return ["from transformers import pipeline",
            "",
            'generator = pipeline("text-generation", model="PATH")',
            'print(generator("PROMPT", max_new_tokens=64)[0]["generated_text"])']
