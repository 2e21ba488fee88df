"""Pure tensor math of RLHF. Imports only torch; nothing here touches a model.

See docs/details.md for the map from each implementation detail to its function and oracle test.
"""

from tether.ops.advantages import (
    ADVANTAGE_ESTIMATORS,
    CRITIC_ESTIMATORS,
    GROUP_ESTIMATORS,
    gae,
    grpo_advantages,
    reward_to_go,
    rloo_advantages,
)
from tether.ops.aggregate import AGGREGATION_MODES, aggregate
from tether.ops.kl import KL_ESTIMATORS, kl_penalty
from tether.ops.kl_control import AdaptiveKLController, FixedKLController
from tether.ops.logprobs import entropy_from_logits, logprobs_from_logits
from tether.ops.losses import (
    bradley_terry_loss,
    clipped_policy_loss,
    clipped_value_loss,
    dpo_loss,
    entropy_loss,
    ipo_loss,
    kl_loss,
)
from tether.ops.masking import (
    first_true_index,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
    response_mask_from_eos,
    truncate_after_eos,
)
from tether.ops.precision import compute_dtype, to_compute
from tether.ops.rewards import (
    apply_missing_eos_penalty,
    clip_scores,
    critic_mask,
    groups_with_signal,
    overlong_penalty,
    score_index,
    shape_rewards,
    whiten_rewards,
)
from tether.ops.stats import approx_kl, explained_variance, mean_sequence_kl, sequence_sum

__all__ = [name for name in dir() if not name.startswith("_")]
