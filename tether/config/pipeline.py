"""``PipelineConfig`` (SFT → reward model → PPO, or SFT → DPO with ``method: dpo``) and ``DemoConfig`` (the offline
sentiment demo).

Wiring rule: each stage's output feeds the next. The SFT output is the PPO policy (and, through PPO's default, its
frozen reference); the reward-model output is the PPO reward. With ``method: dpo`` the SFT output is the DPO model
(policy and frozen reference), and there is no reward model and no PPO stage. The reward model has its own backbone
(``rm.model``, e.g. MiniLM or the SFT model's path if you want a decoder RM). The wiring is applied to the user's nested mapping
*before* validation (a ``mode="before"`` validator), so each stage config is built and validated exactly once and
never rewritten afterwards; setting a wired key yourself is an error that names the key to set instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import Field, model_validator

from tether.config.base import OutputDir, Section, _deepcopy
from tether.config.dpo import DPOConfig
from tether.config.ppo import PPOConfig
from tether.config.rm import RMConfig
from tether.config.sft import SFTConfig


def _section(data: dict, key: str) -> dict:
    raw = data.get(key)
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError(f"{key}: must be a mapping of option: value")
    return _deepcopy(raw)


def _wire(stage: dict, key: str, value: Any, where: str, instead: str) -> None:
    if key in stage:
        raise ValueError(f"{where}.{key} is wired by the pipeline ({instead}); remove it")
    stage[key] = value


def wire_stages(data: dict, out: str) -> tuple[dict, dict, dict]:
    """Per-stage mappings with the pipeline wiring filled in: outputs under ``out``, SFT → PPO policy, RM → reward."""
    sft, rm, ppo = _section(data, "sft"), _section(data, "rm"), _section(data, "ppo")
    sft.setdefault("output_dir", f"{out}/sft")
    rm.setdefault("output_dir", f"{out}/rm")
    ppo.setdefault("output_dir", f"{out}/ppo")
    _wire(ppo, "policy", sft["output_dir"], "ppo", "the SFT output; set sft.output_dir")
    extra = ppo.pop("rewards", None) or []
    if not isinstance(extra, list):
        raise ValueError("ppo.rewards: must be a list of reward sources")
    ppo["rewards"] = [{"kind": "model", "path": rm["output_dir"], "name": "reward_model"}, *extra]
    return sft, rm, ppo


def _unused(data: dict, key: str, method: str) -> None:
    """Drop the section of a stage ``method`` does not run; refuse it when it holds more than the ``resume`` that
    ``--resume``/``--no-resume`` set for every stage."""
    section = _section(data, key)
    section.pop("resume", None)
    if section:
        raise ValueError(f"{key}: method={method} does not run the {key} stage; remove its options (or set the "
                         "method that runs it)")
    data[key] = None


class PipelineConfig(Section):
    """SFT → reward model → PPO (or SFT → DPO with `method: dpo`), each stage's output feeding the next (see the module
    docstring for the wiring)."""

    output_dir: OutputDir = "runs/pipeline"
    """Run directory; stages write to `<output_dir>/sft`, `/rm`, `/ppo` (or `/dpo`) unless their own output_dir is
    set."""
    method: Literal["ppo", "dpo"] = "ppo"
    """What follows SFT: `ppo` (a reward model, then PPO against it) or `dpo` (DPO/IPO on preference pairs, no reward
    model)."""
    sft: SFTConfig
    """Supervised fine-tuning stage (its output becomes ppo.policy, or dpo.model)."""
    rm: Optional[RMConfig] = None
    """Reward-model stage, method ppo (its output becomes the first of ppo.rewards; extra ppo.rewards are added after
    it)."""
    ppo: Optional[PPOConfig] = None
    """PPO stage, method ppo (policy and reward wired from the stages before)."""
    dpo: Optional[DPOConfig] = None
    """DPO stage, method dpo (its model, the policy's start and frozen reference, is the SFT output)."""
    force: bool = False
    """Re-run every stage even when its output directory already holds a finished model with the same config."""

    @model_validator(mode="before")
    @classmethod
    def _wiring(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = _deepcopy(data)
        out = str(data.get("output_dir") or "runs/pipeline")
        if data.get("method") == "dpo":
            _unused(data, "rm", "dpo")
            _unused(data, "ppo", "dpo")
            sft, dpo = _section(data, "sft"), _section(data, "dpo")
            sft.setdefault("output_dir", f"{out}/sft")
            dpo.setdefault("output_dir", f"{out}/dpo")
            _wire(dpo, "model", sft["output_dir"], "dpo", "the SFT output; set sft.output_dir")
            data["sft"], data["dpo"] = sft, dpo
        else:
            _unused(data, "dpo", str(data.get("method", "ppo")))
            data["sft"], data["rm"], data["ppo"] = wire_stages(data, out)
        return data


# ------------------------------------------------------------------------------------------------ demo

# The demo's stage settings (SmolLM2-135M policy, MiniLM reward model, 2 CPU cores). A user's nested sft/rm/ppo keys
# override these; --quick (quick: true) shrinks them to a smoke run of a few minutes.
# PPO is the real thing: GAE with a critic (a value head on the policy's trunk, `critic_mode: shared`, the cheap
# layout on a CPU), 2 epochs × 2 minibatches of each rollout so the ratio leaves 1 and the clip acts.
DEMO_STAGES: dict[str, dict[str, Any]] = {
    "sft": {"max_steps": 30, "batch_size": 4, "lr": 5e-5, "warmup_steps": 3, "max_length": 48,
            "eval_batch_size": 16, "log_every": 5},
    "rm": {"num_epochs": 1, "batch_size": 16, "lr": 5e-5, "max_length": 64, "warmup_steps": 5,
           "normalize": "shift_scale", "eval_batch_size": 64, "log_every": 10},
    "ppo": {"advantage": "gae", "critic_mode": "shared", "samples_per_prompt": 1, "num_updates": 40,
            "rollout_batch_size": 8, "micro_batch_size": 4, "num_minibatches": 2, "num_ppo_epochs": 2,
            "response_length": 16, "max_prompt_length": 32, "lr": 1e-5, "lr_schedule": "constant",
            "warmup_updates": 2, "critic_lr": 1e-3, "kl_coef": 0.1, "temperature": 0.7, "sample_every": 4,
            # held-out judges every 10 updates (on the demo's held-out prompts): the report's √KL view
            "monitor": {"eval_every": 10, "eval_num_prompts": 32, "judges": ["vader", "textblob"]}},
}
DEMO_TARGET: dict[str, Any] = {"judges": ("vader", "textblob", "afinn"), "ppl_ratio_max": 1.15}
"""The demo's evidence bar (``tether.demo.target_met``): PPO beats SFT on every one of these judges with a paired 95 %
CI excluding 0, and the perplexity of its completions under the SFT reference is at most this multiple of SFT's."""
DEMO_QUICK: dict[str, Any] = {
    "n_sft_train": 200, "n_sft_eval": 24, "n_pairs_train": 300, "n_pairs_eval": 100, "n_prompts_train": 64,
    "n_prompts_eval": 16,
    "eval_samples": 1,
    "sft": {"max_steps": 4, "warmup_steps": 1},
    "rm": {"max_steps": 8, "warmup_steps": 1},
    "ppo": {"num_updates": 2, "warmup_updates": 0, "rollout_batch_size": 4, "micro_batch_size": 2,
            "response_length": 12,
            "monitor": {"eval_every": 2, "eval_num_prompts": 4}},
}


def _merge(base: dict, top: dict) -> dict:
    out = _deepcopy(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class DemoConfig(Section):
    """The offline sentiment demo: SFT SmolLM2-135M on review snippets, a MiniLM reward model on human preference
    pairs (VADER paper ratings), PPO against it, then SFT vs PPO judged by VADER, TextBlob and AFINN. Stage options
    not given here take the demo's settings (`tether.config.pipeline.DEMO_STAGES`, shown in configs/demo.yaml); with
    `ppo.preset`, the preset's values replace the demo's PPO settings (yours still win)."""

    quick: bool = False
    """Smoke-size run (a few minutes): small data, a few steps per stage. Same as --quick."""
    seed: int = 0
    """Seed for the data split, every stage and the evaluation sampling."""
    output_dir: OutputDir = "runs/demo"
    """Run directory: data/, sft/, rm/, ppo/, eval/ are written under it."""
    threads: Optional[int] = Field(None, ge=1)
    """torch intra-op threads; null: torch's default (every core). 1 is much faster on a shared, busy machine."""
    n_sft_train: int = Field(1000, ge=1)
    """SFT examples (review continuations) drawn from the training snippets."""
    n_sft_eval: int = Field(100, ge=1)
    """Held-out SFT examples for the evaluation loss."""
    n_pairs_train: int = Field(800, ge=2)
    """Human-labelled preference pairs for the reward model."""
    n_pairs_eval: int = Field(300, ge=1)
    """Held-out preference pairs for the reward model's accuracy."""
    n_prompts_train: int = Field(256, ge=1)
    """PPO prompts (snippet openings)."""
    n_prompts_eval: int = Field(96, ge=2)
    """Held-out prompts for the SFT-vs-PPO evaluation."""
    eval_samples: int = Field(2, ge=1)
    """Completions sampled per held-out prompt in the evaluation."""
    judges: list[str] = Field(default_factory=lambda: ["vader", "textblob", "afinn"])
    """Independent judges scoring the completions."""
    force: bool = False
    """Re-run every stage even when its output already holds a finished model with the same config."""
    sft: SFTConfig
    """SFT stage (model and data are wired by the demo)."""
    rm: RMConfig
    """Reward-model stage (MiniLM backbone and pairs wired by the demo; group column = domain)."""
    ppo: PPOConfig
    """PPO stage (policy = SFT output, reward = the trained RM, prompts = snippet openings)."""

    @model_validator(mode="before")
    @classmethod
    def _wiring(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = _deepcopy(data)
        user_ppo = _section(data, "ppo")
        if data.get("quick") is True:
            data = _merge(DEMO_QUICK, data)
        for stage in ("sft", "rm", "ppo"):
            data[stage] = _merge(DEMO_STAGES[stage], _section(data, stage))
        _preset_over_demo(data["ppo"], user_ppo)
        if "total_episodes" in user_ppo and "num_updates" not in user_ppo:  # the user's run length wins
            data["ppo"].pop("num_updates", None)
        if "seed" in data:
            for stage in ("sft", "rm", "ppo"):
                data[stage].setdefault("seed", data["seed"])
        out = str(data.get("output_dir") or "runs/demo")
        d = f"{out}/data"
        from tether.assets.cache import cache_dir
        from tether.assets.smollm2 import NAME as SMOLLM2

        sft, rm, ppo = data["sft"], data["rm"], data["ppo"]
        _wire(sft, "model", str(cache_dir() / SMOLLM2), "sft", "the cached SmolLM2-135M-Instruct")
        _wire(sft, "train_file", f"{d}/sft_train.jsonl", "sft", "demo data; set n_sft_train")
        _wire(sft, "eval_file", f"{d}/sft_eval.jsonl", "sft", "demo data; set n_sft_eval")
        _wire(rm, "train_file", f"{d}/pairs_train.jsonl", "rm", "demo data; set n_pairs_train")
        _wire(rm, "eval_file", f"{d}/pairs_eval.jsonl", "rm", "demo data; set n_pairs_eval")
        rm.setdefault("model", "minilm")  # replaced by the installed MiniLM path below
        if rm["model"] == "minilm":
            rm["model"] = _minilm_dir()
        _wire(ppo, "prompts", f"{d}/prompts_train.jsonl", "ppo", "demo data; set n_prompts_train")
        monitor = ppo.setdefault("monitor", {})
        if isinstance(monitor, dict) and monitor.get("eval_every") and not monitor.get("eval_prompts"):
            monitor["eval_prompts"] = f"{d}/prompts_eval.jsonl"
        data["sft"], data["rm"], data["ppo"] = wire_stages(data, out)
        return data

    @property
    def data_dir(self) -> Path:
        return Path(self.output_dir) / "data"


def _preset_over_demo(ppo: dict, user_ppo: dict) -> None:
    """With ``ppo.preset``, the preset's values replace the demo's own settings (your values still win): drop the
    demo's value of every option the preset sets and you did not. An unknown preset is left to ``PPOConfig``."""
    from tether.config.presets import PRESETS

    name = user_ppo.get("preset")
    if not isinstance(name, str) or name not in PRESETS:
        return
    for key in PRESETS[name].values():
        if key not in user_ppo:
            ppo.pop(key, None)


def _minilm_dir() -> str:
    try:
        from tether.assets.minilm import minilm_path

        return str(minilm_path())
    except Exception:  # not installed: the demo reports the AssetError when it builds its assets
        return "minilm-not-installed"
