"""The optimisation side of a training run: optimiser, learning-rate schedule, loss, weight averaging.

Two recipes are built from the same few choices (see ``docs/real-data.md`` for how they were
chosen on FracAtlas's validation split):

- the MURA paper's: Adam, the learning rate divided by 10 when the validation loss plateaus,
  class-weighted binary cross-entropy (``optimizer=adam``, ``schedule=plateau``, ``loss=bce``);
- a from-scratch recipe for small real sets: AdamW (decoupled weight decay), a linear warm-up
  then cosine decay over the planned epochs, optionally focal loss and an exponential moving
  average (EMA) of the weights.

With ``ema_momentum > 0`` the optimiser keeps a moving average of the weights, and
``keras.callbacks.SwapEMAWeights`` puts the averaged weights in the model for every validation
pass and at the end of every epoch, so early stopping, the checkpoint of the best epoch and the
saved ``model.keras`` all hold the averaged weights: the ones that were validated.
"""

from __future__ import annotations

from typing import Any

import keras

from fracture_lib.errors import ParameterError

OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("plateau", "cosine")
LOSSES = ("bce", "focal")
# The cosine schedule ends at this fraction of the peak learning rate.
COSINE_FINAL_FRACTION = 0.01


def check_recipe(optimizer: str, schedule: str, loss: str, weight_decay: float, warmup_epochs: int,
                 ema_momentum: float, focal_gamma: float, epochs: int) -> None:
    """Raise ``ParameterError`` for recipe choices that cannot work."""
    for name, value, allowed in (("optimizer", optimizer, OPTIMIZERS), ("schedule", schedule, SCHEDULES),
                                 ("loss", loss, LOSSES)):
        if value not in allowed:
            raise ParameterError(f"{name}={value!r} is unknown: choose {' or '.join(allowed)}")
    for name, value, low, high in (("weight_decay", weight_decay, 0.0, 1.0), ("ema_momentum", ema_momentum, 0.0, 1.0),
                                   ("focal_gamma", focal_gamma, 0.0, 10.0)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value < high:
            raise ParameterError(f"{name}={value!r} must be a number in [{low:g}, {high:g})")
    if isinstance(warmup_epochs, bool) or not isinstance(warmup_epochs, int) or warmup_epochs < 0:
        raise ParameterError(f"warmup_epochs={warmup_epochs!r} must be a whole number of epochs, 0 or more")
    if warmup_epochs and schedule != "cosine":
        raise ParameterError(f"warmup_epochs={warmup_epochs} needs schedule=cosine (the plateau schedule has no warm-up)")
    if warmup_epochs >= epochs:
        raise ParameterError(f"warmup_epochs={warmup_epochs} must be below epochs={epochs}")


def learning_rate_schedule(learning_rate: float, schedule: str, epochs: int, steps_per_epoch: int,
                           warmup_epochs: int = 0) -> Any:
    """The optimiser's learning rate: a number (``plateau``) or a warm-up-then-cosine schedule.

    The cosine schedule rises linearly from 0 to ``learning_rate`` over ``warmup_epochs``, then
    decays to ``COSINE_FINAL_FRACTION`` of it at the last planned epoch (early stopping may end
    the run before).
    """
    if schedule == "plateau":
        return float(learning_rate)
    total_steps = max(1, int(epochs) * int(steps_per_epoch))
    warmup_steps = int(warmup_epochs) * int(steps_per_epoch)
    if warmup_steps:
        return keras.optimizers.schedules.CosineDecay(0.0, decay_steps=total_steps - warmup_steps,
                                                      alpha=COSINE_FINAL_FRACTION, warmup_target=float(learning_rate),
                                                      warmup_steps=warmup_steps)
    return keras.optimizers.schedules.CosineDecay(float(learning_rate), decay_steps=total_steps,
                                                  alpha=COSINE_FINAL_FRACTION)


def make_optimizer(optimizer: str, learning_rate: Any, weight_decay: float = 0.0,
                   ema_momentum: float = 0.0) -> keras.optimizers.Optimizer:
    """Adam or AdamW, with an exponential moving average of the weights when ``ema_momentum > 0``."""
    ema = {"use_ema": ema_momentum > 0, "ema_momentum": float(ema_momentum) if ema_momentum > 0 else 0.99}
    if optimizer == "adamw":
        return keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=float(weight_decay), **ema)
    return keras.optimizers.Adam(learning_rate=learning_rate, **ema)


def make_binary_loss(loss: str, focal_gamma: float = 2.0) -> keras.losses.Loss:
    """Binary cross-entropy, or focal loss (which down-weights images the model already gets right).

    The class weights are applied as sample weights either way, so focal loss uses no alpha of
    its own.
    """
    if loss == "focal":
        return keras.losses.BinaryFocalCrossentropy(gamma=float(focal_gamma), apply_class_balancing=False)
    return keras.losses.BinaryCrossentropy()


def schedule_callbacks(schedule: str, patience: int) -> list[Any]:
    """Callbacks the schedule needs: the tenfold drop on a validation-loss plateau, or none."""
    if schedule != "plateau":
        return []
    # As in the MURA paper, the learning rate drops tenfold when the validation loss plateaus
    # (smoother than the AUROC of a small validation split).
    return [keras.callbacks.ReduceLROnPlateau(monitor="val_loss", mode="min", factor=0.1,
                                              patience=plateau_patience(patience), min_lr=1e-6)]


def plateau_patience(patience: int) -> int:
    """Epochs without improvement before the learning rate drops: about half the early-stopping patience.

    So the lower rate gets a few epochs before training stops (5 gives 3).
    """
    return max(1, (patience + 1) // 2)


def ema_callbacks(ema_momentum: float) -> list[Any]:
    """``SwapEMAWeights`` when the weights are averaged (it must come before the checkpoint callbacks)."""
    return [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if ema_momentum > 0 else []
