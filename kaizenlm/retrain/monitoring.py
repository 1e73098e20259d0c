"""Health checks of a training run, as a TrainerCallback shared by the SFT and DPO recipes.

Per logged step it records the training loss and gradient norm; per evaluation, the
validation loss and its gap to the training loss. It warns (log + the run's metrics) when
the gap exceeds `retrain.max_loss_gap` (over-fitting) or the gradient norm leaves
[`grad_norm_min`, `grad_norm_max`], and it stops the run at the first non-finite loss or
gradient norm: the recipe then raises NonFiniteLossError instead of saving a broken adapter.
"""

from __future__ import annotations

import logging
import math

from transformers import TrainerCallback

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Training stopped because the loss or the gradient norm became NaN or infinite."""


class HealthMonitor(TrainerCallback):
    def __init__(self, max_loss_gap: float, grad_norm_min: float, grad_norm_max: float, run_name: str) -> None:
        self.max_loss_gap = max_loss_gap
        self.grad_norm_min = grad_norm_min
        self.grad_norm_max = grad_norm_max
        self.run_name = run_name
        self.train_losses: list[tuple[int, float]] = []
        self.grad_norms: list[tuple[int, float]] = []
        self.eval_losses: list[tuple[int, float]] = []
        self.loss_gaps: list[tuple[int, float]] = []
        self.warnings: list[str] = []
        self.non_finite: str | None = None

    def _warn(self, message: str) -> None:
        # One warning of each kind is enough in the log; the counts go to the metrics.
        kind = message.split(":")[0]
        if not any(w.startswith(kind) for w in self.warnings):
            log.warning("%s: %s", self.run_name, message)
        self.warnings.append(message)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        step = state.global_step
        for key in ("loss", "grad_norm", "eval_loss"):
            value = logs.get(key)
            if value is not None and not math.isfinite(float(value)):
                self.non_finite = f"{key} became {value} at step {step}"
                log.error("%s: %s; stopping the run", self.run_name, self.non_finite)
                control.should_training_stop = True
                return control
        if "loss" in logs:
            self.train_losses.append((step, float(logs["loss"])))
        if "grad_norm" in logs:
            norm = float(logs["grad_norm"])
            self.grad_norms.append((step, norm))
            if not self.grad_norm_min <= norm <= self.grad_norm_max:
                self._warn(f"grad_norm out of range: {norm:.3f} at step {step} "
                           f"(expected {self.grad_norm_min}..{self.grad_norm_max})")
        if "eval_loss" in logs:
            eval_loss = float(logs["eval_loss"])
            self.eval_losses.append((step, eval_loss))
            if self.train_losses:
                gap = eval_loss - self.train_losses[-1][1]
                self.loss_gaps.append((step, gap))
                if gap > self.max_loss_gap:
                    self._warn(f"loss gap: validation loss {eval_loss:.4f} exceeds training loss "
                               f"{self.train_losses[-1][1]:.4f} by {gap:.4f} at step {step} (limit {self.max_loss_gap})")
        return control

    def summary(self) -> dict:
        """What the run's metrics.json records about training health."""
        norms = [n for _, n in self.grad_norms]
        return {
            "final_train_loss": self.train_losses[-1][1] if self.train_losses else None,
            "final_eval_loss": self.eval_losses[-1][1] if self.eval_losses else None,
            "best_eval_loss": min((v for _, v in self.eval_losses), default=None),
            "final_loss_gap": self.loss_gaps[-1][1] if self.loss_gaps else None,
            "max_loss_gap": max((g for _, g in self.loss_gaps), default=None),
            "grad_norm_mean": sum(norms) / len(norms) if norms else None,
            "grad_norm_min": min(norms, default=None),
            "grad_norm_max": max(norms, default=None),
            "train_loss_curve": self.train_losses,
            "eval_loss_curve": self.eval_losses,
            "grad_norm_curve": self.grad_norms,
            "warnings": self.warnings,
        }
