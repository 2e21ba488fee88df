"""The stages: the PPO update (``ppo``) and its trainer (``ppo_trainer``), model loading for PPO (``parts``), SFT
(``sft``) and reward-model training (``rm``) with what they share (``offline``, ``common``). The run around every
stage is ``tether.engine.loop``; docs/layout.md shows how they fit."""
