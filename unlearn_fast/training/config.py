"""The training recipe: every training number declared ONCE, as a knob (settings.knob: help text and role in the
field's metadata). Its defaults are the package default, the shipped model's recipe: `unlearn-fast train` generates
its flags from these fields (the help shows these defaults), and a training request (run.TrainRequest) is this
config plus what to train on and where to write, so the command line, the Python API and every retraining job start
from the same numbers.

Steps default to 4,000: what `unlearn-fast train` has documented and the shipped model was trained with
(models/default/training.json; benchmarks/README.md's timings are of that recipe).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..settings import count_or_zero, knob, non_negative_float, positive_float, positive_int
from ..settings import seed as seed_type


@dataclass
class TrainingConfig:
    """The diffusion stage's recipe, then the VAE's (trained first when a model is made from scratch)."""

    steps: int = knob(4000, parse=positive_int, help="diffusion training steps")
    batch_size: int = knob(128, parse=positive_int, help="images per step")
    lr: float = knob(1e-3, parse=positive_float, help="peak learning rate (AdamW, after the warm-up)")
    warmup_steps: int = knob(200, parse=count_or_zero, help="learning-rate warm-up steps")
    weight_decay: float = knob(0.0, cli=False, help="AdamW's weight decay")
    grad_clip: float = knob(1.0, cli=False, help="gradient norm clip")
    # The saved weights are the EMA weights: much better samples from short CPU trainings.
    ema_decay: float = knob(0.999, parse=non_negative_float, help="decay of the weights' moving average (saved)")
    caption_dropout: float = knob(0.1, parse=non_negative_float,
                                  help="share of captions left empty, for classifier-free guidance")
    unet_parameters: str = knob("all", help="denoiser parameter group to train: all, kv, cross-attention, attention "
                                            "or a regex")
    train_text_encoder: bool = knob(True, flag="--freeze-text-encoder", negate=True,
                                    help="freeze the text encoder (with --add-token: only the new tokens' rows train)")
    # With the text encoder frozen: train the embeddings of the last `new_token_rows` vocabulary rows (the tokens a
    # customisation added), as Custom Diffusion and textual inversion do; every other row stays as it was. A training
    # run sets it from the tokens it adds.
    new_token_rows: int = knob(0, cli=False, help="vocabulary rows (the last ones) whose embeddings train")
    seed: int = knob(0, parse=seed_type, help="seed of the initial weights, the batches and the noise")
    vae_steps: int = knob(1500, parse=count_or_zero, help="VAE training steps (ignored with --vae-from / --init-from)")
    vae_batch_size: int = knob(64, cli=False, help="images per VAE step")
    vae_lr: float = knob(1e-3, cli=False, help="the VAE's learning rate")
    # Stable Diffusion's value: a nearly deterministic autoencoder with a smooth latent space
    vae_kl_weight: float = knob(1e-6, cli=False, help="weight of the VAE's KL term")
